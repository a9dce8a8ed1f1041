//! Sends K broadcasts of one message each to every destination and prints one
//! JSON line with what was sent and the sender's CPU time.
//!
//! ```text
//! broadcast --iface IFACE --bind IP:PORT --count K --size BYTES \
//!           --mode kernel|sendmmsg|sendto [--pace-us N [--pace-every K]] DEST...
//! ```
//!
//! Message number s (from 0) of size S has byte j equal to (s + j) % 251, so a
//! receiver can check every byte. `kernel` and `sendmmsg` go through
//! `elec_broadcast::Broadcaster` (kernel and user-space mode); `sendto` is the
//! plain loop of one `sendto(2)` per destination that the others are
//! measured against. CPU time is `getrusage(RUSAGE_SELF)` over the send loop
//! only (set-up such as loading the eBPF program is not counted).
//! `--pace-every K` sleeps after every K broadcasts instead of each one.

use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::thread;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use elec_broadcast::{Broadcaster, Mode};

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
    /// Destinations, IP:PORT.
    #[arg(required = true)]
    dests: Vec<SocketAddr>,
}

#[derive(Clone, Copy, ValueEnum)]
enum SendMode {
    Kernel,
    Sendmmsg,
    Sendto,
}

impl SendMode {
    fn name(self) -> &'static str {
        match self {
            SendMode::Kernel => "kernel",
            SendMode::Sendmmsg => "sendmmsg",
            SendMode::Sendto => "sendto",
        }
    }
}

/// Message `seq` of `size` bytes: byte j is (seq + j) % 251.
fn message(seq: u64, size: usize) -> Vec<u8> {
    (0..size).map(|j| ((seq + j as u64) % 251) as u8).collect()
}

fn cpu_times_us() -> (u64, u64) {
    let usage = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .expect("getrusage(RUSAGE_SELF) cannot fail");
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    (us(usage.user_time()), us(usage.system_time()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("broadcast: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let socket = UdpSocket::bind(args.bind)?;
    let broadcaster = match args.mode {
        SendMode::Kernel => Some(Broadcaster::with_mode(&args.iface, Mode::Kernel)?),
        SendMode::Sendmmsg => Some(Broadcaster::with_mode(&args.iface, Mode::UserSpace)?),
        SendMode::Sendto => None,
    };
    // Message s depends on s only modulo 251: build those once.
    let messages: Vec<Vec<u8>> = (0..251).map(|s| message(s, args.size)).collect();
    let pace = args.pace_us.map(Duration::from_micros);

    let (mut copies_sent, mut copies_failed) = (0u64, 0u64);
    let (user0, sys0) = cpu_times_us();
    let start = Instant::now();
    let mut deadline = start;
    for seq in 0..args.count {
        let payload = &messages[(seq % 251) as usize];
        match &broadcaster {
            Some(broadcaster) => {
                let report = broadcaster.broadcast(&socket, payload, &args.dests)?;
                copies_sent += report.copies_sent as u64;
                copies_failed += report.failed.len() as u64;
            }
            None => {
                for dest in &args.dests {
                    match socket.send_to(payload, dest) {
                        Ok(_) => copies_sent += 1,
                        Err(_) => copies_failed += 1,
                    }
                }
            }
        }
        if let Some(pace) = pace {
            // Sleep to a deadline, so the average rate is exact.
            deadline += pace;
            if (seq + 1) % args.pace_every == 0 {
                thread::sleep(deadline.saturating_duration_since(Instant::now()));
            }
        }
    }
    let wall_us = start.elapsed().as_micros();
    let (user1, sys1) = cpu_times_us();
    println!(
        "{{\"mode\":\"{}\",\"broadcasts\":{},\"destinations\":{},\"copies_sent\":{},\"copies_failed\":{},\"cpu_user_us\":{},\"cpu_sys_us\":{},\"wall_us\":{}}}",
        args.mode.name(),
        args.count,
        args.dests.len(),
        copies_sent,
        copies_failed,
        user1 - user0,
        sys1 - sys0,
        wall_us
    );
    Ok(())
}
