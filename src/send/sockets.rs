//! The sockets a broadcaster has sent through: each one's cookie, its slot
//! in the kernel maps, its current plan; registered on first use, evicted
//! least recently used first, taken over when its fd names a new socket.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use socket2::{Domain, Protocol, SockRef, Type};

use super::plan::Plan;
use super::Family;
use crate::kernel::{Program, MAX_SOCKETS};
use crate::{sys, Error};

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves no broken invariant
    // behind (every update is completed or not begun), so keep going.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What the broadcaster keeps per socket. Held locked for the whole of a
/// call on the socket: calls on one socket are serialised.
pub(crate) struct SocketState {
    cookie: u64,
    /// The socket's address family.
    pub(crate) family: Family,
    /// Bound to no address (0.0.0.0, ::): the kernel picks each datagram's
    /// source address by its route.
    pub(crate) any_source: bool,
    /// The socket's slot in the kernel maps; None: user-space sends only.
    pub(crate) slot: Option<u32>,
    /// The plan for the last destination list, reused while it is current.
    pub(crate) plan: Option<Plan>,
    /// Which chunk of `plan` the slot's destination array holds.
    pub(crate) slot_holds: Option<usize>,
    /// Whether the socket accepts `UDP_SEGMENT` sends, with which every
    /// datagram the library sends is one whole datagram: refused, never
    /// fragmented, when it does not fit the MTU (see `sys::send_to_each`).
    /// Sockets with UDP checksums off, or routes through devices without
    /// checksum offload, refuse them; they get plain sends, checked against
    /// the MTU just before.
    pub(crate) whole_sends: bool,
    /// Whether the socket and route take UDP GSO sends of several segments
    /// (a batch of equal payloads as one carrier; see `fan_out`).
    pub(crate) segmented_sends: bool,
}

impl SocketState {
    /// Whether the fd names another socket than the one registered (it was
    /// closed and its number reused).
    pub(crate) fn replaced_by(&self, socket: BorrowedFd<'_>) -> bool {
        SockRef::from(&socket)
            .cookie()
            .is_ok_and(|cookie| cookie != self.cookie)
    }
}

/// The sockets of one broadcaster, by fd.
#[derive(Default)]
pub(crate) struct Sockets {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    by_fd: HashMap<RawFd, Entry, BuildHasherDefault<FdHasher>>,
    free_slots: Vec<u32>,
    slots_handed_out: u32,
    tick: u64,
}

/// Hashes an fd by one multiplication (Fibonacci hashing): fds are small
/// integers chosen by the kernel, not by an adversary, and the lookup is on
/// every broadcast's path, where SipHash would be needless work.
#[derive(Default)]
struct FdHasher(u64);

impl Hasher for FdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_i32(&mut self, fd: i32) {
        self.0 = u64::from(fd as u32).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

struct Entry {
    state: Arc<Mutex<SocketState>>,
    last_used: u64,
}

impl Sockets {
    /// The entry of `socket`, inspecting it and registering it with
    /// `program` on first use.
    pub(crate) fn entry(
        &self,
        program: Option<&Program>,
        socket: BorrowedFd<'_>,
    ) -> Result<Arc<Mutex<SocketState>>, Error> {
        let mut table = lock(&self.table);
        table.tick += 1;
        let tick = table.tick;
        if let Some(entry) = table.by_fd.get_mut(&socket.as_raw_fd()) {
            entry.last_used = tick;
            return Ok(Arc::clone(&entry.state));
        }
        table.register(program, socket, tick)
    }

    /// If the fd of `state` now names another socket, takes the new socket
    /// over: inspects it and moves the registration to it.
    pub(crate) fn take_over(
        &self,
        program: Option<&Program>,
        state: &mut SocketState,
        socket: BorrowedFd<'_>,
    ) -> Result<(), Error> {
        let cookie = SockRef::from(&socket)
            .cookie()
            .map_err(Error::io("reading the socket cookie"))?;
        if cookie == state.cookie {
            return Ok(());
        }
        (_, state.family, state.any_source) = inspect(socket)?;
        state.plan = None;
        if let Some(program) = program {
            program.unregister(state.cookie);
            if let Some(slot) = state.slot {
                if let Err(err) = register(program, socket, cookie, slot) {
                    log::warn!("registering a socket failed ({err}); it sends from user space");
                    lock(&self.table).free_slots.push(slot);
                    state.slot = None;
                }
            }
        }
        state.cookie = cookie;
        Ok(())
    }
}

impl Table {
    /// Inspects `socket`, seen for the first time, and registers it with
    /// `program` (kept apart from `Sockets::entry`, on every broadcast's
    /// path, which it would otherwise spread over more cache lines).
    #[cold]
    #[inline(never)]
    fn register(
        &mut self,
        program: Option<&Program>,
        socket: BorrowedFd<'_>,
        tick: u64,
    ) -> Result<Arc<Mutex<SocketState>>, Error> {
        let (cookie, family, any_source) = inspect(socket)?;
        let slot = program.and_then(|program| {
            let slot = self.take_slot(program)?;
            match register(program, socket, cookie, slot) {
                Ok(()) => Some(slot),
                Err(err) => {
                    log::warn!("registering a socket failed ({err}); it sends from user space");
                    self.free_slots.push(slot);
                    None
                }
            }
        });
        self.make_room();
        let state = Arc::new(Mutex::new(SocketState {
            cookie,
            family,
            any_source,
            slot,
            plan: None,
            slot_holds: None,
            whole_sends: true,
            segmented_sends: true,
        }));
        self.by_fd.insert(
            socket.as_raw_fd(),
            Entry {
                state: Arc::clone(&state),
                last_used: tick,
            },
        );
        Ok(state)
    }

    /// A free slot: a new one, or the slot of the least recently used socket
    /// that no broadcast is using right now.
    fn take_slot(&mut self, program: &Program) -> Option<u32> {
        if let Some(slot) = self.free_slots.pop() {
            return Some(slot);
        }
        if self.slots_handed_out < MAX_SOCKETS {
            self.slots_handed_out += 1;
            return Some(self.slots_handed_out - 1);
        }
        let victim = self.least_recently_used(|state| state.slot.is_some())?;
        let entry = self.by_fd.remove(&victim)?;
        let state = lock(&entry.state);
        program.unregister(state.cookie);
        state.slot
    }

    /// Keeps the table bounded: forgets the least recently used idle socket.
    fn make_room(&mut self) {
        if self.by_fd.len() >= 2 * MAX_SOCKETS as usize {
            if let Some(victim) = self.least_recently_used(|state| state.slot.is_none()) {
                self.by_fd.remove(&victim);
            }
        }
    }

    fn least_recently_used(&self, wanted: impl Fn(&SocketState) -> bool) -> Option<RawFd> {
        self.by_fd
            .iter()
            // Only entries nobody else holds: their lock is free and stays free.
            .filter(|(_, entry)| Arc::strong_count(&entry.state) == 1)
            .filter(|(_, entry)| wanted(&lock(&entry.state)))
            .min_by_key(|(_, entry)| entry.last_used)
            .map(|(fd, _)| *fd)
    }
}

/// Lets the program fan out the datagrams of `socket` that carry a tag.
fn register(program: &Program, socket: BorrowedFd<'_>, cookie: u64, slot: u32) -> io::Result<()> {
    sys::allow_transmit_times(socket)?;
    program.register(cookie, slot)
}

/// Checks that `socket` is a bound UDP socket (IPv4 or IPv6); returns its
/// cookie, family, and whether it is bound to no address.
fn inspect(socket: BorrowedFd<'_>) -> Result<(u64, Family, bool), Error> {
    let sock = SockRef::from(&socket);
    let not_udp = |found: &str| Error::NotUdp {
        found: found.to_string(),
    };
    let domain = sock.domain().map_err(|err| match err.raw_os_error() {
        Some(libc::ENOTSOCK) => not_udp("not a socket"),
        _ => Error::Io {
            context: "inspecting the socket",
            source: err,
        },
    })?;
    let mut family = if domain == Domain::IPV4 {
        Family::V4
    } else if domain == Domain::IPV6 {
        let only = sock.only_v6().map_err(Error::io("inspecting the socket"))?;
        Family::V6 { only }
    } else {
        return Err(not_udp(&format!("{domain:?} socket")));
    };
    let ty = sock.r#type().map_err(Error::io("inspecting the socket"))?;
    if ty != Type::DGRAM {
        return Err(not_udp(&format!("{ty:?} socket")));
    }
    let protocol = sock
        .protocol()
        .map_err(Error::io("inspecting the socket"))?;
    if protocol != Some(Protocol::UDP) {
        return Err(not_udp(&format!(
            "datagram socket of protocol {protocol:?}"
        )));
    }
    let local = sock
        .local_addr()
        .map_err(Error::io("inspecting the socket"))?;
    let Some(local) = local.as_socket().filter(|addr| addr.port() != 0) else {
        return Err(Error::Unbound);
    };
    // An IPv6 socket bound to an IPv4-mapped address sends IPv4 only
    // (the kernel refuses IPv6 destinations), IPV6_V6ONLY off or not.
    if let SocketAddr::V6(v6) = local {
        if v6.ip().to_ipv4_mapped().is_some() {
            family = Family::Mapped;
        }
    }
    let any_source = match local {
        SocketAddr::V4(v4) => v4.ip().is_unspecified(),
        SocketAddr::V6(v6) => v6.ip().is_unspecified(),
    };
    let cookie = sock
        .cookie()
        .map_err(Error::io("reading the socket cookie"))?;
    Ok((cookie, family, any_source))
}
