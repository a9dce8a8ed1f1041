//! How the runs of the `broadcast` example are paced, and the pacing-only
//! process (`bench_matrix pacing`, hidden) whose CPU time is subtracted from
//! theirs: the example's send loop with nothing sent, the same sleeps to the
//! same deadlines, measured over the same `getrusage` window.

use std::thread;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// The broadcast example's pacing: `pace_us` per broadcast on average,
/// slept after every `every` broadcasts (to a deadline).
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    pub pace_us: u64,
    pub every: u64,
}

impl Pacing {
    /// Broadcasts in a run: at least `count`, and enough to last
    /// `min_run_ms` at this pace.
    pub fn run_length(&self, count: u64, min_run_ms: u64) -> u64 {
        count.max((min_run_ms * 1000).div_ceil(self.pace_us.max(1)))
    }
}

/// The JSON line `bench_matrix pacing` prints.
#[derive(Debug, Serialize, Deserialize)]
pub struct PacingReport {
    pub broadcasts: u64,
    pub cpu_user_us: u64,
    pub cpu_sys_us: u64,
}

/// The `pacing` subcommand: what the broadcast example's loop costs when it
/// sends nothing.
pub fn run(count: u64, pacing: Pacing) -> Result<(), String> {
    let pace = Duration::from_micros(pacing.pace_us);
    let (user0, sys0) = cpu_times_us();
    let mut deadline = Instant::now();
    for seq in 0..count {
        deadline += pace;
        if (seq + 1) % pacing.every == 0 {
            thread::sleep(deadline.saturating_duration_since(Instant::now()));
        }
    }
    let (user1, sys1) = cpu_times_us();
    let report = PacingReport {
        broadcasts: count,
        cpu_user_us: user1 - user0,
        cpu_sys_us: sys1 - sys0,
    };
    let line = serde_json::to_string(&report).map_err(|e| format!("writing the report: {e}"))?;
    println!("{line}");
    Ok(())
}

/// User and system CPU time of this process so far, in µs.
fn cpu_times_us() -> (u64, u64) {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return (0, 0);
    };
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    (us(usage.user_time()), us(usage.system_time()))
}
