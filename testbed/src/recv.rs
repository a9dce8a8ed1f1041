//! UDP receivers inside receiver namespaces: recording ([`Receivers`]) and
//! counting-only ([`Counters`]).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use crate::error::{context, last_os_error};
use crate::ns::for_each_namespace;
use crate::pattern::is_pattern;
use crate::sock::{bind_udp6, ifindex_here, is_link_local};
use crate::testbed::IFACE;
use crate::wait::wait_until;

/// Receive buffer requested for every receiver socket.
pub const RECEIVER_RCVBUF: usize = 4 << 20;

/// Datagrams read from one socket before the others get a turn.
const DRAIN_BUDGET: usize = 256;

/// Sockets of one receiver namespace: `(index into the dest list, dest)`.
pub(crate) struct Group {
    pub(crate) ns: String,
    pub(crate) dests: Vec<(usize, SocketAddr)>,
}

/// Wakes and stops the receiver threads.
#[derive(Debug)]
struct Stop {
    flag: AtomicBool,
    efd: OwnedFd,
}

impl Stop {
    fn new() -> io::Result<Arc<Stop>> {
        // SAFETY: plain eventfd(2) call without pointers.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Arc::new(Stop {
            flag: AtomicBool::new(false),
            // SAFETY: `fd` is a fresh descriptor owned by nothing else.
            efd: unsafe { OwnedFd::from_raw_fd(fd) },
        }))
    }

    fn trigger(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let one: u64 = 1;
        // SAFETY: writes the 8 bytes of `one`, which lives across the call,
        // to the eventfd owned by `self`.
        unsafe { libc::write(self.efd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }
}

fn set_rcvbuf(sock: &UdpSocket, bytes: usize) {
    let val = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: passes a pointer to `val`, a c_int that lives across the
        // call, with its exact size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return;
        }
    }
}

/// Binds `dest` (an IPv6 one with `IPV6_V6ONLY` on, so that an IPv4 socket
/// can have the same port), retrying for a moment while the address is in
/// use: a socket closed just before (the previous receivers' on the same
/// address) can stay bound a little longer when another thread of the
/// process forks (to run `ip`, say), because the child holds copies of every
/// descriptor until it execs.
fn bind_retrying(dest: SocketAddr) -> io::Result<UdpSocket> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let bound = match dest {
            SocketAddr::V4(v4) => UdpSocket::bind(v4),
            SocketAddr::V6(v6) => bind_udp6(v6, true),
        };
        match bound {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(2));
            }
            result => return result,
        }
    }
}

/// Binds a receiver socket for `dest` in the calling thread's namespace
/// `ns`. A link-local IPv6 destination is bound on the receiver's interface
/// ([`IFACE`]) whatever its scope id, which can only name an interface of
/// the sender (as the scope id of a destination to send to).
fn bind_one(ns: &str, dest: SocketAddr) -> io::Result<UdpSocket> {
    let mut bind_to = dest;
    if let SocketAddr::V6(v6) = &mut bind_to {
        v6.set_flowinfo(0);
        v6.set_scope_id(0);
        if is_link_local(v6.ip()) {
            v6.set_scope_id(ifindex_here(IFACE).map_err(|e| {
                context(
                    e,
                    format_args!("binding receiver socket {dest} in namespace {ns}"),
                )
            })?);
        }
    }
    let sock = bind_retrying(bind_to).map_err(|e| {
        context(
            e,
            format_args!("cannot bind receiver socket {dest} in namespace {ns}"),
        )
    })?;
    set_rcvbuf(&sock, RECEIVER_RCVBUF);
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// Binds every group's sockets inside its namespace (one helper thread).
fn bind_groups(groups: &[Group]) -> io::Result<Vec<Vec<UdpSocket>>> {
    let names: Vec<&str> = groups.iter().map(|g| g.ns.as_str()).collect();
    for_each_namespace(&names, |i| {
        groups[i]
            .dests
            .iter()
            .map(|(_, d)| bind_one(&groups[i].ns, *d))
            .collect()
    })
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain old data; CPU_ZERO/CPU_SET only write into
    // `set`, and sched_setaffinity reads `set` with its exact size.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpu {cpu} out of range"),
            ));
        }
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if rc != 0 {
        return Err(last_os_error(format_args!(
            "cannot pin receiver thread to cpu {cpu}"
        )));
    }
    Ok(())
}

/// Polls `socks` and the stop eventfd; calls `drain(i)` when socket `i` is
/// readable. On stop, drains every socket once more and returns.
fn poll_loop(socks: &[UdpSocket], stop: &Stop, mut drain: impl FnMut(usize)) {
    let mut pfds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| s.as_raw_fd())
        .chain(std::iter::once(stop.efd.as_raw_fd()))
        .map(|fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let n = socks.len();
    loop {
        // SAFETY: `pfds` is a live, correctly sized array of pollfd.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if rc < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            break;
        }
        for (i, p) in pfds[..n].iter().enumerate() {
            if p.revents != 0 {
                drain(i);
            }
        }
        if pfds[n].revents != 0 || stop.flag.load(Ordering::SeqCst) {
            break;
        }
    }
    for i in 0..n {
        drain(i);
    }
}

/// Waits at most `timeout` for `current()` to reach `n`; returns its last
/// value. Polls often: benchmarks time deliveries with it.
fn wait_for_count(timeout: Duration, mut current: impl FnMut() -> u64, n: u64) -> u64 {
    let mut c = 0;
    wait_until(timeout, Duration::from_micros(250), || {
        c = current();
        c >= n
    });
    c
}

type Record = Vec<(Vec<u8>, SocketAddr)>;

/// Recording UDP receivers, created by [`crate::Testbed::receivers`]: every
/// datagram is stored per destination until [`Receivers::finish`].
#[derive(Debug)]
pub struct Receivers {
    dests: Vec<SocketAddr>,
    total: Arc<AtomicUsize>,
    stop: Arc<Stop>,
    threads: Vec<(Vec<usize>, JoinHandle<Vec<Record>>)>,
}

impl Receivers {
    pub(crate) fn start(dests: Vec<SocketAddr>, groups: Vec<Group>) -> io::Result<Receivers> {
        let socks = bind_groups(&groups)?;
        let stop = Stop::new()?;
        let total = Arc::new(AtomicUsize::new(0));
        let mut me = Receivers {
            dests,
            total: total.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for (g, socks) in groups.into_iter().zip(socks) {
            let idx: Vec<usize> = g.dests.iter().map(|(i, _)| *i).collect();
            let stop = stop.clone();
            let total = total.clone();
            let h = thread::Builder::new()
                .name("ebtb-recv".into())
                .spawn(move || {
                    let mut recs: Vec<Record> = vec![Vec::new(); socks.len()];
                    let mut buf = vec![0u8; 65536];
                    poll_loop(&socks, &stop, |i| {
                        for _ in 0..DRAIN_BUDGET {
                            match socks[i].recv_from(&mut buf) {
                                Ok((len, src)) => {
                                    recs[i].push((buf[..len].to_vec(), src));
                                    total.fetch_add(1, Ordering::Relaxed);
                                }
                                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                                Err(_) => break,
                            }
                        }
                    });
                    recs
                })?;
            me.threads.push((idx, h));
        }
        Ok(me)
    }

    /// The destinations being received, in the order given.
    pub fn destinations(&self) -> &[SocketAddr] {
        &self.dests
    }

    /// Total number of datagrams received so far, over all destinations.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Waits until at least `n` datagrams arrived in total or `timeout`
    /// passed, and returns the total received so far.
    pub fn wait_for_total(&self, n: usize, timeout: Duration) -> usize {
        wait_for_count(timeout, || self.total() as u64, n as u64) as usize
    }

    fn stop_threads(&mut self) -> Vec<(Vec<usize>, Vec<Record>)> {
        self.stop.trigger();
        let mut out = Vec::new();
        let mut panic = None;
        for (idx, h) in self.threads.drain(..) {
            match h.join() {
                Ok(recs) => out.push((idx, recs)),
                Err(p) => panic = Some(p),
            }
        }
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
        out
    }

    /// Waits `settle` for stragglers, stops the receiver threads and returns
    /// everything received.
    pub fn finish(mut self, settle: Duration) -> Received {
        thread::sleep(settle);
        let parts = self.stop_threads();
        let n = self.dests.len();
        let mut data = vec![Vec::new(); n];
        let mut sources = vec![Vec::new(); n];
        for (idx, recs) in parts {
            for (i, rec) in idx.into_iter().zip(recs) {
                let (d, s): (Vec<_>, Vec<_>) = rec.into_iter().unzip();
                data[i] = d;
                sources[i] = s;
            }
        }
        let index = self
            .dests
            .iter()
            .enumerate()
            .map(|(i, d)| (key(*d), i))
            .collect();
        Received {
            dests: std::mem::take(&mut self.dests),
            index,
            data,
            sources,
        }
    }
}

impl Drop for Receivers {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop.trigger();
            for (_, h) in self.threads.drain(..) {
                let _ = h.join();
            }
        }
    }
}

/// Everything a [`Receivers`] got, per destination, in arrival order.
#[derive(Debug, Clone)]
pub struct Received {
    dests: Vec<SocketAddr>,
    index: HashMap<SocketAddr, usize>,
    data: Vec<Vec<Vec<u8>>>,
    sources: Vec<Vec<SocketAddr>>,
}

const MAX_PROBLEMS: usize = 40;

impl Received {
    /// The destinations that were received on.
    pub fn destinations(&self) -> &[SocketAddr] {
        &self.dests
    }

    fn slot<A: Into<SocketAddr> + Copy>(&self, dest: &A) -> Option<usize> {
        self.index.get(&key((*dest).into())).copied()
    }

    /// The payloads that arrived at `dest` (a `SocketAddrV4`, `SocketAddrV6`
    /// or `SocketAddr`, as given to [`crate::Testbed::receivers`], an IPv6
    /// one with any scope id and flow label), in arrival order (empty for a
    /// destination that was not received on).
    pub fn datagrams<A: Into<SocketAddr> + Copy>(&self, dest: &A) -> &[Vec<u8>] {
        self.slot(dest)
            .map(|i| self.data[i].as_slice())
            .unwrap_or(&[])
    }

    /// The source address of each datagram of [`Received::datagrams`]: IPv4
    /// for an IPv4 destination, IPv6 for an IPv6 one (with the receiver's
    /// interface as scope id when the source is link-local).
    pub fn sources<A: Into<SocketAddr> + Copy>(&self, dest: &A) -> &[SocketAddr] {
        self.slot(dest)
            .map(|i| self.sources[i].as_slice())
            .unwrap_or(&[])
    }

    /// Number of datagrams that arrived at `dest`.
    pub fn count<A: Into<SocketAddr> + Copy>(&self, dest: &A) -> usize {
        self.datagrams(dest).len()
    }

    /// Total number of datagrams over all destinations.
    pub fn total(&self) -> usize {
        self.data.iter().map(Vec::len).sum()
    }

    /// Checks that every destination in `dests` received every message of
    /// `expected` exactly once (a message listed k times must arrive k times)
    /// and nothing else; order does not matter. The error lists every
    /// problem: which destination got how many copies of which message, and
    /// for unexpected datagrams the closest expected message and the first
    /// differing byte.
    pub fn check_exactly_once<A: Into<SocketAddr> + Copy>(
        &self,
        dests: &[A],
        expected: &[Vec<u8>],
    ) -> Result<(), String> {
        // payload -> (first index in `expected`, multiplicity)
        let mut want: HashMap<&[u8], (usize, usize)> = HashMap::new();
        for (i, e) in expected.iter().enumerate() {
            want.entry(e.as_slice()).or_insert((i, 0)).1 += 1;
        }
        let mut order: Vec<(&[u8], usize, usize)> =
            want.iter().map(|(p, (i, m))| (*p, *i, *m)).collect();
        order.sort_by_key(|(_, i, _)| *i);

        let mut problems = Vec::new();
        for d in dests.iter().map(|&d| d.into()) {
            if !self.index.contains_key(&key(d)) {
                problems.push(format!(
                    "{d}: no receiver socket was bound for this destination"
                ));
                continue;
            }
            let got = self.datagrams(&d);
            let srcs = self.sources(&d);
            let mut seen: HashMap<&[u8], usize> = HashMap::new();
            let mut unexpected = Vec::new();
            for (k, p) in got.iter().enumerate() {
                if want.contains_key(p.as_slice()) {
                    *seen.entry(p.as_slice()).or_default() += 1;
                } else {
                    unexpected.push(k);
                }
            }
            for &(payload, idx, mult) in &order {
                let c = seen.get(payload).copied().unwrap_or(0);
                if c != mult {
                    problems.push(format!(
                        "{d}: message #{idx} ({} bytes): expected {mult} cop{}, got {c} (destination got {} datagrams in total)",
                        payload.len(),
                        if mult == 1 { "y" } else { "ies" },
                        got.len()
                    ));
                }
            }
            for k in unexpected {
                problems.push(describe_unexpected(&d, k, &got[k], srcs.get(k), expected));
            }
        }
        report(problems)
    }

    /// Checks that none of `dests` received anything.
    pub fn check_silent<A: Into<SocketAddr> + Copy>(&self, dests: &[A]) -> Result<(), String> {
        let problems = dests
            .iter()
            .map(|&d| d.into())
            .filter(|d: &SocketAddr| self.count(d) > 0)
            .map(|d| {
                format!(
                    "{d}: expected no datagrams, got {} (first from {:?}, {} bytes)",
                    self.count(&d),
                    self.sources(&d).first(),
                    self.datagrams(&d)[0].len()
                )
            })
            .collect();
        report(problems)
    }
}

fn report(problems: Vec<String>) -> Result<(), String> {
    if problems.is_empty() {
        return Ok(());
    }
    let mut s = format!("{} problem(s):", problems.len());
    for p in problems.iter().take(MAX_PROBLEMS) {
        let _ = write!(s, "\n  {p}");
    }
    if problems.len() > MAX_PROBLEMS {
        let _ = write!(s, "\n  ... and {} more", problems.len() - MAX_PROBLEMS);
    }
    Err(s)
}

fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn describe_unexpected(
    d: &SocketAddr,
    k: usize,
    got: &[u8],
    src: Option<&SocketAddr>,
    expected: &[Vec<u8>],
) -> String {
    let from = src.map(|s| format!(" from {s}")).unwrap_or_default();
    let head = format!(
        "{d}: datagram #{k}{from} ({} bytes) matches no expected message",
        got.len()
    );
    // Closest: same length first, then the longest common prefix.
    let best = expected
        .iter()
        .enumerate()
        .max_by_key(|(_, e)| (e.len() == got.len(), common_prefix(e, got)));
    let Some((i, e)) = best else {
        return format!("{head} (none were expected)");
    };
    let p = common_prefix(e, got);
    if p < got.len() && p < e.len() {
        format!(
            "{head}; closest is message #{i} ({} bytes): first difference at byte {p}: got {:#04x}, expected {:#04x}",
            e.len(),
            got[p],
            e[p]
        )
    } else {
        format!(
            "{head}; closest is message #{i}: identical for the first {p} bytes but {} bytes long instead of {}",
            got.len(),
            e.len()
        )
    }
}

/// Counting-only UDP receivers for benchmarks, created by
/// [`crate::Testbed::counting_receivers`]: payloads are checked against the
/// message pattern ([`crate::is_pattern`]) and dropped.
#[derive(Debug)]
pub struct Counters {
    dests: Vec<SocketAddr>,
    counts: Arc<Vec<AtomicU64>>,
    mismatches: Arc<Vec<AtomicU64>>,
    total: Arc<AtomicU64>,
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

/// Final numbers of a [`Counters`], returned by [`Counters::stop`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountReport {
    /// The destinations, in the order given.
    pub dests: Vec<SocketAddr>,
    /// Datagrams received per destination (including mismatches).
    pub counts: Vec<u64>,
    /// Datagrams per destination whose payload did not follow the pattern
    /// (or was truncated).
    pub mismatches: Vec<u64>,
}

impl CountReport {
    /// Total datagrams over all destinations.
    pub fn total(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Total pattern mismatches over all destinations.
    pub fn total_mismatches(&self) -> u64 {
        self.mismatches.iter().sum()
    }

    /// Datagrams received at `dest` (a `SocketAddrV4`, `SocketAddrV6` or
    /// `SocketAddr`), including mismatches; 0 for a destination that was not
    /// counted.
    pub fn count<A: Into<SocketAddr> + Copy>(&self, dest: &A) -> u64 {
        position(&self.dests, dest).map_or(0, |i| self.counts[i])
    }

    /// Pattern mismatches at `dest`; 0 for a destination that was not
    /// counted.
    pub fn mismatches_at<A: Into<SocketAddr> + Copy>(&self, dest: &A) -> u64 {
        position(&self.dests, dest).map_or(0, |i| self.mismatches[i])
    }
}

/// Where `dest` is in `dests`.
fn position<A: Into<SocketAddr> + Copy>(dests: &[SocketAddr], dest: &A) -> Option<usize> {
    let dest = key((*dest).into());
    dests.iter().position(|d| key(*d) == dest)
}

/// A destination as looked up: its address and port only (an IPv6 one
/// without flow label and scope id, which name no other socket: the
/// testbed refuses destinations that differ only in them).
fn key(dest: SocketAddr) -> SocketAddr {
    match dest {
        SocketAddr::V4(_) => dest,
        SocketAddr::V6(v6) => SocketAddr::new(IpAddr::V6(*v6.ip()), v6.port()),
    }
}

const MMSG_BATCH: usize = 32;
const MMSG_BUF: usize = 65536;

/// Receives a batch with recvmmsg; returns (len, truncated) per datagram.
fn recv_batch(
    fd: libc::c_int,
    bufs: &mut [u8],
    iovs: &mut [libc::iovec],
    hdrs: &mut [libc::mmsghdr],
    out: &mut Vec<(usize, bool)>,
) -> bool {
    out.clear();
    let base = bufs.as_mut_ptr();
    for (k, (iov, hdr)) in iovs.iter_mut().zip(hdrs.iter_mut()).enumerate() {
        // SAFETY: k * MMSG_BUF + MMSG_BUF <= bufs.len(), so the pointer stays
        // inside `bufs`.
        iov.iov_base = unsafe { base.add(k * MMSG_BUF) }.cast();
        iov.iov_len = MMSG_BUF;
        // SAFETY: mmsghdr is plain old data; all-zero is valid.
        *hdr = unsafe { std::mem::zeroed() };
        hdr.msg_hdr.msg_iov = iov;
        hdr.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: every header points to one iovec that points to MMSG_BUF bytes
    // inside `bufs`; all of them outlive the call, and vlen matches `hdrs`.
    let n = unsafe {
        libc::recvmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        )
    };
    if n <= 0 {
        return false;
    }
    for h in &hdrs[..n as usize] {
        out.push((
            h.msg_len as usize,
            h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        ));
    }
    true
}

impl Counters {
    pub(crate) fn start(
        dests: Vec<SocketAddr>,
        groups: Vec<Group>,
        pin_cpu: Option<usize>,
    ) -> io::Result<Counters> {
        let socks = bind_groups(&groups)?;
        let stop = Stop::new()?;
        let counts: Arc<Vec<AtomicU64>> =
            Arc::new(dests.iter().map(|_| AtomicU64::new(0)).collect());
        let mismatches: Arc<Vec<AtomicU64>> =
            Arc::new(dests.iter().map(|_| AtomicU64::new(0)).collect());
        let total = Arc::new(AtomicU64::new(0));
        let mut me = Counters {
            dests,
            counts: counts.clone(),
            mismatches: mismatches.clone(),
            total: total.clone(),
            stop: stop.clone(),
            threads: Vec::new(),
        };
        for (g, socks) in groups.into_iter().zip(socks) {
            let idx: Vec<usize> = g.dests.iter().map(|(i, _)| *i).collect();
            let (stop, counts, mismatches, total) = (
                stop.clone(),
                counts.clone(),
                mismatches.clone(),
                total.clone(),
            );
            let (ready_tx, ready_rx) = mpsc::sync_channel::<io::Result<()>>(1);
            let h = thread::Builder::new()
                .name("ebtb-count".into())
                .spawn(move || {
                    if let Some(cpu) = pin_cpu {
                        if let Err(e) = pin_current_thread(cpu) {
                            let _ = ready_tx.send(Err(e));
                            return;
                        }
                    }
                    let _ = ready_tx.send(Ok(()));
                    let mut bufs = vec![0u8; MMSG_BATCH * MMSG_BUF];
                    // SAFETY: iovec and mmsghdr are plain old data; all-zero is
                    // valid (they are filled in before every use).
                    let mut iovs: Vec<libc::iovec> = (0..MMSG_BATCH)
                        .map(|_| unsafe { std::mem::zeroed() })
                        .collect();
                    // SAFETY: as above.
                    let mut hdrs: Vec<libc::mmsghdr> = (0..MMSG_BATCH)
                        .map(|_| unsafe { std::mem::zeroed() })
                        .collect();
                    let mut got = Vec::with_capacity(MMSG_BATCH);
                    poll_loop(&socks, &stop, |i| {
                        let d = idx[i];
                        for _ in 0..DRAIN_BUDGET / MMSG_BATCH {
                            if !recv_batch(
                                socks[i].as_raw_fd(),
                                &mut bufs,
                                &mut iovs,
                                &mut hdrs,
                                &mut got,
                            ) {
                                break;
                            }
                            let mut bad = 0;
                            for (k, &(len, trunc)) in got.iter().enumerate() {
                                let p = &bufs[k * MMSG_BUF..k * MMSG_BUF + len.min(MMSG_BUF)];
                                if trunc || !is_pattern(p) {
                                    bad += 1;
                                }
                            }
                            let n = got.len() as u64;
                            counts[d].fetch_add(n, Ordering::Relaxed);
                            if bad > 0 {
                                mismatches[d].fetch_add(bad, Ordering::Relaxed);
                            }
                            total.fetch_add(n, Ordering::Relaxed);
                            if got.len() < MMSG_BATCH {
                                break;
                            }
                        }
                    });
                })?;
            match ready_rx.recv() {
                Ok(Ok(())) => me.threads.push(h),
                Ok(Err(e)) => {
                    let _ = h.join();
                    return Err(e);
                }
                Err(_) => {
                    let _ = h.join();
                    return Err(io::Error::other("counting receiver thread died"));
                }
            }
        }
        Ok(me)
    }

    /// The destinations being counted, in the order given.
    pub fn destinations(&self) -> &[SocketAddr] {
        &self.dests
    }

    /// Datagrams received so far at `dest` (a `SocketAddrV4`, `SocketAddrV6`
    /// or `SocketAddr`), including mismatches; 0 for a destination that is
    /// not counted.
    pub fn count<A: Into<SocketAddr> + Copy>(&self, dest: &A) -> u64 {
        position(&self.dests, dest).map_or(0, |i| self.counts[i].load(Ordering::Relaxed))
    }

    /// Datagrams received so far per destination (same order as
    /// [`Counters::destinations`]), including mismatches.
    pub fn counts(&self) -> Vec<u64> {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Datagrams per destination whose payload did not follow the pattern.
    pub fn mismatches(&self) -> Vec<u64> {
        self.mismatches
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Total datagrams received so far over all destinations.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Total pattern mismatches so far.
    pub fn total_mismatches(&self) -> u64 {
        self.mismatches
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Waits until at least `n` datagrams arrived in total or `timeout`
    /// passed, and returns the total received so far.
    pub fn wait_for_total(&self, n: u64, timeout: Duration) -> u64 {
        wait_for_count(timeout, || self.total(), n)
    }

    /// Stops the receiver threads (after reading what is queued) and returns
    /// the final numbers.
    pub fn stop(mut self) -> CountReport {
        self.stop_threads();
        CountReport {
            dests: std::mem::take(&mut self.dests),
            counts: self.counts(),
            mismatches: self.mismatches(),
        }
    }

    fn stop_threads(&mut self) {
        self.stop.trigger();
        let mut panic = None;
        for h in self.threads.drain(..) {
            if let Err(p) = h.join() {
                panic = Some(p);
            }
        }
        if let Some(p) = panic {
            std::panic::resume_unwind(p);
        }
    }
}

impl Drop for Counters {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.stop.trigger();
            for h in self.threads.drain(..) {
                let _ = h.join();
            }
        }
    }
}
