//! The wire format: compact binary packets with explicit lengths, each sealed
//! with an HMAC-SHA256 over the whole packet under the cluster key.
//!
//! ```text
//! offset  size  field
//! 0       2     magic EB 60
//! 2       1     format version (1)
//! 3       1     kind (see `Body`)
//! 4       6     sender: IPv4 address and UDP port of the node that sent it
//! 10      ..    body, every variable part preceded by its length or count
//! end-32  32    HMAC-SHA256(cluster key, every byte before it)
//! ```
//!
//! Integers are big-endian. Decoding checks the size limit first, then the
//! MAC (in constant time), then parses the body; it never panics and never
//! allocates more than the packet's own length, whatever the input. Every
//! packet has exactly one encoding: `decode(b) == Ok(p)` implies
//! `encode(p) == b` (the fuzz target checks it).
//!
//! This file depends on std, `hmac` and `sha2` only, so the fuzz target can
//! include it as it is.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// First two bytes of every packet.
pub const MAGIC: [u8; 2] = [0xEB, 0x60];
/// Format version in byte 2.
pub const FORMAT: u8 = 1;
/// Bytes of an encoded [`NodeId`].
pub const NODE_ID_LEN: usize = 6;
/// Magic, format, kind and sender.
pub const HEADER_LEN: usize = 4 + NODE_ID_LEN;
/// Bytes of the HMAC-SHA256 tag at the end of every packet.
pub const MAC_LEN: usize = 32;
/// Bytes every packet has besides its body.
pub const OVERHEAD: usize = HEADER_LEN + MAC_LEN;
/// Bytes of an encoded [`Version`].
pub const VERSION_LEN: usize = 8 + NODE_ID_LEN;
/// Bytes of an encoded [`MemberDigest`].
pub const MEMBER_DIGEST_LEN: usize = NODE_ID_LEN + 8;
/// Most nodes listed in a rumour's infected set: longer sets are cut (which
/// only costs duplicates, that message ids then suppress).
pub const MAX_INFECTED: usize = 64;
/// pekonode's default maximum packet size.
pub const DEFAULT_MAX_PACKET: usize = 16 * 1024;

const KIND_RUMOUR: u8 = 1;
const KIND_SYNC_REQUEST: u8 = 2;
const KIND_SYNC_REPLY: u8 = 3;
const KIND_METADATA: u8 = 4;
const KIND_FETCH_REQUEST: u8 = 5;
const KIND_FETCH_REPLY: u8 = 6;

const RUMOUR_HEARTBEAT: u8 = 1;
const RUMOUR_METADATA: u8 = 2;

const META_NONE: u8 = 0;
const META_INLINE: u8 = 1;
const META_LARGE: u8 = 2;

/// A node, named by the IPv4 address and UDP port it listens on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub SocketAddrV4);

impl NodeId {
    /// The null id, 0.0.0.0:0 (the author of "no metadata yet").
    pub const NONE: NodeId = NodeId(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0));

    /// The address to send this node datagrams at.
    pub fn addr(self) -> SocketAddr {
        SocketAddr::V4(self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Orders metadata updates: a Lamport counter, ties broken by the author.
///
/// A node stamps a publish with one more than the highest counter it has
/// seen, so an update published after another was seen always wins, however
/// the nodes' clocks differ; concurrent updates are ordered by author, the
/// same way on every node.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    /// Lamport counter (compared first).
    pub counter: u64,
    /// The node that published this version (breaks ties).
    pub node: NodeId,
}

impl Version {
    /// The version of "no metadata yet", older than every other.
    pub const ZERO: Version = Version {
        counter: 0,
        node: NodeId::NONE,
    };
}

impl fmt::Debug for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.counter, self.node)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Names one rumour: its origin and the origin's message sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId {
    /// The node that started the rumour.
    pub origin: NodeId,
    /// The origin's sequence number, increasing with every message it starts.
    pub seq: u64,
}

/// Cluster metadata on the wire: the data itself, or for data too large for
/// one datagram a marker that tells receivers to fetch it over TCP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MetaPayload {
    /// The data, carried in the packet.
    Inline {
        /// Its version.
        version: Version,
        /// The data.
        data: Vec<u8>,
    },
    /// Data too large for a datagram: fetch it over TCP.
    Large {
        /// Its version.
        version: Version,
        /// Its length in bytes.
        len: u64,
        /// SHA-256 of the data, checked after the fetch.
        digest: [u8; 32],
    },
}

impl MetaPayload {
    /// The version this payload carries or announces.
    pub fn version(&self) -> Version {
        match self {
            MetaPayload::Inline { version, .. } | MetaPayload::Large { version, .. } => *version,
        }
    }

    /// Bytes of its encoding.
    pub fn encoded_len(&self) -> usize {
        1 + VERSION_LEN
            + match self {
                MetaPayload::Inline { data, .. } => 4 + data.len(),
                MetaPayload::Large { .. } => 8 + 32,
            }
    }
}

/// What a rumour says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RumourKind {
    /// The origin is alive (its sequence number is its heartbeat).
    Heartbeat,
    /// The origin published new cluster metadata.
    Metadata(MetaPayload),
}

/// A message spread by gossip: each receiver passes it on to peers not in
/// `infected` and adds them to it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rumour {
    /// Its id, the same on every copy.
    pub id: MessageId,
    /// Nodes known to have it already (at most [`MAX_INFECTED`]).
    pub infected: Vec<NodeId>,
    /// What it says.
    pub kind: RumourKind,
}

/// One line of a member list: a node and the highest sequence number heard
/// from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberDigest {
    /// The member.
    pub node: NodeId,
    /// Its heartbeat: the highest message sequence number seen from it.
    pub heartbeat: u64,
}

/// An anti-entropy exchange: a member list, the sender's metadata version,
/// and, when the other side is behind, the metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sync {
    /// Members the sender knows (possibly a random subset of them).
    pub members: Vec<MemberDigest>,
    /// The sender's metadata version.
    pub version: Version,
    /// The sender's metadata, when the receiver is known to be behind.
    pub metadata: Option<MetaPayload>,
}

/// What a packet carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// A rumour (heartbeat or metadata), spread by gossip over UDP.
    Rumour(Rumour),
    /// Anti-entropy: "here is what I know", over UDP.
    SyncRequest(Sync),
    /// Anti-entropy: the answer, over UDP.
    SyncReply(Sync),
    /// Metadata sent straight to a peer that is behind, over UDP.
    Metadata(MetaPayload),
    /// "Send me your metadata": TCP, for metadata too large for a datagram.
    FetchRequest(Version),
    /// The answer to a [`Body::FetchRequest`], over TCP.
    FetchReply {
        /// Version of `data`.
        version: Version,
        /// The metadata.
        data: Vec<u8>,
    },
}

/// A decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The node that sent this packet (not necessarily the rumour's origin).
    pub sender: NodeId,
    /// What it carries.
    pub body: Body,
}

/// Why a packet was dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Longer than the configured maximum packet size.
    Oversized {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Shorter than a header and a MAC.
    Truncated,
    /// Wrong magic or format version: not one of our packets.
    NotGossip,
    /// The MAC does not match: wrong cluster key, or altered in transit.
    BadMac,
    /// Authentic but not well formed (a bug or an incompatible sender).
    Malformed(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Oversized { len, max } => {
                write!(f, "packet of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::Truncated => write!(f, "packet shorter than a header and a MAC"),
            DecodeError::NotGossip => write!(f, "not a gossip packet (magic or format)"),
            DecodeError::BadMac => write!(f, "MAC mismatch (wrong cluster key or altered)"),
            DecodeError::Malformed(why) => write!(f, "malformed packet: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// SHA-256 of `data` (the digest a [`MetaPayload::Large`] marker carries).
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Encodes and decodes packets under one cluster key and size limit.
#[derive(Clone)]
pub struct Codec {
    mac: HmacSha256,
    max_packet: usize,
}

impl fmt::Debug for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the key.
        f.debug_struct("Codec")
            .field("max_packet", &self.max_packet)
            .finish_non_exhaustive()
    }
}

impl Codec {
    /// A codec for the cluster `key` (any length) accepting packets of up to
    /// `max_packet` bytes.
    pub fn new(key: &[u8], max_packet: usize) -> Codec {
        let mac = match HmacSha256::new_from_slice(key) {
            Ok(mac) => mac,
            // HMAC accepts keys of every length (long ones are hashed).
            Err(_) => unreachable!("HMAC-SHA256 takes keys of any length"),
        };
        Codec {
            mac,
            max_packet: max_packet.max(OVERHEAD),
        }
    }

    /// The same key with another size limit (TCP frames carry more).
    pub fn with_max_packet(&self, max_packet: usize) -> Codec {
        Codec {
            mac: self.mac.clone(),
            max_packet: max_packet.max(OVERHEAD),
        }
    }

    /// Encodes and seals `packet`. The caller keeps packets within the size
    /// limit (see [`Codec::max_packet`]); `decode` rejects longer ones.
    pub fn encode(&self, packet: &Packet) -> Vec<u8> {
        let mut out = Vec::with_capacity(encoded_len(packet));
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT);
        out.push(kind_of(&packet.body));
        put_node(&mut out, packet.sender);
        match &packet.body {
            Body::Rumour(rumour) => {
                put_u64(&mut out, rumour.id.seq);
                put_node(&mut out, rumour.id.origin);
                let infected = &rumour.infected[..rumour.infected.len().min(MAX_INFECTED)];
                put_u16(&mut out, infected.len() as u16);
                for node in infected {
                    put_node(&mut out, *node);
                }
                match &rumour.kind {
                    RumourKind::Heartbeat => out.push(RUMOUR_HEARTBEAT),
                    RumourKind::Metadata(meta) => {
                        out.push(RUMOUR_METADATA);
                        put_meta(&mut out, meta);
                    }
                }
            }
            Body::SyncRequest(sync) | Body::SyncReply(sync) => {
                put_version(&mut out, sync.version);
                let members = &sync.members[..sync.members.len().min(u16::MAX as usize)];
                put_u16(&mut out, members.len() as u16);
                for member in members {
                    put_node(&mut out, member.node);
                    put_u64(&mut out, member.heartbeat);
                }
                match &sync.metadata {
                    None => out.push(META_NONE),
                    Some(meta) => put_meta(&mut out, meta),
                }
            }
            Body::Metadata(meta) => put_meta(&mut out, meta),
            Body::FetchRequest(version) => put_version(&mut out, *version),
            Body::FetchReply { version, data } => {
                put_version(&mut out, *version);
                put_u32(&mut out, data.len() as u32);
                out.extend_from_slice(data);
            }
        }
        self.seal(out)
    }

    /// Appends the MAC of `unsealed` to it.
    pub fn seal(&self, mut unsealed: Vec<u8>) -> Vec<u8> {
        let tag = self
            .mac
            .clone()
            .chain_update(&unsealed)
            .finalize()
            .into_bytes();
        unsealed.extend_from_slice(&tag);
        unsealed
    }

    /// Checks and decodes one packet.
    pub fn decode(&self, bytes: &[u8]) -> Result<Packet, DecodeError> {
        if bytes.len() > self.max_packet {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                max: self.max_packet,
            });
        }
        if bytes.len() < OVERHEAD {
            return Err(DecodeError::Truncated);
        }
        if bytes[..2] != MAGIC || bytes[2] != FORMAT {
            return Err(DecodeError::NotGossip);
        }
        let (signed, tag) = bytes.split_at(bytes.len() - MAC_LEN);
        self.mac
            .clone()
            .chain_update(signed)
            .verify_slice(tag)
            .map_err(|_| DecodeError::BadMac)?;
        decode_unsealed(signed)
    }
}

/// Decodes a packet without its MAC (after the MAC was checked). Public for
/// the fuzz target, which reaches the body parser through it directly.
pub fn decode_unsealed(signed: &[u8]) -> Result<Packet, DecodeError> {
    let mut r = Reader { buf: signed };
    let header = r.take(4)?;
    if header[..2] != MAGIC || header[2] != FORMAT {
        return Err(DecodeError::NotGossip);
    }
    let kind = header[3];
    let sender = r.node()?;
    let body = match kind {
        KIND_RUMOUR => {
            let seq = r.u64()?;
            let origin = r.node()?;
            let count = r.count(NODE_ID_LEN)?;
            if count > MAX_INFECTED {
                return Err(DecodeError::Malformed("infected set too long"));
            }
            let infected = (0..count).map(|_| r.node()).collect::<Result<_, _>>()?;
            let kind = match r.u8()? {
                RUMOUR_HEARTBEAT => RumourKind::Heartbeat,
                RUMOUR_METADATA => match r.meta()? {
                    Some(meta) => RumourKind::Metadata(meta),
                    None => return Err(DecodeError::Malformed("metadata rumour without metadata")),
                },
                _ => return Err(DecodeError::Malformed("unknown rumour kind")),
            };
            Body::Rumour(Rumour {
                id: MessageId { origin, seq },
                infected,
                kind,
            })
        }
        KIND_SYNC_REQUEST | KIND_SYNC_REPLY => {
            let version = r.version()?;
            let count = r.count(MEMBER_DIGEST_LEN)?;
            let members = (0..count)
                .map(|_| {
                    Ok(MemberDigest {
                        node: r.node()?,
                        heartbeat: r.u64()?,
                    })
                })
                .collect::<Result<_, DecodeError>>()?;
            let metadata = r.meta()?;
            let sync = Sync {
                members,
                version,
                metadata,
            };
            if kind == KIND_SYNC_REQUEST {
                Body::SyncRequest(sync)
            } else {
                Body::SyncReply(sync)
            }
        }
        KIND_METADATA => match r.meta()? {
            Some(meta) => Body::Metadata(meta),
            None => return Err(DecodeError::Malformed("metadata packet without metadata")),
        },
        KIND_FETCH_REQUEST => Body::FetchRequest(r.version()?),
        KIND_FETCH_REPLY => {
            let version = r.version()?;
            let len = r.u32()? as usize;
            let data = r.take(len)?.to_vec();
            Body::FetchReply { version, data }
        }
        _ => return Err(DecodeError::Malformed("unknown packet kind")),
    };
    if !r.buf.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    Ok(Packet { sender, body })
}

/// Bytes `packet` encodes to, MAC included.
pub fn encoded_len(packet: &Packet) -> usize {
    OVERHEAD
        + match &packet.body {
            Body::Rumour(rumour) => {
                8 + NODE_ID_LEN
                    + 2
                    + rumour.infected.len().min(MAX_INFECTED) * NODE_ID_LEN
                    + 1
                    + match &rumour.kind {
                        RumourKind::Heartbeat => 0,
                        RumourKind::Metadata(meta) => meta.encoded_len(),
                    }
            }
            Body::SyncRequest(sync) | Body::SyncReply(sync) => {
                VERSION_LEN
                    + 2
                    + sync.members.len().min(u16::MAX as usize) * MEMBER_DIGEST_LEN
                    + sync.metadata.as_ref().map_or(1, MetaPayload::encoded_len)
            }
            Body::Metadata(meta) => meta.encoded_len(),
            Body::FetchRequest(_) => VERSION_LEN,
            Body::FetchReply { data, .. } => VERSION_LEN + 4 + data.len(),
        }
}

/// Largest inline metadata a rumour with a full infected set can carry in a
/// packet of `max_packet` bytes; larger metadata travels as a
/// [`MetaPayload::Large`] marker and is fetched over TCP.
pub fn max_inline_metadata(max_packet: usize) -> usize {
    let rumour = OVERHEAD + 8 + NODE_ID_LEN + 2 + MAX_INFECTED * NODE_ID_LEN + 1;
    max_packet.saturating_sub(rumour + 1 + VERSION_LEN + 4)
}

fn kind_of(body: &Body) -> u8 {
    match body {
        Body::Rumour(_) => KIND_RUMOUR,
        Body::SyncRequest(_) => KIND_SYNC_REQUEST,
        Body::SyncReply(_) => KIND_SYNC_REPLY,
        Body::Metadata(_) => KIND_METADATA,
        Body::FetchRequest(_) => KIND_FETCH_REQUEST,
        Body::FetchReply { .. } => KIND_FETCH_REPLY,
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_node(out: &mut Vec<u8>, node: NodeId) {
    out.extend_from_slice(&node.0.ip().octets());
    put_u16(out, node.0.port());
}

fn put_version(out: &mut Vec<u8>, version: Version) {
    put_u64(out, version.counter);
    put_node(out, version.node);
}

fn put_meta(out: &mut Vec<u8>, meta: &MetaPayload) {
    match meta {
        MetaPayload::Inline { version, data } => {
            out.push(META_INLINE);
            put_version(out, *version);
            put_u32(out, data.len() as u32);
            out.extend_from_slice(data);
        }
        MetaPayload::Large {
            version,
            len,
            digest,
        } => {
            out.push(META_LARGE);
            put_version(out, *version);
            put_u64(out, *len);
            out.extend_from_slice(digest);
        }
    }
}

/// Reads fields off the front of a buffer; every read checks the length.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(DecodeError::Malformed("field runs past the end"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn node(&mut self) -> Result<NodeId, DecodeError> {
        let ip: [u8; 4] = self.array()?;
        let port = self.u16()?;
        Ok(NodeId(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    }

    fn version(&mut self) -> Result<Version, DecodeError> {
        Ok(Version {
            counter: self.u64()?,
            node: self.node()?,
        })
    }

    /// A u16 element count, checked against the bytes left before anything
    /// is allocated.
    fn count(&mut self, element_len: usize) -> Result<usize, DecodeError> {
        let n = self.u16()? as usize;
        if n * element_len > self.buf.len() {
            return Err(DecodeError::Malformed("count runs past the end"));
        }
        Ok(n)
    }

    fn meta(&mut self) -> Result<Option<MetaPayload>, DecodeError> {
        match self.u8()? {
            META_NONE => Ok(None),
            META_INLINE => {
                let version = self.version()?;
                let len = self.u32()? as usize;
                let data = self.take(len)?.to_vec();
                Ok(Some(MetaPayload::Inline { version, data }))
            }
            META_LARGE => Ok(Some(MetaPayload::Large {
                version: self.version()?,
                len: self.u64()?,
                digest: self.array()?,
            })),
            _ => Err(DecodeError::Malformed("unknown metadata tag")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(i: u8) -> NodeId {
        NodeId(SocketAddrV4::new(
            Ipv4Addr::new(10, 0, 0, i),
            7000 + u16::from(i),
        ))
    }

    fn version(counter: u64, i: u8) -> Version {
        Version {
            counter,
            node: node(i),
        }
    }

    fn samples() -> Vec<Packet> {
        let bodies = vec![
            Body::Rumour(Rumour {
                id: MessageId {
                    origin: node(1),
                    seq: 42,
                },
                infected: vec![node(1), node(2), node(3)],
                kind: RumourKind::Heartbeat,
            }),
            Body::Rumour(Rumour {
                id: MessageId {
                    origin: node(4),
                    seq: u64::MAX,
                },
                infected: vec![],
                kind: RumourKind::Metadata(MetaPayload::Inline {
                    version: version(7, 4),
                    data: b"hello".to_vec(),
                }),
            }),
            Body::SyncRequest(Sync {
                members: vec![
                    MemberDigest {
                        node: node(1),
                        heartbeat: 3,
                    },
                    MemberDigest {
                        node: node(9),
                        heartbeat: 99,
                    },
                ],
                version: version(2, 1),
                metadata: None,
            }),
            Body::SyncReply(Sync {
                members: vec![],
                version: Version::ZERO,
                metadata: Some(MetaPayload::Large {
                    version: version(8, 2),
                    len: 1 << 20,
                    digest: sha256(b"big"),
                }),
            }),
            Body::Metadata(MetaPayload::Inline {
                version: version(1, 1),
                data: vec![],
            }),
            Body::FetchRequest(version(5, 5)),
            Body::FetchReply {
                version: version(5, 5),
                data: vec![0xAB; 300],
            },
        ];
        bodies
            .into_iter()
            .map(|body| Packet {
                sender: node(200),
                body,
            })
            .collect()
    }

    #[test]
    fn every_kind_round_trips_and_length_is_predicted() {
        let codec = Codec::new(b"cluster key", DEFAULT_MAX_PACKET);
        for packet in samples() {
            let bytes = codec.encode(&packet);
            assert_eq!(bytes.len(), encoded_len(&packet), "{packet:?}");
            assert_eq!(codec.decode(&bytes), Ok(packet));
        }
    }

    #[test]
    fn wrong_key_is_rejected() {
        let codec = Codec::new(b"cluster key", DEFAULT_MAX_PACKET);
        let other = Codec::new(b"another key", DEFAULT_MAX_PACKET);
        for packet in samples() {
            assert_eq!(
                other.decode(&codec.encode(&packet)),
                Err(DecodeError::BadMac)
            );
        }
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_rejected() {
        let codec = Codec::new(b"k", DEFAULT_MAX_PACKET);
        for packet in samples() {
            let bytes = codec.encode(&packet);
            for len in 0..bytes.len() {
                assert!(codec.decode(&bytes[..len]).is_err(), "prefix {len}");
            }
            for bit in 0..bytes.len() * 8 {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                assert!(codec.decode(&flipped).is_err(), "bit {bit}");
            }
        }
    }

    #[test]
    fn short_foreign_and_oversized_packets_are_classified() {
        let codec = Codec::new(b"k", 100);
        assert_eq!(codec.decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(codec.decode(&[0xEB; 41]), Err(DecodeError::Truncated));
        assert_eq!(codec.decode(&[0u8; 60]), Err(DecodeError::NotGossip));
        assert_eq!(
            codec.decode(&[0u8; 101]),
            Err(DecodeError::Oversized { len: 101, max: 100 })
        );
    }

    #[test]
    fn authentic_but_inconsistent_bodies_are_malformed_not_panics() {
        let codec = Codec::new(b"k", DEFAULT_MAX_PACKET);
        let mut unsealed = vec![0xEB, 0x60, FORMAT, KIND_SYNC_REQUEST, 10, 0, 0, 1, 0, 80];
        unsealed.extend_from_slice(&[0; VERSION_LEN]);
        unsealed.extend_from_slice(&u16::MAX.to_be_bytes()); // 65535 members, none there
        unsealed.push(META_NONE);
        assert!(matches!(
            codec.decode(&codec.seal(unsealed)),
            Err(DecodeError::Malformed(_))
        ));
        let mut unsealed = vec![0xEB, 0x60, FORMAT, KIND_FETCH_REPLY, 10, 0, 0, 1, 0, 80];
        unsealed.extend_from_slice(&[0; VERSION_LEN]);
        unsealed.extend_from_slice(&u32::MAX.to_be_bytes()); // 4 GiB of data, none there
        assert!(matches!(
            codec.decode(&codec.seal(unsealed)),
            Err(DecodeError::Malformed(_))
        ));
        let mut unsealed = vec![0xEB, 0x60, FORMAT, 99, 10, 0, 0, 1, 0, 80];
        unsealed.push(0);
        assert_eq!(
            codec.decode(&codec.seal(unsealed)),
            Err(DecodeError::Malformed("unknown packet kind"))
        );
    }

    #[test]
    fn inline_limit_leaves_room_for_a_full_rumour() {
        let max = 1400;
        let data = vec![1u8; max_inline_metadata(max)];
        let packet = Packet {
            sender: node(1),
            body: Body::Rumour(Rumour {
                id: MessageId {
                    origin: node(1),
                    seq: 1,
                },
                infected: (0..MAX_INFECTED as u8).map(node).collect(),
                kind: RumourKind::Metadata(MetaPayload::Inline {
                    version: version(1, 1),
                    data,
                }),
            }),
        };
        assert_eq!(encoded_len(&packet), max);
    }
}
