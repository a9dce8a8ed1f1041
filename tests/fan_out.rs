//! The kernel fan-out, seen from receivers in other network namespaces: they
//! count every datagram and check every byte, and the receivers' stacks
//! verify the UDP checksums (transmit offload is off on the bridge ports that
//! face them, and UdpInCsumErrors must stay 0).

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::Arc;
use std::thread;

use common::*;
use elec_broadcast::{Broadcaster, Mode};
use elec_testbed::{in_namespace, pattern, TestbedConfig};

const COUNTS: [usize; 8] = [1, 2, 8, 9, 16, 64, 256, 300];

#[test]
fn every_destination_receives_exactly_one_intact_copy() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 8,
        addrs_per_receiver: 4,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    assert_eq!(broadcaster.mode(), Mode::Kernel);
    let socket = sender_socket(&tb, 5000);
    let max = broadcaster.max_payload();
    assert_eq!(max, 1500 - 28);

    let sizes = [0, 1, 64, 1200, max];
    every_count_and_size(&tb, &broadcaster, &socket, &COUNTS, &sizes, |n| {
        tb.destinations(n, 7000)
    });
    assert_no_checksum_errors(&tb);

    let stats = broadcaster.stats();
    let kernel = broadcaster.kernel_counters().unwrap();
    assert_eq!(stats.fan_outs, kernel.fan_outs, "{stats:?}");
    assert_eq!(stats.kernel_copies, kernel.clones, "{stats:?}");
    assert_eq!((stats.copies_failed, kernel.clone_failures), (0, 0));
    assert_eq!(stats.user_space_copies, 0);
    assert_eq!(stats.broadcasts, (COUNTS.len() * 5 * 3) as u64);
}

#[test]
fn checksums_are_right_when_the_sender_computes_them_in_software() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 2,
        sender_tx_checksum_offload: false,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5001);
    let dests = tb.destinations(24, 6000);
    let rx = tb.receivers(&dests).unwrap();
    let mut sent = Vec::new();
    for (seq, size) in [1usize, 2, 3, 700, 1200, 1472].into_iter().enumerate() {
        let message = pattern(seq as u64 * 7, size);
        let report = broadcaster
            .broadcast(&socket, &message, &addrs(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        sent.push(message);
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
    }
    rx.finish(SETTLE).check_exactly_once(&dests, &sent).unwrap();
    assert_no_checksum_errors(&tb);
}

#[test]
fn concurrent_broadcasts_never_see_each_others_destinations() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 2,
        ..Default::default()
    });
    let broadcaster = Arc::new(broadcaster(&tb, Mode::Kernel));
    // Six senders: four with a socket each, two sharing one socket. Every
    // sender has its own destinations (own ports) and its own message size,
    // so each datagram says who sent it.
    let shared = Arc::new(sender_socket(&tb, 5100));
    let senders: Vec<(Arc<UdpSocket>, Vec<SocketAddrV4>, usize)> = (0..6)
        .map(|t| {
            let socket = if t < 4 {
                Arc::new(sender_socket(&tb, 5200 + t as u16))
            } else {
                Arc::clone(&shared)
            };
            let dests = tb.destinations(12 + t, 8000 + 100 * t as u16);
            (socket, dests, 100 + t)
        })
        .collect();
    let all: Vec<SocketAddrV4> = senders.iter().flat_map(|(_, d, _)| d.clone()).collect();
    let rx = tb.receivers(&all).unwrap();
    const MESSAGES: u64 = 40;

    let threads: Vec<_> = senders
        .iter()
        .map(|(socket, dests, size)| {
            let (broadcaster, socket, targets, size) = (
                Arc::clone(&broadcaster),
                Arc::clone(socket),
                addrs(dests),
                *size,
            );
            thread::spawn(move || {
                for seq in 0..MESSAGES {
                    let report = broadcaster
                        .broadcast(&*socket, &pattern(seq, size), &targets)
                        .unwrap();
                    assert_complete(&report, targets.len());
                    thread::sleep(std::time::Duration::from_micros(300));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    rx.wait_for_total(all.len() * MESSAGES as usize, WAIT);
    let got = rx.finish(SETTLE);
    for (_, dests, size) in &senders {
        let expected: Vec<Vec<u8>> = (0..MESSAGES).map(|seq| pattern(seq, *size)).collect();
        got.check_exactly_once(dests, &expected).unwrap();
    }
    assert_no_checksum_errors(&tb);
    assert_eq!(broadcaster.stats().user_space_copies, 0);
}

#[test]
fn traffic_of_other_sockets_and_ordinary_sends_pass_untouched() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let registered = sender_socket(&tb, 5300);
    let other = sender_socket(&tb, 5301);
    let dests = tb.destinations(8, 7000);
    let rx = tb.receivers(&dests).unwrap();

    // Register the socket and arm its slot once.
    let hello = pattern(1, 50);
    broadcaster
        .broadcast(&registered, &hello, &addrs(&dests))
        .unwrap();
    rx.wait_for_total(dests.len(), WAIT);
    // The same ports, from a socket the library never saw, and an ordinary
    // send on the registered socket: each reaches its one destination only.
    let plain = pattern(2, 60);
    other.send_to(&plain, dests[3]).unwrap();
    let ordinary = pattern(3, 70);
    registered.send_to(&ordinary, dests[5]).unwrap();
    rx.wait_for_total(dests.len() + 2, WAIT);

    let got = rx.finish(SETTLE);
    for (i, dest) in dests.iter().enumerate() {
        let mut expected = vec![hello.clone()];
        match i {
            3 => expected.push(plain.clone()),
            5 => expected.push(ordinary.clone()),
            _ => {}
        }
        got.check_exactly_once(&[*dest], &expected).unwrap();
    }
    let kernel = broadcaster.kernel_counters().unwrap();
    assert_eq!((kernel.fan_outs, kernel.clones), (1, dests.len() as u64));
}

#[test]
fn user_space_mode_delivers_the_same() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 4,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::UserSpace);
    assert_eq!(broadcaster.mode(), Mode::UserSpace);
    assert!(broadcaster.fallback_reason().is_none());
    let socket = sender_socket(&tb, 5400);
    let dests = tb.destinations(64, 7000);
    let rx = tb.receivers(&dests).unwrap();
    let sent = vec![pattern(0, 0), pattern(1, 1200)];
    for (i, message) in sent.iter().enumerate() {
        let report = broadcaster
            .broadcast(&socket, message, &addrs(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        assert_eq!(report.user_space_copies, dests.len());
        rx.wait_for_total(dests.len() * (i + 1), WAIT);
    }
    rx.finish(SETTLE).check_exactly_once(&dests, &sent).unwrap();
    let stats = broadcaster.stats();
    assert_eq!((stats.user_space_copies, stats.kernel_copies), (128, 0));
}

#[test]
fn unresolved_neighbours_are_sent_the_ordinary_way_then_fanned_out() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 2,
        neighbours_prefilled: false,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5500);
    let dests = tb.destinations(8, 7000);
    let rx = tb.receivers(&dests).unwrap();

    // Nothing is resolved yet: every copy goes the ordinary way, and the
    // kernel resolves the neighbours (queueing the datagrams meanwhile).
    let first = pattern(0, 100);
    let report = broadcaster
        .broadcast(&socket, &first, &addrs(&dests))
        .unwrap();
    assert_complete(&report, dests.len());
    assert_eq!(report.user_space_copies, dests.len(), "{report:?}");
    rx.wait_for_total(dests.len(), WAIT);

    // Once resolved, the fan-out takes over.
    let mut sent = vec![first];
    let mut fanned_out = false;
    for seq in 1..50 {
        thread::sleep(std::time::Duration::from_millis(25));
        let message = pattern(seq, 100);
        let report = broadcaster
            .broadcast(&socket, &message, &addrs(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        sent.push(message);
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
        if report.kernel_copies == dests.len() {
            fanned_out = true;
            break;
        }
    }
    assert!(
        fanned_out,
        "the fan-out never took over: {:?}",
        broadcaster.stats()
    );
    rx.finish(SETTLE).check_exactly_once(&dests, &sent).unwrap();
}

#[test]
fn local_destinations_and_fanned_out_ones_mix() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 2,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5600);
    let remote = tb.destinations(4, 7000);
    let rx = tb.receivers(&remote).unwrap();
    // Two receivers inside the sender's own namespace: its own address and loopback.
    let own = sender_socket(&tb, 7100);
    let looped = in_namespace(tb.sender_ns(), || UdpSocket::bind("127.0.0.1:7101"))
        .unwrap()
        .unwrap();
    for s in [&own, &looped] {
        s.set_read_timeout(Some(WAIT)).unwrap();
    }
    let mut targets = addrs(&remote);
    targets.insert(1, own.local_addr().unwrap());
    targets.push(looped.local_addr().unwrap());

    let message = pattern(9, 333);
    let report = broadcaster.broadcast(&socket, &message, &targets).unwrap();
    assert_complete(&report, targets.len());
    assert_eq!(
        (report.kernel_copies, report.user_space_copies),
        (4, 2),
        "{report:?}"
    );
    for s in [&own, &looped] {
        let mut buf = [0u8; 2048];
        let (len, _) = s.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], &message[..]);
        s.set_nonblocking(true).unwrap();
        assert!(s.recv_from(&mut buf).is_err(), "a second copy arrived");
    }
    expect_exactly_once(rx, &remote, &[message]);
}

#[test]
fn one_socket_can_broadcast_to_changing_lists() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 2,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5700);
    let all = tb.destinations(40, 7000);
    let rx = tb.receivers(&all).unwrap();
    // Alternate between overlapping lists; count what each destination should get.
    let lists = [&all[..10], &all[5..40], &all[..10], &all[39..40], &all[..]];
    let mut expected: HashMap<SocketAddrV4, Vec<Vec<u8>>> = HashMap::new();
    let mut total = 0;
    for (seq, list) in lists.iter().enumerate() {
        let message = pattern(seq as u64, 10 + seq);
        let report = broadcaster
            .broadcast(&socket, &message, &addrs(list))
            .unwrap();
        assert_complete(&report, list.len());
        for d in *list {
            expected.entry(*d).or_default().push(message.clone());
        }
        total += list.len();
        rx.wait_for_total(total, WAIT);
    }
    let got = rx.finish(SETTLE);
    for d in &all {
        got.check_exactly_once(&[*d], &expected[d]).unwrap();
    }
}

#[test]
fn duplicate_destinations_get_one_copy_per_mention() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 2,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5800);
    let dests = tb.destinations(2, 7000);
    let rx = tb.receivers(&dests).unwrap();
    let targets: Vec<SocketAddr> = addrs(&[dests[0], dests[1], dests[0]]);
    let message = pattern(4, 44);
    let report = broadcaster.broadcast(&socket, &message, &targets).unwrap();
    assert_complete(&report, 3);
    rx.wait_for_total(3, WAIT);
    let got = rx.finish(SETTLE);
    got.check_exactly_once(&[dests[0]], &[message.clone(), message.clone()])
        .unwrap();
    got.check_exactly_once(&[dests[1]], &[message]).unwrap();
}

#[test]
fn a_broadcaster_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Broadcaster>();
}

#[test]
fn a_closed_sockets_fd_reused_by_a_new_socket_still_delivers_exactly_once() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 4,
        ..Default::default()
    });
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let dests = tb.destinations(8, 7000);
    let rx = tb.receivers(&dests).unwrap();
    let mut sent = Vec::new();
    let socket = sender_socket(&tb, 5900);
    sent.push(pattern(0, 80));
    let report = broadcaster
        .broadcast(&socket, &sent[0], &addrs(&dests))
        .unwrap();
    assert_eq!(report.kernel_copies, dests.len());
    // Replace the socket behind the fd with a new one (as when a socket is
    // closed and the next one gets its fd number): dup2 closes the old socket.
    let other = sender_socket(&tb, 5901);
    use std::os::fd::AsRawFd;
    // SAFETY: both fds are open and owned by this test; dup2 atomically
    // makes `socket`'s fd refer to `other`'s socket.
    assert!(unsafe { libc::dup2(other.as_raw_fd(), socket.as_raw_fd()) } >= 0);
    drop(other);
    assert_eq!(socket.local_addr().unwrap().port(), 5901);
    for seq in 1..4 {
        sent.push(pattern(seq, 80));
        let report = broadcaster
            .broadcast(&socket, &sent[seq as usize], &addrs(&dests))
            .unwrap();
        assert_complete(&report, dests.len());
        // The first call on the new socket finds a stale registration, goes
        // the ordinary way, and re-registers; later calls are fanned out.
        if seq > 1 {
            assert_eq!(report.kernel_copies, dests.len(), "{report:?}");
        }
        rx.wait_for_total(dests.len() * sent.len(), WAIT);
    }
    rx.finish(SETTLE).check_exactly_once(&dests, &sent).unwrap();
}

#[test]
fn destinations_routed_through_another_interface_are_refused_in_both_modes() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: 2,
        ..Default::default()
    });
    // A second link, sender eth1 (10.88.0.1/24) <-> receiver 0's eth1
    // (10.88.0.2/24), beside the bridged eth0 the program is attached to.
    let ip = |ns: &str, args: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", ns])
            .args(args.split(' '))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let (sender, r0) = (tb.sender_ns(), tb.receiver_ns(0));
    ip(
        sender,
        &format!("link add eth1 type veth peer name eth1 netns {r0}"),
    );
    ip(sender, "addr add 10.88.0.1/24 dev eth1");
    ip(sender, "link set eth1 up");
    ip(r0, "addr add 10.88.0.2/24 dev eth1");
    ip(r0, "link set eth1 up");

    let remote = tb.destinations(4, 7000);
    let rx = tb.receivers(&remote).unwrap();
    let side = elec_testbed::udp_socket_in(r0, "10.88.0.2:7200".parse().unwrap()).unwrap();
    side.set_read_timeout(Some(std::time::Duration::from_millis(300)))
        .unwrap();
    let mut targets = addrs(&remote);
    targets.insert(2, side.local_addr().unwrap());
    let socket = sender_socket(&tb, 6100);

    // On eth0, in either mode; and on lo, where the user-space backend would
    // otherwise check sizes against lo's MTU and send through eth0 and eth1.
    let on_lo = in_namespace(sender, || Broadcaster::with_mode("lo", Mode::UserSpace))
        .unwrap()
        .unwrap();
    for broadcaster in [
        broadcaster(&tb, Mode::Kernel),
        broadcaster(&tb, Mode::UserSpace),
        on_lo,
    ] {
        let message = pattern(5, 900);
        let err = broadcaster
            .broadcast(&socket, &message, &targets)
            .unwrap_err();
        let expected = if broadcaster.interface() == "lo" {
            targets[0]
        } else {
            targets[2]
        };
        match &err {
            elec_broadcast::Error::OtherInterface {
                destination,
                interface,
                route_interface,
            } => {
                assert_eq!(*destination, expected, "{err}");
                assert_eq!(interface, broadcaster.interface(), "{err}");
                assert_ne!(route_interface, interface, "{err}");
            }
            other => panic!(
                "{:?}: expected OtherInterface, got {other:?}",
                broadcaster.mode()
            ),
        }
        eprintln!("{err}");
        assert_eq!(broadcaster.stats().broadcasts, 0);
    }
    // Nothing was sent anywhere.
    let mut buf = [0u8; 2048];
    assert!(side.recv_from(&mut buf).is_err(), "eth1 got a datagram");
    rx.finish(SETTLE).check_silent(&remote).unwrap();
}
