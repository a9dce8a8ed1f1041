//! IPv6 UDP sockets with `IPV6_V6ONLY` set as asked, and interface indices.

use std::ffi::CString;
use std::io;
use std::net::{Ipv6Addr, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::last_os_error;

/// A UDP socket of the calling thread's network namespace, bound to `addr`,
/// with `IPV6_V6ONLY` on (`v6only`: it only ever sees IPv6, and an IPv4
/// socket may have the same port) or off (a dual-stack socket, which sends
/// to and receives from IPv4 as `::ffff:a.b.c.d`).
pub(crate) fn bind_udp6(addr: SocketAddrV6, v6only: bool) -> io::Result<UdpSocket> {
    // SAFETY: plain socket(2) call without pointers.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            libc::IPPROTO_UDP,
        )
    };
    if fd < 0 {
        return Err(last_os_error(format_args!(
            "cannot create an IPv6 UDP socket"
        )));
    }
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let only: libc::c_int = v6only.into();
    // SAFETY: passes a pointer to `only`, a c_int that lives across the call,
    // with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IPV6,
            libc::IPV6_V6ONLY,
            (&only as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(last_os_error(format_args!(
            "cannot set IPV6_V6ONLY to {only} for {addr}"
        )));
    }
    // SAFETY: sockaddr_in6 is plain old data; all-zero is valid.
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
    sa.sin6_port = addr.port().to_be();
    sa.sin6_flowinfo = addr.flowinfo();
    sa.sin6_addr = libc::in6_addr {
        s6_addr: addr.ip().octets(),
    };
    sa.sin6_scope_id = addr.scope_id();
    // SAFETY: passes a pointer to `sa`, which lives across the call, with its
    // exact size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sa as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        // Kept bare (the kind matters to the caller's retries).
        return Err(io::Error::last_os_error());
    }
    Ok(UdpSocket::from(fd))
}

/// The index of interface `name` in the calling thread's network namespace.
pub(crate) fn ifindex_here(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface name {name:?} contains a NUL byte"),
        )
    })?;
    // SAFETY: `c` is a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        return Err(last_os_error(format_args!("no interface {name}")));
    }
    Ok(index)
}

/// True for a unicast link-local address (fe80::/10), which needs a scope
/// id (an interface) to be bound or reached.
pub(crate) fn is_link_local(ip: &Ipv6Addr) -> bool {
    ip.segments()[0] & 0xffc0 == 0xfe80
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local() {
        assert!(is_link_local(&"fe80::1".parse().unwrap()));
        assert!(is_link_local(&"febf::1".parse().unwrap()));
        assert!(!is_link_local(&"fec0::1".parse().unwrap()));
        assert!(!is_link_local(&"fd77::1".parse().unwrap()));
        assert!(!is_link_local(&Ipv6Addr::LOCALHOST));
    }
}
