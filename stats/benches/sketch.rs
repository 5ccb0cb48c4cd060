//! (1) CountSketch projection throughput against a plain sum over the same buffer.
//! (2) Frequent Directions (ℓ = 128, centred) over rows read from `GRADTEL_BENCH_ROWS` (raw
//!     little-endian f64, `GRADTEL_BENCH_DIM` columns), as written by `bench/fd_vs_numpy.py`,
//!     which times numpy on the same rows in the same run; prints one JSON line for it.
//!
//! Run: `python3 bench/fd_vs_numpy.py` (both), or `cargo bench -p gradtel-stats --bench sketch`
//! (projection only).

use std::hint::black_box;
use std::time::Instant;

use gradtel_stats::fd::FrequentDirections;
use gradtel_stats::projection::{CountSketch, Projection};

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    if let Ok(path) = std::env::var("GRADTEL_BENCH_ROWS") {
        let dim: usize = std::env::var("GRADTEL_BENCH_DIM")
            .ok()
            .and_then(|v| v.parse().ok())
            .expect("GRADTEL_BENCH_DIM");
        let ell: usize = std::env::var("GRADTEL_BENCH_ELL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(128);
        let bytes = std::fs::read(path).expect("read rows");
        let vals: Vec<f64> = bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect();
        let t = Instant::now();
        let mut fd = FrequentDirections::new(dim, ell, true).expect("sketch");
        for row in vals.chunks_exact(dim) {
            fd.insert(row).expect("row");
        }
        let ev = fd.eigenvalues().expect("eigenvalues");
        let secs = t.elapsed().as_secs_f64();
        let norm = fd.normaliser();
        let ev: Vec<String> = ev
            .iter()
            .take(ell)
            .map(|v| format!("{:e}", v / norm))
            .collect();
        println!(
            "{{\"seconds\": {secs}, \"rows\": {}, \"bound\": {:e}, \"eigenvalues\": [{}]}}",
            fd.rows(),
            fd.shrinkage() / norm,
            ev.join(", ")
        );
        return;
    }
    let n = 1 << 24;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 2654435761u64 as usize) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    let t_sum = best(10, || {
        black_box(black_box(&x).iter().map(|&v| f64::from(v)).sum::<f64>());
    });
    let p = CountSketch::new(256, 7);
    let mut out = vec![0.0; 256];
    let t_cs = best(5, || {
        out.iter_mut().for_each(|o| *o = 0.0);
        p.project_range(0, black_box(&x), &mut out);
        black_box(&out);
    });
    let t_floor = best(5, || {
        out.iter_mut().for_each(|o| *o = 0.0);
        for (j, &v) in black_box(&x).iter().enumerate() {
            out[j & 255] += f64::from(v);
        }
        black_box(&out);
    });
    eprintln!("scatter floor (row = j mod 256): {:.2} ms", t_floor * 1e3);
    let gbs = |t: f64| n as f64 * 4.0 / t / 1e9;
    println!("values: {n} f32 ({} MiB)", (n * 4) >> 20);
    println!(
        "sum (f64)           {:8.2} ms {:6.2} GB/s",
        t_sum * 1e3,
        gbs(t_sum)
    );
    println!(
        "CountSketch m=256   {:8.2} ms {:6.2} GB/s",
        t_cs * 1e3,
        gbs(t_cs)
    );
    println!("throughput ratio CountSketch/sum: {:.2}", t_sum / t_cs);
}
