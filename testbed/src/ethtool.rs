//! Interface ioctls (ethtool transmit checksum offload, hardware address)
//! issued from the calling thread's network namespace.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::error::last_os_error;
use crate::ns::in_namespace;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const SIOCGIFHWADDR: libc::c_ulong = 0x8927;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of the union (40 bytes).
#[repr(C)]
struct IfreqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// `struct ifreq` with the `ifr_hwaddr` member of the union (40 bytes).
#[repr(C)]
struct IfreqHwaddr {
    name: [libc::c_char; libc::IFNAMSIZ],
    hwaddr: libc::sockaddr,
    _pad: [u8; 8],
}

fn ifname(name: &str) -> io::Result<[libc::c_char; libc::IFNAMSIZ]> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?}"),
        ));
    }
    let mut out = [0 as libc::c_char; libc::IFNAMSIZ];
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = b as libc::c_char;
    }
    Ok(out)
}

/// A datagram socket in the calling thread's namespace, for ioctls.
fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call without pointers.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ethtool_value(iface: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let sock = ioctl_socket()?;
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfreqData {
        name: ifname(iface)?,
        data: (&mut value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    // SAFETY: `req` is a properly laid out struct ifreq whose ifr_data points
    // to `value`, a struct ethtool_value that lives across the call; the
    // kernel reads/writes only those two objects.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(last_os_error(format_args!(
            "SIOCETHTOOL cmd {cmd:#x} on {iface:?} failed"
        )));
    }
    Ok(value.data)
}

/// Sets transmit checksum offload of `iface` in the calling thread's namespace.
pub(crate) fn set_tx_csum_here(iface: &str, on: bool) -> io::Result<()> {
    ethtool_value(iface, ETHTOOL_STXCSUM, u32::from(on)).map(|_| ())
}

/// Reads transmit checksum offload of `iface` in the calling thread's namespace.
pub(crate) fn tx_csum_here(iface: &str) -> io::Result<bool> {
    ethtool_value(iface, ETHTOOL_GTXCSUM, 0).map(|v| v != 0)
}

/// Reads the MAC address of `iface` in the calling thread's namespace.
pub(crate) fn hw_addr_here(iface: &str) -> io::Result<[u8; 6]> {
    let sock = ioctl_socket()?;
    let mut req = IfreqHwaddr {
        name: ifname(iface)?,
        // SAFETY: sockaddr is plain old data; all-zero is a valid value.
        hwaddr: unsafe { std::mem::zeroed() },
        _pad: [0; 8],
    };
    // SAFETY: `req` is a properly laid out struct ifreq that lives across the
    // call; SIOCGIFHWADDR writes only into it.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGIFHWADDR as _, &mut req) };
    if rc < 0 {
        return Err(last_os_error(format_args!(
            "SIOCGIFHWADDR on {iface:?} failed"
        )));
    }
    let mut mac = [0u8; 6];
    for (m, b) in mac.iter_mut().zip(req.hwaddr.sa_data.iter()) {
        *m = *b as u8;
    }
    Ok(mac)
}

/// Reads whether transmit checksum offload (`ethtool -k IFACE`'s
/// `tx-checksumming`) is on for `iface` in the network namespace `ns`,
/// using the `SIOCETHTOOL`/`ETHTOOL_GTXCSUM` ioctl.
pub fn tx_checksum_offload(ns: &str, iface: &str) -> io::Result<bool> {
    in_namespace(ns, || tx_csum_here(iface))?
}

/// Turns transmit checksum offload of `iface` in the network namespace `ns`
/// on or off (`SIOCETHTOOL`/`ETHTOOL_STXCSUM`).
pub fn set_tx_checksum_offload(ns: &str, iface: &str, on: bool) -> io::Result<()> {
    in_namespace(ns, || set_tx_csum_here(iface, on))?
}

/// Reads the MAC address of `iface` in the network namespace `ns`
/// (`SIOCGIFHWADDR`).
pub fn mac_address(ns: &str, iface: &str) -> io::Result<[u8; 6]> {
    in_namespace(ns, || hw_addr_here(iface))?
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
