//! The `alerts` table: every health alert the collector raised (see `live::alerts`).

use std::sync::Arc;

use arrow_array::RecordBatch;
use arrow_schema::ArrowError;

use super::Columns;

pub const TABLE: &str = "alerts";

#[derive(Debug, Clone, Default, PartialEq)]
pub struct AlertRow {
    pub run_id: Arc<str>,
    pub step: u64,
    pub raised_at_ns: i64,
    /// `nonfinite`, `norm_spike`, `tail_collapse`, `tail_change`, `slope_change`, `straggler`,
    /// `resumed`.
    pub kind: &'static str,
    /// `critical` (training is broken) or `warning`.
    pub severity: &'static str,
    pub scope_kind: &'static str,
    pub scope: String,
    /// The observed value and the threshold it crossed.
    pub value: Option<f64>,
    pub threshold: Option<f64>,
    pub message: String,
}

pub fn to_batch(rows: &[AlertRow]) -> Result<RecordBatch, ArrowError> {
    Columns::new(rows)
        .str("run_id", |r| &r.run_id)
        .u64("step", |r| r.step)
        .time("raised_at", |r| r.raised_at_ns)
        .str("kind", |r| r.kind)
        .str("severity", |r| r.severity)
        .str("scope_kind", |r| r.scope_kind)
        .str("scope", |r| &r.scope)
        .f64("value", |r| r.value)
        .f64("threshold", |r| r.threshold)
        .str("message", |r| &r.message)
        .finish()
}
