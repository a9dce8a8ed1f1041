//! A burst of clones can overflow a receiving core's backlog; the clone call
//! then fails. Those failures must reach the caller's report and the
//! counters: nothing is dropped silently.
//!
//! This file is its own test binary because it lowers the machine-wide
//! `net.core.netdev_max_backlog` for a moment (restored on drop and panic);
//! cargo runs test binaries one after another, so no other test sees it.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;

use common::*;
use elec_broadcast::Mode;
use elec_testbed::{pattern, TestbedConfig};

const BACKLOG: &str = "/proc/sys/net/core/netdev_max_backlog";

/// Sets a sysctl and puts the old value back on drop (also on panic).
struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    fn set(path: &'static str, value: &str) -> Sysctl {
        let old = std::fs::read_to_string(path).expect("reading the sysctl");
        std::fs::write(path, value).expect("writing the sysctl");
        Sysctl { path, old }
    }
}

impl Drop for Sysctl {
    fn drop(&mut self) {
        if let Err(err) = std::fs::write(self.path, self.old.trim()) {
            eprintln!("could not restore {}: {err}", self.path);
        }
    }
}

#[test]
fn clone_failures_from_a_full_backlog_reach_the_report_and_the_counters() {
    if !root_available() {
        return;
    }
    let tb = testbed(TestbedConfig {
        receivers: 8,
        addrs_per_receiver: 4,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5000);
    let dests = tb.destinations(256, 7000);
    let targets = addrs(&dests);
    let rx = tb.receivers(&dests).unwrap();

    // 255 clones per send into a backlog that takes 16: most clones fail.
    let messages: Vec<Vec<u8>> = (0..5).map(|seq| pattern(seq, 200)).collect();
    let reports = {
        let _small = Sysctl::set(BACKLOG, "16");
        messages
            .iter()
            .map(|m| broadcaster.broadcast(&socket, m, &targets).unwrap())
            .collect::<Vec<_>>()
    };
    let reported: usize = reports.iter().map(|r| r.failed.len()).sum();
    eprintln!(
        "backlog 16: {reported} of {} copies reported failed",
        messages.len() * dests.len()
    );
    assert!(reported > 0, "no clone failed: {reports:?}");
    for report in &reports {
        assert_eq!(report.copies_sent + report.failed.len(), dests.len());
    }

    // Counters agree with the reports and with the program's own count.
    let stats = broadcaster.stats();
    assert_eq!(stats.clone_failures as usize, reported, "{stats:?}");
    let [_, clones, clone_failures, _, _] = broadcaster.kernel_counters().unwrap();
    assert_eq!(clone_failures as usize, reported);
    assert_eq!(clones, stats.kernel_copies);

    // A destination reported as failed really got nothing. (The converse
    // need not hold: a copy can also be dropped further on, at the bridge,
    // where the sender cannot see it.)
    let got = rx.finish(SETTLE);
    for (message, report) in messages.iter().zip(&reports) {
        let failed: HashSet<SocketAddr> = report.failed.iter().copied().collect();
        for dest in &dests {
            let arrived = got.datagrams(dest).iter().filter(|d| *d == message).count();
            assert!(arrived <= 1, "{dest} got {arrived} copies");
            if failed.contains(&SocketAddr::V4(*dest)) {
                assert_eq!(arrived, 0, "{dest} was reported failed but got its copy");
            }
        }
    }

    // With the backlog back to normal, the same broadcast is complete again.
    let rx = tb.receivers(&dests).unwrap();
    let message = pattern(99, 200);
    let report = broadcaster.broadcast(&socket, &message, &targets).unwrap();
    assert_complete(&report, dests.len());
    rx.wait_for_total(dests.len(), WAIT);
    rx.finish(SETTLE)
        .check_exactly_once(&dests, &[message])
        .unwrap();
}
