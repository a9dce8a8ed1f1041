//! One UDP send, N datagrams: broadcast fan-out inside the Linux kernel.
//!
//! Distributed protocols send the same message to many peers all the time (a
//! Paxos leader's Prepare and Commit, a gossip node's heartbeats). From user
//! space each copy costs a system call and a trip down the UDP/IP stack.
//! `elec-broadcast` sends the datagram once; a TC egress eBPF program on the
//! interface clones it once per destination, rewriting the Ethernet, IPv4 and
//! UDP destination of each copy and keeping both checksums right.
//!
//! ```no_run
//! use std::net::{SocketAddr, UdpSocket};
//! use elec_broadcast::{Broadcaster, Mode};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // Needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN; Mode::Auto falls back to
//! // sendmmsg without them.
//! let broadcaster = Broadcaster::new("eth0")?;
//! println!("sending with {:?}", broadcaster.mode());
//!
//! let socket = UdpSocket::bind("0.0.0.0:9000")?;
//! let followers: Vec<SocketAddr> = (2..=8)
//!     .map(|host| SocketAddr::from(([10, 0, 0, host], 9000)))
//!     .collect();
//! let report = broadcaster.broadcast(&socket, b"commit 17", &followers)?;
//! for peer in &report.failed {
//!     eprintln!("{peer} got no copy; retransmit later");
//! }
//! # Ok(()) }
//! ```
//!
//! See [`Broadcaster`] for which destinations are fanned out in the kernel
//! and which are sent from user space, and the README for how it works and
//! its limits.

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
pub use report::{KernelCounters, Report, Stats};

/// Most destinations one datagram is fanned out to in the kernel; longer
/// lists are split into several fan-outs by [`Broadcaster::broadcast`].
pub const MAX_DESTINATIONS_PER_FAN_OUT: usize = kernel::MAX_DESTS;
