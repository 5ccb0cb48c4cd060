//! The collector's self-measurement (exposed at /metrics when `--metrics` is set).

use gradtel_telemetry::{Counter, Exposition, Gauge, Latency, Render};

#[derive(Debug, Default)]
pub struct CollectorMetrics {
    pub reports_received: Counter,
    pub reports_rejected: Counter,
    pub reports_duplicate: Counter,
    pub reports_late: Counter,
    pub steps_assembled: Counter,
    pub steps_incomplete: Counter,
    pub merge_errors: Counter,
    pub rows_written: Counter,
    pub files_written: Counter,
    pub bytes_written: Counter,
    pub write_errors: Counter,
    pub acks_sent: Counter,
    pub acks_dropped: Counter,
    pub streams_active: Gauge,
    pub pending_steps: Gauge,
    pub flush: Latency,
    pub report_durable: Latency,
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
        .latency(
            "gradtel_collector_flush_seconds",
            "Time to write, sync and publish one Parquet file.",
            &self.flush,
        )
        .latency(
            "gradtel_collector_report_durable_seconds",
            "Time from receiving a report to its data being durable.",
            &self.report_durable,
        );
        e.finish()
    }
}
