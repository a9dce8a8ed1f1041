//! The gossip protocol as a state machine that does no I/O.
//!
//! The caller feeds it datagrams ([`Node::handle_packet`]) and timer ticks
//! ([`Node::tick`]) with the current time and collects what to send
//! ([`Node::drain_actions`]) and what changed ([`Node::drain_events`]);
//! randomness comes from an injected seeded RNG. So the same code runs in
//! the UDP shell and, deterministically, in the simulation (`sim.rs`).
//!
//! What it does (after SWIM, Lifeguard, memberlist, chitchat and foca):
//! - **Failure detection.** Each probe period a node pings the next member
//!   of a shuffled round-robin list. Without an ack within the probe timeout
//!   it asks `indirect_checks` other members to ping it (one broadcast: the
//!   same datagram to each) and pings it once more itself. Without an ack
//!   by the end of the period the
//!   member is *suspect*. The suspecting node tells the suspect first and
//!   gossips the suspicion only if no refutation (a higher incarnation
//!   number) came back within two gossip intervals; it declares the member
//!   dead when its suspicion times out (`1.5 * log10(N)` periods), and that
//!   spreads. Nodes that heard of the suspicion wait three times as long
//!   (Lifeguard's point: the node with the evidence decides, a refutation
//!   has until then to reach everyone). Lifeguard's local health: a node
//!   whose own probes keep failing, so probably is slow itself, stretches
//!   its probe period, probe timeout and suspicion timeouts.
//! - **Dissemination.** Membership updates and key/value changes queue up
//!   ([`crate::queue`]) and ride on every message the node sends; each is
//!   sent about `retransmit_mult * log10(N)` times. Every gossip interval a
//!   node with something to tell sends one datagram to `gossip_nodes`
//!   members at once: one broadcast, cloned by the kernel. Per-node traffic
//!   does not grow with the cluster.
//! - **Anti-entropy.** Every sync interval a node sends a member a digest
//!   (a [`Summary`] per node: membership and key/value version) of part of
//!   what it knows, a window that moves round the member list; the member
//!   answers with the deltas the node lacks and its own summaries, and gets
//!   the deltas it lacks in return (scuttlebutt). Every datagram fits
//!   `max_packet`.
//! - **Partitions heal.** Each gossip round also goes to a member believed
//!   dead with probability dead/(live+1), and to a seed not in view every
//!   announce interval. A fresh packet from a member held dead or suspect
//!   proves it alive: the receiver declares it alive again, one
//!   incarnation up, and that spreads.
//! - **State.** Each node owns a key/value map; versions count its writes,
//!   deletes leave tombstones collected after `tombstone_grace`. A restarted
//!   node starts a new generation, which replaces its old state everywhere.
//!   [`Node::publish`] and [`Node::read`] keep pekonode's cluster-wide
//!   metadata on top: a reserved key, the highest [`Version`] wins.
//! - **Security** (see `codec.rs`): every datagram is authenticated (and
//!   optionally encrypted) under a keyring; its sender must be the UDP
//!   source; a per-sender window of sequence numbers refuses replays, and
//!   windows outlive every other record of a node.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::codec::{
    self, Codec, DecodeError, Delta, Destination, Keyring, Kind, Message, NodeId, Range, State,
    Summary, Update,
};
use crate::queue::{Item, Queue};

/// Queued items beyond what one datagram carries (1400 bytes hold about
/// 85 membership updates): a gossip round then sends more than one.
const BACKLOG: usize = 85;

/// How much longer a node waits on a suspicion it heard of than its author
/// (Lifeguard's point: the node with the evidence decides; a refutation has
/// until then to reach everyone else).
const RELAYED_SUSPICION: f64 = 3.0;

/// The key under which [`Node::publish`] stores cluster-wide metadata in the
/// publishing node's state (refused by [`Node::set`]).
pub const PUBLISH_KEY: &[u8] = b"\0publish";

/// Protocol settings. [`Config::new`] gives memberlist's LAN defaults where
/// this protocol has the same knob.
#[derive(Clone)]
pub struct Config {
    /// The protocol period: one probe per period.
    pub probe_interval: Duration,
    /// How long a direct ping waits for its ack before indirect probes.
    pub probe_timeout: Duration,
    /// Members asked to probe a member that did not answer (memberlist
    /// asks 3; the request is one broadcast, so more cost the prober
    /// little, and each makes a false suspicion rarer).
    pub indirect_checks: usize,
    /// How often queued updates are gossiped.
    pub gossip_interval: Duration,
    /// Members each gossip round goes to, in one broadcast (the fan-out).
    pub gossip_nodes: usize,
    /// Most datagrams one gossip round sends while more is queued than one
    /// datagram holds (each to its own `gossip_nodes` members).
    pub max_burst: usize,
    /// Each update is sent `retransmit_mult * ceil(log10(N + 1))` times.
    pub retransmit_mult: u32,
    /// A suspect has `suspicion_mult * log10(max(N, 10))` periods to
    /// refute (times this node's local-health multiplier; three times that
    /// on nodes that only heard of the suspicion).
    pub suspicion_mult: f64,
    /// Highest local-health multiplier (Lifeguard): a node whose probes
    /// keep failing stretches its probe period and timeout up to this many
    /// times.
    pub max_awareness: u32,
    /// How often a node runs an anti-entropy exchange.
    pub sync_interval: Duration,
    /// How often a node announces itself to a seed it does not see.
    pub announce_interval: Duration,
    /// How long a dead member is remembered (and gossiped to, so that a
    /// partition heals) before it is forgotten.
    pub dead_retention: Duration,
    /// How long a deleted key's tombstone is kept.
    pub tombstone_grace: Duration,
    /// Largest datagram sent or accepted (keep it within the path MTU).
    pub max_packet: usize,
    /// Encrypt bodies (XChaCha20-Poly1305); else authenticate only.
    pub encrypt: bool,
    /// The keys: the primary seals, every one opens.
    pub keyring: Keyring,
}

impl Config {
    /// Defaults with the given keyring: a 1 s period, 500 ms probe
    /// timeout, 5 indirect probes, gossip to 3 members every 200 ms.
    pub fn new(keyring: Keyring) -> Config {
        Config {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_millis(500),
            indirect_checks: 5,
            gossip_interval: Duration::from_millis(200),
            gossip_nodes: 3,
            max_burst: 4,
            retransmit_mult: 4,
            suspicion_mult: 1.5,
            max_awareness: 8,
            sync_interval: Duration::from_secs(1),
            announce_interval: Duration::from_secs(1),
            dead_retention: Duration::from_secs(24 * 3600),
            tombstone_grace: Duration::from_secs(3600),
            max_packet: codec::DEFAULT_MAX_PACKET,
            encrypt: false,
            keyring,
        }
    }

    /// Scales every interval to a protocol period of `period` (the probe
    /// timeout is half of it, gossip rounds a fifth).
    pub fn with_period(mut self, period: Duration) -> Config {
        self.probe_interval = period;
        self.probe_timeout = period / 2;
        self.gossip_interval = period / 5;
        self.sync_interval = period;
        self.announce_interval = period;
        self
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("probe_interval", &self.probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .field("indirect_checks", &self.indirect_checks)
            .field("gossip_interval", &self.gossip_interval)
            .field("gossip_nodes", &self.gossip_nodes)
            .field("max_burst", &self.max_burst)
            .field("retransmit_mult", &self.retransmit_mult)
            .field("suspicion_mult", &self.suspicion_mult)
            .field("sync_interval", &self.sync_interval)
            .field("dead_retention", &self.dead_retention)
            .field("tombstone_grace", &self.tombstone_grace)
            .field("max_packet", &self.max_packet)
            .field("encrypt", &self.encrypt)
            .field("keyring", &self.keyring.ids())
            .finish()
    }
}

/// Orders cluster-wide metadata: a Lamport counter, ties broken by the
/// author. An update published after another was seen always wins,
/// whatever the clocks say; concurrent ones are ordered the same everywhere.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Lamport counter (compared first).
    pub counter: u64,
    /// The node that published it.
    pub node: NodeId,
}

impl Version {
    /// "Nothing published yet", older than every other version.
    pub const ZERO: Version = Version {
        counter: 0,
        node: NodeId::NONE,
    };
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.counter, self.node)
    }
}

/// The cluster-wide metadata as this node has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Metadata {
    /// Its version ([`Version::ZERO`] before anything was published).
    pub version: Version,
    /// The data.
    pub data: Vec<u8>,
}

/// What the shell has to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `packet`, unchanged, to every address in `to` (one broadcast).
    Send {
        /// The destinations.
        to: Vec<SocketAddr>,
        /// The datagram.
        packet: Vec<u8>,
    },
}

/// Something that changed, for the program using the node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node became a member (also one back from the dead).
    Joined(NodeId),
    /// A member is suspected of having failed.
    Suspected(NodeId),
    /// A suspected member proved alive.
    Refuted(NodeId),
    /// A member was declared dead.
    Failed(NodeId),
    /// A member left gracefully.
    Left(NodeId),
    /// A member restarted (a new generation of its state).
    Restarted(NodeId),
    /// A key of `node` was set or deleted.
    Changed {
        /// Whose key.
        node: NodeId,
        /// The key.
        key: Vec<u8>,
    },
    /// This node adopted new cluster-wide metadata.
    Published(Version),
}

/// Counters since the node was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Datagrams given to [`Node::handle_packet`].
    pub packets_in: u64,
    /// Their bytes.
    pub bytes_in: u64,
    /// Datagrams asked for by [`Action::Send`] (one per destination).
    pub datagrams_out: u64,
    /// Their bytes.
    pub bytes_out: u64,
    /// [`Action::Send`]s (broadcasts) asked for.
    pub sends: u64,
    /// Of those, sends to two or more members (what the kernel fan-out
    /// clones; the shell sends the others with a plain send).
    pub fan_outs: u64,
    /// Datagrams those fan-outs asked for.
    pub fan_out_copies: u64,
    /// Direct probes started.
    pub probes: u64,
    /// Probes that went indirect.
    pub indirect_probes: u64,
    /// Members this node suspected itself.
    pub suspicions: u64,
    /// Suspicions of this node that it refuted.
    pub refutations: u64,
    /// Members this node declared dead when their suspicion timed out.
    pub failures: u64,
    /// Suspicion and death notices sent to the member concerned.
    pub certificates: u64,
    /// Membership updates that were news.
    pub updates: u64,
    /// Key/value deltas that were news.
    pub deltas: u64,
    /// Updates and deltas already known.
    pub stale: u64,
    /// Anti-entropy exchanges started.
    pub syncs: u64,
    /// Dropped: longer than `max_packet`.
    pub dropped_oversized: u64,
    /// Dropped: shorter than a header and a tag.
    pub dropped_truncated: u64,
    /// Dropped: not a gossip packet.
    pub dropped_not_gossip: u64,
    /// Dropped: sealed under a key not in the keyring.
    pub dropped_unknown_key: u64,
    /// Dropped: wrong tag (wrong key, or altered).
    pub dropped_bad_tag: u64,
    /// Dropped: authentic but malformed.
    pub dropped_malformed: u64,
    /// Dropped: the sender inside is not the UDP source.
    pub dropped_spoofed: u64,
    /// Dropped: a sequence number already seen, or too old (a replay).
    pub dropped_replayed: u64,
    /// Dropped: our own packet back.
    pub dropped_own: u64,
    /// Dropped: not addressed to this node, or to an earlier run of it.
    pub dropped_misaddressed: u64,
    /// Dropped: from a sender held dead or left, at an incarnation not above
    /// the one it died at (replays, late copies, a node that missed its own
    /// death: it is told).
    pub dropped_dead: u64,
}

impl Stats {
    /// All dropped packets.
    pub fn dropped(&self) -> u64 {
        self.dropped_oversized
            + self.dropped_truncated
            + self.dropped_not_gossip
            + self.dropped_unknown_key
            + self.dropped_bad_tag
            + self.dropped_malformed
            + self.dropped_spoofed
            + self.dropped_replayed
            + self.dropped_own
            + self.dropped_misaddressed
            + self.dropped_dead
    }
}

/// Why [`Node::set`], [`Node::delete`] or [`Node::publish`] refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ValueError {
    /// Key and value do not fit one datagram beside the headers.
    TooLarge {
        /// Bytes of the key and value.
        len: usize,
        /// Most that fits.
        max: usize,
    },
    /// The key is empty, longer than 255 bytes, or reserved.
    BadKey,
    /// The node has left the cluster.
    Left,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValueError::TooLarge { len, max } => write!(
                f,
                "key and value of {len} bytes exceed the {max} that fit one datagram \
                 (raise --max-packet within the path MTU, or store a reference)"
            ),
            ValueError::BadKey => write!(f, "keys are 1 to 255 bytes and may not start with NUL"),
            ValueError::Left => write!(f, "the node has left the cluster"),
        }
    }
}

impl std::error::Error for ValueError {}

/// A member as this node sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Who.
    pub node: NodeId,
    /// Alive, suspect, dead or left.
    pub state: State,
    /// Its incarnation number.
    pub incarnation: u64,
}

/// A set with O(1) insert, remove and random choice.
#[derive(Clone, Debug, Default)]
struct Pool {
    list: Vec<NodeId>,
    index: HashMap<NodeId, usize>,
}

impl Pool {
    fn insert(&mut self, node: NodeId) {
        if !self.index.contains_key(&node) {
            self.index.insert(node, self.list.len());
            self.list.push(node);
        }
    }

    fn remove(&mut self, node: NodeId) {
        if let Some(i) = self.index.remove(&node) {
            self.list.swap_remove(i);
            if let Some(moved) = self.list.get(i) {
                self.index.insert(*moved, i);
            }
        }
    }

    fn len(&self) -> usize {
        self.list.len()
    }

    fn choose(&self, rng: &mut SmallRng) -> Option<NodeId> {
        self.list.choose(rng).copied()
    }

    /// Up to `n` distinct members, none in `except`.
    fn sample(&self, rng: &mut SmallRng, n: usize, except: &[NodeId]) -> Vec<NodeId> {
        let mut picked = Vec::with_capacity(n);
        if self.list.len() <= 4 * (n + except.len()) {
            let mut all: Vec<NodeId> = self
                .list
                .iter()
                .filter(|node| !except.contains(node))
                .copied()
                .collect();
            all.shuffle(rng);
            all.truncate(n);
            return all;
        }
        // A large pool: rejection sampling, O(n).
        while picked.len() < n {
            let node = self.list[rng.gen_range(0..self.list.len())];
            if !except.contains(&node) && !picked.contains(&node) {
                picked.push(node);
            }
        }
        picked
    }
}

/// A member's record.
#[derive(Clone, Debug)]
struct Member {
    incarnation: u64,
    state: State,
    /// When (local time) it entered this state.
    since: Instant,
    suspicion: Option<Suspicion>,
}

#[derive(Clone, Debug)]
struct Suspicion {
    deadline: Instant,
}

/// A value with its version; `None` is a tombstone.
#[derive(Clone, Debug)]
struct Value {
    version: u64,
    value: Option<Vec<u8>>,
    /// When this node learned it (tombstones are collected after a grace).
    since: Instant,
}

/// One node's key/value state as known here.
#[derive(Clone, Debug, Default)]
struct NodeState {
    generation: u64,
    /// Every version up to this one is known (the scuttlebutt watermark).
    version: u64,
    keys: BTreeMap<Vec<u8>, Value>,
    by_version: BTreeMap<u64, Vec<u8>>,
    /// Highest version of a collected tombstone: a peer behind it gets the
    /// whole state.
    gc_floor: u64,
}

impl NodeState {
    fn new(generation: u64) -> NodeState {
        NodeState {
            generation,
            ..NodeState::default()
        }
    }

    fn insert(&mut self, key: Vec<u8>, value: Value) {
        if let Some(old) = self.keys.get(&key) {
            self.by_version.remove(&old.version);
        }
        self.by_version.insert(value.version, key.clone());
        self.keys.insert(key, value);
    }

    fn remove(&mut self, key: &[u8]) {
        if let Some(old) = self.keys.remove(key) {
            self.by_version.remove(&old.version);
        }
    }

    /// Moves the watermark over versions now known without a gap.
    fn advance(&mut self) {
        while self.by_version.contains_key(&(self.version + 1)) {
            self.version += 1;
        }
    }
}

/// Replay window over a sender's sequence numbers: the highest seen and a
/// bitmap of the 64 below it.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    high: u64,
    seen: u64,
    /// The incarnation it was declared dead or left at, kept when its
    /// member record is forgotten (0: none).
    dead: u64,
}

impl Window {
    /// Whether `seq` is new (and notes it).
    fn accept(&mut self, seq: u64) -> bool {
        if seq > self.high {
            let shift = seq - self.high;
            self.seen = if shift >= 64 { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.high = seq;
            return true;
        }
        let back = self.high - seq;
        if back >= 64 || self.seen & (1 << back) != 0 {
            return false;
        }
        self.seen |= 1 << back;
        true
    }
}

/// The probe of this period.
#[derive(Clone, Debug)]
struct Probe {
    target: NodeId,
    /// Sequence number of the ping (acks name it).
    ping: u64,
    /// Sequence numbers of the indirect request and of the second direct
    /// ping sent with it, once sent.
    indirect: Option<(u64, u64)>,
    indirect_at: Instant,
    acked: bool,
}

/// A ping sent for another member's indirect probe.
#[derive(Clone, Copy, Debug)]
struct Relay {
    requester: NodeId,
    probe: u64,
    expires: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Suspicion(NodeId),
    /// Our own suspicion of a member at an incarnation, if it stands: tell
    /// the member again (each round), and gossip it (at round 2).
    Publish(NodeId, u64, u32),
    Forget(NodeId),
}

/// One gossip node. A clone is an independent copy (the simulation
/// measures a node's CPU on a clone, with its own caches warm).
#[derive(Clone)]
pub struct Node {
    me: NodeId,
    config: Config,
    codec: Codec,
    rng: SmallRng,
    joined: bool,
    paused: bool,
    left: bool,
    incarnation: u64,
    generation: u64,
    next_seq: u64,
    /// Lifeguard's local health multiplier.
    awareness: u32,
    /// Suspicion and death notices still allowed this gossip interval.
    certificates_left: usize,
    members: HashMap<NodeId, Member>,
    /// Alive and suspect members.
    live: Pool,
    /// Dead and left members, until forgotten.
    dead: Pool,
    seeds: Vec<NodeId>,
    probe_order: Vec<NodeId>,
    probe_next: usize,
    probe: Option<Probe>,
    relays: HashMap<u64, Relay>,
    states: HashMap<NodeId, NodeState>,
    windows: HashMap<NodeId, Window>,
    queue: Queue,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    published: Metadata,
    lamport: u64,
    sync_cursor: usize,
    next_probe: Instant,
    next_gossip: Instant,
    next_sync: Instant,
    next_announce: Instant,
    next_gc: Instant,
    actions: Vec<Action>,
    events: Vec<Event>,
    stats: Stats,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("me", &self.me)
            .field("incarnation", &self.incarnation)
            .field("joined", &self.joined)
            .field("live", &self.live.len())
            .field("dead", &self.dead.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Creates a node. `boot` starts its incarnation, its state's
    /// generation and its message sequence numbers: it must be higher than
    /// in any earlier run of the same node (the shell uses the wall clock in
    /// microseconds), so that peers take the restarted node for a new one
    /// and not for a replay.
    pub fn new(me: NodeId, config: Config, rng: SmallRng, boot: u64, now: Instant) -> Node {
        let codec = Codec::new(config.keyring.clone(), config.max_packet, config.encrypt);
        let boot = boot.max(1);
        let mut states = HashMap::new();
        states.insert(me, NodeState::new(boot));
        Node {
            me,
            codec,
            rng,
            joined: false,
            paused: false,
            left: false,
            incarnation: boot,
            generation: boot,
            next_seq: boot,
            awareness: 0,
            certificates_left: 0,
            members: HashMap::new(),
            live: Pool::default(),
            dead: Pool::default(),
            seeds: Vec::new(),
            probe_order: Vec::new(),
            probe_next: 0,
            probe: None,
            relays: HashMap::new(),
            states,
            windows: HashMap::new(),
            queue: Queue::default(),
            timers: BinaryHeap::new(),
            published: Metadata {
                version: Version::ZERO,
                data: Vec::new(),
            },
            lamport: 0,
            sync_cursor: 0,
            next_probe: now,
            next_gossip: now,
            next_sync: now,
            next_announce: now,
            next_gc: now + config.tombstone_grace / 4,
            actions: Vec::new(),
            events: Vec::new(),
            stats: Stats::default(),
            config,
        }
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.me
    }

    /// The configuration (its keyring as given at creation).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The keyring in use: install a key everywhere, then make it primary
    /// everywhere, then remove the old one, and no packet is refused.
    pub fn keyring(&self) -> &Keyring {
        self.codec.keyring()
    }

    /// Changes the keyring (see [`Node::keyring`]).
    pub fn keyring_mut(&mut self) -> &mut Keyring {
        self.codec.keyring_mut()
    }

    /// Adds seeds: contacted when joining, and announced to whenever they
    /// are not in view, so that a node cut off from everyone finds its way
    /// back.
    pub fn add_seeds(&mut self, seeds: impl IntoIterator<Item = NodeId>) {
        for seed in seeds {
            if seed != self.me && seed != NodeId::NONE && !self.seeds.contains(&seed) {
                self.seeds.push(seed);
            }
        }
    }

    /// Starts probing and gossiping, and asks every seed for its state (one
    /// broadcast).
    pub fn join(&mut self, now: Instant) {
        if self.joined || self.left {
            return;
        }
        self.joined = true;
        self.queue.push(Item::Update(self.self_update()));
        self.next_probe = now + self.config.probe_interval;
        self.next_gossip = now;
        self.next_sync = now + self.config.sync_interval;
        self.next_announce = now + self.config.announce_interval;
        let seeds = self.seeds.clone();
        if !seeds.is_empty() {
            let message = self.sync_request(seeds.len());
            self.stats.syncs += 1;
            self.send(seeds, message, true);
        }
    }

    /// Starts from a known membership: each `(node, incarnation)` becomes an
    /// alive member at once, with no event and nothing to gossip (every
    /// node of a static configuration, or the simulation's bootstrap of a
    /// large cluster, knows them all already). Nodes already known are left
    /// as they are.
    pub fn assume_alive(&mut self, members: impl IntoIterator<Item = (NodeId, u64)>, now: Instant) {
        for (node, incarnation) in members {
            if node == self.me || node == NodeId::NONE || self.members.contains_key(&node) {
                continue;
            }
            self.members.insert(
                node,
                Member {
                    incarnation,
                    state: State::Alive,
                    since: now,
                    suspicion: None,
                },
            );
            self.live.insert(node);
            self.probe_order.push(node);
        }
        self.probe_order.shuffle(&mut self.rng);
        self.probe_next = 0;
    }

    /// Whether [`Node::join`] was called (and the node has not left).
    pub fn is_joined(&self) -> bool {
        self.joined && !self.left
    }

    /// Leaves gracefully: tells `2 * gossip_nodes` members at once and keeps
    /// gossiping the leave (keep calling [`Node::tick`] for a few gossip
    /// intervals), but probes and answers nothing any more.
    pub fn leave(&mut self, now: Instant) {
        if self.left || !self.joined {
            self.left = true;
            return;
        }
        self.left = true;
        self.queue.push(Item::Update(self.self_update()));
        let targets = self
            .live
            .sample(&mut self.rng, 2 * self.config.gossip_nodes, &[]);
        if !targets.is_empty() {
            self.send(targets, Message::new(Kind::Gossip), true);
        }
        self.next_gossip = now + self.config.gossip_interval;
    }

    /// Pauses: the node sends nothing (so the others find it dead) but
    /// keeps listening.
    pub fn stop(&mut self) {
        self.paused = true;
    }

    /// Resumes after [`Node::stop`]; joins if not joined yet.
    pub fn start(&mut self, now: Instant) {
        self.paused = false;
        if self.joined {
            self.next_probe = now;
            self.next_gossip = now;
            self.next_sync = now;
        } else {
            self.join(now);
        }
    }

    /// Whether sending is paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Alive and suspect members, this node included, sorted.
    pub fn members(&self) -> Vec<NodeId> {
        let mut list = self.live.list.clone();
        if !self.left {
            list.push(self.me);
        }
        list.sort();
        list
    }

    /// Every member this node has a record of, with its state, sorted.
    pub fn member_states(&self) -> Vec<MemberInfo> {
        let mut list: Vec<MemberInfo> = self
            .members
            .iter()
            .map(|(node, m)| MemberInfo {
                node: *node,
                state: m.state,
                incarnation: m.incarnation,
            })
            .collect();
        list.push(MemberInfo {
            node: self.me,
            state: if self.left { State::Left } else { State::Alive },
            incarnation: self.incarnation,
        });
        list.sort_by_key(|m| m.node);
        list
    }

    /// What this node knows of `node` (None: no record).
    pub fn member(&self, node: NodeId) -> Option<MemberInfo> {
        if node == self.me {
            let me = self.self_update();
            return Some(MemberInfo {
                node,
                state: me.state,
                incarnation: me.incarnation,
            });
        }
        self.members.get(&node).map(|m| MemberInfo {
            node,
            state: m.state,
            incarnation: m.incarnation,
        })
    }

    /// This node's incarnation number.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// Sets one of this node's keys; returns its version.
    pub fn set(&mut self, key: &[u8], value: Vec<u8>, now: Instant) -> Result<u64, ValueError> {
        check_key(key)?;
        self.write(key.to_vec(), Some(value), now)
    }

    /// Deletes one of this node's keys (a tombstone, collected after
    /// `tombstone_grace`); returns the tombstone's version, or None when the
    /// key was not set.
    pub fn delete(&mut self, key: &[u8], now: Instant) -> Result<Option<u64>, ValueError> {
        check_key(key)?;
        let present = self
            .own_state()
            .keys
            .get(key)
            .is_some_and(|v| v.value.is_some());
        if !present {
            return Ok(None);
        }
        self.write(key.to_vec(), None, now).map(Some)
    }

    /// A key of `node` as this node knows it (None: unset or deleted).
    pub fn get(&self, node: NodeId, key: &[u8]) -> Option<&[u8]> {
        self.states.get(&node)?.keys.get(key)?.value.as_deref()
    }

    /// The keys of `node` that are set, with their values, in key order
    /// (the reserved publish key left out).
    pub fn entries(&self, node: NodeId) -> Vec<(&[u8], &[u8])> {
        self.states.get(&node).map_or_else(Vec::new, |state| {
            state
                .keys
                .iter()
                .filter(|(key, _)| key.as_slice() != PUBLISH_KEY)
                .filter_map(|(key, v)| Some((key.as_slice(), v.value.as_deref()?)))
                .collect()
        })
    }

    /// Publishes cluster-wide metadata (pekonode `Publish`): stored under
    /// [`PUBLISH_KEY`] in this node's state with a Lamport version one above
    /// every version seen.
    pub fn publish(&mut self, data: Vec<u8>, now: Instant) -> Result<Version, ValueError> {
        let counter = self.lamport.max(self.published.version.counter) + 1;
        let mut value = counter.to_be_bytes().to_vec();
        value.extend_from_slice(&data);
        self.write(PUBLISH_KEY.to_vec(), Some(value), now)?;
        Ok(self.published.version)
    }

    /// The cluster-wide metadata (pekonode `Read`).
    pub fn read(&self) -> &Metadata {
        &self.published
    }

    /// Largest key plus value [`Node::set`] accepts.
    pub fn max_value(&self) -> usize {
        // A gossip round's message: its addressees (the live ones, a dead
        // one, a seed), our own update.
        let fixed = Message::new(Kind::Gossip).encoded_len()
            + codec::DESTINATION_LEN * (self.config.gossip_nodes + 2)
            + codec::UPDATE_LEN;
        let delta = Delta {
            node: self.me,
            generation: 0,
            version: 0,
            key: Vec::new(),
            value: Some(Vec::new()),
        };
        self.config
            .max_packet
            .saturating_sub(fixed + delta.encoded_len())
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Updates and deltas waiting to be gossiped.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// What to send, in order; empties the queue.
    pub fn drain_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// What changed since the last call; empties the queue.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// When [`Node::tick`] has work next (None before [`Node::join`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.joined {
            return None;
        }
        let mut next = self.next_gc;
        if let Some(Reverse((at, _))) = self.timers.peek() {
            next = next.min(*at);
        }
        if !self.paused {
            next = next.min(self.next_gossip);
            if !self.left {
                next = next.min(self.next_probe).min(self.next_sync);
                if let Some(probe) = &self.probe {
                    if !probe.acked && probe.indirect.is_none() {
                        next = next.min(probe.indirect_at);
                    }
                }
            }
        }
        Some(next)
    }

    /// Runs the timers: suspicions and forgetting, probes, gossip rounds,
    /// anti-entropy, tombstone collection.
    pub fn tick(&mut self, now: Instant) {
        if !self.joined {
            return;
        }
        while let Some(Reverse((at, timer))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            self.fire(timer, at, now);
        }
        if now >= self.next_gc {
            self.next_gc = now + self.config.tombstone_grace / 4;
            self.collect_tombstones(now);
        }
        self.relays.retain(|_, relay| relay.expires > now);
        if self.paused {
            return;
        }
        if !self.left {
            self.probe_tick(now);
            if now >= self.next_sync {
                self.next_sync = now + self.config.sync_interval.mul_f64(self.jitter());
                self.start_sync();
            }
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval;
            self.certificates_left = self.config.gossip_nodes;
            self.gossip_round(now);
        }
    }

    /// Handles one datagram from `from`. Packets that are oversized,
    /// truncated, foreign, forged, malformed, spoofed or replayed are
    /// dropped and counted in [`Stats`].
    pub fn handle_packet(&mut self, from: SocketAddr, bytes: &[u8], now: Instant) {
        self.stats.packets_in += 1;
        self.stats.bytes_in += bytes.len() as u64;
        let packet = match self.codec.decode(bytes) {
            Ok(packet) => packet,
            Err(err) => {
                self.count_drop(err);
                return;
            }
        };
        let sender = packet.sender;
        if sender.addr() != from {
            self.stats.dropped_spoofed += 1;
            return;
        }
        if sender == self.me {
            self.stats.dropped_own += 1;
            return;
        }
        // Addressed to this run of this node: a copy replayed to another
        // node, or to a later run of this one, is refused.
        let addressed =
            packet.message.to.iter().any(|d| {
                d.node == self.me && (d.incarnation == 0 || d.incarnation >= self.generation)
            });
        if !addressed {
            self.stats.dropped_misaddressed += 1;
            return;
        }
        if !self.windows.entry(sender).or_default().accept(packet.seq) {
            self.stats.dropped_replayed += 1;
            return;
        }
        let message = packet.message;
        let incarnation_before = self.incarnation;
        if self.sent_by_dead_run(sender, &message) {
            // Sent before the sender was declared dead (a replay, or a
            // late copy), or by a live sender that does not know it was:
            // nothing in it counts, but it is told, so that a live one
            // refutes. What it says about us counts (a notice of our own
            // death), so that two sides that each hold the other dead
            // still heal.
            self.stats.dropped_dead += 1;
            let me = self.me;
            for update in message.updates.iter().filter(|u| u.node == me) {
                self.about_me(*update);
            }
            if self.incarnation != incarnation_before && !self.left && !self.paused {
                // Both of us held the other dead: a partition is ending.
                // The refutation goes back to the sender and, in the same
                // broadcast, to other members we hold dead, so that it
                // starts spreading on the other side at once.
                let others = self.config.gossip_nodes.saturating_sub(1);
                let mut to = self.dead.sample(&mut self.rng, others, &[sender]);
                to.retain(|n| self.members.get(n).is_some_and(|m| m.state == State::Dead));
                to.insert(0, sender);
                self.send(to, Message::new(Kind::Gossip), true);
            }
            self.certify(sender);
            return;
        }
        for update in &message.updates {
            self.apply_update(*update, now);
        }
        for summary in &message.summaries {
            self.apply_summary(summary, now);
        }
        self.apply_deltas(&message.ranges, &message.deltas, now);
        if self.left || self.paused {
            return;
        }
        let refuted = self.incarnation != incarnation_before;
        match message.kind {
            Kind::Ping => {
                let ack = Message::new(Kind::Ack { probe: packet.seq });
                self.send(vec![sender], ack, true);
            }
            Kind::PingReq { target } => {
                if target == self.me {
                    let ack = Message::new(Kind::Ack { probe: packet.seq });
                    self.send(vec![sender], ack, true);
                } else {
                    let seq = self.send(vec![target], Message::new(Kind::Ping), true);
                    self.relays.insert(
                        seq,
                        Relay {
                            requester: sender,
                            probe: packet.seq,
                            expires: now + self.config.probe_interval,
                        },
                    );
                }
            }
            Kind::Ack { probe } => self.on_ack(probe),
            Kind::SyncRequest => self.answer_sync(sender, &message.summaries),
            Kind::SyncReply => {
                let deltas = self.deltas_for(&message.summaries, Kind::SyncDeltas);
                if !deltas.ranges.is_empty() {
                    self.send(vec![sender], deltas, false);
                }
            }
            Kind::Gossip | Kind::SyncDeltas => {}
        }
        if refuted {
            // Told of our own death or suspicion: answer at once.
            self.send(vec![sender], Message::new(Kind::Gossip), true);
        }
        // A suspect that does not know it: tell it.
        self.certify(sender);
    }

    fn count_drop(&mut self, err: DecodeError) {
        let counter = match err {
            DecodeError::Oversized { .. } => &mut self.stats.dropped_oversized,
            DecodeError::Truncated => &mut self.stats.dropped_truncated,
            DecodeError::NotGossip => &mut self.stats.dropped_not_gossip,
            DecodeError::UnknownKey(_) => &mut self.stats.dropped_unknown_key,
            DecodeError::BadTag => &mut self.stats.dropped_bad_tag,
            DecodeError::Malformed(_) => &mut self.stats.dropped_malformed,
        };
        *counter += 1;
    }

    fn jitter(&mut self) -> f64 {
        self.rng.gen_range(0.9..1.1)
    }

    fn self_update(&self) -> Update {
        Update {
            node: self.me,
            incarnation: self.incarnation,
            state: if self.left { State::Left } else { State::Alive },
        }
    }

    fn own_state(&self) -> &NodeState {
        &self.states[&self.me]
    }

    /// Live members, this node included.
    fn cluster_size(&self) -> usize {
        self.live.len() + 1
    }

    fn retransmit_limit(&self) -> u32 {
        let n = (self.cluster_size() + 1) as f64;
        self.config.retransmit_mult * (n.log10().ceil() as u32).max(1)
    }

    // ---- membership -------------------------------------------------------

    /// Applies a membership update heard from `from` (None: our own finding).
    fn apply_update(&mut self, update: Update, now: Instant) {
        if update.node == self.me {
            self.about_me(update);
            return;
        }
        if update.node == NodeId::NONE {
            return;
        }
        let Some(member) = self.members.get_mut(&update.node) else {
            if self.dead_and_forgotten(update) {
                return;
            }
            self.stats.updates += 1;
            self.add_member(update, now);
            self.queue.push(Item::Update(update));
            return;
        };
        if !overrides(update, member.incarnation, member.state) {
            self.stats.stale += 1;
            if member.state == State::Alive
                && matches!(update.state, State::Suspect | State::Dead)
                && member.incarnation > update.incarnation
            {
                // A suspicion the member has refuted is still going round:
                // gossip the refutation against it.
                let correction = Update {
                    node: update.node,
                    incarnation: member.incarnation,
                    state: State::Alive,
                };
                self.queue.push(Item::Update(correction));
            }
            return;
        }
        self.stats.updates += 1;
        // A higher incarnation of a member already alive here changes no
        // view: take it, but leave the gossiping to the nodes whose view it
        // corrects (those that held it suspect or dead). After a partition
        // each side then spreads only the other side's refutations, and a
        // refuted false suspicion costs the few nodes that had heard of it.
        let news = !(member.state == State::Alive && update.state == State::Alive);
        self.transition(update, now);
        if news {
            self.queue.push(Item::Update(update));
        }
    }

    /// A report of a node we never had a record of, or forgot: a dead one
    /// is not worth a record.
    fn dead_and_forgotten(&self, update: Update) -> bool {
        matches!(update.state, State::Dead | State::Left)
    }

    fn add_member(&mut self, update: Update, now: Instant) {
        let member = Member {
            incarnation: update.incarnation,
            state: update.state,
            since: now,
            suspicion: None,
        };
        self.members.insert(update.node, member);
        self.live.insert(update.node);
        // A new member goes to a random place of the probe order (SWIM).
        let at = self.rng.gen_range(self.probe_next..=self.probe_order.len());
        self.probe_order.insert(at, update.node);
        self.events.push(Event::Joined(update.node));
        if update.state == State::Suspect {
            self.start_suspicion(update.node, now, RELAYED_SUSPICION);
        }
    }

    fn transition(&mut self, update: Update, now: Instant) {
        let node = update.node;
        let Some(member) = self.members.get_mut(&node) else {
            return;
        };
        let old = member.state;
        member.incarnation = update.incarnation;
        member.state = update.state;
        member.since = now;
        let was_live = matches!(old, State::Alive | State::Suspect);
        match update.state {
            State::Alive => {
                member.suspicion = None;
                if old == State::Suspect {
                    self.events.push(Event::Refuted(node));
                } else if !was_live {
                    self.dead.remove(node);
                    self.live.insert(node);
                    self.probe_order.push(node);
                    self.events.push(Event::Joined(node));
                }
            }
            State::Suspect => {
                if !was_live {
                    self.dead.remove(node);
                    self.live.insert(node);
                    self.probe_order.push(node);
                    self.events.push(Event::Joined(node));
                }
                self.events.push(Event::Suspected(node));
                self.start_suspicion(node, now, RELAYED_SUSPICION);
            }
            State::Dead | State::Left => {
                member.suspicion = None;
                self.live.remove(node);
                self.dead.insert(node);
                if was_live {
                    self.events.push(if update.state == State::Dead {
                        Event::Failed(node)
                    } else {
                        Event::Left(node)
                    });
                }
                let forget_at = now + self.config.dead_retention;
                self.timers.push(Reverse((forget_at, Timer::Forget(node))));
            }
        }
    }

    /// Something said about this node: refute suspicion and death, and move
    /// past incarnations of an earlier run.
    fn about_me(&mut self, update: Update) {
        if self.left {
            return;
        }
        let refute = match update.state {
            State::Alive => update.incarnation > self.incarnation,
            State::Suspect | State::Dead | State::Left => update.incarnation >= self.incarnation,
        };
        if !refute && update.state != State::Alive {
            // Suspected or declared dead at an incarnation we are already
            // past: the nodes saying so never heard it (higher incarnations
            // of live members are not gossiped), so announce it again.
            self.queue.push(Item::Update(self.self_update()));
            return;
        }
        if refute && update.state == State::Alive {
            // Someone remembers an earlier run of ours with a higher
            // incarnation (our clock went back): take it, nothing to refute.
            self.incarnation = update.incarnation;
        } else if refute {
            self.incarnation = update.incarnation + 1;
            self.stats.refutations += 1;
            // Lifeguard: being suspected hints that we are the slow one.
            self.awareness = (self.awareness + 1).min(self.config.max_awareness);
            self.queue.push(Item::Update(self.self_update()));
        }
    }

    /// Starts the suspicion timer: `suspicion_mult * log10(max(N, 10))`
    /// periods, times this node's local-health multiplier (Lifeguard: a
    /// node that is itself slow, so whose probes fail for its own reasons,
    /// gives the suspect longer to refute), times `factor`: 1 for a suspicion of our own (our probe failed: we
    /// declare the death, and that spreads) and [`RELAYED_SUSPICION`] for
    /// one heard of, whose timer is only there in case its author fails too.
    fn start_suspicion(&mut self, node: NodeId, now: Instant, factor: f64) {
        let n = self.cluster_size().max(10) as f64;
        let timeout = self.config.probe_interval.mul_f64(
            self.config.suspicion_mult * n.log10() * f64::from(self.awareness + 1) * factor,
        );
        let deadline = now + timeout;
        if let Some(member) = self.members.get_mut(&node) {
            member.suspicion = Some(Suspicion { deadline });
            self.timers
                .push(Reverse((deadline, Timer::Suspicion(node))));
        }
    }

    fn fire(&mut self, timer: Timer, at: Instant, now: Instant) {
        match timer {
            Timer::Suspicion(node) => {
                let Some(member) = self.members.get(&node) else {
                    return;
                };
                let due = member.state == State::Suspect
                    && member.suspicion.as_ref().is_some_and(|s| s.deadline == at);
                if due {
                    let update = Update {
                        node,
                        incarnation: member.incarnation,
                        state: State::Dead,
                    };
                    self.stats.failures += 1;
                    self.transition(update, now);
                    self.queue.push(Item::Update(update));
                }
            }
            Timer::Publish(node, incarnation, round) => {
                let stands = self
                    .members
                    .get(&node)
                    .is_some_and(|m| m.state == State::Suspect && m.incarnation == incarnation);
                if !stands {
                    return;
                }
                if round == 2 {
                    self.queue.push(Item::Update(Update {
                        node,
                        incarnation,
                        state: State::Suspect,
                    }));
                }
                // Tell the suspect again every gossip round while the
                // suspicion stands: its refutation gets a fresh chance each
                // time (one lost notice or reply must not remove a live
                // member; a dead one costs a datagram per round).
                self.certify(node);
                let next = now + self.config.gossip_interval;
                self.timers.push(Reverse((
                    next,
                    Timer::Publish(node, incarnation, round + 1),
                )));
            }
            Timer::Forget(node) => {
                let Some(member) = self.members.get(&node) else {
                    return;
                };
                let gone = matches!(member.state, State::Dead | State::Left)
                    && member.since + self.config.dead_retention <= now;
                if gone {
                    // Its replay window stays, with the incarnation it died
                    // at: old packets stay refused.
                    let incarnation = member.incarnation;
                    self.windows.entry(node).or_default().dead = incarnation;
                    self.members.remove(&node);
                    self.dead.remove(node);
                    self.states.remove(&node);
                    self.queue.forget(node);
                }
            }
        }
    }

    /// Whether a packet comes from a run of `sender` that was declared dead
    /// (or left): its own update in it is not above that incarnation.
    fn sent_by_dead_run(&self, sender: NodeId, message: &Message) -> bool {
        let dead = match self.members.get(&sender) {
            Some(member) if matches!(member.state, State::Dead | State::Left) => member.incarnation,
            Some(_) => return false,
            None => match self.windows.get(&sender) {
                Some(window) if window.dead > 0 => window.dead,
                _ => return false,
            },
        };
        let claimed = message
            .updates
            .iter()
            .find(|u| u.node == sender)
            .map_or(0, |u| u.incarnation);
        claimed <= dead
    }

    /// Tells `node` that we hold it suspect or dead, so that a live node
    /// refutes within a round trip: within a budget of `gossip_nodes`
    /// notices per gossip interval (replays of a dead node's packets cost
    /// no more than that).
    fn certify(&mut self, node: NodeId) {
        let (incarnation, state) = match self.members.get(&node) {
            Some(m) if matches!(m.state, State::Suspect | State::Dead) => (m.incarnation, m.state),
            Some(_) => return,
            None => match self.windows.get(&node) {
                Some(w) if w.dead > 0 => (w.dead, State::Dead),
                _ => return,
            },
        };
        if self.certificates_left == 0 || self.left || self.paused {
            return;
        }
        self.certificates_left -= 1;
        self.stats.certificates += 1;
        let mut message = Message::new(Kind::Gossip);
        message.updates.push(Update {
            node,
            incarnation,
            state,
        });
        self.send(vec![node], message, true);
    }

    // ---- probes ------------------------------------------------------------

    fn probe_tick(&mut self, now: Instant) {
        if let Some(probe) = &mut self.probe {
            if !probe.acked && probe.indirect.is_none() && now >= probe.indirect_at {
                let target = probe.target;
                let helpers =
                    self.live
                        .sample(&mut self.rng, self.config.indirect_checks, &[target]);
                // Ask the helpers (one broadcast: with the kernel fan-out
                // more helpers cost the prober little) and ping once more
                // directly: a live member is then suspected only when both
                // pings and every helper's path fail.
                let request = if helpers.is_empty() {
                    0
                } else {
                    self.stats.indirect_probes += 1;
                    self.send(helpers, Message::new(Kind::PingReq { target }), true)
                };
                let again = self.send(vec![target], Message::new(Kind::Ping), true);
                if let Some(probe) = &mut self.probe {
                    probe.indirect = Some((request, again));
                }
            }
        }
        if now < self.next_probe {
            return;
        }
        if let Some(probe) = self.probe.take() {
            if probe.acked {
                self.awareness = self.awareness.saturating_sub(1);
            } else {
                // The suspicion's timer takes our local health as it was
                // before this failure: one failed probe of a healthy node
                // does not stretch it, a history of them does.
                self.suspect(probe.target, now);
                self.awareness = (self.awareness + 1).min(self.config.max_awareness);
            }
        }
        let scale = f64::from(self.awareness + 1);
        self.next_probe = now + self.config.probe_interval.mul_f64(scale);
        let Some(target) = self.next_probe_target() else {
            return;
        };
        self.stats.probes += 1;
        let ping = self.send(vec![target], Message::new(Kind::Ping), true);
        self.probe = Some(Probe {
            target,
            ping,
            indirect: None,
            indirect_at: now + self.config.probe_timeout.mul_f64(scale),
            acked: false,
        });
    }

    /// The next live member of the round-robin order, reshuffled once per
    /// round (SWIM's bound on the time to first probe a failed member).
    fn next_probe_target(&mut self) -> Option<NodeId> {
        for _ in 0..2 {
            while self.probe_next < self.probe_order.len() {
                let node = self.probe_order[self.probe_next];
                self.probe_next += 1;
                if self
                    .members
                    .get(&node)
                    .is_some_and(|m| matches!(m.state, State::Alive | State::Suspect))
                {
                    return Some(node);
                }
            }
            self.probe_order = self.live.list.clone();
            self.probe_order.shuffle(&mut self.rng);
            self.probe_next = 0;
        }
        None
    }

    fn on_ack(&mut self, probe_seq: u64) {
        if let Some(probe) = &mut self.probe {
            let indirect = probe
                .indirect
                .is_some_and(|(request, again)| request == probe_seq || again == probe_seq);
            if probe.ping == probe_seq || indirect {
                probe.acked = true;
                return;
            }
        }
        if let Some(relay) = self.relays.remove(&probe_seq) {
            let ack = Message::new(Kind::Ack { probe: relay.probe });
            self.send(vec![relay.requester], ack, true);
        }
    }

    /// Our own probe of `node` failed: suspect it, and tell it.
    fn suspect(&mut self, node: NodeId, now: Instant) {
        let Some(member) = self.members.get(&node) else {
            return;
        };
        if member.state != State::Alive {
            return;
        }
        let update = Update {
            node,
            incarnation: member.incarnation,
            state: State::Suspect,
        };
        self.stats.suspicions += 1;
        self.transition(update, now);
        self.start_suspicion(node, now, 1.0);
        // Told privately first: a live member refutes within a round trip
        // and the suspicion never goes round the cluster. Gossiped only if
        // no refutation came back within two gossip intervals. (The
        // suspicion timer runs from now either way, so a crash is removed
        // no later.)
        self.certify(node);
        let again_at = now + self.config.gossip_interval;
        self.timers.push(Reverse((
            again_at,
            Timer::Publish(node, update.incarnation, 1),
        )));
    }

    // ---- gossip ------------------------------------------------------------

    /// One gossip round: queued updates to `gossip_nodes` live members, a
    /// dead member now and then, and a seed not in view now and then, all in
    /// one broadcast.
    fn gossip_round(&mut self, now: Instant) {
        let mut targets = if self.queue.is_empty() {
            Vec::new()
        } else {
            self.live
                .sample(&mut self.rng, self.config.gossip_nodes, &[])
        };
        let dead = self.dead.len();
        if dead > 0 && !self.left {
            let p = dead as f64 / (self.live.len() + 1) as f64;
            if self.rng.gen_bool(p.min(1.0)) {
                if let Some(node) = self.dead.choose(&mut self.rng) {
                    if self
                        .members
                        .get(&node)
                        .is_some_and(|m| m.state == State::Dead)
                    {
                        targets.push(node);
                    }
                }
            }
        }
        if now >= self.next_announce && !self.left {
            self.next_announce = now + self.config.announce_interval;
            let unseen: Vec<NodeId> = self
                .seeds
                .iter()
                .filter(|s| !self.live.index.contains_key(s))
                .copied()
                .collect();
            if let Some(seed) = unseen.choose(&mut self.rng) {
                if !targets.contains(seed) {
                    targets.push(*seed);
                }
            }
        }
        if targets.is_empty() {
            return;
        }
        self.send(targets, Message::new(Kind::Gossip), true);
        // A backlog (a partition just healed, a burst of writes): up to
        // `max_burst - 1` more datagrams this round, each to other members,
        // until what is left fits one.
        for _ in 1..self.config.max_burst {
            if self.queue.len() <= BACKLOG {
                break;
            }
            let more = self
                .live
                .sample(&mut self.rng, self.config.gossip_nodes, &[]);
            if more.is_empty() {
                break;
            }
            self.send(more, Message::new(Kind::Gossip), true);
        }
    }

    // ---- key/value state ---------------------------------------------------

    fn write(
        &mut self,
        key: Vec<u8>,
        value: Option<Vec<u8>>,
        now: Instant,
    ) -> Result<u64, ValueError> {
        if self.left {
            return Err(ValueError::Left);
        }
        let len = key.len() + value.as_ref().map_or(0, Vec::len);
        let max = self.max_value();
        if len > max {
            return Err(ValueError::TooLarge { len, max });
        }
        let generation = self.generation;
        let state = self.states.get_mut(&self.me).expect("own state");
        let version = state.version + 1;
        state.version = version;
        state.insert(
            key.clone(),
            Value {
                version,
                value: value.clone(),
                since: now,
            },
        );
        if key == PUBLISH_KEY {
            self.consider_published(self.me, value.as_deref());
        }
        self.queue.push(Item::Delta(Delta {
            node: self.me,
            generation,
            version,
            key,
            value,
        }));
        Ok(version)
    }

    /// A published value (Lamport counter, data) of `node`.
    fn consider_published(&mut self, node: NodeId, value: Option<&[u8]>) {
        let Some(value) = value else {
            return;
        };
        let Some((counter, data)) = value.split_first_chunk::<8>() else {
            return;
        };
        let version = Version {
            counter: u64::from_be_bytes(*counter),
            node,
        };
        self.lamport = self.lamport.max(version.counter);
        if version > self.published.version {
            self.published = Metadata {
                version,
                data: data.to_vec(),
            };
            self.events.push(Event::Published(version));
        }
    }

    /// The state of `node`, made anew when `generation` is newer (the node
    /// restarted); None for our own and for older generations.
    fn state_for(&mut self, node: NodeId, generation: u64) -> Option<&mut NodeState> {
        if node == self.me || node == NodeId::NONE {
            return None;
        }
        let known = self.states.get(&node).map(|s| s.generation);
        match known {
            Some(g) if g > generation => None,
            Some(g) if g == generation => self.states.get_mut(&node),
            old => {
                if old.is_some_and(|g| g > 0) {
                    self.events.push(Event::Restarted(node));
                }
                self.states.insert(node, NodeState::new(generation));
                self.states.get_mut(&node)
            }
        }
    }

    /// Applies anti-entropy ranges and the deltas of a message.
    fn apply_deltas(&mut self, ranges: &[Range], deltas: &[Delta], now: Instant) {
        // A range whose start we have reached is complete: keys we hold in it
        // that the message does not carry were overwritten or deleted.
        let mut complete: Vec<Range> = Vec::new();
        for range in ranges {
            if range.from > range.to {
                continue;
            }
            let carried: HashSet<&[u8]> = deltas
                .iter()
                .filter(|d| d.node == range.node && d.generation == range.generation)
                .map(|d| d.key.as_slice())
                .collect();
            let Some(state) = self.state_for(range.node, range.generation) else {
                continue;
            };
            if state.version < range.from {
                continue;
            }
            let stale: Vec<Vec<u8>> = state
                .by_version
                .range(range.from + 1..=range.to)
                .map(|(_, key)| key.clone())
                .filter(|key| !carried.contains(key.as_slice()))
                .collect();
            for key in &stale {
                state.remove(key);
            }
            self.events
                .extend(stale.into_iter().map(|key| Event::Changed {
                    node: range.node,
                    key,
                }));
            complete.push(*range);
        }
        for delta in deltas {
            self.apply_delta(delta, now);
        }
        for range in complete {
            if let Some(state) = self.states.get_mut(&range.node) {
                if state.generation == range.generation {
                    state.version = state.version.max(range.to);
                    state.advance();
                }
            }
        }
    }

    fn apply_delta(&mut self, delta: &Delta, now: Instant) {
        if delta.key.is_empty() {
            return;
        }
        let Some(state) = self.state_for(delta.node, delta.generation) else {
            self.stats.stale += 1;
            return;
        };
        let newer = state
            .keys
            .get(&delta.key)
            .is_none_or(|v| v.version < delta.version);
        // Below the watermark and not held: overwritten or deleted since.
        if !newer || delta.version <= state.version && !state.keys.contains_key(&delta.key) {
            self.stats.stale += 1;
            return;
        }
        state.insert(
            delta.key.clone(),
            Value {
                version: delta.version,
                value: delta.value.clone(),
                since: now,
            },
        );
        state.advance();
        self.stats.deltas += 1;
        self.events.push(Event::Changed {
            node: delta.node,
            key: delta.key.clone(),
        });
        if delta.key == PUBLISH_KEY {
            self.consider_published(delta.node, delta.value.as_deref());
        }
        self.queue.push(Item::Delta(delta.clone()));
    }

    fn collect_tombstones(&mut self, now: Instant) {
        let grace = self.config.tombstone_grace;
        for state in self.states.values_mut() {
            let old: Vec<(Vec<u8>, u64)> = state
                .keys
                .iter()
                .filter(|(_, v)| v.value.is_none() && now.duration_since(v.since) >= grace)
                .map(|(k, v)| (k.clone(), v.version))
                .collect();
            for (key, version) in old {
                state.remove(&key);
                state.gc_floor = state.gc_floor.max(version);
            }
        }
    }

    // ---- anti-entropy ------------------------------------------------------

    fn summary(&self, node: NodeId) -> Summary {
        let (generation, version) = self
            .states
            .get(&node)
            .map_or((0, 0), |s| (s.generation, s.version));
        let (incarnation, state) = if node == self.me {
            let me = self.self_update();
            (me.incarnation, me.state)
        } else {
            self.members
                .get(&node)
                .map_or((0, State::Alive), |m| (m.incarnation, m.state))
        };
        Summary {
            node,
            incarnation,
            state,
            generation,
            version,
        }
    }

    /// Membership from a summary, when it names a known state.
    fn apply_summary(&mut self, summary: &Summary, now: Instant) {
        if summary.incarnation > 0 {
            let update = Update {
                node: summary.node,
                incarnation: summary.incarnation,
                state: summary.state,
            };
            self.apply_update(update, now);
        }
    }

    /// Summaries of this node and of the next window of members.
    fn summaries_window(&mut self, message: &mut Message, except: &HashSet<NodeId>) {
        let room =
            self.config.max_packet.saturating_sub(message.encoded_len()) / codec::SUMMARY_LEN;
        let room = room.min(codec::MAX_ITEMS - message.summaries.len());
        // The window moves round the live members, then the dead ones.
        let total = self.live.len() + self.dead.len();
        let mut taken = 0;
        let mut looked = 0;
        while taken < room && looked < total {
            let at = self.sync_cursor % total;
            let node = match self.live.list.get(at) {
                Some(node) => *node,
                None => self.dead.list[at - self.live.len()],
            };
            self.sync_cursor = (self.sync_cursor + 1) % total;
            looked += 1;
            if !except.contains(&node) {
                message.summaries.push(self.summary(node));
                taken += 1;
            }
        }
    }

    /// An anti-entropy request for `destinations` peers.
    fn sync_request(&mut self, destinations: usize) -> Message {
        let mut message = Message::new(Kind::SyncRequest);
        message.updates.push(self.self_update());
        message.to = vec![
            Destination {
                node: self.me,
                incarnation: 0
            };
            destinations
        ];
        message.summaries.push(self.summary(self.me));
        let except = HashSet::from([self.me]);
        self.summaries_window(&mut message, &except);
        message.updates.clear();
        message.to.clear();
        message
    }

    fn start_sync(&mut self) {
        let peer = self.live.choose(&mut self.rng).or_else(|| {
            let seeds = self.seeds.clone();
            seeds.choose(&mut self.rng).copied()
        });
        let Some(peer) = peer else {
            return;
        };
        self.stats.syncs += 1;
        let message = self.sync_request(1);
        self.send(vec![peer], message, false);
    }

    /// Where the peer is behind (by its summaries): ranges and deltas that
    /// fit one message of `kind`. Where we are behind: our summary, so that
    /// the peer sends us its deltas.
    fn deltas_for(&self, summaries: &[Summary], kind: Kind) -> Message {
        let mut message = Message::new(kind);
        // Room for the addressee and the self update that `send` adds.
        let mut len = message.encoded_len() + codec::DESTINATION_LEN + codec::UPDATE_LEN;
        let max = self.config.max_packet;
        for theirs in summaries {
            let node = theirs.node;
            // Membership: where ours is newer, our summary corrects theirs.
            let mut told = false;
            if kind == Kind::SyncReply
                && self.membership_newer(theirs)
                && len + codec::SUMMARY_LEN <= max
                && message.summaries.len() < codec::MAX_ITEMS
            {
                message.summaries.push(self.summary(node));
                len += codec::SUMMARY_LEN;
                told = true;
            }
            let Some(state) = self.states.get(&node) else {
                continue;
            };
            if state.version == 0 && theirs.generation == 0 {
                continue; // nothing written, nothing to replace
            }
            let ahead = state.generation > theirs.generation
                || state.generation == theirs.generation && state.version > theirs.version;
            if !ahead {
                if kind == Kind::SyncReply
                    && !told
                    && (theirs.generation > state.generation || theirs.version > state.version)
                    && len + codec::SUMMARY_LEN <= max
                    && message.summaries.len() < codec::MAX_ITEMS
                {
                    message.summaries.push(self.summary(node));
                    len += codec::SUMMARY_LEN;
                }
                continue;
            }
            if len + codec::RANGE_LEN > max || message.ranges.len() >= codec::MAX_ITEMS {
                break;
            }
            let from = if state.generation == theirs.generation && theirs.version >= state.gc_floor
            {
                theirs.version
            } else {
                0
            };
            let mut to = from;
            let mut room_left = true;
            let range_len = codec::RANGE_LEN;
            len += range_len;
            for (&version, key) in state.by_version.range(from + 1..=state.version) {
                let value = &state.keys[key];
                let delta = Delta {
                    node,
                    generation: state.generation,
                    version,
                    key: key.clone(),
                    value: value.value.clone(),
                };
                let delta_len = delta.encoded_len();
                if len + delta_len > max || message.deltas.len() >= codec::MAX_ITEMS {
                    room_left = false;
                    break;
                }
                len += delta_len;
                to = version;
                message.deltas.push(delta);
            }
            if room_left {
                to = state.version;
            }
            if to > from || from == 0 {
                message.ranges.push(Range {
                    node,
                    generation: state.generation,
                    from,
                    to,
                });
            } else {
                len -= range_len;
            }
            if !room_left {
                break;
            }
        }
        message
    }

    /// Whether our membership record of `theirs.node` is newer than theirs.
    fn membership_newer(&self, theirs: &Summary) -> bool {
        let ours = if theirs.node == self.me {
            self.self_update()
        } else {
            match self.members.get(&theirs.node) {
                Some(m) => Update {
                    node: theirs.node,
                    incarnation: m.incarnation,
                    state: m.state,
                },
                None => return false,
            }
        };
        overrides(ours, theirs.incarnation, theirs.state)
    }

    fn answer_sync(&mut self, requester: NodeId, summaries: &[Summary]) {
        let mut reply = self.deltas_for(summaries, Kind::SyncReply);
        let mut except: HashSet<NodeId> = summaries.iter().map(|s| s.node).collect();
        except.extend(reply.summaries.iter().map(|s| s.node));
        reply.updates.push(self.self_update());
        reply.to.push(Destination {
            node: requester,
            incarnation: 0,
        });
        self.summaries_window(&mut reply, &except);
        reply.updates.clear();
        reply.to.clear();
        self.send(vec![requester], reply, false);
    }

    // ---- sending -----------------------------------------------------------

    /// Seals `message` (our own update first, then, with `piggyback`,
    /// queued items that fit) and asks for it to be sent to `to`; returns
    /// its sequence number.
    fn send(&mut self, to: Vec<NodeId>, mut message: Message, piggyback: bool) -> u64 {
        message.to = to
            .iter()
            .map(|&node| Destination {
                node,
                incarnation: self.members.get(&node).map_or(0, |m| m.incarnation),
            })
            .collect();
        message.updates.insert(0, self.self_update());
        if piggyback {
            let mut len = message.encoded_len();
            let max = self.config.max_packet;
            let (mut updates, mut deltas) = (message.updates.len(), message.deltas.len());
            let limit = self.retransmit_limit();
            let items = self.queue.take(limit, 2 * codec::MAX_ITEMS, |item| {
                let (item_len, count) = match item {
                    Item::Update(_) => (codec::UPDATE_LEN, &mut updates),
                    Item::Delta(delta) => (delta.encoded_len(), &mut deltas),
                };
                if len + item_len > max || *count >= codec::MAX_ITEMS {
                    return false;
                }
                len += item_len;
                *count += 1;
                true
            });
            for item in items {
                match item {
                    Item::Update(update) => {
                        if update.node != self.me {
                            message.updates.push(update);
                        }
                    }
                    Item::Delta(delta) => message.deltas.push(delta),
                }
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        match self.codec.encode(self.me, seq, &message) {
            Ok(packet) => {
                self.stats.sends += 1;
                if to.len() > 1 {
                    self.stats.fan_outs += 1;
                    self.stats.fan_out_copies += to.len() as u64;
                }
                self.stats.datagrams_out += to.len() as u64;
                self.stats.bytes_out += (packet.len() * to.len()) as u64;
                let to = to.iter().map(|node| node.addr()).collect();
                self.actions.push(Action::Send { to, packet });
            }
            Err(err) => {
                // Every item was measured against max_packet: a bug.
                debug_assert!(false, "encoding: {err}");
            }
        }
        seq
    }
}

/// Whether `update` replaces what is known (SWIM's precedence: a higher
/// incarnation wins; at the same one, suspect over alive, dead over both,
/// left over dead).
fn overrides(update: Update, incarnation: u64, state: State) -> bool {
    let rank = |s: State| match s {
        State::Alive => 0,
        State::Suspect => 1,
        State::Dead => 2,
        State::Left => 3,
    };
    update.incarnation > incarnation
        || update.incarnation == incarnation && rank(update.state) > rank(state)
}

fn check_key(key: &[u8]) -> Result<(), ValueError> {
    if key.is_empty() || key.len() > codec::MAX_KEY_LEN || key[0] == 0 {
        return Err(ValueError::BadKey);
    }
    Ok(())
}
