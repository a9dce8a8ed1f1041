//! Why the kernel refused a send the library made, told apart from its
//! error code.

use std::io;
use std::os::fd::BorrowedFd;

use super::sockets::SocketState;
use crate::sys;

/// Why the kernel refused a send.
pub(crate) enum Refusal {
    /// The fd names another socket than the one registered (which does not
    /// take transmit times).
    SocketReplaced,
    /// The datagram does not fit the path's MTU: it was not fragmented.
    TooLarge,
    /// `UDP_SEGMENT` is not for this socket (UDP checksums off) or route (no
    /// checksum offload, IPsec), or this kernel lacks it.
    NotWhole,
    /// Anything else: reported as it is.
    Other,
}

/// Tells apart the ways the kernel refuses a send (`whole`: it carried a
/// `UDP_SEGMENT` control message). Older kernels refuse a whole datagram too
/// large for the path's MTU with `EINVAL`, as they do one of a socket with
/// UDP checksums off; newer ones say `EMSGSIZE`.
pub(crate) fn refusal(
    state: &SocketState,
    socket: BorrowedFd<'_>,
    err: &io::Error,
    whole: bool,
) -> Refusal {
    match err.raw_os_error() {
        Some(libc::EMSGSIZE) => Refusal::TooLarge,
        Some(libc::EINVAL) if state.replaced_by(socket) => Refusal::SocketReplaced,
        Some(libc::EINVAL) if whole && !sys::checksums_off(socket) => Refusal::TooLarge,
        Some(libc::EINVAL | libc::EIO | libc::ENOPROTOOPT) if whole => Refusal::NotWhole,
        _ => Refusal::Other,
    }
}

/// The error a copy refused as too large is reported with.
pub(crate) fn too_large_error() -> io::Error {
    io::Error::from_raw_os_error(libc::EMSGSIZE)
}
