//! The quorum collector, seen from outside: voters in their own namespaces
//! send acks to the sender's port; a socket there counts what reaches user
//! space, byte by byte, and the collector's verdicts must match a model of
//! the acks that the test keeps itself. Every scenario runs with the kernel
//! program and with the user-space collector, on the same code.

mod common;

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use elec_broadcast::{Ack, Ingress, Mode, Quorum, Verdict};
use elec_testbed::{in_namespace, udp_socket_in, Testbed};
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

const PORT: u16 = 7300;
const VOTER_PORT: u16 = 7301;

/// A testbed of `n` voters, the collector on the sender's eth0, and the
/// sender's socket on the collector's port.
struct Bench {
    tb: Testbed,
    quorum: Quorum,
    socket: UdpSocket,
    voters: Vec<UdpSocket>,
    leader: SocketAddr,
}

impl Bench {
    fn new(n: usize, mode: Mode) -> Bench {
        Bench::at(n, mode, Ingress::Tc)
    }

    fn at(n: usize, mode: Mode, ingress: Ingress) -> Bench {
        let tb = small_testbed(n, 1);
        let quorum = in_namespace(tb.sender_ns(), || {
            Quorum::with_ingress(tb.sender_iface(), PORT, mode, ingress)
        })
        .expect("entering the sender namespace")
        .expect("creating the collector");
        assert_eq!(quorum.mode(), mode);
        let socket = sender_socket(&tb, PORT);
        socket
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let voters = (0..n)
            .map(|i| {
                let addr = SocketAddrV4::new(tb.receiver_addrs(i)[0], VOTER_PORT);
                udp_socket_in(tb.receiver_ns(i), addr).expect("binding a voter's socket")
            })
            .collect();
        let leader = SocketAddr::from((tb.sender_addr(), PORT));
        Bench {
            tb,
            quorum,
            socket,
            voters,
            leader,
        }
    }

    fn send(&self, voter: usize, bytes: &[u8]) {
        self.voters[voter].send_to(bytes, self.leader).unwrap();
    }

    fn ack(&self, voter: usize, epoch: u64, round: u64) -> Vec<u8> {
        let mut bytes = Ack {
            epoch,
            round,
            voter: voter as u16,
        }
        .to_bytes()
        .to_vec();
        // The application's own bytes after the header, unique per ack.
        bytes.extend_from_slice(format!("voter {voter} epoch {epoch} round {round}").as_bytes());
        bytes
    }

    /// Everything that reaches the socket until `idle` passes without a datagram.
    fn drain(&self, idle: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        let mut last = Instant::now();
        while last.elapsed() < idle {
            if let Ok((len, from)) = self.socket.recv_from(&mut buf) {
                got.push((buf[..len].to_vec(), from));
                last = Instant::now();
            }
        }
        got
    }

    fn voter_addr(&self, voter: usize) -> SocketAddr {
        SocketAddr::from((self.tb.receiver_addrs(voter)[0], VOTER_PORT))
    }

    /// Voters 0..n, each at its own socket's address.
    fn voters(&self, n: usize) -> Vec<(u16, SocketAddrV4)> {
        (0..n)
            .map(|v| {
                let addr = SocketAddrV4::new(self.tb.receiver_addrs(v)[0], VOTER_PORT);
                (v as u16, addr)
            })
            .collect()
    }
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

/// Round by round, in a random order of voters: k - 1 acks, a duplicate of
/// one of them, the k-th ack, then (once its quorum datagram arrived) the
/// n - k late ones. Exactly the k-th ack of each round reaches the socket,
/// unchanged, from the k-th voter; the kernel drops every other one.
fn exactly_one_datagram_per_round(n: usize, mode: Mode, ingress: Ingress) {
    let bench = Bench::at(n, mode, ingress);
    let k = majority(n);
    let voters = bench.voters(n);
    bench.quorum.configure(1, &voters, k).unwrap();
    let rounds = 60;
    bench.quorum.extend(rounds);
    let mut rng = SmallRng::seed_from_u64(n as u64);
    let mut order: Vec<usize> = (0..n).collect();
    let mut reached = 0;
    for round in 1..=rounds {
        order.shuffle(&mut rng);
        for &v in &order[..k - 1] {
            bench.send(v, &bench.ack(v, 1, round));
        }
        bench.send(order[0], &bench.ack(order[0], 1, round));
        let kth = order[k - 1];
        bench.send(kth, &bench.ack(kth, 1, round));
        // Wait for the k-th ack, then send the late ones.
        let deadline = Instant::now() + WAIT;
        let mut buf = [0u8; 2048];
        loop {
            assert!(
                Instant::now() < deadline,
                "round {round}: no quorum datagram"
            );
            let Ok((len, from)) = bench.socket.recv_from(&mut buf) else {
                continue;
            };
            reached += 1;
            match bench.quorum.receive(&buf[..len], from) {
                Verdict::Quorum { round: r } if r == round => {
                    if mode == Mode::Kernel {
                        assert_eq!(&buf[..len], &bench.ack(kth, 1, round)[..]);
                        assert_eq!(from, bench.voter_addr(kth));
                    }
                    break;
                }
                Verdict::Counted | Verdict::Duplicate | Verdict::Late
                    if mode == Mode::UserSpace => {}
                other => panic!("round {round}: unexpected {other:?} for {:?}", &buf[..len]),
            }
        }
        assert_eq!(bench.quorum.voters(round).len(), k, "round {round}");
        for &v in &order[k..] {
            bench.send(v, &bench.ack(v, 1, round));
        }
    }
    let rest = bench.drain(Duration::from_millis(200));
    for (bytes, from) in &rest {
        let verdict = bench.quorum.receive(bytes, *from);
        assert!(
            mode == Mode::UserSpace && verdict == Verdict::Late,
            "after the last round: {verdict:?}"
        );
    }
    assert_eq!(bench.quorum.complete(), rounds);
    assert_eq!(bench.quorum.voters(rounds).len(), n);
    let counters = bench.quorum.counters().unwrap();
    let decided = if mode == Mode::Kernel {
        counters.kernel
    } else {
        counters.user_space
    };
    let r = rounds;
    assert_eq!(decided.quorums, r, "{counters:?}");
    assert_eq!(decided.counted, r * (k as u64 - 1), "{counters:?}");
    assert_eq!(decided.duplicates, r, "{counters:?}");
    assert_eq!(decided.late, r * (n - k) as u64, "{counters:?}");
    if mode == Mode::Kernel {
        assert_eq!(reached, r as usize, "only the quorum acks reach user space");
        assert!(rest.is_empty());
        assert_eq!(counters.user_space.quorums, r);
    } else {
        assert_eq!(reached as u64 + rest.len() as u64, r * (n as u64 + 1));
    }
}

#[test]
fn exactly_one_datagram_per_round_at_k_of_3_5_7_9() {
    elec_testbed::require_root!();
    for n in [3, 5, 7, 9] {
        exactly_one_datagram_per_round(n, Mode::Kernel, Ingress::Tc);
    }
}

/// The same collector on the XDP hook decides the same.
#[test]
fn exactly_one_datagram_per_round_on_the_xdp_hook() {
    elec_testbed::require_root!();
    for n in [3, 7] {
        exactly_one_datagram_per_round(n, Mode::Kernel, Ingress::Xdp);
    }
    loss_reordering_and_an_epoch_change(5, Mode::Kernel, Ingress::Xdp);
}

#[test]
fn user_space_collector_decides_the_same() {
    elec_testbed::require_root!();
    for n in [3, 7] {
        exactly_one_datagram_per_round(n, Mode::UserSpace, Ingress::Tc);
    }
}

/// The highest round that k voters have acknowledged, from the test's own
/// record of the acks that were delivered.
fn model_complete(acked: &HashMap<usize, u64>, k: usize) -> u64 {
    let mut rounds: Vec<u64> = acked.values().copied().collect();
    rounds.sort_unstable_by(|a, b| b.cmp(a));
    rounds.get(k - 1).copied().unwrap_or(0)
}

/// 20% of the acks lost, the rest reordered and some sent twice or much
/// later, foreign traffic on the same port, and an epoch change half-way
/// with stragglers of the old epoch: every datagram that reaches user space
/// either advances the commit point or is one the kernel was not sure
/// about (and then arrives byte-identical), the commit point ends where
/// the acks put it, and no ack of the old epoch counts in the new one.
fn loss_reordering_and_an_epoch_change(n: usize, mode: Mode, ingress: Ingress) {
    let bench = Bench::at(n, mode, ingress);
    let k = majority(n);
    let voters = bench.voters(n);
    let mut rng = SmallRng::seed_from_u64(0xec + n as u64);
    let mut foreign_sent: Vec<Vec<u8>> = Vec::new();
    let mut other = 0usize;
    // User space reads as the acks arrive (a socket left unread would
    // overflow), and hands every datagram to the collector at once.
    let receive_all = |bench: &Bench, stop: &AtomicBool| {
        let (mut rounds, mut other) = (Vec::new(), 0usize);
        let mut buf = [0u8; 2048];
        let mut idle_since = Instant::now();
        while !stop.load(Ordering::SeqCst) || idle_since.elapsed() < Duration::from_millis(150) {
            let Ok((len, from)) = bench.socket.recv_from(&mut buf) else {
                continue;
            };
            idle_since = Instant::now();
            match bench.quorum.receive(&buf[..len], from) {
                Verdict::Quorum { round } => rounds.push(round),
                Verdict::NotAnAck | Verdict::OtherEpoch | Verdict::UnknownVoter => other += 1,
                // User space sees every ack; in the kernel mode, a quorum
                // ack whose advance an earlier one already reported.
                Verdict::Counted | Verdict::Duplicate | Verdict::Late => {}
                v => panic!("unexpected {v:?}"),
            }
        }
        (rounds, other)
    };
    for epoch in [1u64, 2] {
        bench.quorum.configure(epoch, &voters, k).unwrap();
        let rounds = 300;
        bench.quorum.extend(rounds);
        let mut acked: HashMap<usize, u64> = HashMap::new();
        let mut pending: Vec<(usize, u64)> = Vec::new();
        let stop = AtomicBool::new(false);
        let (this_epoch, others) = std::thread::scope(|scope| {
            let receiver = scope.spawn(|| receive_all(&bench, &stop));
            for round in 1..=rounds {
                for v in 0..n {
                    if rng.gen_bool(0.2) {
                        continue; // lost
                    }
                    pending.push((v, round));
                    if rng.gen_bool(0.05) {
                        pending.push((v, round)); // duplicated
                    }
                }
                // Reordered: a few rounds' acks go out in a random order.
                if round % 4 == 0 || round == rounds {
                    pending.shuffle(&mut rng);
                    for (v, r) in pending.drain(..) {
                        bench.send(v, &bench.ack(v, epoch, r));
                        let high = acked.entry(v).or_default();
                        *high = (*high).max(r);
                    }
                    // Paced, so that no queue on the way overflows: the
                    // loss here is the test's own, 20%, and nothing else.
                    std::thread::sleep(Duration::from_millis(2));
                }
                if round % 50 == 0 {
                    // Traffic the collector must pass untouched: not an ack, an
                    // ack of an unknown voter, a straggler of the old epoch.
                    let mut foreign = vec![
                        b"not an ack at all".to_vec(),
                        Ack {
                            epoch,
                            round,
                            voter: 40,
                        }
                        .to_bytes()
                        .to_vec(),
                    ];
                    if epoch == 2 {
                        foreign.push(bench.ack(1, 1, round + 1000));
                    }
                    // Voter 1's name, voter 0's address: never counted.
                    foreign.push(bench.ack(1, epoch, rounds));
                    for bytes in foreign {
                        bench.send(0, &bytes);
                        foreign_sent.push(bytes);
                    }
                }
            }
            // Every voter's last ack arrives at last (as after a retransmission).
            for v in 0..n {
                bench.send(v, &bench.ack(v, epoch, rounds));
                acked.insert(v, rounds);
            }
            stop.store(true, Ordering::SeqCst);
            receiver.join().unwrap()
        });
        other += others;
        let counters = bench.quorum.counters().unwrap();
        let voters_at_end: Vec<Vec<u16>> = [rounds - 50, rounds]
            .map(|r| bench.quorum.voters(r))
            .to_vec();
        assert_eq!(
            bench.quorum.complete(),
            model_complete(&acked, k),
            "n = {n}, {mode:?}, epoch {epoch}: {counters:?}, voters {voters_at_end:?}"
        );
        assert!(
            this_epoch.windows(2).all(|w| w[0] < w[1]),
            "commit points must only advance: {this_epoch:?}"
        );
        assert_eq!(this_epoch.last(), Some(&rounds));
    }
    let counters = bench.quorum.counters().unwrap();
    assert_eq!(
        other,
        foreign_sent.len(),
        "foreign datagrams reach user space (n = {n}, {mode:?}): {counters:?}"
    );
    let counters = bench.quorum.counters().unwrap();
    if mode == Mode::Kernel {
        let kernel = counters.kernel;
        assert_eq!(kernel.not_acks, 2 * 6, "{counters:?}");
        assert_eq!(kernel.unknown_voter, 2 * 6 + 2 * 6, "{counters:?}");
        assert_eq!(kernel.other_epoch, 6, "{counters:?}");
        assert_eq!(kernel.unverified, 0, "{counters:?}");
        assert_eq!(
            counters.user_space.quorums + counters.user_space.duplicates + counters.user_space.late,
            kernel.quorums,
            "only quorum acks (and foreign datagrams) reach user space: {counters:?}"
        );
    }
}

#[test]
fn loss_reordering_duplicates_and_an_epoch_change() {
    elec_testbed::require_root!();
    for n in [3, 5, 7, 9] {
        loss_reordering_and_an_epoch_change(n, Mode::Kernel, Ingress::Tc);
    }
    loss_reordering_and_an_epoch_change(5, Mode::UserSpace, Ingress::Tc);
}

/// Acks for rounds not sent yet pass to user space uncounted, and count as
/// soon as the window covers them.
#[test]
fn acks_above_the_window_pass_until_it_moves() {
    elec_testbed::require_root!();
    let bench = Bench::new(3, Mode::Kernel);
    bench.quorum.configure(9, &bench.voters(3), 2).unwrap();
    bench.quorum.extend(10);
    let early = bench.ack(0, 9, 11);
    bench.send(0, &early);
    let got = bench.drain(Duration::from_millis(150));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0, early);
    assert_eq!(
        bench.quorum.receive(&got[0].0, got[0].1),
        Verdict::OutsideWindow
    );
    bench.quorum.extend(11);
    bench.send(0, &early);
    bench.send(1, &bench.ack(1, 9, 11));
    let got = bench.drain(Duration::from_millis(150));
    assert_eq!(got.len(), 1, "only the quorum ack: {got:?}");
    assert_eq!(
        bench.quorum.receive(&got[0].0, got[0].1),
        Verdict::Quorum { round: 11 }
    );
    let kernel = bench.quorum.counters().unwrap().kernel;
    assert_eq!(kernel.outside_window, 1);
    assert_eq!(kernel.quorums, 1);
}

/// The collector's port only: acks to another port of the same host pass
/// the program untouched, and are never counted.
#[test]
fn other_ports_are_not_looked_at() {
    elec_testbed::require_root!();
    let bench = Bench::new(3, Mode::Kernel);
    bench.quorum.configure(1, &bench.voters(3), 1).unwrap();
    bench.quorum.extend(5);
    let other = sender_socket(&bench.tb, PORT + 1);
    other
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let ack = bench.ack(0, 1, 1);
    bench.voters[0]
        .send_to(&ack, SocketAddr::from((bench.tb.sender_addr(), PORT + 1)))
        .unwrap();
    let mut buf = [0u8; 256];
    let (len, _) = other
        .recv_from(&mut buf)
        .expect("the ack to the other port");
    assert_eq!(&buf[..len], &ack[..]);
    assert_eq!(bench.quorum.complete(), 0);
    let kernel = bench.quorum.counters().unwrap().kernel;
    assert_eq!(kernel, Default::default());
}

/// An ack in one voter's name from another voter's address is not counted
/// (nobody votes for somebody else), and passes to user space, where the
/// collector does not count it either.
#[test]
fn a_voter_counts_only_from_its_own_address() {
    elec_testbed::require_root!();
    for mode in [Mode::Kernel, Mode::UserSpace] {
        let bench = Bench::new(3, mode);
        bench.quorum.configure(1, &bench.voters(3), 2).unwrap();
        bench.quorum.extend(5);
        let forged = bench.ack(1, 1, 5);
        bench.send(0, &bench.ack(0, 1, 5));
        bench.send(0, &forged); // voter 1's name, voter 0's socket
        let got = bench.drain(Duration::from_millis(150));
        let verdicts: Vec<Verdict> = got
            .iter()
            .map(|(bytes, from)| bench.quorum.receive(bytes, *from))
            .collect();
        assert_eq!(bench.quorum.complete(), 0, "{mode:?}: {verdicts:?}");
        assert!(
            verdicts.contains(&Verdict::UnknownVoter),
            "{mode:?}: {verdicts:?}"
        );
        if mode == Mode::Kernel {
            assert_eq!(got.len(), 1);
            assert_eq!(got[0].0, forged);
            assert_eq!(bench.quorum.counters().unwrap().kernel.unknown_voter, 1);
        }
    }
}
