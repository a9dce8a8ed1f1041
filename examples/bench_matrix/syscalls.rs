//! The `syscalls` subcommand: system calls per broadcast of each mode,
//! counted with `strace -f -c` at two broadcast counts (so that set-up
//! calls cancel), every run checked at the receivers; prints a markdown
//! table.

use std::collections::BTreeMap;

use crate::bench::{command_output, Bench, MODES};
use crate::SyscallArgs;

/// Parses `strace -c` output: calls per system call.
fn parse_strace_summary(text: &str) -> BTreeMap<String, u64> {
    let mut calls = BTreeMap::new();
    for line in text.lines() {
        let tokens: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors], syscall
        if tokens.len() < 5 || tokens[0].starts_with('-') || tokens[0] == "%" {
            continue;
        }
        let (Some(name), Ok(count)) = (tokens.last(), tokens[3].parse::<u64>()) else {
            continue;
        };
        if *name != "total" {
            calls.insert(name.to_string(), count);
        }
    }
    calls
}

pub fn run(args: &SyscallArgs) -> Result<(), String> {
    let [k1, k2] = args.counts[..] else {
        return Err("--counts takes exactly two broadcast counts, e.g. 1000,3000".into());
    };
    if k2 <= k1 || k1 == 0 {
        return Err("--counts: the second count must be larger than the first (> 0)".into());
    }
    if args.n == 0 || args.size > args.common.family().max_payload() {
        return Err(format!(
            "--n must be at least 1 and --size at most {} over {}",
            args.common.family().max_payload(),
            args.common.family()
        ));
    }
    if command_output("strace", &["-V"]).is_none() {
        return Err("strace is not installed (apt-get install -y strace)".into());
    }
    let bench = Bench::new(&args.common)?;
    let pacing = bench.pacing(args.n, args.size);
    println!(
        "System calls per broadcast (strace -f -c; difference between {k2} and {k1} broadcasts, \
         divided by {}), N={} size={} B, pace {} µs per broadcast, sleeping every {}:\n",
        k2 - k1,
        args.n,
        args.size,
        pacing.pace_us,
        pacing.every
    );
    println!("| mode | system calls per broadcast | of which |");
    println!("|---|--:|---|");
    for mode in MODES {
        let mut counted = Vec::new();
        for k in [k1, k2] {
            let trace = std::env::temp_dir().join(format!(
                "elec-bench-strace-{}-{mode}-{k}.txt",
                std::process::id()
            ));
            let strace = [
                "strace".to_string(),
                "-f".into(),
                "-c".into(),
                "-o".into(),
                trace.display().to_string(),
            ];
            bench
                .run_program(&strace, &bench.broadcast, mode, args.n, args.size, k)
                .map_err(|e| format!("{mode}, {k} broadcasts under strace: {e}"))?;
            let text = std::fs::read_to_string(&trace)
                .map_err(|e| format!("reading {}: {e}", trace.display()))?;
            let _ = std::fs::remove_file(&trace);
            counted.push(parse_strace_summary(&text));
        }
        let mut per: Vec<(String, f64)> = counted[1]
            .iter()
            .map(|(name, &c2)| {
                let c1 = counted[0].get(name).copied().unwrap_or(0);
                (name.clone(), (c2 as f64 - c1 as f64) / (k2 - k1) as f64)
            })
            .filter(|(_, per)| per.abs() >= 0.0005)
            .collect();
        per.sort_by(|a, b| b.1.total_cmp(&a.1));
        let total: f64 = per.iter().map(|(_, p)| p).sum();
        let detail: Vec<String> = per
            .iter()
            .map(|(name, p)| format!("{name} {p:.3}"))
            .collect();
        println!("| {mode} | {total:.3} | {} |", detail.join(", "));
    }
    println!(
        "\n(clock_nanosleep/nanosleep is the pacing pause between broadcasts, not part of a \
         broadcast.)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_strace_summaries() {
        let text = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 60.00    0.006000           3      2000           sendto
 30.00    0.003000           1      2000           clock_nanosleep
  5.00    0.000500           5       100        12 bpf
------ ----------- ----------- --------- --------- ----------------
100.00    0.010000           2      4100        12 total
";
        let calls = parse_strace_summary(text);
        assert_eq!(calls.get("sendto"), Some(&2000));
        assert_eq!(calls.get("clock_nanosleep"), Some(&2000));
        assert_eq!(calls.get("bpf"), Some(&100));
        assert_eq!(calls.len(), 3);
    }
}
