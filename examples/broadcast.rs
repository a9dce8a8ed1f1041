//! Sends K broadcasts of one message each to every destination and prints one
//! JSON line with what was sent and the sender's CPU time.
//!
//! ```text
//! broadcast --iface IFACE --bind IP:PORT --count K --size BYTES \
//!           --mode kernel|sendmmsg|sendto [--batch B] [--pace-us N [--pace-every K]] \
//!           [--keep-going] DEST...
//! ```
//!
//! Message number s (from 0) of size S has byte j equal to (s + j) % 251, so a
//! receiver can check every byte. `kernel` and `sendmmsg` go through
//! `elec_broadcast::Broadcaster` (kernel and user-space mode); `sendto` is the
//! plain loop of one `sendto(2)` per destination that the others are
//! measured against. CPU time is `getrusage(RUSAGE_SELF)` over the send loop
//! only (set-up such as loading the eBPF program is not counted).
//! `--pace-every K` sleeps after every K broadcasts instead of each one.
//! `--batch B` sends B messages per call (`Broadcaster::broadcast_batch`;
//! for `sendto`, B loops); the counts stay per message (`"broadcasts"` is
//! the number of messages), and K must then be a multiple of B.
//!
//! The JSON line is printed in every case: when a call fails, the run stops
//! and the line says so in `"error"` (and the exit status is 1), unless
//! `--keep-going` is given, in which case failed calls are counted in
//! `"calls_failed"` and the run goes on. `"failed_per_destination"` counts
//! the copies each DEST did not get, in the order given.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use elec_broadcast::{Broadcaster, Mode};
use elec_testbed::{pattern, PATTERN_MODULUS};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Broadcast K messages to every DEST and report sender CPU as JSON")]
struct Args {
    /// Interface the destinations are reached through.
    #[arg(long)]
    iface: String,
    /// Local address of the sending socket.
    #[arg(long)]
    bind: SocketAddr,
    /// Number of broadcasts.
    #[arg(long)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long)]
    size: usize,
    /// How the copies are made.
    #[arg(long, value_enum)]
    mode: SendMode,
    /// Pause between broadcasts, in microseconds.
    #[arg(long)]
    pace_us: Option<u64>,
    /// With --pace-us: sleep K times the pause after every K broadcasts
    /// instead of after each one (each sleep costs sender CPU too, the same
    /// in every mode; K bounds the bursts the receivers see).
    #[arg(long, default_value_t = 1, value_name = "K", value_parser = clap::value_parser!(u64).range(1..))]
    pace_every: u64,
    /// Messages per call: `broadcast_batch` of B payloads (kernel, sendmmsg).
    #[arg(long, default_value_t = 1, value_name = "B", value_parser = clap::value_parser!(u64).range(1..))]
    batch: u64,
    /// With --batch: make the first payload of each batch one byte shorter,
    /// so that the batch goes as one carrier per payload rather than as one
    /// segmented carrier (which takes payloads of one size).
    #[arg(long)]
    unequal: bool,
    /// Count a failed call and go on, instead of stopping the run.
    #[arg(long)]
    keep_going: bool,
    /// Destinations, IP:PORT.
    #[arg(required = true)]
    dests: Vec<SocketAddr>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum SendMode {
    Kernel,
    Sendmmsg,
    Sendto,
    /// Benchmark baseline: the bare fan-out program (`bpf/bare.bpf.c`)
    /// clones each plain `sendto` to the first DEST to every DEST; no
    /// exactly-once protocol, no report (every copy counted as sent).
    Bare,
}

impl SendMode {
    fn name(self) -> &'static str {
        match self {
            SendMode::Kernel => "kernel",
            SendMode::Sendmmsg => "sendmmsg",
            SendMode::Sendto => "sendto",
            SendMode::Bare => "bare",
        }
    }
}

fn cpu_times_us() -> (u64, u64) {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage(RUSAGE_SELF) cannot fail");
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    (us(usage.user_time()), us(usage.system_time()))
}

/// What a run did, as far as it got.
#[derive(Default)]
struct Tally {
    broadcasts: u64,
    calls_failed: u64,
    copies_sent: u64,
    failed_per_destination: Vec<u64>,
    cpu_user_us: u64,
    cpu_sys_us: u64,
    wall_us: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let mut tally = Tally {
        failed_per_destination: vec![0; args.dests.len()],
        ..Tally::default()
    };
    let outcome = run(&args, &mut tally);
    let mut line = json!({
        "mode": args.mode.name(),
        "broadcasts": tally.broadcasts,
        "destinations": args.dests.len(),
        "copies_sent": tally.copies_sent,
        "copies_failed": tally.failed_per_destination.iter().sum::<u64>(),
        "calls_failed": tally.calls_failed,
        "failed_per_destination": tally.failed_per_destination,
        "cpu_user_us": tally.cpu_user_us,
        "cpu_sys_us": tally.cpu_sys_us,
        "wall_us": tally.wall_us,
    });
    if let Err(err) = &outcome {
        line["error"] = json!(err.to_string());
    }
    println!("{line}");
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("broadcast: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the broadcasts, adding what they did to `tally` as it goes, so that
/// a run stopped by an error still reports what it sent.
fn run(args: &Args, tally: &mut Tally) -> Result<(), Box<dyn std::error::Error>> {
    let socket = UdpSocket::bind(args.bind)?;
    let broadcaster = match args.mode {
        SendMode::Kernel => Some(Broadcaster::with_mode(&args.iface, Mode::Kernel)?),
        SendMode::Sendmmsg => Some(Broadcaster::with_mode(&args.iface, Mode::UserSpace)?),
        SendMode::Sendto | SendMode::Bare => None,
    };
    // Held for the run: detached on drop.
    let _bare = match args.mode {
        SendMode::Bare => {
            let dests: Vec<std::net::SocketAddrV4> = args
                .dests
                .iter()
                .map(|d| match d {
                    SocketAddr::V4(v4) => Ok(*v4),
                    SocketAddr::V6(_) => Err("bare mode is IPv4 only"),
                })
                .collect::<Result<_, _>>()?;
            Some(elec_broadcast::BareFanOut::attach(
                &args.iface,
                args.bind.port(),
                &dests,
            )?)
        }
        _ => None,
    };
    // Message s (byte j is (s + j) % 251, the testbed's pattern) depends on
    // s only modulo 251: build those once.
    let messages: Vec<Vec<u8>> = (0..PATTERN_MODULUS)
        .map(|s| pattern(s, args.size))
        .collect();
    let pace = args.pace_us.map(Duration::from_micros);

    let (user0, sys0) = cpu_times_us();
    let start = Instant::now();
    let mut deadline = start;
    if args.pace_every % args.batch != 0 {
        return Err(format!(
            "--pace-every {} is not a multiple of --batch {}",
            args.pace_every, args.batch
        )
        .into());
    }
    let result = (|| {
        let mut seq = 0;
        while seq < args.count {
            let batch = args.batch.min(args.count - seq);
            let mut payloads: Vec<&[u8]> = (seq..seq + batch)
                .map(|s| messages[(s % PATTERN_MODULUS) as usize].as_slice())
                .collect();
            if args.unequal && batch > 1 && !payloads[0].is_empty() {
                payloads[0] = &payloads[0][..payloads[0].len() - 1];
            }
            tally.broadcasts += batch;
            let call = if args.mode == SendMode::Bare {
                send_bare(&socket, &payloads, &args.dests, tally)
            } else {
                send_batch(broadcaster.as_ref(), &socket, &payloads, &args.dests, tally)
            };
            if let Err(err) = call {
                // Every destination of a failed call got nothing.
                tally.calls_failed += 1;
                for failed in &mut tally.failed_per_destination {
                    *failed += batch;
                }
                if !args.keep_going {
                    return Err(err);
                }
            }
            seq += batch;
            if let Some(pace) = pace {
                // Sleep to a deadline, so the average rate is exact.
                deadline += pace * batch as u32;
                if seq % args.pace_every == 0 {
                    thread::sleep(deadline.saturating_duration_since(Instant::now()));
                }
            }
        }
        Ok(())
    })();
    tally.wall_us = start.elapsed().as_micros() as u64;
    let (user1, sys1) = cpu_times_us();
    tally.cpu_user_us = user1 - user0;
    tally.cpu_sys_us = sys1 - sys0;
    result
}

/// One call: one broadcast per payload (one `broadcast`, or one
/// `broadcast_batch` for several); a failed copy is counted against its
/// destination.
fn send_batch(
    broadcaster: Option<&Broadcaster>,
    socket: &UdpSocket,
    payloads: &[&[u8]],
    dests: &[SocketAddr],
    tally: &mut Tally,
) -> Result<(), Box<dyn std::error::Error>> {
    match broadcaster {
        Some(broadcaster) => {
            let reports = match payloads {
                [payload] => vec![broadcaster.broadcast(socket, payload, dests)?],
                _ => broadcaster.broadcast_batch(socket, payloads, dests)?,
            };
            for report in reports {
                count_report(&report, dests, tally);
            }
        }
        None => {
            for payload in payloads {
                for (i, dest) in dests.iter().enumerate() {
                    match socket.send_to(payload, dest) {
                        Ok(_) => tally.copies_sent += 1,
                        Err(_) => tally.failed_per_destination[i] += 1,
                    }
                }
            }
        }
    }
    Ok(())
}

/// The bare baseline: one send per payload, to the first destination; the
/// bare program makes every copy. Sent as one whole `UDP_SEGMENT` datagram,
/// as the crate sends its carriers (payload in page fragments, so that a
/// clone's un-sharing copies only its headers), without the transmit time.
fn send_bare(
    socket: &UdpSocket,
    payloads: &[&[u8]],
    dests: &[SocketAddr],
    tally: &mut Tally,
) -> Result<(), Box<dyn std::error::Error>> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, SockaddrIn};
    use std::os::fd::AsRawFd;
    let SocketAddr::V4(to) = dests[0] else {
        return Err("bare mode is IPv4 only".into());
    };
    let to = SockaddrIn::from(to);
    for payload in payloads {
        let segment = payload.len() as u16;
        let whole = [ControlMessage::UdpGsoSegments(&segment)];
        let cmsgs: &[ControlMessage<'_>] = if payload.is_empty() { &[] } else { &whole };
        let iov = [std::io::IoSlice::new(payload)];
        sendmsg(
            socket.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::empty(),
            Some(&to),
        )?;
        tally.copies_sent += dests.len() as u64;
    }
    Ok(())
}

/// Adds one broadcast's report to the tally.
fn count_report(report: &elec_broadcast::Report, dests: &[SocketAddr], tally: &mut Tally) {
    tally.copies_sent += report.copies_sent as u64;
    // A destination listed twice counts against its mentions in turn.
    let mut counted = vec![false; dests.len()];
    for failed in report.failed_destinations() {
        if let Some(i) = (0..dests.len()).find(|&i| !counted[i] && dests[i] == failed) {
            counted[i] = true;
            tally.failed_per_destination[i] += 1;
        }
    }
}
