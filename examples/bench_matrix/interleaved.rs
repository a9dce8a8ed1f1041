//! The `interleaved` subcommand: the crate's kernel mode and the bare
//! fan-out program, call by call in one thread (a broadcast and a bare send
//! of the same payload, in an order that swaps from pair to pair), each
//! call timed with the thread's CPU clock. Interleaving call by call cancels the drift of a shared
//! machine's load, which separate runs (`overhead`) cannot; both programs
//! are attached to the sender's interface for the whole run, each passing
//! the other's datagrams after one test.

use std::fmt::Write as _;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::thread;
use std::time::Duration;

use elec_broadcast::{BareFanOut, Broadcaster, Mode};
use elec_testbed::{in_namespace, pattern, pin_current_thread, PATTERN_MODULUS};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};

use crate::bench::Bench;
use crate::spread::{cell, Spread};
use crate::InterleavedArgs;

/// Ports of the two senders' sockets.
const KERNEL_PORT: u16 = 5100;
const BARE_PORT: u16 = 5101;

fn thread_cpu_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .expect("the thread's CPU clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// One send for the bare program, as the `broadcast` example's bare mode.
/// With `txtime`, the send carries a transmit time as well (one in the
/// past, as the crate's tags).
fn bare_send(
    socket: &UdpSocket,
    payload: &[u8],
    to: SocketAddrV4,
    txtime: bool,
) -> Result<(), String> {
    let segment = payload.len() as u16;
    let time = 1u64;
    let both = [
        ControlMessage::UdpGsoSegments(&segment),
        ControlMessage::TxTime(&time),
    ];
    let cmsgs = if txtime { &both[..] } else { &both[..1] };
    let iov = [std::io::IoSlice::new(payload)];
    sendmsg(
        socket.as_raw_fd(),
        &iov,
        cmsgs,
        MsgFlags::empty(),
        Some(&SockaddrIn::from(to)),
    )
    .map(|_| ())
    .map_err(|e| format!("bare send: {e}"))
}

/// Mean CPU ns per call of (kernel mode, bare) over `count` interleaved
/// pairs of calls to the first `n` destinations.
fn one_run(
    bench: &Bench,
    n: usize,
    size: usize,
    count: u64,
    against_itself: bool,
    bare_txtime: bool,
    spin: bool,
) -> Result<(f64, f64), String> {
    let dests = bench.destinations(n);
    let targets: Vec<SocketAddr> = dests.iter().copied().map(SocketAddr::V4).collect();
    let counters = bench
        .tb
        .counting_receivers(&dests, Some(bench.receiver_cpu))
        .map_err(|e| format!("starting the receivers: {e}"))?;
    let messages: Vec<Vec<u8>> = (0..PATTERN_MODULUS).map(|s| pattern(s, size)).collect();
    let (sender_cpu, tb) = (bench.sender_cpu, &bench.tb);
    let pacing = bench.pacing(n, size);
    let sums = in_namespace(tb.sender_ns(), || -> Result<(u64, u64), String> {
        pin_current_thread(sender_cpu).map_err(|e| e.to_string())?;
        let broadcaster = Broadcaster::with_mode(tb.sender_iface(), Mode::Kernel)
            .map_err(|e| format!("kernel mode: {e}"))?;
        let bind = |port| UdpSocket::bind(SocketAddrV4::new(tb.sender_addr(), port));
        let kernel_socket = bind(KERNEL_PORT).map_err(|e| e.to_string())?;
        let bare_socket = bind(BARE_PORT).map_err(|e| e.to_string())?;
        if bare_txtime {
            let config = libc::sock_txtime {
                clockid: libc::CLOCK_MONOTONIC,
                flags: 0,
            };
            nix::sys::socket::setsockopt(&bare_socket, nix::sys::socket::sockopt::TxTime, &config)
                .map_err(|e| format!("SO_TXTIME on the bare socket: {e}"))?;
        }
        // (With `against_itself`, attached all the same, on a port the
        // second socket does not use.)
        let bare_port = if against_itself {
            BARE_PORT + 1
        } else {
            BARE_PORT
        };
        let _bare = BareFanOut::attach(tb.sender_iface(), bare_port, &dests)
            .map_err(|e| format!("bare program: {e}"))?;
        let (mut kernel, mut bare) = (0u64, 0u64);
        for seq in 0..count {
            let payload = &messages[(seq % PATTERN_MODULUS) as usize];
            // Each call timed alone, in an order drawn per pair, so that work
            // one call leaves behind (skbs handed back to this CPU to free,
            // an idle CPU to wake) falls as often into a call of either kind.
            let broadcast = || {
                let t0 = thread_cpu_ns();
                let report = broadcaster
                    .broadcast(&kernel_socket, payload, &targets)
                    .map_err(|e| format!("broadcast: {e}"))?;
                let took = thread_cpu_ns() - t0;
                if !report.is_complete() || report.kernel_copies != n {
                    return Err(format!("an incomplete broadcast: {report:?}"));
                }
                Ok(took)
            };
            let bare_call = || -> Result<u64, String> {
                let t0 = thread_cpu_ns();
                if against_itself {
                    // The A/A check: the crate against itself, on another
                    // socket (which the bare program does not match).
                    let report = broadcaster
                        .broadcast(&bare_socket, payload, &targets)
                        .map_err(|e| format!("broadcast: {e}"))?;
                    if !report.is_complete() {
                        return Err(format!("an incomplete broadcast: {report:?}"));
                    }
                } else {
                    bare_send(&bare_socket, payload, dests[0], bare_txtime)?;
                }
                Ok(thread_cpu_ns() - t0)
            };
            // Which goes first is drawn (a fixed hash of the pair's number),
            // not alternated: the pauses come every `pacing.every` pairs, an
            // even number, so with strict alternation the same kind would
            // always come first after a pause and alone pay for waking the
            // idle receive CPU.
            if seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 63 == 0 {
                kernel += broadcast()?;
                bare += bare_call()?;
            } else {
                bare += bare_call()?;
                kernel += broadcast()?;
            }
            // Two broadcasts' worth of copies per pair: pause twice as long.
            if (seq + 1) % pacing.every == 0 {
                let pause = Duration::from_micros(2 * pacing.pace_us * pacing.every);
                if spin {
                    let until = std::time::Instant::now() + pause;
                    while std::time::Instant::now() < until {
                        std::hint::spin_loop();
                    }
                } else {
                    thread::sleep(pause);
                }
            }
        }
        Ok((kernel, bare))
    })
    .map_err(|e| format!("entering the sender namespace: {e}"))??;
    counters.wait_for_total(2 * count * n as u64, Duration::from_secs(10));
    thread::sleep(Duration::from_millis(20));
    let counted = counters.stop();
    if counted.total() != 2 * count * n as u64 || counted.total_mismatches() != 0 {
        return Err(format!(
            "delivery: {} copies counted (of {}), {} mangled",
            counted.total(),
            2 * count * n as u64,
            counted.total_mismatches()
        ));
    }
    Ok((sums.0 as f64 / count as f64, sums.1 as f64 / count as f64))
}

pub fn run(args: &InterleavedArgs) -> Result<(), String> {
    args.common.ipv4_only("interleaved")?;
    let bench = Bench::new(&args.common)?;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "Sender CPU per call in µs (the thread's CPU clock around each call), kernel mode \
         and the bare program call by call in one thread; median (min–max) of {} runs of \
         {} pairs of calls; every copy of both checked at the receivers.\n",
        args.repeats, args.count
    );
    let other = if args.against_itself {
        "kernel (A/A)"
    } else {
        "bare"
    };
    let _ = writeln!(table, "| N | size | kernel | {other} | kernel − {other} |");
    let _ = writeln!(table, "|--:|--:|--:|--:|--:|");
    for &n in &args.ns {
        for &size in &args.sizes {
            let (mut kernel, mut bare, mut diff) = (vec![], vec![], vec![]);
            for repeat in 0..args.repeats {
                let (k, b) = one_run(
                    &bench,
                    n,
                    size,
                    args.count,
                    args.against_itself,
                    args.bare_txtime,
                    args.spin,
                )?;
                let (k, b) = (k / 1000.0, b / 1000.0);
                eprintln!(
                    "[{}/{}] N={n:<3} {size:>4} B: kernel {k:6.2}, bare {b:6.2} µs/call",
                    repeat + 1,
                    args.repeats
                );
                kernel.push(k);
                bare.push(b);
                diff.push(k - b);
            }
            let _ = writeln!(
                table,
                "| {n} | {size} B | {} | {} | {} |",
                cell(Spread::of(&kernel), 2),
                cell(Spread::of(&bare), 2),
                cell(Spread::of(&diff), 2),
            );
        }
    }
    println!("{table}");
    Ok(())
}
