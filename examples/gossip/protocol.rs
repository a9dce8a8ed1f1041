//! The gossip protocol as a state machine that does no I/O.
//!
//! The caller feeds it datagrams ([`Node::handle_packet`]) and timer ticks
//! ([`Node::tick`]) with the current time and collects what to send
//! ([`Node::drain_actions`]); randomness comes from an injected seeded RNG.
//! So the same code runs in the UDP shell and, deterministically, over the
//! simulated network of the tests.
//!
//! What it does, after pekonode (names in brackets):
//! - Membership: each cycle a node starts a heartbeat rumour and sends it to
//!   up to `fan_out` members not yet infected with it; receivers note the
//!   origin as alive and pass the rumour on to their own uninfected members.
//!   A member whose heartbeat has not advanced for `timeout` is removed.
//! - Every rumour has an id (origin, sequence number). A node passes each id
//!   on at most once; copies arriving by other paths are counted and dropped.
//! - Cluster metadata ([`Node::publish`], [`Node::read`]) spreads by rumour
//!   and carries a [`Version`]: a Lamport counter and the author, so an
//!   update published after another was seen always wins, whatever the
//!   nodes' clocks say.
//! - Each cycle a node swaps member lists and metadata versions with one
//!   random member (anti-entropy), so late joiners and nodes that missed a
//!   rumour converge. Metadata too large for a datagram is announced by a
//!   marker and fetched over TCP ([`Action::Fetch`]).
//! - Liveness is judged by local clocks only: a member is alive while its
//!   heartbeat keeps rising, measured by the receiver's own monotonic time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::codec::{
    self, Body, Codec, DecodeError, MemberDigest, MessageId, MetaPayload, NodeId, Packet, Rumour,
    RumourKind, Sync, Version,
};

/// pekonode's default fan-out (`Amount`).
pub const DEFAULT_FAN_OUT: usize = 3;
/// pekonode's default cycle.
pub const DEFAULT_CYCLE: Duration = Duration::from_secs(6);
/// Default largest metadata (fetched over TCP when it does not fit a datagram).
pub const DEFAULT_MAX_METADATA: usize = 16 << 20;

/// pekonode's default timeout for a cycle: 3 x cycle + 2 s.
pub fn default_timeout(cycle: Duration) -> Duration {
    cycle * 3 + Duration::from_secs(2)
}

/// Protocol settings.
#[derive(Clone)]
pub struct Config {
    /// Members a rumour is passed to by each node (pekonode `Amount`).
    pub fan_out: usize,
    /// Period of heartbeats and anti-entropy exchanges.
    pub cycle: Duration,
    /// A member whose heartbeat has not advanced for this long is removed.
    pub timeout: Duration,
    /// Largest datagram sent or accepted (pekonode `Size`).
    pub max_packet: usize,
    /// Largest metadata accepted by [`Node::publish`] and fetched over TCP.
    pub max_metadata: usize,
    /// The cluster key: every packet carries an HMAC-SHA256 under it.
    pub key: Vec<u8>,
}

impl Config {
    /// pekonode's defaults with the given cluster key.
    pub fn new(key: &[u8]) -> Config {
        Config {
            fan_out: DEFAULT_FAN_OUT,
            cycle: DEFAULT_CYCLE,
            timeout: default_timeout(DEFAULT_CYCLE),
            max_packet: codec::DEFAULT_MAX_PACKET,
            max_metadata: DEFAULT_MAX_METADATA,
            key: key.to_vec(),
        }
    }

    /// Sets the cycle and the matching default timeout.
    pub fn with_cycle(mut self, cycle: Duration) -> Config {
        self.cycle = cycle;
        self.timeout = default_timeout(cycle);
        self
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("fan_out", &self.fan_out)
            .field("cycle", &self.cycle)
            .field("timeout", &self.timeout)
            .field("max_packet", &self.max_packet)
            .field("max_metadata", &self.max_metadata)
            .finish_non_exhaustive()
    }
}

/// The cluster metadata as this node has it.
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
    /// Open a TCP connection to `from`, send `request` as one frame, and
    /// give the reply frame to [`Node::handle_fetched`] (or report
    /// [`Node::fetch_failed`]).
    Fetch {
        /// The peer that has the metadata.
        from: NodeId,
        /// The version wanted.
        version: Version,
        /// The request frame.
        request: Vec<u8>,
    },
}

/// Something that changed, for logs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A node became a member.
    Joined(NodeId),
    /// A member was removed after `timeout` without a heartbeat.
    Evicted(NodeId),
    /// This node adopted new metadata.
    Metadata(Version),
}

/// Counters since the node was created.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stats {
    /// Datagrams given to [`Node::handle_packet`].
    pub packets_in: u64,
    /// Datagrams asked for by [`Action::Send`] (one per destination).
    pub datagrams_out: u64,
    /// Rumours this node started (heartbeats and publishes).
    pub rumours_started: u64,
    /// Rumours received for the first time and passed on.
    pub rumours_forwarded: u64,
    /// Copies of rumours already seen: dropped, not passed on.
    pub duplicates: u64,
    /// Rumours seen for the first time but carrying nothing new (an older
    /// heartbeat or metadata version): dropped, not passed on.
    pub stale: u64,
    /// Anti-entropy exchanges started.
    pub syncs: u64,
    /// TCP fetches of large metadata asked for.
    pub fetches: u64,
    /// TCP fetches that failed or returned the wrong data.
    pub fetch_failures: u64,
    /// Members removed after the timeout.
    pub evictions: u64,
    /// Dropped: longer than `max_packet`.
    pub dropped_oversized: u64,
    /// Dropped: shorter than a header and a MAC.
    pub dropped_truncated: u64,
    /// Dropped: not a gossip packet.
    pub dropped_not_gossip: u64,
    /// Dropped: wrong MAC (wrong key, or altered).
    pub dropped_bad_mac: u64,
    /// Dropped: authentic but malformed or out of place.
    pub dropped_malformed: u64,
}

impl Stats {
    /// All dropped packets.
    pub fn dropped(&self) -> u64 {
        self.dropped_oversized
            + self.dropped_truncated
            + self.dropped_not_gossip
            + self.dropped_bad_mac
            + self.dropped_malformed
    }
}

/// Why [`Node::publish`] refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PublishError {
    /// Larger than `max_metadata`.
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for PublishError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PublishError::TooLarge { len, max } => write!(
                f,
                "metadata of {len} bytes exceeds the maximum of {max} (--max-metadata)"
            ),
        }
    }
}

impl std::error::Error for PublishError {}

/// What this node knows of another.
#[derive(Clone, Copy, Debug)]
struct Member {
    /// Highest message sequence number seen from it; 0: never heard of it
    /// (a seed given to [`Node::set`]).
    heartbeat: u64,
    /// When (local time) its heartbeat last advanced.
    alive_at: Instant,
}

/// A removed member, so that stale reports do not bring it back.
#[derive(Clone, Copy, Debug)]
struct Tombstone {
    heartbeat: u64,
    at: Instant,
}

/// Large metadata announced but not fetched yet.
#[derive(Clone, Copy, Debug)]
struct Wanted {
    version: Version,
    len: u64,
    digest: [u8; 32],
    /// A fetch is under way until then.
    fetching_until: Option<Instant>,
}

/// One gossip node: membership list, metadata, and the protocol's timers.
pub struct Node {
    me: NodeId,
    config: Config,
    codec: Codec,
    tcp_codec: Codec,
    rng: SmallRng,
    joined: bool,
    paused: bool,
    /// Sequence number of the next message this node starts.
    next_seq: u64,
    members: BTreeMap<NodeId, Member>,
    seeds: Vec<NodeId>,
    tombstones: HashMap<NodeId, Tombstone>,
    /// Rumours seen, with when, forgotten after two timeouts.
    seen: HashMap<MessageId, Instant>,
    metadata: Metadata,
    wanted: Option<Wanted>,
    /// Highest Lamport counter seen.
    lamport: u64,
    next_cycle: Instant,
    next_prune: Instant,
    actions: Vec<Action>,
    events: Vec<Event>,
    stats: Stats,
}

impl fmt::Debug for Node {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Node")
            .field("me", &self.me)
            .field("joined", &self.joined)
            .field("paused", &self.paused)
            .field("members", &self.members.len())
            .field("metadata", &self.metadata.version)
            .finish_non_exhaustive()
    }
}

impl Node {
    /// Creates a node (pekonode `New`). `first_seq` starts its message
    /// sequence: give a restarted node a higher one than before (the shell
    /// uses the wall clock in microseconds), so that its heartbeats are not
    /// taken for old ones.
    pub fn new(me: NodeId, config: Config, rng: SmallRng, first_seq: u64, now: Instant) -> Node {
        let codec = Codec::new(&config.key, config.max_packet);
        let tcp_codec = codec.with_max_packet(config.max_metadata + codec::OVERHEAD + 64);
        Node {
            me,
            codec,
            tcp_codec,
            rng,
            joined: false,
            paused: false,
            next_seq: first_seq.max(1),
            members: BTreeMap::new(),
            seeds: Vec::new(),
            tombstones: HashMap::new(),
            seen: HashMap::new(),
            metadata: Metadata {
                version: Version::ZERO,
                data: Vec::new(),
            },
            wanted: None,
            lamport: 0,
            next_cycle: now,
            next_prune: now,
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

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Adds peers to contact (pekonode `Set`). They are sent heartbeats and
    /// listed once heard from; they stay the fallback for anti-entropy when
    /// no member is left.
    pub fn set(&mut self, peers: impl IntoIterator<Item = NodeId>, now: Instant) {
        for peer in peers {
            if peer == self.me || peer == NodeId::NONE {
                continue;
            }
            if !self.seeds.contains(&peer) {
                self.seeds.push(peer);
            }
            self.members.entry(peer).or_insert(Member {
                heartbeat: 0,
                alive_at: now,
            });
        }
    }

    /// Starts heartbeats and anti-entropy (pekonode `Join`); the first cycle
    /// runs at once.
    pub fn join(&mut self, now: Instant) {
        if !self.joined {
            self.joined = true;
            self.next_cycle = now;
            self.tick(now);
        }
    }

    /// Whether [`Node::join`] was called.
    pub fn is_joined(&self) -> bool {
        self.joined
    }

    /// Live members, this node included, sorted (pekonode `Get`). Seeds not
    /// heard from yet are not listed.
    pub fn members(&self) -> Vec<NodeId> {
        let mut list: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| m.heartbeat > 0)
            .map(|(id, _)| *id)
            .collect();
        list.push(self.me);
        list.sort();
        list
    }

    /// Pauses (pekonode `Stop`): the node sends nothing, so the others remove
    /// it after the timeout, but it keeps listening and stays up to date.
    pub fn stop(&mut self) {
        self.paused = true;
    }

    /// Resumes after [`Node::stop`] with a heartbeat at once (pekonode
    /// `Start`); joins if not joined yet.
    pub fn start(&mut self, now: Instant) {
        self.paused = false;
        if self.joined {
            self.next_cycle = now;
            self.tick(now);
        } else {
            self.join(now);
        }
    }

    /// Whether heartbeats are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Publishes new cluster metadata (pekonode `Publish`) and returns its
    /// version: one above every version this node has seen.
    pub fn publish(&mut self, data: Vec<u8>, now: Instant) -> Result<Version, PublishError> {
        if data.len() > self.config.max_metadata {
            return Err(PublishError::TooLarge {
                len: data.len(),
                max: self.config.max_metadata,
            });
        }
        self.lamport = self.lamport.max(self.metadata.version.counter) + 1;
        let version = Version {
            counter: self.lamport,
            node: self.me,
        };
        self.adopt(version, data);
        if self.joined && !self.paused {
            let payload = self.payload_for_rumour();
            self.start_rumour(RumourKind::Metadata(payload), now);
        }
        Ok(version)
    }

    /// The current cluster metadata (pekonode `Read`).
    pub fn read(&self) -> &Metadata {
        &self.metadata
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// What to send, in order; empties the queue.
    pub fn drain_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    /// What changed since the last call, for logs; empties the queue.
    pub fn drain_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// When [`Node::tick`] has work next (None before [`Node::join`]).
    pub fn next_deadline(&self) -> Option<Instant> {
        if !self.joined {
            return None;
        }
        let eviction = self
            .members
            .values()
            .map(|m| m.alive_at + self.config.timeout)
            .min();
        let cycle = (!self.paused).then_some(self.next_cycle);
        [eviction, cycle].into_iter().flatten().min()
    }

    /// Runs the timers: removes silent members and, once per cycle, starts a
    /// heartbeat and an anti-entropy exchange.
    pub fn tick(&mut self, now: Instant) {
        if !self.joined {
            return;
        }
        self.evict(now);
        if now >= self.next_prune {
            self.next_prune = now + self.config.cycle;
            let timeout = self.config.timeout;
            self.seen
                .retain(|_, at| now.duration_since(*at) < timeout * 2);
            self.tombstones
                .retain(|_, t| now.duration_since(t.at) < timeout * 3);
        }
        if self.paused || now < self.next_cycle {
            return;
        }
        // The next cycle in cycle +- 10%, so nodes started together drift apart.
        let jitter = self.rng.gen_range(0.9..1.1);
        self.next_cycle = now + self.config.cycle.mul_f64(jitter);
        self.start_rumour(RumourKind::Heartbeat, now);
        self.start_sync();
    }

    /// Handles one datagram. Packets that are oversized, truncated, foreign,
    /// forged or malformed are dropped and counted in [`Stats`].
    pub fn handle_packet(&mut self, bytes: &[u8], now: Instant) {
        self.stats.packets_in += 1;
        let packet = match self.codec.decode(bytes) {
            Ok(packet) => packet,
            Err(err) => {
                self.count_drop(err);
                return;
            }
        };
        if packet.sender == self.me {
            // Our own packet back (a peer listed us twice, or a loop).
            self.stats.duplicates += 1;
            return;
        }
        match packet.body {
            Body::Rumour(rumour) => self.on_rumour(packet.sender, rumour, now),
            Body::SyncRequest(sync) => self.on_sync(packet.sender, sync, true, now),
            Body::SyncReply(sync) => self.on_sync(packet.sender, sync, false, now),
            Body::Metadata(meta) => {
                self.consider(meta, packet.sender, now);
            }
            Body::FetchRequest(_) | Body::FetchReply { .. } => {
                // TCP messages have no business arriving over UDP.
                self.stats.dropped_malformed += 1;
            }
        }
    }

    /// Answers a TCP fetch request frame with the current metadata, if the
    /// request is authentic and this node has the version asked for or a
    /// newer one.
    pub fn answer_fetch(&mut self, request: &[u8]) -> Option<Vec<u8>> {
        let packet = match self.codec.decode(request) {
            Ok(packet) => packet,
            Err(err) => {
                self.count_drop(err);
                return None;
            }
        };
        let Body::FetchRequest(version) = packet.body else {
            self.stats.dropped_malformed += 1;
            return None;
        };
        if self.metadata.version < version {
            return None;
        }
        Some(self.tcp_codec.encode(&Packet {
            sender: self.me,
            body: Body::FetchReply {
                version: self.metadata.version,
                data: self.metadata.data.clone(),
            },
        }))
    }

    /// Takes the reply frame of an [`Action::Fetch`].
    pub fn handle_fetched(&mut self, reply: &[u8]) {
        let packet = match self.tcp_codec.decode(reply) {
            Ok(packet) => packet,
            Err(err) => {
                self.count_drop(err);
                self.stats.fetch_failures += 1;
                self.clear_fetch();
                return;
            }
        };
        let Body::FetchReply { version, data } = packet.body else {
            self.stats.dropped_malformed += 1;
            self.stats.fetch_failures += 1;
            self.clear_fetch();
            return;
        };
        if let Some(wanted) = self.wanted {
            if wanted.version == version
                && (wanted.len != data.len() as u64 || wanted.digest != codec::sha256(&data))
            {
                // Authentic but not what was announced: try another peer.
                self.stats.fetch_failures += 1;
                self.clear_fetch();
                return;
            }
        }
        self.lamport = self.lamport.max(version.counter);
        if version > self.metadata.version && data.len() <= self.config.max_metadata {
            self.adopt(version, data);
        }
        self.clear_fetch();
    }

    /// Reports that the [`Action::Fetch`] for `version` failed; another peer
    /// is tried at the next anti-entropy exchange.
    pub fn fetch_failed(&mut self, version: Version) {
        if self.wanted.is_some_and(|w| w.version == version) {
            self.stats.fetch_failures += 1;
            self.clear_fetch();
        }
    }

    fn clear_fetch(&mut self) {
        if let Some(wanted) = &mut self.wanted {
            wanted.fetching_until = None;
        }
    }

    fn count_drop(&mut self, err: DecodeError) {
        let counter = match err {
            DecodeError::Oversized { .. } => &mut self.stats.dropped_oversized,
            DecodeError::Truncated => &mut self.stats.dropped_truncated,
            DecodeError::NotGossip => &mut self.stats.dropped_not_gossip,
            DecodeError::BadMac => &mut self.stats.dropped_bad_mac,
            DecodeError::Malformed(_) => &mut self.stats.dropped_malformed,
        };
        *counter += 1;
    }

    fn on_rumour(&mut self, sender: NodeId, rumour: Rumour, now: Instant) {
        if rumour.id.origin == self.me || self.seen.contains_key(&rumour.id) {
            self.stats.duplicates += 1;
            return;
        }
        self.seen.insert(rumour.id, now);
        let fresh_heartbeat = self.heard_from(rumour.id.origin, rumour.id.seq, now);
        let news = match &rumour.kind {
            RumourKind::Heartbeat => fresh_heartbeat,
            // The author has the data for sure; the sender may not yet.
            RumourKind::Metadata(meta) => self.consider(meta.clone(), meta.version().node, now),
        };
        if !news {
            self.stats.stale += 1;
            return;
        }
        if self.paused {
            return;
        }
        let mut infected = rumour.infected;
        for node in [self.me, sender, rumour.id.origin] {
            if !infected.contains(&node) {
                infected.push(node);
            }
        }
        if self.spread(rumour.id, infected, rumour.kind) {
            self.stats.rumours_forwarded += 1;
        }
    }

    fn on_sync(&mut self, sender: NodeId, sync: Sync, is_request: bool, now: Instant) {
        for digest in &sync.members {
            self.heard_from(digest.node, digest.heartbeat, now);
        }
        self.lamport = self.lamport.max(sync.version.counter);
        if let Some(meta) = sync.metadata {
            self.consider(meta, sender, now);
        }
        if self.paused {
            return;
        }
        if is_request {
            let metadata = (self.metadata.version > sync.version).then(|| self.payload_for(0));
            let reply = self.sync_packet(metadata, false);
            self.send(vec![sender.addr()], reply);
        } else if self.metadata.version > sync.version {
            // The peer is behind: send it ours.
            let payload = self.payload_for(codec::OVERHEAD);
            let packet = self.codec.encode(&Packet {
                sender: self.me,
                body: Body::Metadata(payload),
            });
            self.send(vec![sender.addr()], packet);
        }
    }

    /// Notes that `node` sent message `seq`; true when that is news (a higher
    /// sequence number than seen so far from it).
    fn heard_from(&mut self, node: NodeId, seq: u64, now: Instant) -> bool {
        if node == self.me {
            // Someone remembers a higher sequence number of ours (we restarted
            // with a clock that went back): move past it.
            if seq >= self.next_seq {
                self.next_seq = seq + 1;
            }
            return false;
        }
        if seq == 0 || node == NodeId::NONE {
            return false;
        }
        if let Some(member) = self.members.get_mut(&node) {
            if seq <= member.heartbeat {
                return false;
            }
            let joined = member.heartbeat == 0;
            member.heartbeat = seq;
            member.alive_at = now;
            if joined {
                self.events.push(Event::Joined(node));
            }
            return true;
        }
        if self
            .tombstones
            .get(&node)
            .is_some_and(|t| seq <= t.heartbeat)
        {
            // A report from before its removal.
            return false;
        }
        self.tombstones.remove(&node);
        self.members.insert(
            node,
            Member {
                heartbeat: seq,
                alive_at: now,
            },
        );
        self.events.push(Event::Joined(node));
        true
    }

    /// Takes metadata heard of; `source` has the data. True when it is newer
    /// than anything known (adopted, or a large one now wanted).
    fn consider(&mut self, meta: MetaPayload, source: NodeId, now: Instant) -> bool {
        let version = meta.version();
        self.lamport = self.lamport.max(version.counter);
        if version <= self.metadata.version {
            return false;
        }
        match meta {
            MetaPayload::Inline { data, .. } => {
                if data.len() > self.config.max_metadata {
                    self.stats.dropped_malformed += 1;
                    return false;
                }
                self.adopt(version, data);
                true
            }
            MetaPayload::Large { len, digest, .. } => {
                if len > self.config.max_metadata as u64 {
                    self.stats.dropped_malformed += 1;
                    return false;
                }
                let news = self.wanted.is_none_or(|w| version > w.version);
                if news {
                    self.wanted = Some(Wanted {
                        version,
                        len,
                        digest,
                        fetching_until: None,
                    });
                }
                if self.wanted.is_some_and(|w| w.version == version) {
                    self.fetch(source, now);
                }
                news
            }
        }
    }

    fn adopt(&mut self, version: Version, data: Vec<u8>) {
        self.metadata = Metadata { version, data };
        if self.wanted.is_some_and(|w| w.version <= version) {
            self.wanted = None;
        }
        self.events.push(Event::Metadata(version));
    }

    /// Asks the shell to fetch the wanted metadata from `from` over TCP,
    /// unless a fetch is under way.
    fn fetch(&mut self, from: NodeId, now: Instant) {
        let Some(wanted) = &mut self.wanted else {
            return;
        };
        if from == self.me || wanted.fetching_until.is_some_and(|until| now < until) {
            return;
        }
        wanted.fetching_until = Some(now + self.config.cycle.max(Duration::from_secs(1)) * 2);
        let version = wanted.version;
        let request = self.codec.encode(&Packet {
            sender: self.me,
            body: Body::FetchRequest(version),
        });
        self.stats.fetches += 1;
        self.actions.push(Action::Fetch {
            from,
            version,
            request,
        });
    }

    fn start_rumour(&mut self, kind: RumourKind, now: Instant) {
        let id = MessageId {
            origin: self.me,
            seq: self.next_seq,
        };
        self.next_seq += 1;
        self.seen.insert(id, now);
        self.stats.rumours_started += 1;
        self.spread(id, vec![self.me], kind);
    }

    /// Sends a rumour to up to `fan_out` members not in `infected`; false when
    /// there was nobody left to send it to.
    fn spread(&mut self, id: MessageId, mut infected: Vec<NodeId>, kind: RumourKind) -> bool {
        let candidates: Vec<NodeId> = self
            .members
            .keys()
            .filter(|node| !infected.contains(node))
            .copied()
            .collect();
        let targets: Vec<NodeId> = candidates
            .choose_multiple(&mut self.rng, self.config.fan_out)
            .copied()
            .collect();
        if targets.is_empty() {
            return false;
        }
        infected.extend_from_slice(&targets);
        if infected.len() > codec::MAX_INFECTED {
            // Keep the newest entries: the targets and those who sent it.
            infected.drain(..infected.len() - codec::MAX_INFECTED);
        }
        let packet = self.codec.encode(&Packet {
            sender: self.me,
            body: Body::Rumour(Rumour { id, infected, kind }),
        });
        self.send(targets.iter().map(|n| n.addr()).collect(), packet);
        true
    }

    fn start_sync(&mut self) {
        let peers: Vec<NodeId> = if self.members.is_empty() {
            self.seeds.clone()
        } else {
            self.members.keys().copied().collect()
        };
        let Some(&peer) = peers.choose(&mut self.rng) else {
            return;
        };
        self.stats.syncs += 1;
        let packet = self.sync_packet(None, true);
        self.send(vec![peer.addr()], packet);
    }

    /// A sync packet listing as many members as fit (a random subset when
    /// they do not all fit), this node first.
    fn sync_packet(&mut self, metadata: Option<MetaPayload>, is_request: bool) -> Vec<u8> {
        let fixed = codec::OVERHEAD
            + codec::VERSION_LEN
            + 2
            + metadata.as_ref().map_or(1, MetaPayload::encoded_len);
        let room = self.config.max_packet.saturating_sub(fixed) / codec::MEMBER_DIGEST_LEN;
        let mut members: Vec<MemberDigest> = self
            .members
            .iter()
            .filter(|(_, m)| m.heartbeat > 0)
            .map(|(node, m)| MemberDigest {
                node: *node,
                heartbeat: m.heartbeat,
            })
            .collect();
        let room = room.min(u16::MAX as usize).saturating_sub(1);
        if members.len() > room {
            members.shuffle(&mut self.rng);
            members.truncate(room);
        }
        members.insert(
            0,
            MemberDigest {
                node: self.me,
                heartbeat: self.next_seq - 1,
            },
        );
        let sync = Sync {
            members,
            version: self.metadata.version,
            metadata,
        };
        self.codec.encode(&Packet {
            sender: self.me,
            body: if is_request {
                Body::SyncRequest(sync)
            } else {
                Body::SyncReply(sync)
            },
        })
    }

    /// The current metadata for a rumour: inline when it fits a rumour with
    /// a full infected set, else a marker.
    fn payload_for_rumour(&self) -> MetaPayload {
        let limit = codec::max_inline_metadata(self.config.max_packet);
        self.payload_with_limit(limit)
    }

    /// The current metadata for a packet whose other fields take `other`
    /// bytes besides the members of a sync (which make room when needed).
    fn payload_for(&self, other: usize) -> MetaPayload {
        // Leave room for this node's own member line and a few more.
        let reserved = codec::OVERHEAD
            + codec::VERSION_LEN
            + 2
            + 8 * codec::MEMBER_DIGEST_LEN
            + other
            + 1
            + codec::VERSION_LEN
            + 4;
        self.payload_with_limit(self.config.max_packet.saturating_sub(reserved))
    }

    fn payload_with_limit(&self, limit: usize) -> MetaPayload {
        let Metadata { version, data } = &self.metadata;
        if data.len() <= limit {
            MetaPayload::Inline {
                version: *version,
                data: data.clone(),
            }
        } else {
            MetaPayload::Large {
                version: *version,
                len: data.len() as u64,
                digest: codec::sha256(data),
            }
        }
    }

    fn send(&mut self, to: Vec<SocketAddr>, packet: Vec<u8>) {
        self.stats.datagrams_out += to.len() as u64;
        self.actions.push(Action::Send { to, packet });
    }

    fn evict(&mut self, now: Instant) {
        let timeout = self.config.timeout;
        let silent: Vec<NodeId> = self
            .members
            .iter()
            .filter(|(_, m)| now.duration_since(m.alive_at) > timeout)
            .map(|(node, _)| *node)
            .collect();
        for node in silent {
            if let Some(member) = self.members.remove(&node) {
                self.tombstones.insert(
                    node,
                    Tombstone {
                        heartbeat: member.heartbeat,
                        at: now,
                    },
                );
                if member.heartbeat > 0 {
                    self.stats.evictions += 1;
                    self.events.push(Event::Evicted(node));
                }
            }
        }
    }
}
