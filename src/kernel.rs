//! The kernel backend: loads `bpf/fan_out.bpf.c`, attaches it to one
//! interface's egress and gives access to the per-socket slots.

use std::fs::File;
use std::io;
use std::marker::PhantomData;
use std::mem::{size_of, MaybeUninit};
use std::os::fd::AsFd;
use std::ptr::{self, addr_of, addr_of_mut, NonNull};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{AsRawLibbpf, Link, MapCore, MapFlags, OpenObject, TcHookBuilder, TC_EGRESS};

use crate::abi::{
    Dest, FanOutSkel, FanOutSkelBuilder, KernelStats, Slot, MAX_DESTS, MAX_SOCKETS, NOT_FANNED_OUT,
    SLOT_PARTIAL,
};
use crate::sys::{self, MapMemory};
use crate::Error;

/// How the program is attached; detached on drop.
enum Attachment {
    /// A TCX link (Linux 6.6+): dropping the link detaches exactly our program.
    Tcx(#[allow(dead_code)] Link),
    /// A cls_bpf filter on a clsact qdisc (older kernels).
    Clsact {
        hook: libbpf_rs::TcHook,
        ifindex: i32,
        /// The qdisc did not exist before us, so we remove it again.
        created_qdisc: bool,
        /// The network namespace the filter lives in: tc requests act on the
        /// calling thread's namespace, and `ifindex` only means something there.
        netns: File,
    },
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Attachment::Clsact {
            hook,
            ifindex,
            created_qdisc,
            netns,
        } = self
        {
            let hook = SendableHook(*hook);
            let (ifindex, created_qdisc) = (*ifindex, *created_qdisc);
            // Detach from a thread inside the filter's namespace, whichever
            // namespace the thread dropping us is in.
            let detached = thread::scope(|scope| {
                scope
                    .spawn(move || {
                        setns(&*netns, CloneFlags::CLONE_NEWNET)?;
                        detach_clsact(hook, ifindex, created_qdisc);
                        Ok::<(), nix::Error>(())
                    })
                    .join()
            });
            if !matches!(detached, Ok(Ok(()))) {
                log::warn!("could not enter the namespace of the fan-out filter to detach it");
            }
        }
    }
}

/// A TcHook to hand to the detaching thread.
struct SendableHook(libbpf_rs::TcHook);

// SAFETY: the only pointer a TcHook holds is the optional qdisc name of its
// bpf_tc_hook, which we never set (NULL); the rest is plain integers.
unsafe impl Send for SendableHook {}

fn detach_clsact(hook: SendableHook, ifindex: i32, created_qdisc: bool) {
    let SendableHook(mut hook) = hook;
    if let Err(err) = hook.detach() {
        log::warn!("detaching the fan-out filter failed: {err}");
    }
    if created_qdisc {
        let mut qdisc = tc_hook(
            ifindex,
            libbpf_sys::BPF_TC_INGRESS | libbpf_sys::BPF_TC_EGRESS,
        );
        // SAFETY: `qdisc` is a fully initialised bpf_tc_hook (sz set) that
        // lives across the call.
        let err = unsafe { libbpf_sys::bpf_tc_hook_destroy(&mut qdisc) };
        if err != 0 {
            log::warn!(
                "removing the clsact qdisc failed: {}",
                io::Error::from_raw_os_error(-err)
            );
        }
    }
}

fn tc_hook(ifindex: i32, attach_point: libbpf_sys::bpf_tc_attach_point) -> libbpf_sys::bpf_tc_hook {
    libbpf_sys::bpf_tc_hook {
        sz: size_of::<libbpf_sys::bpf_tc_hook>() as libbpf_sys::size_t,
        ifindex,
        attach_point,
        ..Default::default()
    }
}

/// Owns the heap cell the skeleton's object lives in; freed after the
/// skeleton (see the field order of [`FanOut`]).
struct ObjectCell(NonNull<MaybeUninit<OpenObject>>);

impl ObjectCell {
    fn new() -> ObjectCell {
        ObjectCell(NonNull::from(Box::leak(Box::new(MaybeUninit::uninit()))))
    }
}

impl Drop for ObjectCell {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::leak in `new` and the skeleton
        // that borrowed it has been dropped (it is declared before this field
        // in `FanOut`, and before the cell in `FanOut::attach`). MaybeUninit
        // does not drop its content: the skeleton already dropped the object.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

/// The loaded and attached fan-out program. Fields drop in order: the
/// program is detached first, then the mapping goes, then maps and program
/// are closed, and the object's cell is freed last.
pub(crate) struct FanOut {
    // Held for its Drop, which detaches the program.
    _attachment: Attachment,
    memory: MapMemory,
    slot_stride: usize,
    skel: FanOutSkel<'static>,
    _cell: ObjectCell,
    #[cfg(feature = "test-hooks")]
    attached_with_tcx: bool,
}

// SAFETY: FanOutSkel is Send + Sync; the attachment is touched only by Drop
// (&mut self), and MapMemory is Send + Sync.
unsafe impl Send for FanOut {}
// SAFETY: as above; shared access only reads immutable handles or goes
// through `Slot`, whose exclusivity the caller of `slot()` guarantees.
unsafe impl Sync for FanOut {}

fn to_io(err: libbpf_rs::Error) -> io::Error {
    io::Error::other(format!("{err:#}"))
}

fn load_error(err: libbpf_rs::Error) -> Error {
    Error::Load {
        reason: format!("{err:#}"),
    }
}

impl FanOut {
    /// Checks capabilities, loads the program and attaches it to the egress
    /// of `ifindex`: with TCX where the kernel has it, else with clsact.
    pub(crate) fn attach(
        interface: &str,
        ifindex: u32,
        force_clsact: bool,
    ) -> Result<FanOut, Error> {
        let caps =
            sys::effective_capabilities().map_err(Error::io("reading /proc/thread-self/status"))?;
        if !sys::has_capability(caps, sys::CAP_BPF)
            && !sys::has_capability(caps, sys::CAP_SYS_ADMIN)
        {
            return Err(Error::MissingCapability {
                capability: "CAP_BPF",
            });
        }
        if !sys::has_capability(caps, sys::CAP_NET_ADMIN) {
            return Err(Error::MissingCapability {
                capability: "CAP_NET_ADMIN",
            });
        }

        let cell = ObjectCell::new();
        // SAFETY: the cell is a valid, exclusively owned allocation that
        // outlives the skeleton: `FanOut` drops `skel` before `_cell`, and on
        // the error paths below the skeleton is a local declared after `cell`.
        let storage: &'static mut MaybeUninit<OpenObject> = unsafe { &mut *cell.0.as_ptr() };
        let open = FanOutSkelBuilder::default()
            .open(storage)
            .map_err(load_error)?;
        let skel = open.load().map_err(load_error)?;

        let slots = &skel.maps.slots;
        if slots.value_size() as usize != size_of::<Slot>() || slots.max_entries() != MAX_SOCKETS {
            return Err(Error::Load {
                reason: "the slots map does not match include/elec_broadcast.h".into(),
            });
        }
        // An mmap()able array keeps its values 8-aligned and page-aligned as a whole.
        let slot_stride = size_of::<Slot>().next_multiple_of(8);
        let memory = MapMemory::map(slots.as_fd(), slot_stride * MAX_SOCKETS as usize)
            .map_err(Error::io("mapping the slots map"))?;

        #[cfg_attr(not(feature = "test-hooks"), allow(unused_variables))]
        let (attachment, attached_with_tcx) = if force_clsact {
            (attach_clsact(&skel, ifindex, interface)?, false)
        } else {
            match attach_tcx(&skel, ifindex) {
                Ok(link) => (Attachment::Tcx(link), true),
                Err(tcx_err) => match attach_clsact(&skel, ifindex, interface) {
                    Ok(attachment) => {
                        log::info!("TCX unavailable ({tcx_err}); attached with clsact instead");
                        (attachment, false)
                    }
                    Err(err) => return Err(err),
                },
            }
        };
        Ok(FanOut {
            _attachment: attachment,
            memory,
            slot_stride,
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
        let per_cpu = self
            .skel
            .maps
            .stats
            .lookup_percpu(&0u32.to_ne_bytes(), MapFlags::ANY)
            .map_err(to_io)?
            .unwrap_or_default();
        let mut sum = [0u64; 5];
        for value in per_cpu {
            for (total, bytes) in sum.iter_mut().zip(value.chunks_exact(8)) {
                *total += u64::from_ne_bytes(bytes.try_into().expect("chunks of 8"));
            }
        }
        let [fan_outs, clones, clone_failures, rewrite_failures, mismatches] = sum;
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
    /// The caller must be the only user-space user of slot `index` for the
    /// lifetime of the returned handle (the broadcaster hands each slot to
    /// one socket and uses it only while holding that socket's lock).
    pub(crate) unsafe fn slot(&self, index: u32) -> SlotHandle<'_> {
        assert!(index < MAX_SOCKETS, "slot index out of range");
        let offset = index as usize * self.slot_stride;
        debug_assert!(offset + size_of::<Slot>() <= self.memory.len());
        SlotHandle {
            // SAFETY: offset + size_of::<Slot>() is within the mapping (the
            // map holds MAX_SOCKETS values of `slot_stride` bytes).
            ptr: unsafe { self.memory.as_ptr().add(offset) }.cast(),
            _owner: PhantomData,
        }
    }
}

fn attach_tcx(skel: &FanOutSkel<'_>, ifindex: u32) -> io::Result<Link> {
    let opts = libbpf_sys::bpf_tcx_opts {
        sz: size_of::<libbpf_sys::bpf_tcx_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    let program = skel.progs.fan_out.as_libbpf_object();
    // SAFETY: `program` is a loaded program owned by `skel`, `opts` is a
    // valid bpf_tcx_opts with `sz` set; libbpf returns a new link or NULL.
    let link =
        unsafe { libbpf_sys::bpf_program__attach_tcx(program.as_ptr(), ifindex as i32, &opts) };
    let link = NonNull::new(link).ok_or_else(io::Error::last_os_error)?;
    // SAFETY: `link` is a valid bpf_link that nothing else owns; Link
    // destroys (detaches) it on drop.
    Ok(unsafe { Link::from_ptr(link) })
}

fn attach_clsact(
    skel: &FanOutSkel<'_>,
    ifindex: u32,
    interface: &str,
) -> Result<Attachment, Error> {
    let attach_error = |source: io::Error| Error::Attach {
        interface: interface.to_string(),
        source,
    };
    let mut qdisc = tc_hook(ifindex as i32, TC_EGRESS);
    // SAFETY: `qdisc` is a fully initialised bpf_tc_hook that lives across the call.
    let err = unsafe { libbpf_sys::bpf_tc_hook_create(&mut qdisc) };
    let created_qdisc = match err {
        0 => true,
        e if -e == libc::EEXIST => false,
        e => return Err(attach_error(io::Error::from_raw_os_error(-e))),
    };
    let mut hook = TcHookBuilder::new(skel.progs.fan_out.as_fd())
        .ifindex(ifindex as i32)
        .hook(TC_EGRESS);
    let netns = File::open("/proc/thread-self/ns/net").map_err(attach_error)?;
    let mut attachment = Attachment::Clsact {
        hook,
        ifindex: ifindex as i32,
        created_qdisc,
        netns,
    };
    // On failure `attachment` drops and removes the qdisc if we made it.
    hook.attach().map_err(|e| attach_error(to_io(e)))?;
    if let Attachment::Clsact { hook: stored, .. } = &mut attachment {
        *stored = hook; // now carries the handle and priority the kernel chose
    }
    Ok(attachment)
}

/// Results of one fan-out, as the program wrote them.
pub(crate) struct Outcome {
    pub(crate) failed: [u64; MAX_DESTS / 64],
    pub(crate) lost_from: u32,
}

impl Outcome {
    /// Whether the program fanned the datagram out. If not, it went to the
    /// first destination as sent, and the others got nothing.
    pub(crate) fn fanned_out(&self) -> bool {
        self.lost_from != NOT_FANNED_OUT
    }

    /// Whether destination `i` of the chunk got no copy.
    pub(crate) fn lost(&self, i: usize) -> bool {
        i >= self.lost_from as usize || self.clone_failed(i)
    }

    /// Whether the clone for destination `i` was made but not delivered.
    pub(crate) fn clone_failed(&self, i: usize) -> bool {
        self.failed[i / 64] & (1 << (i % 64)) != 0
    }
}

/// Exclusive access to one slot of the mapping (see [`FanOut::slot`]).
pub(crate) struct SlotHandle<'a> {
    ptr: *mut Slot,
    _owner: PhantomData<&'a FanOut>,
}

impl SlotHandle<'_> {
    fn armed(&self) -> &AtomicU64 {
        // SAFETY: `armed` is 8-aligned (asserted in abi.rs), lives as long as
        // the mapping, and both sides only access it atomically.
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.ptr).armed)) }
    }

    fn done(&self) -> &AtomicU64 {
        // SAFETY: as for `armed`.
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.ptr).done)) }
    }

    /// Writes the destination list. Only while disarmed: the program reads
    /// it only after taking the arm.
    pub(crate) fn write_dests(&mut self, dests: &[Dest]) {
        assert!(dests.len() <= MAX_DESTS);
        // SAFETY: the slot is ours (see `FanOut::slot`) and disarmed, so the
        // program does not read dests now; the copy stays within the array.
        unsafe {
            let array = addr_of_mut!((*self.ptr).dests).cast::<Dest>();
            ptr::copy_nonoverlapping(dests.as_ptr(), array, dests.len());
        }
    }

    /// Arms the slot for the datagram of the socket that carries `tag`.
    /// `partial`: the datagram is sent with `UDP_SEGMENT`, so it is
    /// CHECKSUM_PARTIAL.
    pub(crate) fn arm(&mut self, tag: u64, count: u32, ip_len: u32, partial: bool) {
        debug_assert_ne!(tag, 0, "0 means disarmed");
        let flags = if partial { SLOT_PARTIAL } else { 0 };
        // SAFETY: plain fields of our disarmed slot; the Release store below
        // orders them before the program can take the arm.
        unsafe {
            ptr::write_volatile(addr_of_mut!((*self.ptr).count), count);
            ptr::write_volatile(addr_of_mut!((*self.ptr).ip_len), ip_len);
            ptr::write_volatile(addr_of_mut!((*self.ptr).flags), flags);
        }
        self.armed().store(tag, Ordering::Release);
    }

    /// Takes the arm back. Returns true when the program had already taken
    /// it (it fanned the datagram out, or is doing so on another CPU).
    pub(crate) fn disarm(&mut self) -> bool {
        self.armed().swap(0, Ordering::AcqRel) == 0
    }

    /// The results of the fan-out of `tag`, once the program published them.
    /// Only for a tag whose arm the program took (see [`SlotHandle::disarm`]).
    pub(crate) fn outcome(&self, tag: u64) -> Option<Outcome> {
        // The program runs inside our send and is done when it returns; the
        // wait only covers a datagram that was held up (by a neighbour
        // being resolved, say) and is being fanned out on another CPU right
        // now, which takes microseconds. The bound is a guard, not a timeout
        // that can be met in practice.
        let deadline = Instant::now() + OUTCOME_WAIT;
        let mut spins = 0u32;
        loop {
            if self.done().load(Ordering::Acquire) == tag {
                // SAFETY: `done == tag` was stored after these fields were
                // written (Acquire pairs with the program's atomic store).
                return Some(unsafe {
                    Outcome {
                        failed: ptr::read_volatile(addr_of!((*self.ptr).failed)),
                        lost_from: ptr::read_volatile(addr_of!((*self.ptr).lost_from)),
                    }
                });
            }
            spins += 1;
            if spins > 100 {
                if Instant::now() > deadline {
                    return None;
                }
                std::thread::yield_now();
            }
        }
    }
}

/// How long [`SlotHandle::outcome`] waits for a fan-out in progress.
const OUTCOME_WAIT: Duration = Duration::from_secs(1);
