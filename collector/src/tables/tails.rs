//! The `tails` table: one row per step × object × scope × estimator.
//!
//! Objects (Xie et al. 2023, the paper's four samples, three of them here; the spectrum has its
//! own table):
//! * `dimension` — the values of one scope (tensor, layer, model) at one step, pooled over the
//!   reporting ranks: Hill, Pickands and DEdH on the merged top-k; α-stable on the tracked
//!   coordinates; the Clauset fit on the merged |g| histogram (`gradtel_stats::powerlaw_binned`);
//!   D'Agostino K² and Jarque–Bera from the merged moments.
//! * `iteration` — each tracked coordinate's minibatch gradient over the last `window` steps;
//!   rows summarise a tensor (or the model) by the fraction of its coordinates whose test
//!   rejects, with the median tail index.
//! * `sgn` — as `iteration`, on each rank's deviation from the mean over ranks.
//!
//! `alpha` is always the tail index of the survival function, `P(|X| > x) ~ x^−alpha`; Clauset's
//! density exponent (what the `powerlaw` package prints) is `alpha + 1`.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;

use super::Columns;

pub const TABLE: &str = "tails";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TailRow {
    pub run_id: Arc<str>,
    pub step: u64,
    /// The run's trajectory the step belongs to (`Assembly::trajectory`).
    pub trajectory: u64,
    pub object: &'static str,
    pub scope_kind: &'static str,
    pub scope: String,
    pub estimator: &'static str,
    /// Values the estimate is from (per coordinate for window summaries).
    pub samples: u64,
    /// Order statistics used (Hill, Pickands, DEdH), block size K1 (α-stable), or the tail
    /// size n_tail (Clauset).
    pub k: Option<u64>,
    pub alpha: Option<f64>,
    pub alpha_se: Option<f64>,
    pub xmin: Option<f64>,
    /// KS distance (Clauset), K² or JB statistic.
    pub statistic: Option<f64>,
    /// 1.36/√n_tail (Clauset).
    pub critical: Option<f64>,
    pub p_value: Option<f64>,
    /// Power law rejected (Clauset: D > critical) or Gaussianity rejected (p < 0.05).
    pub rejected: Option<bool>,
    /// Window summaries: coordinates tested, coordinates whose test could not run, the fraction
    /// of tested coordinates that reject, and the median tail index.
    pub coordinates: Option<u64>,
    pub failed: Option<u64>,
    pub rejected_fraction: Option<f64>,
    pub median_alpha: Option<f64>,
    /// Why the estimator gave no value (too few values, all equal, …).
    pub error: Option<String>,
}

pub fn to_batch(rows: &[TailRow]) -> Result<RecordBatch, ArrowError> {
    Columns::new(rows)
        .str("run_id", |r| &r.run_id)
        .u64("step", |r| r.step)
        .u64("trajectory", |r| r.trajectory)
        .str("object", |r| r.object)
        .str("scope_kind", |r| r.scope_kind)
        .str("scope", |r| &r.scope)
        .str("estimator", |r| r.estimator)
        .u64("samples", |r| r.samples)
        .opt_u64("k", |r| r.k)
        .f64("alpha", |r| r.alpha)
        .f64("alpha_se", |r| r.alpha_se)
        .f64("xmin", |r| r.xmin)
        .f64("statistic", |r| r.statistic)
        .f64("critical", |r| r.critical)
        .f64("p_value", |r| r.p_value)
        .opt_bool("rejected", |r| r.rejected)
        .opt_u64("coordinates", |r| r.coordinates)
        .opt_u64("failed", |r| r.failed)
        .f64("rejected_fraction", |r| r.rejected_fraction)
        .f64("median_alpha", |r| r.median_alpha)
        .opt_str("error", |r| r.error.as_deref())
        .finish()
}
