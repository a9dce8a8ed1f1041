//! Helpers shared by the integration tests. The testbed itself (namespaces,
//! bridge, receivers) lives in the `elec-testbed` crate, which the benches,
//! examples and demo use too; so does the root check every test that needs
//! root starts with, `elec_testbed::require_root!()` (it fails the test
//! naming what is missing, or with `ELEC_BROADCAST_SKIP_ROOT_TESTS=1` skips
//! it with a `SKIPPED <test>` line that shows in `cargo test` output).

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use elec_broadcast::{Broadcaster, Error, Mode, Report};
use elec_testbed::{in_namespace, Receivers, Testbed, TestbedConfig};

pub fn testbed(cfg: TestbedConfig) -> Testbed {
    Testbed::new(cfg).expect("setting up the testbed")
}

/// A testbed of `receivers` receivers with `addrs_per_receiver` addresses
/// each, everything else as by default.
pub fn small_testbed(receivers: usize, addrs_per_receiver: usize) -> Testbed {
    testbed(TestbedConfig {
        receivers,
        addrs_per_receiver,
        ..Default::default()
    })
}

/// A broadcaster on the sender's `eth0`, created inside the sender namespace.
pub fn broadcaster(tb: &Testbed, mode: Mode) -> Broadcaster {
    in_namespace(tb.sender_ns(), || {
        Broadcaster::with_mode(tb.sender_iface(), mode)
    })
    .expect("entering the sender namespace")
    .expect("creating the broadcaster")
}

/// A UDP socket in the sender namespace bound to the sender's address.
pub fn sender_socket(tb: &Testbed, port: u16) -> UdpSocket {
    let addr = SocketAddrV4::new(tb.sender_addr(), port);
    in_namespace(tb.sender_ns(), || UdpSocket::bind(addr))
        .expect("entering the sender namespace")
        .expect("binding the sender socket")
}

pub fn addrs(dests: &[SocketAddrV4]) -> Vec<SocketAddr> {
    dests.iter().copied().map(SocketAddr::V4).collect()
}

pub fn assert_complete(report: &Report, n: usize) {
    assert!(
        report.failed.is_empty(),
        "failed destinations: {:?}",
        report.failed
    );
    assert_eq!(report.copies_sent, n, "copies sent: {report:?}");
}

/// Waits (at most [`WAIT`]) for a copy of every message of `sent` at every
/// destination, then checks that each destination got each message exactly
/// once and intact, and nothing else.
pub fn expect_exactly_once<A: Into<SocketAddr> + Copy>(
    rx: Receivers,
    dests: &[A],
    sent: &[Vec<u8>],
) {
    rx.wait_for_total(dests.len() * sent.len(), WAIT);
    if let Err(err) = rx.finish(SETTLE).check_exactly_once(dests, sent) {
        panic!("{err}");
    }
}

/// Asserts that `result` is a refusal as too large, giving `max` as the
/// largest payload that fits and `mtu` as the MTU that sets it.
pub fn assert_too_large<T: std::fmt::Debug>(result: Result<T, Error>, max: usize, mtu: u32) {
    match result {
        Err(Error::PayloadTooLarge { max: m, mtu: u, .. }) => assert_eq!((m, u), (max, mtu)),
        other => panic!("expected PayloadTooLarge (max {max}, MTU {mtu}), got {other:?}"),
    }
}

pub fn assert_no_checksum_errors(tb: &Testbed) {
    let errors = tb.udp_in_csum_errors().expect("reading UdpInCsumErrors");
    assert!(
        errors.iter().all(|&e| e == 0),
        "UdpInCsumErrors per receiver: {errors:?}"
    );
}

/// The kernel's per-CPU backlog limit (packets queued for receive
/// processing), which a burst of clones can overflow.
pub const BACKLOG: &str = "/proc/sys/net/core/netdev_max_backlog";

pub const WAIT: Duration = Duration::from_secs(5);
pub const SETTLE: Duration = Duration::from_millis(30);

/// Sets a sysctl and puts the old value back on drop (also on panic).
pub struct Sysctl {
    path: &'static str,
    old: String,
}

impl Sysctl {
    pub fn set(path: &'static str, value: &str) -> Sysctl {
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

/// Runs `ip -n NS ARGS…` and fails the test if it fails.
pub fn ip(ns: &str, args: &str) {
    let out = std::process::Command::new("ip")
        .args(["-n", ns])
        .args(args.split_whitespace())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {ns} {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes a sysctl (a path under /proc/sys) in namespace `ns`.
pub fn sysctl(ns: &str, path: &str, value: &str) {
    in_namespace(ns, || std::fs::write(path, value))
        .unwrap()
        .unwrap_or_else(|e| panic!("{path} in {ns}: {e}"));
}

/// For every N of `counts` and every size of `sizes`: three broadcasts
/// through `socket` to `dests_for(N)`, one at a time (so that bursts never
/// overflow a backlog), each with every copy made in the kernel in one
/// fan-out per 256 destinations; every destination gets each message
/// exactly once, intact, from the socket's address.
pub fn every_count_and_size<A>(
    tb: &Testbed,
    broadcaster: &Broadcaster,
    socket: &UdpSocket,
    counts: &[usize],
    sizes: &[usize],
    dests_for: impl Fn(usize) -> Vec<A>,
) where
    A: Into<SocketAddr> + Copy + std::fmt::Display,
{
    let source = socket.local_addr().expect("the socket's address");
    let mut seq = 0;
    for &n in counts {
        let dests = dests_for(n);
        let targets: Vec<SocketAddr> = dests.iter().map(|&d| d.into()).collect();
        for &size in sizes {
            eprintln!("round n={n} size={size}");
            let rx = tb.receivers(&dests).expect("starting receivers");
            let fan_outs_before = broadcaster.stats().fan_outs;
            let mut sent = Vec::new();
            for _ in 0..3 {
                let message = elec_testbed::pattern(seq, size);
                seq += 1;
                let report = broadcaster
                    .broadcast(socket, &message, &targets)
                    .expect("broadcast");
                assert_complete(&report, n);
                assert_eq!(report.kernel_copies, n, "n={n} size={size}: {report:?}");
                sent.push(message);
                rx.wait_for_total(n * sent.len(), WAIT);
            }
            let got = rx.finish(SETTLE);
            if let Err(err) = got.check_exactly_once(&dests, &sent) {
                panic!("n={n} size={size}: {err}");
            }
            for dest in &dests {
                let sources = got.sources(dest);
                assert!(
                    sources.iter().all(|s| *s == source),
                    "{dest} saw sources {sources:?}"
                );
            }
            let fan_outs = broadcaster.stats().fan_outs - fan_outs_before;
            let per_message = n.div_ceil(elec_broadcast::MAX_DESTINATIONS_PER_FAN_OUT) as u64;
            assert_eq!(fan_outs, 3 * per_message, "n={n}: fan-outs per broadcast");
        }
    }
}
