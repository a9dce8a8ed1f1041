//! The test message pattern: byte `j` of message `seq` is `(seq + j) % 251`.

/// The modulus of the pattern (a prime, so that a shifted or truncated copy
/// rarely looks valid).
pub const PATTERN_MODULUS: u64 = 251;

/// Builds message `seq` of `size` bytes: byte `j` equals `(seq + j) % 251`.
pub fn pattern(seq: u64, size: usize) -> Vec<u8> {
    let mut v = (seq % PATTERN_MODULUS) as u8;
    let mut out = Vec::with_capacity(size);
    for _ in 0..size {
        out.push(v);
        v = if v == (PATTERN_MODULUS - 1) as u8 {
            0
        } else {
            v + 1
        };
    }
    out
}

/// True when `payload` follows the pattern from its first byte on: every byte
/// `j` equals `(payload[0] + j) % 251`. Empty payloads are valid.
pub fn is_pattern(payload: &[u8]) -> bool {
    let Some(&first) = payload.first() else {
        return true;
    };
    if u64::from(first) >= PATTERN_MODULUS {
        return false;
    }
    let mut v = first;
    for &b in payload {
        if b != v {
            return false;
        }
        v = if v == (PATTERN_MODULUS - 1) as u8 {
            0
        } else {
            v + 1
        };
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_bytes() {
        let p = pattern(3, 600);
        for (j, b) in p.iter().enumerate() {
            assert_eq!(u64::from(*b), (3 + j as u64) % 251);
        }
        assert!(is_pattern(&p));
        assert!(is_pattern(&[]));
        assert!(is_pattern(&pattern(u64::MAX, 1000)));
        assert_eq!(pattern(251, 4), pattern(0, 4));
        let mut bad = p.clone();
        bad[517] ^= 1;
        assert!(!is_pattern(&bad));
        assert!(!is_pattern(&[251]));
        assert!(!is_pattern(&[250, 251]));
        assert!(is_pattern(&[250, 0, 1]));
    }
}
