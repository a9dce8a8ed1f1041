//! Broadcasts on non-blocking sockets whose send buffer fills up part-way
//! (a tiny `SO_SNDBUF`, long unpaced bursts, lists longer than one
//! fan-out): the synchronous `broadcast` stops at the send that would block
//! and says which destinations are still to be sent, resuming them sends
//! every copy exactly once; `broadcast_async` on a tokio socket does the
//! waiting and resuming itself, without spinning. Receivers in other
//! namespaces check every byte of every copy.

mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use common::*;
use elec_broadcast::{Broadcaster, Error, FailureReason, Mode, Report};
use elec_testbed::{Testbed, TestbedConfig};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::resource::{getrusage, UsageWho};
use nix::sys::socket::{setsockopt, sockopt};

/// 3 receivers x 100 addresses: 300 destinations, two fan-outs (256 + 44).
const RECEIVERS: usize = 3;
const ADDRESSES: usize = 100;
const BROADCASTS: u32 = 40;
const SIZE: usize = 500;

/// A testbed whose sender's interface sends at 25 Mbit/s through a token
/// bucket, as a real NIC drains its queue at line rate: the datagrams of a
/// burst wait in the queue, holding the socket's send buffer (a veth alone
/// hands each datagram on within the send).
fn setup() -> (Testbed, Vec<SocketAddrV4>) {
    let tb = testbed(TestbedConfig {
        receivers: RECEIVERS,
        addrs_per_receiver: ADDRESSES,
        ..Default::default()
    });
    let out = tb
        .run_in_sender(Command::new("tc").args([
            "qdisc",
            "add",
            "dev",
            tb.sender_iface(),
            "root",
            "tbf",
            "rate",
            "25mbit",
            "burst",
            "32kb",
            "latency",
            "100ms",
        ]))
        .unwrap();
    assert!(
        out.status.success(),
        "tc: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dests = (0..RECEIVERS)
        .flat_map(|r| tb.receiver_addrs(r).to_vec())
        .map(|ip| SocketAddrV4::new(ip, 6200))
        .collect();
    (tb, dests)
}

/// Broadcast `id`: its id, then bytes that depend on it.
fn message(id: u32) -> Vec<u8> {
    let mut m = id.to_le_bytes().to_vec();
    m.extend((0..SIZE - 4).map(|j| ((u64::from(id) * 7 + j as u64) % 253) as u8));
    m
}

/// A sender socket with the smallest send buffer the kernel allows.
fn tiny_buffer_socket(tb: &Testbed, port: u16, nonblocking: bool) -> UdpSocket {
    let socket = sender_socket(tb, port);
    setsockopt(&socket, sockopt::SndBuf, &0).unwrap();
    socket.set_nonblocking(nonblocking).unwrap();
    socket
}

/// The CPU time this thread used so far.
fn thread_cpu() -> Duration {
    let usage = getrusage(UsageWho::RUSAGE_THREAD).unwrap();
    let time =
        |t: nix::sys::time::TimeVal| Duration::new(t.tv_sec() as u64, t.tv_usec() as u32 * 1000);
    time(usage.user_time()) + time(usage.system_time())
}

/// One broadcast on a non-blocking socket, resumed as `Report::unsent`
/// documents: returns the whole report and how many times it stopped.
fn broadcast_resuming(
    broadcaster: &Broadcaster,
    socket: &UdpSocket,
    payload: &[u8],
    destinations: &[SocketAddr],
) -> (Report, u32) {
    let mut report: Option<Report> = None;
    let mut to_send = destinations.to_vec();
    let mut stops = 0;
    while !to_send.is_empty() {
        match broadcaster.broadcast(socket, payload, &to_send) {
            Ok(part) => {
                let unsent = part.unsent();
                // What was not sent is exactly what follows the stop: no
                // destination is both sent and listed.
                assert_eq!(
                    part.copies_sent + part.failed.len(),
                    to_send.len(),
                    "{part:?}"
                );
                if !unsent.is_empty() {
                    assert_eq!(&to_send[to_send.len() - unsent.len()..], unsent.as_slice());
                }
                match &mut report {
                    Some(report) => report.merge(part),
                    None => report = Some(part),
                }
                to_send = unsent;
            }
            Err(Error::Send(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(err) => panic!("broadcast: {err}"),
        }
        if !to_send.is_empty() {
            stops += 1;
            let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLOUT)];
            poll(&mut fds, PollTimeout::from(1000u16)).unwrap();
        }
    }
    (report.unwrap(), stops)
}

fn resume_after_would_block(mode: Mode) {
    let (tb, dests) = setup();
    let targets = addrs(&dests);
    let broadcaster = broadcaster(&tb, mode);
    let socket = tiny_buffer_socket(&tb, 6201, true);
    let rx = tb.receivers(&dests).unwrap();
    let sent: Vec<Vec<u8>> = (0..BROADCASTS).map(message).collect();
    let mut stops = 0;
    for payload in &sent {
        let (report, stopped) = broadcast_resuming(&broadcaster, &socket, payload, &targets);
        assert_complete(&report, targets.len());
        stops += stopped;
    }
    let stats = broadcaster.stats();
    eprintln!(
        "{mode:?}: {BROADCASTS} broadcasts to {} destinations: stopped {stops} times \
         ({} destinations were would-block), stats {stats:?}",
        targets.len(),
        stats.failed(FailureReason::WouldBlock)
    );
    assert!(
        stops > 0,
        "{mode:?}: the send buffer never filled: this test tested nothing"
    );
    assert_eq!(
        stats.copies_failed,
        stats.failed(FailureReason::WouldBlock),
        "{stats:?}"
    );
    assert_eq!(
        stats.kernel_copies + stats.user_space_copies,
        u64::from(BROADCASTS) * targets.len() as u64
    );
    expect_exactly_once(rx, &dests, &sent);
}

#[test]
fn user_space_broadcasts_resume_after_would_block_exactly_once() {
    elec_testbed::require_root!();
    resume_after_would_block(Mode::UserSpace);
}

/// In kernel mode the copies are clones, which the socket's send buffer
/// does not hold back: an unpaced burst fills the device's queue instead,
/// and every copy the queue refused is reported as `Dropped` (and only
/// those are missing at the receivers).
#[test]
fn kernel_copies_a_full_queue_refuses_are_reported_dropped() {
    elec_testbed::require_root!();
    let (tb, dests) = setup();
    let targets = addrs(&dests);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let socket = tiny_buffer_socket(&tb, 6202, true);
    let rx = tb.receivers(&dests).unwrap();
    let mut failed = Vec::new();
    let mut stops = 0;
    for id in 0..BROADCASTS {
        let (report, stopped) = broadcast_resuming(&broadcaster, &socket, &message(id), &targets);
        stops += stopped;
        assert_eq!(report.kernel_copies + report.failed.len(), targets.len());
        for failure in &report.failed {
            assert_eq!(failure.reason, FailureReason::Dropped, "{failure:?}");
        }
        failed.push(report.failed_destinations().collect::<Vec<_>>());
    }
    let stats = broadcaster.stats();
    eprintln!(
        "Kernel: {BROADCASTS} broadcasts to {} destinations: stopped {stops} times, {stats:?}",
        targets.len()
    );
    assert!(
        stats.failed(FailureReason::Dropped) > 0,
        "the queue never overflowed: this test tested nothing"
    );
    assert_eq!(stats.failed(FailureReason::Dropped), stats.copies_failed);
    let expected: usize = failed.iter().map(|f| targets.len() - f.len()).sum();
    rx.wait_for_total(expected, WAIT);
    tb.wait_quiet(Duration::from_millis(50), WAIT).unwrap();
    let got = rx.finish(SETTLE);
    for (i, dest) in dests.iter().enumerate() {
        for (id, failed) in (0..BROADCASTS).zip(&failed) {
            let copies = got
                .datagrams(dest)
                .iter()
                .filter(|d| **d == message(id))
                .count();
            let want = usize::from(!failed.contains(&targets[i]));
            assert_eq!(copies, want, "{dest}, broadcast {id}");
        }
    }
    assert_eq!(got.total(), expected, "datagrams nobody sent");
}

/// Counts the polls of a future: each is one wake-up of the task.
struct CountPolls<'a, F> {
    future: std::pin::Pin<Box<F>>,
    polls: &'a mut u64,
}

impl<F: std::future::Future> std::future::Future for CountPolls<'_, F> {
    type Output = F::Output;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        *self.polls += 1;
        self.future.as_mut().poll(cx)
    }
}

/// A long unpaced burst of broadcasts to 300 destinations on a tokio socket
/// with the smallest send buffer: every broadcast completes, every copy
/// arrives once, the task is woken about once per time the buffer filled
/// (no spinning), and the thread's CPU time stays within a small factor of
/// the same burst on a blocking socket.
#[test]
fn async_broadcasts_wait_through_tokio_and_resume_exactly_once() {
    elec_testbed::require_root!();
    let (tb, dests) = setup();
    let targets = addrs(&dests);
    let broadcaster = broadcaster(&tb, Mode::UserSpace);
    let sent: Vec<Vec<u8>> = (0..BROADCASTS).map(message).collect();

    // The same burst on a blocking socket first, to the same receivers.
    let blocking = tiny_buffer_socket(&tb, 6203, false);
    let rx = tb.receivers(&dests).unwrap();
    let before = thread_cpu();
    for payload in &sent {
        let report = broadcaster.broadcast(&blocking, payload, &targets).unwrap();
        assert_complete(&report, targets.len());
    }
    let blocking_cpu = thread_cpu() - before;
    expect_exactly_once(rx, &dests, &sent);

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .unwrap();
    let socket = tiny_buffer_socket(&tb, 6204, true);
    let rx = tb.receivers(&dests).unwrap();
    let stats_before = broadcaster.stats();
    let mut polls = 0;
    let start = std::time::Instant::now();
    let before = thread_cpu();
    runtime.block_on(async {
        let socket = tokio::net::UdpSocket::from_std(socket).unwrap();
        for payload in &sent {
            let future = broadcaster.broadcast_async(&socket, payload, &targets);
            let report = CountPolls {
                future: Box::pin(future),
                polls: &mut polls,
            }
            .await
            .unwrap();
            assert_complete(&report, targets.len());
        }
    });
    let async_cpu = thread_cpu() - before;
    let took = start.elapsed();
    let stats = broadcaster.stats();
    let would_block =
        stats.failed(FailureReason::WouldBlock) - stats_before.failed(FailureReason::WouldBlock);
    eprintln!(
        "{BROADCASTS} broadcasts to {} destinations, send buffer {} bytes: \
         async: {polls} polls, CPU {async_cpu:?} in {took:?}; blocking: CPU {blocking_cpu:?}; \
         stats {stats:?}",
        targets.len(),
        nix::sys::socket::getsockopt(&blocking, sockopt::SndBuf).unwrap(),
    );
    // Would-block resumptions are folded into one report per broadcast: the
    // broadcaster's stats see whole broadcasts.
    assert_eq!(would_block, 0, "{stats:?}");
    assert_eq!(
        stats.broadcasts - stats_before.broadcasts,
        u64::from(BROADCASTS)
    );
    assert_eq!(
        stats.user_space_copies - stats_before.user_space_copies,
        u64::from(BROADCASTS) * targets.len() as u64
    );
    // The buffer filled: most broadcasts waited at least once.
    assert!(
        polls > u64::from(BROADCASTS),
        "{polls} polls: the buffer never filled"
    );
    // No spinning: a wake-up moves at least a few datagrams each time.
    let copies = u64::from(BROADCASTS) * targets.len() as u64;
    assert!(
        polls * 2 < copies,
        "{polls} polls for {copies} copies: spinning"
    );
    // A loose bound (this is not a benchmark, and this build is not
    // optimised: the ratio measured in release builds is in the closing
    // note of issue 14): spinning while the queue drains would take about
    // the burst's whole duration in CPU (the queue drains at 25 Mbit/s:
    // about two seconds).
    assert!(
        async_cpu < blocking_cpu * 8 + Duration::from_millis(150),
        "async {async_cpu:?} vs blocking {blocking_cpu:?}"
    );
    assert!(async_cpu < took / 2, "async {async_cpu:?} in {took:?}");
    expect_exactly_once(rx, &dests, &sent);
}
