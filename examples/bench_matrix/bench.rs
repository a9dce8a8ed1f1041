//! Running the `broadcast` example on the testbed: the [`Bench`] (a fresh
//! testbed, the programs, the CPUs), the example's command line, runs pinned
//! to the sender CPU inside the sender namespace, the JSON line the example
//! prints ([`Report`]) and the delivery check every run must pass.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::Duration;

use elec_testbed::{
    backlog_drops, backlog_note, in_namespace, pin_current_thread, CountReport, Testbed,
    TestbedConfig, SENDER_ADDR6,
};
use serde::Deserialize;

use crate::pacing::{Pacing, PacingReport};
use crate::Common;

/// The three ways of sending, in the `broadcast` example's names.
pub const MODES: [&str; 3] = ["kernel", "sendmmsg", "sendto"];
/// First receiver port; destinations use ports from here on.
const BASE_PORT: u16 = 7000;
/// Port of the sender's socket.
const SENDER_PORT: u16 = 5000;
/// Receiver namespaces and addresses per receiver (32 addresses in all).
pub const RECEIVERS: usize = 8;
pub const ADDRS_PER_RECEIVER: usize = 4;
/// The testbed's MTU.
const MTU: usize = 1500;

/// The address family of a run: of its destinations and of the sender's
/// socket (`--bind`). Ordered IPv4 first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The largest UDP payload on the testbed's MTU: less a 20-byte IPv4 or
    /// a 40-byte IPv6 header and the 8-byte UDP header.
    pub fn max_payload(self) -> usize {
        match self {
            Family::V4 => MTU - 20 - 8,
            Family::V6 => MTU - 40 - 8,
        }
    }

    /// 4 or 6, as `--families` takes it and results.json records it.
    pub fn number(self) -> u8 {
        match self {
            Family::V4 => 4,
            Family::V6 => 6,
        }
    }

    /// Parses `--families` entries: 4 or 6 (also ipv4, v6, ...).
    pub fn parse(s: &str) -> Result<Family, String> {
        match s.trim().to_ascii_lowercase().trim_start_matches("ip") {
            "4" | "v4" => Ok(Family::V4),
            "6" | "v6" => Ok(Family::V6),
            _ => Err(format!("{s:?} is not an address family: 4 or 6")),
        }
    }

    /// Checks that every payload size fits the MTU in every family.
    pub fn check_sizes(families: &[Family], sizes: &[usize]) -> Result<(), String> {
        for &family in families {
            let most = family.max_payload();
            if let Some(s) = sizes.iter().find(|&&s| s > most) {
                return Err(format!(
                    "--sizes: {s} B does not fit the testbed's {MTU}-byte MTU over {family} \
                     (at most {most})"
                ));
            }
        }
        Ok(())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// The testbed, the programs and the CPUs of one invocation.
pub struct Bench {
    pub tb: Testbed,
    /// The `broadcast` example of this build.
    pub broadcast: PathBuf,
    /// This program (for `bench_matrix pacing`).
    me: PathBuf,
    pub sender_cpu: usize,
    pub receiver_cpu: usize,
    pace_us: Option<u64>,
    burst_copies: usize,
    /// The family of [`Bench::run`], [`Bench::run_program`] and
    /// [`Bench::run_batches`] (`--ipv6`); [`Bench::run_as`] takes one.
    pub family: Family,
}

/// The JSON line the `broadcast` example prints. Older builds of the
/// example (`compare --baseline`) do not report `calls_failed`,
/// `failed_per_destination` or `error`.
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub mode: String,
    pub broadcasts: u64,
    pub destinations: usize,
    pub copies_sent: u64,
    pub copies_failed: u64,
    pub calls_failed: Option<u64>,
    /// Copies each destination did not get, in the order given.
    pub failed_per_destination: Option<Vec<u64>>,
    pub cpu_user_us: u64,
    pub cpu_sys_us: u64,
    pub wall_us: u64,
    /// Why the run stopped early.
    pub error: Option<String>,
}

/// Runs `a` and `b` back to back, `a` first in even repeats and `b` first
/// in odd ones, so that neither always runs first; returns (a's, b's).
pub fn side_by_side<A, B>(
    repeat: usize,
    a: impl FnOnce() -> Result<A, String>,
    b: impl FnOnce() -> Result<B, String>,
) -> Result<(A, B), String> {
    if repeat % 2 == 0 {
        let a = a()?;
        Ok((a, b()?))
    } else {
        let b = b()?;
        Ok((a()?, b))
    }
}

/// One accepted run of one mode.
#[derive(Debug, Clone)]
pub struct Run {
    pub report: Report,
    /// The example's JSON line as printed.
    pub line: String,
    pub pacing: Pacing,
    /// CPU time of the pacing sleeps alone (same count and pause).
    pub pacing_cpu_us: u64,
}

impl Run {
    /// Sender CPU per broadcast in µs, pacing sleeps subtracted.
    pub fn per_broadcast_us(&self) -> f64 {
        let cpu =
            (self.report.cpu_user_us + self.report.cpu_sys_us) as f64 - self.pacing_cpu_us as f64;
        cpu / self.report.broadcasts as f64
    }

    /// Sender CPU per broadcast in µs as the broadcast example reports it.
    pub fn raw_per_broadcast_us(&self) -> f64 {
        (self.report.cpu_user_us + self.report.cpu_sys_us) as f64 / self.report.broadcasts as f64
    }
}

/// The last non-empty line of a program's standard output, parsed as JSON.
fn parse_last_line<T: for<'de> Deserialize<'de>>(
    program: &str,
    stdout: &[u8],
) -> Result<(T, String), String> {
    let text = String::from_utf8_lossy(stdout);
    let line = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .ok_or_else(|| format!("{program} printed no report"))?;
    let parsed = serde_json::from_str(line)
        .map_err(|e| format!("{program} printed an unreadable report ({e}): {line}"))?;
    Ok((parsed, line.to_string()))
}

impl Bench {
    /// The testbed for runs of `common`'s family (`--ipv6`).
    pub fn new(common: &Common) -> Result<Bench, String> {
        Bench::with_families(common, &[common.family()])
    }

    /// The testbed for runs of any of `families`: with its IPv6 addresses
    /// if IPv6 is among them (else IPv6 stays off on every link, as before
    /// there were IPv6 runs).
    pub fn with_families(common: &Common, families: &[Family]) -> Result<Bench, String> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            return Err("needs root: network namespaces and the eBPF program need \
                 CAP_SYS_ADMIN, CAP_NET_ADMIN and CAP_BPF"
                .into());
        }
        let cpus = thread::available_parallelism().map_or(1, |n| n.get());
        for (what, cpu) in [
            ("--sender-cpu", common.sender_cpu),
            ("--receiver-cpu", common.receiver_cpu),
        ] {
            if cpu >= cpus {
                return Err(format!("{what} {cpu}: this machine has {cpus} CPUs"));
            }
        }
        if common.sender_cpu == common.receiver_cpu {
            return Err(
                "--sender-cpu and --receiver-cpu must differ: the point is to keep \
                        receive-side work off the sender's CPU"
                    .into(),
            );
        }
        let me = std::env::current_exe().map_err(|e| format!("locating myself: {e}"))?;
        let broadcast = match &common.broadcast {
            Some(path) => path.clone(),
            None => me.with_file_name("broadcast"),
        };
        if !broadcast.exists() {
            return Err(format!(
                "{} does not exist: build it with `cargo build --release --examples` \
                 (or pass --broadcast)",
                broadcast.display()
            ));
        }
        let tb = Testbed::new(TestbedConfig {
            receivers: RECEIVERS,
            addrs_per_receiver: ADDRS_PER_RECEIVER,
            rps_cpu: Some(common.receiver_cpu),
            ipv6: families.contains(&Family::V6),
            ..Default::default()
        })
        .map_err(|e| format!("setting up the testbed: {e}"))?;
        Ok(Bench {
            tb,
            broadcast,
            me,
            sender_cpu: common.sender_cpu,
            receiver_cpu: common.receiver_cpu,
            pace_us: common.pace_us,
            burst_copies: common.burst_copies,
            family: common.family(),
        })
    }

    /// How the broadcast example paces a run to N destinations: on average
    /// long enough per broadcast for the receivers, on their one CPU, to take
    /// in every copy, in bursts of about `burst_copies` copies.
    pub fn pacing(&self, n: usize, size: usize) -> Pacing {
        let pace_us = self.pace_us.unwrap_or_else(|| {
            let base = 40 + 6 * n as u64;
            if size > 512 {
                base + base / 2
            } else {
                base
            }
        });
        Pacing {
            pace_us,
            every: (self.burst_copies / n.max(1)).max(1) as u64,
        }
    }

    /// [`Bench::pacing`] with its pauses after whole batches of `batch`
    /// (every a multiple of `batch`), the same for any batch that divides it.
    pub fn batch_pacing(&self, n: usize, size: usize, batch: u64) -> Pacing {
        let pacing = self.pacing(n, size);
        Pacing {
            every: pacing.every.next_multiple_of(batch),
            ..pacing
        }
    }

    /// The first `n` IPv4 destinations of the testbed.
    pub fn destinations(&self, n: usize) -> Vec<SocketAddrV4> {
        self.tb.destinations(n, BASE_PORT)
    }

    /// The first `n` destinations of the testbed in `family` (the IPv6 ones
    /// are the twins of the IPv4 ones: same receivers, same ports).
    pub fn destinations_of(&self, family: Family, n: usize) -> Vec<SocketAddr> {
        match family {
            Family::V4 => self.destinations(n).into_iter().map(Into::into).collect(),
            Family::V6 => self
                .tb
                .destinations6(n, BASE_PORT)
                .into_iter()
                .map(Into::into)
                .collect(),
        }
    }

    /// The sender's address in `family`.
    fn sender_ip(&self, family: Family) -> IpAddr {
        match family {
            Family::V4 => self.tb.sender_addr().into(),
            Family::V6 => SENDER_ADDR6.into(),
        }
    }

    /// The `broadcast` example's command line for one run.
    #[allow(clippy::too_many_arguments)]
    fn broadcast_args(
        &self,
        family: Family,
        program: &Path,
        mode: &str,
        dests: &[SocketAddr],
        size: usize,
        count: u64,
        pacing: Pacing,
        batch: u64,
        extra: &[&str],
    ) -> Vec<String> {
        let mut args = vec![
            program.display().to_string(),
            "--iface".into(),
            self.tb.sender_iface().into(),
            "--bind".into(),
            SocketAddr::new(self.sender_ip(family), SENDER_PORT).to_string(),
            "--count".into(),
            count.to_string(),
            "--size".into(),
            size.to_string(),
            "--mode".into(),
            mode.into(),
            "--pace-us".into(),
            pacing.pace_us.to_string(),
            "--pace-every".into(),
            pacing.every.to_string(),
        ];
        if batch > 1 {
            args.extend(["--batch".into(), batch.to_string()]);
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        args.extend(dests.iter().map(SocketAddr::to_string));
        args
    }

    /// Runs `argv` inside the sender namespace, pinned to the sender CPU, and
    /// waits for it.
    fn run_pinned(&self, argv: &[String]) -> Result<Output, String> {
        let (program, rest) = argv.split_first().ok_or("empty command line")?;
        let mut cmd = Command::new(program);
        cmd.args(rest)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let cpu = self.sender_cpu;
        // The child inherits the namespace and the CPU affinity of the helper
        // thread that spawns it.
        let child = in_namespace(self.tb.sender_ns(), || -> io::Result<Child> {
            pin_current_thread(cpu)?;
            cmd.spawn()
        })
        .and_then(|spawned| spawned)
        .map_err(|e| format!("starting {program}: {e}"))?;
        let output = ChildGuard(Some(child))
            .wait_with_output()
            .map_err(|e| format!("waiting for {program}: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{program} failed ({}): {}",
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(output)
    }

    /// One run of the broadcast example of this build, checked at the
    /// receivers.
    pub fn run(&self, mode: &str, n: usize, size: usize, count: u64) -> Result<Run, String> {
        self.run_as(self.family, mode, n, size, count)
    }

    /// [`Bench::run`] in `family`: bound to the sender's address in that
    /// family, sending to [`Bench::destinations_of`] it.
    pub fn run_as(
        &self,
        family: Family,
        mode: &str,
        n: usize,
        size: usize,
        count: u64,
    ) -> Result<Run, String> {
        self.run_in(family, &[], &self.broadcast, mode, n, size, count, 1, &[])
    }

    /// One run of `program` (a build of the broadcast example), started
    /// through `wrapper` (such as `strace ...`, or nothing), checked at the
    /// receivers: a run in which a destination did not get every copy,
    /// intact, is an error. `pacing_cpu_us` is left for the caller.
    pub fn run_program(
        &self,
        wrapper: &[String],
        program: &Path,
        mode: &str,
        n: usize,
        size: usize,
        count: u64,
    ) -> Result<Run, String> {
        self.run_batches(wrapper, program, mode, n, size, count, 1, &[])
    }

    /// Like [`Bench::run_program`], with `batch` payloads per call
    /// (`broadcast_batch`) and `extra` arguments for the broadcast example;
    /// `count` and the pacing stay per payload, the pauses come after whole
    /// batches ([`Bench::batch_pacing`]).
    #[allow(clippy::too_many_arguments)]
    pub fn run_batches(
        &self,
        wrapper: &[String],
        program: &Path,
        mode: &str,
        n: usize,
        size: usize,
        count: u64,
        batch: u64,
        extra: &[&str],
    ) -> Result<Run, String> {
        self.run_in(
            self.family,
            wrapper,
            program,
            mode,
            n,
            size,
            count,
            batch,
            extra,
        )
    }

    /// [`Bench::run_batches`] in `family`.
    #[allow(clippy::too_many_arguments)]
    fn run_in(
        &self,
        family: Family,
        wrapper: &[String],
        program: &Path,
        mode: &str,
        n: usize,
        size: usize,
        count: u64,
        batch: u64,
        extra: &[&str],
    ) -> Result<Run, String> {
        let dests = self.destinations_of(family, n);
        let pacing = self.batch_pacing(n, size, batch);
        let counters = self
            .tb
            .counting_receivers(&dests, Some(self.receiver_cpu))
            .map_err(|e| format!("starting the receivers: {e}"))?;
        let mut argv = wrapper.to_vec();
        argv.extend(self.broadcast_args(
            family, program, mode, &dests, size, count, pacing, batch, extra,
        ));
        let drops_before = backlog_drops();
        let output = self.run_pinned(&argv)?;
        let (report, line) =
            parse_last_line::<Report>(&program.display().to_string(), &output.stdout)?;
        counters.wait_for_total(count * n as u64, Duration::from_secs(10));
        // Room for duplicates to show up too.
        thread::sleep(Duration::from_millis(20));
        let counted = counters.stop();
        check_delivery(&report, mode, &counted, count)
            .map_err(|e| format!("{e}; {}", backlog_note(&drops_before)))?;
        Ok(Run {
            report,
            line,
            pacing,
            pacing_cpu_us: 0,
        })
    }

    /// CPU time of `count` pacing sleeps alone, measured like the broadcast
    /// example measures (so it can be subtracted).
    pub fn pacing_cpu_us(&self, count: u64, pacing: Pacing) -> Result<u64, String> {
        let argv = vec![
            self.me.display().to_string(),
            "pacing".into(),
            "--count".into(),
            count.to_string(),
            "--pace-us".into(),
            pacing.pace_us.to_string(),
            "--pace-every".into(),
            pacing.every.to_string(),
        ];
        let output = self.run_pinned(&argv)?;
        let (report, _) = parse_last_line::<PacingReport>(&argv[0], &output.stdout)?;
        Ok(report.cpu_user_us + report.cpu_sys_us)
    }
}

/// Kills and reaps the child if it is still running when dropped (on a
/// panic or an error while waiting).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn wait_with_output(mut self) -> io::Result<Output> {
        match self.0.take() {
            Some(child) => child.wait_with_output(),
            None => Err(io::Error::other("child already reaped")),
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Every destination must have got exactly `count` intact copies, and the
/// sender must have sent them all: `count` broadcasts of `mode` to every
/// destination counted, no copy or call failed.
pub fn check_delivery(
    report: &Report,
    mode: &str,
    counted: &CountReport,
    count: u64,
) -> Result<(), String> {
    let n = counted.dests.len();
    let expected = count * n as u64;
    let mut problems = Vec::new();
    if report.mode != mode || report.destinations != n || report.broadcasts != count {
        problems.push(format!(
            "sender reports {} broadcasts in {} mode to {} destinations, expected {count} in \
             {mode} mode to {n}",
            report.broadcasts, report.mode, report.destinations
        ));
    }
    let calls_failed = report.calls_failed.unwrap_or(0);
    if report.copies_sent != expected || report.copies_failed != 0 || calls_failed != 0 {
        let mut problem = format!(
            "sender reports {} copies sent and {} failed, expected {expected} and 0",
            report.copies_sent, report.copies_failed
        );
        if calls_failed != 0 {
            problem += &format!(" ({calls_failed} calls failed)");
        }
        let refused: Vec<String> = counted
            .dests
            .iter()
            .zip(report.failed_per_destination.iter().flatten())
            .filter(|(_, &f)| f != 0)
            .map(|(d, f)| format!("{d} failed {f}"))
            .collect();
        if !refused.is_empty() {
            problem += &format!(
                ": {}{}",
                refused[..refused.len().min(8)].join(", "),
                if refused.len() > 8 { ", ..." } else { "" }
            );
        }
        problems.push(problem);
    }
    if let Some(error) = &report.error {
        problems.push(format!("sender stopped: {error}"));
    }
    let wrong: Vec<String> = counted
        .dests
        .iter()
        .zip(&counted.counts)
        .filter(|(_, &c)| c != count)
        .map(|(d, c)| format!("{d} got {c}"))
        .collect();
    if !wrong.is_empty() {
        problems.push(format!(
            "{} of {} destinations did not get exactly {count} copies ({} received in all, \
             expected {expected}): {}{}",
            wrong.len(),
            counted.dests.len(),
            counted.total(),
            wrong[..wrong.len().min(8)].join(", "),
            if wrong.len() > 8 { ", ..." } else { "" }
        ));
    }
    if counted.total_mismatches() > 0 {
        problems.push(format!(
            "{} copies arrived corrupted (payload not the expected pattern)",
            counted.total_mismatches()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// Standard output of `program args` run here, if it succeeded (whether a
/// tool is installed, the git commit).
pub fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line of the current `broadcast` example.
    const LINE: &str = r#"{"mode":"kernel","broadcasts":5,"destinations":2,"copies_sent":10,"copies_failed":0,"calls_failed":0,"failed_per_destination":[0,0],"cpu_user_us":12,"cpu_sys_us":345,"wall_us":6789}"#;

    fn report(line: &str) -> Report {
        parse_last_line::<Report>("broadcast", line.as_bytes())
            .unwrap()
            .0
    }

    #[test]
    fn reads_the_lines_of_current_and_older_examples() {
        let r = report(LINE);
        assert_eq!((r.cpu_user_us, r.cpu_sys_us, r.wall_us), (12, 345, 6789));
        assert_eq!(r.failed_per_destination, Some(vec![0, 0]));
        assert_eq!(r.error, None);
        // Before calls_failed, failed_per_destination and error.
        let old = report(
            "\n{\"mode\":\"sendto\",\"broadcasts\":5,\"destinations\":2,\"copies_sent\":10,\
             \"copies_failed\":0,\"cpu_user_us\":1,\"cpu_sys_us\":2,\"wall_us\":3}\n\n",
        );
        assert_eq!((old.calls_failed, old.failed_per_destination), (None, None));
        let stopped = report(&LINE.replace("}", ",\"error\":\"sendto: refused\"}"));
        assert_eq!(stopped.error.as_deref(), Some("sendto: refused"));
        assert!(parse_last_line::<Report>("broadcast", b"").is_err());
        assert!(parse_last_line::<Report>("broadcast", b"{\"mode\":\"kernel\"}").is_err());
        let (pacing, _) = parse_last_line::<PacingReport>(
            "bench_matrix",
            b"{\"broadcasts\":3,\"cpu_user_us\":4,\"cpu_sys_us\":5}",
        )
        .unwrap();
        assert_eq!(pacing.cpu_user_us + pacing.cpu_sys_us, 9);
    }

    #[test]
    fn payload_limits_follow_the_family() {
        assert_eq!(Family::V4.max_payload(), 1472);
        assert_eq!(Family::V6.max_payload(), 1452);
        assert_eq!(Family::parse("4"), Ok(Family::V4));
        assert_eq!(Family::parse("IPv6"), Ok(Family::V6));
        assert!(Family::parse("").is_err());
        assert!(Family::check_sizes(&[Family::V4], &[64, 1472]).is_ok());
        assert!(Family::check_sizes(&[Family::V4], &[1473]).is_err());
        assert!(Family::check_sizes(&[Family::V6], &[64, 1452]).is_ok());
        let err = Family::check_sizes(&[Family::V4, Family::V6], &[64, 1460]).unwrap_err();
        assert!(err.contains("1460 B") && err.contains("IPv6"), "{err}");
        assert_eq!((Family::V4.number(), Family::V6.number()), (4, 6));
        assert!(Family::V4 < Family::V6);
    }

    #[test]
    fn ipv6_destinations_pass_the_delivery_check() {
        let dests: Vec<SocketAddr> = vec![
            "[fd77::2:1]:7000".parse().unwrap(),
            "[fd77::3:1]:7000".parse().unwrap(),
        ];
        let run = report(LINE);
        let counted = |counts: Vec<u64>| CountReport {
            dests: dests.clone(),
            counts,
            mismatches: vec![0, 0],
        };
        assert!(check_delivery(&run, "kernel", &counted(vec![5, 5]), 5).is_ok());
        let lost = check_delivery(&run, "kernel", &counted(vec![5, 3]), 5).unwrap_err();
        assert!(lost.contains("[fd77::3:1]:7000 got 3"), "{lost}");
        // The sender's address as --bind takes it.
        assert_eq!(
            SocketAddr::new(SENDER_ADDR6.into(), SENDER_PORT).to_string(),
            "[fd77::1]:5000"
        );
    }

    #[test]
    fn delivery_check_rejects_loss_and_accepts_exact_counts() {
        let dests: Vec<SocketAddrV4> = vec![
            "10.77.1.1:7000".parse().unwrap(),
            "10.77.2.1:7000".parse().unwrap(),
        ];
        let run = report(LINE);
        let counted = |counts: Vec<u64>, mismatches: Vec<u64>| CountReport {
            dests: dests.iter().map(|&d| d.into()).collect(),
            counts,
            mismatches,
        };
        let check = |r: &Report, c: CountReport| check_delivery(r, "kernel", &c, 5);
        assert!(check(&run, counted(vec![5, 5], vec![0, 0])).is_ok());
        let lost = check(&run, counted(vec![5, 4], vec![0, 0])).unwrap_err();
        assert!(lost.contains("10.77.2.1:7000 got 4"), "{lost}");
        let dup = check(&run, counted(vec![6, 5], vec![0, 0])).unwrap_err();
        assert!(dup.contains("10.77.1.1:7000 got 6"), "{dup}");
        assert!(check(&run, counted(vec![5, 5], vec![0, 1])).is_err());
        let failed = Report {
            copies_sent: 9,
            copies_failed: 1,
            failed_per_destination: Some(vec![0, 1]),
            ..run.clone()
        };
        let err = check(&failed, counted(vec![5, 5], vec![0, 0])).unwrap_err();
        assert!(err.contains("10.77.2.1:7000 failed 1"), "{err}");
        let calls = Report {
            calls_failed: Some(1),
            ..run.clone()
        };
        assert!(check(&calls, counted(vec![5, 5], vec![0, 0])).is_err());
        let other_mode = Report {
            mode: "sendto".into(),
            ..run.clone()
        };
        assert!(check(&other_mode, counted(vec![5, 5], vec![0, 0])).is_err());
        let stopped = Report {
            error: Some("refused".into()),
            ..run
        };
        assert!(check(&stopped, counted(vec![5, 5], vec![0, 0])).is_err());
    }
}
