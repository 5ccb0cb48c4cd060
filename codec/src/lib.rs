//! Wire ↔ estimator conversions for gradtel.v1.
//!
//! * [`payload`]: raw little-endian f32/f16/bf16 bytes of a gradient chunk, decoded straight
//!   into a [`GradSummary`] without an intermediate buffer.
//! * [`summary`]: [`GradSummary`] ↔ `gradtel.v1.Summary`, validated on the way in so nothing a
//!   peer sends can make the collector panic or merge garbage.

pub mod payload;
pub mod summary;

pub use gradtel_stats::GradSummary;

/// Why a wire message could not be turned into estimator state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    #[error("dtype is unspecified")]
    UnspecifiedDtype,
    #[error("payload of {len} bytes is not a multiple of the {dtype} element size {size}")]
    RaggedPayload {
        len: usize,
        dtype: &'static str,
        size: usize,
    },
    #[error("summary is missing its histogram")]
    MissingHistogram,
    #[error(transparent)]
    Stats(#[from] gradtel_stats::StatsError),
}
