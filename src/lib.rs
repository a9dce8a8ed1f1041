// The README is the crate's front page: its Rust examples compile as doc
// tests (`no_run` where they need root and an interface).
#![doc = include_str!("../README.md")]
#![deny(
    missing_docs,
    unsafe_op_in_unsafe_fn,
    clippy::undocumented_unsafe_blocks
)]

mod broadcaster;
mod error;
mod header;
mod kernel;
mod quorum;
mod reply;
mod report;
mod send;
mod sys;
mod tables;

pub use broadcaster::{Broadcaster, Mode};
pub use error::Error;
pub use header::{Ack, HeaderError, Sequenced, HEADER_LEN, MAX_ROUND_NUMBER, MAX_VOTERS};
pub use quorum::{Decisions, Ingress, Quorum, QuorumCounters, Verdict};
pub use reply::{
    Datagram, Receipt, Replier, ReplyCounters, ReplyDecisions, DEFAULT_RING_BYTES,
    MAX_QUEUED_PAYLOAD,
};
pub use report::{Failure, FailureReason, KernelCounters, Report, Stats};

/// Benchmark only (feature `test-hooks`): not part of the API.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
pub use kernel::BareFanOut;

/// Most destinations one datagram is fanned out to in the kernel; longer
/// lists are split into several fan-outs by [`Broadcaster::broadcast`].
pub const MAX_DESTINATIONS_PER_FAN_OUT: usize = kernel::MAX_DESTS;
