//! The gossip example as a real cluster: eight nodes, each in its own
//! network namespace behind the testbed's bridge, sending through the kernel
//! fan-out. The nodes run in this process (the example's shell, included as
//! modules), each on a thread that lives in its namespace, so the test needs
//! no separately built binary.

mod common;

#[allow(dead_code)]
#[path = "../examples/gossip/codec.rs"]
mod codec;
#[allow(dead_code)]
#[path = "../examples/gossip/protocol.rs"]
mod protocol;
#[allow(dead_code)]
#[path = "../examples/gossip/queue.rs"]
mod queue;
#[allow(dead_code)]
#[path = "../examples/gossip/shell.rs"]
mod shell;

use std::net::SocketAddrV4;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use codec::{Keyring, NodeId, State};
use common::{assert_no_checksum_errors, testbed};
use elec_broadcast::Mode;
use elec_testbed::{in_namespace, Testbed, TestbedConfig};
use protocol::Event;
use shell::{Gossip, ShellConfig};

const NODES: usize = 8;
const PORT: u16 = 7946;
const PERIOD: Duration = Duration::from_millis(200);

/// Polls `done` every 10 ms for at most `limit`, failing the test after
/// that; returns (and logs) how long it took.
fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) -> Duration {
    let took = elec_testbed::wait_until(limit, Duration::from_millis(10), done)
        .unwrap_or_else(|| panic!("{what}: not within {limit:?}"));
    eprintln!("{what}: {took:?}");
    took
}

/// Starts node `i` in its namespace (not joined yet).
fn start(tb: &Testbed, addrs: &[SocketAddrV4], config: &protocol::Config, i: usize) -> Gossip {
    let shell_config = ShellConfig {
        listen: addrs[i],
        seeds: vec![addrs[0], addrs[1]],
        protocol: config.clone(),
        mode: Mode::Kernel,
        interface: Some(tb.sender_iface().to_string()),
        rng_seed: Some(i as u64),
    };
    in_namespace(tb.receiver_ns(i), || Gossip::new(shell_config))
        .expect("entering the node's namespace")
        .expect("starting the node")
}

/// Whether every node in `nodes` holds `who` in `state`.
fn all_see(nodes: &[&Gossip], who: NodeId, state: State) -> bool {
    nodes
        .iter()
        .all(|n| n.member(who).is_some_and(|m| m.state == state))
}

/// The events a subscriber got so far.
fn events(receiver: &Receiver<Event>) -> Vec<Event> {
    receiver.try_iter().collect()
}

#[test]
fn kernel_mode_cluster_converges_spreads_state_and_detects_failures() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: NODES,
        ..Default::default()
    });
    let addrs: Vec<SocketAddrV4> = (0..NODES)
        .map(|i| SocketAddrV4::new(tb.receiver_addrs(i)[0], PORT))
        .collect();
    let ids: Vec<NodeId> = addrs.iter().copied().map(NodeId).collect();
    let mut config =
        protocol::Config::new(Keyring::new(1, b"integration test key")).with_period(PERIOD);
    config.encrypt = true;

    let mut nodes: Vec<Gossip> = (0..NODES).map(|i| start(&tb, &addrs, &config, i)).collect();
    let watch = nodes[0].subscribe();
    // A subscriber that goes away is dropped by the node, the others keep
    // getting everything.
    drop(nodes[0].subscribe());
    for node in &nodes {
        assert_eq!(node.stats().mode, Mode::Kernel);
        node.join();
    }

    // Membership converges: everyone lists everyone, alive.
    wait_until(20 * PERIOD, "every node lists all 8", || {
        nodes.iter().all(|n| n.members().len() == NODES)
    });
    for node in &nodes {
        assert_eq!(node.members(), ids, "members of {}", node.id());
        assert!(node.member_states().iter().all(|m| m.state == State::Alive));
    }
    let joined: Vec<Event> = events(&watch);
    for id in &ids[1..] {
        assert!(
            joined.contains(&Event::Joined(*id)),
            "node 0 saw no Joined({id}): {joined:?}"
        );
    }

    // A published value reaches everyone.
    let version = nodes[5].publish(b"small update".to_vec()).unwrap();
    wait_until(10 * PERIOD, "published value everywhere", || {
        nodes.iter().all(|n| n.read().version == version)
    });
    for node in &nodes {
        assert_eq!(node.read().data, b"small update");
    }
    // Also one as large as a datagram holds.
    let large: Vec<u8> = (0..nodes[2].max_value() - 16)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let version = nodes[2].publish(large.clone()).unwrap();
    wait_until(10 * PERIOD, "largest published value everywhere", || {
        nodes.iter().all(|n| n.read().version == version)
    });
    for node in &nodes {
        assert_eq!(node.read().data, large, "metadata of {}", node.id());
    }

    // A key set on one node is read on every other; so is its deletion.
    nodes[3].set_key(b"role", b"database".to_vec()).unwrap();
    nodes[3].set_key(b"zone", b"a".to_vec()).unwrap();
    wait_until(10 * PERIOD, "key of node 3 everywhere", || {
        nodes
            .iter()
            .all(|n| n.get(ids[3], b"role").as_deref() == Some(&b"database"[..]))
    });
    nodes[3].delete_key(b"zone").unwrap();
    wait_until(10 * PERIOD, "deletion of node 3's key everywhere", || {
        nodes.iter().all(|n| n.get(ids[3], b"zone").is_none())
    });
    for node in &nodes {
        assert_eq!(
            node.entries(ids[3]),
            [(b"role".to_vec(), b"database".to_vec())],
            "node 3's entries on {}",
            node.id()
        );
    }
    let changed = events(&watch);
    assert!(changed.contains(&Event::Changed {
        node: ids[3],
        key: b"role".to_vec()
    }));

    // Once the neighbours are resolved (the first sends go from user space
    // and make the kernel resolve them), every message to several members
    // goes through the kernel fan-out (messages to one member are plain
    // sends), nothing is refused and nothing fails. A write per node and
    // period keeps the gossip rounds going.
    std::thread::sleep(3 * PERIOD);
    let before: Vec<_> = nodes.iter().map(|n| n.stats()).collect();
    for round in 0..5u8 {
        for node in &nodes {
            node.set_key(b"tick", vec![round]).unwrap();
        }
        std::thread::sleep(PERIOD);
    }
    for (node, before) in nodes.iter().zip(&before) {
        let stats = node.stats();
        let kernel = stats.broadcast.kernel_copies - before.broadcast.kernel_copies;
        let user = stats.broadcast.user_space_copies - before.broadcast.user_space_copies;
        assert!(kernel > 0, "{}: {stats:?}", node.id());
        assert_eq!(user, 0, "{}: {stats:?}", node.id());
        assert_eq!(stats.protocol.dropped(), 0, "{}: {stats:?}", node.id());
        assert_eq!(stats.send_failures, 0, "{}: {stats:?}", node.id());
        assert_eq!(stats.oversize_sends, 0, "{}: {stats:?}", node.id());
        // Everything the core took came through recvmmsg, in batches.
        assert_eq!(
            stats.recv_datagrams,
            stats.protocol.packets_in,
            "{}",
            node.id()
        );
        assert!(stats.recv_batches > 0 && stats.recv_batches <= stats.recv_datagrams);
    }
    let (batches, datagrams) = nodes.iter().fold((0, 0), |(b, d), n| {
        let s = n.stats();
        (b + s.recv_batches, d + s.recv_datagrams)
    });
    eprintln!(
        "recvmmsg: {datagrams} datagrams in {batches} calls ({:.2} per call)",
        datagrams as f64 / batches as f64
    );

    // A killed node (shut down without leaving) is found failed by
    // everyone within a few periods, and no longer listed.
    let killed = nodes.pop().unwrap();
    let killed_id = killed.id();
    killed.shutdown();
    let alive: Vec<&Gossip> = nodes.iter().collect();
    wait_until(15 * PERIOD, "killed node failed everywhere", || {
        all_see(&alive, killed_id, State::Dead)
    });
    assert!(alive.iter().all(|n| !n.members().contains(&killed_id)));
    assert!(events(&watch).contains(&Event::Failed(killed_id)));

    // A node that leaves shows as left, not failed.
    let leaving = nodes.pop().unwrap();
    let left_id = leaving.id();
    leaving.leave_and_shutdown();
    let alive: Vec<&Gossip> = nodes.iter().collect();
    wait_until(10 * PERIOD, "left node shows as left everywhere", || {
        all_see(&alive, left_id, State::Left)
    });
    let got = events(&watch);
    assert!(got.contains(&Event::Left(left_id)), "{got:?}");
    assert!(!got.contains(&Event::Failed(left_id)), "{got:?}");

    // The killed node restarted (a new run, same address) comes back:
    // alive again everywhere, and it learns the cluster's state.
    let restarted = start(&tb, &addrs, &config, NODES - 1);
    restarted.join();
    nodes.push(restarted);
    let alive: Vec<&Gossip> = nodes.iter().collect();
    wait_until(20 * PERIOD, "restarted node alive everywhere", || {
        all_see(&alive, killed_id, State::Alive)
    });
    let back = nodes.last().unwrap();
    wait_until(10 * PERIOD, "restarted node learns the state", || {
        back.read().data == large && back.get(ids[3], b"role").as_deref() == Some(&b"database"[..])
    });
    wait_until(10 * PERIOD, "restarted node lists the live members", || {
        back.members().len() == NODES - 1
    });
    let got = events(&watch);
    assert!(got.contains(&Event::Joined(killed_id)), "{got:?}");
    // The left node stays left (never failed) where it is known; the
    // restarted node keeps no record of it (the core records no member it
    // first hears of as left or dead), and does not list it.
    assert!(!got.contains(&Event::Failed(left_id)), "{got:?}");
    assert!(back.member(left_id).is_none_or(|m| m.state == State::Left));
    assert!(!back.members().contains(&left_id));
    let others: Vec<&Gossip> = alive[..alive.len() - 1].to_vec();
    assert!(all_see(&others, left_id, State::Left));

    assert_no_checksum_errors(&tb);
    drop(nodes);
}
