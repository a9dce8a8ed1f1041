//! Fast reply, seen from outside: the sender sends sequenced datagrams to
//! followers in their own namespaces; each follower's replier queues the
//! next round in the kernel's ring and acks it from the kernel. The sender
//! counts the acks it gets (bytes, sources), the followers what their ring
//! and their socket deliver, byte by byte.

mod common;

use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::time::{Duration, Instant};

use common::*;
use elec_broadcast::{
    Ack, Datagram, Mode, Quorum, Receipt, Replier, Sequenced, Verdict, DEFAULT_RING_BYTES,
};
use elec_testbed::{in_namespace, pattern, snmp_counter, udp_socket_in, Testbed, TestbedConfig};

const PORT: u16 = 7400;
const ACK_PORT: u16 = 7401;

struct Follower {
    replier: Replier,
    socket: UdpSocket,
    addr: SocketAddr,
}

fn follower(tb: &Testbed, i: usize, mode: Mode, ring_bytes: u32) -> Follower {
    let replier = in_namespace(tb.receiver_ns(i), || {
        Replier::with_mode("eth0", PORT, i as u16, mode, ring_bytes)
    })
    .expect("entering the follower's namespace")
    .expect("creating the replier");
    assert_eq!(replier.mode(), mode);
    let addr = SocketAddrV4::new(tb.receiver_addrs(i)[0], PORT);
    let socket = udp_socket_in(tb.receiver_ns(i), addr).expect("binding the follower's socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    Follower {
        replier,
        socket,
        addr: SocketAddr::V4(addr),
    }
}

/// A sequenced datagram: the header, then `size` bytes of pattern.
fn sequenced(epoch: u64, round: u64, size: usize) -> Vec<u8> {
    let mut bytes = Sequenced {
        epoch,
        round,
        ack_port: ACK_PORT,
    }
    .to_bytes()
    .to_vec();
    bytes.extend_from_slice(&pattern(round, size));
    bytes
}

/// Everything a socket receives until `idle` passes without a datagram.
fn drain_socket(socket: &UdpSocket, idle: Duration) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    let mut last = Instant::now();
    while last.elapsed() < idle {
        if let Ok((len, from)) = socket.recv_from(&mut buf) {
            got.push((buf[..len].to_vec(), from));
            last = Instant::now();
        }
    }
    got
}

fn drain_all(f: &Follower) -> Vec<Datagram> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_millis(300);
    while Instant::now() < deadline {
        f.replier.drain(|d| got.push(d)).unwrap();
    }
    got
}

/// Where the sequenced datagrams come from: the sender's ack socket.
fn leader_addr(tb: &Testbed) -> SocketAddrV4 {
    SocketAddrV4::new(tb.sender_addr(), ACK_PORT)
}

fn ack_socket(tb: &Testbed) -> UdpSocket {
    let socket = sender_socket(tb, ACK_PORT);
    socket
        .set_read_timeout(Some(Duration::from_millis(20)))
        .unwrap();
    socket
}

/// Payloads of every size class up to the MTU's largest, sent in order:
/// all queued and delivered in order, byte-identical, and each acked once
/// by the kernel with the right header, from the follower's address.
#[test]
fn the_next_round_is_queued_and_acked_from_the_kernel() {
    elec_testbed::require_root!();
    queued_and_acked(true);
}

/// The same with full checksums computed by the sender (no offload): the
/// program verifies them over the whole datagram before queueing it, and
/// writes a full checksum into its ack, which the sender's stack verifies.
#[test]
fn full_checksums_are_verified_and_written() {
    elec_testbed::require_root!();
    queued_and_acked(false);
}

fn queued_and_acked(sender_offload: bool) {
    let tb = testbed(TestbedConfig {
        receivers: 1,
        sender_tx_checksum_offload: sender_offload,
        ..Default::default()
    });
    let f = follower(&tb, 0, Mode::Kernel, DEFAULT_RING_BYTES);
    let acks = ack_socket(&tb);
    f.replier.arm(3, 1, leader_addr(&tb)).unwrap();
    let sizes = [0usize, 1, 100, 456, 457, 1000, 1448]; // 1448 + 24 = 1472: the MTU's
    let rounds = 140u64;
    for round in 1..=rounds {
        let size = sizes[round as usize % sizes.len()];
        acks.send_to(&sequenced(3, round, size), f.addr).unwrap();
        if round % 20 == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let got = drain_all(&f);
    let rounds_got: Vec<u64> = got.iter().map(|d| d.header.round).collect();
    assert_eq!(rounds_got, (1..=rounds).collect::<Vec<_>>());
    for d in &got {
        let size = sizes[d.header.round as usize % sizes.len()];
        assert_eq!(
            d.payload,
            pattern(d.header.round, size),
            "round {}",
            d.header.round
        );
        assert!(d.from_kernel);
        assert_eq!(d.from, SocketAddrV4::new(tb.sender_addr(), ACK_PORT));
        assert_eq!(d.header.epoch, 3);
    }
    let acked = drain_socket(&acks, Duration::from_millis(100));
    assert_eq!(acked.len(), rounds as usize);
    for (i, (bytes, from)) in acked.iter().enumerate() {
        let (ack, rest) = Ack::parse(bytes).expect("an ack");
        assert_eq!(
            ack,
            Ack {
                epoch: 3,
                round: i as u64 + 1,
                voter: 0
            }
        );
        assert!(rest.is_empty() && Ack::is_from_kernel(bytes));
        assert_eq!(*from, f.addr);
    }
    assert!(drain_socket(&f.socket, Duration::from_millis(50)).is_empty());
    let kernel = f.replier.counters().unwrap().kernel;
    assert_eq!(kernel.acked, rounds);
    assert_eq!(kernel.ack_failures, 0);
    assert_eq!(kernel.bad_checksum, 0);
    assert_no_checksum_errors(&tb);
    let sender_errors = snmp_counter(tb.sender_ns(), "Udp", "InCsumErrors").unwrap();
    assert_eq!(sender_errors, 0, "acks with a wrong checksum");
}

/// A ring of one page, never drained while 60 rounds arrive: the kernel
/// acks exactly the rounds its ring took, and no other; the rest reach the
/// socket, where user space takes them in order and acks them itself. In
/// the end every round is delivered once, in order, and acked once.
#[test]
fn the_kernel_never_acks_what_the_ring_did_not_take() {
    elec_testbed::require_root!();
    let tb = small_testbed(1, 1);
    let f = follower(&tb, 0, Mode::Kernel, 4096);
    let acks = ack_socket(&tb);
    f.replier.arm(1, 1, leader_addr(&tb)).unwrap();
    let rounds = 60u64;
    for round in 1..=rounds {
        acks.send_to(&sequenced(1, round, 200), f.addr).unwrap();
    }
    std::thread::sleep(Duration::from_millis(100));
    let kernel_acks = drain_socket(&acks, Duration::from_millis(100));
    let kernel = f.replier.counters().unwrap().kernel;
    assert!(
        kernel.ring_full >= 1,
        "the ring must have filled: {kernel:?}"
    );
    assert_eq!(kernel_acks.len() as u64, kernel.acked, "{kernel:?}");
    // Now the application: the ring first, then the socket.
    let mut got = Vec::new();
    f.replier.drain(|d| got.push(d)).unwrap();
    assert_eq!(got.len() as u64, kernel.acked, "acked = queued");
    for (i, (bytes, _)) in kernel_acks.iter().enumerate() {
        assert_eq!(Ack::parse(bytes).unwrap().0.round, i as u64 + 1);
    }
    for (bytes, from) in drain_socket(&f.socket, Duration::from_millis(100)) {
        match f.replier.receive(&f.socket, &bytes, from).unwrap() {
            Receipt::Taken { .. } => {}
            other => panic!("{other:?}"),
        }
        f.replier.drain(|d| got.push(d)).unwrap();
    }
    let rounds_got: Vec<u64> = got.iter().map(|d| d.header.round).collect();
    assert_eq!(rounds_got, (1..=rounds).collect::<Vec<_>>());
    assert!(got
        .iter()
        .all(|d| d.payload == pattern(d.header.round, 200)));
    let user_acks = drain_socket(&acks, Duration::from_millis(100));
    assert_eq!(kernel_acks.len() + user_acks.len(), rounds as usize);
    for (bytes, _) in &user_acks {
        assert!(!Ack::is_from_kernel(bytes));
    }
}

/// Only the next round of the armed epoch is taken: an earlier round, a
/// later one, another epoch, foreign bytes, and anything while frozen go to
/// the socket untouched and unacknowledged.
#[test]
fn everything_else_goes_to_the_socket_untouched() {
    elec_testbed::require_root!();
    let tb = small_testbed(1, 1);
    let f = follower(&tb, 0, Mode::Kernel, DEFAULT_RING_BYTES);
    let acks = ack_socket(&tb);
    f.replier.arm(5, 10, leader_addr(&tb)).unwrap();
    let foreign = [
        sequenced(5, 9, 10),  // before the next
        sequenced(5, 11, 10), // after it
        sequenced(4, 10, 10), // another epoch
        b"the application's own message".to_vec(),
        sequenced(5, 10, 10), // the next, but from another sender
    ];
    let impostor = sender_socket(&tb, ACK_PORT + 1);
    for bytes in &foreign[..4] {
        acks.send_to(bytes, f.addr).unwrap();
    }
    impostor.send_to(&foreign[4], f.addr).unwrap();
    let got = drain_socket(&f.socket, Duration::from_millis(100));
    let got: Vec<Vec<u8>> = got.into_iter().map(|(b, _)| b).collect();
    assert_eq!(got, foreign.to_vec());
    assert!(drain_socket(&acks, Duration::from_millis(50)).is_empty());
    let receipts: Vec<Receipt> = got[..4]
        .iter()
        .map(|b| {
            f.replier
                .receive(&f.socket, b, acks.local_addr().unwrap())
                .unwrap()
        })
        .collect();
    assert!(matches!(receipts[0], Receipt::Duplicate { .. }));
    assert!(matches!(receipts[1], Receipt::Gap { .. }));
    assert!(matches!(receipts[2], Receipt::OtherEpoch { .. }));
    assert_eq!(receipts[3], Receipt::NotSequenced);
    let from_impostor = SocketAddr::from((tb.sender_addr(), ACK_PORT + 1));
    assert!(matches!(
        f.replier
            .receive(&f.socket, &got[4], from_impostor)
            .unwrap(),
        Receipt::OtherEpoch { .. }
    ));

    acks.send_to(&sequenced(5, 10, 10), f.addr).unwrap();
    let acked = drain_socket(&acks, Duration::from_millis(100));
    assert_eq!(acked.len(), 1);
    assert_eq!(f.replier.freeze(), 11);
    acks.send_to(&sequenced(5, 11, 10), f.addr).unwrap();
    let got = drain_socket(&f.socket, Duration::from_millis(100));
    assert_eq!(got.len(), 1);
    assert!(matches!(
        f.replier.receive(&f.socket, &got[0].0, got[0].1).unwrap(),
        Receipt::Frozen { .. }
    ));
    assert!(drain_socket(&acks, Duration::from_millis(50)).is_empty());
    let kernel = f.replier.counters().unwrap().kernel;
    assert_eq!(
        (
            kernel.acked,
            kernel.duplicates,
            kernel.gaps,
            kernel.other_epoch,
            kernel.frozen
        ),
        (1, 1, 1, 2, 1),
        "{kernel:?}"
    );
    assert_eq!(kernel.not_sequenced, 1);
    // Re-armed in the next epoch, it takes again.
    let mut delivered = Vec::new();
    f.replier.drain(|d| delivered.push(d.header.round)).unwrap();
    assert_eq!(delivered, [10]);
    f.replier.arm(6, 1, leader_addr(&tb)).unwrap();
    acks.send_to(&sequenced(6, 1, 10), f.addr).unwrap();
    assert_eq!(drain_socket(&acks, Duration::from_millis(100)).len(), 1);
}

/// All three primitives on one path: the sender fans each round out to n
/// followers in the kernel, their repliers queue it and ack it from the
/// kernel, and the sender's quorum collector wakes user space once per
/// round. The user-space modes of the repliers and the collector do the
/// same with the same application code.
fn scatter_reply_gather(n: usize, reply_mode: Mode, quorum_mode: Mode) {
    let tb = small_testbed(n, 1);
    let broadcaster = broadcaster(&tb, Mode::Kernel);
    let quorum = in_namespace(tb.sender_ns(), || {
        Quorum::with_mode(tb.sender_iface(), ACK_PORT, quorum_mode)
    })
    .unwrap()
    .unwrap();
    let leader = ack_socket(&tb);
    let followers: Vec<Follower> = (0..n)
        .map(|i| follower(&tb, i, reply_mode, DEFAULT_RING_BYTES))
        .collect();
    let voters: Vec<(u16, SocketAddrV4)> = (0..n)
        .map(|i| (i as u16, SocketAddrV4::new(tb.receiver_addrs(i)[0], PORT)))
        .collect();
    let k = n / 2 + 1;
    quorum.configure(1, &voters, k).unwrap();
    for f in &followers {
        f.replier.arm(1, 1, leader_addr(&tb)).unwrap();
    }
    let dests: Vec<SocketAddr> = followers.iter().map(|f| f.addr).collect();
    let rounds = 100u64;
    let mut delivered = vec![Vec::new(); n];
    let mut buf = [0u8; 2048];
    for round in 1..=rounds {
        quorum.extend(round);
        let report = broadcaster
            .broadcast(&leader, &sequenced(1, round, 300), &dests)
            .unwrap();
        assert!(report.failed.is_empty());
        // Followers: user space takes what the kernel left to the socket.
        for (i, f) in followers.iter().enumerate() {
            let deadline = Instant::now() + WAIT;
            while delivered[i].len() < round as usize {
                assert!(Instant::now() < deadline, "follower {i}, round {round}");
                if reply_mode == Mode::UserSpace {
                    if let Ok((len, from)) = f.socket.recv_from(&mut buf) {
                        let receipt = f.replier.receive(&f.socket, &buf[..len], from).unwrap();
                        assert_eq!(receipt, Receipt::Taken { round });
                    }
                }
                f.replier
                    .drain(|d| delivered[i].push((d.header.round, d.payload)))
                    .unwrap();
            }
        }
        // Leader: the quorum's one datagram.
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "no quorum for round {round}");
            let Ok((len, from)) = leader.recv_from(&mut buf) else {
                continue;
            };
            match quorum.receive(&buf[..len], from) {
                Verdict::Quorum { round: r } if r == round => break,
                Verdict::Counted | Verdict::Late | Verdict::Duplicate => {}
                other => panic!("round {round}: {other:?}"),
            }
        }
    }
    for (i, got) in delivered.iter().enumerate() {
        let expected: Vec<(u64, Vec<u8>)> = (1..=rounds).map(|r| (r, pattern(r, 300))).collect();
        assert_eq!(got, &expected, "follower {i}");
    }
    std::thread::sleep(Duration::from_millis(50));
    let late = drain_socket(&leader, Duration::from_millis(50));
    let counters = quorum.counters().unwrap();
    if quorum_mode == Mode::Kernel {
        assert!(late.is_empty(), "late acks must stay in the kernel");
        assert_eq!(counters.kernel.quorums, rounds, "{counters:?}");
        assert_eq!(
            counters.kernel.late,
            rounds * (n - k) as u64,
            "{counters:?}"
        );
    }
    if reply_mode == Mode::Kernel {
        for f in &followers {
            assert_eq!(f.replier.counters().unwrap().kernel.acked, rounds);
        }
    }
    assert_no_checksum_errors(&tb);
}

#[test]
fn scatter_reply_and_gather_all_in_the_kernel() {
    elec_testbed::require_root!();
    for n in [3, 7] {
        scatter_reply_gather(n, Mode::Kernel, Mode::Kernel);
    }
}

#[test]
fn scatter_reply_and_gather_with_user_space_fallbacks() {
    elec_testbed::require_root!();
    scatter_reply_gather(5, Mode::UserSpace, Mode::Kernel);
    scatter_reply_gather(5, Mode::Kernel, Mode::UserSpace);
    scatter_reply_gather(3, Mode::UserSpace, Mode::UserSpace);
}

/// The UDP checksum of `udp` (header with a zero checksum field, then the
/// payload) from `src` to `dst`.
fn udp_checksum(src: std::net::Ipv4Addr, dst: std::net::Ipv4Addr, udp: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    let mut add = |bytes: &[u8]| {
        for pair in bytes.chunks(2) {
            sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
        }
    };
    add(&src.octets());
    add(&dst.octets());
    add(&[0, 17]);
    add(&(udp.len() as u16).to_be_bytes());
    add(udp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    match !(sum as u16) {
        0 => 0xffff,
        c => c,
    }
}

/// Datagrams written whole through a raw socket carry exactly the checksum
/// given (no offload): a wrong one is never queued nor acked (and the stack
/// drops it), a right one is verified by the program over the whole
/// datagram and acked.
#[test]
fn a_wrong_checksum_is_never_queued_or_acked() {
    use nix::sys::socket::{
        sendto, socket, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType, SockaddrIn,
    };
    elec_testbed::require_root!();
    let tb = small_testbed(1, 1);
    let f = follower(&tb, 0, Mode::Kernel, DEFAULT_RING_BYTES);
    let acks = ack_socket(&tb);
    f.replier.arm(2, 1, leader_addr(&tb)).unwrap();
    let raw = in_namespace(tb.sender_ns(), || {
        socket(
            AddressFamily::Inet,
            SockType::Raw,
            SockFlag::empty(),
            SockProtocol::Udp,
        )
    })
    .unwrap()
    .expect("a raw UDP socket");
    let dst = tb.receiver_addrs(0)[0];
    let send = |round: u64, corrupt: bool| {
        let payload = sequenced(2, round, 1000);
        let mut udp = Vec::new();
        udp.extend_from_slice(&ACK_PORT.to_be_bytes());
        udp.extend_from_slice(&PORT.to_be_bytes());
        udp.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&payload);
        let check = udp_checksum(tb.sender_addr(), dst, &udp) ^ u16::from(corrupt);
        udp[6..8].copy_from_slice(&check.to_be_bytes());
        let to = SockaddrIn::from(SocketAddrV4::new(dst, PORT));
        sendto(
            std::os::fd::AsRawFd::as_raw_fd(&raw),
            &udp,
            &to,
            MsgFlags::empty(),
        )
        .unwrap();
    };
    send(1, true);
    std::thread::sleep(Duration::from_millis(50));
    assert!(drain_socket(&acks, Duration::from_millis(50)).is_empty());
    assert!(drain_socket(&f.socket, Duration::from_millis(50)).is_empty());
    send(1, false);
    let acked = drain_socket(&acks, Duration::from_millis(100));
    assert_eq!(acked.len(), 1);
    let mut got = Vec::new();
    f.replier.drain(|d| got.push(d)).unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, pattern(1, 1000));
    let kernel = f.replier.counters().unwrap().kernel;
    assert_eq!((kernel.bad_checksum, kernel.acked), (1, 1), "{kernel:?}");
}

/// Freezing in the middle of a stream: every round below the `next` that
/// `quiesce` returns was acked once and delivered once; nothing at or above
/// it was acked or taken (those wait on the socket). Whatever the timing.
#[test]
fn quiesce_leaves_no_ack_without_its_datagram() {
    elec_testbed::require_root!();
    let tb = small_testbed(1, 1);
    let f = follower(&tb, 0, Mode::Kernel, DEFAULT_RING_BYTES);
    let acks = ack_socket(&tb);
    f.replier.arm(4, 1, leader_addr(&tb)).unwrap();
    // Few enough that those left on the socket fit its receive buffer.
    let rounds = 160u64;
    let (next, delivered) = std::thread::scope(|scope| {
        let sender = scope.spawn(|| {
            for round in 1..=rounds {
                acks.send_to(&sequenced(4, round, 64), f.addr).unwrap();
                if round % 8 == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        });
        std::thread::sleep(Duration::from_millis(2));
        let mut delivered = Vec::new();
        let next = f
            .replier
            .quiesce(Duration::from_millis(100), |d| {
                delivered.push(d.header.round)
            })
            .unwrap();
        sender.join().unwrap();
        (next, delivered)
    });
    assert!(next > 1 && next <= rounds, "froze mid-stream at {next}");
    assert_eq!(delivered, (1..next).collect::<Vec<_>>());
    let mut later = Vec::new();
    std::thread::sleep(Duration::from_millis(100));
    f.replier.drain(|d| later.push(d.header.round)).unwrap();
    assert!(later.is_empty(), "taken after the freeze: {later:?}");
    let acked: Vec<u64> = drain_socket(&acks, Duration::from_millis(100))
        .iter()
        .map(|(bytes, _)| Ack::parse(bytes).unwrap().0.round)
        .collect();
    assert_eq!(
        acked,
        (1..next).collect::<Vec<_>>(),
        "one ack per round taken"
    );
    let on_socket = drain_socket(&f.socket, Duration::from_millis(100));
    assert_eq!(on_socket.len() as u64, rounds - next + 1);
}
