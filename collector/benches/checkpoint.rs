//! What a run's live-state checkpoint costs (`collector/src/live/checkpoint.rs`), against a
//! copy of the same number of f64 values in the same run.
//!
//! The state: `GRADTEL_BENCH_TRACKED` (default 10,000) tracked coordinates with full windows —
//! 100 iteration-wise values and 800 SGN values (8 ranks) each — and both covariance sketches
//! (m = 256, ℓ = 32), as a run with those settings holds after 100 steps. Timed, median of
//! `ROUNDS`:
//! * **copy** (on the pipeline's thread): `Live::state`, what `Live::checkpoint` copies out;
//! * **encode**: `checkpoint::frame` (protobuf, CRC-32), done by the writer;
//! * **write**: `checkpoint::write`, the file written, synced and renamed (a temporary
//!   directory: the disk of `TMPDIR`);
//! * **restore**: `checkpoint::load` and `Live::restore`, what a start costs;
//! * **baseline**: `Vec::clone` of as many f64 values as the state holds.
//!
//! Run: `cargo bench -p gradtel-collector --bench checkpoint`. Results: bench/RESULTS.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gradtel_collector::config::FileConfig;
use gradtel_collector::live::Live;
use gradtel_collector::live::checkpoint::{
    self, AlertsState, IdentityState, RunState, SketchState, SketchesState, TensorWindowsState,
    WindowsState,
};
use gradtel_collector::metrics::CollectorMetrics;
use gradtel_stats::fd::FrequentDirections;
use gradtel_stats::rng::SplitMix64;

const ROUNDS: usize = 7;
const WINDOW: usize = 100;
const SGN_RANKS: usize = 8;
const DIM: usize = 256;
const ELL: usize = 32;

fn median(mut xs: Vec<Duration>) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

fn windows(r: &mut SplitMix64, tracked: usize, per: usize) -> WindowsState {
    let mut t = TensorWindowsState {
        name: "layer0.weight".into(),
        ..Default::default()
    };
    for i in 0..tracked {
        t.index.push(i as u64 * 37);
        t.len.push(per as u32);
        t.values.extend((0..per).map(|_| 0.01 * r.normal()));
    }
    WindowsState {
        tensors: vec![t],
        refused: 0,
    }
}

fn sketch(r: &mut SplitMix64) -> SketchState {
    let mut fd = FrequentDirections::new(DIM, ELL, true).expect("valid shape");
    for _ in 0..100 * SGN_RANKS {
        let row: Vec<f64> = (1..=DIM)
            .map(|k| r.normal() * (k as f64).powf(-0.75))
            .collect();
        fd.insert(&row).expect("row of the sketch's dimension");
    }
    SketchState::from(fd.state())
}

fn main() {
    let tracked: usize = std::env::var("GRADTEL_BENCH_TRACKED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mut r = SplitMix64::new(11);
    let state = RunState {
        version: checkpoint::VERSION,
        run_id: "bench-run".into(),
        saved_at_ns: 1,
        steps_seen: 100,
        since_windows: 3,
        since_spectra: 7,
        iteration: Some(windows(&mut r, tracked, WINDOW)),
        sgn: Some(windows(&mut r, tracked, WINDOW * SGN_RANKS)),
        sketches: Some(SketchesState {
            ell: ELL as u64,
            identity: Some(IdentityState {
                kind: 1,
                seed: 7,
                dim: DIM as u64,
            }),
            gradient: Some(sketch(&mut r)),
            sgn: Some(sketch(&mut r)),
            refused: 0,
        }),
        alerts: Some(AlertsState {
            norms: (0..100).map(|_| r.normal().abs()).collect(),
            tails: (0..100).map(|_| 2.0 + r.normal().abs()).collect(),
            ..Default::default()
        }),
        gauges: None,
    };
    let values = tracked * WINDOW * (1 + SGN_RANKS) + 2 * 2 * ELL * DIM;
    let mut cfg = FileConfig::default();
    cfg.live.fd_ell = ELL;
    let metrics = Arc::new(CollectorMetrics::default());
    let mut live = Live::new(cfg.clone(), metrics.clone());
    let r = live.restore(vec![state]);
    assert_eq!((r.restored, r.refused.len()), (1, 0), "{:?}", r.refused);

    let dir = tempfile::tempdir().expect("temporary directory");
    let baseline_buf: Vec<f64> = (0..values).map(|i| i as f64).collect();
    let (mut copy, mut encode, mut write, mut restore, mut baseline) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let b = baseline_buf.clone();
        baseline.push(t.elapsed());
        std::hint::black_box(&b);
        drop(b);

        let t = Instant::now();
        let s = live.state("bench-run", 2).expect("the restored run");
        copy.push(t.elapsed());

        let t = Instant::now();
        let framed = checkpoint::frame(&s);
        encode.push(t.elapsed());
        bytes = framed.len();

        let t = Instant::now();
        checkpoint::write(dir.path(), "bench-run", &framed).expect("checkpoint written");
        write.push(t.elapsed());

        let t = Instant::now();
        let (states, damaged) = checkpoint::load(dir.path());
        let mut fresh = Live::new(cfg.clone(), metrics.clone());
        let r = fresh.restore(states);
        restore.push(t.elapsed());
        assert_eq!((r.restored, damaged.len(), r.refused.len()), (1, 0, 0));
    }
    let ns = |d: Duration| d.as_secs_f64() * 1e9 / values as f64;
    let (base, copy, encode, write, restore) = (
        median(baseline),
        median(copy),
        median(encode),
        median(write),
        median(restore),
    );
    println!(
        "checkpoint of {tracked} tracked coordinates: {values} values, {:.1} MB on disk",
        bytes as f64 / 1e6
    );
    println!(
        "baseline (Vec::clone)  {:>9.2} ms  {:>6.2} ns/value",
        base.as_secs_f64() * 1e3,
        ns(base)
    );
    for (what, d) in [
        ("copy (pipeline)", copy),
        ("encode", encode),
        ("write + sync", write),
        ("load + restore", restore),
    ] {
        println!(
            "{what:<22} {:>9.2} ms  {:>6.2} ns/value  {:>6.1} x baseline",
            d.as_secs_f64() * 1e3,
            ns(d),
            d.as_secs_f64() / base.as_secs_f64()
        );
    }
}
