//! Routes, neighbours, links and addresses are followed by notification:
//! after the kernel's tables change, no copy leaves with the old addressing.
//!
//! Each test runs two senders side by side through the same change: a
//! kernel-mode broadcaster (to the changed destination and a few others)
//! and a plain `sendto` loop to the changed destination, both every 200 µs.
//! The change is two commands 20 ms apart (the first breaks the old path,
//! the second makes the new one), so both lose what is sent in between. The
//! loss window of each is the number of datagrams that never arrived times
//! the interval; the kernel fan-out must not lose more than `sendto` does
//! plus [`SLACK`]. (A design that re-reads the tables on a timer loses
//! hundreds of milliseconds here.)
//!
//! `ELEC_WINDOW_TRIALS=N` repeats every scenario N times and prints the
//! median and the range of both windows.

mod common;

use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use elec_broadcast::Mode;
use elec_testbed::{format_mac, snmp_counter, udp_socket_in, wait_until, Testbed};

/// Time between two sends of each sender.
const INTERVAL: Duration = Duration::from_micros(200);
/// Time between the two commands of a change.
const GAP: Duration = Duration::from_millis(20);
/// How much longer than `sendto`'s the kernel fan-out's loss window may be
/// in a test. The aim is 5 ms, and the medians measured are far below it
/// (see the README); the test leaves room for a loaded machine.
const SLACK: Duration = Duration::from_millis(25);
/// Port of the kernel-mode stream at every destination, and of the
/// `sendto` stream at the changed one.
const KERNEL_PORT: u16 = 7000;
const SENDTO_PORT: u16 = 7001;

/// The scenarios of this binary take turns, so that their windows are not
/// stretched by each other's load.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Datagram `seq` of a stream: the sequence number and filler.
fn message(seq: u32) -> Vec<u8> {
    let mut m = seq.to_le_bytes().to_vec();
    m.extend((0..196).map(|j| ((u64::from(seq) + j) % 251) as u8));
    m
}

/// One sender's send of one datagram.
type Sender = Box<dyn Fn(&[u8]) + Send>;

/// UDP sockets bound in several namespaces, recording which sequence
/// numbers arrived on each port, bytes checked.
struct Catcher {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<(u16, Vec<u32>)>>,
}

impl Catcher {
    fn start(places: &[(&str, SocketAddrV4)]) -> Catcher {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = places
            .iter()
            .map(|&(ns, addr)| {
                let socket = udp_socket_in(ns, addr).unwrap();
                socket
                    .set_read_timeout(Some(Duration::from_millis(5)))
                    .unwrap();
                let stop = Arc::clone(&stop);
                thread::spawn(move || {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 2048];
                    loop {
                        match socket.recv(&mut buf) {
                            Ok(len) => {
                                let seq = u32::from_le_bytes(buf[..4].try_into().unwrap());
                                assert_eq!(buf[..len], message(seq), "{addr}: corrupt datagram");
                                got.push(seq);
                            }
                            Err(_) if stop.load(Ordering::Relaxed) => break,
                            Err(_) => {}
                        }
                    }
                    (addr.port(), got)
                })
            })
            .collect();
        Catcher { stop, threads }
    }

    /// Sequence numbers received per port, over every place.
    fn finish(self) -> (HashSet<u32>, HashSet<u32>) {
        thread::sleep(Duration::from_millis(30));
        self.stop.store(true, Ordering::Relaxed);
        let mut kernel = HashSet::new();
        let mut sendto = HashSet::new();
        for thread in self.threads {
            let (port, got) = thread.join().unwrap();
            let set = if port == SENDTO_PORT {
                &mut sendto
            } else {
                &mut kernel
            };
            for seq in got {
                if port != KERNEL_PORT && port != SENDTO_PORT {
                    continue;
                }
                assert!(set.insert(seq), "port {port}: {seq} arrived twice");
            }
        }
        (kernel, sendto)
    }
}

/// Runs both senders to `target` (the kernel one to `others` too, the first
/// of them ahead of `target`), makes
/// the change `first`, waits `GAP`, makes the change `second`, and returns
/// the loss windows at `target`: (kernel fan-out, sendto). `catch` lists
/// where the datagrams to `target` may arrive, before and after;
/// `others_affected`: the change breaks the other destinations too.
fn race(
    tb: &Testbed,
    target: Ipv4Addr,
    others: &[SocketAddrV4],
    catch: &[(&str, Ipv4Addr)],
    others_affected: bool,
    first: &dyn Fn(),
    second: &dyn Fn(),
) -> (Duration, Duration) {
    let mut places: Vec<(&str, SocketAddrV4)> = Vec::new();
    for &(ns, addr) in catch {
        places.push((ns, SocketAddrV4::new(addr, KERNEL_PORT)));
        places.push((ns, SocketAddrV4::new(addr, SENDTO_PORT)));
    }
    let catcher = Catcher::start(&places);
    let others_rx = tb.receivers(others).unwrap();

    let broadcaster = Arc::new(broadcaster(tb, Mode::Kernel));
    let kernel_socket = sender_socket(tb, 5000);
    let sendto_socket = sender_socket(tb, 5001);
    // The changed destination is not the first: the first one's copy is
    // the datagram as the kernel's own stack addressed it.
    assert!(!others.is_empty(), "a race needs another destination first");
    let mut targets: Vec<SocketAddr> = addrs(others);
    targets.insert(1, SocketAddr::V4(SocketAddrV4::new(target, KERNEL_PORT)));
    let sendto_target = SocketAddrV4::new(target, SENDTO_PORT);

    let stop = Arc::new(AtomicBool::new(false));
    let run = |send: Sender| {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            let start = Instant::now();
            let mut seq = 0u32;
            while !stop.load(Ordering::Relaxed) {
                send(&message(seq));
                seq += 1;
                let next = start + INTERVAL * seq;
                thread::sleep(next.saturating_duration_since(Instant::now()));
            }
            seq
        })
    };
    let kernel = {
        let broadcaster = Arc::clone(&broadcaster);
        run(Box::new(move |m| {
            let _ = broadcaster.broadcast(&kernel_socket, m, &targets);
        }))
    };
    let sendto = run(Box::new(move |m| {
        let _ = sendto_socket.send_to(m, sendto_target);
    }));
    thread::sleep(Duration::from_millis(200));
    first();
    thread::sleep(GAP);
    second();
    thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::Relaxed);
    let kernel_sent = kernel.join().unwrap();
    let sendto_sent = sendto.join().unwrap();
    let (kernel_got, sendto_got) = catcher.finish();

    let window = |sent: u32, got: &HashSet<u32>| INTERVAL * (sent - got.len() as u32);
    let windows = (
        window(kernel_sent, &kernel_got),
        window(sendto_sent, &sendto_got),
    );
    // The other destinations are not affected by the change, unless it
    // took the whole link down: then they lose no more than the change
    // lasted and their neighbours take to come back. Taking the link down
    // flushes the neighbour table (the testbed's permanent entries too);
    // after it comes back, each destination's copies go from user space
    // while the kernel resolves its neighbour again, and what does not fit
    // the neighbour's queue of unresolved packets is dropped, as for any
    // sender: one ARP retransmit time (1 s) bounds it, whichever way the
    // probes fall. (The one sendto destination was seen losing 23 ms while
    // another destination lost 320 ms, in about one run in ten; the build
    // of 490b45c failed the tighter bound as often, 1 run in 12.)
    let others_got = others_rx.finish(SETTLE);
    for dest in others {
        let lost = kernel_sent as usize - others_got.count(dest);
        let affected = INTERVAL * lost as u32;
        let resolution = Duration::from_secs(1);
        assert!(
            lost == 0
                || (others_affected && affected <= GAP.max(windows.1).max(resolution) + SLACK),
            "{dest} lost {lost} copies ({:.1} ms; sendto lost {:.1} ms)",
            ms(affected),
            ms(windows.1)
        );
    }
    drop(broadcaster);
    windows
}

/// Runs `scenario` (building its own testbed) once, or
/// `ELEC_WINDOW_TRIALS` times, and checks the windows.
fn trials(name: &str, scenario: impl Fn() -> (Duration, Duration)) {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let n: usize = std::env::var("ELEC_WINDOW_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let mut kernel = Vec::new();
    let mut sendto = Vec::new();
    for _ in 0..n {
        let (k, s) = scenario();
        eprintln!(
            "{name}: loss window kernel {:.1} ms, sendto {:.1} ms",
            ms(k),
            ms(s)
        );
        assert!(
            k <= s + SLACK,
            "{name}: the kernel fan-out lost {:.1} ms of copies, sendto {:.1} ms",
            ms(k),
            ms(s)
        );
        kernel.push(k);
        sendto.push(s);
    }
    if n > 1 {
        let diff: Vec<f64> = kernel
            .iter()
            .zip(&sendto)
            .map(|(k, s)| ms(*k) - ms(*s))
            .collect();
        eprintln!(
            "{name}, {n} trials: kernel {}, sendto {}, kernel - sendto {}",
            summary(kernel.iter().map(|d| ms(*d)).collect()),
            summary(sendto.iter().map(|d| ms(*d)).collect()),
            summary(diff)
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// "median (min..max) ms".
fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    format!(
        "median {:.1} ms ({:.1}..{:.1})",
        v[v.len() / 2],
        v[0],
        v[v.len() - 1]
    )
}

/// The kernel stream's destinations on receivers `which`, besides the
/// changed one.
fn others(tb: &Testbed, which: &[usize]) -> Vec<SocketAddrV4> {
    which
        .iter()
        .map(|&i| SocketAddrV4::new(tb.receiver_addrs(i)[0], KERNEL_PORT))
        .collect()
}

#[test]
fn after_a_mac_change_no_copy_goes_to_the_old_mac() {
    elec_testbed::require_root!();
    trials("MAC change", || {
        let tb = small_testbed(4, 1);
        let target = tb.receiver_addrs(0)[0];
        let others = others(&tb, &[1, 2]);
        let new_mac = format_mac(&[0x02, 0xeb, 0x0f, 0, 0, 1]);
        race(
            &tb,
            target,
            &others,
            &[(tb.receiver_ns(0), target)],
            false,
            &|| {
                ip(
                    tb.receiver_ns(0),
                    &format!("link set eth0 address {new_mac}"),
                )
            },
            &|| {
                ip(
                    tb.sender_ns(),
                    &format!("neigh replace {target} lladdr {new_mac} dev eth0 nud permanent"),
                )
            },
        )
    });
}

#[test]
fn after_a_route_change_copies_take_the_new_next_hop() {
    elec_testbed::require_root!();
    trials("route change", || {
        let tb = small_testbed(4, 1);
        // 10.99.0.1 lives on receiver 0 and is reached through a router:
        // receiver 1 at first, receiver 2 after the change.
        let target = Ipv4Addr::new(10, 99, 0, 1);
        let host = tb.receiver_addrs(0)[0];
        let (r1, r2) = (tb.receiver_addrs(1)[0], tb.receiver_addrs(2)[0]);
        ip(tb.receiver_ns(0), &format!("addr add {target}/32 dev eth0"));
        for router in [1, 2] {
            let ns = tb.receiver_ns(router);
            ip(ns, &format!("route add {target}/32 via {host}"));
            sysctl(ns, "/proc/sys/net/ipv4/ip_forward", "1");
            // The router forwards out of the interface the packet came in
            // by; it must not tell the sender to go to the host directly.
            sysctl(ns, "/proc/sys/net/ipv4/conf/all/send_redirects", "0");
            sysctl(ns, "/proc/sys/net/ipv4/conf/eth0/send_redirects", "0");
        }
        ip(tb.sender_ns(), &format!("route add {target}/32 via {r1}"));
        let others = others(&tb, &[3, 1]);
        race(
            &tb,
            target,
            &others,
            &[(tb.receiver_ns(0), target)],
            false,
            // Router 1 stops forwarding, then the route moves to router 2.
            &|| {
                sysctl(
                    tb.receiver_ns(1),
                    "/proc/sys/net/ipv4/conf/all/forwarding",
                    "0",
                )
            },
            &|| {
                ip(
                    tb.sender_ns(),
                    &format!("route replace {target}/32 via {r2}"),
                )
            },
        )
    });
}

#[test]
fn after_the_link_goes_down_and_up_copies_flow_again() {
    elec_testbed::require_root!();
    trials("link down/up", || {
        let tb = small_testbed(4, 1);
        let target = tb.receiver_addrs(0)[0];
        race(
            &tb,
            target,
            &others(&tb, &[1, 2]),
            &[(tb.receiver_ns(0), target)],
            true,
            &|| ip(tb.sender_ns(), "link set eth0 down"),
            &|| ip(tb.sender_ns(), "link set eth0 up"),
        )
    });
}

#[test]
fn an_address_moving_onto_the_sender_gets_its_copies_locally_then_back() {
    elec_testbed::require_root!();
    let moves = |onto_sender: bool| {
        let tb = small_testbed(4, 1);
        // 10.77.200.1 belongs to receiver 0, then moves onto the sender (its
        // copies must then stay on the sender), or the reverse.
        let target = Ipv4Addr::new(10, 77, 200, 1);
        let (from, to) = if onto_sender {
            (tb.receiver_ns(0), tb.sender_ns())
        } else {
            (tb.sender_ns(), tb.receiver_ns(0))
        };
        ip(from, &format!("addr add {target}/32 dev eth0"));
        let mac = format_mac(&tb.receiver_mac(0));
        ip(
            tb.sender_ns(),
            &format!("neigh replace {target} lladdr {mac} dev eth0 nud permanent"),
        );
        let others = others(&tb, &[1, 2]);
        let wildcard = Ipv4Addr::UNSPECIFIED;
        race(
            &tb,
            target,
            &others,
            &[(tb.receiver_ns(0), wildcard), (tb.sender_ns(), wildcard)],
            false,
            &|| ip(from, &format!("addr del {target}/32 dev eth0")),
            &|| ip(to, &format!("addr add {target}/32 dev eth0")),
        )
    };
    trials("address added to the sender", || moves(true));
    trials("address removed from the sender", || moves(false));
}

#[test]
fn a_route_through_another_interface_is_refused_once_it_is_there_and_not_after() {
    elec_testbed::require_root!();
    // Plans are made from the tables at the first broadcast and kept; once
    // the watching thread has seen a change, broadcasts must not use them.
    let tb = small_testbed(4, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5000);
    let dests = tb.destinations(4, 7000);
    let rx = tb.receivers(&dests).unwrap();
    let m = message(1);
    let report = broadcaster.broadcast(&socket, &m, &addrs(&dests)).unwrap();
    assert_eq!(report.kernel_copies, 4);
    // A route to dests[2] through another interface appears: refused at once.
    ip(tb.sender_ns(), "link add eth9 type veth peer name eth9p");
    ip(tb.sender_ns(), "link set eth9 up");
    ip(
        tb.sender_ns(),
        &format!("route add {}/32 dev eth9", dests[2].ip()),
    );
    let refused = || match broadcaster.broadcast(&socket, &m, &addrs(&dests)) {
        Err(elec_broadcast::Error::OtherInterface { destination, .. }) => {
            assert_eq!(destination, SocketAddr::V4(dests[2]));
            true
        }
        _ => false,
    };
    let took = wait_until(WAIT, Duration::from_millis(1), refused);
    assert!(took.is_some(), "not refused after the route changed");
    ip(tb.sender_ns(), &format!("route del {}/32", dests[2].ip()));
    let sent = || broadcaster.broadcast(&socket, &m, &addrs(&dests)).is_ok();
    let took = wait_until(WAIT, Duration::from_millis(1), sent);
    assert!(took.is_some(), "the route is back, the error too");
    drop(rx);
}

#[test]
fn the_mtu_follows_the_interface_and_nothing_is_ever_fragmented() {
    elec_testbed::require_root!();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tb = small_testbed(4, 1);
    let dests = tb.destinations(4, 7000);
    let targets = addrs(&dests);
    let frag_creates = || snmp_counter(tb.sender_ns(), "Ip", "FragCreates").unwrap();
    let fragmented_before = frag_creates();
    for mode in [Mode::Kernel, Mode::UserSpace] {
        let broadcaster = broadcaster(&tb, mode);
        let socket = sender_socket(&tb, 5000);
        let rx = tb.receivers(&dests).unwrap();
        let big = message(1);
        let big = [big.as_slice(); 7].concat(); // 1400 bytes
        let small = message(2);
        let mut sent = Vec::new();
        assert_complete(&broadcaster.broadcast(&socket, &big, &targets).unwrap(), 4);
        sent.push(big.clone());

        // Lowered: refused at once (whether or not the notification has
        // been read yet), with the new MTU; smaller payloads still go.
        ip(tb.sender_ns(), "link set eth0 mtu 1000");
        for _ in 0..3 {
            match broadcaster.broadcast(&socket, &big, &targets) {
                Err(elec_broadcast::Error::PayloadTooLarge { mtu, max, .. }) => {
                    assert_eq!((mtu, max), (1000, 972), "{mode:?}");
                }
                other => panic!("{mode:?}: {other:?} with the MTU at 1000"),
            }
        }
        assert_eq!(broadcaster.max_payload(), 972);
        assert_complete(
            &broadcaster.broadcast(&socket, &small, &targets).unwrap(),
            4,
        );
        sent.push(small.clone());

        // The notification not read yet, and the plan current: the send
        // itself must refuse, and the error must still say the new MTU.
        let held = broadcaster.hold_notifications();
        ip(tb.sender_ns(), "link set eth0 mtu 1500");
        assert_complete(&broadcaster.broadcast(&socket, &big, &targets).unwrap(), 4);
        sent.push(big.clone());
        ip(tb.sender_ns(), "link set eth0 mtu 1200");
        match broadcaster.broadcast(&socket, &big, &targets) {
            Err(elec_broadcast::Error::PayloadTooLarge { mtu, .. }) => assert_eq!(mtu, 1200),
            other => panic!("{mode:?}: {other:?} with the MTU at 1200"),
        }
        drop(held);

        // Raised again: the error goes away at once.
        ip(tb.sender_ns(), "link set eth0 mtu 1500");
        assert_complete(&broadcaster.broadcast(&socket, &big, &targets).unwrap(), 4);
        sent.push(big.clone());
        assert_eq!(broadcaster.max_payload(), 1472);

        expect_exactly_once(rx, &dests, &sent);

        // A route of one destination with a smaller MTU than the interface:
        // refused before anything is sent, with the route's MTU. Until the
        // route's notification is read, a broadcast may still go (the
        // kernel refuses the copy it would have to fragment); every attempt
        // carries its own payload, and each destination must get exactly
        // the attempts reported sent to it.
        let rx = tb.receivers(&dests).unwrap();
        let narrow = dests[2].ip();
        ip(
            tb.sender_ns(),
            &format!("route add {narrow}/32 dev eth0 mtu 1200"),
        );
        let attempt = |k: u64| [message(100 + k as u32).as_slice(); 7].concat();
        let mut outcomes = Vec::new();
        let deadline = Instant::now() + WAIT;
        for k in 0.. {
            match broadcaster.broadcast(&socket, &attempt(k), &targets) {
                Err(elec_broadcast::Error::PayloadTooLarge { mtu: 1200, .. }) => break,
                Ok(report) => {
                    assert!(
                        Instant::now() < deadline,
                        "{mode:?}: the route MTU is ignored"
                    );
                    // Only the copy to the narrow route fails, as too large.
                    assert!(
                        report
                            .failed
                            .iter()
                            .all(|f| f.reason == elec_broadcast::FailureReason::TooLarge),
                        "{mode:?}: {report:?}"
                    );
                    outcomes.push(report.failed_destinations().collect::<Vec<_>>());
                }
                other => panic!("{mode:?}: {other:?} with a route MTU of 1200"),
            }
        }
        let small_after = message(3);
        assert_complete(
            &broadcaster
                .broadcast(&socket, &small_after, &targets)
                .unwrap(),
            4,
        );
        ip(tb.sender_ns(), &format!("route del {narrow}/32 dev eth0"));
        let big_after = attempt(99);
        let sent = || broadcaster.broadcast(&socket, &big_after, &targets).is_ok();
        let took = wait_until(WAIT, Duration::ZERO, sent);
        assert!(
            took.is_some(),
            "{mode:?}: the route is gone, the error is not"
        );
        tb.wait_quiet(Duration::from_millis(50), WAIT).unwrap();
        let got = rx.finish(SETTLE);
        for (i, dest) in dests.iter().enumerate() {
            let count = |m: &[u8]| got.datagrams(dest).iter().filter(|d| *d == m).count();
            for (k, failed) in outcomes.iter().enumerate() {
                let expected = usize::from(!failed.contains(&targets[i]));
                assert_eq!(
                    count(&attempt(k as u64)),
                    expected,
                    "{mode:?} {dest} attempt {k}"
                );
            }
            assert_eq!(count(&small_after), 1, "{mode:?} {dest}");
            assert_eq!(count(&big_after), 1, "{mode:?} {dest}");
            assert_eq!(
                got.datagrams(dest).len(),
                outcomes.iter().filter(|f| !f.contains(&targets[i])).count() + 2,
                "{mode:?} {dest}: datagrams nobody sent"
            );
        }
        eprintln!(
            "{mode:?}: {} broadcasts went before the route MTU was seen",
            outcomes.len()
        );
    }
    assert_eq!(frag_creates(), fragmented_before, "the sender fragmented");
}

#[test]
fn lost_notifications_lead_to_a_full_reread_never_to_a_stale_plan() {
    elec_testbed::require_root!();
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let tb = small_testbed(4, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = sender_socket(&tb, 5000);
    let dests = tb.destinations(4, 7000);
    let targets = addrs(&dests);
    let rx = tb.receivers(&dests).unwrap();
    let mut sent = vec![message(1)];
    assert_eq!(
        broadcaster
            .broadcast(&socket, &sent[0], &targets)
            .unwrap()
            .kernel_copies,
        4
    );
    assert_eq!(broadcaster.notification_overflows(), 0);

    // While the notifications are not read, flood the socket with route
    // changes until it overflows, then change receiver 2's MAC: that
    // notification is lost for sure.
    let held = broadcaster.hold_notifications();
    let mut batch = String::new();
    for verb in ["add", "del"] {
        for i in 0..30_000u32 {
            let (a, b) = (i / 250, i % 250 + 1);
            batch.push_str(&format!("route {verb} 10.200.{a}.{b}/32 dev eth0\n"));
        }
    }
    let file = std::env::temp_dir().join(format!("elec-flood-{}", std::process::id()));
    std::fs::write(&file, batch).unwrap();
    ip(tb.sender_ns(), &format!("-batch {}", file.display()));
    std::fs::remove_file(&file).unwrap();
    let target = *dests[2].ip();
    let new_mac = format_mac(&[0x02, 0xeb, 0x0f, 0, 0, 2]);
    ip(
        tb.receiver_ns(2),
        &format!("link set eth0 address {new_mac}"),
    );
    ip(
        tb.sender_ns(),
        &format!("neigh replace {target} lladdr {new_mac} dev eth0 nud permanent"),
    );
    drop(held);

    let deadline = Instant::now() + WAIT;
    while broadcaster.notification_overflows() == 0 {
        assert!(
            Instant::now() < deadline,
            "the notifications never overflowed"
        );
        thread::sleep(Duration::from_millis(1));
    }
    // Every broadcast from now on reaches the new MAC.
    for seq in 2..10 {
        let m = message(seq);
        let report = broadcaster.broadcast(&socket, &m, &targets).unwrap();
        assert_complete(&report, 4);
        assert_eq!(report.kernel_copies, 4, "{report:?}");
        sent.push(m);
    }
    expect_exactly_once(rx, &dests, &sent);
}
