//! The `matrix` subcommand: every mode at every (N, size) point in every
//! address family, repeated, modes and families side by side in a rotating
//! order, rejected runs retried; then the summary per point (medians and
//! ranges, the ratios against the target), the markdown table, and the
//! files written to `--out-dir`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use crate::bench::{Bench, Family, Run, ADDRS_PER_RECEIVER, MODES, RECEIVERS};
use crate::spread::{cell, Spread};
use crate::{plot, results, MatrixArgs};

/// The target of the project: kernel at most this fraction of the better
/// user-space mode, for every N >= 16.
pub const TARGET_RATIO: f64 = 0.40;
pub const TARGET_MIN_N: usize = 16;

/// A measured point: (N, size, family), in the order of the table (the
/// families of one (N, size) next to each other).
type Point = (usize, usize, Family);

/// Accepted runs per point, per repeat, per mode.
#[derive(Default)]
pub struct Results {
    pub runs: BTreeMap<Point, Vec<BTreeMap<&'static str, Run>>>,
    pub rejected: Vec<Rejected>,
}

/// A run that failed its delivery check (or failed outright).
pub struct Rejected {
    pub repeat: usize,
    pub family: Family,
    pub n: usize,
    pub size: usize,
    pub mode: &'static str,
    pub reason: String,
}

/// What the table and the plots show for one point.
pub struct PointSummary {
    pub family: Family,
    pub n: usize,
    pub size: usize,
    /// Sender CPU per broadcast (µs) per mode, in MODES order.
    pub cpu: [Option<Spread>; 3],
    pub kernel_over_sendto: Option<Spread>,
    pub kernel_over_sendmmsg: Option<Spread>,
    /// Kernel over the better (cheaper) user-space mode of the same repeat.
    pub kernel_over_best: Option<Spread>,
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
    if args.families().is_empty() {
        return Err("--families must not be empty".into());
    }
    Family::check_sizes(&args.families(), &args.sizes)
}

/// The `matrix` subcommand.
pub fn run(args: &MatrixArgs) -> Result<(), String> {
    validate(args)?;
    let families = args.families();
    let bench = Bench::with_families(&args.common, &families)?;
    let started = Instant::now();
    let mut results = Results::default();
    let points: Vec<(usize, usize)> = args
        .ns
        .iter()
        .flat_map(|&n| args.sizes.iter().map(move |&s| (n, s)))
        .collect();
    // Tags the progress lines only when there is more than IPv4.
    let tag = |family: Family| {
        if families == [Family::V4] {
            String::new()
        } else {
            format!("{family} ")
        }
    };
    for repeat in 0..args.repeats {
        for (p, &(n, size)) in points.iter().enumerate() {
            // The same pacing, and so the same pacing-only CPU, in every
            // family.
            let pacing = bench.pacing(n, size);
            let count = pacing.run_length(args.count, args.min_run_ms);
            let pacing_cpu_us = bench.pacing_cpu_us(count, pacing)?;
            // Rotate the order so that no family, and no mode, always runs
            // first or last.
            for f in 0..families.len() {
                let family = families[(f + repeat + p) % families.len()];
                let mut accepted = BTreeMap::new();
                for k in 0..MODES.len() {
                    let mode = MODES[(k + repeat + p) % MODES.len()];
                    let mut attempt = 0;
                    loop {
                        match bench.run_as(family, mode, n, size, count) {
                            Ok(mut run) => {
                                run.pacing_cpu_us = pacing_cpu_us;
                                eprintln!(
                                    "[{}/{}] {}N={n:<3} {size:>4} B {mode:<8} {:>8.2} \
                                     µs/broadcast (raw {:.2}, pacing {:.2})",
                                    repeat + 1,
                                    args.repeats,
                                    tag(family),
                                    run.per_broadcast_us(),
                                    run.raw_per_broadcast_us(),
                                    pacing_cpu_us as f64 / count as f64
                                );
                                accepted.insert(mode, run);
                                break;
                            }
                            Err(reason) => {
                                eprintln!(
                                    "[{}/{}] {}N={n} {size} B {mode}: REJECTED: {reason}",
                                    repeat + 1,
                                    args.repeats,
                                    tag(family)
                                );
                                results.rejected.push(Rejected {
                                    repeat,
                                    family,
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
                    .entry((n, size, family))
                    .or_insert_with(|| vec![BTreeMap::new(); args.repeats])[repeat] = accepted;
            }
        }
    }
    let elapsed = started.elapsed();
    drop(bench);

    let summary = summarize(&results);
    let table = markdown_table(&summary, args, &families);
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
        &results::to_json(&results, &summary, args, elapsed)?,
    )?;
    write("results.md", &table)?;
    for &family in &families {
        // One figure of each kind per family: IPv4's under the names they
        // had before there was IPv6.
        let suffix = match family {
            Family::V4 => "",
            Family::V6 => "-ipv6",
        };
        let of_family: Vec<&PointSummary> = summary.iter().filter(|p| p.family == family).collect();
        write(
            &format!("sender-cpu{suffix}.svg"),
            &plot::sender_cpu(&of_family, args, family),
        )?;
        write(
            &format!("ratio{suffix}.svg"),
            &plot::ratio(&of_family, args, family),
        )?;
    }
    if !results.rejected.is_empty() {
        eprintln!(
            "{} run(s) were rejected for loss or corruption (listed in results.json); \
             they are not in the figures",
            results.rejected.len()
        );
    }
    Ok(())
}

/// Medians and ranges per point; ratios from the repeats in which all three
/// modes were accepted.
pub fn summarize(results: &Results) -> Vec<PointSummary> {
    results
        .runs
        .iter()
        .map(|(&(n, size, family), repeats)| {
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
                family,
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

/// results.md: one row per point, and whether it meets the target. With
/// more than IPv4, a family column (the families of one (N, size) on
/// adjacent rows); IPv4 alone keeps the table it had before.
fn markdown_table(summary: &[PointSummary], args: &MatrixArgs, families: &[Family]) -> String {
    let with_family = families != [Family::V4];
    let mut t = String::new();
    let side_by_side = if families.len() > 1 {
        "modes and families"
    } else {
        "modes"
    };
    let _ = writeln!(
        t,
        "Sender CPU per broadcast in µs (user + system, pacing subtracted), median \
         (min–max) of {} repeats; runs of at least {} broadcasts and {} ms; ratios per \
         repeat, {side_by_side} run side by side.\n",
        args.repeats, args.count, args.min_run_ms
    );
    let _ = writeln!(
        t,
        "| N | size |{} kernel µs | sendmmsg µs | sendto µs | kernel/sendto | kernel/sendmmsg \
         | kernel/best user-space | ≤ {TARGET_RATIO:.2}? |",
        if with_family { " family |" } else { "" }
    );
    let _ = writeln!(
        t,
        "|--:|--:|{}--:|--:|--:|--:|--:|--:|:-:|",
        if with_family { ":-:|" } else { "" }
    );
    for p in summary {
        let verdict = match p.kernel_over_best {
            _ if p.n < TARGET_MIN_N => "n/a",
            Some(s) if s.median <= TARGET_RATIO => "yes",
            Some(_) => "no",
            None => "—",
        };
        let _ = writeln!(
            t,
            "| {} | {} B |{} {} | {} | {} | {} | {} | {} | {verdict} |",
            p.n,
            p.size,
            if with_family {
                format!(" {} |", p.family)
            } else {
                String::new()
            },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::Report;
    use crate::pacing::Pacing;
    use clap::Parser;

    fn args(extra: &[&str]) -> MatrixArgs {
        let argv = ["bench_matrix", "matrix"].iter().chain(extra);
        match crate::Cli::parse_from(argv).command {
            crate::Task::Matrix(m) => m,
            _ => unreachable!(),
        }
    }

    /// A run of `mode` costing `us` per broadcast (no pacing).
    fn run(mode: &str, us: u64) -> Run {
        Run {
            report: Report {
                mode: mode.into(),
                broadcasts: 1000,
                destinations: 16,
                copies_sent: 16_000,
                copies_failed: 0,
                calls_failed: Some(0),
                failed_per_destination: None,
                cpu_user_us: 0,
                cpu_sys_us: us * 1000,
                wall_us: 1,
                error: None,
            },
            line: String::new(),
            pacing: Pacing {
                pace_us: 1,
                every: 1,
            },
            pacing_cpu_us: 0,
        }
    }

    fn results() -> Results {
        let mut results = Results::default();
        for (family, kernel) in [(Family::V6, 5), (Family::V4, 4)] {
            let modes = BTreeMap::from([
                ("kernel", run("kernel", kernel)),
                ("sendmmsg", run("sendmmsg", 20)),
                ("sendto", run("sendto", 40)),
            ]);
            results.runs.insert((16, 64, family), vec![modes]);
        }
        results
    }

    #[test]
    fn sizes_are_checked_against_each_family() {
        assert!(validate(&args(&["--sizes", "64,1472"])).is_ok());
        assert!(validate(&args(&["--sizes", "64,1472", "--ipv6"])).is_err());
        assert!(validate(&args(&["--sizes", "1452", "--families", "4,6"])).is_ok());
        assert!(validate(&args(&["--sizes", "1453", "--families", "4,6"])).is_err());
    }

    #[test]
    fn families_of_a_point_are_summarized_apart_on_adjacent_rows() {
        let summary = summarize(&results());
        let keys: Vec<_> = summary.iter().map(|p| (p.n, p.size, p.family)).collect();
        assert_eq!(keys, [(16, 64, Family::V4), (16, 64, Family::V6)]);
        let ratio = |p: &PointSummary| p.kernel_over_sendmmsg.unwrap().median;
        assert_eq!((ratio(&summary[0]), ratio(&summary[1])), (0.2, 0.25));

        let both = markdown_table(&summary, &args(&[]), &[Family::V4, Family::V6]);
        assert!(both.contains("| N | size | family | kernel µs |"), "{both}");
        assert!(
            both.contains("| 16 | 64 B | IPv4 | 4.00 (4.00–4.00) |"),
            "{both}"
        );
        assert!(
            both.contains("| 16 | 64 B | IPv6 | 5.00 (5.00–5.00) |"),
            "{both}"
        );
        assert!(
            both.contains("modes and families run side by side"),
            "{both}"
        );

        // IPv4 alone: the table as it was before there were families.
        let v4: Vec<PointSummary> = summarize(&results())
            .into_iter()
            .filter(|p| p.family == Family::V4)
            .collect();
        let table = markdown_table(&v4, &args(&[]), &[Family::V4]);
        assert!(table.contains("| N | size | kernel µs |"), "{table}");
        assert!(
            table.contains("|--:|--:|--:|--:|--:|--:|--:|--:|:-:|"),
            "{table}"
        );
        assert!(
            table.contains("| 16 | 64 B | 4.00 (4.00–4.00) |"),
            "{table}"
        );
    }
}
