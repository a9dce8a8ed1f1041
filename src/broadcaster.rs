//! The public handle: [`Broadcaster`], which owns the attached program and
//! the tables it follows, and carries out each `broadcast` call through the
//! send side (see the `send` module for the steps of a call).

use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::thread;

use nix::sched::{setns, CloneFlags};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};

use crate::kernel::{Tags, MAX_BATCH};
use crate::report::{Counters, KernelCounters, Report, Stats};
use crate::send::call::Resume;
use crate::send::sockets::lock;
use crate::send::Family;
use crate::tables::{PathTo, Target};
use crate::{Error, Failure, FailureReason};

mod link;
#[cfg(feature = "tokio")]
mod tokio_socket;

use link::Link;

/// The largest payload that fits `mtu` in one datagram with `headers`
/// bytes of IP and UDP headers (`HEADERS` or `HEADERS6`): an IP packet is
/// at most 65535 bytes long.
fn max_payload(mtu: u32, headers: usize) -> usize {
    (mtu as usize).min(65_535).saturating_sub(headers)
}

/// The calling thread's network namespace.
const THIS_NAMESPACE: &str = "/proc/thread-self/ns/net";

/// Refuses a destination list no broadcast can be sent to.
fn check_destinations(destinations: &[SocketAddr]) -> Result<(), Error> {
    if destinations.is_empty() {
        return Err(Error::NoDestinations);
    }
    for &destination in destinations {
        let invalid = Err(Error::InvalidDestination { destination });
        if destination.port() == 0 {
            return invalid;
        }
        match Target::of(&destination) {
            Target {
                ip: IpAddr::V4(ip), ..
            } => {
                if ip.is_unspecified() || ip.is_broadcast() {
                    return invalid;
                }
            }
            Target {
                ip: IpAddr::V6(ip),
                scope,
            } => {
                if ip.is_multicast() {
                    return Err(Error::MulticastDestination { destination });
                }
                if ip.is_unspecified() || (ip.is_unicast_link_local() && scope == 0) {
                    return invalid;
                }
            }
        }
    }
    Ok(())
}

/// Refuses a destination a socket of `family` cannot send to.
fn check_family(family: Family, destinations: &[SocketAddr]) -> Result<(), Error> {
    for destination in destinations {
        if let Err(socket) = family.reaches(destination) {
            return Err(Error::FamilyMismatch {
                destination: *destination,
                socket,
            });
        }
    }
    Ok(())
}

/// The interfaces a broadcaster is on besides the primary one, for reading.
fn read(links: &RwLock<Vec<Arc<Link>>>) -> RwLockReadGuard<'_, Vec<Arc<Link>>> {
    // Every update is a push of a finished link: a panic leaves nothing
    // half done.
    links.read().unwrap_or_else(PoisonError::into_inner)
}

/// What one call of [`Broadcaster::send`] did (on one interface, or
/// merged over several).
struct Part {
    report: Report,
    /// The indices (into the destination list) of `report.failed`.
    failed_at: Vec<usize>,
    /// Fan-outs it took.
    fan_outs: usize,
    /// Where it stopped because a send would have blocked, if it did and the
    /// place can be resumed from (what `broadcast_async` resumes from).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    stopped: Option<Resume>,
}

/// Where the parts of one call's payloads are collected: a `Vec` for a
/// batch, [`One`] for a single payload (so that a broadcast allocates
/// nothing for them).
trait Parts: Default + Extend<Part> {}

impl<T: Default + Extend<Part>> Parts for T {}

/// The part of a call of one payload.
#[derive(Default)]
struct One(Option<Part>);

impl Extend<Part> for One {
    fn extend<I: IntoIterator<Item = Part>>(&mut self, parts: I) {
        for part in parts {
            debug_assert!(self.0.is_none(), "one payload, one part");
            self.0 = Some(part);
        }
    }
}

/// Which backend sends the copies.
///
/// # Example
///
/// ```
/// use elec_broadcast::{Broadcaster, Mode};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// assert_eq!(Mode::default(), Mode::Auto);
/// // `--user-space` forces sendmmsg; else the kernel fan-out where it can be used.
/// let user_space = std::env::args().any(|arg| arg == "--user-space");
/// let mode = if user_space { Mode::UserSpace } else { Mode::Auto };
/// let broadcaster = Broadcaster::with_mode("lo", mode)?;
/// // Loopback cannot carry a kernel fan-out: `Auto` settles for user space.
/// assert_eq!(broadcaster.mode(), Mode::UserSpace);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Mode {
    /// The kernel fan-out where it can be used, else user space (the choice
    /// is logged and visible through [`Broadcaster::mode`] and
    /// [`Broadcaster::fallback_reason`]).
    #[default]
    Auto,
    /// The kernel fan-out: one send per broadcast, copies cloned in the kernel.
    Kernel,
    /// One `sendmmsg(2)` call carrying one datagram per destination.
    UserSpace,
}

/// Sends one payload to many UDP destinations, fanning it out in the kernel.
///
/// A `Broadcaster` owns the eBPF program attached to an interface's egress
/// (or to several interfaces': [`Broadcaster::with_interfaces`],
/// [`Broadcaster::attach_on_demand`]) and detaches it on drop. It can be
/// shared between threads; broadcasts on different sockets run in
/// parallel, broadcasts on one socket one at a time.
///
/// Destinations whose route leaves through one of its interfaces and whose
/// next hop's MAC address is in the kernel's neighbour table are fanned out
/// in the kernel, each copy through its own interface (one fan-out per
/// interface). Local destinations and neighbours not resolved yet are sent
/// from user space through the same socket, so every destination gets
/// exactly one copy either way; the kernel resolves the missing neighbours
/// on that first send. A destination routed through another interface is
/// refused ([`Error::OtherInterface`]), in both modes, unless the
/// broadcaster attaches on demand.
///
/// Routes, neighbours, links and addresses are followed through the
/// kernel's change notifications, read by one background thread per
/// `Broadcaster`: a broadcast after a change never uses what the change made
/// wrong (a MAC, a next hop, the MTU).
///
/// # Example
///
/// ```no_run
/// use std::net::{SocketAddr, UdpSocket};
/// use elec_broadcast::Broadcaster;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broadcaster = Broadcaster::new("eth0")?;
/// let socket = UdpSocket::bind("0.0.0.0:7000")?;
/// let peers: Vec<SocketAddr> = vec!["10.0.0.2:7000".parse()?, "10.0.0.3:7000".parse()?];
/// let report = broadcaster.broadcast(&socket, b"prepare 42", &peers)?;
/// assert_eq!(report.copies_sent + report.failed.len(), peers.len());
/// # Ok(()) }
/// ```
pub struct Broadcaster {
    /// The interface given first: the one `interface()` names, whose
    /// routes tell which interface each destination goes through.
    primary: Arc<Link>,
    /// The other interfaces, given or attached since (see
    /// [`Broadcaster::attach_on_demand`]).
    others: RwLock<Vec<Arc<Link>>>,
    /// Whether `others` was empty when built: it grows only on demand, so
    /// without `on_demand` every call goes through `primary` alone, known
    /// without taking the lock.
    primary_only: bool,
    /// The mode interfaces attached on demand are opened in; None: a
    /// destination routed through an interface not attached is refused.
    on_demand: Option<Mode>,
    /// The mode this broadcaster was created with.
    requested_mode: Mode,
    /// The network namespace it was created in, where interfaces are
    /// attached on demand whichever thread broadcasts (None if it could not
    /// be opened: then in the broadcasting thread's).
    netns: Option<File>,
    /// The last destination list split by interface, while current.
    split: Mutex<Option<Split>>,
    tags: Tags,
    counters: Counters,
}

/// A destination list split by the interface each destination goes through.
struct Split {
    destinations: Vec<SocketAddr>,
    /// The primary interface's tables' generation it was made under.
    generation: u64,
    parts: Vec<LinkPart>,
}

/// The destinations of a list that go through one interface: the link, and
/// their indices into the list.
type LinkPart = (Arc<Link>, Vec<usize>);

impl Broadcaster {
    /// Attaches the fan-out to `interface`, or falls back to user space when
    /// the kernel backend cannot be used (see [`Mode::Auto`]).
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Broadcaster, Error, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // Loopback has no Ethernet address, so no kernel fan-out: `new` falls
    /// // back to user-space sends instead of failing.
    /// let broadcaster = Broadcaster::new("lo")?;
    /// assert_eq!(broadcaster.mode(), Mode::UserSpace);
    /// // An interface that does not exist is an error, though.
    /// let missing = Broadcaster::new("no-such-if0");
    /// assert!(matches!(missing, Err(Error::UnknownInterface { .. })));
    /// # Ok(()) }
    /// ```
    pub fn new(interface: &str) -> Result<Broadcaster, Error> {
        Broadcaster::with_mode(interface, Mode::Auto)
    }

    /// Like [`Broadcaster::new`] with an explicit [`Mode`]. With
    /// [`Mode::Kernel`], a kernel backend that cannot be used is an error.
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Broadcaster, Error, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// // User-space sends need no privileges and work on any interface.
    /// let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
    /// assert_eq!(broadcaster.mode(), Mode::UserSpace);
    /// // An explicit `Mode::Kernel` never falls back.
    /// match Broadcaster::with_mode("lo", Mode::Kernel) {
    ///     Err(Error::UnsupportedInterface { name, .. }) => assert_eq!(name, "lo"),
    ///     other => panic!("expected UnsupportedInterface, got {other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn with_mode(interface: &str, mode: Mode) -> Result<Broadcaster, Error> {
        Broadcaster::with_interfaces(&[interface], mode)
    }

    /// Fans out on each of `interfaces` (the first is the primary one, see
    /// [`Broadcaster::interface`]): each destination's copy leaves through
    /// the interface its route goes through, in one call and one report,
    /// with the same guarantees as on one interface. A destination routed
    /// through another interface is refused ([`Error::OtherInterface`]),
    /// unless [`Broadcaster::attach_on_demand`] is on.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::net::{SocketAddr, UdpSocket};
    /// use elec_broadcast::{Broadcaster, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::with_interfaces(&["eth0", "eth1"], Mode::Auto)?;
    /// let socket = UdpSocket::bind("0.0.0.0:7000")?;
    /// // 10.0.0.0/24 is behind eth0, 10.1.0.0/24 behind eth1.
    /// let peers: Vec<SocketAddr> = vec!["10.0.0.2:7000".parse()?, "10.1.0.2:7000".parse()?];
    /// let report = broadcaster.broadcast(&socket, b"prepare 42", &peers)?;
    /// assert!(report.is_complete());
    /// assert_eq!(broadcaster.interfaces(), ["eth0", "eth1"]);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// As for [`Broadcaster::with_mode`], for any of the interfaces; and
    /// [`Error::NoInterfaces`] for an empty list.
    pub fn with_interfaces(interfaces: &[&str], mode: Mode) -> Result<Broadcaster, Error> {
        Broadcaster::build(interfaces, mode, false)
    }

    /// Lets destinations routed through an interface this broadcaster is not
    /// on be fanned out there: the first broadcast to such a destination
    /// attaches the program to that interface, in the mode this broadcaster
    /// was created with (a `Mode::Kernel` broadcaster whose program cannot
    /// be attached there refuses the broadcast with the reason, before
    /// anything is sent). Off by default: such destinations are refused
    /// ([`Error::OtherInterface`]).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::net::{SocketAddr, UdpSocket};
    /// use elec_broadcast::{Broadcaster, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::with_mode("eth0", Mode::Auto)?.attach_on_demand();
    /// let socket = UdpSocket::bind("0.0.0.0:7000")?;
    /// let peers: Vec<SocketAddr> = vec!["10.0.0.2:7000".parse()?, "10.1.0.2:7000".parse()?];
    /// broadcaster.broadcast(&socket, b"prepare 42", &peers)?;
    /// println!("on {:?}", broadcaster.interfaces()); // eth0, and eth1 if 10.1.0.2 is behind it
    /// # Ok(()) }
    /// ```
    pub fn attach_on_demand(mut self) -> Broadcaster {
        self.on_demand = Some(self.requested_mode);
        self
    }

    fn build(interfaces: &[&str], mode: Mode, force_clsact: bool) -> Result<Broadcaster, Error> {
        let (first, rest) = interfaces.split_first().ok_or(Error::NoInterfaces)?;
        let primary = Arc::new(Link::open(first, mode, force_clsact)?);
        let mut others: Vec<Arc<Link>> = Vec::new();
        for interface in rest {
            let link = Link::open(interface, mode, force_clsact)?;
            if link.ifindex != primary.ifindex && others.iter().all(|l| l.ifindex != link.ifindex) {
                others.push(Arc::new(link));
            }
        }
        Ok(Broadcaster {
            primary,
            primary_only: others.is_empty(),
            others: RwLock::new(others),
            on_demand: None,
            requested_mode: mode,
            netns: File::open(THIS_NAMESPACE).ok(),
            split: Mutex::new(None),
            tags: Tags::new(),
            counters: Counters::default(),
        })
    }

    /// The backend in use on the primary interface: [`Mode::Kernel`] or
    /// [`Mode::UserSpace`].
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Broadcaster, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::with_mode("lo", Mode::Auto)?;
    /// // The backend `Auto` settled on, never `Mode::Auto` itself.
    /// match broadcaster.mode() {
    ///     Mode::Kernel => println!("fanning out in the kernel"),
    ///     mode => assert_eq!(mode, Mode::UserSpace),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn mode(&self) -> Mode {
        self.primary.mode()
    }

    /// Why [`Mode::Auto`] chose user space on the primary interface, if it
    /// did.
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Broadcaster, Error, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let auto = Broadcaster::new("lo")?;
    /// let reason = auto.fallback_reason().expect("loopback cannot fan out");
    /// assert!(matches!(reason, Error::UnsupportedInterface { .. }));
    /// eprintln!("user-space sends on {}: {reason}", auto.interface());
    /// // A mode asked for explicitly has nothing to fall back from.
    /// let user_space = Broadcaster::with_mode("lo", Mode::UserSpace)?;
    /// assert!(user_space.fallback_reason().is_none());
    /// # Ok(()) }
    /// ```
    pub fn fallback_reason(&self) -> Option<&Error> {
        self.primary.fallback_reason.as_ref()
    }

    /// The (primary) interface's name.
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Broadcaster, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
    /// assert_eq!(broadcaster.interface(), "lo");
    /// # Ok(()) }
    /// ```
    pub fn interface(&self) -> &str {
        &self.primary.interface
    }

    /// The names of every interface this broadcaster is on, the primary one
    /// first (with [`Broadcaster::attach_on_demand`], those attached so far).
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Broadcaster, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::with_interfaces(&["lo"], Mode::UserSpace)?;
    /// assert_eq!(broadcaster.interfaces(), ["lo"]);
    /// # Ok(()) }
    /// ```
    pub fn interfaces(&self) -> Vec<String> {
        std::iter::once(self.primary.interface.clone())
            .chain(read(&self.others).iter().map(|l| l.interface.clone()))
            .collect()
    }

    /// The (primary) interface's index.
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Broadcaster, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
    /// // Loopback is interface 1 in every network namespace.
    /// assert_eq!(broadcaster.interface_index(), 1);
    /// # Ok(()) }
    /// ```
    pub fn interface_index(&self) -> u32 {
        self.primary.ifindex
    }

    /// Largest payload one broadcast to IPv4 destinations can carry: the
    /// smallest current MTU of the interfaces this broadcaster is on, minus
    /// the IPv4 and UDP headers (28 bytes). IPv6 destinations take 20 bytes
    /// less (their headers are 48 bytes), and a destination whose route has
    /// a smaller MTU of its own takes less.
    ///
    /// # Example
    ///
    /// ```
    /// use std::net::UdpSocket;
    /// use elec_broadcast::{Broadcaster, Error, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
    /// let socket = UdpSocket::bind("127.0.0.1:0")?;
    /// let peer = UdpSocket::bind("127.0.0.1:0")?;
    /// // A larger payload is refused before anything is sent.
    /// let payload = vec![0; broadcaster.max_payload() + 1];
    /// match broadcaster.broadcast(&socket, &payload, &[peer.local_addr()?]) {
    ///     Err(Error::PayloadTooLarge { max, .. }) => assert_eq!(max, broadcaster.max_payload()),
    ///     other => panic!("expected PayloadTooLarge, got {other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn max_payload(&self) -> usize {
        read(&self.others)
            .iter()
            .map(|l| l.max_payload())
            .fold(self.primary.max_payload(), usize::min)
    }

    /// Counters since this broadcaster was created.
    ///
    /// # Example
    ///
    /// ```
    /// use std::net::UdpSocket;
    /// use elec_broadcast::{Broadcaster, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
    /// let socket = UdpSocket::bind("127.0.0.1:0")?;
    /// let peer = UdpSocket::bind("127.0.0.1:0")?;
    /// peer.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    /// // The same destination twice: two copies.
    /// broadcaster.broadcast(&socket, b"heartbeat", &[peer.local_addr()?; 2])?;
    /// let mut buf = [0; 64];
    /// for _ in 0..2 {
    ///     let (len, from) = peer.recv_from(&mut buf)?;
    ///     assert_eq!((&buf[..len], from), (&b"heartbeat"[..], socket.local_addr()?));
    /// }
    /// let stats = broadcaster.stats();
    /// assert_eq!((stats.broadcasts, stats.user_space_copies, stats.copies_failed), (1, 2, 0));
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> Stats {
        self.counters.stats()
    }

    /// The kernel programs' own counters (summed over the interfaces);
    /// `None` in user-space mode, or where no program's counters could be
    /// read (the error is not kept).
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Broadcaster, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::new("lo")?;
    /// // ... broadcasts ...
    /// match broadcaster.kernel_counters() {
    ///     Some(kernel) => println!("{} clones left, {} failed", kernel.clones, kernel.clone_failures),
    ///     // No program, no counters (loopback cannot carry a fan-out).
    ///     None => assert_eq!(broadcaster.mode(), Mode::UserSpace),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn kernel_counters(&self) -> Option<KernelCounters> {
        let links = read(&self.others);
        let mut sum: Option<KernelCounters> = None;
        for link in std::iter::once(&self.primary).chain(links.iter()) {
            let Some(s) = link.kernel.as_ref().and_then(|p| p.kernel_stats().ok()) else {
                continue;
            };
            let total = sum.get_or_insert_with(KernelCounters::default);
            total.fan_outs += s.fan_outs;
            total.clones += s.clones;
            total.clone_failures += s.clone_failures;
            total.rewrite_failures += s.rewrite_failures;
            total.mismatches += s.mismatches;
        }
        sum
    }

    /// Sends `payload` once to every destination, through `socket`.
    ///
    /// `socket` is any bound UDP socket, IPv4 or IPv6 (std, socket2, tokio,
    /// ... all implement [`AsFd`]); every copy carries its address as the
    /// source. The payload arrives byte for byte as given. Lists longer than
    /// 256 destinations are split into several fan-outs.
    ///
    /// IPv6 destinations need an IPv6 socket; a link-local one (`fe80::/10`)
    /// needs its scope id, the index of the broadcaster's interface. An IPv6
    /// socket with `IPV6_V6ONLY` off (dual stack) also sends to IPv4
    /// destinations (given as IPv4 or as IPv4-mapped IPv6 addresses), which
    /// leave as IPv4 datagrams: a list may mix both families, and costs one
    /// fan-out per family. An IPv4 socket sends to IPv4 destinations (and
    /// IPv4-mapped ones) only.
    ///
    /// Returns what was sent. Destinations whose copy could not be sent are
    /// listed in [`Report::failed`], each with its [`FailureReason`](crate::FailureReason): in
    /// kernel mode that includes every copy the sending host dropped (a
    /// clone the device or its queue refused, a full backlog), since every
    /// copy is a clone whose transmit result the program sees. The call
    /// returns an error only when nothing was sent at all: [`Error::Send`],
    /// or [`Error::PayloadTooLarge`] when the MTU shrank under the payload.
    ///
    /// On a non-blocking socket, the call stops at the first send that
    /// would block: the destinations not sent yet are in [`Report::unsent`],
    /// and broadcasting to them once the socket is writable completes the
    /// broadcast with no copy sent twice (its documentation shows how). A
    /// call that would block before anything was sent returns
    /// `Err(Error::Send(err))` with `err.kind() == WouldBlock`. For tokio
    /// sockets, `broadcast_async` (feature `tokio`) does the waiting and
    /// resuming.
    ///
    /// Copies are never fragmented: each leaves as one whole datagram or
    /// not at all. The socket's own settings are left as they are, except
    /// that in kernel mode the first broadcast lets its sends carry a
    /// transmit time (`SO_TXTIME`), which is how the program tells the
    /// broadcast's datagram from every other datagram of the socket (see the
    /// README).
    ///
    /// # Errors
    /// Bad input is rejected before anything is sent: an empty list, an
    /// invalid destination ([`Error::InvalidDestination`], such as a
    /// link-local one without its scope id), an IPv6 multicast one
    /// ([`Error::MulticastDestination`]), one the socket cannot reach
    /// ([`Error::FamilyMismatch`]), one routed through another interface, a
    /// payload too large for the interface's MTU (more than
    /// [`Broadcaster::max_payload`] over IPv4, 20 bytes less over IPv6), a
    /// socket that is not a bound UDP socket.
    ///
    /// # IPv6 example
    ///
    /// ```no_run
    /// use std::net::{SocketAddr, SocketAddrV6, UdpSocket};
    /// use elec_broadcast::Broadcaster;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::new("eth0")?;
    /// // Dual stack: IPv6 and IPv4 destinations through one socket.
    /// let socket = UdpSocket::bind("[::]:7000")?;
    /// let scope = broadcaster.interface_index();
    /// let peers: Vec<SocketAddr> = vec![
    ///     "[fd00::2]:7000".parse()?,
    ///     SocketAddr::V6(SocketAddrV6::new("fe80::3".parse()?, 7000, 0, scope)),
    ///     "10.0.0.4:7000".parse()?,
    /// ];
    /// let report = broadcaster.broadcast(&socket, b"accept 42 v", &peers)?;
    /// assert_eq!(report.copies_sent + report.failed.len(), peers.len());
    /// # Ok(()) }
    /// ```
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::net::{SocketAddr, UdpSocket};
    /// use elec_broadcast::Broadcaster;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::new("eth0")?;
    /// let socket = UdpSocket::bind("0.0.0.0:7000")?;
    /// let peers: Vec<SocketAddr> = (2..=17).map(|i| SocketAddr::from(([10, 0, 0, i], 7000))).collect();
    /// let report = broadcaster.broadcast(&socket, b"accept 42 v", &peers)?;
    /// if !report.is_complete() {
    ///     eprintln!("no copy for {:?}", report.failed);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn broadcast<S: AsFd>(
        &self,
        socket: &S,
        payload: &[u8],
        destinations: &[SocketAddr],
    ) -> Result<Report, Error> {
        let part = self.send(socket.as_fd(), payload, destinations, None)?;
        let part = part.expect("a call from the start always sends");
        self.counters.add(&part.report, part.fan_outs);
        Ok(part.report)
    }

    /// Sends each of `payloads` once to every destination, through
    /// `socket`, with as few system calls as the kernel allows: per fan-out,
    /// one `sendmmsg(2)` of one carrier datagram per payload, each fanned
    /// out in the kernel. Returns one [`Report`] per payload, in order, each
    /// as [`Broadcaster::broadcast`] would give it.
    ///
    /// For protocols with several messages for the same peers at once (a
    /// Paxos leader's accepts under load, a gossip node's rumours): the
    /// fixed cost of a broadcast (the system call, the plan, the slot) is
    /// paid once per batch of up to 16 payloads (longer batches are split).
    /// Payloads may differ in size; each copy of each payload arrives byte
    /// for byte, and the payloads leave in the order given (to each
    /// destination). In user-space mode the whole batch is one `sendmmsg`.
    ///
    /// The reports are counted in [`Stats`] as one broadcast each.
    ///
    /// # Errors
    /// As for `broadcast`, before anything is sent: also [`Error::NoPayloads`]
    /// for an empty batch, and [`Error::PayloadTooLarge`] if any payload is.
    /// A payload that got nothing sent (a full non-blocking socket, say)
    /// has a report that says so, with every destination failed: on a
    /// non-blocking socket, resume each report's [`Report::unsent`] with
    /// `broadcast`.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::net::{SocketAddr, UdpSocket};
    /// use elec_broadcast::Broadcaster;
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::new("eth0")?;
    /// let socket = UdpSocket::bind("0.0.0.0:7000")?;
    /// let replicas: Vec<SocketAddr> = (2..=5).map(|i| SocketAddr::from(([10, 0, 0, i], 7000))).collect();
    /// let accepts: Vec<Vec<u8>> = (40..48).map(|slot| format!("accept {slot}").into_bytes()).collect();
    /// let payloads: Vec<&[u8]> = accepts.iter().map(Vec::as_slice).collect();
    /// let reports = broadcaster.broadcast_batch(&socket, &payloads, &replicas)?;
    /// assert_eq!(reports.len(), payloads.len());
    /// assert!(reports.iter().all(|report| report.is_complete()));
    /// # Ok(()) }
    /// ```
    pub fn broadcast_batch<S: AsFd>(
        &self,
        socket: &S,
        payloads: &[&[u8]],
        destinations: &[SocketAddr],
    ) -> Result<Vec<Report>, Error> {
        if payloads.is_empty() {
            return Err(Error::NoPayloads);
        }
        // Every payload is checked before anything is sent.
        check_destinations(destinations)?;
        // (check_payload looks at the list only for payloads that do not fit
        // the smallest limit, the IPv6 MTU's.)
        for payload in payloads {
            for link in std::iter::once(&self.primary).chain(read(&self.others).iter()) {
                link.check_payload(payload, destinations)?;
            }
        }
        let mut reports = Vec::with_capacity(payloads.len());
        for batch in payloads.chunks(MAX_BATCH) {
            let parts: Vec<Part> = self
                .send_each(socket.as_fd(), batch, destinations, None, true)?
                .expect("a call from the start always sends");
            for part in parts {
                self.counters.add(&part.report, part.fan_outs);
                reports.push(part.report);
            }
        }
        Ok(reports)
    }

    /// One call's sends, not counted in [`Stats`] yet. With `from`, a call
    /// that resumes one that stopped (because a send would have blocked)
    /// where it stopped, in the same plan: `None` if that plan is gone (the
    /// tables changed, or another list was sent on the socket since), and
    /// then the caller resumes with the list of what was not sent.
    fn send(
        &self,
        socket: BorrowedFd<'_>,
        payload: &[u8],
        destinations: &[SocketAddr],
        from: Option<Resume>,
    ) -> Result<Option<Part>, Error> {
        let parts: Option<One> = self.send_each(socket, &[payload], destinations, from, false)?;
        Ok(parts.and_then(|one| one.0))
    }

    /// The sends of `payloads` (at most `MAX_BATCH`), each to every
    /// destination, through the interface each destination's route goes
    /// through; `from` as for [`Broadcaster::send`] (one payload, one
    /// interface only: `None` otherwise). With `always_report`, a payload
    /// that got nothing sent has a report like the others.
    fn send_each<P: Parts>(
        &self,
        socket: BorrowedFd<'_>,
        payloads: &[&[u8]],
        destinations: &[SocketAddr],
        from: Option<Resume>,
        always_report: bool,
    ) -> Result<Option<P>, Error> {
        // The list is checked where it is planned (or split) afresh: a plan
        // kept for the same list was made for a list that passed.
        if destinations.is_empty() {
            return Err(Error::NoDestinations);
        }
        // On one interface: all through it (its plan refuses a destination
        // routed elsewhere). On several: split by interface, unless all go
        // through one.
        let split = match self.on_demand.is_none() && self.primary_only {
            true => None,
            false => Some(self.split(destinations)?),
        };
        let only = match split.as_deref() {
            None => Some(&self.primary),
            Some([(link, _)]) => Some(link),
            Some(_) => None,
        };
        if let Some(link) = only {
            let tags = &self.tags;
            return link.send_each(tags, socket, payloads, destinations, from, always_report);
        }
        let split = split.unwrap_or_default();
        if from.is_some() {
            return Ok(None);
        }
        self.send_split(socket, payloads, destinations, &split, always_report)
    }

    /// `send_each` over several interfaces: the destinations of each
    /// through it (`split`), one report per payload over all of them.
    #[inline(never)]
    fn send_split<P: Parts>(
        &self,
        socket: BorrowedFd<'_>,
        payloads: &[&[u8]],
        destinations: &[SocketAddr],
        split: &[LinkPart],
        always_report: bool,
    ) -> Result<Option<P>, Error> {
        // The socket reaches every destination, and every payload fits
        // every interface concerned, before anything is sent.
        if let Some((link, _)) = split.first() {
            check_family(link.socket_family(socket)?, destinations)?;
        }
        for (link, indices) in split {
            let some: Vec<SocketAddr> = indices.iter().map(|&i| destinations[i]).collect();
            for payload in payloads {
                link.check_payload(payload, &some)?;
            }
        }
        let mut reports = vec![Report::default(); payloads.len()];
        let mut failures: Vec<Vec<(usize, Failure)>> = vec![Vec::new(); payloads.len()];
        let mut fan_outs = vec![0; payloads.len()];
        let mut first_error = None;
        for (link, indices) in split {
            let some: Vec<SocketAddr> = indices.iter().map(|&i| destinations[i]).collect();
            match link.send_each::<Vec<Part>>(&self.tags, socket, payloads, &some, None, true) {
                Ok(parts) => {
                    for (k, part) in parts.into_iter().flatten().enumerate() {
                        let report = &mut reports[k];
                        report.kernel_copies += part.report.kernel_copies;
                        report.user_space_copies += part.report.user_space_copies;
                        report.copies_sent += part.report.copies_sent;
                        fan_outs[k] += part.fan_outs;
                        failures[k].extend(
                            part.failed_at
                                .iter()
                                .map(|&at| indices[at])
                                .zip(part.report.failed),
                        );
                    }
                }
                // Bad input (the socket, say): nothing was sent so far.
                Err(err) if reports.iter().all(|r| r.copies_sent == 0) && first_error.is_none() => {
                    return Err(err)
                }
                // Part was sent through other interfaces: this one's
                // destinations failed, for the reason the error gives.
                Err(err) => {
                    let reason = FailureReason::of_error(&err);
                    for failures in &mut failures {
                        failures.extend(indices.iter().map(|&i| {
                            (
                                i,
                                Failure {
                                    destination: destinations[i],
                                    reason,
                                },
                            )
                        }));
                    }
                    first_error.get_or_insert(err);
                }
            }
        }
        let mut parts = P::default();
        for ((mut report, mut failed), fan_outs) in reports.into_iter().zip(failures).zip(fan_outs)
        {
            // In the order the destinations were given.
            failed.sort_by_key(|&(i, _)| i);
            report.failed = failed.into_iter().map(|(_, failure)| failure).collect();
            if report.copies_sent == 0 && !always_report {
                if let Some(err) = first_error.take() {
                    return Err(err);
                }
            }
            parts.extend([Part {
                report,
                failed_at: Vec::new(),
                fan_outs,
                stopped: None,
            }]);
        }
        Ok(Some(parts))
    }

    /// Opens `interface` in the namespace this broadcaster was created in,
    /// from a thread that enters it if the calling thread is elsewhere.
    fn open_here(&self, interface: &str, mode: Mode) -> Result<Link, Error> {
        let same = |ns: &File| {
            let (Ok(ours), Ok(theirs)) = (ns.metadata(), std::fs::metadata(THIS_NAMESPACE)) else {
                return true;
            };
            (ours.dev(), ours.ino()) == (theirs.dev(), theirs.ino())
        };
        match &self.netns {
            Some(ns) if !same(ns) => thread::scope(|scope| {
                scope
                    .spawn(|| {
                        setns(ns, CloneFlags::CLONE_NEWNET).map_err(|err| Error::Io {
                            context: "entering the broadcaster's network namespace",
                            source: err.into(),
                        })?;
                        Link::open(interface, mode, false)
                    })
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }),
            _ => Link::open(interface, mode, false),
        }
    }

    /// `destinations` split by the interface each one's route goes through
    /// (the primary interface for local destinations and those with no
    /// route, whose sends report it), attaching the program where
    /// [`Broadcaster::attach_on_demand`] allows.
    fn split(&self, destinations: &[SocketAddr]) -> Result<Vec<LinkPart>, Error> {
        let mut cached = lock(&self.split);
        if let Some(split) = cached.as_ref() {
            if self.primary.resolver.is_current(split.generation)
                && split.destinations == destinations
            {
                return Ok(split.parts.clone());
            }
        }
        check_destinations(destinations)?;
        let targets: Vec<Target> = destinations.iter().map(Target::of).collect();
        let paths = self
            .primary
            .resolver
            .paths(&targets)
            .map_err(Error::io("reading the routing and neighbour tables"))?;
        let mut parts: Vec<LinkPart> = Vec::new();
        for (i, path) in paths.to.into_iter().enumerate() {
            let link = match path {
                PathTo::Elsewhere(ifindex) => self.link(ifindex, destinations[i])?,
                PathTo::FanOut(_) | PathTo::UserSpace => Arc::clone(&self.primary),
            };
            match parts.iter_mut().find(|(l, _)| l.ifindex == link.ifindex) {
                Some((_, indices)) => indices.push(i),
                None => parts.push((link, vec![i])),
            }
        }
        *cached = Some(Split {
            destinations: destinations.to_vec(),
            generation: paths.generation,
            parts: parts.clone(),
        });
        Ok(parts)
    }

    /// The interface of index `ifindex` that `destination` is routed
    /// through: one this broadcaster is on, or (on demand) attached now.
    fn link(&self, ifindex: u32, destination: SocketAddr) -> Result<Arc<Link>, Error> {
        let known = |links: &[Arc<Link>]| links.iter().find(|l| l.ifindex == ifindex).cloned();
        if let Some(link) = known(&read(&self.others)) {
            return Ok(link);
        }
        let name = self.primary.resolver.interface_name(ifindex);
        let Some(mode) = self.on_demand else {
            return Err(Error::OtherInterface {
                destination,
                interface: self.interfaces().join(", "),
                route_interface: name,
            });
        };
        let mut others = self.others.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(link) = known(&others) {
            return Ok(link);
        }
        let link = Arc::new(self.open_here(&name, mode)?);
        log::info!("elec-broadcast: attached to {name} on demand (for {destination})");
        others.push(Arc::clone(&link));
        Ok(link)
    }
}

/// Test hooks: only with the `test-hooks` feature (which the crate's own
/// tests turn on); not part of the API.
#[cfg(feature = "test-hooks")]
#[doc(hidden)]
impl Broadcaster {
    /// Kernel mode attached with clsact even where TCX exists (for tests of
    /// the path older kernels take).
    pub fn with_clsact(interface: &str) -> Result<Broadcaster, Error> {
        Broadcaster::build(&[interface], Mode::Kernel, true)
    }

    /// Whether the program is attached with TCX (else clsact).
    pub fn uses_tcx(&self) -> Option<bool> {
        self.primary.kernel.as_ref().map(|p| p.uses_tcx())
    }

    /// The kernel's id of the fan-out program on the primary interface
    /// (None in user-space mode).
    pub fn program_id(&self) -> Option<std::io::Result<u32>> {
        self.primary.kernel.as_ref().map(|p| p.id())
    }

    /// Times the change notifications overflowed and the tables were read
    /// afresh.
    pub fn notification_overflows(&self) -> u64 {
        self.primary.resolver.overflows()
    }

    /// Keeps the kernel's change notifications from being read while the
    /// guard lives, so that they pile up until their socket overflows.
    /// Broadcasts go on meanwhile.
    pub fn hold_notifications(&self) -> impl Drop + '_ {
        self.primary.watcher.hold()
    }
}

impl Drop for Broadcaster {
    fn drop(&mut self) {
        // The program is detached when `kernel` drops; log what it counted.
        if let Some(counters) = self.kernel_counters() {
            log::debug!(
                "elec-broadcast on {}: kernel counters {counters:?}",
                self.interfaces().join(", ")
            );
        }
    }
}

impl std::fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcaster")
            .field("interfaces", &self.interfaces())
            .field("mode", &self.mode())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
