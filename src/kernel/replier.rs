//! The fast-reply program (`bpf/reply.bpf.c`): loaded with a ring of the
//! size asked for, its arming entry mmap()ed, attached to an interface's
//! ingress; the ring read through libbpf's consumer (mmap, no system call
//! per record).

use std::collections::VecDeque;
use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, OpenObject, RingBuffer, RingBufferBuilder};

use super::abi::{ReplyShared, ReplySkel, ReplySkelBuilder, REPLY_COUNTERS};
use super::attach::{attach, Attachment, Hook};
use super::program::{check_capabilities, load_error, sum_per_cpu, to_io, ObjectCell};
use crate::sys::MapMemory;
use crate::Error;

const WHAT: &str = "fast-reply";

/// Records taken out of the ring, raw, oldest first.
pub(crate) type Records = Arc<Mutex<VecDeque<Vec<u8>>>>;

/// The loaded and attached program. Fields drop in order: detached first,
/// then the ring consumer and the mapping go, then maps and program are
/// closed, and the object's cell is freed last.
pub(crate) struct Replier {
    _attachment: Attachment,
    ring: RingBuffer<'static>,
    records: Records,
    memory: MapMemory,
    skel: ReplySkel<'static>,
    _cell: ObjectCell,
}

// SAFETY: ReplySkel and RingBuffer are Send; the attachment is touched only
// by Drop; the mapping is shared memory accessed atomically (src/reply/).
unsafe impl Send for Replier {}

impl Replier {
    /// Loads the program with a ring of `ring_bytes` (a power of two, at
    /// least a page), writes `port` (host order) into its entry, attaches
    /// it to the ingress of `ifindex`.
    pub(crate) fn attach(
        interface: &str,
        ifindex: u32,
        port: u16,
        ring_bytes: u32,
    ) -> Result<Replier, Error> {
        check_capabilities()?;
        let cell = ObjectCell::new();
        // SAFETY: the cell is a valid, exclusively owned allocation that
        // outlives the skeleton: `Replier` drops `skel` before `_cell`, and
        // on the error paths below the skeleton is a local declared after
        // `cell`.
        let storage: &'static mut MaybeUninit<OpenObject> = unsafe { &mut *cell.0.as_ptr() };
        let mut open = ReplySkelBuilder::default()
            .open(storage)
            .map_err(|e| load_error(WHAT, e))?;
        open.maps
            .ring
            .set_max_entries(ring_bytes)
            .map_err(|e| load_error(WHAT, e))?;
        let skel = open.load().map_err(|e| load_error(WHAT, e))?;
        if skel.maps.reply.value_size() as usize != size_of::<ReplyShared>() {
            return Err(Error::Load {
                program: WHAT,
                reason: "the kernel's reply map does not have the layout this library was \
                         built with (include/elec_reply.h)"
                    .into(),
            });
        }
        let memory = MapMemory::map(skel.maps.reply.as_fd(), size_of::<ReplyShared>())
            .map_err(Error::io("mapping the reply map"))?;
        // SAFETY: the mapping is one ReplyShared, page-aligned, and the
        // program is not attached yet: nothing else writes it.
        unsafe { (*memory.as_ptr().cast::<ReplyShared>()).port = port.to_be() };

        let records: Records = Arc::default();
        let sink = Arc::clone(&records);
        let mut builder = RingBufferBuilder::new();
        builder
            .add(&skel.maps.ring, move |record: &[u8]| {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back(record.to_vec());
                0
            })
            .map_err(|e| Error::io("reading the ring")(to_io(e)))?;
        let ring = builder
            .build()
            .map_err(|e| Error::io("mapping the ring")(to_io(e)))?;

        let (attachment, _tcx) = attach(
            &skel.progs.fast_reply,
            WHAT,
            interface,
            ifindex,
            Hook::Ingress,
            false,
        )?;
        Ok(Replier {
            _attachment: attachment,
            ring,
            records,
            memory,
            skel,
            _cell: cell,
        })
    }

    /// The shared entry, valid as long as `self`.
    pub(crate) fn shared(&self) -> *mut ReplyShared {
        self.memory.as_ptr().cast()
    }

    /// Moves every record the program has submitted into `records()`.
    pub(crate) fn consume(&self) -> io::Result<()> {
        self.ring.consume().map_err(to_io)
    }

    /// The records consumed so far and not taken yet.
    pub(crate) fn records(&self) -> &Records {
        &self.records
    }

    /// A descriptor that polls readable when records wait in the ring.
    pub(crate) fn ring_fd(&self) -> i32 {
        self.ring.epoll_fd()
    }

    /// The program's counters, summed over CPUs, in the order of
    /// `struct eb_reply_counters`.
    pub(crate) fn counters(&self) -> io::Result<[u64; REPLY_COUNTERS]> {
        sum_per_cpu(&self.skel.maps.counters)
    }
}
