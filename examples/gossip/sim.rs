//! Deterministic simulation of a cluster: the protocol core over a simulated
//! network, driven by seeded RNGs and a simulated clock. A run is
//! reproducible from its seed.
//!
//! The network loses each IP fragment of a datagram with probability
//! `loss` (a datagram over 1472 bytes is several fragments, and one lost
//! fragment loses it whole), delays each by a uniform random time, and can
//! be cut into sides (a partition). Nodes can crash, restart (a new
//! generation and incarnation), be CPU-starved (every packet and timer they
//! handle runs late by a random lag), and have their packets captured and
//! replayed later. The simulation measures what each node sends and
//! receives and the CPU time of the protocol core itself.
//!
//! Used by the tests at the end of this file and by `gossip sim`, which
//! runs the large scenarios (`cargo run --release --example gossip -- sim`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::rc::Rc;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::codec::{Keyring, NodeId, State};
use crate::protocol::{Action, Config, Event, Node, Stats};

/// Bytes of UDP payload in one IPv4 fragment under a 1500-byte MTU.
const FRAGMENT: usize = 1472;
/// Boot values of the first run of each node; a restart adds to it.
const FIRST_BOOT: u64 = 1_000_000;

/// The simulated address of node `i`: 10.0.0.1 upwards, port 7946.
pub fn id_of(i: usize) -> NodeId {
    NodeId(SocketAddrV4::new(
        Ipv4Addr::from(0x0A00_0001 + i as u32),
        7946,
    ))
}

/// The node index of a simulated address.
pub fn index_of(addr: SocketAddr) -> Option<usize> {
    match addr {
        SocketAddr::V4(v4) => (u32::from(*v4.ip()) as usize).checked_sub(0x0A00_0001),
        SocketAddr::V6(_) => None,
    }
}

/// The simulated network and its faults.
#[derive(Clone, Debug)]
pub struct Network {
    /// Probability that one fragment is lost.
    pub loss: f64,
    /// Shortest and longest one-way delay.
    pub delay: (Duration, Duration),
    /// Lag range of a CPU-starved node's packets and timers.
    pub starve_lag: (Duration, Duration),
}

impl Default for Network {
    fn default() -> Network {
        Network {
            loss: 0.0,
            delay: (Duration::from_micros(500), Duration::from_millis(5)),
            starve_lag: (Duration::from_millis(100), Duration::from_millis(1000)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum What {
    /// A datagram reaching node `to` from node `from`.
    Deliver { to: u32, from: u32, packet: u32 },
    /// Node `node`'s timers.
    Tick { node: u32 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Scheduled {
    at: Duration,
    id: u64,
    what: What,
    /// Already held back once by a starved node.
    lagged: bool,
}

/// One simulated host.
pub struct Host {
    /// The protocol core.
    pub node: Node,
    /// Up, or crashed.
    pub up: bool,
    /// Which side of a partition it is on (0 when none).
    pub side: u8,
    /// CPU-starved: everything it handles runs late.
    pub starved: bool,
    /// Its clock's offset from the simulation's.
    skew: Duration,
    boot: u64,
    /// When its next tick is scheduled.
    scheduled: Option<Duration>,
    /// CPU time spent in the protocol core.
    pub cpu: Duration,
    /// Events it reported.
    pub events: Vec<(Duration, Event)>,
}

/// A captured datagram (for replays).
#[derive(Clone, Debug)]
pub struct Captured {
    /// Sender index.
    pub from: usize,
    /// Where this copy went.
    pub to: usize,
    /// Whether the network delivered it (else it was lost on the way, and
    /// its replay to `to` is its first delivery).
    pub delivered: bool,
    /// The bytes.
    pub packet: Rc<Vec<u8>>,
}

/// What a replay campaign achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Deliveries replayed.
    pub replayed: u64,
    /// Replays the receiver accepted (did not drop).
    pub accepted: u64,
    /// Of those, first deliveries: a copy lost on its way to that very node,
    /// whose sender it has heard nothing newer from since.
    pub first_deliveries: u64,
}

/// A simulated cluster.
pub struct Sim {
    base: Instant,
    now: Duration,
    /// The hosts, node `i` at index `i`.
    pub hosts: Vec<Host>,
    heap: BinaryHeap<Reverse<Scheduled>>,
    packets: Vec<Option<Rc<Vec<u8>>>>,
    free_packets: Vec<u32>,
    next_id: u64,
    rng: SmallRng,
    /// The network.
    pub net: Network,
    #[cfg_attr(not(test), allow(dead_code))] // restarts, in the tests
    config: Config,
    /// Sides may not talk while this is set.
    partitioned: bool,
    /// Every `capture_every`-th datagram copy is kept in `captured`.
    pub capture_every: u64,
    /// Captured datagrams.
    pub captured: Vec<Captured>,
    copies: u64,
    /// Keep events in each host's `events` (off for large runs).
    pub record_events: bool,
    /// Largest datagram sent.
    pub largest: usize,
    /// What one node handled, for [`Sim::cpu_of_trace`].
    trace: Option<Trace>,
}

/// What one node handled, in order: datagrams (source and bytes) and
/// ticks (None) at their times.
struct Trace {
    node: usize,
    start: Node,
    entries: Vec<(Duration, Option<Datagram>)>,
}

type Datagram = (SocketAddr, Rc<Vec<u8>>);

/// The protocol settings of the simulations: 1 s period, all defaults.
pub fn config() -> Config {
    Config::new(Keyring::new(1, b"simulated cluster key"))
}

impl Sim {
    /// `n` nodes, none joined yet, with clocks skewed by up to an hour.
    pub fn new(n: usize, config: Config, net: Network, seed: u64) -> Sim {
        let base = Instant::now();
        let mut rng = SmallRng::seed_from_u64(seed);
        let hosts = (0..n)
            .map(|i| {
                let skew = Duration::from_millis(rng.gen_range(0..3_600_000));
                let node_rng = SmallRng::seed_from_u64(rng.gen());
                let boot = FIRST_BOOT + i as u64;
                Host {
                    node: Node::new(id_of(i), config.clone(), node_rng, boot, base + skew),
                    up: true,
                    side: 0,
                    starved: false,
                    skew,
                    boot,
                    scheduled: None,
                    cpu: Duration::ZERO,
                    events: Vec::new(),
                }
            })
            .collect();
        Sim {
            base,
            now: Duration::ZERO,
            hosts,
            heap: BinaryHeap::new(),
            packets: Vec::new(),
            free_packets: Vec::new(),
            next_id: 0,
            rng,
            net,
            config,
            partitioned: false,
            capture_every: 0,
            captured: Vec::new(),
            copies: 0,
            record_events: true,
            largest: 0,
            trace: None,
        }
    }

    /// Simulated time since the start.
    pub fn now(&self) -> Duration {
        self.now
    }

    /// Node `i`'s local clock.
    pub fn clock(&self, i: usize) -> Instant {
        self.base + self.hosts[i].skew + self.now
    }

    /// Node `i`'s core.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub fn node(&mut self, i: usize) -> &mut Node {
        &mut self.hosts[i].node
    }

    /// Runs `f` on node `i` at its clock, then takes its actions.
    pub fn with<R>(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant) -> R) -> R {
        let now = self.clock(i);
        let started = Instant::now();
        let result = f(&mut self.hosts[i].node, now);
        self.hosts[i].cpu += started.elapsed();
        self.collect(i);
        result
    }

    /// Node `i` joins through `seeds`.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub fn join(&mut self, i: usize, seeds: &[usize]) {
        let seeds: Vec<NodeId> = seeds.iter().map(|&s| id_of(s)).collect();
        self.with(i, |node, now| {
            node.add_seeds(seeds);
            node.join(now);
        });
    }

    /// Every node joins through node 0, one per `spacing`.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub fn join_all(&mut self, spacing: Duration) {
        for i in 0..self.hosts.len() {
            self.join(i, if i == 0 { &[] } else { &[0] });
            self.run_for(spacing);
        }
    }

    /// Every node starts knowing every other (at its real incarnation) and
    /// joins with no seeds: a converged cluster without the join storm, for
    /// large runs.
    pub fn bootstrap(&mut self) {
        let all: Vec<(NodeId, u64)> = (0..self.hosts.len())
            .map(|i| (id_of(i), self.hosts[i].boot))
            .collect();
        for i in 0..self.hosts.len() {
            self.with(i, |node, now| {
                node.assume_alive(all.iter().copied(), now);
                node.join(now);
            });
        }
    }

    /// Crashes node `i`: it stops at once, its packets in flight are lost.
    pub fn crash(&mut self, i: usize) {
        self.hosts[i].up = false;
    }

    /// Restarts crashed node `i` as a new run (higher boot value) that joins
    /// through `seeds`.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub fn restart(&mut self, i: usize, seeds: &[usize]) {
        let host = &mut self.hosts[i];
        host.boot += 1_000_000_000;
        host.up = true;
        let rng = SmallRng::seed_from_u64(self.rng.gen());
        let now = self.base + self.hosts[i].skew + self.now;
        self.hosts[i].node = Node::new(id_of(i), self.config.clone(), rng, self.hosts[i].boot, now);
        self.hosts[i].scheduled = None;
        self.join(i, seeds);
    }

    /// Cuts the network: nodes on different sides no longer talk.
    pub fn partition(&mut self, side: impl Fn(usize) -> u8) {
        for (i, host) in self.hosts.iter_mut().enumerate() {
            host.side = side(i);
        }
        self.partitioned = true;
    }

    /// Ends the partition.
    pub fn heal(&mut self) {
        self.partitioned = false;
    }

    fn push(&mut self, at: Duration, what: What, lagged: bool) {
        self.next_id += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            id: self.next_id,
            what,
            lagged,
        }));
    }

    fn store(&mut self, packet: Rc<Vec<u8>>) -> u32 {
        match self.free_packets.pop() {
            Some(slot) => {
                self.packets[slot as usize] = Some(packet);
                slot
            }
            None => {
                self.packets.push(Some(packet));
                (self.packets.len() - 1) as u32
            }
        }
    }

    /// Takes node `i`'s actions onto the network and schedules its timers.
    fn collect(&mut self, i: usize) {
        let actions = self.hosts[i].node.drain_actions();
        for action in actions {
            let Action::Send { to, packet } = action;
            self.largest = self.largest.max(packet.len());
            let fragments = packet.len().div_ceil(FRAGMENT).max(1) as i32;
            let survive = (1.0 - self.net.loss).powi(fragments);
            let packet = Rc::new(packet);
            for addr in to {
                let Some(dest) = index_of(addr).filter(|&d| d < self.hosts.len()) else {
                    continue;
                };
                self.copies += 1;
                let delivered = !(self.partitioned && self.hosts[i].side != self.hosts[dest].side)
                    && self.rng.gen_bool(survive);
                if self.capture_every > 0 && self.copies % self.capture_every == 0 {
                    self.captured.push(Captured {
                        from: i,
                        to: dest,
                        delivered,
                        packet: Rc::clone(&packet),
                    });
                }
                if !delivered {
                    continue;
                }
                let delay = self.rng.gen_range(self.net.delay.0..=self.net.delay.1);
                let slot = self.store(Rc::clone(&packet));
                let what = What::Deliver {
                    to: dest as u32,
                    from: i as u32,
                    packet: slot,
                };
                self.push(self.now + delay, what, false);
            }
        }
        if self.record_events {
            let events = self.hosts[i].node.drain_events();
            let now = self.now;
            self.hosts[i]
                .events
                .extend(events.into_iter().map(|e| (now, e)));
        } else {
            self.hosts[i].node.drain_events();
        }
        self.schedule(i);
    }

    fn schedule(&mut self, i: usize) {
        let Some(deadline) = self.hosts[i].node.next_deadline() else {
            return;
        };
        let origin = self.base + self.hosts[i].skew;
        let at = deadline.saturating_duration_since(origin).max(self.now);
        if self.hosts[i].scheduled.is_none_or(|s| at < s) {
            self.hosts[i].scheduled = Some(at);
            self.push(at, What::Tick { node: i as u32 }, false);
        }
    }

    /// Runs every event up to `end`.
    fn advance_to(&mut self, end: Duration) {
        while let Some(Reverse(event)) = self.heap.peek().copied() {
            if event.at > end {
                break;
            }
            self.heap.pop();
            self.now = event.at;
            self.handle(event);
        }
        self.now = end;
    }

    fn handle(&mut self, event: Scheduled) {
        match event.what {
            What::Deliver { to, from, packet } => {
                let to = to as usize;
                if self.hosts[to].starved && !event.lagged && self.hosts[to].up {
                    let lag = self
                        .rng
                        .gen_range(self.net.starve_lag.0..=self.net.starve_lag.1);
                    self.push(self.now + lag, event.what, true);
                    return;
                }
                let bytes = self.packets[packet as usize].take();
                self.free_packets.push(packet);
                let Some(bytes) = bytes else {
                    return;
                };
                if !self.hosts[to].up {
                    return;
                }
                let from = id_of(from as usize).addr();
                if let Some(trace) = self.trace.as_mut().filter(|t| t.node == to) {
                    trace
                        .entries
                        .push((self.now, Some((from, Rc::clone(&bytes)))));
                }
                self.with(to, |node, now| node.handle_packet(from, &bytes, now));
            }
            What::Tick { node } => {
                let i = node as usize;
                if self.hosts[i].scheduled != Some(event.at) && !event.lagged {
                    return; // superseded
                }
                if !self.hosts[i].up {
                    self.hosts[i].scheduled = None;
                    return;
                }
                if self.hosts[i].starved && !event.lagged {
                    let lag = self
                        .rng
                        .gen_range(self.net.starve_lag.0..=self.net.starve_lag.1);
                    self.push(self.now + lag, event.what, true);
                    return;
                }
                self.hosts[i].scheduled = None;
                if let Some(trace) = self.trace.as_mut().filter(|t| t.node == i) {
                    trace.entries.push((self.now, None));
                }
                self.with(i, |node, now| node.tick(now));
            }
        }
    }

    /// Runs for `duration` of simulated time.
    pub fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        self.advance_to(end);
    }

    /// Runs until `done` holds (checked every `step`) or `limit` passes;
    /// returns how long it took.
    pub fn run_until(
        &mut self,
        limit: Duration,
        step: Duration,
        mut done: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        loop {
            if done(self) {
                return Some(self.now - start);
            }
            if self.now - start >= limit {
                return None;
            }
            self.run_for(step);
        }
    }

    /// Starts recording what node `i` handles (a copy of its state now, then
    /// every datagram and tick).
    pub fn start_trace(&mut self, i: usize) {
        self.trace = Some(Trace {
            node: i,
            start: self.hosts[i].node.clone(),
            entries: Vec::new(),
        });
    }

    /// Replays the trace on fresh copies of the node as it was, alone (so
    /// its own state is all that is in the caches, as on a real host), and
    /// returns the least time of `rounds` replays: the node's CPU for the
    /// traced interval, free of the simulation's other nodes.
    pub fn cpu_of_trace(&mut self, rounds: usize) -> Option<Duration> {
        let trace = self.trace.take()?;
        let origin = self.base + self.hosts[trace.node].skew;
        let mut best: Option<Duration> = None;
        for _ in 0..rounds {
            let mut node = trace.start.clone();
            let started = Instant::now();
            for (at, entry) in &trace.entries {
                let now = origin + *at;
                match entry {
                    Some((from, bytes)) => node.handle_packet(*from, bytes, now),
                    None => node.tick(now),
                }
                node.drain_actions();
                node.drain_events();
            }
            let took = started.elapsed();
            best = Some(best.map_or(took, |b| b.min(took)));
        }
        best
    }

    /// Indices of the nodes up and joined.
    pub fn live(&self) -> Vec<usize> {
        (0..self.hosts.len())
            .filter(|&i| self.hosts[i].up && self.hosts[i].node.is_joined())
            .collect()
    }

    /// Whether node `i` lists node `x` as alive or suspect.
    pub fn lists(&self, i: usize, x: usize) -> bool {
        self.hosts[i]
            .node
            .member(id_of(x))
            .is_some_and(|m| matches!(m.state, State::Alive | State::Suspect))
    }

    /// Every live node lists exactly the live nodes.
    #[cfg_attr(not(test), allow(dead_code))] // used by the tests only
    pub fn converged(&self) -> bool {
        let live = self.live();
        let expected: Vec<NodeId> = live.iter().map(|&i| id_of(i)).collect();
        live.iter()
            .all(|&i| self.hosts[i].node.members() == expected)
    }

    /// Fraction of live nodes (other than `x`) that no longer list `x`.
    pub fn removed_by(&self, x: usize) -> f64 {
        let live: Vec<usize> = self.live().into_iter().filter(|&i| i != x).collect();
        let removed = live.iter().filter(|&&i| !self.lists(i, x)).count();
        removed as f64 / live.len().max(1) as f64
    }

    /// Fraction of live nodes that read `value` under `author`'s `key`.
    pub fn seen_by(&self, author: usize, key: &[u8], value: &[u8]) -> f64 {
        let live = self.live();
        let seen = live
            .iter()
            .filter(|&&i| self.hosts[i].node.get(id_of(author), key) == Some(value))
            .count();
        seen as f64 / live.len().max(1) as f64
    }

    /// Sum of a counter over all nodes.
    pub fn total(&self, counter: impl Fn(&Stats) -> u64) -> u64 {
        self.hosts.iter().map(|h| counter(&h.node.stats())).sum()
    }

    /// Events of every node matching `pick`, with the node's index.
    pub fn events(&self, pick: impl Fn(&Event) -> bool) -> Vec<(usize, Duration, Event)> {
        let mut all = Vec::new();
        for (i, host) in self.hosts.iter().enumerate() {
            for (at, event) in &host.events {
                if pick(event) {
                    all.push((i, *at, event.clone()));
                }
            }
        }
        all
    }

    /// Replays every captured datagram to every live node other than its
    /// sender, from the sender's address.
    pub fn replay_captured(&mut self) -> Replayed {
        let captured = std::mem::take(&mut self.captured);
        let live = self.live();
        let mut outcome = Replayed::default();
        for capture in &captured {
            for &to in &live {
                if to == capture.from {
                    continue;
                }
                let before = self.hosts[to].node.stats();
                let from = id_of(capture.from).addr();
                let bytes = Rc::clone(&capture.packet);
                self.with(to, |node, now| node.handle_packet(from, &bytes, now));
                let after = self.hosts[to].node.stats();
                let dropped = after.dropped() - before.dropped();
                let received = after.packets_in - before.packets_in;
                outcome.replayed += received;
                let accepted = received - dropped;
                outcome.accepted += accepted;
                if to == capture.to && !capture.delivered {
                    outcome.first_deliveries += accepted;
                }
            }
        }
        self.captured = captured;
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{Codec, Destination, Kind, Message};
    use crate::protocol::Config;

    const PERIOD: Duration = Duration::from_secs(1);
    const STEP: Duration = Duration::from_millis(50);

    fn lossy(loss: f64) -> Network {
        Network {
            loss,
            ..Network::default()
        }
    }

    /// `n` nodes joined through node 0 and converged.
    fn converged_cluster(n: usize, config: Config, loss: f64, seed: u64) -> Sim {
        let mut sim = Sim::new(n, config, lossy(loss), seed);
        sim.join_all(Duration::from_millis(10));
        let took = sim
            .run_until(30 * PERIOD, STEP, Sim::converged)
            .unwrap_or_else(|| panic!("seed {seed}: {n} nodes did not converge in 30 periods"));
        eprintln!("seed {seed}: {n} nodes converged {took:?} after the last join");
        sim
    }

    fn failed(sim: &Sim) -> Vec<(usize, Duration, Event)> {
        sim.events(|e| matches!(e, Event::Failed(_)))
    }

    #[test]
    fn nodes_joining_through_one_seed_converge_and_nobody_is_lost_at_10_percent_loss() {
        for seed in [1, 2] {
            let mut sim = converged_cluster(32, config(), 0.1, seed);
            sim.run_for(120 * PERIOD);
            assert!(sim.converged(), "seed {seed}: a live node was lost");
            assert_eq!(failed(&sim), [], "seed {seed}: false failures");
            let joined = sim.events(|e| matches!(e, Event::Joined(_)));
            // Every node heard of every other joining at least once.
            assert!(joined.len() >= 32 * 31, "{} joins", joined.len());
            assert!(sim.largest <= config().max_packet);
        }
    }

    #[test]
    fn a_crashed_node_is_removed_from_every_view_and_stays_out() {
        for seed in [3, 4] {
            let mut sim = converged_cluster(32, config(), 0.1, seed);
            sim.crash(7);
            let took = sim
                .run_until(10 * PERIOD, STEP, |s| s.removed_by(7) >= 1.0)
                .unwrap_or_else(|| panic!("seed {seed}: the crash was not noticed everywhere"));
            eprintln!("seed {seed}: crash removed from every view after {took:?}");
            sim.run_for(30 * PERIOD);
            assert_eq!(sim.removed_by(7), 1.0, "seed {seed}: the dead came back");
            let failures = failed(&sim);
            assert!(failures
                .iter()
                .all(|(_, _, e)| *e == Event::Failed(id_of(7))));
            assert!(failures.len() >= 31, "every view reported the failure");
        }
    }

    #[test]
    fn partitions_of_any_length_heal_within_two_periods() {
        for (seed, periods) in [(5, 10), (6, 30), (7, 600)] {
            let mut sim = converged_cluster(12, config(), 0.1, seed);
            sim.partition(|i| (i % 2) as u8);
            sim.run_for(periods * PERIOD);
            assert!(!sim.converged(), "the halves parted");
            sim.heal();
            let took = sim
                .run_until(2 * PERIOD, STEP, Sim::converged)
                .unwrap_or_else(|| panic!("a partition of {periods} periods did not heal"));
            eprintln!("partition of {periods} periods healed after {took:?}");
        }
    }

    #[test]
    fn updates_and_deletes_reach_everyone_within_3_periods_at_10_percent_loss() {
        let mut sim = converged_cluster(64, config(), 0.1, 8);
        let value = vec![0x5a; 1024];
        sim.with(9, |node, now| node.set(b"blob", value.clone(), now))
            .expect("1 KiB fits");
        let took = sim
            .run_until(3 * PERIOD, STEP, |s| s.seen_by(9, b"blob", &value) >= 1.0)
            .expect("everyone has the update within 3 periods");
        eprintln!("1 KiB update everywhere after {took:?}");
        sim.with(9, |node, now| node.delete(b"blob", now))
            .expect("delete")
            .expect("it was set");
        let took = sim
            .run_until(3 * PERIOD, STEP, |s| {
                s.live()
                    .iter()
                    .all(|&i| s.hosts[i].node.get(id_of(9), b"blob").is_none())
            })
            .expect("everyone has the delete within 3 periods");
        eprintln!("delete everywhere after {took:?}");
        let changed = sim.events(|e| matches!(e, Event::Changed { .. }));
        assert!(
            changed.len() >= 2 * 63,
            "set and delete events: {}",
            changed.len()
        );

        // Cluster-wide metadata on top: the later publish wins everywhere.
        sim.with(3, |node, now| node.publish(b"v1".to_vec(), now))
            .expect("publish");
        sim.run_for(PERIOD);
        let version = sim
            .with(40, |node, now| node.publish(b"v2".to_vec(), now))
            .expect("publish");
        sim.run_until(3 * PERIOD, STEP, |s| {
            s.live()
                .iter()
                .all(|&i| s.hosts[i].node.read().data == b"v2")
        })
        .expect("everyone reads v2");
        assert!(sim
            .live()
            .iter()
            .all(|&i| sim.hosts[i].node.read().version == version));
        assert!(sim.largest <= config().max_packet);
    }

    #[test]
    fn replayed_packets_are_refused_even_after_the_dead_are_forgotten() {
        let mut config = config();
        config.dead_retention = 20 * PERIOD;
        let mut sim = converged_cluster(16, config, 0.0, 9);
        sim.with(2, |node, now| node.set(b"k", b"old".to_vec(), now))
            .expect("set");
        sim.capture_every = 3;
        sim.run_for(10 * PERIOD);
        sim.capture_every = 0;
        sim.crash(2);
        sim.crash(5);
        sim.run_for(60 * PERIOD);
        // Forgotten: no record of the dead is left anywhere.
        for i in sim.live() {
            assert!(sim.hosts[i].node.member(id_of(2)).is_none());
            assert!(sim.hosts[i].node.get(id_of(2), b"k").is_none());
        }
        assert!(sim.captured.len() > 100, "{} captured", sim.captured.len());
        let outcome = sim.replay_captured();
        // Without loss, every copy was delivered once already.
        assert_eq!(outcome.first_deliveries, 0);
        assert_eq!(
            outcome.accepted, 0,
            "replayed packets accepted: {outcome:?}"
        );
        sim.run_for(10 * PERIOD);
        assert_eq!(sim.removed_by(2), 1.0, "a replay brought node 2 back");
        assert_eq!(sim.removed_by(5), 1.0, "a replay brought node 5 back");
        assert!(sim.converged());
    }

    #[test]
    fn a_restarted_node_is_a_new_generation_everywhere() {
        let mut sim = converged_cluster(12, config(), 0.0, 10);
        sim.with(4, |node, now| node.set(b"old", b"1".to_vec(), now))
            .expect("set");
        sim.run_for(3 * PERIOD);
        assert_eq!(sim.seen_by(4, b"old", b"1"), 1.0);
        sim.crash(4);
        sim.run_for(15 * PERIOD);
        assert_eq!(sim.removed_by(4), 1.0);
        sim.restart(4, &[0]);
        sim.with(4, |node, now| node.set(b"new", b"2".to_vec(), now))
            .expect("set");
        sim.run_until(5 * PERIOD, STEP, |s| {
            s.converged() && s.seen_by(4, b"new", b"2") >= 1.0 && s.seen_by(4, b"old", b"1") == 0.0
        })
        .expect("the new run is listed, its state replaced the old one");
        let restarted = sim.events(|e| *e == Event::Restarted(id_of(4)));
        assert!(restarted.len() >= 11, "{} saw the restart", restarted.len());
    }

    #[test]
    fn a_node_that_leaves_is_left_everywhere_and_never_failed() {
        let mut sim = converged_cluster(16, config(), 0.05, 11);
        sim.with(6, |node, now| node.leave(now));
        sim.run_for(PERIOD);
        sim.crash(6); // the process exits after its leave went out
        sim.run_until(3 * PERIOD, STEP, |s| s.removed_by(6) >= 1.0)
            .expect("everyone saw the leave");
        sim.run_for(20 * PERIOD);
        assert!(failed(&sim).is_empty(), "{:?}", failed(&sim));
        let left = sim.events(|e| *e == Event::Left(id_of(6)));
        assert_eq!(left.len(), 15);
    }

    #[test]
    fn keys_rotate_without_a_refused_packet() {
        let mut sim = converged_cluster(16, config(), 0.0, 12);
        let all: Vec<usize> = (0..16).collect();
        // Install everywhere, then use everywhere, then remove everywhere:
        // one node at a time, as an operator would.
        for &i in &all {
            sim.node(i).keyring_mut().install(2, b"the next key");
            sim.run_for(PERIOD / 4);
        }
        for &i in &all {
            sim.node(i).keyring_mut().use_key(2).expect("installed");
            sim.run_for(PERIOD / 4);
        }
        for &i in &all {
            sim.node(i).keyring_mut().remove(1).expect("not primary");
            sim.run_for(PERIOD / 4);
        }
        sim.run_for(5 * PERIOD);
        assert_eq!(sim.total(|s| s.dropped()), 0);
        assert!(sim.converged());
        assert!(failed(&sim).is_empty());
        // A packet under the retired key is refused now.
        let old = Codec::new(Keyring::new(1, b"simulated cluster key"), 1400, false);
        let mut message = Message::new(Kind::Gossip);
        message.to.push(Destination {
            node: id_of(0),
            incarnation: 0,
        });
        let packet = old
            .encode(id_of(3), u64::MAX / 2, &message)
            .expect("encode");
        sim.with(0, |node, now| {
            node.handle_packet(id_of(3).addr(), &packet, now)
        });
        assert_eq!(sim.hosts[0].node.stats().dropped_unknown_key, 1);
    }

    #[test]
    fn a_node_behind_collected_tombstones_gets_the_state_anew() {
        let mut config = config();
        config.tombstone_grace = 8 * PERIOD;
        let mut sim = converged_cluster(8, config, 0.0, 13);
        for key in [&b"a"[..], b"b", b"c"] {
            sim.with(1, |node, now| node.set(key, b"1".to_vec(), now))
                .expect("set");
        }
        sim.run_for(3 * PERIOD);
        assert_eq!(sim.seen_by(1, b"a", b"1"), 1.0);
        // Node 7 is cut off while node 1 deletes a key and overwrites
        // another, and the tombstone is collected.
        sim.partition(|i| u8::from(i == 7));
        sim.with(1, |node, now| node.delete(b"a", now))
            .expect("delete");
        sim.with(1, |node, now| node.set(b"b", b"2".to_vec(), now))
            .expect("set");
        sim.run_for(40 * PERIOD);
        sim.heal();
        sim.run_until(5 * PERIOD, STEP, |s| {
            let node = &s.hosts[7].node;
            node.get(id_of(1), b"a").is_none()
                && node.get(id_of(1), b"b") == Some(b"2")
                && node.get(id_of(1), b"c") == Some(b"1")
        })
        .expect("node 7 has node 1's state as it is now");
    }

    #[test]
    fn forged_spoofed_malformed_and_oversized_packets_are_dropped_and_counted() {
        let mut sim = converged_cluster(4, config(), 0.0, 14);
        let from = id_of(1).addr();
        let genuine = Codec::new(Keyring::new(1, b"simulated cluster key"), 1400, false);
        let forged = Codec::new(Keyring::new(1, b"a guessed key"), 1400, false);
        let mut message = Message::new(Kind::Gossip);
        message.to.push(Destination {
            node: id_of(0),
            incarnation: 0,
        });
        let seq = u64::MAX / 4;
        let good = genuine.encode(id_of(1), seq, &message).expect("encode");
        let mut elsewhere = message.clone();
        elsewhere.to[0].node = id_of(2);
        let mut oversized = good.clone();
        oversized.resize(5000, 0);
        let mut flipped = good.clone();
        flipped[22] ^= 1;
        let cases: Vec<(Vec<u8>, SocketAddr)> = vec![
            (b"not gossip at all".to_vec(), from),
            (flipped, from),
            (
                forged.encode(id_of(1), seq, &message).expect("encode"),
                from,
            ),
            // Sealed as node 1, arriving from node 2's address.
            (good.clone(), id_of(2).addr()),
            (oversized, from),
            // Sealed for node 2, replayed to node 0.
            (
                genuine
                    .encode(id_of(1), seq - 1, &elsewhere)
                    .expect("encode"),
                from,
            ),
        ];
        let before = sim.hosts[0].node.stats();
        for (bytes, from) in &cases {
            sim.with(0, |node, now| node.handle_packet(*from, bytes, now));
        }
        // The genuine one once, then again: the replay is refused.
        sim.with(0, |node, now| node.handle_packet(from, &good, now));
        sim.with(0, |node, now| node.handle_packet(from, &good, now));
        let after = sim.hosts[0].node.stats();
        assert_eq!(after.dropped_not_gossip - before.dropped_not_gossip, 1);
        assert_eq!(after.dropped_bad_tag - before.dropped_bad_tag, 2);
        assert_eq!(after.dropped_spoofed - before.dropped_spoofed, 1);
        assert_eq!(after.dropped_oversized - before.dropped_oversized, 1);
        assert_eq!(after.dropped_replayed - before.dropped_replayed, 1);
        assert_eq!(after.dropped_misaddressed - before.dropped_misaddressed, 1);
        assert_eq!(after.dropped() - before.dropped(), 7);
    }

    #[test]
    fn slow_nodes_are_not_removed_at_10_percent_loss() {
        let mut sim = converged_cluster(50, config(), 0.1, 15);
        sim.hosts[10].starved = true;
        sim.hosts[20].starved = true;
        sim.run_for(600 * PERIOD);
        assert_eq!(failed(&sim), [], "false failures");
        assert!(sim.converged());
    }

    #[test]
    fn per_node_traffic_does_not_grow_with_the_cluster() {
        let mut per_node = Vec::new();
        for n in [100, 400] {
            let mut sim = Sim::new(n, config(), Network::default(), 16);
            sim.record_events = false;
            sim.join_all(Duration::from_millis(2));
            sim.run_until(60 * PERIOD, STEP, Sim::converged)
                .expect("converged");
            // Until the join rumours have run out.
            sim.run_until(60 * PERIOD, PERIOD, |s| {
                s.hosts.iter().all(|h| h.node.queued() == 0)
            })
            .expect("queues drained");
            let (d0, b0) = (sim.total(|s| s.datagrams_out), sim.total(|s| s.bytes_out));
            sim.run_for(20 * PERIOD);
            let datagrams = (sim.total(|s| s.datagrams_out) - d0) as f64 / (20 * n) as f64;
            let bytes = (sim.total(|s| s.bytes_out) - b0) as f64 / (20 * n) as f64;
            eprintln!("{n} nodes: {datagrams:.2} datagrams, {bytes:.0} bytes per node per period");
            per_node.push((datagrams, bytes));
        }
        let (small, large) = (per_node[0], per_node[1]);
        assert!((large.0 / small.0 - 1.0).abs() < 0.2, "{per_node:?}");
        assert!((large.1 / small.1 - 1.0).abs() < 0.2, "{per_node:?}");
    }
}
