//! The send side: how one `broadcast` call is carried out.
//!
//! 1. [`sockets`]: the socket's entry (its cookie, its slot in the kernel
//!    maps, its current plan), made when the socket is first used;
//! 2. [`plan`]: which destinations the kernel fans out, in chunks, and which
//!    go from user space, kept while the list and the tables are unchanged;
//! 3. [`fan_out`]: each chunk through the socket's slot, one armed send;
//! 4. [`user_space`]: the other copies, with one `sendmmsg`;
//! 5. [`call`]: what became of every destination, the call's `Report`.
//!
//! [`refusal`] tells apart the errors with which the kernel refuses a send.

pub(crate) mod call;
pub(crate) mod fan_out;
pub(crate) mod plan;
pub(crate) mod refusal;
pub(crate) mod sockets;
pub(crate) mod user_space;

use std::net::{SocketAddr, SocketAddrV4};

/// IPv4 header plus UDP header: what a datagram adds to the payload.
pub(crate) const HEADERS: usize = 20 + 8;

/// The IPv4 address of a destination (checked to be one before anything is
/// sent).
pub(crate) fn v4(destination: &SocketAddr) -> SocketAddrV4 {
    match destination {
        SocketAddr::V4(v4) => *v4,
        SocketAddr::V6(_) => unreachable!("IPv6 destinations are refused before sending"),
    }
}
