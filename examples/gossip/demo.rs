//! The local cluster demo: N node processes (64 by default), each in its
//! own network namespace behind a bridge (elec-testbed), measured over
//! repeated trials for every broadcast mode (kernel fan-out, user-space
//! `sendmmsg`) and fan-out asked for: convergence, update and
//! failure-detection times, per-node CPU and packets, with medians and
//! ranges over the trials.
//!
//! Each trial starts a fresh cluster in the same namespaces (one testbed
//! for the whole run), measures, checks that nothing was lost and that the
//! kernel's neighbour table did not overflow, and kills the cluster. The
//! trials of the different settings are interleaved (trial 1 of every
//! setting, then trial 2, ...) so that a change in the machine's load
//! falls on all of them alike.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use clap::builder::TypedValueParser as _;
use clap::{Args, ValueEnum};
use elec_testbed::{spawn_in_namespace, NsThread, Testbed, TestbedConfig};
use serde::Serialize;

use crate::control::{self, EventJson, EventsJson, MembersJson, StatsJson, TrafficJson};
use crate::shell::monotonic_ns;
use crate::{BroadcastMode, RecvArg};

const NODE_PORT: u16 = 7946;
const CONTROL_PORT: u16 = 8946;
/// How often the demo asks the nodes that are not there yet for their
/// new events (the times come from the events' own timestamps).
const EVENT_POLL: Duration = Duration::from_millis(100);
/// How often it asks otherwise (start-up, queues drained).
const POLL: Duration = Duration::from_millis(20);
/// The key whose spread is timed.
const UPDATE_KEY: &str = "demo-update";
/// The key the busy window writes, and the size of its values.
const LOAD_KEY: &str = "load";
const LOAD_VALUE: usize = 64;
/// Where the kernel counts neighbour-table overflows (one line per CPU).
const ARP_STATS: &str = "/proc/net/stat/arp_cache";
/// The neighbour-table thresholds (the table is shared by every namespace).
const THRESHOLDS: [&str; 3] = [
    "/proc/sys/net/ipv4/neigh/default/gc_thresh1",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh2",
    "/proc/sys/net/ipv4/neigh/default/gc_thresh3",
];

/// Options of `gossip demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Nodes, each in its own network namespace (3 to 250).
    #[arg(long, default_value_t = 64,
          value_parser = clap::value_parser!(u16).range(3..=250).map(usize::from))]
    nodes: usize,
    /// Trials of every mode and fan-out: the tables give the median and the
    /// range over them.
    #[arg(long, default_value_t = 5,
          value_parser = clap::value_parser!(u16).range(1..=1000).map(usize::from))]
    trials: usize,
    /// Fan-outs to compare (the nodes' --fan-out: members each gossip round
    /// goes to, in one broadcast).
    #[arg(long, value_delimiter = ',', default_value = "3,8",
          value_parser = clap::value_parser!(u16).range(1..=64).map(usize::from))]
    fan_outs: Vec<usize>,
    /// Broadcast modes to compare.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kernel,user")]
    modes: Vec<BroadcastMode>,
    /// Protocol period of the nodes (one probe and one anti-entropy
    /// exchange per period, gossip rounds every fifth of it). Times are
    /// given in milliseconds and in periods.
    #[arg(long, default_value = "200ms", value_parser = crate::parse_period)]
    period: Duration,
    /// Length of each of the two measurement windows (idle, then busy), in
    /// periods: 25 (5 s at 200 ms) keeps a default run near 5 minutes on
    /// two CPUs, with CPU figures that vary by a few % between trials.
    #[arg(long, default_value_t = 25,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    window: u32,
    /// Writes per period in the busy window, cluster-wide: node after node
    /// sets its key `load` to a new 64-byte value.
    #[arg(long, default_value_t = 1,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    load: u32,
    /// Size of the value whose spread is timed (one node's key
    /// `demo-update`). It must fit one datagram beside its headers (the
    /// nodes' `max_value` in GET /stats: about 1300 bytes with the default
    /// 1400-byte packets).
    #[arg(long, default_value_t = 1024)]
    value_size: usize,
    /// How the nodes find each other's MAC addresses. All namespaces share
    /// the kernel's one neighbour table, which holds at most
    /// net.ipv4.neigh.default.gc_thresh3 entries (1024 by default) that ARP
    /// made; N nodes that all talk need N x (N - 1).
    #[arg(long, value_enum, default_value_t = Neighbours::Static)]
    neighbours: Neighbours,
    /// Also run the first mode at the largest fan-out with plain receives
    /// (one recvfrom per datagram) and compare them with the batched ones
    /// (recvmmsg).
    #[arg(long)]
    recv_compare: bool,
    /// Write every sample (per trial; per node for the windows) to this
    /// file, as JSON (rewritten after every trial).
    #[arg(long)]
    json: Option<PathBuf>,
    /// Longest wait for convergence, an update or a failure detection
    /// before the demo gives up.
    #[arg(long, default_value = "30s", value_parser = crate::parse_duration)]
    timeout: Duration,
}

/// `--neighbours`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Neighbours {
    /// A permanent neighbour entry in every node's namespace for every
    /// other node: no ARP at all, and permanent entries do not count
    /// against gc_thresh3.
    Static,
    /// ARP, with net.ipv4.neigh.default.gc_thresh1/2/3 raised for the run
    /// where they are too low for N x (N - 1) entries, and restored at the
    /// end (also on an error or Ctrl-C).
    Arp,
    /// ARP under the thresholds as they are: past gc_thresh3 the kernel
    /// drops what the nodes send ("neighbor table overflow"), and the demo
    /// stops with an error saying so.
    ArpUnraised,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// ---- clean-up on Ctrl-C ----------------------------------------------------

/// Pids of the node processes alive, for the Ctrl-C handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());
/// Sysctls to write back at the end (path, old value), also from the
/// Ctrl-C handler.
static RESTORE: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

fn locked<T>(mutex: &'static Mutex<T>) -> MutexGuard<'static, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Writes back the sysctls the demo changed (once).
fn restore_sysctls() {
    for (path, old) in locked(&RESTORE).drain(..) {
        if let Err(err) = std::fs::write(path, &old) {
            eprintln!("gossip demo: could not restore {path} to {old}: {err}");
        }
    }
}

/// Restores the sysctls when dropped (the end, an error, a panic).
struct SysctlGuard;

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        restore_sysctls();
    }
}

// ---- the run ---------------------------------------------------------------

/// One setting measured: mode, fan-out, receive path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Setting {
    mode: BroadcastMode,
    fan_out: usize,
    recv: RecvArg,
}

impl Setting {
    fn label(&self) -> String {
        let recv = match self.recv {
            RecvArg::Batched => "",
            RecvArg::Plain => ", plain recv",
        };
        format!("{} F={}{recv}", mode_name(self.mode), self.fan_out)
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> Result<(), BoxError> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err(
            "the demo needs root: network namespaces (CAP_SYS_ADMIN, CAP_NET_ADMIN) \
                    and the eBPF program (CAP_BPF)"
                .into(),
        );
    }
    if args.fan_outs.is_empty() || args.modes.is_empty() {
        return Err("--fan-outs and --modes need at least one value each".into());
    }
    // Ours, installed before any testbed exists, so the testbed leaves the
    // signals to it: kill the nodes, delete the namespaces, restore the
    // sysctls, exit 130.
    ctrlc::set_handler(|| {
        for pid in locked(&CHILDREN).drain(..) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // a child we spawned and have not reaped (so not reused).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        elec_testbed::cleanup_all();
        restore_sysctls();
        eprintln!("\ngossip demo: interrupted; nodes killed, namespaces deleted");
        std::process::exit(130);
    })?;

    let settings = settings(&args);
    let started = Instant::now();
    let links_before = root_links();
    let mut report = Report::new(&args);
    println!(
        "gossip demo: {} nodes, each in its own network namespace behind a bridge; \
         {} trials of each of {} settings (modes {}, fan-outs {:?}{}), period {} ms, \
         windows of {} periods",
        args.nodes,
        args.trials,
        settings.len(),
        args.modes
            .iter()
            .map(|m| mode_name(*m))
            .collect::<Vec<_>>()
            .join(", "),
        args.fan_outs,
        if args.recv_compare {
            ", plus plain receives"
        } else {
            ""
        },
        args.period.as_millis(),
        args.window,
    );
    println!(
        "machine: {} CPUs, load average {} (other processes' load slows the nodes and \
         shows in the times and CPU figures)",
        cpus(),
        report.machine.loadavg_start
    );
    if cfg!(debug_assertions) {
        println!("note: a debug build; the figures of a release build are lower");
    }

    let result = run_trials(&args, &settings, &mut report, started);
    report.machine.loadavg_end = loadavg();
    report.duration_s = started.elapsed().as_secs_f64();
    if let Some(path) = &args.json {
        write_json(path, &report)?;
    }
    // Everything the run made is gone by now (the testbed, its clients and
    // the nodes are dropped inside run_trials, the sysctls restored):
    // check.
    let leftovers = elec_testbed::leftover_namespaces();
    let links_after = root_links();
    let alive = locked(&CHILDREN).len();
    let restored = locked(&RESTORE).is_empty();
    let clean = leftovers.is_empty() && alive == 0 && restored && links_after <= links_before;
    let cleanup = if clean {
        "clean-up: checked: no namespace, node process or link of the demo left, neighbour \
         thresholds as they were"
            .to_string()
    } else {
        format!(
            "clean-up incomplete: namespaces left {leftovers:?}, node processes {alive}, links \
             in this namespace {links_before} before and {links_after} after, sysctls \
             restored: {restored}"
        )
    };
    if let Err(err) = result {
        eprintln!("{cleanup}");
        return Err(err);
    }

    print_tables(&args, &settings, &report.samples);
    print_legend(&args);
    let mut polls = PollCost::default();
    for sample in &report.samples {
        polls.add(sample.polls);
    }
    println!(
        "- What the polling cost (all trials, the three timed phases): {} rounds of {:.0} \
         requests on average, each round {:.1} ms from its first request to its last reply; \
         the demo's own CPU {:.0} µs per request, besides the answering node's (not measured).",
        polls.rounds,
        polls.requests as f64 / polls.rounds.max(1) as f64,
        polls.round_ms / polls.rounds.max(1) as f64,
        polls.demo_cpu_ms * 1e3 / polls.requests.max(1) as f64
    );
    println!(
        "\nrun: {:.0} s for {} trials; load average {} at the start, {} at the end",
        report.duration_s,
        report.samples.len(),
        report.machine.loadavg_start,
        report.machine.loadavg_end
    );
    if let Some(path) = &args.json {
        println!("samples written to {}", path.display());
    }
    if clean {
        println!("{cleanup}");
        Ok(())
    } else {
        Err(cleanup.into())
    }
}

/// Every setting, in the order a trial runs them.
fn settings(args: &DemoArgs) -> Vec<Setting> {
    let mut settings = Vec::new();
    for &fan_out in &args.fan_outs {
        for &mode in &args.modes {
            settings.push(Setting {
                mode,
                fan_out,
                recv: RecvArg::Batched,
            });
        }
    }
    if args.recv_compare {
        settings.push(Setting {
            mode: args.modes[0],
            fan_out: *args.fan_outs.iter().max().expect("checked non-empty"),
            recv: RecvArg::Plain,
        });
    }
    settings
}

fn run_trials(
    args: &DemoArgs,
    settings: &[Setting],
    report: &mut Report,
    started: Instant,
) -> Result<(), BoxError> {
    let n = args.nodes;
    let _restore = SysctlGuard;
    prepare_neighbour_table(args)?;
    let tb = Testbed::new(TestbedConfig {
        receivers: n,
        ..Default::default()
    })?;
    let addrs: Vec<SocketAddrV4> = (0..n)
        .map(|i| SocketAddrV4::new(tb.receiver_addrs(i)[0], NODE_PORT))
        .collect();
    if args.neighbours == Neighbours::Static {
        install_neighbours(&tb)?;
        println!(
            "neighbours: {} permanent entries, N x (N - 1), no ARP",
            n * (n - 1)
        );
    }
    // Declared after the testbed, so dropped before it: the client threads
    // live in its namespaces.
    let clients = Clients::start(&tb)?;
    let ksoftirqd = ksoftirqd_pids();
    let total = args.trials * settings.len();
    println!();
    for trial in 0..args.trials {
        for setting in settings {
            let at = Instant::now();
            print!(
                "[{:>3}/{total} {:>5.0} s] {:<28} trial {}: ",
                report.samples.len() + 1,
                started.elapsed().as_secs_f64(),
                setting.label(),
                trial + 1
            );
            let _ = io::Write::flush(&mut io::stdout());
            let sample = run_trial(args, &tb, &clients, &addrs, *setting, trial, &ksoftirqd)
                .inspect_err(|_| println!("failed"))?;
            println!(
                "{} ({:.1} s)",
                sample.summary(args.period),
                at.elapsed().as_secs_f64()
            );
            for warning in &sample.warnings {
                println!("      warning: {warning}");
            }
            report.samples.push(sample);
            if let Some(path) = &args.json {
                write_json(path, report)?;
            }
        }
    }
    drop(clients);
    drop(tb);
    Ok(())
}

// ---- the neighbour table ---------------------------------------------------

/// What /proc/net/stat/arp_cache says: entries now, and how often the
/// table was full (summed over the CPUs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
struct NeighStats {
    entries: u64,
    table_fulls: u64,
}

/// Parses /proc/net/stat/arp_cache: a header naming the columns, then one
/// line of hex counters per CPU (`entries` is the table's, the same on
/// every line; the others are per CPU).
fn parse_neigh_stats(text: &str) -> Option<NeighStats> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let entries = header.iter().position(|c| *c == "entries")?;
    let fulls = header.iter().position(|c| *c == "table_fulls")?;
    let mut stats = NeighStats::default();
    let mut rows = 0;
    for line in lines {
        let fields: Vec<u64> = line
            .split_whitespace()
            .map(|f| u64::from_str_radix(f, 16))
            .collect::<Result<_, _>>()
            .ok()?;
        if rows == 0 {
            stats.entries = *fields.get(entries)?;
        }
        stats.table_fulls += *fields.get(fulls)?;
        rows += 1;
    }
    (rows > 0).then_some(stats)
}

fn neigh_stats() -> io::Result<NeighStats> {
    let text = std::fs::read_to_string(ARP_STATS)?;
    parse_neigh_stats(&text)
        .ok_or_else(|| io::Error::other(format!("{ARP_STATS}: unexpected format")))
}

/// Neighbour entries N nodes that all talk need: each namespace resolves
/// every other node.
fn entries_needed(nodes: usize) -> u64 {
    (nodes * (nodes - 1)) as u64
}

/// The thresholds (gc_thresh1, 2, 3) to run with for `needed` entries: each
/// at least its old value; thresh1 (below which nothing is collected) at
/// `needed`, thresh2 and thresh3 (the hard cap) at twice that.
fn raised_thresholds(old: [u64; 3], needed: u64) -> [u64; 3] {
    [
        old[0].max(needed),
        old[1].max(2 * needed),
        old[2].max(2 * needed),
    ]
}

fn read_thresholds() -> io::Result<[u64; 3]> {
    let mut values = [0; 3];
    for (value, path) in values.iter_mut().zip(THRESHOLDS) {
        let text = std::fs::read_to_string(path)?;
        *value = text
            .trim()
            .parse()
            .map_err(|e| io::Error::other(format!("{path}: {e}")))?;
    }
    Ok(values)
}

/// Checks the neighbour table can be watched and, with `--neighbours arp`,
/// raises its thresholds for the run (restored by [`restore_sysctls`]).
fn prepare_neighbour_table(args: &DemoArgs) -> Result<(), BoxError> {
    let stats = neigh_stats().map_err(|e| {
        format!("reading {ARP_STATS} (the demo watches it for neighbour-table overflows): {e}")
    })?;
    let needed = entries_needed(args.nodes);
    let old = read_thresholds().map_err(|e| {
        format!("reading net.ipv4.neigh.default.gc_thresh1/2/3 (in the initial namespace): {e}")
    })?;
    match args.neighbours {
        Neighbours::Static => {}
        Neighbours::Arp => {
            let new = raised_thresholds(old, needed);
            if new != old {
                println!(
                    "neighbours: ARP; {needed} entries needed, so gc_thresh1/2/3 raised from \
                     {old:?} to {new:?} for the run (restored at the end; if the demo is \
                     killed, restore them with sysctl -w net.ipv4.neigh.default.gc_threshN=...)"
                );
                for ((path, old), new) in THRESHOLDS.iter().zip(old).zip(new) {
                    if old != new {
                        locked(&RESTORE).push((path, old.to_string()));
                        std::fs::write(path, new.to_string())
                            .map_err(|e| format!("raising {path} to {new}: {e}"))?;
                    }
                }
            } else {
                println!(
                    "neighbours: ARP; {needed} entries needed, gc_thresh3 {} is enough",
                    old[2]
                );
            }
        }
        Neighbours::ArpUnraised => println!(
            "neighbours: ARP under gc_thresh1/2/3 {old:?} as they are; {needed} entries needed{}",
            if needed > old[2] {
                ": the table will overflow, and the demo will say so"
            } else {
                ""
            }
        ),
    }
    println!(
        "neighbour table: {} entries, {} overflows so far ({ARP_STATS} table_fulls)",
        stats.entries, stats.table_fulls
    );
    Ok(())
}

/// The `ip -batch` lines of node `i`'s permanent entries for every other
/// node.
fn neighbour_lines(tb: &Testbed, i: usize) -> Vec<String> {
    (0..tb.num_receivers())
        .filter(|&j| j != i)
        .map(|j| {
            format!(
                "neigh replace {} lladdr {} dev {} nud permanent",
                tb.receiver_addrs(j)[0],
                elec_testbed::format_mac(&tb.receiver_mac(j)),
                elec_testbed::IFACE
            )
        })
        .collect()
}

/// Permanent neighbour entries in every node's namespace, one `ip -batch`
/// per namespace, all at once.
fn install_neighbours(tb: &Testbed) -> Result<(), BoxError> {
    let mut children = Vec::new();
    for i in 0..tb.num_receivers() {
        let mut child = Command::new("ip")
            .args(["-n", tb.receiver_ns(i), "-batch", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running ip: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        io::Write::write_all(&mut stdin, neighbour_lines(tb, i).join("\n").as_bytes())?;
        drop(stdin);
        children.push(child);
    }
    for child in children {
        let out = child.wait_with_output()?;
        if !out.status.success() {
            return Err(format!(
                "installing neighbour entries: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
    }
    Ok(())
}

// ---- talking to the nodes --------------------------------------------------

type Reply = io::Result<(u16, Vec<u8>)>;

/// Work for a client thread, run inside its node's namespace.
type Task = Box<dyn FnOnce() + Send>;

/// One thread per node namespace that makes the requests to that node's
/// control interface (127.0.0.1 inside the namespace): no thread is spawned
/// per request, and the requests of a poll round run in parallel.
struct Clients {
    tasks: Vec<mpsc::Sender<Task>>,
    threads: Vec<NsThread<()>>,
}

impl Clients {
    fn start(tb: &Testbed) -> io::Result<Clients> {
        let mut clients = Clients {
            tasks: Vec::new(),
            threads: Vec::new(),
        };
        for i in 0..tb.num_receivers() {
            let (send, receive) = mpsc::channel::<Task>();
            let thread = spawn_in_namespace(tb.receiver_ns(i), "demo-client", move || {
                for task in receive {
                    task();
                }
            })?;
            clients.tasks.push(send);
            clients.threads.push(thread);
        }
        Ok(clients)
    }

    /// Runs `work(i)` on the client thread of each node `i` of `nodes`, in
    /// parallel; the results in the order they came, each with the time it
    /// came (None: the thread is gone).
    fn run<T: Send + 'static>(
        &self,
        nodes: &[usize],
        work: impl Fn(usize) -> Box<dyn FnOnce() -> T + Send>,
    ) -> Vec<(usize, Option<T>, Instant)> {
        let (send, receive) = mpsc::channel();
        for &i in nodes {
            let work = work(i);
            let reply = send.clone();
            let task: Task = Box::new(move || {
                let result = work();
                let _ = reply.send((i, Some(result), Instant::now()));
            });
            if self.tasks[i].send(task).is_err() {
                let _ = send.send((i, None, Instant::now()));
            }
        }
        drop(send);
        receive.iter().collect()
    }

    /// The same request to each node of `nodes` (its path made by `path`),
    /// in parallel; the replies in the order they came, each with the time
    /// it came.
    fn each(
        &self,
        nodes: &[usize],
        method: &'static str,
        path: impl Fn(usize) -> String,
        body: &[u8],
    ) -> Vec<(usize, Reply, Instant)> {
        self.run(nodes, |i| {
            let (path, body) = (path(i), body.to_vec());
            Box::new(move || request_here(method, &path, &body))
        })
        .into_iter()
        .map(|(i, reply, at)| {
            (
                i,
                reply.unwrap_or_else(|| Err(io::Error::other("client gone"))),
                at,
            )
        })
        .collect()
    }

    /// The same request to every node of `nodes`, in parallel; fails unless
    /// every one is answered 200. Returns when the last request was sent
    /// (CLOCK_MONOTONIC ns, read by its client thread just before it
    /// connected): every node acted on its request after that.
    fn timed_ok(
        &self,
        nodes: &[usize],
        method: &'static str,
        path: &str,
        body: &[u8],
    ) -> Result<u64, BoxError> {
        let mut last = 0;
        for (i, result, _) in self.run(nodes, |_| {
            let (path, body) = (path.to_string(), body.to_vec());
            Box::new(move || (monotonic_ns(), request_here(method, &path, &body)))
        }) {
            let (sent, reply) = result.ok_or("client gone")?;
            match reply {
                Ok((200, _)) => last = last.max(sent),
                Ok((status, body)) => {
                    return Err(format!(
                        "node {i}: {method} {path}: {status} {}",
                        String::from_utf8_lossy(&body).trim()
                    )
                    .into())
                }
                Err(err) => return Err(format!("node {i}: {method} {path}: {err}").into()),
            }
        }
        Ok(last)
    }

    /// One request; fails unless it is answered 200.
    fn ok(
        &self,
        node: usize,
        method: &'static str,
        path: &str,
        body: &[u8],
    ) -> io::Result<Vec<u8>> {
        let (_, reply, _) = self
            .each(&[node], method, |_| path.to_string(), body)
            .pop()
            .ok_or_else(|| io::Error::other("no reply"))?;
        let (status, body) = reply?;
        if status != 200 {
            return Err(io::Error::other(format!(
                "{method} {path}: {status} {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        Ok(body)
    }

    /// The same request to every node of `nodes`; fails unless every one
    /// is answered 200. The bodies, by node.
    fn all_ok(
        &self,
        nodes: &[usize],
        method: &'static str,
        path: &str,
        body: &[u8],
    ) -> io::Result<HashMap<usize, Vec<u8>>> {
        self.each(nodes, method, |_| path.to_string(), body)
            .into_iter()
            .map(|(i, reply, _)| match reply {
                Ok((200, body)) => Ok((i, body)),
                Ok((status, body)) => Err(io::Error::other(format!(
                    "node {i}: {method} {path}: {status} {}",
                    String::from_utf8_lossy(&body).trim()
                ))),
                Err(err) => Err(io::Error::other(format!(
                    "node {i}: {method} {path}: {err}"
                ))),
            })
            .collect()
    }

    fn stats(&self, nodes: &[usize]) -> io::Result<Vec<StatsJson>> {
        let mut bodies = self.all_ok(nodes, "GET", "/stats", b"")?;
        nodes
            .iter()
            .map(|i| {
                let body = bodies.remove(i).unwrap_or_default();
                serde_json::from_slice(&body)
                    .map_err(|e| io::Error::other(format!("node {i}: GET /stats: {e}")))
            })
            .collect()
    }
}

impl Drop for Clients {
    fn drop(&mut self) {
        // The threads end when their channels close.
        self.tasks.clear();
        for thread in self.threads.drain(..) {
            thread.join();
        }
    }
}

/// One HTTP request to the control interface of the namespace this thread
/// is in.
fn request_here(method: &str, path: &str, body: &[u8]) -> Reply {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, CONTROL_PORT));
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    let (status, _, body) = control::request(stream, method, path, body)?;
    Ok((status, body))
}

/// GET /stats of the node of this thread's namespace.
fn stats_here() -> io::Result<StatsJson> {
    match request_here("GET", "/stats", b"")? {
        (200, body) => {
            serde_json::from_slice(&body).map_err(|e| io::Error::other(format!("GET /stats: {e}")))
        }
        (status, _) => Err(io::Error::other(format!("GET /stats: {status}"))),
    }
}

/// What the polling of the timed phases cost.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct PollCost {
    /// Poll rounds, and requests in them.
    rounds: u64,
    requests: u64,
    /// Time from the start of a round until its last reply, summed.
    round_ms: f64,
    /// CPU time of the demo process (its client threads) meanwhile.
    demo_cpu_ms: f64,
}

impl PollCost {
    fn add(&mut self, other: PollCost) {
        self.rounds += other.rounds;
        self.requests += other.requests;
        self.round_ms += other.round_ms;
        self.demo_cpu_ms += other.demo_cpu_ms;
    }
}

/// CPU time of this process, all its threads (not its children), ms.
fn own_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the zeroed struct it is given, nothing else.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// What the demo knows of a node from its event log.
#[derive(Debug, Clone, Copy)]
struct NodeView {
    /// The number of the next event to read.
    since: u64,
    /// Live members (alive or suspect), the node included: one more with
    /// each `joined`, one less with each `failed` or `left`.
    members: i64,
}

impl NodeView {
    fn new() -> NodeView {
        NodeView {
            since: 0,
            members: 1,
        }
    }

    fn apply(&mut self, event: &EventJson) {
        match event.kind.as_str() {
            "joined" => self.members += 1,
            "failed" | "left" => self.members -= 1,
            _ => {}
        }
    }
}

/// Reads the new events of the nodes of `pending` every [`EVENT_POLL`]
/// (asking only those not done yet) until, for each, an event makes `done`
/// hold (given the view with the event applied); returns, per node, the ms
/// from `start_ns` (CLOCK_MONOTONIC) to that event, as the node timed it,
/// and what the asking cost.
fn wait_events(
    clients: &Clients,
    views: &mut [NodeView],
    pending: Vec<usize>,
    start_ns: u64,
    limit: Duration,
    what: &str,
    done: impl Fn(&NodeView, &EventJson) -> bool,
) -> Result<(Vec<f64>, PollCost), BoxError> {
    poll_rounds(
        pending,
        Instant::now(),
        limit,
        EVENT_POLL,
        what,
        |pending, times, still| {
            let path = |i: usize| format!("/events?since={}", views[i].since);
            for (i, reply, _) in clients.each(pending, "GET", path, b"") {
                let body = match reply {
                    Ok((200, body)) => body,
                    Ok((status, body)) => {
                        return Err(format!(
                            "node {i}: GET /events: {status} {}",
                            String::from_utf8_lossy(&body).trim()
                        )
                        .into())
                    }
                    Err(_) => {
                        still.push(i);
                        continue;
                    }
                };
                let events: EventsJson = serde_json::from_slice(&body)?;
                let view = &mut views[i];
                if events.events.first().is_some_and(|e| e.seq > view.since) {
                    return Err(format!("node {i}: events lost from its log (too many)").into());
                }
                let mut at = None;
                for event in &events.events {
                    view.apply(event);
                    if at.is_none() && done(view, event) {
                        at = Some(event.at_ns);
                    }
                }
                view.since = events.next;
                match at {
                    Some(at) => times.push(at.saturating_sub(start_ns) as f64 / 1e6),
                    None => still.push(i),
                }
            }
            Ok(())
        },
    )
}

/// Asks the nodes of `pending` every [`POLL`] until `done` holds for each
/// (asking only those not done yet); returns, per node, the time from
/// `start` to the reply that first showed it done, and what the polling
/// cost.
fn wait_all(
    clients: &Clients,
    pending: Vec<usize>,
    start: Instant,
    limit: Duration,
    what: &str,
    path: impl Fn(usize) -> String,
    done: impl Fn(usize, u16, &[u8]) -> bool,
) -> Result<(Vec<f64>, PollCost), BoxError> {
    poll_rounds(
        pending,
        start,
        limit,
        POLL,
        what,
        |pending, times, still| {
            for (i, reply, at) in clients.each(pending, "GET", &path, b"") {
                match reply {
                    Ok((status, body)) if done(i, status, &body) => {
                        times.push(ms(at.saturating_duration_since(start)));
                    }
                    _ => still.push(i),
                }
            }
            Ok(())
        },
    )
}

/// The polling both waits share: a `round` every `interval` over the nodes
/// not done yet (it adds a time per node done and lists the others), until
/// none is left, or an error once `limit` has passed since `start`; with
/// what the rounds cost.
fn poll_rounds(
    mut pending: Vec<usize>,
    start: Instant,
    limit: Duration,
    interval: Duration,
    what: &str,
    mut round: impl FnMut(&[usize], &mut Vec<f64>, &mut Vec<usize>) -> Result<(), BoxError>,
) -> Result<(Vec<f64>, PollCost), BoxError> {
    let mut times = Vec::with_capacity(pending.len());
    let mut cost = PollCost::default();
    let cpu = own_cpu_ms();
    loop {
        let began = Instant::now();
        let mut still = Vec::new();
        cost.rounds += 1;
        cost.requests += pending.len() as u64;
        round(&pending, &mut times, &mut still)?;
        cost.round_ms += ms(began.elapsed());
        if still.is_empty() {
            cost.demo_cpu_ms = own_cpu_ms() - cpu;
            return Ok((times, cost));
        }
        if start.elapsed() > limit {
            still.sort_unstable();
            return Err(format!(
                "{what}: not within {limit:?} on {} nodes ({:?}...)",
                still.len(),
                &still[..still.len().min(8)]
            )
            .into());
        }
        pending = still;
        std::thread::sleep(interval.saturating_sub(began.elapsed()));
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---- the node processes ----------------------------------------------------

/// The node processes of one trial, killed when dropped.
struct Cluster {
    children: Vec<Option<Child>>,
}

impl Cluster {
    fn spawn(
        args: &DemoArgs,
        tb: &Testbed,
        addrs: &[SocketAddrV4],
        setting: Setting,
    ) -> Result<Cluster, BoxError> {
        let exe = std::env::current_exe()?;
        let mut cluster = Cluster {
            children: Vec::new(),
        };
        for (i, addr) in addrs.iter().enumerate() {
            let mut cmd = Command::new(&exe);
            cmd.arg("-q")
                .arg("node")
                .args(["--listen", &addr.to_string()])
                .args(["--seed", &addrs[0].to_string()])
                .args(["--seed", &addrs[1].to_string()])
                .args(["--mode", &value_name(setting.mode)])
                .args(["--recv", &value_name(setting.recv)])
                .args(["--iface", elec_testbed::IFACE])
                .args(["--period", &format!("{}ms", args.period.as_millis())])
                .args(["--fan-out", &setting.fan_out.to_string()])
                .args(["--control-port", &CONTROL_PORT.to_string()])
                .args(["--key", "gossip demo cluster"])
                .args(["--no-join", "--exit-on-stdin-eof", "--event-log"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            let child = tb.spawn_in(tb.receiver_ns(i), &mut cmd)?;
            locked(&CHILDREN).push(child.id());
            cluster.children.push(Some(child));
        }
        Ok(cluster)
    }

    fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(Child::id)
    }

    /// SIGKILL to node `i`, and waits for it.
    fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            let _ = child.kill();
            let _ = child.wait();
            locked(&CHILDREN).retain(|&pid| pid != child.id());
        }
    }

    /// An error if a node has exited.
    fn check_alive(&mut self) -> Result<(), BoxError> {
        for (i, child) in self.children.iter_mut().enumerate() {
            if let Some(child) = child {
                if let Some(status) = child.try_wait()? {
                    return Err(format!("node {i} exited: {status}").into());
                }
            }
        }
        Ok(())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // SIGKILL to all first, then reap: faster than one by one.
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
        }
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// The command-line value that selects `value`.
fn value_name(value: impl ValueEnum) -> String {
    value
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

fn mode_name(mode: BroadcastMode) -> &'static str {
    match mode {
        BroadcastMode::Kernel => "kernel",
        BroadcastMode::User => "user",
        BroadcastMode::Auto => "auto",
    }
}

// ---- one trial -------------------------------------------------------------

/// What one trial measured.
#[derive(Debug, Serialize)]
struct Sample {
    mode: &'static str,
    fan_out: usize,
    recv: &'static str,
    trial: usize,
    /// From spawning the processes until every node answered.
    setup_ms: f64,
    /// Per node: ms from the last POST /start until it listed all N.
    converge_ms: Vec<f64>,
    /// Per node but the writer: ms from the write until it read the value.
    update_ms: Vec<f64>,
    /// Per live node: ms from the SIGKILL until it no longer listed the
    /// killed node.
    detect_ms: Vec<f64>,
    /// What the polling of these three cost.
    polls: PollCost,
    /// Whether every node's queue of updates to gossip was empty before the
    /// idle window.
    drained: bool,
    /// Live nodes missing from a live node's list after the detection
    /// (pairs): false failure detections.
    false_removals: usize,
    idle: Window,
    busy: Window,
    /// Between live nodes, over the whole trial: copies each node says it
    /// sent to another, and datagrams the other says it got from it.
    sent: u64,
    received: u64,
    /// Sent but not received (per pair of nodes, summed).
    lost: u64,
    /// Received but not sent (duplicates; should be 0).
    extra: u64,
    /// Drops past the senders over the trial: the bridge ports' and the
    /// sockets' (the testbed's drops_past_sender).
    link_drops: u64,
    /// Neighbour-table overflows during the trial (table_fulls).
    table_fulls: u64,
    /// Neighbour entries at the end of the trial (all namespaces).
    neighbour_entries: u64,
    warnings: Vec<String>,
}

/// Counters over a measurement window.
#[derive(Debug, Default, Serialize)]
struct Window {
    /// From the end of the first readings to the start of the second (the
    /// ksoftirqd window; each node's own is in its `seconds`).
    seconds: f64,
    /// CPU time of the ksoftirqd threads (all CPUs), ns.
    ksoftirqd_ns: u64,
    /// Busy time of the whole machine (/proc/stat, all CPUs), ms.
    machine_busy_ms: f64,
    /// Per node.
    nodes: Vec<NodeWindow>,
}

/// One node's counters over a window.
#[derive(Debug, Default, Clone, Serialize)]
struct NodeWindow {
    /// From its first reading to its second.
    seconds: f64,
    /// CPU time of all its threads (schedstat), ns.
    cpu_ns: u64,
    /// utime and stime (clock ticks).
    user_ticks: u64,
    system_ticks: u64,
    /// Transmitted by its eth0 (the kernel's count: every clone).
    eth0_tx_packets: u64,
    eth0_tx_bytes: u64,
    /// The node's own counters.
    broadcasts: u64,
    datagrams_out: u64,
    bytes_out: u64,
    datagrams_in: u64,
    bytes_in: u64,
    kernel_copies: u64,
    user_space_copies: u64,
    recv_calls: u64,
    recv_datagrams: u64,
}

impl Window {
    fn sum(&self, f: impl Fn(&NodeWindow) -> u64) -> f64 {
        self.nodes.iter().map(f).sum::<u64>() as f64
    }

    /// The mean over the nodes of `f(node) / node's window`.
    fn mean_rate(&self, f: impl Fn(&NodeWindow) -> f64) -> f64 {
        let rates: f64 = self.nodes.iter().map(|n| f(n) / n.seconds.max(1e-9)).sum();
        rates / self.nodes.len().max(1) as f64
    }

    /// A counter per node per period.
    fn per_node_period(&self, period: Duration, f: impl Fn(&NodeWindow) -> u64) -> f64 {
        self.mean_rate(|n| f(n) as f64) * period.as_secs_f64()
    }

    /// Mean CPU of a node, in % of one CPU.
    fn cpu_percent(&self) -> f64 {
        self.mean_rate(|n| n.cpu_ns as f64) / 1e7
    }

    fn system_share(&self) -> f64 {
        let system = self.sum(|n| n.system_ticks);
        100.0 * system / (system + self.sum(|n| n.user_ticks)).max(1.0)
    }

    fn recv_calls_per_datagram(&self) -> f64 {
        self.sum(|n| n.recv_calls) / self.sum(|n| n.recv_datagrams).max(1.0)
    }

    fn kernel_share(&self) -> f64 {
        let kernel = self.sum(|n| n.kernel_copies);
        100.0 * kernel / (kernel + self.sum(|n| n.user_space_copies)).max(1.0)
    }

    /// CPU per datagram handled (sent or received), µs.
    fn cpu_per_datagram(&self) -> f64 {
        self.sum(|n| n.cpu_ns) / 1e3 / self.sum(|n| n.datagrams_out + n.datagrams_in).max(1.0)
    }

    fn ksoftirqd_percent(&self) -> f64 {
        self.ksoftirqd_ns as f64 / (self.seconds * 1e7)
    }

    /// CPU the machine spent on anything but the nodes and ksoftirqd (other
    /// processes, the demo itself), in % of one CPU.
    fn others_percent(&self) -> f64 {
        let ours = (self.sum(|n| n.cpu_ns) + self.ksoftirqd_ns as f64) / 1e6;
        ((self.machine_busy_ms - ours) / (self.seconds * 10.0)).max(0.0)
    }
}

/// The median of `values` (sorted in place); NaN for none.
fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn max(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::NAN, f64::max)
}

impl Sample {
    fn summary(&self, period: Duration) -> String {
        let p = period.as_secs_f64() * 1e3;
        let (c, u, d) = (
            max(&self.converge_ms),
            max(&self.update_ms),
            max(&self.detect_ms),
        );
        format!(
            "converged {c:.0} ms ({:.1} p), update {u:.0} ms ({:.1} p), detected {d:.0} ms \
             ({:.1} p); busy CPU {:.2} %/node; lost {}/{}",
            c / p,
            u / p,
            d / p,
            self.busy.cpu_percent(),
            self.lost,
            self.sent
        )
    }
}

/// Process counters of a node.
#[derive(Debug, Default, Clone, Copy)]
struct ProcSample {
    cpu_ns: u64,
    user_ticks: u64,
    system_ticks: u64,
    tx_packets: u64,
    tx_bytes: u64,
}

/// utime and stime (clock ticks) from /proc/<pid>/stat.
fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    // Fields after the command name, which ends with the last ')': state is
    // the first, utime the 12th, stime the 13th.
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// Transmitted packets and bytes of `iface` in a /proc/net/dev.
fn parse_dev_tx(dev: &str, iface: &str) -> Option<(u64, u64)> {
    dev.lines().find_map(|line| {
        let (name, counters) = line.split_once(':')?;
        if name.trim() != iface {
            return None;
        }
        let c: Vec<u64> = counters
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        Some((*c.get(9)?, *c.get(8)?))
    })
}

/// Time on CPU of every thread of `pid` (ns, schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|text| text.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn proc_sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let (user_ticks, system_ticks) =
        parse_stat_ticks(&stat).ok_or_else(|| io::Error::other("bad /proc/<pid>/stat"))?;
    // /proc/<pid>/net/dev shows the interfaces of the node's namespace.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))?;
    let (tx_packets, tx_bytes) = parse_dev_tx(&dev, elec_testbed::IFACE)
        .ok_or_else(|| io::Error::other("no eth0 in /proc/<pid>/net/dev"))?;
    Ok(ProcSample {
        cpu_ns: cpu_ns(pid),
        user_ticks,
        system_ticks,
        tx_packets,
        tx_bytes,
    })
}

/// Busy time of all CPUs since boot, ms: /proc/stat's first line, user
/// to steal but idle and iowait (in clock ticks).
fn parse_machine_busy_ms(stat: &str, hz: f64) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal (guest is in user).
    let busy: u64 = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| ticks.get(i))
        .sum();
    (ticks.len() >= 8).then(|| busy as f64 * 1e3 / hz)
}

fn machine_busy_ms() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|stat| parse_machine_busy_ms(&stat, hz))
        .unwrap_or(0.0)
}

/// The pids of the ksoftirqd threads (softirq work deferred there is
/// charged to no node).
fn ksoftirqd_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.starts_with("ksoftirqd/"))
        })
        .collect()
}

/// One node's counters and process figures, read together (by its client
/// thread, within a millisecond or so).
struct NodeSnapshot {
    at: Instant,
    stats: StatsJson,
    proc: ProcSample,
}

/// Everything a window compares, at one moment.
struct Snapshot {
    at: Instant,
    nodes: Vec<NodeSnapshot>,
    ksoftirqd_ns: u64,
    machine_busy_ms: f64,
}

impl Snapshot {
    /// Every node in parallel: at the start of a window, its counters
    /// (over HTTP, which costs it CPU) then its CPU time, so that the
    /// request falls outside the window; at the end, the other way round.
    fn take(
        clients: &Clients,
        cluster: &Cluster,
        nodes: &[usize],
        ksoft: &[u32],
        start: bool,
    ) -> io::Result<Snapshot> {
        let began = Instant::now();
        let ksoftirqd = || ksoft.iter().map(|&p| cpu_ns(p)).sum();
        let (ksoftirqd_ns, machine_ms) = if start {
            (0, 0.0)
        } else {
            (ksoftirqd(), machine_busy_ms())
        };
        let pids: Vec<Option<u32>> = (0..cluster.children.len())
            .map(|i| cluster.pid(i))
            .collect();
        let mut taken: HashMap<usize, NodeSnapshot> = HashMap::new();
        for (i, result, _) in clients.run(nodes, |i| {
            let pid = pids[i];
            Box::new(move || -> io::Result<NodeSnapshot> {
                let pid = pid.ok_or_else(|| io::Error::other("node gone"))?;
                let (stats, proc) = if start {
                    let stats = stats_here()?;
                    (stats, proc_sample(pid)?)
                } else {
                    let proc = proc_sample(pid)?;
                    (stats_here()?, proc)
                };
                Ok(NodeSnapshot {
                    at: Instant::now(),
                    stats,
                    proc,
                })
            })
        }) {
            let snapshot = result
                .ok_or_else(|| io::Error::other("client gone"))?
                .map_err(|e| io::Error::other(format!("node {i}: {e}")))?;
            taken.insert(i, snapshot);
        }
        let nodes = nodes
            .iter()
            .map(|i| taken.remove(i).expect("one result per node"))
            .collect();
        Ok(Snapshot {
            at: if start { Instant::now() } else { began },
            nodes,
            ksoftirqd_ns: if start { ksoftirqd() } else { ksoftirqd_ns },
            machine_busy_ms: if start { machine_busy_ms() } else { machine_ms },
        })
    }

    fn window(&self, after: &Snapshot) -> Window {
        let nodes: Vec<NodeWindow> = self
            .nodes
            .iter()
            .zip(&after.nodes)
            .map(|(n0, n1)| {
                let (s0, s1, p0, p1) = (&n0.stats, &n1.stats, &n0.proc, &n1.proc);
                let d = |f: fn(&StatsJson) -> u64| f(s1).saturating_sub(f(s0));
                NodeWindow {
                    seconds: n1.at.saturating_duration_since(n0.at).as_secs_f64(),
                    cpu_ns: p1.cpu_ns.saturating_sub(p0.cpu_ns),
                    user_ticks: p1.user_ticks.saturating_sub(p0.user_ticks),
                    system_ticks: p1.system_ticks.saturating_sub(p0.system_ticks),
                    eth0_tx_packets: p1.tx_packets.saturating_sub(p0.tx_packets),
                    eth0_tx_bytes: p1.tx_bytes.saturating_sub(p0.tx_bytes),
                    broadcasts: d(|s| s.broadcasts),
                    datagrams_out: d(|s| s.protocol.datagrams_out),
                    bytes_out: d(|s| s.protocol.bytes_out),
                    datagrams_in: d(|s| s.protocol.packets_in),
                    bytes_in: d(|s| s.protocol.bytes_in),
                    kernel_copies: d(|s| s.kernel_copies),
                    user_space_copies: d(|s| s.user_space_copies),
                    recv_calls: d(|s| s.recv_calls),
                    recv_datagrams: d(|s| s.recv_datagrams),
                }
            })
            .collect();
        Window {
            seconds: after.at.saturating_duration_since(self.at).as_secs_f64(),
            ksoftirqd_ns: after.ksoftirqd_ns.saturating_sub(self.ksoftirqd_ns),
            machine_busy_ms: after.machine_busy_ms - self.machine_busy_ms,
            nodes,
        }
    }
}

/// The value whose spread is timed: recognisable, `size` bytes, new in
/// every trial.
fn update_value(size: usize, label: &str, trial: usize) -> Vec<u8> {
    let mut value = format!("{label} trial {trial} ").into_bytes();
    value.resize(size, b'.');
    value.truncate(size);
    value
}

fn run_trial(
    args: &DemoArgs,
    tb: &Testbed,
    clients: &Clients,
    addrs: &[SocketAddrV4],
    setting: Setting,
    trial: usize,
    ksoftirqd: &[u32],
) -> Result<Sample, BoxError> {
    let n = args.nodes;
    let everyone: Vec<usize> = (0..n).collect();
    let mut warnings = Vec::new();
    let neigh_before = neigh_stats()?;
    let drops_before: u64 = tb.drops_past_sender()?.iter().sum();

    // The nodes, waiting for POST /start.
    let spawned = Instant::now();
    let mut cluster = Cluster::spawn(args, tb, addrs, setting)?;
    let deadline = spawned + Duration::from_secs(30);
    let stats = loop {
        cluster.check_alive()?;
        if let Ok(stats) = clients.stats(&everyone) {
            break stats;
        }
        if Instant::now() > deadline {
            return Err("the nodes did not all answer within 30 s".into());
        }
        std::thread::sleep(POLL);
    };
    let setup_ms = ms(spawned.elapsed());
    let want_mode = match setting.mode {
        BroadcastMode::User => Some("user"),
        BroadcastMode::Kernel => Some("kernel"),
        BroadcastMode::Auto => None,
    };
    for (i, s) in stats.iter().enumerate() {
        if want_mode.is_some_and(|m| m != s.mode) || s.recv != value_name(setting.recv) {
            return Err(format!("node {i} runs in {} mode, {} receives", s.mode, s.recv).into());
        }
    }
    let max_value = stats.iter().map(|s| s.max_value).min().unwrap_or(0);
    if (UPDATE_KEY.len() + args.value_size) as u64 > max_value {
        return Err(format!(
            "--value-size {} does not fit one datagram at fan-out {}: at most {} bytes (every \
             packet names its addressees, so a larger fan-out leaves less room)",
            args.value_size,
            setting.fan_out,
            max_value.saturating_sub(UPDATE_KEY.len() as u64)
        )
        .into());
    }

    // (a) Convergence: every node starts (in parallel); from the last
    // start until every node lists all n.
    let mut views = vec![NodeView::new(); n];
    let start = clients.timed_ok(&everyone, "POST", "/start", b"")?;
    let mut polls = PollCost::default();
    let (converge_ms, cost) = wait_events(
        clients,
        &mut views,
        everyone.clone(),
        start,
        args.timeout,
        "convergence",
        |view, _| view.members == n as i64,
    )?;
    polls.add(cost);
    // The event logs against the nodes' own lists.
    for (i, body) in clients.all_ok(&everyone, "GET", "/members", b"")? {
        let listed = serde_json::from_slice::<MembersJson>(&body)?.members.len();
        if listed != n {
            return Err(format!("node {i} lists {listed} members where its events say {n}").into());
        }
    }

    // (b) An update: node n/2 sets its key; until every other node has the
    // new value (its event log says when the key changed; the value is
    // checked with GET /kv/<node>/<key> after).
    let writer = n / 2;
    let value = update_value(args.value_size, &setting.label(), trial);
    let start = clients.timed_ok(&[writer], "POST", &format!("/kv/{UPDATE_KEY}"), &value)?;
    let others: Vec<usize> = everyone.iter().copied().filter(|&i| i != writer).collect();
    let writer_name = addrs[writer].to_string();
    let (update_ms, cost) = wait_events(
        clients,
        &mut views,
        others.clone(),
        start,
        args.timeout,
        "the update",
        |_, event| {
            event.kind == "changed"
                && event.node.as_deref() == Some(writer_name.as_str())
                && event.key.as_deref() == Some(UPDATE_KEY)
        },
    )?;
    polls.add(cost);
    let path = format!("/kv/{writer_name}/{UPDATE_KEY}");
    for (i, body) in clients.all_ok(&others, "GET", &path, b"")? {
        if body != value {
            return Err(format!("node {i} has another value of {UPDATE_KEY}").into());
        }
    }

    // Until nothing is left to gossip, so that the idle window is idle.
    let drained = wait_all(
        clients,
        everyone.clone(),
        Instant::now(),
        args.period * 20,
        "draining",
        |_| "/stats".into(),
        |_, status, body| {
            status == 200 && serde_json::from_slice::<StatsJson>(body).is_ok_and(|s| s.queued == 0)
        },
    )
    .is_ok();
    if !drained {
        warnings.push("updates still queued after 20 periods: the idle window is not idle".into());
    }

    // (d) The windows: nobody polls.
    let window = args.period * args.window;
    let before = Snapshot::take(clients, &cluster, &everyone, ksoftirqd, true)?;
    std::thread::sleep(window);
    let after = Snapshot::take(clients, &cluster, &everyone, ksoftirqd, false)?;
    let idle = before.window(&after);

    let before = Snapshot::take(clients, &cluster, &everyone, ksoftirqd, true)?;
    let writes = args.window * args.load;
    for k in 0..writes {
        let at = before.at + args.period * k / args.load;
        std::thread::sleep(at.saturating_duration_since(Instant::now()));
        let node = (k as usize + trial) % n;
        let value = update_value(LOAD_VALUE, "load", k as usize);
        clients.ok(node, "POST", &format!("/kv/{LOAD_KEY}"), &value)?;
    }
    std::thread::sleep((before.at + window).saturating_duration_since(Instant::now()));
    let after = Snapshot::take(clients, &cluster, &everyone, ksoftirqd, false)?;
    let busy = before.window(&after);

    // (c) Failure detection: SIGKILL the last node; until no live node
    // lists it (its event log says when it declared it failed).
    let victim = n - 1;
    let live: Vec<usize> = (0..n - 1).collect();
    let victim_name = addrs[victim].to_string();
    let start = monotonic_ns();
    cluster.kill(victim);
    let (detect_ms, cost) = wait_events(
        clients,
        &mut views,
        live.clone(),
        start,
        args.timeout,
        "failure detection",
        |_, event| {
            matches!(event.kind.as_str(), "failed" | "left")
                && event.node.as_deref() == Some(victim_name.as_str())
        },
    )?;
    polls.add(cost);
    cluster.check_alive()?;
    let mut false_removals = 0;
    for (i, body) in clients.all_ok(&live, "GET", "/members", b"")? {
        let members: MembersJson = serde_json::from_slice(&body)?;
        if members.members.contains(&victim_name) {
            return Err(format!("node {i} still lists the killed node after its event").into());
        }
        false_removals += live
            .iter()
            .filter(|&&j| !members.members.contains(&addrs[j].to_string()))
            .count();
    }
    if false_removals > 0 {
        warnings.push(format!(
            "{false_removals} live members missing from live nodes' lists"
        ));
    }

    // The loss check: every live node stops sending; what each says it
    // sent to each other against what that one says it got from it.
    clients.all_ok(&live, "POST", "/stop", b"")?;
    std::thread::sleep(Duration::from_millis(100));
    let mut traffic: HashMap<usize, TrafficJson> = HashMap::new();
    for (i, body) in clients.all_ok(&live, "GET", "/traffic", b"")? {
        traffic.insert(i, serde_json::from_slice(&body)?);
    }
    let (sent, received, lost, extra) = compare_traffic(&live, addrs, &traffic);
    let neigh_after = neigh_stats()?;
    let link_drops = tb
        .drops_past_sender()?
        .iter()
        .sum::<u64>()
        .saturating_sub(drops_before);
    drop(cluster);

    let table_fulls = neigh_after
        .table_fulls
        .saturating_sub(neigh_before.table_fulls);
    if table_fulls > 0 {
        return Err(format!(
            "the kernel's neighbour table overflowed {table_fulls} times during this trial \
             ({ARP_STATS} table_fulls; \"neighbor table overflow\" in the kernel log): the \
             nodes' sends were dropped while their counters said sent ({lost} of {sent} \
             datagrams lost). {} nodes need {} entries, net.ipv4.neigh.default.gc_thresh3 is \
             {}: use --neighbours static (permanent entries, the default) or --neighbours arp \
             (raises the thresholds for the run), or raise gc_thresh1/2/3 yourself",
            n,
            entries_needed(n),
            read_thresholds().map_or(0, |t| t[2])
        )
        .into());
    }
    if lost > 0 || extra > 0 || link_drops > 0 {
        warnings.push(format!(
            "{lost} of {sent} datagrams lost between live nodes, {extra} received twice, \
             {link_drops} dropped on the links or at full sockets (expected 0 on veth)"
        ));
    }
    if setting.mode == BroadcastMode::Kernel && busy.kernel_share() < 99.0 {
        warnings.push(format!(
            "only {:.1} % of the copies were cloned in the kernel",
            busy.kernel_share()
        ));
    }
    Ok(Sample {
        mode: mode_name(setting.mode),
        fan_out: setting.fan_out,
        recv: match setting.recv {
            RecvArg::Batched => "batched",
            RecvArg::Plain => "plain",
        },
        trial: trial + 1,
        setup_ms,
        converge_ms,
        update_ms,
        detect_ms,
        polls,
        drained,
        false_removals,
        idle,
        busy,
        sent,
        received,
        lost,
        extra,
        link_drops,
        table_fulls,
        neighbour_entries: neigh_after.entries,
        warnings,
    })
}

/// Per pair of live nodes (i, j): what i says it sent to j against what j
/// says it got from i. Returns (sent, received, lost, extra), summed.
fn compare_traffic(
    live: &[usize],
    addrs: &[SocketAddrV4],
    traffic: &HashMap<usize, TrafficJson>,
) -> (u64, u64, u64, u64) {
    let counts = |i: usize| -> HashMap<&str, (u64, u64)> {
        traffic
            .get(&i)
            .map(|t| {
                t.peers
                    .iter()
                    .map(|p| (p.node.as_str(), (p.sent, p.received)))
                    .collect()
            })
            .unwrap_or_default()
    };
    let names: Vec<String> = addrs.iter().map(ToString::to_string).collect();
    let all: HashMap<usize, HashMap<&str, (u64, u64)>> =
        live.iter().map(|&i| (i, counts(i))).collect();
    let (mut sent, mut received, mut lost, mut extra) = (0, 0, 0, 0);
    for &i in live {
        for &j in live {
            if i == j {
                continue;
            }
            let s = all[&i].get(names[j].as_str()).map_or(0, |c| c.0);
            let r = all[&j].get(names[i].as_str()).map_or(0, |c| c.1);
            sent += s;
            received += r;
            lost += s.saturating_sub(r);
            extra += r.saturating_sub(s);
        }
    }
    (sent, received, lost, extra)
}

// ---- the tables ------------------------------------------------------------

/// How a figure is printed.
#[derive(Clone, Copy)]
enum Unit {
    /// Milliseconds, with the periods they make.
    Ms,
    /// A number.
    Number,
}

/// A row: its label, its unit, and its value in a sample.
struct Figure {
    label: String,
    unit: Unit,
    value: Box<dyn Fn(&Sample) -> f64>,
}

fn figure(
    label: impl Into<String>,
    unit: Unit,
    value: impl Fn(&Sample) -> f64 + 'static,
) -> Figure {
    Figure {
        label: label.into(),
        unit,
        value: Box::new(value),
    }
}

/// The rows of the tables (None: a heading).
fn figures(args: &DemoArgs) -> Vec<Option<Figure>> {
    let n = args.nodes;
    let p = args.period;
    let w = args.window;
    let per = move |w: fn(&Sample) -> &Window, f: fn(&NodeWindow) -> u64| {
        move |s: &Sample| w(s).per_node_period(p, f)
    };
    fn idle(s: &Sample) -> &Window {
        &s.idle
    }
    fn busy(s: &Sample) -> &Window {
        &s.busy
    }
    let heading = |text: String| Some(figure(text, Unit::Number, |_| f64::NAN));
    vec![
        heading("times: ms (periods)".into()),
        Some(figure(
            format!("  convergence, all {n} list all {n}"),
            Unit::Ms,
            |s| max(&s.converge_ms),
        )),
        Some(figure(
            format!("  {} B update at all {}", args.value_size, n - 1),
            Unit::Ms,
            |s| max(&s.update_ms),
        )),
        Some(figure(
            format!("  failure detected by all {}", n - 1),
            Unit::Ms,
            |s| max(&s.detect_ms),
        )),
        heading(format!("idle window ({w} periods), per node")),
        Some(figure("  CPU, % of one CPU", Unit::Number, |s| {
            s.idle.cpu_percent()
        })),
        Some(figure(
            "  datagrams sent per period",
            Unit::Number,
            per(idle, |n| n.datagrams_out),
        )),
        Some(figure(
            "  datagrams received per period",
            Unit::Number,
            per(idle, |n| n.datagrams_in),
        )),
        Some(figure(
            "  bytes sent per period",
            Unit::Number,
            per(idle, |n| n.bytes_out),
        )),
        heading(format!(
            "busy window ({w} periods, {} write{} per period), per node",
            args.load,
            if args.load == 1 { "" } else { "s" }
        )),
        Some(figure("  CPU, % of one CPU", Unit::Number, |s| {
            s.busy.cpu_percent()
        })),
        Some(figure("  system share of that CPU, %", Unit::Number, |s| {
            s.busy.system_share()
        })),
        Some(figure(
            "  CPU per datagram sent or received, µs",
            Unit::Number,
            |s| s.busy.cpu_per_datagram(),
        )),
        Some(figure(
            "  send calls (broadcasts) per period",
            Unit::Number,
            per(busy, |n| n.broadcasts),
        )),
        Some(figure(
            "  datagrams sent per period",
            Unit::Number,
            per(busy, |n| n.datagrams_out),
        )),
        Some(figure(
            "  eth0 packets sent per period",
            Unit::Number,
            per(busy, |n| n.eth0_tx_packets),
        )),
        Some(figure(
            "  bytes sent per period",
            Unit::Number,
            per(busy, |n| n.bytes_out),
        )),
        Some(figure(
            "  datagrams received per period",
            Unit::Number,
            per(busy, |n| n.datagrams_in),
        )),
        Some(figure(
            "  receive system calls per datagram",
            Unit::Number,
            |s| s.busy.recv_calls_per_datagram(),
        )),
        Some(figure(
            "  copies cloned in the kernel, %",
            Unit::Number,
            |s| s.busy.kernel_share(),
        )),
        Some(figure(
            "  ksoftirqd CPU (machine), % of one CPU",
            Unit::Number,
            |s| s.busy.ksoftirqd_percent(),
        )),
        Some(figure(
            "  everything else on the machine, % of one CPU",
            Unit::Number,
            |s| s.busy.others_percent(),
        )),
        heading("checks, whole trial".into()),
        Some(figure(
            "  datagrams lost between live nodes",
            Unit::Number,
            |s| s.lost as f64,
        )),
        Some(figure("  neighbour-table overflows", Unit::Number, |s| {
            s.table_fulls as f64
        })),
    ]
}

/// Median, minimum and maximum.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Spread {
    median: f64,
    min: f64,
    max: f64,
}

fn spread(values: &[f64]) -> Option<Spread> {
    let mut values: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if values.is_empty() {
        return None;
    }
    let median = median(&mut values);
    Some(Spread {
        median,
        min: values[0],
        max: values[values.len() - 1],
    })
}

/// A number with as many decimals as its size deserves.
fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A cell: the median, the periods it makes for a time, the range.
fn cell(s: Option<Spread>, unit: Unit, period: Duration) -> String {
    let Some(s) = s else {
        return "-".into();
    };
    let range = format!("[{}-{}]", number(s.min), number(s.max));
    match unit {
        Unit::Ms => format!(
            "{} ({:.1} p) {range}",
            number(s.median),
            s.median / (period.as_secs_f64() * 1e3)
        ),
        Unit::Number => format!("{} {range}", number(s.median)),
    }
}

fn ratio(a: Option<Spread>, b: Option<Spread>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.median != 0.0 => format!("{:.2}", a.median / b.median),
        _ => "-".into(),
    }
}

/// One table: `columns` (label, samples), a ratio of the first two.
fn print_table(args: &DemoArgs, title: &str, columns: &[(String, Vec<&Sample>)]) {
    const LABEL: usize = 44;
    const CELL: usize = 27;
    println!("\n=== {title} ===");
    print!("{:<LABEL$}", "median [min-max] over trials");
    for (label, _) in columns {
        print!("{label:>CELL$}");
    }
    let ratio_label = (columns.len() >= 2).then(|| format!("{}/{}", columns[0].0, columns[1].0));
    if let Some(label) = &ratio_label {
        print!("{label:>14}");
    }
    println!();
    for row in figures(args).into_iter().flatten() {
        let spreads: Vec<Option<Spread>> = columns
            .iter()
            .map(|(_, samples)| spread(&samples.iter().map(|s| (row.value)(s)).collect::<Vec<_>>()))
            .collect();
        if spreads.iter().all(Option::is_none) {
            println!("{}", row.label);
            continue;
        }
        print!("{:<LABEL$}", row.label);
        for s in &spreads {
            print!("{:>CELL$}", cell(*s, row.unit, args.period));
        }
        if ratio_label.is_some() {
            print!("{:>14}", ratio(spreads[0], spreads[1]));
        }
        println!();
    }
}

fn print_tables(args: &DemoArgs, settings: &[Setting], samples: &[Sample]) {
    let of = |setting: &Setting| -> Vec<&Sample> {
        samples
            .iter()
            .filter(|s| {
                s.mode == mode_name(setting.mode)
                    && s.fan_out == setting.fan_out
                    && (s.recv == "plain") == (setting.recv == RecvArg::Plain)
            })
            .collect()
    };
    for &fan_out in &args.fan_outs {
        let columns: Vec<(String, Vec<&Sample>)> = settings
            .iter()
            .filter(|s| s.fan_out == fan_out && s.recv == RecvArg::Batched)
            .map(|s| (mode_name(s.mode).to_string(), of(s)))
            .collect();
        print_table(
            args,
            &format!(
                "fan-out {fan_out}: {} nodes, period {} ms, {} trials",
                args.nodes,
                args.period.as_millis(),
                args.trials
            ),
            &columns,
        );
    }
    if let Some(plain) = settings.iter().find(|s| s.recv == RecvArg::Plain) {
        let batched = Setting {
            recv: RecvArg::Batched,
            ..*plain
        };
        print_table(
            args,
            &format!(
                "receive path: {} mode, fan-out {}: recvmmsg (batched) against one recvfrom \
                 per datagram (plain)",
                mode_name(plain.mode),
                plain.fan_out
            ),
            &[
                ("batched".to_string(), of(&batched)),
                ("plain".to_string(), of(plain)),
            ],
        );
    }
}

fn print_legend(args: &DemoArgs) {
    let p = args.period.as_millis();
    println!(
        "\nWhat the figures mean and how they are measured (every cell: the median over the \
         trials, then [min-max]; the last column divides the first column's median by the \
         second's; every sample is in --json):\n\
         - A trial: {n} fresh node processes, one per network namespace, joined through \
         nodes 0 and 1 (seeds). The demo talks to each node's HTTP control interface \
         (127.0.0.1 in its namespace). Times come from the nodes' event logs (GET /events: \
         when a node's core declared a member joined or failed, or saw a key change, on \
         CLOCK_MONOTONIC, which every namespace shares), against the demo's own reading of \
         that clock at the action; the demo reads the logs of the nodes not there yet every \
         {EVENT_POLL:?}, which costs little and does not limit the precision (about a \
         millisecond: when the node's receive loop handled the datagram). After each \
         phase every node's GET /members (or GET /kv) is checked against its events.\n\
         - Times are in ms and, in parentheses, in protocol periods (p = {p} ms: one probe \
         and one anti-entropy exchange per period, a gossip round every fifth).\n\
         - Convergence: from the last node's start (when the demo sent the last POST /start; \
         they go out in parallel) until the last node lists all {n} (alive or suspect \
         members).\n\
         - Update: node {w} sets its key `{UPDATE_KEY}` to {v} bytes (POST /kv/...); until \
         the last other node has it.\n\
         - Failure detection (after the windows): node {last} is killed (SIGKILL); until the \
         last live node has declared it failed (SWIM: a probe unanswered, indirect probes, \
         the suspicion timeout, the death gossiped).\n\
         - Windows: {win} periods each in which the demo asks nothing; idle: after every \
         update has been gossiped (probes, acks, anti-entropy only); busy: one node after \
         the other sets its key `{LOAD_KEY}` to a new {LOAD_VALUE}-byte value, {load} per \
         period cluster-wide, so that every node gossips every round (each update goes \
         about 4 log10(N) times to --fan-out members, in one broadcast).\n\
         - CPU: per node, the time all its threads were on a CPU over the window \
         (/proc/<pid>/task/*/schedstat), in % of one CPU, the mean over the nodes; system \
         share from utime/stime (/proc/<pid>/stat, in clock ticks). The kernel's work for a \
         send (the clones, the veth hop, the bridge and the receiver's stack, run in \
         softirq) is charged to the thread that sends when it runs there, else to \
         ksoftirqd (its row: machine-wide, not per node). Everything else: the machine's \
         busy time (/proc/stat) less the nodes' and ksoftirqd's: other processes, which \
         compete with the nodes for the CPUs.\n\
         - Per period: the nodes' own counters (GET /stats: datagrams and bytes sent, one \
         per destination; received; send calls) and their eth0 counters \
         (/proc/<pid>/net/dev: every clone is a packet), summed over the nodes, divided by \
         {n} and by the window in periods. Receive system calls per datagram: recvmmsg or \
         recvfrom calls, those that found nothing included, over datagrams received. \
         Copies cloned in the kernel: the broadcaster's kernel copies over all copies \
         (0 % in user mode, which sends with sendmmsg).\n\
         - Checks: at the end of a trial every live node stops sending; per pair of live \
         nodes, what one counted sent to the other (GET /traffic) against what the other \
         counted received from it: lost is the sum of the shortfalls (expected 0 on veth). \
         Neighbour-table overflows: {ARP_STATS} table_fulls before and after the trial \
         (the table is shared by all namespaces; an overflow stops the demo with an error).",
        n = args.nodes,
        w = args.nodes / 2,
        v = args.value_size,
        last = args.nodes - 1,
        win = args.window,
        load = args.load,
    );
}

// ---- the machine and the report --------------------------------------------

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Links of this network namespace (the testbed makes none here).
fn root_links() -> usize {
    std::fs::read_dir("/sys/class/net").map_or(0, |d| d.count())
}

#[derive(Debug, Serialize)]
struct Report {
    settings: ReportSettings,
    machine: Machine,
    duration_s: f64,
    samples: Vec<Sample>,
}

#[derive(Debug, Serialize)]
struct ReportSettings {
    nodes: usize,
    trials: usize,
    fan_outs: Vec<usize>,
    modes: Vec<&'static str>,
    period_ms: f64,
    window_periods: u32,
    load_per_period: u32,
    value_size: usize,
    neighbours: Neighbours,
    recv_compare: bool,
    poll_ms: f64,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpus: usize,
    kernel: String,
    debug_build: bool,
    loadavg_start: String,
    loadavg_end: String,
}

impl Report {
    fn new(args: &DemoArgs) -> Report {
        Report {
            settings: ReportSettings {
                nodes: args.nodes,
                trials: args.trials,
                fan_outs: args.fan_outs.clone(),
                modes: args.modes.iter().map(|m| mode_name(*m)).collect(),
                period_ms: ms(args.period),
                window_periods: args.window,
                load_per_period: args.load,
                value_size: args.value_size,
                neighbours: args.neighbours,
                recv_compare: args.recv_compare,
                poll_ms: ms(POLL),
            },
            machine: Machine {
                cpus: cpus(),
                kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                    .map(|s| s.trim().to_string())
                    .unwrap_or_default(),
                debug_build: cfg!(debug_assertions),
                loadavg_start: loadavg(),
                loadavg_end: String::new(),
            },
            duration_s: 0.0,
            samples: Vec::new(),
        }
    }
}

fn write_json(path: &std::path::Path, report: &Report) -> Result<(), BoxError> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text).map_err(|e| format!("writing {}: {e}", path.display()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stats_json() {
        let mut json = serde_json::json!({
            "id": "10.0.0.1:7946",
            "mode": "kernel",
            "recv": "batched",
            "joined": true,
            "left": false,
            "paused": false,
            "members": 16,
            "version": "3@10.0.0.1:7946",
        });
        // The core's counters (flattened), then the shell's.
        let core = serde_json::to_value(crate::protocol::Stats::default()).unwrap();
        let core: Vec<String> = core.as_object().unwrap().keys().cloned().collect();
        assert!(core.iter().any(|c| c == "datagrams_out"));
        let shell = [
            "incarnation",
            "queued",
            "max_value",
            "dropped",
            "broadcasts",
            "kernel_fan_outs",
            "kernel_copies",
            "copies_failed",
            "user_space_copies",
            "oversize_sends",
            "send_failures",
            "recv_batches",
            "recv_datagrams",
            "recv_calls",
        ];
        for counter in core.iter().map(String::as_str).chain(shell) {
            json[counter] = 7.into();
        }
        let stats: StatsJson = serde_json::from_str(&json.to_string()).unwrap();
        assert_eq!(stats.members, 16);
        assert_eq!(stats.mode, "kernel");
        assert_eq!(stats.recv, "batched");
        assert_eq!(stats.version, "3@10.0.0.1:7946");
        assert_eq!(stats.user_space_copies, 7);
        assert_eq!(stats.protocol.datagrams_out, 7);
        assert_eq!(stats.recv_batches, 7);
        assert_eq!(stats.recv_calls, 7);
        // And back, field for field.
        assert_eq!(serde_json::to_value(&stats).unwrap(), json);
        json.as_object_mut().unwrap().remove("members");
        assert!(serde_json::from_value::<StatsJson>(json).is_err());
    }

    #[test]
    fn reads_the_neighbour_table_stats() {
        let text = "entries  allocs   destroys hash_grows lookups  hits     res_failed \
                    rcv_probes_mcast rcv_probes_ucast periodic_gc_runs forced_gc_runs \
                    unresolved_discards table_fulls\n\
                    00000fc0 0000621e 00005c8a 00000000   0000cd78 00000924 00000007   \
                    00000000         00000000         00000269         00000000       \
                    0002c68a            00000003\n\
                    00000fc0 00004e76 00005408 00000007   0000b57f 0000093f 00000005   \
                    00000000         00000000         00000000         00000000       \
                    0001d798            0000000a\n";
        assert_eq!(
            parse_neigh_stats(text),
            Some(NeighStats {
                entries: 0xfc0,
                table_fulls: 13
            })
        );
        assert_eq!(parse_neigh_stats("entries table_fulls\n"), None);
        assert_eq!(parse_neigh_stats("entries other\n1 2\n"), None);
        assert_eq!(parse_neigh_stats("entries table_fulls\nzz 1\n"), None);
        assert_eq!(parse_neigh_stats(""), None);
    }

    #[test]
    fn thresholds_are_raised_never_lowered() {
        assert_eq!(entries_needed(48), 2256);
        assert_eq!(entries_needed(64), 4032);
        assert_eq!(
            raised_thresholds([128, 512, 1024], 4032),
            [4032, 8064, 8064]
        );
        assert_eq!(
            raised_thresholds([128, 512, 100_000], 4032),
            [4032, 8064, 100_000]
        );
        assert_eq!(raised_thresholds([10_000; 3], 4032), [10_000; 3]);
    }

    #[test]
    fn reads_proc_counters() {
        let stat = "4242 (gossip (x) y) S 1 2 3 0 -1 4194560 100 0 0 0 17 29 0 0 20 0 5 0";
        assert_eq!(parse_stat_ticks(stat), Some((17, 29)));
        assert_eq!(parse_stat_ticks("4242 (gossip) S 1"), None);
        // The header, then: bytes packets errs drop fifo frame compressed
        // multicast received, then the same 8 transmitted.
        let dev = "Inter-| Receive | Transmit\n face |bytes packets ...|bytes packets ...\n\
                   lo: 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n\
                   eth0: 1000 10 0 0 0 0 0 0 5000 42 0 0 0 0 0 0\n";
        assert_eq!(parse_dev_tx(dev, "eth0"), Some((42, 5000)));
        assert_eq!(parse_dev_tx(dev, "eth1"), None);
    }

    #[test]
    fn reads_the_machine_busy_time() {
        let stat = "cpu  100 1 20 5000 7 0 3 2 0 0\ncpu0 50 0 10 2500 3 0 1 1 0 0\n";
        assert_eq!(parse_machine_busy_ms(stat, 100.0), Some(1260.0));
        assert_eq!(parse_machine_busy_ms("cpu0 1 2 3 4 5 6 7 8\n", 100.0), None);
        assert_eq!(parse_machine_busy_ms("cpu  1 2 3\n", 100.0), None);
    }

    #[test]
    fn spreads_and_cells() {
        assert_eq!(
            spread(&[3.0, 1.0, 2.0, f64::NAN]),
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(spread(&[4.0, 1.0]).map(|s| s.median), Some(2.5));
        assert_eq!(spread(&[f64::NAN]), None);
        let s = spread(&[800.0, 900.0, 1000.0]);
        let period = Duration::from_millis(200);
        assert_eq!(cell(s, Unit::Ms, period), "900 (4.5 p) [800-1000]");
        assert_eq!(
            cell(spread(&[0.5, 2.25]), Unit::Number, period),
            "1.38 [0.500-2.25]"
        );
        assert_eq!(cell(None, Unit::Number, period), "-");
        assert_eq!(ratio(spread(&[1.0]), spread(&[4.0])), "0.25");
        assert_eq!(ratio(spread(&[1.0]), spread(&[0.0])), "-");
    }

    #[test]
    fn update_values_have_their_size_and_differ_per_trial() {
        let a = update_value(1024, "kernel F=3", 0);
        let b = update_value(1024, "kernel F=3", 1);
        assert_eq!((a.len(), b.len()), (1024, 1024));
        assert_ne!(a, b);
        assert_eq!(update_value(4, "kernel F=3", 0), b"kern");
    }

    #[test]
    fn traffic_pairs_count_shortfalls() {
        let addrs: Vec<SocketAddrV4> = (1..=3)
            .map(|i| SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 7946))
            .collect();
        let peer = |i: usize, sent, received| control::PeerTrafficJson {
            node: addrs[i].to_string(),
            sent,
            received,
        };
        let mut traffic = HashMap::new();
        // 0 sent 10 to 1, which got 9; 1 sent 5 to 0, which got 5; the
        // killed node 2's counts are left out.
        traffic.insert(
            0,
            TrafficJson {
                peers: vec![peer(1, 10, 5), peer(2, 7, 3)],
            },
        );
        traffic.insert(
            1,
            TrafficJson {
                peers: vec![peer(0, 5, 9)],
            },
        );
        assert_eq!(compare_traffic(&[0, 1], &addrs, &traffic), (15, 14, 1, 0));
    }

    #[test]
    fn settings_interleave_and_add_the_plain_receive() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            demo: DemoArgs,
        }
        let args = Cli::try_parse_from(["demo"]).unwrap().demo;
        assert_eq!((args.nodes, args.trials, args.window), (64, 5, 25));
        assert_eq!(args.fan_outs, [3, 8]);
        assert_eq!(args.period, Duration::from_millis(200));
        assert_eq!(args.neighbours, Neighbours::Static);
        let labels: Vec<String> = settings(&args).iter().map(Setting::label).collect();
        assert_eq!(labels, ["kernel F=3", "user F=3", "kernel F=8", "user F=8"]);
        let args = Cli::try_parse_from(["demo", "--recv-compare", "--fan-outs", "8,3"])
            .unwrap()
            .demo;
        assert_eq!(
            settings(&args).last().map(Setting::label).as_deref(),
            Some("kernel F=8, plain recv")
        );
        assert!(Cli::try_parse_from(["demo", "--nodes", "251"]).is_err());
        assert!(Cli::try_parse_from(["demo", "--fan-outs", "0"]).is_err());
        assert!(Cli::try_parse_from(["demo", "--neighbours", "arp-unraised"]).is_ok());
    }
}
