//! The `sgn` table: stochastic-gradient noise per step, from data parallelism (DESIGN.md §3.3).
//!
//! With R ≥ 2 ranks reporting local (pre-all-reduce) gradients `g_r` of one step, the mean
//! `ḡ = (1/R) Σ g_r` is the minibatch gradient and `d_r = √(R/(R−1)) (g_r − ḡ)` is an SGN sample
//! of one rank's minibatch: the factor makes `E[d_r d_rᵀ] = Σ_B`, the covariance of one rank's
//! minibatch gradient around the full-batch gradient (the deviations from a mean of R samples
//! have covariance `(R−1)/R Σ_B`). For minibatches drawn with replacement `Σ_B = Σ_1 / B`, so
//! `rms · √B` estimates the per-example noise scale, comparable across batch sizes.

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;

use super::Columns;

pub const TABLE: &str = "sgn";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SgnRow {
    pub run_id: Arc<str>,
    pub step: u64,
    /// The run's trajectory the step belongs to (`Assembly::trajectory`).
    pub trajectory: u64,
    /// `tensor` or `model` (tracked coordinates), or `projection` (the sketched full gradient).
    pub scope_kind: &'static str,
    pub scope: String,
    pub ranks: u32,
    /// SGN values pooled in this row (coordinates × ranks, or ranks for `projection`).
    pub samples: u64,
    /// Root mean square of the SGN values (per coordinate).
    pub rms: Option<f64>,
    /// `projection` rows: mean over ranks of ‖d_r‖ in the sketch, an estimate of the SGN's
    /// Euclidean norm over every coordinate of the model (CountSketch preserves norms in
    /// expectation).
    pub norm: Option<f64>,
    /// Mean local batch size B the ranks reported.
    pub local_batch_size: Option<f64>,
    /// `rms · √B`.
    pub noise_scale_per_example: Option<f64>,
    /// Gaussianity of the pooled values (D'Agostino K², Jarque–Bera).
    pub k2: Option<f64>,
    pub k2_p: Option<f64>,
    pub jb: Option<f64>,
    pub jb_p: Option<f64>,
    pub error: Option<String>,
}

pub fn to_batch(rows: &[SgnRow]) -> Result<RecordBatch, ArrowError> {
    Columns::new(rows)
        .str("run_id", |r| &r.run_id)
        .u64("step", |r| r.step)
        .u64("trajectory", |r| r.trajectory)
        .str("scope_kind", |r| r.scope_kind)
        .str("scope", |r| &r.scope)
        .u32("ranks", |r| r.ranks)
        .u64("samples", |r| r.samples)
        .f64("rms", |r| r.rms)
        .f64("norm", |r| r.norm)
        .f64("local_batch_size", |r| r.local_batch_size)
        .f64("noise_scale_per_example", |r| r.noise_scale_per_example)
        .f64("k2", |r| r.k2)
        .f64("k2_p", |r| r.k2_p)
        .f64("jb", |r| r.jb)
        .f64("jb_p", |r| r.jb_p)
        .opt_str("error", |r| r.error.as_deref())
        .finish()
}
