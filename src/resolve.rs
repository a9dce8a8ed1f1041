//! Which destinations the kernel fan-out can serve, and with which next-hop
//! MAC, read from the kernel's own routing and neighbour tables.
//!
//! A destination is fanned out only when its route leaves through the
//! interface the program is attached to and the next hop's neighbour entry
//! holds a MAC address. Everything else (local addresses, other interfaces,
//! unresolved neighbours) takes the ordinary path, where the kernel resolves
//! the neighbour itself, so a later broadcast finds it resolved.

use std::collections::HashMap;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::netlink::{RouteKind, RouteSocket};

/// How long routes and neighbour entries are trusted before being read again.
pub(crate) const TABLES_TTL: Duration = Duration::from_secs(1);
/// How soon an unresolved neighbour is looked up again.
pub(crate) const UNRESOLVED_RETRY: Duration = Duration::from_millis(20);

/// How one destination is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathTo {
    /// A clone on the attached interface, with this destination MAC.
    FanOut([u8; 6]),
    /// The route leaves through the interface but the next hop's MAC is not
    /// known yet: an ordinary send, which makes the kernel resolve it.
    Unresolved,
    /// An ordinary send through the socket.
    Ordinary,
}

pub(crate) struct Resolver {
    netlink: RouteSocket,
    interface: String,
    ifindex: u32,
    mtu: Option<u32>,
    /// A destination was unresolved since the tables were read.
    unresolved: bool,
    /// Next hop (or None: not through our interface) per destination address.
    routes: HashMap<Ipv4Addr, Option<Ipv4Addr>>,
    neighbours: HashMap<Ipv4Addr, [u8; 6]>,
    /// When the routes (and the MTU) were last read; they keep TABLES_TTL.
    routes_read_at: Option<Instant>,
    /// When the neighbour table was last read; retried sooner while a
    /// destination is unresolved.
    read_at: Option<Instant>,
}

impl Resolver {
    pub(crate) fn new(netlink: RouteSocket, interface: &str, ifindex: u32) -> Resolver {
        Resolver {
            netlink,
            interface: interface.to_string(),
            ifindex,
            mtu: None,
            unresolved: false,
            routes: HashMap::new(),
            neighbours: HashMap::new(),
            routes_read_at: None,
            read_at: None,
        }
    }

    /// Reads the neighbour table again if it is older than `max_age`, and
    /// forgets routes (and rereads the MTU) once they are older than
    /// TABLES_TTL: an unresolved neighbour is no reason to look up every
    /// route again.
    pub(crate) fn refresh(&mut self, now: Instant, max_age: Duration) -> io::Result<()> {
        let older = |at: Option<Instant>, age| at.is_none_or(|at| now.duration_since(at) >= age);
        if older(self.routes_read_at, TABLES_TTL) {
            self.routes.clear();
            self.mtu = Some(self.netlink.link(&self.interface)?.mtu);
            self.routes_read_at = Some(now);
        }
        if !older(self.read_at, max_age) {
            return Ok(());
        }
        self.unresolved = false;
        self.neighbours = self
            .netlink
            .neighbours(self.ifindex)?
            .into_iter()
            .filter(|n| n.is_usable())
            .filter_map(|n| Some((n.addr, n.mac?)))
            .collect();
        self.read_at = Some(now);
        Ok(())
    }

    /// The path to `dst` under the tables as last read.
    pub(crate) fn path_to(&mut self, dst: Ipv4Addr) -> io::Result<PathTo> {
        let next_hop = match self.routes.get(&dst) {
            Some(hop) => *hop,
            None => {
                let hop = match self.netlink.route_to(dst) {
                    Ok(route) if route.kind == RouteKind::Unicast && route.oif == self.ifindex => {
                        Some(route.next_hop(dst))
                    }
                    Ok(_) => None,
                    // No route: the ordinary send reports it to the caller.
                    Err(err) if is_unroutable(&err) => None,
                    Err(err) => return Err(err),
                };
                self.routes.insert(dst, hop);
                hop
            }
        };
        Ok(match next_hop {
            None => PathTo::Ordinary,
            Some(hop) => match self.neighbours.get(&hop) {
                Some(mac) => PathTo::FanOut(*mac),
                None => {
                    self.unresolved = true;
                    PathTo::Unresolved
                }
            },
        })
    }

    /// Whether a destination was unresolved when the tables were last used.
    pub(crate) fn has_unresolved(&self) -> bool {
        self.unresolved
    }

    /// The interface's MTU as last read.
    pub(crate) fn mtu(&self) -> Option<u32> {
        self.mtu
    }

    /// Until when paths computed now may be reused.
    pub(crate) fn valid_until(&self) -> Instant {
        let age = if self.unresolved {
            UNRESOLVED_RETRY
        } else {
            TABLES_TTL
        };
        self.read_at.unwrap_or_else(Instant::now) + age
    }
}

fn is_unroutable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::ENETUNREACH | libc::EHOSTUNREACH | libc::EINVAL | libc::EACCES | libc::EPERM)
    )
}
