//! How one destination list is sent: which destinations the kernel fans out
//! (in chunks of at most 256, one armed send each) and which go from user
//! space, under one generation of the system's tables.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use super::{HEADERS, HEADERS6};
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
    /// The smallest MTU among the destinations' routes, where a route has
    /// one of its own.
    pub(crate) mtu: Option<u32>,
    /// The most header bytes a datagram of the plan adds to its payload:
    /// `HEADERS6` if any destination is reached with IPv6.
    pub(crate) headers: usize,
    /// The destinations fanned out in the kernel.
    pub(crate) chunks: Vec<Chunk>,
    /// Indices of destinations sent from user space.
    pub(crate) user_space: Vec<usize>,
}

/// One fan-out: the destinations of one armed send, all of one family.
pub(crate) struct Chunk {
    /// `FAMILY_IPV4` or `FAMILY_IPV6`.
    pub(crate) family: u32,
    /// Indices into the destination list; the first is the carrier, the
    /// destination the datagram is sent to.
    pub(crate) indices: Vec<usize>,
    pub(crate) dests: Vec<Dest>,
}

impl Plan {
    /// A plan for `destinations` under the tables as they are now. Without
    /// a slot (`fan_out` false) every destination goes from user space.
    /// A destination routed through another interface than `interface`
    /// (index `ifindex`) is an error.
    pub(crate) fn make(
        resolver: &Resolver,
        interface: &str,
        destinations: &[SocketAddr],
        fan_out: bool,
    ) -> Result<Plan, Error> {
        let targets: Vec<Target> = destinations.iter().map(Target::of).collect();
        let paths = resolver
            .paths(&targets)
            .map_err(Error::io("reading the routing and neighbour tables"))?;
        // One list per family: a datagram is fanned out to its own family.
        let mut fanned4 = Vec::new();
        let mut fanned6 = Vec::new();
        let mut user_space = Vec::new();
        for (i, path) in paths.to.into_iter().enumerate() {
            match path {
                PathTo::FanOut(mac) if fan_out => {
                    let target = targets[i];
                    let dest = Dest::new(mac, SocketAddr::new(target.ip, destinations[i].port()));
                    match target.ip.is_ipv4() {
                        true => fanned4.push((i, dest)),
                        false => fanned6.push((i, dest)),
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
        static IDS: AtomicU64 = AtomicU64::new(0);
        let chunks = |family: u32, fanned: Vec<(usize, Dest)>| -> Vec<Chunk> {
            fanned
                .chunks(MAX_DESTS)
                .map(|chunk| Chunk {
                    family,
                    indices: chunk.iter().map(|(i, _)| *i).collect(),
                    dests: chunk.iter().map(|(_, dest)| *dest).collect(),
                })
                .collect()
        };
        let any6 = targets.iter().any(|t| !t.ip.is_ipv4());
        let mut all = chunks(FAMILY_IPV4, fanned4);
        all.extend(chunks(FAMILY_IPV6, fanned6));
        Ok(Plan {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            destinations: destinations.to_vec(),
            generation: paths.generation,
            mtu: paths.mtu,
            headers: if any6 { HEADERS6 } else { HEADERS },
            chunks: all,
            user_space,
        })
    }

    /// Whether this plan may be used again for `destinations`: the same
    /// list, and no change to the tables since it was made.
    pub(crate) fn is_current(&self, resolver: &Resolver, destinations: &[SocketAddr]) -> bool {
        resolver.is_current(self.generation) && self.destinations == destinations
    }
}
