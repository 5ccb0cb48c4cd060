//! `gradtel analyze` on a lake written by the real demo: it completes, reports every object,
//! writes its files, and refuses bad input with clear errors.

mod common;

use std::fs::File;
use std::process::Command;

use common::Harness;
use gradtel_collector::tables::coords;
use gradtel_stats::rng::SplitMix64;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

fn gradtel(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_gradtel"))
        .args(args)
        .output()
        .expect("run gradtel")
}

#[test]
fn analyze_reports_every_object_of_a_demo_lake() {
    let dir = tempfile::tempdir().unwrap();
    let lake = dir.path().join("lake");
    let lake_s = lake.to_str().unwrap();
    let demo = gradtel(&[
        "demo", "--quiet", "--run-id", "an", "--ranks", "2", "--steps", "120", "--out", lake_s,
    ]);
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );

    let out = dir.path().join("report");
    let a = gradtel(&["analyze", lake_s, "--out", out.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&a.stdout);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    for object in [
        "dimension-wise",
        "iteration-wise",
        "SGN",
        "spectrum (gradient)",
    ] {
        assert!(
            stdout.contains(&format!("| {object} |")),
            "{object} missing: {stdout}"
        );
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let rows = json["summary"].as_array().unwrap();
    let all = |object: &str| {
        rows.iter()
            .find(|r| r["object"] == object && r["layer"] == "all")
            .unwrap_or_else(|| panic!("no {object} row"))
    };
    // 120 steps × 6 tensors, every one with a histogram; every tracked coordinate tested.
    assert_eq!(all("dimension-wise")["samples"], 720);
    assert!(all("iteration-wise")["tested"].as_u64().unwrap() > 100);
    assert!(all("SGN")["tested"].as_u64().unwrap() > 100);
    for f in [
        "summary.md",
        "summary.csv",
        "dimension.csv",
        "iteration.csv",
        "sgn.csv",
    ] {
        assert!(std::fs::metadata(out.join(f)).unwrap().len() > 0, "{f}");
    }
    for name in gradtel::analyze::figures::NAMES {
        check_png(&out.join(format!("{name}.png")));
        check_svg(&out.join(format!("{name}.svg")));
    }

    // A memory budget too small for the series reads coords in several hash partitions and
    // gives the same report.
    let one = gradtel(&["analyze", lake_s, "--format", "json"]);
    let parts = gradtel(&["analyze", lake_s, "--format", "json", "--memory-mb", "1"]);
    assert!(one.status.success() && parts.status.success());
    assert_eq!(
        String::from_utf8_lossy(&one.stdout),
        String::from_utf8_lossy(&parts.stdout)
    );

    // A lake written before `coords` held lists (a row per tracked value) reads the same.
    let coords_dir = lake.join("run=an/table=coords");
    let files: Vec<_> = std::fs::read_dir(&coords_dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    assert!(!files.is_empty());
    for path in &files {
        let flat: Vec<_> = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap())
            .unwrap()
            .build()
            .unwrap()
            .map(|b| coords::explode(&b.unwrap()).unwrap())
            .collect();
        assert_eq!(
            flat[0]
                .schema()
                .field_with_name("index")
                .unwrap()
                .data_type(),
            &arrow_schema::DataType::UInt64
        );
        let name = path.file_name().unwrap().to_str().unwrap();
        gradtel_collector::sink::write_file(&coords_dir, name, &flat).unwrap();
    }
    let flat = gradtel(&["analyze", lake_s, "--format", "json"]);
    assert!(flat.status.success());
    assert_eq!(
        String::from_utf8_lossy(&one.stdout),
        String::from_utf8_lossy(&flat.stdout)
    );

    // A lake whose steps and coords were written twice (every file copied under another name,
    // as an at-least-once writer could) reads the same: a repeated row counts once.
    for table in ["steps", "coords"] {
        let dir = lake.join(format!("run=an/table={table}"));
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let name = e.file_name().into_string().unwrap();
            if name.ends_with(".parquet") {
                std::fs::copy(e.path(), dir.join(format!("again-{name}"))).unwrap();
            }
        }
    }
    let twice = gradtel(&["analyze", lake_s, "--format", "json"]);
    assert!(twice.status.success());
    assert_eq!(
        String::from_utf8_lossy(&one.stdout),
        String::from_utf8_lossy(&twice.stdout)
    );

    // Selections narrow the samples.
    let a = gradtel(&[
        "analyze",
        lake_s,
        "--tensors",
        "fc1.*",
        "--steps",
        "10..19",
        "--format",
        "json",
    ]);
    assert!(a.status.success());
    let json: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let dim = json["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["object"] == "dimension-wise" && r["layer"] == "all")
        .unwrap()
        .clone();
    assert_eq!(dim["samples"], 20, "2 tensors × 10 steps");

    // Clear errors.
    let a = gradtel(&["analyze", lake_s, "--run", "nope"]);
    assert!(!a.status.success());
    assert!(String::from_utf8_lossy(&a.stderr).contains("run \"nope\" is not in"));
    std::fs::remove_dir_all(lake.join("run=an/table=spectra")).unwrap();
    let a = gradtel(&["analyze", lake_s]);
    assert!(!a.status.success());
    assert!(
        String::from_utf8_lossy(&a.stderr).contains("has no table \"spectra\""),
        "{}",
        String::from_utf8_lossy(&a.stderr)
    );
}

/// The summary row of `object` for `layer`.
fn summary_row(json: &serde_json::Value, object: &str, layer: &str) -> serde_json::Value {
    json["summary"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["object"] == object && r["layer"] == layer)
        .unwrap_or_else(|| panic!("no {object}/{layer} row"))
        .clone()
}

fn f(v: &serde_json::Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

#[test]
fn planted_structure_through_the_real_collector_is_recovered() {
    // Tensor `p.weight`: |g| ~ Pareto(1.5) at every step (a power law: density exponent 2.5).
    // Tensor `g.weight`: a fixed mean plus Gaussian minibatch noise of σ = 0.01 per rank, so
    // every tracked coordinate's series and its SGN are Gaussian.
    let (world, n, steps) = (4usize, 4_000u64, 120u64);
    let mut h = Harness::start(
        "planted",
        world as u32,
        &[("p.weight", n), ("g.weight", n)],
        "",
        &[],
        &["--track-count", "60"],
    );
    let mut r = SplitMix64::new(21);
    for step in 0..steps {
        for rank in 0..world {
            let p: Vec<f32> = (0..n)
                .map(|_| {
                    let v = r.pareto(1.5);
                    (if r.uniform() < 0.5 { -v } else { v }) as f32
                })
                .collect();
            let g: Vec<f32> = (0..n)
                .map(|j| ((j as f64 * 0.37).sin() * 0.05 + 0.01 * r.normal()) as f32)
                .collect();
            h.push(rank, step, &[("p.weight", &p), ("g.weight", &g)]);
        }
    }
    let lake = h.finish(steps as usize).to_path_buf();
    let a = gradtel(&["analyze", lake.to_str().unwrap(), "--format", "json"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let json: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();

    // Dimension-wise Pareto: the KS test keeps the power law and α̂ ≈ 2.5.
    let p = summary_row(&json, "dimension-wise", "p");
    assert_eq!(p["samples"], steps);
    assert!(f(&p, "powerlaw_not_rejected_ks") >= 0.9, "{p}");
    assert!((f(&p, "alpha_median") - 2.5).abs() < 0.1, "{p}");
    // Dimension-wise Gaussian-plus-sinusoid values: no heavy tail (a steep far tail at best).
    let g = summary_row(&json, "dimension-wise", "g");
    assert!(f(&g, "alpha_median") > 4.0, "{g}");

    // Iteration-wise: Pareto coordinates are far from Gaussian, Gaussian ones are not rejected
    // beyond the test's level (5 %, with slack for ~60 coordinates).
    let ip = summary_row(&json, "iteration-wise", "p");
    assert!(f(&ip, "gaussian_rejected") > 0.9, "{ip}");
    let ig = summary_row(&json, "iteration-wise", "g");
    assert!(f(&ig, "gaussian_rejected") < 0.2, "{ig}");
    assert!(ig["tested"].as_u64().unwrap() >= 40, "{ig}");
    // SGN of the Gaussian tensor: Gaussian.
    let sg = summary_row(&json, "SGN", "g");
    assert!(f(&sg, "gaussian_rejected") < 0.2, "{sg}");
    // The spectrum object is reported with its fit.
    let spec = summary_row(&json, "spectrum (gradient)", "model (projected)");
    assert!(
        spec["slope"].is_number() && spec["r2"].is_number(),
        "{spec}"
    );
}

/// A job resumed from a checkpoint under the same run id: two ranks report steps 0–29 with
/// Gaussian gradients, then go back to step 20 and report 20–39 with Pareto-tailed ones. The
/// collector merges the resumed steps across ranks again, in a new trajectory (none is taken as
/// a late report), and `gradtel analyze` counts each step once, from its latest trajectory.
#[test]
fn a_resumed_run_is_assembled_again_and_its_latest_trajectory_counts() {
    let (world, n) = (2usize, 2_000u64);
    let mut h = Harness::start(
        "resumed",
        world as u32,
        &[("p.weight", n)],
        "",
        &[],
        &["--track-count", "30"],
    );
    let mut r = SplitMix64::new(5);
    let trajectories = [(0..30u64, false), (20..40u64, true)];
    for (steps, pareto) in trajectories.clone() {
        for step in steps {
            for rank in 0..world {
                let p: Vec<f32> = (0..n)
                    .map(|_| {
                        let v = if pareto { r.pareto(1.5) } else { r.normal() };
                        (if r.uniform() < 0.5 { -v } else { v }) as f32
                    })
                    .collect();
                h.push(rank, step, &[("p.weight", &p)]);
            }
        }
    }
    h.wait_steps(50);
    let text = common::http_get(&h.metrics, "/metrics").1;
    assert_eq!(
        common::metric(&text, "gradtel_collector_trajectories_resumed_total"),
        1.0
    );
    assert_eq!(
        common::metric(&text, "gradtel_collector_reports_late_total"),
        0.0
    );
    let lake = h.finish(50).to_path_buf();

    // One `resumed` alert: the first rank back, from step 29 to step 20.
    let resumed: Vec<_> = common::records(&common::read_table(&lake, "alerts"))
        .into_iter()
        .filter(|r| r.s("kind") == "resumed")
        .collect();
    assert_eq!(resumed.len(), 1);
    assert_eq!(
        (
            resumed[0].n("step"),
            resumed[0].n("value"),
            resumed[0].n("threshold")
        ),
        (Some(20.0), Some(20.0), Some(29.0))
    );

    // Every step of both trajectories merged from both ranks; the resumed ones labelled.
    let model: Vec<_> = common::records(&common::read_table(&lake, "steps"))
        .into_iter()
        .filter(|r| r.s("scope_kind") == "model")
        .collect();
    assert_eq!(model.len(), 50);
    let mut first = Vec::new();
    let mut resumed = std::collections::BTreeMap::new();
    for row in &model {
        assert_eq!(row.b("late"), Some(false));
        assert_eq!(row.n("ranks_reported"), Some(2.0));
        let (step, t) = (row.n("step").unwrap() as u64, row.n("trajectory").unwrap());
        if t == 0.0 {
            first.push(step);
        } else {
            resumed.insert(step, t);
        }
    }
    first.sort();
    assert_eq!(first, (0..30).collect::<Vec<_>>());
    assert_eq!(
        resumed.keys().copied().collect::<Vec<_>>(),
        (20..40).collect::<Vec<_>>()
    );
    let labels: std::collections::BTreeSet<u64> = resumed.values().map(|&t| t as u64).collect();
    assert_eq!(labels.len(), 1, "one resumed trajectory: {labels:?}");
    // coords rows carry the label too: steps 20–29 were tracked in both trajectories.
    let coords = common::records(&common::read_table(&lake, "coords"));
    let of_step_25: std::collections::BTreeSet<u64> = coords
        .iter()
        .filter(|r| r.n("step") == Some(25.0))
        .map(|r| r.n("trajectory").unwrap() as u64)
        .collect();
    assert_eq!(of_step_25.len(), 2);

    // analyze: 40 steps, 20–39 from the resumed (Pareto) trajectory, 0–19 from the first.
    let out = lake.parent().unwrap().join("report");
    let a = gradtel(&[
        "analyze",
        lake.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["resumed_steps"], 10, "steps 20-29");
    assert!(String::from_utf8_lossy(&a.stdout).contains("10 steps were reported again"));
    let mut alpha_by_step = std::collections::BTreeMap::new();
    let mut dim = csv::Reader::from_path(out.join("dimension.csv")).unwrap();
    let headers = dim.headers().unwrap().clone();
    let col = |name: &str| headers.iter().position(|h| h == name).unwrap();
    let (step_col, alpha_col) = (col("step"), col("alpha"));
    for rec in dim.records() {
        let rec = rec.unwrap();
        let step: u64 = rec[step_col].parse().unwrap();
        let alpha: f64 = rec[alpha_col].parse().unwrap_or(f64::NAN);
        assert!(
            alpha_by_step.insert(step, alpha).is_none(),
            "step {step} twice"
        );
    }
    assert_eq!(alpha_by_step.len(), 40);
    for (step, alpha) in &alpha_by_step {
        if *step >= 20 {
            assert!(
                (alpha - 2.5).abs() < 0.4,
                "step {step}: α {alpha} (Pareto expected)"
            );
        } else {
            assert!(
                alpha.is_nan() || *alpha >= 3.5,
                "step {step}: α {alpha} (Gaussian values expected)"
            );
        }
    }
    // Each tracked coordinate's series: 40 steps (20 from each trajectory), not 50.
    let mut it = csv::Reader::from_path(out.join("iteration.csv")).unwrap();
    let n_col = it.headers().unwrap().iter().position(|h| h == "n").unwrap();
    let mut series = 0;
    for rec in it.records() {
        assert_eq!(&rec.unwrap()[n_col], "40");
        series += 1;
    }
    assert!(series > 10, "{series} tracked coordinates");
}

/// A valid PNG of the figure size with more than a background and one colour.
fn check_png(path: &std::path::Path) {
    let decoder = png::Decoder::new(std::fs::File::open(path).expect("png exists"));
    let mut reader = decoder.read_info().expect("valid PNG header");
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).expect("valid PNG data");
    assert_eq!((info.width, info.height), (960, 640), "{}", path.display());
    let px = info.color_type.samples();
    let colours: std::collections::HashSet<&[u8]> = buf[..info.buffer_size()].chunks(px).collect();
    assert!(
        colours.len() > 10,
        "{}: {} colours",
        path.display(),
        colours.len()
    );
}

/// A well-formed SVG with drawn paths in several colours.
fn check_svg(path: &std::path::Path) {
    let text = std::fs::read_to_string(path).expect("svg exists");
    assert!(text.trim_start().starts_with("<svg") && text.trim_end().ends_with("</svg>"));
    let shapes = ["<polyline", "<circle", "<rect", "<path", "<line"]
        .iter()
        .map(|t| text.matches(t).count())
        .sum::<usize>();
    assert!(shapes > 20, "{}: {shapes} shapes", path.display());
    let colours: std::collections::HashSet<&str> = text
        .match_indices("#")
        .map(|(i, _)| &text[i..(i + 7).min(text.len())])
        .collect();
    assert!(colours.len() > 3, "{}: colours {colours:?}", path.display());
}

#[test]
fn a_planted_spectrum_slope_is_reported_and_a_mistyped_column_is_a_clear_error() {
    // Independent coordinates with variances k^-1.5: the covariance spectrum itself.
    let (world, d, steps, slope) = (4usize, 256u64, 150u64, 1.5f64);
    let mut h = Harness::start(
        "spectrum",
        world as u32,
        &[("w.weight", d)],
        "[live]\nfd_ell = 32\nspectrum_every = 150\n",
        &[],
        &["--sketch-dim", "2048", "--track-count", "8"],
    );
    let sd: Vec<f64> = (1..=d).map(|k| (k as f64).powf(-slope / 2.0)).collect();
    let mut r = SplitMix64::new(9);
    for step in 0..steps {
        for rank in 0..world {
            let v: Vec<f32> = sd.iter().map(|s| (s * r.normal()) as f32).collect();
            h.push(rank, step, &[("w.weight", &v)]);
        }
    }
    let lake = h.finish(steps as usize).to_path_buf();
    let lake_s = lake.to_str().unwrap();
    let a = gradtel(&["analyze", lake_s, "--format", "json"]);
    assert!(a.status.success(), "{}", String::from_utf8_lossy(&a.stderr));
    let json: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    let spec = summary_row(&json, "spectrum (gradient)", "model (projected)");
    // Documented tolerance (docs/analysis.md): ±0.2 on the slope with ~600 rows.
    assert!((f(&spec, "slope") - slope).abs() < 0.2, "{spec}");
    assert!(f(&spec, "r2") > 0.9, "{spec}");

    // A `steps` file whose `scope_kind` column holds numbers: the error names the table, the
    // file, the column and both types.
    let bad = lake.join("run=spectrum/table=steps/part-zz-bad.parquet");
    let batch = arrow_array::RecordBatch::try_from_iter([
        (
            "step",
            std::sync::Arc::new(arrow_array::UInt64Array::from(vec![1u64]))
                as arrow_array::ArrayRef,
        ),
        (
            "scope_kind",
            std::sync::Arc::new(arrow_array::UInt64Array::from(vec![1u64])),
        ),
    ])
    .unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&bad).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    let a = gradtel(&["analyze", lake_s]);
    assert!(!a.status.success());
    let err = String::from_utf8_lossy(&a.stderr);
    assert!(
        err.contains("table steps")
            && err.contains("part-zz-bad.parquet")
            && err.contains("\"scope_kind\" has type UInt64, expected Utf8"),
        "{err}"
    );
}
