//! Fast reply: the next datagram of a sequence is queued for the application
//! and acknowledged in the kernel, without waking the application up.

use std::collections::BTreeMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{BorrowedFd, RawFd};
use std::ptr::{addr_of_mut, NonNull};
use std::sync::atomic::{AtomicU16, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::header::{Ack, Sequenced, MAX_ROUND_NUMBER, MAX_VOTERS};
use crate::kernel::wire::{MAX_ROUND, REPLY_MAX_PAYLOAD, REPLY_QUIET as QUIET};
use crate::kernel::{attach_or_fall_back, KernelReplier, ReplyShared, REPLY_COUNTERS};
use crate::sys::SharedMemory;
use crate::{Error, Mode};

const TAG_SHIFT: u32 = 48;

// Indexes of `Replier::user_space`, in the order of `ReplyDecisions`.
const ACKED: usize = 0;
const GAPS: usize = 2;
const DUPLICATES: usize = 3;
const OTHER_EPOCH: usize = 4;
const FROZEN: usize = 5;
const NOT_SEQUENCED: usize = 6;
const ACK_FAILURES: usize = 9;

/// Longest UDP payload (the sequenced header included) the kernel queues:
/// a 9000-byte jumbo frame's. Longer datagrams go to the socket.
pub const MAX_QUEUED_PAYLOAD: usize = REPLY_MAX_PAYLOAD as usize;

/// Default size of the kernel's queue (the ring buffer): 4 MiB.
pub const DEFAULT_RING_BYTES: u32 = 4 << 20;

/// Takes the datagrams of a sequence ([`Sequenced`] header) in round order,
/// acknowledges each one to its sender with an [`Ack`] as soon as it is
/// queued for the application, and hands them to the application in order.
///
/// In the kernel mode a TC ingress program on the interface does the taking
/// for the datagrams that arrive at the replier's port: for the one whose
/// round is the next expected in the armed epoch, it copies it into a ring
/// buffer (read by [`Replier::drain`] through shared memory, no system call
/// per datagram) and only then sends the ack from the kernel: an ack always
/// means "queued in kernel memory for the application". Everything else
/// goes to the socket as usual: a gap, an earlier round, another epoch, a
/// frozen replier, a full ring. The application hands what the socket gets
/// to [`Replier::receive`], which takes the next round in user space the
/// same way (and acks it from user space). In the user-space mode every
/// datagram comes that way; the application code is the same (see the
/// example below).
///
/// # Example
///
/// ```no_run
/// use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
/// use elec_broadcast::{Receipt, Replier};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let socket = UdpSocket::bind("10.0.0.2:7000")?;
/// let replier = Replier::new("eth0", 7000, 2)?; // this host votes as voter 2
/// let leader = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 1), 7000);
/// replier.arm(1, 1, leader)?; // epoch 1, round 1 comes next, from the leader
/// let mut buf = [0u8; 9000];
/// loop {
///     replier.drain(|datagram| println!("round {}", datagram.header.round))?;
///     let (len, from) = socket.recv_from(&mut buf)?;
///     match replier.receive(&socket, &buf[..len], from)? {
///         Receipt::Taken { .. } => {} // delivered by the next drain, in order
///         Receipt::Gap { header } => println!("missing rounds before {}", header.round),
///         Receipt::NotSequenced => { /* the application's own message */ }
///         _ => {}
///     }
/// }
/// # }
/// ```
///
/// # Order
/// [`Replier::drain`] delivers the taken datagrams of the armed epoch in
/// round order without gaps, whoever took them (ring or socket), starting at
/// the round given to [`Replier::arm`]; datagrams of other epochs (earlier
/// armings) that were taken and not drained yet come first. `drain` calls
/// its closure without holding any lock: the closure may use the replier. A datagram that
/// [`Replier::receive`] reports as `Gap`, `Duplicate`, `OtherEpoch` or
/// `Frozen` was neither taken nor acknowledged: the application decides
/// (buffer it, repair by state transfer, ignore it).
pub struct Replier {
    shared: NonNull<ReplyShared>,
    backend: Backend,
    voter: u16,
    inner: Mutex<Inner>,
    /// Decisions of `receive`, in the order of `ReplyDecisions`' fields.
    user_space: [AtomicU64; REPLY_COUNTERS],
    fallback_reason: Option<Error>,
}

// SAFETY: `shared` points into memory owned by `backend` (the program's
// mapping, or a box), accessed only atomically; the rest is Send + Sync
// (the kernel replier is only used under `inner`'s lock or through &self
// methods that are safe to call concurrently: libbpf's ring consumer is
// only called with `inner` locked).
unsafe impl Send for Replier {}
// SAFETY: as above.
unsafe impl Sync for Replier {}

enum Backend {
    Kernel(Box<KernelReplier>),
    UserSpace(SharedMemory<ReplyShared>),
}

#[derive(Default)]
struct Inner {
    /// Taken datagrams not delivered yet, by (epoch, round).
    pending: BTreeMap<(u64, u64), Datagram>,
    /// The armed epoch and the round `drain` delivers next in it.
    epoch: u64,
    deliver_next: u64,
}

/// A datagram taken in order: queued, acknowledged, and delivered by
/// [`Replier::drain`].
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
/// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
/// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
/// # let port = socket.local_addr()?.port();
/// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
/// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
/// # let sequenced = |epoch, round, body: &[u8]| {
/// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
/// #     datagram.extend_from_slice(body);
/// #     datagram
/// # };
/// use elec_broadcast::Datagram;
///
/// replier.arm(1, 1, from)?;
/// replier.receive(&socket, &sequenced(1, 1, b"put k v"), from.into())?;
/// replier.drain(|datagram: Datagram| {
///     assert_eq!(datagram.header, Sequenced { epoch: 1, round: 1, ack_port: from.port() });
///     assert_eq!((datagram.from, &datagram.payload[..]), (from, &b"put k v"[..]));
///     assert!(!datagram.from_kernel); // taken by `receive`, in user space
/// })?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Datagram {
    /// Its sequenced header.
    pub header: Sequenced,
    /// Who sent it.
    pub from: SocketAddrV4,
    /// The application's bytes, after the header.
    pub payload: Vec<u8>,
    /// Whether the kernel took and acknowledged it (else user space did).
    pub from_kernel: bool,
}

/// What [`Replier::receive`] made of a datagram from the socket.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
/// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
/// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
/// # let port = socket.local_addr()?.port();
/// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
/// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
/// # let sequenced = |epoch, round, body: &[u8]| {
/// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
/// #     datagram.extend_from_slice(body);
/// #     datagram
/// # };
/// replier.arm(1, 2, from)?; // round 2 comes next
/// let receive = |datagram: &[u8]| replier.receive(&socket, datagram, from.into());
/// assert_eq!(receive(&sequenced(1, 2, b""))?, Receipt::Taken { round: 2 });
/// assert!(matches!(receive(&sequenced(1, 5, b""))?, Receipt::Gap { header } if header.round == 5));
/// assert!(matches!(receive(&sequenced(1, 1, b""))?, Receipt::Duplicate { .. }));
/// assert!(matches!(receive(&sequenced(7, 3, b""))?, Receipt::OtherEpoch { .. }));
/// assert_eq!(receive(b"ping")?, Receipt::NotSequenced);
/// replier.freeze();
/// assert!(matches!(receive(&sequenced(1, 3, b""))?, Receipt::Frozen { .. }));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Receipt {
    /// The next round: taken and acknowledged; [`Replier::drain`] delivers it.
    Taken {
        /// Its round.
        round: u64,
    },
    /// A round after the next expected one: not taken, not acknowledged.
    Gap {
        /// Its header.
        header: Sequenced,
    },
    /// A round before the next expected one (taken before): not acknowledged again.
    Duplicate {
        /// Its header.
        header: Sequenced,
    },
    /// Another epoch or sender than the armed ones (or not armed yet).
    OtherEpoch {
        /// Its header.
        header: Sequenced,
    },
    /// The replier is frozen: nothing is taken.
    Frozen {
        /// Its header.
        header: Sequenced,
    },
    /// Not a sequenced datagram: the application's own.
    NotSequenced,
}

/// How many datagrams met each fate.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
/// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
/// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
/// # let port = socket.local_addr()?.port();
/// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
/// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
/// # let sequenced = |epoch, round, body: &[u8]| {
/// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
/// #     datagram.extend_from_slice(body);
/// #     datagram
/// # };
/// use elec_broadcast::ReplyDecisions;
///
/// replier.arm(1, 1, from)?;
/// replier.receive(&socket, &sequenced(1, 1, b"a"), from.into())?;
/// replier.receive(&socket, &sequenced(1, 1, b"a"), from.into())?; // a retransmission
/// let decisions: ReplyDecisions = replier.counters()?.user_space;
/// assert_eq!((decisions.acked, decisions.duplicates), (1, 1));
/// assert_eq!(decisions.ring_full + decisions.too_long, 0); // kernel only
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplyDecisions {
    /// Taken (queued) and acknowledged.
    pub acked: u64,
    /// Not taken: the kernel's ring was full (kernel only).
    pub ring_full: u64,
    /// Not taken: a round after the next expected one.
    pub gaps: u64,
    /// Not taken: a round before the next expected one.
    pub duplicates: u64,
    /// Not taken: another epoch, or while being re-armed.
    pub other_epoch: u64,
    /// Not taken: frozen.
    pub frozen: u64,
    /// Not a sequenced datagram.
    pub not_sequenced: u64,
    /// Not taken: too long for the ring (kernel only).
    pub too_long: u64,
    /// Not taken: wrong UDP checksum (kernel only; the stack drops it).
    pub bad_checksum: u64,
    /// Taken, but the ack could not be sent (the sender retransmits).
    pub ack_failures: u64,
}

impl ReplyDecisions {
    /// From counts in the order of `struct eb_reply_counters` (and of the
    /// indexes user space counts with).
    fn from_counts(counts: [u64; REPLY_COUNTERS]) -> ReplyDecisions {
        let [acked, ring_full, gaps, duplicates, other_epoch, frozen, not_sequenced, too_long, bad_checksum, ack_failures] =
            counts;
        ReplyDecisions {
            acked,
            ring_full,
            gaps,
            duplicates,
            other_epoch,
            frozen,
            not_sequenced,
            too_long,
            bad_checksum,
            ack_failures,
        }
    }
}

/// The replier's counters: what the program decided, and what
/// [`Replier::receive`] decided for the datagrams that reached user space.
///
/// # Example
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
/// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
/// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
/// # let port = socket.local_addr()?.port();
/// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
/// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
/// # let sequenced = |epoch, round, body: &[u8]| {
/// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
/// #     datagram.extend_from_slice(body);
/// #     datagram
/// # };
/// use elec_broadcast::{ReplyCounters, ReplyDecisions};
///
/// replier.receive(&socket, b"not sequenced", from.into())?;
/// let counters: ReplyCounters = replier.counters()?;
/// assert_eq!(counters.kernel, ReplyDecisions::default()); // no program in user space
/// assert_eq!(counters.user_space.not_sequenced, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplyCounters {
    /// Decisions of the kernel program (all zero in the user-space mode).
    pub kernel: ReplyDecisions,
    /// Decisions of [`Replier::receive`].
    pub user_space: ReplyDecisions,
}

/// A snapshot of the arming, read under the sequence lock.
#[derive(Clone, Copy)]
struct Arming {
    epoch: u64,
    armed: bool,
    tag: u64,
    sender: SocketAddrV4,
}

fn tag_of(generation: u64) -> u64 {
    (generation / 2) % 0xffff + 1
}

impl Replier {
    /// A replier for the sequenced datagrams that arrive at UDP port `port`
    /// through `interface`, acknowledging as voter `voter`: in the kernel
    /// where possible, else in user space (see [`Replier::fallback_reason`]).
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use elec_broadcast::{Mode, Replier};
    ///
    /// let replier = Replier::new("eth0", 7000, 2)?; // voter 2, acks from the kernel
    /// if replier.mode() == Mode::UserSpace {
    ///     eprintln!("acknowledging in user space: {:?}", replier.fallback_reason());
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn new(interface: &str, port: u16, voter: u16) -> Result<Replier, Error> {
        Replier::with_mode(interface, port, voter, Mode::Auto, DEFAULT_RING_BYTES)
    }

    /// Like [`Replier::new`] with an explicit [`Mode`] and the size of the
    /// kernel's queue in bytes (a power of two, at least one page; each
    /// queued datagram takes 512, 2016 or 9000 bytes of it, by size).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use elec_broadcast::{Error, Mode, Replier, DEFAULT_RING_BYTES, MAX_VOTERS};
    ///
    /// let replier = Replier::with_mode("lo", 7000, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// assert_eq!(replier.mode(), Mode::UserSpace);
    /// // The ring is a power of two of 4096 bytes or more; voters are below MAX_VOTERS.
    /// let odd_ring = Replier::with_mode("lo", 7000, 2, Mode::UserSpace, 5000);
    /// assert!(matches!(odd_ring, Err(Error::InvalidReply { .. })));
    /// assert!(Replier::with_mode("lo", 7000, MAX_VOTERS, Mode::UserSpace, 1 << 16).is_err());
    /// # Ok(())
    /// # }
    /// ```
    pub fn with_mode(
        interface: &str,
        port: u16,
        voter: u16,
        mode: Mode,
        ring_bytes: u32,
    ) -> Result<Replier, Error> {
        if port == 0 {
            return Err(Error::InvalidReply {
                why: "the port is 0: give the UDP port the sequenced datagrams arrive at".into(),
            });
        }
        if voter >= MAX_VOTERS {
            return Err(Error::InvalidReply {
                why: format!("voter {voter} is not below {MAX_VOTERS}"),
            });
        }
        if !ring_bytes.is_power_of_two() || ring_bytes < 4096 {
            return Err(Error::InvalidReply {
                why: format!("a ring of {ring_bytes} bytes: give a power of two of 4096 or more"),
            });
        }
        let (replier, fallback_reason) =
            attach_or_fall_back(interface, mode, "acknowledging", |ifindex| {
                KernelReplier::attach(interface, ifindex, port, ring_bytes)
            })?;
        let backend = match replier {
            Some(replier) => Backend::Kernel(Box::new(replier)),
            None => Backend::UserSpace(SharedMemory::new()),
        };
        let shared = match &backend {
            Backend::Kernel(replier) => replier.shared(),
            Backend::UserSpace(memory) => memory.as_ptr(),
        };
        Ok(Replier {
            shared: NonNull::new(shared).expect("not null"),
            backend,
            voter,
            inner: Mutex::default(),
            user_space: Default::default(),
            fallback_reason,
        })
    }

    /// The backend in use: [`Mode::Kernel`] or [`Mode::UserSpace`].
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use elec_broadcast::{Mode, Replier, DEFAULT_RING_BYTES};
    ///
    /// let replier = Replier::with_mode("lo", 7000, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// assert_eq!(replier.mode(), Mode::UserSpace);
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
    /// use elec_broadcast::{Mode, Replier};
    ///
    /// let replier = Replier::new("eth0", 7000, 2)?; // Mode::Auto
    /// match replier.fallback_reason() {
    ///     Some(reason) => eprintln!("acknowledging in user space: {reason}"),
    ///     None => assert_eq!(replier.mode(), Mode::Kernel),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn fallback_reason(&self) -> Option<&Error> {
        self.fallback_reason.as_ref()
    }

    fn u64_at(&self, field: *mut u64) -> &AtomicU64 {
        // SAFETY: `field` points into the live, 8-aligned entry (owned by
        // `backend`), every access to which is atomic.
        unsafe { AtomicU64::from_ptr(field) }
    }
    fn generation(&self) -> &AtomicU64 {
        // SAFETY: a field projection inside the valid entry.
        self.u64_at(unsafe { addr_of_mut!((*self.shared.as_ptr()).generation) })
    }
    fn epoch_cell(&self) -> &AtomicU64 {
        // SAFETY: as above.
        self.u64_at(unsafe { addr_of_mut!((*self.shared.as_ptr()).epoch) })
    }
    fn next_cell(&self) -> &AtomicU64 {
        // SAFETY: as above.
        self.u64_at(unsafe { addr_of_mut!((*self.shared.as_ptr()).next) })
    }
    fn armed_cell(&self) -> &AtomicU32 {
        // SAFETY: as above; 4-aligned, accessed atomically.
        unsafe { AtomicU32::from_ptr(addr_of_mut!((*self.shared.as_ptr()).armed)) }
    }
    fn sender_addr_cell(&self) -> &AtomicU32 {
        // SAFETY: as above; 4-aligned, accessed atomically.
        unsafe { AtomicU32::from_ptr(addr_of_mut!((*self.shared.as_ptr()).sender_addr)) }
    }
    fn sender_port_cell(&self) -> &AtomicU16 {
        // SAFETY: as above; 2-aligned, accessed atomically.
        unsafe { AtomicU16::from_ptr(addr_of_mut!((*self.shared.as_ptr()).sender_port)) }
    }
    fn voter_cell(&self) -> &AtomicU16 {
        // SAFETY: as above; 2-aligned, accessed atomically.
        unsafe { AtomicU16::from_ptr(addr_of_mut!((*self.shared.as_ptr()).voter)) }
    }

    /// Writes a new arming under the sequence lock; returns the round that
    /// was next before (0 if none).
    fn write_arming(&self, epoch: u64, next: Option<(u64, SocketAddrV4)>) -> u64 {
        let generation = self.generation().load(SeqCst);
        let writing = generation | 1;
        self.generation().store(writing, SeqCst);
        self.epoch_cell().store(epoch, SeqCst);
        self.voter_cell().store(self.voter, SeqCst);
        let tag = tag_of(writing + 1);
        if let Some((_, sender)) = next {
            self.sender_addr_cell()
                .store(u32::from_ne_bytes(sender.ip().octets()), SeqCst);
            self.sender_port_cell().store(sender.port().to_be(), SeqCst);
        }
        self.armed_cell().store(u32::from(next.is_some()), SeqCst);
        // The new tag goes into `next` in one swap, frozen or not: a taker
        // (program run or `receive`) that read the old arming fails its
        // compare-and-swap from here on, so nothing is taken, nor acked,
        // after this; what was taken before is below `was_next`.
        let before = self.next_cell().swap(
            tag << TAG_SHIFT | next.map_or(0, |(round, _)| round),
            SeqCst,
        );
        let was_next = if generation != 0 && before >> TAG_SHIFT == tag_of(generation) {
            before & MAX_ROUND
        } else {
            0
        };
        self.generation().store(writing + 1, SeqCst);
        was_next
    }

    fn arming(&self) -> Option<Arming> {
        loop {
            let generation = self.generation().load(SeqCst);
            if generation == 0 {
                return None;
            }
            let (addr, port) = (
                self.sender_addr_cell().load(SeqCst),
                self.sender_port_cell().load(SeqCst),
            );
            let arming = Arming {
                epoch: self.epoch_cell().load(SeqCst),
                armed: self.armed_cell().load(SeqCst) != 0,
                tag: tag_of(generation),
                sender: SocketAddrV4::new(addr.to_ne_bytes().into(), u16::from_be(port)),
            };
            if generation & 1 == 0 && self.generation().load(SeqCst) == generation {
                return Some(arming);
            }
            std::hint::spin_loop();
        }
    }

    /// Takes the datagrams of `epoch` that `sender` sends, from round `next`
    /// on (kernel acks resume). Datagrams from anywhere else are never
    /// taken nor acknowledged. Taken datagrams of an earlier arming that
    /// were not drained yet are still delivered, before these.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    /// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
    /// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// # let port = socket.local_addr()?.port();
    /// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
    /// # let sequenced = |epoch, round, body: &[u8]| {
    /// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
    /// #     datagram.extend_from_slice(body);
    /// #     datagram
    /// # };
    /// replier.arm(1, 1, from)?; // epoch 1 from the leader, round 1 comes next
    /// let receipt = replier.receive(&socket, &sequenced(1, 1, b"op"), from.into())?;
    /// assert_eq!(receipt, Receipt::Taken { round: 1 });
    /// // Acknowledged to the leader, at the header's ack port, as voter 2.
    /// let mut buf = [0u8; 64];
    /// let (len, _) = leader.recv_from(&mut buf)?;
    /// assert_eq!(Ack::parse(&buf[..len])?.0, Ack { epoch: 1, round: 1, voter: 2 });
    /// assert!(replier.arm(2, 0, from).is_err()); // rounds start at 1
    /// # Ok(())
    /// # }
    /// ```
    pub fn arm(&self, epoch: u64, next: u64, sender: SocketAddrV4) -> Result<(), Error> {
        if next == 0 || next > MAX_ROUND_NUMBER {
            return Err(Error::InvalidReply {
                why: format!("round {next} is not in 1..={MAX_ROUND_NUMBER}"),
            });
        }
        let mut inner = self.lock();
        self.write_arming(epoch, Some((next, sender)));
        inner.epoch = epoch;
        inner.deliver_next = next;
        Ok(())
    }

    /// Quiet: the kernel queues datagrams without waking the application up
    /// (no readiness on [`Replier::ring_fd`] for them); the application
    /// calls [`Replier::drain`] on its own schedule, on every other wake-up
    /// or timer. For an application whose ring is off its critical path
    /// (a follower whose acks the kernel sends). Off by default. In
    /// user-space mode there is no ring, and this does nothing.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use elec_broadcast::Replier;
    ///
    /// let replier = Replier::new("eth0", 7000, 2)?;
    /// replier.set_quiet(true); // the kernel acks; the application reads on its own schedule
    /// loop {
    ///     std::thread::sleep(Duration::from_millis(1));
    ///     replier.drain(|datagram| println!("round {}", datagram.header.round))?;
    /// }
    /// # }
    /// ```
    pub fn set_quiet(&self, quiet: bool) {
        // SAFETY: inside the valid entry; 2-aligned; accessed atomically
        // here, and read once per datagram by the program.
        let flags = unsafe { AtomicU16::from_ptr(addr_of_mut!((*self.shared.as_ptr()).flags)) };
        if quiet {
            flags.fetch_or(QUIET as u16, SeqCst);
        } else {
            flags.fetch_and(!(QUIET as u16), SeqCst);
        }
    }

    /// Tells the replier that the application holds every round of the
    /// armed epoch below `next` by other means (a gap it buffered, a state
    /// transfer): the replier takes from `next` on. Never moves backwards;
    /// does nothing while frozen.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    /// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
    /// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// # let port = socket.local_addr()?.port();
    /// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
    /// # let sequenced = |epoch, round, body: &[u8]| {
    /// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
    /// #     datagram.extend_from_slice(body);
    /// #     datagram
    /// # };
    /// replier.arm(1, 1, from)?;
    /// // Round 1 was lost: round 2 is a gap until the application has round 1.
    /// let gap = replier.receive(&socket, &sequenced(1, 2, b"b"), from.into())?;
    /// assert!(matches!(gap, Receipt::Gap { .. }));
    /// replier.advance(2); // round 1 came by state transfer
    /// assert_eq!(replier.next_round(), 2);
    /// let taken = replier.receive(&socket, &sequenced(1, 2, b"b"), from.into())?;
    /// assert_eq!(taken, Receipt::Taken { round: 2 });
    /// # Ok(())
    /// # }
    /// ```
    pub fn advance(&self, next: u64) {
        let mut inner = self.lock();
        let Some(arming) = self.arming().filter(|a| a.armed) else {
            return;
        };
        let next = next.min(MAX_ROUND_NUMBER);
        let mut current = self.next_cell().load(SeqCst);
        while current >> TAG_SHIFT == arming.tag && current & MAX_ROUND < next {
            match self.next_cell().compare_exchange(
                current,
                arming.tag << TAG_SHIFT | next,
                SeqCst,
                SeqCst,
            ) {
                Ok(_) => {
                    inner.deliver_next = inner.deliver_next.max(next);
                    return;
                }
                Err(now) => current = now,
            }
        }
    }

    /// Stops taking and acknowledging (before a view change, say). Returns
    /// the round that would have been taken next: every earlier round of
    /// the epoch was taken, and is delivered by [`Replier::drain`] (a
    /// record the kernel was writing at this moment may take some
    /// microseconds to appear).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    /// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
    /// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// # let port = socket.local_addr()?.port();
    /// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
    /// # let sequenced = |epoch, round, body: &[u8]| {
    /// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
    /// #     datagram.extend_from_slice(body);
    /// #     datagram
    /// # };
    /// replier.arm(1, 1, from)?;
    /// replier.receive(&socket, &sequenced(1, 1, b"a"), from.into())?;
    /// assert_eq!(replier.freeze(), 2); // round 1 was taken, round 2 is not
    /// let late = replier.receive(&socket, &sequenced(1, 2, b"b"), from.into())?;
    /// assert!(matches!(late, Receipt::Frozen { .. }));
    /// assert_eq!(replier.next_round(), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn freeze(&self) -> u64 {
        let inner = self.lock();
        self.write_arming(inner.epoch, None)
    }

    /// Freezes the replier ([`Replier::freeze`]) and delivers every datagram
    /// it took before, waiting up to `timeout` for a record the kernel was
    /// writing at that moment. After it returns `Ok(next)`, every round
    /// below `next` has been handed to `deliver` (now or by an earlier
    /// `drain`), and nothing more is taken or acknowledged until
    /// [`Replier::arm`]. For a view change: whatever the kernel acknowledged
    /// is in the application's hands before it answers the change.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    /// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
    /// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// # let port = socket.local_addr()?.port();
    /// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
    /// # let sequenced = |epoch, round, body: &[u8]| {
    /// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
    /// #     datagram.extend_from_slice(body);
    /// #     datagram
    /// # };
    /// use std::time::Duration;
    ///
    /// replier.arm(1, 1, from)?;
    /// for round in 1..=3 {
    ///     replier.receive(&socket, &sequenced(1, round, b"op"), from.into())?;
    /// }
    /// // A view change: stop acknowledging, and get every acknowledged round.
    /// let mut rounds = Vec::new();
    /// let next = replier.quiesce(Duration::from_millis(100), |d| rounds.push(d.header.round))?;
    /// assert_eq!((next, rounds), (4, vec![1, 2, 3]));
    /// # Ok(())
    /// # }
    /// ```
    pub fn quiesce(&self, timeout: Duration, mut deliver: impl FnMut(Datagram)) -> io::Result<u64> {
        let next = self.freeze();
        let deadline = Instant::now() + timeout;
        loop {
            self.drain(&mut deliver)?;
            if self.lock().deliver_next >= next {
                return Ok(next);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("rounds below {next} were taken but did not reach the ring"),
                ));
            }
            std::thread::yield_now();
        }
    }

    /// Delivers the taken datagrams, in order (see the type's docs), to
    /// `deliver`; returns how many.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    /// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
    /// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// # let port = socket.local_addr()?.port();
    /// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
    /// # let sequenced = |epoch, round, body: &[u8]| {
    /// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
    /// #     datagram.extend_from_slice(body);
    /// #     datagram
    /// # };
    /// replier.arm(1, 1, from)?;
    /// replier.receive(&socket, &sequenced(1, 1, b"first"), from.into())?;
    /// replier.receive(&socket, &sequenced(1, 2, b"second"), from.into())?;
    /// let mut payloads = Vec::new();
    /// assert_eq!(replier.drain(|datagram| payloads.push(datagram.payload))?, 2);
    /// assert_eq!(payloads, [b"first".to_vec(), b"second".to_vec()]);
    /// assert_eq!(replier.drain(|_| unreachable!("delivered once"))?, 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn drain(&self, mut deliver: impl FnMut(Datagram)) -> io::Result<usize> {
        let mut inner = self.lock();
        if let Backend::Kernel(replier) = &self.backend {
            replier.consume()?;
            let records: Vec<Vec<u8>> = replier
                .records()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .drain(..)
                .collect();
            for record in records {
                match parse_record(&record) {
                    Some(datagram) => {
                        let key = (datagram.header.epoch, datagram.header.round);
                        inner.pending.insert(key, datagram);
                    }
                    None => log::warn!("elec-broadcast: a ring record that does not parse"),
                }
            }
        }
        // Other epochs' datagrams (earlier armings) first, in (epoch, round)
        // order; then the armed epoch's from `deliver_next` on, without a
        // gap. Handed over after the lock is released, so that `deliver`
        // may call the replier.
        let armed = inner.epoch;
        let others: Vec<(u64, u64)> = inner
            .pending
            .keys()
            .filter(|(epoch, _)| *epoch != armed)
            .copied()
            .collect();
        let mut ready: Vec<Datagram> = others
            .iter()
            .filter_map(|key| inner.pending.remove(key))
            .collect();
        loop {
            let key = (armed, inner.deliver_next);
            let below = inner
                .pending
                .first_key_value()
                .is_some_and(|(&(e, r), _)| e == armed && r < key.1);
            if below {
                // Taken before an `advance` past it: still delivered.
                let datagram = inner.pending.pop_first().expect("just seen").1;
                ready.push(datagram);
                continue;
            }
            let Some(datagram) = inner.pending.remove(&key) else {
                break;
            };
            inner.deliver_next += 1;
            ready.push(datagram);
        }
        drop(inner);
        let delivered = ready.len();
        ready.into_iter().for_each(&mut deliver);
        Ok(delivered)
    }

    /// Decides what `datagram`, received on the socket from `from`, is; if
    /// it is the next round, takes it and acknowledges it through `socket`
    /// to the sender's address at the header's ack port.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    /// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
    /// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// # let port = socket.local_addr()?.port();
    /// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
    /// # let sequenced = |epoch, round, body: &[u8]| {
    /// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
    /// #     datagram.extend_from_slice(body);
    /// #     datagram
    /// # };
    /// replier.arm(1, 1, from)?;
    /// leader.send_to(&sequenced(1, 1, b"op"), socket.local_addr()?)?;
    /// let mut buf = [0u8; 9000];
    /// let (len, sender) = socket.recv_from(&mut buf)?;
    /// assert_eq!(replier.receive(&socket, &buf[..len], sender)?, Receipt::Taken { round: 1 });
    /// // A retransmission is not taken, nor acknowledged, again.
    /// let again = replier.receive(&socket, &buf[..len], sender)?;
    /// assert!(matches!(again, Receipt::Duplicate { .. }));
    /// assert_eq!(replier.receive(&socket, b"hello", sender)?, Receipt::NotSequenced);
    /// # Ok(())
    /// # }
    /// ```
    pub fn receive(
        &self,
        socket: &UdpSocket,
        datagram: &[u8],
        from: SocketAddr,
    ) -> io::Result<Receipt> {
        let Ok((header, payload)) = Sequenced::parse(datagram) else {
            self.count(NOT_SEQUENCED);
            return Ok(Receipt::NotSequenced);
        };
        let SocketAddr::V4(from) = from else {
            self.count(NOT_SEQUENCED);
            return Ok(Receipt::NotSequenced);
        };
        loop {
            let Some(arming) = self.arming() else {
                self.count(OTHER_EPOCH);
                return Ok(Receipt::OtherEpoch { header });
            };
            if header.epoch != arming.epoch || from != arming.sender {
                self.count(OTHER_EPOCH);
                return Ok(Receipt::OtherEpoch { header });
            }
            if !arming.armed {
                self.count(FROZEN);
                return Ok(Receipt::Frozen { header });
            }
            let next = self.next_cell().load(SeqCst);
            if next >> TAG_SHIFT != arming.tag {
                continue; // re-armed meanwhile
            }
            let round = next & MAX_ROUND;
            if header.round < round {
                self.count(DUPLICATES);
                return Ok(Receipt::Duplicate { header });
            }
            if header.round > round {
                self.count(GAPS);
                return Ok(Receipt::Gap { header });
            }
            let mut inner = self.lock();
            let taken = next + 1;
            if self
                .next_cell()
                .compare_exchange(next, taken, SeqCst, SeqCst)
                .is_err()
            {
                continue;
            }
            inner.pending.insert(
                (header.epoch, header.round),
                Datagram {
                    header,
                    from,
                    payload: payload.to_vec(),
                    from_kernel: false,
                },
            );
            drop(inner);
            let ack = Ack {
                epoch: header.epoch,
                round: header.round,
                voter: self.voter,
            };
            let to = SocketAddr::from((*from.ip(), header.ack_port));
            match ack.send(socket, to, &[]) {
                Ok(()) => self.count(ACKED),
                Err(err) => {
                    self.count(ACK_FAILURES);
                    log::debug!("elec-broadcast: sending the ack of round {round}: {err}");
                }
            }
            return Ok(Receipt::Taken { round });
        }
    }

    /// The round the replier takes next in the armed epoch (0 when frozen
    /// or not armed).
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    /// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
    /// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// # let port = socket.local_addr()?.port();
    /// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
    /// # let sequenced = |epoch, round, body: &[u8]| {
    /// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
    /// #     datagram.extend_from_slice(body);
    /// #     datagram
    /// # };
    /// assert_eq!(replier.next_round(), 0); // not armed yet
    /// replier.arm(3, 10, from)?;
    /// assert_eq!(replier.next_round(), 10);
    /// replier.receive(&socket, &sequenced(3, 10, b"op"), from.into())?;
    /// assert_eq!(replier.next_round(), 11);
    /// # Ok(())
    /// # }
    /// ```
    pub fn next_round(&self) -> u64 {
        match self.arming() {
            Some(arming) if arming.armed => {
                let next = self.next_cell().load(SeqCst);
                if next >> TAG_SHIFT == arming.tag {
                    next & MAX_ROUND
                } else {
                    0
                }
            }
            _ => 0,
        }
    }

    /// A descriptor that polls readable when the kernel has queued
    /// datagrams ([`Replier::drain`] them); `None` in the user-space mode.
    ///
    /// # Example
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::os::fd::AsRawFd;
    /// use elec_broadcast::Replier;
    ///
    /// let replier = Replier::new("eth0", 7000, 2)?;
    /// match replier.ring_fd() {
    ///     // Poll it (epoll, mio, tokio's AsyncFd) next to the socket; drain when readable.
    ///     Some(ring) => println!("queued datagrams make fd {} readable", ring.as_raw_fd()),
    ///     None => println!("user space: every datagram arrives on the socket"),
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn ring_fd(&self) -> Option<BorrowedFd<'_>> {
        match &self.backend {
            Backend::Kernel(replier) => {
                let fd: RawFd = replier.ring_fd();
                // SAFETY: the epoll descriptor is owned by the ring consumer,
                // which lives as long as `self` (the borrow).
                Some(unsafe { BorrowedFd::borrow_raw(fd) })
            }
            Backend::UserSpace(_) => None,
        }
    }

    /// What the kernel and [`Replier::receive`] decided so far.
    ///
    /// # Example
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
    /// # use elec_broadcast::{Ack, Mode, Receipt, Replier, Sequenced, DEFAULT_RING_BYTES};
    /// # let (socket, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// # let port = socket.local_addr()?.port();
    /// # let replier = Replier::with_mode("lo", port, 2, Mode::UserSpace, DEFAULT_RING_BYTES)?;
    /// # let from = SocketAddrV4::new(Ipv4Addr::LOCALHOST, leader.local_addr()?.port());
    /// # let sequenced = |epoch, round, body: &[u8]| {
    /// #     let mut datagram = Sequenced { epoch, round, ack_port: from.port() }.to_bytes().to_vec();
    /// #     datagram.extend_from_slice(body);
    /// #     datagram
    /// # };
    /// replier.arm(1, 1, from)?;
    /// replier.receive(&socket, &sequenced(1, 1, b"a"), from.into())?;
    /// replier.receive(&socket, &sequenced(1, 3, b"c"), from.into())?;
    /// replier.receive(&socket, &sequenced(2, 1, b"x"), from.into())?;
    /// let user = replier.counters()?.user_space;
    /// assert_eq!((user.acked, user.gaps, user.other_epoch), (1, 1, 1));
    /// assert_eq!(replier.counters()?.kernel.acked, 0); // user-space mode
    /// # Ok(())
    /// # }
    /// ```
    pub fn counters(&self) -> io::Result<ReplyCounters> {
        let kernel = match &self.backend {
            Backend::Kernel(replier) => ReplyDecisions::from_counts(replier.counters()?),
            Backend::UserSpace(_) => ReplyDecisions::default(),
        };
        let user_space = self.user_space.each_ref().map(|c| c.load(SeqCst));
        Ok(ReplyCounters {
            kernel,
            user_space: ReplyDecisions::from_counts(user_space),
        })
    }

    fn count(&self, index: usize) {
        self.user_space[index].fetch_add(1, SeqCst);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A ring record (`struct eb_record` and the payload) as a datagram.
fn parse_record(record: &[u8]) -> Option<Datagram> {
    let len = u32::from_ne_bytes(record.get(0..4)?.try_into().ok()?) as usize;
    let addr: [u8; 4] = record.get(4..8)?.try_into().ok()?;
    let port = u16::from_be_bytes(record.get(8..10)?.try_into().ok()?);
    let bytes = record.get(16..16 + len)?;
    let (header, payload) = Sequenced::parse(bytes).ok()?;
    Some(Datagram {
        header,
        from: SocketAddrV4::new(addr.into(), port),
        payload: payload.to_vec(),
        from_kernel: true,
    })
}
