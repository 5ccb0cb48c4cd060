//! The `coords` table: the raw value of every tracked coordinate, per step and rank — the
//! per-coordinate series the offline analyser tests (iteration-wise and SGN samples).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::error::ArrowError;

use super::Columns;

pub const TABLE: &str = "coords";

#[derive(Debug, Clone, PartialEq)]
pub struct CoordRow {
    pub run_id: Arc<str>,
    pub step: u64,
    pub rank: u32,
    pub tensor: Arc<str>,
    /// Flattened (row-major) coordinate within the tensor.
    pub index: u64,
    /// The gradient value, exactly as the training process held it (f16/bf16 widen exactly).
    pub value: f32,
    /// The rank's local (pre-all-reduce) gradient, or the reduced one.
    pub local: bool,
    pub late: bool,
}

pub fn to_batch(rows: &[CoordRow]) -> Result<RecordBatch, ArrowError> {
    Columns::new(rows)
        .str("run_id", |r| &r.run_id)
        .u64("step", |r| r.step)
        .u32("rank", |r| r.rank)
        .str("tensor", |r| &r.tensor)
        .u64("index", |r| r.index)
        .f32("value", |r| r.value)
        .bool("local", |r| r.local)
        .bool("late", |r| r.late)
        .finish()
}
