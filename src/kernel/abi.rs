//! The map layouts shared with the programs of `bpf/`.
//!
//! Everything is defined once, in the headers of `include/`: the structs
//! reach Rust through the compiled object's BTF (libbpf-cargo generates the
//! types), the `#define` constants through `build.rs`, which generates them
//! from the header. The asserts below pin the few facts the loader relies on,
//! so a change on the C side that the Rust side does not follow fails the
//! build.

/// A generated skeleton (`OUT_DIR/<file>`) as module `$name`, with the
/// lints that do not apply to generated code turned off.
macro_rules! skeleton {
    ($name:ident, $file:literal) => {
        #[allow(
            clippy::all,
            clippy::pedantic,
            clippy::undocumented_unsafe_blocks,
            missing_docs,
            unsafe_op_in_unsafe_fn,
            unused_imports
        )]
        mod $name {
            include!(concat!(env!("OUT_DIR"), "/", $file));
        }
    };
}

skeleton!(skel, "fan_out.skel.rs");
skeleton!(quorum_skel, "quorum.skel.rs");
skeleton!(reply_skel, "reply.skel.rs");
#[cfg(feature = "test-hooks")]
skeleton!(bare_skel, "bare.skel.rs");

pub(crate) use skel::types::{
    eb_arm as Arm, eb_dest as Dest, eb_slot as Slot, eb_stats as KernelStats,
};
pub(crate) use skel::{FanOutSkel, FanOutSkelBuilder};

pub(crate) use quorum_skel::types::{
    eb_quorum as QuorumShared, eb_quorum_counters as QuorumKernelCounters,
};
/// Counters of `struct eb_quorum_counters` (all u64).
pub(crate) const QUORUM_COUNTERS: usize = size_of::<QuorumKernelCounters>() / 8;
pub(crate) use quorum_skel::{QuorumSkel, QuorumSkelBuilder};

pub(crate) use reply_skel::types::{
    eb_reply as ReplyShared, eb_reply_counters as ReplyKernelCounters,
};
/// Counters of `struct eb_reply_counters` (all u64).
pub(crate) const REPLY_COUNTERS: usize = size_of::<ReplyKernelCounters>() / 8;
#[cfg(feature = "test-hooks")]
pub(crate) use bare_skel::{types::bare_config as BareConfig, BareSkel, BareSkelBuilder};
pub(crate) use reply_skel::{ReplySkel, ReplySkelBuilder};

use std::mem::{offset_of, size_of};

pub(crate) mod constants {
    include!(concat!(env!("OUT_DIR"), "/abi_constants.rs"));
}

/// Destinations one packet fans out to.
pub(crate) const MAX_DESTS: usize = constants::EB_MAX_DESTS as usize;
/// Datagrams one slot can have armed at once (a power of two).
pub(crate) const MAX_BATCH: usize = constants::EB_MAX_BATCH as usize;
/// Entries of the `slots` and `sockets` maps.
pub(crate) const MAX_SOCKETS: u32 = constants::EB_MAX_SOCKETS;
/// The armed datagram is CHECKSUM_PARTIAL.
pub(crate) const SLOT_PARTIAL: u32 = constants::EB_SLOT_PARTIAL;
/// The `family` of a slot whose destinations are IPv4 or IPv6 ones.
pub(crate) const FAMILY_IPV4: u32 = constants::EB_FAMILY_IPV4;
pub(crate) const FAMILY_IPV6: u32 = constants::EB_FAMILY_IPV6;
/// The `lost_from` of a datagram taken but not fanned out.
pub(crate) const NOT_FANNED_OUT: u32 = constants::EB_NOT_FANNED_OUT;

const _: () = {
    assert!(size_of::<Dest>() == 24);
    assert!(offset_of!(Dest, mac) == 0);
    assert!(offset_of!(Dest, port) == 6);
    assert!(offset_of!(Dest, addr) == 8);
    // armed and done are updated atomically by both sides: 8-aligned.
    assert!(offset_of!(Slot, arms) % 8 == 0);
    assert!(size_of::<Arm>() % 8 == 0);
    assert!(offset_of!(Arm, armed) % 8 == 0);
    assert!(offset_of!(Arm, done) % 8 == 0);
    // The failure bitmap holds MAX_DESTS bits; the arrays their entries.
    assert!(size_of::<Arm>() - offset_of!(Arm, failed) == MAX_DESTS / 8);
    assert!(offset_of!(Slot, dests) == offset_of!(Slot, arms) + MAX_BATCH * size_of::<Arm>());
    assert!(size_of::<Slot>() == offset_of!(Slot, dests) + MAX_DESTS * size_of::<Dest>());
    assert!(size_of::<Slot>() % 8 == 0);
    assert!(MAX_BATCH.is_power_of_two());
    assert!(size_of::<KernelStats>() == 40);
    // The tallies are updated atomically by both sides: 8-aligned.
    assert!(offset_of!(QuorumShared, generation) % 8 == 0);
    assert!(offset_of!(QuorumShared, complete) % 8 == 0);
    assert!(offset_of!(QuorumShared, acked) % 8 == 0);
    assert!(size_of::<QuorumShared>() == 48 + 16 * constants::EB_MAX_VOTERS as usize);
    assert!(size_of::<QuorumKernelCounters>() == 72);
    assert!(offset_of!(ReplyShared, generation) % 8 == 0);
    assert!(offset_of!(ReplyShared, next) % 8 == 0);
    assert!(size_of::<ReplyShared>() == 40);
    assert!(size_of::<ReplyKernelCounters>() == 80);
};

impl Dest {
    /// Destination `to` (an IPv4 address in `addr[0]`, an IPv6 one in all
    /// of `addr`), through the next hop of MAC `mac`.
    pub(crate) fn new(mac: [u8; 6], to: std::net::SocketAddr) -> Dest {
        let mut addr = [0u32; 4];
        match to.ip() {
            std::net::IpAddr::V4(ip) => addr[0] = u32::from_ne_bytes(ip.octets()),
            std::net::IpAddr::V6(ip) => {
                for (word, bytes) in addr.iter_mut().zip(ip.octets().chunks_exact(4)) {
                    *word = u32::from_ne_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
                }
            }
        }
        Dest {
            mac,
            port: to.port().to_be(),
            addr,
        }
    }
}

impl PartialEq for Dest {
    fn eq(&self, other: &Dest) -> bool {
        self.mac == other.mac && self.port == other.port && self.addr == other.addr
    }
}
