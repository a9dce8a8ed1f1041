//! What a broadcast did ([`Report`]), the sums over a broadcaster's life
//! ([`Stats`]), and the kernel program's own counters ([`KernelCounters`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

/// What one [`Broadcaster::broadcast`](crate::Broadcaster::broadcast) call
/// did.
///
/// Every destination is counted once: in `kernel_copies`, in
/// `user_space_copies`, or in `failed`. [`Stats`] sums these over calls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Datagrams that left: one per destination that got its copy
    /// (`kernel_copies + user_space_copies`).
    pub copies_sent: usize,
    /// Of these, copies the kernel fan-out made (clones the interface
    /// accepted).
    pub kernel_copies: usize,
    /// Of these, copies sent from user space, with `sendmmsg` (user-space
    /// mode, or destinations the fan-out cannot take: local ones, neighbours
    /// not resolved yet; see [`Broadcaster`](crate::Broadcaster)).
    pub user_space_copies: usize,
    /// Destinations that got no copy, in the order they were given. A
    /// destination listed twice is counted twice.
    pub failed: Vec<SocketAddr>,
}

impl Report {
    /// True when every destination got its copy.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Counters over the life of a [`Broadcaster`](crate::Broadcaster): the sums
/// of the [`Report`]s of its calls, and how many fan-outs they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls to `broadcast` that sent something (that did not return an
    /// error).
    pub broadcasts: u64,
    /// Datagrams the kernel program fanned out (at most 256 destinations each).
    pub fan_outs: u64,
    /// The sum of [`Report::kernel_copies`].
    pub kernel_copies: u64,
    /// The sum of [`Report::user_space_copies`].
    pub user_space_copies: u64,
    /// The sum of the lengths of [`Report::failed`].
    pub copies_failed: u64,
}

/// The kernel program's own counters (from its per-CPU `stats` map), for
/// monitoring and for checking [`Stats`] against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelCounters {
    /// Datagrams fanned out.
    pub fan_outs: u64,
    /// Clones the interface accepted: every copy of a fan-out that left.
    pub clones: u64,
    /// Clones the device, its queue or the receiving backlog dropped, or
    /// that could not be made.
    pub clone_failures: u64,
    /// Destinations lost because a header could not be rewritten (no memory).
    pub rewrite_failures: u64,
    /// Datagrams with an armed tag that could not be fanned out (IP options,
    /// fragments, not as armed); they went to their first destination.
    pub mismatches: u64,
}

/// The [`Stats`] of a broadcaster as it goes.
#[derive(Default)]
pub(crate) struct Counters {
    broadcasts: AtomicU64,
    fan_outs: AtomicU64,
    kernel_copies: AtomicU64,
    user_space_copies: AtomicU64,
    copies_failed: AtomicU64,
}

impl Counters {
    /// Adds one call's report, and the fan-outs it took.
    pub(crate) fn add(&self, report: &Report, fan_outs: usize) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.broadcasts, 1);
        add(&self.fan_outs, fan_outs);
        add(&self.kernel_copies, report.kernel_copies);
        add(&self.user_space_copies, report.user_space_copies);
        add(&self.copies_failed, report.failed.len());
    }

    pub(crate) fn stats(&self) -> Stats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            broadcasts: get(&self.broadcasts),
            fan_outs: get(&self.fan_outs),
            kernel_copies: get(&self.kernel_copies),
            user_space_copies: get(&self.user_space_copies),
            copies_failed: get(&self.copies_failed),
        }
    }
}
