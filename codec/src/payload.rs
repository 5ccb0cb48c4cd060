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
