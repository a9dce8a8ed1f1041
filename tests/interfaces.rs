//! One `Broadcaster` on several interfaces: each destination's copy leaves
//! through the interface its route goes through, exactly once, with one
//! report; a destination behind an interface the broadcaster is not on is
//! refused before anything is sent, or (with `attach_on_demand`) the
//! program is attached there. The testbed's sender has `eth0`
//! (10.77.0.0/16) and `eth1` (10.78.0.0/16) on the same bridge; receivers
//! in other namespaces check every byte and the source of every copy.

mod common;

use std::net::{SocketAddr, SocketAddrV4};

use common::*;
use elec_broadcast::{Broadcaster, Error, Mode};
use elec_testbed::{in_namespace, link_counters, Testbed, TestbedConfig, IFACE, SECOND_IFACE};

const PORT: u16 = 6400;
const SENDER_PORT: u16 = 6401;

/// A testbed with both sender interfaces, and its destinations behind each,
/// interleaved: eth0's (10.77/16) and eth1's (10.78/16).
fn setup(receivers: usize, addrs: usize) -> (Testbed, Vec<SocketAddrV4>) {
    let tb = testbed(TestbedConfig {
        receivers,
        addrs_per_receiver: addrs,
        second_link: true,
        ..Default::default()
    });
    let mut dests = Vec::new();
    for r in 0..receivers {
        for (a, b) in tb.receiver_addrs(r).iter().zip(tb.second_receiver_addrs(r)) {
            dests.push(SocketAddrV4::new(*a, PORT));
            dests.push(SocketAddrV4::new(*b, PORT));
        }
    }
    (tb, dests)
}

fn on(tb: &Testbed, interfaces: &[&str], mode: Mode) -> Result<Broadcaster, Error> {
    in_namespace(tb.sender_ns(), || {
        Broadcaster::with_interfaces(interfaces, mode)
    })
    .expect("entering the sender namespace")
}

fn message(id: u32, size: usize) -> Vec<u8> {
    let mut m = id.to_le_bytes().to_vec();
    m.extend((4..size).map(|j| ((u64::from(id) * 17 + j as u64) % 241) as u8));
    m.truncate(size);
    m
}

/// Packets each of the sender's interfaces has sent so far.
fn sent_packets(tb: &Testbed) -> [u64; 2] {
    [IFACE, SECOND_IFACE].map(|i| link_counters(tb.sender_ns(), i).unwrap().tx_packets)
}

fn copies_leave_through_their_own_interfaces(mode: Mode) {
    let (tb, dests) = setup(4, 4);
    let targets = addrs(&dests);
    let broadcaster = on(&tb, &[IFACE, SECOND_IFACE], mode).unwrap();
    assert_eq!(broadcaster.interfaces(), [IFACE, SECOND_IFACE]);
    let socket = sender_socket(&tb, SENDER_PORT);
    let rx = tb.receivers(&dests).unwrap();
    let before = sent_packets(&tb);
    let sizes = [0, 1, 64, 1200, broadcaster.max_payload()];
    let sent: Vec<Vec<u8>> = (0..40)
        .map(|id| message(id, sizes[id as usize % 5]))
        .collect();
    for payload in &sent[..30] {
        let report = broadcaster.broadcast(&socket, payload, &targets).unwrap();
        assert_complete(&report, targets.len());
        if mode == Mode::Kernel {
            assert_eq!(report.kernel_copies, targets.len(), "{report:?}");
        }
    }
    // A batch across both interfaces too.
    let batch: Vec<&[u8]> = sent[30..].iter().map(Vec::as_slice).collect();
    for report in broadcaster
        .broadcast_batch(&socket, &batch, &targets)
        .unwrap()
    {
        assert_complete(&report, targets.len());
    }
    rx.wait_for_total(dests.len() * sent.len(), WAIT);
    let got = rx.finish(SETTLE);
    if let Err(err) = got.check_exactly_once(&dests, &sent) {
        panic!("{mode:?}: {err}");
    }
    let source = SocketAddrV4::new(tb.sender_addr(), SENDER_PORT);
    for dest in &dests {
        assert!(
            got.sources(dest).iter().all(|s| *s == source.into()),
            "{dest}"
        );
    }
    // Every copy left through the interface of its destination: half of
    // them each (the carriers the program consumed never leave).
    let after = sent_packets(&tb);
    let half = (dests.len() / 2 * sent.len()) as u64;
    assert_eq!(after[0] - before[0], half, "{mode:?}: packets through eth0");
    assert_eq!(after[1] - before[1], half, "{mode:?}: packets through eth1");
    if mode == Mode::Kernel {
        let kernel = broadcaster.kernel_counters().unwrap();
        assert_eq!(
            kernel.clones,
            (dests.len() * sent.len()) as u64,
            "{kernel:?}"
        );
        assert_eq!(kernel.mismatches, 0);
    }
    assert_no_checksum_errors(&tb);
}

#[test]
fn kernel_copies_leave_through_their_own_interfaces_exactly_once() {
    elec_testbed::require_root!();
    copies_leave_through_their_own_interfaces(Mode::Kernel);
}

#[test]
fn user_space_copies_leave_through_their_own_interfaces_exactly_once() {
    elec_testbed::require_root!();
    copies_leave_through_their_own_interfaces(Mode::UserSpace);
}

#[test]
fn an_interface_not_attached_is_refused_or_attached_on_demand() {
    elec_testbed::require_root!();
    let (tb, dests) = setup(2, 2);
    let targets = addrs(&dests);
    let socket = sender_socket(&tb, SENDER_PORT);
    let rx = tb.receivers(&dests).unwrap();
    let broadcaster = on(&tb, &[IFACE], Mode::Kernel).unwrap();
    match broadcaster.broadcast(&socket, b"refused", &targets) {
        Err(Error::OtherInterface {
            destination,
            route_interface,
            ..
        }) => {
            assert_eq!(destination, targets[1]);
            assert_eq!(route_interface, SECOND_IFACE);
        }
        other => panic!("expected OtherInterface, got {other:?}"),
    }
    let broadcaster = broadcaster.attach_on_demand();
    assert_eq!(broadcaster.interfaces(), [IFACE]);
    let payload = message(7, 300);
    let report = broadcaster.broadcast(&socket, &payload, &targets).unwrap();
    assert_complete(&report, targets.len());
    assert_eq!(report.kernel_copies, targets.len(), "{report:?}");
    assert_eq!(broadcaster.interfaces(), [IFACE, SECOND_IFACE]);
    rx.wait_for_total(dests.len(), WAIT);
    let got = rx.finish(SETTLE);
    // Only the second broadcast arrived, once everywhere.
    if let Err(err) = got.check_exactly_once(&dests, &[payload]) {
        panic!("{err}");
    }
    // Detached from both on drop.
    drop(broadcaster);
    let attached = in_namespace(tb.sender_ns(), || {
        std::process::Command::new("tc")
            .args(["filter", "show", "dev", SECOND_IFACE, "egress"])
            .output()
    })
    .unwrap()
    .unwrap();
    assert!(
        !String::from_utf8_lossy(&attached.stdout).contains("fan_out"),
        "a program is left on eth1"
    );
}

/// A list whose destinations are all behind the second interface goes
/// through it alone, and a destination listed twice across the split gets
/// two copies, in order.
#[test]
fn lists_behind_one_interface_and_repeated_destinations() {
    elec_testbed::require_root!();
    let (tb, dests) = setup(2, 1);
    let broadcaster = on(&tb, &[IFACE, SECOND_IFACE], Mode::Kernel).unwrap();
    let socket = sender_socket(&tb, SENDER_PORT);
    let rx = tb.receivers(&dests).unwrap();
    let second: Vec<SocketAddr> = addrs(&dests).into_iter().skip(1).step_by(2).collect();
    let report = broadcaster
        .broadcast(&socket, b"second only", &second)
        .unwrap();
    assert_complete(&report, second.len());
    let twice: Vec<SocketAddr> = addrs(&dests).into_iter().chain(addrs(&dests)).collect();
    let report = broadcaster.broadcast(&socket, b"twice", &twice).unwrap();
    assert_complete(&report, twice.len());
    rx.wait_for_total(second.len() + twice.len(), WAIT);
    let got = rx.finish(SETTLE);
    for (i, dest) in dests.iter().enumerate() {
        let mut want: Vec<&[u8]> = Vec::new();
        if i % 2 == 1 {
            want.push(b"second only");
        }
        want.extend([&b"twice"[..], b"twice"]);
        assert_eq!(got.datagrams(dest), want.as_slice(), "{dest}");
    }
}

#[test]
fn a_list_split_over_interfaces_is_refused_whole_when_the_socket_cannot_reach_one() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 2,
        second_link: true,
        ipv6: true,
        ..Default::default()
    });
    let broadcaster = on(&tb, &[IFACE, SECOND_IFACE], Mode::Kernel).unwrap();
    let socket = in_namespace(tb.sender_ns(), || {
        std::net::UdpSocket::bind(SocketAddrV4::new(
            std::net::Ipv4Addr::UNSPECIFIED,
            SENDER_PORT,
        ))
    })
    .unwrap()
    .unwrap();
    let second = SocketAddrV4::new(tb.second_receiver_addrs(0)[0], PORT);
    let first = SocketAddrV4::new(tb.receiver_addrs(1)[0], PORT);
    let v6 = SocketAddr::V6(tb.destinations6(1, PORT)[0]);
    let rx = tb.receivers(&[second, first]).unwrap();
    // eth1's destination first: a split list, refused before anything is
    // sent because the IPv4 socket cannot reach the IPv6 destination.
    let list = [SocketAddr::V4(second), SocketAddr::V4(first), v6];
    match broadcaster.broadcast(&socket, b"split", &list) {
        Err(Error::FamilyMismatch {
            destination,
            socket,
        }) => {
            assert_eq!((destination, socket), (v6, "IPv4"))
        }
        other => panic!("expected FamilyMismatch, got {other:?}"),
    }
    rx.finish(SETTLE).check_silent(&[second, first]).unwrap();
}
