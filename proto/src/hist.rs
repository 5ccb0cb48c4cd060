//! `gradtel.v1.LogHistogram` with a hand-written decoder (the generated code is told to use this
//! type through `extern_path`, so every message that holds a histogram does).
//!
//! Why: a report carries one histogram per tensor, each two packed `uint64` fields of hundreds
//! of varints. prost's generic decoder pushes them one at a time into a `Vec` it cannot size,
//! and the collector spent ~6 % of its CPU in `realloc` growing those vectors. Each varint ends
//! in the one byte whose top bit is clear, so counting those bytes gives the exact number of
//! values: this decoder reserves once, then decodes. The encoder's length of a packed field
//! takes one min/max pass when all its varints have the same length (see `varints_len`).
//!
//! Bucket indices go on the wire as differences (field `index_delta`, since minor 5): a
//! gradient's non-empty buckets are mostly neighbours, so each takes one byte instead of the
//! three an absolute index near 2^17 takes. A report's histogram was two thirds of its bytes;
//! the differences take a fifth off a small report, and decoding one-byte varints is the
//! decoder's fast path. Absolute indices (field `index`, what agents before minor 5 send) are
//! still read: each value of `index_delta` is added to the index before it, whichever field
//! that came from (wrapping, so any sequence of indices goes through exactly; a decreasing one
//! is then refused by the histogram's own checks, not here).
//!
//! Guarantee: the wire format is exactly protobuf's (packed and unpacked repeated encodings are
//! both accepted, unknown fields skipped); `tests` check it against prost's derived decoder.

use bytes::{Buf, BufMut};
use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len,
    skip_field, uint32, uint64,
};

/// Histogram of `|x|` over finite non-zero values, in log-spaced buckets (see common.proto).
#[derive(Clone, PartialEq, Eq, Default, Debug)]
pub struct LogHistogram {
    /// Mantissa bits kept in the index (1..=16).
    pub precision_bits: u32,
    /// Bucket indices, strictly increasing (on the wire as `index_delta`).
    pub index: Vec<u64>,
    /// Counts, same length as `index`, each > 0.
    pub count: Vec<u64>,
}

impl prost::Message for LogHistogram {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.precision_bits != 0 {
            uint32::encode(1, &self.precision_bits, buf);
        }
        encode_u64s(3, &self.count, buf);
        encode_u64s_with(INDEX_DELTA, self.index.len(), || deltas(&self.index), buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = match tag {
            1 => uint32::merge(wire_type, &mut self.precision_bits, buf, ctx),
            2 => merge_u64s(wire_type, &mut self.index, buf, ctx),
            3 => merge_u64s(wire_type, &mut self.count, buf, ctx),
            INDEX_DELTA => {
                let before = self.index.len();
                let field = merge_u64s(wire_type, &mut self.index, buf, ctx);
                let mut prev = before.checked_sub(1).map_or(0, |i| self.index[i]);
                for v in &mut self.index[before..] {
                    prev = prev.wrapping_add(*v);
                    *v = prev;
                }
                field
            }
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        in_field(
            field,
            "LogHistogram",
            &["precision_bits", "index", "count", "index_delta"],
            tag,
        )
    }

    fn encoded_len(&self) -> usize {
        (if self.precision_bits != 0 {
            uint32::encoded_len(1, &self.precision_bits)
        } else {
            0
        }) + encoded_len_u64s(3, &self.count)
            + encoded_len_u64s_with(INDEX_DELTA, self.index.len(), || deltas(&self.index))
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Field number of `index_delta`.
const INDEX_DELTA: u32 = 4;

/// `index` as on the wire: the first value, then each value less the one before (wrapping).
fn deltas(index: &[u64]) -> impl Iterator<Item = u64> + Clone + '_ {
    index
        .first()
        .copied()
        .into_iter()
        .chain(index.windows(2).map(|w| w[1].wrapping_sub(w[0])))
}

/// A field's decoding error, with the message and field name pushed onto its stack as prost's
/// generated code does (`tag` is a known field's, 1-based, in `fields` order).
pub(crate) fn in_field(
    field: Result<(), DecodeError>,
    message: &'static str,
    fields: &[&'static str],
    tag: u32,
) -> Result<(), DecodeError> {
    field.map_err(|mut e| {
        e.push(message, fields[(tag - 1) as usize]);
        e
    })
}

/// Bytes of the varints of `values`. prost asks a nested message for its length once per
/// level of nesting (a report's histogram 4–5 times per encode), and summing a varint length per
/// value was ~15 % of the agent's CPU. Bucket indices are close together and counts mostly
/// small, so usually every value has the same varint length: one min/max pass (which
/// vectorises) settles it. Otherwise a value takes `1 + #{k ≥ 1 : v ≥ 2^7k}` bytes, and only
/// the `k` below the largest value's length can count: one vectorised counting pass per such
/// `k` (counts of a gradient histogram span one or two), where a varint length per value
/// (a leading-zero count each, scalar) had been ~6 % of the agent's CPU on a DDP run (a
/// 1,200-bucket histogram's length: 3.2–3.7 µs before, 1.8–2.5 µs after, on the 2-core VM).
fn varints_len(values: impl Iterator<Item = u64> + Clone) -> usize {
    let (n, lo, hi) = values.clone().fold((0, u64::MAX, 0), |(n, lo, hi), v| {
        (n + 1, lo.min(v), hi.max(v))
    });
    if n == 0 {
        return 0;
    }
    let (short, long) = (encoded_len_varint(lo), encoded_len_varint(hi));
    // Every value has at least `short` bytes; each k in [short, long) adds one to those with
    // v ≥ 2^7k.
    n * short
        + (short..long)
            .map(|k| values.clone().filter(|&v| v >> (7 * k) != 0).count())
            .sum::<usize>()
}

/// `uint64::encoded_len_packed` through [`varints_len`].
pub(crate) fn encoded_len_u64s(tag: u32, values: &[u64]) -> usize {
    encoded_len_u64s_with(tag, values.len(), || values.iter().copied())
}

/// [`encoded_len_u64s`] of the `n` values `values()` gives.
fn encoded_len_u64s_with<I: Iterator<Item = u64> + Clone>(
    tag: u32,
    n: usize,
    values: impl Fn() -> I,
) -> usize {
    if n == 0 {
        return 0;
    }
    let len = varints_len(values());
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// `uint64::encode_packed` through [`varints_len`].
pub(crate) fn encode_u64s(tag: u32, values: &[u64], buf: &mut impl BufMut) {
    encode_u64s_with(tag, values.len(), || values.iter().copied(), buf);
}

/// [`encode_u64s`] of the `n` values `values()` gives.
fn encode_u64s_with<I: Iterator<Item = u64> + Clone>(
    tag: u32,
    n: usize,
    values: impl Fn() -> I,
    buf: &mut impl BufMut,
) {
    if n == 0 {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(varints_len(values()) as u64, buf);
    for v in values() {
        encode_varint(v, buf);
    }
}

/// Every varint of a packed run, appended to `values`; false at a malformed one (cut off by
/// the end of the run, longer than 10 bytes, or overflowing 64 bits — what prost refuses). A
/// plain loop over the slice: prost's `decode_varint` goes through `Buf` per value, which was
/// most of the collector's decoding time on reports with large histograms. Most of a
/// histogram's varints are one byte (bucket index differences of 1, counts below 128), so
/// eight bytes are tested at once: those before the first with its high bit set are each a
/// whole varint, appended by a widening copy that vectorises; in cache, 0.71 → 0.37 ns per varint
/// when one in sixteen takes two bytes (a throwaway probe on the 2-core VM).
fn decode_run(run: &[u8], values: &mut Vec<u64>) -> bool {
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while i < run.len() {
        if let Some(chunk) = run.get(i..i + 8)
            && let Ok(bytes) = <[u8; 8]>::try_from(chunk)
        {
            let high = u64::from_le_bytes(bytes) & HIGH;
            let single = if high == 0 {
                8
            } else {
                (high.trailing_zeros() / 8) as usize
            };
            if single == 8 {
                values.extend(bytes.map(u64::from));
                i += 8;
                continue;
            }
            values.extend(chunk[..single].iter().map(|&b| u64::from(b)));
            i += single;
        }
        let Some(v) = decode_one(run, &mut i) else {
            return false;
        };
        values.push(v);
    }
    true
}

/// The varint at `run[*i..]`, moving `*i` past it; `None` if malformed.
#[inline]
fn decode_one(run: &[u8], i: &mut usize) -> Option<u64> {
    let b0 = *run.get(*i)?;
    *i += 1;
    if b0 < 0x80 {
        return Some(u64::from(b0));
    }
    let mut v = u64::from(b0 & 0x7f);
    let mut shift = 7;
    loop {
        let b = *run.get(*i)?;
        *i += 1;
        if shift == 63 && b > 1 {
            return None;
        }
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
        shift += 7;
        if shift > 63 {
            return None;
        }
    }
}

/// One occurrence of a repeated `uint64` field: a packed run (reserved once, then decoded)
/// or a single unpacked value.
pub(crate) fn merge_u64s(
    wire_type: WireType,
    values: &mut Vec<u64>,
    buf: &mut impl Buf,
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    if wire_type == WireType::LengthDelimited {
        // Read the length from a copy of the current chunk: when the whole run lies in it (as
        // it does for the contiguous buffers tonic decodes from), take the fast path.
        let mut peek = buf.chunk();
        let had = peek.len();
        if let Ok(len) = decode_varint(&mut peek)
            && let Ok(len) = usize::try_from(len)
            && peek.len() >= len
        {
            let run = &peek[..len];
            let before = values.len();
            crate::recycle::reserve(
                &crate::recycle::U64,
                values,
                run.iter().filter(|&&b| b < 0x80).count(),
            );
            if decode_run(run, values) {
                buf.advance(had - peek.len() + len);
                return Ok(());
            }
            // A malformed varint: prost's decoder below reads the run again and says why.
            values.truncate(before);
        }
    }
    // Unpacked values, or a run split across chunks or truncated: prost's own decoder (which
    // also reports the errors).
    uint64::merge_repeated(wire_type, values, buf, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counting::allocations;
    use prost::Message;

    /// What prost generates for the same message, as the reference.
    #[derive(Clone, PartialEq, prost::Message)]
    struct Derived {
        #[prost(uint32, tag = "1")]
        precision_bits: u32,
        #[prost(uint64, repeated, tag = "2")]
        index: Vec<u64>,
        #[prost(uint64, repeated, tag = "3")]
        count: Vec<u64>,
        #[prost(uint64, repeated, tag = "4")]
        index_delta: Vec<u64>,
    }

    /// The same fields, unpacked on the wire (older or foreign encoders may send that).
    #[derive(Clone, PartialEq, prost::Message)]
    struct Unpacked {
        #[prost(uint32, tag = "1")]
        precision_bits: u32,
        #[prost(uint64, repeated, packed = "false", tag = "2")]
        index: Vec<u64>,
        #[prost(uint64, repeated, packed = "false", tag = "3")]
        count: Vec<u64>,
        #[prost(string, tag = "9")]
        unknown: String,
    }

    fn cases() -> Vec<(u32, Vec<u64>, Vec<u64>)> {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        let mut out = vec![(0, vec![], vec![]), (7, vec![0], vec![u64::MAX])];
        for n in [1usize, 2, 127, 128, 129, 1000] {
            let index: Vec<u64> = (0..n).map(|_| next() >> (next() % 64)).collect();
            let count: Vec<u64> = (0..n).map(|_| next() >> (next() % 64)).collect();
            out.push(((next() % 17) as u32, index, count));
            // What gradients give: neighbouring bucket indices (one varint length, and two at
            // a 2^21 boundary) and small counts.
            for base in [125_000u64, (1 << 21) - 600] {
                let index: Vec<u64> = (0..n as u64).map(|i| base + i).collect();
                let count: Vec<u64> = (0..n).map(|_| 1 + next() % 127).collect();
                out.push((7, index, count));
            }
        }
        out
    }

    #[test]
    fn varint_bytes_are_the_per_value_sum() {
        for (_, index, count) in cases() {
            for values in [index, count] {
                let sum: usize = values.iter().map(|&v| encoded_len_varint(v)).sum();
                assert_eq!(varints_len(values.iter().copied()), sum);
            }
        }
        // Every boundary: 2^7k − 1 and 2^7k side by side, with and without small values.
        for k in 1..10u32 {
            let edge = 1u64 << (7 * k);
            for values in [
                vec![edge - 1, edge],
                vec![0, edge],
                vec![edge - 1, 1, u64::MAX],
            ] {
                let sum: usize = values.iter().map(|&v| encoded_len_varint(v)).sum();
                assert_eq!(varints_len(values.iter().copied()), sum, "{values:?}");
            }
        }
    }

    /// Runs of varints of every length from 1 to 10 bytes, canonical and padded with
    /// redundant zero groups, in random order, against prost's `decode_varint` one by one;
    /// each run also cut short at every byte of its last 12.
    #[test]
    fn runs_decode_as_prost_decodes_each_varint() {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut next = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..400 {
            let n = (next() % 60) as usize;
            // Half the runs mostly one-byte varints (as histograms are), in stretches longer
            // and shorter than the eight bytes tested at once.
            let small = next() % 2 == 0;
            let mut run = Vec::new();
            for _ in 0..n {
                let v = if small && next() % 8 != 0 {
                    next() % 128
                } else {
                    next() >> (next() % 64)
                };
                let start = run.len();
                encode_varint(v, &mut run);
                // An overlong encoding of the same value, as far as 10 bytes allow.
                if next() % 4 == 0 && run.len() - start < 10 {
                    let last = run.len() - 1;
                    run[last] |= 0x80;
                    let pad = (next() % (10 - (run.len() - start)) as u64) as usize;
                    run.extend(std::iter::repeat_n(0x80u8, pad));
                    run.push(0);
                }
            }
            for cut in (run.len().saturating_sub(12)..=run.len()).rev() {
                let part = &run[..cut];
                let mut reference = Vec::new();
                let mut rest = part;
                let ok = loop {
                    if rest.is_empty() {
                        break true;
                    }
                    match decode_varint(&mut rest) {
                        Ok(v) => reference.push(v),
                        Err(_) => break false,
                    }
                };
                let mut mine = Vec::new();
                assert_eq!(decode_run(part, &mut mine), ok, "{part:?}");
                if ok {
                    assert_eq!(mine, reference, "{part:?}");
                }
            }
        }
    }

    #[test]
    fn decodes_and_encodes_exactly_as_prost_derives() {
        for (p, index, count) in cases() {
            // The differences computed the plain way, as the reference for `index_delta`.
            let mut prev = 0u64;
            let index_delta: Vec<u64> = index
                .iter()
                .map(|&v| (v.wrapping_sub(prev), prev = v).0)
                .collect();
            let d = Derived {
                precision_bits: p,
                index: vec![],
                count: count.clone(),
                index_delta,
            };
            let mine = LogHistogram {
                precision_bits: p,
                index: index.clone(),
                count: count.clone(),
            };
            let wire = d.encode_to_vec();
            assert_eq!(mine.encode_to_vec(), wire);
            assert_eq!(mine.encoded_len(), wire.len());
            let (back, made) = allocations(|| LogHistogram::decode(wire.as_slice()));
            assert_eq!(back.expect("decode"), mine);
            assert!(made <= 2, "{made} allocations for 2 fields");
            // What agents before minor 5 send: absolute indices.
            let old = Derived {
                precision_bits: p,
                index,
                count,
                index_delta: vec![],
            };
            let back = LogHistogram::decode(old.encode_to_vec().as_slice()).expect("decode");
            assert_eq!(back, mine);
        }
    }

    #[test]
    fn unpacked_values_and_unknown_fields_are_accepted() {
        for (p, index, count) in cases() {
            let u = Unpacked {
                precision_bits: p,
                index: index.clone(),
                count: count.clone(),
                unknown: "skip me".into(),
            };
            let back = LogHistogram::decode(u.encode_to_vec().as_slice()).expect("decode");
            assert_eq!(
                (back.precision_bits, back.index, back.count),
                (p, index, count)
            );
        }
    }

    #[test]
    fn a_packed_field_split_across_chunks_decodes_the_same() {
        let (p, index, count) = cases().pop().expect("a case");
        let wire = LogHistogram {
            precision_bits: p,
            index: index.clone(),
            count: count.clone(),
        }
        .encode_to_vec();
        for cut in [wire.len() / 3, wire.len() - wire.len() / 3] {
            let (a, b) = wire.split_at(cut);
            let chained = bytes::Buf::chain(a, b);
            let back = LogHistogram::decode(chained).expect("decode");
            assert_eq!((&back.index, &back.count), (&index, &count), "cut at {cut}");
        }
    }

    /// Each `index_delta` value continues from the index before it, whichever field gave that
    /// one; wrapping, so even a decreasing sequence goes through exactly.
    #[test]
    fn differences_continue_from_the_index_before_them() {
        let wire = |fields: &[(u32, &[u64])]| {
            let mut b = Vec::new();
            for &(tag, values) in fields {
                encode_u64s(tag, values, &mut b);
            }
            b
        };
        let h = |b: Vec<u8>| LogHistogram::decode(b.as_slice()).expect("decode").index;
        assert_eq!(
            h(wire(&[(4, &[100, 1, 2]), (4, &[5])])),
            vec![100, 101, 103, 108]
        );
        assert_eq!(
            h(wire(&[(2, &[100, 200]), (4, &[1, 2])])),
            vec![100, 200, 201, 203]
        );
        assert_eq!(h(wire(&[(4, &[7]), (2, &[3]), (4, &[1])])), vec![7, 3, 4]);
        let down = LogHistogram {
            precision_bits: 7,
            index: vec![u64::MAX, 5, 0, u64::MAX - 1],
            count: vec![1; 4],
        };
        assert_eq!(
            LogHistogram::decode(down.encode_to_vec().as_slice()).expect("decode"),
            down
        );
    }

    #[test]
    fn truncated_and_malformed_input_is_an_error_not_a_panic() {
        let (p, index, count) = cases().pop().expect("a case");
        let wire = LogHistogram {
            precision_bits: p,
            index,
            count,
        }
        .encode_to_vec();
        // Inside a key, a length, or a packed run (a cut between fields is a valid message).
        for cut in [1, 3, wire.len() / 3, wire.len() * 3 / 4, wire.len() - 1] {
            let got = LogHistogram::decode(&wire[..cut]);
            assert!(got.is_err(), "cut at {cut} of {}: {got:?}", wire.len());
        }
        // A packed run whose last varint never ends.
        assert!(LogHistogram::decode([0x12u8, 2, 0x80, 0x80].as_slice()).is_err());
        // A length beyond the buffer.
        assert!(LogHistogram::decode([0x12u8, 100, 1].as_slice()).is_err());
        // Varints too long or overflowing 64 bits, inside a packed run: prost's derived decoder
        // is the reference for which are errors.
        let max = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
        let over = [0xffu8, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02];
        let long = [
            0x80u8, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00,
        ];
        for run in [&max[..], &over[..], &long[..]] {
            let mut wire = vec![0x12u8, run.len() as u8];
            wire.extend_from_slice(run);
            wire.extend_from_slice(&[0x12, 1, 5]);
            let mine = LogHistogram::decode(wire.as_slice()).map(|h| h.index);
            let reference = Derived::decode(wire.as_slice()).map(|h| h.index);
            assert_eq!(mine.is_ok(), reference.is_ok(), "{run:?}");
            assert_eq!(mine.ok(), reference.ok());
        }
        assert_eq!(
            LogHistogram::decode(
                [0x12u8, 10]
                    .iter()
                    .chain(&max)
                    .copied()
                    .collect::<Vec<_>>()
                    .as_slice()
            )
            .expect("u64::MAX")
            .index,
            vec![u64::MAX]
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Edited encodings of every case: never a panic, the same acceptance as prost's
        /// derived decoder, and the same values (indices from either field, as the module
        /// header says, whenever only one of them is on the wire).
        #[test]
        fn edited_input_decodes_as_prost_derives(case in 0usize..1000, edits in crate::mutate::edits()) {
            let all = cases();
            let (p, index, count) = all[case % all.len()].clone();
            let wire = LogHistogram { precision_bits: p, index, count }.encode_to_vec();
            let edited = crate::mutate::apply(&wire, &edits);
            let mine = LogHistogram::decode(edited.as_slice());
            let reference = Derived::decode(edited.as_slice());
            proptest::prop_assert_eq!(mine.is_ok(), reference.is_ok(), "{:?}", edits);
            if let (Ok(mine), Ok(r)) = (mine, reference) {
                proptest::prop_assert_eq!(mine.precision_bits, r.precision_bits);
                proptest::prop_assert_eq!(&mine.count, &r.count);
                if r.index.is_empty() || r.index_delta.is_empty() {
                    let mut prev = 0u64;
                    let want: Vec<u64> = r.index.iter().copied().chain(r.index_delta.iter().map(|&d| {
                        prev = prev.wrapping_add(d);
                        prev
                    })).collect();
                    proptest::prop_assert_eq!(mine.index, want);
                }
            }
        }
    }
}
