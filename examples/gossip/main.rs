//! A gossip membership and key/value node on top of elec-broadcast, after
//! SWIM, memberlist and pekonode / eGossip, and the local cluster demo.
//!
//! ```text
//! gossip node --listen 10.0.0.1:7946 --seed 10.0.0.2:7946 --key-file KEY [--mode kernel]
//! gossip node --listen $POD_IP:7946 --seed gossip.default.svc.cluster.local:7946 ...
//! gossip probe --control-port 8946  # exit status 0 once the node has joined
//! gossip probe --alive              # exit status 0 while the node answers
//! gossip demo --nodes 16          # as root: a cluster in network namespaces
//! gossip sim --nodes 100,1000      # the protocol's figures, simulated
//! ```
//!
//! Layout: `codec.rs` is the wire format (packets sealed with
//! XChaCha20-Poly1305 under a keyring), `queue.rs` what waits to be
//! piggybacked, `protocol.rs` the protocol core that does no I/O (SWIM
//! failure detection, dissemination, anti-entropy, per-node key/value
//! state), `sim.rs` its deterministic simulation, `scenarios.rs` the
//! figures measured in it (`gossip sim`), `shell.rs` the socket and thread
//! around the core, `control.rs` the local HTTP control interface,
//! `demo.rs` the cluster demo.

// Some of the codec's API serves the fuzz target (fuzz/), not this binary.
#[allow(dead_code)]
mod codec;
mod control;
mod demo;
mod protocol;
mod queue;
mod scenarios;
mod shell;
mod sim;

use std::net::SocketAddrV4;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::builder::TypedValueParser as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use elec_broadcast::Mode;

/// Used when no key is given: fine for a demo, useless as a secret.
const DEMO_KEY: &str = "elec-broadcast gossip demo key";

#[derive(Parser)]
#[command(about = "Gossip membership and metadata over elec-broadcast's kernel fan-out")]
struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs one node until Ctrl-C.
    Node(NodeArgs),
    /// Runs a local cluster in network namespaces, in kernel then in
    /// user-space mode, and prints what it measured (needs root).
    Demo(demo::DemoArgs),
    /// Asks the node on this host (its control interface) whether it has
    /// joined: exit status 0 if so, 1 if not (a readiness probe).
    Probe(ProbeArgs),
    /// Measures the protocol in the seeded simulation (cost by cluster
    /// size, update, crash and partition times, false removals, replays,
    /// fan-outs) and prints tables of medians and ranges. Build with
    /// --release: thousands of nodes run in one process.
    Sim(scenarios::SimArgs),
}

#[derive(Args, Debug)]
struct ProbeArgs {
    /// Port of the node's control interface on 127.0.0.1.
    #[arg(long, default_value_t = 8946)]
    control_port: u16,
    /// Live members the node must know besides itself (0: ready once it
    /// runs and has joined, for a cluster of one).
    #[arg(long, default_value_t = 1)]
    min_members: u64,
    /// Only ask whether the node answers at all (a liveness probe: a node
    /// still resolving its seeds has not joined yet, but is alive).
    #[arg(long)]
    alive: bool,
}

/// How copies of a datagram are made.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BroadcastMode {
    /// The kernel fan-out (TC egress eBPF); needs root.
    Kernel,
    /// One sendmmsg(2) per broadcast.
    User,
    /// Kernel where it can be used, else user space.
    Auto,
}

impl BroadcastMode {
    fn mode(self) -> Mode {
        match self {
            BroadcastMode::Kernel => Mode::Kernel,
            BroadcastMode::User => Mode::UserSpace,
            BroadcastMode::Auto => Mode::Auto,
        }
    }
}

#[derive(Args, Debug)]
struct NodeArgs {
    /// UDP address of this node, also its name in the cluster.
    #[arg(long, default_value = "127.0.0.1:7946")]
    listen: SocketAddrV4,
    /// A peer to contact first (repeatable): an address, or a name that
    /// resolves to one or more (a Kubernetes headless Service's name
    /// resolves to every pod behind it).
    #[arg(long = "seed", value_name = "HOST:PORT")]
    seeds: Vec<String>,
    /// Seconds to wait for seed names that do not resolve yet.
    #[arg(long, default_value_t = 0)]
    resolve_wait: u64,
    /// Protocol period, e.g. 1s, 500ms: one probe per period, gossip rounds
    /// every fifth of it, anti-entropy once per period.
    #[arg(long, default_value = "1s", value_parser = parse_period)]
    period: Duration,
    /// Members each gossip round goes to, in one broadcast.
    #[arg(long, default_value_t = 3,
          value_parser = clap::value_parser!(u16).range(1..=MAX_FAN_OUT).map(usize::from))]
    fan_out: usize,
    /// Largest datagram sent or accepted, in bytes. Keep it within the path
    /// MTU (1472 on a 1500-byte Ethernet, less on overlays): larger
    /// datagrams are fragmented and skip the kernel fan-out.
    #[arg(long, default_value_t = codec::DEFAULT_MAX_PACKET,
          value_parser = clap::value_parser!(u32).range(256..=65507).map(|v| v as usize))]
    max_packet: usize,
    /// Cluster secret (visible in `ps`: prefer --key-file).
    #[arg(long, conflicts_with = "key_file")]
    key: Option<String>,
    /// File holding the cluster secret (trailing white space ignored).
    #[arg(long)]
    key_file: Option<std::path::PathBuf>,
    /// Id of that key in the keyring (0-255); every packet names the key
    /// that sealed it, so keys can be rotated with the control interface.
    #[arg(long, default_value_t = 1)]
    key_id: codec::KeyId,
    /// Encrypt packets (XChaCha20-Poly1305); else they are authenticated
    /// only. Every node of a cluster accepts both.
    #[arg(long)]
    encrypt: bool,
    /// How broadcasts are sent.
    #[arg(long, value_enum, default_value_t = BroadcastMode::Auto)]
    mode: BroadcastMode,
    /// Interface the peers are reached through [default: the one that owns
    /// the listen address].
    #[arg(long)]
    iface: Option<String>,
    /// Port of the HTTP control interface on 127.0.0.1 (0: none).
    #[arg(long, default_value_t = 8946)]
    control_port: u16,
    /// Wait for POST /start on the control interface before joining.
    #[arg(long)]
    no_join: bool,
    /// Exit when standard input closes (for nodes started by the demo).
    #[arg(long, hide = true)]
    exit_on_stdin_eof: bool,
    /// How datagrams are received (expert, for measurements): `batched`,
    /// with recvmmsg, or `plain`, one recvfrom per datagram.
    #[arg(long, hide = true, value_enum, default_value_t = RecvArg::Batched)]
    recv: RecvArg,
    /// Keep the last events, timed, for GET /events (expert, for
    /// measurements: the demo turns it on).
    #[arg(long, hide = true)]
    event_log: bool,
}

/// Events `--event-log` keeps.
const EVENT_LOG: usize = 16384;

/// `--recv` of `gossip node`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RecvArg {
    /// recvmmsg(2): one system call for what is queued.
    Batched,
    /// One recvfrom(2) per datagram.
    Plain,
}

impl RecvArg {
    fn mode(self) -> shell::RecvMode {
        match self {
            RecvArg::Batched => shell::RecvMode::Batched,
            RecvArg::Plain => shell::RecvMode::Plain,
        }
    }
}

/// Largest --fan-out: a broadcast's destinations are limited anyway, and a
/// gossip round to more members than this floods rather than gossips.
const MAX_FAN_OUT: i64 = 64;

/// Shortest --period: gossip rounds run every fifth of it, and a node
/// polls at least every millisecond.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// Parses a --period: a duration of at least [`MIN_PERIOD`].
fn parse_period(text: &str) -> Result<Duration, String> {
    let period = parse_duration(text)?;
    if period < MIN_PERIOD {
        return Err(format!(
            "{text:?}: the period must be at least {MIN_PERIOD:?}"
        ));
    }
    Ok(period)
}

/// Parses "500ms", "6s", "1.5s", "2m".
fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, e.g. 500ms or 6s"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        _ => return Err(format!("{text:?}: unit must be ms, s or m")),
    };
    Duration::try_from_secs_f64(seconds).map_err(|e| format!("{text:?}: {e}"))
}

/// Logs to standard error with the time since start.
struct Logger {
    level: log::LevelFilter,
    start: Instant,
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            eprintln!(
                "{:9.3} {:5} {}",
                self.start.elapsed().as_secs_f64(),
                record.level(),
                record.args()
            );
        }
    }

    fn flush(&self) {}
}

fn init_logging(verbose: u8, quiet: u8) {
    let levels = [
        log::LevelFilter::Error,
        log::LevelFilter::Warn,
        log::LevelFilter::Info,
        log::LevelFilter::Debug,
        log::LevelFilter::Trace,
    ];
    let index = (2 + i32::from(verbose) - i32::from(quiet)).clamp(0, 4) as usize;
    let level = levels[index];
    let logger = Box::leak(Box::new(Logger {
        level,
        start: Instant::now(),
    }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.quiet);
    let result = match cli.command {
        Command::Node(args) => run_node(args),
        Command::Demo(args) => demo::run(args),
        Command::Probe(args) => probe(&args),
        Command::Sim(args) => scenarios::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("gossip: {err}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn run_node(args: NodeArgs) -> Result<(), BoxError> {
    let secret = match (&args.key, &args.key_file) {
        (Some(key), _) => key.as_bytes().to_vec(),
        (None, Some(path)) => {
            let key = std::fs::read(path)
                .map_err(|e| format!("reading the key file {}: {e}", path.display()))?;
            key.trim_ascii_end().to_vec()
        }
        (None, None) => {
            log::warn!("no --key or --key-file: using the public demo key, anyone can join");
            DEMO_KEY.as_bytes().to_vec()
        }
    };
    if secret.is_empty() {
        return Err("the cluster key is empty".into());
    }
    let mut protocol =
        protocol::Config::new(codec::Keyring::new(args.key_id, &secret)).with_period(args.period);
    protocol.gossip_nodes = args.fan_out;
    protocol.max_packet = args.max_packet;
    protocol.encrypt = args.encrypt;
    log::debug!("{protocol:?}");

    let stopping = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stopping);
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .map_err(|e| format!("installing the Ctrl-C handler: {e}"))?;
    if args.exit_on_stdin_eof {
        let flag = Arc::clone(&stopping);
        std::thread::Builder::new()
            .name("stdin-watch".into())
            .spawn(move || {
                let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
                flag.store(true, Ordering::SeqCst);
            })?;
    }

    // Seeds are resolved once the control interface answers (a name may
    // take a while to resolve, and a liveness probe asks meanwhile).
    let gossip = shell::Gossip::new(shell::ShellConfig {
        listen: args.listen,
        seeds: Vec::new(),
        protocol,
        mode: args.mode.mode(),
        interface: args.iface.clone(),
        rng_seed: None,
    })?;
    gossip.set_recv_mode(args.recv.mode());
    if args.event_log {
        gossip.enable_event_log(EVENT_LOG);
    }
    let control = match args.control_port {
        0 => None,
        port => Some(
            control::Control::start(port, gossip.handle())
                .map_err(|e| format!("control interface on 127.0.0.1:{port}: {e}"))?,
        ),
    };
    if let Some(control) = &control {
        log::info!("control interface on http://{}/", control.addr());
    }
    let seeds = resolve_seeds(
        &args.seeds,
        args.listen,
        Duration::from_secs(args.resolve_wait),
    );
    gossip.add_seeds(&seeds);
    if args.no_join {
        log::info!("waiting for POST /start before joining");
    } else {
        gossip.join();
    }
    while !stopping.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
    }
    // Leave gracefully, so that the others list the node as left, not
    // failed; the control interface answers meanwhile.
    if gossip.stats().joined {
        log::info!("leaving");
        gossip.leave_and_shutdown();
    } else {
        gossip.shutdown();
    }
    log::info!("stopped");
    drop(control);
    Ok(())
}

/// The IPv4 addresses of the `seeds` (`HOST:PORT` each, names resolved to
/// every address they have), the node's own `listen` address left out.
/// Until `wait` has passed, names are asked again every second while they
/// do not resolve, or while they give no address but the node's own (its
/// peers' pods are still starting). A seed that never gives another address
/// is logged and skipped: the node may still be found by the others.
fn resolve_seeds(seeds: &[String], listen: SocketAddrV4, wait: Duration) -> Vec<SocketAddrV4> {
    use std::net::{SocketAddr, ToSocketAddrs};
    let deadline = Instant::now() + wait;
    let mut found = Vec::new();
    for seed in seeds {
        let others = loop {
            let others: Vec<SocketAddrV4> = match seed.to_socket_addrs() {
                Ok(addrs) => addrs
                    .filter_map(|addr| match addr {
                        SocketAddr::V4(v4) if v4 != listen => Some(v4),
                        _ => None,
                    })
                    .collect(),
                Err(err) => {
                    if Instant::now() >= deadline {
                        log::warn!("seed {seed} does not resolve ({err}); going on without it");
                    }
                    Vec::new()
                }
            };
            if !others.is_empty() || Instant::now() >= deadline {
                break others;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        for addr in others {
            if !found.contains(&addr) {
                found.push(addr);
            }
        }
    }
    log::info!("seeds: {found:?}");
    found
}

/// `gossip probe`: the node's own state, from its control interface.
fn probe(args: &ProbeArgs) -> Result<(), BoxError> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], args.control_port)),
        Duration::from_secs(2),
    )?;
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.write_all(b"GET /stats HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply)?;
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, body)| body)
        .ok_or("no body in the control interface's reply")?;
    let stats: control::StatsJson = serde_json::from_str(body)?;
    if args.alive {
        println!("alive: {}", stats.id);
        return Ok(());
    }
    if !stats.joined || stats.paused {
        return Err(format!(
            "not ready: joined {}, paused {}",
            stats.joined, stats.paused
        )
        .into());
    }
    // `members` counts the node itself.
    let others = stats.members.saturating_sub(1);
    if others < args.min_members {
        return Err(format!(
            "not ready: knows {others} other members, wants {}",
            args.min_members
        )
        .into());
    }
    println!("ready: knows {others} other members");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_resolve_to_every_address_but_our_own() {
        let listen: SocketAddrV4 = "127.0.0.1:7946".parse().unwrap();
        let seeds = resolve_seeds(
            &[
                "localhost:7946".into(),
                "127.0.0.2:7946".into(),
                "127.0.0.2:7946".into(),
                "no-such-host.invalid:7946".into(),
            ],
            listen,
            Duration::ZERO,
        );
        assert_eq!(seeds, ["127.0.0.2:7946".parse::<SocketAddrV4>().unwrap()]);
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("6s"), Ok(Duration::from_secs(6)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("5h").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn cli_defaults_are_memberlists() {
        let cli = Cli::try_parse_from(["gossip", "node"]).unwrap();
        let Command::Node(args) = cli.command else {
            panic!("node")
        };
        assert_eq!(args.fan_out, 3);
        assert_eq!(args.period, Duration::from_secs(1));
        assert_eq!(args.max_packet, 1400);
        assert_eq!(args.key_id, 1);
        assert!(!args.encrypt);
        assert_eq!(args.mode, BroadcastMode::Auto);
        assert_eq!(args.control_port, 8946);
        assert_eq!(args.recv, RecvArg::Batched);
        Cli::command().debug_assert();
    }

    #[test]
    fn cli_refuses_out_of_range_values() {
        let node = |extra: &[&str]| {
            let mut argv = vec!["gossip", "node"];
            argv.extend_from_slice(extra);
            Cli::try_parse_from(argv).map(drop)
        };
        assert!(node(&["--period", "500ms", "--fan-out", "5", "--encrypt"]).is_ok());
        assert!(node(&["--max-packet", "65507", "--key-id", "255"]).is_ok());
        assert!(node(&["--max-packet", "255"]).is_err());
        assert!(node(&["--max-packet", "65508"]).is_err());
        assert!(node(&["--fan-out", "0"]).is_err());
        assert!(node(&["--period", "5ms"]).is_err());
        assert!(node(&["--key-id", "256"]).is_err());
        assert!(node(&["--key", "a", "--key-file", "b"]).is_err());
        assert!(node(&["--recv", "plain", "--event-log"]).is_ok());
        assert!(node(&["--recv", "recvmmsg"]).is_err());
        // Gone with the TCP fetch and the heartbeat protocol.
        assert!(node(&["--cycle", "1s"]).is_err());
        assert!(node(&["--timeout", "1s"]).is_err());
        assert!(node(&["--max-metadata", "100"]).is_err());
    }

    use clap::CommandFactory;
}
