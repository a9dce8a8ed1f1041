//! The project's demo: a local testbed (one sender and R receiver network
//! namespaces behind a bridge), the same broadcasts sent in kernel fan-out,
//! `sendmmsg` and `sendto` modes by the `broadcast` example, and delivery and
//! sender CPU side by side. Everything it creates is removed at the end, on
//! a panic or on Ctrl-C.
//!
//! Run it with `scripts/demo.sh` (as root).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Duration;

use clap::Parser;
use elec_testbed::{Testbed, TestbedConfig};
use serde::Deserialize;

#[derive(Parser)]
#[command(about = "Kernel fan-out vs user-space sends on a local namespace testbed")]
struct Args {
    /// Receiver namespaces.
    #[arg(long, default_value_t = 8)]
    receivers: usize,
    /// Destinations per broadcast (spread over the receivers' addresses and ports).
    #[arg(long, default_value_t = 64)]
    destinations: usize,
    /// Broadcasts per mode.
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 1200)]
    size: usize,
    /// Pause between broadcasts (µs), so receivers keep up.
    #[arg(long, default_value_t = 300)]
    pace_us: u64,
}

const MODES: [&str; 3] = ["kernel", "sendmmsg", "sendto"];

/// The fields of the `broadcast` example's JSON line read here.
#[derive(Deserialize)]
struct BroadcastLine {
    copies_sent: u64,
    copies_failed: u64,
    cpu_user_us: u64,
    cpu_sys_us: u64,
}

struct Run {
    mode: &'static str,
    copies_sent: u64,
    copies_failed: u64,
    delivered: u64,
    corrupted: u64,
    cpu_us: u64,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match demo(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("demo: {err}");
            ExitCode::FAILURE
        }
    }
}

fn broadcast_binary() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name("broadcast");
    path.exists().then_some(path).ok_or_else(|| {
        "the broadcast example is not built: run `cargo build --release --examples`".into()
    })
}

fn demo(args: &Args) -> Result<(), String> {
    let broadcast = broadcast_binary()?;
    println!(
        "Setting up: 1 sender + {} receiver namespaces behind a bridge ...",
        args.receivers
    );
    let addrs_per_receiver = args.destinations.div_ceil(args.receivers).clamp(1, 4);
    let tb = Testbed::new(TestbedConfig {
        receivers: args.receivers,
        addrs_per_receiver,
        rps_cpu: Some(1),
        ..Default::default()
    })
    .map_err(|e| e.to_string())?;
    let dests = tb.destinations(args.destinations, 7000);
    println!(
        "Broadcasting {} messages of {} B to {} destinations ({} receivers x {} addresses), per mode\n",
        args.count, args.size, dests.len(), args.receivers, addrs_per_receiver
    );

    let mut runs = Vec::new();
    for mode in MODES {
        let counters = tb
            .counting_receivers(&dests, Some(1))
            .map_err(|e| e.to_string())?;
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "0"]).arg(&broadcast).args([
            "--iface",
            tb.sender_iface(),
            "--bind",
            &format!("{}:5000", tb.sender_addr()),
            "--count",
            &args.count.to_string(),
            "--size",
            &args.size.to_string(),
            "--mode",
            mode,
            "--pace-us",
            &args.pace_us.to_string(),
            // Sleep after bursts of about 128 copies, not after every broadcast.
            "--pace-every",
            &(128 / dests.len()).max(1).to_string(),
        ]);
        cmd.args(dests.iter().map(|d| SocketAddr::V4(*d).to_string()));
        let out = tb
            .run_in_sender(&mut cmd)
            .map_err(|e| format!("running broadcast: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "broadcast --mode {mode} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let line: BroadcastLine = serde_json::from_str(stdout.trim())
            .map_err(|e| format!("reading broadcast's JSON line: {e}: {stdout:?}"))?;
        counters.wait_for_total(line.copies_sent, Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(50));
        let counted = counters.stop();
        runs.push(Run {
            mode,
            copies_sent: line.copies_sent,
            copies_failed: line.copies_failed,
            delivered: counted.total(),
            corrupted: counted.total_mismatches(),
            cpu_us: line.cpu_user_us + line.cpu_sys_us,
        });
    }
    let csum_errors: u64 = tb
        .udp_in_csum_errors()
        .map_err(|e| e.to_string())?
        .iter()
        .sum();

    let expected = args.count * dests.len() as u64;
    let sendto_cpu = runs
        .iter()
        .find(|r| r.mode == "sendto")
        .map_or(1, |r| r.cpu_us.max(1));
    println!(
        "{:<9} {:>12} {:>8} {:>18} {:>9} {:>16} {:>10}",
        "mode", "copies sent", "failed", "delivered", "corrupt", "CPU/broadcast", "vs sendto"
    );
    for run in &runs {
        println!(
            "{:<9} {:>12} {:>8} {:>11} / {:<6} {:>7} {:>13.1} µs {:>9.2}x",
            run.mode,
            run.copies_sent,
            run.copies_failed,
            run.delivered,
            expected,
            run.corrupted,
            run.cpu_us as f64 / args.count as f64,
            run.cpu_us as f64 / sendto_cpu as f64,
        );
    }
    println!(
        "\nUDP checksum errors at the receivers: {csum_errors} (transmit checksum offload is off on \
         the bridge ports facing them, so their stacks verify every checksum)."
    );
    println!(
        "Sender CPU is getrusage(RUSAGE_SELF) user+sys of the sending process over its send loop, \
         pinned to CPU 0; receive-side work is steered to CPU 1 (RPS), so it is not counted."
    );
    drop(tb);
    println!("Testbed removed.");
    let complete = runs
        .iter()
        .all(|r| r.delivered == expected && r.corrupted == 0);
    if complete && csum_errors == 0 {
        Ok(())
    } else {
        Err("some copies were lost or corrupted (see the table)".into())
    }
}
