use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use socket2::{Domain, Protocol, SockRef, Type};

use crate::abi::{Dest, MAX_DESTS, MAX_SOCKETS};
use crate::kernel::FanOut;
use crate::netlink::RouteSocket;
use crate::resolve::{PathTo, Resolver, TABLES_TTL, UNRESOLVED_RETRY};
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Report {
    /// Datagrams that left: one per destination that got its copy.
    pub copies_sent: usize,
    /// Of these, copies made by the kernel fan-out.
    pub kernel_copies: usize,
    /// Of these, copies sent from user space (user-space mode, or
    /// destinations the fan-out could not take, see [`Broadcaster`]).
    pub fallback_copies: usize,
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

/// Counters over the life of a [`Broadcaster`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls to [`Broadcaster::broadcast`] that sent something.
    pub broadcasts: u64,
    /// Datagrams the kernel program fanned out (at most 256 destinations each).
    pub fan_outs: u64,
    /// Copies made in the kernel: clones that the interface accepted.
    pub kernel_copies: u64,
    /// Clones the kernel could not deliver (for example a full receive
    /// backlog); their destinations were reported as failed.
    pub clone_failures: u64,
    /// Datagrams sent from user space.
    pub fallback_sends: u64,
}

#[derive(Default)]
struct Counters {
    broadcasts: AtomicU64,
    fan_outs: AtomicU64,
    kernel_copies: AtomicU64,
    clone_failures: AtomicU64,
    fallback_sends: AtomicU64,
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
/// the kernel. The others (local addresses, other interfaces, neighbours not
/// resolved yet) are sent from user space through the same socket, so every
/// destination gets exactly one copy either way; the kernel resolves the
/// missing neighbours on that first send.
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
    mtu: AtomicU32,
    fallback_reason: Option<Error>,
    kernel: Option<KernelPath>,
    sockets: Mutex<SocketTable>,
    next_seq: AtomicU64,
    counters: Counters,
}

struct KernelPath {
    fan_out: FanOut,
    resolver: Mutex<Resolver>,
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

    /// Kernel mode attached with clsact even where TCX exists (for tests of
    /// the path older kernels take).
    #[doc(hidden)]
    pub fn with_clsact(interface: &str) -> Result<Broadcaster, Error> {
        Broadcaster::build(interface, Mode::Kernel, true)
    }

    fn build(interface: &str, mode: Mode, force_clsact: bool) -> Result<Broadcaster, Error> {
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
                    Ok(fan_out) => Ok(KernelPath {
                        fan_out,
                        resolver: Mutex::new(Resolver::new(netlink, interface, link.index)),
                    }),
                    Err(err) if mode == Mode::Kernel => return Err(err),
                    Err(err) => {
                        log::warn!("elec-broadcast: using user-space sends on {interface}: {err}");
                        Err(Some(err))
                    }
                }
            }
        };
        let (kernel, fallback_reason) = match kernel {
            Ok(path) => (Some(path), None),
            Err(reason) => (None, reason),
        };
        Ok(Broadcaster {
            interface: interface.to_string(),
            ifindex: link.index,
            mtu: AtomicU32::new(link.mtu),
            fallback_reason,
            kernel,
            sockets: Mutex::new(SocketTable::default()),
            next_seq: AtomicU64::new(1),
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

    /// Largest payload one broadcast can carry: the interface's MTU minus the
    /// IPv4 and UDP headers.
    pub fn max_payload(&self) -> usize {
        (self.mtu.load(Ordering::Relaxed) as usize).saturating_sub(HEADERS)
    }

    /// Counters since this broadcaster was created.
    pub fn stats(&self) -> Stats {
        let c = &self.counters;
        Stats {
            broadcasts: c.broadcasts.load(Ordering::Relaxed),
            fan_outs: c.fan_outs.load(Ordering::Relaxed),
            kernel_copies: c.kernel_copies.load(Ordering::Relaxed),
            clone_failures: c.clone_failures.load(Ordering::Relaxed),
            fallback_sends: c.fallback_sends.load(Ordering::Relaxed),
        }
    }

    /// The kernel program's own counters: fan-outs, clones, clone failures,
    /// rewrite failures, mismatches (for tests that cross-check [`Stats`]).
    #[doc(hidden)]
    pub fn kernel_counters(&self) -> Option<[u64; 5]> {
        let s = self.kernel.as_ref()?.fan_out.kernel_stats().ok()?;
        Some([
            s.fan_outs,
            s.clones,
            s.clone_failures,
            s.rewrite_failures,
            s.mismatches,
        ])
    }

    /// Whether the program is attached with TCX (else clsact).
    #[doc(hidden)]
    pub fn uses_tcx(&self) -> Option<bool> {
        self.kernel.as_ref().map(|k| k.fan_out.uses_tcx())
    }

    /// Sends `payload` once to every destination, through `socket`.
    ///
    /// `socket` is any bound IPv4 UDP socket (std, socket2, tokio, ... all
    /// implement [`AsFd`]); every copy carries its address as the source.
    /// The payload arrives byte for byte as given. Lists longer than 256
    /// destinations are split into several fan-outs.
    ///
    /// Returns what was sent. Destinations whose copy could not be sent are
    /// listed in [`Report::failed`]; the call returns [`Error::Send`] only
    /// when its first send failed and nothing was sent at all.
    ///
    /// # Errors
    /// Bad input is rejected before anything is sent: an empty list, an IPv6
    /// or otherwise invalid destination, a payload larger than
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
        let mut sender = Sender {
            socket,
            payload,
            destinations,
            report: Report::default(),
            first_error: None,
        };
        match &self.kernel {
            Some(kernel) => self.fan_out(kernel, &mut state, &mut sender)?,
            None => sender.send_ordinary(&(0..destinations.len()).collect::<Vec<_>>()),
        }
        let report = sender.finish()?;
        add(&self.counters.broadcasts, 1);
        add(&self.counters.fallback_sends, report.fallback_copies);
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
        let max = self.max_payload();
        if payload.len() > max {
            return Err(Error::PayloadTooLarge {
                len: payload.len(),
                max,
                mtu: self.mtu.load(Ordering::Relaxed),
                interface: self.interface.clone(),
            });
        }
        Ok(())
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
            Some(kernel) => table.take_slot(&kernel.fan_out).and_then(|slot| {
                match kernel.fan_out.register(cookie, slot) {
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
            paged_sends: true,
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

    fn fan_out(
        &self,
        kernel: &KernelPath,
        state: &mut SocketState,
        sender: &mut Sender<'_>,
    ) -> Result<(), Error> {
        let now = Instant::now();
        let fresh = state
            .plan
            .as_ref()
            .is_some_and(|plan| now < plan.valid_until && plan.destinations == sender.destinations);
        if !fresh {
            state.plan = Some(self.plan(kernel, sender.destinations, now)?);
            state.slot_holds = None;
        }
        let Some(slot_index) = state.slot else {
            sender.send_ordinary(&(0..sender.destinations.len()).collect::<Vec<_>>());
            return Ok(());
        };
        let plan = state.plan.take().expect("plan made above");
        let ip_len = (sender.payload.len() + HEADERS) as u32;
        let mut bypassed = false;
        for (index, chunk) in plan.chunks.iter().enumerate() {
            // SAFETY: slot `slot_index` belongs to this socket alone and we
            // hold the socket's lock for as long as `slot` lives.
            let mut slot = unsafe { kernel.fan_out.slot(slot_index) };
            if state.slot_holds != Some(index) {
                slot.write_dests(&chunk.dests);
                state.slot_holds = Some(index);
            }
            let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
            let count = chunk.dests.len() as u32;
            let carrier = sender.v4(chunk.indices[0]);
            // With UDP_SEGMENT the kernel keeps the payload in page fragments
            // (un-sharing a clone copies only its headers) and makes the
            // datagram CHECKSUM_PARTIAL, which lets the program write each
            // copy's headers at once. Sockets that refuse it (UDP checksums
            // off, no checksum offload) get plain sends from then on.
            let plain_send =
                || SockRef::from(&sender.socket).send_to(sender.payload, &carrier.into());
            let paged = state.paged_sends && !sender.payload.is_empty();
            slot.arm(seq, count, ip_len, paged);
            let mut sent = if paged {
                sys::send_to_paged(sender.socket, sender.payload, &carrier)
            } else {
                plain_send()
            };
            if paged && sent.as_ref().is_err_and(refused_segmentation) {
                // Refused before it reached the interface: re-arm plainly.
                state.paged_sends = false;
                slot.disarm();
                slot.arm(seq, count, ip_len, false);
                sent = plain_send();
            }
            if let Err(err) = sent {
                slot.disarm();
                sender.failed(&chunk.indices, err);
                continue;
            }
            let outcome = if slot.disarm() {
                slot.outcome(seq)
            } else {
                None
            };
            match outcome {
                Some(outcome) => {
                    add(&self.counters.fan_outs, 1);
                    add(&self.counters.kernel_copies, outcome.copies as usize);
                    let mut clone_failures = 0;
                    for (i, &dest) in chunk.indices.iter().enumerate() {
                        if outcome.lost(i) {
                            clone_failures += usize::from(outcome.clone_failed(i));
                            sender.report.failed.push(sender.destinations[dest]);
                        } else {
                            sender.report.kernel_copies += 1;
                        }
                    }
                    add(&self.counters.clone_failures, clone_failures);
                }
                None => {
                    // The program did not see the datagram (another route,
                    // a program before ours, the fd now names another
                    // socket): the carrier got it, the rest go the ordinary way.
                    bypassed = true;
                    sender.report.fallback_copies += 1;
                    sender.send_ordinary(&chunk.indices[1..]);
                }
            }
        }
        sender.send_ordinary(&plan.ordinary);
        if bypassed {
            // Look at the socket and the tables again before the next call.
            self.recheck_socket(kernel, state, sender.socket);
        } else {
            state.plan = Some(plan);
        }
        Ok(())
    }

    /// Splits `destinations` into fan-out chunks and ordinary sends.
    fn plan(
        &self,
        kernel: &KernelPath,
        destinations: &[SocketAddr],
        now: Instant,
    ) -> Result<Plan, Error> {
        let mut resolver = lock(&kernel.resolver);
        let retry_soon = resolver.has_unresolved();
        resolver
            .refresh(
                now,
                if retry_soon {
                    UNRESOLVED_RETRY
                } else {
                    TABLES_TTL
                },
            )
            .map_err(Error::io("reading the routing and neighbour tables"))?;
        if let Some(mtu) = resolver.mtu() {
            self.mtu.store(mtu, Ordering::Relaxed);
        }
        let mut fanned = Vec::new();
        let mut ordinary = Vec::new();
        for (i, destination) in destinations.iter().enumerate() {
            let SocketAddr::V4(v4) = destination else {
                unreachable!("checked in check_input")
            };
            match resolver
                .path_to(*v4.ip())
                .map_err(Error::io("looking up a route"))?
            {
                PathTo::FanOut(mac) => fanned.push((i, Dest::new(mac, *v4))),
                PathTo::Ordinary | PathTo::Unresolved => ordinary.push(i),
            }
        }
        let valid_until = resolver.valid_until();
        Ok(Plan {
            destinations: destinations.to_vec(),
            chunks: fanned
                .chunks(MAX_DESTS)
                .map(|chunk| Chunk {
                    indices: chunk.iter().map(|(i, _)| *i).collect(),
                    dests: chunk.iter().map(|(_, dest)| *dest).collect(),
                })
                .collect(),
            ordinary,
            valid_until,
        })
    }

    /// After a bypassed fan-out: if the fd now names another socket, move the
    /// registration over to it.
    fn recheck_socket(&self, kernel: &KernelPath, state: &mut SocketState, socket: BorrowedFd<'_>) {
        let Ok(cookie) = SockRef::from(&socket).cookie() else {
            return;
        };
        if cookie != state.cookie {
            kernel.fan_out.unregister(state.cookie);
            state.cookie = cookie;
            if let Some(slot) = state.slot {
                if kernel.fan_out.register(cookie, slot).is_err() {
                    state.slot = None;
                }
            }
        }
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

/// Errors with which the kernel refuses a `UDP_SEGMENT` send before
/// anything is sent.
fn refused_segmentation(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT)
    )
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

struct SocketState {
    cookie: u64,
    /// The socket's slot in the kernel maps; None: user-space sends only.
    slot: Option<u32>,
    /// The plan for the last destination list, reused while it is fresh.
    plan: Option<Plan>,
    /// Which chunk of `plan` the slot's destination array holds.
    slot_holds: Option<usize>,
    /// Whether the socket accepts `UDP_SEGMENT` sends (see `send_carrier`).
    paged_sends: bool,
}

struct Plan {
    destinations: Vec<SocketAddr>,
    chunks: Vec<Chunk>,
    /// Indices of destinations sent from user space.
    ordinary: Vec<usize>,
    valid_until: Instant,
}

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
}

impl Sender<'_> {
    fn v4(&self, index: usize) -> SocketAddrV4 {
        match self.destinations[index] {
            SocketAddr::V4(v4) => v4,
            SocketAddr::V6(_) => unreachable!("checked in check_input"),
        }
    }

    fn failed(&mut self, indices: &[usize], err: io::Error) {
        self.report
            .failed
            .extend(indices.iter().map(|&i| self.destinations[i]));
        self.first_error.get_or_insert(err);
    }

    /// Sends to `indices` from user space, with `sendmmsg`.
    fn send_ordinary(&mut self, indices: &[usize]) {
        if indices.is_empty() {
            return;
        }
        let addrs: Vec<SocketAddrV4> = indices.iter().map(|&i| self.v4(i)).collect();
        let (sent, err) = sys::send_to_each(self.socket, self.payload, &addrs);
        self.report.fallback_copies += sent;
        if let Some(err) = err {
            self.failed(&indices[sent..], err);
        }
    }

    fn finish(mut self) -> Result<Report, Error> {
        self.report.copies_sent = self.report.kernel_copies + self.report.fallback_copies;
        match self.first_error {
            Some(err) if self.report.copies_sent == 0 => Err(Error::Send(err)),
            _ => Ok(self.report),
        }
    }
}
