//! End-to-end checks of the collector's live estimators and alerts: synthetic gradients of known
//! structure go through real `gradtel-agent` and `gradtel-collector` processes, and the live
//! tables are read back from Parquet and compared with the planted truth.

mod common;

use std::path::Path;
use std::time::Duration;

use common::*;
use gradtel_stats::rng::SplitMix64;

/// A Pareto(α) magnitude with a random sign.
fn signed_pareto(r: &mut SplitMix64, alpha: f64) -> f32 {
    let v = r.pareto(alpha);
    (if r.uniform() < 0.5 { -v } else { v }) as f32
}

#[test]
fn pareto_tails_give_the_planted_dimension_wise_index() {
    let alpha = 1.5;
    let n = 20_000u64;
    let mut h = Harness::start("pareto", 2, &[("w.weight", n)], "", &[], &[]);
    let mut r = SplitMix64::new(11);
    for step in 0..10 {
        for rank in 0..2 {
            let v: Vec<f32> = (0..n).map(|_| signed_pareto(&mut r, alpha)).collect();
            h.push(rank, step, &[("w.weight", &v)]);
        }
    }
    let tails = records(&read_table(h.finish(10), "tails"));
    let est = |estimator: &str| -> Vec<f64> {
        tails
            .iter()
            .filter(|t| {
                t.s("object") == "dimension"
                    && t.s("scope_kind") == "tensor"
                    && t.s("estimator") == estimator
            })
            .filter_map(|t| t.n("alpha"))
            .collect()
    };
    let hill = est("hill");
    assert_eq!(hill.len(), 10);
    let mean = hill.iter().sum::<f64>() / hill.len() as f64;
    // Hill with k = 63 of 40 000 values: se ≈ α/√63 ≈ 0.19 per step, ≈ 0.06 over 10 steps.
    assert!((mean - alpha).abs() < 0.2, "Hill {mean} vs {alpha}");
    // The histogram Clauset fit sees every value: tight.
    let clauset = est("clauset");
    assert!(!clauset.is_empty());
    for a in &clauset {
        assert!((a - alpha).abs() < 0.1, "Clauset {a} vs {alpha}");
    }
    let not_rejected = tails
        .iter()
        .filter(|t| t.s("estimator") == "clauset" && t.s("object") == "dimension")
        .all(|t| t.b("rejected") == Some(false));
    assert!(not_rejected, "a pure Pareto sample passes the KS test");
}

#[test]
fn gaussian_rank_deviations_are_judged_gaussian_with_the_right_scale() {
    let (world, sigma, n, steps) = (4usize, 0.01f64, 4_000u64, 100u64);
    let toml = "[live]\nwindow = 100\nwindow_every = 100\n";
    let mut h = Harness::start(
        "sgn",
        world as u32,
        &[("w.weight", n)],
        toml,
        &[],
        &["--track-count", "200"],
    );
    let mut r = SplitMix64::new(5);
    for step in 0..steps {
        // The full-batch gradient drifts; each rank adds N(0, σ²) minibatch noise.
        let mean: Vec<f64> = (0..n)
            .map(|j| (j as f64 * 0.01 + step as f64 * 0.1).sin() * 0.05)
            .collect();
        for rank in 0..world {
            let v: Vec<f32> = mean
                .iter()
                .map(|m| (m + sigma * r.normal()) as f32)
                .collect();
            h.push(rank, step, &[("w.weight", &v)]);
        }
    }
    let lake = h.finish(steps as usize).to_path_buf();
    let sgn = records(&read_table(&lake, "sgn"));
    let model: Vec<&Record> = sgn
        .iter()
        .filter(|s| s.s("scope_kind") == "model")
        .collect();
    assert_eq!(model.len(), steps as usize);
    let rms = model.iter().filter_map(|s| s.n("rms")).sum::<f64>() / model.len() as f64;
    // √(R/(R−1)) undoes the shrinkage of deviations from a mean of R ranks.
    assert!(
        (rms / sigma - 1.0).abs() < 0.05,
        "SGN rms {rms} vs σ {sigma}"
    );
    let k2_rejects = model
        .iter()
        .filter(|s| s.n("k2_p").is_some_and(|p| p < 0.05))
        .count();
    assert!(
        k2_rejects <= 15,
        "{k2_rejects} of {steps} steps reject Gaussianity"
    );
    assert!(
        model
            .iter()
            .all(|s| s.n("noise_scale_per_example").is_some())
    );

    let tails = records(&read_table(&lake, "tails"));
    let window = |estimator: &str| {
        tails
            .iter()
            .find(|t| {
                t.s("object") == "sgn"
                    && t.s("scope_kind") == "model"
                    && t.s("estimator") == estimator
            })
            .unwrap_or_else(|| panic!("no sgn window row for {estimator}"))
            .clone()
    };
    let k2 = window("dagostino_k2");
    assert!(k2.n("coordinates").unwrap() > 100.0);
    assert!(k2.n("rejected_fraction").unwrap() < 0.15, "{k2:?}");
    assert!(window("vuong_exponential").n("rejected_fraction").unwrap() > 0.5);
}

#[test]
fn a_planted_covariance_spectrum_gives_its_slope_live() {
    let (world, d, steps, s) = (4usize, 256u64, 150u64, 1.5f64);
    let toml = "[live]\nfd_ell = 32\nspectrum_every = 150\n";
    let mut h = Harness::start(
        "spectrum",
        world as u32,
        &[("w.weight", d)],
        toml,
        &[],
        &["--sketch-dim", "2048", "--track-count", "0"],
    );
    let sd: Vec<f64> = (1..=d).map(|k| (k as f64).powf(-s / 2.0)).collect();
    let mut r = SplitMix64::new(9);
    for step in 0..steps {
        for rank in 0..world {
            let v: Vec<f32> = sd.iter().map(|sd| (sd * r.normal()) as f32).collect();
            h.push(rank, step, &[("w.weight", &v)]);
        }
    }
    let spectra = records(&read_table(h.finish(steps as usize), "spectra"));
    let grad: Vec<&Record> = spectra
        .iter()
        .filter(|r| r.s("sketch") == "gradient")
        .collect();
    assert!(!grad.is_empty());
    let slope = grad[0].n("slope").unwrap();
    assert!((slope - s).abs() < 0.2, "live slope {slope} vs planted {s}");
    assert!(grad[0].n("r2").unwrap() > 0.9);
    assert_eq!(grad[0].n("rows"), Some((world as u64 * steps) as f64));
    // The top eigenvalue is the largest variance, 1, within sampling error and the FD bound.
    let top = grad.iter().find(|r| r.n("k") == Some(1.0)).unwrap();
    let (l1, bound) = (top.n("eigenvalue").unwrap(), top.n("error_bound").unwrap());
    assert!(l1 <= 1.25 && l1 + bound >= 0.8, "λ1 {l1} + {bound}");
}

/// (kind, step) of every alert of a lake.
fn alerts(lake: &Path) -> Vec<(String, u64, String)> {
    let mut a: Vec<_> = records(&read_table(lake, "alerts"))
        .iter()
        .map(|r| {
            (
                r.s("kind").to_string(),
                r.n("step").unwrap() as u64,
                r.s("scope").to_string(),
            )
        })
        .collect();
    a.sort();
    a
}

#[test]
fn a_nan_and_a_norm_spike_each_raise_exactly_their_alert() {
    let n = 2_000u64;
    let mut h = Harness::start(
        "faults",
        2,
        &[("w.weight", n)],
        "",
        &[],
        &["--sketch-dim", "0"],
    );
    let mut r = SplitMix64::new(3);
    for step in 0..80u64 {
        for rank in 0..2 {
            let v = faulty_gradient(&mut r, n, step, rank);
            h.push(rank, step, &[("w.weight", &v)]);
        }
    }
    h.wait_steps(80);
    check_metrics(&h.metrics, "faults");
    let lake = h.finish(80).to_path_buf();
    assert_eq!(
        alerts(&lake),
        vec![
            ("nonfinite".to_string(), 30, String::new()),
            ("norm_spike".to_string(), 50, String::new())
        ]
    );
    let steps = records(&read_table(&lake, "steps"));
    let z = steps
        .iter()
        .find(|s| s.s("scope_kind") == "model" && s.n("step") == Some(50.0))
        .and_then(|s| s.n("norm_robust_z"))
        .unwrap();
    assert!(z > 8.0, "{z}");
}

/// The rows the gradient sketch had taken at its last spectrum snapshot.
fn gradient_sketch_rows(lake: &Path) -> f64 {
    records(&read_table(lake, "spectra"))
        .iter()
        .filter(|s| s.s("sketch") == "gradient")
        .map(|s| s.n("rows").unwrap())
        .fold(0.0, f64::max)
}

/// A norm spike 10 steps after a collector restart is judged against the history from before
/// it: the live state went through the restart in its checkpoint. `norm_min_history = 15`, so
/// a collector that started afresh would have too short a history and raise nothing.
fn a_spike_after_a_restart_is_judged_on_the_history_before_it(crash: bool) {
    let n = 2_000u64;
    let run = if crash { "ckpt-crash" } else { "ckpt-stop" };
    // A crash keeps the last checkpoint committed with a Parquet write (each write here: this
    // state is small, so its checkpoint costs well under the default 2 % of the 1 s between
    // writes); a clean stop writes one as it drains.
    let toml = "[alerts]\nnorm_min_history = 15\n";
    let roll = ["--roll-interval", "1s"];
    let mut h = Harness::start(run, 2, &[("w.weight", n)], toml, &roll, &[]);
    let mut r = SplitMix64::new(5);
    let mut push = |h: &mut Harness, steps: std::ops::Range<u64>| {
        for step in steps {
            for rank in 0..2 {
                let mut v: Vec<f32> = (0..n).map(|_| (0.01 * r.normal()) as f32).collect();
                if step == 50 {
                    v.iter_mut().for_each(|x| *x *= 100.0);
                }
                h.push(rank, step, &[("w.weight", &v)]);
            }
        }
    };
    push(&mut h, 0..40);
    h.wait_steps(40);
    let dir = gradtel_collector::live::checkpoint::dir(&h.out.join("_wal"));
    if crash {
        // The rows are published before their checkpoint is written.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while gradtel_collector::live::checkpoint::load(&dir)
            .0
            .first()
            .is_none_or(|s| s.steps_seen < 40)
        {
            assert!(
                std::time::Instant::now() < deadline,
                "no checkpoint of 40 steps"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    h.restart_collector(crash);
    // Before any new step, /metrics already shows the run as it stood.
    let text = http_get(&h.metrics, "/metrics").1;
    assert_eq!(
        metric(&text, &format!("gradtel_run_last_step{{run=\"{run}\"}}")),
        39.0
    );
    assert!(text.contains(&format!(
        "gradtel_run_tail_index{{run=\"{run}\",scope=\"model\","
    )));
    let (states, refused) = gradtel_collector::live::checkpoint::load(&dir);
    assert!(refused.is_empty());
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].steps_seen, 40);
    push(&mut h, 40..60);
    h.wait_steps(60);
    let text = http_get(&h.metrics, "/metrics").1;
    assert_eq!(
        metric(&text, "gradtel_collector_live_runs_restored_total"),
        1.0
    );
    assert_eq!(
        metric(&text, "gradtel_collector_live_checkpoint_errors_total"),
        0.0
    );
    let lake = h.finish(60).to_path_buf();
    assert_eq!(
        alerts(&lake),
        vec![("norm_spike".to_string(), 50, String::new())]
    );
    // The clean stop's checkpoint holds every step once.
    let (states, _) = gradtel_collector::live::checkpoint::load(&dir);
    assert_eq!(states[0].steps_seen, 60);
    // The sketch went on from the checkpoint: the last snapshot counts every step's rows.
    assert_eq!(
        gradient_sketch_rows(&lake),
        100.0,
        "2 ranks × 50 steps at the snapshot of step 49"
    );
}

#[test]
fn live_state_survives_a_collector_crash() {
    a_spike_after_a_restart_is_judged_on_the_history_before_it(true);
}

#[test]
fn live_state_survives_a_collector_restart() {
    a_spike_after_a_restart_is_judged_on_the_history_before_it(false);
}

/// A collector killed while some steps are published, some only logged and some still at the
/// agents: the restarted collector's live state holds every step exactly once. With the
/// defaults each Parquet write of this run carries its checkpoint, committed with it, and the
/// write-ahead log replays the rest; with a checkpoint at most every 30 s (the cadence before
/// the time share), the second write's steps are missing.
#[test]
fn a_collector_killed_between_writes_loses_no_step_of_its_live_state() {
    let n = 1_000u64;
    let run = "ckpt-any";
    // Writes 1 s apart (the tests' default is 200 ms): this state's checkpoint costs 2.5–4.7 ms
    // of CPU here, so the default 2 % share allows one every 0.13–0.24 s.
    let roll = ["--roll-interval", "1s"];
    let mut h = Harness::start(run, 2, &[("w.weight", n)], "", &roll, &[]);
    let mut r = SplitMix64::new(11);
    let mut push = |h: &mut Harness, steps: std::ops::Range<u64>| {
        for step in steps {
            for rank in 0..2 {
                let v: Vec<f32> = (0..n).map(|_| (0.01 * r.normal()) as f32).collect();
                h.push(rank, step, &[("w.weight", &v)]);
            }
        }
    };
    push(&mut h, 0..20);
    h.wait_steps(20);
    push(&mut h, 20..30);
    h.wait_steps(30);
    push(&mut h, 30..40);
    h.restart_collector(true);
    push(&mut h, 40..60);
    let lake = h.finish(60).to_path_buf();
    let dir = gradtel_collector::live::checkpoint::dir(&lake.join("_wal"));
    let (states, refused) = gradtel_collector::live::checkpoint::load(&dir);
    assert!(refused.is_empty());
    assert_eq!(states.len(), 1);
    assert_eq!(states[0].steps_seen, 60, "each step observed once");
    assert_eq!(model_steps(&lake), (0..60).collect::<Vec<_>>());
    assert_eq!(
        gradient_sketch_rows(&lake),
        100.0,
        "2 ranks × 50 steps at the snapshot of step 49"
    );
}

#[test]
fn a_rank_that_stops_reporting_raises_the_straggler_alert() {
    let n = 500u64;
    let mut h = Harness::start(
        "straggle",
        3,
        &[("w.weight", n)],
        "",
        &["--straggler-timeout", "500ms"],
        &["--sketch-dim", "0"],
    );
    let mut r = SplitMix64::new(4);
    for step in 0..20u64 {
        for rank in 0..3 {
            if rank == 2 && step >= 12 {
                continue;
            }
            let v: Vec<f32> = (0..n).map(|_| (0.01 * r.normal()) as f32).collect();
            h.push(rank, step, &[("w.weight", &v)]);
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let lake = h.finish(20).to_path_buf();
    assert_eq!(
        alerts(&lake),
        vec![("straggler".to_string(), 12, "2".to_string())]
    );
}

/// `/metrics` parses with a real Prometheus text-format parser, follows the naming rules, and
/// carries the run's alerts; `/healthz` answers.
fn check_metrics(addr: &str, run: &str) {
    let (code, body) = http_get(addr, "/healthz");
    assert_eq!((code, body.trim()), (200, "ok"));
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid Prometheus text format");
    assert!(!scrape.samples.is_empty());
    for s in &scrape.samples {
        // The process metrics keep the names every Prometheus client exports them under.
        assert!(
            s.metric.starts_with("gradtel_") || s.metric.starts_with("process_"),
            "{}",
            s.metric
        );
    }
    for (name, help) in &scrape.docs {
        assert!(!help.is_empty(), "{name} has no HELP");
    }
    let value = |metric: &str, labels: &[(&str, &str)]| -> Option<f64> {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .and_then(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => Some(v),
                _ => None,
            })
    };
    let alerts = |kind| {
        value(
            "gradtel_collector_alerts_total",
            &[("run", run), ("kind", kind)],
        )
    };
    assert_eq!(alerts("nonfinite"), Some(1.0));
    assert_eq!(alerts("norm_spike"), Some(1.0));
    assert_eq!(value("gradtel_run_last_step", &[("run", run)]), Some(79.0));
    assert_eq!(
        value("gradtel_run_nonfinite_values_total", &[("run", run)]),
        Some(1.0)
    );
    assert!(
        value(
            "gradtel_run_tail_index",
            &[("run", run), ("scope", "model")]
        )
        .is_some()
    );
    assert!(value("gradtel_collector_reports_received_total", &[]).unwrap() >= 160.0);
    let p99 = scrape
        .samples
        .iter()
        .find(|s| s.metric == "gradtel_collector_report_durable_seconds")
        .map(|s| matches!(s.value, prometheus_parse::Value::Summary(_)));
    assert_eq!(
        p99,
        Some(true),
        "report→durable latency is a summary with quantiles"
    );
}
