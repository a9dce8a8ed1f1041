//! How one destination list is sent: which destinations the kernel fans out
//! (in chunks of at most 256, one armed send each) and which go from user
//! space, under one generation of the system's tables.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};

use super::v4;
use crate::kernel::{Dest, MAX_DESTS};
use crate::tables::{PathTo, Resolver};
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
    /// The destinations fanned out in the kernel.
    pub(crate) chunks: Vec<Chunk>,
    /// Indices of destinations sent from user space.
    pub(crate) user_space: Vec<usize>,
}

/// One fan-out: the destinations of one armed send.
pub(crate) struct Chunk {
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
        let addresses: Vec<Ipv4Addr> = destinations.iter().map(|d| *v4(d).ip()).collect();
        let paths = resolver
            .paths(&addresses)
            .map_err(Error::io("reading the routing and neighbour tables"))?;
        let mut fanned = Vec::new();
        let mut user_space = Vec::new();
        for (i, path) in paths.to.into_iter().enumerate() {
            match path {
                PathTo::FanOut(mac) if fan_out => {
                    fanned.push((i, Dest::new(mac, v4(&destinations[i]))));
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
        Ok(Plan {
            id: IDS.fetch_add(1, Ordering::Relaxed),
            destinations: destinations.to_vec(),
            generation: paths.generation,
            mtu: paths.mtu,
            chunks: fanned
                .chunks(MAX_DESTS)
                .map(|chunk| Chunk {
                    indices: chunk.iter().map(|(i, _)| *i).collect(),
                    dests: chunk.iter().map(|(_, dest)| *dest).collect(),
                })
                .collect(),
            user_space,
        })
    }

    /// Whether this plan may be used again for `destinations`: the same
    /// list, and no change to the tables since it was made.
    pub(crate) fn is_current(&self, resolver: &Resolver, destinations: &[SocketAddr]) -> bool {
        resolver.is_current(self.generation) && self.destinations == destinations
    }
}
