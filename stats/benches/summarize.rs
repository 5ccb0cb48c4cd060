//! Agent hot path: summarising one tensor's gradient (f32) versus baselines over the same buffer
//! measured in the same run: a plain sum (the least any reader of the buffer does) and a memcpy.
//!
//! Run: `cargo bench -p gradtel-stats --bench summarize`. Results: bench/RESULTS.md.

use std::hint::black_box;
use std::time::{Duration, Instant};

use gradtel_stats::GradSummary;

/// Best of `reps` runs of `f`, in seconds.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best.as_secs_f64()
}

fn main() {
    let n: usize = std::env::var("GRADTEL_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 22);
    // Heavy-tailed values spanning many binades, like real gradients.
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let data: Vec<f32> = (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            let v = ((s >> 16) & 0xFFFFFF) as f32 / (1u64 << 24) as f32 + 1e-6;
            (u - 0.5) * 1e-3 / v.powf(0.8)
        })
        .collect();
    let bytes = n as f64 * 4.0;
    let mut dst = vec![0f32; n];

    let t_copy = best(10, || {
        dst.copy_from_slice(black_box(&data));
        black_box(&dst);
    });
    let t_sum = best(10, || {
        black_box(black_box(&data).iter().map(|&x| f64::from(x)).sum::<f64>());
    });
    let t_summary = best(5, || {
        let mut g = GradSummary::new(64, 7).expect("valid");
        g.extend_f32(black_box(&data));
        black_box(&g);
    });
    let t_hist = best(5, || {
        let mut h = gradtel_stats::LogHistogram::default();
        let mut block = [0f64; 256];
        for c in black_box(&data).chunks(256) {
            for (b, &x) in block.iter_mut().zip(c) {
                *b = f64::from(x).abs();
            }
            h.record_block(&block[..c.len()]);
        }
        black_box(&h);
    });
    let t_moments = best(5, || {
        let mut m = gradtel_stats::Moments::new();
        let mut block = [0f64; 256];
        for c in black_box(&data).chunks(256) {
            for (b, &x) in block.iter_mut().zip(c) {
                *b = f64::from(x);
            }
            m.merge(&gradtel_stats::Moments::from_block(&block[..c.len()]));
        }
        black_box(&m);
    });
    let gbs = |t: f64| bytes / t / 1e9;
    println!("values: {n} f32 ({:.1} MiB)", bytes / (1 << 20) as f64);
    println!(
        "memcpy          {:8.3} ms  {:6.2} GB/s",
        t_copy * 1e3,
        gbs(t_copy)
    );
    println!(
        "sum (f64)       {:8.3} ms  {:6.2} GB/s",
        t_sum * 1e3,
        gbs(t_sum)
    );
    println!(
        "GradSummary     {:8.3} ms  {:6.2} GB/s  ({:.1} ns/value)",
        t_summary * 1e3,
        gbs(t_summary),
        t_summary * 1e9 / n as f64
    );
    println!(
        "  of which histogram {:8.3} ms, moments {:8.3} ms",
        t_hist * 1e3,
        t_moments * 1e3
    );
    println!("ratio summary/sum    {:.2}", t_summary / t_sum);
    println!("ratio summary/memcpy {:.2}", t_summary / t_copy);
}
