//! `paxos cluster`: a whole cluster on this machine for measurements. Each
//! replica is a child process (this program's `replica` subcommand) in its
//! own network namespace of an elec-testbed behind a bridge; the clients run
//! on threads in the testbed's sender namespace.
//!
//! Optional faults: a follower killed (SIGKILL) after a number of measured
//! requests, and random loss on every bridge port (an nftables
//! `numgen random` rule in the hub namespace's bridge forward hook).
//!
//! CPU: the leader's on-CPU time from `/proc/<pid>/schedstat` (nanoseconds;
//! this kernel has no IRQ time accounting, so softirq work done in the
//! leader's context, such as passing its own sends through the veth and
//! the bridge, counts too), and the whole machine's busy time from
//! `/proc/stat`, both over the measured phase only.

use std::fs;
use std::io::Read;
use std::net::{SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use elec_testbed::{Testbed, TestbedConfig, IFACE, SENDER_ADDR};
use serde::Serialize;

use crate::accel::Accel;
use crate::config::Config;
use crate::history;
use crate::shell::{run_clients, ClientOptions, ClientReport, Phases, ReplicaJson};
use elec_broadcast::Ingress;

/// Pids of live replica processes, for the Ctrl-C handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The configuration file of this process's cluster.
fn config_path() -> PathBuf {
    std::env::temp_dir().join(format!("elec-paxos-{}.conf", std::process::id()))
}

/// The nftables rules file of this process's cluster.
fn loss_rules_path() -> PathBuf {
    std::env::temp_dir().join(format!("elec-paxos-loss-{}.nft", std::process::id()))
}

/// Kills every replica process, deletes the testbeds and the temporary
/// files; for the Ctrl-C handler (which exits without running destructors).
pub fn emergency_cleanup() {
    let pids = CHILDREN.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for pid in pids {
        signal(pid, libc::SIGKILL);
    }
    elec_testbed::cleanup_all();
    let _ = fs::remove_file(config_path());
    let _ = fs::remove_file(loss_rules_path());
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; `pid` is one of
    // our own children, not yet reaped (its id cannot have been reused).
    unsafe { libc::kill(pid, sig) };
}

/// Settings of a cluster run.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// Replicas, 2f + 1.
    pub replicas: usize,
    /// The in-kernel mechanisms of every replica.
    pub accel: Accel,
    /// The hook of their quorum collectors.
    pub quorum_ingress: Ingress,
    /// The workload (its `config` and `bind` are filled in here).
    pub client: ClientOptions,
    /// Kill the last follower after this many measured requests.
    pub kill_follower_after: Option<usize>,
    /// Percentage of frames dropped on the bridge (0: none).
    pub loss_percent: u32,
    /// UDP port of the replicas.
    pub port: u16,
    /// Check the history for linearizability.
    pub check: bool,
    /// Pin the leader to this CPU and steer the followers' receive
    /// processing (RPS) to the other CPUs, as if each ran on its own
    /// machine (see docs/paxos.md); `None`: leave placement to the kernel.
    pub leader_cpu: Option<usize>,
}

/// The replica processes; killed and reaped on drop.
struct Replicas {
    children: Vec<Option<Child>>,
}

impl Replicas {
    fn pid(&self, i: usize) -> Option<u32> {
        self.children.get(i)?.as_ref().map(Child::id)
    }

    /// Asks every live replica to stop (SIGTERM), collects the JSON line
    /// each prints, and reaps them.
    fn stop(&mut self) -> Vec<Option<ReplicaJson>> {
        for child in self.children.iter().flatten() {
            signal(child.id(), libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut lines = Vec::new();
        for slot in &mut self.children {
            let Some(mut child) = slot.take() else {
                lines.push(None);
                continue;
            };
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            let _ = child.wait();
            forget_pid(child.id());
            let mut out = String::new();
            if let Some(mut stdout) = child.stdout.take() {
                let _ = stdout.read_to_string(&mut out);
            }
            lines.push(
                out.lines()
                    .rev()
                    .find(|l| l.starts_with('{'))
                    .and_then(|l| serde_json::from_str(l).ok()),
            );
        }
        lines
    }
}

fn forget_pid(pid: u32) {
    CHILDREN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|&p| p != pid);
}

impl Drop for Replicas {
    fn drop(&mut self) {
        for mut child in self.children.drain(..).flatten() {
            let _ = child.kill();
            let _ = child.wait();
            forget_pid(child.id());
        }
    }
}

/// A file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// On-CPU nanoseconds of a process's main thread.
fn task_cpu_ns(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/schedstat")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// Busy and total jiffies of the whole machine.
fn machine_cpu() -> Option<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = text
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = fields.get(3)? + fields.get(4)?;
    let total: u64 = fields.iter().take(8).sum();
    Some((total - idle, total))
}

#[derive(Clone, Copy, Default)]
struct CpuSnapshot {
    leader_ns: u64,
    machine_busy: u64,
    machine_total: u64,
}

fn snapshot(leader: Option<u32>) -> CpuSnapshot {
    let (machine_busy, machine_total) = machine_cpu().unwrap_or_default();
    CpuSnapshot {
        leader_ns: leader.and_then(task_cpu_ns).unwrap_or_default(),
        machine_busy,
        machine_total,
    }
}

struct ClusterPhases<'a> {
    leader: Option<u32>,
    start: Mutex<CpuSnapshot>,
    kill_after: Option<u64>,
    victim: Mutex<Option<&'a mut Option<Child>>>,
    killed: AtomicBool,
}

impl Phases for ClusterPhases<'_> {
    fn measurement_starts(&self) {
        *self.start.lock().unwrap_or_else(|e| e.into_inner()) = snapshot(self.leader);
    }

    fn progress(&self, done: u64) {
        if Some(done) != self.kill_after {
            return;
        }
        let mut victim = self.victim.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = victim.take() {
            if let Some(mut child) = slot.take() {
                let _ = child.kill();
                let _ = child.wait();
                forget_pid(child.id());
                self.killed.store(true, Ordering::Relaxed);
            }
        }
    }
}

/// Whether a UDP socket is bound to `addr` in network namespace `ns`
/// (read from the namespace's /proc/net/udp; binding a probe socket
/// instead would race with the replica's own bind).
pub fn udp_bound_in(ns: &str, addr: SocketAddrV4) -> bool {
    let table = elec_testbed::in_namespace(ns, || {
        fs::read_to_string("/proc/thread-self/net/udp").unwrap_or_default()
    })
    .unwrap_or_default();
    // local_address is the IPv4 address as a native-endian u32, then the port.
    let local = format!(
        "{:08X}:{:04X}",
        u32::from_ne_bytes(addr.ip().octets()),
        addr.port()
    );
    table
        .lines()
        .skip(1)
        .any(|line| line.split_whitespace().nth(1) == Some(local.as_str()))
}

/// Waits until every replica has bound its address, or one of them exits.
fn wait_until_bound(tb: &Testbed, config: &Config, replicas: &mut Replicas) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for (i, addr) in config.replicas.iter().enumerate() {
        let SocketAddr::V4(addr) = *addr else {
            return Err(format!("replica address {addr} is not IPv4"));
        };
        while !udp_bound_in(tb.receiver_ns(i), addr) {
            if let Some(Some(child)) = replicas.children.get_mut(i) {
                if let Ok(Some(status)) = child.try_wait() {
                    let mut err = String::new();
                    if let Some(mut stderr) = child.stderr.take() {
                        let _ = stderr.read_to_string(&mut err);
                    }
                    return Err(format!("replica {i} exited ({status}): {}", err.trim()));
                }
            }
            if Instant::now() > deadline {
                return Err(format!("replica {i} did not bind {addr} within 20 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// Gives every replica namespace permanent neighbour entries for the other
/// replicas and the client, as the testbed does for its sender namespace:
/// with frames dropped on the bridge, a lost ARP request would otherwise
/// silence a peer for the 1 s ARP retry and trigger view changes.
pub fn prefill_neighbours(tb: &Testbed) -> Result<(), String> {
    let n = tb.num_receivers();
    let mut peers: Vec<(std::net::Ipv4Addr, [u8; 6])> = (0..n)
        .map(|i| (tb.receiver_addrs(i)[0], tb.receiver_mac(i)))
        .collect();
    peers.push((tb.sender_addr(), tb.sender_mac()));
    for i in 0..n {
        let own = tb.receiver_addrs(i)[0];
        for (addr, mac) in peers.iter().filter(|(a, _)| *a != own) {
            let out = elec_testbed::output_in(
                tb.receiver_ns(i),
                Command::new("ip").args([
                    "neigh",
                    "replace",
                    &addr.to_string(),
                    "lladdr",
                    &elec_testbed::format_mac(mac),
                    "dev",
                    IFACE,
                    "nud",
                    "permanent",
                ]),
            )
            .map_err(|e| format!("running ip neigh: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "ip neigh replace {addr} in replica {i}'s namespace: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
    }
    Ok(())
}

/// Steers the receive processing of every follower's interface (RPS) to
/// every CPU but `leader_cpu`. On one host, a frame a veth sends is
/// received in the softirq of the CPU that sent it, so without this the
/// followers' whole receive path (and, with fast reply, their kernel acks)
/// runs on the leader's CPU, as it never would across machines.
fn steer_followers_off(tb: &Testbed, n: usize, leader_cpu: usize) -> Result<(), String> {
    let cpus = std::thread::available_parallelism().map_or(1, |c| c.get());
    if leader_cpu >= cpus || !(2..=32).contains(&cpus) {
        return Err(format!(
            "--leader-cpu {leader_cpu}: needs 2 to 32 CPUs and a CPU below {cpus}"
        ));
    }
    let mask = ((1u64 << cpus) - 1) & !(1u64 << leader_cpu);
    for i in 1..n {
        // `ip netns exec` remounts /sys for the namespace (setns alone does not).
        let out = Command::new("ip")
            .args(["netns", "exec", tb.receiver_ns(i), "sh", "-c"])
            .arg(format!(
                "echo {mask:x} > /sys/class/net/{IFACE}/queues/rx-0/rps_cpus"
            ))
            .output()
            .map_err(|e| format!("running ip netns exec: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "steering replica {i}'s receive processing: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    Ok(())
}

/// Pins every thread of process `pid` to `cpu`.
fn pin(pid: u32, cpu: usize) -> Result<(), String> {
    let out = Command::new("taskset")
        .args(["-a", "-c", "-p", &cpu.to_string(), &pid.to_string()])
        .output()
        .map_err(|e| format!("running taskset: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pinning the leader to CPU {cpu}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Drops `percent`% of the frames every bridge port forwards.
pub fn install_loss(tb: &Testbed, percent: u32) -> Result<(), String> {
    let rules = format!(
        "table bridge paxos_loss {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n    numgen random mod 100 < {percent} counter drop\n  }}\n}}\n"
    );
    let path = loss_rules_path();
    fs::write(&path, rules).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let _file = TempFile(path.clone());
    let out = elec_testbed::output_in(tb.hub_ns(), Command::new("nft").arg("-f").arg(&path))
        .map_err(|e| format!("running nft (is nftables installed?): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "nft could not install the loss rule: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Frames the loss rule dropped.
pub fn loss_drops(tb: &Testbed) -> Option<u64> {
    let out = elec_testbed::output_in(
        tb.hub_ns(),
        Command::new("nft").args(["list", "table", "bridge", "paxos_loss"]),
    )
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let after = text.split("packets ").nth(1)?;
    after.split_whitespace().next()?.parse().ok()
}

/// What `paxos cluster` prints: one line of JSON.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterJson {
    pub replicas: usize,
    /// `kernel` or `user`: how the broadcasts went.
    pub broadcast: &'static str,
    /// The in-kernel mechanisms: `none`, `all`, or a list.
    pub accel: String,
    /// The hook of the quorum collectors: `tc` or `xdp`.
    pub quorum_ingress: &'static str,
    pub loss_percent: u32,
    /// The CPU the leader was pinned to (`--leader-cpu`), or null.
    pub leader_cpu: Option<usize>,
    pub killed_follower: bool,
    pub threads: usize,
    pub requests: usize,
    #[serde(flatten)]
    pub figures: ClientFigures,
    pub max_us: u64,
    pub retries: u64,
    /// Two decimals.
    pub leader_cpu_us_per_request: f64,
    /// One decimal.
    pub leader_cpu_percent: f64,
    /// Two decimals.
    pub machine_cpu_us_per_request: f64,
    /// One decimal.
    pub machine_busy_percent: f64,
    /// Frames the loss rule dropped (null without `--loss`).
    pub frames_dropped: Option<u64>,
    /// The checker's verdict (null with `--no-check`).
    pub linearizable: Option<bool>,
    /// Operations in the history.
    pub history: usize,
    /// Datagrams the leader's user space received per committed operation
    /// (requests and acks; two decimals; null if the leader did not report).
    pub leader_datagrams_per_op: Option<f64>,
    /// Acks (`PrepareOk`s) the leader's user space received per committed
    /// operation: f without `quorum`, about 1 with it.
    pub leader_acks_per_op: Option<f64>,
    /// Each replica's report (null for one killed or silent).
    pub replica_stats: Vec<Option<ReplicaJson>>,
}

/// What a client run measured, as `paxos cluster` and `paxos client --json`
/// both print it.
#[derive(Clone, Debug, Serialize)]
pub struct ClientFigures {
    pub completed: usize,
    pub gave_up: usize,
    /// Seconds, to the millisecond.
    pub elapsed_s: f64,
    /// Requests per second, rounded.
    pub throughput: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
}

impl ClientFigures {
    pub fn of(report: &ClientReport) -> ClientFigures {
        ClientFigures {
            completed: report.completed,
            gave_up: report.gave_up,
            elapsed_s: round_to(report.elapsed.as_secs_f64(), 3),
            throughput: report.throughput().round() as u64,
            mean_us: report.mean_us().round() as u64,
            p50_us: report.percentile(0.50),
            p90_us: report.percentile(0.90),
            p95_us: report.percentile(0.95),
            p99_us: report.percentile(0.99),
        }
    }
}

/// `x` rounded to `decimals` decimal places.
pub fn round_to(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// Runs the cluster and the workload; returns what `paxos cluster` prints.
pub fn run_cluster(opts: &ClusterOptions) -> Result<ClusterJson, String> {
    let n = opts.replicas;
    if n < 3 || n % 2 == 0 || n > 253 {
        return Err(format!("--replicas must be odd, 3 to 253 (2f+1), got {n}"));
    }
    if opts
        .kill_follower_after
        .is_some_and(|k| k == 0 || k > opts.client.requests)
    {
        return Err("--kill-follower-after must be between 1 and -n".into());
    }
    let tb = Testbed::new(TestbedConfig {
        receivers: n,
        ..TestbedConfig::default()
    })
    .map_err(|e| format!("setting up the testbed: {e}"))?;
    let config = Config {
        f: (n - 1) / 2,
        replicas: (0..n)
            .map(|i| SocketAddr::new(tb.receiver_addrs(i)[0].into(), opts.port))
            .collect(),
    };
    prefill_neighbours(&tb)?;
    if let Some(cpu) = opts.leader_cpu {
        steer_followers_off(&tb, n, cpu)?;
    }
    let path = config_path();
    fs::write(&path, config.to_text()).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let _config_file = TempFile(path.clone());

    let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
    let mut replicas = Replicas {
        children: Vec::new(),
    };
    for i in 0..n {
        let mut cmd = Command::new(&exe);
        cmd.arg("replica")
            .arg("--config")
            .arg(&path)
            .args(["--index", &i.to_string()])
            .args(["--accel", &opts.accel.to_string()])
            .args([
                "--quorum-ingress",
                if opts.quorum_ingress == Ingress::Xdp {
                    "xdp"
                } else {
                    "tc"
                },
            ])
            .args(["--iface", IFACE, "--exit-with-parent", "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("PAXOS_DEBUG").is_some() {
                Stdio::inherit()
            } else {
                Stdio::piped()
            });
        let child = tb
            .spawn_in(tb.receiver_ns(i), &mut cmd)
            .map_err(|e| format!("starting replica {i}: {e}"))?;
        CHILDREN
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(child.id());
        if let (0, Some(cpu)) = (i, opts.leader_cpu) {
            pin(child.id(), cpu)?;
        }
        replicas.children.push(Some(child));
    }
    wait_until_bound(&tb, &config, &mut replicas)?;
    if opts.loss_percent > 0 {
        install_loss(&tb, opts.loss_percent)?;
    }

    let client = ClientOptions {
        config: config.clone(),
        bind: SocketAddrV4::new(SENDER_ADDR, 0),
        ..opts.client.clone()
    };
    let leader_pid = replicas.pid(0);
    let (report, end, killed) = {
        let victim_slot = replicas.children.last_mut();
        let phases = ClusterPhases {
            leader: leader_pid,
            start: Mutex::new(CpuSnapshot::default()),
            kill_after: opts.kill_follower_after.map(|k| k as u64),
            victim: Mutex::new(victim_slot),
            killed: AtomicBool::new(false),
        };
        let report = tb
            .in_sender(|| run_clients(&client, &phases))
            .map_err(|e| format!("entering the sender namespace: {e}"))?
            .map_err(|e| format!("running the clients: {e}"))?;
        let end = snapshot(leader_pid);
        let start = *phases.start.lock().unwrap_or_else(|e| e.into_inner());
        (report, (start, end), phases.killed.load(Ordering::Relaxed))
    };
    let dropped = if opts.loss_percent > 0 {
        loss_drops(&tb)
    } else {
        None
    };
    let stats = replicas.stop();
    let linearizable = if opts.check {
        match history::check(&report.history) {
            Ok(_) => Some(true),
            Err(e) => {
                eprintln!("{e}");
                Some(false)
            }
        }
    } else {
        None
    };
    Ok(summary(
        opts,
        &report,
        end,
        killed,
        dropped,
        linearizable,
        stats,
    ))
}

fn summary(
    opts: &ClusterOptions,
    report: &ClientReport,
    (start, end): (CpuSnapshot, CpuSnapshot),
    killed: bool,
    dropped: Option<u64>,
    linearizable: Option<bool>,
    replica_stats: Vec<Option<ReplicaJson>>,
) -> ClusterJson {
    let requests = report.completed.max(1) as f64;
    let leader = replica_stats.iter().flatten().find(|r| r.leader);
    let leader_us = end.leader_ns.saturating_sub(start.leader_ns) as f64 / 1e3;
    let jiffy_us = 1e6 / 100.0; // USER_HZ
    let busy = end.machine_busy.saturating_sub(start.machine_busy) as f64;
    let total = end.machine_total.saturating_sub(start.machine_total).max(1) as f64;
    let elapsed = report.elapsed.as_secs_f64().max(1e-9);
    ClusterJson {
        replicas: opts.replicas,
        broadcast: if opts.accel.broadcast {
            "kernel"
        } else {
            "user"
        },
        accel: opts.accel.to_string(),
        quorum_ingress: if opts.quorum_ingress == Ingress::Xdp {
            "xdp"
        } else {
            "tc"
        },
        loss_percent: opts.loss_percent,
        leader_cpu: opts.leader_cpu,
        killed_follower: killed,
        threads: opts.client.threads,
        requests: opts.client.requests,
        figures: ClientFigures::of(report),
        max_us: report.latencies_us.last().copied().unwrap_or(0),
        retries: report.retries,
        leader_cpu_us_per_request: round_to(leader_us / requests, 2),
        leader_cpu_percent: round_to(leader_us / 1e4 / elapsed, 1),
        machine_cpu_us_per_request: round_to(busy * jiffy_us / requests, 2),
        machine_busy_percent: round_to(100.0 * busy / total, 1),
        frames_dropped: dropped,
        linearizable,
        history: report.history.len(),
        leader_datagrams_per_op: leader.map(|r| {
            round_to(
                r.received_datagrams as f64 / r.commit_number.max(1) as f64,
                2,
            )
        }),
        leader_acks_per_op: leader
            .map(|r| round_to(r.received_acks as f64 / r.commit_number.max(1) as f64, 2)),
        replica_stats,
    }
}
