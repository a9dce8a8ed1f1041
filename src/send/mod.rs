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

use std::net::{SocketAddr, SocketAddrV6};

use crate::tables::Target;

/// IPv4 header plus UDP header: what a datagram adds to the payload.
pub(crate) const HEADERS: usize = 20 + 8;

/// IPv6 header (no extension header) plus UDP header.
pub(crate) const HEADERS6: usize = 40 + 8;

/// The headers a datagram to `to` adds to its payload (an IPv4-mapped IPv6
/// destination is reached with IPv4).
pub(crate) fn headers(to: &SocketAddr) -> usize {
    match Target::of(to).ip.is_ipv4() {
        true => HEADERS,
        false => HEADERS6,
    }
}

/// The address family of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    V4,
    /// An IPv6 socket; `only`: with `IPV6_V6ONLY` on, so that it cannot
    /// reach IPv4 destinations.
    V6 {
        only: bool,
    },
    /// An IPv6 socket bound to an IPv4-mapped address: it reaches IPv4
    /// destinations only, named as IPv4-mapped ones.
    Mapped,
}

impl Family {
    /// The address a send on a socket of this family names for `to`: an
    /// IPv4 destination as an IPv4-mapped one on an IPv6 socket, an
    /// IPv4-mapped one as the IPv4 address on an IPv4 socket.
    pub(crate) fn wire(self, to: &SocketAddr) -> SocketAddr {
        let target = Target::of(to);
        match (self, target.ip) {
            (Family::V4, ip) => SocketAddr::new(ip, to.port()),
            (Family::V6 { .. } | Family::Mapped, std::net::IpAddr::V4(ip)) => {
                SocketAddr::V6(SocketAddrV6::new(ip.to_ipv6_mapped(), to.port(), 0, 0))
            }
            (Family::V6 { .. } | Family::Mapped, std::net::IpAddr::V6(_)) => *to,
        }
    }

    /// Whether a socket of this family can send to `to`; if not, its
    /// kind for [`crate::Error::FamilyMismatch`].
    pub(crate) fn reaches(self, to: &SocketAddr) -> Result<(), &'static str> {
        match (self, Target::of(to).ip.is_ipv4()) {
            (Family::V4, false) => Err("IPv4"),
            (Family::Mapped, false) => Err("IPv4-mapped"),
            (Family::V6 { only: true }, true) => Err("IPv6-only"),
            _ => Ok(()),
        }
    }
}
