//! Which destinations the kernel fan-out can serve, and with which next-hop
//! MAC, read from the kernel's own routing and neighbour tables and kept
//! current by the kernel's change notifications (see [`super::watch`]).
//!
//! A destination is fanned out only when its route leaves through the
//! interface the program is attached to and the next hop's neighbour entry
//! holds a MAC address. Local destinations, unresolved neighbours and
//! destinations the kernel cannot route are sent from user space, where the
//! kernel resolves the neighbour (so a later broadcast finds it resolved) or
//! reports the error. A destination routed through another interface is
//! refused: a broadcaster sends through its own interface only.
//!
//! Every answer is derived from tables that a notification invalidates at
//! once: the [`Resolver::generation`] number changes whenever a notification
//! could change an answer, and a plan made under an older generation is not
//! used again. The broadcast hot path only compares that number.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use super::netlink::{Change, Link, RouteKind, RouteSocket};

/// How one destination is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PathTo {
    /// A clone on the attached interface, with this destination MAC.
    FanOut([u8; 6]),
    /// A send from user space through the socket: a local destination, a
    /// next hop whose MAC is not known yet (the send makes the kernel
    /// resolve it), or one the kernel will refuse (no route, a broadcast
    /// address, ...), which the send reports.
    UserSpace,
    /// The route leaves through the interface with this index, not ours.
    Elsewhere(u32),
}

/// What a route lookup said about one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    to: RouteTo,
    /// The route's own MTU, if it has one below the interface's.
    mtu: Option<u32>,
    /// The source address the kernel picks for it on a socket bound to no
    /// address (`RTA_PREFSRC`).
    source: Option<IpAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RouteTo {
    /// Out of our interface, to this next hop.
    Here { next_hop: IpAddr },
    /// Out of another interface.
    Elsewhere(u32),
    /// Anything the kernel handles itself: local, unreachable, broadcast.
    Kernel,
}

/// The paths to a list of destinations, valid under one generation.
pub(crate) struct Paths {
    pub(crate) generation: u64,
    pub(crate) to: Vec<PathTo>,
    /// Each destination's route's own MTU, where it has one (set on the
    /// route, or learned from the path): larger datagrams are refused.
    pub(crate) mtus: Vec<Option<u32>>,
    /// The source address the kernel picks for each destination on a
    /// socket bound to no address.
    pub(crate) sources: Vec<Option<IpAddr>>,
}

/// The routing and neighbour tables of one interface, as far as broadcasts
/// to it need them, and the generation number that tells plans apart.
pub(crate) struct Resolver {
    ifindex: u32,
    /// Bumped whenever a change could alter an answer of [`Resolver::paths`].
    generation: AtomicU64,
    /// False once the notifications can no longer be read: every plan is
    /// then made afresh.
    watched: AtomicBool,
    /// The interface's MTU, as the last notification or read said.
    mtu: AtomicU32,
    /// The interface's IPv6 MTU, where it has one below its MTU (0: none).
    mtu6: AtomicU32,
    /// Times notifications were lost (the socket's buffer overflowed).
    overflows: AtomicU64,
    /// [`super::watch::forks`] when made: a forked child has no watching
    /// thread, so it makes every plan afresh.
    forks: u64,
    tables: Mutex<Tables>,
}

struct Tables {
    netlink: RouteSocket,
    /// Neighbours (IPv4 and IPv6) of our interface that hold a usable MAC;
    /// `None` until read (again).
    neighbours: Option<HashMap<IpAddr, [u8; 6]>>,
    /// Route lookups made since the last change that could alter them, by
    /// destination address and scope (see [`Target`]).
    routes: HashMap<Target, Route>,
}

/// A destination as a route lookup sees it: its address, and for an IPv6
/// link-local address the index of the interface it is on (its scope id;
/// 0 for every other address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Target {
    pub(crate) ip: IpAddr,
    pub(crate) scope: u32,
}

impl Target {
    /// The interface a route lookup must leave through: a link-local
    /// address's scope, else none.
    fn oif(self) -> Option<u32> {
        (self.scope != 0).then_some(self.scope)
    }

    /// The target of destination `to` (an IPv4-mapped IPv6 address is
    /// taken for the IPv4 address it maps).
    pub(crate) fn of(to: &SocketAddr) -> Target {
        match to {
            SocketAddr::V4(v4) => Target {
                ip: IpAddr::V4(*v4.ip()),
                scope: 0,
            },
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => Target {
                    ip: IpAddr::V4(v4),
                    scope: 0,
                },
                None => Target {
                    ip: IpAddr::V6(*v6.ip()),
                    scope: if v6.ip().is_unicast_link_local() {
                        v6.scope_id()
                    } else {
                        0
                    },
                },
            },
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every update below is completed or not begun: a panic elsewhere while
    // the lock was held leaves no broken invariant.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Resolver {
    pub(crate) fn new(netlink: RouteSocket, ifindex: u32, mtu: u32) -> Resolver {
        Resolver {
            ifindex,
            generation: AtomicU64::new(1),
            watched: AtomicBool::new(true),
            mtu: AtomicU32::new(mtu),
            mtu6: AtomicU32::new(0),
            overflows: AtomicU64::new(0),
            forks: super::watch::forks(),
            tables: Mutex::new(Tables {
                netlink,
                neighbours: None,
                routes: HashMap::new(),
            }),
        }
    }

    /// Whether a plan made under `generation` is still good.
    pub(crate) fn is_current(&self, generation: u64) -> bool {
        self.generation.load(Ordering::Acquire) == generation
            && self.watched.load(Ordering::Relaxed)
            && self.forks == super::watch::forks()
    }

    /// The interface's MTU as last reported.
    pub(crate) fn mtu(&self) -> u32 {
        self.mtu.load(Ordering::Relaxed)
    }

    /// The interface's MTU for IPv6 datagrams: its IPv6 MTU where that is
    /// lower (the `net.ipv6.conf.IF.mtu` sysctl, or what a router
    /// advertised), else its MTU.
    pub(crate) fn mtu6(&self) -> u32 {
        let mtu = self.mtu();
        match self.mtu6.load(Ordering::Relaxed) {
            0 => mtu,
            mtu6 => mtu6.min(mtu),
        }
    }

    /// Keeps what `link` (our interface, read afresh) says of its MTUs.
    pub(crate) fn keep_mtus(&self, link: &Link) {
        self.mtu.store(link.mtu, Ordering::Relaxed);
        self.mtu6.store(link.mtu6.unwrap_or(0), Ordering::Relaxed);
    }

    /// Times notifications were lost and the tables read afresh.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn overflows(&self) -> u64 {
        self.overflows.load(Ordering::Relaxed)
    }

    /// The path to each of `destinations`, and the generation under which
    /// these answers hold.
    pub(crate) fn paths(&self, destinations: &[Target]) -> io::Result<Paths> {
        let mut tables = lock(&self.tables);
        // Read under the lock: changes are applied and counted under it too,
        // so these answers reflect at least every change counted so far.
        let generation = self.generation.load(Ordering::Acquire);
        if tables.neighbours.is_none() {
            let read = tables.netlink.neighbours(self.ifindex)?;
            tables.neighbours = Some(
                read.into_iter()
                    .filter(|n| n.is_usable())
                    .filter_map(|n| Some((n.addr, n.mac?)))
                    .collect(),
            );
        }
        let mut paths = Paths {
            generation,
            to: Vec::with_capacity(destinations.len()),
            mtus: Vec::with_capacity(destinations.len()),
            sources: Vec::with_capacity(destinations.len()),
        };
        for &dst in destinations {
            let route = match tables.routes.get(&dst) {
                Some(route) => *route,
                None => {
                    let route = self.look_up(&tables.netlink, dst)?;
                    tables.routes.insert(dst, route);
                    route
                }
            };
            paths.mtus.push(route.mtu);
            paths.sources.push(route.source);
            paths.to.push(match route.to {
                RouteTo::Kernel => PathTo::UserSpace,
                RouteTo::Elsewhere(ifindex) => PathTo::Elsewhere(ifindex),
                RouteTo::Here { next_hop } => {
                    match tables.neighbours.as_ref().and_then(|n| n.get(&next_hop)) {
                        Some(mac) => PathTo::FanOut(*mac),
                        None => PathTo::UserSpace,
                    }
                }
            });
        }
        Ok(paths)
    }

    fn look_up(&self, netlink: &RouteSocket, dst: Target) -> io::Result<Route> {
        let route = match netlink.route_on(dst.ip, dst.oif()) {
            Ok(route) => route,
            // No route: the send reports it to the caller.
            Err(err) if is_unroutable(&err) => {
                return Ok(Route {
                    to: RouteTo::Kernel,
                    mtu: None,
                    source: None,
                })
            }
            Err(err) => return Err(err),
        };
        let to = match route.kind {
            RouteKind::Unicast if route.oif == self.ifindex => RouteTo::Here {
                next_hop: route.next_hop(dst.ip),
            },
            RouteKind::Unicast if route.oif != 0 => RouteTo::Elsewhere(route.oif),
            _ => RouteTo::Kernel,
        };
        Ok(Route {
            to,
            mtu: route.mtu,
            source: route.prefsrc,
        })
    }

    /// The MTU of the path to `dst` now: its route's, read afresh, or the
    /// interface's (also read afresh). After a send was refused as too
    /// large: every route lookup is dropped too, since the kernel may have
    /// learned a smaller MTU for a path without saying so.
    pub(crate) fn path_mtu(&self, dst: Target) -> io::Result<u32> {
        self.reread_mtu()?;
        let interface = match dst.ip {
            IpAddr::V4(_) => self.mtu(),
            IpAddr::V6(_) => self.mtu6(),
        };
        let mut tables = lock(&self.tables);
        tables.routes.clear();
        self.generation.fetch_add(1, Ordering::Release);
        let route = tables
            .netlink
            .route_on(dst.ip, dst.oif())
            .ok()
            .and_then(|r| r.mtu);
        Ok(route.map_or(interface, |mtu| mtu.min(interface)))
    }

    /// Reads the interface's MTUs now (after a send said the payload is
    /// too large, in case a notification is still on its way; a change of
    /// the IPv6 MTU alone sends none). Returns the MTU.
    pub(crate) fn reread_mtu(&self) -> io::Result<u32> {
        let tables = lock(&self.tables);
        let link = tables.netlink.link_by_index(self.ifindex)?;
        self.keep_mtus(&link);
        Ok(link.mtu)
    }

    /// The name of interface `ifindex`, for messages.
    pub(crate) fn interface_name(&self, ifindex: u32) -> String {
        lock(&self.tables)
            .netlink
            .link_name(ifindex)
            .unwrap_or_else(|_| format!("interface {ifindex}"))
    }

    /// Applies what one datagram of notifications reported, and moves to a
    /// new generation if any answer may have changed.
    pub(crate) fn apply(&self, changes: &[Change]) {
        let mut tables = lock(&self.tables);
        let mut changed = false;
        for change in changes {
            changed |= self.apply_one(&mut tables, change);
        }
        if changed {
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Whether `change` may alter an answer given under the tables as they were.
    fn apply_one(&self, tables: &mut Tables, change: &Change) -> bool {
        match *change {
            Change::Neighbour {
                ifindex,
                neighbour,
                removed,
            } => {
                if ifindex != self.ifindex {
                    return false;
                }
                // Not read yet: the read will see this change.
                let Some(map) = tables.neighbours.as_mut() else {
                    return false;
                };
                let now = match neighbour.mac {
                    Some(mac) if !removed && neighbour.is_usable() => Some(mac),
                    _ => None,
                };
                let before = match now {
                    Some(mac) => map.insert(neighbour.addr, mac),
                    None => map.remove(&neighbour.addr),
                };
                before != now
            }
            Change::Route { dst, len } => {
                // Only lookups of addresses inside the changed prefix can
                // have another answer now.
                let before = tables.routes.len();
                tables
                    .routes
                    .retain(|target, _| !in_prefix(target.ip, dst, len));
                tables.routes.len() != before
            }
            Change::Address { .. } | Change::Rules => {
                tables.routes.clear();
                true
            }
            Change::Link { ifindex, mtu } => {
                if ifindex == self.ifindex {
                    if let Some(mtu) = mtu {
                        self.mtu.store(mtu, Ordering::Relaxed);
                    }
                    // The notification does not say the IPv6 MTU, which
                    // follows the MTU: read it.
                    if let Ok(link) = tables.netlink.link_by_index(self.ifindex) {
                        self.mtu6.store(link.mtu6.unwrap_or(0), Ordering::Relaxed);
                    }
                    // Going down flushes the neighbours: read them afresh.
                    tables.neighbours = None;
                }
                tables.routes.clear();
                true
            }
        }
    }

    /// Notifications were lost: forget everything and read the tables
    /// afresh before the next plan.
    pub(crate) fn changes_lost(&self) {
        let mut tables = lock(&self.tables);
        self.overflows.fetch_add(1, Ordering::Relaxed);
        tables.neighbours = None;
        tables.routes.clear();
        match tables.netlink.link_by_index(self.ifindex) {
            Ok(link) => self.keep_mtus(&link),
            Err(err) => log::warn!("elec-broadcast: re-reading the interface failed: {err}"),
        }
        self.generation.fetch_add(1, Ordering::Release);
    }

    /// The notifications cannot be read any more: plan every call afresh.
    pub(crate) fn unwatched(&self) {
        self.watched.store(false, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// Whether `addr` lies inside `prefix/len` (never for another family).
fn in_prefix(addr: IpAddr, prefix: IpAddr, len: u8) -> bool {
    match (addr, prefix) {
        (IpAddr::V4(addr), IpAddr::V4(prefix)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            u32::from(addr) & mask == u32::from(prefix) & mask
        }
        (IpAddr::V6(addr), IpAddr::V6(prefix)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            u128::from(addr) & mask == u128::from(prefix) & mask
        }
        _ => false,
    }
}

fn is_unroutable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::EINVAL
                | libc::EACCES
                | libc::EPERM
                | libc::ENODEV
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::netlink::Neighbour;
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV6};

    const IF: u32 = 7;
    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 0xa];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 0xb];
    const REACHABLE: u16 = 0x02;
    const STALE: u16 = 0x04;
    const FAILED: u16 = 0x20;

    /// A resolver whose tables hold `neighbours` and `routes`, as if read.
    fn resolver(neighbours: &[(Ipv4Addr, [u8; 6])], routes: &[(Ipv4Addr, Route)]) -> Resolver {
        let resolver = Resolver::new(RouteSocket::open().unwrap(), IF, 1500);
        {
            let mut tables = lock(&resolver.tables);
            tables.neighbours = Some(neighbours.iter().map(|&(a, m)| (a.into(), m)).collect());
            tables.routes = routes.iter().map(|&(a, r)| (target(a), r)).collect();
        }
        resolver
    }

    fn target(addr: impl Into<IpAddr>) -> Target {
        Target {
            ip: addr.into(),
            scope: 0,
        }
    }

    fn neighbour(addr: Ipv4Addr, mac: [u8; 6], state: u16, removed: bool) -> Change {
        Change::Neighbour {
            ifindex: IF,
            neighbour: Neighbour {
                addr: addr.into(),
                mac: Some(mac),
                state,
            },
            removed,
        }
    }

    fn generation(r: &Resolver) -> u64 {
        r.generation.load(Ordering::Relaxed)
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[test]
    fn a_new_mac_or_a_lost_neighbour_moves_the_generation() {
        let r = resolver(&[(A, MAC_A)], &[]);
        let g = generation(&r);
        r.apply(&[neighbour(A, MAC_B, REACHABLE, false)]);
        assert_eq!(generation(&r), g + 1);
        r.apply(&[neighbour(A, MAC_B, FAILED, false)]);
        assert_eq!(generation(&r), g + 2);
        r.apply(&[neighbour(A, MAC_B, STALE, false)]);
        assert_eq!(generation(&r), g + 3);
        r.apply(&[neighbour(A, MAC_B, STALE, true)]);
        assert_eq!(generation(&r), g + 4);
        assert!(lock(&r.tables).neighbours.as_ref().unwrap().is_empty());
    }

    #[test]
    fn a_state_change_with_the_same_mac_changes_nothing() {
        let r = resolver(&[(A, MAC_A)], &[]);
        let g = generation(&r);
        r.apply(&[neighbour(A, MAC_A, STALE, false)]);
        r.apply(&[neighbour(A, MAC_A, REACHABLE, false)]);
        // Another interface's neighbours are not ours.
        r.apply(&[Change::Neighbour {
            ifindex: IF + 1,
            neighbour: Neighbour {
                addr: A.into(),
                mac: Some(MAC_B),
                state: REACHABLE,
            },
            removed: false,
        }]);
        assert_eq!(generation(&r), g);
    }

    #[test]
    fn a_route_change_drops_the_lookups_inside_its_prefix_only() {
        let inside = Ipv4Addr::new(10, 1, 2, 3);
        let outside = Ipv4Addr::new(10, 2, 0, 1);
        let here = Route {
            to: RouteTo::Here { next_hop: A.into() },
            mtu: None,
            source: None,
        };
        let r = resolver(&[], &[(inside, here), (outside, here)]);
        let g = generation(&r);
        r.apply(&[Change::Route {
            dst: Ipv4Addr::new(10, 3, 0, 0).into(),
            len: 16,
        }]);
        assert_eq!(generation(&r), g, "no cached lookup inside 10.3/16");
        r.apply(&[Change::Route {
            dst: Ipv4Addr::new(10, 1, 0, 0).into(),
            len: 16,
        }]);
        assert_eq!(generation(&r), g + 1);
        let routes = &lock(&r.tables).routes;
        assert!(!routes.contains_key(&target(inside)) && routes.contains_key(&target(outside)));
    }

    #[test]
    fn a_default_route_change_drops_every_lookup() {
        let here = Route {
            to: RouteTo::Here { next_hop: A.into() },
            mtu: None,
            source: None,
        };
        let r = resolver(&[], &[(A, here), (Ipv4Addr::new(192, 0, 2, 1), here)]);
        r.apply(&[Change::Route {
            dst: Ipv4Addr::UNSPECIFIED.into(),
            len: 0,
        }]);
        assert!(lock(&r.tables).routes.is_empty());
    }

    #[test]
    fn link_address_and_rule_changes_drop_every_lookup() {
        for change in [
            Change::Address { ifindex: 3 },
            Change::Rules,
            Change::Link {
                ifindex: IF + 1,
                mtu: Some(9000),
            },
        ] {
            let kernel = Route {
                to: RouteTo::Kernel,
                mtu: None,
                source: None,
            };
            let r = resolver(&[], &[(A, kernel)]);
            let g = generation(&r);
            r.apply(std::slice::from_ref(&change));
            assert_eq!(generation(&r), g + 1, "{change:?}");
            assert!(lock(&r.tables).routes.is_empty(), "{change:?}");
            assert_eq!(r.mtu(), 1500, "{change:?}: not our interface's MTU");
        }
    }

    #[test]
    fn our_link_change_sets_the_mtu_and_rereads_the_neighbours() {
        let r = resolver(&[(A, MAC_A)], &[]);
        r.apply(&[Change::Link {
            ifindex: IF,
            mtu: Some(1280),
        }]);
        assert_eq!(r.mtu(), 1280);
        assert!(lock(&r.tables).neighbours.is_none());
    }

    #[test]
    fn plans_are_current_until_a_change_or_until_unwatched() {
        let r = resolver(&[(A, MAC_A)], &[]);
        let g = generation(&r);
        assert!(r.is_current(g));
        r.apply(&[neighbour(A, MAC_B, REACHABLE, false)]);
        assert!(!r.is_current(g));
        let g = generation(&r);
        // In a forked child, whose watching thread did not come along.
        crate::tables::watch::forked_child();
        assert!(!r.is_current(g));
        let r = resolver(&[(A, MAC_A)], &[]);
        let g = generation(&r);
        assert!(r.is_current(g));
        r.unwatched();
        assert!(!r.is_current(g) && !r.is_current(generation(&r)));
    }

    #[test]
    fn route_changes_of_one_family_leave_the_other_alone() {
        let v6 = |s: &str| s.parse::<Ipv6Addr>().unwrap();
        let here = Route {
            to: RouteTo::Here { next_hop: A.into() },
            mtu: None,
            source: None,
        };
        let inside = v6("fd77::2:1");
        let r = resolver(&[], &[(A, here)]);
        lock(&r.tables).routes.insert(target(inside), here);
        lock(&r.tables).routes.insert(target(v6("fd78::1")), here);
        // ::/0 of IPv6 is not 0.0.0.0/0 of IPv4.
        r.apply(&[Change::Route {
            dst: Ipv6Addr::UNSPECIFIED.into(),
            len: 0,
        }]);
        {
            let routes = &lock(&r.tables).routes;
            assert_eq!(routes.len(), 1);
            assert!(routes.contains_key(&target(A)));
        }
        let r = resolver(&[], &[]);
        lock(&r.tables).routes.insert(target(inside), here);
        lock(&r.tables).routes.insert(target(v6("fd78::1")), here);
        r.apply(&[Change::Route {
            dst: v6("fd77::").into(),
            len: 64,
        }]);
        let routes = &lock(&r.tables).routes;
        assert!(!routes.contains_key(&target(inside)));
        assert!(routes.contains_key(&target(v6("fd78::1"))));
    }

    #[test]
    fn targets_map_ipv4_and_keep_the_scope_of_link_local_addresses_only() {
        let mapped: SocketAddr = "[::ffff:10.0.0.2]:7000".parse().unwrap();
        assert_eq!(Target::of(&mapped), target(A));
        let link_local = SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 7000, 0, 3));
        assert_eq!(Target::of(&link_local).scope, 3);
        let global = SocketAddr::V6(SocketAddrV6::new("fd77::1".parse().unwrap(), 7000, 0, 3));
        assert_eq!(Target::of(&global).scope, 0);
    }
}
