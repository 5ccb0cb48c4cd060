//! Decoding of raw gradient payloads (little-endian f32, f16 or bf16) into summaries.
//!
//! f16 and bf16 widen exactly to f32 (and f32 to f64), so a summary of a half-precision payload
//! is the summary of exactly the values the training process held.

use gradtel_proto::v1::Dtype;
use gradtel_stats::GradSummary;

use crate::CodecError;

/// Short name of a dtype for messages and metrics.
pub fn dtype_name(d: Dtype) -> &'static str {
    match d {
        Dtype::F32 => "f32",
        Dtype::F16 => "f16",
        Dtype::Bf16 => "bf16",
        Dtype::Unspecified => "unspecified",
    }
}

/// Number of elements in `bytes`, or why the length is wrong for `dtype`.
pub fn element_count(dtype: Dtype, bytes: &[u8]) -> Result<usize, CodecError> {
    let size = dtype.element_size().ok_or(CodecError::UnspecifiedDtype)?;
    if !bytes.len().is_multiple_of(size) {
        return Err(CodecError::RaggedPayload {
            len: bytes.len(),
            dtype: dtype_name(dtype),
            size,
        });
    }
    Ok(bytes.len() / size)
}

/// Feed every element of `bytes` into `summary`. Returns the number of elements.
pub fn summarize_into(
    dtype: Dtype,
    bytes: &[u8],
    summary: &mut GradSummary,
) -> Result<usize, CodecError> {
    let n = element_count(dtype, bytes)?;
    match dtype {
        Dtype::F32 => summary.extend_values(
            bytes
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        ),
        Dtype::F16 => summary.extend_values(
            bytes
                .chunks_exact(2)
                .map(|c| f64::from(half::f16::from_le_bytes([c[0], c[1]]))),
        ),
        Dtype::Bf16 => summary.extend_values(
            bytes
                .chunks_exact(2)
                .map(|c| f64::from(half::bf16::from_le_bytes([c[0], c[1]]))),
        ),
        Dtype::Unspecified => return Err(CodecError::UnspecifiedDtype),
    }
    Ok(n)
}

/// Decode every element of `bytes` into `out` (cleared first) as f32: exact for all three dtypes.
pub fn decode_f32(dtype: Dtype, bytes: &[u8], out: &mut Vec<f32>) -> Result<usize, CodecError> {
    let n = element_count(dtype, bytes)?;
    out.clear();
    out.reserve(n);
    match dtype {
        Dtype::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        Dtype::F16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        Dtype::Bf16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()),
        ),
        Dtype::Unspecified => return Err(CodecError::UnspecifiedDtype),
    }
    Ok(n)
}

/// The values of a payload as f32: the payload itself, reinterpreted, when it is f32 on a
/// little-endian machine and 4-byte aligned (shared-memory slots always are); otherwise decoded
/// into `scratch` as [`decode_f32`] does. The agent decodes a block at a time, and the copy this
/// saves was ~5 % of its work.
pub fn f32_values<'a>(
    dtype: Dtype,
    bytes: &'a [u8],
    scratch: &'a mut Vec<f32>,
) -> Result<&'a [f32], CodecError> {
    if dtype == Dtype::F32
        && cfg!(target_endian = "little")
        && let Ok(values) = bytemuck::try_cast_slice::<u8, f32>(bytes)
    {
        return Ok(values);
    }
    decode_f32(dtype, bytes, scratch)?;
    Ok(scratch)
}

/// Encode f32 values as a little-endian payload.
pub fn encode_f32(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_dtypes_decode_to_the_same_values() {
        let vals = [1.5f32, -0.25, 0.0, 1024.0, -3.0e-3];
        let mut f32s = GradSummary::new(8, 7).unwrap();
        summarize_into(Dtype::F32, &encode_f32(&vals), &mut f32s).unwrap();

        let f16_bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
            .collect();
        let mut f16s = GradSummary::new(8, 7).unwrap();
        summarize_into(Dtype::F16, &f16_bytes, &mut f16s).unwrap();

        let bf16_bytes: Vec<u8> = vals
            .iter()
            .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
            .collect();
        let mut bf16s = GradSummary::new(8, 7).unwrap();
        summarize_into(Dtype::Bf16, &bf16_bytes, &mut bf16s).unwrap();

        assert_eq!(f32s.moments.n, 5);
        assert_eq!(f32s.max_abs, 1024.0);
        // Representable in all three formats except -3e-3, which rounds; compare the rest.
        assert_eq!(f16s.max_abs, 1024.0);
        assert_eq!(bf16s.max_abs, 1024.0);
        assert_eq!(f16s.zero_count, 1);
        let expected_f16 = f64::from(half::f16::from_f32(-3.0e-3));
        assert!(f16s.top_abs.sorted_desc().contains(&expected_f16.abs()));
    }

    #[test]
    fn f32_values_reads_aligned_f32_in_place_and_decodes_the_rest() {
        let xs = [1.5f32, -0.0, f32::MAX, 3.25e-40, f32::NAN, -7.0];
        // A buffer with a 4-aligned start and a 1-byte-offset (unaligned) copy of the bytes.
        let words: Vec<u32> = xs.iter().map(|x| x.to_bits().to_le()).collect();
        let aligned: &[u8] = bytemuck::cast_slice(&words);
        let mut shifted = vec![0u8; aligned.len() + 1];
        shifted[1..].copy_from_slice(aligned);
        let unaligned = &shifted[1..];
        let mut scratch = Vec::new();
        let a = f32_values(Dtype::F32, aligned, &mut scratch).unwrap();
        assert_eq!(a.as_ptr().cast::<u8>(), aligned.as_ptr(), "no copy");
        let a: Vec<u32> = a.iter().map(|x| x.to_bits()).collect();
        let b: Vec<u32> = f32_values(Dtype::F32, unaligned, &mut scratch)
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect();
        let want: Vec<u32> = xs.iter().map(|x| x.to_bits()).collect();
        assert_eq!((a, b), (want.clone(), want));
        assert!(f32_values(Dtype::F32, &aligned[..5], &mut scratch).is_err());
        let h = f32_values(Dtype::F16, &[0x00, 0x3c], &mut scratch).unwrap();
        assert_eq!(h, &[1.0]);
    }

    #[test]
    fn decode_f32_widens_exactly() {
        let h = [
            half::f16::from_f32(0.5),
            half::f16::from_f32(-2.0),
            half::f16::NAN,
        ];
        let bytes: Vec<u8> = h.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = vec![9.0];
        assert_eq!(decode_f32(Dtype::F16, &bytes, &mut out).unwrap(), 3);
        assert_eq!(&out[..2], &[0.5, -2.0]);
        assert!(out[2].is_nan());
        assert!(decode_f32(Dtype::F32, &[0u8; 3], &mut out).is_err());
    }

    #[test]
    fn ragged_payload_is_an_error() {
        let mut s = GradSummary::new(8, 7).unwrap();
        let e = summarize_into(Dtype::F32, &[0u8; 10], &mut s).unwrap_err();
        assert!(e.to_string().contains("10 bytes"));
        assert!(summarize_into(Dtype::Unspecified, &[], &mut s).is_err());
        assert_eq!(s.total_count(), 0);
    }
}
