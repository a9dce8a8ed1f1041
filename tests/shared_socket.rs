//! Only the datagram a broadcast sent is fanned out, whatever else is sent
//! on the same socket at the same moment: by other threads of the process,
//! or by another process holding the same socket, with the same length and
//! the same first destination. Receivers in other namespaces check the
//! source and every byte of every datagram.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use common::*;
use elec_broadcast::Mode;
use elec_testbed::{snmp_counter, Received, Testbed, TestbedConfig};

const SIZE: usize = 1200;
const DESTINATIONS: usize = 16;
const BROADCASTS: u32 = 2000;
/// A bound on the other process's sends, in case its stop signal is lost.
const MAX_FROM_PROCESS: u32 = 2_000_000;

/// Who sent a datagram: the broadcast, a thread of this process, or the
/// other process.
const BROADCAST: u8 = b'B';
const THREAD: u8 = b'T';
const PROCESS: u8 = b'P';

/// Datagram `id` of sender `kind` (`sub` tells threads apart): a 6-byte
/// header, then filler bytes that depend on all three, so that every byte
/// says whose datagram it is.
fn message(kind: u8, sub: u8, id: u32) -> Vec<u8> {
    let mut m = vec![0; SIZE];
    fill(&mut m, kind, sub, id);
    m
}

/// Writes message `id` into `buf` without allocating (the forked process
/// may not allocate).
fn fill(buf: &mut [u8], kind: u8, sub: u8, id: u32) {
    buf[0] = kind;
    buf[1] = sub;
    buf[2..6].copy_from_slice(&id.to_le_bytes());
    let seed = u64::from(kind) * 31 + u64::from(sub) * 7 + u64::from(id);
    for (j, byte) in buf[6..].iter_mut().enumerate() {
        *byte = ((seed + j as u64) % 251) as u8;
    }
}

/// Whose datagram `payload` is, checking every byte; None if it is nobody's.
fn identify(payload: &[u8]) -> Option<(u8, u8, u32)> {
    let id = u32::from_le_bytes(payload.get(2..6)?.try_into().ok()?);
    let (kind, sub) = (payload[0], payload[1]);
    (message(kind, sub, id) == payload).then_some((kind, sub, id))
}

fn setup() -> (Testbed, Vec<SocketAddrV4>) {
    let tb = testbed(TestbedConfig {
        receivers: 8,
        addrs_per_receiver: 2,
        ..Default::default()
    });
    let dests = tb.destinations(DESTINATIONS, 7000);
    (tb, dests)
}

/// Broadcasts `BROADCASTS` numbered messages, all with `dests[0]` first,
/// pacing lightly so that the receivers keep up. Returns, per broadcast,
/// the destinations reported failed (the sending host dropped their copy).
fn broadcast_all(tb: &Testbed, socket: &UdpSocket, dests: &[SocketAddrV4]) -> Vec<Vec<SocketAddr>> {
    let broadcaster = broadcaster(tb, Mode::Kernel);
    let targets = addrs(dests);
    let mut failed = Vec::new();
    for id in 0..BROADCASTS {
        let report = broadcaster
            .broadcast(socket, &message(BROADCAST, 0, id), &targets)
            .expect("broadcast");
        assert_eq!(report.user_space_copies, 0, "{report:?}");
        failed.push(report.failed_destinations().collect());
        if id % 8 == 7 {
            thread::sleep(Duration::from_micros(300));
        }
    }
    let kernel = broadcaster.kernel_counters().unwrap();
    assert_eq!(kernel.fan_outs, u64::from(BROADCASTS));
    assert_eq!(kernel.mismatches, 0);
    failed
}

/// Drops counted outside the library: datagrams the sender's UDP dropped
/// without telling the sender (the ordinary sends), and frames dropped
/// further on (the hub's ports, the receivers' sockets).
fn drops(tb: &Testbed) -> u64 {
    let sender = snmp_counter(tb.sender_ns(), "Udp", "SndbufErrors").unwrap();
    sender + tb.drops_past_sender().unwrap().iter().sum::<u64>()
}

/// What the destinations received, against what was sent.
#[derive(Debug)]
struct Outcome {
    /// Datagrams of other senders at destinations other than the first:
    /// a foreign datagram fanned out. Must be 0.
    hijacked: usize,
    /// Broadcast copies and ordinary datagrams that never arrived, and were
    /// not reported failed either: each must be one of the drops counted
    /// outside the library.
    unexplained_losses: u64,
}

/// Checks what every destination received: every datagram intact and from
/// `source`, each broadcast copy at most once everywhere (missing only if
/// reported failed, or dropped where no sender can see), each ordinary
/// datagram (`ordinary`: sender kind and sub -> how many were sent) at most
/// once at `dests[0]`, and no ordinary datagram anywhere else.
fn check(
    got: &Received,
    dests: &[SocketAddrV4],
    source: SocketAddrV4,
    ordinary: &HashMap<(u8, u8), u32>,
    failed: &[Vec<SocketAddr>],
) -> Outcome {
    let mut outcome = Outcome {
        hijacked: 0,
        unexplained_losses: 0,
    };
    for (i, dest) in dests.iter().enumerate() {
        assert!(
            got.sources(dest).iter().all(|s| *s == source.into()),
            "{dest} got a datagram from another source"
        );
        let mut seen: HashMap<(u8, u8, u32), usize> = HashMap::new();
        for payload in got.datagrams(dest) {
            let who = identify(payload)
                .unwrap_or_else(|| panic!("{dest} got a datagram nobody sent: {payload:?}"));
            *seen.entry(who).or_default() += 1;
        }
        for id in 0..BROADCASTS {
            let n = seen.remove(&(BROADCAST, 0, id)).unwrap_or(0);
            assert!(n <= 1, "{dest} got broadcast {id} {n} times");
            let reported = failed[id as usize].contains(&SocketAddr::V4(*dest));
            assert!(
                n == 0 || !reported,
                "{dest} got broadcast {id}, reported failed"
            );
            if n == 0 && !reported {
                outcome.unexplained_losses += 1;
            }
        }
        if i == 0 {
            for (&(kind, sub), &count) in ordinary {
                for id in 0..count {
                    let n = seen.remove(&(kind, sub, id)).unwrap_or(0);
                    assert!(n <= 1, "{dest} got ordinary datagram {id} {n} times");
                    outcome.unexplained_losses += u64::from(n == 0);
                }
            }
        }
        assert!(
            i > 0 || seen.is_empty(),
            "{dest} got datagrams nobody sent it: {:?}",
            seen.keys().take(5).collect::<Vec<_>>()
        );
        if !seen.is_empty() {
            eprintln!(
                "{dest} got {} ordinary datagrams meant for {}",
                seen.len(),
                dests[0]
            );
            outcome.hijacked += seen.values().sum::<usize>();
        }
    }
    outcome
}

/// Asserts an outcome: nothing hijacked, every loss accounted for.
fn assert_exactly_once(outcome: &Outcome, drops: u64) {
    eprintln!("{outcome:?}, drops counted outside the library: {drops}");
    assert_eq!(outcome.hijacked, 0, "foreign datagrams were fanned out");
    assert!(
        outcome.unexplained_losses <= drops,
        "{} datagrams were lost, {drops} drops were counted",
        outcome.unexplained_losses
    );
}

#[test]
fn ordinary_sends_of_other_threads_on_the_socket_are_never_fanned_out() {
    elec_testbed::require_root!();
    let (tb, dests) = setup();
    let rx = tb.receivers(&dests).unwrap();
    let socket = Arc::new(sender_socket(&tb, 5000));
    let source = SocketAddrV4::new(tb.sender_addr(), 5000);
    let stop = Arc::new(AtomicBool::new(false));

    // Two threads send datagrams of the broadcast's length to its first
    // destination, in a tight loop, for as long as the broadcasts go on.
    let senders: Vec<_> = (0..2u8)
        .map(|sub| {
            let (socket, stop, to) = (Arc::clone(&socket), Arc::clone(&stop), dests[0]);
            thread::spawn(move || {
                let mut id = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    socket.send_to(&message(THREAD, sub, id), to).unwrap();
                    id += 1;
                }
                ((THREAD, sub), id)
            })
        })
        .collect();
    let drops_before = drops(&tb);
    let failed = broadcast_all(&tb, &socket, &dests);
    stop.store(true, Ordering::Relaxed);
    let ordinary: HashMap<(u8, u8), u32> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    let sent: u32 = ordinary.values().sum();
    eprintln!("ordinary datagrams sent alongside {BROADCASTS} broadcasts: {sent}");
    assert!(sent > 1000, "the other threads hardly sent anything");

    let total = dests.len() * BROADCASTS as usize + sent as usize;
    rx.wait_for_total(total, WAIT);
    tb.wait_quiet(Duration::from_millis(50), WAIT).unwrap();
    let got = rx.finish(SETTLE);
    let outcome = check(&got, &dests, source, &ordinary, &failed);
    assert_exactly_once(&outcome, drops(&tb) - drops_before);
}

#[test]
fn ordinary_sends_of_another_process_on_the_socket_are_never_fanned_out() {
    elec_testbed::require_root!();
    let (tb, dests) = setup();
    let rx = tb.receivers(&dests).unwrap();
    let socket = sender_socket(&tb, 5001);
    let source = SocketAddrV4::new(tb.sender_addr(), 5001);

    // The other process shares the socket (fork keeps the descriptor) and
    // sends until the pipe `stop` is closed, then reports its count on
    // `count`. It only makes async-signal-safe calls.
    let (stop_read, stop_write) = nix::unistd::pipe().unwrap();
    let (count_read, count_write) = nix::unistd::pipe().unwrap();
    // SAFETY: F_SETFL on a descriptor we own; no pointers involved.
    assert_eq!(
        unsafe { libc::fcntl(stop_read.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) },
        0
    );
    let mut payload = [0u8; SIZE];
    let to = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: dests[0].port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(dests[0].ip().octets()),
        },
        sin_zero: [0; 8],
    };
    let drops_before = drops(&tb);
    // SAFETY: the child runs only async-signal-safe calls (sendto, read,
    // write, _exit) on memory allocated before the fork, and never returns.
    let child = match unsafe { nix::unistd::fork() }.unwrap() {
        nix::unistd::ForkResult::Child => unsafe {
            // Die with the test; hold no write end of `stop`, so that the
            // parent's close is seen.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::close(stop_write.as_raw_fd());
            libc::close(count_read.as_raw_fd());
            let mut sent: u32 = 0;
            let mut byte = 0u8;
            while sent < MAX_FROM_PROCESS {
                fill(&mut payload, PROCESS, 0, sent);
                if sent % 32 == 0
                    && libc::read(stop_read.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) == 0
                {
                    break;
                }
                let n = libc::sendto(
                    socket.as_raw_fd(),
                    payload.as_ptr().cast(),
                    payload.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                );
                if n < 0 {
                    libc::_exit(2);
                }
                sent += 1;
            }
            let bytes = sent.to_le_bytes();
            libc::write(count_write.as_raw_fd(), bytes.as_ptr().cast(), 4);
            libc::_exit(0);
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop((stop_read, count_write));

    let failed = broadcast_all(&tb, &socket, &dests);
    drop(stop_write);
    let status = nix::sys::wait::waitpid(child, None).unwrap();
    assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
    let mut bytes = [0u8; 4];
    nix::unistd::read(count_read.as_raw_fd(), &mut bytes).unwrap();
    let sent = u32::from_le_bytes(bytes);
    eprintln!("the other process sent {sent} datagrams alongside {BROADCASTS} broadcasts");
    assert!(sent > 1000, "the other process hardly sent anything");

    let total = dests.len() * BROADCASTS as usize + sent as usize;
    rx.wait_for_total(total, WAIT);
    tb.wait_quiet(Duration::from_millis(50), WAIT).unwrap();
    let got = rx.finish(SETTLE);
    let ordinary = HashMap::from([((PROCESS, 0), sent)]);
    let outcome = check(&got, &dests, source, &ordinary, &failed);
    assert_exactly_once(&outcome, drops(&tb) - drops_before);
}

#[test]
fn broadcasters_of_two_programs_share_one_socket_at_once() {
    elec_testbed::require_root!();
    // Two broadcasters (two programs on one interface, as two processes
    // would have) broadcast on one socket at the same time, each to its own
    // destinations: their tags keep their datagrams apart.
    let tb = testbed(TestbedConfig {
        receivers: 4,
        addrs_per_receiver: 2,
        ..Default::default()
    });
    let socket = Arc::new(sender_socket(&tb, 5002));
    let dests = tb.destinations(16, 7000);
    let rx = tb.receivers(&dests).unwrap();
    let (first, second) = dests.split_at(8);
    let drops_before = drops(&tb);
    let runs: Vec<_> = [(0u8, first.to_vec()), (1u8, second.to_vec())]
        .into_iter()
        .map(|(sub, dests)| {
            let broadcaster = broadcaster(&tb, Mode::Kernel);
            let socket = Arc::clone(&socket);
            thread::spawn(move || {
                let mut failed = Vec::new();
                for id in 0..1000 {
                    let report = broadcaster
                        .broadcast(&*socket, &message(BROADCAST, sub, id), &addrs(&dests))
                        .unwrap();
                    assert_eq!(report.user_space_copies, 0, "{report:?}");
                    failed.push(report.failed_destinations().collect());
                    if id % 8 == 7 {
                        thread::sleep(Duration::from_micros(200));
                    }
                }
                failed
            })
        })
        .collect();
    let failed: Vec<Vec<Vec<SocketAddr>>> = runs.into_iter().map(|r| r.join().unwrap()).collect();
    rx.wait_for_total(16 * 1000, WAIT);
    tb.wait_quiet(Duration::from_millis(50), WAIT).unwrap();
    let got = rx.finish(SETTLE);
    let mut unexplained = 0;
    for (half, sub) in [(first, 0u8), (second, 1u8)] {
        for dest in half {
            let mut ids: Vec<u32> = got
                .datagrams(dest)
                .iter()
                .map(|p| {
                    let (kind, from, id) = identify(p).expect("a datagram nobody sent");
                    assert_eq!(
                        (kind, from),
                        (BROADCAST, sub),
                        "{dest} got the other's datagram"
                    );
                    id
                })
                .collect();
            ids.sort_unstable();
            let before = ids.len();
            ids.dedup();
            assert_eq!(ids.len(), before, "{dest} got a broadcast twice");
            for id in 0..1000u32 {
                let reported =
                    failed[usize::from(sub)][id as usize].contains(&SocketAddr::V4(*dest));
                let arrived = ids.binary_search(&id).is_ok();
                assert!(!(arrived && reported), "{dest} got {id}, reported failed");
                unexplained += u64::from(!arrived && !reported);
            }
        }
    }
    let drops = drops(&tb) - drops_before;
    assert!(
        unexplained <= drops,
        "{unexplained} copies lost, {drops} drops counted"
    );
}
