//! Shows that the testbed catches a wrong UDP pseudo-header checksum, the
//! typical bug of a program that rewrites destination addresses of packets
//! whose checksum the stack left to "hardware" (CHECKSUM_PARTIAL).
//!
//! The sender injects frames through an AF_PACKET socket with a virtio-net
//! header asking for checksum completion (so the kernel treats them exactly
//! like a local UDP send with transmit checksum offload): the UDP checksum
//! field holds the pseudo-header seed, and whoever "offloads" finishes it.
//! With transmit checksum offload off on the hub port, the bridge finishes it
//! in software and the receiver verifies it.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use elec_testbed::{in_namespace, set_tx_checksum_offload, wait_until, Testbed, TestbedConfig};

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        acc += u32::from(w);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// An Ethernet + IPv4 + UDP frame whose UDP checksum field holds the
/// (uncomplemented) pseudo-header sum computed for `seed_dst`.
fn frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    seed_dst: Ipv4Addr,
    port: u16,
    payload: &[u8],
) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&((20 + udp_len) as u16).to_be_bytes());
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = !fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut pseudo = Vec::new();
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&seed_dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let seed = fold(sum16(&pseudo, 0));
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&(udp_len as u16).to_be_bytes());
    f.extend_from_slice(&seed.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Sends `frame` out of the sender's eth0 as a CHECKSUM_PARTIAL packet.
fn inject(tb: &Testbed, frame: &[u8]) {
    in_namespace(tb.sender_ns(), || {
        // SAFETY: plain socket(2) call.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        assert!(fd >= 0, "{}", std::io::Error::last_os_error());
        // SAFETY: fresh descriptor owned by nothing else.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // SAFETY: pointer to a live c_int with its size.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_VNET_HDR,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        // struct virtio_net_hdr: flags, gso_type, hdr_len, gso_size,
        // csum_start, csum_offset (native endian).
        let mut buf = vec![1u8, 0];
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&0u16.to_ne_bytes());
        buf.extend_from_slice(&34u16.to_ne_bytes());
        buf.extend_from_slice(&6u16.to_ne_bytes());
        buf.extend_from_slice(frame);
        // SAFETY: NUL-terminated literal.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        assert!(ifindex > 0);
        // SAFETY: sockaddr_ll is plain old data.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: `buf` and `sll` are live for the call, with their sizes.
        let n = unsafe {
            libc::sendto(
                sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert_eq!(n, buf.len() as isize, "{}", std::io::Error::last_os_error());
    })
    .unwrap();
}

/// Receiver 0's UDP InDatagrams + InCsumErrors + NoPorts: what became of
/// the datagrams that reached it.
fn udp_events(tb: &Testbed) -> u64 {
    ["InDatagrams", "InCsumErrors", "NoPorts"]
        .iter()
        .map(|f| tb.udp_counter(f).unwrap()[0])
        .sum()
}

/// Waits (at most 5 s) until `udp_events` grows past `before`.
fn wait_udp_event(tb: &Testbed, before: u64) {
    wait_until(Duration::from_secs(5), Duration::from_millis(2), || {
        udp_events(tb) > before
    });
}

#[test]
fn wrong_pseudo_header_checksum_is_caught() {
    elec_testbed::require_root!();
    let tb = Testbed::new(TestbedConfig {
        receivers: 2,
        ..Default::default()
    })
    .unwrap();
    let dst = tb.receiver_addrs(0)[0];
    let wrong = tb.receiver_addrs(1)[0];
    let dest = std::net::SocketAddrV4::new(dst, 7400);
    let rx = tb.receivers(&[dest]).unwrap();
    let payload = b"checksum me";
    let mk = |seed_dst| {
        frame(
            tb.receiver_mac(0),
            tb.sender_mac(),
            tb.sender_addr(),
            dst,
            seed_dst,
            7400,
            payload,
        )
    };
    // Right seed: delivered.
    let e = udp_events(&tb);
    inject(&tb, &mk(dst));
    wait_udp_event(&tb, e);
    assert_eq!(tb.udp_in_csum_errors().unwrap(), vec![0, 0]);
    assert_eq!(rx.wait_for_total(1, Duration::from_secs(5)), 1);

    // Seed for the wrong destination: the bridge finishes the checksum in
    // software, the receiver verifies it and drops the datagram.
    let e = udp_events(&tb);
    inject(&tb, &mk(wrong));
    wait_udp_event(&tb, e);
    assert_eq!(tb.udp_in_csum_errors().unwrap(), vec![1, 0]);

    // With offload on on the hub port, the same bug goes unnoticed: that is
    // why the testbed turns it off.
    set_tx_checksum_offload(tb.hub_ns(), &tb.receiver_port(0), true).unwrap();
    let e = udp_events(&tb);
    inject(&tb, &mk(wrong));
    wait_udp_event(&tb, e);
    assert_eq!(tb.udp_in_csum_errors().unwrap(), vec![1, 0]);
    let got = rx.finish(Duration::from_millis(10));
    assert_eq!(got.datagrams(&dest), &[payload.to_vec(), payload.to_vec()]);
}
