//! The thin shell around the protocol core: a UDP socket whose sends go
//! through `elec_broadcast::Broadcaster` (one call per message, however many
//! destinations), a receive loop that takes datagrams in batches with
//! `recvmmsg(2)`, and the thread that drives the core's timers.
//!
//! [`Gossip`] is the Rust face of pekonode's API and more:
//! [`Gossip::new`] (`New`), [`Handle::add_seeds`] (`Set`), [`Handle::join`]
//! (`Join`), [`Handle::members`] (`Get`), [`Handle::stop`] /
//! [`Handle::start`] (`Stop` / `Start`), [`Handle::publish`] (`Publish`),
//! [`Handle::read`] (`Read`); besides, per-node key/value state
//! ([`Handle::set_key`], [`Handle::get`], ...), a graceful
//! [`Handle::leave`], keyring rotation ([`Handle::install_key`], ...) and
//! [`Handle::subscribe`] for the core's events.
//!
//! Leaving gracefully: [`Gossip::leave_and_shutdown`] does it all. By hand,
//! call [`Handle::leave`], keep the node running for a few gossip intervals
//! ([`Handle::leave_grace`]) so that the leave spreads, then shut it down.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use elec_broadcast::{Broadcaster, Mode};
use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrIn};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::codec::{KeyId, KeyringError, NodeId};
use crate::protocol::{self, Action, Event, MemberInfo, Metadata, Node, ValueError, Version};

/// Longest the UDP loop waits for a datagram before it looks at the timers
/// and the stop flag again.
const POLL: Duration = Duration::from_millis(50);
/// Most datagrams one `recvmmsg(2)` call takes: enough that a node under a
/// burst (a join storm, an anti-entropy exchange) pays one system call and
/// one lock for many datagrams, few enough that the buffers stay small
/// (32 x 1401 bytes by default).
pub const RECV_BATCH: usize = 32;
/// How the UDP loop takes datagrams off the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecvMode {
    /// `recvmmsg(2)`: one system call for everything queued (up to
    /// [`RECV_BATCH`] datagrams).
    #[default]
    Batched,
    /// The plain socket, for comparison: one `recvfrom(2)` per datagram
    /// (the first waits, the others are taken without waiting until the
    /// socket is empty or [`RECV_BATCH`] are in hand, then one more call
    /// finds it empty). Everything else (one lock per round, the timers) is
    /// as in batched mode, so the two differ by the system calls only.
    Plain,
}

impl RecvMode {
    /// `batched` or `plain`.
    pub fn name(self) -> &'static str {
        match self {
            RecvMode::Batched => "batched",
            RecvMode::Plain => "plain",
        }
    }
}

/// Datagrams this node exchanged with one peer (by UDP address).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerTraffic {
    /// Copies the broadcaster (or `sendto`) reported sent to it.
    pub sent: u64,
    /// Datagrams received from it (whatever the core then made of them).
    pub received: u64,
}

/// An event as the event log keeps it ([`Handle::enable_event_log`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Its number: 0 for the first event logged, then one more each.
    pub seq: u64,
    /// When the core raised it: `CLOCK_MONOTONIC` in nanoseconds, the clock
    /// every process on the host (in any network namespace) reads alike.
    pub at_ns: u64,
    /// What happened.
    pub event: Event,
}

/// The last events, with their times (for measurements: the demo reads
/// when each node saw a member join, fail, or a key change, to the
/// microsecond, without polling the node's state).
struct EventLog {
    next: u64,
    capacity: usize,
    events: VecDeque<LoggedEvent>,
}

/// `CLOCK_MONOTONIC` now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    // SAFETY: all-zero bytes are a valid timespec.
    let mut now: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: clock_gettime writes the timespec it is given, nothing else;
    // CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// Gossip intervals a leaving node keeps running: the core tells
/// `2 * gossip_nodes` members at once and gossips the leave on its next
/// rounds; three rounds give it time to spread before the node goes silent.
pub const LEAVE_ROUNDS: u32 = 3;

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum ShellError {
    /// The listen address is a wildcard or has port 0: it names the node to
    /// its peers, so it must be an address they can reach.
    #[error(
        "the listen address {0} names this node to its peers: give a specific IPv4 address \
         and port"
    )]
    ListenAddress(SocketAddrV4),
    /// No interface of this network namespace has the listen address.
    #[error("no interface has the address {0}: give --iface")]
    NoInterface(Ipv4Addr),
    /// The interfaces could not be listed.
    #[error("listing the interfaces: {0}")]
    Interfaces(#[source] Errno),
    /// The UDP socket could not be bound.
    #[error("binding UDP {addr}: {source}")]
    Bind {
        /// The listen address.
        addr: SocketAddrV4,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// The broadcaster could not be set up.
    #[error("setting up broadcasts on {interface}: {source}")]
    Broadcaster {
        /// The interface.
        interface: String,
        /// What the library said.
        #[source]
        source: elec_broadcast::Error,
    },
    /// The UDP thread could not be started.
    #[error("starting the UDP thread: {0}")]
    Thread(#[source] io::Error),
}

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct ShellConfig {
    /// Address of the UDP socket, and the node's name in the cluster: a
    /// specific IPv4 address the peers can reach.
    pub listen: SocketAddrV4,
    /// Peers to contact when joining (pekonode `Set`).
    pub seeds: Vec<SocketAddrV4>,
    /// Protocol settings (period, fan-out, keyring, ...).
    pub protocol: protocol::Config,
    /// Kernel fan-out, user-space `sendmmsg`, or kernel where possible.
    pub mode: Mode,
    /// Interface the peers are reached through (None: the one that owns the
    /// listen address).
    pub interface: Option<String>,
    /// Seed of the protocol's RNG (None: from the OS).
    pub rng_seed: Option<u64>,
}

/// A node's keys that are set, with their values, in key order.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// Counters and state of a running node.
#[derive(Debug, Clone, Copy)]
pub struct NodeStats {
    /// The protocol core's counters.
    pub protocol: protocol::Stats,
    /// The broadcaster's counters.
    pub broadcast: elec_broadcast::Stats,
    /// The broadcaster's backend.
    pub mode: Mode,
    /// Datagrams that could not be sent (one per destination).
    pub send_failures: u64,
    /// Datagrams longer than the interface MTU allows for a broadcast, sent
    /// one `sendto` per destination (IP fragments them).
    pub oversize_sends: u64,
    /// Receive rounds that returned datagrams: in batched mode one
    /// `recvmmsg(2)` call each.
    pub recv_batches: u64,
    /// Datagrams those rounds returned: over `recv_batches`, the mean batch.
    pub recv_datagrams: u64,
    /// Receive system calls (`recvmmsg` or `recvfrom`), those that returned
    /// nothing (a timeout, an empty socket) included: over
    /// `recv_datagrams`, what receiving costs in calls per datagram.
    pub recv_calls: u64,
    /// How datagrams are received.
    pub recv_mode: RecvMode,
    /// The cluster-wide metadata's version.
    pub version: Version,
    /// Alive and suspect members, this node included.
    pub members: usize,
    /// Updates and deltas waiting to be gossiped.
    pub queued: usize,
    /// Largest key plus value [`Handle::set_key`] and [`Handle::publish`]
    /// accept.
    pub max_value: usize,
    /// This node's incarnation number.
    pub incarnation: u64,
    /// Whether the node joined (and has not left).
    pub joined: bool,
    /// Whether the node left the cluster.
    pub left: bool,
    /// Whether sending is paused ([`Handle::stop`]).
    pub paused: bool,
}

/// A running gossip node: its thread stops when it is dropped (without
/// leaving: see [`Gossip::leave_and_shutdown`]).
pub struct Gossip {
    handle: Handle,
    thread: Option<JoinHandle<()>>,
}

/// A cheap, cloneable handle to a running node (for the control interface
/// and other threads).
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

struct Shared {
    node: Mutex<Node>,
    socket: UdpSocket,
    broadcaster: Broadcaster,
    subscribers: Mutex<Vec<Sender<Event>>>,
    stopping: AtomicBool,
    send_failures: AtomicU64,
    oversize_sends: AtomicU64,
    recv_batches: AtomicU64,
    recv_datagrams: AtomicU64,
    recv_calls: AtomicU64,
    /// [`RecvMode::Plain`] when set.
    plain_recv: AtomicBool,
    /// Per peer: copies sent to it, datagrams received from it.
    traffic: Mutex<HashMap<SocketAddr, PeerTraffic>>,
    /// The event log, once enabled.
    log: Mutex<Option<EventLog>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every core method leaves the node consistent before it can panic, and
    // a subscriber list is consistent between two pushes.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::ops::Deref for Gossip {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Gossip {
    /// Binds the socket, sets up the broadcaster and starts the UDP thread
    /// (pekonode `New` and `Set`); call [`Handle::join`] to start
    /// gossiping.
    ///
    /// Must be called from a thread inside the network namespace of the
    /// listen address (the thread it starts stays there).
    pub fn new(config: ShellConfig) -> Result<Gossip, ShellError> {
        if config.listen.ip().is_unspecified() || config.listen.port() == 0 {
            return Err(ShellError::ListenAddress(config.listen));
        }
        let interface = match config.interface.clone() {
            Some(name) => name,
            None => interface_of(*config.listen.ip())?,
        };
        let socket = UdpSocket::bind(config.listen).map_err(|source| ShellError::Bind {
            addr: config.listen,
            source,
        })?;
        let broadcaster = Broadcaster::with_mode(&interface, config.mode).map_err(|source| {
            ShellError::Broadcaster {
                interface: interface.clone(),
                source,
            }
        })?;
        log::info!(
            "node {} on {interface}: {:?} broadcasts{}",
            config.listen,
            broadcaster.mode(),
            broadcaster
                .fallback_reason()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        let max_payload = broadcaster.max_payload();
        if config.protocol.max_packet > max_payload {
            log::warn!(
                "max packet {} B is over the {max_payload} B a datagram on {interface} can \
                 carry unfragmented: larger datagrams skip the kernel fan-out (one sendto per \
                 destination, fragmented by IP, lost whole if one fragment is)",
                config.protocol.max_packet
            );
        }
        let rng = match config.rng_seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_entropy(),
        };
        // The core needs a boot value above that of every earlier run of
        // this node, or its peers take the new run's packets for replays:
        // microseconds since the epoch are (the clock only has to move
        // forward across restarts of one node).
        let boot = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        let now = Instant::now();
        let mut node = Node::new(
            NodeId(config.listen),
            config.protocol.clone(),
            rng,
            boot,
            now,
        );
        node.add_seeds(config.seeds.iter().copied().map(NodeId));
        let shared = Arc::new(Shared {
            node: Mutex::new(node),
            socket,
            broadcaster,
            subscribers: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            send_failures: AtomicU64::new(0),
            oversize_sends: AtomicU64::new(0),
            recv_batches: AtomicU64::new(0),
            recv_datagrams: AtomicU64::new(0),
            recv_calls: AtomicU64::new(0),
            plain_recv: AtomicBool::new(false),
            traffic: Mutex::new(HashMap::new()),
            log: Mutex::new(None),
        });
        let udp = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("gossip-udp".into())
            .spawn(move || udp.udp_loop())
            .map_err(ShellError::Thread)?;
        Ok(Gossip {
            handle: Handle { shared },
            thread: Some(thread),
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Leaves the cluster gracefully, keeps the node running for
    /// [`Handle::leave_grace`] so that the leave spreads, then shuts it
    /// down. The others then list this node as left, not failed.
    pub fn leave_and_shutdown(self) {
        self.handle.leave();
        thread::sleep(self.handle.leave_grace());
        self.shutdown();
    }

    /// Stops the thread and closes the socket, without leaving (also done
    /// on drop): the others find the node failed.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.handle.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            // The loop looks at the flag at least every POLL.
            let _ = thread.join();
        }
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

impl Handle {
    /// This node's id (its listen address).
    pub fn id(&self) -> NodeId {
        lock(&self.shared.node).id()
    }

    /// Adds seeds: contacted when joining, and announced to whenever they
    /// are not in view (pekonode `Set`; seeds are never removed).
    pub fn add_seeds(&self, seeds: &[SocketAddrV4]) {
        lock(&self.shared.node).add_seeds(seeds.iter().copied().map(NodeId));
    }

    /// Starts probing and gossiping, and asks the seeds for their state
    /// (pekonode `Join`).
    pub fn join(&self) {
        self.with_node(|node, now| node.join(now));
    }

    /// Leaves the cluster gracefully: tells members at once and gossips the
    /// leave from then on, but probes and answers nothing any more. Keep
    /// the node running for [`Handle::leave_grace`] before shutting it
    /// down, or the leave may not reach everyone. Final: the node cannot
    /// join again (start a new one).
    pub fn leave(&self) {
        self.with_node(|node, now| node.leave(now));
    }

    /// How long a leaving node should keep running: [`LEAVE_ROUNDS`]
    /// gossip intervals.
    pub fn leave_grace(&self) -> Duration {
        lock(&self.shared.node).config().gossip_interval * LEAVE_ROUNDS
    }

    /// Alive and suspect members, this node included, sorted (pekonode
    /// `Get`).
    pub fn members(&self) -> Vec<NodeId> {
        lock(&self.shared.node).members()
    }

    /// Every member this node has a record of, with its state and
    /// incarnation, sorted.
    pub fn member_states(&self) -> Vec<MemberInfo> {
        lock(&self.shared.node).member_states()
    }

    /// Pauses sending (pekonode `Stop`): the node keeps listening, and the
    /// others soon find it failed.
    pub fn stop(&self) {
        lock(&self.shared.node).stop();
    }

    /// Resumes after [`Handle::stop`], or joins (pekonode `Start`).
    pub fn start(&self) {
        self.with_node(|node, now| node.start(now));
    }

    /// Publishes cluster-wide metadata (pekonode `Publish`); the highest
    /// version wins everywhere. At most [`NodeStats::max_value`] bytes.
    pub fn publish(&self, data: Vec<u8>) -> Result<Version, ValueError> {
        self.with_node(|node, now| node.publish(data, now))
    }

    /// The cluster-wide metadata as this node has it (pekonode `Read`).
    pub fn read(&self) -> Metadata {
        lock(&self.shared.node).read().clone()
    }

    /// Sets one of this node's keys (gossiped to every node); returns its
    /// version.
    pub fn set_key(&self, key: &[u8], value: Vec<u8>) -> Result<u64, ValueError> {
        self.with_node(|node, now| node.set(key, value, now))
    }

    /// Deletes one of this node's keys; returns the deletion's version, or
    /// None when the key was not set.
    pub fn delete_key(&self, key: &[u8]) -> Result<Option<u64>, ValueError> {
        self.with_node(|node, now| node.delete(key, now))
    }

    /// The entries of every member this node has a record of (itself
    /// included), taken under one lock: one consistent view.
    pub fn all_entries(&self) -> Vec<(NodeId, Entries)> {
        let node = lock(&self.shared.node);
        node.member_states()
            .into_iter()
            .map(|member| (member.node, owned(node.entries(member.node))))
            .collect()
    }

    /// Adds key `id` to the keyring, or replaces its secret. Rotation:
    /// install the new key on every node, [`Handle::use_key`] it on every
    /// node, then [`Handle::remove_key`] the old one.
    pub fn install_key(&self, id: KeyId, secret: &[u8]) {
        lock(&self.shared.node).keyring_mut().install(id, secret);
    }

    /// Makes key `id` the primary, which seals what this node sends.
    pub fn use_key(&self, id: KeyId) -> Result<(), KeyringError> {
        lock(&self.shared.node).keyring_mut().use_key(id)
    }

    /// Removes key `id` (neither the primary nor the last one).
    pub fn remove_key(&self, id: KeyId) -> Result<(), KeyringError> {
        lock(&self.shared.node).keyring_mut().remove(id)
    }

    /// The primary key's id and every installed key's id, sorted.
    pub fn keys(&self) -> (KeyId, Vec<KeyId>) {
        let node = lock(&self.shared.node);
        (node.keyring().primary(), node.keyring().ids())
    }

    /// Counters and state.
    pub fn stats(&self) -> NodeStats {
        let node = lock(&self.shared.node);
        let shared = &self.shared;
        let left = node
            .member(node.id())
            .is_some_and(|me| me.state == crate::codec::State::Left);
        NodeStats {
            protocol: node.stats(),
            broadcast: shared.broadcaster.stats(),
            mode: shared.broadcaster.mode(),
            send_failures: shared.send_failures.load(Ordering::Relaxed),
            oversize_sends: shared.oversize_sends.load(Ordering::Relaxed),
            recv_batches: shared.recv_batches.load(Ordering::Relaxed),
            recv_datagrams: shared.recv_datagrams.load(Ordering::Relaxed),
            recv_calls: shared.recv_calls.load(Ordering::Relaxed),
            recv_mode: shared.recv_mode(),
            version: node.read().version,
            members: node.members().len(),
            queued: node.queued(),
            max_value: node.max_value(),
            incarnation: node.incarnation(),
            joined: node.is_joined(),
            left,
            paused: node.is_paused(),
        }
    }

    /// Switches how datagrams are received (batched by default), from the
    /// next receive on.
    pub fn set_recv_mode(&self, mode: RecvMode) {
        self.shared
            .plain_recv
            .store(mode == RecvMode::Plain, Ordering::Relaxed);
    }

    /// Per peer (UDP address), the copies sent to it and the datagrams
    /// received from it since the node started, sorted by address: summed
    /// over a cluster, what one node says it sent to another against what
    /// that one got (the demo's loss check).
    pub fn traffic(&self) -> Vec<(SocketAddr, PeerTraffic)> {
        let mut all: Vec<(SocketAddr, PeerTraffic)> = lock(&self.shared.traffic)
            .iter()
            .map(|(addr, traffic)| (*addr, *traffic))
            .collect();
        all.sort_by_key(|(addr, _)| *addr);
        all
    }

    /// Keeps the last `capacity` events from now on, each with the time it
    /// was raised ([`Handle::events_since`]); off until called (a node run
    /// for measurements turns it on).
    pub fn enable_event_log(&self, capacity: usize) {
        let mut log = lock(&self.shared.log);
        if log.is_none() {
            *log = Some(EventLog {
                next: 0,
                capacity: capacity.max(1),
                events: VecDeque::new(),
            });
        }
    }

    /// The logged events numbered `seq` and on that are still kept, and
    /// the number the next event will get; None while the log is off.
    pub fn events_since(&self, seq: u64) -> Option<(Vec<LoggedEvent>, u64)> {
        let log = lock(&self.shared.log);
        let log = log.as_ref()?;
        let events = log
            .events
            .iter()
            .filter(|e| e.seq >= seq)
            .cloned()
            .collect();
        Some((events, log.next))
    }

    /// Runs `f` on the core, then carries out what it asked for.
    fn with_node<R>(&self, f: impl FnOnce(&mut Node, Instant) -> R) -> R {
        self.shared.with_node(f)
    }
}

/// The rest of the API for programs that embed a node: the binary itself
/// reaches these through other calls, the cluster test uses them.
#[allow(dead_code)]
impl Handle {
    /// What this node knows of `node` (None: no record).
    pub fn member(&self, node: NodeId) -> Option<MemberInfo> {
        lock(&self.shared.node).member(node)
    }

    /// A key of `node` as this node knows it (None: unset, deleted, or not
    /// heard of yet).
    pub fn get(&self, node: NodeId, key: &[u8]) -> Option<Vec<u8>> {
        lock(&self.shared.node).get(node, key).map(<[u8]>::to_vec)
    }

    /// The keys of `node` that are set, with their values, in key order.
    pub fn entries(&self, node: NodeId) -> Entries {
        owned(lock(&self.shared.node).entries(node))
    }

    /// Largest key plus value [`Handle::set_key`] accepts.
    pub fn max_value(&self) -> usize {
        lock(&self.shared.node).max_value()
    }

    /// A new receiver of every event from now on ([`Event`]: members that
    /// join, fail, leave, keys that change, ...), in the order the core
    /// raised them. Any number of receivers; one that is dropped is
    /// forgotten at the next event. Events queue up unbounded in a receiver
    /// that is not read: drop those no longer wanted.
    pub fn subscribe(&self) -> Receiver<Event> {
        let (sender, receiver) = mpsc::channel();
        lock(&self.shared.subscribers).push(sender);
        receiver
    }
}

/// Borrowed entries as owned ones, to give out of the lock.
fn owned(entries: Vec<(&[u8], &[u8])>) -> Entries {
    entries
        .into_iter()
        .map(|(key, value)| (key.to_vec(), value.to_vec()))
        .collect()
}

impl Shared {
    /// Runs `f` on the core at the current time, hands its events to the
    /// subscribers, then sends what it asked for (out of the lock).
    fn with_node<R>(&self, f: impl FnOnce(&mut Node, Instant) -> R) -> R {
        let (result, actions, events) = {
            let mut node = lock(&self.node);
            let result = f(&mut node, Instant::now());
            let events = node.drain_events();
            // Under the node's lock, so that two threads draining one after
            // the other deliver in the order the core raised the events
            // (sending on a channel never blocks).
            self.deliver(&events);
            (result, node.drain_actions(), events)
        };
        log_events(&events);
        self.execute(actions);
        result
    }

    fn deliver(&self, events: &[Event]) {
        if events.is_empty() {
            return;
        }
        let at_ns = monotonic_ns();
        let mut subscribers = lock(&self.subscribers);
        subscribers.retain(|subscriber| {
            events
                .iter()
                .all(|event| subscriber.send(event.clone()).is_ok())
        });
        // After the subscribers: an event in the log has been sent to them.
        if let Some(log) = lock(&self.log).as_mut() {
            for event in events {
                if log.events.len() == log.capacity {
                    log.events.pop_front();
                }
                log.events.push_back(LoggedEvent {
                    seq: log.next,
                    at_ns,
                    event: event.clone(),
                });
                log.next += 1;
            }
        }
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    fn recv_mode(&self) -> RecvMode {
        if self.plain_recv.load(Ordering::Relaxed) {
            RecvMode::Plain
        } else {
            RecvMode::Batched
        }
    }

    /// Receives datagrams (in batches, or one call each in plain mode) and
    /// runs the timers until the node stops.
    fn udp_loop(&self) {
        let max_packet = lock(&self.node).config().max_packet;
        let mut batch = Batch::new(max_packet);
        let fd = self.socket.as_raw_fd();
        while !self.stopping() {
            let wait = lock(&self.node)
                .next_deadline()
                .map_or(POLL, |deadline| {
                    deadline.saturating_duration_since(Instant::now())
                })
                .clamp(Duration::from_millis(1), POLL);
            // recvmmsg's own timeout is checked only after a datagram
            // arrives; the socket's receive timeout bounds the wait for the
            // first one (MSG_WAITFORONE takes the rest without waiting).
            let _ = self.socket.set_read_timeout(Some(wait));
            let (received, calls) = match self.recv_mode() {
                RecvMode::Batched => (batch.receive(fd), 1),
                RecvMode::Plain => batch.receive_plain(fd),
            };
            self.recv_calls.fetch_add(calls, Ordering::Relaxed);
            if let Ok(count) = received {
                if count > 0 {
                    self.recv_batches.fetch_add(1, Ordering::Relaxed);
                    self.recv_datagrams
                        .fetch_add(count as u64, Ordering::Relaxed);
                    let mut traffic = lock(&self.traffic);
                    for (from, _) in batch.datagrams() {
                        traffic.entry(from).or_default().received += 1;
                    }
                }
            }
            // One lock for the whole batch and the timers.
            self.with_node(|node, now| {
                for (from, datagram) in batch.datagrams() {
                    node.handle_packet(from, datagram, now);
                }
                node.tick(now);
            });
            match received {
                Ok(_) | Err(Errno::EAGAIN | Errno::EINTR | Errno::ETIMEDOUT) => {}
                Err(err) => {
                    log::debug!("receiving: {err}");
                    // Not a timeout: do not spin on an error that stays.
                    thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }

    fn execute(&self, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, packet } => self.send(&to, &packet),
            }
        }
    }

    /// One broadcast: the kernel clones the datagram for every destination
    /// (or `sendmmsg` sends them, in user-space mode).
    fn send(&self, to: &[SocketAddr], packet: &[u8]) {
        // One destination (a probe, an ack, an anti-entropy message): a
        // plain send costs less than arming the kernel fan-out for one copy.
        if let [addr] = to {
            match self.socket.send_to(packet, addr) {
                Ok(_) => self.count_sent(to, &[]),
                Err(err) => {
                    self.send_failures.fetch_add(1, Ordering::Relaxed);
                    log::debug!("sending {} bytes to {addr}: {err}", packet.len());
                }
            }
            return;
        }
        if packet.len() > self.broadcaster.max_payload() {
            // Larger than one frame: the kernel fan-out cannot clone IP
            // fragments, so send each copy on its own.
            for addr in to {
                self.oversize_sends.fetch_add(1, Ordering::Relaxed);
                match self.socket.send_to(packet, addr) {
                    Ok(_) => self.count_sent(std::slice::from_ref(addr), &[]),
                    Err(err) => {
                        self.send_failures.fetch_add(1, Ordering::Relaxed);
                        log::debug!("sending {} bytes to {addr}: {err}", packet.len());
                    }
                }
            }
            return;
        }
        match self.broadcaster.broadcast(&self.socket, packet, to) {
            Ok(report) => {
                if !report.failed.is_empty() {
                    self.send_failures
                        .fetch_add(report.failed.len() as u64, Ordering::Relaxed);
                    log::debug!("no copy reached {:?}", report.failed);
                }
                let failed: Vec<SocketAddr> = report.failed.iter().map(|f| f.destination).collect();
                self.count_sent(to, &failed);
            }
            Err(err) => {
                self.send_failures
                    .fetch_add(to.len() as u64, Ordering::Relaxed);
                log::debug!("broadcast to {to:?}: {err}");
            }
        }
    }

    /// Counts a copy sent to every destination of `to`, but one per entry
    /// of `failed` (a destination listed twice fails twice).
    fn count_sent(&self, to: &[SocketAddr], failed: &[SocketAddr]) {
        let mut failed = failed.to_vec();
        let mut traffic = lock(&self.traffic);
        for addr in to {
            if let Some(i) = failed.iter().position(|f| f == addr) {
                failed.swap_remove(i);
                continue;
            }
            traffic.entry(*addr).or_default().sent += 1;
        }
    }
}

/// The receive buffers of one `recvmmsg(2)` call, reused across calls.
struct Batch {
    /// [`RECV_BATCH`] buffers of `max_packet + 1` bytes: one byte more than
    /// allowed, so that an oversized datagram shows as such (the core
    /// counts it) instead of being cut to a valid-looking length.
    buffers: Vec<Vec<u8>>,
    headers: MultiHeaders<SockaddrIn>,
    /// Source, buffer index and length of each datagram of the last call.
    received: Vec<(SocketAddr, usize, usize)>,
}

impl Batch {
    fn new(max_packet: usize) -> Batch {
        Batch {
            buffers: vec![vec![0; max_packet + 1]; RECV_BATCH],
            headers: MultiHeaders::preallocate(RECV_BATCH, None),
            received: Vec::with_capacity(RECV_BATCH),
        }
    }

    /// Waits (up to the socket's receive timeout) for a datagram, then takes
    /// it and whatever else is queued, up to [`RECV_BATCH`]; returns how
    /// many. After an error, the batch is empty.
    fn receive(&mut self, fd: RawFd) -> Result<usize, Errno> {
        self.received.clear();
        // The I/O slices borrow the buffers for as long as the results
        // live, so they are made anew for each call: 32 pointers, no copy.
        let mut slices: Vec<[io::IoSliceMut<'_>; 1]> = self
            .buffers
            .iter_mut()
            .map(|buffer| [io::IoSliceMut::new(buffer)])
            .collect();
        let results = recvmmsg(
            fd,
            &mut self.headers,
            slices.iter_mut(),
            MsgFlags::MSG_WAITFORONE,
            None,
        )?;
        for (index, message) in results.enumerate() {
            // Always set on an unconnected IPv4 socket; a datagram without
            // one could not be checked against its sealed sender anyway.
            let Some(from) = message.address else {
                continue;
            };
            let from = SocketAddr::V4(SocketAddrV4::from(from));
            self.received.push((from, index, message.bytes));
        }
        Ok(self.received.len())
    }

    /// The plain socket: waits (up to the socket's receive timeout) for a
    /// datagram with one `recvfrom(2)`, then takes what else is queued, one
    /// `recvfrom(2)` with `MSG_DONTWAIT` each, until the socket is empty or
    /// [`RECV_BATCH`] are in hand. Returns how many, and the system calls
    /// made. After an error on the first call, the batch is empty.
    fn receive_plain(&mut self, fd: RawFd) -> (Result<usize, Errno>, u64) {
        self.received.clear();
        let mut calls = 0;
        for index in 0..RECV_BATCH {
            let flags = if index == 0 { 0 } else { libc::MSG_DONTWAIT };
            calls += 1;
            match recv_from(fd, &mut self.buffers[index], flags) {
                Ok((from, len)) => self.received.push((from, index, len)),
                Err(err) if index == 0 => return (Err(err), calls),
                // Empty (EAGAIN) or failing: what was taken is handled.
                Err(_) => break,
            }
        }
        (Ok(self.received.len()), calls)
    }

    /// The datagrams of the last call: source and bytes.
    fn datagrams(&self) -> impl Iterator<Item = (SocketAddr, &[u8])> {
        self.received.iter().map(|&(from, index, len)| {
            let buffer = &self.buffers[index];
            (from, &buffer[..len.min(buffer.len())])
        })
    }
}

/// One `recvfrom(2)` into `buffer`: the source and the datagram's length
/// (as the kernel gives it: a datagram longer than the buffer is cut, and
/// its length is the buffer's).
fn recv_from(
    fd: RawFd,
    buffer: &mut [u8],
    flags: libc::c_int,
) -> Result<(SocketAddr, usize), Errno> {
    // SAFETY: all-zero bytes are a valid sockaddr_in.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut addr_len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `buffer` is valid for writes of its length, `addr` for
    // `addr_len` bytes; both outlive the call, which writes no further.
    let len = unsafe {
        libc::recvfrom(
            fd,
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            flags,
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut addr_len,
        )
    };
    if len < 0 {
        return Err(Errno::last());
    }
    let from = SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
        u16::from_be(addr.sin_port),
    );
    Ok((SocketAddr::V4(from), (len as usize).min(buffer.len())))
}

fn log_events(events: &[Event]) {
    for event in events {
        match event {
            Event::Joined(node) => log::info!("member {node} joined"),
            Event::Suspected(node) => log::info!("member {node} suspected"),
            Event::Refuted(node) => log::info!("member {node} proved alive"),
            Event::Failed(node) => log::info!("member {node} failed"),
            Event::Left(node) => log::info!("member {node} left"),
            Event::Restarted(node) => log::info!("member {node} restarted"),
            Event::Changed { node, key } => {
                log::debug!("key {} of {node} changed", String::from_utf8_lossy(key));
            }
            Event::Published(version) => log::info!("metadata now at version {version}"),
        }
    }
}

/// The interface that owns `ip` (`lo` for loopback addresses).
pub fn interface_of(ip: Ipv4Addr) -> Result<String, ShellError> {
    if ip.is_loopback() {
        return Ok("lo".into());
    }
    for ifaddr in nix::ifaddrs::getifaddrs().map_err(ShellError::Interfaces)? {
        let owns = ifaddr
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .is_some_and(|sin| sin.ip() == ip);
        if owns {
            return Ok(ifaddr.interface_name);
        }
    }
    Err(ShellError::NoInterface(ip))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The batch receive on a plain loopback socket pair: several queued
    /// datagrams come back from one call, each with its source, and an
    /// oversized one shows its excess byte.
    /// A receiving socket with six datagrams queued from one sender: five
    /// of 10 bytes (0s, 1s, ... 4s), then one of 40 bytes.
    fn six_queued() -> (UdpSocket, SocketAddr) {
        let receiver = UdpSocket::bind("127.0.0.1:0").unwrap();
        let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
        let to = receiver.local_addr().unwrap();
        for i in 0..5u8 {
            sender.send_to(&[i; 10], to).unwrap();
        }
        sender.send_to(&[9; 40], to).unwrap();
        receiver
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        (receiver, sender.local_addr().unwrap())
    }

    /// The six of [`six_queued`], each from `from`, the last cut to a
    /// 33-byte buffer (one over a `max_packet` of 32).
    fn assert_six(got: &[(SocketAddr, Vec<u8>)], from: SocketAddr) {
        for (i, (source, bytes)) in got.iter().take(5).enumerate() {
            assert_eq!(*source, from);
            assert_eq!(bytes, &vec![i as u8; 10]);
        }
        assert_eq!(got[5].1.len(), 33);
    }

    #[test]
    fn receives_queued_datagrams_in_one_batch() {
        let (receiver, from) = six_queued();
        let mut batch = Batch::new(32);
        let mut got = Vec::new();
        while got.len() < 6 {
            let count = batch.receive(receiver.as_raw_fd()).unwrap();
            assert!(count > 0);
            got.extend(
                batch
                    .datagrams()
                    .map(|(from, bytes)| (from, bytes.to_vec())),
            );
        }
        assert_six(&got, from);
    }

    /// The plain receive takes the same datagrams, one system call each
    /// and one more that finds the socket empty.
    #[test]
    fn plain_receive_takes_one_call_per_datagram() {
        let (receiver, from) = six_queued();
        let mut batch = Batch::new(32);
        let (mut got, mut calls) = (Vec::new(), 0);
        while got.len() < 6 {
            let (count, made) = batch.receive_plain(receiver.as_raw_fd());
            assert!(count.unwrap() > 0);
            calls += made;
            got.extend(
                batch
                    .datagrams()
                    .map(|(from, bytes)| (from, bytes.to_vec())),
            );
        }
        assert_six(&got, from);
        // Six datagrams, and at least one call that found nothing more.
        assert!(calls >= 7, "{calls} calls");
        // Nothing queued: the first call waits out the timeout.
        receiver
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        let (empty, made) = batch.receive_plain(receiver.as_raw_fd());
        assert!(matches!(empty, Err(Errno::EAGAIN)), "{empty:?}");
        assert_eq!(made, 1);
        assert_eq!(batch.datagrams().count(), 0);
    }

    /// A free port on 127.0.0.1 (free when asked: good enough for a test).
    fn free_port() -> SocketAddrV4 {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        match socket.local_addr().unwrap() {
            SocketAddr::V4(addr) => addr,
            SocketAddr::V6(_) => unreachable!("bound to an IPv4 address"),
        }
    }

    fn loopback_node(listen: SocketAddrV4, seeds: Vec<SocketAddrV4>) -> Gossip {
        let keyring = crate::codec::Keyring::new(1, b"loopback test key");
        Gossip::new(ShellConfig {
            listen,
            seeds,
            protocol: protocol::Config::new(keyring).with_period(Duration::from_millis(50)),
            mode: Mode::UserSpace,
            interface: None,
            rng_seed: Some(u64::from(listen.port())),
        })
        .unwrap()
    }

    fn wait(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "{what}: not within 10 s");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Two nodes over loopback, user-space sends (no root needed): they
    /// find each other, a key and the metadata spread, subscribers get the
    /// events, the keyring rotates, a leave shows as such.
    #[test]
    fn two_nodes_over_loopback() {
        let (a_addr, b_addr) = (free_port(), free_port());
        let a = loopback_node(a_addr, Vec::new());
        let b = loopback_node(b_addr, vec![a_addr]);
        let events = a.subscribe();
        a.enable_event_log(2);
        assert_eq!(b.events_since(0), None);
        let dropped = a.subscribe();
        drop(dropped);
        a.join();
        b.join();
        wait("membership", || {
            a.members().len() == 2 && b.members().len() == 2
        });
        b.set_key(b"role", b"cache".to_vec()).unwrap();
        let version = b.publish(b"hello".to_vec()).unwrap();
        wait("key and metadata", || {
            a.get(NodeId(b_addr), b"role").as_deref() == Some(&b"cache"[..])
                && a.read().version == version
        });
        assert_eq!(a.read().data, b"hello");
        let mut expected = vec![
            (NodeId(a_addr), Vec::new()),
            (NodeId(b_addr), vec![(b"role".to_vec(), b"cache".to_vec())]),
        ];
        expected.sort();
        assert_eq!(a.all_entries(), expected);
        let got: Vec<Event> = events.try_iter().collect();
        assert!(got.contains(&Event::Joined(NodeId(b_addr))), "{got:?}");
        assert!(got.contains(&Event::Published(version)), "{got:?}");
        assert_eq!(lock(&a.shared.subscribers).len(), 1);
        // The log keeps the last two events, timed and numbered.
        let (logged, next) = a.events_since(0).unwrap();
        assert_eq!(logged.len(), 2);
        assert_eq!(logged[1].seq + 1, next);
        let later: Vec<Event> = events.try_iter().collect();
        assert!(got.iter().chain(&later).any(|e| *e == logged[1].event));
        assert!(logged[0].at_ns <= logged[1].at_ns && logged[1].at_ns <= monotonic_ns());
        assert_eq!(a.events_since(next).unwrap().0, []);

        // Rotation: the new key on both, then primary on both, then the
        // old one removed; the nodes go on talking throughout.
        for node in [&a, &b] {
            node.install_key(2, b"next key");
        }
        for node in [&a, &b] {
            node.use_key(2).unwrap();
        }
        for node in [&a, &b] {
            assert_eq!(node.remove_key(2), Err(KeyringError::RemovePrimary(2)));
            node.remove_key(1).unwrap();
            assert_eq!(node.keys(), (2, vec![2]));
        }
        b.set_key(b"role", b"db".to_vec()).unwrap();
        wait("key after the rotation", || {
            a.get(NodeId(b_addr), b"role").as_deref() == Some(&b"db"[..])
        });
        let stats = a.stats();
        assert!(stats.recv_batches > 0 && stats.recv_datagrams >= stats.recv_batches);
        assert!(stats.recv_calls >= stats.recv_batches);
        assert_eq!(stats.recv_mode, RecvMode::Batched);
        // Per peer: a sent to b and got from b, and only b.
        let traffic = a.traffic();
        assert_eq!(traffic.len(), 1, "{traffic:?}");
        let (peer, counts) = traffic[0];
        assert_eq!(peer, SocketAddr::V4(b_addr));
        assert!(counts.sent > 0 && counts.received > 0, "{counts:?}");
        // Plain receive from here on: the nodes go on talking.
        a.set_recv_mode(RecvMode::Plain);
        b.set_key(b"role", b"plain".to_vec()).unwrap();
        wait("key with plain receive", || {
            a.get(NodeId(b_addr), b"role").as_deref() == Some(&b"plain"[..])
        });
        assert_eq!(a.stats().recv_mode, RecvMode::Plain);

        b.leave_and_shutdown();
        wait("leave", || {
            a.member(NodeId(b_addr)).map(|m| m.state) == Some(crate::codec::State::Left)
        });
        assert_eq!(a.members(), [NodeId(a_addr)]);
    }

    #[test]
    fn a_wildcard_listen_address_is_refused() {
        let config = ShellConfig {
            listen: "0.0.0.0:7946".parse().unwrap(),
            seeds: Vec::new(),
            protocol: protocol::Config::new(crate::codec::Keyring::new(1, b"k")),
            mode: Mode::UserSpace,
            interface: None,
            rng_seed: Some(1),
        };
        assert!(matches!(
            Gossip::new(config),
            Err(ShellError::ListenAddress(_))
        ));
    }
}
