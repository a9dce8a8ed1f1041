//! What a broadcast did ([`Report`], with a [`Failure`] and its
//! [`FailureReason`] for every destination that got no copy), the sums over
//! a broadcaster's life ([`Stats`]), and the kernel program's own counters
//! ([`KernelCounters`]).

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::Error;

/// What one [`Broadcaster::broadcast`](crate::Broadcaster::broadcast) call
/// did (or one `broadcast_async` call, or one payload of a
/// [`broadcast_batch`](crate::Broadcaster::broadcast_batch)).
///
/// Every destination is counted once: in `kernel_copies`, in
/// `user_space_copies`, or in `failed`. [`Stats`] sums these over calls.
///
/// # Example
///
/// ```no_run
/// use std::net::{SocketAddr, UdpSocket};
/// use elec_broadcast::{Broadcaster, FailureReason};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broadcaster = Broadcaster::new("eth0")?;
/// let socket = UdpSocket::bind("0.0.0.0:7000")?;
/// let peers: Vec<SocketAddr> = vec!["10.0.0.2:7000".parse()?, "10.0.0.3:7000".parse()?];
/// let report = broadcaster.broadcast(&socket, b"commit 7", &peers)?;
/// for failure in &report.failed {
///     match failure.reason {
///         FailureReason::Dropped => eprintln!("{} dropped on the way out", failure.destination),
///         reason => eprintln!("{}: {reason}", failure.destination),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Datagrams that left: one per destination that got its copy
    /// (`kernel_copies + user_space_copies`).
    pub copies_sent: usize,
    /// Of these, copies the kernel fan-out made (clones the interface
    /// accepted).
    pub kernel_copies: usize,
    /// Of these, copies sent from user space, with `sendmmsg` (user-space
    /// mode, or destinations the fan-out cannot take: local ones, neighbours
    /// not resolved yet; see [`Broadcaster`](crate::Broadcaster)).
    pub user_space_copies: usize,
    /// Destinations that got no copy, and why, in the order they were
    /// given. A destination listed twice is counted twice.
    pub failed: Vec<Failure>,
}

/// A destination that got no copy.
///
/// # Example
///
/// ```
/// use std::net::{SocketAddr, UdpSocket};
/// use elec_broadcast::{Broadcaster, Mode};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
/// let socket = UdpSocket::bind("127.0.0.1:0")?;
/// let peer = UdpSocket::bind("127.0.0.1:0")?;
/// // A broadcast address, refused: the socket does not have SO_BROADCAST set.
/// let refused: SocketAddr = "127.255.255.255:7000".parse()?;
/// let report = broadcaster.broadcast(&socket, b"ping", &[peer.local_addr()?, refused])?;
/// let failure = &report.failed[0];
/// assert_eq!((report.copies_sent, failure.destination), (1, refused));
/// eprintln!("no copy for {}: {}", failure.destination, failure.reason);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Failure {
    /// The destination, as it was given.
    pub destination: SocketAddr,
    /// Why it got no copy.
    pub reason: FailureReason,
}

impl Failure {
    /// A failure, for code that builds reports of its own (tests, say).
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Failure, FailureReason, Report};
    ///
    /// let mut report = Report::default();
    /// report.failed.push(Failure::new("10.0.0.2:7000".parse().unwrap(), FailureReason::Dropped));
    /// assert!(!report.is_complete());
    /// ```
    pub fn new(destination: SocketAddr, reason: FailureReason) -> Failure {
        Failure {
            destination,
            reason,
        }
    }
}

/// Why a destination got no copy.
///
/// Only [`FailureReason::WouldBlock`] means "not sent yet": the caller may
/// send it again (see [`Report::unsent`]) and it gets one copy. Every other
/// reason means the copy was made and lost, or refused for good.
///
/// What a call cannot know: a neighbour that does not answer. A destination
/// whose next hop's address is not resolved goes out from user space, so
/// that the kernel resolves it; if resolution fails, the kernel drops the
/// datagram later, after the call returned (and the next calls to that
/// destination take the same path until the neighbour answers).
///
/// # Example
///
/// ```
/// use std::net::{SocketAddr, UdpSocket};
/// use elec_broadcast::{Broadcaster, FailureReason, Mode};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
/// let socket = UdpSocket::bind("127.0.0.1:0")?;
/// let peer = UdpSocket::bind("127.0.0.1:0")?;
/// let refused: SocketAddr = "127.255.255.255:7000".parse()?; // no SO_BROADCAST
/// let report = broadcaster.broadcast(&socket, b"ping", &[peer.local_addr()?, refused])?;
/// for failure in &report.failed {
///     match failure.reason {
///         // Not sent yet: send it again once the socket is writable.
///         FailureReason::WouldBlock => unreachable!("a blocking socket waits"),
///         // Lost or refused for good.
///         reason => eprintln!("{}: {reason}", failure.destination),
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// Not sent: the socket's send buffer was full (a non-blocking socket,
    /// `EAGAIN`). Nothing was sent to this destination; send it again when
    /// the socket is writable.
    WouldBlock,
    /// The copy was made but the sending host dropped it: the device, its
    /// queue, or (on a virtual link) the receiving end's backlog refused it
    /// (`ENOBUFS`, or a kernel clone whose transmit failed).
    Dropped,
    /// No route to the destination, or a route that says unreachable
    /// (`ENETUNREACH`, `EHOSTUNREACH`). (A prohibited route, and a
    /// broadcast address on a socket without `SO_BROADCAST`, give
    /// `Os(EACCES)`.)
    Unreachable,
    /// A firewall rule on the sending host refused the copy (`EPERM`).
    Filtered,
    /// Larger than the path's MTU (`EMSGSIZE`): never fragmented.
    TooLarge,
    /// The kernel was out of memory (`ENOMEM`, or a header that could not be
    /// rewritten in the kernel fan-out).
    NoMemory,
    /// Any other error of the send, by its `errno`.
    Os(i32),
}

impl FailureReason {
    /// The reason for a send that failed with `err`.
    pub(crate) fn of(err: &io::Error) -> FailureReason {
        match err.raw_os_error() {
            Some(libc::EAGAIN) => FailureReason::WouldBlock,
            Some(libc::ENOBUFS) => FailureReason::Dropped,
            Some(libc::ENETUNREACH | libc::EHOSTUNREACH) => FailureReason::Unreachable,
            Some(libc::EPERM) => FailureReason::Filtered,
            Some(libc::EMSGSIZE) => FailureReason::TooLarge,
            Some(libc::ENOMEM) => FailureReason::NoMemory,
            Some(code) => FailureReason::Os(code),
            None if err.kind() == io::ErrorKind::WouldBlock => FailureReason::WouldBlock,
            None => FailureReason::Os(libc::EIO),
        }
    }

    /// The reason that stands for a call that failed with `err` as a whole.
    pub(crate) fn of_error(err: &Error) -> FailureReason {
        match err {
            Error::Send(err) => FailureReason::of(err),
            Error::PayloadTooLarge { .. } => FailureReason::TooLarge,
            Error::Io { source, .. } => FailureReason::of(source),
            _ => FailureReason::Os(libc::EINVAL),
        }
    }

    /// Position in the per-reason counters of [`Stats`].
    fn index(self) -> usize {
        match self {
            FailureReason::WouldBlock => 0,
            FailureReason::Dropped => 1,
            FailureReason::Unreachable => 2,
            FailureReason::Filtered => 3,
            FailureReason::TooLarge => 4,
            FailureReason::NoMemory => 5,
            FailureReason::Os(_) => 6,
        }
    }
}

/// How many [`FailureReason`]s [`Stats`] counts apart (`Os` is one).
const REASONS: usize = 7;

impl std::fmt::Display for FailureReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FailureReason::WouldBlock => f.write_str("not sent: the socket's send buffer is full"),
            FailureReason::Dropped => f.write_str("dropped by the device or its queue"),
            FailureReason::Unreachable => f.write_str("no route to the destination"),
            FailureReason::Filtered => f.write_str("refused by a firewall rule"),
            FailureReason::TooLarge => f.write_str("larger than the path's MTU"),
            FailureReason::NoMemory => f.write_str("the kernel was out of memory"),
            FailureReason::Os(code) => write!(f, "{}", io::Error::from_raw_os_error(*code)),
        }
    }
}

impl Report {
    /// True when every destination got its copy.
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
    /// let peers = [UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?];
    /// let to = [peers[0].local_addr()?, peers[1].local_addr()?];
    /// let report = broadcaster.broadcast(&socket, b"ping", &to)?;
    /// assert!(report.is_complete());
    /// assert_eq!(report.copies_sent, 2);
    /// # Ok(()) }
    /// ```
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }

    /// The destinations that got no copy, in the order of [`Report::failed`].
    ///
    /// # Example
    ///
    /// ```
    /// use std::net::{SocketAddr, UdpSocket};
    /// use elec_broadcast::{Broadcaster, Mode};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
    /// let socket = UdpSocket::bind("127.0.0.1:0")?;
    /// let peer = UdpSocket::bind("127.0.0.1:0")?;
    /// let refused: SocketAddr = "127.255.255.255:7000".parse()?; // no SO_BROADCAST
    /// let report = broadcaster.broadcast(&socket, b"ping", &[refused, peer.local_addr()?, refused])?;
    /// let failed: Vec<SocketAddr> = report.failed_destinations().collect();
    /// assert_eq!(failed, [refused, refused]);
    /// # Ok(()) }
    /// ```
    pub fn failed_destinations(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.failed.iter().map(|failure| failure.destination)
    }

    /// The destinations not sent yet because the socket would have blocked
    /// ([`FailureReason::WouldBlock`]), in the order they were given: the
    /// list to resume with.
    ///
    /// A broadcast on a non-blocking socket stops at the first send that
    /// would block; every destination after it is in this list, and none of
    /// them got anything. Broadcasting the same payload to this list once
    /// the socket is writable (and folding that report in with
    /// [`Report::merge`]) sends every destination its copy exactly once.
    /// (`Broadcaster::broadcast_async` does this
    /// for tokio sockets.) A call that sent nothing at all returns
    /// `Err(Error::Send(err))` instead, with `err.kind()` `WouldBlock`: then
    /// the whole list is to be sent again.
    ///
    /// # Example
    ///
    /// ```no_run
    /// use std::net::{SocketAddr, UdpSocket};
    /// use elec_broadcast::{Broadcaster, Error};
    ///
    /// # fn wait_until_writable(_: &UdpSocket) {}
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::new("eth0")?;
    /// let socket = UdpSocket::bind("0.0.0.0:7000")?;
    /// socket.set_nonblocking(true)?;
    /// let peers: Vec<SocketAddr> = (2..=200).map(|i| SocketAddr::from(([10, 0, 0, i], 7000))).collect();
    /// let mut report: Option<elec_broadcast::Report> = None;
    /// let mut to_send = peers.clone();
    /// while !to_send.is_empty() {
    ///     match broadcaster.broadcast(&socket, b"rumour", &to_send) {
    ///         Ok(part) => {
    ///             to_send = part.unsent();
    ///             match &mut report {
    ///                 Some(report) => report.merge(part),
    ///                 None => report = Some(part),
    ///             }
    ///         }
    ///         // Nothing was sent: the same list again.
    ///         Err(Error::Send(err)) if err.kind() == std::io::ErrorKind::WouldBlock => {}
    ///         Err(err) => return Err(err.into()),
    ///     }
    ///     if !to_send.is_empty() {
    ///         wait_until_writable(&socket); // poll(2) for POLLOUT, say
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub fn unsent(&self) -> Vec<SocketAddr> {
        self.failed
            .iter()
            .filter(|failure| failure.reason == FailureReason::WouldBlock)
            .map(|failure| failure.destination)
            .collect()
    }

    /// Folds in the report of a call that resumed this one: a broadcast of
    /// the same payload to [`Report::unsent`]. Its copies are added, and
    /// this report's would-block failures give way to its failures.
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
    /// socket.set_nonblocking(true)?;
    /// let peer = UdpSocket::bind("127.0.0.1:0")?;
    /// let peers = vec![peer.local_addr()?; 8];
    /// let mut report = broadcaster.broadcast(&socket, b"rumour", &peers)?;
    /// let rest = report.unsent();
    /// if !rest.is_empty() {
    ///     socket.set_nonblocking(false)?; // this time, wait for room
    ///     report.merge(broadcaster.broadcast(&socket, b"rumour", &rest)?);
    /// }
    /// assert_eq!(report.copies_sent, peers.len());
    /// # Ok(()) }
    /// ```
    pub fn merge(&mut self, resumed: Report) {
        self.copies_sent += resumed.copies_sent;
        self.kernel_copies += resumed.kernel_copies;
        self.user_space_copies += resumed.user_space_copies;
        self.failed
            .retain(|failure| failure.reason != FailureReason::WouldBlock);
        self.failed.extend(resumed.failed);
    }
}

/// Counters over the life of a [`Broadcaster`](crate::Broadcaster): the sums
/// of the [`Report`]s of its calls, and how many fan-outs they took.
///
/// # Example
///
/// ```
/// use std::net::{SocketAddr, UdpSocket};
/// use elec_broadcast::{Broadcaster, FailureReason, Mode};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broadcaster = Broadcaster::with_mode("lo", Mode::UserSpace)?;
/// let socket = UdpSocket::bind("127.0.0.1:0")?;
/// let peer = UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
/// let refused: SocketAddr = "127.255.255.255:7000".parse()?; // no SO_BROADCAST
/// broadcaster.broadcast(&socket, b"one", &[peer])?;
/// broadcaster.broadcast(&socket, b"two", &[peer, refused])?;
/// let stats = broadcaster.stats();
/// assert_eq!((stats.broadcasts, stats.fan_outs), (2, 0)); // user space: no fan-outs
/// assert_eq!((stats.user_space_copies, stats.copies_failed), (2, 1));
/// assert_eq!(stats.failed(FailureReason::WouldBlock), 0);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Broadcasts that sent something: calls to `broadcast` and
    /// `broadcast_async`, and payloads of `broadcast_batch` (that did not return an
    /// error).
    pub broadcasts: u64,
    /// Datagrams the kernel program fanned out (at most 256 destinations each).
    pub fan_outs: u64,
    /// The sum of [`Report::kernel_copies`].
    pub kernel_copies: u64,
    /// The sum of [`Report::user_space_copies`].
    pub user_space_copies: u64,
    /// The sum of the lengths of [`Report::failed`].
    pub copies_failed: u64,
    /// `copies_failed` by reason (see [`Stats::failed`]).
    by_reason: [u64; REASONS],
}

impl Stats {
    /// How many of [`Stats::copies_failed`] failed for `reason` (every
    /// [`FailureReason::Os`] code counts as one reason).
    ///
    /// # Example
    ///
    /// ```no_run
    /// use elec_broadcast::{Broadcaster, FailureReason};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let broadcaster = Broadcaster::new("eth0")?;
    /// // ... broadcasts ...
    /// let stats = broadcaster.stats();
    /// println!("{} copies dropped by the device or its queue", stats.failed(FailureReason::Dropped));
    /// # Ok(()) }
    /// ```
    pub fn failed(&self, reason: FailureReason) -> u64 {
        self.by_reason[reason.index()]
    }
}

/// The kernel program's own counters (from its per-CPU `stats` map), for
/// monitoring and for checking [`Stats`] against.
///
/// # Example
///
/// ```no_run
/// use elec_broadcast::{Broadcaster, Mode};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let broadcaster = Broadcaster::with_mode("eth0", Mode::Kernel)?;
/// // ... broadcasts ...
/// let stats = broadcaster.stats();
/// let kernel = broadcaster.kernel_counters().expect("kernel mode has a program");
/// // With no broadcast in flight, every copy the reports counted is a clone that left.
/// println!("clones {} (reported {})", kernel.clones, stats.kernel_copies);
/// if kernel.mismatches > 0 {
///     eprintln!("{} datagrams could not be fanned out", kernel.mismatches);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct KernelCounters {
    /// Datagrams fanned out.
    pub fan_outs: u64,
    /// Clones the interface accepted: every copy of a fan-out that left.
    pub clones: u64,
    /// Clones the device, its queue or the receiving backlog dropped, or
    /// that could not be made.
    pub clone_failures: u64,
    /// Destinations lost because a header could not be rewritten (no memory).
    pub rewrite_failures: u64,
    /// Datagrams with an armed tag that could not be fanned out (IP options,
    /// fragments, not as armed); they went to their first destination.
    pub mismatches: u64,
}

/// The [`Stats`] of a broadcaster as it goes.
#[derive(Default)]
pub(crate) struct Counters {
    broadcasts: AtomicU64,
    fan_outs: AtomicU64,
    kernel_copies: AtomicU64,
    user_space_copies: AtomicU64,
    copies_failed: AtomicU64,
    by_reason: [AtomicU64; REASONS],
}

impl Counters {
    /// Adds one call's report, and the fan-outs it took.
    pub(crate) fn add(&self, report: &Report, fan_outs: usize) {
        let add = |counter: &AtomicU64, n: usize| counter.fetch_add(n as u64, Ordering::Relaxed);
        add(&self.broadcasts, 1);
        add(&self.fan_outs, fan_outs);
        add(&self.kernel_copies, report.kernel_copies);
        add(&self.user_space_copies, report.user_space_copies);
        add(&self.copies_failed, report.failed.len());
        for failure in &report.failed {
            add(&self.by_reason[failure.reason.index()], 1);
        }
    }

    pub(crate) fn stats(&self) -> Stats {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        Stats {
            broadcasts: get(&self.broadcasts),
            fan_outs: get(&self.fan_outs),
            kernel_copies: get(&self.kernel_copies),
            user_space_copies: get(&self.user_space_copies),
            copies_failed: get(&self.copies_failed),
            by_reason: self.by_reason.each_ref().map(get),
        }
    }
}
