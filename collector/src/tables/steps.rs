//! The `steps` table: one row per (step, scope), scope being a tensor, a layer or the whole
//! model, merged across every rank and shard that reported the step. Column meanings are in
//! `docs/parquet.md`; this module is the one place that defines them.
//!
//! Merging is the summary merge of `gradtel-stats` (DESIGN.md §3.1), so a row's statistics are
//! those of the concatenation of all values of the scope over all reporting ranks and shards.
//! The layer of a tensor is its name up to the last '.' (`fc1.weight` → `fc1`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, ListBuilder, UInt32Builder, UInt64Builder};
use arrow_array::{Float64Array, RecordBatch};
use arrow_schema::ArrowError;
use gradtel_stats::{GradSummary, LogHistogram, SparseSummary};

use super::Columns;
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
    /// The run's trajectory (`Assembly::trajectory`).
    pub trajectory: u64,
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
    /// Tracked-coordinate values the scope's reports carried.
    pub tracked_values: u64,
    /// Projection dimension of the step's reports, when they carried one.
    pub sketch_dim: Option<u32>,
    /// Robust z-score of the model's L2 norm (model rows; filled by the live estimators).
    pub norm_robust_z: Option<f64>,
}

/// What merges into one row; `'a`: the assembly's reports, whose tensor names it counts.
struct Acc<'a> {
    tracked: u64,
    tensors: BTreeSet<&'a str>,
    numel: u64,
    expected: u64,
    received: u64,
    summary: Option<GradSummary>,
}

impl Acc<'_> {
    fn new() -> Self {
        Self {
            tracked: 0,
            tensors: BTreeSet::new(),
            numel: 0,
            expected: 0,
            received: 0,
            summary: None,
        }
    }

    /// Merge a received part into the tensor's summary; when they do not merge, an error that
    /// hands `merged` back, the summary unchanged. The first part takes the histogram the
    /// assembler merged for the tensor, if any (`merged`); else `span` is the histogram range
    /// all the tensor's parts will need, made addressable once.
    fn absorb_part(
        &mut self,
        s: &SparseSummary,
        span: Option<(u64, u64)>,
        merged: Option<LogHistogram>,
    ) -> Result<(), Option<LogHistogram>> {
        match &mut self.summary {
            Some(acc) => acc.merge_sparse(s).map_err(|_| merged),
            None => {
                let mut first = s.rest.clone();
                match merged {
                    Some(m) if m.precision_bits() == s.hist.precision_bits() => first.abs_hist = m,
                    Some(m) => return Err(Some(m)),
                    None => {
                        if let Some((lo, hi)) = span {
                            first.abs_hist.cover(lo, hi);
                        }
                    }
                }
                if first.abs_hist.merge_sparse(&s.hist).is_err() {
                    return Err(None);
                }
                self.summary = Some(first);
                Ok(())
            }
        }
    }

    /// Merge `s` into the scope's summary; false (and unchanged) when they do not merge. `span`
    /// is the histogram range all the scope's parts will need, made addressable once.
    fn absorb(&mut self, s: &GradSummary, span: Option<(u64, u64)>) -> bool {
        match &mut self.summary {
            Some(acc) => acc.merge(s).is_ok(),
            None => {
                let mut first = s.clone();
                if let Some((lo, hi)) = span {
                    first.abs_hist.cover(lo, hi);
                }
                self.summary = Some(first);
                true
            }
        }
    }
}

/// Build the rows of one assembly, whose histograms the assembler merged into `merged` (taken
/// out of [`Assembly::hists`]). Returns the rows and how many parts could not be merged.
pub fn build_rows(
    a: &Assembly,
    mut merged: HashMap<Arc<str>, LogHistogram>,
    assembled_at_ns: i64,
) -> (Vec<StepRow>, u64) {
    let mut merge_errors = 0;
    let mut by_tensor: BTreeMap<&str, Acc> = BTreeMap::new();
    let mut by_layer: BTreeMap<&str, Acc> = BTreeMap::new();
    let mut model = Acc::new();
    // numel is per-rank (the size of the parameter), counted once per tensor.
    let mut numel_seen: BTreeSet<&str> = BTreeSet::new();
    let union = |a: Option<(u64, u64)>, b: Option<(u64, u64)>| match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (a, b) => a.or(b),
    };
    // The histogram range of each tensor over its parts, so that merging the parts never
    // regrows (and copies) the dense counts: each rank's range differs a little, and growing
    // part by part cost a reallocation and a copy for most parts.
    let mut tensor_span: BTreeMap<&str, Option<(u64, u64)>> = BTreeMap::new();
    for t in a.parts.iter().flat_map(|p| &p.tensors) {
        let span = tensor_span.entry(&t.name).or_default();
        *span = union(*span, t.summary.hist.span());
    }
    // Ranks and shards merge into their tensor; tensors into their layer and the model. (Each
    // part merging into all three scopes did three times the merges for the same rows.)
    for part in &a.parts {
        for t in &part.tensors {
            let first = numel_seen.insert(&t.name);
            let acc = by_tensor.entry(&t.name).or_insert_with(Acc::new);
            let span = tensor_span.get(&*t.name).copied().flatten();
            // Only the first part to merge takes the merged histogram; one that does not merge
            // hands it back for the next.
            let hist = acc
                .summary
                .is_none()
                .then(|| merged.remove(&*t.name))
                .flatten();
            if let Err(back) = acc.absorb_part(&t.summary, span, hist) {
                if let Some(h) = back {
                    merged.insert(t.name.clone(), h);
                }
                merge_errors += 1;
                continue;
            }
            acc.tensors.insert(&t.name);
            if first {
                acc.numel += t.numel;
            }
            acc.expected += t.elements_expected;
            acc.received += t.elements_received;
        }
    }
    // The histogram range of each layer and of the model, likewise.
    let mut layer_span: BTreeMap<&str, Option<(u64, u64)>> = BTreeMap::new();
    let mut model_span = None;
    for (name, t) in &by_tensor {
        let span = t.summary.as_ref().and_then(|s| s.abs_hist.span());
        let l = layer_span.entry(layer_of(name)).or_default();
        *l = union(*l, span);
        model_span = union(model_span, span);
    }
    for (name, t) in &by_tensor {
        let Some(summary) = &t.summary else { continue };
        let layer = layer_of(name);
        for (acc, span) in [
            (
                by_layer.entry(layer).or_insert_with(Acc::new),
                layer_span.get(layer).copied().flatten(),
            ),
            (&mut model, model_span),
        ] {
            if !acc.absorb(summary, span) {
                merge_errors += 1;
                continue;
            }
            acc.tensors.extend(t.tensors.iter().copied());
            acc.numel += t.numel;
            acc.expected += t.expected;
            acc.received += t.received;
        }
    }

    for part in &a.parts {
        for t in &part.tracked {
            let n = t.index.len() as u64;
            for acc in [
                by_tensor.get_mut(&*t.name),
                by_layer.get_mut(layer_of(&t.name)),
                Some(&mut model),
            ]
            .into_iter()
            .flatten()
            {
                acc.tracked += n;
            }
        }
    }
    let sketch_dim = a
        .parts
        .iter()
        .find_map(|p| p.projection.as_ref().map(|x| x.values.len() as u32));
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
        .map(|t| t.summary.hist.precision_bits())
        .next()
        .unwrap_or(gradtel_stats::loghist::DEFAULT_PRECISION_BITS);
    let top_k = a
        .parts
        .iter()
        .flat_map(|p| p.tensors.iter())
        .map(|t| t.summary.rest.top_abs.capacity())
        .next()
        .unwrap_or(0);

    let row = |kind: &'static str, scope: String, acc: Acc| StepRow {
        run_id: a.run_id.clone(),
        step: a.step,
        trajectory: a.trajectory,
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
        tracked_values: acc.tracked,
        sketch_dim,
        norm_robust_z: None,
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
    let mut missing = ListBuilder::new(UInt32Builder::new());
    let mut hist_index = ListBuilder::new(UInt64Builder::new());
    let mut hist_count = ListBuilder::new(UInt64Builder::new());
    let mut top = ListBuilder::new(Float64Builder::new());
    let (mut index, mut count) = (Vec::new(), Vec::new());
    for r in rows {
        missing.values().append_slice(&r.missing_ranks);
        missing.append(true);
        index.clear();
        count.clear();
        r.summary.abs_hist.sparse_into(&mut index, &mut count);
        hist_index.values().append_slice(&index);
        hist_count.values().append_slice(&count);
        hist_index.append(true);
        hist_count.append(true);
        top.values().append_slice(&r.summary.top_abs.sorted_desc());
        top.append(true);
    }
    let nonempty = |r: &StepRow| r.summary.moments.n > 0;
    let mut c = Columns::new(rows)
        .str("run_id", |r| &r.run_id)
        .u64("step", |r| r.step)
        .u64("trajectory", |r| r.trajectory)
        .str("scope_kind", |r| r.scope_kind)
        .str("scope", |r| &r.scope)
        .bool("local", |r| r.local)
        .bool("late", |r| r.late)
        .u32("world_size", |r| r.world_size)
        .u32("ranks_reported", |r| r.ranks_reported)
        .array("missing_ranks", Arc::new(missing.finish()), false)
        .u32("reports_expected", |r| r.reports_expected)
        .u32("reports_received", |r| r.reports_received)
        .u32("tensors", |r| r.tensors)
        .u64("numel", |r| r.numel)
        .u64("elements_expected", |r| r.elements_expected)
        .u64("elements_received", |r| r.elements_received)
        .u64("count", |r| r.summary.moments.n)
        .f64("mean", |r| nonempty(r).then_some(r.summary.moments.mean))
        .f64("m2", |r| Some(r.summary.moments.m2))
        .f64("m3", |r| Some(r.summary.moments.m3))
        .f64("m4", |r| Some(r.summary.moments.m4))
        .f64("variance", |r| r.summary.moments.variance_population())
        .f64("skewness", |r| r.summary.moments.skewness())
        .f64("excess_kurtosis", |r| r.summary.moments.excess_kurtosis())
        .f64("sum_sq", |r| Some(r.summary.sum_sq))
        .f64("l2_norm", |r| Some(r.summary.l2_norm()))
        .f64("max_abs", |r| nonempty(r).then_some(r.summary.max_abs))
        .u64("nan_count", |r| r.summary.nan_count)
        .u64("pos_inf_count", |r| r.summary.pos_inf_count)
        .u64("neg_inf_count", |r| r.summary.neg_inf_count)
        .u64("pos_count", |r| r.summary.pos_count)
        .u64("neg_count", |r| r.summary.neg_count)
        .u64("zero_count", |r| r.summary.zero_count);
    let quantiles: Vec<_> = rows
        .iter()
        .map(|r| r.summary.abs_hist.quantiles(QUANTILES.map(|(_, q)| q)))
        .collect();
    for (k, (name, _)) in QUANTILES.iter().enumerate() {
        let a: Float64Array = quantiles.iter().map(|qs| qs[k]).collect();
        c = c.array(name, Arc::new(a), true);
    }
    c.u32("hist_precision_bits", |r| {
        r.summary.abs_hist.precision_bits()
    })
    .array("hist_index", Arc::new(hist_index.finish()), false)
    .array("hist_count", Arc::new(hist_count.finish()), false)
    .array("top_abs", Arc::new(top.finish()), false)
    .f64("loss", |r| r.loss)
    .f64("learning_rate", |r| r.learning_rate)
    .opt_u64("batch_size", |r| r.batch_size)
    .u64("agent_steps_dropped_total", |r| r.agent_steps_dropped_total)
    .time("ended_at", |r| r.ended_at_ns)
    .time("assembled_at", |r| r.assembled_at_ns)
    .u64("tracked_values", |r| r.tracked_values)
    .opt_u32("sketch_dim", |r| r.sketch_dim)
    .f64("norm_robust_z", |r| r.norm_robust_z)
    .finish()
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
            hists: Default::default(),
            reports: vec![],
            late: false,
            trajectory: 0,
        };
        let (rows, errors) = build_rows(&a, HashMap::new(), 0);
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
    fn a_column_null_only_in_a_later_batch_keeps_the_files_schema() {
        use crate::tables::Tables;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        // Enough tensors that a step's rows fill more than one batch; the first step has a
        // loss, the second none: its rows are the first nulls of `loss`, in a later batch.
        let names: Vec<String> = (0..20).map(|i| format!("l{i}.w")).collect();
        let values = [1.0, -2.0, 3.0];
        let tensors: Vec<(&str, &[f64])> =
            names.iter().map(|n| (n.as_str(), &values[..])).collect();
        let assembly = |step: u64, loss: Option<f64>| Assembly {
            run_id: "r".into(),
            step,
            world_size: 1,
            shard_count: 1,
            parts: vec![Report {
                loss,
                ..Report::for_test(0, 1, step, &tensors)
            }],
            hists: Default::default(),
            reports: vec![],
            late: false,
            trajectory: 0,
        };
        let mut tables = Tables {
            steps: build_rows(&assembly(1, Some(0.5)), HashMap::new(), 0).0,
            ..Tables::default()
        };
        let first_step_rows = tables.steps.len();
        tables
            .steps
            .extend(build_rows(&assembly(2, None), HashMap::new(), 0).0);
        let batches = tables.batches(TABLE).unwrap();
        assert!(batches.len() > 2);
        assert_eq!(batches[0].column_by_name("loss").unwrap().null_count(), 0);
        assert!(batches.iter().all(|b| b.schema() == batches[0].schema()));

        let dir = tempfile::tempdir().unwrap();
        let (path, _) = crate::sink::write_file(dir.path(), "p.parquet", &batches).unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap();
        let (mut rows, mut nulls) = (0, 0);
        for b in reader {
            let b = b.unwrap();
            rows += b.num_rows();
            nulls += b.column_by_name("loss").unwrap().null_count();
        }
        assert_eq!(rows, tables.steps.len());
        assert_eq!(nulls, tables.steps.len() - first_step_rows);
    }

    #[test]
    fn layer_is_the_name_before_the_last_dot() {
        assert_eq!(layer_of("encoder.block.0.weight"), "encoder.block.0");
        assert_eq!(layer_of("scale"), "scale");
    }
}
