//! A client of the replicated store, with no I/O: one outstanding request at
//! a time, retried until a reply arrives.
//!
//! The first attempt goes to the replica the client believes leads (from
//! the view in the last reply); retries go to every replica, so after a
//! view change the new leader gets the request and its reply names the new
//! view. The request number makes retries safe: the leader's client table
//! executes each request at most once and answers retries from its cache.

use crate::kv::{Op, OpResult};
use crate::replica::Time;
use crate::wire::{Entry, Message};

/// Where a client message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientTo {
    /// The replica with this index.
    Replica(usize),
    /// Every replica.
    AllReplicas,
}

#[derive(Clone, Debug)]
struct Outstanding {
    request_num: u64,
    op: Op,
    last_sent: Time,
}

/// One client session.
#[derive(Clone, Debug)]
pub struct Client {
    id: u64,
    n: usize,
    view: u64,
    retry: Time,
    last_request: u64,
    outstanding: Option<Outstanding>,
    retries: u64,
}

impl Client {
    /// Client `id` (unique in the cluster's life) of a cluster of `n`
    /// replicas, retrying after `retry` microseconds without a reply.
    pub fn new(id: u64, n: usize, retry: Time) -> Client {
        Client {
            id,
            n,
            view: 0,
            retry,
            last_request: 0,
            outstanding: None,
            retries: 0,
        }
    }

    /// The client id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// True while a request waits for its reply.
    #[cfg(test)]
    pub fn busy(&self) -> bool {
        self.outstanding.is_some()
    }

    /// Retransmissions so far.
    pub fn retries(&self) -> u64 {
        self.retries
    }

    /// When the outstanding request is due for a retry.
    pub fn deadline(&self) -> Option<Time> {
        self.outstanding.as_ref().map(|o| o.last_sent + self.retry)
    }

    /// Starts a request; returns the message to send and where, or `None`
    /// when a request is already outstanding.
    pub fn invoke(&mut self, now: Time, op: Op) -> Option<(ClientTo, Message)> {
        if self.outstanding.is_some() {
            return None;
        }
        self.last_request += 1;
        let outstanding = Outstanding {
            request_num: self.last_request,
            op,
            last_sent: now,
        };
        let msg = self.request(&outstanding);
        self.outstanding = Some(outstanding);
        let leader = (self.view % self.n as u64) as usize;
        Some((ClientTo::Replica(leader), msg))
    }

    /// Retries the outstanding request if its time has come.
    pub fn tick(&mut self, now: Time) -> Option<(ClientTo, Message)> {
        let due = self.deadline().is_some_and(|d| now >= d);
        let outstanding = self.outstanding.as_mut().filter(|_| due)?;
        outstanding.last_sent = now;
        self.retries += 1;
        let outstanding = outstanding.clone();
        Some((ClientTo::AllReplicas, self.request(&outstanding)))
    }

    /// Stops waiting for the outstanding request (it may still execute;
    /// a late reply is ignored).
    pub fn abandon(&mut self) {
        self.outstanding = None;
    }

    /// Processes a reply; returns the result when it answers the
    /// outstanding request.
    pub fn handle(&mut self, msg: &Message) -> Option<OpResult> {
        let Message::Reply {
            view,
            request_num,
            result,
        } = msg
        else {
            return None;
        };
        let outstanding = self.outstanding.as_ref()?;
        if *request_num != outstanding.request_num {
            return None;
        }
        self.view = self.view.max(*view);
        self.outstanding = None;
        Some(result.clone())
    }

    fn request(&self, outstanding: &Outstanding) -> Message {
        Message::Request(Entry {
            client_id: self.id,
            request_num: outstanding.request_num,
            op: outstanding.op.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get() -> Op {
        Op::Get { key: b"k".to_vec() }
    }

    #[test]
    fn first_attempt_goes_to_the_leader_and_retries_to_everyone() {
        let mut c = Client::new(9, 5, 100);
        let (to, msg) = c.invoke(0, get()).unwrap();
        assert_eq!(to, ClientTo::Replica(0));
        assert!(c.invoke(1, get()).is_none(), "one request at a time");
        assert!(c.tick(99).is_none());
        let (to, retry) = c.tick(100).unwrap();
        assert_eq!(to, ClientTo::AllReplicas);
        assert_eq!(retry, msg, "a retry is the same request");
        assert!(c.tick(150).is_none());
        assert!(c.tick(200).is_some());
        assert_eq!(c.retries(), 2);
    }

    #[test]
    fn replies_name_the_leader_and_must_match_the_request() {
        let mut c = Client::new(9, 5, 100);
        c.invoke(0, get()).unwrap();
        let reply = |request_num, view| Message::Reply {
            view,
            request_num,
            result: OpResult::Value(None),
        };
        assert_eq!(c.handle(&reply(2, 3)), None, "not our request");
        assert_eq!(c.handle(&reply(1, 3)), Some(OpResult::Value(None)));
        assert!(!c.busy());
        assert_eq!(c.handle(&reply(1, 3)), None, "duplicate reply");
        let (to, _) = c.invoke(10, get()).unwrap();
        assert_eq!(to, ClientTo::Replica(3), "view 3 is led by replica 3");
    }
}
