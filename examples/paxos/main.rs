//! Multi-Paxos (Viewstamped Replication) with the leader's `Prepare` and
//! `Commit` broadcasts sent through elec-broadcast, in the spirit of
//! Electrode (NSDI 2023), but at any cluster size and under faults.
//!
//! ```text
//! paxos replica --config cluster.conf --index 0 --accel all --iface eth0
//! paxos client  --config cluster.conf -n 10000 -w 1000 -t 8
//! paxos cluster --replicas 7 --accel all -n 20000 -w 2000 -t 16   (root)
//! paxos report results.jsonl --svg paxos.svg
//! paxos config --statefulset paxos --service paxos --replicas 3 --port 7000
//! paxos check-config cluster.conf
//! ```
//!
//! The configuration file has Electrode's format: `f <failures tolerated>`
//! and 2f + 1 lines `replica <host>:<port>`. See docs/paxos.md.
//!
//! Layout: `replica.rs` (the protocol) and `client.rs` are cores without
//! I/O, tested by `sim.rs` over a simulated faulty network with the
//! linearizability checker of `history.rs`; `shell.rs` runs them over UDP,
//! `cluster.rs` runs a whole cluster in network namespaces and `report.rs`
//! summarizes measurements.

mod accel;
mod client;
mod cluster;
mod config;
mod history;
mod kv;
mod replica;
mod report;
mod shell;
#[cfg(test)]
mod sim;
mod wire;

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::accel::Accel;
use crate::config::Config;
use crate::replica::Timing;
use crate::shell::{ClientOptions, ClientReport, ReplicaOptions};
use elec_broadcast::Ingress;

#[derive(Parser)]
#[command(about = "Multi-Paxos (Viewstamped Replication) over elec-broadcast")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one replica.
    Replica(ReplicaArgs),
    /// Run closed-loop clients against a cluster and report throughput and latency.
    Client(ClientArgs),
    /// Run a whole cluster in network namespaces and measure it (root).
    Cluster(ClusterArgs),
    /// Summarize `cluster` results (JSON lines) as a markdown table and an SVG plot.
    Report(ReportArgs),
    /// Print the configuration of a Kubernetes StatefulSet of replicas, from
    /// its pods' DNS names.
    Config(ConfigArgs),
    /// Check a configuration file without resolving its names.
    CheckConfig {
        /// The configuration file.
        config: PathBuf,
    },
}

#[derive(Args)]
struct ConfigArgs {
    /// Name of the StatefulSet (pod i is `<name>-i`).
    #[arg(long)]
    statefulset: String,
    /// Name of the headless Service that governs it.
    #[arg(long)]
    service: String,
    /// Namespace of both, for full names usable from elsewhere [default:
    /// names the pods' DNS search list completes in their own namespace].
    #[arg(long)]
    namespace: Option<String>,
    /// The cluster's DNS domain (with --namespace).
    #[arg(long, default_value = "cluster.local")]
    domain: String,
    /// Number of replicas (odd: 2f+1).
    #[arg(long)]
    replicas: usize,
    /// UDP port of the replicas.
    #[arg(long, default_value_t = 7000)]
    port: u16,
}

#[derive(Args)]
struct ReportArgs {
    /// File of JSON lines printed by `paxos cluster` (other lines are skipped).
    results: PathBuf,
    /// Also write an SVG plot of the fault-free runs here.
    #[arg(long)]
    svg: Option<PathBuf>,
}

/// `tc` or `xdp`.
fn parse_ingress(s: &str) -> Result<Ingress, String> {
    match s {
        "tc" => Ok(Ingress::Tc),
        "xdp" => Ok(Ingress::Xdp),
        _ => Err(format!("{s:?}: use tc or xdp")),
    }
}

#[derive(Args)]
struct ReplicaArgs {
    /// Configuration file (`f N` and 2f+1 `replica host:port` lines).
    #[arg(long)]
    config: PathBuf,
    /// This replica's index (its line among the `replica` lines, from 0).
    #[arg(long, required_unless_present = "index_from_hostname")]
    index: Option<usize>,
    /// Take the index from the host name's last `-<number>` (the ordinal of
    /// a StatefulSet's pod: `paxos-2` is replica 2).
    #[arg(long, conflicts_with = "index")]
    index_from_hostname: bool,
    /// Seconds to wait for host names in the configuration that do not
    /// resolve yet (peers still starting).
    #[arg(long, default_value_t = 0)]
    resolve_wait: u64,
    /// Bind to this address instead of this replica's in the configuration
    /// (a pod's own address, where its name may still resolve to the
    /// address of the pod before it).
    #[arg(long)]
    bind: Option<Ipv4Addr>,
    /// In-kernel mechanisms: `none` (the user-space baseline: sendmmsg
    /// broadcasts, acks through the socket), `all`, or a comma-separated
    /// list of `broadcast` (kernel fan-out), `quorum` (the leader's acks
    /// counted in the kernel) and `reply` (followers ack in the kernel).
    #[arg(long, default_value = "all")]
    accel: Accel,
    /// The hook of the quorum collector: `tc` or `xdp` (see docs/paxos.md).
    #[arg(long, default_value = "tc", value_parser = parse_ingress)]
    quorum_ingress: Ingress,
    /// Interface the other replicas are reached through.
    #[arg(long, default_value = "eth0")]
    iface: String,
    /// Print the final statistics as one JSON line.
    #[arg(long)]
    json: bool,
    /// Exit when the parent process exits.
    #[arg(long, hide = true)]
    exit_with_parent: bool,
}

#[derive(Args, Clone)]
struct Workload {
    /// Measured requests (all clients together).
    #[arg(short = 'n', long, default_value_t = 10_000)]
    requests: usize,
    /// Warm-up requests before the measurement (all clients together).
    #[arg(short = 'w', long, default_value_t = 1_000)]
    warmup: usize,
    /// Concurrent clients (threads), one request in flight each.
    #[arg(short = 't', long, default_value_t = 8)]
    threads: usize,
    /// Keys the requests spread over.
    #[arg(long, default_value_t = 1_000)]
    keys: usize,
    /// Bytes per written value.
    #[arg(long, default_value_t = 16)]
    value_size: usize,
    /// Percentage of GETs; the rest are PUTs and (one in five) CAS.
    #[arg(long, default_value_t = 50)]
    reads: u32,
    /// Milliseconds without a reply before a request is retried (to every replica).
    #[arg(long, default_value_t = 10)]
    retry_ms: u64,
    /// Seconds after which a request is given up.
    #[arg(long, default_value_t = 30)]
    give_up_s: u64,
}

impl Workload {
    fn options(&self, config: Config, bind: SocketAddrV4) -> Result<ClientOptions, String> {
        if self.threads == 0 || self.keys == 0 {
            return Err("-t and --keys must be at least 1".into());
        }
        if self.reads > 100 {
            return Err("--reads is a percentage (0-100)".into());
        }
        if self.value_size > kv::MAX_VALUE_LEN {
            return Err(format!(
                "--value-size must be at most {}",
                kv::MAX_VALUE_LEN
            ));
        }
        Ok(ClientOptions {
            config,
            requests: self.requests,
            warmup: self.warmup,
            threads: self.threads,
            keys: self.keys,
            value_size: self.value_size,
            read_percent: self.reads,
            retry: Duration::from_millis(self.retry_ms.max(1)),
            give_up: Duration::from_secs(self.give_up_s.max(1)),
            bind,
        })
    }
}

#[derive(Args)]
struct ClientArgs {
    /// Configuration file of the cluster.
    #[arg(long)]
    config: PathBuf,
    #[command(flatten)]
    workload: Workload,
    /// Local IPv4 address for the client sockets.
    #[arg(long, default_value = "0.0.0.0")]
    bind: Ipv4Addr,
    /// Seconds to wait for host names in the configuration that do not
    /// resolve yet (replicas still starting).
    #[arg(long, default_value_t = 0)]
    resolve_wait: u64,
    /// Check the history for linearizability.
    #[arg(long)]
    check: bool,
    /// Print one JSON line instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ClusterArgs {
    /// Number of replicas (odd: 2f+1).
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// In-kernel mechanisms of every replica: `none`, `all`, or a list of
    /// `broadcast`, `quorum`, `reply` (see `paxos replica --help`).
    #[arg(long, default_value = "all")]
    accel: Accel,
    /// The hook of the replicas' quorum collectors: `tc` or `xdp`.
    #[arg(long, default_value = "tc", value_parser = parse_ingress)]
    quorum_ingress: Ingress,
    #[command(flatten)]
    workload: Workload,
    /// Kill (SIGKILL) the last follower after this many measured requests.
    #[arg(long)]
    kill_follower_after: Option<usize>,
    /// Drop this percentage of the frames on every bridge port (nftables).
    #[arg(long, default_value_t = 0)]
    loss: u32,
    /// UDP port of the replicas.
    #[arg(long, default_value_t = 7000)]
    port: u16,
    /// Pin the leader to this CPU and steer the followers' receive
    /// processing to the other CPUs, as if each replica had its own machine
    /// (needs taskset; see docs/paxos.md).
    #[arg(long)]
    leader_cpu: Option<usize>,
    /// Skip the linearizability check.
    #[arg(long)]
    no_check: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Replica(args) => replica(args),
        Command::Client(args) => client(args),
        Command::Cluster(args) => cluster(args),
        Command::Config(args) => config::statefulset(
            &args.statefulset,
            &args.service,
            args.namespace.as_deref(),
            &args.domain,
            args.replicas,
            args.port,
        )
        .map(|text| {
            print!("{text}");
            ExitCode::SUCCESS
        }),
        Command::CheckConfig { config } => config::Layout::load(&config).map(|layout| {
            println!(
                "{}: f {}, {} replicas: {}",
                config.display(),
                layout.f,
                layout.replicas.len(),
                layout.replicas.join(" ")
            );
            ExitCode::SUCCESS
        }),
        Command::Report(args) => std::fs::read_to_string(&args.results)
            .map_err(|e| format!("reading {}: {e}", args.results.display()))
            .and_then(|text| report::report(&text, args.svg.as_deref()))
            .map(|table| {
                println!("{table}");
                ExitCode::SUCCESS
            }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("paxos: {e}");
            ExitCode::FAILURE
        }
    }
}

fn replica(args: ReplicaArgs) -> Result<ExitCode, String> {
    let index = match args.index {
        Some(index) => index,
        None => index_from_hostname()?,
    };
    let layout = config::Layout::load(&args.config)?;
    let config = layout
        .resolve(Duration::from_secs(args.resolve_wait))
        .map_err(|e| format!("{}: {e}", args.config.display()))?;
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    ctrlc::set_handler(move || flag.store(true, Ordering::Relaxed))
        .map_err(|e| format!("installing the signal handler: {e}"))?;
    let opts = ReplicaOptions {
        config,
        layout: Some(layout),
        bind: args.bind,
        index,
        accel: args.accel,
        quorum_ingress: args.quorum_ingress,
        iface: args.iface,
        timing: Timing::lan(),
        exit_with_parent: args.exit_with_parent,
    };
    let report = shell::run_replica(&opts, &stop)?;
    if args.json {
        println!("{}", to_line(&report.to_json()));
    } else {
        eprintln!(
            "replica {} stopped in view {} ({}), commit number {}, {} broadcasts ({} copies in the kernel, {} from user space)",
            report.index,
            report.view,
            if report.leader { "leader" } else { "follower" },
            report.commit_number,
            report.broadcast.broadcasts,
            report.broadcast.kernel_copies,
            report.broadcast.user_space_copies
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn client(args: ClientArgs) -> Result<ExitCode, String> {
    let config = Config::load(&args.config, Duration::from_secs(args.resolve_wait))?;
    let opts = args
        .workload
        .options(config, SocketAddrV4::new(args.bind, 0))?;
    let report = shell::run_clients(&opts, &()).map_err(|e| format!("running the clients: {e}"))?;
    let linearizable = if args.check {
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
    print_client_report(&report, &opts, linearizable, args.json);
    Ok(if linearizable == Some(false) || report.gave_up > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// The ordinal at the end of this host's name: `paxos-2` is 2.
fn index_from_hostname() -> Result<usize, String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_err(|e| format!("reading the host name: {e}"))?;
    let name = name.trim();
    name.rsplit_once('-')
        .and_then(|(_, ordinal)| ordinal.parse().ok())
        .ok_or_else(|| format!("the host name `{name}` does not end in `-<number>`"))
}

/// One line of JSON.
fn to_line(value: &impl Serialize) -> String {
    serde_json::to_string(value).expect("plain structs serialize")
}

/// What `paxos client --json` prints.
#[derive(Serialize)]
struct ClientJson {
    threads: usize,
    #[serde(flatten)]
    figures: cluster::ClientFigures,
    retries: u64,
    /// The checker's verdict (null without `--check`).
    linearizable: Option<bool>,
}

fn print_client_report(
    r: &ClientReport,
    opts: &ClientOptions,
    linearizable: Option<bool>,
    json: bool,
) {
    if json {
        let line = ClientJson {
            threads: opts.threads,
            figures: cluster::ClientFigures::of(r),
            retries: r.retries,
            linearizable,
        };
        println!("{}", to_line(&line));
        return;
    }
    let lin = match linearizable {
        Some(true) => "true",
        Some(false) => "false",
        None => "null",
    };
    println!(
        "Completed {} requests in {:.3} s with {} clients: {:.0} requests/s",
        r.completed,
        r.elapsed.as_secs_f64(),
        opts.threads,
        r.throughput()
    );
    println!(
        "Latency (us): mean {:.0}  p50 {}  p90 {}  p95 {}  p99 {}  max {}",
        r.mean_us(),
        r.percentile(0.5),
        r.percentile(0.9),
        r.percentile(0.95),
        r.percentile(0.99),
        r.latencies_us.last().copied().unwrap_or(0)
    );
    println!(
        "Retries: {}  given up: {}  linearizable: {lin}",
        r.retries, r.gave_up
    );
}

fn cluster(args: ClusterArgs) -> Result<ExitCode, String> {
    ctrlc::set_handler(|| {
        cluster::emergency_cleanup();
        std::process::exit(130);
    })
    .map_err(|e| format!("installing the signal handler: {e}"))?;
    let placeholder = Config {
        f: 1,
        replicas: Vec::new(),
    };
    let client = args
        .workload
        .options(placeholder, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))?;
    let opts = cluster::ClusterOptions {
        replicas: args.replicas,
        accel: args.accel,
        quorum_ingress: args.quorum_ingress,
        client,
        kill_follower_after: args.kill_follower_after,
        loss_percent: args.loss,
        port: args.port,
        check: !args.no_check,
        leader_cpu: args.leader_cpu,
    };
    let summary = cluster::run_cluster(&opts)?;
    println!("{}", to_line(&summary));
    Ok(
        if summary.linearizable == Some(false) || summary.figures.completed == 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        },
    )
}
