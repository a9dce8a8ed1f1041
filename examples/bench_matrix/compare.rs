//! The `compare` subcommand: kernel mode of this build against kernel mode
//! of another build of the `broadcast` example (`--baseline`), and sendmmsg
//! of both for scale, run side by side in alternating order; prints a
//! markdown table.

use std::fmt::Write as _;
use std::path::Path;

use crate::bench::{side_by_side, Bench, Family};
use crate::spread::{cell, Spread};
use crate::CompareArgs;

/// Per point, the sender CPU per broadcast of each build and mode and the
/// ratio this/baseline of each repeat.
pub fn run(args: &CompareArgs) -> Result<(), String> {
    if !args.baseline.exists() {
        return Err(format!("{} does not exist", args.baseline.display()));
    }
    Family::check_sizes(&[args.common.family()], &args.sizes)?;
    let bench = Bench::new(&args.common)?;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "Sender CPU per broadcast in µs (pacing subtracted), median (min–max) of {} \
         repeats; this build and the baseline ({}) run side by side, in alternating order.\n",
        args.repeats,
        args.baseline.display()
    );
    let _ = writeln!(
        table,
        "| N | size | kernel, baseline | kernel, this build | this/baseline | sendmmsg, baseline \
         | sendmmsg, this build |"
    );
    let _ = writeln!(table, "|--:|--:|--:|--:|--:|--:|--:|");
    for &n in &args.ns {
        for &size in &args.sizes {
            let pacing = bench.pacing(n, size);
            let count = pacing.run_length(args.count, args.min_run_ms);
            let pacing_cpu_us = bench.pacing_cpu_us(count, pacing)?;
            let (mut before, mut after, mut ratio) = (vec![], vec![], vec![]);
            let (mut user_before, mut user) = (vec![], vec![]);
            for repeat in 0..args.repeats {
                let one = |program: &Path, mode: &str| -> Result<f64, String> {
                    let mut run = bench.run_program(&[], program, mode, n, size, count)?;
                    run.pacing_cpu_us = pacing_cpu_us;
                    Ok(run.per_broadcast_us())
                };
                let (b, a) = side_by_side(
                    repeat,
                    || one(&args.baseline, "kernel"),
                    || one(&bench.broadcast, "kernel"),
                )?;
                let ub = one(&args.baseline, "sendmmsg")?;
                let u = one(&bench.broadcast, "sendmmsg")?;
                eprintln!(
                    "[{}/{}] N={n:<3} {size:>4} B kernel: baseline {b:8.2} this {a:8.2}; \
                     sendmmsg: baseline {ub:8.2} this {u:8.2} µs/broadcast",
                    repeat + 1,
                    args.repeats
                );
                before.push(b);
                after.push(a);
                user_before.push(ub);
                user.push(u);
                ratio.push(a / b);
            }
            let _ = writeln!(
                table,
                "| {n} | {size} B | {} | {} | {} | {} | {} |",
                cell(Spread::of(&before), 2),
                cell(Spread::of(&after), 2),
                cell(Spread::of(&ratio), 3),
                cell(Spread::of(&user_before), 2),
                cell(Spread::of(&user), 2),
            );
        }
    }
    println!("{table}");
    Ok(())
}
