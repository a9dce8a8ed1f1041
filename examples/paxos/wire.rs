//! The messages of Viewstamped Replication and their encoding in one UDP
//! datagram.
//!
//! Layout: the magic bytes `V R`, a version byte, a type byte, then the
//! fields in order, integers little-endian, byte strings and lists with a
//! `u16` length. Decoding checks every length and limit, so any datagram
//! either decodes or is rejected with a [`DecodeError`]; nothing panics.

use std::fmt;

use crate::kv::{Bytes, Op, OpResult, MAX_KEY_LEN, MAX_VALUE_LEN};

/// First bytes of every message.
pub const MAGIC: [u8; 2] = *b"VR";

use elec_broadcast::{Ack, Sequenced, MAX_ROUND_NUMBER, MAX_VOTERS};
/// Version of the encoding.
pub const VERSION: u8 = 1;
/// Largest datagram the replicas send or accept (IPv4 UDP limit, minus slack).
pub const MAX_DATAGRAM: usize = 65_000;

/// A replica's index in the configuration.
pub type ReplicaId = u8;

/// One log entry: a client's request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Who asked.
    pub client_id: u64,
    /// The client's request number (1, 2, ...; one outstanding at a time).
    pub request_num: u64,
    /// What to do.
    pub op: Op,
}

/// A protocol message. `view` is the sender's view number; op numbers
/// count log entries from 1 (op number 0 is the empty log).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Client to leader: execute this.
    Request(Entry),
    /// Leader to client: the result of a request.
    Reply {
        /// Leader's view (tells the client who leads).
        view: u64,
        /// The request answered.
        request_num: u64,
        /// What the operation returned.
        result: OpResult,
    },
    /// Leader to followers: append `entry` as op `op_number`.
    Prepare {
        /// Leader's view.
        view: u64,
        /// Position of the entry.
        op_number: u64,
        /// Leader's commit number.
        commit_number: u64,
        /// The entry.
        entry: Entry,
    },
    /// Follower to leader: my log holds every op up to `op_number` of this view.
    PrepareOk {
        /// Follower's view.
        view: u64,
        /// Highest op held (cumulative acknowledgement).
        op_number: u64,
        /// The follower.
        replica: ReplicaId,
    },
    /// Leader to followers: everything up to `commit_number` is committed.
    /// Also the heartbeat; `op_number` lets followers notice missing ops.
    Commit {
        /// Leader's view.
        view: u64,
        /// Leader's commit number.
        commit_number: u64,
        /// Leader's op number.
        op_number: u64,
    },
    /// Ask for log entries from `first_op` on (state transfer, log repair).
    GetState {
        /// Requester's view; answered only within the same view.
        view: u64,
        /// The requester.
        replica: ReplicaId,
        /// First op wanted.
        first_op: u64,
    },
    /// Answer to [`Message::GetState`]: entries from `first_op` on.
    NewState {
        /// Responder's view.
        view: u64,
        /// The responder.
        replica: ReplicaId,
        /// Whether the responder is in normal status (else: view change).
        normal: bool,
        /// Responder's last normal view.
        last_normal_view: u64,
        /// Responder's op number.
        op_number: u64,
        /// Responder's commit number.
        commit_number: u64,
        /// Position of `entries[0]`.
        first_op: u64,
        /// Consecutive entries.
        entries: Vec<Entry>,
    },
    /// A replica gave up on the leader and moves to `view`.
    StartViewChange {
        /// The new view.
        view: u64,
        /// The sender.
        replica: ReplicaId,
    },
    /// To the new leader: my log, for choosing the new view's log.
    DoViewChange {
        /// The new view.
        view: u64,
        /// The sender.
        replica: ReplicaId,
        /// View in which the sender's log was last normal.
        last_normal_view: u64,
        /// Sender's op number.
        op_number: u64,
        /// Sender's commit number.
        commit_number: u64,
        /// Position of `entries[0]`: the suffix that may be uncommitted.
        first_op: u64,
        /// The log from `first_op` to `op_number`.
        entries: Vec<Entry>,
    },
    /// New leader to all: the view has started with this log.
    StartView {
        /// The new view.
        view: u64,
        /// New leader's op number.
        op_number: u64,
        /// New leader's commit number.
        commit_number: u64,
        /// Position of `entries[0]`; earlier ops are committed.
        first_op: u64,
        /// The log from `first_op` to `op_number`.
        entries: Vec<Entry>,
    },
}

impl Message {
    /// Short name of the message type, for test messages.
    #[cfg(test)]
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Request(_) => "Request",
            Message::Reply { .. } => "Reply",
            Message::Prepare { .. } => "Prepare",
            Message::PrepareOk { .. } => "PrepareOk",
            Message::Commit { .. } => "Commit",
            Message::GetState { .. } => "GetState",
            Message::NewState { .. } => "NewState",
            Message::StartViewChange { .. } => "StartViewChange",
            Message::DoViewChange { .. } => "DoViewChange",
            Message::StartView { .. } => "StartView",
        }
    }

    /// The replica that must have sent this message in a cluster of `n`
    /// (named in the message, or the leader of its view); `None` for client
    /// requests and replies.
    pub fn sender(&self, n: usize) -> Option<usize> {
        let leader = |view: u64| (view % n as u64) as usize;
        match self {
            Message::Request(_) | Message::Reply { .. } => None,
            Message::Prepare { view, .. }
            | Message::Commit { view, .. }
            | Message::StartView { view, .. } => Some(leader(*view)),
            Message::PrepareOk { replica, .. }
            | Message::GetState { replica, .. }
            | Message::NewState { replica, .. }
            | Message::StartViewChange { replica, .. }
            | Message::DoViewChange { replica, .. } => Some(usize::from(*replica)),
        }
    }

    /// The datagram the message travels in: a `Prepare` behind
    /// elec-broadcast's sequenced header (round = op number, epoch = view,
    /// acks to `ack_port`), so that a follower's replier can take it; a
    /// `PrepareOk` as an elec-broadcast ack (voter = replica), so that the
    /// leader's quorum collector can count it; anything else as
    /// [`Message::encode`] writes it.
    pub fn to_datagram(&self, ack_port: u16) -> Vec<u8> {
        match *self {
            Message::Prepare {
                view, op_number, ..
            } if (1..=MAX_ROUND_NUMBER).contains(&op_number) => {
                let mut bytes = Sequenced {
                    epoch: view,
                    round: op_number,
                    ack_port,
                }
                .to_bytes()
                .to_vec();
                bytes.extend_from_slice(&self.encode());
                bytes
            }
            Message::PrepareOk {
                view,
                op_number,
                replica,
            } if (1..=MAX_ROUND_NUMBER).contains(&op_number) && u16::from(replica) < MAX_VOTERS => {
                Ack {
                    epoch: view,
                    round: op_number,
                    voter: u16::from(replica),
                }
                .to_bytes()
                .to_vec()
            }
            _ => self.encode(),
        }
    }

    /// Decodes what [`Message::to_datagram`] wrote.
    pub fn from_datagram(bytes: &[u8]) -> Result<Message, DecodeError> {
        if let Ok((ack, rest)) = Ack::parse(bytes) {
            if !rest.is_empty() {
                return Err(DecodeError::TrailingBytes(rest.len()));
            }
            return Ok(Message::PrepareOk {
                view: ack.epoch,
                op_number: ack.round,
                replica: ack.voter as ReplicaId,
            });
        }
        if let Ok((header, inner)) = Sequenced::parse(bytes) {
            return Message::from_sequenced(header, inner);
        }
        Message::decode(bytes)
    }

    /// The `Prepare` a sequenced datagram carries (`inner`: the bytes after
    /// the header), which must agree with the header.
    pub fn from_sequenced(header: Sequenced, inner: &[u8]) -> Result<Message, DecodeError> {
        match Message::decode(inner)? {
            msg @ Message::Prepare {
                view, op_number, ..
            } if view == header.epoch && op_number == header.round => Ok(msg),
            _ => Err(DecodeError::BadField("sequenced header")),
        }
    }

    /// Encodes the message into a datagram.
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(64));
        w.0.extend_from_slice(&MAGIC);
        w.u8(VERSION);
        match self {
            Message::Request(entry) => {
                w.u8(1);
                w.entry(entry);
            }
            Message::Reply {
                view,
                request_num,
                result,
            } => {
                w.u8(2);
                w.u64(*view);
                w.u64(*request_num);
                w.result(result);
            }
            Message::Prepare {
                view,
                op_number,
                commit_number,
                entry,
            } => {
                w.u8(3);
                w.u64(*view);
                w.u64(*op_number);
                w.u64(*commit_number);
                w.entry(entry);
            }
            Message::PrepareOk {
                view,
                op_number,
                replica,
            } => {
                w.u8(4);
                w.u64(*view);
                w.u64(*op_number);
                w.u8(*replica);
            }
            Message::Commit {
                view,
                commit_number,
                op_number,
            } => {
                w.u8(5);
                w.u64(*view);
                w.u64(*commit_number);
                w.u64(*op_number);
            }
            Message::GetState {
                view,
                replica,
                first_op,
            } => {
                w.u8(6);
                w.u64(*view);
                w.u8(*replica);
                w.u64(*first_op);
            }
            Message::NewState {
                view,
                replica,
                normal,
                last_normal_view,
                op_number,
                commit_number,
                first_op,
                entries,
            } => {
                w.u8(7);
                w.u64(*view);
                w.u8(*replica);
                w.u8(u8::from(*normal));
                w.u64(*last_normal_view);
                w.u64(*op_number);
                w.u64(*commit_number);
                w.u64(*first_op);
                w.entries(entries);
            }
            Message::StartViewChange { view, replica } => {
                w.u8(8);
                w.u64(*view);
                w.u8(*replica);
            }
            Message::DoViewChange {
                view,
                replica,
                last_normal_view,
                op_number,
                commit_number,
                first_op,
                entries,
            } => {
                w.u8(9);
                w.u64(*view);
                w.u8(*replica);
                w.u64(*last_normal_view);
                w.u64(*op_number);
                w.u64(*commit_number);
                w.u64(*first_op);
                w.entries(entries);
            }
            Message::StartView {
                view,
                op_number,
                commit_number,
                first_op,
                entries,
            } => {
                w.u8(10);
                w.u64(*view);
                w.u64(*op_number);
                w.u64(*commit_number);
                w.u64(*first_op);
                w.entries(entries);
            }
        }
        w.0
    }

    /// Decodes a datagram.
    pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(2)? != MAGIC {
            return Err(DecodeError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let msg = match r.u8()? {
            1 => Message::Request(r.entry()?),
            2 => Message::Reply {
                view: r.u64()?,
                request_num: r.u64()?,
                result: r.result()?,
            },
            3 => Message::Prepare {
                view: r.u64()?,
                op_number: r.u64()?,
                commit_number: r.u64()?,
                entry: r.entry()?,
            },
            4 => Message::PrepareOk {
                view: r.u64()?,
                op_number: r.u64()?,
                replica: r.u8()?,
            },
            5 => Message::Commit {
                view: r.u64()?,
                commit_number: r.u64()?,
                op_number: r.u64()?,
            },
            6 => Message::GetState {
                view: r.u64()?,
                replica: r.u8()?,
                first_op: r.u64()?,
            },
            7 => Message::NewState {
                view: r.u64()?,
                replica: r.u8()?,
                normal: r.bool()?,
                last_normal_view: r.u64()?,
                op_number: r.u64()?,
                commit_number: r.u64()?,
                first_op: r.u64()?,
                entries: r.entries()?,
            },
            8 => Message::StartViewChange {
                view: r.u64()?,
                replica: r.u8()?,
            },
            9 => Message::DoViewChange {
                view: r.u64()?,
                replica: r.u8()?,
                last_normal_view: r.u64()?,
                op_number: r.u64()?,
                commit_number: r.u64()?,
                first_op: r.u64()?,
                entries: r.entries()?,
            },
            10 => Message::StartView {
                view: r.u64()?,
                op_number: r.u64()?,
                commit_number: r.u64()?,
                first_op: r.u64()?,
                entries: r.entries()?,
            },
            other => return Err(DecodeError::UnknownType(other)),
        };
        if r.at != bytes.len() {
            return Err(DecodeError::TrailingBytes(bytes.len() - r.at));
        }
        Ok(msg)
    }
}

/// Why a datagram is not a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// It ends in the middle of a field.
    Truncated,
    /// It does not start with `VR`.
    BadMagic,
    /// Another version of the encoding.
    BadVersion(u8),
    /// Unknown message type.
    UnknownType(u8),
    /// A field has a value outside its range.
    BadField(&'static str),
    /// Bytes left after the message.
    TrailingBytes(usize),
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "datagram ends in the middle of a field"),
            DecodeError::BadMagic => write!(f, "not a VR message (bad magic bytes)"),
            DecodeError::BadVersion(v) => write!(f, "encoding version {v}, expected {VERSION}"),
            DecodeError::UnknownType(t) => write!(f, "unknown message type {t}"),
            DecodeError::BadField(what) => write!(f, "invalid {what}"),
            DecodeError::TrailingBytes(n) => write!(f, "{n} bytes after the message"),
        }
    }
}

impl std::error::Error for DecodeError {}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        // Keys and values are limited far below u16::MAX (checked on input).
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&len.to_le_bytes());
        self.0.extend_from_slice(&b[..usize::from(len)]);
    }
    fn op(&mut self, op: &Op) {
        match op {
            Op::Get { key } => {
                self.u8(0);
                self.bytes(key);
            }
            Op::Put { key, value } => {
                self.u8(1);
                self.bytes(key);
                self.bytes(value);
            }
            Op::Cas { key, expected, new } => {
                self.u8(2);
                self.bytes(key);
                match expected {
                    None => self.u8(0),
                    Some(v) => {
                        self.u8(1);
                        self.bytes(v);
                    }
                }
                self.bytes(new);
            }
        }
    }
    fn result(&mut self, result: &OpResult) {
        match result {
            OpResult::Value(None) => self.u8(0),
            OpResult::Value(Some(v)) => {
                self.u8(1);
                self.bytes(v);
            }
            OpResult::Written => self.u8(2),
            OpResult::Cas { swapped } => self.u8(3 + u8::from(*swapped)),
        }
    }
    fn entry(&mut self, e: &Entry) {
        self.u64(e.client_id);
        self.u64(e.request_num);
        self.op(&e.op);
    }
    fn entries(&mut self, entries: &[Entry]) {
        // Callers keep lists far below u16::MAX (the log suffixes are bounded
        // by the window and by the state-transfer byte cap).
        let n = u16::try_from(entries.len()).unwrap_or(u16::MAX);
        self.0.extend_from_slice(&n.to_le_bytes());
        entries[..usize::from(n)].iter().for_each(|e| self.entry(e));
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated)?;
        let slice = self.bytes.get(self.at..end).ok_or(DecodeError::Truncated)?;
        self.at = end;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn bool(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadField("flag")),
        }
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(a))
    }
    fn bytes(&mut self, max: usize, what: &'static str) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        if len > max {
            return Err(DecodeError::BadField(what));
        }
        Ok(self.take(len)?.to_vec())
    }
    fn op(&mut self) -> Result<Op, DecodeError> {
        let key = |r: &mut Self| r.bytes(MAX_KEY_LEN, "key length");
        let value = |r: &mut Self| r.bytes(MAX_VALUE_LEN, "value length");
        match self.u8()? {
            0 => Ok(Op::Get { key: key(self)? }),
            1 => Ok(Op::Put {
                key: key(self)?,
                value: value(self)?,
            }),
            2 => {
                let key = key(self)?;
                let expected = if self.bool()? {
                    Some(value(self)?)
                } else {
                    None
                };
                Ok(Op::Cas {
                    key,
                    expected,
                    new: value(self)?,
                })
            }
            _ => Err(DecodeError::BadField("operation type")),
        }
    }
    fn result(&mut self) -> Result<OpResult, DecodeError> {
        match self.u8()? {
            0 => Ok(OpResult::Value(None)),
            1 => Ok(OpResult::Value(Some(
                self.bytes(MAX_VALUE_LEN, "value length")?,
            ))),
            2 => Ok(OpResult::Written),
            3 => Ok(OpResult::Cas { swapped: false }),
            4 => Ok(OpResult::Cas { swapped: true }),
            _ => Err(DecodeError::BadField("result type")),
        }
    }
    fn entry(&mut self) -> Result<Entry, DecodeError> {
        Ok(Entry {
            client_id: self.u64()?,
            request_num: self.u64()?,
            op: self.op()?,
        })
    }
    fn entries(&mut self) -> Result<Vec<Entry>, DecodeError> {
        let n = usize::from(self.u16()?);
        // Each entry takes at least 19 bytes: no allocation beyond the datagram.
        if n > (self.bytes.len() - self.at) / 19 {
            return Err(DecodeError::Truncated);
        }
        (0..n).map(|_| self.entry()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn entry(i: u64) -> Entry {
        Entry {
            client_id: 7 + i,
            request_num: i,
            op: match i % 3 {
                0 => Op::Get { key: b"k".to_vec() },
                1 => Op::Put {
                    key: b"k1".to_vec(),
                    value: vec![i as u8; 5],
                },
                _ => Op::Cas {
                    key: b"k2".to_vec(),
                    expected: (i % 2 == 0).then(|| b"old".to_vec()),
                    new: b"new".to_vec(),
                },
            },
        }
    }

    fn samples() -> Vec<Message> {
        vec![
            Message::Request(entry(1)),
            Message::Reply {
                view: 3,
                request_num: 9,
                result: OpResult::Value(Some(b"v".to_vec())),
            },
            Message::Reply {
                view: 3,
                request_num: 9,
                result: OpResult::Cas { swapped: true },
            },
            Message::Prepare {
                view: 1,
                op_number: 2,
                commit_number: 1,
                entry: entry(2),
            },
            Message::PrepareOk {
                view: 1,
                op_number: 2,
                replica: 4,
            },
            Message::Commit {
                view: 1,
                commit_number: 2,
                op_number: 5,
            },
            Message::GetState {
                view: 1,
                replica: 2,
                first_op: 3,
            },
            Message::NewState {
                view: 1,
                replica: 0,
                normal: true,
                last_normal_view: 1,
                op_number: 5,
                commit_number: 4,
                first_op: 3,
                entries: (3..=5).map(entry).collect(),
            },
            Message::StartViewChange {
                view: 2,
                replica: 1,
            },
            Message::DoViewChange {
                view: 2,
                replica: 1,
                last_normal_view: 1,
                op_number: 5,
                commit_number: 3,
                first_op: 4,
                entries: (4..=5).map(entry).collect(),
            },
            Message::StartView {
                view: 2,
                op_number: 5,
                commit_number: 3,
                first_op: 6,
                entries: vec![],
            },
        ]
    }

    #[test]
    fn every_message_survives_its_datagram() {
        for msg in samples() {
            let bytes = msg.to_datagram(7000);
            assert_eq!(
                Message::from_datagram(&bytes).unwrap(),
                msg,
                "{}",
                msg.kind()
            );
        }
        // A Prepare behind a header that disagrees with it is refused.
        let prepare = samples()
            .into_iter()
            .find(|m| m.kind() == "Prepare")
            .unwrap();
        let mut bytes = prepare.to_datagram(7000);
        bytes[23] ^= 1; // the header's round
        assert!(Message::from_datagram(&bytes).is_err());
    }

    #[test]
    fn every_message_survives_encoding() {
        for msg in samples() {
            let bytes = msg.encode();
            assert_eq!(Message::decode(&bytes), Ok(msg.clone()), "{}", msg.kind());
        }
    }

    #[test]
    fn truncated_and_extended_datagrams_are_rejected() {
        for msg in samples() {
            let bytes = msg.encode();
            for len in 0..bytes.len() {
                assert!(Message::decode(&bytes[..len]).is_err(), "{}", msg.kind());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(Message::decode(&longer), Err(DecodeError::TrailingBytes(1)));
        }
    }

    #[test]
    fn foreign_datagrams_are_rejected() {
        assert_eq!(Message::decode(b"hello"), Err(DecodeError::BadMagic));
        assert_eq!(
            Message::decode(b"VR\x02\x01"),
            Err(DecodeError::BadVersion(2))
        );
        assert_eq!(
            Message::decode(b"VR\x01\x63"),
            Err(DecodeError::UnknownType(99))
        );
        let mut long_key = vec![b'V', b'R', VERSION, 1];
        long_key.extend_from_slice(&[0; 16]);
        long_key.push(0);
        long_key.extend_from_slice(&(MAX_KEY_LEN as u16 + 1).to_le_bytes());
        long_key.extend_from_slice(&[b'k'; MAX_KEY_LEN + 1]);
        assert_eq!(
            Message::decode(&long_key),
            Err(DecodeError::BadField("key length"))
        );
    }

    #[test]
    fn random_and_mutated_bytes_never_panic() {
        let mut rng = SmallRng::seed_from_u64(5);
        let samples: Vec<Vec<u8>> = samples().iter().map(Message::encode).collect();
        for _ in 0..20_000 {
            let mut bytes = samples[rng.gen_range(0..samples.len())].clone();
            for _ in 0..rng.gen_range(1..4) {
                let at = rng.gen_range(0..bytes.len());
                bytes[at] = rng.gen();
            }
            if let Ok(msg) = Message::decode(&bytes) {
                // Whatever decodes encodes back to the same bytes.
                assert_eq!(msg.encode(), bytes);
            }
            let noise: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            let _ = Message::decode(&noise);
        }
    }

    #[test]
    fn sender_is_the_named_replica_or_the_views_leader() {
        let n = 5;
        let prepare = Message::Prepare {
            view: 7,
            op_number: 1,
            commit_number: 0,
            entry: entry(1),
        };
        assert_eq!(prepare.sender(n), Some(2));
        let ok = Message::PrepareOk {
            view: 7,
            op_number: 1,
            replica: 4,
        };
        assert_eq!(ok.sender(n), Some(4));
        assert_eq!(Message::Request(entry(1)).sender(n), None);
    }
}
