//! (1) Clauset bootstrap p-value: 1,000 replicates at n = 10⁴ on all cores.
//! (2) Streaming tests cost O(1) per merge: merging two summaries and running K², JB and Hill
//!     on the merged top-k takes the same time whether each summary covers 10³ or 10⁶ values.
//!     Baseline in the same run: one pass over the 10⁶ values (what a non-streaming test pays).
//!
//! (3) The collector's live dimension-wise Clauset fit on a merged histogram (64 x_min
//!     candidates, as `collector/src/live/dimwise.rs`), against one pass over the values.
//!
//! Run: `cargo bench -p gradtel-stats --bench estimators`. Results: bench/RESULTS.md.

use std::hint::black_box;
use std::time::Instant;

use gradtel_stats::bootstrap::p_value;
use gradtel_stats::normality::{dagostino_k2, jarque_bera};
use gradtel_stats::powerlaw::{FitOptions, Prepared, fit};
use gradtel_stats::rng::SplitMix64;
use gradtel_stats::tail::hill;
use gradtel_stats::{LogHistogram, Moments, TopK, powerlaw_binned};

fn main() {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut rng = SplitMix64::new(0xABCD_EF01_2345_6789);
    let xs: Vec<f64> = (0..10_000).map(|_| rng.student_t(3).abs()).collect();
    let o = FitOptions::default();
    let t = Instant::now();
    let f = fit(&xs, &o).expect("fit");
    let t_fit = t.elapsed().as_secs_f64();
    let prepared = Prepared::from_values(&xs).expect("prepared");
    let t = Instant::now();
    let b = p_value(&prepared, &f, &o, 1000, 1, threads).expect("bootstrap");
    let t_boot = t.elapsed().as_secs_f64();
    println!(
        "bootstrap: n=10000 |t3|, 1000 replicates, {threads} threads: {t_boot:.2} s (one fit {:.1} ms), p = {}",
        t_fit * 1e3,
        b.p_value
    );

    for n in [1_000usize, 1_000_000] {
        let vals: Vec<f64> = (0..n).map(|_| rng.student_t(3)).collect();
        let (ma, mb) = (
            Moments::from_slice(&vals[..n / 2]),
            Moments::from_slice(&vals[n / 2..]),
        );
        let abs: Vec<f64> = vals.iter().map(|v| v.abs()).collect();
        let (ta, tb) = (
            TopK::from_values(64, &abs[..n / 2]),
            TopK::from_values(64, &abs[n / 2..]),
        );
        let reps = 100_000;
        let t = Instant::now();
        for _ in 0..reps {
            let mut m = black_box(ma);
            m.merge(black_box(&mb));
            let mut top = black_box(&ta).clone();
            top.merge(black_box(&tb));
            black_box(dagostino_k2(&m).ok());
            black_box(jarque_bera(&m).ok());
            black_box(hill(&top.sorted_desc(), 31).ok());
        }
        let per = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        black_box(Moments::from_slice(black_box(&vals)));
        let pass = t.elapsed().as_secs_f64();
        println!(
            "merge + K2 + JB + Hill(top-64), summaries of {n:>9} values: {:7.2} us; one pass over the values: {:9.2} us",
            per * 1e6,
            pass * 1e6
        );
    }

    // |t3| (a heavy tail), and Gaussian magnitudes, whose fit runs to steep far tails (α̂ ≫ 10).
    for (law, n) in [
        ("|t3|", 10_000usize),
        ("|t3|", 1_000_000),
        ("|N(0,1)|", 1_000_000),
    ] {
        let vals: Vec<f64> = (0..n)
            .map(|_| {
                if law == "|t3|" {
                    rng.student_t(3).abs()
                } else {
                    rng.normal().abs()
                }
            })
            .collect();
        let mut h = LogHistogram::default();
        for &v in &vals {
            h.record(v);
        }
        let reps = 200;
        let t = Instant::now();
        for _ in 0..reps {
            black_box(powerlaw_binned::fit_histogram(black_box(&h), 50, 64).ok());
        }
        let per = t.elapsed().as_secs_f64() / reps as f64;
        let t = Instant::now();
        black_box(Moments::from_slice(black_box(&vals)));
        let pass = t.elapsed().as_secs_f64();
        println!(
            "binned Clauset fit (64 candidates), histogram of {n:>9} {law:>8} values ({} buckets): {:8.1} us; one pass over the values: {:9.1} us",
            h.buckets().count(),
            per * 1e6,
            pass * 1e6
        );
    }
}
