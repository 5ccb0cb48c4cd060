//! What writing the `coords` table costs per tracked value, in the layout it has and in a
//! list layout it could have.
//!
//! The table has one row per tracked value (`run_id, step, rank, tensor, index, value, local,
//! late`), so six of its eight columns repeat one value over each rank's tracked coordinates.
//! Measured here, in the same run, on `GRADTEL_BENCH_STEPS` (default 300) steps of 64 ranks × 64
//! tracked values of one tensor — what `benches/collector_load.rs` sends with small reports:
//! * **flat**: the collector's own path, `Coords::to_batches` then `sink::write_file`;
//! * **list**: one row per step × rank × tensor with `index: list<u64>` and `value: list<f32>`,
//!   built from the same columns (offsets over them, no copy), written by `sink::write_file`;
//! * **baseline**: copying the same index and value bytes once (`Vec::clone`).
//!
//! Run: `cargo bench -p gradtel-collector --bench coords_layout`. Results: bench/RESULTS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    ArrayRef, BooleanArray, Float32Array, ListArray, StringArray, UInt32Array, UInt64Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field};
use arrow::record_batch::RecordBatch;
use gradtel_collector::sink;
use gradtel_collector::tables::coords::Coords;
use gradtel_stats::rng::SplitMix64;

const RANKS: u32 = 64;
const TRACKED: usize = 64;
const ROUNDS: usize = 5;

/// One step's groups in the list layout: a row per rank.
fn list_batch(run: &str, tensor: &str, step: u64, index: &[u64], value: &[f32]) -> RecordBatch {
    let groups = index.len() / TRACKED;
    let offsets = OffsetBuffer::from_lengths(std::iter::repeat_n(TRACKED, groups));
    let list = |item: DataType, values: ArrayRef| -> ArrayRef {
        Arc::new(ListArray::new(
            Arc::new(Field::new("item", item, false)),
            offsets.clone(),
            values,
            None,
        ))
    };
    RecordBatch::try_from_iter([
        (
            "run_id",
            Arc::new(StringArray::new_repeated(run, groups)) as ArrayRef,
        ),
        (
            "step",
            Arc::new(UInt64Array::from(vec![step; groups])) as ArrayRef,
        ),
        (
            "rank",
            Arc::new(UInt32Array::from_iter_values(0..groups as u32)),
        ),
        (
            "tensor",
            Arc::new(StringArray::new_repeated(tensor, groups)),
        ),
        (
            "index",
            list(
                DataType::UInt64,
                Arc::new(UInt64Array::from(index.to_vec())),
            ),
        ),
        (
            "value",
            list(
                DataType::Float32,
                Arc::new(Float32Array::from(value.to_vec())),
            ),
        ),
        ("local", Arc::new(BooleanArray::from(vec![true; groups]))),
        ("late", Arc::new(BooleanArray::from(vec![false; groups]))),
    ])
    .expect("list batch")
}

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn main() {
    let steps: u64 = std::env::var("GRADTEL_BENCH_STEPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let run: Arc<str> = "bench-run-000001".into();
    let tensor: Arc<str> = "layer0.weight".into();
    let mut r = SplitMix64::new(7);
    // The same coordinates on every rank and step, as the agents' seeded sample gives.
    let mut index: Vec<u64> = (0..TRACKED).map(|_| r.next_u64() % 1_000_000).collect();
    index.sort_unstable();
    index.dedup();
    while index.len() < TRACKED {
        index.push(index.last().map_or(0, |&i| i + 1));
    }

    let mut flat = Coords::default();
    let mut columns: Vec<(Vec<u64>, Vec<f32>)> = Vec::new();
    for step in 0..steps {
        let (mut is, mut vs) = (Vec::new(), Vec::new());
        for rank in 0..RANKS {
            let value: Vec<f32> = (0..TRACKED).map(|_| (0.01 * r.normal()) as f32).collect();
            flat.push_group(&run, step, rank, &tensor, true, false, &index, &value);
            is.extend_from_slice(&index);
            vs.extend_from_slice(&value);
        }
        columns.push((is, vs));
    }
    let values = flat.len() as f64;

    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t_flat, mut t_list, mut t_copy) = (Vec::new(), Vec::new(), Vec::new());
    let (mut size_flat, mut size_list) = (0, 0);
    for round in 0..ROUNDS {
        let t = Instant::now();
        let batches = flat.to_batches(8192).expect("flat batches");
        let (_, size) = sink::write_file(dir.path(), &format!("flat-{round}.parquet"), &batches)
            .expect("write flat");
        t_flat.push(t.elapsed());
        size_flat = size;

        let t = Instant::now();
        let batches: Vec<RecordBatch> = columns
            .iter()
            .enumerate()
            .map(|(step, (is, vs))| list_batch(&run, &tensor, step as u64, is, vs))
            .collect();
        let (_, size) = sink::write_file(dir.path(), &format!("list-{round}.parquet"), &batches)
            .expect("write list");
        t_list.push(t.elapsed());
        size_list = size;

        let t = Instant::now();
        let copied: Vec<(Vec<u64>, Vec<f32>)> = columns.clone();
        t_copy.push(t.elapsed());
        assert_eq!(std::hint::black_box(copied).len(), columns.len());
    }
    let per_value = |d: Duration| d.as_secs_f64() * 1e9 / values;
    let (flat, list, copy) = (median(t_flat), median(t_list), median(t_copy));
    println!(
        "coords, {values} tracked values ({steps} steps × {RANKS} ranks × {TRACKED}), median of {ROUNDS}:"
    );
    println!(
        "flat (the table's layout): {:.1} ns per value, {:.2} bytes per value, {:.1} × the copy",
        per_value(flat),
        size_flat as f64 / values,
        flat.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "list (a row per rank and step): {:.1} ns per value, {:.2} bytes per value, {:.1} × the copy",
        per_value(list),
        size_list as f64 / values,
        list.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "baseline: copying the index and value bytes {:.2} ns per value; flat / list = {:.2}",
        per_value(copy),
        flat.as_secs_f64() / list.as_secs_f64()
    );
}
