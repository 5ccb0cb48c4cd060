//! The `spectra` table: snapshots of the covariance spectra, one row per snapshot × sketch ×
//! rank index k, with the snapshot's power-law fit repeated on each row.
//!
//! Sketches: `gradient` — Frequent Directions over the projected gradients (one row per rank
//! and step when ranks report local gradients, else one per step); `sgn` — over the projected
//! SGN rows `d_r`. Both are centred, so eigenvalues are those of the covariance (scatter / (n−1),
//! like `numpy.cov`). The fit is `gradtel_stats::spectrum::fit_sketch`: least squares of ln λ_k on
//! ln k over the window, using λ̂_k + Δ (Δ the sketch's total shrinkage); every true eigenvalue
//! lies in `[λ̂_k, λ̂_k + error_bound]`.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;

use super::Columns;

pub const TABLE: &str = "spectra";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SpectrumRow {
    pub run_id: Arc<str>,
    pub step: u64,
    pub sketch: &'static str,
    /// 1-based rank of the eigenvalue.
    pub k: u32,
    pub eigenvalue: f64,
    /// Rows sketched so far, the projection dimension m, and ℓ.
    pub rows: u64,
    pub dim: u32,
    pub ell: u32,
    pub slope: Option<f64>,
    pub intercept: Option<f64>,
    pub r2: Option<f64>,
    pub ks: Option<f64>,
    pub window_lo: Option<u32>,
    pub window_hi: Option<u32>,
    /// Covariance-scale Δ: 0 ≤ λ_k − λ̂_k ≤ error_bound for every k.
    pub error_bound: f64,
    pub error: Option<String>,
}

pub fn to_batch(rows: &[SpectrumRow]) -> Result<RecordBatch, ArrowError> {
    Columns::new(rows)
        .str("run_id", |r| &r.run_id)
        .u64("step", |r| r.step)
        .str("sketch", |r| r.sketch)
        .u32("k", |r| r.k)
        .f64("eigenvalue", |r| Some(r.eigenvalue))
        .u64("rows", |r| r.rows)
        .u32("dim", |r| r.dim)
        .u32("ell", |r| r.ell)
        .f64("slope", |r| r.slope)
        .f64("intercept", |r| r.intercept)
        .f64("r2", |r| r.r2)
        .f64("ks", |r| r.ks)
        .opt_u32("window_lo", |r| r.window_lo)
        .opt_u32("window_hi", |r| r.window_hi)
        .f64("error_bound", |r| Some(r.error_bound))
        .opt_str("error", |r| r.error.as_deref())
        .finish()
}
