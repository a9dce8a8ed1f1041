//! Which of elec-broadcast's three in-kernel mechanisms a replica uses, and
//! the pure rules that connect them to the protocol core, shared by the
//! shell (real programs) and the simulation (a model of them):
//!
//! - `broadcast`: the leader's `Prepare` and `Commit` fanned out in the
//!   kernel (else one `sendmmsg`);
//! - `quorum`: the leader's `PrepareOk`s counted by the quorum collector,
//!   which wakes the leader once per quorum (else every ack reaches it);
//! - `reply`: a follower's next `Prepare` queued and acknowledged in the
//!   kernel (else the follower acknowledges from user space).
//!
//! `none` is the user-space baseline; `all` is Electrode's full set.

use std::fmt;
use std::str::FromStr;

use crate::replica::{Outgoing, Replica, Status, To};
use crate::wire::Message;

/// The mechanisms in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Accel {
    pub broadcast: bool,
    pub quorum: bool,
    pub reply: bool,
}

impl Accel {
    pub const NONE: Accel = Accel {
        broadcast: false,
        quorum: false,
        reply: false,
    };
    pub const ALL: Accel = Accel {
        broadcast: true,
        quorum: true,
        reply: true,
    };

    /// Every combination, for the ablation: none, each alone, all.
    #[cfg_attr(not(test), allow(dead_code))] // the tests' and the simulation's
    pub fn ablation() -> [Accel; 5] {
        [
            Accel::NONE,
            Accel {
                broadcast: true,
                ..Accel::NONE
            },
            Accel {
                quorum: true,
                ..Accel::NONE
            },
            Accel {
                reply: true,
                ..Accel::NONE
            },
            Accel::ALL,
        ]
    }
}

impl FromStr for Accel {
    type Err = String;

    /// `none`, `all`, or a comma-separated list of `broadcast`, `quorum`, `reply`.
    fn from_str(s: &str) -> Result<Accel, String> {
        match s {
            "none" => return Ok(Accel::NONE),
            "all" => return Ok(Accel::ALL),
            _ => {}
        }
        let mut accel = Accel::NONE;
        for word in s.split(',') {
            match word.trim() {
                "broadcast" => accel.broadcast = true,
                "quorum" => accel.quorum = true,
                "reply" => accel.reply = true,
                other => {
                    return Err(format!(
                        "unknown mechanism {other:?}: use none, all, or a list of \
                         broadcast, quorum, reply"
                    ))
                }
            }
        }
        Ok(accel)
    }
}

impl fmt::Display for Accel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Accel::NONE => f.write_str("none"),
            Accel::ALL => f.write_str("all"),
            a => {
                let words: Vec<&str> = [
                    (a.broadcast, "broadcast"),
                    (a.quorum, "quorum"),
                    (a.reply, "reply"),
                ]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, w)| *w)
                .collect();
                f.write_str(&words.join(","))
            }
        }
    }
}

/// The `PrepareOk`s a quorum of `voters` stands for: the collector passed
/// one ack that completed rounds up to `op_number` in `view`, and the core
/// learns the quorum as if each voter's ack had arrived.
pub fn quorum_acks(view: u64, op_number: u64, voters: &[u16]) -> Vec<Message> {
    voters
        .iter()
        .map(|&v| Message::PrepareOk {
            view,
            op_number,
            replica: v as u8,
        })
        .collect()
}

/// Drops the `PrepareOk`s in `out` that say no more than what the replier
/// has acknowledged already (`acked_to` in `view`): the core answers every
/// `Prepare` it appends, and those answers went out from the kernel.
pub fn drop_acked(out: &mut Vec<Outgoing>, view: u64, acked_to: u64) {
    out.retain(|o| {
        !matches!(
            (o.to, &o.msg),
            (To::Replica(_), Message::PrepareOk { view: v, op_number, .. })
                if *v == view && *op_number <= acked_to
        )
    });
}

/// Whether handling `msg` may take a follower out of normal operation in
/// `view` (a view change, joining a newer view, a state transfer): before
/// that, everything its replier acknowledged must be in the core's log, or a
/// view change could lose an op the leader counted as held here.
pub fn may_leave_view(msg: &Message, view: u64) -> bool {
    match msg {
        Message::Request(_) | Message::Reply { .. } | Message::PrepareOk { .. } => false,
        Message::GetState { .. } => false,
        Message::Prepare { view: v, .. } | Message::Commit { view: v, .. } => *v != view,
        Message::NewState { .. }
        | Message::StartViewChange { .. }
        | Message::DoViewChange { .. }
        | Message::StartView { .. } => true,
    }
}

/// What a follower's replier should take: `Some((view, next round,
/// leader))` while the replica follows a leader in normal status, `None`
/// (frozen) while it leads or changes views.
pub fn arming(replica: &Replica) -> Option<(u64, u64, usize)> {
    (replica.status() == Status::Normal && !replica.is_leader()).then(|| {
        (
            replica.view(),
            replica.op_number() + 1,
            replica.leader_index(),
        )
    })
}

/// The followers the leader counts acks from, with the quorum it needs
/// (f acks: with its own, f + 1): `Some` while it leads in normal status.
pub fn collecting(replica: &Replica) -> Option<(u64, Vec<usize>, usize)> {
    (replica.status() == Status::Normal && replica.is_leader()).then(|| {
        let followers = (0..replica.n()).filter(|&i| i != replica.id()).collect();
        (replica.view(), followers, (replica.n() - 1) / 2)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for accel in Accel::ablation() {
            assert_eq!(accel.to_string().parse::<Accel>().unwrap(), accel);
        }
        assert_eq!(
            "quorum,reply".parse::<Accel>().unwrap(),
            Accel {
                broadcast: false,
                quorum: true,
                reply: true
            }
        );
        assert!("quorum,fast".parse::<Accel>().is_err());
    }
}
