//! `gossip sim`: the protocol's figures, measured in the seeded simulation
//! (`sim.rs`) over repeated trials, printed as tables (median and range)
//! and optionally written as JSON and an SVG plot.
//!
//! Every figure is a count of what the protocol core did or a time on the
//! simulated clock, so a run is reproducible from its seed; only "core CPU"
//! is measured on this machine (the time spent inside the core's
//! `handle_packet` and `tick`, crypto included, per node and period).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::protocol::{Config, Event};
use crate::sim::{config, Network, Sim};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The protocol period every figure is counted in.
const PERIOD: Duration = Duration::from_secs(1);
/// How often a run checks whether it reached its goal.
const CHECK: Duration = Duration::from_millis(50);
/// The share of views that counts as "everyone" besides 100%.
const MOST: f64 = 0.999;

/// What to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Per-node datagrams, bytes and core CPU per period, by cluster size.
    Cost,
    /// Time until a 1 KiB update is seen.
    Update,
    /// Time until a crash is out of every view.
    Crash,
    /// Time until a partition has healed, by its length.
    Partition,
    /// False removals over a long run with loss and CPU-starved nodes.
    Soak,
    /// Captured packets replayed, after the dead were forgotten.
    Replay,
    /// What a larger fan-out buys, at what cost.
    Fanout,
}

/// Options of `gossip sim`.
#[derive(Args, Debug)]
pub struct SimArgs {
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_value = "100,300,1000")]
    nodes: Vec<usize>,
    /// Trials per figure (each with its own seed).
    #[arg(long, default_value_t = 5)]
    trials: u64,
    /// Loss of each IP fragment.
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// First seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Partition lengths, in periods.
    #[arg(long, value_delimiter = ',', default_value = "3,30,300")]
    partitions: Vec<u32>,
    /// Largest cluster the partition scenario runs (its check is N²).
    #[arg(long, default_value_t = 1000)]
    partition_max_nodes: usize,
    /// Fan-outs compared.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3,4,6,8")]
    fan_outs: Vec<usize>,
    /// Cluster size of the fan-out comparison.
    #[arg(long, default_value_t = 1000)]
    fan_out_nodes: usize,
    /// Cluster size of the soak.
    #[arg(long, default_value_t = 100)]
    soak_nodes: usize,
    /// Simulated hours of the soak.
    #[arg(long, default_value_t = 1.0)]
    soak_hours: f64,
    /// Share of CPU-starved nodes in the soak (at least one).
    #[arg(long, default_value_t = 0.01)]
    starved: f64,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "cost,update,crash,partition,soak,replay,fanout"
    )]
    scenarios: Vec<Scenario>,
    /// Write every figure here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the cost and fan-out plots here (SVG).
    #[arg(long)]
    svg: Option<PathBuf>,
    /// Run nothing: draw --svg from these earlier --json files, merged.
    #[arg(long, value_delimiter = ',')]
    plot_from: Vec<PathBuf>,
}

/// Median and range of repeated trials.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Spread {
    /// Trials.
    pub n: usize,
    /// Trials that reached the goal (the others are left out of the figures).
    pub reached: usize,
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
}

impl Spread {
    fn of(samples: &[Option<f64>]) -> Spread {
        let mut got: Vec<f64> = samples.iter().flatten().copied().collect();
        got.sort_by(f64::total_cmp);
        let median = match got.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => got[n / 2],
            n => (got[n / 2 - 1] + got[n / 2]) / 2.0,
        };
        Spread {
            n: samples.len(),
            reached: got.len(),
            median,
            min: got.first().copied().unwrap_or(f64::NAN),
            max: got.last().copied().unwrap_or(f64::NAN),
        }
    }

    fn show(&self, unit: &str) -> String {
        if self.reached == 0 {
            return format!("never ({} trials)", self.n);
        }
        let missed = if self.reached < self.n {
            format!(", {} of {} missed", self.n - self.reached, self.n)
        } else {
            String::new()
        };
        format!(
            "{:.2}{unit} ({:.2}-{:.2}{missed})",
            self.median, self.min, self.max
        )
    }
}

/// Steady-state cost per node and period at one size.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Cost {
    /// Nodes.
    pub nodes: usize,
    /// Loss.
    pub loss: f64,
    /// Datagrams sent per node and period.
    pub datagrams: Spread,
    /// Bytes sent per node and period.
    pub bytes: Spread,
    /// Datagrams received per node and period.
    pub received: Spread,
    /// Broadcasts (sends of one datagram to one or more peers).
    pub broadcasts: Spread,
    /// Core CPU per node and period, microseconds.
    pub cpu_us: Spread,
}

/// Times (in periods) until a share of views agree.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Timing {
    /// Nodes.
    pub nodes: usize,
    /// What was measured.
    pub what: String,
    /// Until 99.9% of views.
    pub most: Spread,
    /// Until every view.
    pub all: Spread,
}

/// The soak's outcome.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Soak {
    /// Nodes.
    pub nodes: usize,
    /// Starved nodes.
    pub starved: usize,
    /// Loss.
    pub loss: f64,
    /// Simulated hours.
    pub hours: f64,
    /// Suspicions raised (all of them false: nobody failed).
    pub suspicions: u64,
    /// Failed events in any view (false removals).
    pub false_removals: usize,
    /// Nodes falsely removed from at least one view.
    pub nodes_falsely_removed: usize,
}

/// The replay campaign's outcome.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Replay {
    /// Nodes.
    pub nodes: usize,
    /// Captured datagrams.
    pub captured: usize,
    /// Deliveries replayed (each capture to every live node).
    pub replayed: u64,
    /// Replays the receivers accepted.
    pub accepted: u64,
    /// Of those, first deliveries of copies the network had lost on their
    /// way to that same node (their contents were older than what it knew).
    pub first_deliveries: u64,
    /// Crashed nodes that a replay put back into some view.
    pub resurrected: usize,
}

/// One fan-out's figures.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FanOut {
    /// Members per gossip round.
    pub fan_out: usize,
    /// Periods until a 1 KiB update reached 99.9% of views.
    pub update: Spread,
    /// Share of views with the update after one period.
    pub coverage_1: Spread,
    /// Periods until a crash left 99.9% of views.
    pub crash: Spread,
    /// Datagrams per node and period while updates flow (one per second).
    pub datagrams: Spread,
    /// Sends to two or more members per node and period.
    pub broadcasts: Spread,
    /// Modelled sender CPU per node and period with the kernel fan-out, µs.
    pub kernel_us: Spread,
    /// Modelled sender CPU per node and period with one send per copy, µs.
    pub user_us: Spread,
}

/// Everything measured.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Results {
    /// Cost by size and loss.
    pub cost: Vec<Cost>,
    /// Update and crash timings.
    pub timings: Vec<Timing>,
    /// Partition heals.
    pub partitions: Vec<Timing>,
    /// Soak.
    pub soak: Option<Soak>,
    /// Replays.
    pub replay: Option<Replay>,
    /// Fan-outs.
    pub fan_out: Vec<FanOut>,
}

/// Sender CPU of one broadcast: the fixed cost of the system call and the
/// cost of each copy made in the kernel, or of one send per copy in user
/// space (the crate's benchmark matrix on this machine class; see
/// docs/benchmarks.md).
const KERNEL_SEND_US: f64 = 3.9;
const KERNEL_COPY_US: f64 = 0.57;
const USER_SEND_US: f64 = 2.1;

fn network(loss: f64) -> Network {
    Network {
        loss,
        ..Network::default()
    }
}

fn periods(d: Option<Duration>) -> Option<f64> {
    d.map(|d| d.as_secs_f64() / PERIOD.as_secs_f64())
}

/// A converged cluster of `n` (bootstrapped), warmed up for 10 periods.
fn cluster(n: usize, config: Config, loss: f64, seed: u64) -> Sim {
    let mut sim = Sim::new(n, config, network(loss), seed);
    sim.record_events = false;
    sim.bootstrap();
    sim.run_for(10 * PERIOD);
    sim
}

/// Runs `gossip sim`.
pub fn run(args: SimArgs) -> Result<(), BoxError> {
    let mut results = Results::default();
    if !args.plot_from.is_empty() {
        for path in &args.plot_from {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("reading {}: {e}", path.display()))?;
            let more: Results =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
            results.cost.extend(more.cost);
            results.timings.extend(more.timings);
            results.partitions.extend(more.partitions);
            if !more.fan_out.is_empty() {
                // A later run of the fan-out scenario replaces an earlier one.
                results.fan_out = more.fan_out;
            }
            results.soak = results.soak.or(more.soak);
            results.replay = results.replay.or(more.replay);
        }
        let path = args.svg.as_ref().ok_or("--plot-from needs --svg")?;
        std::fs::write(path, plot(&results))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        return Ok(());
    }
    let started = Instant::now();
    for scenario in &args.scenarios {
        match scenario {
            Scenario::Cost => cost(&args, &mut results),
            Scenario::Update => update(&args, &mut results),
            Scenario::Crash => crash(&args, &mut results),
            Scenario::Partition => partition(&args, &mut results),
            Scenario::Soak => soak(&args, &mut results),
            Scenario::Replay => replay(&args, &mut results),
            Scenario::Fanout => fan_out(&args, &mut results),
        }
        eprintln!("[{scenario:?} done after {:.0?}]", started.elapsed());
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&results)?)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        std::fs::write(path, plot(&results))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}

fn cost(args: &SimArgs, results: &mut Results) {
    println!(
        "\n## Steady state: per node and period (median, range over {} trials)\n",
        args.trials
    );
    println!(
        "| nodes | loss | datagrams out | bytes out | datagrams in | broadcasts | core CPU µs |"
    );
    println!("|---:|---:|---|---|---|---|---|");
    for &loss in &[0.0, args.loss] {
        for &n in &args.nodes {
            let mut samples: [Vec<Option<f64>>; 5] = Default::default();
            for trial in 0..args.trials {
                let mut sim = cluster(n, config(), loss, args.seed + trial);
                let before: Vec<_> = sim.hosts.iter().map(|h| h.node.stats()).collect();
                let window = 20;
                // The CPU of a few nodes, each replayed alone (see
                // Sim::cpu_of_trace): the simulation's own working set of
                // N x N member records would otherwise be measured too.
                let traced = [0, n / 3, 2 * n / 3];
                let mut cpu = 0.0;
                let mut rest = window * PERIOD;
                for &i in &traced {
                    sim.start_trace(i);
                    let slice = window * PERIOD / traced.len() as u32;
                    sim.run_for(slice);
                    rest -= slice;
                    let took = sim.cpu_of_trace(3).unwrap_or_default();
                    cpu += took.as_secs_f64() * 1e6 / (slice.as_secs_f64() / PERIOD.as_secs_f64());
                }
                sim.run_for(rest);
                let per = (n as f64) * f64::from(window);
                let mut sums = [0.0; 4];
                for (host, stats) in sim.hosts.iter().zip(&before) {
                    let now = host.node.stats();
                    sums[0] += (now.datagrams_out - stats.datagrams_out) as f64;
                    sums[1] += (now.bytes_out - stats.bytes_out) as f64;
                    sums[2] += (now.packets_in - stats.packets_in) as f64;
                    sums[3] += (now.sends - stats.sends) as f64;
                }
                for (sample, sum) in samples.iter_mut().zip(sums) {
                    sample.push(Some(sum / per));
                }
                samples[4].push(Some(cpu / traced.len() as f64));
            }
            let [d, b, r, s, c] = samples.map(|s| Spread::of(&s));
            println!(
                "| {n} | {:.0}% | {} | {} | {} | {} | {} |",
                loss * 100.0,
                d.show(""),
                b.show(""),
                r.show(""),
                s.show(""),
                c.show("")
            );
            results.cost.push(Cost {
                nodes: n,
                loss,
                datagrams: d,
                bytes: b,
                received: r,
                broadcasts: s,
                cpu_us: c,
            });
        }
    }
}

/// Periods until the share of live nodes that read a new 1 KiB value
/// reaches 99.9% and 100% (None past `limit`).
fn time_update(sim: &mut Sim, author: usize, limit: u32) -> (Option<f64>, Option<f64>, f64) {
    let value = vec![0xa5; 1024];
    sim.with(author, |node, now| node.set(b"update", value.clone(), now))
        .expect("1 KiB fits a datagram");
    let start = sim.now();
    let mut most = None;
    let mut coverage_1 = 0.0;
    let all = sim.run_until(limit * PERIOD, CHECK, |s| {
        let seen = s.seen_by(author, b"update", &value);
        let elapsed = s.now() - start;
        if elapsed <= PERIOD {
            coverage_1 = seen;
        }
        if most.is_none() && seen >= MOST {
            most = Some(elapsed);
        }
        seen >= 1.0
    });
    (periods(most), periods(all), coverage_1)
}

/// Periods until a crashed node is out of 99.9% and 100% of views.
fn time_crash(sim: &mut Sim, victim: usize, limit: u32) -> (Option<f64>, Option<f64>) {
    sim.crash(victim);
    let start = sim.now();
    let mut most = None;
    let all = sim.run_until(limit * PERIOD, CHECK, |s| {
        let removed = s.removed_by(victim);
        if most.is_none() && removed >= MOST {
            most = Some(s.now() - start);
        }
        removed >= 1.0
    });
    (periods(most), periods(all))
}

fn update(args: &SimArgs, results: &mut Results) {
    let title = format!(
        "A 1 KiB update at {:.0}% loss: periods until seen",
        args.loss * 100.0
    );
    timings(args, results, "update", &title, |sim, trial, n| {
        let (most, all, _) = time_update(sim, (trial as usize * 7919) % n, 30);
        (most, all)
    });
}

fn crash(args: &SimArgs, results: &mut Results) {
    let title = format!(
        "A crash at {:.0}% loss: periods until out of the views",
        args.loss * 100.0
    );
    timings(args, results, "crash", &title, |sim, trial, n| {
        time_crash(sim, (trial as usize * 104_729) % n, 60)
    });
}

/// Runs `measure` (times to 99.9% and to all) on a fresh cluster per trial
/// and size, and prints the table.
fn timings(
    args: &SimArgs,
    results: &mut Results,
    what: &str,
    title: &str,
    measure: impl Fn(&mut Sim, u64, usize) -> (Option<f64>, Option<f64>),
) {
    println!("\n## {title} (median, range)\n");
    println!("| nodes | by 99.9% | by all |");
    println!("|---:|---|---|");
    for &n in &args.nodes {
        let (mut most, mut all) = (Vec::new(), Vec::new());
        for trial in 0..args.trials {
            let mut sim = cluster(n, config(), args.loss, args.seed + trial);
            let (m, a) = measure(&mut sim, trial, n);
            most.push(m);
            all.push(a);
        }
        let timing = Timing {
            nodes: n,
            what: what.into(),
            most: Spread::of(&most),
            all: Spread::of(&all),
        };
        println!(
            "| {n} | {} | {} |",
            timing.most.show(""),
            timing.all.show("")
        );
        results.timings.push(timing);
    }
}

/// Share of ordered pairs of live nodes in which the first lists the second.
fn pairs_known(sim: &Sim) -> f64 {
    let live = sim.live();
    let mut known = 0usize;
    for &i in &live {
        for &x in &live {
            if i != x && sim.lists(i, x) {
                known += 1;
            }
        }
    }
    known as f64 / (live.len() * (live.len() - 1)).max(1) as f64
}

fn partition(args: &SimArgs, results: &mut Results) {
    println!(
        "\n## Partitions (two halves) at {:.0}% loss: periods from the end of the partition until healed\n",
        args.loss * 100.0
    );
    println!("| nodes | partition, periods | 99.9% of views | every view |");
    println!("|---:|---:|---|---|");
    for &n in args
        .nodes
        .iter()
        .filter(|&&n| n <= args.partition_max_nodes)
    {
        for &length in &args.partitions {
            let (mut most, mut all) = (Vec::new(), Vec::new());
            for trial in 0..args.trials {
                let mut sim = cluster(n, config(), args.loss, args.seed + trial);
                sim.partition(|i| (i % 2) as u8);
                sim.run_for(length * PERIOD);
                sim.heal();
                let start = sim.now();
                let mut m = None;
                let a = sim.run_until(30 * PERIOD, CHECK, |s| {
                    let known = pairs_known(s);
                    if m.is_none() && known >= MOST {
                        m = Some(s.now() - start);
                    }
                    known >= 1.0
                });
                most.push(periods(m));
                all.push(periods(a));
            }
            let timing = Timing {
                nodes: n,
                what: format!("partition of {length} periods"),
                most: Spread::of(&most),
                all: Spread::of(&all),
            };
            println!(
                "| {n} | {length} | {} | {} |",
                timing.most.show(""),
                timing.all.show("")
            );
            results.partitions.push(timing);
        }
    }
}

fn soak(args: &SimArgs, results: &mut Results) {
    let n = args.soak_nodes;
    let starved = ((n as f64 * args.starved).round() as usize).max(1);
    let mut sim = Sim::new(n, config(), network(args.loss), args.seed);
    sim.bootstrap();
    for i in 0..starved {
        sim.hosts[(i * 37 + 5) % n].starved = true;
    }
    let total = Duration::from_secs_f64(args.soak_hours * 3600.0);
    // In slices, dropping the events of each (only Failed ones are kept).
    let mut false_removals = Vec::new();
    let slice = Duration::from_secs(600);
    let mut done = Duration::ZERO;
    while done < total {
        let step = slice.min(total - done);
        sim.run_for(step);
        done += step;
        false_removals.extend(sim.events(|e| matches!(e, Event::Failed(_))));
        for host in &mut sim.hosts {
            host.events.clear();
        }
    }
    let falsely: HashSet<String> = false_removals
        .iter()
        .map(|(_, _, e)| format!("{e:?}"))
        .collect();
    let outcome = Soak {
        nodes: n,
        starved,
        loss: args.loss,
        hours: args.soak_hours,
        suspicions: sim.total(|s| s.suspicions),
        false_removals: false_removals.len(),
        nodes_falsely_removed: falsely.len(),
    };
    println!(
        "\n## Soak: {n} nodes, {starved} CPU-starved (every packet and timer {:?}-{:?} late), {:.0}% loss, {} simulated hours\n",
        sim.net.starve_lag.0,
        sim.net.starve_lag.1,
        args.loss * 100.0,
        args.soak_hours
    );
    println!(
        "{} suspicions raised, {} false removals in any view ({} nodes)",
        outcome.suspicions, outcome.false_removals, outcome.nodes_falsely_removed
    );
    results.soak = Some(outcome);
}

fn replay(args: &SimArgs, results: &mut Results) {
    let n = 100;
    let mut config = config();
    config.dead_retention = 30 * PERIOD;
    let mut sim = cluster(n, config, args.loss, args.seed);
    sim.capture_every = 50;
    sim.with(3, |node, now| node.set(b"k", b"before".to_vec(), now))
        .expect("set");
    sim.run_for(20 * PERIOD);
    sim.capture_every = 0;
    let victims = [3, 17, 42];
    for &v in &victims {
        sim.crash(v);
    }
    // Past the dead's retention: every record of them is gone.
    sim.run_for(90 * PERIOD);
    let captured = sim.captured.len();
    let live = sim.live().len() as u64;
    let replayed = sim.replay_captured();
    sim.run_for(10 * PERIOD);
    let resurrected = victims.iter().filter(|&&v| sim.removed_by(v) < 1.0).count();
    let outcome = Replay {
        nodes: n,
        captured,
        replayed: replayed.replayed,
        accepted: replayed.accepted,
        first_deliveries: replayed.first_deliveries,
        resurrected,
    };
    println!(
        "\n## Replays: {captured} captured datagrams replayed to each of {live} live nodes after the dead were forgotten\n"
    );
    println!(
        "{} replays, {} accepted ({} of them first deliveries of copies lost on their way to that node), {} crashed nodes back in a view",
        outcome.replayed, outcome.accepted, outcome.first_deliveries, outcome.resurrected
    );
    results.replay = Some(outcome);
}

fn fan_out(args: &SimArgs, results: &mut Results) {
    let n = args.fan_out_nodes;
    println!(
        "\n## Fan-out at {n} nodes, {:.0}% loss, one 1 KiB update per second cluster-wide (median, range)\n",
        args.loss * 100.0
    );
    println!("Sender CPU modelled from the benchmark matrix: a send to several members {KERNEL_SEND_US} µs plus {KERNEL_COPY_US} µs per further copy with the kernel fan-out; {USER_SEND_US} µs per datagram in user space and for every send to one member.\n");
    println!("| fan-out | update, periods to 99.9% | seen after 1 period | crash, periods to 99.9% | datagrams | fan-outs | kernel µs | user-space µs |");
    println!("|---:|---|---|---|---|---|---|---|");
    for &k in &args.fan_outs {
        let mut samples: [Vec<Option<f64>>; 7] = Default::default();
        for trial in 0..args.trials {
            let mut config = config();
            config.gossip_nodes = k;
            let mut sim = cluster(n, config, args.loss, args.seed + trial);
            let (most, _, coverage_1) = time_update(&mut sim, (trial as usize * 31) % n, 30);
            samples[0].push(most);
            samples[1].push(Some(coverage_1));
            // Cost under a steady flow of updates.
            let before: Vec<_> = sim.hosts.iter().map(|h| h.node.stats()).collect();
            let window = 10u32;
            for second in 0..window {
                let author = (second as usize * 7 + 1) % n;
                sim.with(author, |node, now| {
                    node.set(b"flow", vec![second as u8; 512], now)
                })
                .expect("fits");
                sim.run_for(PERIOD);
            }
            let per = n as f64 * f64::from(window);
            let (mut datagrams, mut fan_outs, mut copies) = (0.0, 0.0, 0.0);
            for (host, stats) in sim.hosts.iter().zip(&before) {
                let now = host.node.stats();
                datagrams += (now.datagrams_out - stats.datagrams_out) as f64;
                fan_outs += (now.fan_outs - stats.fan_outs) as f64;
                copies += (now.fan_out_copies - stats.fan_out_copies) as f64;
            }
            let (datagrams, fan_outs, copies) = (datagrams / per, fan_outs / per, copies / per);
            // Single-destination sends are plain sends in both modes.
            let single = datagrams - copies;
            samples[3].push(Some(datagrams));
            samples[4].push(Some(fan_outs));
            samples[5].push(Some(
                single * USER_SEND_US
                    + fan_outs * KERNEL_SEND_US
                    + (copies - fan_outs) * KERNEL_COPY_US,
            ));
            samples[6].push(Some(datagrams * USER_SEND_US));
            let (most, _) = time_crash(&mut sim, (trial as usize * 131 + 2) % n, 60);
            samples[2].push(most);
        }
        let [update, coverage_1, crash, datagrams, broadcasts, kernel_us, user_us] =
            samples.map(|s| Spread::of(&s));
        println!(
            "| {k} | {} | {} | {} | {} | {} | {} | {} |",
            update.show(""),
            coverage_1.show(""),
            crash.show(""),
            datagrams.show(""),
            broadcasts.show(""),
            kernel_us.show(""),
            user_us.show("")
        );
        results.fan_out.push(FanOut {
            fan_out: k,
            update,
            coverage_1,
            crash,
            datagrams,
            broadcasts,
            kernel_us,
            user_us,
        });
    }
}

/// A point of a plot series: `x`, and the median, smallest and largest of
/// `spread` divided by `scale`.
fn point(x: f64, spread: &Spread, scale: f64) -> (f64, f64, f64, f64) {
    (
        x,
        spread.median / scale,
        spread.min / scale,
        spread.max / scale,
    )
}

/// Two panels: per-node datagrams and core CPU by cluster size (log
/// scale), and update time and modelled CPU by fan-out.
fn plot(results: &Results) -> String {
    let (w, h) = (900.0, 360.0);
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let by_size = |lossy: bool, spread: fn(&Cost) -> &Spread, scale: f64| -> Vec<_> {
        results
            .cost
            .iter()
            .filter(|c| (c.loss > 0.0) == lossy)
            .map(|c| point(c.nodes as f64, spread(c), scale))
            .collect()
    };
    let by_fan_out = |spread: fn(&FanOut) -> &Spread, scale: f64| -> Vec<_> {
        results
            .fan_out
            .iter()
            .map(|f| point(f.fan_out as f64, spread(f), scale))
            .collect()
    };
    panel(
        &mut svg,
        (60.0, 40.0, 360.0, 260.0),
        "Per node and period, by cluster size (sim)",
        "nodes (log)",
        true,
        &[
            (
                "datagrams out, no loss",
                "#17becf",
                by_size(false, |c| &c.datagrams, 1.0),
            ),
            (
                "datagrams out, 10% loss",
                "#1f77b4",
                by_size(true, |c| &c.datagrams, 1.0),
            ),
            (
                "core CPU / 10 µs, 10% loss",
                "#d62728",
                by_size(true, |c| &c.cpu_us, 10.0),
            ),
            (
                "KB out, 10% loss",
                "#2ca02c",
                by_size(true, |c| &c.bytes, 1000.0),
            ),
        ],
    );
    panel(
        &mut svg,
        (510.0, 40.0, 360.0, 260.0),
        "By fan-out: update time and sender CPU",
        "fan-out",
        false,
        &[
            (
                "update, periods to 99.9%",
                "#9467bd",
                by_fan_out(|f| &f.update, 1.0),
            ),
            (
                "kernel CPU / 10 µs",
                "#1f77b4",
                by_fan_out(|f| &f.kernel_us, 10.0),
            ),
            (
                "user-space CPU / 10 µs",
                "#ff7f0e",
                by_fan_out(|f| &f.user_us, 10.0),
            ),
        ],
    );
    svg.push_str("</svg>\n");
    svg
}

type Series<'a> = (&'a str, &'a str, Vec<(f64, f64, f64, f64)>);

fn panel(
    svg: &mut String,
    (x0, y0, pw, ph): (f64, f64, f64, f64),
    title: &str,
    x_label: &str,
    log_x: bool,
    series: &[Series<'_>],
) {
    let points: Vec<&(f64, f64, f64, f64)> = series.iter().flat_map(|s| &s.2).collect();
    if points.is_empty() {
        return;
    }
    let fx = |x: f64| if log_x { x.log10() } else { x };
    let (xmin, xmax) = points.iter().fold((f64::MAX, f64::MIN), |(a, b), p| {
        (a.min(fx(p.0)), b.max(fx(p.0)))
    });
    let ymax = points
        .iter()
        .map(|p| p.3)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max)
        * 1.1;
    let ymax = if ymax > 0.0 { ymax } else { 1.0 };
    let sx = |x: f64| x0 + (fx(x) - xmin) / (xmax - xmin).max(1e-9) * pw;
    let sy = |y: f64| y0 + ph - y / ymax * ph;
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" font-weight="bold">{title}</text>"#,
        x0,
        y0 - 15.0
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>"##
    );
    for i in 0..=4 {
        let y = ymax * f64::from(i) / 4.0;
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="end" fill="#555">{y:.1}</text>"##,
            x0 - 5.0,
            sy(y) + 4.0
        );
    }
    let mut xs: Vec<f64> = points.iter().map(|p| p.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    for x in xs {
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="{}" text-anchor="middle" fill="#555">{x}</text>"##,
            sx(x),
            y0 + ph + 15.0
        );
    }
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        x0 + pw / 2.0,
        y0 + ph + 32.0
    );
    for (i, (name, colour, pts)) in series.iter().enumerate() {
        let path: Vec<String> = pts
            .iter()
            .filter(|p| p.1.is_finite())
            .map(|p| format!("{:.1},{:.1}", sx(p.0), sy(p.1)))
            .collect();
        let _ = writeln!(
            svg,
            r#"<polyline points="{}" fill="none" stroke="{colour}" stroke-width="2"/>"#,
            path.join(" ")
        );
        for p in pts.iter().filter(|p| p.2.is_finite() && p.3.is_finite()) {
            let _ = writeln!(
                svg,
                r#"<line x1="{x:.1}" x2="{x:.1}" y1="{:.1}" y2="{:.1}" stroke="{colour}"/><circle cx="{x:.1}" cy="{:.1}" r="3" fill="{colour}"/>"#,
                sy(p.2),
                sy(p.3),
                sy(p.1),
                x = sx(p.0)
            );
        }
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="{}" fill="{colour}">{name}</text>"#,
            x0 + 8.0,
            y0 + 16.0 + 16.0 * i as f64
        );
    }
}
