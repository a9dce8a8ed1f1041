//! The Multi-Paxos example over real UDP: every replica on a thread inside
//! its own receiver namespace of an elec-testbed, with all three in-kernel
//! mechanisms (fan-out, quorum collector, fast reply), each alone, or none;
//! closed-loop clients in the sender namespace. Each run's history must be
//! linearizable, also when a follower or the leader dies mid-run and when
//! the network loses frames. Needs root.

mod common;

// The example's modules, compiled into this test (the example is a binary).
#[allow(dead_code)]
#[path = "../examples/paxos/accel.rs"]
mod accel;
#[allow(dead_code)]
#[path = "../examples/paxos/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../examples/paxos/cluster.rs"]
mod cluster;
#[allow(dead_code)]
#[path = "../examples/paxos/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../examples/paxos/history.rs"]
mod history;
#[allow(dead_code)]
#[path = "../examples/paxos/kv.rs"]
mod kv;
#[allow(dead_code)]
#[path = "../examples/paxos/replica.rs"]
mod replica;
#[allow(dead_code)]
#[path = "../examples/paxos/shell.rs"]
mod shell;
#[allow(dead_code)]
#[path = "../examples/paxos/wire.rs"]
mod wire;

use std::net::{SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use accel::Accel;
use elec_broadcast::Mode;
use elec_testbed::{spawn_in_namespace, NsThread, Testbed, TestbedConfig, IFACE};

use config::Config;
use replica::Timing;
use shell::{ClientOptions, ClientReport, Phases, ReplicaOptions, ReplicaReport};

/// One cluster at a time: the machine has few cores and the timings matter.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

type ReplicaThread = NsThread<Result<ReplicaReport, String>>;

/// A running cluster; its replicas stop and its namespaces go on drop.
struct Cluster {
    config: Config,
    replicas: Vec<Option<(Arc<AtomicBool>, ReplicaThread)>>,
    tb: Testbed,
}

impl Cluster {
    fn start(n: usize, accel: Accel) -> Cluster {
        let tb = common::testbed(TestbedConfig {
            receivers: n,
            ..TestbedConfig::default()
        });
        // Permanent neighbour entries: every broadcast can be fanned out
        // from the first one on.
        cluster::prefill_neighbours(&tb).expect("adding neighbour entries");
        let config = Config {
            f: (n - 1) / 2,
            replicas: (0..n)
                .map(|i| SocketAddr::new(tb.receiver_addrs(i)[0].into(), 7000))
                .collect(),
        };
        let mut cluster = Cluster {
            config: config.clone(),
            replicas: Vec::new(),
            tb,
        };
        for i in 0..n {
            let stop = Arc::new(AtomicBool::new(false));
            let opts = ReplicaOptions {
                config: config.clone(),
                layout: None,
                bind: None,
                index: i,
                accel,
                quorum_ingress: elec_broadcast::Ingress::Tc,
                iface: IFACE.to_string(),
                // Five replicas set up in parallel on this small machine take
                // about 4 s each (loading their programs), and up to a second
                // apart: a longer grace than a LAN's keeps the first one up
                // from suspecting a leader still loading (which these tests,
                // about what happens once running, do not test).
                timing: Timing {
                    startup_grace: 3_000_000,
                    ..Timing::lan()
                },
                exit_with_parent: false,
            };
            let flag = Arc::clone(&stop);
            let thread =
                spawn_in_namespace(cluster.tb.receiver_ns(i), "paxos-replica", move || {
                    shell::run_replica(&opts, &flag)
                })
                .expect("starting a replica thread in its namespace");
            cluster.replicas.push(Some((stop, thread)));
        }
        // A replica binds its port once its programs are loaded (which
        // takes a while in a debug build): wait for every one, so that none
        // misses the run.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        for (i, addr) in cluster.config.replicas.iter().enumerate() {
            let SocketAddr::V4(addr) = *addr else {
                unreachable!("the testbed is IPv4")
            };
            while !cluster::udp_bound_in(cluster.tb.receiver_ns(i), addr) {
                if cluster.replicas[i]
                    .as_ref()
                    .is_some_and(|(_, thread)| thread.is_finished())
                {
                    let (_, thread) = cluster.replicas[i].take().expect("just seen");
                    panic!(
                        "replica {i} stopped before binding: {:?}",
                        thread.join().err()
                    );
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "replica {i} did not bind {addr} within 30 s"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        cluster
    }

    fn stop_flag(&self, i: usize) -> Arc<AtomicBool> {
        Arc::clone(&self.replicas[i].as_ref().expect("replica running").0)
    }

    /// Stops every replica still running and returns their reports.
    fn stop_all(&mut self) -> Vec<Option<ReplicaReport>> {
        for (stop, _) in self.replicas.iter().flatten() {
            stop.store(true, Ordering::Relaxed);
        }
        self.replicas
            .iter_mut()
            .map(|slot| {
                let (_, thread) = slot.take()?;
                Some(thread.join().expect("replica failed"))
            })
            .collect()
    }

    fn run_clients(&self, requests: usize, threads: usize, phases: &dyn Phases) -> ClientReport {
        let opts = ClientOptions {
            config: self.config.clone(),
            requests,
            warmup: 100,
            threads,
            keys: 20,
            value_size: 16,
            read_percent: 40,
            retry: Duration::from_millis(10),
            give_up: Duration::from_secs(20),
            bind: SocketAddrV4::new(self.tb.sender_addr(), 0),
        };
        self.tb
            .in_sender(|| shell::run_clients(&opts, phases))
            .expect("entering the sender namespace")
            .expect("running the clients")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (stop, _) in self.replicas.iter().flatten() {
            stop.store(true, Ordering::Relaxed);
        }
        for (_, thread) in self.replicas.drain(..).flatten() {
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| thread.join()));
        }
    }
}

/// Stops a replica after a number of measured requests.
struct KillAfter {
    after: u64,
    stop: Arc<AtomicBool>,
}

impl Phases for KillAfter {
    fn progress(&self, done: u64) {
        if done == self.after {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

fn assert_linearizable_and_complete(report: &ClientReport, requests: usize) {
    assert_eq!(report.gave_up, 0, "requests given up");
    assert_eq!(report.completed, requests);
    if let Err(e) = history::check(&report.history) {
        panic!("{e}");
    }
}

fn normal_run(n: usize) {
    let _serial = serial();
    let mut cluster = Cluster::start(n, Accel::ALL);
    let requests = 2_000;
    let report = cluster.run_clients(requests, 4, &());
    assert_linearizable_and_complete(&report, requests);
    let reports = cluster.stop_all();
    let leader = reports[0].as_ref().expect("leader report");
    assert!(
        leader.leader && leader.view == 0,
        "replica 0 still leads view 0"
    );
    assert_eq!(leader.mode, Mode::Kernel);
    // Every request prepared once, and every broadcast fanned out in the
    // kernel: one datagram sent, cloned once for each of the n - 1 followers.
    assert!(leader.stats.prepares >= (requests + 100) as u64);
    let b = leader.broadcast;
    assert_eq!(b.fan_outs, b.broadcasts, "{b:?}");
    assert_eq!(b.kernel_copies, (n as u64 - 1) * b.fan_outs, "{b:?}");
    assert_eq!((b.copies_failed, b.user_space_copies), (0, 0), "{b:?}");
    for r in reports.iter().flatten() {
        assert_eq!(r.rejected_datagrams, 0);
        assert_eq!(r.stats.view_changes, 0);
    }
    // The quorum collector woke the leader once per quorum: about one ack
    // per committed op reached its user space, not n - 1.
    let quorum = leader.quorum.expect("quorum counters").kernel;
    assert!(
        quorum.quorums > 0 && quorum.quorums <= leader.commit_number,
        "{quorum:?}"
    );
    assert!(
        leader.received_acks <= leader.commit_number + leader.commit_number / 10,
        "{} acks reached the leader for {} ops",
        leader.received_acks,
        leader.commit_number
    );
    // The followers' kernels acknowledged their Prepares: most of them
    // (those that came before a replier was armed, out of order, or that a
    // follower got by state transfer after a drop on this busy host, its
    // user space took or did not need to ack).
    let mut kernel_acked = 0;
    for r in reports[1..].iter().flatten() {
        let reply = r.reply.expect("reply counters");
        assert!(reply.kernel.acked > reply.user_space.acked, "{reply:?}");
        kernel_acked += reply.kernel.acked;
    }
    assert!(
        kernel_acked >= requests as u64 * (n as u64 - 1) / 2,
        "{kernel_acked} Prepares acked by the followers' kernels"
    );
}

#[test]
fn three_replicas_serve_a_linearizable_history_with_kernel_fan_out() {
    elec_testbed::require_root!();
    normal_run(3);
}

#[test]
fn five_replicas_serve_a_linearizable_history_with_kernel_fan_out() {
    elec_testbed::require_root!();
    normal_run(5);
}

fn follower_killed(n: usize) {
    let _serial = serial();
    let mut cluster = Cluster::start(n, Accel::ALL);
    let requests = 2_000;
    let killer = KillAfter {
        after: 500,
        stop: cluster.stop_flag(n - 1),
    };
    let report = cluster.run_clients(requests, 4, &killer);
    assert_linearizable_and_complete(&report, requests);
    let reports = cluster.stop_all();
    let leader = reports[0].as_ref().expect("leader report");
    let victim = reports[n - 1].as_ref().expect("victim report");
    assert!(
        leader.leader && leader.view == 0,
        "no view change needed: {reports:#?}"
    );
    assert!(
        victim.commit_number < leader.commit_number,
        "the follower stopped mid-run: {} vs {}",
        victim.commit_number,
        leader.commit_number
    );
}

#[test]
fn three_replicas_keep_going_when_a_follower_dies_mid_run() {
    elec_testbed::require_root!();
    follower_killed(3);
}

#[test]
fn five_replicas_keep_going_when_a_follower_dies_mid_run() {
    elec_testbed::require_root!();
    follower_killed(5);
}

#[test]
fn clients_find_the_new_leader_when_the_leader_dies_mid_run() {
    elec_testbed::require_root!();
    let _serial = serial();
    let n = 3;
    let mut cluster = Cluster::start(n, Accel::ALL);
    let requests = 1_000;
    let killer = KillAfter {
        after: 300,
        stop: cluster.stop_flag(0),
    };
    let report = cluster.run_clients(requests, 4, &killer);
    assert_linearizable_and_complete(&report, requests);
    assert!(
        report.retries > 0,
        "clients had to retry to find the new leader"
    );
    let reports = cluster.stop_all();
    let survivors: Vec<&ReplicaReport> = reports[1..].iter().flatten().collect();
    assert!(survivors.iter().any(|r| r.leader && r.view >= 1));
    let new_leader = survivors.iter().find(|r| r.leader).expect("a new leader");
    assert!(new_leader.broadcast.broadcasts > 0);
}

#[test]
fn user_space_broadcasts_serve_the_same_protocol() {
    elec_testbed::require_root!();
    let _serial = serial();
    let mut cluster = Cluster::start(3, Accel::NONE);
    let report = cluster.run_clients(1_000, 4, &());
    assert_linearizable_and_complete(&report, 1_000);
    let reports = cluster.stop_all();
    let leader = reports[0].as_ref().expect("leader report");
    assert_eq!(leader.mode, Mode::UserSpace);
    assert_eq!(leader.broadcast.kernel_copies, 0);
    assert!(leader.broadcast.user_space_copies >= 2 * 1_000);
    assert!(leader.quorum.is_none() && leader.reply.is_none());
}

/// Each mechanism alone serves the same protocol (Electrode's ablation).
#[test]
fn each_mechanism_alone_serves_a_linearizable_history() {
    elec_testbed::require_root!();
    let _serial = serial();
    for accel in Accel::ablation() {
        let mut cluster = Cluster::start(3, accel);
        let report = cluster.run_clients(600, 4, &());
        assert_linearizable_and_complete(&report, 600);
        let reports = cluster.stop_all();
        let leader = reports[0].as_ref().expect("leader report");
        assert_eq!(leader.accel, accel);
        assert_eq!(leader.quorum.is_some(), accel.quorum, "{accel}");
        assert_eq!(reports[1].as_ref().unwrap().reply.is_some(), accel.reply);
    }
}

/// Each mechanism alone under each fault: 5% loss, a follower stopped, the
/// leader stopped (a view change moves the collector's and the repliers'
/// epoch).
#[test]
fn each_mechanism_alone_survives_every_fault() {
    elec_testbed::require_root!();
    let _serial = serial();
    for accel in Accel::ablation() {
        if accel == Accel::NONE || accel == Accel::ALL {
            continue; // covered by the tests above and below
        }
        let cluster = Cluster::start(3, accel);
        cluster::install_loss(&cluster.tb, 5).expect("installing the loss rule");
        let report = cluster.run_clients(400, 4, &());
        assert_linearizable_and_complete(&report, 400);
        drop(cluster);
        for victim in [2, 0] {
            let mut cluster = Cluster::start(3, accel);
            let killer = KillAfter {
                after: 150,
                stop: cluster.stop_flag(victim),
            };
            let report = cluster.run_clients(500, 4, &killer);
            assert_linearizable_and_complete(&report, 500);
            let reports = cluster.stop_all();
            if victim == 0 {
                assert!(
                    reports[1..]
                        .iter()
                        .flatten()
                        .any(|r| r.leader && r.view >= 1),
                    "{accel}: a new leader"
                );
            }
        }
    }
}

/// 5% of the frames on every bridge port dropped (nftables), all three
/// mechanisms on: lost Prepares, lost kernel acks and lost quorum acks are
/// repaired by retransmission and state transfer.
#[test]
fn all_mechanisms_survive_five_percent_loss() {
    elec_testbed::require_root!();
    let _serial = serial();
    let cluster = Cluster::start(3, Accel::ALL);
    cluster::install_loss(&cluster.tb, 5).expect("installing the loss rule");
    let report = cluster.run_clients(1_000, 4, &());
    assert_linearizable_and_complete(&report, 1_000);
    let dropped = cluster::loss_drops(&cluster.tb);
    assert!(
        dropped.is_some_and(|d| d > 0),
        "frames dropped: {dropped:?}"
    );
}
