//! The testbed's IPv6 (`TestbedConfig::ipv6`): unique-local addresses beside
//! the IPv4 ones, fixed link-local ones on the sender↔receiver link, none of
//! them tentative (duplicate address detection off, explicitly), and NDP
//! working where the sender's neighbour table is not pre-filled. Datagrams
//! from the sender reach every receiver address in the receivers'
//! namespaces, from the sender's address; the recording and counting
//! receivers take IPv6 destinations (link-local ones too) beside IPv4 ones,
//! and the IPv6 UDP counters of /proc/net/snmp6 are readable. Needs root.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::process::Command;
use std::time::Duration;

use elec_testbed::{
    format_mac, in_namespace, is_pattern, pattern, snmp6_counter, Testbed, TestbedConfig,
    SENDER_ADDR, SENDER_ADDR6, SENDER_LINK_LOCAL,
};

const WAIT: Duration = Duration::from_secs(5);
const SETTLE: Duration = Duration::from_millis(20);

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

/// The link-local addresses of `eth0` in `ns`.
fn link_locals(tb: &Testbed, ns: &str) -> Vec<Ipv6Addr> {
    ip6_in(
        ns,
        &[
            "-o",
            "addr",
            "show",
            "dev",
            tb.sender_iface(),
            "scope",
            "link",
        ],
    )
    .lines()
    .filter_map(|l| {
        let mut words = l.split_whitespace();
        words.find(|w| *w == "inet6")?;
        words.next()?.split('/').next()?.parse().ok()
    })
    .collect()
}

/// Each side of the sender↔receiver link has exactly its fixed link-local
/// address (none of the kernel's EUI-64 ones), not tentative.
fn fixed_link_locals(tb: &Testbed) {
    assert_eq!(tb.sender_link_local(), SENDER_LINK_LOCAL);
    assert_eq!(
        link_locals(tb, tb.sender_ns()),
        vec![SENDER_LINK_LOCAL],
        "sender"
    );
    for r in 0..tb.num_receivers() {
        let ll = tb.receiver_link_local(r);
        assert_eq!(
            ll,
            Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0x77, 0x100 + r as u16)
        );
        assert_eq!(link_locals(tb, tb.receiver_ns(r)), vec![ll], "receiver {r}");
        assert_eq!(tb.receiver_of(ll), Some(r));
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
    fixed_link_locals(&tb);
    // Pre-filled, permanent, with each receiver's MAC.
    for r in 0..tb.num_receivers() {
        for addr in tb
            .receiver_addrs6(r)
            .iter()
            .chain([&tb.receiver_link_local(r)])
        {
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
    fixed_link_locals(&tb);
    let before = ip6_in(tb.sender_ns(), &["neigh", "show", "dev", tb.sender_iface()]);
    assert!(!before.contains("fd77::"), "already resolved: {before}");
    assert!(!before.contains("fe80::77:"), "already resolved: {before}");
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
    // The IPv6 helpers say so instead of failing obscurely.
    let err = tb.sender_socket6().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("TestbedConfig::ipv6"), "{err}");
    let err = tb
        .receivers(&[SocketAddrV6::new("fd77::1:1".parse().unwrap(), 6000, 0, 0)])
        .unwrap_err();
    assert!(err.to_string().contains("TestbedConfig::ipv6"), "{err}");
    let panicked = std::panic::catch_unwind(|| tb.destinations6(1, 6000)).unwrap_err();
    let message = panicked.downcast_ref::<String>().unwrap();
    assert!(message.contains("TestbedConfig::ipv6"), "{message}");
    // The IPv6 counters exist all the same.
    assert_eq!(tb.udp6_in_csum_errors().unwrap(), vec![0]);
}

fn ipv6_testbed(receivers: usize, addrs_per_receiver: usize) -> Testbed {
    Testbed::new(TestbedConfig {
        receivers,
        addrs_per_receiver,
        ipv6: true,
        ..Default::default()
    })
    .unwrap()
}

/// Sum of a per-receiver counter's growth.
fn grown(after: &[u64], before: &[u64]) -> u64 {
    after.iter().zip(before).map(|(a, b)| a - b).sum()
}

#[test]
fn recording_receivers_take_ipv6_destinations_beside_ipv4_ones() {
    elec_testbed::require_root!();
    let tb = ipv6_testbed(3, 2);
    // The same addresses' IPv4 and IPv6 twins on the same ports: the
    // receivers' IPv6 sockets are IPV6_V6ONLY, so they do not clash.
    let dests6 = tb.destinations6(12, 6700);
    let dests4 = tb.destinations(12, 6700);
    for (d6, d4) in dests6.iter().zip(&dests4) {
        assert_eq!(d6.port(), d4.port());
        let r = tb.receiver_of(*d4.ip()).unwrap();
        assert_eq!(tb.receiver_of(*d6.ip()), Some(r));
        assert_eq!(tb.receiver_of(IpAddr::V6(*d6.ip())), Some(r));
        assert!(tb.receiver_addrs6(r).contains(d6.ip()));
    }
    assert_eq!(dests6[6].port(), 6701);
    let all: Vec<SocketAddr> = dests6
        .iter()
        .map(|&d| d.into())
        .chain(dests4.iter().map(|&d| d.into()))
        .collect();
    let before6 = tb.udp6_in_datagrams().unwrap();
    let before4 = tb.udp_in_datagrams().unwrap();
    let rx = tb.receivers(&all).unwrap();
    assert_eq!(rx.destinations(), all.as_slice());
    let sock6 = tb.sender_socket6().unwrap();
    let sock4 = tb.sender_socket().unwrap();
    let from6 = sock6.local_addr().unwrap();
    let from4 = sock4.local_addr().unwrap();
    assert_eq!(from6.ip(), SENDER_ADDR6);
    let sent6: Vec<Vec<u8>> = (0..3).map(|s| pattern(s, 100 + 700 * s as usize)).collect();
    let sent4: Vec<Vec<u8>> = (10..12).map(|s| pattern(s, 64)).collect();
    for m in &sent6 {
        for d in &dests6 {
            sock6.send_to(m, d).unwrap();
        }
    }
    for m in &sent4 {
        for d in &dests4 {
            sock4.send_to(m, d).unwrap();
        }
    }
    let want = dests6.len() * sent6.len() + dests4.len() * sent4.len();
    assert_eq!(rx.wait_for_total(want, WAIT), want);
    let got = rx.finish(SETTLE);
    assert_eq!(got.total(), want);
    assert_eq!(got.destinations(), all.as_slice());
    got.check_exactly_once(&dests6, &sent6).unwrap();
    got.check_exactly_once(&dests4, &sent4).unwrap();
    for d in &dests6 {
        // Every byte, in the order sent, from the sender's IPv6 socket.
        assert_eq!(got.datagrams(d), sent6.as_slice(), "{d}");
        assert_eq!(got.sources(d), vec![from6; sent6.len()].as_slice(), "{d}");
        assert_eq!(got.count(d), sent6.len());
        let same: SocketAddr = (*d).into();
        assert_eq!(got.count(&same), sent6.len());
    }
    for d in &dests4 {
        assert_eq!(got.datagrams(d), sent4.as_slice(), "{d}");
        assert_eq!(got.sources(d), vec![from4; sent4.len()].as_slice(), "{d}");
    }
    assert_eq!(
        grown(&tb.udp6_in_datagrams().unwrap(), &before6),
        (dests6.len() * sent6.len()) as u64
    );
    assert_eq!(
        grown(&tb.udp_in_datagrams().unwrap(), &before4),
        (dests4.len() * sent4.len()) as u64
    );
    assert_eq!(tb.udp6_in_csum_errors().unwrap(), vec![0; 3]);
    assert_eq!(tb.udp_in_csum_errors().unwrap(), vec![0; 3]);
}

#[test]
fn ipv6_problems_are_reported_as_for_ipv4() {
    elec_testbed::require_root!();
    let tb = ipv6_testbed(2, 1);
    let dests = tb.destinations6(3, 7100);
    let rx = tb.receivers(&dests).unwrap();
    let sock = tb.sender_socket6().unwrap();
    let good = pattern(0, 50);
    let mut bad = good.clone();
    bad[17] ^= 0xff;
    sock.send_to(&good, dests[0]).unwrap();
    sock.send_to(&good, dests[0]).unwrap();
    sock.send_to(&bad, dests[1]).unwrap();
    rx.wait_for_total(3, WAIT);
    let got = rx.finish(SETTLE);
    assert_eq!(got.count(&dests[0]), 2);
    let err = got
        .check_exactly_once(&dests, std::slice::from_ref(&good))
        .unwrap_err();
    for (d, copies) in [(dests[0], 2), (dests[1], 0), (dests[2], 0)] {
        let line = format!(
            "[{}]:{}: message #0 (50 bytes): expected 1 copy, got {copies}",
            d.ip(),
            d.port()
        );
        assert!(err.contains(&line), "{line} not in {err}");
    }
    let from = sock.local_addr().unwrap();
    assert!(
        err.contains(&format!("datagram #0 from {from} (50 bytes)")),
        "{err}"
    );
    assert!(err.contains("first difference at byte 17"), "{err}");
    assert!(got.check_silent(&dests[2..]).is_ok());
    let silent = got.check_silent(&dests[..1]).unwrap_err();
    assert!(silent.contains(&dests[0].to_string()), "{silent}");
    // An IPv6 destination that is not the receivers' is refused, and so is
    // an IPv4-mapped one (receivers take IPv4 destinations as IPv4).
    let stranger = SocketAddrV6::new("fd77::99:1".parse().unwrap(), 7000, 0, 0);
    assert!(tb.receivers(&[stranger]).is_err());
    let mapped = SocketAddrV6::new(tb.receiver_addrs(0)[0].to_ipv6_mapped(), 7000, 0, 0);
    let err = tb.receivers(&[mapped]).unwrap_err();
    assert!(err.to_string().contains("IPv4-mapped"), "{err}");
    // Listed twice, whatever the scope id.
    let ll = SocketAddrV6::new(tb.receiver_link_local(0), 7000, 0, 0);
    let mut scoped = ll;
    scoped.set_scope_id(tb.receiver_ifindex(0).unwrap());
    let err = tb.receivers(&[ll, scoped]).unwrap_err();
    assert!(err.to_string().contains("listed twice"), "{err}");
}

#[test]
fn a_dual_stack_socket_reaches_ipv4_and_ipv6_destinations() {
    elec_testbed::require_root!();
    let tb = ipv6_testbed(2, 1);
    let dest4 = tb.destinations(2, 6800);
    let dest6 = tb.destinations6(2, 6800);
    let all: Vec<SocketAddr> = dest4
        .iter()
        .map(|&d| d.into())
        .chain(dest6.iter().map(|&d| d.into()))
        .collect();
    let rx = tb.receivers(&all).unwrap();
    let dual = tb.sender_socket_dual().unwrap();
    let port = dual.local_addr().unwrap().port();
    let message = pattern(7, 333);
    for d in &dest4 {
        // IPv4 through the dual-stack socket: ::ffff:a.b.c.d.
        let mapped = SocketAddrV6::new(d.ip().to_ipv6_mapped(), d.port(), 0, 0);
        dual.send_to(&message, mapped).unwrap();
    }
    for d in &dest6 {
        dual.send_to(&message, d).unwrap();
    }
    // The IPv6-only socket refuses IPv4-mapped destinations (IPV6_V6ONLY).
    let mapped = SocketAddrV6::new(dest4[0].ip().to_ipv6_mapped(), dest4[0].port(), 0, 0);
    assert!(tb
        .sender_socket6()
        .unwrap()
        .send_to(&message, mapped)
        .is_err());
    assert_eq!(rx.wait_for_total(4, WAIT), 4);
    let got = rx.finish(SETTLE);
    got.check_exactly_once(&all, std::slice::from_ref(&message))
        .unwrap();
    for d in &dest4 {
        assert_eq!(
            got.sources(d),
            &[SocketAddr::V4(SocketAddrV4::new(SENDER_ADDR, port))]
        );
    }
    for d in &dest6 {
        assert_eq!(
            got.sources(d),
            &[SocketAddr::V6(SocketAddrV6::new(SENDER_ADDR6, port, 0, 0))]
        );
    }
    assert_eq!(tb.udp6_in_csum_errors().unwrap(), vec![0; 2]);
    assert_eq!(tb.udp_in_csum_errors().unwrap(), vec![0; 2]);
}

#[test]
fn link_local_destinations_with_the_senders_scope_id() {
    elec_testbed::require_root!();
    for neighbours_prefilled in [true, false] {
        let tb = Testbed::new(TestbedConfig {
            receivers: 3,
            ipv6: true,
            neighbours_prefilled,
            ..Default::default()
        })
        .unwrap();
        let scope = tb.sender_ifindex().unwrap();
        // The receivers bind them on their own eth0, whatever the scope id
        // given: none, or the sender's (as for a destination to send to).
        let given = if neighbours_prefilled { 0 } else { scope };
        let dests: Vec<SocketAddrV6> = (0..tb.num_receivers())
            .map(|r| SocketAddrV6::new(tb.receiver_link_local(r), 6900 + r as u16, 0, given))
            .collect();
        let rx = tb.receivers(&dests).unwrap();
        // Even one that names no interface of the receiver.
        let odd = SocketAddrV6::new(tb.receiver_link_local(0), 6999, 0, 12345);
        drop(tb.receivers(&[odd]).unwrap());
        // From the sender's link-local address.
        let local = SocketAddrV6::new(tb.sender_link_local(), 0, 0, scope);
        let sock = tb.in_sender(|| UdpSocket::bind(local)).unwrap().unwrap();
        let port = sock.local_addr().unwrap().port();
        let sent: Vec<Vec<u8>> = (0..4).map(|s| pattern(s, 1200)).collect();
        for m in &sent {
            for d in &dests {
                let mut to = *d;
                to.set_scope_id(scope);
                sock.send_to(m, to).unwrap();
            }
        }
        let want = dests.len() * sent.len();
        assert_eq!(
            rx.wait_for_total(want, WAIT),
            want,
            "prefilled {neighbours_prefilled}"
        );
        let got = rx.finish(SETTLE);
        got.check_exactly_once(&dests, &sent).unwrap();
        for (r, d) in dests.iter().enumerate() {
            assert_eq!(got.datagrams(d), sent.as_slice());
            // Looked up whatever the scope id.
            let mut other = *d;
            other.set_scope_id(scope - given);
            assert_eq!(got.count(&other), sent.len());
            // The source carries the receiver's interface as its scope.
            let from =
                SocketAddrV6::new(SENDER_LINK_LOCAL, port, 0, tb.receiver_ifindex(r).unwrap());
            assert_eq!(got.sources(d), vec![SocketAddr::V6(from); sent.len()]);
        }
        assert_eq!(tb.udp6_in_csum_errors().unwrap(), vec![0; 3]);
        assert_eq!(tb.udp6_in_datagrams().unwrap(), vec![sent.len() as u64; 3]);
    }
}

#[test]
fn counting_receivers_count_ipv6_destinations() {
    elec_testbed::require_root!();
    let tb = ipv6_testbed(3, 1);
    let dests6 = tb.destinations6(6, 7200);
    let dests4 = tb.destinations(3, 7200);
    let all: Vec<SocketAddr> = dests6
        .iter()
        .map(|&d| d.into())
        .chain(dests4.iter().map(|&d| d.into()))
        .collect();
    let counters = tb.counting_receivers(&all, Some(0)).unwrap();
    assert_eq!(counters.destinations(), all.as_slice());
    let sock6 = tb.sender_socket6().unwrap();
    let sock4 = tb.sender_socket().unwrap();
    let n_per = 200u64;
    for seq in 0..n_per {
        let m = pattern(seq, 300 + seq as usize);
        for d in &dests6 {
            sock6.send_to(&m, d).unwrap();
        }
        for d in &dests4 {
            sock4.send_to(&m, d).unwrap();
        }
    }
    let mut bad = pattern(1, 100);
    bad[99] = 0;
    assert!(!is_pattern(&bad));
    sock6.send_to(&bad, dests6[4]).unwrap();
    let want = n_per * all.len() as u64 + 1;
    assert_eq!(counters.wait_for_total(want, Duration::from_secs(10)), want);
    assert_eq!(counters.count(&dests6[4]), n_per + 1);
    assert_eq!(counters.count(&dests4[0]), n_per);
    let report = counters.stop();
    assert_eq!(report.total(), want);
    assert_eq!(report.total_mismatches(), 1);
    for d in &dests6 {
        let extra = u64::from(*d == dests6[4]);
        assert_eq!(report.count(d), n_per + extra, "{d}");
        assert_eq!(report.mismatches_at(d), extra, "{d}");
    }
    for d in &dests4 {
        assert_eq!(report.count(d), n_per, "{d}");
        assert_eq!(report.mismatches_at(d), 0, "{d}");
    }
    let elsewhere = SocketAddrV6::new(*dests6[0].ip(), 1, 0, 0);
    assert_eq!(report.count(&elsewhere), 0);
    assert_eq!(tb.udp6_rcvbuf_errors().unwrap(), vec![0; 3]);
    assert_eq!(tb.drops_past_sender().unwrap(), vec![0; 3]);
}

#[test]
fn udp6_counters_are_read_in_each_receiver() {
    elec_testbed::require_root!();
    let tb = ipv6_testbed(2, 1);
    assert_eq!(tb.udp6_in_csum_errors().unwrap(), vec![0; 2]);
    let before = tb.udp6_in_datagrams().unwrap();
    let dest = tb.destinations6(1, 7400)[0];
    let rx = tb.receivers(&[dest]).unwrap();
    let sock = tb.sender_socket6().unwrap();
    for _ in 0..5 {
        sock.send_to(&pattern(3, 80), dest).unwrap();
    }
    assert_eq!(rx.wait_for_total(5, WAIT), 5);
    drop(rx);
    tb.wait_quiet(Duration::from_millis(20), Duration::from_secs(2))
        .unwrap();
    let after = tb.udp6_in_datagrams().unwrap();
    assert_eq!(after[0] - before[0], 5);
    assert_eq!(after[1], before[1]);
    assert_eq!(
        snmp6_counter(tb.receiver_ns(0), "Udp6InDatagrams").unwrap(),
        after[0]
    );
    assert_eq!(
        snmp6_counter(tb.receiver_ns(0), "Udp6InCsumErrors").unwrap(),
        0
    );
    assert_eq!(tb.udp6_counter("InCsumErrors").unwrap(), vec![0; 2]);
    assert!(snmp6_counter(tb.receiver_ns(0), "Udp6NoSuchCounter").is_err());
}
