//! The wire format (v2): compact binary packets with explicit lengths, each
//! sealed with XChaCha20-Poly1305 under a key of the cluster's keyring.
//!
//! ```text
//! offset  size  field
//! 0       2     magic EB 61
//! 2       1     format version (2)
//! 3       1     flags: bit 0 = body encrypted; the other bits are 0
//! 4       1     key id: the keyring key that sealed the packet
//! 5       6     sender: IPv4 address (4) and UDP port (2) of the node that sent it
//! 11      8     seq: the sender's message sequence number
//! 19      ..    body (ciphertext of the same length when encrypted)
//! end-16  16    Poly1305 tag
//! ```
//!
//! The body, every variable part preceded by its count or length:
//!
//! ```text
//! kind       u8: 1 Ping, 2 PingReq, 3 Ack, 4 Gossip, 5 SyncRequest,
//!            6 SyncReply, 7 SyncDeltas; then PingReq: target node (6),
//!            Ack: probe u64 (8), the others nothing
//! to         count u8, each: node (6) incarnation u64                  14 B
//!            (the addressees, and their incarnation as the sender knew
//!            it, 0 if unknown: a copy replayed to another node, or to a
//!            later run of the same node, is refused)
//! updates    count u8, each: node (6) incarnation u64 state u8        15 B
//!            (state 0 Alive, 1 Suspect, 2 Dead, 3 Left)
//! summaries  count u8, each: node (6) incarnation u64 state u8
//!            generation u64 version u64                                31 B
//! ranges     count u8, each: node (6) generation u64 from u64 to u64   30 B
//!            (from <= to)
//! deltas     count u8, each: node (6) generation u64 version u64
//!            key_len u8, key, then 0 (deleted: nothing follows)
//!            or 1, value_len u16, value
//! ```
//!
//! Integers are big-endian. Every packet carries all five sections, most of
//! them empty (one count byte each).
//!
//! Sealing: the AEAD key of a keyring entry is
//! `SHA-256("elec-broadcast gossip v2\0" || secret)`, and the 24-byte nonce
//! is the header's sender address (4), port (2) and seq (8) followed by 10
//! zero bytes. A node's `seq` never repeats (it starts at the node's boot
//! time in microseconds and only grows), so no two messages sealed under one
//! key share a nonce; and since the nonce depends on nothing but the header,
//! every copy of one message is byte-identical (the kernel fans one datagram
//! out to many peers). An encrypted packet authenticates the header as
//! associated data and encrypts the body; a clear one authenticates header
//! and body as associated data (empty plaintext), so it stays readable but
//! cannot be forged or altered.
//!
//! Decoding checks, in this order: magic and format ([`DecodeError::NotGossip`]),
//! size ([`DecodeError::Oversized`], [`DecodeError::Truncated`]), key id
//! ([`DecodeError::UnknownKey`]), the tag (in constant time,
//! [`DecodeError::BadTag`]), then flags and body ([`DecodeError::Malformed`]).
//! It never panics, whatever the input, and never allocates for more items
//! or bytes than the packet holds: each count and length is checked against
//! the bytes that remain before anything is reserved. Every packet has
//! exactly one encoding: `decode(b) == Ok(p)` implies that encoding `p`
//! (under its key id and encryption flag) gives back `b` (the fuzz target
//! checks it).
//!
//! This file depends on std, `chacha20poly1305` and `sha2` only, so the fuzz
//! target can include it as it is.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{Tag, XChaCha20Poly1305, XNonce};
use sha2::{Digest, Sha256};

/// First two bytes of every packet.
pub const MAGIC: [u8; 2] = [0xEB, 0x61];
/// Format version in byte 2.
pub const FORMAT: u8 = 2;
/// Bytes of an encoded [`NodeId`].
pub const NODE_ID_LEN: usize = 6;
/// Magic, format, flags, key id, sender and seq.
pub const HEADER_LEN: usize = 5 + NODE_ID_LEN + 8;
/// Bytes of the Poly1305 tag at the end of every packet.
pub const TAG_LEN: usize = 16;
/// Bytes every packet has besides its body.
pub const OVERHEAD: usize = HEADER_LEN + TAG_LEN;
/// Default maximum packet size: fits a 1500-byte MTU under the IPv4 or IPv6
/// and UDP headers.
pub const DEFAULT_MAX_PACKET: usize = 1400;
/// Bytes of an encoded [`Destination`].
pub const DESTINATION_LEN: usize = NODE_ID_LEN + 8;
/// Bytes of an encoded [`Update`].
pub const UPDATE_LEN: usize = NODE_ID_LEN + 8 + 1;
/// Bytes of an encoded [`Summary`].
pub const SUMMARY_LEN: usize = NODE_ID_LEN + 8 + 1 + 8 + 8;
/// Bytes of an encoded [`Range`].
pub const RANGE_LEN: usize = NODE_ID_LEN + 8 + 8 + 8;
/// Longest key of a [`Delta`] (its length is one byte).
pub const MAX_KEY_LEN: usize = u8::MAX as usize;
/// Most items in one section of a message (its count is one byte).
pub const MAX_ITEMS: usize = u8::MAX as usize;

/// Flag bit 0: the body is encrypted.
const FLAG_ENCRYPTED: u8 = 1;
/// Prefix of the secret in the key derivation.
const KDF_CONTEXT: &[u8] = b"elec-broadcast gossip v2\0";
/// Bytes of the XChaCha20 nonce.
const NONCE_LEN: usize = 24;
/// Bytes of a [`Delta`] with an empty key, deleted.
const MIN_DELTA_LEN: usize = NODE_ID_LEN + 8 + 8 + 1 + 1;
/// The largest `max_packet` a codec accepts: far beyond any datagram or
/// frame, and far below what one XChaCha20 nonce can encrypt.
const MAX_MAX_PACKET: usize = 1 << 32;

const KIND_PING: u8 = 1;
const KIND_PING_REQ: u8 = 2;
const KIND_ACK: u8 = 3;
const KIND_GOSSIP: u8 = 4;
const KIND_SYNC_REQUEST: u8 = 5;
const KIND_SYNC_REPLY: u8 = 6;
const KIND_SYNC_DELTAS: u8 = 7;

const DELTA_DELETED: u8 = 0;
const DELTA_VALUE: u8 = 1;

/// A node, named by the IPv4 address and UDP port it listens on.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub SocketAddrV4);

impl NodeId {
    /// The null id, 0.0.0.0:0.
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

/// Names a key of a [`Keyring`]; byte 4 of every packet.
pub type KeyId = u8;

/// What the cluster believes of a member (SWIM), in the order in which one
/// state overrides another at the same incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Answers probes (wire value 0).
    Alive,
    /// Missed a probe; declared dead unless it refutes in time (1).
    Suspect,
    /// Failed (2).
    Dead,
    /// Left the cluster on purpose (3).
    Left,
}

impl State {
    fn to_u8(self) -> u8 {
        match self {
            State::Alive => 0,
            State::Suspect => 1,
            State::Dead => 2,
            State::Left => 3,
        }
    }

    fn from_u8(b: u8) -> Option<State> {
        match b {
            0 => Some(State::Alive),
            1 => Some(State::Suspect),
            2 => Some(State::Dead),
            3 => Some(State::Left),
            _ => None,
        }
    }
}

/// One addressee of a message (every copy of a broadcast lists them all).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    /// The node.
    pub node: NodeId,
    /// Its incarnation as the sender knew it (0: unknown, e.g. a seed).
    pub incarnation: u64,
}

/// A membership update, piggybacked on any message: `node` is in `state` at
/// `incarnation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Update {
    /// The member.
    pub node: NodeId,
    /// Its incarnation (only it raises its own, to refute suspicion).
    pub incarnation: u64,
    /// Its state at that incarnation.
    pub state: State,
}

/// One line of a state summary (anti-entropy): a member's membership state
/// and how far its key/value state goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Summary {
    /// The member.
    pub node: NodeId,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its state at that incarnation.
    pub state: State,
    /// Generation of its key/value state (a new one on each restart).
    pub generation: u64,
    /// Highest version of its key/value state in that generation.
    pub version: u64,
}

/// A request for versions `from..=to` of a member's key/value state in one
/// generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Range {
    /// The member whose state is wanted.
    pub node: NodeId,
    /// Its generation.
    pub generation: u64,
    /// First version wanted.
    pub from: u64,
    /// Last version wanted (`from <= to`).
    pub to: u64,
}

/// One change of a member's key/value state: `key` set to `value`, or
/// deleted (`value == None`, a tombstone), at `version`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Delta {
    /// The member whose state changed.
    pub node: NodeId,
    /// Its generation.
    pub generation: u64,
    /// The version of this change.
    pub version: u64,
    /// The key (at most [`MAX_KEY_LEN`] bytes).
    pub key: Vec<u8>,
    /// The new value (at most `u16::MAX` bytes), or `None` when deleted.
    pub value: Option<Vec<u8>>,
}

impl Delta {
    /// Bytes of its encoding.
    pub fn encoded_len(&self) -> usize {
        MIN_DELTA_LEN + self.key.len() + self.value.as_ref().map_or(0, |v| 2 + v.len())
    }
}

/// What a message is (SWIM failure detection, gossip, anti-entropy).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A direct probe: "are you alive?".
    Ping,
    /// An indirect probe: "ping `target` for me".
    PingReq {
        /// The node to probe.
        target: NodeId,
    },
    /// The answer to a probe.
    Ack {
        /// The seq of the ping (or ping-req) it answers.
        probe: u64,
    },
    /// Dissemination only: carries updates and deltas.
    Gossip,
    /// Anti-entropy: "here is what I know" (summaries).
    SyncRequest,
    /// Anti-entropy: the answer (summaries, ranges wanted).
    SyncReply,
    /// Anti-entropy: key/value changes that were asked for.
    SyncDeltas,
}

impl Kind {
    fn code(self) -> u8 {
        match self {
            Kind::Ping => KIND_PING,
            Kind::PingReq { .. } => KIND_PING_REQ,
            Kind::Ack { .. } => KIND_ACK,
            Kind::Gossip => KIND_GOSSIP,
            Kind::SyncRequest => KIND_SYNC_REQUEST,
            Kind::SyncReply => KIND_SYNC_REPLY,
            Kind::SyncDeltas => KIND_SYNC_DELTAS,
        }
    }

    /// Bytes of the kind's own fields (after the kind byte).
    fn fields_len(self) -> usize {
        match self {
            Kind::PingReq { .. } => NODE_ID_LEN,
            Kind::Ack { .. } => 8,
            _ => 0,
        }
    }
}

/// What a packet carries: a kind and four sections, any of them empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// What the message is.
    pub kind: Kind,
    /// Its addressees (at most [`MAX_ITEMS`]).
    pub to: Vec<Destination>,
    /// Piggybacked membership updates (at most [`MAX_ITEMS`]).
    pub updates: Vec<Update>,
    /// State summaries (at most [`MAX_ITEMS`]).
    pub summaries: Vec<Summary>,
    /// Ranges of key/value versions wanted (at most [`MAX_ITEMS`]).
    pub ranges: Vec<Range>,
    /// Key/value changes (at most [`MAX_ITEMS`]).
    pub deltas: Vec<Delta>,
}

impl Message {
    /// A message of `kind` with empty sections.
    pub fn new(kind: Kind) -> Message {
        Message {
            kind,
            to: Vec::new(),
            updates: Vec::new(),
            summaries: Vec::new(),
            ranges: Vec::new(),
            deltas: Vec::new(),
        }
    }

    /// Bytes of the whole packet it encodes to, [`OVERHEAD`] included.
    pub fn encoded_len(&self) -> usize {
        fixed_len(&self.kind)
            + self.to.len() * DESTINATION_LEN
            + self.updates.len() * UPDATE_LEN
            + self.summaries.len() * SUMMARY_LEN
            + self.ranges.len() * RANGE_LEN
            + self.deltas.iter().map(Delta::encoded_len).sum::<usize>()
    }
}

/// Bytes of a packet of `kind` with empty sections: [`OVERHEAD`], the kind
/// and its fields, and the five section counts. What remains of the
/// maximum packet size is room for section items.
pub fn fixed_len(kind: &Kind) -> usize {
    OVERHEAD + 1 + kind.fields_len() + 5
}

/// A decoded packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    /// The node that sent this packet.
    pub sender: NodeId,
    /// The sender's sequence number of this message.
    pub seq: u64,
    /// The keyring key that sealed it.
    pub key_id: KeyId,
    /// Whether the body was encrypted (else only authenticated).
    pub encrypted: bool,
    /// What it carries.
    pub message: Message,
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
    /// Shorter than a header and a tag.
    Truncated,
    /// Wrong magic or format version: not one of our packets.
    NotGossip,
    /// Sealed under a key id this node's keyring does not have.
    UnknownKey(KeyId),
    /// The tag does not match: another secret under that key id, or altered
    /// in transit.
    BadTag,
    /// Authentic but not well formed (a bug or an incompatible sender).
    Malformed(&'static str),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Oversized { len, max } => {
                write!(f, "packet of {len} bytes exceeds the maximum of {max}")
            }
            DecodeError::Truncated => write!(f, "packet shorter than a header and a tag"),
            DecodeError::NotGossip => write!(f, "not a gossip packet (magic or format)"),
            DecodeError::UnknownKey(id) => write!(f, "sealed under key {id}, not in the keyring"),
            DecodeError::BadTag => {
                write!(f, "authentication failed (another secret, or altered)")
            }
            DecodeError::Malformed(why) => write!(f, "malformed packet: {why}"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded (a bug of the caller: nothing is
/// silently cut).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// A section has more than [`MAX_ITEMS`] items.
    TooManyItems,
    /// A delta's key is longer than [`MAX_KEY_LEN`].
    KeyTooLong,
    /// A delta's value is longer than `u16::MAX` bytes.
    ValueTooLong,
    /// The packet would exceed the maximum packet size.
    Oversized {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooManyItems => {
                write!(f, "a section has more than {MAX_ITEMS} items")
            }
            EncodeError::KeyTooLong => write!(f, "a key is longer than {MAX_KEY_LEN} bytes"),
            EncodeError::ValueTooLong => {
                write!(f, "a value is longer than {} bytes", u16::MAX)
            }
            EncodeError::Oversized { len, max } => {
                write!(f, "packet of {len} bytes would exceed the maximum of {max}")
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// Keys by id; one of them, the primary, seals what this node sends; every
/// installed key opens. Rotation: install the new key on every node, make
/// it primary everywhere, then remove the old one.
#[derive(Clone)]
pub struct Keyring {
    /// Every installed key, the primary's included.
    keys: BTreeMap<KeyId, XChaCha20Poly1305>,
    /// The primary's id and a copy of its key.
    primary: (KeyId, XChaCha20Poly1305),
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids only: never the keys.
        f.debug_struct("Keyring")
            .field("primary", &self.primary.0)
            .field("ids", &self.ids())
            .finish()
    }
}

/// Why a keyring refused a change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyringError {
    /// No key has that id.
    Unknown(KeyId),
    /// That key is the primary: make another one primary first.
    RemovePrimary(KeyId),
    /// That key is the last one: a keyring always keeps one.
    Empty,
}

impl fmt::Display for KeyringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyringError::Unknown(id) => write!(f, "no key {id} in the keyring"),
            KeyringError::RemovePrimary(id) => {
                write!(f, "key {id} is the primary: make another key primary first")
            }
            KeyringError::Empty => write!(f, "cannot remove the keyring's last key"),
        }
    }
}

impl std::error::Error for KeyringError {}

impl Keyring {
    /// A keyring with one key, `id` from `secret` (any length), primary.
    pub fn new(id: KeyId, secret: &[u8]) -> Keyring {
        let key = derive(secret);
        let mut keys = BTreeMap::new();
        keys.insert(id, key.clone());
        Keyring {
            keys,
            primary: (id, key),
        }
    }

    /// Adds key `id` from `secret`, or replaces its secret (the primary's
    /// too).
    pub fn install(&mut self, id: KeyId, secret: &[u8]) {
        let key = derive(secret);
        if id == self.primary.0 {
            self.primary.1 = key.clone();
        }
        self.keys.insert(id, key);
    }

    /// Makes key `id` the primary, which seals what this node sends.
    pub fn use_key(&mut self, id: KeyId) -> Result<(), KeyringError> {
        match self.keys.get(&id) {
            Some(key) => {
                self.primary = (id, key.clone());
                Ok(())
            }
            None => Err(KeyringError::Unknown(id)),
        }
    }

    /// Removes key `id`: packets sealed under it no longer open. The last
    /// key ([`KeyringError::Empty`]) and the primary
    /// ([`KeyringError::RemovePrimary`]) cannot be removed.
    pub fn remove(&mut self, id: KeyId) -> Result<(), KeyringError> {
        if !self.keys.contains_key(&id) {
            return Err(KeyringError::Unknown(id));
        }
        if self.keys.len() == 1 {
            return Err(KeyringError::Empty);
        }
        if id == self.primary.0 {
            return Err(KeyringError::RemovePrimary(id));
        }
        self.keys.remove(&id);
        Ok(())
    }

    /// The id of the key that seals.
    pub fn primary(&self) -> KeyId {
        self.primary.0
    }

    /// The ids of the installed keys, sorted.
    pub fn ids(&self) -> Vec<KeyId> {
        self.keys.keys().copied().collect()
    }

    fn get(&self, id: KeyId) -> Option<&XChaCha20Poly1305> {
        self.keys.get(&id)
    }

    fn primary_key(&self) -> (KeyId, &XChaCha20Poly1305) {
        (self.primary.0, &self.primary.1)
    }
}

/// The AEAD key of `secret`.
fn derive(secret: &[u8]) -> XChaCha20Poly1305 {
    let key = Sha256::new()
        .chain_update(KDF_CONTEXT)
        .chain_update(secret)
        .finalize();
    XChaCha20Poly1305::new(&key)
}

/// The nonce of a packet: sender address, port and seq from its header, then
/// zeros. `header` is at least [`HEADER_LEN`] bytes.
fn nonce(header: &[u8]) -> XNonce {
    let mut n = [0u8; NONCE_LEN];
    n[..NODE_ID_LEN + 8].copy_from_slice(&header[5..HEADER_LEN]);
    XNonce::from(n)
}

/// Encodes and decodes packets under a keyring and a size limit.
#[derive(Clone, Debug)]
pub struct Codec {
    keyring: Keyring,
    max_packet: usize,
    encrypt: bool,
}

impl Codec {
    /// A codec sealing with `keyring`'s primary key, encrypting bodies if
    /// `encrypt` (else authenticating them only), and accepting packets of
    /// up to `max_packet` bytes (raised to the largest empty message if
    /// smaller, lowered to 4 GiB if larger).
    pub fn new(keyring: Keyring, max_packet: usize, encrypt: bool) -> Codec {
        let smallest = fixed_len(&Kind::PingReq {
            target: NodeId::NONE,
        });
        Codec {
            keyring,
            max_packet: max_packet.clamp(smallest, MAX_MAX_PACKET),
            encrypt,
        }
    }

    /// The keys.
    pub fn keyring(&self) -> &Keyring {
        &self.keyring
    }

    /// The keys, to rotate them.
    pub fn keyring_mut(&mut self) -> &mut Keyring {
        &mut self.keyring
    }

    /// The largest packet it encodes or accepts.
    pub fn max_packet(&self) -> usize {
        self.max_packet
    }

    /// Whether it encrypts the bodies it encodes (it opens both kinds).
    pub fn encrypts(&self) -> bool {
        self.encrypt
    }

    /// Seals `message` from `sender` with sequence number `seq` under the
    /// primary key. `seq` must never repeat for one sender (it makes the
    /// nonce); the same `(sender, seq, message)` always gives the same
    /// bytes. Oversized sections, keys or values are refused, never cut.
    pub fn encode(
        &self,
        sender: NodeId,
        seq: u64,
        message: &Message,
    ) -> Result<Vec<u8>, EncodeError> {
        if message.to.len() > MAX_ITEMS
            || message.updates.len() > MAX_ITEMS
            || message.summaries.len() > MAX_ITEMS
            || message.ranges.len() > MAX_ITEMS
            || message.deltas.len() > MAX_ITEMS
        {
            return Err(EncodeError::TooManyItems);
        }
        for delta in &message.deltas {
            if delta.key.len() > MAX_KEY_LEN {
                return Err(EncodeError::KeyTooLong);
            }
            if delta
                .value
                .as_ref()
                .is_some_and(|v| v.len() > u16::MAX as usize)
            {
                return Err(EncodeError::ValueTooLong);
            }
        }
        let len = message.encoded_len();
        if len > self.max_packet {
            return Err(EncodeError::Oversized {
                len,
                max: self.max_packet,
            });
        }
        let (key_id, key) = self.keyring.primary_key();
        let mut out = Vec::with_capacity(len);
        out.extend_from_slice(&MAGIC);
        out.push(FORMAT);
        out.push(if self.encrypt { FLAG_ENCRYPTED } else { 0 });
        out.push(key_id);
        put_node(&mut out, sender);
        put_u64(&mut out, seq);
        put_message(&mut out, message);
        if !seal_with(key, &mut out) {
            // Unreachable: `max_packet` is far below the AEAD's limit.
            return Err(EncodeError::Oversized {
                len,
                max: self.max_packet,
            });
        }
        Ok(out)
    }

    /// Decodes and authenticates a datagram: magic and format, size, key id,
    /// tag, then flags and body.
    pub fn decode(&self, bytes: &[u8]) -> Result<Packet, DecodeError> {
        let ident = [MAGIC[0], MAGIC[1], FORMAT];
        if bytes.iter().zip(ident.iter()).any(|(a, b)| a != b) {
            return Err(DecodeError::NotGossip);
        }
        if bytes.len() > self.max_packet {
            return Err(DecodeError::Oversized {
                len: bytes.len(),
                max: self.max_packet,
            });
        }
        if bytes.len() < OVERHEAD {
            return Err(DecodeError::Truncated);
        }
        let (sealed, tag) = bytes.split_at(bytes.len() - TAG_LEN);
        let (header, body) = sealed.split_at(HEADER_LEN);
        let flags = header[3];
        let key_id = header[4];
        let key = self
            .keyring
            .get(key_id)
            .ok_or(DecodeError::UnknownKey(key_id))?;
        let tag: [u8; TAG_LEN] = tag.try_into().map_err(|_| DecodeError::Truncated)?;
        let tag = Tag::from(tag);
        let nonce = nonce(header);
        let encrypted = flags & FLAG_ENCRYPTED != 0;
        let mut plain;
        let body = if encrypted {
            plain = body.to_vec();
            key.decrypt_in_place_detached(&nonce, header, &mut plain, &tag)
                .map_err(|_| DecodeError::BadTag)?;
            &plain[..]
        } else {
            key.decrypt_in_place_detached(&nonce, sealed, &mut [], &tag)
                .map_err(|_| DecodeError::BadTag)?;
            body
        };
        if flags & !FLAG_ENCRYPTED != 0 {
            return Err(DecodeError::Malformed("flags"));
        }
        let mut r = Reader { buf: header };
        r.take(5)?;
        let sender = r.node()?;
        let seq = r.u64()?;
        let message = decode_body(body)?;
        Ok(Packet {
            sender,
            seq,
            key_id,
            encrypted,
            message,
        })
    }

    /// For the fuzz target: takes header and body bytes (at least
    /// [`HEADER_LEN`], else returns them unchanged) and appends a valid tag
    /// under the key named in byte 4 if installed (else under the primary,
    /// rewriting byte 4), encrypting the body if flag bit 0 is set. So the
    /// body parser sees arbitrary bytes.
    pub fn seal(&self, mut unsealed: Vec<u8>) -> Vec<u8> {
        if unsealed.len() < HEADER_LEN {
            return unsealed;
        }
        let key = match self.keyring.get(unsealed[4]) {
            Some(key) => key,
            None => {
                let (id, key) = self.keyring.primary_key();
                unsealed[4] = id;
                key
            }
        };
        // On failure (a body beyond the AEAD's limit) the bytes stay
        // unsealed, and will not decode.
        seal_with(key, &mut unsealed);
        unsealed
    }
}

/// Appends the tag to `buf` (header and body, at least [`HEADER_LEN`]
/// bytes), encrypting the body first if the header's flag says so. False if
/// the AEAD refused (a body beyond its limit), leaving `buf` unchanged.
fn seal_with(key: &XChaCha20Poly1305, buf: &mut Vec<u8>) -> bool {
    if buf.len() < HEADER_LEN {
        return false;
    }
    let nonce = nonce(buf);
    let tag = if buf[3] & FLAG_ENCRYPTED != 0 {
        let (header, body) = buf.split_at_mut(HEADER_LEN);
        key.encrypt_in_place_detached(&nonce, header, body)
    } else {
        key.encrypt_in_place_detached(&nonce, buf, &mut [])
    };
    match tag {
        Ok(tag) => {
            buf.extend_from_slice(&tag);
            true
        }
        Err(_) => false,
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

fn put_node(out: &mut Vec<u8>, node: NodeId) {
    out.extend_from_slice(&node.0.ip().octets());
    put_u16(out, node.0.port());
}

/// Writes the body; the caller checked every count and length.
fn put_message(out: &mut Vec<u8>, message: &Message) {
    out.push(message.kind.code());
    match message.kind {
        Kind::PingReq { target } => put_node(out, target),
        Kind::Ack { probe } => put_u64(out, probe),
        _ => {}
    }
    out.push(message.to.len() as u8);
    for d in &message.to {
        put_node(out, d.node);
        put_u64(out, d.incarnation);
    }
    out.push(message.updates.len() as u8);
    for u in &message.updates {
        put_node(out, u.node);
        put_u64(out, u.incarnation);
        out.push(u.state.to_u8());
    }
    out.push(message.summaries.len() as u8);
    for s in &message.summaries {
        put_node(out, s.node);
        put_u64(out, s.incarnation);
        out.push(s.state.to_u8());
        put_u64(out, s.generation);
        put_u64(out, s.version);
    }
    out.push(message.ranges.len() as u8);
    for r in &message.ranges {
        put_node(out, r.node);
        put_u64(out, r.generation);
        put_u64(out, r.from);
        put_u64(out, r.to);
    }
    out.push(message.deltas.len() as u8);
    for d in &message.deltas {
        put_node(out, d.node);
        put_u64(out, d.generation);
        put_u64(out, d.version);
        out.push(d.key.len() as u8);
        out.extend_from_slice(&d.key);
        match &d.value {
            None => out.push(DELTA_DELETED),
            Some(value) => {
                out.push(DELTA_VALUE);
                put_u16(out, value.len() as u16);
                out.extend_from_slice(value);
            }
        }
    }
}

/// Parses an authenticated (and decrypted) body.
fn decode_body(body: &[u8]) -> Result<Message, DecodeError> {
    let mut r = Reader { buf: body };
    let kind = match r.u8()? {
        KIND_PING => Kind::Ping,
        KIND_PING_REQ => Kind::PingReq { target: r.node()? },
        KIND_ACK => Kind::Ack { probe: r.u64()? },
        KIND_GOSSIP => Kind::Gossip,
        KIND_SYNC_REQUEST => Kind::SyncRequest,
        KIND_SYNC_REPLY => Kind::SyncReply,
        KIND_SYNC_DELTAS => Kind::SyncDeltas,
        _ => return Err(DecodeError::Malformed("unknown kind")),
    };
    let count = r.count(DESTINATION_LEN)?;
    let mut to = Vec::with_capacity(count);
    for _ in 0..count {
        to.push(Destination {
            node: r.node()?,
            incarnation: r.u64()?,
        });
    }
    let count = r.count(UPDATE_LEN)?;
    let mut updates = Vec::with_capacity(count);
    for _ in 0..count {
        updates.push(Update {
            node: r.node()?,
            incarnation: r.u64()?,
            state: r.state()?,
        });
    }
    let count = r.count(SUMMARY_LEN)?;
    let mut summaries = Vec::with_capacity(count);
    for _ in 0..count {
        summaries.push(Summary {
            node: r.node()?,
            incarnation: r.u64()?,
            state: r.state()?,
            generation: r.u64()?,
            version: r.u64()?,
        });
    }
    let count = r.count(RANGE_LEN)?;
    let mut ranges = Vec::with_capacity(count);
    for _ in 0..count {
        let range = Range {
            node: r.node()?,
            generation: r.u64()?,
            from: r.u64()?,
            to: r.u64()?,
        };
        if range.from > range.to {
            return Err(DecodeError::Malformed("range with from > to"));
        }
        ranges.push(range);
    }
    let count = r.count(MIN_DELTA_LEN)?;
    let mut deltas = Vec::with_capacity(count);
    for _ in 0..count {
        let node = r.node()?;
        let generation = r.u64()?;
        let version = r.u64()?;
        let key_len = usize::from(r.u8()?);
        let key = r.take(key_len)?.to_vec();
        let value = match r.u8()? {
            DELTA_DELETED => None,
            DELTA_VALUE => {
                let len = usize::from(r.u16()?);
                Some(r.take(len)?.to_vec())
            }
            _ => return Err(DecodeError::Malformed("unknown delta tag")),
        };
        deltas.push(Delta {
            node,
            generation,
            version,
            key,
            value,
        });
    }
    if !r.buf.is_empty() {
        return Err(DecodeError::Malformed("trailing bytes"));
    }
    Ok(Message {
        kind,
        to,
        updates,
        summaries,
        ranges,
        deltas,
    })
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

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    fn node(&mut self) -> Result<NodeId, DecodeError> {
        let ip: [u8; 4] = self.array()?;
        let port = self.u16()?;
        Ok(NodeId(SocketAddrV4::new(Ipv4Addr::from(ip), port)))
    }

    fn state(&mut self) -> Result<State, DecodeError> {
        State::from_u8(self.u8()?).ok_or(DecodeError::Malformed("unknown state"))
    }

    /// A u8 item count, checked against the bytes left (at least
    /// `min_item_len` per item) before anything is allocated.
    fn count(&mut self, min_item_len: usize) -> Result<usize, DecodeError> {
        let n = usize::from(self.u8()?);
        if n * min_item_len > self.buf.len() {
            return Err(DecodeError::Malformed("count runs past the end"));
        }
        Ok(n)
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

    fn codec(encrypt: bool) -> Codec {
        Codec::new(
            Keyring::new(1, b"cluster secret"),
            DEFAULT_MAX_PACKET,
            encrypt,
        )
    }

    fn full() -> Message {
        Message {
            kind: Kind::Gossip,
            to: vec![
                Destination {
                    node: node(8),
                    incarnation: 0,
                },
                Destination {
                    node: node(9),
                    incarnation: 5,
                },
            ],
            updates: vec![
                Update {
                    node: node(1),
                    incarnation: 0,
                    state: State::Alive,
                },
                Update {
                    node: node(2),
                    incarnation: 7,
                    state: State::Suspect,
                },
                Update {
                    node: node(3),
                    incarnation: u64::MAX,
                    state: State::Dead,
                },
                Update {
                    node: node(4),
                    incarnation: 1,
                    state: State::Left,
                },
            ],
            summaries: vec![Summary {
                node: node(5),
                incarnation: 3,
                state: State::Alive,
                generation: 1_700_000_000_000_000,
                version: 42,
            }],
            ranges: vec![
                Range {
                    node: node(6),
                    generation: 9,
                    from: 3,
                    to: 3,
                },
                Range {
                    node: node(7),
                    generation: 9,
                    from: 1,
                    to: u64::MAX,
                },
            ],
            deltas: vec![
                Delta {
                    node: node(8),
                    generation: 2,
                    version: 5,
                    key: b"role".to_vec(),
                    value: Some(b"super secret value 123".to_vec()),
                },
                Delta {
                    node: node(8),
                    generation: 2,
                    version: 6,
                    key: b"gone".to_vec(),
                    value: None,
                },
                Delta {
                    node: node(9),
                    generation: 0,
                    version: 0,
                    key: vec![],
                    value: Some(vec![]),
                },
            ],
        }
    }

    fn samples() -> Vec<Message> {
        let kinds = [
            Kind::Ping,
            Kind::PingReq { target: node(42) },
            Kind::Ack { probe: u64::MAX },
            Kind::Gossip,
            Kind::SyncRequest,
            Kind::SyncReply,
            Kind::SyncDeltas,
        ];
        let mut out = Vec::new();
        for kind in kinds {
            out.push(Message::new(kind));
            out.push(Message { kind, ..full() });
        }
        out
    }

    /// Header and body (no tag) of a packet with the given body, flags and
    /// key id, for `Codec::seal`.
    fn unsealed(flags: u8, key_id: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![MAGIC[0], MAGIC[1], FORMAT, flags, key_id];
        put_node(&mut out, node(200));
        put_u64(&mut out, 77);
        out.extend_from_slice(body);
        out
    }

    #[test]
    fn every_kind_and_section_round_trips_encrypted_or_not() {
        for encrypt in [false, true] {
            let codec = codec(encrypt);
            for (seq, message) in samples().into_iter().enumerate() {
                let seq = seq as u64 * 1_000_003;
                let bytes = codec.encode(node(200), seq, &message).unwrap();
                assert_eq!(bytes.len(), message.encoded_len(), "{message:?}");
                assert_eq!(
                    codec.decode(&bytes),
                    Ok(Packet {
                        sender: node(200),
                        seq,
                        key_id: 1,
                        encrypted: encrypt,
                        message,
                    })
                );
                assert_eq!(bytes[3], u8::from(encrypt));
            }
        }
    }

    #[test]
    fn a_codec_opens_both_clear_and_encrypted_packets() {
        let clear = codec(false);
        let secret = codec(true);
        let a = clear.encode(node(1), 1, &full()).unwrap();
        let b = secret.encode(node(1), 2, &full()).unwrap();
        assert!(!secret.decode(&a).unwrap().encrypted);
        assert!(clear.decode(&b).unwrap().encrypted);
    }

    #[test]
    fn the_same_message_encodes_to_identical_copies() {
        for encrypt in [false, true] {
            let codec = codec(encrypt);
            let a = codec.encode(node(3), 99, &full()).unwrap();
            let b = codec.clone().encode(node(3), 99, &full()).unwrap();
            assert_eq!(a, b);
            // Another seq is another nonce: another ciphertext and tag.
            let c = codec.encode(node(3), 100, &full()).unwrap();
            assert_ne!(a[HEADER_LEN..], c[HEADER_LEN..]);
        }
    }

    #[test]
    fn an_encrypted_body_is_not_readable() {
        let needle = b"super secret value 123";
        let contains = |hay: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
        assert!(contains(&codec(false).encode(node(1), 5, &full()).unwrap()));
        assert!(!contains(&codec(true).encode(node(1), 5, &full()).unwrap()));
    }

    #[test]
    fn size_and_identity_are_checked_first() {
        let codec = Codec::new(Keyring::new(1, b"k"), 100, false);
        let good = codec.encode(node(1), 1, &Message::new(Kind::Ping)).unwrap();
        assert_eq!(codec.decode(&[]), Err(DecodeError::Truncated));
        assert_eq!(
            codec.decode(&good[..OVERHEAD - 1]),
            Err(DecodeError::Truncated)
        );
        let mut big = good.clone();
        big.resize(101, 0);
        assert_eq!(
            codec.decode(&big),
            Err(DecodeError::Oversized { len: 101, max: 100 })
        );
        assert_eq!(codec.decode(&[0u8; 60]), Err(DecodeError::NotGossip));
        assert_eq!(codec.decode(&[0u8; 1000]), Err(DecodeError::NotGossip));
        let mut old = good.clone();
        old[1] = 0x60; // the v1 magic
        assert_eq!(codec.decode(&old), Err(DecodeError::NotGossip));
        let mut format = good.clone();
        format[2] = 1;
        assert_eq!(codec.decode(&format), Err(DecodeError::NotGossip));
        let mut key = good.clone();
        key[4] = 9;
        assert_eq!(codec.decode(&key), Err(DecodeError::UnknownKey(9)));
    }

    #[test]
    fn every_truncation_and_every_bit_flip_is_rejected() {
        for encrypt in [false, true] {
            let codec = codec(encrypt);
            let bytes = codec.encode(node(1), 3, &full()).unwrap();
            for len in 0..bytes.len() {
                let expected = if len < OVERHEAD {
                    DecodeError::Truncated
                } else {
                    DecodeError::BadTag
                };
                assert_eq!(codec.decode(&bytes[..len]), Err(expected), "prefix {len}");
            }
            for bit in 0..bytes.len() * 8 {
                let mut flipped = bytes.clone();
                flipped[bit / 8] ^= 1 << (bit % 8);
                let expected = match bit / 8 {
                    0..=2 => DecodeError::NotGossip,
                    4 => DecodeError::UnknownKey(flipped[4]),
                    _ => DecodeError::BadTag,
                };
                assert_eq!(codec.decode(&flipped), Err(expected), "bit {bit}");
            }
        }
    }

    #[test]
    fn another_secret_under_the_same_id_is_rejected() {
        for encrypt in [false, true] {
            let other = Codec::new(Keyring::new(1, b"another"), DEFAULT_MAX_PACKET, encrypt);
            for message in samples() {
                let bytes = codec(encrypt).encode(node(1), 1, &message).unwrap();
                assert_eq!(other.decode(&bytes), Err(DecodeError::BadTag));
            }
        }
    }

    #[test]
    fn keyring_rotation() {
        let old = Codec::new(Keyring::new(1, b"one"), DEFAULT_MAX_PACKET, true);
        let bytes = old.encode(node(1), 1, &full()).unwrap();

        let mut both = Keyring::new(1, b"one");
        both.install(2, b"two");
        both.use_key(2).unwrap();
        assert_eq!(both.primary(), 2);
        assert_eq!(both.ids(), vec![1, 2]);
        let rotated = Codec::new(both, DEFAULT_MAX_PACKET, true);
        let packet = rotated.decode(&bytes).unwrap();
        assert_eq!(packet.key_id, 1);
        assert_eq!(packet.message, full());
        let new = rotated.encode(node(2), 1, &full()).unwrap();
        assert_eq!(new[4], 2);
        assert_eq!(old.decode(&new), Err(DecodeError::UnknownKey(2)));

        let mut only_new = rotated.clone();
        only_new.keyring_mut().remove(1).unwrap();
        assert_eq!(only_new.keyring().ids(), vec![2]);
        assert_eq!(only_new.decode(&bytes), Err(DecodeError::UnknownKey(1)));
        assert!(only_new.decode(&new).is_ok());
    }

    #[test]
    fn keyring_refusals() {
        let mut ring = Keyring::new(1, b"one");
        assert_eq!(ring.remove(1), Err(KeyringError::Empty));
        assert_eq!(ring.use_key(3), Err(KeyringError::Unknown(3)));
        assert_eq!(ring.remove(3), Err(KeyringError::Unknown(3)));
        ring.install(2, b"two");
        assert_eq!(ring.remove(1), Err(KeyringError::RemovePrimary(1)));
        assert_eq!(ring.ids(), vec![1, 2]);
        ring.remove(2).unwrap();
        assert_eq!(ring.ids(), vec![1]);
        // Replacing the primary's secret is allowed.
        let before = Codec::new(ring.clone(), DEFAULT_MAX_PACKET, false);
        ring.install(1, b"uno");
        let after = Codec::new(ring, DEFAULT_MAX_PACKET, false);
        let bytes = before.encode(node(1), 1, &full()).unwrap();
        assert_eq!(after.decode(&bytes), Err(DecodeError::BadTag));
    }

    #[test]
    fn debug_never_shows_keys() {
        let mut ring = Keyring::new(7, b"hunter2");
        ring.install(9, b"hunter3");
        let codec = Codec::new(ring, DEFAULT_MAX_PACKET, true);
        assert_eq!(
            format!("{codec:?}"),
            "Codec { keyring: Keyring { primary: 7, ids: [7, 9] }, \
             max_packet: 1400, encrypt: true }"
        );
    }

    #[test]
    fn oversized_sections_are_refused_not_cut() {
        let codec = Codec::new(Keyring::new(1, b"k"), 1 << 20, true);
        let mut m = Message::new(Kind::Gossip);
        m.updates = vec![full().updates[0]; MAX_ITEMS];
        assert!(codec.encode(node(1), 1, &m).is_ok());
        m.updates.push(full().updates[0]);
        assert_eq!(codec.encode(node(1), 1, &m), Err(EncodeError::TooManyItems));

        let mut m = Message::new(Kind::SyncDeltas);
        let mut delta = full().deltas[0].clone();
        delta.key = vec![b'k'; MAX_KEY_LEN];
        m.deltas = vec![delta.clone()];
        assert!(codec.encode(node(1), 1, &m).is_ok());
        delta.key.push(b'k');
        m.deltas = vec![delta];
        assert_eq!(codec.encode(node(1), 1, &m), Err(EncodeError::KeyTooLong));

        let mut delta = full().deltas[0].clone();
        delta.value = Some(vec![0; u16::MAX as usize]);
        m.deltas = vec![delta.clone()];
        let bytes = codec.encode(node(1), 1, &m).unwrap();
        assert_eq!(codec.decode(&bytes).unwrap().message, m);
        delta.value = Some(vec![0; u16::MAX as usize + 1]);
        m.deltas = vec![delta];
        assert_eq!(codec.encode(node(1), 1, &m), Err(EncodeError::ValueTooLong));

        let small = Codec::new(Keyring::new(1, b"k"), 100, false);
        let mut m = Message::new(Kind::Gossip);
        m.updates = vec![full().updates[0]; 5];
        assert_eq!(
            small.encode(node(1), 1, &m),
            Err(EncodeError::Oversized {
                len: fixed_len(&Kind::Gossip) + 5 * UPDATE_LEN,
                max: 100
            })
        );
    }

    #[test]
    fn fixed_len_leaves_exactly_the_room_for_items() {
        let codec = codec(true);
        for message in samples() {
            let empty = Message::new(message.kind);
            assert_eq!(empty.encoded_len(), fixed_len(&message.kind));
            let room = (codec.max_packet() - fixed_len(&message.kind)) / UPDATE_LEN;
            let mut m = empty.clone();
            m.updates = vec![full().updates[1]; room];
            assert!(codec.encode(node(1), 1, &m).is_ok());
            m.updates.push(full().updates[1]);
            assert!(matches!(
                codec.encode(node(1), 1, &m),
                Err(EncodeError::Oversized { .. })
            ));
        }
        assert_eq!(fixed_len(&Kind::Ping), OVERHEAD + 6);
        assert_eq!(fixed_len(&Kind::PingReq { target: node(1) }), OVERHEAD + 12);
        assert_eq!(fixed_len(&Kind::Ack { probe: 0 }), OVERHEAD + 14);
        assert_eq!(
            full().deltas[0].encoded_len(),
            6 + 8 + 8 + 1 + 4 + 1 + 2 + 22
        );
        assert_eq!(full().deltas[1].encoded_len(), 6 + 8 + 8 + 1 + 4 + 1);
    }

    #[test]
    fn authentic_but_inconsistent_bodies_are_malformed() {
        let update = |state: u8| {
            let mut b = vec![KIND_GOSSIP, 0, 1];
            put_node(&mut b, node(1));
            put_u64(&mut b, 1);
            b.push(state);
            b.extend_from_slice(&[0, 0, 0]);
            b
        };
        let range = |from: u64, to: u64| {
            let mut b = vec![KIND_SYNC_REPLY, 0, 0, 0, 1];
            put_node(&mut b, node(1));
            put_u64(&mut b, 1);
            put_u64(&mut b, from);
            put_u64(&mut b, to);
            b.push(0);
            b
        };
        let delta = |tag: u8, tail: &[u8]| {
            let mut b = vec![KIND_SYNC_DELTAS, 0, 0, 0, 0, 1];
            put_node(&mut b, node(1));
            put_u64(&mut b, 1);
            put_u64(&mut b, 1);
            b.extend_from_slice(&[1, b'k', tag]);
            b.extend_from_slice(tail);
            b
        };
        let mut trailing = update(0);
        trailing.push(0);
        let cases: Vec<(u8, Vec<u8>, &str)> = vec![
            (0, update(0), ""),
            (0, update(4), "unknown state"),
            (0, update(0xFF), "unknown state"),
            (0, trailing, "trailing bytes"),
            (0, range(3, 3), ""),
            (0, range(4, 3), "range with from > to"),
            (0, delta(0, &[]), ""),
            (0, delta(1, &[0, 1, b'v']), ""),
            (0, delta(2, &[]), "unknown delta tag"),
            (0, delta(1, &[0xFF, 0xFF]), "field runs past the end"),
            (0, delta(1, &[0, 2, b'v']), "field runs past the end"),
            (0, vec![0, 0, 0, 0, 0, 0], "unknown kind"),
            (0, vec![8, 0, 0, 0, 0, 0], "unknown kind"),
            (0, vec![KIND_PING, 0, 0, 0, 0], "field runs past the end"),
            (0, vec![], "field runs past the end"),
            (0, vec![KIND_ACK, 0, 0], "field runs past the end"),
            (
                0,
                vec![KIND_PING, 0xFF, 0, 0, 0, 0],
                "count runs past the end",
            ),
            (
                0,
                vec![KIND_PING, 0, 0xFF, 0, 0, 0],
                "count runs past the end",
            ),
            (
                0,
                vec![KIND_PING, 0, 0, 0xFF, 0, 0],
                "count runs past the end",
            ),
            (
                0,
                vec![KIND_PING, 0, 0, 0, 0xFF, 0],
                "count runs past the end",
            ),
            (
                0,
                vec![KIND_PING, 0, 0, 0, 0, 0xFF],
                "count runs past the end",
            ),
            (2, vec![KIND_PING, 0, 0, 0, 0, 0], "flags"),
            (0x81, vec![KIND_PING, 0, 0, 0, 0, 0], "flags"),
        ];
        for encrypt in [0, FLAG_ENCRYPTED] {
            let codec = codec(encrypt != 0);
            for (flags, body, why) in &cases {
                let sealed = codec.seal(unsealed(flags | encrypt, 1, body));
                let result = codec.decode(&sealed);
                if why.is_empty() {
                    let packet = result.unwrap();
                    let again = codec.encode(packet.sender, packet.seq, &packet.message);
                    assert_eq!(again.unwrap(), sealed, "{body:?}");
                } else {
                    assert_eq!(result, Err(DecodeError::Malformed(why)), "{body:?}");
                }
            }
        }
    }

    #[test]
    fn seal_uses_the_named_key_or_the_primary() {
        let mut ring = Keyring::new(1, b"one");
        ring.install(2, b"two");
        let codec = Codec::new(ring, DEFAULT_MAX_PACKET, false);
        let body = [KIND_PING, 0, 0, 0, 0, 0];
        assert_eq!(
            codec
                .decode(&codec.seal(unsealed(0, 2, &body)))
                .unwrap()
                .key_id,
            2
        );
        let sealed = codec.seal(unsealed(0, 9, &body));
        assert_eq!(sealed[4], 1);
        assert_eq!(codec.decode(&sealed).unwrap().key_id, 1);
        assert_eq!(codec.seal(vec![1, 2, 3]), vec![1, 2, 3]);
    }

    #[test]
    fn mutated_bodies_never_panic_and_what_decodes_re_encodes() {
        // A cheap deterministic stand-in for the fuzz target: valid bodies
        // with bytes overwritten, cut or added, sealed again.
        let clear = codec(false);
        let secret = codec(true);
        let bodies: Vec<Vec<u8>> = samples()
            .iter()
            .map(|m| {
                let bytes = clear.encode(node(1), 1, m).unwrap();
                bytes[HEADER_LEN..bytes.len() - TAG_LEN].to_vec()
            })
            .collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut decoded, mut refused) = (0, 0);
        for round in 0..20_000usize {
            let mut body = bodies[round % bodies.len()].clone();
            for _ in 0..1 + next() % 3 {
                let r = next();
                let at = (r >> 8) as usize % (body.len() + 1);
                match r % 4 {
                    // Small values often, so kinds, counts and tags are hit.
                    0 if at < body.len() => body[at] = (r >> 32) as u8 & 7,
                    1 if at < body.len() => body[at] = (r >> 32) as u8,
                    2 => body.truncate(at),
                    _ => body.insert(at, (r >> 32) as u8 & 3),
                }
            }
            let flags = (round / bodies.len() % 2) as u8;
            let sealed = clear.seal(unsealed(flags, 1, &body));
            match clear.decode(&sealed) {
                Ok(packet) => {
                    decoded += 1;
                    let encoder = if packet.encrypted { &secret } else { &clear };
                    let again = encoder.encode(packet.sender, packet.seq, &packet.message);
                    assert_eq!(again.unwrap(), sealed);
                }
                Err(DecodeError::Malformed(_)) => refused += 1,
                Err(e) => panic!("{e} for a well-sealed packet"),
            }
        }
        assert!(decoded > 1000 && refused > 1000, "{decoded} {refused}");
    }
}
