//! The kernel plumbing: the eBPF program and its maps, as one loaded and
//! attached [`Program`], and the per-socket slots it shares with user space.
//!
//! - `abi`: the map layout, generated from `include/elec_broadcast.h`;
//! - `program`: loading, registering sockets, the program's counters;
//! - `attach`: attaching to an interface's egress or ingress (TCX or clsact), detaching;
//! - `slots`: the mmap()ed slots and the arm/send/outcome protocol on one;
//! - `collector`: the quorum program (ingress), loaded and attached;
//! - `replier`: the fast-reply program (ingress) and its ring.

mod abi;
mod attach;
#[cfg(feature = "test-hooks")]
mod bare;
mod collector;
mod program;
mod replier;
mod slots;

/// The constants of `include/elec_wire.h`, `elec_quorum.h` and `elec_reply.h`.
pub(crate) mod wire {
    pub(crate) use super::abi::constants::{
        EB_ACK_CUMULATIVE as ACK_CUMULATIVE, EB_ACK_FROM_KERNEL as ACK_FROM_KERNEL,
        EB_ACK_MAGIC as ACK_MAGIC, EB_MAX_ROUND as MAX_ROUND, EB_MAX_VOTERS as MAX_VOTERS,
        EB_REPLY_MAX_PAYLOAD as REPLY_MAX_PAYLOAD, EB_REPLY_QUIET as REPLY_QUIET,
        EB_SEQUENCED_MAGIC as SEQUENCED_MAGIC, EB_WIRE_VERSION as WIRE_VERSION,
    };
}

pub(crate) use abi::{Dest, FAMILY_IPV4, FAMILY_IPV6, MAX_BATCH, MAX_DESTS, MAX_SOCKETS};
pub(crate) use abi::{QuorumShared, ReplyShared, QUORUM_COUNTERS, REPLY_COUNTERS};
#[cfg(feature = "test-hooks")]
pub use bare::BareFanOut;
pub(crate) use collector::Collector;
pub(crate) use program::Program;
pub(crate) use replier::Replier as KernelReplier;
pub(crate) use slots::{Outcome, SlotHandle, Tags};

/// The kernel half of a receive-side primitive for `mode`: `attach` it on
/// `interface` (given its index) for [`Mode::Kernel`] and [`Mode::Auto`];
/// `Auto` falls back to `Ok((None, Some(why)))` where that fails, `Kernel`
/// fails. `doing` says what the user-space half does instead, for the log.
pub(crate) fn attach_or_fall_back<T>(
    interface: &str,
    mode: crate::Mode,
    doing: &str,
    attach: impl FnOnce(u32) -> Result<T, crate::Error>,
) -> Result<(Option<T>, Option<crate::Error>), crate::Error> {
    use crate::{Error, Mode};
    let ifindex =
        nix::net::if_::if_nametoindex(interface).map_err(|_| Error::UnknownInterface {
            name: interface.to_string(),
        })?;
    match mode {
        Mode::UserSpace => Ok((None, None)),
        Mode::Auto | Mode::Kernel => match attach(ifindex) {
            Ok(program) => Ok((Some(program), None)),
            Err(err) if mode == Mode::Kernel => Err(err),
            Err(err) => {
                log::warn!("elec-broadcast: {doing} in user space on {interface}: {err}");
                Ok((None, Some(err)))
            }
        },
    }
}
