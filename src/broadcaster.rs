//! The public handle: [`Broadcaster`], which owns the attached program and
//! the tables it follows, and carries out each `broadcast` call through the
//! send side (see the `send` module for the steps of a call).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use crate::kernel::{Program, Tags, MAX_BATCH};
use crate::report::{Counters, KernelCounters, Report, Stats};
use crate::send::call::{Call, Resume};
use crate::send::plan::Plan;
use crate::send::sockets::{lock, Sockets};
use crate::send::{fan_out, user_space, HEADERS};
use crate::tables::{ChangeSocket, Resolver, RouteSocket, Watcher};
use crate::Error;

#[cfg(feature = "tokio")]
mod tokio_socket;

/// The largest UDP payload an IPv4 datagram can carry.
const MAX_UDP_PAYLOAD: usize = 65_535 - HEADERS;

/// The largest payload that fits `mtu` in one IPv4/UDP datagram.
fn max_payload(mtu: u32) -> usize {
    (mtu as usize).saturating_sub(HEADERS).min(MAX_UDP_PAYLOAD)
}

/// What one call of [`Broadcaster::send`] did.
struct Part {
    report: Report,
    /// Fan-outs it took.
    fan_outs: usize,
    /// Where it stopped because a send would have blocked, if it did and the
    /// place can be resumed from (what `broadcast_async` resumes from).
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    stopped: Option<Resume>,
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
/// A `Broadcaster` owns the eBPF program attached to one interface's egress
/// and detaches it on drop. It can be shared between threads; broadcasts on
/// different sockets run in parallel, broadcasts on one socket one at a time.
///
/// Destinations whose route leaves through that interface and whose next
/// hop's MAC address is in the kernel's neighbour table are fanned out in
/// the kernel. Local destinations and neighbours not resolved yet are sent
/// from user space through the same socket, so every destination gets
/// exactly one copy either way; the kernel resolves the missing neighbours
/// on that first send. A destination routed through another interface is
/// refused ([`Error::OtherInterface`]), in both modes.
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
    interface: String,
    ifindex: u32,
    fallback_reason: Option<Error>,
    kernel: Option<Program>,
    resolver: Arc<Resolver>,
    // Held for its Drop, which stops the thread (and for a test hook).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    watcher: Watcher,
    sockets: Sockets,
    tags: Tags,
    counters: Counters,
}

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
        Broadcaster::build(interface, mode, false)
    }

    fn build(interface: &str, mode: Mode, force_clsact: bool) -> Result<Broadcaster, Error> {
        // Subscribe before reading anything, so that no change falls between.
        let changes = ChangeSocket::open().map_err(Error::io("subscribing to routing changes"))?;
        let netlink = RouteSocket::open().map_err(Error::io("opening a netlink socket"))?;
        let link = netlink.link(interface).map_err(|err| match err.kind() {
            io::ErrorKind::NotFound | io::ErrorKind::InvalidInput => Error::UnknownInterface {
                name: interface.to_string(),
            },
            _ => Error::Io {
                context: "reading the interface",
                source: err,
            },
        })?;

        let kernel = match mode {
            Mode::UserSpace => Err(None),
            Mode::Auto | Mode::Kernel => {
                let attached = if link.mac.is_none_or(|mac| mac == [0; 6]) {
                    // Layer-3 devices have no MAC; loopback's is all zeros and
                    // everything it carries is local, so nothing could be cloned.
                    Err(Error::UnsupportedInterface {
                        name: interface.to_string(),
                        why: "it has no Ethernet address (a loopback or layer-3 device): \
                              use Mode::UserSpace there",
                    })
                } else {
                    Program::attach(interface, link.index, force_clsact)
                };
                match attached {
                    Ok(program) => Ok(program),
                    Err(err) if mode == Mode::Kernel => return Err(err),
                    Err(err) => {
                        log::warn!("elec-broadcast: using user-space sends on {interface}: {err}");
                        Err(Some(err))
                    }
                }
            }
        };
        let (kernel, fallback_reason) = match kernel {
            Ok(program) => (Some(program), None),
            Err(reason) => (None, reason),
        };
        let resolver = Arc::new(Resolver::new(netlink, link.index, link.mtu));
        let watcher = Watcher::start(Arc::clone(&resolver), changes).map_err(Error::io(
            "starting the thread that follows routing changes",
        ))?;
        Ok(Broadcaster {
            interface: interface.to_string(),
            ifindex: link.index,
            fallback_reason,
            kernel,
            resolver,
            watcher,
            sockets: Sockets::default(),
            tags: Tags::new(),
            counters: Counters::default(),
        })
    }

    /// The backend in use: [`Mode::Kernel`] or [`Mode::UserSpace`].
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
        if self.kernel.is_some() {
            Mode::Kernel
        } else {
            Mode::UserSpace
        }
    }

    /// Why [`Mode::Auto`] chose user space, if it did.
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
        self.fallback_reason.as_ref()
    }

    /// The interface's name.
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
        &self.interface
    }

    /// The interface's index.
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
        self.ifindex
    }

    /// Largest payload one broadcast can carry: the interface's current MTU
    /// minus the IPv4 and UDP headers. (A destination whose route has a
    /// smaller MTU of its own takes less.)
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
        max_payload(self.resolver.mtu())
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

    /// The kernel program's own counters; `None` in user-space mode.
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
        let s = self.kernel.as_ref()?.kernel_stats().ok()?;
        Some(KernelCounters {
            fan_outs: s.fan_outs,
            clones: s.clones,
            clone_failures: s.clone_failures,
            rewrite_failures: s.rewrite_failures,
            mismatches: s.mismatches,
        })
    }

    /// Sends `payload` once to every destination, through `socket`.
    ///
    /// `socket` is any bound IPv4 UDP socket (std, socket2, tokio, ... all
    /// implement [`AsFd`]); every copy carries its address as the source.
    /// The payload arrives byte for byte as given. Lists longer than 256
    /// destinations are split into several fan-outs.
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
    /// Bad input is rejected before anything is sent: an empty list, an IPv6
    /// or otherwise invalid destination, a destination routed through
    /// another interface, a payload larger than
    /// [`Broadcaster::max_payload`], a socket that is not a bound IPv4 UDP
    /// socket.
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
        for payload in payloads {
            self.check_input(payload, destinations)?;
        }
        let mut reports = Vec::with_capacity(payloads.len());
        for batch in payloads.chunks(MAX_BATCH) {
            let parts = self
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
        let parts = self.send_each(socket, &[payload], destinations, from, false)?;
        Ok(parts.map(|mut parts| parts.remove(0)))
    }

    /// The sends of `payloads` (at most `MAX_BATCH`), each to every
    /// destination, sharing one plan and, per fan-out, one `sendmmsg` of
    /// their carriers; `from` as for [`Broadcaster::send`] (one payload
    /// only). With `always_report`, a payload that got nothing sent has a
    /// report like the others (else the call's error is returned).
    fn send_each(
        &self,
        socket: BorrowedFd<'_>,
        payloads: &[&[u8]],
        destinations: &[SocketAddr],
        from: Option<Resume>,
        always_report: bool,
    ) -> Result<Option<Vec<Part>>, Error> {
        debug_assert!(from.is_none() || payloads.len() == 1);
        if from.is_none() {
            for payload in payloads {
                self.check_input(payload, destinations)?;
            }
        }
        let entry = self.sockets.entry(self.kernel.as_ref(), socket)?;
        let mut state = lock(&entry);
        let plan = match (state.plan.take(), from) {
            (Some(plan), Some(from))
                if plan.id == from.plan && plan.is_current(&self.resolver, destinations) =>
            {
                plan
            }
            (plan, Some(_)) => {
                state.plan = plan;
                return Ok(None);
            }
            (Some(plan), None) if plan.is_current(&self.resolver, destinations) => plan,
            _ => {
                state.slot_holds = None;
                let fan_out = state.slot.is_some();
                Plan::make(&self.resolver, &self.interface, destinations, fan_out)?
            }
        };
        let longest = payloads.iter().map(|p| p.len()).max().unwrap_or(0);
        if let Some(mtu) = plan.mtu.filter(|&mtu| longest + HEADERS > mtu as usize) {
            state.plan = Some(plan);
            return Err(self.payload_too_large(longest, Some(mtu)));
        }

        let skipped = from.map_or(0, |from| {
            let chunks = &plan.chunks[..from.chunks];
            chunks.iter().map(|c| c.indices.len()).sum::<usize>() + from.user_space
        });
        let mut calls: Vec<Call<'_>> = payloads
            .iter()
            .map(|payload| Call::new(socket, payload, destinations, from, skipped))
            .collect();
        let bypassed = match (&self.kernel, state.slot) {
            (Some(program), Some(slot)) => {
                fan_out::send(program, slot, &self.tags, &mut state, &plan, &mut calls)
            }
            _ => false,
        };
        user_space::send_planned(&mut state, &mut calls, &plan);

        if bypassed {
            // Look at the socket and the tables again before the next call.
            if let Err(err) = self
                .sockets
                .take_over(self.kernel.as_ref(), &mut state, socket)
            {
                log::warn!("elec-broadcast: the socket behind the fd changed: {err}");
            }
        } else {
            state.plan = Some(plan);
        }
        let kept = state.plan.is_some();
        let mut parts = Vec::with_capacity(calls.len());
        let mut first_error = None;
        for mut call in calls {
            call.always_report = always_report;
            // The MTU changed under us (the interface's, a route's, or one
            // the kernel learned for the path): learn it now, not at the
            // notification, and plan afresh.
            let too_large = call.too_large_to().map(|to| {
                state.plan = None;
                self.resolver
                    .path_mtu(*to.ip())
                    .unwrap_or_else(|_| self.resolver.mtu())
            });
            let fan_outs = call.fan_outs;
            // Resumable only in the plan kept for the next call.
            let stopped = call.stopped.filter(|_| kept && state.plan.is_some());
            let len = call.payload.len();
            match call.finish(|| self.payload_too_large(len, too_large)) {
                Ok(report) => parts.push(Part {
                    report,
                    fan_outs,
                    stopped,
                }),
                Err(err) => {
                    first_error.get_or_insert(err);
                }
            }
        }
        match first_error {
            Some(err) => Err(err),
            None => Ok(Some(parts)),
        }
    }

    fn check_input(&self, payload: &[u8], destinations: &[SocketAddr]) -> Result<(), Error> {
        if destinations.is_empty() {
            return Err(Error::NoDestinations);
        }
        for &destination in destinations {
            match destination {
                SocketAddr::V6(_) => return Err(Error::Ipv6Destination { destination }),
                SocketAddr::V4(v4) => {
                    let ip = v4.ip();
                    if v4.port() == 0 || ip.is_unspecified() || ip.is_broadcast() {
                        return Err(Error::InvalidDestination { destination });
                    }
                }
            }
        }
        if payload.len() > self.max_payload() {
            // The MTU may have grown since its notification was applied:
            // refuse only what the MTU refuses now.
            let mtu = self
                .resolver
                .reread_mtu()
                .map_err(Error::io("reading the interface's MTU"))?;
            if payload.len() > max_payload(mtu) {
                return Err(self.payload_too_large(payload.len(), Some(mtu)));
            }
        }
        Ok(())
    }

    /// The error for a payload of `len` bytes that does not fit `mtu` (by
    /// default the interface's).
    fn payload_too_large(&self, len: usize, mtu: Option<u32>) -> Error {
        let mtu = mtu.unwrap_or_else(|| self.resolver.mtu());
        Error::PayloadTooLarge {
            len,
            max: max_payload(mtu),
            mtu,
            interface: self.interface.clone(),
        }
    }
}

/// Test hooks: only with the `test-hooks` feature (which the crate's own
/// tests turn on); not part of the API.
#[cfg(feature = "test-hooks")]
impl Broadcaster {
    /// Kernel mode attached with clsact even where TCX exists (for tests of
    /// the path older kernels take).
    pub fn with_clsact(interface: &str) -> Result<Broadcaster, Error> {
        Broadcaster::build(interface, Mode::Kernel, true)
    }

    /// Whether the program is attached with TCX (else clsact).
    pub fn uses_tcx(&self) -> Option<bool> {
        self.kernel.as_ref().map(Program::uses_tcx)
    }

    /// Times the change notifications overflowed and the tables were read
    /// afresh.
    pub fn notification_overflows(&self) -> u64 {
        self.resolver.overflows()
    }

    /// Keeps the kernel's change notifications from being read while the
    /// guard lives, so that they pile up until their socket overflows.
    /// Broadcasts go on meanwhile.
    pub fn hold_notifications(&self) -> impl Drop + '_ {
        self.watcher.hold()
    }
}

impl Drop for Broadcaster {
    fn drop(&mut self) {
        // The program is detached when `kernel` drops; log what it counted.
        if let Some(counters) = self.kernel_counters() {
            log::debug!(
                "elec-broadcast on {}: kernel counters {counters:?}",
                self.interface
            );
        }
    }
}

impl std::fmt::Debug for Broadcaster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broadcaster")
            .field("interface", &self.interface)
            .field("mode", &self.mode())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}
