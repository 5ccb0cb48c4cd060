//! What writing the `coords` table costs per tracked value, in the layout it has and in the
//! row-per-value layout it had before.
//!
//! The table has a row per tensor of a report with its tracked coordinates as two lists; it had
//! a row per tracked value (`run_id, step, rank, tensor, index, value, local, late`), which
//! repeats six of the eight columns over each rank's tracked coordinates. Measured here, in the
//! same run, on `GRADTEL_BENCH_STEPS` (default 300) steps of 64 ranks × 64 tracked values of one
//! tensor — what `benches/collector_load.rs` sends with small reports:
//! * **list** (the table's layout): the collector's own path, `Coords::to_batches` then
//!   `sink::write_file`;
//! * **flat** (a row per value): the same batches exploded beforehand (`coords::explode`, not
//!   timed), written by `sink::write_file`;
//! * **baseline**: copying the same index and value bytes once (`Vec::clone`).
//!
//! Run: `cargo bench -p gradtel-collector --bench coords_layout`. Results: bench/RESULTS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow_array::RecordBatch;
use gradtel_collector::sink;
use gradtel_collector::tables::coords::{self, Coords};
use gradtel_stats::rng::SplitMix64;

const RANKS: u32 = 64;
const TRACKED: usize = 64;
const ROUNDS: usize = 5;
/// Tracked values per record batch, as the collector's sink cuts them.
const BATCH_VALUES: usize = 8192;

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

    let mut coords = Coords::default();
    // The baseline's bytes: every index and value, as the groups hold them.
    let mut columns: (Vec<u64>, Vec<f32>) = (Vec::new(), Vec::new());
    for step in 0..steps {
        for rank in 0..RANKS {
            let value: Vec<f32> = (0..TRACKED).map(|_| (0.01 * r.normal()) as f32).collect();
            coords.push_group(&run, (step, 0), rank, &tensor, true, false, &index, &value);
            columns.0.extend_from_slice(&index);
            columns.1.extend_from_slice(&value);
        }
    }
    let flat_batches: Vec<RecordBatch> = coords
        .to_batches(BATCH_VALUES)
        .expect("batches")
        .iter()
        .map(|b| coords::explode(b).expect("explode"))
        .collect();
    let values = coords.len() as f64;

    let dir = tempfile::tempdir().expect("tempdir");
    let (mut t_flat, mut t_list, mut t_copy) = (Vec::new(), Vec::new(), Vec::new());
    let (mut size_flat, mut size_list) = (0, 0);
    for round in 0..ROUNDS {
        let t = Instant::now();
        let batches = coords.to_batches(BATCH_VALUES).expect("list batches");
        let (_, size) = sink::write_file(dir.path(), &format!("list-{round}.parquet"), &batches)
            .expect("write list");
        t_list.push(t.elapsed());
        size_list = size;

        let t = Instant::now();
        let (_, size) =
            sink::write_file(dir.path(), &format!("flat-{round}.parquet"), &flat_batches)
                .expect("write flat");
        t_flat.push(t.elapsed());
        size_flat = size;

        let t = Instant::now();
        let copied = columns.clone();
        t_copy.push(t.elapsed());
        assert_eq!(std::hint::black_box(copied).0.len(), columns.0.len());
    }
    let per_value = |d: Duration| d.as_secs_f64() * 1e9 / values;
    let (flat, list, copy) = (median(t_flat), median(t_list), median(t_copy));
    println!(
        "coords, {values} tracked values ({steps} steps × {RANKS} ranks × {TRACKED}), median of {ROUNDS}:"
    );
    println!(
        "flat (a row per value, the earlier layout; batches built beforehand): {:.1} ns per value, {:.2} bytes per value, {:.1} × the copy",
        per_value(flat),
        size_flat as f64 / values,
        flat.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "list (the table's layout, batches built and written): {:.1} ns per value, {:.2} bytes per value, {:.1} × the copy",
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
