//! The kernel plumbing: the eBPF program and its maps, as one loaded and
//! attached [`Program`], and the per-socket slots it shares with user space.
//!
//! - `abi`: the map layout, generated from `include/elec_broadcast.h`;
//! - `program`: loading, registering sockets, the program's counters;
//! - `attach`: attaching to an interface's egress (TCX or clsact), detaching;
//! - `slots`: the mmap()ed slots and the arm/send/outcome protocol on one.

mod abi;
mod attach;
mod program;
mod slots;

pub(crate) use abi::{Dest, MAX_DESTS, MAX_SOCKETS};
pub(crate) use program::Program;
pub(crate) use slots::Tags;
