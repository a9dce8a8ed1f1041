//! The sender-CPU matrix behind `docs/benchmarks.md`: kernel fan-out against
//! one `sendmmsg` and a `sendto` loop, for N in {4, ..., 256} destinations and
//! 64 B and 1200 B payloads, measured side by side and repeated, over IPv4,
//! IPv6 or both.
//!
//! ```text
//! bench_matrix matrix   [--repeats 5] [--ns 4,8,...] [--sizes 64,1200] [--families 4,6] [--out-dir docs/benchmarks]
//! bench_matrix syscalls [--n 16] [--size 64]        # system calls per broadcast, with strace
//! bench_matrix profile  [--n 64] [--mode kernel]    # perf record -a -g while one mode sends
//! bench_matrix batch    [--ns 4,16] [--ks 8]         # broadcast_batch against single broadcasts
//! bench_matrix overhead [--ns 4,16,64]               # kernel mode against the bare program
//! bench_matrix interleaved [--ns 4,16,64]            # the same, call by call in one thread
//! ```
//!
//! Every run is one process of the `broadcast` example (built next to this
//! one) inside the sender namespace of a fresh testbed (8 receiver
//! namespaces with 4 addresses each, several ports per address), pinned to
//! the sender CPU; it reports its own CPU time (`getrusage`, user + system)
//! over its send loop. Receive-side work goes to the other CPU: RPS on the
//! bridge port facing the sender, counting receivers pinned there. Sends are
//! paced so that the receivers keep up, and after every run each destination
//! must have received every copy, intact: a run that lost or mangled a copy
//! is rejected (reported, retried, never used).
//!
//! The `broadcast` example's CPU window includes its pacing sleeps, so each
//! (N, size) point also runs a pacing-only process with the same count and
//! pause (`bench_matrix pacing`), and its CPU time is subtracted.
//!
//! Within one repeat the three modes run back to back for the same (N, size),
//! in an order rotated from repeat to repeat, so the ratios kernel/sendto and
//! kernel/sendmmsg compare runs made under the same machine load. Medians and
//! min-max ranges over the repeats are reported.
//!
//! IPv6: `--ipv6` (any subcommand but `overhead` and `interleaved`, whose
//! bare program is IPv4 only) binds the sender's socket to `[fd77::1]:5000`
//! and sends to the receivers' IPv6 addresses, the twins of the IPv4 ones
//! (same receivers, same ports; the testbed then has IPv6 on its links).
//! `matrix --families 4,6` measures both families in one run: per (N, size)
//! and repeat, the three modes in one family, then in the other, the
//! families in an order rotated like the modes, so that IPv4 and IPv6 come
//! from the same run under the same load (the pacing-only CPU is measured
//! once per (N, size) and repeat, for both). Payloads are at most 1472 B
//! over IPv4 and 1452 B over IPv6 (the 1500-byte MTU less 28 or 48 bytes of
//! headers). The table then has a family column, results.json a `family`
//! (4 or 6) in every row, and IPv6 gets its own figures,
//! sender-cpu-ipv6.svg and ratio-ipv6.svg; with the default `--families 4`
//! the output is as it was before IPv6.
//!
//! Needs root (network namespaces, eBPF) and the `broadcast` example built
//! in the same profile: `scripts/bench.sh` does both.
//!
//! Layout: this file is the command line; `bench.rs` sets up the testbed and
//! runs the `broadcast` example on it, pinned and checked at the receivers;
//! `pacing.rs` is the pacing of those runs and the pacing-only process;
//! `spread.rs` medians and ranges; `matrix.rs` the `matrix` subcommand and
//! its table, `results.rs` its results.json and `plot.rs` its SVG figures;
//! `compare.rs`, `batch.rs`, `overhead.rs`, `interleaved.rs`, `syscalls.rs`
//! (strace) and `profile.rs` (perf) the other subcommands.

mod batch;
mod bench;
mod compare;
mod interleaved;
mod matrix;
mod overhead;
mod pacing;
mod plot;
mod profile;
mod results;
mod spread;
mod syscalls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::bench::Family;

#[derive(Parser)]
#[command(about = "Sender CPU per broadcast: kernel fan-out vs sendmmsg vs sendto")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run the full matrix and write results.json, results.md and the plots.
    Matrix(MatrixArgs),
    /// Count the system calls per broadcast of each mode with `strace -f -c`.
    Syscalls(SyscallArgs),
    /// Record `perf record -a -g` while one mode sends (for profiling).
    Profile(ProfileArgs),
    /// Kernel mode of this build against kernel mode of another build of
    /// the `broadcast` example (an earlier commit), side by side.
    Compare(CompareArgs),
    /// `broadcast_batch` of K payloads against K single broadcasts and one
    /// `sendmmsg` of the K × N datagrams, side by side.
    Batch(BatchArgs),
    /// Kernel mode against the bare fan-out program (the same clones, no
    /// exactly-once protocol), side by side: the crate's own overhead.
    Overhead(OverheadArgs),
    /// Kernel mode against the bare program call by call in one thread,
    /// each call timed with the thread's CPU clock.
    Interleaved(InterleavedArgs),
    /// (internal) The pacing sleeps of the broadcast example alone: prints the
    /// CPU time of COUNT sleeps of PACE_US, the same way it measures.
    #[command(hide = true)]
    Pacing {
        #[arg(long)]
        count: u64,
        #[arg(long)]
        pace_us: u64,
        #[arg(long, default_value_t = 1)]
        pace_every: u64,
    },
}

/// Options every subcommand shares.
#[derive(clap::Args, Clone)]
struct Common {
    /// CPU the sender runs on.
    #[arg(long, default_value_t = 0)]
    sender_cpu: usize,
    /// CPU the receivers (and, through RPS, receive processing) run on.
    #[arg(long, default_value_t = 1)]
    receiver_cpu: usize,
    /// Pause per broadcast in µs (default: 40 + 6 per destination, +50% for
    /// payloads over 512 B), so that the receivers keep up.
    #[arg(long)]
    pace_us: Option<u64>,
    /// Sleep after bursts of about this many copies (every max(1, B / N)
    /// broadcasts, for the pauses of all of them) rather than after every
    /// broadcast: each sleep costs the sender CPU, and with receivers on the
    /// same machine every wake-up of the idle receive CPU costs the sender an
    /// IPI, which a busy sender with remote receivers would not pay. 1 =
    /// sleep after every broadcast.
    #[arg(long, default_value_t = 256)]
    burst_copies: usize,
    /// The `broadcast` example (default: next to this program).
    #[arg(long)]
    broadcast: Option<PathBuf>,
    /// Send over IPv6: bind [fd77::1]:5000 and send to the receivers' IPv6
    /// addresses (the twins of the IPv4 ones) instead. Not for `overhead`
    /// and `interleaved`, whose bare program is IPv4 only; `matrix` can run
    /// both families side by side (--families 4,6).
    #[arg(long)]
    ipv6: bool,
}

impl Common {
    /// The family of the runs (`--ipv6`).
    fn family(&self) -> Family {
        if self.ipv6 {
            Family::V6
        } else {
            Family::V4
        }
    }

    /// Refuses `--ipv6` for subcommands that run the IPv4-only bare program.
    fn ipv4_only(&self, what: &str) -> Result<(), String> {
        if self.ipv6 {
            return Err(format!(
                "{what}: --ipv6 is not supported (the bare fan-out program is IPv4 only)"
            ));
        }
        Ok(())
    }
}

#[derive(clap::Args)]
struct MatrixArgs {
    #[command(flatten)]
    common: Common,
    /// Repeats of the whole matrix.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Destination counts.
    #[arg(long, value_delimiter = ',', default_value = "4,8,16,32,64,128,256")]
    ns: Vec<usize>,
    /// Payload sizes in bytes (at most 1472 over IPv4, 1452 over IPv6).
    #[arg(long, value_delimiter = ',', default_value = "64,1200")]
    sizes: Vec<usize>,
    /// Address families measured side by side, 4 and/or 6: within a repeat,
    /// every (N, size) point runs the three modes in each family back to
    /// back, the families in an order rotated like the modes (default: 4,
    /// or 6 with --ipv6).
    #[arg(long, value_delimiter = ',', value_parser = Family::parse, conflicts_with = "ipv6")]
    families: Option<Vec<Family>>,
    /// Broadcasts per run (at least; see --min-run-ms).
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// Make each run last at least this long (more broadcasts at small N),
    /// so that a passing disturbance from other jobs weighs less.
    #[arg(long, default_value_t = 1000)]
    min_run_ms: u64,
    /// Attempts after a rejected (lossy) run before the point is given up.
    #[arg(long, default_value_t = 3)]
    retries: u32,
    /// Where results.json, results.md, sender-cpu.svg and ratio.svg (and,
    /// for IPv6, sender-cpu-ipv6.svg and ratio-ipv6.svg) go.
    #[arg(long, default_value = "docs/benchmarks")]
    out_dir: PathBuf,
}

impl MatrixArgs {
    /// The families measured, each once, in the order given.
    fn families(&self) -> Vec<Family> {
        let mut families = self
            .families
            .clone()
            .unwrap_or_else(|| vec![self.common.family()]);
        let mut seen = Vec::new();
        families.retain(|f| {
            let new = !seen.contains(f);
            seen.push(*f);
            new
        });
        families
    }
}

#[derive(clap::Args)]
struct CompareArgs {
    #[command(flatten)]
    common: Common,
    /// The `broadcast` example of the build to compare against.
    #[arg(long)]
    baseline: PathBuf,
    /// Repeats (each runs both builds, in alternating order).
    #[arg(long, default_value_t = 9)]
    repeats: usize,
    /// Destination counts.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64,256")]
    ns: Vec<usize>,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1200")]
    sizes: Vec<usize>,
    /// Broadcasts per run (at least; see --min-run-ms).
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// Make each run last at least this long.
    #[arg(long, default_value_t = 1000)]
    min_run_ms: u64,
}

#[derive(clap::Args)]
struct BatchArgs {
    #[command(flatten)]
    common: Common,
    /// Repeats (each runs the three ways, in rotated order).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Destination counts.
    #[arg(long, value_delimiter = ',', default_value = "4,16")]
    ns: Vec<usize>,
    /// Payloads per batch.
    #[arg(long, value_delimiter = ',', default_value = "8")]
    ks: Vec<u64>,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1200")]
    sizes: Vec<usize>,
    /// Payloads per run (at least; see --min-run-ms).
    #[arg(long, default_value_t = 4000)]
    count: u64,
    /// Make each run last at least this long.
    #[arg(long, default_value_t = 1000)]
    min_run_ms: u64,
}

#[derive(clap::Args)]
struct OverheadArgs {
    #[command(flatten)]
    common: Common,
    /// Repeats (each runs both, in alternating order).
    #[arg(long, default_value_t = 7)]
    repeats: usize,
    /// Destination counts.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    ns: Vec<usize>,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    sizes: Vec<usize>,
    /// Broadcasts per run (at least; see --min-run-ms).
    #[arg(long, default_value_t = 2000)]
    count: u64,
    /// Make each run last at least this long.
    #[arg(long, default_value_t = 1000)]
    min_run_ms: u64,
}

#[derive(clap::Args)]
struct InterleavedArgs {
    #[command(flatten)]
    common: Common,
    /// Runs per point.
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Destination counts.
    #[arg(long, value_delimiter = ',', default_value = "4,16,64")]
    ns: Vec<usize>,
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    sizes: Vec<usize>,
    /// Pairs of calls per run.
    #[arg(long, default_value_t = 20000)]
    count: u64,
    /// Time kernel mode against itself (on a second socket) instead of the
    /// bare program: an A/A check of the method, whose difference should be
    /// nil.
    #[arg(long)]
    against_itself: bool,
    /// The bare program's sends carry a transmit time too (`SO_TXTIME` on
    /// its socket, an `SCM_TXTIME` control message per send), as the
    /// crate's carriers do: isolates what the tag costs outside the programs.
    #[arg(long)]
    bare_txtime: bool,
    /// Pause by spinning on the clock instead of sleeping: the sender
    /// thread never idles, as a busy sender's would not, so its caches are
    /// not cooled by an idle CPU between calls (the receivers still keep
    /// up). Each call is timed alone, so the spinning is not counted.
    #[arg(long)]
    spin: bool,
}

#[derive(clap::Args)]
struct SyscallArgs {
    #[command(flatten)]
    common: Common,
    /// Destinations per broadcast.
    #[arg(long, default_value_t = 16)]
    n: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// The two broadcast counts whose difference is divided out (set-up
    /// system calls cancel).
    #[arg(long, value_delimiter = ',', default_value = "1000,3000")]
    counts: Vec<u64>,
}

#[derive(clap::Args)]
struct ProfileArgs {
    #[command(flatten)]
    common: Common,
    /// Destinations per broadcast.
    #[arg(long, default_value_t = 64)]
    n: usize,
    /// Payload size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// kernel, sendmmsg, sendto, or bare (the bare fan-out program).
    #[arg(long, default_value = "kernel")]
    mode: String,
    /// Broadcasts.
    #[arg(long, default_value_t = 20000)]
    count: u64,
    /// perf.data to write.
    #[arg(long, default_value = "/tmp/elec-broadcast-perf.data")]
    output: PathBuf,
    /// perf event (`cpu-clock` works in VMs without hardware counters).
    #[arg(long, default_value = "cpu-clock")]
    event: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Task::Matrix(args) => matrix::run(&args),
        Task::Syscalls(args) => syscalls::run(&args),
        Task::Profile(args) => profile::run(&args),
        Task::Compare(args) => compare::run(&args),
        Task::Batch(args) => batch::run(&args),
        Task::Overhead(args) => overhead::run(&args),
        Task::Interleaved(args) => interleaved::run(&args),
        Task::Pacing {
            count,
            pace_us,
            pace_every,
        } => pacing::run(
            count,
            pacing::Pacing {
                pace_us,
                every: pace_every.max(1),
            },
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_matrix: {err}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(args: &[&str]) -> Result<MatrixArgs, clap::Error> {
        let argv = ["bench_matrix", "matrix"].iter().chain(args);
        match Cli::try_parse_from(argv)?.command {
            Task::Matrix(m) => Ok(m),
            _ => unreachable!(),
        }
    }

    #[test]
    fn families_default_to_ipv4_or_to_ipv6_with_the_flag() {
        assert_eq!(matrix(&[]).unwrap().families(), [Family::V4]);
        let v6 = matrix(&["--ipv6"]).unwrap();
        assert_eq!(v6.families(), [Family::V6]);
        assert_eq!(v6.common.family(), Family::V6);
        let both = matrix(&["--families", "6,4,6"]).unwrap();
        assert_eq!(both.families(), [Family::V6, Family::V4]);
        assert_eq!(
            matrix(&["--families", "ipv4,v6"]).unwrap().families(),
            [Family::V4, Family::V6]
        );
        assert!(matrix(&["--families", "5"]).is_err());
        assert!(matrix(&["--families", "4,6", "--ipv6"]).is_err());
    }

    #[test]
    fn only_subcommands_with_ipv6_runs_take_the_flag() {
        let common = |ipv6| Common {
            sender_cpu: 0,
            receiver_cpu: 1,
            pace_us: None,
            burst_copies: 256,
            broadcast: None,
            ipv6,
        };
        assert!(common(false).ipv4_only("overhead").is_ok());
        let err = common(true).ipv4_only("overhead").unwrap_err();
        assert!(err.contains("IPv4 only"), "{err}");
    }
}
