//! The quorum collector: counts acknowledgements per round in the kernel and
//! wakes the application once per quorum (the gather half).
//!
//! Only cumulative acknowledgements are counted. An exact-round mode (an ack
//! for round r says nothing of r - 1) was considered and left out: the
//! protocols this crate serves (VR, Multi-Paxos, Raft) acknowledge prefixes,
//! where a cumulative ack makes a lost ack harmless and costs one word per
//! voter; exact rounds would need a window of per-round voter sets in the
//! map (Electrode's 1024-slot bitset array), a rule for rounds that fall out
//! of it, and they make every lost ack a retransmission. A protocol with
//! independent rounds (EPaxos-style instances) can still use the collector
//! per instance stream, or count in user space (`Verdict::OutsideWindow`
//! acks pass untouched).

mod tally;

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::header::{Ack, MAX_VOTERS};
use crate::kernel::{attach_or_fall_back, Collector, QuorumShared, QUORUM_COUNTERS};
use crate::sys::SharedMemory;
use crate::{Error, Mode};
use tally::{tag_of, Decision, Tallies};

/// Collects acknowledgements ([`Ack`]s) for the rounds an application sends,
/// and tells it once per round range that k voters have acknowledged.
///
/// In the kernel mode, a TC ingress program on the interface counts the
/// acks that arrive for the collector's UDP port, drops those that do not
/// complete a quorum (and duplicates, and acks for rounds complete already),
/// and passes to the socket only the ack that completes one: the
/// application's user space wakes up once per quorum instead of once per
/// ack. Whatever the program is not sure about passes untouched: acks of
/// another epoch, of unknown voters, for rounds outside the window, and
/// every datagram to the port that is not an ack. In the user-space mode the
/// same algorithm runs in [`Quorum::receive`]; the application code is the
/// same in both (see the example below).
///
/// Acknowledgements are cumulative: an ack for round r covers every round
/// up to r from that voter, so a lost ack is covered by the voter's next
/// one, and one quorum may complete several rounds at once. An ack's own
/// payload (after the header) reaches the application only when the ack
/// completes a quorum or is not counted.
///
/// # Example
///
/// ```no_run
/// use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
/// use elec_broadcast::{Quorum, Verdict};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let socket = UdpSocket::bind("10.0.0.1:7000")?;
/// let quorum = Quorum::new("eth0", 7000)?;
/// // Epoch 1, voters 1..=6 at 10.0.0.2..=7, port 7000; a quorum of 3
/// // acks (a leader of 7 replicas needs 3 more).
/// let voters: Vec<(u16, SocketAddrV4)> = (1..=6)
///     .map(|v| (v, SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1 + v as u8), 7000)))
///     .collect();
/// quorum.configure(1, &voters, 3)?;
/// quorum.extend(1); // round 1 is out
/// let mut buf = [0u8; 2048];
/// loop {
///     let (len, from) = socket.recv_from(&mut buf)?;
///     match quorum.receive(&buf[..len], from) {
///         Verdict::Quorum { round } => println!("rounds up to {round} are committed"),
///         Verdict::NotAnAck => { /* the application's own message */ }
///         _ => {}
///     }
/// }
/// # }
/// ```
pub struct Quorum {
    // Declared before the memory it points into.
    tallies: Tallies,
    backend: Backend,
    /// The highest `complete` handed to the application, tagged.
    reported: AtomicU64,
    /// Decisions made in user space, in the order of `Decision`.
    user_space: [AtomicU64; QUORUM_COUNTERS],
    configuring: Mutex<()>,
    fallback_reason: Option<Error>,
}

enum Backend {
    Kernel(Box<Collector>),
    UserSpace(SharedMemory<QuorumShared>),
}

/// Which ingress hook the kernel collector runs on.
///
/// TC is the default: it works on every device, and on the veth pairs of
/// one host it measured no slower than XDP (docs/paxos.md). XDP runs before
/// the kernel allocates a socket buffer, so on a NIC with native XDP the
/// acks it drops cost less; it sees no checksum offload result, so it
/// verifies checksums itself more often.
///
/// # Example
///
/// ```no_run
/// use elec_broadcast::{Ingress, Mode, Quorum};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// assert_eq!(Ingress::default(), Ingress::Tc);
/// // On a NIC with native XDP: count acks before socket buffers exist.
/// let quorum = Quorum::with_ingress("eth0", 7000, Mode::Kernel, Ingress::Xdp)?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ingress {
    /// TC ingress (TCX where the kernel has it, else clsact).
    #[default]
    Tc,
    /// XDP (native where the driver supports it).
    Xdp,
}

/// What [`Quorum::receive`] made of a datagram.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::net::SocketAddrV4;
/// use elec_broadcast::{Ack, Mode, Quorum, Verdict};
///
/// let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
/// let voter = |v: u16| SocketAddrV4::new([10, 0, 0, v as u8].into(), 7000);
/// quorum.configure(1, &[(1, voter(1)), (2, voter(2)), (3, voter(3))], 2)?;
/// quorum.extend(10);
/// let ack = |v: u16, round| Ack { epoch: 1, round, voter: v }.to_bytes();
/// assert_eq!(quorum.receive(&ack(1, 3), voter(1).into()), Verdict::Counted);
/// assert_eq!(quorum.receive(&ack(1, 3), voter(1).into()), Verdict::Duplicate);
/// assert_eq!(quorum.receive(&ack(2, 2), voter(2).into()), Verdict::Quorum { round: 2 });
/// assert_eq!(quorum.receive(&ack(3, 1), voter(3).into()), Verdict::Late);
/// assert_eq!(quorum.receive(&ack(3, 11), voter(3).into()), Verdict::OutsideWindow);
/// assert_eq!(quorum.receive(&ack(4, 5), voter(3).into()), Verdict::UnknownVoter);
/// assert_eq!(quorum.receive(b"hello", voter(3).into()), Verdict::NotAnAck);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Every round up to `round` is now acknowledged by a quorum: the
    /// application's commit point advanced to `round`.
    Quorum {
        /// The highest round with a quorum.
        round: u64,
    },
    /// Counted towards a quorum that is not complete yet.
    Counted,
    /// The voter had acknowledged this round already.
    Duplicate,
    /// The round was complete already.
    Late,
    /// An ack of another epoch (or nothing configured yet): not counted.
    OtherEpoch,
    /// An ack for round 0 or a round above the window: not counted.
    OutsideWindow,
    /// An ack from a voter not in the set: not counted.
    UnknownVoter,
    /// Not an ack: the application's own datagram.
    NotAnAck,
}

/// How many acks met each fate, in the kernel or in user space.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use std::net::SocketAddrV4;
/// # use elec_broadcast::{Ack, Mode, Quorum};
/// # let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
/// # let voter = |v: u16| SocketAddrV4::new([10, 0, 0, v as u8].into(), 7000);
/// # quorum.configure(1, &[(1, voter(1)), (2, voter(2)), (3, voter(3))], 2)?;
/// # quorum.extend(10);
/// # let ack = |v: u16, round| Ack { epoch: 1, round, voter: v }.to_bytes();
/// use elec_broadcast::Decisions;
///
/// quorum.receive(&ack(1, 1), voter(1).into());
/// quorum.receive(&ack(2, 1), voter(2).into());
/// quorum.receive(&ack(2, 1), voter(2).into());
/// let decisions: Decisions = quorum.counters()?.user_space;
/// assert_eq!((decisions.counted, decisions.quorums, decisions.late), (1, 1, 1));
/// let dropped_in_kernel = decisions.counted + decisions.duplicates + decisions.late;
/// println!("{dropped_in_kernel} acks would not have woken the application up");
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Decisions {
    /// Acks that completed a quorum (passed to the application).
    pub quorums: u64,
    /// Acks counted towards a quorum not complete yet (dropped in the kernel).
    pub counted: u64,
    /// Acks for a round the voter had acknowledged already (dropped).
    pub duplicates: u64,
    /// Acks for a round already complete (dropped).
    pub late: u64,
    /// Acks of another epoch, or before any configuration (passed).
    pub other_epoch: u64,
    /// Acks for round 0 or above the window (passed).
    pub outside_window: u64,
    /// Acks from voters not in the set (passed).
    pub unknown_voter: u64,
    /// Datagrams to the port that are not acks (passed).
    pub not_acks: u64,
    /// Acks the kernel could not verify the checksum of, or lost a race on
    /// (passed, and counted in user space).
    pub unverified: u64,
}

impl Decisions {
    /// From counts in the order of `struct eb_quorum_counters` (and of
    /// `Decision`, which user space counts in).
    fn from_counts(counts: [u64; QUORUM_COUNTERS]) -> Decisions {
        let [quorums, counted, duplicates, late, other_epoch, outside_window, unknown_voter, not_acks, unverified] =
            counts;
        Decisions {
            quorums,
            counted,
            duplicates,
            late,
            other_epoch,
            outside_window,
            unknown_voter,
            not_acks,
            unverified,
        }
    }
}

/// The collector's counters: what the program decided, and what
/// [`Quorum::receive`] decided for the datagrams that reached user space.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use elec_broadcast::{Decisions, Mode, Quorum, QuorumCounters};
///
/// let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
/// quorum.receive(b"not an ack", "10.0.0.2:7000".parse()?);
/// let counters: QuorumCounters = quorum.counters()?;
/// assert_eq!(counters.kernel, Decisions::default()); // no program in user space
/// assert_eq!(counters.user_space.not_acks, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuorumCounters {
    /// Decisions of the kernel program (all zero in the user-space mode).
    pub kernel: Decisions,
    /// Decisions of [`Quorum::receive`].
    pub user_space: Decisions,
}

impl Quorum {
    /// A collector for the acks that arrive at UDP port `port` through
    /// `interface`: in the kernel where possible, else in user space (see
    /// [`Quorum::fallback_reason`]).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use elec_broadcast::{Mode, Quorum};
    ///
    /// let quorum = Quorum::new("eth0", 7000)?;
    /// if quorum.mode() == Mode::UserSpace {
    ///     eprintln!("counting acks in user space: {:?}", quorum.fallback_reason());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(interface: &str, port: u16) -> Result<Quorum, Error> {
        Quorum::with_mode(interface, port, Mode::Auto)
    }

    /// Like [`Quorum::new`] with an explicit [`Mode`]. With
    /// [`Mode::Kernel`], a kernel program that cannot be used is an error.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use elec_broadcast::{Error, Mode, Quorum};
    ///
    /// // User space needs no privileges: counted by `receive`, on any interface.
    /// let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
    /// assert_eq!(quorum.mode(), Mode::UserSpace);
    /// // Port 0 is refused.
    /// let zero = Quorum::with_mode("lo", 0, Mode::UserSpace);
    /// assert!(matches!(zero, Err(Error::InvalidQuorum { .. })));
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_mode(interface: &str, port: u16, mode: Mode) -> Result<Quorum, Error> {
        Quorum::with_ingress(interface, port, mode, Ingress::Tc)
    }

    /// Like [`Quorum::with_mode`], on the given ingress hook.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use elec_broadcast::{Ingress, Mode, Quorum};
    ///
    /// // XDP, and an error rather than a fallback if the program cannot be used.
    /// let quorum = Quorum::with_ingress("eth0", 7000, Mode::Kernel, Ingress::Xdp)?;
    /// assert_eq!(quorum.mode(), Mode::Kernel);
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_ingress(
        interface: &str,
        port: u16,
        mode: Mode,
        ingress: Ingress,
    ) -> Result<Quorum, Error> {
        if port == 0 {
            return Err(Error::InvalidQuorum {
                why: "the port is 0: give the UDP port the acks are sent to".into(),
            });
        }
        let (collector, fallback_reason) =
            attach_or_fall_back(interface, mode, "counting acks", |ifindex| {
                Collector::attach(interface, ifindex, port, ingress == Ingress::Xdp)
            })?;
        let backend = match collector {
            Some(collector) => Backend::Kernel(Box::new(collector)),
            None => Backend::UserSpace(SharedMemory::new()),
        };
        let shared = match &backend {
            Backend::Kernel(collector) => collector.shared(),
            Backend::UserSpace(memory) => memory.as_ptr(),
        };
        // SAFETY: the memory is the collector's mapping or the shared heap value, both
        // owned by `backend`, which drops after `tallies`; both are
        // 8-aligned and accessed only atomically.
        let tallies = unsafe { Tallies::new(NonNull::new(shared).expect("not null")) };
        Ok(Quorum {
            tallies,
            backend,
            reported: AtomicU64::new(0),
            user_space: Default::default(),
            configuring: Mutex::new(()),
            fallback_reason,
        })
    }

    /// The backend in use: [`Mode::Kernel`] or [`Mode::UserSpace`].
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use elec_broadcast::{Mode, Quorum};
    ///
    /// let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
    /// assert_eq!(quorum.mode(), Mode::UserSpace);
    /// # Ok(())
    /// # }
    /// ```
    pub fn mode(&self) -> Mode {
        match self.backend {
            Backend::Kernel(_) => Mode::Kernel,
            Backend::UserSpace(_) => Mode::UserSpace,
        }
    }

    /// Why [`Mode::Auto`] fell back to user space, if it did.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use elec_broadcast::{Mode, Quorum};
    ///
    /// let quorum = Quorum::new("eth0", 7000)?; // Mode::Auto
    /// match quorum.fallback_reason() {
    ///     Some(reason) => eprintln!("counting in user space: {reason}"),
    ///     None => assert_eq!(quorum.mode(), Mode::Kernel),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn fallback_reason(&self) -> Option<&Error> {
        self.fallback_reason.as_ref()
    }

    /// Starts counting `epoch`: acks from `voters` (each a number below
    /// [`MAX_VOTERS`], no repeats, with the address its acks come from: an
    /// ack in a voter's name from anywhere else is not counted), `k` of
    /// which make a quorum. Tallies of the previous epoch are discarded at
    /// once, and no ack of another epoch is ever counted in this one. The
    /// window is empty until [`Quorum::extend`].
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::net::SocketAddrV4;
    /// use elec_broadcast::{Error, Mode, Quorum};
    ///
    /// let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
    /// let voter = |v: u16| (v, SocketAddrV4::new([10, 0, 0, v as u8].into(), 7000));
    /// // Epoch 4: voters 1..=4, any 2 of them make a quorum.
    /// quorum.configure(4, &[voter(1), voter(2), voter(3), voter(4)], 2)?;
    /// // A quorum larger than the voter set, or a voter listed twice, is refused.
    /// let too_many = quorum.configure(5, &[voter(1), voter(2)], 3);
    /// assert!(matches!(too_many, Err(Error::InvalidQuorum { .. })));
    /// assert!(quorum.configure(5, &[voter(1), voter(1)], 1).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn configure(
        &self,
        epoch: u64,
        voters: &[(u16, SocketAddrV4)],
        k: usize,
    ) -> Result<(), Error> {
        let mut set = 0u64;
        for &(voter, _) in voters {
            if voter >= MAX_VOTERS {
                return Err(Error::InvalidQuorum {
                    why: format!("voter {voter} is not below {MAX_VOTERS}"),
                });
            }
            if set & 1 << voter != 0 {
                return Err(Error::InvalidQuorum {
                    why: format!("voter {voter} is listed twice"),
                });
            }
            set |= 1 << voter;
        }
        if k == 0 || k > voters.len() {
            return Err(Error::InvalidQuorum {
                why: format!("a quorum of {k} out of {} voters", voters.len()),
            });
        }
        let _one_at_a_time = self.configuring.lock().unwrap_or_else(|e| e.into_inner());
        self.tallies.configure(epoch, voters, k as u32, 0);
        Ok(())
    }

    /// Counts acks for rounds up to `high` (the highest round sent so far);
    /// acks for later rounds are not counted. Never lowers the window. A
    /// plain memory write, no system call.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::SocketAddrV4;
    /// # use elec_broadcast::{Ack, Mode, Quorum, Verdict};
    /// # let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
    /// # let voter = |v: u16| SocketAddrV4::new([10, 0, 0, v as u8].into(), 7000);
    /// # quorum.configure(1, &[(1, voter(1)), (2, voter(2)), (3, voter(3))], 2)?;
    /// # quorum.extend(10);
    /// # let ack = |v: u16, round| Ack { epoch: 1, round, voter: v }.to_bytes();
    /// assert_eq!(quorum.receive(&ack(1, 12), voter(1).into()), Verdict::OutsideWindow);
    /// quorum.extend(12); // round 12 is sent
    /// assert_eq!(quorum.receive(&ack(1, 12), voter(1).into()), Verdict::Counted);
    /// quorum.extend(5); // does not lower the window
    /// assert_eq!(quorum.receive(&ack(2, 12), voter(2).into()), Verdict::Quorum { round: 12 });
    /// # Ok(())
    /// # }
    /// ```
    pub fn extend(&self, high: u64) {
        self.tallies.extend(high);
    }

    /// Decides what `datagram`, received on the collector's port, means:
    /// counts it if it is an ack the kernel left to user space, and reports
    /// [`Verdict::Quorum`] whenever the highest complete round advanced since
    /// the last report (whoever counted the ack that completed it).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::SocketAddrV4;
    /// # use elec_broadcast::{Ack, Mode, Quorum, Verdict};
    /// # let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
    /// # let voter = |v: u16| SocketAddrV4::new([10, 0, 0, v as u8].into(), 7000);
    /// # quorum.configure(1, &[(1, voter(1)), (2, voter(2)), (3, voter(3))], 2)?;
    /// # quorum.extend(10);
    /// # let ack = |v: u16, round| Ack { epoch: 1, round, voter: v }.to_bytes();
    /// // Voters 1, 2, 3 (at 10.0.0.1..=3), 2 of them a quorum, rounds up to 10 sent.
    /// assert_eq!(quorum.receive(&ack(1, 5), voter(1).into()), Verdict::Counted);
    /// assert_eq!(quorum.receive(&ack(2, 4), voter(2).into()), Verdict::Quorum { round: 4 });
    /// assert_eq!(quorum.receive(&ack(3, 5), voter(3).into()), Verdict::Quorum { round: 5 });
    /// // Voter 1's ack from another address is no vote of voter 1.
    /// let elsewhere = "10.0.0.9:7000".parse()?;
    /// assert_eq!(quorum.receive(&ack(1, 7), elsewhere), Verdict::UnknownVoter);
    /// # Ok(())
    /// # }
    /// ```
    pub fn receive(&self, datagram: &[u8], from: SocketAddr) -> Verdict {
        let Ok((ack, _)) = Ack::parse(datagram) else {
            self.count(Decision::NotAnAck);
            return Verdict::NotAnAck;
        };
        let decision = match (from, self.tallies.config(ack.voter)) {
            (_, None) => Decision::OtherEpoch,
            (SocketAddr::V6(_), _) => Decision::UnknownVoter,
            (SocketAddr::V4(from), Some(config)) => {
                let decision = self.tallies.tally(&config, &ack, from);
                // Only an ack of this configuration reports an advance: any
                // other datagram keeps its own meaning for the application.
                if matches!(
                    decision,
                    Decision::OtherEpoch | Decision::UnknownVoter | Decision::OutsideWindow
                ) {
                    self.count(decision);
                    return verdict(decision);
                }
                if let Some(round) = self.advance(&config) {
                    self.count(Decision::Quorum);
                    return Verdict::Quorum { round };
                }
                decision
            }
        };
        self.count(decision);
        verdict(decision)
    }

    /// The complete round of `config`, if it advanced since it was last
    /// reported.
    fn advance(&self, config: &tally::Config) -> Option<u64> {
        let complete = self.tallies.complete(config);
        let tagged = tag_of(config.generation) << 48 | complete;
        let mut previous = self.reported.load(Ordering::SeqCst);
        loop {
            let same_configuration = previous >> 48 == tagged >> 48;
            if same_configuration && previous >= tagged {
                return None;
            }
            // A report of another configuration: ours must be the current
            // one (a caller holding an older one reports nothing).
            if !same_configuration && !self.tallies.is_current(config) {
                return None;
            }
            match self.reported.compare_exchange(
                previous,
                tagged,
                Ordering::SeqCst,
                Ordering::SeqCst,
            ) {
                Ok(_) => return (complete > 0).then_some(complete),
                Err(now) => previous = now,
            }
        }
    }

    /// The highest complete round, if it advanced since it was last
    /// reported (by this or by [`Quorum::receive`]). A memory read, no
    /// system call: call it on every wake-up or timer, and no advance is
    /// missed when the datagram that reported it was lost on the way to the
    /// application (a full socket buffer, say).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::SocketAddrV4;
    /// # use elec_broadcast::{Ack, Mode, Quorum, Verdict};
    /// # let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
    /// # let voter = |v: u16| SocketAddrV4::new([10, 0, 0, v as u8].into(), 7000);
    /// # quorum.configure(1, &[(1, voter(1)), (2, voter(2)), (3, voter(3))], 2)?;
    /// # quorum.extend(10);
    /// # let ack = |v: u16, round| Ack { epoch: 1, round, voter: v }.to_bytes();
    /// assert_eq!(quorum.advanced(), None);
    /// quorum.receive(&ack(1, 3), voter(1).into());
    /// assert_eq!(quorum.receive(&ack(2, 3), voter(2).into()), Verdict::Quorum { round: 3 });
    /// // Reported once: `receive` reported round 3, so there is nothing new.
    /// assert_eq!(quorum.advanced(), None);
    /// // On every wake-up or timer tick:
    /// if let Some(round) = quorum.advanced() {
    ///     println!("commit up to round {round}");
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn advanced(&self) -> Option<u64> {
        let config = self.tallies.config(0)?;
        let round = self.advance(&config)?;
        self.count(Decision::Quorum);
        Some(round)
    }

    /// The highest round acknowledged by a quorum in the current epoch (0
    /// if none).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::SocketAddrV4;
    /// # use elec_broadcast::{Ack, Mode, Quorum, Verdict};
    /// # let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
    /// # let voter = |v: u16| SocketAddrV4::new([10, 0, 0, v as u8].into(), 7000);
    /// # quorum.configure(1, &[(1, voter(1)), (2, voter(2)), (3, voter(3))], 2)?;
    /// # quorum.extend(10);
    /// # let ack = |v: u16, round| Ack { epoch: 1, round, voter: v }.to_bytes();
    /// assert_eq!(quorum.complete(), 0);
    /// quorum.receive(&ack(1, 6), voter(1).into());
    /// quorum.receive(&ack(3, 8), voter(3).into());
    /// assert_eq!(quorum.complete(), 6); // two of the three have round 6
    /// # Ok(())
    /// # }
    /// ```
    pub fn complete(&self) -> u64 {
        self.tallies
            .config(0)
            .map_or(0, |config| self.tallies.complete(&config))
    }

    /// The voters that have acknowledged `round` of the current epoch so far.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::SocketAddrV4;
    /// # use elec_broadcast::{Ack, Mode, Quorum, Verdict};
    /// # let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
    /// # let voter = |v: u16| SocketAddrV4::new([10, 0, 0, v as u8].into(), 7000);
    /// # quorum.configure(1, &[(1, voter(1)), (2, voter(2)), (3, voter(3))], 2)?;
    /// # quorum.extend(10);
    /// # let ack = |v: u16, round| Ack { epoch: 1, round, voter: v }.to_bytes();
    /// quorum.receive(&ack(1, 6), voter(1).into());
    /// quorum.receive(&ack(3, 2), voter(3).into());
    /// assert_eq!(quorum.voters(2), vec![1, 3]); // acks are cumulative
    /// assert_eq!(quorum.voters(6), vec![1]);
    /// assert!(quorum.voters(7).is_empty());
    /// # Ok(())
    /// # }
    /// ```
    pub fn voters(&self, round: u64) -> Vec<u16> {
        let Some(config) = self.tallies.config(0) else {
            return Vec::new();
        };
        let set = self.tallies.voters_at(&config, round);
        (0..MAX_VOTERS).filter(|&v| set & 1 << v != 0).collect()
    }

    /// What the kernel and [`Quorum::receive`] decided so far.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::SocketAddrV4;
    /// # use elec_broadcast::{Ack, Mode, Quorum, Verdict};
    /// # let quorum = Quorum::with_mode("lo", 7000, Mode::UserSpace)?;
    /// # let voter = |v: u16| SocketAddrV4::new([10, 0, 0, v as u8].into(), 7000);
    /// # quorum.configure(1, &[(1, voter(1)), (2, voter(2)), (3, voter(3))], 2)?;
    /// # quorum.extend(10);
    /// # let ack = |v: u16, round| Ack { epoch: 1, round, voter: v }.to_bytes();
    /// quorum.receive(&ack(1, 1), voter(1).into());
    /// quorum.receive(&ack(1, 1), voter(1).into());
    /// quorum.receive(&ack(2, 1), voter(2).into());
    /// let counters = quorum.counters()?;
    /// assert_eq!(counters.user_space.counted, 1);
    /// assert_eq!(counters.user_space.duplicates, 1);
    /// assert_eq!(counters.user_space.quorums, 1);
    /// assert_eq!(counters.kernel.quorums, 0); // user-space mode
    /// # Ok(())
    /// # }
    /// ```
    pub fn counters(&self) -> io::Result<QuorumCounters> {
        let kernel = match &self.backend {
            Backend::Kernel(collector) => Decisions::from_counts(collector.counters()?),
            Backend::UserSpace(_) => Decisions::default(),
        };
        let user_space = self
            .user_space
            .each_ref()
            .map(|c| c.load(Ordering::Relaxed));
        Ok(QuorumCounters {
            kernel,
            user_space: Decisions::from_counts(user_space),
        })
    }

    fn count(&self, decision: Decision) {
        self.user_space[decision as usize].fetch_add(1, Ordering::Relaxed);
    }
}

fn verdict(decision: Decision) -> Verdict {
    match decision {
        // A quorum whose advance another call of `receive` reported first.
        Decision::Quorum | Decision::Counted | Decision::Unverified => Verdict::Counted,
        Decision::Duplicate => Verdict::Duplicate,
        Decision::Late => Verdict::Late,
        Decision::OtherEpoch => Verdict::OtherEpoch,
        Decision::OutsideWindow => Verdict::OutsideWindow,
        Decision::UnknownVoter => Verdict::UnknownVoter,
        Decision::NotAnAck => Verdict::NotAnAck,
    }
}
