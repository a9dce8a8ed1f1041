//! The fan-out program: loads `bpf/fan_out.bpf.c` with its maps, attaches
//! it (see [`super::attach`]), registers sockets, reads its counters, and
//! hands out the per-socket slots (see [`super::slots`]).

use std::io;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::AsFd;
use std::ptr::NonNull;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};

use super::abi::{FanOutSkel, FanOutSkelBuilder, KernelStats, Slot, MAX_SOCKETS};
use super::attach::{attach, Attachment, Hook};
use super::slots::{SlotHandle, Slots};
use crate::{sys, Error};

/// Owns the heap cell the skeleton's object lives in; freed after the
/// skeleton (see the field order of [`Program`]).
pub(crate) struct ObjectCell(pub(crate) NonNull<MaybeUninit<OpenObject>>);

impl ObjectCell {
    pub(crate) fn new() -> ObjectCell {
        ObjectCell(NonNull::from(Box::leak(Box::new(MaybeUninit::uninit()))))
    }
}

impl Drop for ObjectCell {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::leak in `new` and the skeleton
        // that borrowed it has been dropped (it is declared before this field
        // in `Program`, and before the cell in `Program::attach`). MaybeUninit
        // does not drop its content: the skeleton already dropped the object.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// The loaded and attached fan-out program. Fields drop in order: the
/// program is detached first, then the mapping goes, then maps and program
/// are closed, and the object's cell is freed last.
pub(crate) struct Program {
    // Held for its Drop, which detaches the program.
    _attachment: Attachment,
    slots: Slots,
    skel: FanOutSkel<'static>,
    _cell: ObjectCell,
    #[cfg(feature = "test-hooks")]
    attached_with_tcx: bool,
}

// SAFETY: FanOutSkel is Send + Sync; the attachment is touched only by Drop
// (&mut self), and Slots is Send + Sync.
unsafe impl Send for Program {}
// SAFETY: as above; shared access only reads immutable handles or goes
// through `Slot`, whose exclusivity the caller of `slot()` guarantees.
unsafe impl Sync for Program {}

/// Entry 0 of a per-CPU array of `N` u64 counters, summed over CPUs.
pub(super) fn sum_per_cpu<const N: usize>(map: &dyn MapCore) -> io::Result<[u64; N]> {
    let per_cpu = map
        .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
        .map_err(to_io)?
        .unwrap_or_default();
    let mut sum = [0u64; N];
    for value in per_cpu {
        for (total, bytes) in sum.iter_mut().zip(value.chunks_exact(8)) {
            *total += u64::from_ne_bytes(bytes.try_into().expect("chunks of 8"));
        }
    }
    Ok(sum)
}

pub(super) fn to_io(err: libbpf_rs::Error) -> io::Error {
    io::Error::other(format!("{err:#}"))
}

/// A program the kernel refused, or libbpf could not prepare: the usual
/// cause is a kernel older than the program needs.
pub(crate) fn load_error(program: &'static str, err: libbpf_rs::Error) -> Error {
    Error::Load {
        program,
        reason: format!(
            "{err:#} (the program needs Linux 5.17 or newer, for bpf_loop, with BTF; \
             libbpf's log above says what the kernel refused)"
        ),
    }
}

/// Whether this thread may load and attach programs: CAP_BPF loads programs
/// and creates maps; CAP_PERFMON lets the verifier accept indexed accesses
/// into map values (without it, pointer arithmetic on them is refused as a
/// Spectre v1 risk); CAP_NET_ADMIN attaches to an interface. CAP_SYS_ADMIN
/// stands in for the first two.
pub(crate) fn check_capabilities() -> Result<(), Error> {
    use caps::Capability::{CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON, CAP_SYS_ADMIN};
    let has = |cap| sys::has_capability(cap).map_err(Error::io("reading the capability set"));
    let admin = has(CAP_SYS_ADMIN)?;
    for (cap, name) in [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")] {
        if !admin && !has(cap)? {
            return Err(Error::MissingCapability { capability: name });
        }
    }
    if !has(CAP_NET_ADMIN)? {
        return Err(Error::MissingCapability {
            capability: "CAP_NET_ADMIN",
        });
    }
    Ok(())
}

impl Program {
    /// Checks capabilities, loads the program and attaches it to the egress
    /// of `ifindex`: with TCX where the kernel has it, else with clsact.
    pub(crate) fn attach(
        interface: &str,
        ifindex: u32,
        force_clsact: bool,
    ) -> Result<Program, Error> {
        check_capabilities()?;

        let cell = ObjectCell::new();
        // SAFETY: the cell is a valid, exclusively owned allocation that
        // outlives the skeleton: `Program` drops `skel` before `_cell`, and on
        // the error paths below the skeleton is a local declared after `cell`.
        let storage: &'static mut MaybeUninit<OpenObject> = unsafe { &mut *cell.0.as_ptr() };
        let open = FanOutSkelBuilder::default()
            .open(storage)
            .map_err(|e| load_error("fan-out", e))?;
        let skel = open.load().map_err(|e| load_error("fan-out", e))?;

        let slots = &skel.maps.slots;
        if slots.value_size() as usize != size_of::<Slot>() || slots.max_entries() != MAX_SOCKETS {
            return Err(Error::Load {
                program: "fan-out",
                reason: "the kernel's slots map does not have the layout this library was \
                         built with (include/elec_broadcast.h): the program and the library \
                         come from different builds"
                    .into(),
            });
        }
        let slots = Slots::map(slots.as_fd()).map_err(Error::io("mapping the slots map"))?;

        #[cfg_attr(not(feature = "test-hooks"), allow(unused_variables))]
        let (attachment, attached_with_tcx) = attach(
            &skel.progs.fan_out,
            "fan-out",
            interface,
            ifindex,
            Hook::Egress,
            force_clsact,
        )?;
        Ok(Program {
            _attachment: attachment,
            slots,
            skel,
            _cell: cell,
            #[cfg(feature = "test-hooks")]
            attached_with_tcx,
        })
    }

    #[cfg(feature = "test-hooks")]
    pub(crate) fn uses_tcx(&self) -> bool {
        self.attached_with_tcx
    }

    /// The kernel's id of the loaded program.
    #[cfg(feature = "test-hooks")]
    pub(crate) fn id(&self) -> io::Result<u32> {
        libbpf_rs::ProgramHandle::try_from(&self.skel.progs.fan_out)
            .map(|handle| handle.id())
            .map_err(to_io)
    }

    /// Lets the program fan out the datagrams of the socket with `cookie`,
    /// using slot `index`.
    pub(crate) fn register(&self, cookie: u64, index: u32) -> io::Result<()> {
        self.skel
            .maps
            .sockets
            .update(&cookie.to_ne_bytes(), &index.to_ne_bytes(), MapFlags::ANY)
            .map_err(to_io)
    }

    pub(crate) fn unregister(&self, cookie: u64) {
        // A socket that is no longer there may already be gone from the map.
        let _ = self.skel.maps.sockets.delete(&cookie.to_ne_bytes());
    }

    /// The program's own counters, summed over CPUs.
    pub(crate) fn kernel_stats(&self) -> io::Result<KernelStats> {
        let [fan_outs, clones, clone_failures, rewrite_failures, mismatches] =
            sum_per_cpu(&self.skel.maps.stats)?;
        Ok(KernelStats {
            fan_outs,
            clones,
            clone_failures,
            rewrite_failures,
            mismatches,
        })
    }

    /// Slot `index`.
    ///
    /// # Safety
    /// As for [`Slots::slot`].
    pub(crate) unsafe fn slot(&self, index: u32) -> SlotHandle<'_> {
        // SAFETY: passed on to the caller.
        unsafe { self.slots.slot(index) }
    }
}
