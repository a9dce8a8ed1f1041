//! A replica of Viewstamped Replication (VR, the Multi-Paxos of Electrode),
//! with no I/O: the caller feeds it messages and the current time, and
//! collects the messages it wants sent.
//!
//! Normal case: the leader of view v is replica `v mod n`. It appends each
//! client request to its log, broadcasts a `Prepare` to the followers, and
//! once f followers acknowledged the op (`PrepareOk`, cumulative) the op is
//! committed: the leader executes it on the key-value store, replies to the
//! client, and broadcasts a `Commit` (also the heartbeat when idle).
//!
//! Faults handled:
//! - Loss, duplication and reordering: followers buffer out-of-order
//!   prepares and fetch what is missing from the leader (`GetState` /
//!   `NewState`) when a gap stays open; they re-acknowledge when the
//!   leader's commit number stalls; clients retry and a client table makes
//!   a retried request execute at most once.
//! - A crashed or lagging follower: the leader needs only f acknowledgements;
//!   a follower that fell behind catches up by state transfer.
//! - A crashed leader: followers that hear nothing for a timeout start a
//!   view change (`StartViewChange`, `DoViewChange` to the new leader,
//!   `StartView` from it), following "Viewstamped Replication Revisited"
//!   (Liskov and Cowling, 2012).
//!
//! A replica's last normal view always names a log that contains the whole
//! log its view started with. A follower that learns of a newer view
//! without receiving (all of) its `StartView` therefore keeps its log and
//! last normal view untouched, fetches the new leader's log, and switches to
//! it in one step once complete (a "join"); before that it does not
//! acknowledge anything. Truncating instead would let a short log with a
//! new view number win a later view change and lose committed ops.
//!
//! Logs are never sent whole. The leader keeps at most [`WINDOW`]
//! uncommitted ops, so in every log the ops more than `WINDOW` below its
//! end are committed, and committed ops are the same in every log. View
//! change messages therefore carry only the last `WINDOW` ops; a new leader
//! that lacks older committed ops fetches them from the replica whose log
//! it adopts before it starts the view.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::kv::{KvStore, Op, OpResult};
use crate::wire::{Entry, Message, ReplicaId};

/// Time in microseconds, from any fixed origin.
pub type Time = u64;

/// Most ops the leader has prepared but not committed.
pub const WINDOW: u64 = 64;
/// Bytes of log entries in one state-transfer answer (keeps it a few packets).
const STATE_TRANSFER_BYTES: usize = 8 * 1024;
/// Client requests waiting for room in the window; more are dropped (the
/// clients retry).
const MAX_QUEUED: usize = 4096;
/// Out-of-order prepares a follower keeps while waiting for the gap to fill.
const MAX_BUFFERED: usize = 4 * WINDOW as usize;

/// Timeouts, in microseconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The leader broadcasts a `Commit` when it has broadcast nothing for this long.
    pub heartbeat: Time,
    /// A follower that hears nothing from the leader for this long (plus up
    /// to half as much again, at random) starts a view change; a view change
    /// that does not finish in that time moves on to the next view.
    pub view_change_timeout: Time,
    /// Unanswered `GetState`, `StartViewChange` and `DoViewChange` are
    /// resent this often.
    pub retransmit: Time,
    /// A gap in a follower's log that stays open this long is repaired by
    /// asking the leader (shorter gaps are usually reordering).
    pub reorder_grace: Time,
    /// A replica that has just started waits this much longer before it
    /// suspects the leader, so that replicas that start at different times
    /// (loading eBPF programs takes a while) do not start with a view change.
    pub startup_grace: Time,
}

impl Timing {
    /// Timeouts for a LAN or a testbed of network namespaces.
    pub fn lan() -> Timing {
        Timing {
            heartbeat: 10_000,
            view_change_timeout: 150_000,
            retransmit: 10_000,
            reorder_grace: 1_000,
            startup_grace: 1_000_000,
        }
    }
}

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    /// One replica.
    Replica(usize),
    /// Every replica but the sender: one broadcast.
    OtherReplicas,
    /// A client, by id (the shell knows its address from its requests).
    Client(u64),
}

/// A message to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outgoing {
    /// Destination.
    pub to: To,
    /// The message.
    pub msg: Message,
}

/// Whether the replica is processing requests or changing views.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Normal operation in the current view.
    Normal,
    /// Moving to the current view, which has not started yet.
    ViewChange,
}

/// Counters over the life of a replica.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReplicaStats {
    /// Prepares broadcast as leader.
    pub prepares: u64,
    /// Commits broadcast as leader (after progress and as heartbeats).
    pub commits: u64,
    /// Ops executed on the store.
    pub executed: u64,
    /// Views entered after the first.
    pub view_changes: u64,
    /// `GetState` requests sent.
    pub state_requests: u64,
    /// Retried requests recognised by the client table or the log.
    pub duplicate_requests: u64,
    /// View changes in which this replica, as the new leader, fetched
    /// committed ops it lacked.
    pub log_fetches: u64,
}

/// The last executed request of a client, with its result for retries.
#[derive(Clone, Debug)]
struct ClientRecord {
    request_num: u64,
    result: OpResult,
}

/// A `DoViewChange` received by the new leader.
#[derive(Clone, Debug)]
struct LogOffer {
    replica: usize,
    last_normal_view: u64,
    op_number: u64,
    commit_number: u64,
    first_op: u64,
    entries: Vec<Entry>,
}

/// The new leader copying committed ops it lacks from the chosen log.
#[derive(Clone, Debug)]
struct Fetch {
    best: LogOffer,
    /// Own ops 1..=keep are part of the chosen log.
    keep: u64,
    /// Fetched ops keep+1 .. keep+fetched.len().
    fetched: Vec<Entry>,
}

/// A follower fetching the log of a view that started without it.
#[derive(Clone, Debug)]
struct Join {
    /// Fetch until the log holds this op (the leader had it in this view,
    /// so the view's start log is included).
    target: u64,
    /// The leader's ops from our commit number + 1 on.
    fetched: Vec<Entry>,
}

impl Fetch {
    fn next(&self) -> u64 {
        self.keep + self.fetched.len() as u64 + 1
    }
    fn complete(&self) -> bool {
        self.next() >= self.best.first_op
    }
}

/// One replica's state. See the module documentation for the protocol.
#[derive(Debug)]
pub struct Replica {
    me: usize,
    n: usize,
    timing: Timing,
    rng: SmallRng,

    view: u64,
    status: Status,
    last_normal_view: u64,
    /// `log[k - 1]` is op k.
    log: Vec<Entry>,
    /// Ops up to here are committed and executed.
    commit_number: u64,
    store: KvStore,
    clients: HashMap<u64, ClientRecord>,

    // Leader.
    /// Request number per client that is queued or prepared, not yet executed.
    pending: HashMap<u64, u64>,
    queue: VecDeque<Entry>,
    /// Highest op each replica acknowledged in this view.
    acked: Vec<u64>,
    last_broadcast: Time,
    commit_announced: u64,

    // Follower.
    last_heard: Time,
    view_timeout: Time,
    buffered: BTreeMap<u64, Entry>,
    /// Highest op number the leader is known to have.
    leader_op: u64,
    behind_since: Option<Time>,
    last_state_request: Option<Time>,
    /// Leader's commit number in the last `Commit` (a stall means lost acks).
    leader_commit_seen: u64,

    // View change.
    view_change_started: Time,
    last_resend: Time,
    start_view_changes: BTreeSet<usize>,
    do_view_change_sent: bool,
    offers: BTreeMap<usize, LogOffer>,
    fetch: Option<Fetch>,
    join: Option<Join>,

    stats: ReplicaStats,
}

impl Replica {
    /// Replica `me` of `n` (odd, at least 3), starting in view 0 at time
    /// `now`. `seed` drives the random part of the timeouts.
    pub fn new(me: usize, n: usize, timing: Timing, seed: u64, now: Time) -> Replica {
        assert!(
            n >= 3 && n % 2 == 1 && me < n && n <= 255,
            "bad cluster shape"
        );
        let mut rng = SmallRng::seed_from_u64(seed);
        let view_timeout = random_timeout(&mut rng, &timing);
        let startup_grace = timing.startup_grace;
        Replica {
            me,
            n,
            timing,
            rng,
            view: 0,
            status: Status::Normal,
            last_normal_view: 0,
            log: Vec::new(),
            commit_number: 0,
            store: KvStore::default(),
            clients: HashMap::new(),
            pending: HashMap::new(),
            queue: VecDeque::new(),
            acked: vec![0; n],
            last_broadcast: now,
            commit_announced: 0,
            last_heard: now + startup_grace,
            view_timeout,
            buffered: BTreeMap::new(),
            leader_op: 0,
            behind_since: None,
            last_state_request: None,
            leader_commit_seen: 0,
            view_change_started: now,
            last_resend: now,
            start_view_changes: BTreeSet::new(),
            do_view_change_sent: false,
            offers: BTreeMap::new(),
            fetch: None,
            join: None,
            stats: ReplicaStats::default(),
        }
    }

    /// This replica's index.
    pub fn id(&self) -> usize {
        self.me
    }
    /// Current view number.
    pub fn view(&self) -> u64 {
        self.view
    }
    /// Normal or view change.
    pub fn status(&self) -> Status {
        self.status
    }
    /// True when this replica leads its view and the view has started.
    pub fn is_leader(&self) -> bool {
        self.status == Status::Normal && self.leader_of(self.view) == self.me
    }
    /// Number of ops in the log.
    pub fn op_number(&self) -> u64 {
        self.log.len() as u64
    }
    /// Number of committed (and executed) ops.
    pub fn commit_number(&self) -> u64 {
        self.commit_number
    }
    /// The log; `log()[k - 1]` is op k.
    #[cfg(test)]
    pub fn log(&self) -> &[Entry] {
        &self.log
    }
    /// The key-value store after the committed ops.
    #[cfg(test)]
    pub fn store(&self) -> &KvStore {
        &self.store
    }
    /// Counters.
    pub fn stats(&self) -> &ReplicaStats {
        &self.stats
    }

    /// Replicas in the cluster.
    pub fn n(&self) -> usize {
        self.n
    }

    /// The leader of the current view.
    pub fn leader_index(&self) -> usize {
        self.leader_of(self.view)
    }

    fn f(&self) -> usize {
        (self.n - 1) / 2
    }

    fn leader_of(&self, view: u64) -> usize {
        (view % self.n as u64) as usize
    }

    fn id_byte(&self) -> ReplicaId {
        // n <= 255 is checked in `new`.
        self.me as ReplicaId
    }

    /// Processes one message. `msg` must have been sent by the replica it
    /// names ([`Message::sender`]); the shell checks that against the source
    /// address.
    pub fn handle(&mut self, now: Time, msg: Message, out: &mut Vec<Outgoing>) {
        match msg {
            Message::Request(entry) => self.on_request(now, entry, out),
            Message::Reply { .. } => {}
            Message::Prepare {
                view,
                op_number,
                commit_number,
                entry,
            } => self.on_prepare(now, view, op_number, commit_number, entry, out),
            Message::PrepareOk {
                view,
                op_number,
                replica,
            } => self.on_prepare_ok(now, view, op_number, usize::from(replica), out),
            Message::Commit {
                view,
                commit_number,
                op_number,
            } => self.on_commit(now, view, commit_number, op_number, out),
            Message::GetState {
                view,
                replica,
                first_op,
            } => self.on_get_state(view, usize::from(replica), first_op, out),
            Message::NewState {
                view,
                replica,
                normal,
                last_normal_view,
                op_number,
                commit_number,
                first_op,
                entries,
            } => {
                let state = LogOffer {
                    replica: usize::from(replica),
                    last_normal_view,
                    op_number,
                    commit_number,
                    first_op,
                    entries,
                };
                self.on_new_state(now, view, normal, state, out)
            }
            Message::StartViewChange { view, replica } => {
                self.on_start_view_change(now, view, usize::from(replica), out)
            }
            Message::DoViewChange {
                view,
                replica,
                last_normal_view,
                op_number,
                commit_number,
                first_op,
                entries,
            } => {
                let offer = LogOffer {
                    replica: usize::from(replica),
                    last_normal_view,
                    op_number,
                    commit_number,
                    first_op,
                    entries,
                };
                self.on_do_view_change(now, view, offer, out)
            }
            Message::StartView {
                view,
                op_number,
                commit_number,
                first_op,
                entries,
            } => self.on_start_view(now, view, op_number, commit_number, first_op, entries, out),
        }
    }

    /// Whether the next [`Replica::tick`] at `now` starts a view change (a
    /// follower that has not heard from its leader for too long).
    pub fn view_change_due(&self, now: Time) -> bool {
        self.status == Status::Normal
            && !self.is_leader()
            && now >= self.last_heard + self.view_timeout
    }

    /// Runs the timers: heartbeats, view-change timeouts, retransmissions.
    /// Call it every millisecond or so.
    pub fn tick(&mut self, now: Time, out: &mut Vec<Outgoing>) {
        match self.status {
            Status::Normal if self.is_leader() => {
                if now >= self.last_broadcast + self.timing.heartbeat {
                    self.broadcast_commit(now, out);
                }
            }
            Status::Normal => {
                if now >= self.last_heard + self.view_timeout {
                    self.start_view_change(now, self.view + 1, out);
                    return;
                }
                if self.op_number() >= self.leader_op && self.buffered.is_empty() {
                    self.behind_since = None;
                } else if let Some(since) = self.behind_since {
                    let resend_due = self
                        .last_state_request
                        .is_none_or(|t| now >= t + self.timing.retransmit);
                    if now >= since + self.timing.reorder_grace && resend_due {
                        self.request_state(now, out);
                    }
                }
            }
            Status::ViewChange => {
                if now >= self.view_change_started + self.view_timeout {
                    self.start_view_change(now, self.view + 1, out);
                    return;
                }
                if self.join.is_some() {
                    if now >= self.last_resend + self.timing.retransmit {
                        self.request_join_state(now, out);
                    }
                    return;
                }
                if now >= self.last_resend + self.timing.retransmit {
                    self.last_resend = now;
                    self.send_start_view_change(out);
                    if self.do_view_change_sent && self.leader_of(self.view) != self.me {
                        self.send_do_view_change(out);
                    }
                    if let Some(fetch) = &self.fetch {
                        self.send_get_state(fetch.best.replica, fetch.next(), out);
                    }
                }
            }
        }
    }

    /// Sends what was deferred while a batch of messages was processed: the
    /// leader's `Commit` for ops committed since its last broadcast. Call it
    /// when no more messages are waiting.
    pub fn flush(&mut self, now: Time, out: &mut Vec<Outgoing>) {
        if self.is_leader() && self.commit_announced < self.commit_number {
            self.broadcast_commit(now, out);
        }
    }

    // ---- normal operation --------------------------------------------

    fn on_request(&mut self, now: Time, entry: Entry, out: &mut Vec<Outgoing>) {
        if !self.is_leader() || !entry.op.within_limits() {
            return;
        }
        if let Some(record) = self.clients.get(&entry.client_id) {
            if entry.request_num <= record.request_num {
                self.stats.duplicate_requests += 1;
                if entry.request_num == record.request_num {
                    out.push(Outgoing {
                        to: To::Client(entry.client_id),
                        msg: Message::Reply {
                            view: self.view,
                            request_num: record.request_num,
                            result: record.result.clone(),
                        },
                    });
                }
                return;
            }
        }
        if self
            .pending
            .get(&entry.client_id)
            .is_some_and(|&p| entry.request_num <= p)
        {
            self.stats.duplicate_requests += 1;
            return;
        }
        if self.queue.len() >= MAX_QUEUED {
            return;
        }
        self.pending.insert(entry.client_id, entry.request_num);
        self.queue.push_back(entry);
        self.prepare_queued(now, out);
    }

    fn prepare_queued(&mut self, now: Time, out: &mut Vec<Outgoing>) {
        while self.op_number() < self.commit_number + WINDOW {
            let Some(entry) = self.queue.pop_front() else {
                break;
            };
            self.log.push(entry.clone());
            let op_number = self.op_number();
            self.acked[self.me] = op_number;
            out.push(Outgoing {
                to: To::OtherReplicas,
                msg: Message::Prepare {
                    view: self.view,
                    op_number,
                    commit_number: self.commit_number,
                    entry,
                },
            });
            self.stats.prepares += 1;
            self.last_broadcast = now;
            self.commit_announced = self.commit_number;
        }
    }

    fn on_prepare(
        &mut self,
        now: Time,
        view: u64,
        op_number: u64,
        commit_number: u64,
        entry: Entry,
        out: &mut Vec<Outgoing>,
    ) {
        if !self.accept_from_leader(now, view, op_number, out) {
            return;
        }
        self.note_leader_op(now, op_number);
        let mine = self.op_number();
        if op_number == mine + 1 {
            self.log.push(entry);
            self.append_buffered();
            self.send_prepare_ok(out);
        } else if op_number <= mine {
            // A retransmission or duplicate: acknowledge what we hold.
            self.send_prepare_ok(out);
        } else if self.buffered.len() < MAX_BUFFERED {
            self.buffered.insert(op_number, entry);
        }
        self.commit_up_to(commit_number, out);
    }

    fn on_prepare_ok(
        &mut self,
        now: Time,
        view: u64,
        op_number: u64,
        replica: usize,
        out: &mut Vec<Outgoing>,
    ) {
        if view != self.view || !self.is_leader() || replica >= self.n || replica == self.me {
            return;
        }
        let op_number = op_number.min(self.op_number());
        if op_number <= self.acked[replica] {
            return;
        }
        self.acked[replica] = op_number;
        let mut acks: Vec<u64> = (0..self.n)
            .filter(|&i| i != self.me)
            .map(|i| self.acked[i])
            .collect();
        acks.sort_unstable_by(|a, b| b.cmp(a));
        // f followers plus the leader make a quorum of f + 1.
        let quorum_op = acks[self.f() - 1];
        if quorum_op > self.commit_number {
            self.commit_up_to(quorum_op, out);
            self.prepare_queued(now, out);
        }
    }

    fn on_commit(
        &mut self,
        now: Time,
        view: u64,
        commit_number: u64,
        op_number: u64,
        out: &mut Vec<Outgoing>,
    ) {
        if !self.accept_from_leader(now, view, op_number, out) {
            return;
        }
        self.note_leader_op(now, op_number);
        let stalled = commit_number <= self.leader_commit_seen;
        self.leader_commit_seen = self.leader_commit_seen.max(commit_number);
        self.commit_up_to(commit_number, out);
        if stalled && self.op_number() > self.commit_number {
            // The leader is not committing what we hold: our acks were lost.
            self.send_prepare_ok(out);
        }
    }

    /// Common checks for `Prepare` and `Commit`: from the leader of a view
    /// not older than ours, in normal status. A newer view (or ours, while we
    /// still wait for its `StartView`) has started without us: join it.
    fn accept_from_leader(
        &mut self,
        now: Time,
        view: u64,
        leader_op: u64,
        out: &mut Vec<Outgoing>,
    ) -> bool {
        if view < self.view || self.leader_of(view) == self.me {
            return false;
        }
        if view > self.view || self.status == Status::ViewChange {
            self.begin_join(now, view, leader_op, out);
            return false;
        }
        self.last_heard = now;
        true
    }

    /// Starts (or continues) fetching the log of `view`, which the leader
    /// started without us, up to at least `target`.
    fn begin_join(&mut self, now: Time, view: u64, target: u64, out: &mut Vec<Outgoing>) {
        let joining = self.status == Status::ViewChange && self.view == view;
        if !joining || self.join.is_none() {
            self.enter_view(now, view, Status::ViewChange);
            self.join = Some(Join {
                target,
                fetched: Vec::new(),
            });
            self.request_join_state(now, out);
        }
    }

    fn request_join_state(&mut self, now: Time, out: &mut Vec<Outgoing>) {
        let Some(join) = &self.join else {
            return;
        };
        let first_op = self.commit_number + join.fetched.len() as u64 + 1;
        self.last_resend = now;
        self.stats.state_requests += 1;
        self.send_get_state(self.leader_of(self.view), first_op, out);
    }

    fn note_leader_op(&mut self, now: Time, op_number: u64) {
        self.leader_op = self.leader_op.max(op_number);
        if self.leader_op > self.op_number() {
            self.behind_since.get_or_insert(now);
        }
    }

    fn append_buffered(&mut self) {
        while let Some(entry) = self.buffered.remove(&(self.op_number() + 1)) {
            self.log.push(entry);
        }
        let next = self.op_number() + 1;
        self.buffered = self.buffered.split_off(&next);
    }

    fn send_prepare_ok(&self, out: &mut Vec<Outgoing>) {
        out.push(Outgoing {
            to: To::Replica(self.leader_of(self.view)),
            msg: Message::PrepareOk {
                view: self.view,
                op_number: self.op_number(),
                replica: self.id_byte(),
            },
        });
    }

    fn broadcast_commit(&mut self, now: Time, out: &mut Vec<Outgoing>) {
        out.push(Outgoing {
            to: To::OtherReplicas,
            msg: Message::Commit {
                view: self.view,
                commit_number: self.commit_number,
                op_number: self.op_number(),
            },
        });
        self.stats.commits += 1;
        self.last_broadcast = now;
        self.commit_announced = self.commit_number;
    }

    /// Commits and executes ops up to `target` (at most the log's end); the
    /// leader replies to their clients.
    fn commit_up_to(&mut self, target: u64, out: &mut Vec<Outgoing>) {
        let target = target.min(self.op_number());
        while self.commit_number < target {
            let entry = self.log[self.commit_number as usize].clone();
            self.commit_number += 1;
            self.execute(entry, out);
        }
    }

    fn execute(&mut self, entry: Entry, out: &mut Vec<Outgoing>) {
        let Entry {
            client_id,
            request_num,
            op,
        } = entry;
        if self
            .clients
            .get(&client_id)
            .is_some_and(|r| request_num <= r.request_num)
        {
            // The same request twice in the log (retried across a view
            // change): it runs once.
            return;
        }
        let result = self.store.apply(&op);
        self.stats.executed += 1;
        if self.is_leader() {
            if self.pending.get(&client_id) == Some(&request_num) {
                self.pending.remove(&client_id);
            }
            out.push(Outgoing {
                to: To::Client(client_id),
                msg: Message::Reply {
                    view: self.view,
                    request_num,
                    result: result.clone(),
                },
            });
        }
        self.clients.insert(
            client_id,
            ClientRecord {
                request_num,
                result,
            },
        );
    }

    // ---- state transfer ------------------------------------------------

    fn request_state(&mut self, now: Time, out: &mut Vec<Outgoing>) {
        self.last_state_request = Some(now);
        self.stats.state_requests += 1;
        let first_op = self.op_number() + 1;
        self.send_get_state(self.leader_of(self.view), first_op, out);
    }

    fn send_get_state(&self, to: usize, first_op: u64, out: &mut Vec<Outgoing>) {
        out.push(Outgoing {
            to: To::Replica(to),
            msg: Message::GetState {
                view: self.view,
                replica: self.id_byte(),
                first_op,
            },
        });
    }

    fn on_get_state(&mut self, view: u64, replica: usize, first_op: u64, out: &mut Vec<Outgoing>) {
        if view != self.view || replica >= self.n || replica == self.me {
            return;
        }
        // In normal status only the leader's log is authoritative; during a
        // view change the new leader fetches from the log it adopts.
        if self.status == Status::Normal && !self.is_leader() {
            return;
        }
        let first_op = first_op.max(1);
        let mut entries = Vec::new();
        let mut bytes = 0;
        for entry in self.log.iter().skip((first_op - 1) as usize) {
            bytes += encoded_size(entry);
            if !entries.is_empty() && bytes > STATE_TRANSFER_BYTES {
                break;
            }
            entries.push(entry.clone());
        }
        out.push(Outgoing {
            to: To::Replica(replica),
            msg: Message::NewState {
                view: self.view,
                replica: self.id_byte(),
                normal: self.status == Status::Normal,
                last_normal_view: self.last_normal_view,
                op_number: self.op_number(),
                commit_number: self.commit_number,
                first_op,
                entries,
            },
        });
    }

    fn on_new_state(
        &mut self,
        now: Time,
        view: u64,
        normal: bool,
        state: LogOffer,
        out: &mut Vec<Outgoing>,
    ) {
        if view != self.view {
            return;
        }
        let from_leader = state.replica == self.leader_of(view);
        if self.status == Status::Normal && !self.is_leader() && from_leader && normal {
            // A follower catching up.
            self.last_heard = now;
            self.note_leader_op(now, state.op_number);
            for (op, entry) in (state.first_op..).zip(state.entries) {
                if op == self.op_number() + 1 {
                    self.log.push(entry);
                } else if op > self.op_number() + 1 {
                    break;
                }
            }
            self.append_buffered();
            self.commit_up_to(state.commit_number, out);
            self.send_prepare_ok(out);
            if self.op_number() < self.leader_op {
                self.request_state(now, out);
            }
        } else if self.status == Status::ViewChange && self.join.is_some() && from_leader && normal
        {
            self.on_join_state(now, state, out);
        } else if self.status == Status::ViewChange && !normal {
            // The new leader fetching committed ops it lacks.
            let Some(fetch) = &mut self.fetch else {
                return;
            };
            let best = &fetch.best;
            if state.replica != best.replica
                || state.last_normal_view != best.last_normal_view
                || state.op_number != best.op_number
            {
                return;
            }
            for (op, entry) in (state.first_op..).zip(state.entries) {
                if op == fetch.next() && !fetch.complete() {
                    fetch.fetched.push(entry);
                }
            }
            if fetch.complete() {
                self.start_view(now, out);
            } else {
                let (from, first_op) = (fetch.best.replica, fetch.next());
                self.send_get_state(from, first_op, out);
            }
        }
    }

    /// A joining follower receives part of the leader's log; once it
    /// reaches the target it replaces its uncommitted ops with it.
    fn on_join_state(&mut self, now: Time, state: LogOffer, out: &mut Vec<Outgoing>) {
        let Some(join) = &mut self.join else {
            return;
        };
        // Progress: do not let the view-change timeout cut a long catch-up short.
        self.view_change_started = now;
        for (op, entry) in (state.first_op..).zip(state.entries) {
            if op == self.commit_number + join.fetched.len() as u64 + 1 {
                join.fetched.push(entry);
            }
        }
        if self.commit_number + (join.fetched.len() as u64) < join.target {
            self.request_join_state(now, out);
            return;
        }
        let Some(join) = self.join.take() else {
            return;
        };
        let view = self.view;
        self.log.truncate(self.commit_number as usize);
        self.log.extend(join.fetched);
        self.enter_view(now, view, Status::Normal);
        self.last_normal_view = view;
        self.note_leader_op(now, state.op_number);
        self.commit_up_to(state.commit_number, out);
        self.send_prepare_ok(out);
    }

    // ---- view change ---------------------------------------------------

    /// Resets per-view state on entering `view` with `status`.
    fn enter_view(&mut self, now: Time, view: u64, status: Status) {
        if view != self.view {
            self.stats.view_changes += 1;
        }
        self.view = view;
        self.status = status;
        self.pending.clear();
        self.queue.clear();
        self.acked = vec![0; self.n];
        self.last_heard = now;
        self.view_timeout = random_timeout(&mut self.rng, &self.timing);
        self.buffered.clear();
        self.leader_op = 0;
        self.behind_since = None;
        self.last_state_request = None;
        self.leader_commit_seen = 0;
        self.view_change_started = now;
        self.last_resend = now;
        self.start_view_changes.clear();
        self.do_view_change_sent = false;
        self.offers.clear();
        self.fetch = None;
        self.join = None;
    }

    fn start_view_change(&mut self, now: Time, view: u64, out: &mut Vec<Outgoing>) {
        self.enter_view(now, view, Status::ViewChange);
        self.send_start_view_change(out);
    }

    fn send_start_view_change(&self, out: &mut Vec<Outgoing>) {
        out.push(Outgoing {
            to: To::OtherReplicas,
            msg: Message::StartViewChange {
                view: self.view,
                replica: self.id_byte(),
            },
        });
    }

    fn on_start_view_change(
        &mut self,
        now: Time,
        view: u64,
        replica: usize,
        out: &mut Vec<Outgoing>,
    ) {
        if view < self.view || replica >= self.n || replica == self.me {
            return;
        }
        if view > self.view {
            self.start_view_change(now, view, out);
        }
        match self.status {
            Status::ViewChange => {
                self.start_view_changes.insert(replica);
                if !self.do_view_change_sent && self.start_view_changes.len() >= self.f() {
                    self.do_view_change_sent = true;
                    if self.leader_of(self.view) == self.me {
                        let offer = self.own_offer();
                        self.on_offer(now, offer, out);
                    } else {
                        self.send_do_view_change(out);
                    }
                }
            }
            // The sender missed our StartView.
            Status::Normal if self.is_leader() => self.send_start_view(To::Replica(replica), out),
            Status::Normal => {}
        }
    }

    /// Our log for the new leader: its tail from the first op that may be
    /// uncommitted.
    fn own_offer(&self) -> LogOffer {
        let first_op = self.suffix_start();
        LogOffer {
            replica: self.me,
            last_normal_view: self.last_normal_view,
            op_number: self.op_number(),
            commit_number: self.commit_number,
            first_op,
            entries: self.log[(first_op - 1) as usize..].to_vec(),
        }
    }

    /// First op that may be uncommitted in our log: ops more than `WINDOW`
    /// below the end are committed (the leader's window guarantees it).
    fn suffix_start(&self) -> u64 {
        self.commit_number
            .max(self.op_number().saturating_sub(WINDOW))
            + 1
    }

    fn send_do_view_change(&self, out: &mut Vec<Outgoing>) {
        let offer = self.own_offer();
        out.push(Outgoing {
            to: To::Replica(self.leader_of(self.view)),
            msg: Message::DoViewChange {
                view: self.view,
                replica: self.id_byte(),
                last_normal_view: offer.last_normal_view,
                op_number: offer.op_number,
                commit_number: offer.commit_number,
                first_op: offer.first_op,
                entries: offer.entries,
            },
        });
    }

    fn on_do_view_change(
        &mut self,
        now: Time,
        view: u64,
        offer: LogOffer,
        out: &mut Vec<Outgoing>,
    ) {
        let well_formed = offer.first_op >= 1
            && offer.first_op <= offer.op_number + 1
            && offer.entries.len() as u64 == offer.op_number + 1 - offer.first_op
            && offer.commit_number <= offer.op_number
            && offer.last_normal_view < view;
        if view < self.view || offer.replica >= self.n || offer.replica == self.me || !well_formed {
            return;
        }
        if view > self.view {
            self.start_view_change(now, view, out);
        }
        match self.status {
            Status::Normal if self.is_leader() => {
                self.send_start_view(To::Replica(offer.replica), out)
            }
            Status::Normal => {}
            Status::ViewChange if self.leader_of(view) == self.me => self.on_offer(now, offer, out),
            Status::ViewChange => {}
        }
    }

    /// The new leader collects f + 1 logs and adopts the one with the
    /// highest (last normal view, op number).
    fn on_offer(&mut self, now: Time, offer: LogOffer, out: &mut Vec<Outgoing>) {
        self.offers.insert(offer.replica, offer);
        if self.offers.len() < self.f() + 1 || self.fetch.is_some() {
            return;
        }
        let Some(best) = self
            .offers
            .values()
            .max_by_key(|o| {
                (
                    o.last_normal_view,
                    o.op_number,
                    std::cmp::Reverse(o.replica),
                )
            })
            .cloned()
        else {
            return;
        };
        // Which of our own ops belong to the chosen log: all of them if our
        // log comes from the same view (both are prefixes of that view's
        // leader's log), else the committed ones.
        let trusted = if self.last_normal_view == best.last_normal_view {
            self.op_number()
        } else {
            self.commit_number
        };
        let keep = trusted.min(best.first_op - 1);
        self.fetch = Some(Fetch {
            best,
            keep,
            fetched: Vec::new(),
        });
        match &self.fetch {
            Some(fetch) if !fetch.complete() => {
                let (from, first_op) = (fetch.best.replica, fetch.next());
                self.stats.log_fetches += 1;
                self.send_get_state(from, first_op, out);
            }
            _ => self.start_view(now, out),
        }
    }

    /// The new leader installs the chosen log and starts the view.
    fn start_view(&mut self, now: Time, out: &mut Vec<Outgoing>) {
        let Some(fetch) = self.fetch.take() else {
            return;
        };
        let best = fetch.best;
        self.log.truncate(fetch.keep as usize);
        self.log.extend(fetch.fetched);
        self.log.extend(best.entries);
        let op_number = self.op_number();
        let max_commit = self
            .offers
            .values()
            .map(|o| o.commit_number)
            .max()
            .unwrap_or(0)
            .max(self.commit_number);
        let commit = max_commit
            .max(op_number.saturating_sub(WINDOW))
            .min(op_number);
        let view = self.view;
        self.enter_view(now, view, Status::Normal);
        self.last_normal_view = view;
        self.acked[self.me] = op_number;
        self.commit_up_to(commit, out);
        for entry in &self.log[self.commit_number as usize..] {
            let p = self.pending.entry(entry.client_id).or_default();
            *p = (*p).max(entry.request_num);
        }
        self.send_start_view(To::OtherReplicas, out);
        self.last_broadcast = now;
        self.commit_announced = self.commit_number;
    }

    fn send_start_view(&self, to: To, out: &mut Vec<Outgoing>) {
        let first_op = self.suffix_start();
        out.push(Outgoing {
            to,
            msg: Message::StartView {
                view: self.view,
                op_number: self.op_number(),
                commit_number: self.commit_number,
                first_op,
                entries: self.log[(first_op - 1) as usize..].to_vec(),
            },
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn on_start_view(
        &mut self,
        now: Time,
        view: u64,
        op_number: u64,
        commit_number: u64,
        first_op: u64,
        entries: Vec<Entry>,
        out: &mut Vec<Outgoing>,
    ) {
        let well_formed = first_op >= 1
            && first_op <= op_number + 1
            && entries.len() as u64 == op_number + 1 - first_op
            && commit_number <= op_number;
        if view < self.view
            || (view == self.view && self.status == Status::Normal)
            || self.leader_of(view) == self.me
            || !well_formed
            || self.commit_number > op_number
        {
            return;
        }
        if self.commit_number + 1 < first_op {
            // Committed ops we lack come before the suffix: fetch first.
            self.begin_join(now, view, op_number, out);
            return;
        }
        // Our committed ops are part of every later view's log; the rest
        // comes from the new leader.
        self.enter_view(now, view, Status::Normal);
        self.last_normal_view = view;
        self.log.truncate((first_op - 1) as usize);
        self.log.extend(entries);
        self.note_leader_op(now, op_number);
        self.commit_up_to(commit_number, out);
        self.send_prepare_ok(out);
    }
}

fn random_timeout(rng: &mut SmallRng, timing: &Timing) -> Time {
    timing.view_change_timeout + rng.gen_range(0..=timing.view_change_timeout / 2)
}

/// Bytes an entry takes on the wire.
fn encoded_size(entry: &Entry) -> usize {
    let values = match &entry.op {
        Op::Get { .. } => 0,
        Op::Put { value, .. } => 2 + value.len(),
        Op::Cas { expected, new, .. } => {
            3 + expected.as_ref().map_or(0, |e| 2 + e.len()) + new.len()
        }
    };
    8 + 8 + 1 + 2 + entry.op.key().len() + values
}
