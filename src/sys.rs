//! The raw system calls that socket2 and libbpf-rs do not cover, each behind
//! a safe function: `sendmmsg`, `mmap` of a BPF map, and the capability set.

use std::io;
use std::mem;
use std::net::SocketAddrV4;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

/// Most messages one `sendmmsg` call takes (the kernel's UIO_MAXIOV).
const SENDMMSG_MAX: usize = 1024;

fn sockaddr_in(addr: &SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    }
}

/// Sends `payload` once to each of `dests` with as few `sendmmsg(2)` calls as
/// possible. Returns the destinations (indices into `dests`) that got
/// nothing, each with its error, in order. A destination the kernel refuses
/// (no route, say) does not keep the ones after it from being tried; a full
/// non-blocking socket (`WouldBlock`) does, since they would be refused too.
///
/// With `whole`, every datagram carries a `UDP_SEGMENT` control message
/// whose segment size is the whole payload (see [`whole_datagram`]): the
/// kernel then refuses a datagram too large for the MTU (`EINVAL`) instead
/// of fragmenting it.
pub(crate) fn send_to_each(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    dests: &[SocketAddrV4],
    whole: bool,
) -> Vec<(usize, io::Error)> {
    let mut failed = Vec::new();
    let segment = match whole.then(|| whole_datagram(payload)).transpose() {
        Ok(segment) => segment,
        Err(err) => {
            let again = || io::Error::from(err.kind());
            return (0..dests.len()).map(|i| (i, again())).collect();
        }
    };
    let mut next = 0;
    while next < dests.len() {
        let batch = &dests[next..dests.len().min(next + SENDMMSG_MAX)];
        let mut names: Vec<libc::sockaddr_in> = batch.iter().map(sockaddr_in).collect();
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        // One control buffer serves every message: the kernel only reads it.
        let mut control = Control::new();
        if let Some(segment) = segment {
            control.push(libc::SOL_UDP, libc::UDP_SEGMENT, &segment.to_ne_bytes());
        }
        let mut headers: Vec<libc::mmsghdr> = names
            .iter_mut()
            .map(|name| {
                // SAFETY: msghdr and mmsghdr are plain C structs for which
                // all-zero bytes are a valid (empty) value.
                let mut header: libc::mmsghdr = unsafe { mem::zeroed() };
                header.msg_hdr.msg_name = (name as *mut libc::sockaddr_in).cast();
                header.msg_hdr.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
                header.msg_hdr.msg_iov = &mut iov;
                header.msg_hdr.msg_iovlen = 1;
                control.attach(&mut header.msg_hdr);
                header
            })
            .collect();
        // SAFETY: `headers` holds `headers.len()` initialised mmsghdr whose
        // name and iovec pointers point into `names` and `iov`, which outlive
        // the call; the kernel only reads the payload through `iov`.
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers.as_mut_ptr(),
                headers.len() as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            next += n as usize;
            continue;
        }
        // The first message of the batch failed (sendmmsg reports an error
        // only then): it got nothing; go on after it.
        let err = if n == 0 {
            io::Error::from(io::ErrorKind::WriteZero)
        } else {
            io::Error::last_os_error()
        };
        match err.kind() {
            io::ErrorKind::Interrupted => continue,
            io::ErrorKind::WouldBlock => {
                let again = || match err.raw_os_error() {
                    Some(code) => io::Error::from_raw_os_error(code),
                    None => io::Error::from(err.kind()),
                };
                failed.extend((next..dests.len()).map(|i| (i, again())));
                break;
            }
            _ => {
                failed.push((next, err));
                next += 1;
            }
        }
    }
    failed
}

/// The segment size that makes a `UDP_SEGMENT` send one whole datagram:
/// the payload's length. Nothing is segmented, but the kernel refuses the
/// send (`EINVAL`) when the datagram does not fit the MTU instead of
/// fragmenting it, and keeps the payload in page fragments.
fn whole_datagram(payload: &[u8]) -> io::Result<u16> {
    match u16::try_from(payload.len()) {
        Ok(0) | Err(_) => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        Ok(len) => Ok(len),
    }
}

/// Control messages for `sendmsg`/`sendmmsg`: at most a u64 and a u16.
struct Control {
    /// 8-aligned, as cmsghdr requires.
    buffer: [u64; 6],
    len: usize,
}

impl Control {
    fn new() -> Control {
        Control {
            buffer: [0; 6],
            len: 0,
        }
    }

    /// Appends one control message.
    fn push(&mut self, level: libc::c_int, kind: libc::c_int, data: &[u8]) {
        // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
        let (space, len) = unsafe {
            (
                libc::CMSG_SPACE(data.len() as u32) as usize,
                libc::CMSG_LEN(data.len() as u32) as usize,
            )
        };
        assert!(
            self.len + space <= mem::size_of_val(&self.buffer),
            "control buffer full"
        );
        // SAFETY: the message starts at an 8-aligned offset of `buffer` (every
        // CMSG_SPACE is a multiple of 8) and its `space` bytes fit (asserted);
        // the header is written as a whole and the data byte-wise after it,
        // at the offset CMSG_DATA would give (CMSG_LEN(0)).
        unsafe {
            let at = self.buffer.as_mut_ptr().cast::<u8>().add(self.len);
            let header = libc::cmsghdr {
                cmsg_len: len as _,
                cmsg_level: level,
                cmsg_type: kind,
            };
            std::ptr::write(at.cast::<libc::cmsghdr>(), header);
            let data_at = at.add(libc::CMSG_LEN(0) as usize);
            std::ptr::copy_nonoverlapping(data.as_ptr(), data_at, data.len());
        }
        self.len += space;
    }

    /// Points `msg` at these control messages (none: no control at all).
    fn attach(&mut self, msg: &mut libc::msghdr) {
        if self.len > 0 {
            msg.msg_control = self.buffer.as_mut_ptr().cast();
            msg.msg_controllen = self.len as _;
        }
    }
}

/// Sends the carrier datagram of a fan-out: `payload` to `dest`, with the
/// arm's `tag` as its transmit time (`SCM_TXTIME`), which is how the program
/// tells this datagram from every other one of the socket.
///
/// With `whole`, a `UDP_SEGMENT` control message makes it one whole datagram
/// (see [`whole_datagram`]): never fragmented, and with its payload in page
/// fragments, so that un-sharing a clone copies only its headers.
pub(crate) fn send_carrier(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    dest: &SocketAddrV4,
    tag: u64,
    whole: bool,
) -> io::Result<usize> {
    let mut control = Control::new();
    control.push(libc::SOL_SOCKET, libc::SCM_TXTIME, &tag.to_ne_bytes());
    if whole {
        let segment = whole_datagram(payload)?;
        control.push(libc::SOL_UDP, libc::UDP_SEGMENT, &segment.to_ne_bytes());
    }
    let mut name = sockaddr_in(dest);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: all-zero bytes are a valid msghdr.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    control.attach(&mut msg);
    // SAFETY: `msg` and everything it points to (name, iov, payload,
    // control) are valid for the duration of the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

fn set_option<T>(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: `value` is a plain value of the size passed, alive across the call.
    let done = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if done < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether the socket sends UDP datagrams without checksums (`SO_NO_CHECK`),
/// which makes the kernel refuse `UDP_SEGMENT`.
pub(crate) fn checksums_off(socket: BorrowedFd<'_>) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are writable and outlive the call; `len`
    // says how large `value` is.
    let done = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NO_CHECK,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    done == 0 && value != 0
}

/// Lets the socket's sends carry a transmit time (`SCM_TXTIME`), which
/// the kernel refuses unless `SO_TXTIME` is on. Transmit time settings the
/// socket already has (clock, flags) are kept; a socket with none gets
/// `CLOCK_MONOTONIC` (allowed without privileges). They only ever apply to
/// datagrams that carry a transmit time.
pub(crate) fn allow_transmit_times(socket: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: all-zero bytes are a valid sock_txtime.
    let mut current: libc::sock_txtime = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sock_txtime>() as libc::socklen_t;
    // SAFETY: `current` and `len` are writable and outlive the call; `len`
    // says how large `current` is.
    let done = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TXTIME,
            (&mut current as *mut libc::sock_txtime).cast(),
            &mut len,
        )
    };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    if current.clockid == libc::CLOCK_REALTIME && current.flags == 0 {
        // The socket's defaults: nothing set yet. The kernel wants
        // CAP_NET_ADMIN for any clock but CLOCK_MONOTONIC, which is also the
        // clock the tags are kept in the past of.
        current.clockid = libc::CLOCK_MONOTONIC;
    }
    set_option(socket, libc::SOL_SOCKET, libc::SO_TXTIME, &current)
}

/// A shared, writable mapping of a `BPF_F_MMAPABLE` array map.
pub(crate) struct MapMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain memory shared with the kernel; the types that
// hand out pointers into it (kernel::Slot) decide how it is accessed.
unsafe impl Send for MapMemory {}
// SAFETY: as above: `MapMemory` itself only hands out its base address.
unsafe impl Sync for MapMemory {}

impl MapMemory {
    /// Maps `len` bytes of the map behind `fd`.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<MapMemory> {
        // SAFETY: a fresh shared mapping chosen by the kernel (addr NULL);
        // no existing memory is affected. The result is checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        Ok(MapMemory { ptr, len })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for MapMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and no
        // pointer into it outlives `self` (kernel::Slot borrows the owner).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// Capabilities the kernel backend needs.
pub(crate) const CAP_NET_ADMIN: u32 = 12;
pub(crate) const CAP_SYS_ADMIN: u32 = 21;
pub(crate) const CAP_BPF: u32 = 39;

/// The effective capability set of the calling thread (the kernel checks
/// the thread's credentials on bpf() and netlink calls).
pub(crate) fn effective_capabilities() -> io::Result<u64> {
    let status = std::fs::read_to_string("/proc/thread-self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "no CapEff in /proc/thread-self/status",
            )
        })
}

pub(crate) fn has_capability(set: u64, cap: u32) -> bool {
    set & (1u64 << cap) != 0
}
