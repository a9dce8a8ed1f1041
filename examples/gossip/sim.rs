//! Deterministic simulation of a cluster: the protocol core over a simulated
//! network with loss, delay, crashed and cut-off nodes, driven by seeded
//! RNGs and a simulated clock. A run is reproducible from its seed.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::codec::{self, Body, Codec, MessageId, NodeId, Packet};
use crate::protocol::{Action, Config, Node};

const STEP: Duration = Duration::from_millis(5);
const CYCLE: Duration = Duration::from_secs(1);
const KEY: &[u8] = b"simulated cluster key";

fn id_of(i: usize) -> NodeId {
    NodeId(SocketAddrV4::new(
        Ipv4Addr::new(10, 0, (i / 250) as u8, (i % 250 + 1) as u8),
        7000,
    ))
}

/// Something in flight.
enum Delivery {
    Datagram {
        to: usize,
        bytes: Vec<u8>,
    },
    /// A TCP fetch reaching the peer that serves it.
    FetchRequest {
        requester: usize,
        server: usize,
        request: Vec<u8>,
        version: codec::Version,
    },
    /// Its answer (None: connection refused or no answer).
    FetchReply {
        requester: usize,
        reply: Option<Vec<u8>>,
        version: codec::Version,
    },
}

struct SimNode {
    node: Node,
    up: bool,
    /// Cut off: every datagram to or from it is lost.
    isolated: bool,
    /// Offset of this node's clock: nodes' clocks differ by hours.
    skew: Duration,
}

struct Sim {
    base: Instant,
    now: Duration,
    nodes: Vec<SimNode>,
    index: HashMap<SocketAddr, usize>,
    queue: BinaryHeap<Reverse<(Duration, u64)>>,
    in_flight: HashMap<u64, Delivery>,
    next_event: u64,
    rng: SmallRng,
    loss: f64,
    delay: (Duration, Duration),
    codec: Codec,
    /// Rumour copies sent, per (sender, rumour id): each node may pass a
    /// rumour on once.
    rumour_sends: HashMap<(usize, MessageId), u32>,
}

impl Sim {
    /// `n` nodes, none joined yet, with clocks skewed by up to two hours.
    fn new(n: usize, config: Config, seed: u64, loss: f64) -> Sim {
        let base = Instant::now();
        let mut rng = SmallRng::seed_from_u64(seed);
        let nodes: Vec<SimNode> = (0..n)
            .map(|i| {
                let skew = Duration::from_millis(rng.gen_range(0..7_200_000));
                let node_rng = SmallRng::seed_from_u64(rng.gen());
                SimNode {
                    node: Node::new(id_of(i), config.clone(), node_rng, 1, base + skew),
                    up: true,
                    isolated: false,
                    skew,
                }
            })
            .collect();
        Sim {
            base,
            now: Duration::ZERO,
            index: (0..n).map(|i| (id_of(i).addr(), i)).collect(),
            nodes,
            queue: BinaryHeap::new(),
            in_flight: HashMap::new(),
            next_event: 0,
            rng,
            loss,
            delay: (Duration::from_millis(1), Duration::from_millis(30)),
            codec: Codec::new(&config.key, usize::MAX),
            rumour_sends: HashMap::new(),
        }
    }

    /// Node `i`'s local clock.
    fn clock(&self, i: usize) -> Instant {
        self.base + self.nodes[i].skew + self.now
    }

    fn node(&mut self, i: usize) -> &mut Node {
        &mut self.nodes[i].node
    }

    fn join(&mut self, i: usize, seeds: &[usize]) {
        let now = self.clock(i);
        let seeds: Vec<NodeId> = seeds.iter().map(|&s| id_of(s)).collect();
        self.node(i).set(seeds, now);
        self.node(i).join(now);
        self.collect(i);
    }

    fn publish(&mut self, i: usize, data: &[u8]) -> codec::Version {
        let now = self.clock(i);
        let version = self.node(i).publish(data.to_vec(), now).expect("publish");
        self.collect(i);
        version
    }

    /// Sets node `i`'s clock offset; only before it joins (a monotonic
    /// clock does not jump).
    fn set_skew(&mut self, i: usize, skew: Duration) {
        assert!(!self.nodes[i].node.is_joined());
        let config = self.nodes[i].node.config().clone();
        let rng = SmallRng::seed_from_u64(self.rng.gen());
        self.nodes[i] = SimNode {
            node: Node::new(id_of(i), config, rng, 1, self.base + skew + self.now),
            up: true,
            isolated: false,
            skew,
        };
    }

    fn crash(&mut self, i: usize) {
        self.nodes[i].up = false;
    }

    fn schedule(&mut self, after: Duration, delivery: Delivery) {
        let id = self.next_event;
        self.next_event += 1;
        self.queue.push(Reverse((self.now + after, id)));
        self.in_flight.insert(id, delivery);
    }

    fn random_delay(&mut self) -> Duration {
        self.rng.gen_range(self.delay.0..=self.delay.1)
    }

    /// Takes node `i`'s actions onto the network.
    fn collect(&mut self, i: usize) {
        for action in self.nodes[i].node.drain_actions() {
            match action {
                Action::Send { to, packet } => {
                    let max = self.nodes[i].node.config().max_packet;
                    assert!(
                        packet.len() <= max,
                        "node {i} sent {} > {max} bytes",
                        packet.len()
                    );
                    if let Ok(Packet {
                        body: Body::Rumour(rumour),
                        ..
                    }) = self.codec.decode(&packet)
                    {
                        *self.rumour_sends.entry((i, rumour.id)).or_default() += 1;
                    }
                    for addr in to {
                        let Some(&dest) = self.index.get(&addr) else {
                            continue;
                        };
                        let lost = self.nodes[i].isolated
                            || self.nodes[dest].isolated
                            || self.rng.gen_bool(self.loss);
                        if !lost {
                            let after = self.random_delay();
                            self.schedule(
                                after,
                                Delivery::Datagram {
                                    to: dest,
                                    bytes: packet.clone(),
                                },
                            );
                        }
                    }
                }
                Action::Fetch {
                    from,
                    version,
                    request,
                } => {
                    let after = self.random_delay();
                    let delivery = match self.index.get(&from.addr()) {
                        Some(&server) => Delivery::FetchRequest {
                            requester: i,
                            server,
                            request,
                            version,
                        },
                        None => Delivery::FetchReply {
                            requester: i,
                            reply: None,
                            version,
                        },
                    };
                    self.schedule(after, delivery);
                }
            }
        }
    }

    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::Datagram { to, bytes } => {
                if self.nodes[to].up && !self.nodes[to].isolated {
                    let now = self.clock(to);
                    self.node(to).handle_packet(&bytes, now);
                    self.collect(to);
                }
            }
            Delivery::FetchRequest {
                requester,
                server,
                request,
                version,
            } => {
                // TCP: no loss, but a crashed or cut-off server does not answer.
                let reply = if self.nodes[server].up && !self.nodes[server].isolated {
                    self.node(server).answer_fetch(&request)
                } else {
                    None
                };
                let after = self.random_delay();
                self.schedule(
                    after,
                    Delivery::FetchReply {
                        requester,
                        reply,
                        version,
                    },
                );
            }
            Delivery::FetchReply {
                requester,
                reply,
                version,
            } => {
                if self.nodes[requester].up {
                    match reply {
                        Some(reply) => self.node(requester).handle_fetched(&reply),
                        None => self.node(requester).fetch_failed(version),
                    }
                    self.collect(requester);
                }
            }
        }
    }

    fn step(&mut self) {
        self.now += STEP;
        while let Some(&Reverse((at, id))) = self.queue.peek() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            if let Some(delivery) = self.in_flight.remove(&id) {
                self.deliver(delivery);
            }
        }
        for i in 0..self.nodes.len() {
            if self.nodes[i].up {
                let now = self.clock(i);
                self.node(i).tick(now);
                self.collect(i);
            }
        }
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now + duration;
        while self.now < end {
            self.step();
        }
    }

    /// Runs until `done` holds (checked every step) or `limit` passes;
    /// returns how long it took.
    fn run_until(&mut self, limit: Duration, done: impl Fn(&Sim) -> bool) -> Option<Duration> {
        let start = self.now;
        while self.now - start <= limit {
            if done(self) {
                return Some(self.now - start);
            }
            self.step();
        }
        None
    }

    fn live(&self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].up && self.nodes[i].node.is_joined())
            .collect()
    }

    /// Every live joined node lists exactly the live joined nodes.
    fn membership_converged(&self) -> bool {
        let live = self.live();
        let expected: Vec<NodeId> = live.iter().map(|&i| id_of(i)).collect();
        live.iter()
            .all(|&i| self.nodes[i].node.members() == expected)
    }

    /// Every live node reads `data`.
    fn everyone_reads(&self, data: &[u8]) -> bool {
        self.live()
            .iter()
            .all(|&i| self.nodes[i].node.read().data == data)
    }

    fn anyone_lists(&self, node: usize) -> bool {
        self.live()
            .iter()
            .any(|&i| self.nodes[i].node.members().contains(&id_of(node)))
    }

    fn total(&self, counter: impl Fn(&crate::protocol::Stats) -> u64) -> u64 {
        self.nodes.iter().map(|n| counter(&n.node.stats())).sum()
    }
}

fn config() -> Config {
    Config::new(KEY).with_cycle(CYCLE)
}

/// A cluster of `n` nodes all joined at time 0 through seed node 0.
fn cluster(n: usize, seed: u64, loss: f64) -> Sim {
    let mut sim = Sim::new(n, config(), seed, loss);
    for i in 0..n {
        sim.join(i, if i == 0 { &[] } else { &[0] });
    }
    sim
}

#[test]
fn twenty_four_nodes_converge_with_20_percent_loss() {
    for seed in [1, 2, 3] {
        let mut sim = cluster(24, seed, 0.2);
        let took = sim
            .run_until(10 * CYCLE, Sim::membership_converged)
            .unwrap_or_else(|| panic!("seed {seed}: membership did not converge in 10 cycles"));
        eprintln!("seed {seed}: 24 nodes know each other after {took:?}");

        // With 20% loss nobody alive is ever evicted (timeout 3 cycles + 2 s).
        for _ in 0..20 {
            sim.run_for(CYCLE);
            assert!(
                sim.membership_converged(),
                "seed {seed}: a live node was evicted"
            );
        }
        assert_eq!(sim.total(|s| s.evictions), 0);

        let version = sim.publish(7, b"config v1");
        let took = sim
            .run_until(5 * CYCLE, |s| s.everyone_reads(b"config v1"))
            .unwrap_or_else(|| panic!("seed {seed}: update did not reach everyone in 5 cycles"));
        eprintln!("seed {seed}: update {version} everywhere after {took:?}");
    }
}

#[test]
fn late_joiner_and_a_node_that_missed_the_rumour_catch_up_by_anti_entropy() {
    let mut sim = Sim::new(12, config(), 7, 0.0);
    for i in 0..11 {
        sim.join(i, if i == 0 { &[] } else { &[0] });
    }
    sim.run_until(10 * CYCLE, Sim::membership_converged)
        .expect("first 11 converge");

    // Node 4 is cut off while node 2 publishes: it misses the rumour.
    sim.nodes[4].isolated = true;
    sim.publish(2, b"v1");
    sim.run_for(2 * CYCLE);
    assert_eq!(sim.nodes[4].node.read().data, b"");
    assert!((0..11)
        .filter(|&i| i != 4)
        .all(|i| sim.nodes[i].node.read().data == b"v1"));
    sim.nodes[4].isolated = false;
    let took = sim
        .run_until(4 * CYCLE, |s| s.nodes[4].node.read().data == b"v1")
        .expect("node 4 catches up after the cut");
    eprintln!("node that missed the rumour caught up after {took:?}");

    // Node 11 joins late through a single seed that is not node 0.
    sim.join(11, &[5]);
    let took = sim
        .run_until(5 * CYCLE, |s| {
            s.membership_converged() && s.nodes[11].node.read().data == b"v1"
        })
        .expect("late joiner knows everyone, everyone knows it, it has the metadata");
    eprintln!("late joiner converged after {took:?}");
}

#[test]
fn crashed_node_is_evicted_by_everyone_once_and_stays_out() {
    let mut sim = cluster(10, 11, 0.05);
    sim.run_until(10 * CYCLE, Sim::membership_converged)
        .expect("converge");
    sim.run_for(3 * CYCLE);
    let timeout = config().timeout;

    sim.crash(6);
    // Its last heartbeat left at most a cycle (+10% jitter) before the crash.
    sim.run_for(timeout - CYCLE.mul_f64(1.2));
    assert!(
        sim.live()
            .iter()
            .all(|&i| sim.nodes[i].node.members().contains(&id_of(6))),
        "evicted before the timeout"
    );
    let took = sim
        .run_until(3 * CYCLE, |s| !s.anyone_lists(6))
        .expect("evicted by everyone within timeout + 2 cycles");
    eprintln!(
        "crashed node evicted by all {:?} after the crash (timeout {timeout:?})",
        timeout - CYCLE.mul_f64(1.2) + took
    );
    assert!(sim.membership_converged());

    // Stale reports of it (syncs from slower nodes) do not bring it back.
    for _ in 0..(3 * timeout.as_secs()) {
        sim.run_for(CYCLE);
        assert!(!sim.anyone_lists(6), "crashed node came back");
    }
    for i in sim.live() {
        assert_eq!(sim.nodes[i].node.stats().evictions, 1, "node {i}");
    }
}

#[test]
fn rumours_are_passed_on_at_most_once_per_node_and_duplicates_are_dropped() {
    let mut sim = cluster(20, 5, 0.0);
    sim.run_until(10 * CYCLE, Sim::membership_converged)
        .expect("converge");
    sim.run_for(20 * CYCLE);
    sim.publish(3, b"x");
    sim.run_for(2 * CYCLE);

    let mut worst = 0;
    let mut rumours = HashSet::new();
    for (&(node, id), &copies) in &sim.rumour_sends {
        worst = worst.max(copies);
        assert_eq!(copies, 1, "node {node} sent rumour {id:?} {copies} times");
        rumours.insert(id);
    }
    let duplicates = sim.total(|s| s.duplicates);
    let forwarded = sim.total(|s| s.rumours_forwarded);
    eprintln!(
        "{} rumours, {forwarded} forwards, {duplicates} duplicate copies dropped",
        rumours.len()
    );
    // Paths cross (fan-out 3 among 20): duplicates happen, and are dropped.
    assert!(duplicates > 0);
    // Each rumour is sent at most once per node, to at most fan-out peers.
    let per_rumour = sim.rumour_sends.len() as f64 / rumours.len() as f64;
    assert!(per_rumour <= 20.0);

    // The same datagram delivered twice (a replay, or two paths) is dropped
    // the second time and passed on by nobody.
    let now = sim.clock(0);
    let node = sim.node(0);
    node.publish(b"y".to_vec(), now).unwrap();
    let Some(Action::Send { packet, .. }) = node.drain_actions().into_iter().next() else {
        panic!("publish sends a rumour");
    };
    let receiver = sim.node(9);
    let before = receiver.stats();
    receiver.handle_packet(&packet, now);
    let first = receiver.drain_actions();
    receiver.handle_packet(&packet, now);
    let second = receiver.drain_actions();
    assert!(!first.is_empty(), "first copy is passed on");
    assert!(second.is_empty(), "second copy is not");
    assert_eq!(receiver.stats().duplicates, before.duplicates + 1);
}

#[test]
fn later_update_wins_whatever_the_clocks_and_concurrent_ones_converge() {
    let mut sim = Sim::new(8, config(), 13, 0.1);
    // Node 0's clock runs two hours ahead of node 1's.
    sim.set_skew(0, Duration::from_secs(7200));
    sim.set_skew(1, Duration::ZERO);
    for i in 0..8 {
        sim.join(i, if i == 0 { &[] } else { &[0] });
    }
    sim.run_until(10 * CYCLE, Sim::membership_converged)
        .expect("converge");

    let wall_a = sim.nodes[0].skew + sim.now;
    let a = sim.publish(0, b"a");
    sim.run_until(5 * CYCLE, |s| s.everyone_reads(b"a"))
        .expect("a everywhere");
    let wall_b = sim.nodes[1].skew + sim.now;
    let b = sim.publish(1, b"b");
    // Wall-clock last-writer-wins (pekonode) would keep "a" here.
    assert!(wall_a > wall_b);
    assert!(b > a);
    sim.run_until(5 * CYCLE, |s| s.everyone_reads(b"b"))
        .expect("b, published after a was seen, wins everywhere");
    sim.run_for(5 * CYCLE);
    assert!(sim.everyone_reads(b"b"), "a came back");

    // Two updates at the same moment: everyone settles on the same one, the
    // higher version (equal counters: the higher node id).
    let c = sim.publish(2, b"c");
    let d = sim.publish(5, b"d");
    assert_eq!(c.counter, d.counter);
    let winner: &[u8] = if c > d { b"c" } else { b"d" };
    if sim
        .run_until(5 * CYCLE, |s| s.everyone_reads(winner))
        .is_none()
    {
        for i in sim.live() {
            eprintln!(
                "{i}: {:?} {:?}",
                sim.nodes[i].node.read(),
                sim.nodes[i].node
            );
        }
        panic!("concurrent updates converge: c {c} d {d}");
    }
    sim.run_for(5 * CYCLE);
    assert!(sim.everyone_reads(winner));
    for i in sim.live() {
        assert_eq!(sim.nodes[i].node.read().version, c.max(d));
    }
}

#[test]
fn forged_foreign_and_malformed_packets_are_dropped_and_counted() {
    let mut sim = cluster(6, 17, 0.0);
    // An intruder with the wrong key, which knows the members' addresses.
    let mut intruder_config = config();
    intruder_config.key = b"guessed key".to_vec();
    let intruder_id = id_of(6);
    let now = sim.clock(0);
    let mut intruder = Node::new(
        intruder_id,
        intruder_config,
        SmallRng::seed_from_u64(1),
        1,
        now,
    );
    intruder.set((0..6).map(id_of), now);
    intruder.join(now);
    sim.run_until(10 * CYCLE, Sim::membership_converged)
        .expect("converge");

    let mut forged = 0;
    for _ in 0..10 {
        let now = sim.clock(0);
        intruder.publish(b"evil".to_vec(), now).unwrap();
        intruder.tick(now);
        for action in intruder.drain_actions() {
            if let Action::Send { to, packet } = action {
                for addr in to {
                    let i = sim.index[&addr];
                    let now = sim.clock(i);
                    sim.node(i).handle_packet(&packet, now);
                    forged += 1;
                }
            }
        }
        sim.run_for(CYCLE);
    }
    assert_eq!(sim.total(|s| s.dropped_bad_mac), forged);
    assert!(!sim.anyone_lists(6), "intruder was admitted");
    assert!(sim.everyone_reads(b""), "forged metadata was adopted");

    // Garbage of every kind, at node 0.
    let honest = sim.codec.encode(&Packet {
        sender: id_of(1),
        body: Body::FetchRequest(codec::Version::ZERO),
    });
    let max = config().max_packet;
    let mut flipped = honest.clone();
    flipped[12] ^= 0x40;
    let mut junk = vec![0u8; 300];
    sim.rng.fill(&mut junk[..]);
    type Counter = fn(&crate::protocol::Stats) -> u64;
    let cases: Vec<(Vec<u8>, Counter)> = vec![
        (vec![], |s| s.dropped_truncated),
        (honest[..20].to_vec(), |s| s.dropped_truncated),
        (honest[..honest.len() - 1].to_vec(), |s| s.dropped_bad_mac),
        (flipped, |s| s.dropped_bad_mac),
        (junk, |s| s.dropped_not_gossip),
        (vec![0xEB; max + 1], |s| s.dropped_oversized),
        // Authentic, but a TCP message over UDP.
        (honest, |s| s.dropped_malformed),
    ];
    for (bytes, counter) in cases {
        let before = counter(&sim.nodes[0].node.stats());
        let now = sim.clock(0);
        sim.node(0).handle_packet(&bytes, now);
        assert_eq!(counter(&sim.nodes[0].node.stats()), before + 1, "{bytes:?}");
        assert!(sim.node(0).drain_actions().is_empty());
    }
    sim.run_for(3 * CYCLE);
    assert!(sim.membership_converged());
}

#[test]
fn paused_node_is_evicted_and_rejoins_on_start() {
    let mut sim = cluster(6, 19, 0.0);
    sim.run_until(10 * CYCLE, Sim::membership_converged)
        .expect("converge");
    sim.node(2).stop();
    let timeout = config().timeout;
    sim.run_until(timeout + 3 * CYCLE, |s| {
        (0..6)
            .filter(|&i| i != 2)
            .all(|i| !s.nodes[i].node.members().contains(&id_of(2)))
    })
    .expect("paused node evicted by the others");
    let now = sim.clock(2);
    sim.node(2).start(now);
    sim.collect(2);
    let took = sim
        .run_until(5 * CYCLE, Sim::membership_converged)
        .expect("back in after start");
    eprintln!("resumed node back in after {took:?}");
}

#[test]
fn large_metadata_is_fetched_over_tcp_even_when_its_author_crashes() {
    let mut config = config();
    config.max_packet = 1400;
    let mut sim = Sim::new(10, config, 23, 0.1);
    for i in 0..10 {
        sim.join(i, if i == 0 { &[] } else { &[0] });
    }
    sim.run_until(10 * CYCLE, Sim::membership_converged)
        .expect("converge");
    let big: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    sim.publish(4, &big);
    // The author dies shortly after: the first nodes fetched from it, the
    // rest must fetch from them during anti-entropy.
    sim.run_for(Duration::from_millis(40));
    sim.crash(4);
    let took = sim
        .run_until(10 * CYCLE, |s| s.everyone_reads(&big))
        .expect("large metadata reaches every live node");
    let fetches = sim.total(|s| s.fetches);
    let failures = sim.total(|s| s.fetch_failures);
    eprintln!("20 kB metadata everywhere after {took:?}: {fetches} fetches, {failures} failed");
    assert!(fetches >= 9);
    // No datagram was larger than the limit.
    for node in &sim.nodes {
        assert_eq!(node.node.stats().dropped_oversized, 0);
    }
}
