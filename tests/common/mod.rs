//! Helpers shared by the integration tests. The testbed itself (namespaces,
//! bridge, receivers) lives in the `elec-testbed` crate, which the benches,
//! examples and demo use too.

#![allow(dead_code)] // each test binary uses a different subset

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::Duration;

use elec_broadcast::{Broadcaster, Mode, Report};
use elec_testbed::{in_namespace, Testbed, TestbedConfig};

/// Set to 1 to skip (not fail) the tests that need root. CI runs as root
/// and must not set it.
pub const SKIP_ENV: &str = "ELEC_BROADCAST_SKIP_ROOT_TESTS";

/// True when the test may go on. Without root the test fails with a message
/// naming what is missing, unless the run opted out through `SKIP_ENV`.
pub fn root_available() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!(
            "skipped: needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN, CAP_BPF); {SKIP_ENV}=1 is set"
        );
        return false;
    }
    panic!(
        "this test needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN for network namespaces, CAP_BPF \
         for the eBPF program), euid is {euid}: run it as root, or set {SKIP_ENV}=1 to skip it"
    );
}

pub fn testbed(cfg: TestbedConfig) -> Testbed {
    Testbed::new(cfg).expect("setting up the testbed")
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

pub fn assert_no_checksum_errors(tb: &Testbed) {
    let errors = tb.udp_in_csum_errors().expect("reading UdpInCsumErrors");
    assert!(
        errors.iter().all(|&e| e == 0),
        "UdpInCsumErrors per receiver: {errors:?}"
    );
}

pub const WAIT: Duration = Duration::from_secs(5);
pub const SETTLE: Duration = Duration::from_millis(30);
