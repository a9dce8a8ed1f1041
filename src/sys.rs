//! The system calls that socket2 and libbpf-rs do not cover, through `nix`:
//! `sendmsg` and `sendmmsg` with control messages, the socket options the
//! library sets or reads, the mapping of a BPF map, and the capability set
//! (through `caps`). The two calls nix lacks (`SO_NO_CHECK`, and `munmap`'s
//! counterpart bookkeeping) are the only `unsafe` code here.

use std::io::{self, IoSlice};
use std::net::SocketAddrV4;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::socket::{
    getsockopt, sendmmsg, sendmsg, setsockopt, sockopt, ControlMessage, MsgFlags, MultiHeaders,
    SockaddrIn,
};

/// Most messages one `sendmmsg` call takes (the kernel's UIO_MAXIOV).
const SENDMMSG_MAX: usize = 1024;

/// The segment size that makes a `UDP_SEGMENT` send one whole datagram:
/// the payload's length. Nothing is segmented, but the kernel refuses the
/// send when the datagram does not fit the path's MTU instead of
/// fragmenting it, and keeps the payload in page fragments.
fn whole_datagram(payload: &[u8]) -> io::Result<u16> {
    match u16::try_from(payload.len()) {
        Ok(0) | Err(_) => Err(io::Error::from(io::ErrorKind::InvalidInput)),
        Ok(len) => Ok(len),
    }
}

/// Sends `payload` once to each of `dests` with as few `sendmmsg(2)` calls as
/// possible. Returns the destinations (indices into `dests`) that got
/// nothing, each with its error, in order. A destination the kernel refuses
/// (no route, say) does not keep the ones after it from being tried; a full
/// non-blocking socket (`WouldBlock`) does, since they would be refused too.
///
/// With `whole`, every datagram carries a `UDP_SEGMENT` control message
/// whose segment size is the whole payload (see [`whole_datagram`]).
pub(crate) fn send_to_each(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    dests: &[SocketAddrV4],
    whole: bool,
) -> Vec<(usize, io::Error)> {
    let segment = match whole.then(|| whole_datagram(payload)).transpose() {
        Ok(segment) => segment,
        Err(err) => {
            return (0..dests.len())
                .map(|i| (i, io::Error::from(err.kind())))
                .collect()
        }
    };
    let cmsgs: Vec<ControlMessage<'_>> = segment
        .as_ref()
        .map(ControlMessage::UdpGsoSegments)
        .into_iter()
        .collect();
    let iov = [IoSlice::new(payload)];
    let mut failed = Vec::new();
    let mut next = 0;
    while next < dests.len() {
        let batch = &dests[next..dests.len().min(next + SENDMMSG_MAX)];
        let addrs: Vec<Option<SockaddrIn>> =
            batch.iter().map(|d| Some(SockaddrIn::from(*d))).collect();
        let slices = vec![iov; batch.len()];
        let mut headers = MultiHeaders::<SockaddrIn>::preallocate(
            batch.len(),
            segment.map(|_| nix::cmsg_space!(u16)),
        );
        let sent = sendmmsg(
            socket.as_raw_fd(),
            &mut headers,
            &slices,
            &addrs,
            &cmsgs,
            MsgFlags::empty(),
        )
        .map(Iterator::count);
        match sent {
            Ok(0) => {
                failed.push((next, io::Error::from(io::ErrorKind::WriteZero)));
                next += 1;
            }
            Ok(n) => next += n,
            Err(nix::errno::Errno::EINTR) => {}
            // The first message of the batch failed (sendmmsg reports an
            // error only then).
            Err(errno @ nix::errno::Errno::EAGAIN) => {
                failed.extend((next..dests.len()).map(|i| (i, io::Error::from(errno))));
                break;
            }
            Err(errno) => {
                failed.push((next, io::Error::from(errno)));
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
    let segment = whole.then(|| whole_datagram(payload)).transpose()?;
    let mut cmsgs = vec![ControlMessage::TxTime(&tag)];
    cmsgs.extend(segment.as_ref().map(ControlMessage::UdpGsoSegments));
    let to = SockaddrIn::from(*dest);
    Ok(sendmsg(
        socket.as_raw_fd(),
        &[IoSlice::new(payload)],
        &cmsgs,
        MsgFlags::empty(),
        Some(&to),
    )?)
}

/// Whether the socket sends UDP datagrams without checksums (`SO_NO_CHECK`,
/// which neither nix nor socket2 has), which makes the kernel refuse
/// `UDP_SEGMENT`.
pub(crate) fn checksums_off(socket: BorrowedFd<'_>) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
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
    let mut current = getsockopt(&socket, sockopt::TxTime)?;
    if current.clockid == libc::CLOCK_REALTIME && current.flags == 0 {
        // The socket's defaults: nothing set yet. The kernel wants
        // CAP_NET_ADMIN for any clock but CLOCK_MONOTONIC, which is also the
        // clock the tags are kept in the past of.
        current.clockid = libc::CLOCK_MONOTONIC;
    }
    Ok(setsockopt(&socket, sockopt::TxTime, &current)?)
}

/// A shared, writable mapping of a `BPF_F_MMAPABLE` array map.
pub(crate) struct MapMemory {
    ptr: NonNull<u8>,
    len: NonZeroUsize,
}

// SAFETY: the mapping is plain memory shared with the kernel; the types that
// hand out pointers into it (kernel::slots) decide how it is accessed.
unsafe impl Send for MapMemory {}
// SAFETY: as above: `MapMemory` itself only hands out its base address.
unsafe impl Sync for MapMemory {}

impl MapMemory {
    /// Maps `len` bytes of the map behind `fd`.
    pub(crate) fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<MapMemory> {
        let len = NonZeroUsize::new(len).ok_or(io::ErrorKind::InvalidInput)?;
        let flags = MapFlags::MAP_SHARED;
        let prot = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        // SAFETY: a fresh shared mapping placed by the kernel (no address
        // given), so no existing memory is affected.
        let ptr = unsafe { mmap(None, len, prot, flags, fd, 0) }?;
        Ok(MapMemory {
            ptr: ptr.cast(),
            len,
        })
    }

    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len.get()
    }
}

impl Drop for MapMemory {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` are exactly the mapping made in `map`, and no
        // pointer into it outlives `self` (kernel::slots borrows the owner).
        let _ = unsafe { munmap(self.ptr.cast(), self.len.get()) };
    }
}

/// Whether the calling thread holds `capability` in its effective set (the
/// kernel checks the thread's credentials on bpf() and netlink calls).
pub(crate) fn has_capability(capability: caps::Capability) -> io::Result<bool> {
    caps::has_cap(None, caps::CapSet::Effective, capability)
        .map_err(|err| io::Error::other(err.to_string()))
}
