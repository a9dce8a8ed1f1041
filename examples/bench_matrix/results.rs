//! results.json, the machine-readable output of `matrix`: the machine and
//! commit measured, the configuration, the summary per point, every accepted
//! run and every rejected one, each with its address family (4 or 6). Written with serde in a layout of one summary
//! row or run per line, so that diffs of the committed file stay readable.

use std::io;
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde_json::ser::Formatter;

use crate::bench::{command_output, ADDRS_PER_RECEIVER, RECEIVERS};
use crate::matrix::{PointSummary, Results};
use crate::spread::Spread;
use crate::MatrixArgs;

#[derive(Serialize)]
struct ResultsFile<'a> {
    machine: Machine,
    config: Config,
    summary: Vec<SummaryRow>,
    runs: Vec<RunRow<'a>>,
    rejected: Vec<RejectedRow<'a>>,
}

#[derive(Serialize)]
struct Machine {
    kernel: String,
    cpu: String,
    cpus: usize,
    git_commit: String,
    measured_code_differs_from_commit: bool,
    unix_time: u64,
}

#[derive(Serialize)]
struct Config {
    repeats: usize,
    min_broadcasts_per_run: u64,
    min_run_ms: u64,
    sender_cpu: usize,
    receiver_cpu: usize,
    families: Vec<u8>,
    receivers: usize,
    addrs_per_receiver: usize,
    pacing: String,
    burst_copies: usize,
    elapsed_s: f64,
    metric: &'static str,
}

/// Sender CPU per broadcast (µs) per mode and the ratios, rounded.
#[derive(Serialize)]
struct SummaryRow {
    family: u8,
    n: usize,
    size: usize,
    kernel_us: Option<Spread>,
    sendmmsg_us: Option<Spread>,
    sendto_us: Option<Spread>,
    kernel_over_sendto: Option<Spread>,
    kernel_over_sendmmsg: Option<Spread>,
    kernel_over_best: Option<Spread>,
}

#[derive(Serialize)]
struct RunRow<'a> {
    repeat: usize,
    family: u8,
    n: usize,
    size: usize,
    mode: &'a str,
    broadcasts: u64,
    pace_us: u64,
    pace_every: u64,
    cpu_user_us: u64,
    cpu_sys_us: u64,
    pacing_cpu_us: u64,
    wall_us: u64,
    copies_sent: u64,
    per_broadcast_us: f64,
    raw_per_broadcast_us: f64,
}

#[derive(Serialize)]
struct RejectedRow<'a> {
    repeat: usize,
    family: u8,
    n: usize,
    size: usize,
    mode: &'a str,
    reason: &'a str,
}

const METRIC: &str = "sender CPU per broadcast in µs: getrusage(RUSAGE_SELF) user + system of \
     the broadcast example over its send loop, minus the CPU of the same pacing sleeps alone";

/// `x` to `decimals` decimals (what the figures can bear).
fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

fn round_spread(s: Option<Spread>) -> Option<Spread> {
    s.map(|s| Spread {
        median: round(s.median, 4),
        min: round(s.min, 4),
        max: round(s.max, 4),
        samples: s.samples,
    })
}

/// The machine, the kernel and the commit measured.
fn machine() -> Machine {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let git_commit = command_output("git", &["rev-parse", "HEAD"]).unwrap_or_default();
    // Whether what was measured differs from the commit: the library, the
    // eBPF program and the broadcast example.
    let measured_code_differs_from_commit = command_output(
        "git",
        &[
            "status",
            "--porcelain",
            "--",
            "src",
            "bpf",
            "include",
            "build.rs",
            "Cargo.toml",
            "Cargo.lock",
            "examples/broadcast.rs",
        ],
    )
    .is_some_and(|s| !s.is_empty());
    let unix_time = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    Machine {
        kernel,
        cpu,
        cpus,
        git_commit,
        measured_code_differs_from_commit,
        unix_time,
    }
}

/// results.json for a finished matrix.
pub fn to_json(
    results: &Results,
    summary: &[PointSummary],
    args: &MatrixArgs,
    elapsed: Duration,
) -> Result<String, String> {
    let config = Config {
        repeats: args.repeats,
        min_broadcasts_per_run: args.count,
        min_run_ms: args.min_run_ms,
        sender_cpu: args.common.sender_cpu,
        receiver_cpu: args.common.receiver_cpu,
        families: args.families().iter().map(|f| f.number()).collect(),
        receivers: RECEIVERS,
        addrs_per_receiver: ADDRS_PER_RECEIVER,
        pacing: match args.common.pace_us {
            Some(p) => format!("{p} µs"),
            None => "40 + 6 µs per destination, +50% for payloads over 512 B".into(),
        },
        burst_copies: args.common.burst_copies,
        elapsed_s: round(elapsed.as_secs_f64(), 1),
        metric: METRIC,
    };
    let summary = summary
        .iter()
        .map(|p| SummaryRow {
            family: p.family.number(),
            n: p.n,
            size: p.size,
            kernel_us: round_spread(p.cpu[0]),
            sendmmsg_us: round_spread(p.cpu[1]),
            sendto_us: round_spread(p.cpu[2]),
            kernel_over_sendto: round_spread(p.kernel_over_sendto),
            kernel_over_sendmmsg: round_spread(p.kernel_over_sendmmsg),
            kernel_over_best: round_spread(p.kernel_over_best),
        })
        .collect();
    let mut runs = Vec::new();
    for (&(n, size, family), repeats) in &results.runs {
        for (repeat, modes) in repeats.iter().enumerate() {
            for (mode, r) in modes {
                runs.push(RunRow {
                    repeat,
                    family: family.number(),
                    n,
                    size,
                    mode,
                    broadcasts: r.report.broadcasts,
                    pace_us: r.pacing.pace_us,
                    pace_every: r.pacing.every,
                    cpu_user_us: r.report.cpu_user_us,
                    cpu_sys_us: r.report.cpu_sys_us,
                    pacing_cpu_us: r.pacing_cpu_us,
                    wall_us: r.report.wall_us,
                    copies_sent: r.report.copies_sent,
                    per_broadcast_us: round(r.per_broadcast_us(), 4),
                    raw_per_broadcast_us: round(r.raw_per_broadcast_us(), 4),
                });
            }
        }
    }
    let rejected = results
        .rejected
        .iter()
        .map(|r| RejectedRow {
            repeat: r.repeat,
            family: r.family.number(),
            n: r.n,
            size: r.size,
            mode: r.mode,
            reason: &r.reason,
        })
        .collect();
    let file = ResultsFile {
        machine: machine(),
        config,
        summary,
        runs,
        rejected,
    };
    write_rows_per_line(&file).map_err(|e| format!("writing results.json: {e}"))
}

/// `value` as JSON with the top-level object and the arrays directly in it
/// spread over lines, one entry per line, and everything deeper compact.
fn write_rows_per_line(value: &impl Serialize) -> serde_json::Result<String> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, RowsPerLine::default());
    value.serialize(&mut ser)?;
    out.push(b'\n');
    // serde_json writes only UTF-8.
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// The [`Formatter`] of [`write_rows_per_line`].
#[derive(Default)]
struct RowsPerLine {
    /// For each object or array being written, whether it is spread over
    /// lines.
    open: Vec<bool>,
}

impl RowsPerLine {
    fn spread(&self) -> bool {
        self.open.last() == Some(&true)
    }

    fn newline<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(b"\n")?;
        for _ in 0..self.open.len() {
            w.write_all(b"  ")?;
        }
        Ok(())
    }

    fn begin<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        // The top-level object, and the arrays in it.
        let spread = self.open.is_empty() || (self.open.len() == 1 && bracket == b"[");
        self.open.push(spread);
        w.write_all(bracket)
    }

    fn entry<W: ?Sized + io::Write>(&mut self, w: &mut W, first: bool) -> io::Result<()> {
        if !first {
            w.write_all(b",")?;
        }
        if self.spread() {
            self.newline(w)?;
        }
        Ok(())
    }

    fn end<W: ?Sized + io::Write>(&mut self, w: &mut W, bracket: &[u8]) -> io::Result<()> {
        if self.open.pop() == Some(true) {
            self.newline(w)?;
        }
        w.write_all(bracket)
    }
}

impl Formatter for RowsPerLine {
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, b"{")
    }

    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, b"}")
    }

    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.entry(w, first)
    }

    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(if self.spread() { b": " } else { b":" })
    }

    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.begin(w, b"[")
    }

    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.end(w, b"]")
    }

    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        self.entry(w, first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_go_one_per_line() {
        let value = serde_json::json!({
            "a": {"x": 1, "y": [1, 2]},
            "b": [{"n": 4, "s": null}, {"n": 8, "s": {"median": 0.5}}],
            "c": [],
        });
        let text = write_rows_per_line(&value).unwrap();
        assert_eq!(
            text,
            "{\n  \"a\": {\"x\":1,\"y\":[1,2]},\n  \"b\": [\n    {\"n\":4,\"s\":null},\n    \
             {\"n\":8,\"s\":{\"median\":0.5}}\n  ],\n  \"c\": [\n  ]\n}\n"
        );
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, value);
    }

    #[test]
    fn rounds_to_the_decimals_shown() {
        assert_eq!(round(5.611_849, 4), 5.6118);
        assert_eq!(round(450.649, 1), 450.6);
        assert_eq!(round_spread(None).map(|s| s.samples), None);
        let json = serde_json::to_string(&round(f64::NAN, 4)).unwrap();
        assert_eq!(json, "null");
    }
}
