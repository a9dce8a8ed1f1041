//! The `profile` subcommand: `perf record -a -g` while one mode sends (the
//! run checked at the receivers like any other), then where the sender's
//! samples went, read from `perf script` ([`SenderProfile`]).

use std::collections::BTreeMap;
use std::process::{Command, Stdio};

use crate::bench::{command_output, Bench, MODES};
use crate::ProfileArgs;

pub fn run(args: &ProfileArgs) -> Result<(), String> {
    // `bare`: the bare fan-out program (IPv4 only), to set the crate's
    // profile beside.
    if !MODES.contains(&args.mode.as_str()) && args.mode != "bare" {
        return Err(format!(
            "--mode {}: one of kernel, sendmmsg, sendto, bare",
            args.mode
        ));
    }
    if args.mode == "bare" {
        args.common.ipv4_only("profile --mode bare")?;
    }
    if args.n == 0 || args.size > args.common.family().max_payload() || args.count == 0 {
        return Err(format!(
            "--n and --count must be at least 1 and --size at most {} over {}",
            args.common.family().max_payload(),
            args.common.family()
        ));
    }
    if command_output("perf", &["--version"]).is_none() {
        return Err("perf is not installed (linux-perf)".into());
    }
    let bench = Bench::new(&args.common)?;
    let perf = [
        "perf".to_string(),
        "record".into(),
        "-a".into(),
        "-g".into(),
        "-e".into(),
        args.event.clone(),
        "-o".into(),
        args.output.display().to_string(),
        "--".into(),
    ];
    let run = bench.run_program(
        &perf,
        &bench.broadcast,
        &args.mode,
        args.n,
        args.size,
        args.count,
    )?;
    println!("{}", run.line);
    println!(
        "recorded {} (N={}, {} B, {} broadcasts, {} mode; sender on CPU {}, receivers on CPU {}).",
        args.output.display(),
        args.n,
        args.size,
        args.count,
        args.mode,
        bench.sender_cpu,
        bench.receiver_cpu
    );
    drop(bench);

    // perf report's --comm filter merges entries of other processes with the
    // same symbol, so the sender's samples are read from perf script.
    let script = Command::new("perf")
        .args([
            "script",
            "--comm",
            "broadcast",
            "-F",
            "comm,cpu,ip,sym",
            "-i",
        ])
        .arg(&args.output)
        .stderr(Stdio::null())
        .output()
        .map_err(|e| format!("running perf script: {e}"))?;
    let profile = SenderProfile::parse(
        &String::from_utf8_lossy(&script.stdout),
        args.common.sender_cpu,
    );
    println!(
        "\nSender side: {} samples of the broadcast process on CPU {} (its system calls \
         and the softirqs run in its context).",
        profile.samples, args.common.sender_cpu
    );
    for (title, rows, limit) in [
        ("self time", &profile.self_time, 30),
        (
            "inclusive (the function and what it calls)",
            &profile.inclusive,
            45,
        ),
    ] {
        println!("\n{title}:");
        for (symbol, count) in rows.iter().take(limit) {
            println!(
                "  {:6.2}%  {symbol}",
                100.0 * *count as f64 / profile.samples.max(1) as f64
            );
        }
    }
    println!(
        "\nReceive side: perf report -i {} --no-children --cpu {} --sort comm,sym --stdio -g none",
        args.output.display(),
        args.common.receiver_cpu
    );
    Ok(())
}

/// Where one process's samples on one CPU went, from `perf script` output
/// with call chains (`-F comm,cpu,ip,sym`).
struct SenderProfile {
    samples: usize,
    /// Leaf function of each sample, most frequent first.
    self_time: Vec<(String, usize)>,
    /// Every function on each sample's stack (once per sample).
    inclusive: Vec<(String, usize)>,
}

impl SenderProfile {
    fn parse(script: &str, cpu: usize) -> SenderProfile {
        let cpu_tag = format!("[{cpu:03}]");
        let mut self_time: BTreeMap<String, usize> = BTreeMap::new();
        let mut inclusive: BTreeMap<String, usize> = BTreeMap::new();
        let mut samples = 0;
        for block in script.split("\n\n") {
            let mut lines = block.lines().filter(|l| !l.trim().is_empty());
            let Some(header) = lines.next() else { continue };
            if !header.split_whitespace().any(|t| t == cpu_tag) {
                continue;
            }
            let frames: Vec<&str> = lines
                .filter_map(|l| l.trim().split_once(char::is_whitespace))
                .map(|(_, symbol)| symbol.trim())
                .collect();
            let Some(leaf) = frames.first() else { continue };
            samples += 1;
            *self_time.entry(leaf.to_string()).or_default() += 1;
            let mut seen: Vec<&str> = Vec::new();
            for f in &frames {
                if !seen.contains(f) {
                    seen.push(f);
                    *inclusive.entry(f.to_string()).or_default() += 1;
                }
            }
        }
        let sorted = |m: BTreeMap<String, usize>| {
            let mut v: Vec<(String, usize)> = m.into_iter().collect();
            v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v
        };
        SenderProfile {
            samples,
            self_time: sorted(self_time),
            inclusive: sorted(inclusive),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_count_leaves_and_whole_stacks_of_one_cpu() {
        let script = "\
broadcast [000] \n\
\tffffffff81 skb_clone\n\
\tffffffff82 bpf_clone_redirect\n\
\tffffffff83 __dev_queue_xmit\n\
\n\
broadcast [000] \n\
\tffffffff84 veth_xmit\n\
\tffffffff82 bpf_clone_redirect\n\
\n\
broadcast [001] \n\
\tffffffff85 udp_rcv\n\
";
        let p = SenderProfile::parse(script, 0);
        assert_eq!(p.samples, 2);
        assert_eq!(p.inclusive[0], ("bpf_clone_redirect".to_string(), 2));
        assert_eq!(p.self_time.len(), 2);
        assert!(p.self_time.contains(&("skb_clone".to_string(), 1)));
        assert!(!p.inclusive.iter().any(|(s, _)| s == "udp_rcv"));
    }
}
