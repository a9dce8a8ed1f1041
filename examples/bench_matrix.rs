//! The sender-CPU matrix behind `docs/benchmarks.md`: kernel fan-out against
//! one `sendmmsg` and a `sendto` loop, for N in {4, ..., 256} destinations and
//! 64 B and 1200 B payloads, measured side by side and repeated.
//!
//! ```text
//! bench_matrix matrix   [--repeats 5] [--ns 4,8,...] [--sizes 64,1200] [--out-dir docs/benchmarks]
//! bench_matrix syscalls [--n 16] [--size 64]        # system calls per broadcast, with strace
//! bench_matrix profile  [--n 64] [--mode kernel]    # perf record -a -g while one mode sends
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
//! Needs root (network namespaces, eBPF) and the `broadcast` example built
//! in the same profile: `scripts/bench.sh` does both.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use elec_testbed::{
    backlog_drops, backlog_note, in_namespace, json_u64, CountReport, Testbed, TestbedConfig,
};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The three ways of sending, in the `broadcast` example's names.
const MODES: [&str; 3] = ["kernel", "sendmmsg", "sendto"];
/// First receiver port; destinations use ports from here on.
const BASE_PORT: u16 = 7000;
/// Port of the sender's socket.
const SENDER_PORT: u16 = 5000;
/// Receiver namespaces and addresses per receiver (32 addresses in all).
const RECEIVERS: usize = 8;
const ADDRS_PER_RECEIVER: usize = 4;
/// Largest payload on the testbed's 1500-byte MTU.
const MAX_PAYLOAD: usize = 1500 - 28;
/// The target of the project: kernel at most this fraction of the better
/// user-space mode, for every N >= 16.
const TARGET_RATIO: f64 = 0.40;
const TARGET_MIN_N: usize = 16;

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
    /// Payload sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "64,1200")]
    sizes: Vec<usize>,
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
    /// Where results.json, results.md, sender-cpu.svg and ratio.svg go.
    #[arg(long, default_value = "docs/benchmarks")]
    out_dir: PathBuf,
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
    /// kernel, sendmmsg or sendto.
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
        Task::Matrix(args) => matrix(&args),
        Task::Syscalls(args) => syscalls(&args),
        Task::Profile(args) => profile(&args),
        Task::Compare(args) => compare(&args),
        Task::Pacing {
            count,
            pace_us,
            pace_every,
        } => {
            pacing(
                count,
                Pacing {
                    pace_us,
                    every: pace_every.max(1),
                },
            );
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench_matrix: {err}");
            ExitCode::FAILURE
        }
    }
}

// ---------------------------------------------------------------------------
// Running the broadcast example on the testbed

/// The testbed, the programs and the CPUs of one invocation.
struct Bench {
    tb: Testbed,
    broadcast: PathBuf,
    me: PathBuf,
    sender_cpu: usize,
    receiver_cpu: usize,
    pace_us: Option<u64>,
    burst_copies: usize,
}

impl Bench {
    fn new(common: &Common) -> Result<Bench, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root: network namespaces and the eBPF program need \
                 CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF"
                .into());
        }
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        for (what, cpu) in [
            ("--sender-cpu", common.sender_cpu),
            ("--receiver-cpu", common.receiver_cpu),
        ] {
            if cpu >= cpus {
                return Err(format!("{what} {cpu}: this machine has {cpus} CPUs"));
            }
        }
        if common.sender_cpu == common.receiver_cpu {
            return Err(
                "--sender-cpu and --receiver-cpu must differ: the point is to keep \
                        receive-side work off the sender's CPU"
                    .into(),
            );
        }
        let me = std::env::current_exe().map_err(|e| format!("locating myself: {e}"))?;
        let broadcast = match &common.broadcast {
            Some(path) => path.clone(),
            None => me.with_file_name("broadcast"),
        };
        if !broadcast.exists() {
            return Err(format!(
                "{} does not exist: build it with `cargo build --release --examples` \
                 (or pass --broadcast)",
                broadcast.display()
            ));
        }
        let tb = Testbed::new(TestbedConfig {
            receivers: RECEIVERS,
            addrs_per_receiver: ADDRS_PER_RECEIVER,
            rps_cpu: Some(common.receiver_cpu),
            ..Default::default()
        })
        .map_err(|e| format!("setting up the testbed: {e}"))?;
        Ok(Bench {
            tb,
            broadcast,
            me,
            sender_cpu: common.sender_cpu,
            receiver_cpu: common.receiver_cpu,
            pace_us: common.pace_us,
            burst_copies: common.burst_copies,
        })
    }

    /// How the broadcast example paces a run to N destinations: on average
    /// long enough per broadcast for the receivers, on their one CPU, to take
    /// in every copy, in bursts of about `burst_copies` copies.
    fn pacing(&self, n: usize, size: usize) -> Pacing {
        let pace_us = self.pace_us.unwrap_or_else(|| {
            let base = 40 + 6 * n as u64;
            if size > 512 {
                base + base / 2
            } else {
                base
            }
        });
        Pacing {
            pace_us,
            every: (self.burst_copies / n.max(1)).max(1) as u64,
        }
    }

    fn destinations(&self, n: usize) -> Vec<SocketAddrV4> {
        self.tb.destinations(n, BASE_PORT)
    }

    /// The `broadcast` example's command line for one run.
    fn broadcast_args(
        &self,
        program: &Path,
        mode: &str,
        dests: &[SocketAddrV4],
        size: usize,
        count: u64,
        pacing: Pacing,
    ) -> Vec<String> {
        let mut args = vec![
            program.display().to_string(),
            "--iface".into(),
            self.tb.sender_iface().into(),
            "--bind".into(),
            format!("{}:{SENDER_PORT}", self.tb.sender_addr()),
            "--count".into(),
            count.to_string(),
            "--size".into(),
            size.to_string(),
            "--mode".into(),
            mode.into(),
            "--pace-us".into(),
            pacing.pace_us.to_string(),
            "--pace-every".into(),
            pacing.every.to_string(),
        ];
        args.extend(dests.iter().map(|d| SocketAddr::V4(*d).to_string()));
        args
    }

    /// Runs `argv` inside the sender namespace, pinned to the sender CPU, and
    /// waits for it.
    fn run_pinned(&self, argv: &[String]) -> Result<Output, String> {
        let (program, rest) = argv.split_first().ok_or("empty command line")?;
        let mut cmd = Command::new(program);
        cmd.args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cpu = self.sender_cpu;
        // The child inherits the namespace and the CPU affinity of the helper
        // thread that spawns it.
        let child = in_namespace(self.tb.sender_ns(), || -> io::Result<Child> {
            pin_current_thread(cpu)?;
            cmd.spawn()
        })
        .and_then(|spawned| spawned)
        .map_err(|e| format!("starting {program}: {e}"))?;
        let output = ChildGuard(Some(child))
            .wait_with_output()
            .map_err(|e| format!("waiting for {program}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{program} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(output)
    }

    /// One run of the broadcast example, checked at the receivers.
    fn run(&self, mode: &str, n: usize, size: usize, count: u64) -> Result<Run, String> {
        self.run_program(&self.broadcast, mode, n, size, count)
    }

    /// One run of `program` (a build of the broadcast example).
    fn run_program(
        &self,
        program: &Path,
        mode: &str,
        n: usize,
        size: usize,
        count: u64,
    ) -> Result<Run, String> {
        let dests = self.destinations(n);
        let pacing = self.pacing(n, size);
        let counters = self
            .tb
            .counting_receivers(&dests, Some(self.receiver_cpu))
            .map_err(|e| format!("starting the receivers: {e}"))?;
        let argv = self.broadcast_args(program, mode, &dests, size, count, pacing);
        let drops_before = backlog_drops();
        let output = self.run_pinned(&argv)?;
        let line = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let expected = count * n as u64;
        counters.wait_for_total(expected, Duration::from_secs(10));
        // Room for duplicates to show up too.
        thread::sleep(Duration::from_millis(20));
        let counted = counters.stop();
        let run = Run {
            cpu_user_us: json_u64(&line, "cpu_user_us")?,
            cpu_sys_us: json_u64(&line, "cpu_sys_us")?,
            wall_us: json_u64(&line, "wall_us")?,
            copies_sent: json_u64(&line, "copies_sent")?,
            copies_failed: json_u64(&line, "copies_failed")?,
            pacing,
            pacing_cpu_us: 0,
            broadcasts: count,
        };
        check_delivery(&run, &counted, count, expected)
            .map_err(|e| format!("{e}; {}", backlog_note(&drops_before)))?;
        Ok(run)
    }

    /// CPU time of `count` pacing sleeps alone, measured like the broadcast
    /// example measures (so it can be subtracted).
    fn pacing_cpu_us(&self, count: u64, pacing: Pacing) -> Result<u64, String> {
        let argv = vec![
            self.me.display().to_string(),
            "pacing".into(),
            "--count".into(),
            count.to_string(),
            "--pace-us".into(),
            pacing.pace_us.to_string(),
            "--pace-every".into(),
            pacing.every.to_string(),
        ];
        let output = self.run_pinned(&argv)?;
        let line = String::from_utf8_lossy(&output.stdout);
        Ok(json_u64(&line, "cpu_user_us")? + json_u64(&line, "cpu_sys_us")?)
    }
}

/// Kills and reaps the child if it is still running when dropped (on a
/// panic or an error while waiting).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn wait_with_output(mut self) -> io::Result<Output> {
        match self.0.take() {
            Some(child) => child.wait_with_output(),
            None => Err(io::Error::other("child already reaped")),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Pins the calling thread to `cpu`.
fn pin_current_thread(cpu: usize) -> io::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).map_err(io::Error::from)?;
    sched_setaffinity(Pid::from_raw(0), &set).map_err(io::Error::from)
}

/// The broadcast example's pacing: `pace_us` per broadcast on average,
/// slept after every `every` broadcasts (to a deadline).
#[derive(Debug, Clone, Copy)]
struct Pacing {
    pace_us: u64,
    every: u64,
}

/// One run of one mode.
#[derive(Debug, Clone)]
struct Run {
    cpu_user_us: u64,
    cpu_sys_us: u64,
    wall_us: u64,
    copies_sent: u64,
    copies_failed: u64,
    pacing: Pacing,
    /// CPU time of the pacing sleeps alone (same count and pause).
    pacing_cpu_us: u64,
    broadcasts: u64,
}

impl Run {
    /// Sender CPU per broadcast in µs, pacing sleeps subtracted.
    fn per_broadcast_us(&self) -> f64 {
        let cpu = (self.cpu_user_us + self.cpu_sys_us) as f64 - self.pacing_cpu_us as f64;
        cpu / self.broadcasts as f64
    }

    /// Sender CPU per broadcast in µs as the broadcast example reports it.
    fn raw_per_broadcast_us(&self) -> f64 {
        (self.cpu_user_us + self.cpu_sys_us) as f64 / self.broadcasts as f64
    }
}

/// Every destination must have got exactly `count` intact copies, and the
/// sender must have sent them all.
fn check_delivery(
    run: &Run,
    counted: &CountReport,
    count: u64,
    expected: u64,
) -> Result<(), String> {
    let mut problems = Vec::new();
    if run.copies_sent != expected || run.copies_failed != 0 {
        problems.push(format!(
            "sender reports {} copies sent and {} failed, expected {expected} and 0",
            run.copies_sent, run.copies_failed
        ));
    }
    let wrong: Vec<String> = counted
        .dests
        .iter()
        .zip(&counted.counts)
        .filter(|(_, &c)| c != count)
        .map(|(d, c)| format!("{d} got {c}"))
        .collect();
    if !wrong.is_empty() {
        problems.push(format!(
            "{} of {} destinations did not get exactly {count} copies ({} received in all, \
             expected {expected}): {}{}",
            wrong.len(),
            counted.dests.len(),
            counted.total(),
            wrong[..wrong.len().min(8)].join(", "),
            if wrong.len() > 8 { ", ..." } else { "" }
        ));
    }
    if counted.total_mismatches() > 0 {
        problems.push(format!(
            "{} copies arrived corrupted (payload not the expected pattern)",
            counted.total_mismatches()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// The `pacing` subcommand: what the broadcast example's loop costs when it
/// sends nothing (same getrusage window, same sleeps to the same deadlines).
fn pacing(count: u64, pacing: Pacing) {
    let pace = Duration::from_micros(pacing.pace_us);
    let (user0, sys0) = cpu_times_us();
    let mut deadline = Instant::now();
    for seq in 0..count {
        deadline += pace;
        if (seq + 1) % pacing.every == 0 {
            thread::sleep(deadline.saturating_duration_since(Instant::now()));
        }
    }
    let (user1, sys1) = cpu_times_us();
    println!(
        "{{\"broadcasts\":{count},\"cpu_user_us\":{},\"cpu_sys_us\":{}}}",
        user1 - user0,
        sys1 - sys0
    );
}

fn cpu_times_us() -> (u64, u64) {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return (0, 0);
    };
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    (us(usage.user_time()), us(usage.system_time()))
}

// ---------------------------------------------------------------------------
// The matrix

/// A measured point: (N, size).
type Point = (usize, usize);

/// Accepted runs per point, per repeat, per mode.
#[derive(Default)]
struct Results {
    runs: BTreeMap<Point, Vec<BTreeMap<&'static str, Run>>>,
    rejected: Vec<Rejected>,
}

struct Rejected {
    repeat: usize,
    n: usize,
    size: usize,
    mode: &'static str,
    reason: String,
}

fn validate(args: &MatrixArgs) -> Result<(), String> {
    if args.repeats == 0 || args.count == 0 {
        return Err("--repeats and --count must be at least 1".into());
    }
    if args.ns.is_empty() || args.sizes.is_empty() {
        return Err("--ns and --sizes must not be empty".into());
    }
    let most = RECEIVERS * ADDRS_PER_RECEIVER * 1000;
    if let Some(n) = args.ns.iter().find(|&&n| n == 0 || n > most) {
        return Err(format!("--ns: {n} is not in 1..={most}"));
    }
    if let Some(s) = args.sizes.iter().find(|&&s| s > MAX_PAYLOAD) {
        return Err(format!(
            "--sizes: {s} B does not fit the testbed's 1500-byte MTU (at most {MAX_PAYLOAD})"
        ));
    }
    Ok(())
}

fn matrix(args: &MatrixArgs) -> Result<(), String> {
    validate(args)?;
    let bench = Bench::new(&args.common)?;
    let started = Instant::now();
    let mut results = Results::default();
    let points: Vec<Point> = args
        .ns
        .iter()
        .flat_map(|&n| args.sizes.iter().map(move |&s| (n, s)))
        .collect();
    for repeat in 0..args.repeats {
        for (p, &(n, size)) in points.iter().enumerate() {
            let pacing = bench.pacing(n, size);
            let count = args
                .count
                .max((args.min_run_ms * 1000).div_ceil(pacing.pace_us.max(1)));
            let pacing_cpu_us = bench.pacing_cpu_us(count, pacing)?;
            let mut accepted = BTreeMap::new();
            // Rotate the order so that no mode always runs first or last.
            for k in 0..MODES.len() {
                let mode = MODES[(k + repeat + p) % MODES.len()];
                let mut attempt = 0;
                loop {
                    match bench.run(mode, n, size, count) {
                        Ok(mut run) => {
                            run.pacing_cpu_us = pacing_cpu_us;
                            eprintln!(
                                "[{}/{}] N={n:<3} {size:>4} B {mode:<8} {:>8.2} µs/broadcast \
                                 (raw {:.2}, pacing {:.2})",
                                repeat + 1,
                                args.repeats,
                                run.per_broadcast_us(),
                                run.raw_per_broadcast_us(),
                                pacing_cpu_us as f64 / count as f64
                            );
                            accepted.insert(mode, run);
                            break;
                        }
                        Err(reason) => {
                            eprintln!(
                                "[{}/{}] N={n} {size} B {mode}: REJECTED: {reason}",
                                repeat + 1,
                                args.repeats
                            );
                            results.rejected.push(Rejected {
                                repeat,
                                n,
                                size,
                                mode,
                                reason,
                            });
                            attempt += 1;
                            if attempt > args.retries {
                                break;
                            }
                        }
                    }
                }
            }
            results
                .runs
                .entry((n, size))
                .or_insert_with(|| vec![BTreeMap::new(); args.repeats])[repeat] = accepted;
        }
    }
    let elapsed = started.elapsed();
    drop(bench);

    let summary = summarize(&results);
    let table = markdown_table(&summary, args);
    println!("{table}");
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("creating {}: {e}", args.out_dir.display()))?;
    let write = |name: &str, text: &str| -> Result<(), String> {
        let path = args.out_dir.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        eprintln!("wrote {}", path.display());
        Ok(())
    };
    write(
        "results.json",
        &results_json(&results, &summary, args, elapsed),
    )?;
    write("results.md", &table)?;
    write("sender-cpu.svg", &plot_cpu(&summary, args))?;
    write("ratio.svg", &plot_ratio(&summary, args))?;
    if !results.rejected.is_empty() {
        eprintln!(
            "{} run(s) were rejected for loss or corruption (listed in results.json); \
             they are not in the figures",
            results.rejected.len()
        );
    }
    Ok(())
}

/// Kernel mode of this build against kernel mode of `--baseline`, and
/// sendmmsg of this build for scale: per point, the sender CPU per
/// broadcast of each and the ratio this/baseline of each repeat.
fn compare(args: &CompareArgs) -> Result<(), String> {
    if !args.baseline.exists() {
        return Err(format!("{} does not exist", args.baseline.display()));
    }
    let bench = Bench::new(&args.common)?;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "Sender CPU per broadcast in µs (pacing subtracted), median (min–max) of {} \
         repeats; this build and the baseline ({}) run side by side, in alternating order.\n",
        args.repeats,
        args.baseline.display()
    );
    let _ = writeln!(
        table,
        "| N | size | kernel, baseline | kernel, this build | this/baseline | sendmmsg, baseline \
         | sendmmsg, this build |"
    );
    let _ = writeln!(table, "|--:|--:|--:|--:|--:|--:|--:|");
    for &n in &args.ns {
        for &size in &args.sizes {
            let pacing = bench.pacing(n, size);
            let count = args
                .count
                .max((args.min_run_ms * 1000).div_ceil(pacing.pace_us.max(1)));
            let pacing_cpu_us = bench.pacing_cpu_us(count, pacing)?;
            let (mut before, mut after, mut ratio) = (vec![], vec![], vec![]);
            let (mut user_before, mut user) = (vec![], vec![]);
            for repeat in 0..args.repeats {
                let one = |program: &Path, mode: &str| -> Result<f64, String> {
                    let mut run = bench.run_program(program, mode, n, size, count)?;
                    run.pacing_cpu_us = pacing_cpu_us;
                    Ok(run.per_broadcast_us())
                };
                let (b, a) = if repeat % 2 == 0 {
                    let b = one(&args.baseline, "kernel")?;
                    (b, one(&bench.broadcast, "kernel")?)
                } else {
                    let a = one(&bench.broadcast, "kernel")?;
                    (one(&args.baseline, "kernel")?, a)
                };
                let ub = one(&args.baseline, "sendmmsg")?;
                let u = one(&bench.broadcast, "sendmmsg")?;
                eprintln!(
                    "[{}/{}] N={n:<3} {size:>4} B kernel: baseline {b:8.2} this {a:8.2}; \
                     sendmmsg: baseline {ub:8.2} this {u:8.2} µs/broadcast",
                    repeat + 1,
                    args.repeats
                );
                before.push(b);
                after.push(a);
                user_before.push(ub);
                user.push(u);
                ratio.push(a / b);
            }
            let _ = writeln!(
                table,
                "| {n} | {size} B | {} | {} | {} | {} | {} |",
                cell(Spread::of(&before), 2),
                cell(Spread::of(&after), 2),
                cell(Spread::of(&ratio), 3),
                cell(Spread::of(&user_before), 2),
                cell(Spread::of(&user), 2),
            );
        }
    }
    println!("{table}");
    Ok(())
}

/// Median and range of a set of values.
#[derive(Debug, Clone, Copy)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
    samples: usize,
}

impl Spread {
    fn of(values: &[f64]) -> Option<Spread> {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let mid = v.len() / 2;
        let median = if v.len() % 2 == 1 {
            v[mid]
        } else {
            (v[mid - 1] + v[mid]) / 2.0
        };
        Some(Spread {
            median,
            min: v[0],
            max: v[v.len() - 1],
            samples: v.len(),
        })
    }
}

/// What the table and the plots show for one point.
struct PointSummary {
    n: usize,
    size: usize,
    /// Sender CPU per broadcast (µs) per mode, in MODES order.
    cpu: [Option<Spread>; 3],
    kernel_over_sendto: Option<Spread>,
    kernel_over_sendmmsg: Option<Spread>,
    /// Kernel over the better (cheaper) user-space mode of the same repeat.
    kernel_over_best: Option<Spread>,
}

fn summarize(results: &Results) -> Vec<PointSummary> {
    results
        .runs
        .iter()
        .map(|(&(n, size), repeats)| {
            let per_mode = |mode: &str| -> Vec<f64> {
                repeats
                    .iter()
                    .filter_map(|r| r.get(mode).map(Run::per_broadcast_us))
                    .collect()
            };
            // Ratios only from repeats where all three modes were accepted.
            let complete: Vec<[f64; 3]> = repeats
                .iter()
                .filter_map(|r| {
                    Some([
                        r.get("kernel")?.per_broadcast_us(),
                        r.get("sendmmsg")?.per_broadcast_us(),
                        r.get("sendto")?.per_broadcast_us(),
                    ])
                })
                .collect();
            let ratio =
                |f: fn(&[f64; 3]) -> f64| Spread::of(&complete.iter().map(f).collect::<Vec<_>>());
            PointSummary {
                n,
                size,
                cpu: MODES.map(|m| Spread::of(&per_mode(m))),
                kernel_over_sendto: ratio(|c| c[0] / c[2]),
                kernel_over_sendmmsg: ratio(|c| c[0] / c[1]),
                kernel_over_best: ratio(|c| c[0] / c[1].min(c[2])),
            }
        })
        .collect()
}

fn cell(s: Option<Spread>, digits: usize) -> String {
    match s {
        Some(s) => format!("{:.d$} ({:.d$}–{:.d$})", s.median, s.min, s.max, d = digits),
        None => "—".into(),
    }
}

fn markdown_table(summary: &[PointSummary], args: &MatrixArgs) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "Sender CPU per broadcast in µs (user + system, pacing subtracted), median \
         (min–max) of {} repeats; runs of at least {} broadcasts and {} ms; ratios per \
         repeat, modes run side by side.\n",
        args.repeats, args.count, args.min_run_ms
    );
    let _ = writeln!(
        t,
        "| N | size | kernel µs | sendmmsg µs | sendto µs | kernel/sendto | kernel/sendmmsg \
         | kernel/best user-space | ≤ {TARGET_RATIO:.2}? |"
    );
    let _ = writeln!(t, "|--:|--:|--:|--:|--:|--:|--:|--:|:-:|");
    for p in summary {
        let verdict = match p.kernel_over_best {
            _ if p.n < TARGET_MIN_N => "n/a",
            Some(s) if s.median <= TARGET_RATIO => "yes",
            Some(_) => "no",
            None => "—",
        };
        let _ = writeln!(
            t,
            "| {} | {} B | {} | {} | {} | {} | {} | {} | {verdict} |",
            p.n,
            p.size,
            cell(p.cpu[0], 2),
            cell(p.cpu[1], 2),
            cell(p.cpu[2], 2),
            cell(p.kernel_over_sendto, 3),
            cell(p.kernel_over_sendmmsg, 3),
            cell(p.kernel_over_best, 3),
        );
    }
    t
}

// ---------------------------------------------------------------------------
// results.json (written by hand: the project has no JSON dependency)

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.4}")
    } else {
        "null".into()
    }
}

fn json_spread(s: Option<Spread>) -> String {
    match s {
        Some(s) => format!(
            "{{\"median\":{},\"min\":{},\"max\":{},\"samples\":{}}}",
            json_num(s.median),
            json_num(s.min),
            json_num(s.max),
            s.samples
        ),
        None => "null".into(),
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn machine_json() -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let commit = command_output("git", &["rev-parse", "HEAD"]).unwrap_or_default();
    // Whether what was measured differs from the commit: the library, the
    // eBPF program and the broadcast example.
    let dirty = command_output(
        "git",
        &[
            "status",
            "--porcelain",
            "--",
            "src",
            "bpf",
            "include",
            "build.rs",
            "Cargo.toml",
            "Cargo.lock",
            "examples/broadcast.rs",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "{{\"kernel\":{},\"cpu\":{},\"cpus\":{cpus},\"git_commit\":{},\"measured_code_differs_from_commit\":{dirty},\
         \"unix_time\":{unix_time}}}",
        json_str(&kernel),
        json_str(&cpu),
        json_str(&commit)
    )
}

fn results_json(
    results: &Results,
    summary: &[PointSummary],
    args: &MatrixArgs,
    elapsed: Duration,
) -> String {
    let mut j = String::new();
    let _ = writeln!(j, "{{");
    let _ = writeln!(j, "  \"machine\": {},", machine_json());
    let _ = writeln!(
        j,
        "  \"config\": {{\"repeats\":{},\"min_broadcasts_per_run\":{},\"min_run_ms\":{},\
         \"sender_cpu\":{},\
         \"receiver_cpu\":{},\"receivers\":{RECEIVERS},\"addrs_per_receiver\":{ADDRS_PER_RECEIVER},\
         \"pacing\":{},\"burst_copies\":{},\"elapsed_s\":{:.1},\
         \"metric\":\"sender CPU per broadcast in µs: getrusage(RUSAGE_SELF) user + system of \
         the broadcast example over its send loop, minus the CPU of the same pacing sleeps alone\"}},",
        args.repeats,
        args.count,
        args.min_run_ms,
        args.common.sender_cpu,
        args.common.receiver_cpu,
        match args.common.pace_us {
            Some(p) => format!("\"{p} µs\""),
            None => "\"40 + 6 µs per destination, +50% for payloads over 512 B\"".into(),
        },
        args.common.burst_copies,
        elapsed.as_secs_f64()
    );
    let _ = writeln!(j, "  \"summary\": [");
    for (i, p) in summary.iter().enumerate() {
        let _ = writeln!(
            j,
            "    {{\"n\":{},\"size\":{},\"kernel_us\":{},\"sendmmsg_us\":{},\"sendto_us\":{},\
             \"kernel_over_sendto\":{},\"kernel_over_sendmmsg\":{},\"kernel_over_best\":{}}}{}",
            p.n,
            p.size,
            json_spread(p.cpu[0]),
            json_spread(p.cpu[1]),
            json_spread(p.cpu[2]),
            json_spread(p.kernel_over_sendto),
            json_spread(p.kernel_over_sendmmsg),
            json_spread(p.kernel_over_best),
            if i + 1 < summary.len() { "," } else { "" }
        );
    }
    let _ = writeln!(j, "  ],");
    let _ = writeln!(j, "  \"runs\": [");
    let mut rows = Vec::new();
    for (&(n, size), repeats) in &results.runs {
        for (repeat, modes) in repeats.iter().enumerate() {
            for (mode, r) in modes {
                rows.push(format!(
                    "    {{\"repeat\":{repeat},\"n\":{n},\"size\":{size},\"mode\":\"{mode}\",\
                     \"broadcasts\":{},\"pace_us\":{},\"pace_every\":{},\"cpu_user_us\":{},\
                     \"cpu_sys_us\":{},\
                     \"pacing_cpu_us\":{},\"wall_us\":{},\"copies_sent\":{},\
                     \"per_broadcast_us\":{},\"raw_per_broadcast_us\":{}}}",
                    r.broadcasts,
                    r.pacing.pace_us,
                    r.pacing.every,
                    r.cpu_user_us,
                    r.cpu_sys_us,
                    r.pacing_cpu_us,
                    r.wall_us,
                    r.copies_sent,
                    json_num(r.per_broadcast_us()),
                    json_num(r.raw_per_broadcast_us())
                ));
            }
        }
    }
    let _ = writeln!(j, "{}", rows.join(",\n"));
    let _ = writeln!(j, "  ],");
    let _ = writeln!(j, "  \"rejected\": [");
    let rows: Vec<String> = results
        .rejected
        .iter()
        .map(|r| {
            format!(
                "    {{\"repeat\":{},\"n\":{},\"size\":{},\"mode\":\"{}\",\"reason\":{}}}",
                r.repeat,
                r.n,
                r.size,
                r.mode,
                json_str(&r.reason)
            )
        })
        .collect();
    if !rows.is_empty() {
        let _ = writeln!(j, "{}", rows.join(",\n"));
    }
    let _ = writeln!(j, "  ]");
    let _ = writeln!(j, "}}");
    j
}

// ---------------------------------------------------------------------------
// Plots, as hand-written SVG

const COLORS: [&str; 3] = ["#d62728", "#1f77b4", "#2ca02c"];
const PANEL_W: f64 = 460.0;
const PANEL_H: f64 = 340.0;
const MARGIN_L: f64 = 70.0;
const MARGIN_R: f64 = 20.0;
const MARGIN_T: f64 = 40.0;
const MARGIN_B: f64 = 50.0;

/// A panel's plotting area and its axes (x: log2 of N; y: log10 or linear).
struct Frame {
    left: f64,
    top: f64,
    width: f64,
    height: f64,
    x_min: f64,
    x_max: f64,
    y_min: f64,
    y_max: f64,
    log_y: bool,
}

impl Frame {
    fn x(&self, n: f64) -> f64 {
        let span = (self.x_max.log2() - self.x_min.log2()).max(1e-9);
        self.left + (n.log2() - self.x_min.log2()) / span * self.width
    }

    fn y(&self, v: f64) -> f64 {
        let (lo, hi, v) = if self.log_y {
            (self.y_min.log10(), self.y_max.log10(), v.max(1e-12).log10())
        } else {
            (self.y_min, self.y_max, v)
        };
        self.top + self.height - (v - lo) / (hi - lo).max(1e-12) * self.height
    }

    fn axes(&self, svg: &mut String, ns: &[usize], y_ticks: &[f64], title: &str, y_label: &str) {
        let (l, t, w, h) = (self.left, self.top, self.width, self.height);
        let _ = writeln!(
            svg,
            r##"<rect x="{l}" y="{t}" width="{w}" height="{h}" fill="none" stroke="#444"/>"##
        );
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{title}</text>"##,
            l + w / 2.0,
            t - 14.0
        );
        for &n in ns {
            let x = self.x(n as f64);
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{}" stroke="#ddd"/><text x="{x:.1}" y="{}" text-anchor="middle">{n}</text>"##,
                t + h,
                t + h + 16.0
            );
        }
        for &v in y_ticks {
            let y = self.y(v);
            let label = if v >= 10.0 || v == v.trunc() {
                format!("{v:.0}")
            } else {
                format!("{v}")
            };
            let _ = writeln!(
                svg,
                r##"<line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#ddd"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
                l + w,
                l - 6.0,
                y + 4.0
            );
        }
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle">destinations N (log scale)</text>"##,
            l + w / 2.0,
            t + h + 36.0
        );
        let (yx, yy) = (l - 50.0, t + h / 2.0);
        let _ = writeln!(
            svg,
            r##"<text x="{yx}" y="{yy}" text-anchor="middle" transform="rotate(-90 {yx} {yy})">{y_label}</text>"##
        );
    }

    /// A line through the medians with min-max whiskers, shifted right by
    /// `dx` pixels (so that whiskers of series at the same N stay apart).
    fn series(
        &self,
        svg: &mut String,
        points: &[(usize, Spread)],
        color: &str,
        dashed: bool,
        dx: f64,
    ) {
        if points.is_empty() {
            return;
        }
        let path: Vec<String> = points
            .iter()
            .map(|(n, s)| format!("{:.1},{:.1}", self.x(*n as f64) + dx, self.y(s.median)))
            .collect();
        let dash = if dashed {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r##"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"##,
            path.join(" ")
        );
        for (n, s) in points {
            let x = self.x(*n as f64) + dx;
            let _ = writeln!(
                svg,
                r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="{color}"/><circle cx="{x:.1}" cy="{:.1}" r="3" fill="{color}"/>"##,
                self.y(s.min),
                self.y(s.max),
                self.y(s.median)
            );
        }
    }
}

fn svg_open(width: f64, height: f64) -> String {
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
"##
    )
}

fn legend(svg: &mut String, x: f64, y: f64, entries: &[(&str, &str, bool)]) {
    for (i, (label, color, dashed)) in entries.iter().enumerate() {
        let yy = y + 18.0 * i as f64;
        let dash = if *dashed {
            r##" stroke-dasharray="6 4""##
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{yy}" x2="{}" y2="{yy}" stroke="{color}" stroke-width="2"{dash}/><text x="{}" y="{}">{label}</text>"##,
            x + 26.0,
            x + 32.0,
            yy + 4.0
        );
    }
}

/// Ticks 1, 2, 5 x 10^k inside [lo, hi].
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut ticks = Vec::new();
    let mut decade = 10f64.powf(lo.log10().floor());
    while decade <= hi {
        for m in [1.0, 2.0, 5.0] {
            let v = decade * m;
            if v >= lo * 0.999 && v <= hi * 1.001 {
                ticks.push(v);
            }
        }
        decade *= 10.0;
    }
    ticks
}

fn x_range(args: &MatrixArgs) -> (f64, f64) {
    let lo = args.ns.iter().copied().min().unwrap_or(1) as f64;
    let hi = args.ns.iter().copied().max().unwrap_or(2) as f64;
    if hi > lo {
        (lo / 1.25, hi * 1.25)
    } else {
        (lo / 2.0, lo * 2.0)
    }
}

/// sender-cpu.svg: CPU per broadcast against N, one line per mode, one panel
/// per payload size.
fn plot_cpu(summary: &[PointSummary], args: &MatrixArgs) -> String {
    let all: Vec<f64> = summary
        .iter()
        .flat_map(|p| p.cpu.iter().flatten().flat_map(|s| [s.min, s.max]))
        .filter(|v| *v > 0.0)
        .collect();
    let lo = all.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = all.iter().copied().fold(0.0, f64::max);
    let (y_min, y_max) = if lo.is_finite() && hi > 0.0 {
        (
            10f64.powf(lo.log10().floor()),
            10f64.powf(hi.log10().ceil()),
        )
    } else {
        (1.0, 10.0)
    };
    let (x_min, x_max) = x_range(args);
    let panels = args.sizes.len() as f64;
    let width = panels * (PANEL_W + MARGIN_L + MARGIN_R);
    let height = PANEL_H + MARGIN_T + MARGIN_B + 40.0;
    let mut svg = svg_open(width, height);
    for (k, &size) in args.sizes.iter().enumerate() {
        let frame = Frame {
            left: k as f64 * (PANEL_W + MARGIN_L + MARGIN_R) + MARGIN_L,
            top: MARGIN_T,
            width: PANEL_W,
            height: PANEL_H,
            x_min,
            x_max,
            y_min,
            y_max,
            log_y: true,
        };
        frame.axes(
            &mut svg,
            &args.ns,
            &log_ticks(y_min, y_max),
            &format!("{size} B payload"),
            "sender CPU per broadcast (µs, log scale)",
        );
        for (m, color) in COLORS.iter().enumerate() {
            let points: Vec<(usize, Spread)> = summary
                .iter()
                .filter(|p| p.size == size)
                .filter_map(|p| Some((p.n, p.cpu[m]?)))
                .collect();
            let dx = (m as f64 - 1.0) * 3.0;
            frame.series(&mut svg, &points, color, false, dx);
        }
        if k == 0 {
            legend(
                &mut svg,
                frame.left + 12.0,
                frame.top + 16.0,
                &[
                    ("kernel fan-out", COLORS[0], false),
                    ("sendmmsg", COLORS[1], false),
                    ("sendto loop", COLORS[2], false),
                ],
            );
        }
    }
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">median of {} repeats, bars: min–max; user + system CPU of the sending process, receive side on another CPU, no loss</text>"##,
        width / 2.0,
        height - 10.0,
        args.repeats
    );
    svg.push_str("</svg>\n");
    svg
}

/// ratio.svg: kernel over each user-space mode against N, solid for the
/// first payload size, dashed for the second, and the 0.40 target.
fn plot_ratio(summary: &[PointSummary], args: &MatrixArgs) -> String {
    let hi = summary
        .iter()
        .flat_map(|p| [p.kernel_over_sendto, p.kernel_over_sendmmsg])
        .flatten()
        .map(|s| s.max)
        .fold(1.0, f64::max);
    let y_max = (hi * 10.0).ceil() / 10.0;
    let (x_min, x_max) = x_range(args);
    let width = PANEL_W + MARGIN_L + MARGIN_R + 200.0;
    let height = PANEL_H + MARGIN_T + MARGIN_B + 20.0;
    let frame = Frame {
        left: MARGIN_L,
        top: MARGIN_T,
        width: PANEL_W,
        height: PANEL_H,
        x_min,
        x_max,
        y_min: 0.0,
        y_max,
        log_y: false,
    };
    let mut svg = svg_open(width, height);
    let ticks: Vec<f64> = (0..=(y_max * 10.0).round() as usize)
        .map(|i| i as f64 / 10.0)
        .collect();
    frame.axes(
        &mut svg,
        &args.ns,
        &ticks,
        "kernel fan-out CPU relative to user space",
        "ratio of sender CPU per broadcast",
    );
    let y = frame.y(TARGET_RATIO);
    let _ = writeln!(
        svg,
        r##"<line x1="{}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#000" stroke-dasharray="2 3"/><text x="{}" y="{:.1}" text-anchor="end">target {TARGET_RATIO:.2}</text>"##,
        frame.x(TARGET_MIN_N as f64),
        frame.left + frame.width,
        frame.left + frame.width - 4.0,
        y - 4.0
    );
    let mut entries = Vec::new();
    let labels: Vec<String> = args
        .sizes
        .iter()
        .flat_map(|s| {
            [
                format!("kernel/sendto, {s} B"),
                format!("kernel/sendmmsg, {s} B"),
            ]
        })
        .collect();
    for (k, &size) in args.sizes.iter().enumerate() {
        let dashed = k % 2 == 1;
        let of = |f: fn(&PointSummary) -> Option<Spread>| -> Vec<(usize, Spread)> {
            summary
                .iter()
                .filter(|p| p.size == size)
                .filter_map(|p| Some((p.n, f(p)?)))
                .collect()
        };
        let dx = (k as f64 - (args.sizes.len() as f64 - 1.0) / 2.0) * 6.0;
        frame.series(
            &mut svg,
            &of(|p| p.kernel_over_sendto),
            COLORS[2],
            dashed,
            dx,
        );
        frame.series(
            &mut svg,
            &of(|p| p.kernel_over_sendmmsg),
            COLORS[1],
            dashed,
            dx,
        );
        entries.push((labels[2 * k].as_str(), COLORS[2], dashed));
        entries.push((labels[2 * k + 1].as_str(), COLORS[1], dashed));
    }
    legend(
        &mut svg,
        frame.left + frame.width + 16.0,
        frame.top + 16.0,
        &entries,
    );
    let _ = writeln!(
        svg,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">per-repeat ratios of runs made back to back; median of {}, bars: min–max</text>"##,
        width / 2.0,
        height - 8.0,
        args.repeats
    );
    svg.push_str("</svg>\n");
    svg
}

// ---------------------------------------------------------------------------
// System calls per broadcast

/// Parses `strace -c` output: calls per system call.
fn parse_strace_summary(text: &str) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if tokens.len() < 5 || tokens[0].starts_with('-') || tokens[0] == "%" {
            continue;
        }
        let (Some(name), Ok(count)) = (tokens.last(), tokens[3].parse::<u64>()) else {
            continue;
        };
        if *name != "total" {
            calls.insert(name.to_string(), count);
        }
    }
    calls
}

fn syscalls(args: &SyscallArgs) -> Result<(), String> {
    let [k1, k2] = args.counts[..] else {
        return Err("--counts takes exactly two broadcast counts, e.g. 1000,3000".into());
    };
    if k2 <= k1 || k1 == 0 {
        return Err("--counts: the second count must be larger than the first (> 0)".into());
    }
    if args.n == 0 || args.size > MAX_PAYLOAD {
        return Err(format!(
            "--n must be at least 1 and --size at most {MAX_PAYLOAD}"
        ));
    }
    if command_output("strace", &["-V"]).is_none() {
        return Err("strace is not installed (apt-get install -y strace)".into());
    }
    let bench = Bench::new(&args.common)?;
    let dests = bench.destinations(args.n);
    let pacing = bench.pacing(args.n, args.size);
    println!(
        "System calls per broadcast (strace -f -c; difference between {k2} and {k1} broadcasts, \
         divided by {}), N={} size={} B, pace {} µs per broadcast, sleeping every {}:\n",
        k2 - k1,
        args.n,
        args.size,
        pacing.pace_us,
        pacing.every
    );
    println!("| mode | system calls per broadcast | of which |");
    println!("|---|--:|---|");
    for mode in MODES {
        let mut counted = Vec::new();
        for k in [k1, k2] {
            let trace = std::env::temp_dir().join(format!(
                "elec-bench-strace-{}-{mode}-{k}.txt",
                std::process::id()
            ));
            let mut argv = vec![
                "strace".to_string(),
                "-f".into(),
                "-c".into(),
                "-o".into(),
                trace.display().to_string(),
            ];
            argv.extend(bench.broadcast_args(&bench.broadcast, mode, &dests, args.size, k, pacing));
            let counters = bench
                .tb
                .counting_receivers(&dests, Some(bench.receiver_cpu))
                .map_err(|e| format!("starting the receivers: {e}"))?;
            let output = bench.run_pinned(&argv)?;
            let line = String::from_utf8_lossy(&output.stdout).trim().to_string();
            let expected = k * args.n as u64;
            counters.wait_for_total(expected, Duration::from_secs(10));
            let counts = counters.stop();
            let run = Run {
                cpu_user_us: 0,
                cpu_sys_us: 0,
                wall_us: 0,
                copies_sent: json_u64(&line, "copies_sent")?,
                copies_failed: json_u64(&line, "copies_failed")?,
                pacing,
                pacing_cpu_us: 0,
                broadcasts: k,
            };
            check_delivery(&run, &counts, k, expected)
                .map_err(|e| format!("{mode}, {k} broadcasts under strace: {e}"))?;
            let text = std::fs::read_to_string(&trace)
                .map_err(|e| format!("reading {}: {e}", trace.display()))?;
            let _ = std::fs::remove_file(&trace);
            counted.push(parse_strace_summary(&text));
        }
        let mut per: Vec<(String, f64)> = counted[1]
            .iter()
            .map(|(name, &c2)| {
                let c1 = counted[0].get(name).copied().unwrap_or(0);
                (name.clone(), (c2 as f64 - c1 as f64) / (k2 - k1) as f64)
            })
            .filter(|(_, per)| per.abs() >= 0.0005)
            .collect();
        per.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = per.iter().map(|(_, p)| p).sum();
        let detail: Vec<String> = per
            .iter()
            .map(|(name, p)| format!("{name} {p:.3}"))
            .collect();
        println!("| {mode} | {total:.3} | {} |", detail.join(", "));
    }
    println!(
        "\n(clock_nanosleep/nanosleep is the pacing pause between broadcasts, not part of a \
         broadcast.)"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Profiling

fn profile(args: &ProfileArgs) -> Result<(), String> {
    if !MODES.contains(&args.mode.as_str()) {
        return Err(format!(
            "--mode {}: one of kernel, sendmmsg, sendto",
            args.mode
        ));
    }
    if args.n == 0 || args.size > MAX_PAYLOAD || args.count == 0 {
        return Err(format!(
            "--n and --count must be at least 1 and --size at most {MAX_PAYLOAD}"
        ));
    }
    if command_output("perf", &["--version"]).is_none() {
        return Err("perf is not installed (linux-perf)".into());
    }
    let bench = Bench::new(&args.common)?;
    let dests = bench.destinations(args.n);
    let pacing = bench.pacing(args.n, args.size);
    let counters = bench
        .tb
        .counting_receivers(&dests, Some(bench.receiver_cpu))
        .map_err(|e| format!("starting the receivers: {e}"))?;
    let mut argv = vec![
        "perf".to_string(),
        "record".into(),
        "-a".into(),
        "-g".into(),
        "-e".into(),
        args.event.clone(),
        "-o".into(),
        args.output.display().to_string(),
        "--".into(),
    ];
    argv.extend(bench.broadcast_args(
        &bench.broadcast,
        &args.mode,
        &dests,
        args.size,
        args.count,
        pacing,
    ));
    let output = bench.run_pinned(&argv)?;
    let line = String::from_utf8_lossy(&output.stdout).trim().to_string();
    let expected = args.count * args.n as u64;
    counters.wait_for_total(expected, Duration::from_secs(10));
    let counts = counters.stop();
    let run = Run {
        cpu_user_us: json_u64(&line, "cpu_user_us")?,
        cpu_sys_us: json_u64(&line, "cpu_sys_us")?,
        wall_us: json_u64(&line, "wall_us")?,
        copies_sent: json_u64(&line, "copies_sent")?,
        copies_failed: json_u64(&line, "copies_failed")?,
        pacing,
        pacing_cpu_us: 0,
        broadcasts: args.count,
    };
    check_delivery(&run, &counts, args.count, expected)?;
    println!("{line}");
    println!(
        "recorded {} (N={}, {} B, {} broadcasts, {} mode; sender on CPU {}, receivers on CPU {}).",
        args.output.display(),
        args.n,
        args.size,
        args.count,
        args.mode,
        bench.sender_cpu,
        bench.receiver_cpu
    );
    drop(bench);

    // perf report's --comm filter merges entries of other processes with the
    // same symbol, so the sender's samples are read from perf script.
    let script = Command::new("perf")
        .args([
            "script",
            "--comm",
            "broadcast",
            "-F",
            "comm,cpu,ip,sym",
            "-i",
        ])
        .arg(&args.output)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("running perf script: {e}"))?;
    let profile = SenderProfile::parse(
        &String::from_utf8_lossy(&script.stdout),
        args.common.sender_cpu,
    );
    println!(
        "\nSender side: {} samples of the broadcast process on CPU {} (its system calls \
         and the softirqs run in its context).",
        profile.samples, args.common.sender_cpu
    );
    for (title, rows, limit) in [
        ("self time", &profile.self_time, 30),
        (
            "inclusive (the function and what it calls)",
            &profile.inclusive,
            45,
        ),
    ] {
        println!("\n{title}:");
        for (symbol, count) in rows.iter().take(limit) {
            println!(
                "  {:6.2}%  {symbol}",
                100.0 * *count as f64 / profile.samples.max(1) as f64
            );
        }
    }
    println!(
        "\nReceive side: perf report -i {} --no-children --cpu {} --sort comm,sym --stdio -g none",
        args.output.display(),
        args.common.receiver_cpu
    );
    Ok(())
}

/// Where one process's samples on one CPU went, from `perf script` output
/// with call chains (`-F comm,cpu,ip,sym`).
struct SenderProfile {
    samples: usize,
    /// Leaf function of each sample, most frequent first.
    self_time: Vec<(String, usize)>,
    /// Every function on each sample's stack (once per sample).
    inclusive: Vec<(String, usize)>,
}

impl SenderProfile {
    fn parse(script: &str, cpu: usize) -> SenderProfile {
        let cpu_tag = format!("[{cpu:03}]");
        let mut self_time: BTreeMap<String, usize> = BTreeMap::new();
        let mut inclusive: BTreeMap<String, usize> = BTreeMap::new();
        let mut samples = 0;
        for block in script.split("\n\n") {
            let mut lines = block.lines().filter(|l| !l.trim().is_empty());
            let Some(header) = lines.next() else { continue };
            if !header.split_whitespace().any(|t| t == cpu_tag) {
                continue;
            }
            let frames: Vec<&str> = lines
                .filter_map(|l| l.trim().split_once(char::is_whitespace))
                .map(|(_, symbol)| symbol.trim())
                .collect();
            let Some(leaf) = frames.first() else { continue };
            samples += 1;
            *self_time.entry(leaf.to_string()).or_default() += 1;
            let mut seen: Vec<&str> = Vec::new();
            for f in &frames {
                if !seen.contains(f) {
                    seen.push(f);
                    *inclusive.entry(f.to_string()).or_default() += 1;
                }
            }
        }
        let sorted = |m: BTreeMap<String, usize>| {
            let mut v: Vec<(String, usize)> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        };
        SenderProfile {
            samples,
            self_time: sorted(self_time),
            inclusive: sorted(inclusive),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_takes_median_and_range() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.samples), (2.0, 1.0, 3.0, 3));
        let s = Spread::of(&[4.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(s.median, 2.5);
        assert!(Spread::of(&[]).is_none());
        assert!(Spread::of(&[f64::NAN]).is_none());
    }

    #[test]
    fn parses_strace_summaries() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.006000           3      2000           sendto
 30.00    0.003000           1      2000           clock_nanosleep
  5.00    0.000500           5       100        12 bpf
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           2      4100        12 total
";
        let calls = parse_strace_summary(text);
        assert_eq!(calls.get("sendto"), Some(&2000));
        assert_eq!(calls.get("clock_nanosleep"), Some(&2000));
        assert_eq!(calls.get("bpf"), Some(&100));
        assert_eq!(calls.len(), 3);
    }

    #[test]
    fn profiles_count_leaves_and_whole_stacks_of_one_cpu() {
        let script = "\
broadcast [000] \n\
\tffffffff81 skb_clone\n\
\tffffffff82 bpf_clone_redirect\n\
\tffffffff83 __dev_queue_xmit\n\
\n\
broadcast [000] \n\
\tffffffff84 veth_xmit\n\
\tffffffff82 bpf_clone_redirect\n\
\n\
broadcast [001] \n\
\tffffffff85 udp_rcv\n\
";
        let p = SenderProfile::parse(script, 0);
        assert_eq!(p.samples, 2);
        assert_eq!(p.inclusive[0], ("bpf_clone_redirect".to_string(), 2));
        assert_eq!(p.self_time.len(), 2);
        assert!(p.self_time.contains(&("skb_clone".to_string(), 1)));
        assert!(!p.inclusive.iter().any(|(s, _)| s == "udp_rcv"));
    }

    #[test]
    fn log_ticks_cover_the_range() {
        assert_eq!(
            log_ticks(1.0, 100.0),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0]
        );
        assert_eq!(log_ticks(10.0, 10.0), vec![10.0]);
    }

    #[test]
    fn delivery_check_rejects_loss_and_accepts_exact_counts() {
        let dests: Vec<SocketAddrV4> = vec![
            "10.77.1.1:7000".parse().unwrap(),
            "10.77.2.1:7000".parse().unwrap(),
        ];
        let run = Run {
            cpu_user_us: 0,
            cpu_sys_us: 0,
            wall_us: 0,
            copies_sent: 10,
            copies_failed: 0,
            pacing: Pacing {
                pace_us: 0,
                every: 1,
            },
            pacing_cpu_us: 0,
            broadcasts: 5,
        };
        let report = |counts: Vec<u64>, mismatches: Vec<u64>| CountReport {
            dests: dests.clone(),
            counts,
            mismatches,
        };
        assert!(check_delivery(&run, &report(vec![5, 5], vec![0, 0]), 5, 10).is_ok());
        let lost = check_delivery(&run, &report(vec![5, 4], vec![0, 0]), 5, 10).unwrap_err();
        assert!(lost.contains("10.77.2.1:7000 got 4"), "{lost}");
        let dup = check_delivery(&run, &report(vec![6, 5], vec![0, 0]), 5, 10).unwrap_err();
        assert!(dup.contains("10.77.1.1:7000 got 6"), "{dup}");
        assert!(check_delivery(&run, &report(vec![5, 5], vec![0, 1]), 5, 10).is_err());
        let failed = Run {
            copies_failed: 1,
            ..run
        };
        assert!(check_delivery(&failed, &report(vec![5, 5], vec![0, 0]), 5, 10).is_err());
    }
}
