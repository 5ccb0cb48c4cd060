//! Byte-level edits of encoded messages, for the differential fuzz tests of the hand-written
//! decoders ([`crate::hist`], [`crate::packed`]) and of the collector's report decoding: on
//! any edited input a decoder must not panic, and must accept and reject exactly what prost's
//! derived decoder does, with the same values. Built for tests only (this crate's, and with
//! the `testing` feature, its dependents').

/// One edit of an encoded message; positions are taken modulo its length (an edit of an
/// empty message inserts or does nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// XOR the byte with a non-zero mask.
    Flip(usize, u8),
    /// Replace the byte.
    Set(usize, u8),
    /// Keep the bytes before the position.
    Cut(usize),
    /// Insert a byte before the position.
    Insert(usize, u8),
    /// Remove the byte.
    Delete(usize),
    /// Overwrite `len` bytes from the position with a varint of that many bytes: `len − 1`
    /// bytes 0xff, then the given byte with its high bit clear (cut short at the end of the
    /// message). Long varints, and with ten bytes, ones that overflow 64 bits.
    Varint(usize, usize, u8),
}

impl Edit {
    /// The edit named by `kind` (mod 6), for a property test's tuple of three integers.
    /// Replaced and inserted bytes lean to those that steer a decoder: a varint's continuation
    /// bit, the largest length byte, and small field keys.
    pub fn from_parts(kind: u8, at: usize, byte: u8) -> Self {
        let byte = match byte % 8 {
            0 => 0x80 | byte,
            1 => 0xff,
            2 => byte & 0x7f,
            _ => byte,
        };
        match kind % 6 {
            0 => Edit::Flip(at, byte.max(1)),
            1 => Edit::Set(at, byte),
            2 => Edit::Cut(at),
            3 => Edit::Insert(at, byte),
            4 => Edit::Delete(at),
            _ => Edit::Varint(at, 1 + usize::from(byte % 11), byte >> 4),
        }
    }
}

/// One to five edits at positions below 2^16, for this crate's property tests.
#[cfg(test)]
pub(crate) fn edits() -> impl proptest::strategy::Strategy<Value = Vec<Edit>> {
    use proptest::strategy::Strategy;
    proptest::collection::vec((0u8..6, 0usize..1 << 16, 0u8..=255), 1..6).prop_map(|v| {
        v.into_iter()
            .map(|(k, at, b)| Edit::from_parts(k, at, b))
            .collect()
    })
}

/// `wire` with the edits applied in order.
pub fn apply(wire: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut w = wire.to_vec();
    for &e in edits {
        let n = w.len();
        match e {
            Edit::Insert(at, b) => w.insert(at % (n + 1), b),
            _ if n == 0 => {}
            Edit::Flip(at, m) => w[at % n] ^= m,
            Edit::Set(at, b) => w[at % n] = b,
            Edit::Cut(at) => w.truncate(at % n),
            Edit::Delete(at) => {
                w.remove(at % n);
            }
            Edit::Varint(at, len, last) => {
                let at = at % n;
                let end = (at + len).min(n);
                w[at..end].fill(0xff);
                if at + len <= n {
                    w[end - 1] = last & 0x7f;
                }
            }
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_do_what_they_say() {
        let w = [1u8, 2, 3];
        assert_eq!(apply(&w, &[Edit::Flip(4, 0x10)]), [1, 0x12, 3]);
        assert_eq!(apply(&w, &[Edit::Set(0, 9)]), [9, 2, 3]);
        assert_eq!(apply(&w, &[Edit::Cut(2)]), [1, 2]);
        assert_eq!(apply(&w, &[Edit::Insert(3, 7)]), [1, 2, 3, 7]);
        assert_eq!(apply(&w, &[Edit::Delete(1)]), [1, 3]);
        assert_eq!(apply(&[], &[Edit::Delete(1), Edit::Insert(5, 4)]), [4]);
        assert_eq!(apply(&w, &[Edit::Varint(1, 5, 9)]), [1, 0xff, 0xff]);
        assert_eq!(apply(&w, &[Edit::Varint(0, 2, 0x85)]), [0xff, 5, 3]);
        assert!(matches!(Edit::from_parts(0, 1, 0), Edit::Flip(1, m) if m != 0));
    }
}
