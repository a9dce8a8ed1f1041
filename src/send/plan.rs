//! How one destination list is sent: which destinations the kernel fans out
//! (in chunks of at most 256, one armed send each) and which go from user
//! space, under one generation of the system's tables.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use super::headers;
use crate::kernel::{Dest, FAMILY_IPV4, FAMILY_IPV6, MAX_DESTS};
use crate::tables::{PathTo, Resolver, Target};
use crate::Error;

/// The plan for one destination list.
pub(crate) struct Plan {
    /// A number no other plan has (a resumed call checks it is resuming in
    /// the plan it stopped in).
    pub(crate) id: u64,
    pub(crate) destinations: Vec<SocketAddr>,
    /// The tables' generation the plan was made under.
    pub(crate) generation: u64,
    /// The largest payload the destinations' routes take, where a route
    /// has an MTU of its own (each with its family's headers), and that
    /// MTU.
    pub(crate) limit: Option<(usize, u32)>,
    /// The destinations fanned out in the kernel.
    pub(crate) chunks: Vec<Chunk>,
    /// Indices of destinations sent from user space.
    pub(crate) user_space: Vec<usize>,
}

/// One fan-out: the destinations of one armed send, all of one family and,
/// on a socket bound to no address, of one source address.
pub(crate) struct Chunk {
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub(crate) family: u32,
    /// Indices into the destination list; the first is the carrier, the
    /// destination the datagram is sent to.
    pub(crate) indices: Vec<usize>,
    pub(crate) dests: Vec<Dest>,
}

/// What the destinations of one fan-out share: a family (`FAMILY_IPV4` or
/// `FAMILY_IPV6`) and, on a socket bound to no address, a source address.
type Group = (u32, Option<IpAddr>);

impl Plan {
    /// A plan for `destinations` under the tables as they are now. Without
    /// a slot (`fan_out` false) every destination goes from user space.
    /// A destination routed through another interface than `interface`
    /// (index `ifindex`) is an error. `any_source`: the socket is bound to
    /// no address, so the kernel picks each datagram's source by its route
    /// (an IPv6 link-local source for a link-local destination, say): the
    /// copies keep their carrier's source, so only destinations of one
    /// source share a fan-out.
    pub(crate) fn make(
        resolver: &Resolver,
        interface: &str,
        destinations: &[SocketAddr],
        fan_out: bool,
        any_source: bool,
    ) -> Result<Plan, Error> {
        let targets: Vec<Target> = destinations.iter().map(Target::of).collect();
        let paths = resolver
            .paths(&targets)
            .map_err(Error::io("reading the routing and neighbour tables"))?;
        // One group per family (a datagram is fanned out to its own
        // family) and source, in the order of their first destination.
        let mut groups: Vec<(Group, Vec<(usize, Dest)>)> = Vec::new();
        let mut user_space = Vec::new();
        for (i, path) in paths.to.into_iter().enumerate() {
            match path {
                PathTo::FanOut(mac) if fan_out => {
                    let target = targets[i];
                    let dest = Dest::new(mac, SocketAddr::new(target.ip, destinations[i].port()));
                    let family = match target.ip.is_ipv4() {
                        true => FAMILY_IPV4,
                        false => FAMILY_IPV6,
                    };
                    let key = (family, paths.sources[i].filter(|_| any_source));
                    match groups.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, group)) => group.push((i, dest)),
                        None => groups.push((key, vec![(i, dest)])),
                    }
                }
                PathTo::FanOut(_) | PathTo::UserSpace => user_space.push(i),
                PathTo::Elsewhere(ifindex) => {
                    return Err(Error::OtherInterface {
                        destination: destinations[i],
                        interface: interface.to_string(),
                        route_interface: resolver.interface_name(ifindex),
                    })
                }
            }
        }
        let chunks = groups
            .iter()
            .flat_map(|((family, _), fanned)| {
                fanned.chunks(MAX_DESTS).map(|chunk| Chunk {
                    family: *family,
                    indices: chunk.iter().map(|(i, _)| *i).collect(),
                    dests: chunk.iter().map(|(_, dest)| *dest).collect(),
                })
            })
            .collect();
        // Each route's MTU with its own family's headers.
        let limit = paths
            .mtus
            .iter()
            .zip(destinations)
            .filter_map(|(mtu, to)| {
                mtu.map(|mtu| ((mtu as usize).saturating_sub(headers(to)), mtu))
            })
            .min();
        static IDS: AtomicU64 = AtomicU64::new(0);
        Ok(Plan {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            destinations: destinations.to_vec(),
            generation: paths.generation,
            limit,
            chunks,
            user_space,
        })
    }

    /// Whether this plan may be used again for `destinations`: the same
    /// list, and no change to the tables since it was made.
    pub(crate) fn is_current(&self, resolver: &Resolver, destinations: &[SocketAddr]) -> bool {
        resolver.is_current(self.generation) && self.destinations == destinations
    }
}
