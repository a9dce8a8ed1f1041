//! The `batch` subcommand: `broadcast_batch` of K payloads of one size (one
//! segmented carrier, cloned whole) and of K payloads of which the first is
//! one byte shorter (one carrier per payload, in one `sendmmsg`), against K
//! single broadcasts (kernel mode) and against one `sendmmsg` of the same
//! K × N datagrams (the crate's user-space mode, whose batch is one
//! `sendmmsg`): sender CPU per payload, run side by side in an order rotated
//! from repeat to repeat; prints a markdown table.

use std::fmt::Write as _;

use crate::bench::{Bench, Family};
use crate::spread::{cell, Spread};
use crate::BatchArgs;

/// The ways of sending K payloads to N destinations measured here: (mode,
/// payloads per call, extra arguments of the broadcast example).
fn ways(k: u64) -> [(&'static str, u64, &'static [&'static str]); WAYS] {
    [
        ("kernel", 1, &[]),
        ("kernel", k, &[]),
        ("kernel", k, &["--unequal"]),
        ("sendmmsg", k, &[]),
    ]
}

const WAYS: usize = 4;

pub fn run(args: &BatchArgs) -> Result<(), String> {
    Family::check_sizes(&[args.common.family()], &args.sizes)?;
    let bench = Bench::new(&args.common)?;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "Sender CPU per payload in µs (pacing subtracted), median (min–max) of {} repeats; \
         the four ways run side by side for each point, in an order rotated from repeat to \
         repeat; ratios per repeat.\n",
        args.repeats
    );
    let _ = writeln!(
        table,
        "| N | K | size | kernel, single | kernel, batch (segmented) | kernel, batch (K carriers) \
         | sendmmsg of K × N | segmented/single | segmented/sendmmsg | K carriers/single \
         | K carriers/sendmmsg |"
    );
    let _ = writeln!(table, "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for &n in &args.ns {
        for &k in &args.ks {
            for &size in &args.sizes {
                let pacing = bench.batch_pacing(n, size, k);
                let count = pacing
                    .run_length(args.count, args.min_run_ms)
                    .next_multiple_of(k);
                let pacing_cpu_us = bench.pacing_cpu_us(count, pacing)?;
                let mut per_way: [Vec<f64>; WAYS] = Default::default();
                let mut ratios: [Vec<f64>; 4] = Default::default();
                for repeat in 0..args.repeats {
                    let mut us = [0.0; WAYS];
                    for step in 0..WAYS {
                        let way = (step + repeat) % WAYS;
                        let (mode, batch, extra) = ways(k)[way];
                        let mut run = bench.run_batches(
                            &[],
                            &bench.broadcast,
                            mode,
                            n,
                            size,
                            count,
                            batch,
                            extra,
                        )?;
                        run.pacing_cpu_us = pacing_cpu_us;
                        us[way] = run.per_broadcast_us();
                    }
                    eprintln!(
                        "[{}/{}] N={n:<3} K={k:<2} {size:>4} B: single {:7.2}, segmented {:7.2}, \
                         K carriers {:7.2}, sendmmsg {:7.2} µs/payload",
                        repeat + 1,
                        args.repeats,
                        us[0],
                        us[1],
                        us[2],
                        us[3]
                    );
                    for (way, value) in us.iter().enumerate() {
                        per_way[way].push(*value);
                    }
                    ratios[0].push(us[1] / us[0]);
                    ratios[1].push(us[1] / us[3]);
                    ratios[2].push(us[2] / us[0]);
                    ratios[3].push(us[2] / us[3]);
                }
                let _ = write!(table, "| {n} | {k} | {size} B |");
                for values in &per_way {
                    let _ = write!(table, " {} |", cell(Spread::of(values), 2));
                }
                for values in &ratios {
                    let _ = write!(table, " {} |", cell(Spread::of(values), 3));
                }
                let _ = writeln!(table);
            }
        }
    }
    println!("{table}");
    Ok(())
}
