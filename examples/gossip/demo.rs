//! The local cluster demo: N node processes, each in its own network
//! namespace behind a bridge (elec-testbed), run first with the kernel
//! fan-out and then with user-space sends, measured side by side.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::builder::TypedValueParser as _;
use clap::{Args, ValueEnum};
use elec_testbed::{in_namespace, Testbed, TestbedConfig};

use crate::control::{self, StatsJson};
use crate::BroadcastMode;

const NODE_PORT: u16 = 7946;
const CONTROL_PORT: u16 = 8946;
const POLL: Duration = Duration::from_millis(20);

/// Options of `gossip demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Nodes, each in its own network namespace.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(3..=250).map(usize::from))]
    nodes: usize,
    /// Protocol period of the nodes (probes, anti-entropy; gossip rounds
    /// every fifth of it).
    #[arg(long, default_value = "200ms", value_parser = crate::parse_period)]
    period: Duration,
    /// Members each gossip round goes to, in one broadcast.
    #[arg(long, default_value_t = 3)]
    fan_out: usize,
    /// Quiet window over which CPU time and packets are measured.
    #[arg(long, default_value = "10s", value_parser = crate::parse_duration)]
    window: Duration,
    /// Size of the large update: it must fit one datagram beside its
    /// headers (the nodes' `max_value` in GET /stats, about 1300 bytes with
    /// the default 1400-byte packets).
    #[arg(long, default_value_t = 1024)]
    large: usize,
    /// Modes to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "kernel,user")]
    modes: Vec<BroadcastMode>,
}

/// Pids of the node processes alive, for the Ctrl-C handler.
static CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

fn children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    CHILDREN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A node process, killed when dropped.
struct NodeProcess {
    child: Child,
    ns: String,
    addr: SocketAddrV4,
}

impl NodeProcess {
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        children().retain(|&pid| pid != self.child.id());
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// What one mode measured.
#[derive(Debug, Default)]
struct Measured {
    mode: &'static str,
    members_converged: Duration,
    small_update: Duration,
    large_update: Duration,
    eviction: Duration,
    /// Over the quiet window, summed over all nodes:
    cpu_ns: u64,
    user_ticks: u64,
    system_ticks: u64,
    tx_packets: u64,
    tx_bytes: u64,
    datagrams_out: u64,
    broadcasts: u64,
    kernel_copies: u64,
    user_space_copies: u64,
    window: Duration,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    if args.fan_out == 0 {
        return Err("--fan-out must be above zero".into());
    }
    // Ours, installed before any testbed exists, so the testbed leaves the
    // signals to it: kill the nodes, delete the namespaces, exit 130.
    ctrlc::set_handler(|| {
        for pid in children().drain(..) {
            // SAFETY: kill(2) has no memory-safety preconditions; the pid is
            // a child we spawned and have not reaped (so not reused).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        elec_testbed::cleanup_all();
        std::process::exit(130);
    })?;

    println!(
        "gossip demo: {} nodes, each in its own network namespace behind a bridge",
        args.nodes
    );
    println!(
        "period {:?}, fan-out {}, quiet window {:?}\n",
        args.period, args.fan_out, args.window
    );
    let mut results = Vec::new();
    for &mode in &args.modes {
        println!("--- {} mode ---", name(mode));
        results.push(run_mode(&args, mode)?);
    }
    print_table(&args, &results);
    Ok(())
}

/// The value of `--mode` that selects `mode`.
fn mode_arg(mode: BroadcastMode) -> String {
    mode.to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default()
}

fn name(mode: BroadcastMode) -> &'static str {
    match mode {
        BroadcastMode::Kernel => "kernel",
        BroadcastMode::User => "user-space",
        BroadcastMode::Auto => "auto",
    }
}

fn run_mode(args: &DemoArgs, mode: BroadcastMode) -> Result<Measured, BoxError> {
    let n = args.nodes;
    let tb = Testbed::new(TestbedConfig {
        receivers: n,
        ..Default::default()
    })?;
    let exe = std::env::current_exe()?;
    let addrs: Vec<SocketAddrV4> = (0..n)
        .map(|i| SocketAddrV4::new(tb.receiver_addrs(i)[0], NODE_PORT))
        .collect();
    let mut nodes = Vec::new();
    for (i, addr) in addrs.iter().enumerate() {
        let mut cmd = Command::new(&exe);
        cmd.arg("-q")
            .arg("node")
            .args(["--listen", &addr.to_string()])
            .args(["--seed", &addrs[0].to_string()])
            .args(["--seed", &addrs[1].to_string()])
            .args(["--mode", &mode_arg(mode)])
            .args(["--iface", tb.sender_iface()])
            .args(["--period", &format!("{}ms", args.period.as_millis())])
            .args(["--fan-out", &args.fan_out.to_string()])
            .args(["--control-port", &CONTROL_PORT.to_string()])
            .args(["--key", "gossip demo cluster"])
            .args(["--no-join", "--exit-on-stdin-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let ns = tb.receiver_ns(i).to_string();
        let child = tb.spawn_in(&ns, &mut cmd)?;
        children().push(child.id());
        nodes.push(NodeProcess {
            child,
            ns,
            addr: *addr,
        });
    }

    // Wait until every node answers (kernel mode loads its eBPF program first).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut max_value = u64::MAX;
    for node in &mut nodes {
        loop {
            if let Some(status) = node.child.try_wait()? {
                return Err(format!("node {} exited at start: {status}", node.addr).into());
            }
            if let Ok(stats) = stats(node) {
                let want = if mode == BroadcastMode::User {
                    "user"
                } else {
                    "kernel"
                };
                if mode != BroadcastMode::Auto && stats.mode != want {
                    return Err(format!("node {} runs in {} mode", node.addr, stats.mode).into());
                }
                max_value = max_value.min(stats.max_value);
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("node {} did not come up", node.addr).into());
            }
            std::thread::sleep(POLL);
        }
    }

    // The published data rides in a key/value delta with its Lamport
    // counter (8 bytes) under the reserved publish key.
    let overhead = crate::protocol::PUBLISH_KEY.len() as u64 + 8;
    if args.large as u64 + overhead > max_value {
        return Err(format!(
            "--large {} does not fit one datagram: at most {} bytes",
            args.large,
            max_value.saturating_sub(overhead)
        )
        .into());
    }
    let mut m = Measured {
        mode: name(mode),
        window: args.window,
        ..Default::default()
    };
    let limit = Duration::from_secs(60);

    // 1. Everyone joins at once (one thread per node, so no node waits for
    // another's request); time until every node lists all n members.
    let start = Instant::now();
    std::thread::scope(|scope| {
        let joins: Vec<_> = nodes
            .iter()
            .map(|node| scope.spawn(move || control_request(node, "POST", "/start", b"")))
            .collect();
        joins.into_iter().try_for_each(|join| {
            join.join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
                .map(drop)
        })
    })?;
    m.members_converged = wait_for(&nodes, start, limit, |s| s.members == n as u64)?;
    println!(
        "every node knows all {n} members after {:?}",
        m.members_converged
    );

    // 2. A small update published on node 0.
    let (small, large) = (
        format!("small update in {} mode", name(mode)).into_bytes(),
        vec![0x5a; args.large],
    );
    for (label, origin, data, slot) in [
        ("small", 0, small, &mut m.small_update),
        // From another node than the small one, where there is one.
        ("large", 3 % nodes.len(), large, &mut m.large_update),
    ] {
        let start = Instant::now();
        let (status, _, body) = control_request(&nodes[origin], "POST", "/publish", &data)?;
        if status != 200 {
            return Err(format!("publish: {status} {}", String::from_utf8_lossy(&body)).into());
        }
        let version = String::from_utf8_lossy(&body).trim().to_string();
        *slot = wait_for(&nodes, start, limit, |s| s.version == version)?;
        println!(
            "{label} update ({} B, version {version}) on every node after {:?}",
            data.len(),
            *slot
        );
    }

    // 3. The quiet window: probes, gossip rounds and anti-entropy only, nobody polls.
    let before: Vec<StatsJson> = nodes.iter().map(stats).collect::<io::Result<_>>()?;
    let proc_before: Vec<ProcSample> = nodes.iter().map(sample).collect::<io::Result<_>>()?;
    std::thread::sleep(args.window);
    let proc_after: Vec<ProcSample> = nodes.iter().map(sample).collect::<io::Result<_>>()?;
    let after: Vec<StatsJson> = nodes.iter().map(stats).collect::<io::Result<_>>()?;
    for (a, b) in proc_before.iter().zip(&proc_after) {
        m.cpu_ns += b.cpu_ns.saturating_sub(a.cpu_ns);
        m.user_ticks += b.user_ticks.saturating_sub(a.user_ticks);
        m.system_ticks += b.system_ticks.saturating_sub(a.system_ticks);
        m.tx_packets += b.tx_packets.saturating_sub(a.tx_packets);
        m.tx_bytes += b.tx_bytes.saturating_sub(a.tx_bytes);
    }
    let delta = |counter: fn(&StatsJson) -> u64| -> u64 {
        before
            .iter()
            .zip(&after)
            .map(|(a, b)| counter(b).saturating_sub(counter(a)))
            .sum()
    };
    m.datagrams_out = delta(|s| s.protocol.datagrams_out);
    m.broadcasts = delta(|s| s.broadcasts);
    m.kernel_copies = delta(|s| s.kernel_copies);
    m.user_space_copies = delta(|s| s.user_space_copies);
    println!(
        "quiet window of {:?}: {} datagrams, {:.1} ms CPU over all nodes",
        args.window,
        m.datagrams_out,
        m.cpu_ns as f64 / 1e6
    );

    // 4. Kill the last node; time until no one lists it.
    let mut victim = nodes.pop().ok_or("no nodes")?;
    let killed_at = Instant::now();
    victim.kill();
    m.eviction = wait_for(&nodes, killed_at, limit, |s| s.members == n as u64 - 1)?;
    println!(
        "killed node {} removed by all {} others after {:?}\n",
        victim.addr,
        n - 1,
        m.eviction
    );
    drop(nodes);
    drop(tb);
    Ok(m)
}

/// One HTTP request to a node's control interface, from inside its namespace.
fn control_request(
    node: &NodeProcess,
    method: &str,
    path: &str,
    body: &[u8],
) -> io::Result<(u16, Option<String>, Vec<u8>)> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, CONTROL_PORT));
    let stream = in_namespace(&node.ns, || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(2))
    })??;
    control::request(stream, method, path, body)
}

fn stats(node: &NodeProcess) -> io::Result<StatsJson> {
    let (status, _, body) = control_request(node, "GET", "/stats", b"")?;
    if status != 200 {
        return Err(io::Error::other(format!("GET /stats: {status}")));
    }
    serde_json::from_slice(&body).map_err(|e| io::Error::other(format!("GET /stats: {e}")))
}

/// Polls every node's /stats until `done` holds for all; returns the time
/// since `start`.
fn wait_for(
    nodes: &[NodeProcess],
    start: Instant,
    limit: Duration,
    done: impl Fn(&StatsJson) -> bool,
) -> Result<Duration, BoxError> {
    let mut pending: Vec<&NodeProcess> = nodes.iter().collect();
    loop {
        let mut still = Vec::new();
        for node in pending {
            if !done(&stats(node)?) {
                still.push(node);
            }
        }
        if still.is_empty() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > limit {
            let late: Vec<String> = still.iter().map(|n| n.addr.to_string()).collect();
            return Err(format!("no convergence after {limit:?} on {late:?}").into());
        }
        pending = still;
        std::thread::sleep(POLL);
    }
}

/// CPU time and eth0 transmit counters of a node process.
struct ProcSample {
    /// Time on CPU of all its threads (schedstat, nanoseconds).
    cpu_ns: u64,
    /// utime and stime of /proc/<pid>/stat (clock ticks).
    user_ticks: u64,
    system_ticks: u64,
    tx_packets: u64,
    tx_bytes: u64,
}

fn sample(node: &NodeProcess) -> io::Result<ProcSample> {
    let pid = node.child.id();
    let mut cpu_ns = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        // A thread may end between the listing and the read.
        if let Ok(text) = std::fs::read_to_string(path) {
            cpu_ns += text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which ends with the last ')': state is
    // the first, utime the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
    let (user_ticks, system_ticks) = (tick(11), tick(12));
    // /proc/<pid>/net/dev shows the interfaces of the node's namespace.
    let dev = std::fs::read_to_string(format!("/proc/{pid}/net/dev"))?;
    let (tx_bytes, tx_packets) = dev
        .lines()
        .find_map(|line| {
            let (iface, counters) = line.split_once(':')?;
            if iface.trim() != elec_testbed::IFACE {
                return None;
            }
            let c: Vec<u64> = counters
                .split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect();
            Some((*c.get(8)?, *c.get(9)?))
        })
        .ok_or_else(|| io::Error::other("no eth0 in /proc/<pid>/net/dev"))?;
    Ok(ProcSample {
        cpu_ns,
        user_ticks,
        system_ticks,
        tx_packets,
        tx_bytes,
    })
}

/// A line of the results table: its label, and its value for a mode.
type Row = (String, Box<dyn Fn(&Measured) -> String>);

fn print_table(args: &DemoArgs, results: &[Measured]) {
    let n = args.nodes;
    let secs = |d: Duration| format!("{:.3} s", d.as_secs_f64());
    let per_s = |m: &Measured, v: f64| v / m.window.as_secs_f64();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let rows: Vec<Row> = vec![
        (
            format!("every node knows all {n} members"),
            Box::new(move |m| secs(m.members_converged)),
        ),
        (
            "small update reached every node".into(),
            Box::new(move |m| secs(m.small_update)),
        ),
        (
            format!("{} B update reached every node", args.large),
            Box::new(move |m| secs(m.large_update)),
        ),
        (
            format!("killed node removed by all {} others", n - 1),
            Box::new(move |m| secs(m.eviction)),
        ),
        (
            "CPU of all nodes, ms per second".into(),
            Box::new(move |m| format!("{:.2}", per_s(m, m.cpu_ns as f64 / 1e6))),
        ),
        (
            "  of which system time, ms per second".into(),
            Box::new(move |m| format!("{:.1}", per_s(m, m.system_ticks as f64 * 1e3 / hz))),
        ),
        (
            "  user time, ms per second".into(),
            Box::new(move |m| format!("{:.1}", per_s(m, m.user_ticks as f64 * 1e3 / hz))),
        ),
        (
            "gossip datagrams sent per second".into(),
            Box::new(move |m| format!("{:.0}", per_s(m, m.datagrams_out as f64))),
        ),
        (
            "CPU per datagram sent, us".into(),
            Box::new(|m| {
                format!(
                    "{:.2}",
                    m.cpu_ns as f64 / 1e3 / (m.datagrams_out.max(1) as f64)
                )
            }),
        ),
        (
            "eth0 tx packets per second, all nodes".into(),
            Box::new(move |m| format!("{:.0}", per_s(m, m.tx_packets as f64))),
        ),
        (
            "eth0 tx bytes per second, all nodes".into(),
            Box::new(move |m| format!("{:.0}", per_s(m, m.tx_bytes as f64))),
        ),
        (
            "broadcast calls per second".into(),
            Box::new(move |m| format!("{:.0}", per_s(m, m.broadcasts as f64))),
        ),
        (
            "copies cloned in the kernel".into(),
            Box::new(|m| {
                let all = m.kernel_copies + m.user_space_copies;
                format!(
                    "{:.1} %",
                    100.0 * m.kernel_copies as f64 / all.max(1) as f64
                )
            }),
        ),
    ];
    println!(
        "=== results ({n} nodes, period {:?}, fan-out {}) ===",
        args.period, args.fan_out
    );
    print!("{:<46}", "");
    for m in results {
        print!("{:>14}", m.mode);
    }
    println!();
    for (label, value) in &rows {
        print!("{label:<46}");
        for m in results {
            print!("{:>14}", value(m));
        }
        println!();
    }
    println!(
        "\nHow it is measured:\n\
         - Times: the demo polls every node's GET /stats on its control interface \
         (127.0.0.1 inside the node's namespace) every {POLL:?}; a time is from the \
         action (POST /start to all nodes, POST /publish, SIGKILL) until the last node \
         shows the result, so it is exact to about {POLL:?} plus one poll round.\n\
         - CPU: over the quiet window (no polling; probes, gossip rounds and anti-entropy only), \
         the sum over all node processes of the time their threads spent on a CPU \
         (/proc/<pid>/task/*/schedstat, ns); the system/user split is /proc/<pid>/stat \
         stime/utime in {hz:.0} Hz ticks. Softirq work the kernel does for the sends \
         (cloning, veth transmit) is charged to the sending thread when it runs in its \
         context, as it does here.\n\
         - Packets: eth0 transmit counters of each node's namespace \
         (/proc/<pid>/net/dev) over the same window, summed; gossip datagrams and \
         broadcast calls from the nodes' own counters (GET /stats)."
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_stats_json() {
        let mut json = serde_json::json!({
            "id": "10.0.0.1:7946",
            "mode": "kernel",
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
        ];
        for counter in core.iter().map(String::as_str).chain(shell) {
            json[counter] = 7.into();
        }
        let stats: StatsJson = serde_json::from_str(&json.to_string()).unwrap();
        assert_eq!(stats.members, 16);
        assert_eq!(stats.mode, "kernel");
        assert_eq!(stats.version, "3@10.0.0.1:7946");
        assert_eq!(stats.user_space_copies, 7);
        assert_eq!(stats.protocol.datagrams_out, 7);
        assert_eq!(stats.recv_batches, 7);
        // And back, field for field.
        assert_eq!(serde_json::to_value(&stats).unwrap(), json);
        json.as_object_mut().unwrap().remove("members");
        assert!(serde_json::from_value::<StatsJson>(json).is_err());
    }
}
