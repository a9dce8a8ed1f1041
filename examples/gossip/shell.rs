//! The thin shell around the protocol core: a UDP socket whose sends go
//! through `elec_broadcast::Broadcaster` (one call per rumour, however many
//! peers), a TCP listener and client for metadata too large for a datagram,
//! and the threads that drive the core's timers.
//!
//! [`Gossip`] is the Rust face of pekonode's API: [`Gossip::new`] (`New`),
//! [`Handle::set`] (`Set`), [`Handle::join`] (`Join`), [`Handle::members`]
//! (`Get`), [`Handle::stop`] / [`Handle::start`] (`Stop` / `Start`),
//! [`Handle::publish`] (`Publish`), [`Handle::read`] (`Read`).

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use elec_broadcast::{Broadcaster, Mode};
use rand::rngs::SmallRng;
use rand::SeedableRng;

use crate::codec::{NodeId, Version};
use crate::protocol::{self, Action, Event, Metadata, Node, PublishError};

/// Longest the UDP loop sleeps before looking at the timers and the stop flag.
const POLL: Duration = Duration::from_millis(50);
/// Connect, read and write timeout of TCP metadata transfers.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);
/// Most TCP connections served or fetches run at once.
const MAX_TCP_WORKERS: usize = 16;

/// Everything a node needs to run.
#[derive(Debug, Clone)]
pub struct ShellConfig {
    /// Address of the UDP socket and the TCP listener, and the node's name in
    /// the cluster: a specific IPv4 address the peers can reach.
    pub listen: SocketAddrV4,
    /// Peers to contact first (pekonode `Set`).
    pub seeds: Vec<SocketAddrV4>,
    /// Protocol settings.
    pub protocol: protocol::Config,
    /// Kernel fan-out, user-space `sendmmsg`, or kernel where possible.
    pub mode: Mode,
    /// Interface the peers are reached through (None: the one that owns the
    /// listen address).
    pub interface: Option<String>,
    /// Seed of the protocol's RNG (None: from the OS).
    pub rng_seed: Option<u64>,
}

/// Counters of a running node.
#[derive(Debug, Clone, Copy)]
pub struct NodeStats {
    /// The protocol core's counters.
    pub protocol: protocol::Stats,
    /// The broadcaster's counters.
    pub broadcast: elec_broadcast::Stats,
    /// The broadcaster's backend.
    pub mode: Mode,
    /// Datagrams that could not be sent.
    pub send_failures: u64,
    /// Datagrams longer than the interface MTU allows for a broadcast, sent
    /// one `sendto` at a time (IP fragments them).
    pub oversize_sends: u64,
    /// The metadata's version.
    pub version: Version,
    /// Live members, this node included.
    pub members: usize,
    /// Whether the node joined.
    pub joined: bool,
    /// Whether heartbeats are paused.
    pub paused: bool,
}

/// A running gossip node: its threads stop when it is dropped.
pub struct Gossip {
    handle: Handle,
    threads: Vec<JoinHandle<()>>,
}

/// A cheap, cloneable handle to a running node (for the control interface).
#[derive(Clone)]
pub struct Handle {
    shared: Arc<Shared>,
}

struct Shared {
    node: Mutex<Node>,
    socket: UdpSocket,
    broadcaster: Broadcaster,
    listener: TcpListener,
    stopping: AtomicBool,
    send_failures: AtomicU64,
    oversize_sends: AtomicU64,
    tcp_workers: AtomicUsize,
}

fn lock(node: &Mutex<Node>) -> MutexGuard<'_, Node> {
    // Every core method leaves the node consistent before it can panic.
    node.lock().unwrap_or_else(PoisonError::into_inner)
}

impl std::ops::Deref for Gossip {
    type Target = Handle;

    fn deref(&self) -> &Handle {
        &self.handle
    }
}

impl Gossip {
    /// Binds the sockets, sets up the broadcaster and starts the threads
    /// (pekonode `New` and `Set`); call [`Handle::join`] to start gossiping.
    ///
    /// Must be called from a thread inside the network namespace of the
    /// listen address (the threads it starts stay there).
    pub fn new(config: ShellConfig) -> Result<Gossip, Box<dyn std::error::Error + Send + Sync>> {
        if config.listen.ip().is_unspecified() || config.listen.port() == 0 {
            return Err(format!(
                "the listen address {} names this node to its peers: give a specific IPv4 \
                 address and port",
                config.listen
            )
            .into());
        }
        let interface = match config.interface.clone() {
            Some(name) => name,
            None => interface_of(*config.listen.ip())?,
        };
        let socket = UdpSocket::bind(config.listen)
            .map_err(|e| format!("binding UDP {}: {e}", config.listen))?;
        let listener = TcpListener::bind(config.listen)
            .map_err(|e| format!("binding TCP {}: {e}", config.listen))?;
        let broadcaster = Broadcaster::with_mode(&interface, config.mode)
            .map_err(|e| format!("setting up broadcasts on {interface}: {e}"))?;
        log::info!(
            "node {} on {interface}: {:?} broadcasts{}",
            config.listen,
            broadcaster.mode(),
            broadcaster
                .fallback_reason()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        let rng = match config.rng_seed {
            Some(seed) => SmallRng::seed_from_u64(seed),
            None => SmallRng::from_entropy(),
        };
        // A restarted node must start above the sequence numbers it used
        // before: microseconds since the epoch are (the clock only needs to
        // move forward across restarts of one node).
        let first_seq = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        let now = Instant::now();
        let mut node = Node::new(
            NodeId(config.listen),
            config.protocol.clone(),
            rng,
            first_seq,
            now,
        );
        node.set(config.seeds.iter().copied().map(NodeId), now);
        let shared = Arc::new(Shared {
            node: Mutex::new(node),
            socket,
            broadcaster,
            listener,
            stopping: AtomicBool::new(false),
            send_failures: AtomicU64::new(0),
            oversize_sends: AtomicU64::new(0),
            tcp_workers: AtomicUsize::new(0),
        });
        let mut threads = Vec::new();
        let udp = Arc::clone(&shared);
        threads.push(
            thread::Builder::new()
                .name("gossip-udp".into())
                .spawn(move || udp.udp_loop())?,
        );
        let tcp = Arc::clone(&shared);
        threads.push(
            thread::Builder::new()
                .name("gossip-tcp".into())
                .spawn(move || tcp.tcp_loop())?,
        );
        Ok(Gossip {
            handle: Handle { shared },
            threads,
        })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Stops the threads and closes the sockets (also done on drop).
    pub fn shutdown(mut self) {
        self.stop_threads();
    }

    fn stop_threads(&mut self) {
        let shared = &self.handle.shared;
        shared.stopping.store(true, Ordering::SeqCst);
        wake_accept(&shared.listener);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for Gossip {
    fn drop(&mut self) {
        self.stop_threads();
    }
}

impl Handle {
    /// This node's id (its listen address).
    pub fn id(&self) -> NodeId {
        lock(&self.shared.node).id()
    }

    /// Adds peers to contact (pekonode `Set`).
    pub fn set(&self, peers: &[SocketAddrV4]) {
        lock(&self.shared.node).set(peers.iter().copied().map(NodeId), Instant::now());
    }

    /// Starts heartbeats and anti-entropy (pekonode `Join`).
    pub fn join(&self) {
        self.with_node(|node| node.join(Instant::now()));
    }

    /// Live members, this node included (pekonode `Get`).
    pub fn members(&self) -> Vec<NodeId> {
        lock(&self.shared.node).members()
    }

    /// Pauses heartbeats (pekonode `Stop`).
    pub fn stop(&self) {
        lock(&self.shared.node).stop();
    }

    /// Resumes heartbeats, or joins (pekonode `Start`).
    pub fn start(&self) {
        self.with_node(|node| node.start(Instant::now()));
    }

    /// Publishes new cluster metadata (pekonode `Publish`).
    pub fn publish(&self, data: Vec<u8>) -> Result<Version, PublishError> {
        self.with_node(|node| node.publish(data, Instant::now()))
    }

    /// The current cluster metadata (pekonode `Read`).
    pub fn read(&self) -> Metadata {
        lock(&self.shared.node).read().clone()
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        let node = lock(&self.shared.node);
        NodeStats {
            protocol: node.stats(),
            broadcast: self.shared.broadcaster.stats(),
            mode: self.shared.broadcaster.mode(),
            send_failures: self.shared.send_failures.load(Ordering::Relaxed),
            oversize_sends: self.shared.oversize_sends.load(Ordering::Relaxed),
            version: node.read().version,
            members: node.members().len(),
            joined: node.is_joined(),
            paused: node.is_paused(),
        }
    }

    /// The largest metadata accepted.
    pub fn max_metadata(&self) -> usize {
        lock(&self.shared.node).config().max_metadata
    }

    /// Runs `f` on the core, then carries out what it asked for.
    fn with_node<R>(&self, f: impl FnOnce(&mut Node) -> R) -> R {
        self.shared.with_node(f)
    }
}

impl Shared {
    fn with_node<R>(self: &Arc<Self>, f: impl FnOnce(&mut Node) -> R) -> R {
        let (result, actions, events) = {
            let mut node = lock(&self.node);
            let result = f(&mut node);
            (result, node.drain_actions(), node.drain_events())
        };
        log_events(&events);
        self.execute(actions);
        result
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// Receives datagrams and runs the timers until the node stops.
    fn udp_loop(self: Arc<Self>) {
        let max_packet = lock(&self.node).config().max_packet;
        // One byte more than allowed, so an oversized datagram shows as such.
        let mut buf = vec![0u8; max_packet + 1];
        while !self.stopping() {
            let wait = lock(&self.node)
                .next_deadline()
                .map_or(POLL, |deadline| {
                    deadline.saturating_duration_since(Instant::now())
                })
                .clamp(Duration::from_millis(1), POLL);
            let _ = self.socket.set_read_timeout(Some(wait));
            let received = self.socket.recv_from(&mut buf);
            self.with_node(|node| {
                let now = Instant::now();
                if let Ok((len, _)) = received {
                    node.handle_packet(&buf[..len], now);
                }
                node.tick(now);
            });
            if let Err(err) = received {
                if !matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) {
                    log::debug!("receiving: {err}");
                }
            }
        }
    }

    fn execute(self: &Arc<Self>, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::Send { to, packet } => self.send(&to, &packet),
                Action::Fetch {
                    from,
                    version,
                    request,
                } => self.spawn_fetch(from, version, request),
            }
        }
    }

    /// One broadcast: the kernel clones the datagram for every peer (or
    /// `sendmmsg` sends them, in user-space mode).
    fn send(&self, to: &[SocketAddr], packet: &[u8]) {
        if packet.len() > self.broadcaster.max_payload() {
            // Larger than one frame: the kernel fan-out cannot clone IP
            // fragments, so send each copy on its own.
            for addr in to {
                self.oversize_sends.fetch_add(1, Ordering::Relaxed);
                if let Err(err) = self.socket.send_to(packet, addr) {
                    self.send_failures.fetch_add(1, Ordering::Relaxed);
                    log::debug!("sending {} bytes to {addr}: {err}", packet.len());
                }
            }
            return;
        }
        match self.broadcaster.broadcast(&self.socket, packet, to) {
            Ok(report) => {
                if !report.failed.is_empty() {
                    self.send_failures
                        .fetch_add(report.failed.len() as u64, Ordering::Relaxed);
                    log::debug!("no copy reached {:?}", report.failed);
                }
            }
            Err(err) => {
                self.send_failures
                    .fetch_add(to.len() as u64, Ordering::Relaxed);
                log::debug!("broadcast to {to:?}: {err}");
            }
        }
    }

    /// Takes a TCP worker slot, or returns false when all are busy.
    fn take_worker(&self) -> bool {
        self.tcp_workers
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < MAX_TCP_WORKERS).then_some(n + 1)
            })
            .is_ok()
    }

    fn spawn_fetch(self: &Arc<Self>, from: NodeId, version: Version, request: Vec<u8>) {
        if !self.take_worker() {
            lock(&self.node).fetch_failed(version);
            return;
        }
        let shared = Arc::clone(self);
        let spawned = thread::Builder::new()
            .name("gossip-fetch".into())
            .spawn(move || {
                let max = lock(&shared.node).config().max_metadata + 4096;
                match fetch(from.addr(), &request, max) {
                    Ok(reply) => shared.with_node(|node| node.handle_fetched(&reply)),
                    Err(err) => {
                        log::debug!("fetching metadata {version} from {from}: {err}");
                        lock(&shared.node).fetch_failed(version);
                    }
                }
                shared.tcp_workers.fetch_sub(1, Ordering::AcqRel);
            });
        if spawned.is_err() {
            self.tcp_workers.fetch_sub(1, Ordering::AcqRel);
            lock(&self.node).fetch_failed(version);
        }
    }

    /// Serves metadata fetches until the node stops.
    fn tcp_loop(self: Arc<Self>) {
        for stream in self.listener.incoming() {
            if self.stopping() {
                break;
            }
            let Ok(stream) = stream else {
                // Not only EMFILE and the like: after wake_accept, every
                // accept fails at once; do not spin while the flag is read.
                thread::sleep(Duration::from_millis(10));
                continue;
            };
            if !self.take_worker() {
                continue; // dropped: the peer retries with someone else
            }
            let shared = Arc::clone(&self);
            let spawned = thread::Builder::new()
                .name("gossip-serve".into())
                .spawn(move || {
                    if let Err(err) = shared.serve_fetch(stream) {
                        log::debug!("serving a metadata fetch: {err}");
                    }
                    shared.tcp_workers.fetch_sub(1, Ordering::AcqRel);
                });
            if spawned.is_err() {
                self.tcp_workers.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }

    fn serve_fetch(&self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_read_timeout(Some(TCP_TIMEOUT))?;
        stream.set_write_timeout(Some(TCP_TIMEOUT))?;
        let max = lock(&self.node).config().max_packet;
        let request = read_frame(&mut stream, max)?;
        let reply = lock(&self.node).answer_fetch(&request);
        if let Some(reply) = reply {
            write_frame(&mut stream, &reply)?;
        }
        stream.shutdown(Shutdown::Both)
    }
}

fn log_events(events: &[Event]) {
    for event in events {
        match event {
            Event::Joined(node) => log::info!("member {node} joined"),
            Event::Evicted(node) => log::info!("member {node} removed: silent past the timeout"),
            Event::Metadata(version) => log::info!("metadata now at version {version}"),
        }
    }
}

/// Makes a thread blocked in `accept` on `listener` return (with an error),
/// from any thread and any network namespace: shutting a listening socket
/// down wakes its waiters on Linux.
pub fn wake_accept(listener: &TcpListener) {
    let _ = socket2::SockRef::from(listener).shutdown(Shutdown::Both);
}

/// One request frame out, one reply frame back.
fn fetch(peer: SocketAddr, request: &[u8], max_reply: usize) -> io::Result<Vec<u8>> {
    let mut stream = TcpStream::connect_timeout(&peer, TCP_TIMEOUT)?;
    stream.set_read_timeout(Some(TCP_TIMEOUT))?;
    stream.set_write_timeout(Some(TCP_TIMEOUT))?;
    write_frame(&mut stream, request)?;
    read_frame(&mut stream, max_reply)
}

/// TCP frames: a 4-byte big-endian length, then that many bytes.
fn write_frame(stream: &mut impl Write, frame: &[u8]) -> io::Result<()> {
    let len = u32::try_from(frame.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame over 4 GiB"))?;
    stream.write_all(&len.to_be_bytes())?;
    stream.write_all(frame)?;
    stream.flush()
}

fn read_frame(stream: &mut impl Read, max: usize) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes, at most {max} expected"),
        ));
    }
    let mut frame = vec![0u8; len];
    stream.read_exact(&mut frame)?;
    Ok(frame)
}

/// The interface that owns `ip` (`lo` for loopback addresses).
pub fn interface_of(ip: Ipv4Addr) -> Result<String, Box<dyn std::error::Error + Send + Sync>> {
    if ip.is_loopback() {
        return Ok("lo".into());
    }
    for ifaddr in nix::ifaddrs::getifaddrs()? {
        let owns = ifaddr
            .address
            .as_ref()
            .and_then(|a| a.as_sockaddr_in())
            .is_some_and(|sin| sin.ip() == ip);
        if owns {
            return Ok(ifaddr.interface_name);
        }
    }
    Err(format!("no interface has the address {ip}: give --iface").into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_long_ones_are_refused() {
        let mut wire = Vec::new();
        write_frame(&mut wire, b"hello").unwrap();
        assert_eq!(wire, b"\0\0\0\x05hello");
        assert_eq!(read_frame(&mut &wire[..], 5).unwrap(), b"hello");
        assert!(read_frame(&mut &wire[..], 4).is_err());
        assert!(read_frame(&mut &wire[..7], 5).is_err());
    }
}
