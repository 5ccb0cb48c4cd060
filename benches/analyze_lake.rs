//! `gradtel analyze` on a large lake: `GRADTEL_BENCH_STEPS` steps (default 1,000) ×
//! `GRADTEL_BENCH_COORDS` tracked coordinates (default 100,000) of one rank, written with the
//! collector's own table encoders and sink (the same files a collector writes), then analysed
//! in-process with a memory budget (`GRADTEL_BENCH_MEMORY_MB`, default 2048) smaller than the
//! series.
//!
//! Baseline in the same run: the Python `powerlaw` package (`powerlaw.Fit`, full x_min search,
//! as the paper) on the first `GRADTEL_BENCH_PY` (default 20) coordinates' series, written as
//! `.npy`; the per-coordinate ratio is reported. Without numpy/powerlaw the baseline is skipped.
//!
//! Run: `cargo bench --bench analyze_lake`. Results: bench/RESULTS.md.

use std::sync::Arc;
use std::time::Instant;

use gradtel::analyze::{AnalyzeArgs, Format, analyze};
use gradtel_collector::sink;
use gradtel_collector::tables::coords::{self, CoordRow};
use gradtel_collector::tables::spectra::{self, SpectrumRow};
use gradtel_stats::rng::SplitMix64;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Coordinate j's value at a step: Student-t(5) noise around a slow drift, scaled per tensor.
fn value(r: &mut SplitMix64, j: usize, step: usize) -> f32 {
    let drift = ((j as f64) * 0.001 + step as f64 * 0.01).sin() * 1e-3;
    (drift + 1e-3 * r.student_t(5)) as f32
}

fn main() -> anyhow::Result<()> {
    let steps = env("GRADTEL_BENCH_STEPS", 1000);
    let coords_n = env("GRADTEL_BENCH_COORDS", 100_000);
    let py_n = env("GRADTEL_BENCH_PY", 20);
    let dir = tempfile::tempdir()?;
    let lake = dir.path().join("lake");
    let run: Arc<str> = "bench".into();
    let tensors: Vec<Arc<str>> = (0..10).map(|t| format!("layer{t}.weight").into()).collect();

    // Write the lake: coords in files of ~10 steps, one spectrum snapshot, no steps table rows
    // beyond what analyze needs (dimension-wise samples come from `steps`: one tiny file).
    let t0 = Instant::now();
    let mut r = SplitMix64::new(7);
    let coords_dir = sink::partition_dir(&lake, &run, coords::TABLE)?;
    let mut py_series: Vec<Vec<f64>> = vec![Vec::with_capacity(steps); py_n.min(coords_n)];
    let per_file = (1_000_000 / coords_n).max(1);
    let mut rows = Vec::with_capacity(per_file * coords_n);
    for step in 0..steps {
        for j in 0..coords_n {
            let v = value(&mut r, j, step);
            if j < py_series.len() {
                py_series[j].push(f64::from(v));
            }
            rows.push(CoordRow {
                run_id: run.clone(),
                step: step as u64,
                trajectory: 0,
                rank: 0,
                tensor: tensors[j % tensors.len()].clone(),
                index: (j / tensors.len()) as u64,
                value: v,
                local: false,
                late: false,
            });
        }
        if rows.len() >= per_file * coords_n || step + 1 == steps {
            // A tensor's values of a step together, as the collector writes them: each
            // (step, tensor) is one row of lists.
            rows.sort_by(|a, b| (a.step, &a.tensor, a.index).cmp(&(b.step, &b.tensor, b.index)));
            sink::write_file(
                &coords_dir,
                &format!("part-{step:06}.parquet"),
                &[rows
                    .iter()
                    .cloned()
                    .collect::<coords::Coords>()
                    .to_batch()?],
            )?;
            rows.clear();
        }
    }
    let spectrum: Vec<SpectrumRow> = (1..=32u32)
        .map(|k| SpectrumRow {
            run_id: run.clone(),
            step: steps as u64,
            sketch: "gradient",
            k,
            eigenvalue: (f64::from(k)).powf(-1.2),
            rows: steps as u64,
            dim: 256,
            ell: 32,
            ..Default::default()
        })
        .collect();
    sink::write_file(
        &sink::partition_dir(&lake, &run, spectra::TABLE)?,
        "part-0.parquet",
        &[spectra::to_batch(&spectrum)?],
    )?;
    // An empty `steps` table: this benchmark measures the per-coordinate tests.
    let steps_dir = sink::partition_dir(&lake, &run, "steps")?;
    sink::write_file(
        &steps_dir,
        "part-0.parquet",
        &[gradtel_collector::tables::steps::to_batch(&[])?],
    )?;
    let written = t0.elapsed().as_secs_f64();
    let bytes: u64 = walk(&lake);
    println!(
        "lake: {steps} steps × {coords_n} coordinates = {} values, {:.0} MB of Parquet, written in {written:.1} s",
        steps * coords_n,
        bytes as f64 / 1e6
    );

    let args = AnalyzeArgs {
        lake: lake.clone(),
        run: None,
        steps: None,
        tensors: None,
        out: None,
        bootstrap: 0,
        seed: 0,
        memory_mb: env("GRADTEL_BENCH_MEMORY_MB", 2048) as u64,
        format: Format::Md,
        s3: gradtel::analyze::remote::S3Args {
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_ca: None,
            s3_cache: None,
        },
    };
    let t = Instant::now();
    let a = analyze(&args)?;
    let secs = t.elapsed().as_secs_f64();
    let tested = a
        .iteration
        .iter()
        .filter(|s| s.ks_rejected.is_some())
        .count();
    println!(
        "gradtel analyze: {secs:.1} s for {} coordinates ({tested} fitted) = {:.3} ms per coordinate of {steps} values (threads: {})",
        a.iteration.len(),
        secs * 1e3 / a.iteration.len().max(1) as f64,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let peak = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").to_string())
        })
        .unwrap_or_default();
    println!(
        "peak resident memory: {peak} kB (budget {} MB)",
        args.memory_mb
    );

    // Baseline: powerlaw.Fit on the first coordinates' series.
    let npy = dir.path().join("series.npy");
    write_npy(&npy, &py_series)?;
    let script = format!(
        "import time, numpy as np, powerlaw\n\
         x = np.load('{}')\n\
         t = time.perf_counter()\n\
         for row in x:\n\
         \x20   powerlaw.Fit(np.abs(row[row != 0]), verbose=False)\n\
         print((time.perf_counter() - t) / len(x))\n",
        npy.display()
    );
    match std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
    {
        Ok(o) if o.status.success() => {
            let per: f64 = String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse()
                .unwrap_or(f64::NAN);
            let ours = secs / a.iteration.len().max(1) as f64;
            println!(
                "baseline: powerlaw.Fit {:.1} ms per coordinate (first {} series) → gradtel analyze (all tests, all cores) is {:.0} × faster per coordinate",
                per * 1e3,
                py_series.len(),
                per / ours
            );
        }
        _ => println!("baseline skipped: python3 with numpy and powerlaw is not available"),
    }
    Ok(())
}

fn walk(p: &std::path::Path) -> u64 {
    std::fs::read_dir(p)
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        walk(&p)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

/// A 2-D little-endian f64 .npy (version 1.0).
fn write_npy(path: &std::path::Path, rows: &[Vec<f64>]) -> std::io::Result<()> {
    let (n, d) = (rows.len(), rows.first().map_or(0, Vec::len));
    let mut header = format!("{{'descr': '<f8', 'fortran_order': False, 'shape': ({n}, {d}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for r in rows {
        for v in r {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    std::fs::write(path, out)
}
