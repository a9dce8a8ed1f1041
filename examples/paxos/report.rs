//! `paxos report`: medians of repeated `paxos cluster` runs (one JSON line
//! each) as a markdown table per scenario, one row per number of replicas
//! and set of in-kernel mechanisms (Electrode's ablation), and an SVG plot of
//! throughput and leader CPU per request against the number of replicas.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Deserialize;

/// The fields of one run used here.
#[derive(Clone, Debug)]
struct Run {
    replicas: u64,
    /// `none`, `all`, or a list of mechanisms.
    accel: String,
    loss: u64,
    killed: bool,
    threads: u64,
    /// Run with `--leader-cpu`.
    pinned: bool,
    throughput: f64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    leader_cpu: f64,
    machine_cpu: f64,
    /// Acks the leader's user space received per committed op (NaN if not known).
    leader_acks: f64,
    linearizable: bool,
    completed: bool,
}

/// The fields of a `paxos cluster` line read here (the others, such as the
/// nested replica statistics, are ignored).
#[derive(Deserialize)]
struct RunJson {
    replicas: u64,
    broadcast: String,
    /// Absent in results from before the quorum and reply mechanisms.
    #[serde(default)]
    accel: Option<String>,
    #[serde(default)]
    leader_acks_per_op: Option<f64>,
    #[serde(default)]
    leader_cpu: Option<u64>,
    loss_percent: u64,
    #[serde(default)]
    killed_follower: bool,
    threads: u64,
    requests: u64,
    completed: u64,
    gave_up: u64,
    throughput: f64,
    p50_us: f64,
    p90_us: f64,
    p95_us: f64,
    p99_us: f64,
    leader_cpu_us_per_request: f64,
    machine_cpu_us_per_request: f64,
    linearizable: Option<bool>,
}

fn parse(line: &str) -> Result<Run, String> {
    let r: RunJson = serde_json::from_str(line).map_err(|e| {
        let start: String = line.chars().take(80).collect();
        format!("{e} in: {start}")
    })?;
    Ok(Run {
        replicas: r.replicas,
        accel: r.accel.unwrap_or_else(|| {
            if r.broadcast == "kernel" {
                "broadcast"
            } else {
                "none"
            }
            .to_string()
        }),
        loss: r.loss_percent,
        killed: r.killed_follower,
        threads: r.threads,
        pinned: r.leader_cpu.is_some(),
        throughput: r.throughput,
        p50: r.p50_us,
        p90: r.p90_us,
        p95: r.p95_us,
        p99: r.p99_us,
        leader_cpu: r.leader_cpu_us_per_request,
        machine_cpu: r.machine_cpu_us_per_request,
        leader_acks: r.leader_acks_per_op.unwrap_or(f64::NAN),
        linearizable: r.linearizable == Some(true),
        completed: r.gave_up == 0 && r.completed == r.requests,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Median of each measure over the runs of one configuration.
#[derive(Clone, Debug)]
struct Summary {
    runs: usize,
    throughput: f64,
    p50: f64,
    p90: f64,
    p95: f64,
    p99: f64,
    leader_cpu: f64,
    machine_cpu: f64,
    leader_acks: f64,
    all_good: bool,
    /// Throughputs in file order, for pairing runs with the baseline's.
    throughputs: Vec<f64>,
}

fn summarize(runs: &[&Run]) -> Summary {
    let m = |f: fn(&Run) -> f64| median(runs.iter().map(|r| f(r)).collect());
    Summary {
        runs: runs.len(),
        throughput: m(|r| r.throughput),
        p50: m(|r| r.p50),
        p90: m(|r| r.p90),
        p95: m(|r| r.p95),
        p99: m(|r| r.p99),
        leader_cpu: m(|r| r.leader_cpu),
        machine_cpu: m(|r| r.machine_cpu),
        leader_acks: m(|r| r.leader_acks),
        all_good: runs.iter().all(|r| r.linearizable && r.completed),
        throughputs: runs.iter().map(|r| r.throughput).collect(),
    }
}

/// Leader pinned (`--leader-cpu`), loss percentage, follower killed, clients.
type Scenario = (bool, u64, bool, u64);

fn scenario_name((pinned, loss, killed, threads): Scenario) -> String {
    let faults = match (loss, killed) {
        (0, false) => "no faults".into(),
        (0, true) => "a follower killed mid-run".into(),
        (l, false) => format!("{l}% loss on the bridge"),
        (l, true) => format!("{l}% loss and a follower killed"),
    };
    let s = if threads == 1 { "" } else { "s" };
    let placement = if pinned {
        ", leader pinned, followers' receive on the other CPU"
    } else {
        ""
    };
    format!("{faults}, {threads} client{s}{placement}")
}

/// The order of the mechanisms in tables and plots: the baseline first.
fn accel_rank(accel: &str) -> AccelKey {
    let rank = ["none", "broadcast", "quorum", "reply", "all"]
        .iter()
        .position(|a| *a == accel)
        .unwrap_or(4);
    (rank, accel.to_string())
}

/// A set of mechanisms, as `accel_rank` orders them.
type AccelKey = (usize, String);
/// replicas -> mechanisms -> summary.
type Rows = BTreeMap<u64, BTreeMap<AccelKey, Summary>>;
/// scenario -> rows.
type Table = BTreeMap<Scenario, Rows>;

fn table(runs: &[Run]) -> Table {
    let mut groups: BTreeMap<(Scenario, u64, AccelKey), Vec<&Run>> = BTreeMap::new();
    for r in runs {
        groups
            .entry((
                (r.pinned, r.loss, r.killed, r.threads),
                r.replicas,
                accel_rank(&r.accel),
            ))
            .or_default()
            .push(r);
    }
    let mut table = Table::new();
    for ((scenario, replicas, accel), group) in groups {
        table
            .entry(scenario)
            .or_default()
            .entry(replicas)
            .or_default()
            .insert(accel, summarize(&group));
    }
    table
}

/// Reads JSON lines (other lines are skipped) and renders the markdown
/// table; writes the SVG plot of the fault-free runs to `svg` if given.
pub fn report(text: &str, svg: Option<&std::path::Path>) -> Result<String, String> {
    let runs = text
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(parse)
        .collect::<Result<Vec<_>, _>>()?;
    if runs.is_empty() {
        return Err("no results (JSON lines of `paxos cluster`) in the input".into());
    }
    let table = table(&runs);
    let mut out = String::new();
    for (scenario, rows) in &table {
        let _ = writeln!(out, "\n#### {}\n", scenario_name(*scenario));
        out.push_str(
            "| replicas | in-kernel | runs | throughput (req/s) | p50 (us) | p90 (us) | p95 (us) | p99 (us) | leader CPU (us/req) | machine CPU (us/req) | acks to the leader's user space per op | linearizable, complete |\n",
        );
        out.push_str("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for (replicas, by_accel) in rows {
            for ((_, accel), s) in by_accel {
                let acks = if s.leader_acks.is_nan() {
                    "-".to_string()
                } else {
                    format!("{:.2}", s.leader_acks)
                };
                let _ = writeln!(
                    out,
                    "| {replicas} | {accel} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1} | {:.1} | {acks} | {} |",
                    s.runs,
                    s.throughput,
                    s.p50,
                    s.p90,
                    s.p95,
                    s.p99,
                    s.leader_cpu,
                    s.machine_cpu,
                    if s.all_good { "yes" } else { "NO" }
                );
            }
        }
        for (replicas, by_accel) in rows {
            let Some(base) = by_accel.get(&accel_rank("none")) else {
                continue;
            };
            let gains: Vec<String> = by_accel
                .iter()
                .filter(|((rank, _), _)| *rank > 0)
                .map(|((_, accel), k)| {
                    // The i-th run against the baseline's i-th: neighbours in
                    // time, so a drift in the machine's load cancels out.
                    let paired = median(
                        k.throughputs
                            .iter()
                            .zip(&base.throughputs)
                            .map(|(k, u)| k / u)
                            .collect(),
                    );
                    format!(
                        "{accel}: throughput {:+.0}% (paired runs {:+.0}%), p50 x{:.2}, leader CPU per request {:+.0}%",
                        100.0 * (k.throughput / base.throughput - 1.0),
                        100.0 * (paired - 1.0),
                        k.p50 / base.p50,
                        100.0 * (k.leader_cpu / base.leader_cpu - 1.0)
                    )
                })
                .collect();
            if !gains.is_empty() {
                let _ = writeln!(
                    out,
                    "\n{replicas} replicas, against none: {}.",
                    gains.join("; ")
                );
            }
        }
    }
    if let Some(path) = svg {
        // The fault-free runs with the most clients.
        let fault_free = table
            .iter()
            .filter(|((_, loss, killed, _), _)| *loss == 0 && !killed)
            .max_by_key(|((pinned, _, _, threads), _)| (*threads, !pinned));
        if let Some((_, rows)) = fault_free {
            std::fs::write(path, plot(rows))
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
        }
    }
    Ok(out)
}

/// A chart: title, the measure plotted, left edge.
type Panel = (&'static str, fn(&Summary) -> f64, f64);

/// Two line charts side by side: throughput and leader CPU per request,
/// one line per set of mechanisms.
fn plot(rows: &Rows) -> String {
    let xs: Vec<u64> = rows.keys().copied().collect();
    let accels: Vec<(usize, String)> = {
        let mut all: Vec<(usize, String)> = rows.values().flat_map(|m| m.keys().cloned()).collect();
        all.sort();
        all.dedup();
        all
    };
    let series = |f: fn(&Summary) -> f64, accel: &(usize, String)| -> Vec<(u64, f64)> {
        rows.iter()
            .filter_map(|(x, by_accel)| by_accel.get(accel).map(|s| (*x, f(s))))
            .collect()
    };
    let mut svg = String::from(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"360\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"900\" height=\"360\" fill=\"white\"/>\n",
    );
    let panels: [Panel; 2] = [
        ("Throughput (requests/s)", |s| s.throughput, 30.0),
        ("Leader CPU per request (us)", |s| s.leader_cpu, 480.0),
    ];
    for (title, f, left) in panels {
        let lines: Vec<(Vec<(u64, f64)>, String)> =
            accels.iter().map(|a| (series(f, a), a.1.clone())).collect();
        let max = lines
            .iter()
            .flat_map(|(points, _)| points.iter().map(|p| p.1))
            .fold(0.0_f64, f64::max)
            .max(1e-9)
            * 1.15;
        let (w, h, top) = (380.0, 250.0, 50.0);
        let x_of = |x: u64| {
            let (lo, hi) = (xs[0] as f64, *xs.last().unwrap_or(&xs[0]) as f64);
            left + 40.0 + (x as f64 - lo) / (hi - lo).max(1.0) * (w - 60.0)
        };
        let y_of = |y: f64| top + h - y / max * h;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"30\" font-size=\"14\" font-weight=\"bold\">{title}</text>",
            left + 40.0
        );
        let _ = writeln!(
            svg,
            "<line x1=\"{0}\" y1=\"{1}\" x2=\"{0}\" y2=\"{2}\" stroke=\"black\"/><line x1=\"{0}\" y1=\"{2}\" x2=\"{3}\" y2=\"{2}\" stroke=\"black\"/>",
            left + 30.0,
            top,
            top + h,
            left + w
        );
        for k in 0..=4 {
            let v = max / 1.15 * f64::from(k) / 4.0;
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{v:.0}</text><line x1=\"{}\" y1=\"{:.1}\" x2=\"{}\" y2=\"{:.1}\" stroke=\"#ddd\"/>",
                left + 26.0,
                y_of(v) + 4.0,
                left + 30.0,
                y_of(v),
                left + w,
                y_of(v)
            );
        }
        for &x in &xs {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">{x}</text>",
                x_of(x),
                top + h + 18.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{}\" text-anchor=\"middle\">replicas</text>",
            left + w / 2.0 + 20.0,
            top + h + 36.0
        );
        const COLORS: [&str; 6] = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#d62728", "#555",
        ];
        for (i, (points, name)) in lines.iter().enumerate() {
            let color = COLORS[i.min(COLORS.len() - 1)];
            let dy = 16.0 * i as f64;
            let path: Vec<String> = points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", x_of(x), y_of(y)))
                .collect();
            let _ = writeln!(
                svg,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"2\"/>",
                path.join(" ")
            );
            for &(x, y) in points.iter() {
                let _ = writeln!(
                    svg,
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"3\" fill=\"{color}\"/>",
                    x_of(x),
                    y_of(y)
                );
            }
            let _ = writeln!(
                svg,
                "<text x=\"{}\" y=\"{}\" fill=\"{color}\">{name}</text>",
                left + w - 110.0,
                top + 10.0 + dy
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(replicas: u64, mode: &str, throughput: f64, cpu: f64) -> String {
        serde_json::json!({
            "replicas": replicas,
            "broadcast": mode,
            "loss_percent": 0,
            "killed_follower": false,
            "threads": 4,
            "requests": 10,
            "completed": 10,
            "gave_up": 0,
            "throughput": throughput,
            "p50_us": 1,
            "p90_us": 2,
            "p95_us": 3,
            "p99_us": 4,
            "leader_cpu_us_per_request": cpu,
            "machine_cpu_us_per_request": 9,
            "linearizable": true,
            "replica_stats": [{"mode": "user", "broadcasts": 5}],
        })
        .to_string()
    }

    #[test]
    fn medians_and_gains_are_reported() {
        let text = [
            line(3, "kernel", 100.0, 10.0),
            line(3, "kernel", 300.0, 10.0),
            line(3, "kernel", 200.0, 10.0),
            line(3, "user", 100.0, 20.0),
            "not json".into(),
        ]
        .join("\n");
        // Results from before --accel: kernel fan-out alone, and none.
        let table = report(&text, None).unwrap();
        assert!(table.contains("| 3 | broadcast | 3 | 200 |"), "{table}");
        assert!(table.contains("| 3 | none | 1 | 100 |"), "{table}");
        assert!(
            table.contains(
                "broadcast: throughput +100% (paired runs +0%), p50 x1.00, leader CPU per request -50%"
            ),
            "{table}"
        );
    }

    #[test]
    fn the_ablation_is_one_row_per_set_of_mechanisms() {
        let with = |accel: &str, throughput: f64| {
            let mut v: serde_json::Value =
                serde_json::from_str(&line(7, "user", throughput, 10.0)).unwrap();
            v["accel"] = accel.into();
            v["leader_acks_per_op"] = if accel.contains("quorum") || accel == "all" {
                1.0
            } else {
                6.0
            }
            .into();
            v.to_string()
        };
        let text = [
            with("all", 300.0),
            with("none", 100.0),
            with("quorum", 150.0),
            with("reply", 120.0),
            with("broadcast", 130.0),
        ]
        .join("\n");
        let table = report(&text, None).unwrap();
        let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| 7 |")).collect();
        let order: Vec<&str> = rows
            .iter()
            .map(|r| r.split('|').nth(2).unwrap().trim())
            .collect();
        assert_eq!(
            order,
            ["none", "broadcast", "quorum", "reply", "all"],
            "{table}"
        );
        assert!(
            rows[4].contains("| 1.00 |") && rows[0].contains("| 6.00 |"),
            "{table}"
        );
        assert!(table.contains("all: throughput +200%"), "{table}");
        let svg = plot(
            &super::table(&text.lines().map(|l| parse(l).unwrap()).collect::<Vec<_>>())
                [&(false, 0, false, 4)],
        );
        assert!(svg.contains(">all</text>") && svg.contains(">none</text>"));
    }

    #[test]
    fn reads_what_paxos_cluster_writes() {
        use crate::cluster::ClusterJson;
        use crate::shell::{ReplicaJson, ReplicaReport};
        let replica = ReplicaReport {
            index: 0,
            mode: elec_broadcast::Mode::Kernel,
            view: 0,
            leader: true,
            commit_number: 9,
            stats: crate::replica::ReplicaStats::default(),
            broadcast: elec_broadcast::Stats::default(),
            incomplete_broadcasts: 0,
            rejected_datagrams: 1,
            accel: crate::accel::Accel::ALL,
            received_datagrams: 20,
            received_acks: 9,
            quorum: None,
            reply: None,
        }
        .to_json();
        let json = serde_json::to_string(&replica).unwrap();
        assert!(
            json.starts_with(
                r#"{"index":0,"mode":"kernel","view":0,"leader":true,"commit_number":9,"prepares":0,"#
            ) && json.contains(r#","incomplete_broadcasts":0,"rejected_datagrams":1,"accel":"all","received_datagrams":20,"received_acks":9,"#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<ReplicaJson>(&json).unwrap(), replica);

        let summary = ClusterJson {
            replicas: 3,
            broadcast: "kernel",
            accel: "all".into(),
            quorum_ingress: "tc",
            loss_percent: 5,
            leader_cpu: None,
            killed_follower: true,
            threads: 4,
            requests: 10,
            figures: crate::cluster::ClientFigures {
                completed: 10,
                gave_up: 0,
                elapsed_s: crate::cluster::round_to(1.23456, 3),
                throughput: 8,
                mean_us: 400,
                p50_us: 300,
                p90_us: 500,
                p95_us: 600,
                p99_us: 900,
            },
            max_us: 1000,
            retries: 2,
            leader_cpu_us_per_request: crate::cluster::round_to(12.345_6, 2),
            leader_cpu_percent: 7.5,
            machine_cpu_us_per_request: 30.0,
            machine_busy_percent: 80.0,
            frames_dropped: None,
            linearizable: Some(true),
            history: 12,
            leader_datagrams_per_op: Some(2.22),
            leader_acks_per_op: Some(1.0),
            replica_stats: vec![Some(replica), None],
        };
        let line = serde_json::to_string(&summary).unwrap();
        assert!(
            line.starts_with(
                r#"{"replicas":3,"broadcast":"kernel","accel":"all","quorum_ingress":"tc","loss_percent":5,"leader_cpu":null,"killed_follower":true,"threads":4,"requests":10,"completed":10,"gave_up":0,"elapsed_s":1.235,"throughput":8,"mean_us":400,"#
            ),
            "{line}"
        );
        assert!(
            line.contains(r#""leader_cpu_us_per_request":12.35,"#)
                && line.contains(
                    r#""frames_dropped":null,"linearizable":true,"history":12,"leader_datagrams_per_op":2.22,"leader_acks_per_op":1.0,"replica_stats":[{"index":0,"#
                )
                && line.ends_with(r#"},null]}"#),
            "{line}"
        );
        let run = parse(&line).unwrap();
        assert!(run.accel == "all" && run.killed && run.linearizable && run.completed);
        assert_eq!(run.leader_acks, 1.0);
        assert_eq!((run.replicas, run.loss, run.threads), (3, 5, 4));
        assert_eq!(
            (run.throughput, run.p99, run.leader_cpu),
            (8.0, 900.0, 12.35)
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(report("", None).is_err());
        assert!(report("{\"replicas\":3}", None).is_err());
    }

    #[test]
    fn plot_has_both_series() {
        let runs: Vec<Run> = [line(3, "kernel", 1.0, 1.0), line(5, "user", 2.0, 2.0)]
            .iter()
            .map(|l| parse(l).unwrap())
            .collect();
        let svg = plot(&table(&runs)[&(false, 0, false, 4)]);
        assert!(svg.contains(">broadcast</text>") && svg.contains(">none</text>"));
        assert_eq!(svg.matches("<polyline").count(), 4);
    }
}
