//! Benchmark only (feature `test-hooks`, not part of the API): the bare
//! fan-out of `bpf/bare.bpf.c`, the least a fan-out costs, which
//! `examples/bench_matrix` measures the crate's own overhead against.

use std::mem::MaybeUninit;
use std::net::{SocketAddr, SocketAddrV4};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};

use super::abi::{BareConfig, BareSkel, BareSkelBuilder, Dest, MAX_DESTS};
use super::attach::{attach, Attachment, Hook};
use super::program::{check_capabilities, load_error, ObjectCell};
use crate::tables::{PathTo, Resolver, RouteSocket, Target};
use crate::Error;

/// The bare fan-out, attached to an interface's egress until dropped: every
/// UDP datagram from `source_port` leaving there is cloned to the
/// destinations given, and consumed.
#[doc(hidden)]
pub struct BareFanOut {
    // Drop order: detach, then close the program and maps, then free the
    // object's cell (as `Program`).
    _attachment: Attachment,
    _skel: BareSkel<'static>,
    _cell: ObjectCell,
}

// SAFETY: as for `Program`: the skeleton is Send + Sync, the attachment is
// touched only by Drop.
unsafe impl Send for BareFanOut {}
// SAFETY: as above; nothing is reachable through a shared reference.
unsafe impl Sync for BareFanOut {}

impl BareFanOut {
    /// Loads the bare program, points it at `destinations` (at most 256,
    /// their neighbours in the kernel's table) and attaches it to the egress
    /// of `interface`.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), elec_broadcast::Error> {
    /// let dests = ["10.0.0.2:7000".parse().unwrap()];
    /// let _bare = elec_broadcast::BareFanOut::attach("eth0", 7000, &dests)?;
    /// # Ok(()) }
    /// ```
    pub fn attach(
        interface: &str,
        source_port: u16,
        destinations: &[SocketAddrV4],
    ) -> Result<BareFanOut, Error> {
        check_capabilities()?;
        if destinations.is_empty() || destinations.len() > MAX_DESTS {
            return Err(Error::NoDestinations);
        }
        let netlink = RouteSocket::open().map_err(Error::io("opening a netlink socket"))?;
        let link = netlink
            .link(interface)
            .map_err(|_| Error::UnknownInterface {
                name: interface.to_string(),
            })?;
        let resolver = Resolver::new(netlink, link.index, link.mtu);
        let targets: Vec<Target> = destinations
            .iter()
            .map(|d| Target::of(&SocketAddr::V4(*d)))
            .collect();
        let paths = resolver
            .paths(&targets)
            .map_err(Error::io("reading the routing and neighbour tables"))?;
        let mut config = BareConfig {
            count: destinations.len() as u32,
            sport: source_port.to_be(),
            ..Default::default()
        };
        for (i, (path, dest)) in paths.to.iter().zip(destinations).enumerate() {
            let PathTo::FanOut(mac) = path else {
                return Err(Error::Io {
                    context: "resolving a destination of the bare fan-out",
                    source: std::io::Error::other(format!(
                        "{dest}: not behind {interface} with a known neighbour"
                    )),
                });
            };
            // The same layout, generated twice (once per skeleton).
            let dest = Dest::new(*mac, SocketAddr::V4(*dest));
            config.dests[i].mac = dest.mac;
            config.dests[i].port = dest.port;
            config.dests[i].addr = dest.addr;
        }

        let cell = ObjectCell::new();
        // SAFETY: as in `Program::attach`: the cell outlives the skeleton
        // (field order of `BareFanOut`; a local declared after `cell` on the
        // error paths).
        let storage: &'static mut MaybeUninit<OpenObject> = unsafe { &mut *cell.0.as_ptr() };
        let open = BareSkelBuilder::default()
            .open(storage)
            .map_err(|e| load_error("bare fan-out", e))?;
        let skel = open.load().map_err(|e| load_error("bare fan-out", e))?;
        // SAFETY: BareConfig is a plain C struct generated from BTF (integers
        // and arrays of them); viewing it as bytes reads initialised memory.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&config as *const BareConfig).cast::<u8>(),
                std::mem::size_of::<BareConfig>(),
            )
        };
        skel.maps
            .config
            .update(&0u32.to_ne_bytes(), bytes, MapFlags::ANY)
            .map_err(|e| load_error("bare fan-out", e))?;
        let (attachment, _) = attach(
            &skel.progs.bare_fan_out,
            "bare fan-out",
            interface,
            link.index,
            Hook::Egress,
            false,
        )?;
        Ok(BareFanOut {
            _attachment: attachment,
            _skel: skel,
            _cell: cell,
        })
    }
}
