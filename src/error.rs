//! The one error type of the crate: every way a broadcast or a set-up can
//! fail, each message saying what to do about it.

use std::io;
use std::net::SocketAddr;

/// Everything that can go wrong, each message saying what to do about it.
///
/// Input errors (`NoDestinations`, `FamilyMismatch`, `PayloadTooLarge`, ...)
/// are detected before anything is sent: a call that returns one of them sent
/// nothing.
///
/// # Example
///
/// ```
/// use elec_broadcast::{Error, Mode, Quorum};
///
/// match Quorum::with_mode("no-such-if0", 7000, Mode::UserSpace) {
///     Err(Error::UnknownInterface { name }) => assert_eq!(name, "no-such-if0"),
///     // The enum is non-exhaustive; every message says what to do.
///     Err(other) => panic!("{other}"),
///     Ok(_) => panic!("there is no such interface"),
/// }
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The destination list was empty.
    #[error("no destinations given: pass at least one destination address")]
    NoDestinations,

    /// `Broadcaster::with_interfaces` was given no interfaces.
    #[error("no interfaces given: pass at least one interface name")]
    NoInterfaces,

    /// `broadcast_batch` was given no payloads.
    #[error("no payloads given: pass at least one payload to broadcast_batch")]
    NoPayloads,

    /// A destination the socket cannot send to: an IPv6 destination on an
    /// IPv4 socket (or on an IPv6 socket bound to an IPv4-mapped address),
    /// or an IPv4 one (or an IPv4-mapped IPv6 one) on an IPv6 socket with
    /// `IPV6_V6ONLY` on.
    #[error(
        "{destination} cannot be sent to through an {socket} socket: use a socket of its \
         family, or an IPv6 socket with IPV6_V6ONLY off (dual stack) for both families"
    )]
    FamilyMismatch {
        /// The offending destination.
        destination: SocketAddr,
        /// The socket's kind: `"IPv4"`, `"IPv6-only"` or `"IPv4-mapped"`
        /// (an IPv6 socket bound to an IPv4-mapped address).
        socket: &'static str,
    },

    /// A destination no datagram can be sent to: port 0, an unspecified or
    /// broadcast address, or an IPv6 link-local address without the scope id
    /// (the index of the interface it is on).
    #[error(
        "{destination} is not a valid destination: it needs a unicast address and a non-zero \
         port, and an IPv6 link-local address needs its interface's scope id (fe80::1%eth0)"
    )]
    InvalidDestination {
        /// The offending destination.
        destination: SocketAddr,
    },

    /// An IPv6 multicast destination: a fan-out is a set of unicast copies
    /// (send to a multicast group with an ordinary send).
    #[error(
        "{destination} is a multicast address: broadcast sends unicast copies; send to a \
         multicast group with an ordinary send"
    )]
    MulticastDestination {
        /// The offending destination.
        destination: SocketAddr,
    },

    /// A destination's route leaves through another interface than the
    /// broadcaster's: a broadcaster sends through its own interface only, so
    /// that its checks (the MTU above all) mean what they say. Use a
    /// broadcaster on that interface for such destinations.
    #[error(
        "{destination} is routed through {route_interface}, not through {interface}: \
         broadcast to it with a Broadcaster on {route_interface} (Broadcaster::with_interfaces, \
         or attach_on_demand)"
    )]
    OtherInterface {
        /// The offending destination.
        destination: SocketAddr,
        /// The broadcaster's interfaces (their names, separated by ", ").
        interface: String,
        /// The interface the kernel routes the destination through.
        route_interface: String,
    },

    /// The payload does not fit one datagram on the interface: copies are
    /// never fragmented. Also returned when the interface's MTU shrank
    /// under the payload and nothing could be sent; the error goes away as
    /// soon as the MTU allows the payload again.
    #[error(
        "a payload of {len} bytes does not fit one datagram on {interface} (MTU {mtu}): \
         send at most {max} bytes per broadcast"
    )]
    PayloadTooLarge {
        /// Length of the payload that was given.
        len: usize,
        /// Largest payload that fits (the MTU minus the IP and UDP headers: 28
        /// bytes for IPv4, 48 for IPv6).
        max: usize,
        /// The interface's MTU.
        mtu: u32,
        /// The interface's name.
        interface: String,
    },

    /// The file descriptor is not a UDP socket.
    #[error("the socket is not a UDP socket ({found}): broadcast needs a datagram socket of protocol UDP")]
    NotUdp {
        /// What was found instead.
        found: String,
    },

    /// The socket has no local address yet.
    #[error(
        "the socket is not bound to a local address: bind it (for example to 0.0.0.0:0) \
         before broadcasting, so that every copy carries the same source port"
    )]
    Unbound,

    /// No interface of that name exists in this network namespace.
    #[error(
        "there is no network interface named {name:?} in this network namespace (see `ip link`)"
    )]
    UnknownInterface {
        /// The name that was given.
        name: String,
    },

    /// The interface exists but cannot carry a fan-out.
    #[error("interface {name} cannot carry a kernel fan-out: {why}")]
    UnsupportedInterface {
        /// The interface's name.
        name: String,
        /// Why not.
        why: &'static str,
    },

    /// The process lacks a capability the kernel backend needs.
    #[error(
        "missing capability {capability}: the kernel fan-out needs CAP_BPF and CAP_PERFMON (or \
         CAP_SYS_ADMIN for both) and CAP_NET_ADMIN: run as root, grant them (`setcap \
         cap_bpf,cap_perfmon,cap_net_admin+ep BINARY`), \
         or use Mode::UserSpace"
    )]
    MissingCapability {
        /// The missing capability, such as `"CAP_BPF"`.
        capability: &'static str,
    },

    /// An eBPF program could not be loaded.
    #[error("loading the eBPF {program} program failed: {reason}; use Mode::UserSpace here")]
    Load {
        /// Which program: `"fan-out"`, `"quorum"`, ...
        program: &'static str,
        /// What went wrong: the kernel's or libbpf's words, and what to check.
        reason: String,
    },

    /// A program could not be attached to the interface.
    #[error("attaching the eBPF {program} program to the {hook} of {interface} failed: {source}")]
    Attach {
        /// Which program: `"fan-out"`, `"quorum"`, ...
        program: &'static str,
        /// `"egress"` or `"ingress"`.
        hook: &'static str,
        /// The interface's name.
        interface: String,
        /// The kernel's error.
        source: io::Error,
    },

    /// The first send of a broadcast failed, so nothing was sent (for a
    /// non-blocking socket this may be `WouldBlock`: try again).
    #[error("sending failed, nothing was sent: {0}")]
    Send(#[source] io::Error),

    /// A quorum configuration that cannot be counted.
    #[error("invalid quorum configuration: {why}")]
    InvalidQuorum {
        /// What is wrong with it.
        why: String,
    },

    /// A replier set-up or arming that cannot work.
    #[error("invalid replier configuration: {why}")]
    InvalidReply {
        /// What is wrong with it.
        why: String,
    },

    /// Another system call failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The kernel's error.
        source: io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: &'static str) -> impl FnOnce(io::Error) -> Error {
        move |source| Error::Io { context, source }
    }
}
