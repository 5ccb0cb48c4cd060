//! What dirty upper vector state costs the estimators that run after faer, and that
//! `FrequentDirections` no longer leaves it (`stats/src/simd_state.rs`).
//!
//! Workload: the collector's dimension-wise Clauset fits (`powerlaw_binned::fit_histogram`, 64
//! candidates) over 200 histograms of 1k–40k gradient-like magnitudes (log-normal spread times
//! Student-t(3)). Baseline, same run and thread: the same fits on a clean thread. Then: after
//! one raw faer product (what faer leaves behind), after `clear_upper_state`, and after
//! Frequent-Directions inserts and a spectrum (which clear it themselves).
//!
//! Run: `cargo bench -p gradtel-stats --bench simd_state`. Results: bench/RESULTS.md.

use std::hint::black_box;
use std::time::Instant;

use gradtel_stats::fd::FrequentDirections;
use gradtel_stats::rng::SplitMix64;
use gradtel_stats::simd_state::clear_upper_state;
use gradtel_stats::{LogHistogram, powerlaw_binned};

fn main() {
    let mut rng = SplitMix64::new(0x5EED);
    let hists: Vec<LogHistogram> = (0..200)
        .map(|i| {
            let n = 1_000 + (i * 197) % 40_000;
            let mut h = LogHistogram::default();
            for _ in 0..n {
                h.record(1e-3 * (2.0 * rng.normal()).exp() * rng.student_t(3).abs());
            }
            h
        })
        .collect();
    let fits = || {
        let t = Instant::now();
        for _ in 0..5 {
            for h in &hists {
                black_box(powerlaw_binned::fit_histogram(black_box(h), 50, 64).ok());
            }
        }
        t.elapsed().as_secs_f64() / 5.0
    };
    fits(); // warm-up
    let clean = fits();
    let report = |label: &str, t: f64| {
        println!(
            "{label:<44} {:8.2} ms  ({:.2} x the clean thread)",
            t * 1e3,
            t / clean
        );
    };
    report("fits on a clean thread (baseline)", clean);

    let a = faer::Mat::<f64>::from_fn(64, 64, |i, j| ((i + 2 * j) % 7) as f64);
    let mut out = faer::Mat::<f64>::zeros(64, 64);
    faer::linalg::matmul::matmul(
        out.as_mut(),
        faer::Accum::Replace,
        a.as_ref(),
        a.as_ref(),
        1.0,
        faer::Par::Seq,
    );
    black_box(&out);
    report("after one raw faer product (dirty state)", fits());
    clear_upper_state();
    report("after clear_upper_state", fits());

    let mut fd = FrequentDirections::new(256, 32, false).expect("valid sketch");
    for _ in 0..200 {
        let row: Vec<f64> = (0..256).map(|_| rng.normal()).collect();
        fd.insert(&row).expect("finite row");
    }
    black_box(fd.spectrum().expect("spectrum"));
    report("after FD inserts and a spectrum", fits());
}
