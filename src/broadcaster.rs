//! The public handle: [`Broadcaster`], which owns the attached program and
//! the tables it follows, and carries out each `broadcast` call through the
//! send side (see the `send` module for the steps of a call).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use crate::kernel::{Program, Tags};
use crate::report::{Counters, KernelCounters, Report, Stats};
use crate::send::call::{Call, Resume};
use crate::send::plan::Plan;
use crate::send::sockets::{lock, Sockets};
use crate::send::{fan_out, user_space, HEADERS};
use crate::tables::{ChangeSocket, Resolver, RouteSocket, Watcher};
use crate::Error;

#[cfg(feature = "tokio")]
mod tokio_socket;

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
    pub fn new(interface: &str) -> Result<Broadcaster, Error> {
        Broadcaster::with_mode(interface, Mode::Auto)
    }

    /// Like [`Broadcaster::new`] with an explicit [`Mode`]. With
    /// [`Mode::Kernel`], a kernel backend that cannot be used is an error.
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
    pub fn mode(&self) -> Mode {
        if self.kernel.is_some() {
            Mode::Kernel
        } else {
            Mode::UserSpace
        }
    }

    /// Why [`Mode::Auto`] chose user space, if it did.
    pub fn fallback_reason(&self) -> Option<&Error> {
        self.fallback_reason.as_ref()
    }

    /// The interface's name.
    pub fn interface(&self) -> &str {
        &self.interface
    }

    /// The interface's index.
    pub fn interface_index(&self) -> u32 {
        self.ifindex
    }

    /// Largest payload one broadcast can carry: the interface's current MTU
    /// minus the IPv4 and UDP headers. (A destination whose route has a
    /// smaller MTU of its own takes less.)
    pub fn max_payload(&self) -> usize {
        (self.resolver.mtu() as usize).saturating_sub(HEADERS)
    }

    /// Counters since this broadcaster was created.
    pub fn stats(&self) -> Stats {
        self.counters.stats()
    }

    /// The kernel program's own counters; `None` in user-space mode.
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
        if from.is_none() {
            self.check_input(payload, destinations)?;
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
        if let Some(mtu) = plan
            .mtu
            .filter(|&mtu| payload.len() + HEADERS > mtu as usize)
        {
            state.plan = Some(plan);
            return Err(self.payload_too_large(payload.len(), Some(mtu)));
        }

        let skipped = from.map_or(0, |from| {
            let chunks = &plan.chunks[..from.chunks];
            chunks.iter().map(|c| c.indices.len()).sum::<usize>() + from.user_space
        });
        let mut call = Call::new(socket, payload, destinations, from, skipped);
        let bypassed = match (&self.kernel, state.slot) {
            (Some(program), Some(slot)) => {
                fan_out::send(program, slot, &self.tags, &mut state, &plan, &mut call)
            }
            _ => false,
        };
        user_space::send_planned(&mut state, &mut call, &plan);

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
        // The MTU changed under us (the interface's, a route's, or one the
        // kernel learned for the path): learn it now, not at the
        // notification, and plan afresh.
        let too_large = call.too_large_to().map(|to| {
            state.plan = None;
            self.resolver
                .path_mtu(*to.ip())
                .unwrap_or_else(|_| self.resolver.mtu())
        });
        let fan_outs = call.fan_outs;
        // Resumable only in the plan kept for the next call.
        let stopped = call.stopped.filter(|_| state.plan.is_some());
        let report = call.finish(|| self.payload_too_large(payload.len(), too_large))?;
        Ok(Some(Part {
            report,
            fan_outs,
            stopped,
        }))
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
            if payload.len() + HEADERS > mtu as usize {
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
            max: (mtu as usize).saturating_sub(HEADERS),
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
