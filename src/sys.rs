//! The system calls that socket2 and libbpf-rs do not cover: `sendmsg`
//! with control messages, the socket options the library sets or reads, and
//! the mapping of a BPF map through `nix`; the capability set through
//! `caps`. `unsafe` code is left where nix has no call or a flawed one
//! (`sendmmsg`, `SO_NO_CHECK`), and around the mapping (`mmap`, `munmap`,
//! and `MapMemory`'s `Send`/`Sync`), each with its `// SAFETY:` comment.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::NonNull;

use crate::kernel::MAX_BATCH;
use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};
use nix::sys::socket::{
    getsockopt, sendmsg, setsockopt, sockopt, ControlMessage, MsgFlags, SockaddrStorage,
};
use socket2::SockAddr;

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

/// Sends the messages of `headers` with as few `sendmmsg(2)` calls as
/// possible, and calls `failed(position, error)` for each message not sent,
/// in order. A message the kernel refuses (no route, say) does not keep the
/// ones after it from being tried; a full non-blocking socket
/// (`WouldBlock`) does: every message from it on fails with it.
///
/// # Safety
/// Every header must be an initialised mmsghdr whose name, iovec and
/// control pointers point to memory that is valid for the call.
unsafe fn send_all(
    socket: BorrowedFd<'_>,
    headers: &mut [libc::mmsghdr],
    mut failed: impl FnMut(usize, io::Error),
) {
    let mut next = 0;
    while next < headers.len() {
        let batch = &mut headers[next..];
        let count = batch.len().min(SENDMMSG_MAX);
        // SAFETY: the caller vouches for the headers; the kernel only reads
        // through them, and writes only their msg_len.
        let sent = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                batch.as_mut_ptr(),
                count as libc::c_uint,
                0,
            )
        };
        match sent {
            n if n > 0 => next += n as usize,
            0 => {
                failed(next, io::Error::from(io::ErrorKind::WriteZero));
                next += 1;
            }
            _ => {
                // The first message of the batch failed (sendmmsg reports an
                // error only then).
                let err = io::Error::last_os_error();
                match err.kind() {
                    io::ErrorKind::Interrupted => {}
                    io::ErrorKind::WouldBlock => {
                        let code = err.raw_os_error().unwrap_or(libc::EAGAIN);
                        for at in next..headers.len() {
                            failed(at, io::Error::from_raw_os_error(code));
                        }
                        return;
                    }
                    _ => {
                        failed(next, err);
                        next += 1;
                    }
                }
            }
        }
    }
}

/// Sends each datagram of `sends` (a payload of `payloads`, by index, and a
/// destination) with as few `sendmmsg(2)` calls as possible. Returns the
/// datagrams (indices into `sends`) that were not sent, each with its error,
/// in order. A datagram the kernel refuses (no route, say) does not keep the
/// ones after it from being tried; a full non-blocking socket
/// (`WouldBlock`) does, since they would be refused too.
///
/// With `whole`, every non-empty datagram carries a `UDP_SEGMENT` control
/// message whose segment size is its whole payload (see
/// [`whole_datagram`]).
///
/// This is libc's `sendmmsg`: nix's wrapper reads back address storage that
/// a send never fills, to count what was sent.
pub(crate) fn send_to_each(
    socket: BorrowedFd<'_>,
    payloads: &[&[u8]],
    sends: &[(usize, SocketAddr)],
    whole: bool,
) -> Vec<(usize, io::Error)> {
    // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
    let (space, len) = unsafe { (libc::CMSG_SPACE(2) as usize, libc::CMSG_LEN(2) as usize) };
    // One control message per payload, shared by its datagrams (the kernel
    // only reads it): 8-aligned, as cmsghdr requires, and room for a u16.
    let mut controls = vec![[0u64; 4]; payloads.len()];
    let mut segments: Vec<Option<io::Result<u16>>> = Vec::with_capacity(payloads.len());
    for (payload, control) in payloads.iter().zip(&mut controls) {
        let segment = (whole && !payload.is_empty()).then(|| whole_datagram(payload));
        if let Some(Ok(segment)) = segment {
            assert!(space <= std::mem::size_of_val(control));
            // SAFETY: `control` is 8-aligned and holds `space` bytes: the
            // header at its start and the u16 at CMSG_LEN(0) (the CMSG_DATA
            // offset) fit; the u16 is written unaligned-safe.
            unsafe {
                let header = control.as_mut_ptr().cast::<libc::cmsghdr>();
                header.write(libc::cmsghdr {
                    cmsg_len: len as _,
                    cmsg_level: libc::SOL_UDP,
                    cmsg_type: libc::UDP_SEGMENT,
                });
                let data = control
                    .as_mut_ptr()
                    .cast::<u8>()
                    .add(libc::CMSG_LEN(0) as usize);
                data.cast::<u16>().write_unaligned(segment);
            }
        }
        segments.push(segment);
    }
    let mut iovs: Vec<libc::iovec> = payloads
        .iter()
        .map(|payload| libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        })
        .collect();
    let mut failed = Vec::new();
    // Datagrams whose control message could not be made are not sent.
    let mut todo = Vec::with_capacity(sends.len());
    for (i, &(payload, _)) in sends.iter().enumerate() {
        match &segments[payload] {
            Some(Err(err)) => failed.push((i, io::Error::from(err.kind()))),
            _ => todo.push(i),
        }
    }
    let names: Vec<SockAddr> = todo.iter().map(|&i| SockAddr::from(sends[i].1)).collect();
    let mut headers: Vec<libc::mmsghdr> = names
        .iter()
        .zip(&todo)
        .map(|(name, &i)| {
            let payload = sends[i].0;
            // SAFETY: all-zero bytes are a valid (empty) mmsghdr.
            let mut header: libc::mmsghdr = unsafe { std::mem::zeroed() };
            // The kernel only reads the name of a send.
            header.msg_hdr.msg_name = name.as_ptr().cast_mut().cast();
            header.msg_hdr.msg_namelen = name.len();
            header.msg_hdr.msg_iov = &mut iovs[payload];
            header.msg_hdr.msg_iovlen = 1;
            if let Some(Ok(_)) = segments[payload] {
                header.msg_hdr.msg_control = controls[payload].as_mut_ptr().cast();
                header.msg_hdr.msg_controllen = space as _;
            }
            header
        })
        .collect();
    // SAFETY: `headers` are initialised mmsghdr whose name, iovec and
    // control pointers point into `names`, `iovs` (the payloads) and
    // `controls`, which outlive the call.
    unsafe { send_all(socket, &mut headers, |at, err| failed.push((todo[at], err))) };
    failed.sort_by_key(|(i, _)| *i);
    failed
}

/// Sends the carrier datagrams of a batch of fan-outs, one per payload, with
/// as few `sendmmsg(2)` calls as possible: payload `i` to `dest`, with tag
/// `first_tag + i` as its transmit time (`SCM_TXTIME`), which is how the
/// program tells it from every other datagram of the socket and finds its
/// arm. Returns each datagram's result, in order. A send that would block
/// stops the batch: every datagram from it on gets `WouldBlock`.
///
/// With `whole`, each non-empty payload carries a `UDP_SEGMENT` control
/// message that makes it one whole datagram (see [`whole_datagram`]): never
/// fragmented, and with its payload in page fragments, so that un-sharing a
/// clone copies only its headers.
pub(crate) fn send_carriers(
    socket: BorrowedFd<'_>,
    payloads: &[&[u8]],
    dest: &SocketAddr,
    first_tag: u64,
    whole: bool,
) -> [io::Result<()>; MAX_BATCH] {
    assert!(payloads.len() <= MAX_BATCH, "at most MAX_BATCH carriers");
    let mut results: [io::Result<()>; MAX_BATCH] = std::array::from_fn(|_| Ok(()));
    if let [payload] = payloads {
        results[0] = send_carrier(socket, payload, dest, first_tag, whole);
        return results;
    }
    // Everything on the stack (a broadcast's hot path allocates nothing
    // here): one control buffer per datagram, its tag and its segment size.
    let mut controls = [[0u64; CONTROL_WORDS]; MAX_BATCH];
    let name = SockAddr::from(*dest);
    // SAFETY: all-zero bytes are valid (empty) iovecs and mmsghdrs.
    let mut iovs: [libc::iovec; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut headers: [libc::mmsghdr; MAX_BATCH] = unsafe { std::mem::zeroed() };
    // The datagrams to send (whose control message could be made), by index.
    let mut todo = [0usize; MAX_BATCH];
    let mut count = 0;
    for (i, payload) in payloads.iter().enumerate() {
        let segment = match (whole && !payload.is_empty()).then(|| whole_datagram(payload)) {
            Some(Err(err)) => {
                results[i] = Err(err);
                continue;
            }
            Some(Ok(segment)) => Some(segment),
            None => None,
        };
        let control_len = carrier_control(&mut controls[i], first_tag + i as u64, segment);
        iovs[i] = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        let header = &mut headers[count].msg_hdr;
        // The kernel only reads the name of a send.
        header.msg_name = name.as_ptr().cast_mut().cast();
        header.msg_namelen = name.len();
        header.msg_iov = &mut iovs[i];
        header.msg_iovlen = 1;
        header.msg_control = controls[i].as_mut_ptr().cast();
        header.msg_controllen = control_len as _;
        todo[count] = i;
        count += 1;
    }
    // SAFETY: `headers[..count]` are initialised mmsghdr whose name, iovec
    // and control pointers point into `name`, `iovs` (the payloads) and
    // `controls`, which outlive the call.
    unsafe {
        send_all(socket, &mut headers[..count], |at, err| {
            results[todo[at]] = Err(err)
        })
    };
    results
}

/// 8-byte words of a carrier's control buffer: room for both of its
/// control messages.
const CONTROL_WORDS: usize = 8;

/// Writes a carrier's control messages into `control`: its tag as its
/// transmit time (`SCM_TXTIME`) and, with `segment`, its `UDP_SEGMENT`
/// size. Returns their length.
fn carrier_control(control: &mut [u64; CONTROL_WORDS], tag: u64, segment: Option<u16>) -> usize {
    // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
    let (tag_space, tag_len, segment_space, segment_len, data) = unsafe {
        (
            libc::CMSG_SPACE(8) as usize,
            libc::CMSG_LEN(8) as usize,
            libc::CMSG_SPACE(2) as usize,
            libc::CMSG_LEN(2) as usize,
            libc::CMSG_LEN(0) as usize,
        )
    };
    assert!(tag_space + segment_space <= CONTROL_WORDS * 8);
    let base = control.as_mut_ptr().cast::<u8>();
    // SAFETY: `control` is 8-aligned and holds CONTROL_WORDS * 8 bytes,
    // room for both headers (at 0 and at `tag_space`) and their data (at
    // `data` past each header), as asserted above; the data are written
    // unaligned-safe.
    unsafe {
        base.cast::<libc::cmsghdr>().write(libc::cmsghdr {
            cmsg_len: tag_len as _,
            cmsg_level: libc::SOL_SOCKET,
            cmsg_type: libc::SCM_TXTIME,
        });
        base.add(data).cast::<u64>().write_unaligned(tag);
        if let Some(segment) = segment {
            base.add(tag_space)
                .cast::<libc::cmsghdr>()
                .write(libc::cmsghdr {
                    cmsg_len: segment_len as _,
                    cmsg_level: libc::SOL_UDP,
                    cmsg_type: libc::UDP_SEGMENT,
                });
            base.add(tag_space + data)
                .cast::<u16>()
                .write_unaligned(segment);
        }
    }
    tag_space + segment.map_or(0, |_| segment_space)
}

/// One carrier (as `send_carriers`) with `sendmsg(2)`, which costs less
/// than a `sendmmsg` of one, everything on the stack and the address no
/// larger than its family's.
fn send_carrier(
    socket: BorrowedFd<'_>,
    payload: &[u8],
    dest: &SocketAddr,
    tag: u64,
    whole: bool,
) -> io::Result<()> {
    let segment = match whole && !payload.is_empty() {
        true => Some(whole_datagram(payload)?),
        false => None,
    };
    let mut control = [0u64; CONTROL_WORDS];
    let control_len = carrier_control(&mut control, tag, segment);
    let (name, name_len) = RawAddr::of(dest);
    let mut iov = libc::iovec {
        iov_base: payload.as_ptr() as *mut libc::c_void,
        iov_len: payload.len(),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no data, no control).
    let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
    // The kernel only reads the name, the payload and the control of a send.
    header.msg_name = (&name as *const RawAddr).cast_mut().cast();
    header.msg_namelen = name_len;
    header.msg_iov = &mut iov;
    header.msg_iovlen = 1;
    header.msg_control = control.as_mut_ptr().cast();
    header.msg_controllen = control_len as _;
    // SAFETY: `header` is an initialised msghdr whose pointers point into
    // `name` (its first `name_len` bytes initialised), `iov` (the payload)
    // and `control`, which outlive the call; the kernel only reads them.
    let sent = unsafe { libc::sendmsg(socket.as_raw_fd(), &header, 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A socket address as the kernel reads it, no larger than its family's
/// (a `sockaddr_storage` is 128 bytes to fill).
#[repr(C)]
union RawAddr {
    v4: libc::sockaddr_in,
    v6: libc::sockaddr_in6,
}

impl RawAddr {
    /// `to` as a `sockaddr_in` or `sockaddr_in6`, and its length.
    fn of(to: &SocketAddr) -> (RawAddr, libc::socklen_t) {
        match to {
            SocketAddr::V4(to) => (
                RawAddr {
                    v4: libc::sockaddr_in {
                        sin_family: libc::AF_INET as libc::sa_family_t,
                        sin_port: to.port().to_be(),
                        sin_addr: libc::in_addr {
                            s_addr: u32::from_ne_bytes(to.ip().octets()),
                        },
                        sin_zero: [0; 8],
                    },
                },
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            ),
            SocketAddr::V6(to) => (
                RawAddr {
                    v6: libc::sockaddr_in6 {
                        sin6_family: libc::AF_INET6 as libc::sa_family_t,
                        sin6_port: to.port().to_be(),
                        sin6_flowinfo: to.flowinfo(),
                        sin6_addr: libc::in6_addr {
                            s6_addr: to.ip().octets(),
                        },
                        sin6_scope_id: to.scope_id(),
                    },
                },
                std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
            ),
        }
    }
}

/// The most segments one UDP GSO send may carry (the kernel's
/// `UDP_MAX_SEGMENTS`, 64 before Linux 6.10 and 128 since: the lower).
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;

/// Sends `payloads` as ONE carrier datagram of a fan-out: a UDP GSO send
/// (`UDP_SEGMENT` of `segment` bytes) whose segments are the payloads, in
/// order (each but the last exactly `segment` bytes long), to `dest`, with
/// `tag` as its transmit time. The program clones it whole, and each clone
/// is cut into its datagrams by the device (or by the kernel where the
/// device cannot).
pub(crate) fn send_segmented_carrier(
    socket: BorrowedFd<'_>,
    payloads: &[&[u8]],
    dest: &SocketAddr,
    tag: u64,
    segment: u16,
) -> io::Result<()> {
    let cmsgs = [
        ControlMessage::TxTime(&tag),
        ControlMessage::UdpGsoSegments(&segment),
    ];
    let iov: Vec<IoSlice<'_>> = payloads.iter().map(|p| IoSlice::new(p)).collect();
    let to = SockaddrStorage::from(*dest);
    sendmsg(
        socket.as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::empty(),
        Some(&to),
    )?;
    Ok(())
}

/// `UDP_NO_CHECK6_TX` (<linux/udp.h>), which `libc` does not export: an
/// IPv6 socket's "send without checksums".
const UDP_NO_CHECK6_TX: libc::c_int = 101;

/// Whether the socket sends UDP datagrams without checksums (`SO_NO_CHECK`,
/// or `UDP_NO_CHECK6_TX` on an IPv6 socket; neither nix nor socket2 has
/// them), which makes the kernel refuse `UDP_SEGMENT`.
pub(crate) fn checksums_off(socket: BorrowedFd<'_>) -> bool {
    let option = |level, name| {
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
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
        done == 0 && value != 0
    };
    // The second is 0 on an IPv4 socket, which never uses it.
    option(libc::SOL_SOCKET, libc::SO_NO_CHECK) || option(libc::IPPROTO_UDP, UDP_NO_CHECK6_TX)
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

/// A heap value shared the way a map's mmap()ed memory is: through raw
/// pointers and atomics, by several threads (the user-space mode of the
/// receive-side primitives). Made with `Box::into_raw`, so that the
/// pointer carries write permission; freed on drop.
pub(crate) struct SharedMemory<T>(std::ptr::NonNull<T>);

impl<T: Default> SharedMemory<T> {
    pub(crate) fn new() -> SharedMemory<T> {
        SharedMemory(std::ptr::NonNull::from(Box::leak(Box::<T>::default())))
    }
}

impl<T> SharedMemory<T> {
    pub(crate) fn as_ptr(&self) -> *mut T {
        self.0.as_ptr()
    }
}

impl<T> Drop for SharedMemory<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from Box::leak in `new`, and no pointer
        // into the value outlives its owner (the primitives drop their views
        // first).
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }
}

// SAFETY: the value is plain memory that its users access atomically.
unsafe impl<T> Send for SharedMemory<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SharedMemory<T> {}

#[cfg(test)]
mod tests {
    use super::*;

    /// `RawAddr` says what socket2's `SockAddr` says, byte for byte over
    /// the length given to the kernel, for both families (port, flow
    /// label and scope included).
    #[test]
    fn raw_addresses_are_the_kernels_sockaddrs() {
        let addresses: [SocketAddr; 4] = [
            "10.77.1.2:7000".parse().unwrap(),
            "255.255.255.254:65535".parse().unwrap(),
            "[fd77::1:2]:7001".parse().unwrap(),
            SocketAddr::V6(std::net::SocketAddrV6::new(
                "fe80::1".parse().unwrap(),
                9,
                0x1234_5678,
                3,
            )),
        ];
        for to in addresses {
            let (raw, len) = RawAddr::of(&to);
            let expected = SockAddr::from(to);
            assert_eq!(len, expected.len(), "{to}");
            // SAFETY: `RawAddr::of` initialises the first `len` bytes.
            let raw = unsafe {
                std::slice::from_raw_parts((&raw as *const RawAddr).cast::<u8>(), len as usize)
            };
            // SAFETY: `SockAddr` holds `len()` initialised bytes at `as_ptr()`.
            let expected = unsafe {
                std::slice::from_raw_parts(expected.as_ptr().cast::<u8>(), expected.len() as usize)
            };
            assert_eq!(raw, expected, "{to}");
        }
    }
}
