//! Full-search Clauset fit timing. Reads raw little-endian f64 from `GRADTEL_BENCH_DATA` (as
//! written by `bench/powerlaw_vs_python.py`, which runs the `powerlaw` package on the same data
//! in the same run), or generates |Student-t(3)| values of size `GRADTEL_BENCH_N`.
//! Prints one JSON line.
//!
//! Run: `python3 bench/powerlaw_vs_python.py` (comparison) or
//! `cargo bench -p gradtel-stats --bench powerlaw` (ours alone).

use std::time::Instant;

use gradtel_stats::powerlaw::{FitOptions, fit};

fn main() {
    let data: Vec<f64> = match std::env::var("GRADTEL_BENCH_DATA") {
        Ok(path) => std::fs::read(&path)
            .expect("read GRADTEL_BENCH_DATA")
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        Err(_) => {
            let n: usize = std::env::var("GRADTEL_BENCH_N")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(100_000);
            let mut s = 0x9E37_79B9_7F4A_7C15u64;
            let mut u = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            // Student-t(3) as Z / sqrt(chi2_3 / 3), normals by Box–Muller.
            let mut normal = || {
                let (a, b) = (u(), u());
                (-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()
            };
            (0..n)
                .map(|_| {
                    let z = normal();
                    let c: f64 = (0..3).map(|_| normal().powi(2)).sum();
                    (z / (c / 3.0).sqrt()).abs()
                })
                .collect()
        }
    };
    let t = Instant::now();
    let f = fit(&data, &FitOptions::default()).expect("fit");
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{{\"n\": {}, \"seconds\": {secs}, \"xmin\": {:e}, \"alpha\": {:e}, \"D\": {:e}, \"n_tail\": {}}}",
        f.n, f.xmin, f.alpha, f.ks_d, f.n_tail
    );
}
