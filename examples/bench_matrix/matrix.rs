//! The `matrix` subcommand: every mode at every (N, size) point, repeated,
//! modes side by side in a rotating order, rejected runs retried; then the
//! summary per point (medians and ranges, the ratios against the target),
//! the markdown table, and the files written to `--out-dir`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Instant;

use crate::bench::{Bench, Run, ADDRS_PER_RECEIVER, MAX_PAYLOAD, MODES, RECEIVERS};
use crate::spread::{cell, Spread};
use crate::{plot, results, MatrixArgs};

/// The target of the project: kernel at most this fraction of the better
/// user-space mode, for every N >= 16.
pub const TARGET_RATIO: f64 = 0.40;
pub const TARGET_MIN_N: usize = 16;

/// A measured point: (N, size).
type Point = (usize, usize);

/// Accepted runs per point, per repeat, per mode.
#[derive(Default)]
pub struct Results {
    pub runs: BTreeMap<Point, Vec<BTreeMap<&'static str, Run>>>,
    pub rejected: Vec<Rejected>,
}

/// A run that failed its delivery check (or failed outright).
pub struct Rejected {
    pub repeat: usize,
    pub n: usize,
    pub size: usize,
    pub mode: &'static str,
    pub reason: String,
}

/// What the table and the plots show for one point.
pub struct PointSummary {
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
    if let Some(s) = args.sizes.iter().find(|&&s| s > MAX_PAYLOAD) {
        return Err(format!(
            "--sizes: {s} B does not fit the testbed's 1500-byte MTU (at most {MAX_PAYLOAD})"
        ));
    }
    Ok(())
}

/// The `matrix` subcommand.
pub fn run(args: &MatrixArgs) -> Result<(), String> {
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
            let count = pacing.run_length(args.count, args.min_run_ms);
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
        &results::to_json(&results, &summary, args, elapsed)?,
    )?;
    write("results.md", &table)?;
    write("sender-cpu.svg", &plot::sender_cpu(&summary, args))?;
    write("ratio.svg", &plot::ratio(&summary, args))?;
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

/// results.md: one row per point, and whether it meets the target.
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
