//! The testbed's IPv6 (`TestbedConfig::ipv6`): unique-local addresses beside
//! the IPv4 ones, none of them tentative (duplicate address detection off,
//! explicitly), and NDP working where the sender's neighbour table is not
//! pre-filled. Datagrams from the sender reach every receiver address in
//! the receivers' namespaces, from the sender's address. Needs root.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};
use std::process::Command;
use std::time::Duration;

use elec_testbed::{format_mac, in_namespace, Testbed, TestbedConfig, SENDER_ADDR6};

fn ip6_in(ns: &str, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["-n", ns, "-6"])
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "ip -n {ns} -6 {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends one datagram from the sender to every receiver's IPv6 addresses
/// and checks each arrives, with its bytes, from the sender's address.
fn every_address_answers(tb: &Testbed) {
    const PORT: u16 = 6600;
    let mut sockets: Vec<(Ipv6Addr, UdpSocket)> = Vec::new();
    for r in 0..tb.num_receivers() {
        for &addr in tb.receiver_addrs6(r) {
            let socket = in_namespace(tb.receiver_ns(r), || {
                UdpSocket::bind(SocketAddrV6::new(addr, PORT, 0, 0))
            })
            .unwrap()
            .unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            sockets.push((addr, socket));
        }
    }
    assert!(!sockets.is_empty(), "no IPv6 addresses");
    let sender = in_namespace(tb.sender_ns(), || {
        UdpSocket::bind(SocketAddrV6::new(SENDER_ADDR6, PORT, 0, 0))
    })
    .unwrap()
    .unwrap();
    for (addr, _) in &sockets {
        let message = format!("to {addr}");
        sender
            .send_to(message.as_bytes(), SocketAddrV6::new(*addr, PORT, 0, 0))
            .unwrap();
    }
    for (addr, socket) in &sockets {
        let mut buf = [0u8; 64];
        let (len, from) = socket.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], format!("to {addr}").as_bytes());
        assert_eq!(
            from,
            SocketAddr::V6(SocketAddrV6::new(SENDER_ADDR6, PORT, 0, 0))
        );
    }
}

/// No address of the sender or a receiver is tentative (or failed DAD).
fn nothing_tentative(tb: &Testbed) {
    for ns in
        std::iter::once(tb.sender_ns()).chain((0..tb.num_receivers()).map(|r| tb.receiver_ns(r)))
    {
        let tentative = ip6_in(ns, &["addr", "show", "tentative"]);
        assert!(tentative.trim().is_empty(), "{ns}: {tentative}");
        let failed = ip6_in(ns, &["addr", "show", "dadfailed"]);
        assert!(failed.trim().is_empty(), "{ns}: {failed}");
    }
}

#[test]
fn ipv6_addresses_are_usable_at_once_with_prefilled_neighbours() {
    elec_testbed::require_root!();
    let tb = Testbed::new(TestbedConfig {
        receivers: 3,
        addrs_per_receiver: 2,
        ipv6: true,
        ..Default::default()
    })
    .unwrap();
    let sender = ip6_in(tb.sender_ns(), &["addr", "show", "dev", tb.sender_iface()]);
    assert!(sender.contains("fd77::1/64"), "{sender}");
    nothing_tentative(&tb);
    // Pre-filled, permanent, with each receiver's MAC.
    for r in 0..tb.num_receivers() {
        for addr in tb.receiver_addrs6(r) {
            let neigh = ip6_in(tb.sender_ns(), &["neigh", "show", &addr.to_string()]);
            assert!(neigh.contains("PERMANENT"), "{neigh}");
            assert!(neigh.contains(&format_mac(&tb.receiver_mac(r))), "{neigh}");
        }
    }
    every_address_answers(&tb);
}

#[test]
fn ndp_resolves_the_receivers_when_nothing_is_prefilled() {
    elec_testbed::require_root!();
    let tb = Testbed::new(TestbedConfig {
        receivers: 2,
        addrs_per_receiver: 2,
        ipv6: true,
        neighbours_prefilled: false,
        ..Default::default()
    })
    .unwrap();
    nothing_tentative(&tb);
    let before = ip6_in(tb.sender_ns(), &["neigh", "show", "dev", tb.sender_iface()]);
    assert!(!before.contains("fd77::"), "already resolved: {before}");
    every_address_answers(&tb);
    // NDP learned every receiver's MAC.
    for r in 0..tb.num_receivers() {
        for addr in tb.receiver_addrs6(r) {
            let neigh = ip6_in(tb.sender_ns(), &["neigh", "show", &addr.to_string()]);
            assert!(
                neigh.contains(&format_mac(&tb.receiver_mac(r))),
                "{addr}: {neigh}"
            );
            assert!(
                !neigh.contains("PERMANENT") && !neigh.contains("FAILED"),
                "{neigh}"
            );
        }
    }
}

#[test]
fn without_ipv6_the_links_have_no_ipv6_at_all() {
    elec_testbed::require_root!();
    let tb = Testbed::new(TestbedConfig {
        receivers: 1,
        ..Default::default()
    })
    .unwrap();
    assert!(tb.receiver_addrs6(0).is_empty());
    let addrs = ip6_in(tb.sender_ns(), &["addr", "show"]);
    assert!(addrs.trim().is_empty(), "{addrs}");
}
