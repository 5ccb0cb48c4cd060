//! `gradtel.v1.TrackedValues` and `gradtel.v1.Projection` with hand-written decoders (the
//! generated code is told to use these types through `extern_path`, as for
//! [`crate::hist::LogHistogram`]).
//!
//! Why: every report carries a projection (256 doubles by default) and per tensor 64 tracked
//! coordinates and values, all packed repeated fields. prost's generic decoder pushes a packed
//! run's values one at a time into a `Vec` it never sizes, regrowing it about log2(n) times:
//! those reallocations were ~2.6 % of the collector's CPU on small reports. A fixed-width run's
//! length gives its count, and a varint run's count is its number of end bytes
//! ([`crate::hist`]): these decoders reserve once, then let prost decode.
//!
//! Guarantee: the wire format is exactly protobuf's (packed and unpacked repeated encodings are
//! both accepted, unknown fields skipped); `tests` check it against prost's derived code.

use bytes::{Buf, BufMut};
use prost::DecodeError;
use prost::encoding::{
    DecodeContext, WireType, decode_varint, double, float, int32, skip_field, string, uint32,
    uint64,
};

use crate::hist::{encode_u64s, encoded_len_u64s, in_field, merge_u64s};

/// Reserve room for the values of a packed run of `width`-byte values that starts `buf` (after
/// its key), when its length can be read from the current chunk; otherwise nothing (prost's
/// decoder then grows the vector as it goes).
fn reserve_fixed<T>(
    pool: &crate::recycle::Pool<T>,
    wire_type: WireType,
    values: &mut Vec<T>,
    buf: &impl Buf,
    width: usize,
) {
    if wire_type != WireType::LengthDelimited {
        return;
    }
    let mut peek = buf.chunk();
    if let Ok(len) = decode_varint(&mut peek)
        && let Ok(len) = usize::try_from(len)
        // A length beyond what is buffered is an error prost reports; not an allocation.
        && len <= buf.remaining()
    {
        crate::recycle::reserve(pool, values, len / width);
    }
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
            3 => {
                reserve_fixed(&crate::recycle::F32, wire_type, &mut self.value, buf, 4);
                float::merge_repeated(wire_type, &mut self.value, buf, ctx)
            }
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
            4 => {
                reserve_fixed(&crate::recycle::F64, wire_type, &mut self.values, buf, 8);
                double::merge_repeated(wire_type, &mut self.values, buf, ctx)
            }
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

#[cfg(test)]
mod tests {
    use super::*;
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
            let back = TrackedValues::decode(wire.as_slice()).expect("decode");
            assert_eq!(tracked_bits(&back), tracked_bits(&t));
            // Reserved once, exactly: no spare capacity from growth.
            assert_eq!(back.index.capacity(), back.index.len());
            assert_eq!(back.value.capacity(), back.value.len());
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
            let back = Projection::decode(wire.as_slice()).expect("decode");
            assert_eq!(projection_bits(&back), projection_bits(&p));
            assert_eq!(back.values.capacity(), back.values.len());
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
}
