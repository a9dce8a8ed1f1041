//! The gossip example as a real cluster: eight nodes, each in its own
//! network namespace behind the testbed's bridge, sending through the kernel
//! fan-out. The nodes run in this process (the example's shell, included as
//! modules), each on threads that live in its namespace, so the test needs
//! no separately built binary.

mod common;

#[allow(dead_code)]
#[path = "../examples/gossip/codec.rs"]
mod codec;
#[allow(dead_code)]
#[path = "../examples/gossip/protocol.rs"]
mod protocol;
#[allow(dead_code)]
#[path = "../examples/gossip/shell.rs"]
mod shell;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::{assert_no_checksum_errors, testbed};
use elec_broadcast::Mode;
use elec_testbed::{in_namespace, TestbedConfig};
use shell::{Gossip, ShellConfig};

const NODES: usize = 8;
const PORT: u16 = 7946;
const CYCLE: Duration = Duration::from_millis(200);

/// Polls `done` every 10 ms for at most `limit`, failing the test after
/// that; returns (and logs) how long it took.
fn wait_until(limit: Duration, what: &str, done: impl Fn() -> bool) -> Duration {
    let took = elec_testbed::wait_until(limit, Duration::from_millis(10), done)
        .unwrap_or_else(|| panic!("{what}: not within {limit:?}"));
    eprintln!("{what}: {took:?}");
    took
}

#[test]
fn kernel_mode_cluster_learns_every_member_and_every_update() {
    elec_testbed::require_root!();
    let tb = testbed(TestbedConfig {
        receivers: NODES,
        ..Default::default()
    });
    let addrs: Vec<SocketAddrV4> = (0..NODES)
        .map(|i| SocketAddrV4::new(tb.receiver_addrs(i)[0], PORT))
        .collect();
    let mut config = protocol::Config::new(b"integration test key").with_cycle(CYCLE);
    config.max_packet = 16 * 1024;
    let timeout = config.timeout;

    let nodes: Vec<Gossip> = (0..NODES)
        .map(|i| {
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
        })
        .collect();
    for node in &nodes {
        assert_eq!(node.stats().mode, Mode::Kernel);
        node.join();
    }

    wait_until(10 * CYCLE + timeout, "every node lists all 8", || {
        nodes.iter().all(|n| n.members().len() == NODES)
    });
    for node in &nodes {
        let members: Vec<SocketAddrV4> = node.members().iter().map(|m| m.0).collect();
        assert_eq!(members, addrs, "members of {}", node.id());
    }

    let version = nodes[5].publish(b"small update".to_vec()).unwrap();
    wait_until(10 * CYCLE, "small update everywhere", || {
        nodes.iter().all(|n| n.read().version == version)
    });
    for node in &nodes {
        assert_eq!(node.read().data, b"small update");
    }

    // Larger than a datagram: announced by rumour, fetched over TCP.
    let large: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let version = nodes[2].publish(large.clone()).unwrap();
    wait_until(10 * CYCLE, "100 kB update everywhere", || {
        nodes.iter().all(|n| n.read().version == version)
    });
    let mut fetches = 0;
    for node in &nodes {
        assert_eq!(node.read().data, large, "metadata of {}", node.id());
        fetches += node.stats().protocol.fetches;
    }
    assert!(fetches >= NODES as u64 - 1, "{fetches} fetches");

    // Once the neighbours are resolved (the first sends go from user space
    // and make the kernel resolve them), heartbeats and rumours go through
    // the kernel fan-out.
    std::thread::sleep(3 * CYCLE);
    let before: Vec<_> = nodes.iter().map(|n| n.stats()).collect();
    std::thread::sleep(5 * CYCLE);
    for (node, before) in nodes.iter().zip(&before) {
        let stats = node.stats();
        let kernel = stats.broadcast.kernel_copies - before.broadcast.kernel_copies;
        let user = stats.broadcast.user_space_copies - before.broadcast.user_space_copies;
        assert!(kernel > 0, "{}: {stats:?}", node.id());
        assert_eq!(user, 0, "{}: {stats:?}", node.id());
        assert_eq!(stats.protocol.dropped(), 0, "{}: {stats:?}", node.id());
        assert_eq!(stats.send_failures, 0, "{}: {stats:?}", node.id());
    }

    // A node that dies is removed by everyone after the timeout.
    let mut nodes = nodes;
    let dead = nodes.pop().unwrap();
    let dead_id = dead.id();
    dead.shutdown();
    let took = wait_until(timeout + 3 * CYCLE, "dead node removed everywhere", || {
        nodes.iter().all(|n| !n.members().contains(&dead_id))
    });
    assert!(
        took > timeout - 2 * CYCLE,
        "removed after {took:?}, before the timeout {timeout:?}"
    );
    assert_no_checksum_errors(&tb);
    drop(nodes);
}
