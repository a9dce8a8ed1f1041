//! The I/O shell: UDP sockets and timers around the protocol cores.
//!
//! A replica is one thread with one UDP socket. It waits up to a
//! millisecond for a datagram, then drains the socket without blocking,
//! hands every message to the [`Replica`] core and sends what it returns
//! right away: unicasts with `sendto`, broadcasts to the other replicas
//! (the leader's `Prepare` and `Commit`) with [`Broadcaster::broadcast`],
//! in the kernel or from user space. Then it runs the timers and sends the
//! `Commit` for everything committed in the batch.
//!
//! Clients are threads with a socket each and one request in flight
//! (closed loop), driving the [`Client`] core.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Barrier, Mutex};
use std::time::{Duration, Instant};

use elec_broadcast::{
    Ack, Broadcaster, Datagram, Ingress, Mode, Quorum, QuorumCounters, Receipt, Replier,
    ReplyCounters, Sequenced, Verdict, DEFAULT_RING_BYTES,
};
use nix::errno::Errno;
use nix::sys::socket::{recvmsg, MsgFlags, SockaddrIn};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::accel::{self, Accel};
use crate::client::{Client, ClientTo};
use crate::config::{Config, Layout};
use crate::history::Operation;
use crate::kv::{Op, OpResult};
use crate::replica::{Outgoing, Replica, ReplicaStats, Time, Timing, To};
use crate::wire::{Message, MAX_DATAGRAM};

/// How long a replica blocks waiting for a datagram before running its timers.
const POLL: Duration = Duration::from_millis(1);
/// Longest wait for a record the kernel was writing when the replier froze.
const QUIESCE_TIMEOUT: Duration = Duration::from_millis(50);
/// Datagrams handled before the timers run and the batch's `Commit` goes out.
const MAX_BATCH: usize = 256;

/// Settings of one replica.
#[derive(Clone, Debug)]
pub struct ReplicaOptions {
    /// The cluster.
    pub config: Config,
    /// The configuration as written, when its hosts are names to resolve
    /// again while the replica runs (a peer that comes back with a new
    /// address is then found); `None` for fixed addresses.
    pub layout: Option<Layout>,
    /// This replica's index in the configuration.
    pub index: usize,
    /// The in-kernel mechanisms to use (broadcast, quorum, reply).
    pub accel: Accel,
    /// The hook of the quorum collector (with `quorum`).
    pub quorum_ingress: Ingress,
    /// Interface the other replicas are reached through.
    pub iface: String,
    /// Protocol timeouts.
    pub timing: Timing,
    /// Exit when the parent process goes away (for child processes).
    pub exit_with_parent: bool,
    /// Bind to this address (and the configured port) instead of the one
    /// the configuration gives: a pod's own address, where its name may
    /// still resolve to the address of the pod before it.
    pub bind: Option<std::net::Ipv4Addr>,
}

/// What a replica did, reported when it stops.
#[derive(Clone, Debug)]
pub struct ReplicaReport {
    /// The replica's index.
    pub index: usize,
    /// The backend its broadcasts used.
    pub mode: Mode,
    /// The in-kernel mechanisms it used.
    pub accel: Accel,
    /// Datagrams its user space received (socket and ring).
    pub received_datagrams: u64,
    /// Of those, acks (`PrepareOk`s).
    pub received_acks: u64,
    /// The quorum collector's counters (with `quorum`).
    pub quorum: Option<QuorumCounters>,
    /// The replier's counters (with `reply`).
    pub reply: Option<ReplyCounters>,
    /// Its view when it stopped.
    pub view: u64,
    /// Whether it led that view.
    pub leader: bool,
    /// Its commit number when it stopped.
    pub commit_number: u64,
    /// Protocol counters.
    pub stats: ReplicaStats,
    /// The broadcaster's counters.
    pub broadcast: elec_broadcast::Stats,
    /// Broadcasts with destinations that got no copy.
    pub incomplete_broadcasts: u64,
    /// Datagrams dropped as malformed or from an address that may not send them.
    pub rejected_datagrams: u64,
}

/// A replica's report as JSON (`paxos replica --json` prints it as one
/// line; `paxos cluster` collects them into its `replica_stats`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaJson {
    pub index: usize,
    /// `kernel` or `user` ([`mode_name`]).
    pub mode: String,
    pub view: u64,
    pub leader: bool,
    pub commit_number: u64,
    pub prepares: u64,
    pub commits: u64,
    pub executed: u64,
    pub view_changes: u64,
    pub state_requests: u64,
    pub duplicate_requests: u64,
    pub broadcasts: u64,
    pub fan_outs: u64,
    pub kernel_copies: u64,
    pub copies_failed: u64,
    pub user_space_copies: u64,
    pub incomplete_broadcasts: u64,
    pub rejected_datagrams: u64,
    /// `none`, `all`, or the list of mechanisms.
    #[serde(default)]
    pub accel: String,
    #[serde(default)]
    pub received_datagrams: u64,
    #[serde(default)]
    pub received_acks: u64,
    /// Acks the quorum program passed as completing a quorum.
    #[serde(default)]
    pub quorum_passed: u64,
    /// Acks the quorum program dropped (counted, duplicate, late).
    #[serde(default)]
    pub quorum_dropped: u64,
    /// Acks the quorum program left to user space (not sure about them).
    #[serde(default)]
    pub quorum_left: u64,
    /// Prepares the reply program queued and acknowledged.
    #[serde(default)]
    pub reply_acked: u64,
    /// Prepares the reply program left to the socket.
    #[serde(default)]
    pub reply_left: u64,
    /// Prepares user space took and acknowledged itself.
    #[serde(default)]
    pub reply_user_acked: u64,
}

impl ReplicaReport {
    /// The report as JSON.
    pub fn to_json(&self) -> ReplicaJson {
        let b = &self.broadcast;
        let s = &self.stats;
        ReplicaJson {
            index: self.index,
            mode: mode_name(self.mode).to_string(),
            view: self.view,
            leader: self.leader,
            commit_number: self.commit_number,
            prepares: s.prepares,
            commits: s.commits,
            executed: s.executed,
            view_changes: s.view_changes,
            state_requests: s.state_requests,
            duplicate_requests: s.duplicate_requests,
            broadcasts: b.broadcasts,
            fan_outs: b.fan_outs,
            kernel_copies: b.kernel_copies,
            copies_failed: b.copies_failed,
            user_space_copies: b.user_space_copies,
            incomplete_broadcasts: self.incomplete_broadcasts,
            rejected_datagrams: self.rejected_datagrams,
            accel: self.accel.to_string(),
            received_datagrams: self.received_datagrams,
            received_acks: self.received_acks,
            quorum_passed: self.quorum.map_or(0, |q| q.kernel.quorums),
            quorum_dropped: self.quorum.map_or(0, |q| {
                q.kernel.counted + q.kernel.duplicates + q.kernel.late
            }),
            quorum_left: self.quorum.map_or(0, |q| {
                let k = q.kernel;
                k.other_epoch + k.outside_window + k.unknown_voter + k.not_acks + k.unverified
            }),
            reply_acked: self.reply.map_or(0, |r| r.kernel.acked),
            reply_left: self.reply.map_or(0, |r| {
                let k = r.kernel;
                k.ring_full
                    + k.gaps
                    + k.duplicates
                    + k.other_epoch
                    + k.frozen
                    + k.too_long
                    + k.bad_checksum
            }),
            reply_user_acked: self.reply.map_or(0, |r| r.user_space.acked),
        }
    }
}

/// `kernel` or `user`.
pub fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::Kernel => "kernel",
        _ => "user",
    }
}

/// Runs replica `opts.index` until `stop` is set. Must run on a thread
/// inside the network namespace that owns `opts.iface` and the replica's
/// address.
pub fn run_replica(opts: &ReplicaOptions, stop: &AtomicBool) -> Result<ReplicaReport, String> {
    let setup_started = Instant::now();
    let config = &opts.config;
    let me = opts.index;
    let Some(&local) = config.replicas.get(me) else {
        return Err(format!(
            "replica index {me} is out of range: the configuration has {} replicas",
            config.n()
        ));
    };
    let local = match opts.bind {
        Some(ip) => SocketAddr::new(ip.into(), local.port()),
        None => local,
    };
    let mode = if opts.accel.broadcast {
        Mode::Kernel
    } else {
        Mode::UserSpace
    };
    let broadcaster = Broadcaster::with_mode(&opts.iface, mode).map_err(|e| {
        format!(
            "cannot set up {} broadcasts on {}: {e}",
            mode_name(mode),
            opts.iface
        )
    })?;
    let quorum = opts
        .accel
        .quorum
        .then(|| Quorum::with_ingress(&opts.iface, local.port(), Mode::Kernel, opts.quorum_ingress))
        .transpose()
        .map_err(|e| format!("cannot count acks in the kernel on {}: {e}", opts.iface))?;
    let replier = opts
        .accel
        .reply
        .then(|| {
            Replier::with_mode(
                &opts.iface,
                local.port(),
                me as u16,
                Mode::Kernel,
                DEFAULT_RING_BYTES,
            )
        })
        .transpose()
        .map_err(|e| format!("cannot acknowledge in the kernel on {}: {e}", opts.iface))?;
    if let Some(replier) = &replier {
        replier.set_quiet(true);
    }
    // Bound last: a replica whose port answers is ready (its programs are
    // loaded), so clients and peers that wait for the port wait for that.
    let socket = UdpSocket::bind(local).map_err(|e| {
        format!("cannot bind replica {me} to {local}: {e} (is it an address of this host?)")
    })?;
    socket
        .set_read_timeout(Some(POLL))
        .map_err(|e| format!("setting the socket timeout: {e}"))?;
    let others: Vec<SocketAddr> = config
        .replicas
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != me)
        .map(|(_, a)| *a)
        .collect();
    let mut replica_at: HashMap<SocketAddr, usize> = config
        .replicas
        .iter()
        .enumerate()
        .map(|(i, a)| (*a, i))
        .collect();
    let renamed = opts
        .layout
        .clone()
        .map(|layout| follow_names(layout, RENAME_PERIOD));

    if std::env::var_os("PAXOS_DEBUG").is_some() {
        eprintln!("DEBUG replica {me} set up in {:?}", setup_started.elapsed());
    }
    let start = Instant::now();
    let now = || start.elapsed().as_micros() as Time;
    let seed = rand::random::<u64>();
    let mut shell = Shell {
        socket: &socket,
        broadcaster: &broadcaster,
        others,
        replicas: config.replicas.clone(),
        clients: HashMap::new(),
        incomplete_broadcasts: 0,
        quorum: quorum.as_ref(),
    };
    let mut replica = Replica::new(me, config.n(), opts.timing.clone(), seed, now());
    let mut rejected = 0u64;
    let mut out: Vec<Outgoing> = Vec::new();
    let mut buf = vec![0u8; MAX_DATAGRAM + 1];
    let parent = std::os::unix::process::parent_id();
    let mut last_parent_check = Instant::now();

    let debug = std::env::var_os("PAXOS_DEBUG").is_some();
    let mut last_state = (replica.view(), replica.status());
    let mut accel = AccelState {
        quorum: quorum.as_ref(),
        replier: replier.as_ref(),
        collecting: None,
        armed: None,
        received: 0,
        acks: 0,
    };
    while !stop.load(Ordering::Relaxed) {
        // A quiet replier wakes nobody: what it queued is taken here, on
        // every wake-up (the leader's next Commit, a timer), off the
        // leader's critical path, which the kernel's acks already served.
        let mut received = match socket.recv_from(&mut buf) {
            Ok((len, from)) => Some((len, from)),
            Err(e) if is_transient(&e) => None,
            Err(e) => return Err(format!("receiving on {local}: {e}")),
        };
        accel.deliver_ring(&mut replica, &mut shell, now(), &mut out, &replica_at)?;
        let mut batch = 0;
        while let Some((len, from)) = received {
            accel.received += 1;
            let bytes = &buf[..len];
            match accel.intercept(bytes, from, &socket)? {
                Intercepted::Handled => {}
                Intercepted::Quorum {
                    view,
                    round,
                    voters,
                } => {
                    for msg in accel::quorum_acks(view, round, &voters) {
                        replica.handle(now(), msg, &mut out);
                    }
                    shell.send(&mut out);
                }
                Intercepted::Taken => {
                    accel.deliver_ring(&mut replica, &mut shell, now(), &mut out, &replica_at)?;
                }
                Intercepted::No => match Message::from_datagram(bytes) {
                    Ok(msg) if sender_ok(&msg, from, config.n(), &replica_at) => {
                        if let Message::Request(entry) = &msg {
                            shell.clients.insert(entry.client_id, from);
                        }
                        if accel
                            .armed
                            .is_some_and(|view| accel::may_leave_view(&msg, view))
                        {
                            accel.quiesce(
                                &mut replica,
                                &mut shell,
                                now(),
                                &mut out,
                                &replica_at,
                            )?;
                        }
                        replica.handle(now(), msg, &mut out);
                        shell.send(&mut out);
                    }
                    _ => rejected += 1,
                },
            }
            batch += 1;
            if batch >= MAX_BATCH {
                break;
            }
            received = try_recv(&socket, &mut buf).map_err(|e| format!("receiving: {e}"))?;
        }
        if let Some((view, round, voters)) = accel.missed_quorum() {
            for msg in accel::quorum_acks(view, round, &voters) {
                replica.handle(now(), msg, &mut out);
            }
            shell.send(&mut out);
        }
        let t = now();
        if replica.view_change_due(t) {
            accel.quiesce(&mut replica, &mut shell, t, &mut out, &replica_at)?;
        }
        replica.tick(t, &mut out);
        if debug && last_state != (replica.view(), replica.status()) {
            eprintln!(
                "DEBUG replica {me} t={t} {last_state:?} -> {:?} {:?} op {} commit {}",
                replica.view(),
                replica.status(),
                replica.op_number(),
                replica.commit_number()
            );
            last_state = (replica.view(), replica.status());
        }
        replica.flush(t, &mut out);
        shell.send(&mut out);
        accel.follow(&replica, &shell.replicas)?;
        if let Some(Ok(addresses)) = renamed.as_ref().map(mpsc::Receiver::try_recv) {
            if addresses != shell.replicas {
                eprintln!("replica {me}: the replicas are at {addresses:?} now");
                shell.others = addresses
                    .iter()
                    .enumerate()
                    .filter(|&(i, _)| i != me)
                    .map(|(_, a)| *a)
                    .collect();
                replica_at = addresses.iter().enumerate().map(|(i, a)| (*a, i)).collect();
                shell.replicas = addresses;
            }
        }
        if opts.exit_with_parent && last_parent_check.elapsed() > Duration::from_millis(100) {
            last_parent_check = Instant::now();
            if std::os::unix::process::parent_id() != parent {
                break;
            }
        }
    }
    Ok(ReplicaReport {
        index: me,
        mode: broadcaster.mode(),
        accel: opts.accel,
        received_datagrams: accel.received,
        received_acks: accel.acks,
        quorum: quorum.as_ref().and_then(|q| q.counters().ok()),
        reply: replier.as_ref().and_then(|r| r.counters().ok()),
        view: replica.view(),
        leader: replica.is_leader(),
        commit_number: replica.commit_number(),
        stats: replica.stats().clone(),
        broadcast: broadcaster.stats(),
        incomplete_broadcasts: shell.incomplete_broadcasts,
        rejected_datagrams: rejected,
    })
}

/// How often a replica resolves the host names of its configuration again.
const RENAME_PERIOD: Duration = Duration::from_secs(5);

/// Resolves `layout`'s names every `period` on a thread of its own (a
/// lookup may take long), sending each complete answer, until the replica
/// is gone (the receiver dropped makes the next send fail).
fn follow_names(layout: Layout, period: Duration) -> mpsc::Receiver<Vec<SocketAddr>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        std::thread::sleep(period);
        if let Ok(config) = layout.resolve(Duration::ZERO) {
            if tx.send(config.replicas).is_err() {
                return;
            }
        }
    });
    rx
}

/// Replica messages must come from the address of the replica they name;
/// requests from anywhere else.
fn sender_ok(
    msg: &Message,
    from: SocketAddr,
    n: usize,
    replica_at: &HashMap<SocketAddr, usize>,
) -> bool {
    match msg.sender(n) {
        Some(i) => replica_at.get(&from) == Some(&i),
        None => matches!(msg, Message::Request(_)) && !replica_at.contains_key(&from),
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionRefused
    )
}

/// Receives a datagram if one is waiting, without blocking.
fn try_recv(socket: &UdpSocket, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
    loop {
        let mut iov = [io::IoSliceMut::new(buf)];
        match recvmsg::<SockaddrIn>(socket.as_raw_fd(), &mut iov, None, MsgFlags::MSG_DONTWAIT) {
            Ok(msg) => {
                let Some(addr) = msg.address else {
                    continue;
                };
                return Ok(Some((msg.bytes, SocketAddr::V4(SocketAddrV4::from(addr)))));
            }
            Err(Errno::EAGAIN) => return Ok(None),
            Err(Errno::EINTR | Errno::ECONNREFUSED) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// What became of a datagram the in-kernel mechanisms' user-space halves
/// looked at first.
enum Intercepted {
    /// Counted by the quorum collector (nothing else to do).
    Handled,
    /// Rounds up to `round` of `view` have a quorum of `voters`.
    Quorum {
        view: u64,
        round: u64,
        voters: Vec<u16>,
    },
    /// Taken by the replier: deliver what it queued.
    Taken,
    /// Not for them: decode and handle it as usual.
    No,
}

/// The user-space halves of the quorum collector and the replier, and
/// which view each follows.
struct AccelState<'a> {
    quorum: Option<&'a Quorum>,
    replier: Option<&'a Replier>,
    /// The view the collector counts acks of.
    collecting: Option<u64>,
    /// The view the replier is armed in.
    armed: Option<u64>,
    /// Datagrams user space received: socket and ring.
    received: u64,
    /// Of those, acks (`PrepareOk`s).
    acks: u64,
}

impl AccelState<'_> {
    fn intercept(
        &mut self,
        bytes: &[u8],
        from: SocketAddr,
        socket: &UdpSocket,
    ) -> Result<Intercepted, String> {
        let is_ack = Ack::parse(bytes).is_ok();
        self.acks += u64::from(is_ack);
        if let (Some(quorum), Some(view), true) = (self.quorum, self.collecting, is_ack) {
            return Ok(match quorum.receive(bytes, from) {
                Verdict::Quorum { round } => Intercepted::Quorum {
                    view,
                    round,
                    voters: quorum.voters(round),
                },
                Verdict::Counted | Verdict::Duplicate | Verdict::Late => Intercepted::Handled,
                _ => Intercepted::No,
            });
        }
        if let (Some(replier), Ok(_)) = (self.replier, Sequenced::parse(bytes)) {
            let receipt = replier
                .receive(socket, bytes, from)
                .map_err(|e| format!("acknowledging: {e}"))?;
            if let Receipt::Taken { .. } = receipt {
                return Ok(Intercepted::Taken);
            }
        }
        Ok(Intercepted::No)
    }

    /// Hands what the replier queued (ring and socket) to the core, in
    /// order; the core's answers to those `Prepare`s went out already.
    fn deliver_ring(
        &mut self,
        replica: &mut Replica,
        shell: &mut Shell<'_>,
        now: Time,
        out: &mut Vec<Outgoing>,
        replica_at: &HashMap<SocketAddr, usize>,
    ) -> Result<(), String> {
        self.deliver_taken(replica, shell, now, out, replica_at, false)
    }

    /// Before the core handles something that may take it out of its view
    /// (`accel::may_leave_view`, a view-change timeout): freezes the
    /// replier and hands every op it acknowledged to the core first, so that
    /// the core's log (its `DoViewChange`, say) holds all of them. `follow`
    /// arms the replier again if the core stays in its view.
    fn quiesce(
        &mut self,
        replica: &mut Replica,
        shell: &mut Shell<'_>,
        now: Time,
        out: &mut Vec<Outgoing>,
        replica_at: &HashMap<SocketAddr, usize>,
    ) -> Result<(), String> {
        if self.armed.is_none() {
            return Ok(());
        }
        self.deliver_taken(replica, shell, now, out, replica_at, true)
    }

    fn deliver_taken(
        &mut self,
        replica: &mut Replica,
        shell: &mut Shell<'_>,
        now: Time,
        out: &mut Vec<Outgoing>,
        replica_at: &HashMap<SocketAddr, usize>,
        quiesce: bool,
    ) -> Result<(), String> {
        let Some(replier) = self.replier else {
            return Ok(());
        };
        let mut taken: Vec<Datagram> = Vec::new();
        let next = if quiesce {
            let next = replier
                .quiesce(QUIESCE_TIMEOUT, |d| taken.push(d))
                .map_err(|e| format!("freezing the replier: {e}"))?;
            self.armed = None;
            next
        } else {
            replier
                .drain(|d| taken.push(d))
                .map_err(|e| format!("reading the replier's ring: {e}"))?;
            replier.next_round()
        };
        let acked_to = next.saturating_sub(1);
        for d in taken {
            if d.from_kernel {
                self.received += 1;
            }
            let from = SocketAddr::V4(d.from);
            match Message::from_sequenced(d.header, &d.payload) {
                Ok(msg) if sender_ok(&msg, from, replica.n(), replica_at) => {
                    replica.handle(now, msg, out);
                    accel::drop_acked(out, d.header.epoch, acked_to);
                    shell.send(out);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A quorum the collector completed but whose datagram never reached
    /// us (a full socket buffer): learnt from its memory instead.
    fn missed_quorum(&self) -> Option<(u64, u64, Vec<u16>)> {
        let (quorum, view) = (self.quorum?, self.collecting?);
        let round = quorum.advanced()?;
        Some((view, round, quorum.voters(round)))
    }

    /// Keeps the collector and the replier in step with the core: the
    /// collector counts the leader's current view, the replier takes the
    /// next op of a follower's current view from its leader.
    fn follow(&mut self, replica: &Replica, replicas: &[SocketAddr]) -> Result<(), String> {
        let v4 = |i: usize| match replicas.get(i) {
            Some(SocketAddr::V4(a)) => Some(*a),
            _ => None,
        };
        if let Some(quorum) = self.quorum {
            match accel::collecting(replica) {
                Some((view, followers, f)) if self.collecting != Some(view) => {
                    let voters: Vec<(u16, SocketAddrV4)> = followers
                        .iter()
                        .filter_map(|&i| Some((i as u16, v4(i)?)))
                        .collect();
                    quorum
                        .configure(view, &voters, f)
                        .map_err(|e| format!("configuring the quorum: {e}"))?;
                    quorum.extend(replica.op_number());
                    self.collecting = Some(view);
                }
                Some(_) => {}
                None => self.collecting = None,
            }
        }
        if let Some(replier) = self.replier {
            match accel::arming(replica) {
                Some((view, next, leader)) if self.armed != Some(view) => {
                    if let Some(leader) = v4(leader) {
                        replier
                            .arm(view, next, leader)
                            .map_err(|e| format!("arming the replier: {e}"))?;
                        self.armed = Some(view);
                    }
                }
                Some((_, next, _)) => replier.advance(next),
                None if self.armed.is_some() => {
                    replier.freeze();
                    self.armed = None;
                }
                None => {}
            }
        }
        Ok(())
    }
}

struct Shell<'a> {
    socket: &'a UdpSocket,
    broadcaster: &'a Broadcaster,
    others: Vec<SocketAddr>,
    replicas: Vec<SocketAddr>,
    /// Where each client's requests came from.
    clients: HashMap<u64, SocketAddr>,
    incomplete_broadcasts: u64,
    /// The leader's quorum collector: told about each round before its
    /// `Prepare` leaves, so that its acks are counted from the first.
    quorum: Option<&'a Quorum>,
}

impl Shell<'_> {
    /// Sends and clears `out`. Send errors are losses the protocol recovers
    /// from, so they are counted, not fatal.
    fn send(&mut self, out: &mut Vec<Outgoing>) {
        let ack_port = self.socket.local_addr().map_or(0, |a| a.port());
        for Outgoing { to, msg } in out.drain(..) {
            if let (Some(quorum), Message::Prepare { op_number, .. }) = (self.quorum, &msg) {
                quorum.extend(*op_number);
            }
            let bytes = msg.to_datagram(ack_port);
            match to {
                To::Replica(i) => {
                    if let Some(addr) = self.replicas.get(i) {
                        let _ = self.socket.send_to(&bytes, addr);
                    }
                }
                To::Client(id) => {
                    if let Some(addr) = self.clients.get(&id) {
                        let _ = self.socket.send_to(&bytes, addr);
                    }
                }
                To::OtherReplicas if bytes.len() <= self.broadcaster.max_payload() => {
                    match self
                        .broadcaster
                        .broadcast(self.socket, &bytes, &self.others)
                    {
                        Ok(report) if report.is_complete() => {}
                        _ => self.incomplete_broadcasts += 1,
                    }
                }
                To::OtherReplicas => {
                    // Too big for one frame (a view change's log suffix):
                    // IP fragmentation through ordinary sends.
                    for addr in &self.others {
                        let _ = self.socket.send_to(&bytes, addr);
                    }
                }
            }
        }
    }
}

// ---- clients ------------------------------------------------------------

/// Settings of a client run.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The cluster.
    pub config: Config,
    /// Measured requests, over all client threads.
    pub requests: usize,
    /// Warm-up requests before the measurement, over all client threads.
    pub warmup: usize,
    /// Concurrent clients (threads), each with one request in flight.
    pub threads: usize,
    /// Keys the workload spreads over.
    pub keys: usize,
    /// Bytes per written value (at least enough to make values unique).
    pub value_size: usize,
    /// Percentage of reads; the rest are writes, one in five of them CAS.
    pub read_percent: u32,
    /// Retry a request after this long without a reply.
    pub retry: Duration,
    /// Give a request up after this long (it stays in the history as
    /// unanswered).
    pub give_up: Duration,
    /// Local address to bind the client sockets to (port 0).
    pub bind: SocketAddrV4,
}

/// What a client run measured.
#[derive(Clone, Debug, Default)]
pub struct ClientReport {
    /// Measured requests that got a reply.
    pub completed: usize,
    /// Requests given up (warm-up and measured).
    pub gave_up: usize,
    /// Wall time of the measured phase.
    pub elapsed: Duration,
    /// Latencies of the measured requests in microseconds, sorted.
    pub latencies_us: Vec<u64>,
    /// Retransmissions.
    pub retries: u64,
    /// Every operation, warm-up included.
    pub history: Vec<Operation>,
}

impl ClientReport {
    /// Completed requests per second in the measured phase.
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The q-quantile of the latencies (0 < q <= 1), in microseconds.
    pub fn percentile(&self, q: f64) -> u64 {
        let n = self.latencies_us.len();
        if n == 0 {
            return 0;
        }
        let rank = ((q * n as f64).ceil() as usize).clamp(1, n);
        self.latencies_us[rank - 1]
    }

    /// Mean latency in microseconds.
    pub fn mean_us(&self) -> f64 {
        let n = self.latencies_us.len().max(1);
        self.latencies_us.iter().sum::<u64>() as f64 / n as f64
    }
}

/// Called at the boundaries of the measured phase (for CPU snapshots).
pub trait Phases: Sync {
    /// Every client finished its warm-up; the measurement starts after this returns.
    fn measurement_starts(&self) {}
    /// A measured request completed (`done` so far).
    fn progress(&self, _done: u64) {}
}

impl Phases for () {}

/// Runs `opts.threads` closed-loop clients; returns when every request got
/// its reply or was given up. Sockets are created by the calling thread's
/// network namespace (the client threads inherit it).
pub fn run_clients(opts: &ClientOptions, phases: &dyn Phases) -> io::Result<ClientReport> {
    let threads = opts.threads.max(1);
    let origin = Instant::now();
    let share = |total: usize, t: usize| total / threads + usize::from(t < total % threads);
    let barrier = Barrier::new(threads + 1);
    let measured = AtomicU64::new(0);
    let results: Mutex<Vec<Worker>> = Mutex::new(Vec::new());
    let sockets = (0..threads)
        .map(|_| UdpSocket::bind(opts.bind))
        .collect::<io::Result<Vec<_>>>()?;
    let mut start = Instant::now();
    std::thread::scope(|s| -> io::Result<()> {
        let mut handles = Vec::new();
        for (t, socket) in sockets.into_iter().enumerate() {
            let (barrier, results, measured) = (&barrier, &results, &measured);
            let warmup = share(opts.warmup, t);
            let requests = share(opts.requests, t);
            handles.push(s.spawn(move || {
                let mut w = Worker::new(opts, t, socket, origin);
                let ok = w.run(warmup, None).and_then(|()| {
                    barrier.wait();
                    barrier.wait();
                    w.run(requests, Some((measured, phases)))
                });
                let failed = ok.as_ref().err().map(|e| e.to_string());
                results.lock().unwrap_or_else(|e| e.into_inner()).push(w);
                failed
            }));
        }
        barrier.wait();
        phases.measurement_starts();
        start = Instant::now();
        barrier.wait();
        for h in handles {
            match h.join() {
                Ok(None) => {}
                Ok(Some(e)) => return Err(io::Error::other(e)),
                Err(p) => std::panic::resume_unwind(p),
            }
        }
        Ok(())
    })?;
    let workers = results.into_inner().unwrap_or_else(|e| e.into_inner());
    let end = workers.iter().map(|w| w.finished).max().unwrap_or(start);
    let mut report = ClientReport {
        elapsed: end.saturating_duration_since(start),
        ..ClientReport::default()
    };
    for w in workers {
        report.completed += w.latencies_us.len();
        report.gave_up += w.gave_up;
        report.retries += w.core.retries();
        report.latencies_us.extend(w.latencies_us);
        report.history.extend(w.history);
    }
    report.latencies_us.sort_unstable();
    Ok(report)
}

/// One client thread.
struct Worker<'a> {
    opts: &'a ClientOptions,
    index: usize,
    socket: UdpSocket,
    origin: Instant,
    core: Client,
    rng: SmallRng,
    issued: u64,
    last_seen: HashMap<Vec<u8>, Option<Vec<u8>>>,
    latencies_us: Vec<u64>,
    history: Vec<Operation>,
    gave_up: usize,
    finished: Instant,
}

impl<'a> Worker<'a> {
    fn new(opts: &'a ClientOptions, index: usize, socket: UdpSocket, origin: Instant) -> Self {
        let mut rng = SmallRng::from_entropy();
        // Random ids: a client id must never be reused with the same
        // cluster (the replicas remember the last request of each).
        let id = rng.gen::<u64>();
        Worker {
            opts,
            index,
            socket,
            origin,
            core: Client::new(id, opts.config.n(), opts.retry.as_micros() as Time),
            rng,
            issued: 0,
            last_seen: HashMap::new(),
            latencies_us: Vec::new(),
            history: Vec::new(),
            gave_up: 0,
            finished: Instant::now(),
        }
    }

    fn now(&self) -> Time {
        self.origin.elapsed().as_micros() as Time
    }

    fn next_op(&mut self) -> Op {
        let key = format!("k{}", self.rng.gen_range(0..self.opts.keys.max(1))).into_bytes();
        self.issued += 1;
        let mut value = format!("{}-{}-{}", self.index, self.core.id() % 10_000, self.issued);
        while value.len() < self.opts.value_size {
            value.push('.');
        }
        let value = value.into_bytes();
        let roll = self.rng.gen_range(0..100);
        if roll < self.opts.read_percent {
            Op::Get { key }
        } else if roll % 5 == 0 {
            let expected = self.last_seen.get(&key).cloned().flatten();
            Op::Cas {
                key,
                expected,
                new: value,
            }
        } else {
            Op::Put { key, value }
        }
    }

    fn send(&self, to: ClientTo, msg: &Message) -> io::Result<()> {
        let bytes = msg.encode();
        let replicas = &self.opts.config.replicas;
        let targets: &[SocketAddr] = match to {
            ClientTo::Replica(i) => std::slice::from_ref(&replicas[i % replicas.len()]),
            ClientTo::AllReplicas => replicas,
        };
        for addr in targets {
            if let Err(e) = self.socket.send_to(&bytes, addr) {
                if !is_transient(&e) {
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    /// Issues `count` requests one after another.
    fn run(&mut self, count: usize, measured: Option<(&AtomicU64, &dyn Phases)>) -> io::Result<()> {
        self.socket.set_read_timeout(Some(self.opts.retry / 2))?;
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        for _ in 0..count {
            let op = self.next_op();
            let started = Instant::now();
            let invoke = self.now();
            let Some((to, msg)) = self.core.invoke(invoke, op.clone()) else {
                return Err(io::Error::other("client core busy"));
            };
            self.send(to, &msg)?;
            let result = loop {
                match self.socket.recv_from(&mut buf) {
                    Ok((len, _)) => {
                        if let Ok(reply) = Message::decode(&buf[..len]) {
                            if let Some(result) = self.core.handle(&reply) {
                                break Some(result);
                            }
                        }
                    }
                    Err(e) if is_transient(&e) => {}
                    Err(e) => return Err(e),
                }
                if started.elapsed() > self.opts.give_up {
                    self.core.abandon();
                    break None;
                }
                if let Some((to, msg)) = self.core.tick(self.now()) {
                    self.send(to, &msg)?;
                }
            };
            let response = result.map(|r| (self.now(), r));
            match &response {
                Some((_, result)) => {
                    self.remember(&op, result);
                    if let Some((done, phases)) = measured {
                        self.latencies_us.push(started.elapsed().as_micros() as u64);
                        phases.progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                    }
                }
                None => self.gave_up += 1,
            }
            self.history.push(Operation {
                client: self.core.id(),
                op,
                invoke,
                response,
            });
        }
        self.finished = Instant::now();
        Ok(())
    }

    fn remember(&mut self, op: &Op, result: &OpResult) {
        let seen = match (result, op) {
            (OpResult::Value(v), _) => v.clone(),
            (OpResult::Written, Op::Put { value, .. }) => Some(value.clone()),
            (OpResult::Cas { swapped: true }, Op::Cas { new, .. }) => Some(new.clone()),
            _ => return,
        };
        self.last_seen.insert(op.key().to_vec(), seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `body` on a thread with a mount namespace of its own in which
    /// `hosts` is bind-mounted over /etc/hosts (needs root); threads it
    /// starts share that view.
    fn with_hosts_file<R: Send>(hosts: &std::path::Path, body: impl FnOnce() -> R + Send) -> R {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    use nix::mount::{mount, MsFlags};
                    use nix::sched::{unshare, CloneFlags};
                    unshare(CloneFlags::CLONE_FS | CloneFlags::CLONE_NEWNS).expect("unshare");
                    mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .expect("making / private");
                    mount(
                        Some(hosts),
                        "/etc/hosts",
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .expect("bind-mounting the hosts file");
                    body()
                })
                .join()
                .expect("the test thread")
        })
    }

    #[test]
    fn a_running_replica_follows_a_peer_to_its_new_address() {
        elec_testbed::require_root!();
        let hosts = std::env::temp_dir().join(format!("paxos-hosts-{}", std::process::id()));
        let write = |peer: &str| {
            std::fs::write(
                &hosts,
                format!(
                    "127.0.0.1 localhost\n127.0.0.1 r0.test\n{peer} r1.test\n127.0.0.4 r2.test\n"
                ),
            )
            .unwrap()
        };
        write("127.0.0.2");
        let layout = Layout::parse(
            "f 1\nreplica r0.test:7000\nreplica r1.test:7000\nreplica r2.test:7000\n",
        )
        .unwrap();
        let seen = with_hosts_file(&hosts, || {
            let names = follow_names(layout, Duration::from_millis(50));
            let first = names
                .recv_timeout(Duration::from_secs(5))
                .expect("a first answer");
            // The peer's pod comes back elsewhere.
            write("127.0.0.3");
            let moved = std::iter::from_fn(|| names.recv_timeout(Duration::from_secs(5)).ok())
                .find(|addresses| addresses[1] != first[1])
                .expect("the new address");
            (first, moved)
        });
        let _ = std::fs::remove_file(&hosts);
        let at = |ip: &str| SocketAddr::new(ip.parse().unwrap(), 7000);
        assert_eq!(seen.0, [at("127.0.0.1"), at("127.0.0.2"), at("127.0.0.4")]);
        assert_eq!(seen.1, [at("127.0.0.1"), at("127.0.0.3"), at("127.0.0.4")]);
    }
}
