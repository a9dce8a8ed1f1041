//! IPv6 and dual stack, seen from receivers in other network namespaces:
//! the same fan-out and the same guarantees as over IPv4. Every receiver
//! counts every datagram and checks every byte and the source; the
//! receivers' stacks verify the UDP checksums (transmit offload is off on the
//! bridge ports that face them, and `Udp6InCsumErrors` must stay 0).

mod common;

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use elec_broadcast::{Error, Mode};
use elec_testbed::{in_namespace, pattern, Testbed, TestbedConfig, SENDER_ADDR6};

const COUNTS: [usize; 8] = [1, 2, 8, 9, 16, 64, 256, 300];

fn testbed6(receivers: usize, addrs_per_receiver: usize) -> Testbed {
    testbed(TestbedConfig {
        receivers,
        addrs_per_receiver,
        ipv6: true,
        ..Default::default()
    })
}

fn v6(dests: &[SocketAddrV6]) -> Vec<SocketAddr> {
    dests.iter().copied().map(SocketAddr::V6).collect()
}

/// A UDP socket in the sender namespace bound to `addr`; with `only_v6`
/// false an IPv6 socket also reaches IPv4 destinations.
fn bound(tb: &Testbed, addr: SocketAddr, only_v6: bool) -> UdpSocket {
    in_namespace(tb.sender_ns(), || {
        let domain = socket2::Domain::for_address(addr);
        let socket = socket2::Socket::new(domain, socket2::Type::DGRAM, None)?;
        if addr.is_ipv6() {
            socket.set_only_v6(only_v6)?;
        }
        socket.bind(&addr.into())?;
        Ok::<_, std::io::Error>(UdpSocket::from(socket))
    })
    .expect("entering the sender namespace")
    .expect("binding a sender socket")
}

fn sender6(tb: &Testbed, port: u16) -> UdpSocket {
    bound(tb, SocketAddr::new(SENDER_ADDR6.into(), port), true)
}

fn assert_no_checksum_errors6(tb: &Testbed) {
    let errors = tb.udp6_in_csum_errors().expect("reading Udp6InCsumErrors");
    assert!(
        errors.iter().all(|&e| e == 0),
        "Udp6InCsumErrors per receiver: {errors:?}"
    );
}

#[test]
fn every_ipv6_destination_receives_exactly_one_intact_copy() {
    elec_testbed::require_root!();
    let tb = testbed6(8, 4);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 5000);
    // The interface's MTU minus 48 bytes of IPv6 and UDP headers.
    let max = broadcaster.max_payload() - 20;
    assert_eq!(max, 1500 - 48);

    let sizes = [0, 1, 64, 1200, max];
    every_count_and_size(&tb, &broadcaster, &socket, &COUNTS, &sizes, |n| {
        tb.destinations6(n, 7000)
    });
    // One byte more does not fit, and nothing is sent.
    let dests = tb.destinations6(4, 7000);
    assert_too_large(
        broadcaster.broadcast(&socket, &vec![0; max + 1], &v6(&dests)),
        max,
        1500,
    );
    assert_no_checksum_errors6(&tb);

    let stats = broadcaster.stats();
    let kernel = broadcaster.kernel_counters().unwrap();
    assert_eq!(stats.fan_outs, kernel.fan_outs, "{stats:?}");
    assert_eq!(stats.kernel_copies, kernel.clones, "{stats:?}");
    assert_eq!((stats.copies_failed, kernel.clone_failures), (0, 0));
    assert_eq!((stats.user_space_copies, kernel.mismatches), (0, 0));
}

#[test]
fn ipv6_checksums_are_right_when_the_sender_computes_them_in_software() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 2,
        sender_tx_checksum_offload: false,
        ipv6: true,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 5001);
    let dests = tb.destinations6(24, 6000);
    let rx = tb.receivers(&dests).unwrap();
    let mut sent = Vec::new();
    for (seq, size) in [1usize, 2, 3, 700, 1200, 1452].into_iter().enumerate() {
        let message = pattern(seq as u64 * 7, size);
        let report = broadcaster
            .broadcast(&socket, &message, &v6(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        assert_eq!(report.kernel_copies, dests.len());
        sent.push(message);
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
    }
    expect_exactly_once(rx, &dests, &sent);
    assert_no_checksum_errors6(&tb);
}

#[test]
fn a_batch_of_ipv6_payloads_arrives_whole_and_in_order() {
    elec_testbed::require_root!();
    let tb = testbed6(4, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 5002);
    let dests = tb.destinations6(4, 6100);
    let rx = tb.receivers(&dests).unwrap();
    // Equal sizes (one segmented carrier) and unequal ones (one carrier per
    // payload).
    let equal: Vec<Vec<u8>> = (0..8).map(|s| pattern(s, 300)).collect();
    let unequal: Vec<Vec<u8>> = (8..16).map(|s| pattern(s, 100 + s as usize)).collect();
    let mut sent = Vec::new();
    for batch in [&equal, &unequal] {
        let payloads: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
        let reports = broadcaster
            .broadcast_batch(&socket, &payloads, &v6(&dests))
            .unwrap();
        for report in &reports {
            assert_complete(report, dests.len());
            assert_eq!(report.kernel_copies, dests.len());
        }
        sent.extend(batch.iter().cloned());
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
    }
    let got = rx.finish(SETTLE);
    got.check_exactly_once(&dests, &sent).unwrap();
    for dest in &dests {
        assert_eq!(got.datagrams(dest), &sent[..], "{dest}: in order");
    }
    assert_no_checksum_errors6(&tb);
}

#[test]
fn concurrent_ipv6_broadcasts_never_see_each_others_destinations() {
    elec_testbed::require_root!();
    let tb = testbed6(4, 2);
    let broadcaster = Arc::new(broadcaster(&tb, Mode::Kernel));
    // Four senders: two with a socket each, two sharing one; each has its
    // own destinations (own ports) and its own message size.
    let shared = Arc::new(sender6(&tb, 5100));
    let senders: Vec<(Arc<UdpSocket>, Vec<SocketAddrV6>, usize)> = (0..4)
        .map(|t| {
            let socket = match t {
                0 | 1 => Arc::new(sender6(&tb, 5200 + t as u16)),
                _ => Arc::clone(&shared),
            };
            (
                socket,
                tb.destinations6(10 + t, 8000 + 100 * t as u16),
                100 + t,
            )
        })
        .collect();
    let all: Vec<SocketAddrV6> = senders.iter().flat_map(|(_, d, _)| d.clone()).collect();
    let rx = tb.receivers(&all).unwrap();
    const MESSAGES: u64 = 40;
    let threads: Vec<_> = senders
        .iter()
        .map(|(socket, dests, size)| {
            let (socket, dests, size) = (Arc::clone(socket), v6(dests), *size);
            let broadcaster = Arc::clone(&broadcaster);
            thread::spawn(move || {
                for seq in 0..MESSAGES {
                    let report = broadcaster
                        .broadcast(&*socket, &pattern(seq, size), &dests)
                        .unwrap();
                    assert_complete(&report, dests.len());
                    thread::sleep(Duration::from_micros(300));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let total: usize = senders.iter().map(|(_, d, _)| d.len()).sum();
    rx.wait_for_total(total * MESSAGES as usize, WAIT);
    let got = rx.finish(SETTLE);
    for (_, dests, size) in &senders {
        let sent: Vec<Vec<u8>> = (0..MESSAGES).map(|s| pattern(s, *size)).collect();
        got.check_exactly_once(dests, &sent).unwrap();
    }
    assert_no_checksum_errors6(&tb);
}

#[test]
fn unresolved_ipv6_neighbours_are_resolved_by_a_send_never_dropped() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 2,
        neighbours_prefilled: false,
        ipv6: true,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 5300);
    let dests = tb.destinations6(8, 6200);
    let rx = tb.receivers(&dests).unwrap();
    let mut sent = Vec::new();
    let mut user_space = 0;
    // The first broadcast finds no neighbour: its copies go from user space
    // and the kernel resolves them (NDP, through the attached program); the
    // later ones find them resolved and fan out.
    for seq in 0..20 {
        let message = pattern(seq, 200);
        let report = broadcaster
            .broadcast(&socket, &message, &v6(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        user_space += report.user_space_copies;
        sent.push(message);
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
        if report.kernel_copies == dests.len() && seq > 0 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    assert!(
        user_space >= dests.len(),
        "the first broadcast went from user space"
    );
    let last = broadcaster.stats();
    assert!(
        last.kernel_copies > 0,
        "NDP never resolved the neighbours: {last:?}"
    );
    expect_exactly_once(rx, &dests, &sent);
    assert_no_checksum_errors6(&tb);
}

#[test]
fn link_local_destinations_fan_out_on_the_broadcasters_interface() {
    elec_testbed::require_root!();
    let tb = testbed6(4, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let scope = tb.sender_ifindex().unwrap();
    assert_eq!(scope, broadcaster.interface_index());
    let socket = bound(&tb, "[::]:5400".parse().unwrap(), true);
    let dests: Vec<SocketAddrV6> = (0..tb.num_receivers())
        .flat_map(|i| {
            let ip = tb.receiver_link_local(i);
            [6300, 6301].map(|port| SocketAddrV6::new(ip, port, 0, scope))
        })
        .collect();
    let rx = tb.receivers(&dests).unwrap();
    let mut sent = Vec::new();
    for seq in 0..5 {
        let message = pattern(seq, 64 + seq as usize);
        let report = broadcaster
            .broadcast(&socket, &message, &v6(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        assert_eq!(report.kernel_copies, dests.len(), "{report:?}");
        sent.push(message);
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
    }
    let got = rx.finish(SETTLE);
    got.check_exactly_once(&dests, &sent).unwrap();
    let source = SocketAddr::V6(SocketAddrV6::new(tb.sender_link_local(), 5400, 0, 0));
    for dest in &dests {
        for s in got.sources(dest) {
            // The receiver sees the sender's link-local address (with its
            // own scope id).
            assert_eq!((s.ip(), s.port()), (source.ip(), source.port()), "{dest}");
        }
    }
    // Without a scope id a link-local address names no interface.
    let unscoped = SocketAddr::V6(SocketAddrV6::new(tb.receiver_link_local(0), 6300, 0, 0));
    match broadcaster.broadcast(&socket, b"x", &[unscoped]) {
        Err(Error::InvalidDestination { destination }) => assert_eq!(destination, unscoped),
        other => panic!("expected InvalidDestination, got {other:?}"),
    }
    assert_no_checksum_errors6(&tb);
}

#[test]
fn a_dual_stack_socket_sends_a_mixed_list_one_send_per_family() {
    elec_testbed::require_root!();
    let tb = testbed6(4, 2);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = bound(&tb, "[::]:5500".parse().unwrap(), false);
    let dests4 = tb.destinations(12, 6400);
    let dests6 = tb.destinations6(12, 6400);
    // Interleaved, and two IPv4 destinations given as IPv4-mapped IPv6
    // addresses: they are IPv4 destinations too.
    let mut list: Vec<SocketAddr> = Vec::new();
    for (k, (d4, d6)) in dests4.iter().zip(&dests6).enumerate() {
        list.push(match k {
            0 | 5 => SocketAddr::V6(SocketAddrV6::new(d4.ip().to_ipv6_mapped(), d4.port(), 0, 0)),
            _ => SocketAddr::V4(*d4),
        });
        list.push(SocketAddr::V6(*d6));
    }
    let mut all: Vec<SocketAddr> = addrs(&dests4);
    all.extend(v6(&dests6));
    // One fan-out per family.
    let got = in_the_kernel(&tb, &broadcaster, &socket, &list, &all, 6, 500, 2);
    for d in &dests4 {
        let want = SocketAddr::V4(SocketAddrV4::new(tb.sender_addr(), 5500));
        assert!(got.sources(d).iter().all(|s| *s == want), "{d}");
    }
    for d in &dests6 {
        let want = SocketAddr::new(IpAddr::V6(SENDER_ADDR6), 5500);
        assert!(got.sources(d).iter().all(|s| *s == want), "{d}");
    }
    assert_no_checksum_errors(&tb);
    assert_no_checksum_errors6(&tb);
}

#[test]
fn other_ipv6_traffic_on_the_socket_and_the_interface_passes_untouched() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 1,
        neighbours_prefilled: false,
        ipv6: true,
        ..Default::default()
    });
    let broadcaster = Arc::new(broadcaster(&tb, Mode::Kernel));
    let socket = Arc::new(sender6(&tb, 5600));
    let dests = tb.destinations6(4, 6500);
    let rx = tb.receivers(&dests).unwrap();
    // Another thread sends ordinary datagrams on the same socket to the
    // first destination (the carrier's) while broadcasts run.
    const MESSAGES: u64 = 60;
    let plain = {
        let socket = Arc::clone(&socket);
        let to = dests[0];
        thread::spawn(move || {
            for seq in 0..MESSAGES {
                socket.send_to(&pattern(1000 + seq, 33), to).unwrap();
                thread::sleep(Duration::from_micros(200));
            }
        })
    };
    for seq in 0..MESSAGES {
        let report = broadcaster
            .broadcast(&*socket, &pattern(seq, 77), &v6(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        thread::sleep(Duration::from_micros(200));
    }
    plain.join().unwrap();
    rx.wait_for_total(dests.len() * MESSAGES as usize + MESSAGES as usize, WAIT);
    let got = rx.finish(SETTLE);
    let broadcasts: Vec<Vec<u8>> = (0..MESSAGES).map(|s| pattern(s, 77)).collect();
    got.check_exactly_once(&dests[1..], &broadcasts).unwrap();
    let mut first: Vec<Vec<u8>> = broadcasts.clone();
    first.extend((0..MESSAGES).map(|s| pattern(1000 + s, 33)));
    got.check_exactly_once(&dests[..1], &first).unwrap();

    // ICMPv6 echo (and the NDP before it) through the attached program.
    for i in 0..tb.num_receivers() {
        let to = tb.receiver_addrs6(i)[0];
        let replied = in_namespace(tb.sender_ns(), || ping6(to, i as u16))
            .expect("entering the sender namespace");
        assert!(replied, "no echo reply from {to}");
    }
    assert!(broadcaster.stats().kernel_copies > 0);
    assert_no_checksum_errors6(&tb);
}

/// Sends one ICMPv6 echo request to `to` from a raw socket and waits (at
/// most [`WAIT`]) for its reply.
fn ping6(to: std::net::Ipv6Addr, sequence: u16) -> bool {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6)).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let id = (std::process::id() as u16) ^ 0x6e6e;
    // Type 128 (echo request), code 0, checksum (the kernel fills it in
    // for ICMPv6 raw sockets), identifier, sequence, data.
    let mut request = vec![128, 0, 0, 0];
    request.extend(id.to_be_bytes());
    request.extend(sequence.to_be_bytes());
    request.extend(b"elec-broadcast ping6");
    let deadline = Instant::now() + WAIT;
    let target = SocketAddr::V6(SocketAddrV6::new(to, 0, 0, 0));
    while Instant::now() < deadline {
        socket.send_to(&request, &target.into()).unwrap();
        let mut buf = [std::mem::MaybeUninit::new(0u8); 1500];
        while let Ok((len, from)) = socket.recv_from(&mut buf) {
            // SAFETY: recv_from initialised the first `len` bytes.
            let reply: Vec<u8> = buf[..len]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            let from = from.as_socket().map(|f| f.ip());
            if from == Some(IpAddr::V6(to))
                && reply.len() == request.len()
                && reply[0] == 129
                && reply[4..] == request[4..]
            {
                return true;
            }
        }
    }
    false
}

#[test]
fn ipv6_user_space_mode_sends_every_copy_exactly_once() {
    elec_testbed::require_root!();
    let tb = testbed6(4, 2);
    let broadcaster = broadcaster(&tb, Mode::UserSpace);
    let socket = sender6(&tb, 5700);
    let dests = tb.destinations6(300, 6600);
    let rx = tb.receivers(&dests).unwrap();
    let mut sent = Vec::new();
    for seq in 0..3 {
        let message = pattern(seq, 1452);
        let report = broadcaster
            .broadcast(&socket, &message, &v6(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        assert_eq!(report.user_space_copies, dests.len());
        sent.push(message);
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
    }
    expect_exactly_once(rx, &dests, &sent);
    assert_too_large(
        broadcaster.broadcast(&socket, &[0; 1453], &v6(&dests)),
        1452,
        1500,
    );
}

/// `IPV6_DSTOPTS` (<linux/in6.h>): a sticky destination options header on
/// every datagram of the socket.
const IPV6_DSTOPTS: libc::c_int = 59;

#[test]
fn datagrams_with_extension_headers_pass_and_their_copies_go_from_user_space() {
    elec_testbed::require_root!();
    let tb = testbed6(4, 2);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 5800);
    // A destination options header holding one PadN option: next header
    // (filled in by the kernel), length 0 (8 bytes), PadN of 4 bytes.
    let options: [u8; 8] = [0, 0, 1, 4, 0, 0, 0, 0];
    // SAFETY: `options` outlives the call and its length is passed.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IPV6,
            IPV6_DSTOPTS,
            options.as_ptr().cast(),
            options.len() as libc::socklen_t,
        )
    };
    assert_eq!(set, 0, "IPV6_DSTOPTS: {}", std::io::Error::last_os_error());
    let dests = tb.destinations6(8, 6700);
    let rx = tb.receivers(&dests).unwrap();
    let mut sent = Vec::new();
    for seq in 0..4 {
        let message = pattern(seq, 300);
        let report = broadcaster
            .broadcast(&socket, &message, &v6(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        assert_eq!(report.kernel_copies, 0, "{report:?}");
        sent.push(message);
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
    }
    expect_exactly_once(rx, &dests, &sent);
    let kernel = broadcaster.kernel_counters().unwrap();
    assert_eq!((kernel.fan_outs, kernel.mismatches), (0, 4), "{kernel:?}");
    assert_no_checksum_errors6(&tb);
}

#[test]
fn ipv6_bad_input_is_refused_before_anything_is_sent() {
    elec_testbed::require_root!();
    let tb = testbed6(2, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let dests = tb.destinations6(2, 6800);
    let rx = tb.receivers(&dests).unwrap();
    let socket4 = sender_socket(&tb, 5900);
    let socket6 = sender6(&tb, 5901);
    let d6 = SocketAddr::V6(dests[0]);
    let d4 = SocketAddr::V4(tb.destinations(1, 6800)[0]);
    let mapped = SocketAddr::V6(SocketAddrV6::new(
        tb.receiver_addrs(0)[0].to_ipv6_mapped(),
        6800,
        0,
        0,
    ));
    // An IPv6 destination on an IPv4 socket; an IPv4 one (plain or mapped)
    // on an IPv6-only socket.
    for (socket, list, kind) in [
        (&socket4, [d4, d6], "IPv4"),
        (&socket6, [d6, d4], "IPv6-only"),
        (&socket6, [d6, mapped], "IPv6-only"),
    ] {
        match broadcaster.broadcast(socket, b"x", &list) {
            Err(Error::FamilyMismatch {
                destination,
                socket,
            }) => assert_eq!((destination, socket), (list[1], kind)),
            other => panic!("expected FamilyMismatch for {}, got {other:?}", list[1]),
        }
    }
    let multicast: SocketAddr = "[ff02::1]:6800".parse().unwrap();
    match broadcaster.broadcast(&socket6, b"x", &[d6, multicast]) {
        Err(Error::MulticastDestination { destination }) => assert_eq!(destination, multicast),
        other => panic!("expected MulticastDestination, got {other:?}"),
    }
    for invalid in ["[::]:6800", "[fd77::2:1]:0", "[fe80::1]:6800"] {
        let invalid: SocketAddr = invalid.parse().unwrap();
        match broadcaster.broadcast(&socket6, b"x", &[d6, invalid]) {
            Err(Error::InvalidDestination { destination }) => assert_eq!(destination, invalid),
            other => panic!("expected InvalidDestination for {invalid}, got {other:?}"),
        }
    }
    // Nothing was sent by any of them.
    rx.finish(SETTLE).check_silent(&dests).unwrap();
    assert_eq!(broadcaster.stats().broadcasts, 0);
}

/// Broadcasts `messages` messages (from `first`) to `dests` through
/// `socket`, one at a time, and checks that every destination got each
/// exactly once, intact. Returns the copies the kernel made.
fn all_arrive(
    tb: &Testbed,
    broadcaster: &elec_broadcast::Broadcaster,
    socket: &UdpSocket,
    dests: &[SocketAddrV6],
    first: u64,
    messages: u64,
) -> usize {
    all_arrive_also(tb, broadcaster, socket, dests, None, first, messages)
}

/// [`all_arrive`], with one more destination (second in the list) that is
/// not a testbed address: an address bound in namespace `ns`.
fn all_arrive_also(
    tb: &Testbed,
    broadcaster: &elec_broadcast::Broadcaster,
    socket: &UdpSocket,
    dests: &[SocketAddrV6],
    also: Option<(&str, SocketAddrV6)>,
    first: u64,
    messages: u64,
) -> usize {
    let rx = tb.receivers(dests).unwrap();
    let extra = also.map(|(ns, addr)| {
        let socket = in_namespace(ns, || UdpSocket::bind(addr)).unwrap().unwrap();
        socket.set_read_timeout(Some(WAIT)).unwrap();
        socket
    });
    let mut list = v6(dests);
    if let Some((_, addr)) = also {
        list.insert(1.min(list.len()), SocketAddr::V6(addr));
    }
    let mut sent = Vec::new();
    let mut kernel = 0;
    for seq in first..first + messages {
        let message = pattern(seq, 150);
        let report = broadcaster.broadcast(socket, &message, &list).unwrap();
        assert_complete(&report, list.len());
        kernel += report.kernel_copies;
        if let Some(extra) = &extra {
            let mut buf = [0u8; 2048];
            let (len, from) = extra
                .recv_from(&mut buf)
                .expect("the extra destination's copy");
            assert_eq!(
                &buf[..len],
                &message[..],
                "message {seq} at the extra destination"
            );
            assert_eq!(from, socket.local_addr().unwrap());
        }
        sent.push(message);
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
    }
    if let Err(err) = rx.finish(SETTLE).check_exactly_once(dests, &sent) {
        panic!("messages {first}..: {err}");
    }
    if let Some(extra) = extra {
        extra.set_nonblocking(true).unwrap();
        let mut buf = [0u8; 2048];
        assert!(
            extra.recv(&mut buf).is_err(),
            "a copy too many at the extra destination"
        );
    }
    kernel
}

/// How long the tests below give a change's notification to be applied
/// (it is applied within microseconds; a broadcast made in between may
/// still use what the change made stale, as a `sendto` may).
const NOTIFIED: Duration = Duration::from_millis(50);

#[test]
fn after_an_ipv6_neighbours_mac_changes_its_copies_follow_the_new_mac() {
    elec_testbed::require_root!();
    let tb = testbed6(3, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 6000);
    let dests = tb.destinations6(3, 7000);
    assert_eq!(all_arrive(&tb, &broadcaster, &socket, &dests, 0, 5), 15);
    // Receiver 1 takes a new MAC, and the sender's neighbour entry follows:
    // a copy to the old MAC would be dropped by the receiver.
    let target = tb.receiver_addrs6(1)[0];
    ip(tb.receiver_ns(1), "link set eth0 address 02:eb:0f:00:00:61");
    ip(
        tb.sender_ns(),
        &format!("-6 neigh replace {target} lladdr 02:eb:0f:00:00:61 dev eth0 nud permanent"),
    );
    thread::sleep(NOTIFIED);
    assert_eq!(all_arrive(&tb, &broadcaster, &socket, &dests, 5, 5), 15);
}

#[test]
fn after_an_ipv6_route_change_copies_take_the_new_next_hop() {
    elec_testbed::require_root!();
    let tb = testbed6(4, 1);
    // fd99::1 lives on receiver 0 and is reached through a router:
    // receiver 1 at first, receiver 2 after the change.
    let target = "fd99::1".parse::<std::net::Ipv6Addr>().unwrap();
    let host = tb.receiver_addrs6(0)[0];
    let (r1, r2) = (tb.receiver_addrs6(1)[0], tb.receiver_addrs6(2)[0]);
    ip(
        tb.receiver_ns(0),
        &format!("-6 addr add {target}/128 dev eth0 nodad"),
    );
    for router in [1, 2] {
        let ns = tb.receiver_ns(router);
        ip(ns, &format!("-6 route add {target}/128 via {host}"));
        sysctl(ns, "/proc/sys/net/ipv6/conf/all/forwarding", "1");
    }
    ip(
        tb.sender_ns(),
        &format!("-6 route add {target}/128 via {r1}"),
    );
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 6001);
    let dests = tb.destinations6(4, 7100);
    let also = Some((tb.receiver_ns(0), SocketAddrV6::new(target, 7100, 0, 0)));
    // The copies are made in the kernel, the router's MAC on fd99::1's.
    let kernel = all_arrive_also(&tb, &broadcaster, &socket, &dests, also, 0, 5);
    assert_eq!(kernel, 25);
    // Router 1 stops forwarding, then the route moves to router 2: only a
    // broadcaster that followed the change reaches fd99::1.
    sysctl(
        tb.receiver_ns(1),
        "/proc/sys/net/ipv6/conf/all/forwarding",
        "0",
    );
    ip(
        tb.sender_ns(),
        &format!("-6 route replace {target}/128 via {r2}"),
    );
    thread::sleep(NOTIFIED);
    let kernel = all_arrive_also(&tb, &broadcaster, &socket, &dests, also, 5, 5);
    assert_eq!(kernel, 25);
}

#[test]
fn after_the_link_goes_down_and_up_ipv6_copies_flow_again() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 3,
        addrs_per_receiver: 1,
        neighbours_prefilled: false,
        ipv6: true,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 6002);
    let dests = tb.destinations6(3, 7200);
    // Neighbours resolved by NDP on the first broadcast.
    all_arrive(&tb, &broadcaster, &socket, &dests, 0, 3);
    assert!(all_arrive(&tb, &broadcaster, &socket, &dests, 3, 3) > 0);
    // Down and up: the neighbours are flushed (the addresses kept, as
    // keep_addr_on_down says); every copy still arrives, resolved again.
    sysctl(
        tb.sender_ns(),
        "/proc/sys/net/ipv6/conf/eth0/keep_addr_on_down",
        "1",
    );
    ip(tb.sender_ns(), "link set eth0 down");
    ip(tb.sender_ns(), "link set eth0 up");
    thread::sleep(NOTIFIED);
    all_arrive(&tb, &broadcaster, &socket, &dests, 6, 3);
    thread::sleep(Duration::from_millis(200));
    assert!(all_arrive(&tb, &broadcaster, &socket, &dests, 9, 3) > 0);
}

#[test]
fn an_ipv6_routes_own_mtu_refuses_what_does_not_fit_before_anything_is_sent() {
    elec_testbed::require_root!();
    let tb = testbed6(2, 1);
    // Receiver 1's address takes a route of MTU 1280 (the IPv6 minimum).
    let narrow = tb.receiver_addrs6(1)[0];
    ip(
        tb.sender_ns(),
        &format!("-6 route add {narrow}/128 dev eth0 mtu 1280"),
    );
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 6100);
    let dests = tb.destinations6(2, 7300);
    let rx = tb.receivers(&dests).unwrap();
    assert_too_large(
        broadcaster.broadcast(&socket, &[7; 1233], &v6(&dests)),
        1232,
        1280,
    );
    // What fits the narrow route goes to both, in the kernel.
    let message = pattern(1, 1232);
    let report = broadcaster
        .broadcast(&socket, &message, &v6(&dests))
        .unwrap();
    assert_complete(&report, 2);
    assert_eq!(report.kernel_copies, 2);
    expect_exactly_once(rx, &dests, &[message]);
}

#[test]
fn on_a_socket_bound_to_no_address_each_copy_carries_its_own_routes_source() {
    elec_testbed::require_root!();
    let tb = testbed6(3, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let scope = tb.sender_ifindex().unwrap();
    // Bound to [::]: the kernel gives a link-local destination the sender's
    // link-local source and a unique-local one fd77::1, so the two kinds
    // cannot share a fan-out (a copy keeps its carrier's source).
    let socket = bound(&tb, "[::]:5450".parse().unwrap(), true);
    let link_local: Vec<SocketAddrV6> = (0..tb.num_receivers())
        .map(|i| SocketAddrV6::new(tb.receiver_link_local(i), 6350, 0, scope))
        .collect();
    let unique_local = tb.destinations6(3, 6350);
    // Interleaved, a link-local destination first (the first carrier's).
    let mut list = Vec::new();
    for (l, u) in link_local.iter().zip(&unique_local) {
        list.push(SocketAddr::V6(*l));
        list.push(SocketAddr::V6(*u));
    }
    let mut all = link_local.clone();
    all.extend(&unique_local);
    // One fan-out per source.
    let got = in_the_kernel(&tb, &broadcaster, &socket, &list, &all, 4, 300, 2);
    for d in &link_local {
        for s in got.sources(d) {
            assert_eq!(s.ip(), IpAddr::V6(tb.sender_link_local()), "{d}");
        }
    }
    for d in &unique_local {
        for s in got.sources(d) {
            assert_eq!(s.ip(), IpAddr::V6(SENDER_ADDR6), "{d}");
        }
    }
    assert_no_checksum_errors6(&tb);
}

/// `UDP_NO_CHECK6_TX` (<linux/udp.h>).
const UDP_NO_CHECK6_TX: libc::c_int = 101;

#[test]
fn a_socket_sending_ipv6_without_checksums_still_broadcasts() {
    elec_testbed::require_root!();
    let tb = testbed6(2, 2);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 5460);
    let on: libc::c_int = 1;
    // SAFETY: `on` outlives the call and its size is passed.
    let set = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_UDP,
            UDP_NO_CHECK6_TX,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        set,
        0,
        "UDP_NO_CHECK6_TX: {}",
        std::io::Error::last_os_error()
    );
    // The kernel refuses UDP_SEGMENT on such a socket (EINVAL, as for a
    // datagram too large): plain sends, every copy sent, nothing refused
    // as too large. (Receivers drop IPv6 datagrams without a checksum
    // unless they set UDP_NO_CHECK6_RX; the sends are what is checked.)
    let dests = tb.destinations6(4, 6450);
    for seq in 0..3 {
        let report = broadcaster
            .broadcast(&socket, &pattern(seq, 10 + seq as usize), &v6(&dests))
            .expect("a broadcast without checksums");
        assert_complete(&report, dests.len());
    }
}

#[test]
fn an_ipv6_socket_bound_to_an_ipv4_mapped_address_sends_ipv4_only() {
    elec_testbed::require_root!();
    let tb = testbed6(2, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let mapped = SocketAddrV6::new(tb.sender_addr().to_ipv6_mapped(), 5470, 0, 0);
    let socket = bound(&tb, SocketAddr::V6(mapped), false);
    let dests4 = tb.destinations(2, 6470);
    let d6 = SocketAddr::V6(tb.destinations6(1, 6470)[0]);
    let rx = tb.receivers(&dests4).unwrap();
    match broadcaster.broadcast(&socket, b"x", &[SocketAddr::V4(dests4[0]), d6]) {
        Err(Error::FamilyMismatch {
            destination,
            socket,
        }) => assert_eq!((destination, socket), (d6, "IPv4-mapped")),
        other => panic!("expected FamilyMismatch, got {other:?}"),
    }
    let message = pattern(3, 99);
    let report = broadcaster
        .broadcast(&socket, &message, &addrs(&dests4))
        .unwrap();
    assert_complete(&report, 2);
    assert_eq!(report.kernel_copies, 2);
    expect_exactly_once(rx, &dests4, &[message]);
}

#[test]
fn each_family_is_held_to_its_own_routes_mtu_in_a_mixed_list() {
    elec_testbed::require_root!();
    let tb = testbed6(2, 1);
    // An IPv4 route of MTU 1400; the IPv6 destinations take the link's 1500.
    let narrow = tb.receiver_addrs(1)[0];
    ip(
        tb.sender_ns(),
        &format!("route add {narrow}/32 dev eth0 mtu 1400"),
    );
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = bound(&tb, "[::]:5480".parse().unwrap(), false);
    let mut list = addrs(&tb.destinations(2, 6480));
    list.extend(v6(&tb.destinations6(2, 6480)));
    // 1372 + 28 = 1400 and 1372 + 48 <= 1500: it fits every destination.
    let report = broadcaster.broadcast(&socket, &[5; 1372], &list).unwrap();
    assert_complete(&report, 4);
    assert_too_large(
        broadcaster.broadcast(&socket, &[5; 1373], &list),
        1372,
        1400,
    );
}

#[test]
fn an_ipv6_mtu_below_the_links_is_the_ipv6_limit() {
    elec_testbed::require_root!();
    let tb = testbed6(2, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 5490);
    let dests = tb.destinations6(2, 6490);
    let rx = tb.receivers(&dests).unwrap();
    // The interface's IPv6 MTU set below its MTU after the broadcaster
    // started (no notification says so): the kernel refuses the carrier, and
    // the error gives the IPv6 MTU and what fits it.
    sysctl(tb.sender_ns(), "/proc/sys/net/ipv6/conf/eth0/mtu", "1400");
    for _ in 0..2 {
        assert_too_large(
            broadcaster.broadcast(&socket, &[1; 1353], &v6(&dests)),
            1352,
            1400,
        );
    }
    // IPv4 keeps the link's 1500.
    assert_eq!(broadcaster.max_payload(), 1472);
    let message = pattern(9, 1352);
    let report = broadcaster
        .broadcast(&socket, &message, &v6(&dests))
        .unwrap();
    assert_complete(&report, 2);
    assert_eq!(report.kernel_copies, 2);
    expect_exactly_once(rx, &dests, &[message]);
}

/// Broadcasts `rounds` messages of `size` bytes to `list` through `socket`,
/// one at a time, each with every copy made in the kernel in `fan_outs`
/// fan-outs; returns what the receivers of `all` (the same destinations)
/// got, each message exactly once at each.
#[allow(clippy::too_many_arguments)]
fn in_the_kernel<A: Into<SocketAddr> + Copy>(
    tb: &Testbed,
    broadcaster: &elec_broadcast::Broadcaster,
    socket: &UdpSocket,
    list: &[SocketAddr],
    all: &[A],
    rounds: u64,
    size: usize,
    fan_outs: u64,
) -> elec_testbed::Received {
    let rx = tb.receivers(all).unwrap();
    let mut sent = Vec::new();
    for seq in 0..rounds {
        let message = pattern(seq, size);
        let before = broadcaster.stats().fan_outs;
        let report = broadcaster.broadcast(socket, &message, list).unwrap();
        assert_complete(&report, list.len());
        assert_eq!(report.kernel_copies, list.len(), "{report:?}");
        assert_eq!(broadcaster.stats().fan_outs - before, fan_outs, "fan-outs");
        sent.push(message);
        rx.wait_for_total(list.len() * sent.len(), WAIT);
    }
    let got = rx.finish(SETTLE);
    got.check_exactly_once(all, &sent).unwrap();
    got
}

#[test]
fn a_batch_is_checked_against_the_ipv6_mtu_before_anything_is_sent() {
    elec_testbed::require_root!();
    let tb = testbed6(2, 1);
    sysctl(tb.sender_ns(), "/proc/sys/net/ipv6/conf/eth0/mtu", "1400");
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender6(&tb, 5495);
    let dests = tb.destinations6(2, 6495);
    let rx = tb.receivers(&dests).unwrap();
    // 17 payloads: two batches of carriers; the last one, in the second,
    // fits the link's MTU but not the IPv6 MTU.
    let mut payloads: Vec<Vec<u8>> = (0..16).map(|s| pattern(s, 100)).collect();
    payloads.push(pattern(16, 1353));
    let payloads: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    assert_too_large(
        broadcaster.broadcast_batch(&socket, &payloads, &v6(&dests)),
        1352,
        1400,
    );
    rx.finish(SETTLE).check_silent(&dests).unwrap();
}
