//! The two headers the receive-side programs understand, written and parsed
//! here so that an application never lays out their bytes itself: an
//! [`Ack`] (voter `v` has round `r` of epoch `e`) and a [`Sequenced`]
//! datagram header (round `r` of epoch `e`, acknowledge to this port).
//!
//! Both are 24 bytes at the start of a UDP payload, in network byte order,
//! as `include/elec_wire.h` defines them; the application's own bytes may
//! follow.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use crate::kernel::wire::{
    ACK_CUMULATIVE, ACK_FROM_KERNEL, ACK_MAGIC, MAX_ROUND, SEQUENCED_MAGIC, WIRE_VERSION,
};

/// Length of either header on the wire.
pub const HEADER_LEN: usize = 24;

/// Highest round number: rounds are 48-bit (1..=`MAX_ROUND`), so that the
/// kernel can tag each tally with the configuration it belongs to.
pub const MAX_ROUND_NUMBER: u64 = MAX_ROUND;

/// Most voters a quorum counts (voters are numbered `0..MAX_VOTERS`).
pub const MAX_VOTERS: u16 = crate::kernel::wire::MAX_VOTERS as u16;

/// Why bytes are not a valid header.
///
/// # Example
///
/// ```
/// use elec_broadcast::{Ack, HeaderError, Sequenced};
///
/// assert_eq!(Ack::parse(&[0u8; 10]), Err(HeaderError::TooShort { len: 10 }));
/// // A sequenced header is no ack: its magic number differs.
/// let header = Sequenced { epoch: 1, round: 1, ack_port: 7000 }.to_bytes();
/// assert!(matches!(Ack::parse(&header), Err(HeaderError::Magic { .. })));
/// // Round 0 is out of range.
/// let round0 = Ack { epoch: 1, round: 0, voter: 2 }.to_bytes();
/// assert_eq!(Ack::parse(&round0), Err(HeaderError::Field { field: "round" }));
/// println!("{}", HeaderError::TooShort { len: 10 }); // "10 bytes are too short ..."
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Fewer bytes than a header.
    #[error("{len} bytes are too short for a {HEADER_LEN}-byte header")]
    TooShort {
        /// How many bytes there were.
        len: usize,
    },
    /// The first two bytes are not this header's magic number.
    #[error("not this header (magic {found:#06x})")]
    Magic {
        /// The first two bytes, big-endian.
        found: u16,
    },
    /// A version this library does not know.
    #[error("header version {found}, this library knows version {WIRE_VERSION}")]
    Version {
        /// The version found.
        found: u8,
    },
    /// A field out of its range: round 0 or above [`MAX_ROUND_NUMBER`], a
    /// voter at or above [`MAX_VOTERS`], a reserved field not 0, unknown flags.
    #[error("header field {field} is out of range")]
    Field {
        /// The field's name.
        field: &'static str,
    },
}

/// An acknowledgement: `voter` has every round of `epoch` up to `round`
/// (acks are cumulative, as a VR PrepareOK is).
///
/// # Example
///
/// ```
/// use elec_broadcast::Ack;
///
/// let ack = Ack { epoch: 3, round: 17, voter: 2 };
/// let mut datagram = ack.to_bytes().to_vec();
/// datagram.extend_from_slice(b"application bytes");
/// let (parsed, rest) = Ack::parse(&datagram).unwrap();
/// assert_eq!(parsed, ack);
/// assert_eq!(rest, b"application bytes");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ack {
    /// The epoch (view, term) the voter is in.
    pub epoch: u64,
    /// The highest round acknowledged, 1..=[`MAX_ROUND_NUMBER`].
    pub round: u64,
    /// The voter, 0..[`MAX_VOTERS`].
    pub voter: u16,
}

impl Ack {
    /// The 24 header bytes. Rounds and voters out of range are written as
    /// given; [`Ack::parse`] (and the kernel) will refuse them.
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Ack, HEADER_LEN};
    ///
    /// let ack = Ack { epoch: 7, round: 42, voter: 3 };
    /// let bytes: [u8; HEADER_LEN] = ack.to_bytes();
    /// assert_eq!(Ack::parse(&bytes).unwrap(), (ack, &[][..]));
    /// // Out of range is written as given, and refused when parsed.
    /// let bad = Ack { voter: 64, ..ack }.to_bytes();
    /// assert!(Ack::parse(&bad).is_err());
    /// ```
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        write(
            ACK_MAGIC,
            ACK_CUMULATIVE,
            self.voter,
            self.epoch,
            self.round,
        )
    }

    /// Parses an ack at the start of `datagram`; returns it and the bytes
    /// after the header.
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Ack, HeaderError};
    ///
    /// let mut datagram = Ack { epoch: 1, round: 9, voter: 0 }.to_bytes().to_vec();
    /// datagram.extend_from_slice(b"state digest");
    /// let (ack, rest) = Ack::parse(&datagram)?;
    /// assert_eq!((ack.epoch, ack.round, ack.voter), (1, 9, 0));
    /// assert_eq!(rest, b"state digest");
    /// // A datagram shorter than the header is an error, not a panic.
    /// assert_eq!(Ack::parse(&datagram[..5]), Err(HeaderError::TooShort { len: 5 }));
    /// # Ok::<(), HeaderError>(())
    /// ```
    pub fn parse(datagram: &[u8]) -> Result<(Ack, &[u8]), HeaderError> {
        let fields = read(datagram, ACK_MAGIC)?;
        if fields.flags & !(ACK_CUMULATIVE | ACK_FROM_KERNEL) != 0
            || fields.flags & ACK_CUMULATIVE == 0
        {
            return Err(HeaderError::Field { field: "flags" });
        }
        if fields.middle >= MAX_VOTERS {
            return Err(HeaderError::Field { field: "voter" });
        }
        let ack = Ack {
            epoch: fields.epoch,
            round: fields.round,
            voter: fields.middle,
        };
        Ok((ack, &datagram[HEADER_LEN..]))
    }

    /// Whether `datagram` starts with an ack that a kernel program sent.
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::Ack;
    ///
    /// // An ack built (and sent) by user space, such as this one, is not.
    /// let ack = Ack { epoch: 1, round: 4, voter: 2 }.to_bytes();
    /// assert!(Ack::parse(&ack).is_ok());
    /// assert!(!Ack::is_from_kernel(&ack));
    /// assert!(!Ack::is_from_kernel(b"not an ack"));
    /// ```
    pub fn is_from_kernel(datagram: &[u8]) -> bool {
        read(datagram, ACK_MAGIC).is_ok_and(|f| f.flags & ACK_FROM_KERNEL != 0)
    }

    /// Sends this ack, followed by `payload`, to `to` through `socket`, as
    /// one datagram.
    ///
    /// # Example
    ///
    /// ```
    /// use std::net::UdpSocket;
    /// use elec_broadcast::Ack;
    ///
    /// # fn main() -> std::io::Result<()> {
    /// let (voter, leader) = (UdpSocket::bind("127.0.0.1:0")?, UdpSocket::bind("127.0.0.1:0")?);
    /// let ack = Ack { epoch: 2, round: 11, voter: 4 };
    /// ack.send(&voter, leader.local_addr()?, b"ok")?;
    /// let mut buf = [0u8; 64];
    /// let (len, _) = leader.recv_from(&mut buf)?;
    /// assert_eq!(Ack::parse(&buf[..len]).unwrap(), (ack, &b"ok"[..]));
    /// # Ok(())
    /// # }
    /// ```
    pub fn send(&self, socket: &UdpSocket, to: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let mut datagram = Vec::with_capacity(HEADER_LEN + payload.len());
        datagram.extend_from_slice(&self.to_bytes());
        datagram.extend_from_slice(payload);
        socket.send_to(&datagram, to).map(drop)
    }
}

/// The header of a datagram in a sequence: round `round` of epoch `epoch`,
/// to be acknowledged to the sender's IP address at port `ack_port`.
///
/// # Example
///
/// ```
/// use elec_broadcast::Sequenced;
///
/// let header = Sequenced { epoch: 3, round: 18, ack_port: 7000 };
/// let mut datagram = header.to_bytes().to_vec();
/// datagram.extend_from_slice(b"prepare");
/// assert_eq!(Sequenced::parse(&datagram).unwrap(), (header, &b"prepare"[..]));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sequenced {
    /// The sender's epoch.
    pub epoch: u64,
    /// The datagram's place in the sequence, 1..=[`MAX_ROUND_NUMBER`].
    pub round: u64,
    /// The UDP port acks go to, on the sender's address (not 0).
    pub ack_port: u16,
}

impl Sequenced {
    /// The 24 header bytes. Fields are written as given: an `ack_port` of 0
    /// or a round of 0 is written, and refused when parsed.
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Sequenced, HEADER_LEN};
    ///
    /// let header = Sequenced { epoch: 5, round: 1, ack_port: 7001 };
    /// let bytes = header.to_bytes();
    /// assert_eq!(bytes.len(), HEADER_LEN);
    /// assert_eq!(Sequenced::parse(&bytes).unwrap().0, header);
    /// ```
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        write(SEQUENCED_MAGIC, 0, self.ack_port, self.epoch, self.round)
    }

    /// Parses the header at the start of `datagram`; returns it and the
    /// bytes after it.
    ///
    /// # Example
    ///
    /// ```
    /// use elec_broadcast::{Ack, HeaderError, Sequenced};
    ///
    /// let mut datagram = Sequenced { epoch: 5, round: 2, ack_port: 7001 }.to_bytes().to_vec();
    /// datagram.extend_from_slice(b"commit x=1");
    /// let (header, payload) = Sequenced::parse(&datagram)?;
    /// assert_eq!((header.round, payload), (2, &b"commit x=1"[..]));
    /// // No port to acknowledge to, or an ack instead: not a sequenced header.
    /// let no_port = Sequenced { ack_port: 0, ..header }.to_bytes();
    /// assert_eq!(Sequenced::parse(&no_port), Err(HeaderError::Field { field: "ack_port" }));
    /// assert!(Sequenced::parse(&Ack { epoch: 5, round: 2, voter: 1 }.to_bytes()).is_err());
    /// # Ok::<(), HeaderError>(())
    /// ```
    pub fn parse(datagram: &[u8]) -> Result<(Sequenced, &[u8]), HeaderError> {
        let fields = read(datagram, SEQUENCED_MAGIC)?;
        if fields.flags != 0 {
            return Err(HeaderError::Field { field: "flags" });
        }
        if fields.middle == 0 {
            return Err(HeaderError::Field { field: "ack_port" });
        }
        let header = Sequenced {
            epoch: fields.epoch,
            round: fields.round,
            ack_port: fields.middle,
        };
        Ok((header, &datagram[HEADER_LEN..]))
    }
}

/// The fields both headers share the layout of.
struct Fields {
    flags: u32,
    middle: u16, // the ack's voter, the sequenced datagram's ack port
    epoch: u64,
    round: u64,
}

fn write(magic: u32, flags: u32, middle: u16, epoch: u64, round: u64) -> [u8; HEADER_LEN] {
    let mut bytes = [0u8; HEADER_LEN];
    bytes[0..2].copy_from_slice(&(magic as u16).to_be_bytes());
    bytes[2] = WIRE_VERSION as u8;
    bytes[3] = flags as u8;
    bytes[4..6].copy_from_slice(&middle.to_be_bytes());
    // bytes 6..8: reserved, 0
    bytes[8..16].copy_from_slice(&epoch.to_be_bytes());
    bytes[16..24].copy_from_slice(&round.to_be_bytes());
    bytes
}

fn read(datagram: &[u8], magic: u32) -> Result<Fields, HeaderError> {
    let Some(bytes) = datagram.get(..HEADER_LEN) else {
        return Err(HeaderError::TooShort {
            len: datagram.len(),
        });
    };
    let be16 = |at: usize| u16::from_be_bytes([bytes[at], bytes[at + 1]]);
    let be64 = |at: usize| u64::from_be_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
    if u32::from(be16(0)) != magic {
        return Err(HeaderError::Magic { found: be16(0) });
    }
    if u32::from(bytes[2]) != WIRE_VERSION {
        return Err(HeaderError::Version { found: bytes[2] });
    }
    if be16(6) != 0 {
        return Err(HeaderError::Field { field: "reserved" });
    }
    let round = be64(16);
    if round == 0 || round > MAX_ROUND {
        return Err(HeaderError::Field { field: "round" });
    }
    Ok(Fields {
        flags: u32::from(bytes[3]),
        middle: be16(4),
        epoch: be64(8),
        round,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_the_one_of_elec_wire_h() {
        let ack = Ack {
            epoch: 0x0102030405060708,
            round: 0x0000_1112_1314_1516,
            voter: 0x0a0b & 0x3f,
        };
        let bytes = ack.to_bytes();
        assert_eq!(&bytes[..8], &[0xeb, 0x0a, 1, 1, 0, 0x0b, 0, 0]);
        assert_eq!(&bytes[8..16], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&bytes[16..], &[0, 0, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16]);
        let seq = Sequenced {
            epoch: 1,
            round: 2,
            ack_port: 0x1b58,
        }
        .to_bytes();
        assert_eq!(&seq[..8], &[0xeb, 0x05, 1, 0, 0x1b, 0x58, 0, 0]);
    }

    #[test]
    fn bad_headers_are_refused_never_panic() {
        let good = Ack {
            epoch: 1,
            round: 1,
            voter: 1,
        }
        .to_bytes();
        for len in 0..HEADER_LEN {
            assert_eq!(Ack::parse(&good[..len]), Err(HeaderError::TooShort { len }));
        }
        let mut round0 = good;
        round0[23] = 0;
        assert!(Ack::parse(&round0).is_err());
        let mut voter64 = good;
        voter64[5] = 64;
        assert_eq!(
            Ack::parse(&voter64),
            Err(HeaderError::Field { field: "voter" })
        );
        let mut version = good;
        version[2] = 2;
        assert_eq!(Ack::parse(&version), Err(HeaderError::Version { found: 2 }));
        assert!(Sequenced::parse(&good).is_err());
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            let mut bytes = good;
            for _ in 0..3 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes[(state % 24) as usize] = (state >> 32) as u8;
            }
            let _ = Ack::parse(&bytes);
            let _ = Sequenced::parse(&bytes);
        }
    }
}
