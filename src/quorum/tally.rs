//! The tallies of `include/elec_quorum.h` and the algorithm that keeps them,
//! the same as `bpf/quorum.bpf.c`'s, on the same memory: the program counts
//! the acks it is sure about, user space the ones that reach it (and all of
//! them in user-space mode). Both sides change a tally only by
//! compare-and-swap, so they can run at once.
//!
//! Each tally carries a 16-bit tag of the configuration it was made under,
//! so a tally of another epoch reads as round 0: a program run that read
//! the old epoch cannot mix into the new one. `configure` also zeroes the
//! tallies, which keeps epochs apart when the tags wrap around.

use std::net::SocketAddrV4;
use std::ptr::{addr_of_mut, NonNull};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering::SeqCst};

use crate::header::Ack;
use crate::kernel::wire::{MAX_ROUND, MAX_VOTERS};
use crate::kernel::QuorumShared;

const TAG_SHIFT: u32 = 48;

/// What became of one ack, in the order of `struct eb_quorum_counters`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Quorum,
    Counted,
    Duplicate,
    Late,
    OtherEpoch,
    OutsideWindow,
    UnknownVoter,
    NotAnAck,
    #[allow(dead_code)] // the kernel's `unverified`: the index of its counter
    Unverified,
}

/// A view of one `struct eb_quorum`, in the program's map or on the heap.
pub(crate) struct Tallies(NonNull<QuorumShared>);

// SAFETY: every access through `Tallies` is atomic (or a write by the one
// configuring thread under the sequence lock); the memory outlives it (see
// `new`).
unsafe impl Send for Tallies {}
// SAFETY: as above.
unsafe impl Sync for Tallies {}

/// The configuration tag of generation `generation` (never 0, so zeroed
/// tallies are stale in every configuration). Same formula as the program.
pub(crate) fn tag_of(generation: u64) -> u64 {
    (generation / 2) % 0xffff + 1
}

fn round_of(value: u64, tag: u64) -> u64 {
    if value >> TAG_SHIFT == tag {
        value & MAX_ROUND
    } else {
        0
    }
}

/// One configuration, as read under the sequence lock.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Config {
    pub(crate) generation: u64,
    pub(crate) epoch: u64,
    pub(crate) voters: u64,
    pub(crate) high: u64,
    pub(crate) k: u32,
    /// The address of the voter asked for in `config`, if it is one.
    pub(crate) voter_addr: Option<SocketAddrV4>,
}

impl Tallies {
    /// # Safety
    /// `shared` points to a `QuorumShared` that stays valid, 8-aligned, and
    /// is only accessed atomically (by this library and the program) for as
    /// long as the `Tallies` lives.
    pub(crate) unsafe fn new(shared: NonNull<QuorumShared>) -> Tallies {
        Tallies(shared)
    }

    fn u64_at(&self, field: *mut u64) -> &AtomicU64 {
        // SAFETY: `field` points into the live, 8-aligned struct (see `new`),
        // and every access to it is atomic.
        unsafe { AtomicU64::from_ptr(field) }
    }

    fn generation(&self) -> &AtomicU64 {
        // SAFETY: a field projection inside the valid struct (see `new`).
        self.u64_at(unsafe { addr_of_mut!((*self.0.as_ptr()).generation) })
    }
    fn epoch(&self) -> &AtomicU64 {
        // SAFETY: as above.
        self.u64_at(unsafe { addr_of_mut!((*self.0.as_ptr()).epoch) })
    }
    fn voters(&self) -> &AtomicU64 {
        // SAFETY: as above.
        self.u64_at(unsafe { addr_of_mut!((*self.0.as_ptr()).voters) })
    }
    fn high(&self) -> &AtomicU64 {
        // SAFETY: as above.
        self.u64_at(unsafe { addr_of_mut!((*self.0.as_ptr()).high) })
    }
    fn k(&self) -> &AtomicU32 {
        // SAFETY: as above; `k` is 4-aligned and accessed atomically.
        unsafe { AtomicU32::from_ptr(addr_of_mut!((*self.0.as_ptr()).k)) }
    }
    fn voter_addr(&self, voter: usize) -> (&AtomicU32, &AtomicU16) {
        assert!(voter < MAX_VOTERS as usize);
        // SAFETY: inside the valid struct, `voter` within the array; the
        // address is 4-aligned and the port 2-aligned (pinned by
        // include/elec_quorum.h), and both are accessed atomically.
        unsafe {
            let slot = addr_of_mut!((*self.0.as_ptr()).voter_addr[voter]);
            (
                AtomicU32::from_ptr(addr_of_mut!((*slot).addr)),
                AtomicU16::from_ptr(addr_of_mut!((*slot).port)),
            )
        }
    }
    fn span(&self) -> &AtomicU16 {
        // SAFETY: as above; 2-aligned, accessed atomically.
        unsafe { AtomicU16::from_ptr(addr_of_mut!((*self.0.as_ptr()).span)) }
    }
    fn complete_cell(&self) -> &AtomicU64 {
        // SAFETY: as above.
        self.u64_at(unsafe { addr_of_mut!((*self.0.as_ptr()).complete) })
    }
    fn acked(&self, voter: usize) -> &AtomicU64 {
        assert!(voter < MAX_VOTERS as usize);
        // SAFETY: as above; `voter` is within the array.
        self.u64_at(unsafe { addr_of_mut!((*self.0.as_ptr()).acked[voter]) })
    }

    /// Installs a configuration: a new epoch, voter set and quorum size,
    /// with rounds up to `high` counted. Tallies of earlier configurations
    /// become stale at once. Only one thread may configure at a time.
    pub(crate) fn configure(&self, epoch: u64, voters: &[(u16, SocketAddrV4)], k: u32, high: u64) {
        let generation = self.generation().load(SeqCst);
        let writing = generation | 1;
        self.generation().store(writing, SeqCst);
        self.epoch().store(epoch, SeqCst);
        let mut set = 0u64;
        for &(voter, addr) in voters {
            let voter = usize::from(voter);
            assert!(voter < MAX_VOTERS as usize, "checked by the caller");
            set |= 1 << voter;
            let (ip, port) = self.voter_addr(voter);
            ip.store(u32::from_ne_bytes(addr.ip().octets()), SeqCst);
            port.store(addr.port().to_be(), SeqCst);
        }
        self.voters().store(set, SeqCst);
        // The program's scans stop at the highest voter.
        self.span().store(64 - set.leading_zeros() as u16, SeqCst);
        self.high().store(high.min(MAX_ROUND), SeqCst);
        self.k().store(k, SeqCst);
        // The tags alone keep epochs apart until they wrap around (65535
        // configurations later); zeroing keeps them apart after that too. A
        // program run still holding the old configuration lasts
        // microseconds and writes its old tag, which the next configuration
        // zeroes again.
        self.complete_cell().store(0, SeqCst);
        for voter in 0..MAX_VOTERS as usize {
            self.acked(voter).store(0, SeqCst);
        }
        self.generation().store(writing + 1, SeqCst);
    }

    /// Counts rounds up to `high` from now on (never lowers the window).
    pub(crate) fn extend(&self, high: u64) {
        self.high().fetch_max(high.min(MAX_ROUND), SeqCst);
    }

    /// The current configuration, or `None` before the first `configure`,
    /// with the address of `voter` if it is one.
    pub(crate) fn config(&self, voter: u16) -> Option<Config> {
        loop {
            let generation = self.generation().load(SeqCst);
            if generation == 0 {
                return None;
            }
            let voters = self.voters().load(SeqCst);
            let voter_addr = (voter < MAX_VOTERS as u16 && voters & 1 << voter != 0).then(|| {
                let (ip, port) = self.voter_addr(usize::from(voter));
                SocketAddrV4::new(
                    ip.load(SeqCst).to_ne_bytes().into(),
                    u16::from_be(port.load(SeqCst)),
                )
            });
            let config = Config {
                generation,
                epoch: self.epoch().load(SeqCst),
                voters,
                high: self.high().load(SeqCst),
                k: self.k().load(SeqCst),
                voter_addr,
            };
            if generation & 1 == 0 && self.generation().load(SeqCst) == generation {
                return Some(config);
            }
            std::hint::spin_loop();
        }
    }

    /// Whether `config` is still the configuration in place.
    pub(crate) fn is_current(&self, config: &Config) -> bool {
        self.generation().load(SeqCst) == config.generation
    }

    /// The highest round acknowledged by a quorum in `config`.
    pub(crate) fn complete(&self, config: &Config) -> u64 {
        round_of(self.complete_cell().load(SeqCst), tag_of(config.generation))
    }

    /// The voters that have acknowledged `round` in `config`.
    pub(crate) fn voters_at(&self, config: &Config, round: u64) -> u64 {
        let tag = tag_of(config.generation);
        (0..MAX_VOTERS as usize)
            .filter(|&v| config.voters & (1 << v) != 0)
            .filter(|&v| round > 0 && round_of(self.acked(v).load(SeqCst), tag) >= round)
            .fold(0, |set, v| set | 1 << v)
    }

    /// Counts `ack`, received from `from`, under `config` (read for
    /// `ack.voter`), as the program would have.
    pub(crate) fn tally(&self, config: &Config, ack: &Ack, from: SocketAddrV4) -> Decision {
        if ack.epoch != config.epoch || config.k == 0 || config.k > MAX_VOTERS {
            return Decision::OtherEpoch;
        }
        let voter = usize::from(ack.voter);
        if config.voter_addr != Some(from) {
            return Decision::UnknownVoter;
        }
        if ack.round == 0 || ack.round > config.high || ack.round > MAX_ROUND {
            return Decision::OutsideWindow;
        }
        let tag = tag_of(config.generation);
        let tagged = tag << TAG_SHIFT | ack.round;
        let cell = self.acked(voter);
        let mut raised = false;
        let mut old = cell.load(SeqCst);
        while round_of(old, tag) < ack.round {
            // As the program: never overwrite a reconfiguration's tally.
            if self.generation().load(SeqCst) != config.generation {
                return Decision::OtherEpoch;
            }
            match cell.compare_exchange(old, tagged, SeqCst, SeqCst) {
                Ok(_) => {
                    raised = true;
                    break;
                }
                Err(now) => old = now,
            }
        }
        let mut first = true;
        loop {
            let old = self.complete_cell().load(SeqCst);
            let seen = round_of(old, tag);
            if ack.round <= seen {
                return if first {
                    Decision::Late
                } else {
                    Decision::Counted
                };
            }
            // Even for a duplicate: its first copy may have raised the tally
            // in the kernel and lost the race for `complete`.
            let highest = self.kth_highest(tag, config.voters, config.k);
            if highest <= seen {
                return if raised {
                    Decision::Counted
                } else {
                    Decision::Duplicate
                };
            }
            let new = tag << TAG_SHIFT | highest;
            if self
                .complete_cell()
                .compare_exchange(old, new, SeqCst, SeqCst)
                .is_ok()
            {
                return Decision::Quorum;
            }
            first = false;
        }
    }

    /// The highest round that at least `k` of `voters` have acknowledged.
    fn kth_highest(&self, tag: u64, voters: u64, k: u32) -> u64 {
        let mut rounds: Vec<u64> = (0..MAX_VOTERS as usize)
            .filter(|&v| voters & (1 << v) != 0)
            .map(|v| round_of(self.acked(v).load(SeqCst), tag))
            .collect();
        rounds.sort_unstable_by(|a, b| b.cmp(a));
        rounds.get(k as usize - 1).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn heap() -> (Box<QuorumShared>, Tallies) {
        let mut shared = Box::<QuorumShared>::default();
        // SAFETY: the box outlives the view in each test (dropped after it).
        let tallies = unsafe { Tallies::new(NonNull::from(&mut *shared)) };
        (shared, tallies)
    }

    fn ack(epoch: u64, round: u64, voter: u16) -> Ack {
        Ack {
            epoch,
            round,
            voter,
        }
    }

    fn addr(voter: u16) -> SocketAddrV4 {
        SocketAddrV4::new([10, 0, 0, voter as u8 + 1].into(), 7000)
    }

    /// Voters numbered by the bits of `set`.
    fn voters(set: u64) -> Vec<(u16, SocketAddrV4)> {
        (0..64)
            .filter(|v| set & 1 << v != 0)
            .map(|v| (v, addr(v)))
            .collect()
    }

    /// Tallies `a` as received from its voter's address.
    fn count(t: &Tallies, a: Ack) -> Decision {
        let config = t.config(a.voter).unwrap();
        t.tally(&config, &a, addr(a.voter))
    }

    #[test]
    fn the_kth_ack_completes_and_only_it() {
        let (_mem, t) = heap();
        t.configure(1, &voters(0b11111), 3, 100);
        let c = t.config(0).unwrap();
        assert_eq!(count(&t, ack(1, 1, 0)), Decision::Counted);
        assert_eq!(count(&t, ack(1, 1, 0)), Decision::Duplicate);
        assert_eq!(count(&t, ack(1, 1, 1)), Decision::Counted);
        assert_eq!(count(&t, ack(1, 1, 2)), Decision::Quorum);
        assert_eq!(t.complete(&c), 1);
        assert_eq!(count(&t, ack(1, 1, 3)), Decision::Late);
        assert_eq!(t.voters_at(&c, 1), 0b1111);
    }

    #[test]
    fn cumulative_acks_cover_lost_ones() {
        let (_mem, t) = heap();
        t.configure(1, &voters(0b111), 2, 100);
        let c = t.config(0).unwrap();
        assert_eq!(count(&t, ack(1, 10, 0)), Decision::Counted);
        // Voter 1's acks for 1..=7 were lost; its ack for 8 completes 8.
        assert_eq!(count(&t, ack(1, 8, 1)), Decision::Quorum);
        assert_eq!(t.complete(&c), 8);
        assert_eq!(count(&t, ack(1, 12, 1)), Decision::Quorum);
        assert_eq!(t.complete(&c), 10);
    }

    #[test]
    fn a_new_epoch_never_mixes_with_the_old() {
        let (_mem, t) = heap();
        t.configure(1, &voters(0b111), 2, 100);
        let (old1, old2) = (t.config(1).unwrap(), t.config(2).unwrap());
        assert_eq!(count(&t, ack(1, 5, 0)), Decision::Counted);
        t.configure(2, &voters(0b111), 2, 100);
        let new = t.config(0).unwrap();
        assert_eq!(t.complete(&new), 0);
        assert_eq!(count(&t, ack(1, 5, 1)), Decision::OtherEpoch);
        // A run still holding the old configuration writes nothing.
        assert_eq!(t.tally(&old1, &ack(1, 5, 1), addr(1)), Decision::OtherEpoch);
        assert_eq!(t.tally(&old2, &ack(1, 5, 2), addr(2)), Decision::OtherEpoch);
        assert_eq!(t.complete(&new), 0);
        assert_eq!(count(&t, ack(2, 5, 1)), Decision::Counted);
        assert_eq!(count(&t, ack(2, 3, 2)), Decision::Quorum);
        assert_eq!(t.complete(&new), 3);
    }

    #[test]
    fn unsure_acks_are_not_counted() {
        let (_mem, t) = heap();
        t.configure(4, &voters(0b101), 1, 50);
        let c = t.config(0).unwrap();
        assert_eq!(count(&t, ack(4, 51, 0)), Decision::OutsideWindow);
        assert_eq!(count(&t, ack(4, 5, 1)), Decision::UnknownVoter);
        // Voter 0's ack from voter 2's address is no vote of voter 0.
        let c0 = t.config(0).unwrap();
        assert_eq!(t.tally(&c0, &ack(4, 5, 0), addr(2)), Decision::UnknownVoter);
        assert_eq!(count(&t, ack(3, 5, 0)), Decision::OtherEpoch);
        assert_eq!(t.complete(&c), 0);
        t.extend(60);
        assert_eq!(count(&t, ack(4, 51, 0)), Decision::Quorum);
    }

    #[test]
    fn tags_wrap_around_without_reviving_old_tallies() {
        let (_mem, t) = heap();
        t.configure(0, &voters(0b11), 2, 10);
        let first = t.config(0).unwrap();
        assert_eq!(count(&t, ack(0, 7, 0)), Decision::Counted);
        // Every configuration since then has had its own tag; the one that
        // comes round to the first tag again starts from nothing too.
        for epoch in 1..=0xffff {
            t.configure(epoch, &voters(0b11), 2, 10);
        }
        let again = t.config(0).unwrap();
        assert_eq!(tag_of(again.generation), tag_of(first.generation));
        assert_eq!(count(&t, ack(0xffff, 7, 1)), Decision::Counted);
        assert_eq!(t.complete(&again), 0);
    }

    #[test]
    fn an_advance_the_kernel_raised_but_did_not_publish_is_made_here() {
        let (_mem, t) = heap();
        t.configure(1, &voters(0b111), 2, 100);
        assert_eq!(count(&t, ack(1, 4, 0)), Decision::Counted);
        // The kernel raised voter 1's tally to 4, then lost every race for
        // `complete` and passed the ack on, unsure.
        let tag = tag_of(t.config(1).unwrap().generation);
        t.acked(1).store(tag << TAG_SHIFT | 4, SeqCst);
        assert_eq!(count(&t, ack(1, 4, 1)), Decision::Quorum);
        assert_eq!(t.complete(&t.config(0).unwrap()), 4);
    }
}
