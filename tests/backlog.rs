//! Every copy the sending host drops is reported, exactly: unpaced bursts of
//! clones overflow the backlog of the sending core, and the copies lost
//! there must be in `Report::failed` and in the counters, per destination,
//! the last destination of each fan-out included, and nothing counted twice.
//!
//! The drops are counted independently of the library: on the sender's
//! `eth0` (a veth counts what its peer could not take as `tx_dropped`), in
//! the sender's UDP counters, on the hub's port towards each receiver (drops
//! further on, which no sender can see), and at the receivers.
//!
//! This file is its own test binary because it lowers the machine-wide
//! `net.core.netdev_max_backlog` for a moment (restored on drop and panic);
//! cargo runs test binaries one after another, so no other test sees it, and
//! the tests below take turns.

mod common;

use std::collections::HashSet;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Mutex;
use std::time::Duration;

use common::*;
use elec_broadcast::{FailureReason, Mode};
use elec_testbed::{link_counters, snmp_counter, Testbed, TestbedConfig};

/// The tests of this binary take turns: they change a machine-wide setting.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Broadcast `id`: the id, then filler bytes that depend on it.
fn message(id: u32, size: usize) -> Vec<u8> {
    let mut m = id.to_le_bytes().to_vec();
    m.extend((0..size - 4).map(|j| ((u64::from(id) * 13 + j as u64) % 251) as u8));
    m
}

/// Counters outside the library, read before and after a burst.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Outside {
    /// Copies the sender's eth0 could not hand to its peer.
    sender_tx_dropped: u64,
    /// UDP datagrams the sender's stack dropped without telling the sender.
    sender_sndbuf_errors: u64,
    /// Per receiver: frames the hub's port could not hand to the receiver
    /// (dropped further on), and datagrams the receiver's socket dropped.
    further_on: Vec<u64>,
}

fn outside(tb: &Testbed) -> Outside {
    let further_on = tb.drops_past_sender().unwrap();
    Outside {
        sender_tx_dropped: link_counters(tb.sender_ns(), tb.sender_iface())
            .unwrap()
            .tx_dropped,
        sender_sndbuf_errors: snmp_counter(tb.sender_ns(), "Udp", "SndbufErrors").unwrap(),
        further_on,
    }
}

/// Sends `count` unpaced broadcasts of `size` bytes to one destination on
/// each of `receivers` receivers, with the backlog set to `backlog` (or as
/// it is), and checks that what was reported failed is exactly what the
/// sending host dropped. Returns (copies sent, reported failed, dropped
/// further on).
fn burst(receivers: usize, count: u32, size: usize, backlog: Option<&str>) -> (u64, u64, u64) {
    let tb = testbed(TestbedConfig {
        receivers,
        addrs_per_receiver: 1,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5000);
    let dests = tb.destinations(receivers, 7000);
    let targets = addrs(&dests);
    let rx = tb.receivers(&dests).unwrap();
    // One paced broadcast first: every MAC is learned, every path warm.
    let warm = message(u32::MAX, size);
    assert_complete(
        &broadcaster.broadcast(&socket, &warm, &targets).unwrap(),
        dests.len(),
    );
    rx.wait_for_total(dests.len(), WAIT);
    tb.wait_quiet(Duration::from_millis(50), WAIT).unwrap();

    let before = outside(&tb);
    let stats_before = broadcaster.stats();
    let reports = {
        let _backlog = backlog.map(|value| Sysctl::set(BACKLOG, value));
        (0..count)
            .map(|id| {
                broadcaster
                    .broadcast(&socket, &message(id, size), &targets)
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    tb.wait_quiet(Duration::from_millis(100), WAIT).unwrap();
    let after = outside(&tb);
    let got = rx.finish(SETTLE);

    // What each destination received, by broadcast id, every byte checked.
    let mut received: Vec<HashSet<u32>> = vec![HashSet::new(); dests.len()];
    for (i, dest) in dests.iter().enumerate() {
        for payload in got.datagrams(dest) {
            let id = u32::from_le_bytes(payload[..4].try_into().unwrap());
            assert_eq!(*payload, message(id, size), "{dest}: corrupt datagram");
            if id != u32::MAX {
                assert!(received[i].insert(id), "{dest} got broadcast {id} twice");
            }
        }
    }
    // What was reported failed, per destination; and never a destination
    // that did get its copy.
    let mut reported = vec![0u64; dests.len()];
    for (id, report) in (0..count).zip(&reports) {
        assert_eq!(report.copies_sent + report.failed.len(), dests.len());
        assert_eq!(report.kernel_copies, report.copies_sent, "{report:?}");
        for failure in &report.failed {
            // Clones the full backlog refused: the device dropped them.
            assert_eq!(failure.reason, FailureReason::Dropped, "{failure:?}");
            let failed = failure.destination;
            let i = targets.iter().position(|t| *t == failed).unwrap();
            reported[i] += 1;
            assert!(
                !received[i].contains(&id),
                "{failed} was reported failed for broadcast {id} but got it"
            );
        }
    }

    // Per destination: every copy arrived, was reported failed, or was
    // dropped further on (where the hub's port or the receiver counted it).
    let further: Vec<u64> = (0..dests.len())
        .map(|i| after.further_on[i] - before.further_on[i])
        .collect();
    for (i, dest) in dests.iter().enumerate() {
        let missing = u64::from(count) - received[i].len() as u64;
        assert_eq!(
            missing,
            reported[i] + further[i],
            "{dest}: {missing} copies missing, {} reported failed, {} dropped further on",
            reported[i],
            further[i]
        );
    }
    // In all: the reported failures are exactly the sender's drops, which
    // the sender's UDP never saw.
    let total_reported: u64 = reported.iter().sum();
    let sender_dropped = after.sender_tx_dropped - before.sender_tx_dropped;
    assert_eq!(total_reported, sender_dropped, "{before:?} -> {after:?}");
    assert_eq!(
        after.sender_sndbuf_errors, before.sender_sndbuf_errors,
        "the sender's UDP dropped datagrams"
    );
    let stats = broadcaster.stats();
    assert_eq!(
        stats.copies_failed - stats_before.copies_failed,
        total_reported
    );
    let kernel = broadcaster.kernel_counters().unwrap();
    assert_eq!(kernel.clones, stats.kernel_copies);
    assert_eq!(kernel.clone_failures, stats.copies_failed);
    assert_eq!(kernel.rewrite_failures, 0);

    let last = dests.len() - 1;
    eprintln!(
        "{count} broadcasts x {} destinations ({size} B, backlog {}): {total_reported} copies \
         dropped by the sender, all reported ({} for the last destination); {} dropped further on",
        dests.len(),
        backlog.unwrap_or("as is"),
        reported[last],
        further.iter().sum::<u64>(),
    );
    (
        u64::from(count) * dests.len() as u64,
        total_reported,
        further.iter().sum(),
    )
}

#[test]
fn every_copy_dropped_by_a_full_backlog_is_reported_for_its_destination() {
    elec_testbed::require_root!();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // 16 clones per fan-out into a backlog that takes 10: the last copies of
    // every fan-out are dropped by the sending host.
    let (_, reported, _) = burst(16, 300, 1200, Some("10"));
    assert!(reported > 0, "nothing was dropped: the test tested nothing");
}

#[test]
fn an_unpaced_burst_to_64_destinations_is_accounted_for_exactly() {
    elec_testbed::require_root!();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The default backlog: whatever is dropped, where, is the machine's
    // doing; the accounting must be exact either way.
    burst(64, 2000, 1200, None);
}

#[test]
fn broadcasts_are_complete_again_once_the_backlog_has_room() {
    elec_testbed::require_root!();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tb = testbed(TestbedConfig {
        receivers: 8,
        addrs_per_receiver: 4,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5000);
    let dests: Vec<SocketAddrV4> = tb.destinations(256, 7000);
    let targets: Vec<SocketAddr> = addrs(&dests);
    let rx = tb.receivers(&dests).unwrap();
    {
        let _small = Sysctl::set(BACKLOG, "16");
        let report = broadcaster
            .broadcast(&socket, &message(1, 200), &targets)
            .unwrap();
        assert!(!report.failed.is_empty(), "{report:?}");
    }
    tb.wait_quiet(Duration::from_millis(50), WAIT).unwrap();
    let rx_total = rx.finish(SETTLE).total();
    let rx = tb.receivers(&dests).unwrap();
    let message = message(2, 200);
    let report = broadcaster.broadcast(&socket, &message, &targets).unwrap();
    assert_complete(&report, dests.len());
    expect_exactly_once(rx, &dests, &[message]);
    assert!(rx_total < dests.len());
}
