//! What a node has to tell: membership updates and key/value deltas waiting
//! to ride on the messages it sends anyway (piggybacking).
//!
//! Each item is sent a bounded number of times (`limit`, about λ·log N),
//! those sent least often first, so that a new item goes out in the very
//! next message and an old one gives way. A newer item about the same thing
//! (the same member, or the same key of the same node) replaces the older
//! one, so the queue never holds more than one item per member and key.
//! Every operation is O(log Q) in the queue's length, none scans the members.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use crate::codec::{Delta, NodeId, Update};

/// One thing to tell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Item {
    /// A membership update.
    Update(Update),
    /// A key/value change of some node.
    Delta(Delta),
}

impl Item {
    fn subject(&self) -> Subject {
        match self {
            Item::Update(update) => Subject::Member(update.node),
            Item::Delta(delta) => Subject::Key(delta.node, delta.key.clone()),
        }
    }
}

/// What an item is about: a newer item on the same subject replaces it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Subject {
    Member(NodeId),
    Key(NodeId, Vec<u8>),
}

/// Order of sending: fewest transmissions first, then newest first.
type Rank = (u32, Reverse<u64>);

/// The piggyback queue.
#[derive(Clone, Debug, Default)]
pub struct Queue {
    by_rank: BTreeMap<Rank, Item>,
    by_subject: HashMap<Subject, Rank>,
    next_id: u64,
}

impl Queue {
    /// Queues `item`, replacing what was queued on the same subject.
    pub fn push(&mut self, item: Item) {
        let subject = item.subject();
        if let Some(rank) = self.by_subject.remove(&subject) {
            self.by_rank.remove(&rank);
        }
        self.next_id += 1;
        let rank = (0, Reverse(self.next_id));
        self.by_subject.insert(subject, rank);
        self.by_rank.insert(rank, item);
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.by_rank.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.by_rank.is_empty()
    }

    /// Takes items for one message, least sent first, while `fits` accepts
    /// them (it is given each candidate and says whether it still fits; an
    /// item that does not fit is skipped, a smaller one may follow). Each
    /// item taken counts one transmission; an item sent `limit` times leaves
    /// the queue. At most `max_tries` candidates are looked at.
    pub fn take(
        &mut self,
        limit: u32,
        max_tries: usize,
        mut fits: impl FnMut(&Item) -> bool,
    ) -> Vec<Item> {
        let mut taken = Vec::new();
        let mut sent: Vec<Rank> = Vec::new();
        for (rank, item) in self.by_rank.iter().take(max_tries) {
            if fits(item) {
                taken.push(item.clone());
                sent.push(*rank);
            }
        }
        for rank in sent {
            let Some(item) = self.by_rank.remove(&rank) else {
                continue;
            };
            let subject = item.subject();
            let transmits = rank.0 + 1;
            if transmits >= limit {
                self.by_subject.remove(&subject);
            } else {
                let new_rank = (transmits, rank.1);
                self.by_subject.insert(subject, new_rank);
                self.by_rank.insert(new_rank, item);
            }
        }
        taken
    }

    /// Drops whatever is queued about `node` (it was forgotten).
    pub fn forget(&mut self, node: NodeId) {
        let ranks: Vec<(Subject, Rank)> = self
            .by_subject
            .iter()
            .filter(|(subject, _)| match subject {
                Subject::Member(n) | Subject::Key(n, _) => *n == node,
            })
            .map(|(s, r)| (s.clone(), *r))
            .collect();
        for (subject, rank) in ranks {
            self.by_subject.remove(&subject);
            self.by_rank.remove(&rank);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::codec::State;

    fn node(i: u8) -> NodeId {
        NodeId(SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, i), 7000))
    }

    fn update(i: u8, incarnation: u64) -> Item {
        Item::Update(Update {
            node: node(i),
            incarnation,
            state: State::Alive,
        })
    }

    #[test]
    fn least_sent_first_and_each_item_at_most_limit_times() {
        let mut queue = Queue::default();
        queue.push(update(1, 1));
        queue.push(update(2, 1));
        // Two per message: the newest first.
        let first = queue.take(2, usize::MAX, {
            let mut n = 0;
            move |_| {
                n += 1;
                n <= 1
            }
        });
        assert_eq!(first, vec![update(2, 1)]);
        // Item 1 has been sent less often now: it goes first.
        let second = queue.take(2, usize::MAX, |_| true);
        assert_eq!(second, vec![update(1, 1), update(2, 1)]);
        assert_eq!(queue.take(2, usize::MAX, |_| true), vec![update(1, 1)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn newer_item_on_the_same_subject_replaces_the_older() {
        let mut queue = Queue::default();
        queue.push(update(1, 1));
        queue.take(5, usize::MAX, |_| true);
        queue.push(update(1, 2));
        assert_eq!(queue.len(), 1);
        assert_eq!(queue.take(5, usize::MAX, |_| true), vec![update(1, 2)]);
        queue.forget(node(1));
        assert!(queue.is_empty());
    }
}
