//! Client-visible histories and a linearizability checker for the
//! key-value store.
//!
//! Linearizability is local: a history of single-key operations is
//! linearizable exactly when each key's sub-history is. Each key is checked
//! with the Wing & Gong search, with Lowe's memoization of visited
//! (linearized set, value) configurations: repeatedly pick an operation that
//! may go next (invoked before every pending operation's response), apply it
//! to a model register, and backtrack when its recorded result disagrees.

use std::collections::{BTreeMap, HashSet};
use std::fmt;

use crate::kv::{step, Bytes, Op, OpResult};

/// One operation as the client saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// Which client (a client has one operation in flight at a time).
    pub client: u64,
    /// What it asked.
    pub op: Op,
    /// When it asked.
    pub invoke: u64,
    /// When the answer arrived and what it was; `None` when it never did
    /// (the operation may or may not have taken effect).
    pub response: Option<(u64, OpResult)>,
}

/// A history that has no linearization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotLinearizable {
    /// The key whose operations cannot be ordered.
    pub key: Bytes,
    /// Its operations, in invocation order.
    pub operations: Vec<Operation>,
}

impl fmt::Display for NotLinearizable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "the operations on key {} have no linearization ({} operations):",
            crate::kv::Show(&self.key),
            self.operations.len()
        )?;
        for o in self.operations.iter().take(40) {
            match &o.response {
                Some((t, r)) => writeln!(
                    f,
                    "  client {:>4} [{:>10} .. {:>10}] {} -> {}",
                    o.client, o.invoke, t, o.op, r
                )?,
                None => writeln!(
                    f,
                    "  client {:>4} [{:>10} ..        ...] {} -> (no reply)",
                    o.client, o.invoke, o.op
                )?,
            }
        }
        if self.operations.len() > 40 {
            writeln!(f, "  ... {} more", self.operations.len() - 40)?;
        }
        Ok(())
    }
}

impl std::error::Error for NotLinearizable {}

/// What [`check`] looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Operations checked.
    pub operations: usize,
    /// Distinct keys.
    pub keys: usize,
}

/// Checks that `history` is linearizable with respect to the key-value store.
pub fn check(history: &[Operation]) -> Result<Checked, NotLinearizable> {
    let mut by_key: BTreeMap<&[u8], Vec<&Operation>> = BTreeMap::new();
    for o in history {
        by_key.entry(o.op.key()).or_default().push(o);
    }
    let keys = by_key.len();
    for (key, ops) in by_key {
        if !check_key(&ops) {
            let mut operations: Vec<Operation> = ops.into_iter().cloned().collect();
            operations.sort_by_key(|o| o.invoke);
            return Err(NotLinearizable {
                key: key.to_vec(),
                operations,
            });
        }
    }
    Ok(Checked {
        operations: history.len(),
        keys,
    })
}

/// Wing & Gong search over one key's operations.
fn check_key(ops: &[&Operation]) -> bool {
    let mut ops: Vec<&Operation> = ops.to_vec();
    ops.sort_by_key(|o| o.invoke);
    let n = ops.len();
    let response_time = |o: &Operation| o.response.as_ref().map_or(u64::MAX, |(t, _)| *t);
    let must_linearize = ops.iter().filter(|o| o.response.is_some()).count();

    let mut done = vec![0u64; n.div_ceil(64)];
    let is_done = |done: &[u64], i: usize| done[i / 64] & (1 << (i % 64)) != 0;
    let flip = |done: &mut [u64], i: usize| done[i / 64] ^= 1 << (i % 64);

    let mut value: Option<Bytes> = None;
    // (op index, value before it) for every linearized operation, in order.
    let mut stack: Vec<(usize, Option<Bytes>)> = Vec::new();
    let mut completed_done = 0;
    let mut seen: HashSet<(Vec<u64>, Option<Bytes>)> = HashSet::new();
    let mut resume_at = 0;

    loop {
        if completed_done == must_linearize {
            return true;
        }
        // Every remaining operation must come after the earliest response
        // among them, so only operations invoked before it may go next.
        let horizon = (0..n)
            .filter(|&i| !is_done(&done, i))
            .map(|i| response_time(ops[i]))
            .min()
            .unwrap_or(u64::MAX);
        let mut chosen = None;
        for (i, o) in ops.iter().enumerate().skip(resume_at) {
            if o.invoke > horizon {
                break;
            }
            if is_done(&done, i) {
                continue;
            }
            let mut next = value.clone();
            let result = step(&mut next, &o.op);
            if o.response.as_ref().is_some_and(|(_, r)| *r != result) {
                continue;
            }
            flip(&mut done, i);
            if seen.insert((done.clone(), next.clone())) {
                chosen = Some((i, next));
                break;
            }
            flip(&mut done, i);
        }
        match chosen {
            Some((i, next)) => {
                stack.push((i, std::mem::replace(&mut value, next)));
                completed_done += usize::from(ops[i].response.is_some());
                resume_at = 0;
            }
            None => {
                let Some((i, previous)) = stack.pop() else {
                    return false;
                };
                flip(&mut done, i);
                value = previous;
                completed_done -= usize::from(ops[i].response.is_some());
                resume_at = i + 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        s.as_bytes().to_vec()
    }
    fn op(client: u64, op: Op, invoke: u64, response: u64, result: OpResult) -> Operation {
        Operation {
            client,
            op,
            invoke,
            response: Some((response, result)),
        }
    }
    fn put(k: &str, v: &str) -> Op {
        Op::Put {
            key: b(k),
            value: b(v),
        }
    }
    fn get(k: &str) -> Op {
        Op::Get { key: b(k) }
    }
    fn read(v: Option<&str>) -> OpResult {
        OpResult::Value(v.map(b))
    }
    fn cas(k: &str, expected: Option<&str>, new: &str) -> Op {
        Op::Cas {
            key: b(k),
            expected: expected.map(b),
            new: b(new),
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            op(1, put("x", "1"), 0, 10, OpResult::Written),
            op(2, get("x"), 20, 30, read(Some("1"))),
            op(
                1,
                cas("x", Some("1"), "2"),
                40,
                50,
                OpResult::Cas { swapped: true },
            ),
            op(2, get("x"), 60, 70, read(Some("2"))),
            op(3, get("y"), 0, 5, read(None)),
        ];
        assert_eq!(
            check(&h),
            Ok(Checked {
                operations: 5,
                keys: 2
            })
        );
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        for seen in [None, Some("1")] {
            let h = vec![
                op(1, put("x", "1"), 0, 100, OpResult::Written),
                op(2, get("x"), 10, 20, read(seen)),
            ];
            assert!(check(&h).is_ok(), "{seen:?}");
        }
    }

    #[test]
    fn stale_read_is_rejected() {
        let h = vec![
            op(1, put("x", "1"), 0, 10, OpResult::Written),
            op(2, get("x"), 20, 30, read(None)),
        ];
        let err = check(&h).unwrap_err();
        assert_eq!(err.key, b("x"));
        assert!(err.to_string().contains("no linearization"));
    }

    #[test]
    fn lost_acknowledged_write_is_rejected() {
        let h = vec![
            op(1, put("x", "1"), 0, 10, OpResult::Written),
            op(1, put("x", "2"), 20, 30, OpResult::Written),
            op(2, get("x"), 40, 50, read(Some("1"))),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn two_successful_cas_from_the_same_value_are_rejected() {
        let h = vec![
            op(
                1,
                cas("x", None, "a"),
                0,
                100,
                OpResult::Cas { swapped: true },
            ),
            op(
                2,
                cas("x", None, "b"),
                0,
                100,
                OpResult::Cas { swapped: true },
            ),
        ];
        assert!(check(&h).is_err());
        // One of them failing is fine, whichever it is.
        let h = vec![
            op(
                1,
                cas("x", None, "a"),
                0,
                100,
                OpResult::Cas { swapped: false },
            ),
            op(
                2,
                cas("x", None, "b"),
                0,
                100,
                OpResult::Cas { swapped: true },
            ),
            op(3, get("x"), 200, 210, read(Some("b"))),
        ];
        assert!(check(&h).is_ok());
    }

    #[test]
    fn reads_must_agree_on_one_order() {
        // Two writes overlap; two readers see them in opposite orders.
        let h = vec![
            op(1, put("x", "1"), 0, 100, OpResult::Written),
            op(2, put("x", "2"), 0, 100, OpResult::Written),
            op(3, get("x"), 10, 20, read(Some("1"))),
            op(3, get("x"), 30, 40, read(Some("2"))),
            op(4, get("x"), 10, 20, read(Some("2"))),
            op(4, get("x"), 30, 40, read(Some("1"))),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn an_unanswered_write_may_or_may_not_have_happened() {
        let pending = Operation {
            client: 1,
            op: put("x", "1"),
            invoke: 0,
            response: None,
        };
        for seen in [None, Some("1")] {
            let h = vec![pending.clone(), op(2, get("x"), 50, 60, read(seen))];
            assert!(check(&h).is_ok());
        }
        // But once seen, it cannot be unseen.
        let h = vec![
            pending,
            op(2, get("x"), 50, 60, read(Some("1"))),
            op(2, get("x"), 70, 80, read(None)),
        ];
        assert!(check(&h).is_err());
    }

    #[test]
    fn long_concurrent_histories_check_quickly() {
        // 8 clients x 300 operations on one key, heavily overlapping.
        let mut h = Vec::new();
        let mut value: Option<String> = None;
        let mut t = 0;
        for round in 0..300u64 {
            for c in 0..8u64 {
                let o = if (round + c) % 3 == 0 {
                    let v = format!("{c}-{round}");
                    value = Some(v.clone());
                    op(c, put("x", &v), t, t + 50, OpResult::Written)
                } else {
                    op(c, get("x"), t, t + 50, read(value.as_deref()))
                };
                h.push(o);
                t += 5;
            }
        }
        assert!(check(&h).is_ok());
    }
}
