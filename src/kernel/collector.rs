//! The quorum program (`bpf/quorum.bpf.c`): loaded, its one-entry map
//! mmap()ed, attached to an interface's ingress.

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::AsFd;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, OpenObject};

use super::abi::{QuorumShared, QuorumSkel, QuorumSkelBuilder, QUORUM_COUNTERS};
use super::attach::{attach, Attachment, Hook};
use super::program::{check_capabilities, load_error, sum_per_cpu, to_io, ObjectCell};
use crate::sys::MapMemory;
use crate::Error;

const WHAT: &str = "quorum";

/// The loaded and attached collector. Fields drop in order: detached first,
/// then unmapped, then closed, and the object's cell is freed last.
pub(crate) struct Collector {
    _attachment: Attachment,
    memory: MapMemory,
    skel: QuorumSkel<'static>,
    _cell: ObjectCell,
}

// SAFETY: QuorumSkel is Send + Sync; the attachment is touched only by Drop;
// the mapping is shared memory that `Tallies` accesses atomically.
unsafe impl Send for Collector {}
// SAFETY: as above.
unsafe impl Sync for Collector {}

impl Collector {
    /// Loads the program, writes `port` (host order) into its map and
    /// attaches it to the ingress of `ifindex`: on the TC hook, or with
    /// `xdp` on the XDP hook.
    pub(crate) fn attach(
        interface: &str,
        ifindex: u32,
        port: u16,
        xdp: bool,
    ) -> Result<Collector, Error> {
        check_capabilities()?;
        let cell = ObjectCell::new();
        // SAFETY: the cell is a valid, exclusively owned allocation that
        // outlives the skeleton: `Collector` drops `skel` before `_cell`,
        // and on the error paths below the skeleton is a local declared
        // after `cell`.
        let storage: &'static mut MaybeUninit<OpenObject> = unsafe { &mut *cell.0.as_ptr() };
        let open = QuorumSkelBuilder::default()
            .open(storage)
            .map_err(|e| load_error(WHAT, e))?;
        let skel = open.load().map_err(|e| load_error(WHAT, e))?;
        let map = &skel.maps.quorum;
        if map.value_size() as usize != size_of::<QuorumShared>() {
            return Err(Error::Load {
                program: WHAT,
                reason: "the kernel's quorum map does not have the layout this library was \
                         built with (include/elec_quorum.h)"
                    .into(),
            });
        }
        let memory = MapMemory::map(map.as_fd(), size_of::<QuorumShared>())
            .map_err(Error::io("mapping the quorum map"))?;
        let shared = memory.as_ptr().cast::<QuorumShared>();
        // SAFETY: the mapping is at least one QuorumShared long, page-aligned,
        // and the program is not attached yet: nothing else writes it.
        unsafe { (*shared).port = port.to_be() };
        let attachment = if xdp {
            let link = skel
                .progs
                .collect_xdp
                .attach_xdp(ifindex as i32)
                .map_err(|e| Error::Attach {
                    program: WHAT,
                    hook: "XDP",
                    interface: interface.to_string(),
                    source: to_io(e),
                })?;
            Attachment::Tcx(link)
        } else {
            attach(
                &skel.progs.collect,
                WHAT,
                interface,
                ifindex,
                Hook::Ingress,
                false,
            )?
            .0
        };
        Ok(Collector {
            _attachment: attachment,
            memory,
            skel,
            _cell: cell,
        })
    }

    /// The shared entry, valid as long as `self`.
    pub(crate) fn shared(&self) -> *mut QuorumShared {
        self.memory.as_ptr().cast()
    }

    /// The program's counters, summed over CPUs, in the order of
    /// `struct eb_quorum_counters`.
    pub(crate) fn counters(&self) -> io::Result<[u64; QUORUM_COUNTERS]> {
        sum_per_cpu(&self.skel.maps.counters)
    }
}
