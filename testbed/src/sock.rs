//! IPv6 UDP sockets with `IPV6_V6ONLY` set as asked, and interface indices.

use std::ffi::CString;
use std::io;
use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

use crate::error::last_os_error;

/// A UDP socket of the calling thread's network namespace, bound to `addr`,
/// with `IPV6_V6ONLY` on (`v6only`: it only ever sees IPv6, and an IPv4
/// socket may have the same port) or off (a dual-stack socket, which sends
/// to and receives from IPv4 as `::ffff:a.b.c.d`).
pub(crate) fn bind_udp6(addr: SocketAddrV6, v6only: bool) -> io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
        .map_err(|e| io::Error::new(e.kind(), format!("cannot create an IPv6 UDP socket: {e}")))?;
    socket.set_only_v6(v6only).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot set IPV6_V6ONLY to {v6only} for {addr}: {e}"),
        )
    })?;
    // Kept bare (the kind matters to the caller's retries).
    socket.bind(&SocketAddr::V6(addr).into())?;
    Ok(socket.into())
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
    ip.is_unicast_link_local()
}
