//! The `steps` table: one row per (step, scope), scope being a tensor, a layer or the whole
//! model, merged across every rank and shard that reported the step. Column meanings are in
//! `docs/parquet.md`; this module is the one place that defines them.
//!
//! Merging is the summary merge of `gradtel-stats` (DESIGN.md §3.1), so a row's statistics are
//! those of the concatenation of all values of the scope over all reporting ranks and shards.
//! The layer of a tensor is its name up to the last '.' (`fc1.weight` → `fc1`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Float64Builder, ListBuilder, RecordBatch, StringArray,
    TimestampNanosecondArray, UInt32Array, UInt32Builder, UInt64Array, UInt64Builder,
};
use arrow::error::ArrowError;
use gradtel_stats::GradSummary;

use crate::assembler::Assembly;

/// Table name, used in the partition path `table=steps`.
pub const TABLE: &str = "steps";

/// Layer of a tensor name.
pub fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(l, _)| l)
}

#[derive(Debug, Clone)]
pub struct StepRow {
    pub run_id: Arc<str>,
    pub step: u64,
    pub scope_kind: &'static str,
    pub scope: String,
    pub local: bool,
    pub late: bool,
    pub world_size: u32,
    pub ranks_reported: u32,
    pub missing_ranks: Vec<u32>,
    pub reports_expected: u32,
    pub reports_received: u32,
    pub tensors: u32,
    pub numel: u64,
    pub elements_expected: u64,
    pub elements_received: u64,
    pub summary: GradSummary,
    pub loss: Option<f64>,
    pub learning_rate: Option<f64>,
    pub batch_size: Option<u64>,
    pub agent_steps_dropped_total: u64,
    pub ended_at_ns: i64,
    pub assembled_at_ns: i64,
}

struct Acc {
    tensors: BTreeSet<String>,
    numel: u64,
    expected: u64,
    received: u64,
    summary: Option<GradSummary>,
}

impl Acc {
    fn new() -> Self {
        Self {
            tensors: BTreeSet::new(),
            numel: 0,
            expected: 0,
            received: 0,
            summary: None,
        }
    }
}

/// Build the rows of one assembly. Returns the rows and how many parts could not be merged.
pub fn build_rows(a: &Assembly, assembled_at_ns: i64) -> (Vec<StepRow>, u64) {
    let mut merge_errors = 0;
    let mut by_tensor: BTreeMap<&str, Acc> = BTreeMap::new();
    let mut by_layer: BTreeMap<&str, Acc> = BTreeMap::new();
    let mut model = Acc::new();
    // numel is per-rank (the size of the parameter), counted once per tensor.
    let mut numel_seen: BTreeSet<&str> = BTreeSet::new();
    for part in &a.parts {
        for t in &part.tensors {
            let first = numel_seen.insert(&t.name);
            for acc in [
                by_tensor.entry(&t.name).or_insert_with(Acc::new),
                by_layer.entry(layer_of(&t.name)).or_insert_with(Acc::new),
                &mut model,
            ] {
                let merged = match &mut acc.summary {
                    Some(s) => s.merge(&t.summary).is_ok(),
                    None => {
                        acc.summary = Some(t.summary.clone());
                        true
                    }
                };
                if !merged {
                    merge_errors += 1;
                    continue;
                }
                acc.tensors.insert(t.name.clone());
                if first {
                    acc.numel += t.numel;
                }
                acc.expected += t.elements_expected;
                acc.received += t.elements_received;
            }
        }
    }

    let ranks: BTreeSet<u32> = a.parts.iter().map(|p| p.key.rank).collect();
    let missing: Vec<u32> = (0..a.world_size).filter(|r| !ranks.contains(r)).collect();
    let mean = |xs: Vec<f64>| (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64);
    let loss = mean(a.parts.iter().filter_map(|p| p.loss).collect());
    let lr = mean(a.parts.iter().filter_map(|p| p.learning_rate).collect());
    // The global batch is the sum of the ranks' local batches (one value per rank).
    let mut batch_by_rank: BTreeMap<u32, u64> = BTreeMap::new();
    for p in &a.parts {
        if let Some(b) = p.batch_size {
            batch_by_rank.insert(p.key.rank, b);
        }
    }
    let batch = (!batch_by_rank.is_empty()).then(|| batch_by_rank.values().sum());
    let dropped = a
        .parts
        .iter()
        .map(|p| p.agent_steps_dropped_total)
        .sum::<u64>();
    let ended = a
        .parts
        .iter()
        .map(|p| p.ended_unix_nanos)
        .max()
        .unwrap_or(0);
    let precision = a
        .parts
        .iter()
        .flat_map(|p| p.tensors.iter())
        .map(|t| t.summary.abs_hist.precision_bits())
        .next()
        .unwrap_or(gradtel_stats::loghist::DEFAULT_PRECISION_BITS);
    let top_k = a
        .parts
        .iter()
        .flat_map(|p| p.tensors.iter())
        .map(|t| t.summary.top_abs.capacity())
        .next()
        .unwrap_or(0);

    let row = |kind: &'static str, scope: String, acc: Acc| StepRow {
        run_id: a.run_id.clone(),
        step: a.step,
        scope_kind: kind,
        scope,
        local: a.parts.iter().all(|p| p.local),
        late: a.late,
        world_size: a.world_size,
        ranks_reported: ranks.len() as u32,
        missing_ranks: missing.clone(),
        reports_expected: a.world_size.saturating_mul(a.shard_count),
        reports_received: a.parts.len() as u32,
        tensors: acc.tensors.len() as u32,
        numel: acc.numel,
        elements_expected: acc.expected,
        elements_received: acc.received,
        summary: acc.summary.unwrap_or_else(|| {
            GradSummary::new(top_k, precision).unwrap_or_else(|_| {
                GradSummary::new(0, gradtel_stats::loghist::DEFAULT_PRECISION_BITS)
                    .expect("default precision is valid")
            })
        }),
        loss,
        learning_rate: lr,
        batch_size: batch,
        agent_steps_dropped_total: dropped,
        ended_at_ns: ended,
        assembled_at_ns,
    };
    let mut rows = Vec::with_capacity(by_tensor.len() + by_layer.len() + 1);
    for (name, acc) in by_tensor {
        rows.push(row("tensor", name.to_string(), acc));
    }
    for (name, acc) in by_layer {
        rows.push(row("layer", name.to_string(), acc));
    }
    rows.push(row("model", String::new(), model));
    (rows, merge_errors)
}

/// Quantiles of |g| written as columns.
pub const QUANTILES: [(&str, f64); 4] = [
    ("abs_p50", 0.5),
    ("abs_p90", 0.9),
    ("abs_p99", 0.99),
    ("abs_p999", 0.999),
];

/// Encode rows as one Arrow record batch (column order is the documented order).
pub fn to_batch(rows: &[StepRow]) -> Result<RecordBatch, ArrowError> {
    let f64s = |f: &dyn Fn(&StepRow) -> Option<f64>| -> ArrayRef {
        Arc::new(rows.iter().map(f).collect::<Float64Array>())
    };
    let u64s = |f: &dyn Fn(&StepRow) -> u64| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<UInt64Array>())
    };
    let u32s = |f: &dyn Fn(&StepRow) -> u32| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<UInt32Array>())
    };
    let strs = |f: &dyn Fn(&StepRow) -> &str| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<StringArray>())
    };
    let bools = |f: &dyn Fn(&StepRow) -> bool| -> ArrayRef {
        Arc::new(rows.iter().map(|r| Some(f(r))).collect::<BooleanArray>())
    };
    let times = |f: &dyn Fn(&StepRow) -> i64| -> ArrayRef {
        Arc::new(
            TimestampNanosecondArray::from(rows.iter().map(f).collect::<Vec<_>>())
                .with_timezone("UTC"),
        )
    };
    let mut missing = ListBuilder::new(UInt32Builder::new());
    let mut hist_index = ListBuilder::new(UInt64Builder::new());
    let mut hist_count = ListBuilder::new(UInt64Builder::new());
    let mut top = ListBuilder::new(Float64Builder::new());
    for r in rows {
        missing.values().append_slice(&r.missing_ranks);
        missing.append(true);
        for (i, c) in r.summary.abs_hist.buckets() {
            hist_index.values().append_value(i);
            hist_count.values().append_value(c);
        }
        hist_index.append(true);
        hist_count.append(true);
        top.values().append_slice(&r.summary.top_abs.sorted_desc());
        top.append(true);
    }
    let nonempty = |r: &StepRow| r.summary.moments.n > 0;
    let mut cols: Vec<(&str, ArrayRef)> = vec![
        ("run_id", strs(&|r| &r.run_id)),
        ("step", u64s(&|r| r.step)),
        ("scope_kind", strs(&|r| r.scope_kind)),
        ("scope", strs(&|r| &r.scope)),
        ("local", bools(&|r| r.local)),
        ("late", bools(&|r| r.late)),
        ("world_size", u32s(&|r| r.world_size)),
        ("ranks_reported", u32s(&|r| r.ranks_reported)),
        ("missing_ranks", Arc::new(missing.finish())),
        ("reports_expected", u32s(&|r| r.reports_expected)),
        ("reports_received", u32s(&|r| r.reports_received)),
        ("tensors", u32s(&|r| r.tensors)),
        ("numel", u64s(&|r| r.numel)),
        ("elements_expected", u64s(&|r| r.elements_expected)),
        ("elements_received", u64s(&|r| r.elements_received)),
        ("count", u64s(&|r| r.summary.moments.n)),
        (
            "mean",
            f64s(&|r| nonempty(r).then_some(r.summary.moments.mean)),
        ),
        ("m2", f64s(&|r| Some(r.summary.moments.m2))),
        ("m3", f64s(&|r| Some(r.summary.moments.m3))),
        ("m4", f64s(&|r| Some(r.summary.moments.m4))),
        (
            "variance",
            f64s(&|r| r.summary.moments.variance_population()),
        ),
        ("skewness", f64s(&|r| r.summary.moments.skewness())),
        (
            "excess_kurtosis",
            f64s(&|r| r.summary.moments.excess_kurtosis()),
        ),
        ("sum_sq", f64s(&|r| Some(r.summary.sum_sq))),
        ("l2_norm", f64s(&|r| Some(r.summary.l2_norm()))),
        (
            "max_abs",
            f64s(&|r| nonempty(r).then_some(r.summary.max_abs)),
        ),
        ("nan_count", u64s(&|r| r.summary.nan_count)),
        ("pos_inf_count", u64s(&|r| r.summary.pos_inf_count)),
        ("neg_inf_count", u64s(&|r| r.summary.neg_inf_count)),
        ("pos_count", u64s(&|r| r.summary.pos_count)),
        ("neg_count", u64s(&|r| r.summary.neg_count)),
        ("zero_count", u64s(&|r| r.summary.zero_count)),
    ];
    for (name, q) in QUANTILES {
        cols.push((name, f64s(&|r| r.summary.abs_hist.quantile(q))));
    }
    cols.extend([
        (
            "hist_precision_bits",
            u32s(&|r| r.summary.abs_hist.precision_bits()),
        ),
        ("hist_index", Arc::new(hist_index.finish()) as ArrayRef),
        ("hist_count", Arc::new(hist_count.finish())),
        ("top_abs", Arc::new(top.finish())),
        ("loss", f64s(&|r| r.loss)),
        ("learning_rate", f64s(&|r| r.learning_rate)),
        (
            "batch_size",
            Arc::new(rows.iter().map(|r| r.batch_size).collect::<UInt64Array>()),
        ),
        (
            "agent_steps_dropped_total",
            u64s(&|r| r.agent_steps_dropped_total),
        ),
        ("ended_at", times(&|r| r.ended_at_ns)),
        ("assembled_at", times(&|r| r.assembled_at_ns)),
    ]);
    RecordBatch::try_from_iter(cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;

    fn part(rank: u32, tensors: &[(&str, &[f64])]) -> Report {
        Report {
            loss: Some(rank as f64),
            learning_rate: Some(0.1),
            batch_size: Some(8),
            ended_unix_nanos: 10 + rank as i64,
            ..Report::for_test(rank, 3, 5, tensors)
        }
    }

    #[test]
    fn merges_per_tensor_layer_and_model() {
        let a = Assembly {
            run_id: "r".into(),
            step: 5,
            world_size: 3,
            shard_count: 1,
            parts: vec![
                part(0, &[("fc1.weight", &[1.0, -2.0]), ("fc1.bias", &[0.5])]),
                part(2, &[("fc1.weight", &[3.0, 4.0]), ("fc1.bias", &[-0.5])]),
            ],
            acks: vec![],
            late: false,
        };
        let (rows, errors) = build_rows(&a, 0);
        assert_eq!(errors, 0);
        let get = |k: &str, s: &str| {
            rows.iter()
                .find(|r| r.scope_kind == k && r.scope == s)
                .unwrap()
        };
        let w = get("tensor", "fc1.weight");
        assert_eq!(w.summary.moments.n, 4);
        assert_eq!(w.summary.max_abs, 4.0);
        assert_eq!(w.numel, 2);
        assert_eq!(w.elements_received, 4);
        let layer = get("layer", "fc1");
        assert_eq!(layer.summary.moments.n, 6);
        assert_eq!(layer.tensors, 2);
        let model = get("model", "");
        assert_eq!(model.summary.sum_sq, 1.0 + 4.0 + 0.25 + 9.0 + 16.0 + 0.25);
        assert_eq!(model.missing_ranks, vec![1]);
        assert_eq!(model.ranks_reported, 2);
        assert_eq!(model.loss, Some(1.0));
        assert_eq!(model.batch_size, Some(16));
        assert_eq!(model.ended_at_ns, 12);
        let batch = to_batch(&rows).unwrap();
        assert_eq!(batch.num_rows(), rows.len());
        assert_eq!(batch.schema().field(0).name(), "run_id");
    }

    #[test]
    fn layer_is_the_name_before_the_last_dot() {
        assert_eq!(layer_of("encoder.block.0.weight"), "encoder.block.0");
        assert_eq!(layer_of("scale"), "scale");
    }
}
