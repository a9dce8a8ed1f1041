//! Read-only queries of the kernel's routing, neighbour and link tables over
//! rtnetlink (`NETLINK_ROUTE`).
//!
//! For every IPv4 destination of a broadcast, user space needs the interface
//! the kernel would send it through and the link-layer address of the next
//! hop. Both come straight from the kernel's own tables, like `ip route get`,
//! `ip neigh show dev` and `ip link show` would print them: no setting is
//! changed and no packet is sent.
//!
//! A second kind of socket, [`ChangeSocket`], listens to the kernel's
//! notifications of changes to those tables (neighbours, IPv4 routes and
//! rules, nexthop objects, links, IPv4 addresses), so that what user space
//! derived from them is dropped as soon as the kernel's tables change.
//!
//! The messages are built and parsed here, over `libc`'s constants, as safe
//! byte handling; the socket calls live in the small [`sys`] module and go
//! through `nix`. Replies are parsed from bytes with every length checked
//! first, so a malformed reply becomes an [`io::ErrorKind::InvalidData`]
//! error, never a panic.

use std::cell::Cell;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsFd, OwnedFd};

// Kernel ABI values come from `libc`; those it has as `c_int` are given the
// netlink field types here, and the few it lacks (the struct layouts,
// RTAX_MTU, the nexthop messages) are spelled out with their header.
use libc::{
    IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, NDA_DST, NDA_IFINDEX, NDA_LLADDR, NUD_DELAY, NUD_NOARP,
    NUD_PERMANENT, NUD_PROBE, NUD_REACHABLE, NUD_STALE, RTA_DST, RTA_GATEWAY, RTA_METRICS, RTA_OIF,
    RTA_PREFSRC, RTA_VIA, RTM_GETLINK, RTM_GETNEIGH, RTM_GETROUTE, RTM_NEWLINK, RTM_NEWNEIGH,
    RTM_NEWROUTE, RTN_BROADCAST, RTN_LOCAL, RTN_MULTICAST, RTN_UNICAST, RTN_UNREACHABLE,
};

const AF_UNSPEC: u8 = libc::AF_UNSPEC as u8;
const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const NLMSG_NOOP: u16 = libc::NLMSG_NOOP as u16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLM_F_REQUEST: u16 = libc::NLM_F_REQUEST as u16;
const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;
const NLM_F_DUMP: u16 = libc::NLM_F_DUMP as u16;
/// Attribute type bits; the top two bits are the NESTED / NET_BYTEORDER flags.
const NLA_TYPE_MASK: u16 = libc::NLA_TYPE_MASK as u16;
const IFF_UP: u32 = libc::IFF_UP as u32;
/// `RTAX_MTU` (<linux/rtnetlink.h>), inside `RTA_METRICS`.
const RTAX_MTU: u16 = 2;
/// `IFLA_AF_SPEC` (<linux/if_link.h>), `IFLA_INET6_CONF` inside its
/// `AF_INET6` attribute, and the index of `DEVCONF_MTU6` in that array
/// (<linux/ipv6.h>).
const IFLA_AF_SPEC: u16 = 26;
const IFLA_INET6_CONF: u16 = 2;
const DEVCONF_MTU6: usize = 2;

/// `struct nlmsghdr`: len u32, type u16, flags u16, seq u32, pid u32.
const NLMSG_HEADER_LEN: usize = std::mem::size_of::<libc::nlmsghdr>();
/// `struct nlmsgerr`: error i32 followed by the request's `nlmsghdr`.
const NLMSG_ERROR_LEN: usize = 4 + NLMSG_HEADER_LEN;
/// `struct rtattr`: len u16, type u16, then the payload.
const RTA_HEADER_LEN: usize = 4;
/// `struct rtmsg` (<linux/rtnetlink.h>): family, dst_len, src_len, tos,
/// table, protocol, scope, type (u8 each), flags u32.
const RTMSG_LEN: usize = 12;
const RTMSG_TYPE_OFFSET: usize = 7;
/// `struct ndmsg` (<linux/neighbour.h>): family u8, pad u8, pad u16,
/// ifindex i32, state u16, flags u8, type u8.
const NDMSG_LEN: usize = 12;
const NDMSG_IFINDEX_OFFSET: usize = 4;
const NDMSG_STATE_OFFSET: usize = 8;
/// `struct ifaddrmsg` (<linux/if_addr.h>): family, prefixlen, flags, scope
/// (u8 each), index u32.
const IFADDRMSG_INDEX_OFFSET: usize = 4;
/// `struct ifinfomsg` (<linux/rtnetlink.h>): family u8, pad u8, type u16,
/// index i32, flags u32, change u32.
const IFINFOMSG_LEN: usize = 16;
const IFINFOMSG_INDEX_OFFSET: usize = 4;
const IFINFOMSG_FLAGS_OFFSET: usize = 8;
/// Neighbour states in which the entry holds a link-layer address the kernel itself would use.
const NUD_USABLE: u16 =
    NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP;

/// Room for the largest datagram the kernel sends: dump parts are at most 32 KiB.
const RECEIVE_BUFFER_LEN: usize = 64 * 1024;
/// How often a dump is restarted when the kernel reports that the table changed under it.
const DUMP_ATTEMPTS: usize = 4;

/// A `NETLINK_ROUTE` socket bound in the network namespace of the thread that created it.
///
/// Requests are answered one at a time; the socket is `Send` but not `Sync`
/// (callers share it behind a `Mutex`).
pub(crate) struct RouteSocket {
    fd: OwnedFd,
    /// Sequence number of the most recent request; the kernel echoes it in its replies.
    last_seq: Cell<u32>,
}

/// The kernel's answer to "how would a packet to this address leave?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Route {
    pub(crate) kind: RouteKind,
    /// Index of the outgoing interface (`RTA_OIF`), 0 if the kernel gave none.
    pub(crate) oif: u32,
    /// Router to send through (`RTA_GATEWAY`); `None` when the destination is on-link.
    pub(crate) gateway: Option<IpAddr>,
    /// Source address the kernel would pick (`RTA_PREFSRC`).
    pub(crate) prefsrc: Option<IpAddr>,
    /// The route's MTU (`RTAX_MTU` of `RTA_METRICS`): set on the route, or
    /// learned from the path and cached by the kernel; `None`: the
    /// interface's MTU applies.
    pub(crate) mtu: Option<u32>,
}

impl Route {
    /// The address whose link-layer address the packet must carry: the gateway, or `dst` itself when on-link.
    pub(crate) fn next_hop(&self, dst: impl Into<IpAddr>) -> IpAddr {
        self.gateway.unwrap_or(dst.into())
    }
}

/// Route type (`rtm_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteKind {
    Unicast,
    /// Delivered to this host.
    Local,
    Broadcast,
    Multicast,
    Unreachable,
    /// Any other `RTN_*` value.
    Other(u8),
}

impl RouteKind {
    fn from_rtm_type(rtm_type: u8) -> RouteKind {
        match rtm_type {
            RTN_UNICAST => RouteKind::Unicast,
            RTN_LOCAL => RouteKind::Local,
            RTN_BROADCAST => RouteKind::Broadcast,
            RTN_MULTICAST => RouteKind::Multicast,
            RTN_UNREACHABLE => RouteKind::Unreachable,
            other => RouteKind::Other(other),
        }
    }
}

/// One entry of the kernel's neighbour table: ARP (IPv4) or NDP (IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Neighbour {
    /// The neighbour's address (`NDA_DST`).
    pub(crate) addr: IpAddr,
    /// Its MAC address (`NDA_LLADDR`), when the kernel knows one and it is 6 bytes long.
    pub(crate) mac: Option<[u8; 6]>,
    /// `ndm_state`, a set of `NUD_*` bits.
    pub(crate) state: u16,
}

impl Neighbour {
    /// True when the entry holds a usable link-layer address: `mac` is `Some`
    /// and `state` has any of `NUD_REACHABLE`, `NUD_STALE`, `NUD_DELAY`,
    /// `NUD_PROBE`, `NUD_PERMANENT` or `NUD_NOARP`. `NUD_INCOMPLETE`,
    /// `NUD_FAILED` and `NUD_NONE` entries are not usable.
    pub(crate) fn is_usable(&self) -> bool {
        self.mac.is_some() && self.state & NUD_USABLE != 0
    }
}

/// What the kernel says about one network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Link {
    pub(crate) index: u32,
    pub(crate) mtu: u32,
    /// The interface's IPv6 MTU (`DEVCONF_MTU6` of `IFLA_AF_SPEC`'s
    /// `IFLA_INET6_CONF`: the `net.ipv6.conf.IF.mtu` sysctl, or what a
    /// router advertised), where the interface has IPv6.
    pub(crate) mtu6: Option<u32>,
    /// Hardware address (`IFLA_ADDRESS`) when it is 6 bytes long.
    pub(crate) mac: Option<[u8; 6]>,
    /// Administratively up (`IFF_UP`).
    pub(crate) is_up: bool,
}

/// A change to the kernel's tables, as one rtnetlink notification reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A neighbour entry (IPv4 or IPv6) of interface `ifindex` was added or changed
    /// (it is now `neighbour`), or removed.
    Neighbour {
        ifindex: u32,
        neighbour: Neighbour,
        removed: bool,
    },
    /// A route to `dst/len` (in any table) was added, changed or removed.
    Route { dst: IpAddr, len: u8 },
    /// An address of interface `ifindex` was added or removed.
    Address { ifindex: u32 },
    /// Interface `ifindex` changed (MTU, flags, address, ...) or went away.
    /// IPv4 sends no route notifications for the routes a link takes with it
    /// when it goes down, so a link change may change any route through it.
    Link { ifindex: u32, mtu: Option<u32> },
    /// Policy routing rules or nexthop objects changed: any route may have.
    Rules,
}

/// `RTM_NEWNEXTHOP` and `RTM_DELNEXTHOP` (<linux/rtnetlink.h>), which `libc`
/// does not export.
const RTM_NEWNEXTHOP: u16 = 104;
const RTM_DELNEXTHOP: u16 = 105;

/// A `NETLINK_ROUTE` socket subscribed to the notifications [`Change`]
/// describes, in the network namespace of the thread that opened it.
pub(crate) struct ChangeSocket {
    fd: OwnedFd,
    buffer: Vec<u8>,
}

impl ChangeSocket {
    /// Opens and subscribes a socket. Its receive buffer is made large
    /// (`SO_RCVBUFFORCE` where allowed), so that bursts of changes rarely
    /// overflow it; when one does, [`ChangeSocket::read`] says so.
    pub(crate) fn open() -> io::Result<ChangeSocket> {
        let groups = (libc::RTMGRP_LINK
            | libc::RTMGRP_NEIGH
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV4_RULE
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV6_ROUTE) as u32
            | 1 << (libc::RTNLGRP_IPV6_RULE - 1)
            | 1 << (libc::RTNLGRP_NEXTHOP - 1);
        let fd = sys::open_change_socket(groups, CHANGE_BUFFER_BYTES)?;
        Ok(ChangeSocket {
            fd,
            buffer: vec![0; RECEIVE_BUFFER_LEN],
        })
    }

    /// Waits for the next datagram of notifications and returns the changes
    /// it reports. An `ENOBUFS` error means that notifications were lost
    /// because the socket's buffer was full: the caller must read the tables
    /// afresh.
    pub(crate) fn read(&mut self) -> io::Result<Vec<Change>> {
        let len = sys::receive_from_kernel(self.fd.as_fd(), &mut self.buffer)?;
        let datagram = self
            .buffer
            .get(..len)
            .ok_or_else(|| malformed("datagram longer than the buffer"))?;
        parse_changes(datagram)
    }
}

impl AsFd for ChangeSocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Receive buffer of a [`ChangeSocket`] (the kernel doubles it): room for
/// about ten thousand notifications. A burst beyond that makes the reader
/// read the tables afresh.
const CHANGE_BUFFER_BYTES: usize = 4 << 20;

/// The changes reported by one datagram of notifications.
fn parse_changes(datagram: &[u8]) -> io::Result<Vec<Change>> {
    let mut changes = Vec::new();
    for message in Messages::new(datagram) {
        if let Some(change) = parse_change(&message?)? {
            changes.push(change);
        }
    }
    Ok(changes)
}

/// One notification; `None` for those that change nothing a route lookup
/// sees (other families, messages of no interest).
fn parse_change(message: &Message<'_>) -> io::Result<Option<Change>> {
    let payload = message.payload;
    Ok(match message.kind {
        libc::RTM_NEWNEIGH | libc::RTM_DELNEIGH => {
            parse_neighbour_entry(payload)?.map(|(ifindex, neighbour)| Change::Neighbour {
                ifindex,
                neighbour,
                removed: message.kind == libc::RTM_DELNEIGH,
            })
        }
        libc::RTM_NEWROUTE | libc::RTM_DELROUTE => {
            let family = read_u8(payload, 0)?;
            let mut dst = match family {
                AF_INET => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                AF_INET6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                _ => return Ok(None),
            };
            let len = read_u8(payload, 1)?;
            for attribute in Attributes::after_header(payload, RTMSG_LEN)? {
                let attribute = attribute?;
                if attribute.kind == RTA_DST {
                    dst = address(family, &attribute, "RTA_DST")?;
                }
            }
            Some(Change::Route { dst, len })
        }
        libc::RTM_NEWADDR | libc::RTM_DELADDR => {
            is_ip(read_u8(payload, 0)?).then_some(Change::Address {
                ifindex: read_u32(payload, IFADDRMSG_INDEX_OFFSET)?,
            })
        }
        libc::RTM_NEWLINK | libc::RTM_DELLINK => {
            let ifindex = read_u32(payload, IFINFOMSG_INDEX_OFFSET)?;
            let mut mtu = None;
            for attribute in Attributes::after_header(payload, IFINFOMSG_LEN)? {
                let attribute = attribute?;
                if attribute.kind == IFLA_MTU {
                    mtu = Some(u32::from_ne_bytes(exact(&attribute, "IFLA_MTU")?));
                }
            }
            Some(Change::Link { ifindex, mtu })
        }
        libc::RTM_NEWRULE | libc::RTM_DELRULE => {
            is_ip(read_u8(payload, 0)?).then_some(Change::Rules)
        }
        RTM_NEWNEXTHOP | RTM_DELNEXTHOP => Some(Change::Rules),
        _ => None,
    })
}

impl RouteSocket {
    /// Opens a socket in the calling thread's network namespace.
    pub(crate) fn open() -> io::Result<RouteSocket> {
        Ok(RouteSocket {
            fd: sys::open_route_socket()?,
            last_seq: Cell::new(0),
        })
    }

    /// Like `ip route get DST`: the route the kernel would use for a packet
    /// from this host to `dst` (`RTM_GETROUTE` with `RTA_DST`).
    ///
    /// A destination the kernel cannot reach is an error carrying its errno
    /// (e.g. `ENETUNREACH`), exactly as `ip route get` reports it.
    #[cfg(test)]
    pub(crate) fn route_to(&self, dst: impl Into<IpAddr>) -> io::Result<Route> {
        self.route_on(dst.into(), None)
    }

    /// Like `ip route get DST oif IF`: the route to `dst` out of interface
    /// `oif` where one is given (an IPv6 link-local destination's scope).
    /// Errors as `route_to`.
    pub(crate) fn route_on(&self, dst: IpAddr, oif: Option<u32>) -> io::Result<Route> {
        let mut rtmsg = [0; RTMSG_LEN];
        let octets = match dst {
            IpAddr::V4(ip) => {
                rtmsg[0] = AF_INET;
                rtmsg[1] = 32; // rtm_dst_len: a host lookup
                ip.octets().to_vec()
            }
            IpAddr::V6(ip) => {
                rtmsg[0] = AF_INET6;
                rtmsg[1] = 128;
                ip.octets().to_vec()
            }
        };
        let oif = oif.map(u32::to_ne_bytes);
        let mut attributes: Vec<(u16, &[u8])> = vec![(RTA_DST, &octets)];
        if let Some(oif) = &oif {
            attributes.push((RTA_OIF, oif));
        }
        self.query(RTM_GETROUTE, &rtmsg, &attributes, RTM_NEWROUTE, parse_route)
    }

    /// Like `ip neigh show dev IF`: the neighbour entries of interface
    /// `ifindex`, IPv4 (ARP) and IPv6 (NDP), in any state (`RTM_GETNEIGH`
    /// dumps).
    pub(crate) fn neighbours(&self, ifindex: u32) -> io::Result<Vec<Neighbour>> {
        let mut all = self.neighbours_of(AF_INET, ifindex)?;
        all.extend(self.neighbours_of(AF_INET6, ifindex)?);
        Ok(all)
    }

    /// The neighbour entries of `family` of interface `ifindex`.
    fn neighbours_of(&self, family: u8, ifindex: u32) -> io::Result<Vec<Neighbour>> {
        let mut ndmsg = [0; NDMSG_LEN];
        ndmsg[0] = family;
        // The kernel filters by NDA_IFINDEX; entries are checked again below
        // in case it ignores the filter.
        let ifindex_attribute = ifindex.to_ne_bytes();
        let attributes: [(u16, &[u8]); 1] = [(NDA_IFINDEX, &ifindex_attribute)];
        for _ in 0..DUMP_ATTEMPTS {
            let mut neighbours = Vec::new();
            let result = self.dump(RTM_GETNEIGH, &ndmsg, &attributes, RTM_NEWNEIGH, |payload| {
                neighbours.extend(parse_neighbour(payload, ifindex)?);
                Ok(())
            });
            match result {
                Ok(()) => return Ok(neighbours),
                // The table changed during the dump: start again.
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "the neighbour table kept changing during every dump attempt",
        ))
    }

    /// Like `ip link show NAME`: index, MTU, MAC and up-ness of an interface
    /// (`RTM_GETLINK` with `IFLA_IFNAME`).
    ///
    /// An interface that does not exist is a [`io::ErrorKind::NotFound`]
    /// error; a string that cannot be an interface name (empty, longer than
    /// 15 bytes, or containing NUL) is [`io::ErrorKind::InvalidInput`].
    pub(crate) fn link(&self, name: &str) -> io::Result<Link> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name:?} is not a valid interface name"),
            ));
        }
        let mut ifinfomsg = [0; IFINFOMSG_LEN];
        ifinfomsg[0] = AF_UNSPEC;
        let mut name_attribute = name.as_bytes().to_vec();
        name_attribute.push(0);
        self.query(
            RTM_GETLINK,
            &ifinfomsg,
            &[(IFLA_IFNAME, &name_attribute)],
            RTM_NEWLINK,
            parse_link,
        )
        .map_err(|error| {
            if error.raw_os_error() == Some(libc::ENODEV) {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("no network interface named {name:?}"),
                )
            } else {
                error
            }
        })
    }

    /// Like `ip link show` for the interface with index `ifindex`.
    pub(crate) fn link_by_index(&self, ifindex: u32) -> io::Result<Link> {
        let mut ifinfomsg = [0; IFINFOMSG_LEN];
        ifinfomsg[0] = AF_UNSPEC;
        ifinfomsg[IFINFOMSG_INDEX_OFFSET..IFINFOMSG_INDEX_OFFSET + 4]
            .copy_from_slice(&ifindex.to_ne_bytes());
        self.query(RTM_GETLINK, &ifinfomsg, &[], RTM_NEWLINK, parse_link)
    }

    /// The name of the interface with index `ifindex` (`IFLA_IFNAME`).
    pub(crate) fn link_name(&self, ifindex: u32) -> io::Result<String> {
        let mut ifinfomsg = [0; IFINFOMSG_LEN];
        ifinfomsg[0] = AF_UNSPEC;
        ifinfomsg[IFINFOMSG_INDEX_OFFSET..IFINFOMSG_INDEX_OFFSET + 4]
            .copy_from_slice(&ifindex.to_ne_bytes());
        self.query(RTM_GETLINK, &ifinfomsg, &[], RTM_NEWLINK, parse_link_name)
    }

    /// Sends a request expecting exactly one reply of type `reply_type` and parses it.
    fn query<T>(
        &self,
        request_type: u16,
        header: &[u8],
        attributes: &[(u16, &[u8])],
        reply_type: u16,
        parse: impl Fn(&[u8]) -> io::Result<T>,
    ) -> io::Result<T> {
        let mut reply = None;
        self.exchange(
            request_type,
            NLM_F_REQUEST,
            header,
            attributes,
            reply_type,
            &mut |payload| {
                reply = Some(parse(payload)?);
                Ok(())
            },
        )?;
        reply.ok_or_else(|| malformed("the kernel finished without sending a reply"))
    }

    /// Sends a dump request and hands the payload of every reply of type `reply_type` to `on_reply`.
    fn dump(
        &self,
        request_type: u16,
        header: &[u8],
        attributes: &[(u16, &[u8])],
        reply_type: u16,
        mut on_reply: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.exchange(
            request_type,
            NLM_F_REQUEST | NLM_F_DUMP,
            header,
            attributes,
            reply_type,
            &mut on_reply,
        )
    }

    /// Sends one request and reads datagrams until the kernel's answer to it is complete.
    fn exchange(
        &self,
        request_type: u16,
        flags: u16,
        header: &[u8],
        attributes: &[(u16, &[u8])],
        reply_type: u16,
        on_reply: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let seq = self.last_seq.get().wrapping_add(1);
        self.last_seq.set(seq);
        let request = encode_request(request_type, flags, seq, header, attributes)?;
        sys::send_to_kernel(self.fd.as_fd(), &request)?;

        let mut reader = ReplyReader::new(seq, reply_type, flags & NLM_F_DUMP != 0);
        let mut buffer = vec![0; RECEIVE_BUFFER_LEN];
        loop {
            let len = sys::receive_from_kernel(self.fd.as_fd(), &mut buffer)?;
            let datagram = buffer
                .get(..len)
                .ok_or_else(|| malformed("datagram longer than the buffer"))?;
            if let Progress::Finished = reader.feed(datagram, on_reply) {
                return reader.finish();
            }
        }
    }
}

/// Builds one netlink request: `nlmsghdr`, the fixed `header`, then `attributes`, each 4-byte aligned.
fn encode_request(
    request_type: u16,
    flags: u16,
    seq: u32,
    header: &[u8],
    attributes: &[(u16, &[u8])],
) -> io::Result<Vec<u8>> {
    let too_long = || io::Error::new(io::ErrorKind::InvalidInput, "netlink request too long");
    let mut body = header.to_vec();
    pad_to_alignment(&mut body);
    for &(kind, payload) in attributes {
        let len = u16::try_from(RTA_HEADER_LEN + payload.len()).map_err(|_| too_long())?;
        body.extend_from_slice(&len.to_ne_bytes());
        body.extend_from_slice(&kind.to_ne_bytes());
        body.extend_from_slice(payload);
        pad_to_alignment(&mut body);
    }
    let total_len = u32::try_from(NLMSG_HEADER_LEN + body.len()).map_err(|_| too_long())?;
    let mut message = Vec::with_capacity(NLMSG_HEADER_LEN + body.len());
    message.extend_from_slice(&total_len.to_ne_bytes());
    message.extend_from_slice(&request_type.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&seq.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: filled in by the kernel
    message.extend_from_slice(&body);
    Ok(message)
}

/// NLMSG_ALIGN / RTA_ALIGN: netlink messages and attributes start on 4-byte boundaries.
fn align_to_4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

fn pad_to_alignment(bytes: &mut Vec<u8>) {
    bytes.resize(align_to_4(bytes.len()), 0);
}

/// Whether the kernel's answer to a request is complete.
#[derive(Debug, PartialEq, Eq)]
enum Progress {
    NeedMore,
    Finished,
}

/// Picks the messages answering one request out of the datagrams received.
///
/// Messages carrying another sequence number are left-overs of an earlier,
/// abandoned request and are skipped. Errors are remembered rather than
/// returned at once, so that a failed dump is still read to its end: the
/// kernel refuses a new dump on a socket whose previous one is unfinished.
struct ReplyReader {
    seq: u32,
    reply_type: u16,
    is_dump: bool,
    /// The kernel flagged the dump as inconsistent (NLM_F_DUMP_INTR).
    interrupted: bool,
    /// The first error met.
    error: Option<io::Error>,
}

impl ReplyReader {
    fn new(seq: u32, reply_type: u16, is_dump: bool) -> ReplyReader {
        ReplyReader {
            seq,
            reply_type,
            is_dump,
            interrupted: false,
            error: None,
        }
    }

    /// Handles every message of one datagram, passing reply payloads to `on_reply` until an error occurs.
    fn feed(
        &mut self,
        datagram: &[u8],
        on_reply: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Progress {
        for message in Messages::new(datagram) {
            let progress = match message {
                Ok(message) => self.handle(message, on_reply),
                Err(error) => self.fail(error),
            };
            if progress == Progress::Finished {
                return Progress::Finished;
            }
        }
        Progress::NeedMore
    }

    fn handle(
        &mut self,
        message: Message<'_>,
        on_reply: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> Progress {
        if message.seq != self.seq {
            return Progress::NeedMore;
        }
        if message.flags & NLM_F_DUMP_INTR != 0 {
            self.interrupted = true;
        }
        match message.kind {
            NLMSG_NOOP => Progress::NeedMore,
            // An NLMSG_ERROR ends the answer: either an ACK (error 0) or a failure.
            NLMSG_ERROR => {
                if let Err(error) = acknowledgement(message.payload) {
                    self.fail(error);
                }
                Progress::Finished
            }
            NLMSG_DONE => {
                if let Err(error) = dump_status(message.payload) {
                    self.fail(error);
                }
                Progress::Finished
            }
            kind if kind == self.reply_type => {
                if self.error.is_none() {
                    if let Err(error) = on_reply(message.payload) {
                        return self.fail(error);
                    }
                }
                if self.is_dump {
                    Progress::NeedMore
                } else {
                    Progress::Finished
                }
            }
            other => self.fail(malformed(&format!("unexpected message type {other}"))),
        }
    }

    /// Records `error`; a dump is still read to its NLMSG_DONE, a single reply is over.
    fn fail(&mut self, error: io::Error) -> Progress {
        self.error.get_or_insert(error);
        if self.is_dump {
            Progress::NeedMore
        } else {
            Progress::Finished
        }
    }

    /// The outcome once the answer is complete.
    fn finish(self) -> io::Result<()> {
        match self.error {
            Some(error) => Err(error),
            None if self.interrupted => Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "the table changed during the dump",
            )),
            None => Ok(()),
        }
    }
}

/// The payload of NLMSG_ERROR (`struct nlmsgerr`): error 0 is an ACK, `-errno` a failure.
fn acknowledgement(payload: &[u8]) -> io::Result<()> {
    if payload.len() < NLMSG_ERROR_LEN {
        return Err(malformed("NLMSG_ERROR shorter than struct nlmsgerr"));
    }
    match read_i32(payload, 0)? {
        0 => Ok(()),
        error if error < 0 => Err(negative_errno(error)),
        _ => Err(malformed("NLMSG_ERROR with a positive error code")),
    }
}

/// The payload of NLMSG_DONE: an `int`, negative `-errno` if the dump failed.
/// Old kernels may omit it, which counts as success.
fn dump_status(payload: &[u8]) -> io::Result<()> {
    if payload.len() < 4 {
        return Ok(());
    }
    match read_i32(payload, 0)? {
        error if error < 0 => Err(negative_errno(error)),
        _ => Ok(()),
    }
}

fn negative_errno(error: i32) -> io::Error {
    match error.checked_neg() {
        Some(errno) => io::Error::from_raw_os_error(errno),
        None => malformed("error code out of range"),
    }
}

/// One netlink message inside a datagram.
#[derive(Debug)]
struct Message<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    payload: &'a [u8],
}

/// The messages of one datagram; ends after the first framing error.
struct Messages<'a> {
    rest: &'a [u8],
}

impl<'a> Messages<'a> {
    fn new(datagram: &'a [u8]) -> Messages<'a> {
        Messages { rest: datagram }
    }
}

impl<'a> Iterator for Messages<'a> {
    type Item = io::Result<Message<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.rest);
        Some(split_message(bytes).map(|(message, rest)| {
            self.rest = rest;
            message
        }))
    }
}

/// Splits the first message off `bytes`, returning it and what follows its padding.
fn split_message(bytes: &[u8]) -> io::Result<(Message<'_>, &[u8])> {
    let len = read_u32(bytes, 0)? as usize;
    if len < NLMSG_HEADER_LEN {
        return Err(malformed("nlmsg_len shorter than the message header"));
    }
    let message = bytes
        .get(..len)
        .ok_or_else(|| malformed("nlmsg_len beyond the end of the datagram"))?;
    let parsed = Message {
        kind: read_u16(message, 4)?,
        flags: read_u16(message, 6)?,
        seq: read_u32(message, 8)?,
        payload: message.get(NLMSG_HEADER_LEN..).unwrap_or_default(),
    };
    let rest = bytes.get(align_to_4(len)..).unwrap_or_default();
    Ok((parsed, rest))
}

/// One rtnetlink attribute (`struct rtattr` and its payload).
struct Attribute<'a> {
    kind: u16,
    payload: &'a [u8],
}

/// The attributes following a fixed header of `header_len` bytes; ends after the first framing error.
struct Attributes<'a> {
    rest: &'a [u8],
}

impl<'a> Attributes<'a> {
    fn after_header(payload: &'a [u8], header_len: usize) -> io::Result<Attributes<'a>> {
        let rest = payload
            .get(align_to_4(header_len)..)
            .ok_or_else(|| malformed("message shorter than its fixed header"))?;
        Ok(Attributes { rest })
    }
}

impl<'a> Iterator for Attributes<'a> {
    type Item = io::Result<Attribute<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let bytes = std::mem::take(&mut self.rest);
        Some(split_attribute(bytes).map(|(attribute, rest)| {
            self.rest = rest;
            attribute
        }))
    }
}

fn split_attribute(bytes: &[u8]) -> io::Result<(Attribute<'_>, &[u8])> {
    let len = usize::from(read_u16(bytes, 0)?);
    if len < RTA_HEADER_LEN {
        return Err(malformed("rta_len shorter than the attribute header"));
    }
    let attribute = bytes
        .get(..len)
        .ok_or_else(|| malformed("rta_len beyond the end of the message"))?;
    let parsed = Attribute {
        kind: read_u16(attribute, 2)? & NLA_TYPE_MASK,
        payload: attribute.get(RTA_HEADER_LEN..).unwrap_or_default(),
    };
    let rest = bytes.get(align_to_4(len)..).unwrap_or_default();
    Ok((parsed, rest))
}

/// Parses an RTM_NEWROUTE payload.
fn parse_route(payload: &[u8]) -> io::Result<Route> {
    let family = read_u8(payload, 0)?;
    if !is_ip(family) {
        return Err(malformed("route reply is neither IPv4 nor IPv6"));
    }
    let mut route = Route {
        kind: RouteKind::from_rtm_type(read_u8(payload, RTMSG_TYPE_OFFSET)?),
        oif: 0,
        gateway: None,
        prefsrc: None,
        mtu: None,
    };
    for attribute in Attributes::after_header(payload, RTMSG_LEN)? {
        let attribute = attribute?;
        match attribute.kind {
            RTA_OIF => route.oif = u32::from_ne_bytes(exact(&attribute, "RTA_OIF")?),
            RTA_GATEWAY => route.gateway = Some(address(family, &attribute, "RTA_GATEWAY")?),
            RTA_PREFSRC => route.prefsrc = Some(address(family, &attribute, "RTA_PREFSRC")?),
            RTA_METRICS => {
                for metric in Attributes::after_header(attribute.payload, 0)? {
                    let metric = metric?;
                    if metric.kind == RTAX_MTU {
                        let mtu = u32::from_ne_bytes(exact(&metric, "RTAX_MTU")?);
                        route.mtu = (mtu > 0).then_some(mtu);
                    }
                }
            }
            RTA_VIA => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "the route's next hop is of another address family (RTA_VIA)",
                ))
            }
            _ => {}
        }
    }
    Ok(route)
}

/// Parses an RTM_NEWNEIGH payload; `None` for an entry of another family or interface.
fn parse_neighbour(payload: &[u8], ifindex: u32) -> io::Result<Option<Neighbour>> {
    Ok(parse_neighbour_entry(payload)?
        .filter(|(index, _)| *index == ifindex)
        .map(|(_, neighbour)| neighbour))
}

/// Parses an RTM_NEWNEIGH or RTM_DELNEIGH payload into the entry and its
/// interface; `None` for an entry of another family.
fn parse_neighbour_entry(payload: &[u8]) -> io::Result<Option<(u32, Neighbour)>> {
    let family = read_u8(payload, 0)?;
    if !is_ip(family) {
        return Ok(None);
    }
    let ifindex = read_u32(payload, NDMSG_IFINDEX_OFFSET)?;
    let state = read_u16(payload, NDMSG_STATE_OFFSET)?;
    let mut addr = None;
    let mut mac = None;
    for attribute in Attributes::after_header(payload, NDMSG_LEN)? {
        let attribute = attribute?;
        match attribute.kind {
            NDA_DST => addr = Some(address(family, &attribute, "NDA_DST")?),
            NDA_LLADDR => mac = <[u8; 6]>::try_from(attribute.payload).ok(),
            _ => {}
        }
    }
    let addr = addr.ok_or_else(|| malformed("neighbour entry without NDA_DST"))?;
    Ok(Some((ifindex, Neighbour { addr, mac, state })))
}

/// The `IFLA_IFNAME` of an RTM_NEWLINK payload.
fn parse_link_name(payload: &[u8]) -> io::Result<String> {
    for attribute in Attributes::after_header(payload, IFINFOMSG_LEN)? {
        let attribute = attribute?;
        if attribute.kind == IFLA_IFNAME {
            let name = attribute
                .payload
                .split(|&b| b == 0)
                .next()
                .unwrap_or_default();
            return Ok(String::from_utf8_lossy(name).into_owned());
        }
    }
    Err(malformed("link without IFLA_IFNAME"))
}

/// Parses an RTM_NEWLINK payload.
fn parse_link(payload: &[u8]) -> io::Result<Link> {
    let index = read_u32(payload, IFINFOMSG_INDEX_OFFSET)?;
    let flags = read_u32(payload, IFINFOMSG_FLAGS_OFFSET)?;
    let mut mtu = None;
    let mut mtu6 = None;
    let mut mac = None;
    for attribute in Attributes::after_header(payload, IFINFOMSG_LEN)? {
        let attribute = attribute?;
        match attribute.kind {
            IFLA_MTU => mtu = Some(u32::from_ne_bytes(exact(&attribute, "IFLA_MTU")?)),
            IFLA_ADDRESS => mac = <[u8; 6]>::try_from(attribute.payload).ok(),
            IFLA_AF_SPEC => mtu6 = parse_mtu6(attribute.payload)?,
            _ => {}
        }
    }
    Ok(Link {
        index,
        mtu: mtu.ok_or_else(|| malformed("link without IFLA_MTU"))?,
        mtu6,
        mac,
        is_up: flags & IFF_UP != 0,
    })
}

/// The IPv6 MTU in an `IFLA_AF_SPEC` attribute's payload: its `AF_INET6`
/// attribute's `IFLA_INET6_CONF`, an array of `DEVCONF_*` values.
fn parse_mtu6(af_spec: &[u8]) -> io::Result<Option<u32>> {
    for family in Attributes::after_header(af_spec, 0)? {
        let family = family?;
        if family.kind != u16::from(AF_INET6) {
            continue;
        }
        for attribute in Attributes::after_header(family.payload, 0)? {
            let attribute = attribute?;
            if attribute.kind == IFLA_INET6_CONF {
                let mtu6 = read_u32(attribute.payload, 4 * DEVCONF_MTU6)?;
                return Ok((mtu6 > 0).then_some(mtu6));
            }
        }
    }
    Ok(None)
}

/// Whether `family` is IPv4 or IPv6.
fn is_ip(family: u8) -> bool {
    family == AF_INET || family == AF_INET6
}

/// An address attribute of a message of `family` (IPv4 or IPv6).
fn address(family: u8, attribute: &Attribute<'_>, name: &str) -> io::Result<IpAddr> {
    Ok(match family {
        AF_INET6 => IpAddr::from(exact::<16>(attribute, name)?),
        _ => IpAddr::from(exact::<4>(attribute, name)?),
    })
}

/// The attribute's payload, which must be exactly `N` bytes long.
fn exact<const N: usize>(attribute: &Attribute<'_>, name: &str) -> io::Result<[u8; N]> {
    <[u8; N]>::try_from(attribute.payload)
        .map_err(|_| malformed(&format!("{name} payload is not {N} bytes long")))
}

/// `N` bytes of `bytes` starting at `offset`, or an error if they are not all there.
fn bytes_at<const N: usize>(bytes: &[u8], offset: usize) -> io::Result<[u8; N]> {
    bytes
        .get(offset..)
        .and_then(|tail| tail.get(..N))
        .and_then(|field| <[u8; N]>::try_from(field).ok())
        .ok_or_else(|| malformed("message too short"))
}

fn read_u8(bytes: &[u8], offset: usize) -> io::Result<u8> {
    bytes_at::<1>(bytes, offset).map(|[byte]| byte)
}

fn read_u16(bytes: &[u8], offset: usize) -> io::Result<u16> {
    bytes_at(bytes, offset).map(u16::from_ne_bytes)
}

fn read_u32(bytes: &[u8], offset: usize) -> io::Result<u32> {
    bytes_at(bytes, offset).map(u32::from_ne_bytes)
}

fn read_i32(bytes: &[u8], offset: usize) -> io::Result<i32> {
    bytes_at(bytes, offset).map(i32::from_ne_bytes)
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed rtnetlink reply: {what}"),
    )
}

/// The system calls, through nix.
mod sys {
    use std::io::{self, IoSliceMut};
    use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

    use nix::sys::socket::{
        bind, recvmsg, sendto, setsockopt, socket, sockopt, AddressFamily, MsgFlags, NetlinkAddr,
        SockFlag, SockProtocol, SockType,
    };

    /// The kernel's end of every netlink socket: port id 0, no groups.
    fn kernel() -> NetlinkAddr {
        NetlinkAddr::new(0, 0)
    }

    /// Creates a close-on-exec NETLINK_ROUTE socket; the kernel binds it on first send.
    pub(super) fn open_route_socket() -> io::Result<OwnedFd> {
        Ok(socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?)
    }

    /// Creates a NETLINK_ROUTE socket bound to the multicast `groups` (a bit
    /// mask of RTNLGRP_* numbers less one) whose receive buffer holds
    /// `buffer_bytes`: forced past `rmem_max` where the caller has
    /// CAP_NET_ADMIN, else as large as `rmem_max` allows.
    pub(super) fn open_change_socket(groups: u32, buffer_bytes: usize) -> io::Result<OwnedFd> {
        let fd = open_route_socket()?;
        if setsockopt(&fd, sockopt::RcvBufForce, &buffer_bytes).is_err() {
            setsockopt(&fd, sockopt::RcvBuf, &buffer_bytes)?;
        }
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
        Ok(fd)
    }

    /// Sends one request datagram to the kernel.
    pub(super) fn send_to_kernel(fd: BorrowedFd<'_>, request: &[u8]) -> io::Result<()> {
        loop {
            match sendto(fd.as_raw_fd(), request, &kernel(), MsgFlags::empty()) {
                Ok(sent) if sent == request.len() => return Ok(()),
                Ok(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "netlink request only partly sent",
                    ))
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(errno) => return Err(errno.into()),
            }
        }
    }

    /// Receives the next datagram sent by the kernel into `buffer` and returns its length.
    /// Datagrams from other senders are dropped; one too long for `buffer` is an error.
    pub(super) fn receive_from_kernel(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<usize> {
        let capacity = buffer.len();
        loop {
            let mut iov = [IoSliceMut::new(buffer)];
            // MSG_TRUNC: the length returned is the datagram's, even when
            // it did not fit.
            let received = match recvmsg::<NetlinkAddr>(
                fd.as_fd().as_raw_fd(),
                &mut iov,
                None,
                MsgFlags::MSG_TRUNC,
            ) {
                Ok(received) => received,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(errno) => return Err(errno.into()),
            };
            if received.address.is_some_and(|from| from.pid() != 0) {
                continue; // Not from the kernel.
            }
            if received.bytes > capacity {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "rtnetlink reply of {} bytes truncated to {capacity} bytes",
                        received.bytes
                    ),
                ));
            }
            return Ok(received.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CString;
    use std::process::Command;

    const LO_MTU: u32 = 65536;

    /// The interface index as `if_nametoindex(3)` sees it in the calling thread's namespace; 0 if absent.
    fn if_nametoindex(name: &str) -> u32 {
        let name = CString::new(name).expect("interface name without NUL");
        // SAFETY: `name` is a NUL-terminated string that outlives the call.
        unsafe { libc::if_nametoindex(name.as_ptr()) }
    }

    /// Runs `body` on a thread of its own that first moves into a new, anonymous
    /// network namespace. Only that thread (and the `ip` processes it starts)
    /// lives there, and the namespace disappears when the thread ends.
    fn in_scratch_namespace(body: impl FnOnce() + Send + 'static) {
        let thread = std::thread::spawn(move || {
            // SAFETY: unshare() takes no pointers; CLONE_NEWNET moves only the
            // calling thread, which no other code of the test process runs on.
            let result = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                result,
                0,
                "unshare(CLONE_NEWNET) failed, these tests need root: {}",
                io::Error::last_os_error()
            );
            body();
        });
        if let Err(panic) = thread.join() {
            std::panic::resume_unwind(panic);
        }
    }

    /// Runs `ip ARGS…` (in the calling thread's network namespace) and reports whether it succeeded.
    fn try_ip(args: &str) -> bool {
        let output = Command::new("ip")
            .args(args.split_whitespace())
            .output()
            .expect("the ip command runs");
        if !output.status.success() {
            eprintln!(
                "ip {args}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        output.status.success()
    }

    fn ip(args: &str) {
        assert!(try_ip(args), "ip {args} failed");
    }

    #[test]
    fn route_socket_is_send() {
        fn assert_send<T: Send>() {}
        assert_send::<RouteSocket>();
    }

    #[test]
    fn link_reports_loopback() {
        let socket = RouteSocket::open().expect("open");
        let lo = socket.link("lo").expect("link lo");
        assert_eq!(lo.index, if_nametoindex("lo"));
        assert_ne!(lo.index, 0);
        assert_eq!(lo.mtu, LO_MTU);
        assert!(lo.is_up);
        assert_eq!(lo.mac, Some([0; 6]));
    }

    #[test]
    fn link_of_missing_interface_is_not_found() {
        let socket = RouteSocket::open().expect("open");
        let error = socket.link("does-not-exist0").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::NotFound, "{error}");
        // The socket stays usable after an error reply.
        assert_eq!(socket.link("lo").expect("link lo").mtu, LO_MTU);
    }

    #[test]
    fn link_rejects_impossible_names() {
        let socket = RouteSocket::open().expect("open");
        for name in ["", "sixteen-bytes-xx", "lo\0"] {
            let error = socket.link(name).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
    }

    #[test]
    fn route_to_loopback_address_is_local_via_lo() {
        let socket = RouteSocket::open().expect("open");
        let route = socket.route_to(Ipv4Addr::LOCALHOST).expect("route");
        assert_eq!(route.kind, RouteKind::Local);
        assert_eq!(route.oif, if_nametoindex("lo"));
        assert_eq!(route.gateway, None);
        assert_eq!(route.next_hop(Ipv4Addr::LOCALHOST), Ipv4Addr::LOCALHOST);
    }

    /// Builds the tables in a scratch namespace and reads them back. The veth
    /// peer stays down, so `nl0` has no carrier and cannot put a packet on any
    /// wire; the test only queries tables.
    #[test]
    fn reads_routes_neighbours_and_links_in_a_scratch_namespace() {
        elec_testbed::require_root!();
        in_scratch_namespace(|| {
            ip("link add nl0 address 02:00:00:00:00:01 type veth peer name nl0peer");
            // No IPv6 link-local address, hence no IPv6 duplicate address
            // detection; fails harmlessly on kernels without IPv6.
            try_ip("link set nl0 addrgenmode none");
            ip("link set nl0 mtu 1400");
            let socket = RouteSocket::open().expect("open");

            let nl0 = socket.link("nl0").expect("link nl0");
            let nl0_index = if_nametoindex("nl0");
            assert_eq!(
                nl0,
                Link {
                    index: nl0_index,
                    mtu: 1400,
                    // The IPv6 MTU follows the MTU.
                    mtu6: Some(1400),
                    mac: Some([2, 0, 0, 0, 0, 1]),
                    is_up: false,
                }
            );
            // ... unless it is set apart.
            std::fs::write("/proc/sys/net/ipv6/conf/nl0/mtu", "1280").unwrap();
            assert_eq!(socket.link("nl0").expect("link nl0").mtu6, Some(1280));
            assert_eq!(
                socket.link("lo").expect("link lo").index,
                if_nametoindex("lo")
            );

            ip("addr add 10.99.0.1/24 dev nl0");
            ip("link set nl0 up");
            assert!(socket.link("nl0").expect("link nl0").is_up);
            ip("neigh replace 10.99.0.7 lladdr 02:00:00:00:00:07 dev nl0 nud permanent");
            ip("neigh replace 10.99.0.9 lladdr 02:00:00:00:00:09 dev nl0 nud stale");
            ip("neigh replace 10.99.0.10 dev nl0 nud failed");
            ip("neigh replace 10.99.0.12 lladdr 02:00:00:00:00:0c dev nl0peer nud permanent");
            ip("route add 10.98.0.0/24 via 10.99.0.254 dev nl0");
            ip("route add 10.97.0.0/24 via 10.99.0.254 dev nl0 mtu 1280");

            let on_link = Ipv4Addr::new(10, 99, 0, 7);
            let route = socket.route_to(on_link).expect("route to on-link host");
            assert_eq!(
                route,
                Route {
                    kind: RouteKind::Unicast,
                    oif: nl0_index,
                    gateway: None,
                    prefsrc: Some(Ipv4Addr::new(10, 99, 0, 1).into()),
                    mtu: None,
                }
            );
            assert_eq!(route.next_hop(on_link), on_link);
            let narrow = socket
                .route_to(Ipv4Addr::new(10, 97, 0, 1))
                .expect("route with an MTU");
            assert_eq!(narrow.mtu, Some(1280));

            let remote = Ipv4Addr::new(10, 98, 0, 5);
            let route = socket.route_to(remote).expect("route via gateway");
            assert_eq!(route.kind, RouteKind::Unicast);
            assert_eq!(route.oif, nl0_index);
            assert_eq!(route.gateway, Some(Ipv4Addr::new(10, 99, 0, 254).into()));
            assert_eq!(route.next_hop(remote), Ipv4Addr::new(10, 99, 0, 254));

            let own = socket
                .route_to(Ipv4Addr::new(10, 99, 0, 1))
                .expect("own address");
            assert_eq!(own.kind, RouteKind::Local);
            let broadcast = socket
                .route_to(Ipv4Addr::new(10, 99, 0, 255))
                .expect("broadcast");
            assert_eq!(broadcast.kind, RouteKind::Broadcast);
            let unreachable = socket.route_to(Ipv4Addr::new(192, 0, 2, 1)).unwrap_err();
            assert_eq!(unreachable.raw_os_error(), Some(libc::ENETUNREACH));

            let neighbours = socket.neighbours(nl0_index).expect("neighbours of nl0");
            let find = |addr: [u8; 4]| {
                neighbours
                    .iter()
                    .find(|neighbour| neighbour.addr == Ipv4Addr::from(addr))
                    .copied()
            };
            let permanent = find([10, 99, 0, 7]).expect("permanent entry listed");
            assert_eq!(permanent.mac, Some([2, 0, 0, 0, 0, 7]));
            assert!(permanent.is_usable());
            let stale = find([10, 99, 0, 9]).expect("stale entry listed");
            assert_eq!(stale.mac, Some([2, 0, 0, 0, 0, 9]));
            assert_eq!(stale.state, NUD_STALE);
            assert!(stale.is_usable());
            let failed = find([10, 99, 0, 10]).expect("failed entry listed");
            assert!(!failed.is_usable());
            assert_eq!(
                find([10, 99, 0, 12]),
                None,
                "entry of nl0peer listed for nl0"
            );
            assert_eq!(neighbours.len(), 3);

            let peer = socket
                .neighbours(if_nametoindex("nl0peer"))
                .expect("neighbours of peer");
            assert_eq!(
                peer,
                [Neighbour {
                    addr: Ipv4Addr::new(10, 99, 0, 12).into(),
                    mac: Some([2, 0, 0, 0, 0, 12]),
                    state: NUD_PERMANENT,
                }]
            );
        });
    }

    /// A table too big for one datagram arrives as a multi-part dump.
    #[test]
    fn reads_a_neighbour_dump_spanning_several_datagrams() {
        elec_testbed::require_root!();
        const ENTRIES: u16 = 900;
        in_scratch_namespace(|| {
            ip("link add nl0 type veth peer name nl0peer");
            let mut batch = String::new();
            for n in 0..ENTRIES {
                let [high, low] = n.to_be_bytes();
                batch.push_str(&format!(
                    "neigh replace 10.77.{high}.{low} lladdr 02:00:00:00:{high:02x}:{low:02x} dev nl0 nud permanent\n"
                ));
            }
            let batch_file = std::env::temp_dir().join(format!("nl-batch-{}", std::process::id()));
            std::fs::write(&batch_file, batch).expect("write batch file");
            let added = try_ip(&format!("-batch {}", batch_file.display()));
            let _ = std::fs::remove_file(&batch_file);
            assert!(added, "ip -batch failed");

            let socket = RouteSocket::open().expect("open");
            let neighbours = socket
                .neighbours(if_nametoindex("nl0"))
                .expect("neighbours");
            assert_eq!(neighbours.len(), usize::from(ENTRIES));
            for n in 0..ENTRIES {
                let [high, low] = n.to_be_bytes();
                let expected = Neighbour {
                    addr: Ipv4Addr::new(10, 77, high, low).into(),
                    mac: Some([2, 0, 0, 0, high, low]),
                    state: NUD_PERMANENT,
                };
                assert!(neighbours.contains(&expected), "{expected:?} missing");
            }
            // The socket is ready for the next request.
            assert_eq!(
                socket.link("nl0").expect("link").index,
                if_nametoindex("nl0")
            );
        });
    }

    #[test]
    fn usable_neighbour_states() {
        let neighbour = |state, mac| Neighbour {
            addr: Ipv4Addr::new(10, 0, 0, 1).into(),
            mac,
            state,
        };
        let mac = Some([2, 0, 0, 0, 0, 1]);
        for state in [
            NUD_REACHABLE,
            NUD_STALE,
            NUD_DELAY,
            NUD_PROBE,
            NUD_PERMANENT,
            NUD_NOARP,
        ] {
            assert!(neighbour(state, mac).is_usable(), "state {state:#x}");
            assert!(
                !neighbour(state, None).is_usable(),
                "state {state:#x} without MAC"
            );
        }
        for state in [
            0x00, /* NONE */
            0x01, /* INCOMPLETE */
            0x20, /* FAILED */
        ] {
            assert!(!neighbour(state, mac).is_usable(), "state {state:#x}");
        }
    }

    // Hand-made replies.

    fn attribute(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut bytes = u16::try_from(RTA_HEADER_LEN + payload.len())
            .unwrap()
            .to_ne_bytes()
            .to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(payload);
        pad_to_alignment(&mut bytes);
        bytes
    }

    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(NLMSG_HEADER_LEN + payload.len()).unwrap();
        let mut bytes = len.to_ne_bytes().to_vec();
        bytes.extend_from_slice(&kind.to_ne_bytes());
        bytes.extend_from_slice(&flags.to_ne_bytes());
        bytes.extend_from_slice(&seq.to_ne_bytes());
        bytes.extend_from_slice(&4242u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        pad_to_alignment(&mut bytes);
        bytes
    }

    fn error_message(seq: u32, error: i32) -> Vec<u8> {
        let mut payload = error.to_ne_bytes().to_vec();
        payload.extend_from_slice(&[0; NLMSG_HEADER_LEN]);
        message(NLMSG_ERROR, 0, seq, &payload)
    }

    fn route_payload(rtm_type: u8, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = vec![AF_INET, 32, 0, 0, 254, 0, 0, rtm_type, 0, 0, 0, 0];
        for attribute in attributes {
            payload.extend_from_slice(attribute);
        }
        payload
    }

    fn neighbour_payload(ifindex: u32, state: u16, attributes: &[Vec<u8>]) -> Vec<u8> {
        let mut payload = vec![AF_INET, 0, 0, 0];
        payload.extend_from_slice(&ifindex.to_ne_bytes());
        payload.extend_from_slice(&state.to_ne_bytes());
        payload.extend_from_slice(&[0, 1]);
        for attribute in attributes {
            payload.extend_from_slice(attribute);
        }
        payload
    }

    /// Feeds `datagrams` to a reader and returns the reply payloads it accepted and its outcome.
    fn read_replies(
        seq: u32,
        is_dump: bool,
        datagrams: &[Vec<u8>],
    ) -> (Vec<Vec<u8>>, Option<io::Result<()>>) {
        let mut reader = ReplyReader::new(seq, RTM_NEWNEIGH, is_dump);
        let mut replies = Vec::new();
        for datagram in datagrams {
            let progress = reader.feed(datagram, &mut |payload| {
                replies.push(payload.to_vec());
                Ok(())
            });
            if progress == Progress::Finished {
                return (replies, Some(reader.finish()));
            }
        }
        (replies, None)
    }

    #[test]
    fn encodes_requests_with_aligned_attributes() {
        let request = encode_request(RTM_GETLINK, NLM_F_REQUEST, 7, &[1; 16], &[(3, b"lo\0")])
            .expect("encode");
        let mut expected = 40u32.to_ne_bytes().to_vec();
        expected.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
        expected.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        expected.extend_from_slice(&7u32.to_ne_bytes());
        expected.extend_from_slice(&0u32.to_ne_bytes());
        expected.extend_from_slice(&[1; 16]);
        expected.extend_from_slice(&7u16.to_ne_bytes());
        expected.extend_from_slice(&3u16.to_ne_bytes());
        expected.extend_from_slice(b"lo\0\0");
        assert_eq!(request, expected);
    }

    #[test]
    fn parses_a_route_reply() {
        let payload = route_payload(
            RTN_UNICAST,
            &[
                attribute(RTA_DST, &[10, 98, 0, 5]),
                attribute(RTA_OIF, &3u32.to_ne_bytes()),
                attribute(RTA_GATEWAY, &[10, 99, 0, 254]),
                attribute(RTA_PREFSRC, &[10, 99, 0, 1]),
                attribute(99, &[1, 2, 3]), // unknown, unaligned length
                attribute(
                    RTA_METRICS,
                    &[
                        attribute(7, &5u32.to_ne_bytes()), // RTAX_HOPLIMIT, not ours
                        attribute(RTAX_MTU, &1280u32.to_ne_bytes()),
                    ]
                    .concat(),
                ),
            ],
        );
        assert_eq!(
            parse_route(&payload).expect("route"),
            Route {
                kind: RouteKind::Unicast,
                oif: 3,
                gateway: Some(Ipv4Addr::new(10, 99, 0, 254).into()),
                prefsrc: Some(Ipv4Addr::new(10, 99, 0, 1).into()),
                mtu: Some(1280),
            }
        );
        assert_eq!(
            parse_route(&route_payload(42, &[])).expect("route").kind,
            RouteKind::Other(42)
        );
    }

    #[test]
    fn malformed_replies_are_invalid_data() {
        let invalid = |result: io::Result<Route>| {
            assert_eq!(result.unwrap_err().kind(), io::ErrorKind::InvalidData);
        };
        // Truncated attribute: rta_len says 8, only 6 bytes follow.
        let mut truncated = route_payload(RTN_UNICAST, &[attribute(RTA_OIF, &3u32.to_ne_bytes())]);
        truncated.truncate(truncated.len() - 2);
        invalid(parse_route(&truncated));
        // rta_len shorter than the attribute header.
        let mut too_short = route_payload(RTN_UNICAST, &[]);
        too_short.extend_from_slice(&[2, 0, 1, 0]);
        invalid(parse_route(&too_short));
        // Attribute of the wrong size.
        invalid(parse_route(&route_payload(
            RTN_UNICAST,
            &[attribute(RTA_OIF, &[1, 2])],
        )));
        // Fixed header cut short.
        invalid(parse_route(&[AF_INET, 32, 0]));
        invalid(parse_route(&[]));
        assert_eq!(
            parse_link(&[0; 8]).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            parse_link(&[0; IFINFOMSG_LEN]).unwrap_err().kind(),
            io::ErrorKind::InvalidData,
            "link without IFLA_MTU"
        );
        assert_eq!(
            parse_neighbour(&[AF_INET, 0, 0, 0, 1, 0], 1)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(
            parse_neighbour(&neighbour_payload(1, NUD_STALE, &[]), 1)
                .unwrap_err()
                .kind(),
            io::ErrorKind::InvalidData,
            "neighbour without NDA_DST"
        );
    }

    #[test]
    fn ipv6_next_hop_is_unsupported() {
        let payload = route_payload(RTN_UNICAST, &[attribute(RTA_VIA, &[0; 18])]);
        assert_eq!(
            parse_route(&payload).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
    }

    #[test]
    fn parses_neighbours_of_the_wanted_interface_only() {
        let payload = neighbour_payload(
            5,
            NUD_REACHABLE,
            &[
                attribute(NDA_DST, &[10, 0, 0, 2]),
                attribute(NDA_LLADDR, &[2, 0, 0, 0, 0, 2]),
            ],
        );
        assert_eq!(
            parse_neighbour(&payload, 5).expect("parse"),
            Some(Neighbour {
                addr: Ipv4Addr::new(10, 0, 0, 2).into(),
                mac: Some([2, 0, 0, 0, 0, 2]),
                state: NUD_REACHABLE,
            })
        );
        assert_eq!(parse_neighbour(&payload, 6).expect("parse"), None);
        // A link-layer address that is not 6 bytes long is no MAC.
        let odd = neighbour_payload(
            5,
            NUD_REACHABLE,
            &[
                attribute(NDA_DST, &[10, 0, 0, 2]),
                attribute(NDA_LLADDR, &[]),
            ],
        );
        let neighbour = parse_neighbour(&odd, 5).expect("parse").expect("listed");
        assert_eq!(neighbour.mac, None);
        assert!(!neighbour.is_usable());
    }

    #[test]
    fn message_framing_errors_do_not_panic() {
        let framing_error = |datagram: &[u8]| {
            let error = Messages::new(datagram)
                .find_map(Result::err)
                .expect("framing error");
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        };
        // nlmsg_len larger than the datagram.
        let mut too_long = message(RTM_NEWNEIGH, 0, 1, &[0; 8]);
        too_long.truncate(20);
        framing_error(&too_long);
        // nlmsg_len smaller than the header.
        let mut too_short = message(RTM_NEWNEIGH, 0, 1, &[]);
        too_short[..4].copy_from_slice(&8u32.to_ne_bytes());
        framing_error(&too_short);
        // Fewer bytes than a header after a valid message.
        let mut trailing = message(RTM_NEWNEIGH, 0, 1, &[]);
        trailing.extend_from_slice(&[1, 2, 3]);
        framing_error(&trailing);

        let (_, outcome) = read_replies(1, false, &[too_long]);
        let error = outcome.expect("finished").unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn error_replies_become_os_errors() {
        let (replies, outcome) = read_replies(9, false, &[error_message(9, -libc::ENODEV)]);
        assert!(replies.is_empty());
        let error = outcome.expect("finished").unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ENODEV));

        for bad_code in [i32::MIN, 5] {
            let (_, outcome) = read_replies(9, false, &[error_message(9, bad_code)]);
            let error = outcome.expect("finished").unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "code {bad_code}");
        }
        let short = message(NLMSG_ERROR, 0, 9, &(-1i32).to_ne_bytes());
        let (_, outcome) = read_replies(9, false, &[short]);
        assert_eq!(
            outcome.expect("finished").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );

        // An ACK ends the exchange without error (and without reply).
        let (replies, outcome) = read_replies(9, false, &[error_message(9, 0)]);
        assert!(replies.is_empty());
        assert!(outcome.expect("finished").is_ok());

        // A dump that failed in the kernel.
        let done = message(NLMSG_DONE, 0, 9, &(-libc::EBUSY).to_ne_bytes());
        let (_, outcome) = read_replies(9, true, &[done]);
        assert_eq!(
            outcome.expect("finished").unwrap_err().raw_os_error(),
            Some(libc::EBUSY)
        );
    }

    #[test]
    fn dump_collects_our_parts_across_datagrams() {
        let seq = 3;
        // Several messages per datagram, odd payload lengths, a left-over of
        // an earlier request (seq 2) and a NOOP in between.
        let first: Vec<u8> = [
            message(RTM_NEWNEIGH, 0x2, 2, b"stale"),
            message(RTM_NEWNEIGH, 0x2, seq, b"one"),
            message(NLMSG_NOOP, 0, seq, &[]),
            message(RTM_NEWNEIGH, 0x2, seq, b"two!!"),
        ]
        .concat();
        let second: Vec<u8> = [
            message(RTM_NEWNEIGH, 0x2, seq, b"three"),
            message(NLMSG_DONE, 0x2, seq, &0i32.to_ne_bytes()),
        ]
        .concat();
        let (replies, outcome) = read_replies(seq, true, &[first, second]);
        assert!(outcome.expect("finished").is_ok());
        assert_eq!(
            replies,
            [b"one".to_vec(), b"two!!".to_vec(), b"three".to_vec()]
        );
    }

    #[test]
    fn failed_dump_is_read_to_its_end() {
        let seq = 4;
        let datagrams = [
            message(RTM_NEWNEIGH, 0x2, seq, b"bad"),
            message(RTM_NEWNEIGH, 0x2, seq, b"more"),
            message(NLMSG_DONE, 0x2, seq, &0i32.to_ne_bytes()),
        ];
        let mut reader = ReplyReader::new(seq, RTM_NEWNEIGH, true);
        let mut calls = 0;
        let mut progress = Vec::new();
        for datagram in &datagrams {
            progress.push(reader.feed(datagram, &mut |_| {
                calls += 1;
                Err(malformed("bad entry"))
            }));
        }
        assert_eq!(
            progress,
            [Progress::NeedMore, Progress::NeedMore, Progress::Finished]
        );
        assert_eq!(calls, 1, "no callbacks after the first error");
        assert_eq!(
            reader.finish().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn unexpected_message_type_is_invalid_data() {
        let (_, outcome) = read_replies(1, false, &[message(RTM_NEWROUTE, 0, 1, &[])]);
        assert_eq!(
            outcome.expect("finished").unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
    }

    #[test]
    fn interrupted_dump_is_reported() {
        let datagram: Vec<u8> = [
            message(RTM_NEWNEIGH, 0x2 | NLM_F_DUMP_INTR, 1, b"x"),
            message(NLMSG_DONE, 0x2 | NLM_F_DUMP_INTR, 1, &0i32.to_ne_bytes()),
        ]
        .concat();
        let (_, outcome) = read_replies(1, true, &[datagram]);
        assert_eq!(
            outcome.expect("finished").unwrap_err().kind(),
            io::ErrorKind::Interrupted
        );
    }
}
