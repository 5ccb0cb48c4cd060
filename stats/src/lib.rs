//! Pure, mergeable estimators for the structure of stochastic gradients.
//!
//! Nothing here does I/O or async work: every type is plain data with `push`/`merge`, so the
//! agent, the collector and the offline analyser share one implementation. Each module states the
//! formula it implements, its source, and what merging preserves.

pub mod bootstrap;
pub mod fd;
pub mod isa;
pub mod loghist;
pub mod moments;
pub mod normality;
pub mod powerlaw;
pub mod powerlaw_binned;
pub mod projection;
pub mod rng;
pub mod robust;
pub mod simd_state;
pub mod spectrum;
pub mod summary;
pub mod tail;
pub mod topk;
pub mod track;
pub mod vuong;

pub use loghist::{LogHistogram, SparseHistogram};
pub use moments::Moments;
pub use summary::{F32Stream, GradSummary, SparseSummary};
pub use topk::TopK;

/// Errors of the estimators: bad parameters or summaries that cannot be merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StatsError {
    #[error("histogram precision must be 1..=16 bits, got {0}")]
    InvalidPrecision(u32),
    #[error("cannot merge histograms of precision {0} and {1} bits")]
    PrecisionMismatch(u32, u32),
    #[error("malformed summary: {0}")]
    Malformed(&'static str),
    #[error("input holds NaN or infinite values")]
    NonFinite,
    #[error("needs at least {needed} usable values, got {got}")]
    TooFewValues { needed: usize, got: usize },
    #[error("all values are equal: no tail to fit")]
    AllEqual,
    #[error("no candidate x_min gives an exponent inside the allowed range")]
    NoValidXmin,
    #[error("degenerate input: {0}")]
    Degenerate(&'static str),
    #[error("row has {got} values, the sketch has dimension {expected}")]
    DimensionMismatch { expected: usize, got: usize },
    #[error("bad parameter: {0}")]
    BadParameter(&'static str),
}
