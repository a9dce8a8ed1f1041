//! `broadcast_batch`: several payloads to the same destinations, one
//! carrier per payload in one `sendmmsg` per fan-out, each fanned out in
//! the kernel. Receivers in other namespaces check every byte, the order of
//! the payloads at each destination, and that nothing else arrives, also
//! while other threads send ordinary datagrams on the same socket.

mod common;

use std::net::SocketAddrV4;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;

use common::*;
use elec_broadcast::{Error, Mode};
use elec_testbed::{Testbed, TestbedConfig};

fn setup(receivers: usize, addrs: usize) -> (Testbed, Vec<SocketAddrV4>) {
    let tb = testbed(TestbedConfig {
        receivers,
        addrs_per_receiver: addrs,
        ..Default::default()
    });
    let dests = (0..receivers)
        .flat_map(|r| tb.receiver_addrs(r).to_vec())
        .map(|ip| SocketAddrV4::new(ip, 6300))
        .collect();
    (tb, dests)
}

/// Payload `k` of batch `b`: `size` bytes that depend on both (the first
/// four say which, where they fit).
fn payload(b: u32, k: u32, size: usize) -> Vec<u8> {
    let id = b * 1000 + k;
    let mut m: Vec<u8> = id.to_le_bytes().into_iter().take(size).collect();
    m.extend((m.len()..size).map(|j| ((u64::from(id) * 31 + j as u64) % 251) as u8));
    m
}

/// Sizes of the payloads of a batch of `k`: all different, from empty to
/// the largest that fits.
fn sizes(k: usize, max: usize) -> Vec<usize> {
    let pick = [0, 1, 64, 1200, max, 500, 33, 900];
    (0..k).map(|i| pick[i % pick.len()].min(max)).collect()
}

fn batches_arrive_exactly_once_in_order(mode: Mode, receivers: usize, per: usize, k: usize) {
    batches_of(mode, receivers, per, k, sizes, None);
}

/// Batches of `k` payloads of sizes `sizes(k, max)`; with `fan_outs_per`,
/// the kernel fan-outs each batch of at most 16 takes per chunk of
/// destinations (one per payload, or one for all where they go as one
/// segmented carrier).
fn batches_of(
    mode: Mode,
    receivers: usize,
    per: usize,
    k: usize,
    sizes: fn(usize, usize) -> Vec<usize>,
    fan_outs_per: Option<fn(usize) -> usize>,
) {
    let (tb, dests) = setup(receivers, per);
    let targets = addrs(&dests);
    let broadcaster = broadcaster(&tb, mode);
    let socket = sender_socket(&tb, 6301);
    let rx = tb.receivers(&dests).unwrap();
    let max = broadcaster.max_payload();
    const BATCHES: u32 = 3;
    let mut sent = Vec::new();
    for b in 0..BATCHES {
        let payloads: Vec<Vec<u8>> = sizes(k, max)
            .into_iter()
            .enumerate()
            .map(|(i, size)| payload(b, i as u32, size))
            .collect();
        let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        let reports = broadcaster
            .broadcast_batch(&socket, &slices, &targets)
            .expect("broadcast_batch");
        assert_eq!(reports.len(), k);
        for report in &reports {
            assert_complete(report, targets.len());
            if mode == Mode::Kernel {
                assert_eq!(report.kernel_copies, targets.len(), "{report:?}");
            }
        }
        sent.extend(payloads);
    }
    let stats = broadcaster.stats();
    assert_eq!(stats.broadcasts, u64::from(BATCHES) * k as u64);
    if mode == Mode::Kernel {
        let per_batch = k.div_ceil(16).max(1);
        let fan_outs_per_batch = match fan_outs_per {
            Some(f) => (0..per_batch)
                .map(|b| f(k.min(16 * (b + 1)) - 16 * b))
                .sum::<usize>(),
            None => k,
        };
        let fan_outs =
            targets.len().div_ceil(256) as u64 * u64::from(BATCHES) * fan_outs_per_batch as u64;
        let kernel = broadcaster.kernel_counters().unwrap();
        assert_eq!(kernel.fan_outs, fan_outs, "{kernel:?}");
        assert_eq!(kernel.mismatches, 0);
    }
    rx.wait_for_total(dests.len() * sent.len(), WAIT);
    let got = rx.finish(SETTLE);
    if let Err(err) = got.check_exactly_once(&dests, &sent) {
        panic!(
            "{mode:?}, {} destinations, batches of {k}: {err}",
            dests.len()
        );
    }
    // In the order given, at every destination, from the socket's address.
    let source = SocketAddrV4::new(tb.sender_addr(), 6301);
    for dest in &dests {
        assert_eq!(got.datagrams(dest), sent.as_slice(), "order at {dest}");
        assert!(got.sources(dest).iter().all(|s| *s == source.into()));
    }
    assert_no_checksum_errors(&tb);
}

#[test]
fn kernel_batches_of_8_to_4_destinations() {
    elec_testbed::require_root!();
    batches_arrive_exactly_once_in_order(Mode::Kernel, 4, 1, 8);
}

#[test]
fn kernel_batches_of_1_and_16_to_one_destination() {
    elec_testbed::require_root!();
    batches_arrive_exactly_once_in_order(Mode::Kernel, 1, 1, 1);
    batches_arrive_exactly_once_in_order(Mode::Kernel, 1, 1, 16);
}

#[test]
fn kernel_batches_longer_than_16_to_300_destinations_are_split_both_ways() {
    elec_testbed::require_root!();
    batches_arrive_exactly_once_in_order(Mode::Kernel, 3, 100, 20);
}

/// Payloads of one size (the last one shorter): each batch of up to 16 goes
/// as one segmented (UDP GSO) carrier, cloned whole; the device cuts every
/// clone into its datagrams.
fn equal_sizes(size: usize) -> impl Fn(usize, usize) -> Vec<usize> {
    move |k, max| {
        let size = size.min(max);
        (0..k)
            .map(|i| if i + 1 == k { size.div_ceil(2) } else { size })
            .collect()
    }
}

#[test]
fn kernel_batches_of_equal_payloads_go_as_one_segmented_carrier() {
    elec_testbed::require_root!();
    let one = Some((|_| 1) as fn(usize) -> usize);
    batches_of(Mode::Kernel, 4, 1, 8, |k, m| equal_sizes(64)(k, m), one);
    batches_of(Mode::Kernel, 4, 1, 16, |k, m| equal_sizes(1200)(k, m), one);
    batches_of(Mode::Kernel, 4, 1, 8, |k, m| equal_sizes(1)(k, m), one);
    // 300 clones of 16 datagrams each reach the receivers' CPU at once: more
    // than the kernel's default backlog of 1000 packets holds (drops there
    // are past the sender, which cannot see them; see the README's limits).
    let _backlog = Sysctl::set(BACKLOG, "20000");
    batches_of(Mode::Kernel, 3, 100, 20, |k, m| equal_sizes(900)(k, m), one);
}

#[test]
fn user_space_batches_of_8_to_16_destinations() {
    elec_testbed::require_root!();
    batches_arrive_exactly_once_in_order(Mode::UserSpace, 4, 4, 8);
}

/// Other threads send ordinary datagrams on the same socket, of the same
/// lengths, to the same first destination, all through the batches: only
/// the batches' datagrams are fanned out, each exactly once.
#[test]
fn ordinary_sends_on_the_socket_during_batches_are_never_fanned_out() {
    elec_testbed::require_root!();
    let (tb, dests) = setup(4, 2);
    let targets = addrs(&dests);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = Arc::new(sender_socket(&tb, 6302));
    let rx = tb.receivers(&dests).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let max = broadcaster.max_payload();
    let sender = {
        let (socket, stop, to) = (Arc::clone(&socket), Arc::clone(&stop), dests[0]);
        thread::spawn(move || {
            let mut sent = Vec::new();
            let mut i = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let size = sizes(8, max)[i as usize % 8];
                // Marked apart from the batches' payloads by its id.
                let m = payload(900_000 + i, 0, size.max(4));
                socket.send_to(&m, to).unwrap();
                sent.push(m);
                i += 1;
            }
            sent
        })
    };
    let mut sent = Vec::new();
    for b in 0..200 {
        let payloads: Vec<Vec<u8>> = sizes(8, max)
            .into_iter()
            .enumerate()
            .map(|(i, size)| payload(b, i as u32, size.max(4)))
            .collect();
        let slices: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
        for report in broadcaster
            .broadcast_batch(&*socket, &slices, &targets)
            .unwrap()
        {
            assert_complete(&report, targets.len());
        }
        sent.extend(payloads);
    }
    stop.store(true, Ordering::Relaxed);
    let ordinary = sender.join().unwrap();
    eprintln!(
        "{} ordinary datagrams alongside 200 batches of 8",
        ordinary.len()
    );
    assert!(
        ordinary.len() > 100,
        "the other thread hardly sent anything"
    );
    rx.wait_for_total(dests.len() * sent.len() + ordinary.len(), WAIT);
    let got = rx.finish(SETTLE);
    // The first destination got both; the others only the batches.
    let mut first = sent.clone();
    first.extend(ordinary);
    if let Err(err) = got.check_exactly_once(&dests[..1], &first) {
        panic!("{err}");
    }
    if let Err(err) = got.check_exactly_once(&dests[1..], &sent) {
        panic!("{err}");
    }
}

#[test]
fn bad_batches_are_refused_before_anything_is_sent() {
    elec_testbed::require_root!();
    let (tb, dests) = setup(1, 1);
    let targets = addrs(&dests);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 6303);
    let rx = tb.receivers(&dests).unwrap();
    assert!(matches!(
        broadcaster.broadcast_batch(&socket, &[], &targets),
        Err(Error::NoPayloads)
    ));
    let big = vec![7; broadcaster.max_payload() + 1];
    assert!(matches!(
        broadcaster.broadcast_batch(&socket, &[b"small", &big], &targets),
        Err(Error::PayloadTooLarge { .. })
    ));
    assert!(matches!(
        broadcaster.broadcast_batch(&socket, &[b"small"], &[]),
        Err(Error::NoDestinations)
    ));
    let got = rx.finish(SETTLE);
    got.check_silent(&dests).unwrap();
    assert_eq!(broadcaster.stats().broadcasts, 0);
}
