//! The agent's self-measurement (exposed at /metrics when `--metrics` is set).

use gradtel_telemetry::{Counter, Exposition, Gauge, Latency, Render};

#[derive(Debug, Default)]
pub struct AgentMetrics {
    pub chunks_received: Counter,
    pub chunks_rejected: Counter,
    pub bytes_received: Counter,
    pub shared_bytes_received: Counter,
    pub shared_regions_refused: Counter,
    pub values_received: Counter,
    pub steps_ended: Counter,
    pub steps_dropped_queue_full: Counter,
    pub steps_abandoned: Counter,
    pub reports_sent: Counter,
    pub reports_acked: Counter,
    pub reports_retried: Counter,
    pub reports_rejected: Counter,
    pub collector_connects: Counter,
    pub collector_connect_failures: Counter,
    pub tls_reload_errors: Counter,
    pub spool_replayed: Counter,
    pub spool_lost: Counter,
    pub spool_write_errors: Counter,
    pub spool_read_errors: Counter,
    pub spool_bytes: Gauge,
    pub reports_inflight: Gauge,
    pub queue_depth: Gauge,
    pub chunk_summarize: Latency,
    pub report_ack: Latency,
}

impl AgentMetrics {
    /// Steps that were summarised but will never reach the collector.
    pub fn steps_dropped_total(&self) -> u64 {
        self.steps_dropped_queue_full.get() + self.steps_abandoned.get()
    }
}

impl Render for AgentMetrics {
    fn render(&self) -> String {
        let mut e = Exposition::new();
        e.counter("gradtel_agent_chunks_received_total", "Gradient chunks accepted on the Ingest socket.", self.chunks_received.get())
            .counter("gradtel_agent_chunks_rejected_total", "Ingest messages refused with a gRPC error (bad bytes, unknown tensor, ...).", self.chunks_rejected.get())
            .counter("gradtel_agent_received_bytes_total", "Payload bytes of accepted chunks.", self.bytes_received.get())
            .counter("gradtel_agent_shared_received_bytes_total", "Payload bytes of accepted chunks read from the client's shared memory region (also in received_bytes_total).", self.shared_bytes_received.get())
            .counter("gradtel_agent_shared_regions_refused_total", "Shared memory regions a Register asked for and the agent could not map (payloads then come inline).", self.shared_regions_refused.get())
            .counter("gradtel_agent_values_received_total", "Gradient values summarised.", self.values_received.get())
            .counter("gradtel_agent_steps_ended_total", "Steps closed by EndStep.", self.steps_ended.get())
            .counter("gradtel_agent_steps_dropped_queue_full_total", "Finished steps dropped because the shipping queue was full (collector slow or absent).", self.steps_dropped_queue_full.get())
            .counter("gradtel_agent_steps_abandoned_total", "Open steps discarded without EndStep (too many open, or layout replaced).", self.steps_abandoned.get())
            .counter("gradtel_agent_reports_sent_total", "Reports written to the collector stream, first sends and resends.", self.reports_sent.get())
            .counter("gradtel_agent_reports_acked_total", "Reports the collector acknowledged as durable.", self.reports_acked.get())
            .counter("gradtel_agent_reports_retried_total", "Reports sent again after a reconnect.", self.reports_retried.get())
            .counter("gradtel_agent_reports_rejected_total", "Reports the collector refused for good.", self.reports_rejected.get())
            .counter("gradtel_agent_collector_connects_total", "Streams opened to the collector.", self.collector_connects.get())
            .counter("gradtel_agent_collector_connect_failures_total", "Failed attempts to reach the collector.", self.collector_connect_failures.get())
            .counter("gradtel_agent_tls_reload_errors_total", "Connection attempts for which the TLS files (CA, certificate, key) did not load: the last ones that did were used.", self.tls_reload_errors.get())
            .counter("gradtel_agent_spool_replayed_total", "Unacknowledged reports a previous agent left in the spool, taken in at start to be sent again.", self.spool_replayed.get())
            .counter("gradtel_agent_spool_lost_total", "Spool segments found at start ending in a record cut short or corrupt (that record and any after it are not sent).", self.spool_lost.get())
            .counter("gradtel_agent_spool_write_errors_total", "Reports the spool could not write (kept in memory only instead).", self.spool_write_errors.get())
            .counter("gradtel_agent_spool_read_errors_total", "Spooled reports that could not be read back for a resend.", self.spool_read_errors.get())
            .gauge("gradtel_agent_spool_bytes", "Bytes of spool segments on disk.", self.spool_bytes.get())
            .gauge("gradtel_agent_reports_inflight", "Reports taken off the queue and not yet acknowledged (held in the spool).", self.reports_inflight.get())
            .gauge("gradtel_agent_queue_depth", "Finished steps waiting to be sent.", self.queue_depth.get())
            .latency("gradtel_agent_chunk_summarize_seconds", "Time to decode and summarise one chunk.", &self.chunk_summarize)
            .latency("gradtel_agent_report_ack_seconds", "Time from first send of a report to its acknowledgement.", &self.report_ack);
        gradtel_telemetry::process::render(&mut e);
        e.finish()
    }
}
