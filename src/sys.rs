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
pub(crate) fn send_to_each(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    dests: &[SocketAddrV4],
) -> Vec<(usize, io::Error)> {
    let mut failed = Vec::new();
    let mut next = 0;
    while next < dests.len() {
        let batch = &dests[next..dests.len().min(next + SENDMMSG_MAX)];
        let mut names: Vec<libc::sockaddr_in> = batch.iter().map(sockaddr_in).collect();
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
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

/// Sends the carrier datagram of a fan-out: `payload` to `dest`, with the
/// arm's `tag` as its transmit time (`SCM_TXTIME`), which is how the program
/// tells this datagram from every other one of the socket.
///
/// With `paged`, a `UDP_SEGMENT` control message whose segment size is the
/// whole payload goes with it: nothing is segmented, but the kernel then
/// builds the datagram with its payload in page fragments and only the
/// headers in the linear part, so the kernel fan-out un-shares (copies) just
/// the headers for each clone instead of the whole datagram.
pub(crate) fn send_carrier(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    dest: &SocketAddrV4,
    tag: u64,
    paged: bool,
) -> io::Result<usize> {
    let segment = if paged {
        Some(
            u16::try_from(payload.len())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?,
        )
    } else {
        None
    };
    let mut name = sockaddr_in(dest);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // Room for a u64 and a u16 control message, 8-aligned as cmsghdr requires.
    let mut control = [0u64; 6];
    // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
    let (tag_space, tag_len, segment_space, segment_len) = unsafe {
        (
            libc::CMSG_SPACE(8),
            libc::CMSG_LEN(8),
            libc::CMSG_SPACE(2),
            libc::CMSG_LEN(2),
        )
    };
    let space = tag_space + if segment.is_some() { segment_space } else { 0 };
    assert!(space as usize <= mem::size_of_val(&control));
    // SAFETY: all-zero bytes are a valid msghdr.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_in).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg_control points at `control`, which is 8-aligned and large
    // enough for both messages (asserted above), so CMSG_FIRSTHDR and the
    // CMSG_NXTHDR after the first are non-null and every CMSG_DATA stays
    // inside the buffer; the values are written unaligned-safe.
    unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_TXTIME;
        (*cmsg).cmsg_len = tag_len as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u64>(), tag);
        if let Some(segment) = segment {
            let cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            (*cmsg).cmsg_level = libc::SOL_UDP;
            (*cmsg).cmsg_type = libc::UDP_SEGMENT;
            (*cmsg).cmsg_len = segment_len as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), segment);
        }
    }
    // SAFETY: `msg` and everything it points to (name, iov, payload,
    // control) are valid for the duration of the call.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &msg, 0) };
    if sent < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(sent as usize)
    }
}

fn get_int_option(
    socket: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are writable and outlive the call; `len`
    // says how large `value` is.
    let done = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if done < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
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

/// Makes an IPv4 socket refuse to fragment what it sends: a datagram larger
/// than the interface's MTU then fails with `EMSGSIZE` (or `EINVAL` with
/// `UDP_SEGMENT`) instead of leaving in fragments. The DF bit is kept as the
/// socket's mode had it: `IP_PMTUDISC_WANT` (Linux's default, DF on what
/// fits) becomes `IP_PMTUDISC_PROBE` (DF), `DONT` and `OMIT` (no DF) become
/// `INTERFACE` (no DF); `DO`, `PROBE` and `INTERFACE` already refuse.
/// Returns the mode now in force.
pub(crate) fn refuse_fragmentation(socket: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    let mode = get_int_option(socket, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER)?;
    let wanted = match mode {
        libc::IP_PMTUDISC_WANT => libc::IP_PMTUDISC_PROBE,
        libc::IP_PMTUDISC_DONT | libc::IP_PMTUDISC_OMIT => libc::IP_PMTUDISC_INTERFACE,
        other => return Ok(other),
    };
    set_option(socket, libc::IPPROTO_IP, libc::IP_MTU_DISCOVER, &wanted)?;
    Ok(wanted)
}

/// Lets the socket's sends carry a transmit time (`SCM_TXTIME`), which
/// the kernel refuses unless `SO_TXTIME` is on. The socket's own transmit
/// time settings (clock, flags) are kept as they are; they only ever apply
/// to datagrams that carry a transmit time.
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
