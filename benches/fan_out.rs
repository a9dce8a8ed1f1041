//! Sender CPU per broadcast: the kernel fan-out against one `sendmmsg` call
//! and a `sendto` loop, for N in {4, ..., 256} destinations and 64 B and
//! 1200 B payloads, plus the crate's own per-call overhead.
//!
//! `cargo bench --bench fan_out` (as root; `ELEC_BENCH_QUICK=1` for a short
//! smoke run, `ELEC_BENCH_BURST_COPIES=1` to wait for the receivers after
//! every broadcast). Criterion's reports go to `target/criterion`.
//!
//! What is measured is the CPU time of the sending thread
//! (`clock_gettime(CLOCK_THREAD_CPUTIME_ID)`, user + system) across each
//! broadcast call, not wall time: on veth the receive side runs on the same
//! machine, so it is steered to the other CPU (RPS on the bridge port facing
//! the sender, counting receivers pinned there) while the sending thread is
//! pinned to CPU 0. Broadcasts go out in bursts of about 256 copies; after
//! each burst the bench waits, unmeasured, until the receivers have every
//! copy, so they always keep up. After each benchmark every destination
//! must have received every copy intact; a lossy run panics with the counts
//! instead of reporting numbers (lost clones are cheap, so lossy numbers
//! would flatter the kernel path).
//!
//! Groups: `kernel`, `sendmmsg`, `sendto` (ids `<size>B/<N>`), and
//! `per_call_overhead` (kernel mode, N = 16, 64 B: the same destination list
//! on every call against a list that changes on every call).

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use criterion::measurement::{Measurement, ValueFormatter};
use criterion::{BenchmarkId, Criterion, Throughput};
use elec_broadcast::{Broadcaster, Mode, Report};
use elec_testbed::{
    backlog_drops, backlog_note, in_namespace, pattern, Counters, Testbed, TestbedConfig,
};

/// The CPU the sending thread is pinned to; receivers and receive-side
/// processing (RPS) go to `RECEIVER_CPU`.
const SENDER_CPU: usize = 0;
const RECEIVER_CPU: usize = 1;
const NS: [usize; 7] = [4, 8, 16, 32, 64, 128, 256];
const SIZES: [usize; 2] = [64, 1200];
const BASE_PORT: u16 = 7000;
/// How long the receivers may take to get one burst's copies.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Broadcasts go out back to back in bursts of about this many copies
/// (at least one broadcast), then the bench waits for the receivers. A wait
/// after every broadcast would add, to every mode alike, the cost of waking
/// the idle receive CPU (an IPI) and of starting with caches other processes
/// used meanwhile: artefacts of receivers on the same machine.
const BURST_COPIES: usize = 256;
/// Overrides `BURST_COPIES` (1: wait after every broadcast).
const BURST_ENV: &str = "ELEC_BENCH_BURST_COPIES";
/// Set to 1 to skip (not fail) when not root, as the integration tests do.
/// Set to 1 for short runs (CI smoke tests).
const QUICK_ENV: &str = "ELEC_BENCH_QUICK";

// ---------------------------------------------------------------------------
// The measurement: CPU time of the calling thread

/// Criterion measurement of the calling thread's CPU time (user + system)
/// in nanoseconds, from `clock_gettime(CLOCK_THREAD_CPUTIME_ID)`.
struct ThreadCpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into `ts`, which lives across
    // the call; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(
        rc,
        0,
        "clock_gettime(CLOCK_THREAD_CPUTIME_ID): {}",
        std::io::Error::last_os_error()
    );
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl Measurement for ThreadCpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }

    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }

    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }

    fn zero(&self) -> u64 {
        0
    }

    fn to_f64(&self, value: &u64) -> f64 {
        *value as f64
    }

    fn formatter(&self) -> &dyn ValueFormatter {
        &CpuTimeFormatter
    }
}

/// Formats nanoseconds of CPU time like criterion formats wall time.
struct CpuTimeFormatter;

impl ValueFormatter for CpuTimeFormatter {
    fn scale_values(&self, typical_ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = if typical_ns < 1e3 {
            (1.0, "ns")
        } else if typical_ns < 1e6 {
            (1e-3, "µs")
        } else if typical_ns < 1e9 {
            (1e-6, "ms")
        } else {
            (1e-9, "s")
        };
        for v in values {
            *v *= factor;
        }
        unit
    }

    fn scale_throughputs(
        &self,
        typical_ns: f64,
        throughput: &Throughput,
        values: &mut [f64],
    ) -> &'static str {
        // Per CPU-second: datagrams (elements) or bytes the sender gets out.
        let (per_iter, unit_base) = match *throughput {
            Throughput::Bytes(b) | Throughput::BytesDecimal(b) => (b as f64, "B/cpu-s"),
            Throughput::Elements(e) => (e as f64, "elem/cpu-s"),
        };
        let typical = per_iter * 1e9 / typical_ns;
        let (denominator, unit) = if typical < 1e3 {
            (1.0, unit_base)
        } else if typical < 1e6 {
            (
                1e3,
                if unit_base == "B/cpu-s" {
                    "KB/cpu-s"
                } else {
                    "Kelem/cpu-s"
                },
            )
        } else {
            (
                1e6,
                if unit_base == "B/cpu-s" {
                    "MB/cpu-s"
                } else {
                    "Melem/cpu-s"
                },
            )
        };
        for v in values {
            *v = per_iter * 1e9 / *v / denominator;
        }
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}

// ---------------------------------------------------------------------------
// Senders and receivers

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SendMode {
    /// The crate's kernel fan-out.
    Kernel,
    /// The crate's user-space mode: one `sendmmsg(2)` per broadcast.
    Sendmmsg,
    /// The baseline: one `sendto(2)` per destination.
    Sendto,
}

impl SendMode {
    fn name(self) -> &'static str {
        match self {
            SendMode::Kernel => "kernel",
            SendMode::Sendmmsg => "sendmmsg",
            SendMode::Sendto => "sendto",
        }
    }
}

/// What sends: a socket in the sender namespace and, except for the `sendto`
/// loop, a broadcaster. One socket for all benchmarks of a group: a fresh
/// socket that reuses a closed one's descriptor number would make the
/// broadcaster's first call on it take the (correct, but slower) recovery
/// path for a descriptor that changed sockets.
struct Sender {
    mode: SendMode,
    broadcaster: Option<Broadcaster>,
    socket: UdpSocket,
    settings: Settings,
}

/// How every benchmark measures.
#[derive(Debug, Clone, Copy)]
struct Settings {
    /// CPU time of an empty measurement window, subtracted from each
    /// broadcast's.
    clock_overhead_ns: u64,
    /// Copies per burst (see `BURST_COPIES`).
    burst_copies: usize,
}

impl Sender {
    fn new(tb: &Testbed, mode: SendMode, settings: Settings) -> Sender {
        let broadcaster = match mode {
            SendMode::Kernel => Some(Mode::Kernel),
            SendMode::Sendmmsg => Some(Mode::UserSpace),
            SendMode::Sendto => None,
        }
        .map(|m| {
            in_namespace(tb.sender_ns(), || {
                Broadcaster::with_mode(tb.sender_iface(), m)
            })
            .expect("entering the sender namespace")
            .unwrap_or_else(|e| panic!("creating the {} broadcaster: {e}", mode.name()))
        });
        Sender {
            mode,
            broadcaster,
            socket: tb.sender_socket().expect("binding the sender socket"),
            settings,
        }
    }

    /// One broadcast. Errors are returned, not handled, so that the
    /// measured window holds nothing but the send.
    fn send(&self, payload: &[u8], dests: &[SocketAddr]) -> Result<Option<Report>, String> {
        let socket = &self.socket;
        match &self.broadcaster {
            Some(b) => b
                .broadcast(socket, payload, dests)
                .map(Some)
                .map_err(|e| e.to_string()),
            None => {
                for d in dests {
                    socket
                        .send_to(payload, d)
                        .map_err(|e| format!("sendto {d}: {e}"))?;
                }
                Ok(None)
            }
        }
    }

    /// Panics unless every destination got its copy the expected way.
    fn check(&self, result: Result<Option<Report>, String>, n: usize, drops_before: &[u64]) {
        let report = match result {
            Ok(report) => report,
            Err(e) => panic!(
                "{} broadcast to {n} destinations failed: {e}",
                self.mode.name()
            ),
        };
        let Some(report) = report else { return };
        let by_mode = match self.mode {
            SendMode::Kernel => report.kernel_copies,
            _ => report.user_space_copies,
        };
        assert!(
            report.failed.is_empty() && report.copies_sent == n && by_mode == n,
            "{} broadcast to {n} destinations did not send every copy the {} way: {report:?}; {}",
            self.mode.name(),
            self.mode.name(),
            backlog_note(drops_before)
        );
    }
}

/// One benchmark's workload: destination lists used in turn, counting
/// receivers for all of them, and how many copies each destination is owed.
struct Workload<'a> {
    sender: &'a Sender,
    /// The lists, each as addresses and as indices into `all`.
    lists: Vec<(Vec<SocketAddr>, Vec<usize>)>,
    all: Vec<SocketAddrV4>,
    counters: Option<Counters>,
    expected: Vec<u64>,
    expected_total: u64,
    messages: Vec<Vec<u8>>,
    next: usize,
    seq: usize,
    /// Broadcasts per burst.
    burst: u64,
    drops_before: Vec<u64>,
}

impl<'a> Workload<'a> {
    fn new(
        tb: &Testbed,
        sender: &'a Sender,
        lists: &[Vec<SocketAddrV4>],
        size: usize,
    ) -> Workload<'a> {
        let longest = lists.iter().map(Vec::len).max().unwrap_or(1).max(1);
        let mut all: Vec<SocketAddrV4> = Vec::new();
        let lists: Vec<(Vec<SocketAddr>, Vec<usize>)> = lists
            .iter()
            .map(|list| {
                let idx = list
                    .iter()
                    .map(|d| match all.iter().position(|a| a == d) {
                        Some(i) => i,
                        None => {
                            all.push(*d);
                            all.len() - 1
                        }
                    })
                    .collect();
                (list.iter().copied().map(SocketAddr::V4).collect(), idx)
            })
            .collect();
        let counters = tb
            .counting_receivers(&all, Some(RECEIVER_CPU))
            .expect("starting the counting receivers");
        Workload {
            sender,
            lists,
            expected: vec![0; all.len()],
            all,
            counters: Some(counters),
            expected_total: 0,
            // Every byte of message s is (s + j) % 251: the receivers check it.
            messages: (0..251).map(|s| pattern(s, size)).collect(),
            next: 0,
            seq: 0,
            burst: (sender.settings.burst_copies / longest).max(1) as u64,
            drops_before: backlog_drops(),
        }
    }

    fn counters(&self) -> &Counters {
        self.counters
            .as_ref()
            .expect("counters live until finish()")
    }

    /// `iters` broadcasts; returns the sending thread's CPU time across the
    /// broadcast calls alone (each window minus the cost of an empty one).
    fn measure(&mut self, iters: u64) -> u64 {
        let mut cpu_ns = 0;
        for k in 1..=iters {
            let (dests, idx) = &self.lists[self.next];
            let payload = &self.messages[self.seq % self.messages.len()];

            let start = thread_cpu_ns();
            let result = self.sender.send(payload, dests);
            let window = thread_cpu_ns().saturating_sub(start);
            cpu_ns += window.saturating_sub(self.sender.settings.clock_overhead_ns);

            self.sender.check(result, dests.len(), &self.drops_before);
            for &i in idx {
                self.expected[i] += 1;
            }
            self.expected_total += dests.len() as u64;
            self.next = (self.next + 1) % self.lists.len();
            self.seq += 1;
            if k % self.burst == 0 || k == iters {
                self.wait_for_receivers();
            }
        }
        cpu_ns
    }

    /// Paces the sender: waits (unmeasured) until the receivers have every
    /// copy sent so far.
    fn wait_for_receivers(&self) {
        let start = Instant::now();
        while self.counters().total() < self.expected_total {
            if start.elapsed() > DELIVERY_TIMEOUT {
                panic!(
                    "{}: copies missing {DELIVERY_TIMEOUT:?} after the broadcast: {}",
                    self.sender.mode.name(),
                    self.describe(&self.counters().counts())
                );
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    fn describe(&self, counts: &[u64]) -> String {
        let total: u64 = counts.iter().sum();
        let wrong: Vec<String> = self
            .all
            .iter()
            .zip(counts.iter().zip(&self.expected))
            .filter(|(_, (got, want))| got != want)
            .map(|(d, (got, want))| format!("{d} got {got} of {want}"))
            .collect();
        format!(
            "{total} of {} copies received; {} destinations wrong: {}{}; {}",
            self.expected_total,
            wrong.len(),
            wrong[..wrong.len().min(10)].join(", "),
            if wrong.len() > 10 { ", ..." } else { "" },
            backlog_note(&self.drops_before)
        )
    }

    /// Stops the receivers and panics unless every destination got exactly
    /// the copies sent to it, every one intact.
    fn finish(mut self) {
        let counters = self.counters.take().expect("finish() runs once");
        counters.wait_for_total(self.expected_total, DELIVERY_TIMEOUT);
        // Room for duplicates to show up.
        std::thread::sleep(Duration::from_millis(20));
        let report = counters.stop();
        if report.counts != self.expected || report.total_mismatches() > 0 {
            panic!(
                "{} benchmark lost, duplicated or corrupted copies: {}; {} corrupted",
                self.sender.mode.name(),
                self.describe(&report.counts),
                report.total_mismatches()
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Benchmarks

fn bench_mode(c: &mut Criterion<ThreadCpuTime>, tb: &Testbed, mode: SendMode, settings: Settings) {
    // One broadcaster per group: no kernel program is attached while the
    // user-space modes are measured.
    let sender = Sender::new(tb, mode, settings);
    let mut group = c.benchmark_group(mode.name());
    for size in SIZES {
        for n in NS {
            let dests = tb.destinations(n, BASE_PORT);
            let mut workload = Workload::new(tb, &sender, &[dests], size);
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::new(format!("{size}B"), n), |b| {
                b.iter_custom(|iters| workload.measure(iters))
            });
            workload.finish();
        }
    }
    group.finish();
}

/// The crate's own cost per call, kernel mode, N = 16, 64 B: the same list
/// as in the previous call (one system call: the send) against a list that
/// differs from the previous call's (plan and destination slot rebuilt).
fn per_call_overhead(c: &mut Criterion<ThreadCpuTime>, tb: &Testbed, settings: Settings) {
    const N: usize = 16;
    let sender = Sender::new(tb, SendMode::Kernel, settings);
    let all = tb.destinations(2 * N, BASE_PORT);
    let (a, b) = (all[..N].to_vec(), all[N..].to_vec());
    let mut group = c.benchmark_group("per_call_overhead");
    group.throughput(Throughput::Elements(N as u64));
    for (name, lists) in [
        ("same_list", vec![a.clone()]),
        ("changed_list", vec![a.clone(), b.clone()]),
    ] {
        let mut workload = Workload::new(tb, &sender, &lists, 64);
        group.bench_function(name, |bencher| {
            bencher.iter_custom(|iters| workload.measure(iters))
        });
        workload.finish();
    }
    group.finish();
}

/// Median CPU time of an empty measurement window (two clock reads), which
/// every broadcast's window includes once and which is subtracted.
fn clock_overhead_ns() -> u64 {
    let mut v: Vec<u64> = (0..1001)
        .map(|_| {
            let start = thread_cpu_ns();
            thread_cpu_ns().saturating_sub(start)
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

fn main() {
    if !elec_testbed::require_root("fan_out bench") {
        return;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert!(
        cpus > RECEIVER_CPU,
        "the fan_out bench needs CPUs {SENDER_CPU} and {RECEIVER_CPU} (sender and receive \
         side apart); this machine has {cpus}"
    );
    let quick = std::env::var(QUICK_ENV).is_ok_and(|v| v == "1");
    let tb = Testbed::new(TestbedConfig {
        receivers: 8,
        addrs_per_receiver: 4,
        rps_cpu: Some(RECEIVER_CPU),
        ..Default::default()
    })
    .expect("setting up the testbed (needs root and iproute2)");
    // Threads spawned from here on inherit this; the receivers pin themselves.
    elec_testbed::pin_current_thread(SENDER_CPU)
        .unwrap_or_else(|e| panic!("pinning the sending thread: {e}"));
    let burst_copies = match std::env::var(BURST_ENV) {
        Ok(v) => v
            .parse::<usize>()
            .ok()
            .filter(|&b| b >= 1)
            .unwrap_or_else(|| panic!("{BURST_ENV}={v:?}: expected a number of copies >= 1")),
        Err(_) => BURST_COPIES,
    };
    let settings = Settings {
        clock_overhead_ns: clock_overhead_ns(),
        burst_copies,
    };
    eprintln!(
        "fan_out: sender on CPU {SENDER_CPU}, receivers on CPU {RECEIVER_CPU}; bursts of \
         {burst_copies} copies; an empty measurement window costs {} ns of CPU (subtracted \
         from every broadcast){}",
        settings.clock_overhead_ns,
        if quick { "; quick mode" } else { "" }
    );

    // Full: about 8 minutes for the 44 benchmarks. Quick: about 1.5.
    let (samples, warm_up, measure, resamples) = if quick {
        (
            10,
            Duration::from_millis(200),
            Duration::from_millis(600),
            5_000,
        )
    } else {
        (20, Duration::from_secs(1), Duration::from_secs(5), 100_000)
    };
    let mut c = Criterion::default()
        .with_measurement(ThreadCpuTime)
        .sample_size(samples)
        .warm_up_time(warm_up)
        .measurement_time(measure)
        .nresamples(resamples)
        .configure_from_args();
    for mode in [SendMode::Kernel, SendMode::Sendmmsg, SendMode::Sendto] {
        bench_mode(&mut c, &tb, mode, settings);
    }
    per_call_overhead(&mut c, &tb, settings);
    c.final_summary();
    drop(tb);
}
