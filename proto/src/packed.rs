//! `gradtel.v1.TrackedValues`, `gradtel.v1.Projection` and `gradtel.v1.Summary` with
//! hand-written decoders (the generated code is told to use these types through `extern_path`,
//! as for [`crate::hist::LogHistogram`]).
//!
//! Why: every report carries a projection (256 doubles by default), per tensor 64 tracked
//! coordinates and values, and per tensor a summary whose top-k (64 doubles by default) is a
//! packed field too. prost's generic decoder pushes a packed run's values one at a time into a
//! `Vec` it never sizes, regrowing it about log2(n) times: those reallocations were ~2.6 % of
//! the collector's CPU on small reports for the first two, and another ~2.5 % for the top-k. A
//! fixed-width run's length gives its count, and a varint run's count is its number of end
//! bytes ([`crate::hist`]): these decoders reserve once and decode a run in one pass over its
//! bytes, leaving to prost's decoder what they do not take (unpacked values, a run split across
//! chunks, malformed input).
//!
//! Guarantee: the wire format is exactly protobuf's (packed and unpacked repeated encodings are
//! both accepted, unknown fields skipped); `tests` check it against prost's derived code.

use bytes::{Buf, BufMut};
use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, decode_varint, double, float, int32, message, skip_field, string,
    uint32, uint64,
};

use crate::hist::{encode_u64s, encoded_len_u64s, in_field, merge_u64s};

/// Values of a fixed width, little-endian on the wire.
trait Fixed: Sized {
    const WIDTH: usize;
    /// `bytes` holds exactly `WIDTH` bytes.
    fn from_le(bytes: &[u8]) -> Self;
}

impl Fixed for f64 {
    const WIDTH: usize = 8;
    fn from_le(bytes: &[u8]) -> Self {
        let mut b = [0; 8];
        b.copy_from_slice(bytes);
        f64::from_le_bytes(b)
    }
}

impl Fixed for f32 {
    const WIDTH: usize = 4;
    fn from_le(bytes: &[u8]) -> Self {
        let mut b = [0; 4];
        b.copy_from_slice(bytes);
        f32::from_le_bytes(b)
    }
}

/// One occurrence of a repeated fixed-width field: a packed run that lies whole in the current
/// chunk (as it does in the contiguous buffers tonic decodes from) is reserved once and copied
/// in one pass over its bytes; anything else (unpacked values, a run split across chunks or
/// malformed) goes to prost's decoder, `prost_merge`, which also reports the errors. prost
/// reads a packed run through `Buf` one value at a time: ~4 % of the collector's CPU on small
/// reports, for their projections and top-k lists.
fn merge_fixed<T: Fixed, B: Buf>(
    pool: &crate::recycle::Pool<T>,
    wire_type: WireType,
    values: &mut Vec<T>,
    buf: &mut B,
    ctx: DecodeContext,
    prost_merge: impl FnOnce(WireType, &mut Vec<T>, &mut B, DecodeContext) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    if wire_type == WireType::LengthDelimited {
        let mut peek = buf.chunk();
        let had = peek.len();
        if let Ok(len) = decode_varint(&mut peek)
            && let Ok(len) = usize::try_from(len)
            && peek.len() >= len
            && len % T::WIDTH == 0
        {
            crate::recycle::reserve(pool, values, len / T::WIDTH);
            values.extend(peek[..len].chunks_exact(T::WIDTH).map(T::from_le));
            buf.advance(had - peek.len() + len);
            return Ok(());
        }
    }
    prost_merge(wire_type, values, buf, ctx)
}

/// Tracked coordinates of one tensor (see collect.proto).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct TrackedValues {
    pub name: String,
    /// Flattened coordinates, strictly increasing; same length as `value`.
    pub index: Vec<u64>,
    /// The gradient values at those coordinates.
    pub value: Vec<f32>,
}

impl prost::Message for TrackedValues {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.name.is_empty() {
            string::encode(1, &self.name, buf);
        }
        encode_u64s(2, &self.index, buf);
        float::encode_packed(3, &self.value, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = match tag {
            1 => string::merge(wire_type, &mut self.name, buf, ctx),
            2 => merge_u64s(wire_type, &mut self.index, buf, ctx),
            3 => merge_fixed(
                &crate::recycle::F32,
                wire_type,
                &mut self.value,
                buf,
                ctx,
                float::merge_repeated,
            ),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        in_field(field, "TrackedValues", &["name", "index", "value"], tag)
    }

    fn encoded_len(&self) -> usize {
        (if self.name.is_empty() {
            0
        } else {
            string::encoded_len(1, &self.name)
        }) + encoded_len_u64s(2, &self.index)
            + float::encoded_len_packed(3, &self.value)
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// A shard's projection of its gradient (see collect.proto).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Projection {
    /// A [`projection::Kind`] as on the wire.
    pub kind: i32,
    /// Output dimension m (length of `values`).
    pub dim: u32,
    /// Seed of the shared projection matrix.
    pub seed: u64,
    pub values: Vec<f64>,
    /// Coordinates that went into `values`.
    pub coordinates: u64,
}

impl Projection {
    /// `kind` as the enum; an unknown value reads as the default, as prost's accessors do.
    pub fn kind(&self) -> projection::Kind {
        projection::Kind::try_from(self.kind).unwrap_or_default()
    }

    pub fn set_kind(&mut self, kind: projection::Kind) {
        self.kind = kind as i32;
    }
}

pub mod projection {
    /// How a projection's matrix is made (see collect.proto).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum Kind {
        Unspecified = 0,
        /// Sparse ±1 sketch with one hashed bucket and sign per coordinate (no longer produced).
        CountSketch = 1,
        /// Dense N(0, 1/m) entries generated from (seed, coordinate).
        Gaussian = 2,
        /// Sparse ±1 sketch over randomly shifted blocks of m coordinates.
        RotatedCountSketch = 3,
    }

    impl Kind {
        /// The name in the .proto file.
        pub fn as_str_name(&self) -> &'static str {
            match self {
                Kind::Unspecified => "KIND_UNSPECIFIED",
                Kind::CountSketch => "KIND_COUNT_SKETCH",
                Kind::Gaussian => "KIND_GAUSSIAN",
                Kind::RotatedCountSketch => "KIND_ROTATED_COUNT_SKETCH",
            }
        }
    }
}

impl prost::Message for Projection {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if self.kind != 0 {
            int32::encode(1, &self.kind, buf);
        }
        if self.dim != 0 {
            uint32::encode(2, &self.dim, buf);
        }
        if self.seed != 0 {
            uint64::encode(3, &self.seed, buf);
        }
        double::encode_packed(4, &self.values, buf);
        if self.coordinates != 0 {
            uint64::encode(5, &self.coordinates, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = match tag {
            1 => int32::merge(wire_type, &mut self.kind, buf, ctx),
            2 => uint32::merge(wire_type, &mut self.dim, buf, ctx),
            3 => uint64::merge(wire_type, &mut self.seed, buf, ctx),
            4 => merge_fixed(
                &crate::recycle::F64,
                wire_type,
                &mut self.values,
                buf,
                ctx,
                double::merge_repeated,
            ),
            5 => uint64::merge(wire_type, &mut self.coordinates, buf, ctx),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        in_field(
            field,
            "Projection",
            &["kind", "dim", "seed", "values", "coordinates"],
            tag,
        )
    }

    fn encoded_len(&self) -> usize {
        (if self.kind != 0 {
            int32::encoded_len(1, &self.kind)
        } else {
            0
        }) + (if self.dim != 0 {
            uint32::encoded_len(2, &self.dim)
        } else {
            0
        }) + (if self.seed != 0 {
            uint64::encoded_len(3, &self.seed)
        } else {
            0
        }) + double::encoded_len_packed(4, &self.values)
            + (if self.coordinates != 0 {
                uint64::encoded_len(5, &self.coordinates)
            } else {
                0
            })
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Moments, counts, histogram and top-k of one tensor's values (see common.proto).
#[derive(Clone, PartialEq, Default, Debug)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
    pub sum_sq: f64,
    pub max_abs: f64,
    pub nan_count: u64,
    pub pos_inf_count: u64,
    pub neg_inf_count: u64,
    pub pos_count: u64,
    pub neg_count: u64,
    pub zero_count: u64,
    pub abs_hist: Option<crate::hist::LogHistogram>,
    /// The largest |x| values, descending.
    pub top_abs: Vec<f64>,
    pub top_k_capacity: u32,
}

/// Summary's singular `uint64` fields, by tag.
fn summary_u64s(s: &Summary) -> [(u32, u64); 7] {
    [
        (1, s.count),
        (8, s.nan_count),
        (9, s.pos_inf_count),
        (10, s.neg_inf_count),
        (11, s.pos_count),
        (12, s.neg_count),
        (13, s.zero_count),
    ]
}

/// Summary's singular `double` fields, by tag.
fn summary_f64s(s: &Summary) -> [(u32, f64); 6] {
    [
        (2, s.mean),
        (3, s.m2),
        (4, s.m3),
        (5, s.m4),
        (6, s.sum_sq),
        (7, s.max_abs),
    ]
}

impl prost::Message for Summary {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        // In tag order, as prost derives it: count (1), the doubles (2..=7), the other
        // counts (8..=13).
        let (u, f) = (summary_u64s(self), summary_f64s(self));
        let (count, counts) = u.split_at(1);
        for (tag, v) in count {
            if *v != 0 {
                uint64::encode(*tag, v, buf);
            }
        }
        for (tag, v) in &f {
            if *v != 0.0 {
                double::encode(*tag, v, buf);
            }
        }
        for (tag, v) in counts {
            if *v != 0 {
                uint64::encode(*tag, v, buf);
            }
        }
        if let Some(h) = &self.abs_hist {
            message::encode(14, h, buf);
        }
        double::encode_packed(15, &self.top_abs, buf);
        if self.top_k_capacity != 0 {
            uint32::encode(16, &self.top_k_capacity, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = match tag {
            1 => uint64::merge(wire_type, &mut self.count, buf, ctx),
            2 => double::merge(wire_type, &mut self.mean, buf, ctx),
            3 => double::merge(wire_type, &mut self.m2, buf, ctx),
            4 => double::merge(wire_type, &mut self.m3, buf, ctx),
            5 => double::merge(wire_type, &mut self.m4, buf, ctx),
            6 => double::merge(wire_type, &mut self.sum_sq, buf, ctx),
            7 => double::merge(wire_type, &mut self.max_abs, buf, ctx),
            8 => uint64::merge(wire_type, &mut self.nan_count, buf, ctx),
            9 => uint64::merge(wire_type, &mut self.pos_inf_count, buf, ctx),
            10 => uint64::merge(wire_type, &mut self.neg_inf_count, buf, ctx),
            11 => uint64::merge(wire_type, &mut self.pos_count, buf, ctx),
            12 => uint64::merge(wire_type, &mut self.neg_count, buf, ctx),
            13 => uint64::merge(wire_type, &mut self.zero_count, buf, ctx),
            14 => message::merge(
                wire_type,
                self.abs_hist.get_or_insert_with(Default::default),
                buf,
                ctx,
            ),
            15 => merge_fixed(
                &crate::recycle::F64,
                wire_type,
                &mut self.top_abs,
                buf,
                ctx,
                double::merge_repeated,
            ),
            16 => uint32::merge(wire_type, &mut self.top_k_capacity, buf, ctx),
            _ => return skip_field(wire_type, tag, buf, ctx),
        };
        in_field(field, "Summary", &SUMMARY_FIELDS, tag)
    }

    fn encoded_len(&self) -> usize {
        let u: usize = summary_u64s(self)
            .iter()
            .filter(|(_, v)| *v != 0)
            .map(|(tag, v)| uint64::encoded_len(*tag, v))
            .sum();
        let f: usize = summary_f64s(self)
            .iter()
            .filter(|(_, v)| *v != 0.0)
            .map(|(tag, v)| double::encoded_len(*tag, v))
            .sum();
        u + f
            + self
                .abs_hist
                .as_ref()
                .map_or(0, |h| message::encoded_len(14, h))
            + double::encoded_len_packed(15, &self.top_abs)
            + (if self.top_k_capacity != 0 {
                uint32::encoded_len(16, &self.top_k_capacity)
            } else {
                0
            })
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Summary's field names, by tag (for decode errors).
const SUMMARY_FIELDS: [&str; 16] = [
    "count",
    "mean",
    "m2",
    "m3",
    "m4",
    "sum_sq",
    "max_abs",
    "nan_count",
    "pos_inf_count",
    "neg_inf_count",
    "pos_count",
    "neg_count",
    "zero_count",
    "abs_hist",
    "top_abs",
    "top_k_capacity",
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counting::allocations;
    use prost::Message;

    /// What prost generates for the same messages, as the references.
    #[derive(Clone, PartialEq, prost::Message)]
    struct DerivedTracked {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(uint64, repeated, tag = "2")]
        index: Vec<u64>,
        #[prost(float, repeated, tag = "3")]
        value: Vec<f32>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct DerivedProjection {
        #[prost(enumeration = "projection::Kind", tag = "1")]
        kind: i32,
        #[prost(uint32, tag = "2")]
        dim: u32,
        #[prost(uint64, tag = "3")]
        seed: u64,
        #[prost(double, repeated, tag = "4")]
        values: Vec<f64>,
        #[prost(uint64, tag = "5")]
        coordinates: u64,
    }

    /// The repeated fields unpacked on the wire, and a field the messages do not know.
    #[derive(Clone, PartialEq, prost::Message)]
    struct UnpackedTracked {
        #[prost(uint64, repeated, packed = "false", tag = "2")]
        index: Vec<u64>,
        #[prost(float, repeated, packed = "false", tag = "3")]
        value: Vec<f32>,
        #[prost(string, tag = "9")]
        unknown: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct UnpackedProjection {
        #[prost(double, repeated, packed = "false", tag = "4")]
        values: Vec<f64>,
        #[prost(string, tag = "9")]
        unknown: String,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct DerivedSummary {
        #[prost(uint64, tag = "1")]
        count: u64,
        #[prost(double, tag = "2")]
        mean: f64,
        #[prost(double, tag = "3")]
        m2: f64,
        #[prost(double, tag = "4")]
        m3: f64,
        #[prost(double, tag = "5")]
        m4: f64,
        #[prost(double, tag = "6")]
        sum_sq: f64,
        #[prost(double, tag = "7")]
        max_abs: f64,
        #[prost(uint64, tag = "8")]
        nan_count: u64,
        #[prost(uint64, tag = "9")]
        pos_inf_count: u64,
        #[prost(uint64, tag = "10")]
        neg_inf_count: u64,
        #[prost(uint64, tag = "11")]
        pos_count: u64,
        #[prost(uint64, tag = "12")]
        neg_count: u64,
        #[prost(uint64, tag = "13")]
        zero_count: u64,
        #[prost(message, optional, tag = "14")]
        abs_hist: Option<crate::hist::LogHistogram>,
        #[prost(double, repeated, tag = "15")]
        top_abs: Vec<f64>,
        #[prost(uint32, tag = "16")]
        top_k_capacity: u32,
    }

    impl From<&Summary> for DerivedSummary {
        fn from(s: &Summary) -> Self {
            DerivedSummary {
                count: s.count,
                mean: s.mean,
                m2: s.m2,
                m3: s.m3,
                m4: s.m4,
                sum_sq: s.sum_sq,
                max_abs: s.max_abs,
                nan_count: s.nan_count,
                pos_inf_count: s.pos_inf_count,
                neg_inf_count: s.neg_inf_count,
                pos_count: s.pos_count,
                neg_count: s.neg_count,
                zero_count: s.zero_count,
                abs_hist: s.abs_hist.clone(),
                top_abs: s.top_abs.clone(),
                top_k_capacity: s.top_k_capacity,
            }
        }
    }

    #[derive(Clone, PartialEq, prost::Message)]
    struct UnpackedSummary {
        #[prost(double, repeated, packed = "false", tag = "15")]
        top_abs: Vec<f64>,
        #[prost(string, tag = "99")]
        unknown: String,
    }

    /// Every field zero, each field alone non-zero (and −0.0 in a double, which prost leaves
    /// out like 0.0), and full summaries with top-k lists of several lengths.
    fn summary_cases() -> Vec<Summary> {
        let mut s = 0xD1B5_4A32_D192_ED03u64;
        let mut out = vec![Summary::default()];
        for field in 0..16 {
            let mut one = Summary::default();
            let v = next(&mut s) >> 20;
            match field {
                0 => one.count = v,
                1 => one.mean = -0.0,
                2 => one.m2 = f64::from_bits(v),
                3 => one.m3 = f64::NAN,
                4 => one.m4 = 1.5,
                5 => one.sum_sq = f64::INFINITY,
                6 => one.max_abs = 3.25,
                7 => one.nan_count = v,
                8 => one.pos_inf_count = 1,
                9 => one.neg_inf_count = u64::MAX,
                10 => one.pos_count = v,
                11 => one.neg_count = 300,
                12 => one.zero_count = v,
                13 => one.abs_hist = Some(crate::hist::LogHistogram::default()),
                14 => one.top_abs = vec![0.0],
                _ => one.top_k_capacity = 64,
            }
            out.push(one);
        }
        for n in [1usize, 63, 64, 65, 1000] {
            let mut top_abs: Vec<f64> = (0..n).map(|_| (next(&mut s) >> 11) as f64).collect();
            top_abs.sort_by(|a, b| b.total_cmp(a));
            out.push(Summary {
                count: next(&mut s) >> 30,
                mean: f64::from_bits(next(&mut s) >> 2),
                m2: 2.0,
                m3: -3.0,
                m4: 4.0,
                sum_sq: 5.0,
                max_abs: top_abs[0],
                nan_count: n as u64,
                pos_inf_count: 0,
                neg_inf_count: 7,
                pos_count: next(&mut s) >> 40,
                neg_count: next(&mut s) >> 40,
                zero_count: 0,
                abs_hist: Some(crate::hist::LogHistogram {
                    precision_bits: 7,
                    index: vec![1, 5, 900, 1 << 40],
                    count: vec![3, 1, 1 << 33, 2],
                }),
                top_abs,
                top_k_capacity: n as u32 + 1,
            });
        }
        out
    }

    /// `Summary` with its doubles as bit patterns, so that NaN values compare.
    fn summary_bits(s: &Summary) -> (Vec<u64>, Option<crate::hist::LogHistogram>, u32) {
        let mut bits: Vec<u64> = summary_u64s(s).iter().map(|(_, v)| *v).collect();
        bits.extend(summary_f64s(s).iter().map(|(_, v)| v.to_bits()));
        bits.extend(s.top_abs.iter().map(|v| v.to_bits()));
        (bits, s.abs_hist.clone(), s.top_k_capacity)
    }

    #[test]
    fn summaries_decode_and_encode_exactly_as_prost_derives() {
        for s in summary_cases() {
            let wire = DerivedSummary::from(&s).encode_to_vec();
            assert_eq!(s.encode_to_vec(), wire, "{s:?}");
            assert_eq!(s.encoded_len(), wire.len());
            let (back, made) = allocations(|| Summary::decode(wire.as_slice()));
            let back = back.expect("decode");
            // The top-k list and the histogram's two fields.
            assert!(made <= 3, "{made} allocations for 3 fields");
            // prost leaves a −0.0 double out, so it reads back as 0.0, as it does for prost.
            let reference = DerivedSummary::decode(wire.as_slice()).expect("decode");
            assert_eq!(back.encode_to_vec(), reference.encode_to_vec());
            let want = if s.mean == 0.0 {
                Summary {
                    mean: 0.0,
                    ..s.clone()
                }
            } else {
                s.clone()
            };
            assert_eq!(summary_bits(&back), summary_bits(&want));
        }
        let wire = UnpackedSummary {
            top_abs: vec![3.0, 2.0, 1.0],
            unknown: "skip me".into(),
        }
        .encode_to_vec();
        let back = Summary::decode(wire.as_slice()).expect("decode");
        assert_eq!(back.top_abs, [3.0, 2.0, 1.0]);
    }

    #[test]
    fn truncated_summaries_fail_as_prost_derived_ones_do() {
        let s = summary_cases().pop().unwrap();
        let wire = s.encode_to_vec();
        for cut in (0..wire.len()).step_by(7) {
            let got = Summary::decode(&wire[..cut]);
            let reference = DerivedSummary::decode(&wire[..cut]);
            assert_eq!(got.is_ok(), reference.is_ok(), "cut at {cut}");
        }
    }

    fn next(s: &mut u64) -> u64 {
        *s ^= *s << 13;
        *s ^= *s >> 7;
        *s ^= *s << 17;
        *s
    }

    fn tracked_cases() -> Vec<TrackedValues> {
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut out = vec![TrackedValues::default()];
        for n in [1usize, 2, 63, 64, 65, 1000] {
            let mut index: Vec<u64> = (0..n)
                .map(|_| next(&mut s) >> (next(&mut s) % 64))
                .collect();
            index.sort_unstable();
            let value = (0..n)
                .map(|i| match i % 7 {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    _ => f32::from_bits(next(&mut s) as u32),
                })
                .collect();
            out.push(TrackedValues {
                name: format!("layer{n}.ä.weight"),
                index,
                value,
            });
        }
        out
    }

    fn projection_cases() -> Vec<Projection> {
        let mut s = 0x2545_F491_4F6C_DD1Du64;
        let mut out = vec![Projection::default()];
        for (kind, n) in [(1, 1usize), (2, 255), (3, 256), (7, 4096)] {
            out.push(Projection {
                kind,
                dim: n as u32,
                seed: next(&mut s),
                values: (0..n).map(|_| f64::from_bits(next(&mut s))).collect(),
                coordinates: next(&mut s) >> 3,
            });
        }
        out
    }

    /// Bit patterns, so that NaN values compare.
    fn tracked_bits(t: &TrackedValues) -> (String, Vec<u64>, Vec<u32>) {
        let v = t.value.iter().map(|v| v.to_bits()).collect();
        (t.name.clone(), t.index.clone(), v)
    }

    fn projection_bits(p: &Projection) -> (i32, u32, u64, Vec<u64>, u64) {
        let v = p.values.iter().map(|v| v.to_bits()).collect();
        (p.kind, p.dim, p.seed, v, p.coordinates)
    }

    #[test]
    fn tracked_values_decode_and_encode_exactly_as_prost_derives() {
        for t in tracked_cases() {
            let d = DerivedTracked {
                name: t.name.clone(),
                index: t.index.clone(),
                value: t.value.clone(),
            };
            let wire = d.encode_to_vec();
            assert_eq!(t.encode_to_vec(), wire);
            assert_eq!(t.encoded_len(), wire.len());
            let (back, made) = allocations(|| TrackedValues::decode(wire.as_slice()));
            assert_eq!(tracked_bits(&back.expect("decode")), tracked_bits(&t));
            assert!(made <= 3, "{made} allocations for 3 fields");
        }
    }

    #[test]
    fn projections_decode_and_encode_exactly_as_prost_derives() {
        for p in projection_cases() {
            let d = DerivedProjection {
                kind: p.kind,
                dim: p.dim,
                seed: p.seed,
                values: p.values.clone(),
                coordinates: p.coordinates,
            };
            let wire = d.encode_to_vec();
            assert_eq!(p.encode_to_vec(), wire);
            assert_eq!(p.encoded_len(), wire.len());
            let (back, made) = allocations(|| Projection::decode(wire.as_slice()));
            let back = back.expect("decode");
            assert_eq!(projection_bits(&back), projection_bits(&p));
            assert!(made <= 1, "{made} allocations for 1 field");
            assert_eq!(
                back.kind(),
                projection::Kind::try_from(p.kind).unwrap_or_default()
            );
        }
    }

    #[test]
    fn unpacked_values_and_unknown_fields_are_accepted() {
        let (t, p) = (
            tracked_cases().pop().unwrap(),
            projection_cases().pop().unwrap(),
        );
        let wire = UnpackedTracked {
            index: t.index.clone(),
            value: t.value.clone(),
            unknown: "skip me".into(),
        }
        .encode_to_vec();
        let back = TrackedValues::decode(wire.as_slice()).expect("decode");
        let want = (String::new(), t.index.clone(), tracked_bits(&t).2);
        assert_eq!(tracked_bits(&back), want);
        let wire = UnpackedProjection {
            values: p.values.clone(),
            unknown: "skip me".into(),
        }
        .encode_to_vec();
        let back = Projection::decode(wire.as_slice()).expect("decode");
        assert_eq!(projection_bits(&back).3, projection_bits(&p).3);
    }

    #[test]
    fn a_packed_run_split_across_chunks_decodes_the_same() {
        let p = projection_cases().pop().unwrap();
        let wire = p.encode_to_vec();
        for cut in [1, 5, wire.len() / 3, wire.len() - 1] {
            let (a, b) = wire.split_at(cut);
            let back = Projection::decode(bytes::Buf::chain(a, b)).expect("decode");
            assert_eq!(projection_bits(&back), projection_bits(&p));
        }
    }

    #[test]
    fn truncated_and_malformed_input_is_an_error_not_a_panic() {
        let t = tracked_cases().pop().unwrap();
        let wire = t.encode_to_vec();
        for cut in [1, 3, wire.len() / 2, wire.len() - 1] {
            let got = TrackedValues::decode(&wire[..cut]);
            let reference = DerivedTracked::decode(&wire[..cut]);
            assert_eq!(got.is_ok(), reference.is_ok(), "cut at {cut}");
        }
        // A packed float run whose length is not a multiple of 4, one beyond the buffer, and a
        // length that does not fit in memory.
        for bad in [
            &[0x1au8, 3, 0, 0, 0][..],
            &[0x1a, 100, 1],
            &[
                0x22, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ],
        ] {
            assert!(TrackedValues::decode(bad).is_err() || bad[0] == 0x22);
            assert!(Projection::decode(bad).is_err() || bad[0] == 0x1a);
            assert_eq!(
                Projection::decode(bad).is_ok(),
                DerivedProjection::decode(bad).is_ok(),
                "{bad:?}"
            );
        }
    }

    /// `edits` applied to `wire`, decoded by the hand-written `M` and by prost's derived `D`:
    /// both fail, or both succeed with the same contents (compared by encoding each with its
    /// own encoder, which the tests above hold equal to the derived one).
    fn decodes_as_derived<M: Message + Default, D: Message + Default>(
        wire: &[u8],
        edits: &[crate::mutate::Edit],
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let edited = crate::mutate::apply(wire, edits);
        let (mine, reference) = (M::decode(edited.as_slice()), D::decode(edited.as_slice()));
        proptest::prop_assert_eq!(mine.is_ok(), reference.is_ok(), "{:?}", edits);
        if let (Ok(mine), Ok(reference)) = (mine, reference) {
            proptest::prop_assert_eq!(mine.encode_to_vec(), reference.encode_to_vec());
        }
        Ok(())
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3000))]

        /// Edited encodings (bytes flipped, set, inserted, removed, cut; long and overflowing
        /// varints): never a panic, and what prost's derived decoders make of them.
        #[test]
        fn edited_summaries_decode_as_prost_derives(case in 0usize..1000, e in crate::mutate::edits()) {
            let all = summary_cases();
            let wire = all[case % all.len()].encode_to_vec();
            decodes_as_derived::<Summary, DerivedSummary>(&wire, &e)?;
        }

        #[test]
        fn edited_tracked_values_decode_as_prost_derives(case in 0usize..1000, e in crate::mutate::edits()) {
            let all = tracked_cases();
            let wire = all[case % all.len()].encode_to_vec();
            decodes_as_derived::<TrackedValues, DerivedTracked>(&wire, &e)?;
        }

        #[test]
        fn edited_projections_decode_as_prost_derives(case in 0usize..1000, e in crate::mutate::edits()) {
            let all = projection_cases();
            let wire = all[case % all.len()].encode_to_vec();
            decodes_as_derived::<Projection, DerivedProjection>(&wire, &e)?;
        }
    }
}
