//! The `overhead` subcommand: the crate's kernel mode against the bare
//! fan-out program (`bpf/bare.bpf.c`: the same clones, driven by plain
//! sends, with no exactly-once protocol and no report), side by side in
//! alternating order: what the crate costs per broadcast beyond the clones.

use std::fmt::Write as _;

use crate::bench::{side_by_side, Bench};
use crate::spread::{cell, Spread};
use crate::OverheadArgs;

pub fn run(args: &OverheadArgs) -> Result<(), String> {
    args.common.ipv4_only("overhead")?;
    let bench = Bench::new(&args.common)?;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "Sender CPU per broadcast in µs (pacing subtracted), median (min–max) of {} repeats; \
         kernel mode and the bare program run side by side, in alternating order; \
         differences and ratios per repeat.\n",
        args.repeats
    );
    let _ = writeln!(
        table,
        "| N | size | kernel | bare | kernel − bare | of which user space | kernel/bare |"
    );
    let _ = writeln!(table, "|--:|--:|--:|--:|--:|--:|--:|");
    for &n in &args.ns {
        for &size in &args.sizes {
            let pacing = bench.pacing(n, size);
            let count = pacing.run_length(args.count, args.min_run_ms);
            let pacing_cpu_us = bench.pacing_cpu_us(count, pacing)?;
            let (mut kernel, mut bare, mut diff, mut ratio) = (vec![], vec![], vec![], vec![]);
            let mut user_diff = vec![];
            for repeat in 0..args.repeats {
                // CPU per broadcast, and of it user-space CPU (as the kernel
                // samples it at the tick).
                let one = |mode: &str| -> Result<(f64, f64), String> {
                    let mut run = bench.run(mode, n, size, count)?;
                    run.pacing_cpu_us = pacing_cpu_us;
                    let user = run.report.cpu_user_us as f64 / run.report.broadcasts as f64;
                    Ok((run.per_broadcast_us(), user))
                };
                let ((k, ku), (b, bu)) = side_by_side(repeat, || one("kernel"), || one("bare"))?;
                user_diff.push(ku - bu);
                eprintln!(
                    "[{}/{}] N={n:<3} {size:>4} B: kernel {k:7.2} (user {ku:5.2}), \
                     bare {b:7.2} (user {bu:5.2}) µs/broadcast",
                    repeat + 1,
                    args.repeats
                );
                kernel.push(k);
                bare.push(b);
                diff.push(k - b);
                ratio.push(k / b);
            }
            let _ = writeln!(
                table,
                "| {n} | {size} B | {} | {} | {} | {} | {} |",
                cell(Spread::of(&kernel), 2),
                cell(Spread::of(&bare), 2),
                cell(Spread::of(&diff), 2),
                cell(Spread::of(&user_diff), 2),
                cell(Spread::of(&ratio), 3),
            );
        }
    }
    println!("{table}");
    Ok(())
}
