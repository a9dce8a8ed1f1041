//! The per-socket slots: an mmap()ed `BPF_F_MMAPABLE` array shared with the
//! program, and the protocol on one slot (write the destinations, arm with
//! a tag, take the arm back, read the outcome) as `include/elec_broadcast.h`
//! defines it.

use std::hash::{BuildHasher, RandomState};
use std::io;
use std::marker::PhantomData;
use std::mem::size_of;
use std::os::fd::BorrowedFd;
use std::ptr::{self, addr_of, addr_of_mut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::abi::{
    Arm, Dest, Slot, MAX_BATCH, MAX_DESTS, MAX_SOCKETS, NOT_FANNED_OUT, SLOT_PARTIAL,
};
use crate::sys::MapMemory;
use crate::FailureReason;

/// The tags of one broadcaster's arms: numbers used once each, handed out
/// in blocks of `MAX_BATCH`, one block per armed send (or batch of sends):
/// the tag for arm `i` of a slot is the block's first tag plus `i`, which is
/// how the program finds a datagram's arm.
///
/// A tag goes in the transmit time of the carrier datagram, so tags are kept
/// in the past of every clock the kernel compares transmit times with: they
/// start below half the monotonic time since boot and grow by one block per
/// send, so a datagram that somehow left with its tag would be sent at once,
/// never held. The random start keeps the tags of broadcasters in several
/// processes apart.
pub(crate) struct Tags(AtomicU64);

impl Tags {
    pub(crate) fn new() -> Tags {
        let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
            .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
            .unwrap_or(2);
        let start = RandomState::new().hash_one(now) % (now / 2).max(1);
        // Blocks start at multiples of MAX_BATCH, never at 0 (0 = disarmed).
        let block = MAX_BATCH as u64;
        Tags(AtomicU64::new((start / block + 1) * block))
    }

    /// The first tag of a block of `MAX_BATCH` tags never handed out before.
    pub(crate) fn next_block(&self) -> u64 {
        self.0.fetch_add(MAX_BATCH as u64, Ordering::Relaxed)
    }
}

/// The mapping of the `slots` map: `MAX_SOCKETS` slots, one per registered
/// socket.
pub(crate) struct Slots {
    memory: MapMemory,
    stride: usize,
}

impl Slots {
    /// Maps the `slots` map behind `fd`.
    pub(crate) fn map(fd: BorrowedFd<'_>) -> io::Result<Slots> {
        // An mmap()able array keeps its values 8-aligned and page-aligned as a whole.
        let stride = size_of::<Slot>().next_multiple_of(8);
        let memory = MapMemory::map(fd, stride * MAX_SOCKETS as usize)?;
        Ok(Slots { memory, stride })
    }

    /// Slot `index`.
    ///
    /// # Safety
    /// The caller must be the only user-space user of slot `index` for the
    /// lifetime of the returned handle (the broadcaster hands each slot to
    /// one socket and uses it only while holding that socket's lock).
    pub(crate) unsafe fn slot(&self, index: u32) -> SlotHandle<'_> {
        assert!(index < MAX_SOCKETS, "slot index out of range");
        let offset = index as usize * self.stride;
        debug_assert!(offset + size_of::<Slot>() <= self.memory.len());
        SlotHandle {
            // SAFETY: offset + size_of::<Slot>() is within the mapping (the
            // map holds MAX_SOCKETS values of `stride` bytes).
            ptr: unsafe { self.memory.as_ptr().add(offset) }.cast(),
            _owner: PhantomData,
        }
    }
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

    /// Whether every one of the chunk's `count` destinations got its copy
    /// (the common case, told at once).
    pub(crate) fn all_sent(&self, count: usize) -> bool {
        self.lost_from as usize >= count && self.failed.iter().all(|&word| word == 0)
    }

    /// Why destination `i` of the chunk got no copy, if it got none: its
    /// header could not be rewritten (no memory), or its clone was not
    /// transmitted.
    pub(crate) fn lost(&self, i: usize) -> Option<FailureReason> {
        if i >= self.lost_from as usize {
            Some(FailureReason::NoMemory)
        } else if self.clone_failed(i) {
            Some(FailureReason::Dropped)
        } else {
            None
        }
    }

    /// Whether the clone for destination `i` was made but not delivered.
    pub(crate) fn clone_failed(&self, i: usize) -> bool {
        self.failed[i / 64] & (1 << (i % 64)) != 0
    }
}

/// Exclusive access to one slot of the mapping (see [`Slots::slot`]).
pub(crate) struct SlotHandle<'a> {
    ptr: *mut Slot,
    _owner: PhantomData<&'a Slots>,
}

impl SlotHandle<'_> {
    fn arm_of(&self, i: usize) -> *mut Arm {
        assert!(i < MAX_BATCH, "arm index out of range");
        // SAFETY: `arms` holds MAX_BATCH entries; the pointer stays within
        // the slot.
        unsafe { addr_of_mut!((*self.ptr).arms).cast::<Arm>().add(i) }
    }

    fn armed(&self, i: usize) -> &AtomicU64 {
        // SAFETY: `armed` is 8-aligned (asserted in abi.rs), lives as long as
        // the mapping, and both sides only access it atomically.
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.arm_of(i)).armed)) }
    }

    fn done(&self, i: usize) -> &AtomicU64 {
        // SAFETY: as for `armed`.
        unsafe { AtomicU64::from_ptr(addr_of_mut!((*self.arm_of(i)).done)) }
    }

    /// Writes the destination list, all of `family` (`FAMILY_IPV4` or
    /// `FAMILY_IPV6`). Only while no arm is armed: the program reads it
    /// only after taking an arm.
    pub(crate) fn write_dests(&mut self, family: u32, dests: &[Dest]) {
        assert!(dests.len() <= MAX_DESTS);
        // SAFETY: the slot is ours (see `Slots::slot`) and disarmed, so the
        // program does not read dests or count now; the copy stays within
        // the array. The Release store of the next arm orders these writes
        // before the program can read them.
        unsafe {
            let array = addr_of_mut!((*self.ptr).dests).cast::<Dest>();
            ptr::copy_nonoverlapping(dests.as_ptr(), array, dests.len());
            ptr::write_volatile(addr_of_mut!((*self.ptr).count), dests.len() as u32);
            ptr::write_volatile(addr_of_mut!((*self.ptr).family), family);
        }
    }

    /// Arms arm `i` for the datagram of the socket that carries `tag` (the
    /// tag of arm `i` of a block of [`Tags`]). `partial`: the datagram is
    /// sent with `UDP_SEGMENT`, so it is CHECKSUM_PARTIAL.
    pub(crate) fn arm(&mut self, i: usize, tag: u64, ip_len: u32, partial: bool) {
        debug_assert_ne!(tag, 0, "0 means disarmed");
        debug_assert_eq!(tag % MAX_BATCH as u64, i as u64, "the tag names its arm");
        let flags = if partial { SLOT_PARTIAL } else { 0 };
        let arm = self.arm_of(i);
        // SAFETY: plain fields of our disarmed arm; the Release store below
        // orders them before the program can take the arm.
        unsafe {
            ptr::write_volatile(addr_of_mut!((*arm).ip_len), ip_len);
            ptr::write_volatile(addr_of_mut!((*arm).flags), flags);
        }
        self.armed(i).store(tag, Ordering::Release);
    }

    /// Takes arm `i` back. Returns true when the program had already taken
    /// it (it fanned the datagram out, or is doing so on another CPU).
    pub(crate) fn disarm(&mut self, i: usize) -> bool {
        self.armed(i).swap(0, Ordering::AcqRel) == 0
    }

    /// The results of the fan-out of `tag` (armed on arm `i`), once the
    /// program published them. Only for a tag whose arm the program took
    /// (see [`SlotHandle::disarm`]).
    pub(crate) fn outcome(&self, i: usize, tag: u64) -> Option<Outcome> {
        // The program runs inside our send and is done when it returns; the
        // wait only covers a datagram that was held up (by a neighbour
        // being resolved, say) and is being fanned out on another CPU right
        // now, which takes microseconds. The bound is a guard, not a timeout
        // that can be met in practice.
        let deadline = Instant::now() + OUTCOME_WAIT;
        let mut spins = 0u32;
        let arm = self.arm_of(i);
        loop {
            if self.done(i).load(Ordering::Acquire) == tag {
                // SAFETY: `done == tag` was stored after these fields were
                // written (Acquire pairs with the program's atomic store).
                return Some(unsafe {
                    Outcome {
                        failed: ptr::read_volatile(addr_of!((*arm).failed)),
                        lost_from: ptr::read_volatile(addr_of!((*arm).lost_from)),
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
