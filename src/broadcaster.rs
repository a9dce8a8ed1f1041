use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use socket2::{Domain, Protocol, SockRef, Type};

use crate::abi::{Dest, MAX_DESTS, MAX_SOCKETS};
use crate::kernel::FanOut;
use crate::netlink::{ChangeSocket, RouteSocket};
use crate::resolve::{PathTo, Resolver};
use crate::watch::Watcher;
use crate::{sys, Error};

/// IPv4 header plus UDP header: what a datagram adds to the payload.
const HEADERS: usize = 20 + 8;

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

/// What one [`Broadcaster::broadcast`] call did.
///
/// Every destination is counted once: in `kernel_copies`, in
/// `user_space_copies`, or in `failed`. [`Stats`] sums these over calls.
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
    /// not resolved yet; see [`Broadcaster`]).
    pub user_space_copies: usize,
    /// Destinations that got no copy, in the order they were given. A
    /// destination listed twice is counted twice.
    pub failed: Vec<SocketAddr>,
}

impl Report {
    /// True when every destination got its copy.
    pub fn is_complete(&self) -> bool {
        self.failed.is_empty()
    }
}

/// Counters over the life of a [`Broadcaster`]: the sums of the [`Report`]s
/// of its calls, and how many fan-outs they took.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls to [`Broadcaster::broadcast`] that sent something (that did not
    /// return an error).
    pub broadcasts: u64,
    /// Datagrams the kernel program fanned out (at most 256 destinations each).
    pub fan_outs: u64,
    /// The sum of [`Report::kernel_copies`].
    pub kernel_copies: u64,
    /// The sum of [`Report::user_space_copies`].
    pub user_space_copies: u64,
    /// The sum of the lengths of [`Report::failed`].
    pub copies_failed: u64,
}

/// The kernel program's own counters (from its per-CPU `stats` map), for
/// monitoring and for checking [`Stats`] against.
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

#[derive(Default)]
struct Counters {
    broadcasts: AtomicU64,
    fan_outs: AtomicU64,
    kernel_copies: AtomicU64,
    user_space_copies: AtomicU64,
    copies_failed: AtomicU64,
}

fn add(counter: &AtomicU64, n: usize) {
    counter.fetch_add(n as u64, Ordering::Relaxed);
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves no broken invariant
    // behind (every update is completed or not begun), so keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
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
    kernel: Option<FanOut>,
    resolver: Arc<Resolver>,
    // Held for its Drop, which stops the thread (and for a test hook).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    watcher: Watcher,
    sockets: Mutex<SocketTable>,
    next_tag: AtomicU64,
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
                    FanOut::attach(interface, link.index, force_clsact)
                };
                match attached {
                    Ok(fan_out) => Ok(fan_out),
                    Err(err) if mode == Mode::Kernel => return Err(err),
                    Err(err) => {
                        log::warn!("elec-broadcast: using user-space sends on {interface}: {err}");
                        Err(Some(err))
                    }
                }
            }
        };
        let (kernel, fallback_reason) = match kernel {
            Ok(fan_out) => (Some(fan_out), None),
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
            sockets: Mutex::new(SocketTable::default()),
            next_tag: AtomicU64::new(first_tag()),
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
    /// minus the IPv4 and UDP headers.
    pub fn max_payload(&self) -> usize {
        (self.resolver.mtu() as usize).saturating_sub(HEADERS)
    }

    /// Counters since this broadcaster was created.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            broadcasts: c.broadcasts.load(Ordering::Relaxed),
            fan_outs: c.fan_outs.load(Ordering::Relaxed),
            kernel_copies: c.kernel_copies.load(Ordering::Relaxed),
            user_space_copies: c.user_space_copies.load(Ordering::Relaxed),
            copies_failed: c.copies_failed.load(Ordering::Relaxed),
        }
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
    /// listed in [`Report::failed`]: in kernel mode that is every copy the
    /// sending host dropped (a clone the device or its queue refused, a full
    /// backlog), since every copy is a clone whose transmit result the
    /// program sees. The call returns an error only when nothing was sent at
    /// all: [`Error::Send`], or [`Error::PayloadTooLarge`] when the MTU
    /// shrank under the payload.
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
    pub fn broadcast<S: AsFd>(
        &self,
        socket: &S,
        payload: &[u8],
        destinations: &[SocketAddr],
    ) -> Result<Report, Error> {
        self.check_input(payload, destinations)?;
        let socket = socket.as_fd();
        let entry = self.socket_entry(socket)?;
        let mut state = lock(&entry);
        let plan = self.plan(&mut state, destinations)?;
        if let Some(mtu) = plan
            .mtu
            .filter(|&mtu| payload.len() + HEADERS > mtu as usize)
        {
            state.plan = Some(plan);
            return Err(self.payload_too_large(payload.len(), Some(mtu)));
        }
        let mut sender = Sender {
            socket,
            payload,
            destinations,
            report: Report::default(),
            first_error: None,
            too_large_to: None,
        };
        let bypassed = match (&self.kernel, state.slot) {
            (Some(fan_out), Some(slot)) => {
                self.fan_out(fan_out, slot, &mut state, &plan, &mut sender)
            }
            _ => false,
        };
        self.send_user_space(&mut state, &mut sender, &plan.user_space);
        if bypassed {
            // Look at the socket and the tables again before the next call.
            state.plan = None;
            if let Err(err) = self.recheck_socket(&mut state, socket) {
                log::warn!("elec-broadcast: the socket behind the fd changed: {err}");
            }
        } else {
            state.plan = Some(plan);
        }
        // The MTU changed under us (the interface's, a route's, or one the
        // kernel learned for the path): learn it now, not at the
        // notification, and plan afresh.
        let too_large = sender.too_large_to.map(|to| {
            state.plan = None;
            self.resolver
                .path_mtu(*to.ip())
                .unwrap_or_else(|_| self.resolver.mtu())
        });
        let report = sender.finish(|| self.payload_too_large(payload.len(), too_large))?;
        add(&self.counters.broadcasts, 1);
        add(&self.counters.kernel_copies, report.kernel_copies);
        add(&self.counters.user_space_copies, report.user_space_copies);
        add(&self.counters.copies_failed, report.failed.len());
        Ok(report)
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

    /// The table entry of `socket`, inspecting and registering it on first use.
    fn socket_entry(&self, socket: BorrowedFd<'_>) -> Result<Arc<Mutex<SocketState>>, Error> {
        let mut table = lock(&self.sockets);
        table.tick += 1;
        let tick = table.tick;
        if let Some(entry) = table.by_fd.get_mut(&socket.as_raw_fd()) {
            entry.last_used = tick;
            return Ok(Arc::clone(&entry.state));
        }
        let cookie = inspect(socket)?;
        let slot = match &self.kernel {
            Some(fan_out) => table.take_slot(fan_out).and_then(|slot| {
                match self.register(fan_out, socket, cookie, slot) {
                    Ok(()) => Some(slot),
                    Err(err) => {
                        log::warn!("registering a socket failed ({err}); it sends from user space");
                        table.free_slots.push(slot);
                        None
                    }
                }
            }),
            None => None,
        };
        table.make_room();
        let state = Arc::new(Mutex::new(SocketState {
            cookie,
            slot,
            plan: None,
            slot_holds: None,
            whole_sends: true,
        }));
        table.by_fd.insert(
            socket.as_raw_fd(),
            TableEntry {
                state: Arc::clone(&state),
                last_used: tick,
            },
        );
        Ok(state)
    }

    /// Lets the program fan out the datagrams of `socket` that carry a tag.
    fn register(
        &self,
        fan_out: &FanOut,
        socket: BorrowedFd<'_>,
        cookie: u64,
        slot: u32,
    ) -> io::Result<()> {
        sys::allow_transmit_times(socket)?;
        fan_out.register(cookie, slot)
    }

    /// The plan for `destinations`: the one made last time if the list and
    /// the tables are unchanged (the hot path: no system call), else a new
    /// one.
    fn plan(&self, state: &mut SocketState, destinations: &[SocketAddr]) -> Result<Plan, Error> {
        if let Some(plan) = state.plan.take() {
            if self.resolver.is_current(plan.generation) && plan.destinations == destinations {
                return Ok(plan);
            }
        }
        state.slot_holds = None;
        let addresses: Vec<Ipv4Addr> = destinations.iter().map(|d| *v4(d).ip()).collect();
        let paths = self
            .resolver
            .paths(&addresses)
            .map_err(Error::io("reading the routing and neighbour tables"))?;
        let mut fanned = Vec::new();
        let mut user_space = Vec::new();
        for (i, path) in paths.to.into_iter().enumerate() {
            match path {
                PathTo::FanOut(mac) if state.slot.is_some() => {
                    fanned.push((i, Dest::new(mac, v4(&destinations[i]))));
                }
                PathTo::FanOut(_) | PathTo::UserSpace => user_space.push(i),
                PathTo::Elsewhere(ifindex) => {
                    return Err(Error::OtherInterface {
                        destination: destinations[i],
                        interface: self.interface.clone(),
                        route_interface: self.resolver.interface_name(ifindex),
                    })
                }
            }
        }
        Ok(Plan {
            destinations: destinations.to_vec(),
            generation: paths.generation,
            mtu: paths.mtu,
            chunks: fanned
                .chunks(MAX_DESTS)
                .map(|chunk| Chunk {
                    indices: chunk.iter().map(|(i, _)| *i).collect(),
                    dests: chunk.iter().map(|(_, dest)| *dest).collect(),
                })
                .collect(),
            user_space,
        })
    }

    /// Sends the plan's fan-outs. Returns true if one of them was not seen
    /// by the program (its other copies were then sent from user space).
    fn fan_out(
        &self,
        fan_out: &FanOut,
        slot_index: u32,
        state: &mut SocketState,
        plan: &Plan,
        sender: &mut Sender<'_>,
    ) -> bool {
        let ip_len = (sender.payload.len() + HEADERS) as u32;
        let mut bypassed = false;
        for (index, chunk) in plan.chunks.iter().enumerate() {
            // SAFETY: slot `slot_index` belongs to this socket alone and we
            // hold the socket's lock for as long as `slot` lives.
            let mut slot = unsafe { fan_out.slot(slot_index) };
            if state.slot_holds != Some(index) {
                slot.write_dests(&chunk.dests);
                state.slot_holds = Some(index);
            }
            let count = chunk.dests.len() as u32;
            let carrier = v4(&sender.destinations[chunk.indices[0]]);
            // As one whole UDP_SEGMENT datagram, the carrier is never
            // fragmented, the kernel keeps its payload in page fragments
            // (un-sharing a clone copies only its headers) and makes it
            // CHECKSUM_PARTIAL, which lets the program write each copy's
            // headers at once.
            let whole = state.whole_sends && !sender.payload.is_empty();
            let mut tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
            slot.arm(tag, count, ip_len, whole);
            let mut sent = sys::send_carrier(sender.socket, sender.payload, &carrier, tag, whole);
            let mut taken = slot.disarm();
            if let (false, Err(err)) = (taken, &sent) {
                match refusal(state, sender.socket, err, whole) {
                    Refusal::SocketReplaced => {
                        // The fd names a new socket now, which does not take
                        // transmit times yet: all its copies go from user
                        // space, and it is taken over after this call.
                        bypassed = true;
                        self.send_user_space(state, sender, &chunk.indices);
                        continue;
                    }
                    Refusal::NotWhole => {
                        state.whole_sends = false;
                        tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
                        slot.arm(tag, count, ip_len, false);
                        sent =
                            sys::send_carrier(sender.socket, sender.payload, &carrier, tag, false);
                        taken = slot.disarm();
                    }
                    Refusal::TooLarge => {
                        sender.too_large(carrier);
                        sender.failed(&chunk.indices, too_large_error());
                        continue;
                    }
                    Refusal::Other => {}
                }
            }
            if !taken {
                match sent {
                    Err(err) => sender.failed(&chunk.indices, err),
                    Ok(_) => {
                        // The program did not see the datagram (another route,
                        // a program before ours, the fd now names another
                        // socket): the carrier reached its destination as
                        // sent; the rest go from user space.
                        bypassed = true;
                        sender.report.user_space_copies += 1;
                        self.send_user_space(state, sender, &chunk.indices[1..]);
                    }
                }
                continue;
            }
            let Some(outcome) = slot.outcome(tag) else {
                // Taken but never finished: cannot happen while the program
                // runs to completion; count the copies as lost rather than
                // claim them.
                log::error!("elec-broadcast: the fan-out of tag {tag} published no result");
                sender.failed(&chunk.indices, io::Error::from(io::ErrorKind::TimedOut));
                continue;
            };
            if !outcome.fanned_out() {
                // Taken, but not in a shape the program can fan out (IP
                // options, say): it went to the carrier as sent.
                bypassed = true;
                sender.report.user_space_copies += 1;
                self.send_user_space(state, sender, &chunk.indices[1..]);
                continue;
            }
            add(&self.counters.fan_outs, 1);
            for (i, &dest) in chunk.indices.iter().enumerate() {
                if outcome.lost(i) {
                    sender.report.failed.push(sender.destinations[dest]);
                } else {
                    sender.report.kernel_copies += 1;
                }
            }
        }
        bypassed
    }

    /// Sends to `indices` (into the destination list) from user space, each
    /// copy one whole datagram where the socket allows it.
    fn send_user_space(&self, state: &mut SocketState, sender: &mut Sender<'_>, indices: &[usize]) {
        if indices.is_empty() {
            return;
        }
        let whole = state.whole_sends && !sender.payload.is_empty();
        let mut failed = sender.send_to_each(indices, whole);
        let mut again = Vec::new();
        for (at, err) in &mut failed {
            match refusal(state, sender.socket, err, whole) {
                Refusal::NotWhole => again.push(*at),
                Refusal::TooLarge => {
                    sender.too_large(v4(&sender.destinations[indices[*at]]));
                    *err = too_large_error();
                }
                Refusal::SocketReplaced | Refusal::Other => {}
            }
        }
        if !again.is_empty() {
            // UDP_SEGMENT is not for this socket: plain sends from now on.
            state.whole_sends = false;
            failed.retain(|(at, _)| !again.contains(at));
            let retried: Vec<usize> = again.iter().map(|&at| indices[at]).collect();
            let failed_again = sender.send_to_each(&retried, false);
            failed.extend(failed_again.into_iter().map(|(at, err)| (again[at], err)));
            failed.sort_by_key(|(at, _)| *at);
        }
        sender.report.user_space_copies += indices.len() - failed.len();
        for (at, err) in failed {
            sender.failed(&[indices[at]], err);
        }
    }

    /// If the fd now names another socket (closed, and its number reused),
    /// takes the new socket over: inspects it and moves the registration to
    /// it.
    fn recheck_socket(&self, state: &mut SocketState, socket: BorrowedFd<'_>) -> Result<(), Error> {
        let cookie = SockRef::from(&socket)
            .cookie()
            .map_err(Error::io("reading the socket cookie"))?;
        if cookie == state.cookie {
            return Ok(());
        }
        inspect(socket)?;
        state.plan = None;
        if let Some(fan_out) = &self.kernel {
            fan_out.unregister(state.cookie);
            if let Some(slot) = state.slot {
                if let Err(err) = self.register(fan_out, socket, cookie, slot) {
                    log::warn!("registering a socket failed ({err}); it sends from user space");
                    lock(&self.sockets).free_slots.push(slot);
                    state.slot = None;
                }
            }
        }
        state.cookie = cookie;
        Ok(())
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
        self.kernel.as_ref().map(FanOut::uses_tcx)
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

/// The first tag of a broadcaster. Tags go in the transmit time of the
/// carrier datagram, so they are kept in the past of every clock the kernel
/// compares transmit times with (below half the monotonic time since boot
/// when the broadcaster starts, growing by one per fan-out): a datagram that
/// somehow left with its tag would be sent at once, never held. The random
/// start keeps the tags of broadcasters in several processes apart.
fn first_tag() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(2);
    1 + RandomState::new().hash_one(now) % (now / 2).max(1)
}

/// Whether the fd names another socket than the one registered.
fn socket_replaced(state: &SocketState, socket: BorrowedFd<'_>) -> bool {
    SockRef::from(&socket)
        .cookie()
        .is_ok_and(|cookie| cookie != state.cookie)
}

/// Why the kernel refused a send the library made.
enum Refusal {
    /// The fd names another socket than the one registered (which does not
    /// take transmit times).
    SocketReplaced,
    /// The datagram does not fit the path's MTU: it was not fragmented.
    TooLarge,
    /// `UDP_SEGMENT` is not for this socket (UDP checksums off) or route (no
    /// checksum offload, IPsec), or this kernel lacks it.
    NotWhole,
    /// Anything else: reported as it is.
    Other,
}

/// Tells apart the ways the kernel refuses a send (`whole`: it carried a
/// `UDP_SEGMENT` control message). Older kernels refuse a whole datagram too
/// large for the path's MTU with `EINVAL`, as they do one of a socket with
/// UDP checksums off; newer ones say `EMSGSIZE`.
fn refusal(state: &SocketState, socket: BorrowedFd<'_>, err: &io::Error, whole: bool) -> Refusal {
    match err.raw_os_error() {
        Some(libc::EMSGSIZE) => Refusal::TooLarge,
        Some(libc::EINVAL) if socket_replaced(state, socket) => Refusal::SocketReplaced,
        Some(libc::EINVAL) if whole && !sys::checksums_off(socket) => Refusal::TooLarge,
        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT) if whole => Refusal::NotWhole,
        _ => Refusal::Other,
    }
}

fn too_large_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EMSGSIZE)
}

fn v4(destination: &SocketAddr) -> SocketAddrV4 {
    match destination {
        SocketAddr::V4(v4) => *v4,
        SocketAddr::V6(_) => unreachable!("checked in check_input"),
    }
}

/// Checks that `socket` is a bound IPv4 UDP socket; returns its cookie.
fn inspect(socket: BorrowedFd<'_>) -> Result<u64, Error> {
    let sock = SockRef::from(&socket);
    let not_udp = |found: &str| Error::NotUdp {
        found: found.to_string(),
    };
    let domain = sock.domain().map_err(|err| match err.raw_os_error() {
        Some(libc::ENOTSOCK) => not_udp("not a socket"),
        _ => Error::Io {
            context: "inspecting the socket",
            source: err,
        },
    })?;
    if domain == Domain::IPV6 {
        return Err(Error::Ipv6Socket);
    }
    if domain != Domain::IPV4 {
        return Err(not_udp(&format!("{domain:?} socket")));
    }
    let ty = sock.r#type().map_err(Error::io("inspecting the socket"))?;
    if ty != Type::DGRAM {
        return Err(not_udp(&format!("{ty:?} socket")));
    }
    let protocol = sock
        .protocol()
        .map_err(Error::io("inspecting the socket"))?;
    if protocol != Some(Protocol::UDP) {
        return Err(not_udp(&format!(
            "datagram socket of protocol {protocol:?}"
        )));
    }
    let local = sock
        .local_addr()
        .map_err(Error::io("inspecting the socket"))?;
    if local.as_socket().is_none_or(|addr| addr.port() == 0) {
        return Err(Error::Unbound);
    }
    sock.cookie()
        .map_err(Error::io("reading the socket cookie"))
}

#[derive(Default)]
struct SocketTable {
    by_fd: HashMap<RawFd, TableEntry>,
    free_slots: Vec<u32>,
    slots_handed_out: u32,
    tick: u64,
}

struct TableEntry {
    state: Arc<Mutex<SocketState>>,
    last_used: u64,
}

impl SocketTable {
    /// A free slot: a new one, or the slot of the least recently used socket
    /// that no broadcast is using right now.
    fn take_slot(&mut self, fan_out: &FanOut) -> Option<u32> {
        if let Some(slot) = self.free_slots.pop() {
            return Some(slot);
        }
        if self.slots_handed_out < MAX_SOCKETS {
            self.slots_handed_out += 1;
            return Some(self.slots_handed_out - 1);
        }
        let victim = self.least_recently_used(|state| state.slot.is_some())?;
        let entry = self.by_fd.remove(&victim)?;
        let state = lock(&entry.state);
        fan_out.unregister(state.cookie);
        state.slot
    }

    /// Keeps the table bounded: forgets the least recently used idle socket.
    fn make_room(&mut self) {
        if self.by_fd.len() >= 2 * MAX_SOCKETS as usize {
            if let Some(victim) = self.least_recently_used(|state| state.slot.is_none()) {
                self.by_fd.remove(&victim);
            }
        }
    }

    fn least_recently_used(&self, wanted: impl Fn(&SocketState) -> bool) -> Option<RawFd> {
        self.by_fd
            .iter()
            // Only entries nobody else holds: their lock is free and stays free.
            .filter(|(_, entry)| Arc::strong_count(&entry.state) == 1)
            .filter(|(_, entry)| wanted(&lock(&entry.state)))
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(fd, _)| *fd)
    }
}

/// What the broadcaster keeps per socket.
struct SocketState {
    cookie: u64,
    /// The socket's slot in the kernel maps; None: user-space sends only.
    slot: Option<u32>,
    /// The plan for the last destination list, reused while it is current.
    plan: Option<Plan>,
    /// Which chunk of `plan` the slot's destination array holds.
    slot_holds: Option<usize>,
    /// Whether the socket accepts `UDP_SEGMENT` sends, with which every
    /// datagram the library sends is one whole datagram: refused, never
    /// fragmented, when it does not fit the MTU (see `sys::send_to_each`).
    /// Sockets with UDP checksums off, or routes through devices without
    /// checksum offload, refuse them; they get plain sends, checked against
    /// the MTU just before.
    whole_sends: bool,
}

/// How one destination list is sent, under one generation of the tables.
struct Plan {
    destinations: Vec<SocketAddr>,
    generation: u64,
    /// The smallest MTU among the destinations' routes, where a route has
    /// one of its own below the interface's.
    mtu: Option<u32>,
    /// The destinations fanned out in the kernel, at most 256 per chunk.
    chunks: Vec<Chunk>,
    /// Indices of destinations sent from user space.
    user_space: Vec<usize>,
}

/// One fan-out: the destinations of one armed slot.
struct Chunk {
    /// Indices into the destination list; the first is the carrier, the
    /// destination the datagram is sent to.
    indices: Vec<usize>,
    dests: Vec<Dest>,
}

/// The sends of one broadcast call and what became of them.
struct Sender<'a> {
    socket: BorrowedFd<'a>,
    payload: &'a [u8],
    destinations: &'a [SocketAddr],
    report: Report,
    first_error: Option<io::Error>,
    /// A destination whose copy the kernel refused as too large for its
    /// path's MTU.
    too_large_to: Option<SocketAddrV4>,
}

impl Sender<'_> {
    fn too_large(&mut self, to: SocketAddrV4) {
        self.too_large_to.get_or_insert(to);
    }

    fn failed(&mut self, indices: &[usize], err: io::Error) {
        self.report
            .failed
            .extend(indices.iter().map(|&i| self.destinations[i]));
        self.first_error.get_or_insert(err);
    }

    /// Sends to `indices` from user space, with `sendmmsg`; returns the
    /// positions in `indices` that got nothing, with their errors.
    fn send_to_each(&self, indices: &[usize], whole: bool) -> Vec<(usize, io::Error)> {
        let addrs: Vec<SocketAddrV4> = indices.iter().map(|&i| v4(&self.destinations[i])).collect();
        sys::send_to_each(self.socket, self.payload, &addrs, whole)
    }

    /// The report, or the error that kept anything from being sent.
    fn finish(mut self, too_large: impl FnOnce() -> Error) -> Result<Report, Error> {
        self.report.copies_sent = self.report.kernel_copies + self.report.user_space_copies;
        match self.first_error {
            Some(err) if self.report.copies_sent == 0 => {
                if err.raw_os_error() == Some(libc::EMSGSIZE) {
                    Err(too_large())
                } else {
                    Err(Error::Send(err))
                }
            }
            _ => Ok(self.report),
        }
    }
}
