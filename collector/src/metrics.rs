//! The collector's self-measurement and the per-run gradient-health gauges (exposed at
//! /metrics when `--metrics` is set). Per-run series carry only the labels `run`, `scope`
//! (`model` or a layer name), `object`, `sketch` and `kind`: per-coordinate data goes to
//! Parquet, never to Prometheus.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use gradtel_telemetry::{Counter, Exposition, Gauge, Latency, Render};

use crate::live::spectra::Fit;
use crate::live::windows::Summary;

/// The latest live estimates of one run.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RunGauges {
    pub last_step: u64,
    pub grad_norm: Option<f64>,
    pub nonfinite_values_total: u64,
    /// Dimension-wise Hill index by scope (`model` or a layer).
    pub tail_index: BTreeMap<String, f64>,
    /// Tensor-step samples given a dimension-wise Clauset fit, and those rejected.
    pub dimension_tested: u64,
    pub dimension_rejected: u64,
    /// Latest window evaluation per object (`iteration`, `sgn`).
    pub windows: BTreeMap<&'static str, Summary>,
    pub sgn_rms: Option<f64>,
    pub spectra: BTreeMap<&'static str, Fit>,
    pub alerts_total: BTreeMap<&'static str, u64>,
}

impl RunGauges {
    /// Fraction of tested samples of `object` whose power law is rejected.
    pub fn powerlaw_rejected(&self, object: &str) -> Option<f64> {
        if object == "dimension" {
            return (self.dimension_tested > 0)
                .then(|| self.dimension_rejected as f64 / self.dimension_tested as f64);
        }
        self.windows.get(object).and_then(|s| s.powerlaw_rejected)
    }
}

#[derive(Debug, Default)]
pub struct CollectorMetrics {
    pub reports_received: Counter,
    pub reports_rejected: Counter,
    pub reports_duplicate: Counter,
    pub reports_late: Counter,
    pub steps_assembled: Counter,
    pub steps_incomplete: Counter,
    pub trajectories_resumed: Counter,
    pub merge_errors: Counter,
    pub rows_written: Counter,
    pub files_written: Counter,
    pub bytes_written: Counter,
    pub write_errors: Counter,
    pub rows_unencodable: Counter,
    pub acks_sent: Counter,
    pub acks_dropped: Counter,
    pub streams_active: Gauge,
    pub pending_steps: Gauge,
    pub flush: Latency,
    pub report_durable: Latency,
    pub wal_commit: Latency,
    pub wal_bytes: Counter,
    pub wal_errors: Counter,
    pub wal_replayed: Counter,
    pub wal_published_skipped: Counter,
    pub wal_corrupt: Counter,
    pub wal_segments: Gauge,
    pub unpublished_bytes: Gauge,
    pub intake_paused: Gauge,
    pub queued_report_bytes: Gauge,
    pub uploaded_files: Counter,
    pub uploaded_bytes: Counter,
    pub upload_errors: Counter,
    pub upload_pending: Gauge,
    pub tls_reloads: Counter,
    pub tls_reload_errors: Counter,
    pub tls_handshake_errors: Counter,
    pub live_checkpoints_written: Counter,
    pub live_checkpoint_errors: Counter,
    pub live_runs_restored: Counter,
    pub runs: Mutex<BTreeMap<Arc<str>, RunGauges>>,
}

impl Render for CollectorMetrics {
    fn render(&self) -> String {
        let mut e = Exposition::new();
        e.counter(
            "gradtel_collector_reports_received_total",
            "Reports read from agent streams.",
            self.reports_received.get(),
        )
        .counter(
            "gradtel_collector_reports_rejected_total",
            "Reports refused for good (bad run id, malformed summary).",
            self.reports_rejected.get(),
        )
        .counter(
            "gradtel_collector_reports_duplicate_total",
            "Resent reports recognised and not written twice.",
            self.reports_duplicate.get(),
        )
        .counter(
            "gradtel_collector_reports_late_total",
            "Reports that arrived after their step was written.",
            self.reports_late.get(),
        )
        .counter(
            "gradtel_collector_steps_assembled_total",
            "Steps written (complete or not).",
            self.steps_assembled.get(),
        )
        .counter(
            "gradtel_collector_steps_incomplete_total",
            "Steps written with missing ranks or shards.",
            self.steps_incomplete.get(),
        )
        .counter(
            "gradtel_collector_trajectories_resumed_total",
            "New trajectories of a run: a rank went back to a step it had reported (a job resumed from a checkpoint).",
            self.trajectories_resumed.get(),
        )
        .counter(
            "gradtel_collector_merge_errors_total",
            "Report parts left out of a merge (incompatible summaries).",
            self.merge_errors.get(),
        )
        .counter(
            "gradtel_collector_rows_written_total",
            "Parquet rows published.",
            self.rows_written.get(),
        )
        .counter(
            "gradtel_collector_files_written_total",
            "Parquet files published.",
            self.files_written.get(),
        )
        .counter(
            "gradtel_collector_written_bytes_total",
            "Bytes of published Parquet files.",
            self.bytes_written.get(),
        )
        .counter(
            "gradtel_collector_write_errors_total",
            "Failed Parquet writes (retried on the next roll).",
            self.write_errors.get(),
        )
        .counter(
            "gradtel_collector_rows_unencodable_total",
            "Rows dropped because they could not be encoded as their table (a bug; logged).",
            self.rows_unencodable.get(),
        )
        .counter(
            "gradtel_collector_acks_sent_total",
            "Acknowledgements sent to agents.",
            self.acks_sent.get(),
        )
        .counter(
            "gradtel_collector_acks_dropped_total",
            "Acknowledgements not delivered (agent gone; it resends).",
            self.acks_dropped.get(),
        )
        .gauge(
            "gradtel_collector_streams_active",
            "Open agent streams.",
            self.streams_active.get(),
        )
        .gauge(
            "gradtel_collector_pending_steps",
            "Steps waiting for ranks.",
            self.pending_steps.get(),
        )
        .gauge(
            "gradtel_collector_queued_report_bytes",
            "Decoded reports waiting between the streams and the estimators, bytes (bounded by --max-queued-mb).",
            self.queued_report_bytes.get(),
        )
        .latency(
            "gradtel_collector_flush_seconds",
            "Time to write, sync and publish one Parquet file.",
            &self.flush,
        )
        .latency(
            "gradtel_collector_report_durable_seconds",
            "Time from receiving a report to its data being durable (synced in the write-ahead log).",
            &self.report_durable,
        )
        .latency(
            "gradtel_collector_wal_commit_seconds",
            "Time to append and sync one group commit of the write-ahead log.",
            &self.wal_commit,
        )
        .counter(
            "gradtel_collector_wal_written_bytes_total",
            "Bytes appended to the write-ahead log.",
            self.wal_bytes.get(),
        )
        .counter(
            "gradtel_collector_wal_errors_total",
            "Failed write-ahead log commits (retried; their reports stay unacknowledged).",
            self.wal_errors.get(),
        )
        .counter(
            "gradtel_collector_wal_replayed_reports_total",
            "Reports replayed from the write-ahead log at start.",
            self.wal_replayed.get(),
        )
        .counter(
            "gradtel_collector_wal_published_skipped_total",
            "Write-ahead log records not replayed at start: their rows were already published.",
            self.wal_published_skipped.get(),
        )
        .counter(
            "gradtel_collector_wal_corrupt_total",
            "Torn or unreadable write-ahead log records skipped at start.",
            self.wal_corrupt.get(),
        )
        .gauge(
            "gradtel_collector_wal_segments",
            "Write-ahead log segments holding reports not yet in Parquet.",
            self.wal_segments.get(),
        )
        .gauge(
            "gradtel_collector_unpublished_bytes",
            "Bytes of acknowledged reports in write-ahead log segments not yet retired.",
            self.unpublished_bytes.get(),
        )
        .gauge(
            "gradtel_collector_intake_paused",
            "1 while new reports wait: the unpublished bytes are over --max-unpublished-mb.",
            self.intake_paused.get(),
        )
        .counter(
            "gradtel_collector_uploaded_files_total",
            "Parquet files uploaded to the object store (--upload).",
            self.uploaded_files.get(),
        )
        .counter(
            "gradtel_collector_uploaded_bytes_total",
            "Bytes of Parquet files uploaded to the object store.",
            self.uploaded_bytes.get(),
        )
        .counter(
            "gradtel_collector_upload_errors_total",
            "Uploads that failed (retried at the next scan).",
            self.upload_errors.get(),
        )
        .counter(
            "gradtel_collector_tls_reloads_total",
            "Times a changed certificate or key file was read and served to new connections.",
            self.tls_reloads.get(),
        )
        .counter(
            "gradtel_collector_tls_reload_errors_total",
            "Checks that found the certificate files changed but unusable (the previous certificate stays).",
            self.tls_reload_errors.get(),
        )
        .counter(
            "gradtel_collector_tls_handshake_errors_total",
            "TLS handshakes with agents that failed or timed out.",
            self.tls_handshake_errors.get(),
        )
        .counter(
            "gradtel_collector_live_checkpoints_written_total",
            "Checkpoints of a run's live state written (windows, sketches, alert histories).",
            self.live_checkpoints_written.get(),
        )
        .counter(
            "gradtel_collector_live_checkpoint_errors_total",
            "Live-state checkpoints that could not be written, or were refused at start (damaged, malformed).",
            self.live_checkpoint_errors.get(),
        )
        .counter(
            "gradtel_collector_live_runs_restored_total",
            "Runs whose live state was restored from a checkpoint at start.",
            self.live_runs_restored.get(),
        )
        .gauge(
            "gradtel_collector_upload_pending_files",
            "Published files not yet uploaded, at the last scan.",
            self.upload_pending.get(),
        );
        if let Ok(runs) = self.runs.lock() {
            render_runs(&mut e, &runs);
        }
        gradtel_telemetry::process::render(&mut e);
        e.finish()
    }
}

fn render_runs(e: &mut Exposition, runs: &BTreeMap<Arc<str>, RunGauges>) {
    let per_run = |f: &dyn Fn(&RunGauges) -> Option<f64>| -> Vec<(Vec<(&str, &str)>, f64)> {
        runs.iter()
            .filter_map(|(run, g)| f(g).map(|v| (vec![("run", &**run)], v)))
            .collect()
    };
    e.family(
        "gradtel_run_last_step",
        "Latest step assembled for the run.",
        "gauge",
        per_run(&|g| Some(g.last_step as f64)),
    )
    .family(
        "gradtel_run_grad_norm",
        "L2 norm of the latest step's gradient (merged over ranks and shards).",
        "gauge",
        per_run(&|g| g.grad_norm),
    )
    .family(
        "gradtel_run_nonfinite_values_total",
        "NaN and infinite gradient values seen in the run.",
        "counter",
        per_run(&|g| Some(g.nonfinite_values_total as f64)),
    )
    .family(
        "gradtel_run_sgn_rms",
        "Root mean square of the latest step's SGN on tracked coordinates.",
        "gauge",
        per_run(&|g| g.sgn_rms),
    );
    let mut tails = Vec::new();
    let mut rejected = Vec::new();
    let mut gaussian = Vec::new();
    let mut slope = Vec::new();
    let mut r2 = Vec::new();
    let mut alerts = Vec::new();
    for (run, g) in runs {
        for (scope, v) in &g.tail_index {
            tails.push((
                vec![
                    ("run", &**run),
                    ("scope", scope.as_str()),
                    ("estimator", "hill"),
                ],
                *v,
            ));
        }
        for object in ["dimension", "iteration", "sgn"] {
            if let Some(v) = g.powerlaw_rejected(object) {
                rejected.push((vec![("run", &**run), ("object", object)], v));
            }
        }
        for (object, s) in &g.windows {
            if let Some(v) = s.gaussian_rejected {
                gaussian.push((vec![("run", &**run), ("object", *object)], v));
            }
        }
        for (sketch, f) in &g.spectra {
            slope.push((vec![("run", &**run), ("sketch", *sketch)], f.slope));
            r2.push((vec![("run", &**run), ("sketch", *sketch)], f.r2));
        }
        // Every kind, at 0 until raised (see `alerts::kind`), then any other (none today).
        let listed = crate::live::alerts::kind::ALL;
        let others = g.alerts_total.keys().filter(|k| !listed.contains(k));
        for kind in listed.iter().chain(others) {
            let n = g.alerts_total.get(kind).copied().unwrap_or(0);
            alerts.push((vec![("run", &**run), ("kind", *kind)], n as f64));
        }
    }
    e.family(
        "gradtel_run_tail_index",
        "Dimension-wise tail index (survival function) of the latest step, by scope.",
        "gauge",
        tails,
    )
    .family(
        "gradtel_run_powerlaw_rejected_ratio",
        "Fraction of tested samples whose power law the KS test rejects, by object.",
        "gauge",
        rejected,
    )
    .family(
        "gradtel_run_gaussian_rejected_ratio",
        "Fraction of tracked coordinates whose Gaussianity K² rejects (p < 0.05), by object.",
        "gauge",
        gaussian,
    )
    .family(
        "gradtel_run_spectrum_slope",
        "Power-law slope s of the latest covariance spectrum snapshot, by sketch.",
        "gauge",
        slope,
    )
    .family(
        "gradtel_run_spectrum_r2",
        "R² of that fit, by sketch.",
        "gauge",
        r2,
    )
    .family(
        "gradtel_collector_alerts_total",
        "Health alerts raised, by run and kind.",
        "counter",
        alerts,
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradtel_telemetry::Render;

    #[test]
    fn every_alert_kind_is_exported_from_a_runs_first_step() {
        let m = CollectorMetrics::default();
        let mut g = RunGauges::default();
        g.alerts_total
            .insert(crate::live::alerts::kind::NONFINITE, 2);
        m.runs.lock().unwrap().insert("r1".into(), g);
        let text = m.render();
        let line = |kind: &str| {
            let want = format!("gradtel_collector_alerts_total{{run=\"r1\",kind=\"{kind}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(want.as_str()).map(str::to_string))
        };
        for kind in crate::live::alerts::kind::ALL {
            let want = if kind == "nonfinite" { "2" } else { "0" };
            assert_eq!(line(kind).as_deref(), Some(want), "{kind}\n{text}");
        }
    }
}
