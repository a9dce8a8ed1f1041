//! The replicated state machine: a key-value store with GET, PUT and
//! compare-and-swap. The same step function drives the replicas and the
//! linearizability checker's model, so both agree on what an operation does.

use std::collections::BTreeMap;
use std::fmt;

/// Longest key, in bytes.
pub const MAX_KEY_LEN: usize = 64;
/// Longest value, in bytes.
pub const MAX_VALUE_LEN: usize = 128;

/// A key or a value: raw bytes.
pub type Bytes = Vec<u8>;

/// One operation on the store. Every operation touches exactly one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    /// Read the value of `key` (absent keys read as `None`).
    Get {
        /// The key read.
        key: Bytes,
    },
    /// Set `key` to `value`.
    Put {
        /// The key written.
        key: Bytes,
        /// Its new value.
        value: Bytes,
    },
    /// Set `key` to `new` if its value is `expected` (`None`: the key is absent).
    Cas {
        /// The key.
        key: Bytes,
        /// The value the key must have for the swap to happen.
        expected: Option<Bytes>,
        /// The value written when it does.
        new: Bytes,
    },
}

impl Op {
    /// The key this operation touches.
    pub fn key(&self) -> &[u8] {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Cas { key, .. } => key,
        }
    }

    /// Whether the key and values are within [`MAX_KEY_LEN`] and [`MAX_VALUE_LEN`].
    pub fn within_limits(&self) -> bool {
        let value_ok = |v: &[u8]| v.len() <= MAX_VALUE_LEN;
        self.key().len() <= MAX_KEY_LEN
            && match self {
                Op::Get { .. } => true,
                Op::Put { value, .. } => value_ok(value),
                Op::Cas { expected, new, .. } => {
                    expected.as_deref().is_none_or(value_ok) && value_ok(new)
                }
            }
    }
}

/// What an operation returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// The value a GET read.
    Value(Option<Bytes>),
    /// A PUT took effect.
    Written,
    /// Whether a CAS swapped.
    Cas {
        /// True when the expected value matched and the new one was written.
        swapped: bool,
    },
}

/// Applies `op` to the value of its key. The one definition of the
/// semantics, used by [`KvStore`] and by the linearizability checker.
pub fn step(value: &mut Option<Bytes>, op: &Op) -> OpResult {
    match op {
        Op::Get { .. } => OpResult::Value(value.clone()),
        Op::Put { value: new, .. } => {
            *value = Some(new.clone());
            OpResult::Written
        }
        Op::Cas { expected, new, .. } => {
            let swapped = value == expected;
            if swapped {
                *value = Some(new.clone());
            }
            OpResult::Cas { swapped }
        }
    }
}

/// The store: an ordered map, so two stores compare equal exactly when
/// they hold the same contents.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Bytes, Bytes>,
}

impl KvStore {
    /// Executes one operation.
    pub fn apply(&mut self, op: &Op) -> OpResult {
        let mut value = self.map.get(op.key()).cloned();
        let result = step(&mut value, op);
        match value {
            Some(v) => {
                self.map.insert(op.key().to_vec(), v);
            }
            None => {
                self.map.remove(op.key());
            }
        }
        result
    }

    /// The value of `key`.
    #[cfg(test)]
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// Number of keys.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }
}

/// Bytes shown as text when printable, else as hex.
pub struct Show<'a>(pub &'a [u8]);

impl fmt::Display for Show<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|b| b.is_ascii_graphic()) {
            write!(f, "{}", String::from_utf8_lossy(self.0))
        } else {
            self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Get { key } => write!(f, "get({})", Show(key)),
            Op::Put { key, value } => write!(f, "put({}, {})", Show(key), Show(value)),
            Op::Cas { key, expected, new } => {
                let expected = expected
                    .as_deref()
                    .map_or("-".into(), |v| Show(v).to_string());
                write!(f, "cas({}, {expected} -> {})", Show(key), Show(new))
            }
        }
    }
}

impl fmt::Display for OpResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OpResult::Value(None) => write!(f, "-"),
            OpResult::Value(Some(v)) => write!(f, "{}", Show(v)),
            OpResult::Written => write!(f, "ok"),
            OpResult::Cas { swapped } => write!(f, "{}", if *swapped { "swapped" } else { "kept" }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        s.as_bytes().to_vec()
    }

    #[test]
    fn get_of_an_absent_key_reads_none() {
        let mut kv = KvStore::default();
        assert_eq!(kv.apply(&Op::Get { key: b("a") }), OpResult::Value(None));
    }

    #[test]
    fn put_then_get_reads_the_value() {
        let mut kv = KvStore::default();
        let put = Op::Put {
            key: b("a"),
            value: b("1"),
        };
        assert_eq!(kv.apply(&put), OpResult::Written);
        assert_eq!(
            kv.apply(&Op::Get { key: b("a") }),
            OpResult::Value(Some(b("1")))
        );
        assert_eq!(kv.len(), 1);
    }

    #[test]
    fn cas_swaps_only_on_the_expected_value() {
        let mut kv = KvStore::default();
        let cas = |expected: Option<&str>, new: &str| Op::Cas {
            key: b("k"),
            expected: expected.map(b),
            new: b(new),
        };
        assert_eq!(kv.apply(&cas(None, "x")), OpResult::Cas { swapped: true });
        assert_eq!(kv.apply(&cas(None, "y")), OpResult::Cas { swapped: false });
        assert_eq!(
            kv.apply(&cas(Some("y"), "z")),
            OpResult::Cas { swapped: false }
        );
        assert_eq!(
            kv.apply(&cas(Some("x"), "z")),
            OpResult::Cas { swapped: true }
        );
        assert_eq!(kv.get(b"k"), Some(&b("z")));
    }

    #[test]
    fn limits_are_checked() {
        let long = vec![b'v'; MAX_VALUE_LEN + 1];
        assert!(!Op::Put {
            key: b("k"),
            value: long.clone()
        }
        .within_limits());
        assert!(!Op::Get {
            key: vec![b'k'; MAX_KEY_LEN + 1]
        }
        .within_limits());
        assert!(!Op::Cas {
            key: b("k"),
            expected: Some(long),
            new: b("x")
        }
        .within_limits());
        assert!(Op::Put {
            key: b("k"),
            value: vec![0; MAX_VALUE_LEN]
        }
        .within_limits());
    }
}
