//! Ships queued reports to the collector over one Collect stream, at least once.
//!
//! A report taken off the queue goes into the [`Spool`] first (on disk unless `--no-spool`) and
//! stays there until the collector acknowledges it as durable. After a disconnect the shipper
//! reconnects with exponential backoff and sends every unacknowledged report again, oldest
//! first; while the collector is unreachable it goes on taking reports into the spool. When the
//! spool holds `max_inflight` reports (or its byte budget) it stops taking from the queue, so a
//! slow or absent collector makes the *queue* fill, and the Ingest side drops new steps there
//! (counted) rather than the agent growing without bound. What the spool holds at shutdown
//! waits on disk for the next agent.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gradtel_proto::encoded::EncodedReport;
use gradtel_proto::encoded::collect_client::CollectClient;
use gradtel_proto::v1::{Ack, ShardReport, ack};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;

use crate::metrics::AgentMetrics;
use crate::spool::Spool;

/// How often the stop condition is checked.
const TICK: Duration = Duration::from_millis(50);

/// Longest time between a spool write and its sync. A killed agent loses nothing without a
/// sync (the page cache holds the writes); the sync bounds what a power loss takes. Each one
/// costs the agent's process ≈ a millisecond of kernel time on a VM disk, so not every tick:
/// synced every 50 ms, the spool measured ≈ 0.1 ms more agent CPU per DDP step.
const SYNC_EVERY: Duration = Duration::from_secs(1);

/// The spool's background sync: one at a time, at most every [`SYNC_EVERY`].
struct Syncer {
    task: Option<tokio::task::JoinHandle<()>>,
    last: Instant,
}

/// Outcome of a shipper run, for the caller's summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShipperReport {
    /// Reports never acknowledged when the shipper stopped.
    pub unacknowledged: usize,
    /// Of those, the ones kept in the on-disk spool for the next agent (the rest are lost).
    pub spooled: usize,
}

pub struct Shipper {
    pub collector: String,
    /// For an `https://` collector (`AgentConfig::client_tls`): its files are read again at
    /// each connection attempt.
    pub tls: Option<crate::config::ClientTls>,
    pub max_inflight: usize,
    pub max_backoff: Duration,
    pub metrics: Arc<AgentMetrics>,
}

/// Once stopping, the shipper is done when nothing is left or the drain deadline passed.
fn drained(stop: Option<Instant>, queue: &mpsc::Receiver<ShardReport>, spool: &Spool) -> bool {
    stop.is_some_and(|deadline| {
        (queue.is_empty() && spool.is_empty()) || Instant::now() >= deadline
    })
}

enum StreamEnd {
    Disconnected,
    Drained,
}

impl Shipper {
    /// Run until `stop` turns true and everything is acknowledged, or until `stop` turns true
    /// and then `drain_deadline` passes.
    pub async fn run(
        self,
        mut queue: mpsc::Receiver<ShardReport>,
        mut stop: watch::Receiver<Option<Instant>>,
        mut spool: Spool,
    ) -> ShipperReport {
        let mut backoff = Duration::from_millis(50);
        let mut syncing = Syncer {
            task: None,
            last: Instant::now(),
        };
        loop {
            if drained(*stop.borrow(), &queue, &spool) {
                break;
            }
            match self.connect().await {
                Ok(client) => {
                    backoff = Duration::from_millis(50);
                    match self
                        .stream(client, &mut queue, &mut spool, &mut stop, &mut syncing)
                        .await
                    {
                        StreamEnd::Drained => break,
                        StreamEnd::Disconnected => {
                            tracing::warn!(
                                unacked = spool.len(),
                                "collector stream ended; reconnecting"
                            );
                        }
                    }
                }
                Err(e) => {
                    self.metrics.collector_connect_failures.inc();
                    tracing::debug!(error = %e, collector = %self.collector, "collector unreachable");
                }
            }
            // While the collector is away, reports still move from the queue into the spool,
            // where they survive the agent.
            let sleep = tokio::time::sleep(backoff);
            tokio::pin!(sleep);
            let mut tick = tokio::time::interval(TICK);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    _ = stop.changed() => break,
                    Some(report) = queue.recv(), if spool.has_room(self.max_inflight) => {
                        self.take(&mut spool, &report, false);
                    }
                    _ = tick.tick() => self.sync(&mut spool, &mut syncing),
                }
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
        // What is still queued at the end is kept too, as far as the spool has room.
        while spool.has_room(self.max_inflight) {
            match queue.try_recv() {
                Ok(report) => {
                    self.take(&mut spool, &report, false);
                }
                Err(_) => break,
            }
        }
        if let Some(s) = syncing.task.take() {
            let _ = s.await;
        }
        let held = spool.len();
        let spooled = spool.held_on_disk();
        self.metrics.reports_inflight.set(held as i64);
        spool.close();
        ShipperReport {
            unacknowledged: held + queue.len(),
            spooled,
        }
    }

    /// Move a report from the queue into the spool; its encoding, to send.
    fn take(&self, spool: &mut Spool, report: &ShardReport, sending: bool) -> EncodedReport {
        self.metrics.queue_depth.add(-1);
        let errors = spool.write_errors;
        let encoded = spool.push(report, sending);
        self.metrics
            .spool_write_errors
            .add(spool.write_errors - errors);
        self.metrics.reports_inflight.set(spool.len() as i64);
        self.metrics.spool_bytes.set(spool.bytes() as i64);
        encoded
    }

    /// Sync what was appended since the last sync, off the async threads, one sync at a time
    /// and at most every [`SYNC_EVERY`].
    fn sync(&self, spool: &mut Spool, syncing: &mut Syncer) {
        if syncing.task.as_ref().is_some_and(|s| !s.is_finished())
            || syncing.last.elapsed() < SYNC_EVERY
        {
            return;
        }
        if let Some(file) = spool.take_sync() {
            syncing.last = Instant::now();
            syncing.task = Some(tokio::task::spawn_blocking(move || {
                if let Err(e) = file.sync_data() {
                    tracing::warn!(error = %e, "spool sync failed");
                }
            }));
        }
    }

    async fn connect(
        &self,
    ) -> Result<CollectClient<tonic::transport::Channel>, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(self.collector.clone())?;
        if let Some(tls) = &self.tls {
            let (config, trouble) = tls.current();
            if let Some(e) = trouble {
                self.metrics.tls_reload_errors.inc();
                tracing::warn!(error = %e, "TLS files cannot be used; connecting with the last ones that could");
            }
            endpoint = endpoint.tls_config(config)?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .connect()
            .await?;
        Ok(CollectClient::new(channel).max_decoding_message_size(64 << 20))
    }

    async fn stream(
        &self,
        mut client: CollectClient<tonic::transport::Channel>,
        queue: &mut mpsc::Receiver<ShardReport>,
        spool: &mut Spool,
        stop: &mut watch::Receiver<Option<Instant>>,
        syncing: &mut Syncer,
    ) -> StreamEnd {
        let (tx, rx) = mpsc::channel::<EncodedReport>(256);
        // What the spool holds goes first, oldest first, read back on a blocking thread while
        // the call below opens; new reports wait until all of it is queued (the collector takes
        // a rank's step below one it has seen as a job resumed from a checkpoint).
        let (resend, sent_before) = spool.take_for_sending();
        let (resend_count, retried) = (resend.len() as u64, sent_before as u64);
        let mut feeder = {
            let tx = tx.clone();
            let metrics = self.metrics.clone();
            tokio::task::spawn_blocking(move || {
                for stored in resend {
                    match stored.load() {
                        Ok(r) => {
                            if tx.blocking_send(r).is_err() {
                                break;
                            }
                        }
                        // Only a segment deleted under the feeder, once all its reports were
                        // acknowledged, or a disk failing under it, gets here.
                        Err(e) => {
                            metrics.spool_read_errors.inc();
                            tracing::warn!(error = %e, "spooled report not resent");
                        }
                    }
                }
            })
        };
        let mut acks = match client.stream(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                // The feeder ends when its channel's receiver is dropped with the call.
                drop(feeder);
                tracing::warn!(%status, "collector refused the stream");
                self.metrics.collector_connect_failures.inc();
                return StreamEnd::Disconnected;
            }
        };
        self.metrics.collector_connects.inc();
        self.metrics.reports_retried.add(retried);
        self.metrics.reports_sent.add(resend_count);
        if resend_count > 0 {
            tracing::info!(
                sent = resend_count,
                resent = retried,
                "sending the spool's unacknowledged reports"
            );
        }
        let mut fed = false;
        let mut tick = tokio::time::interval(TICK);
        loop {
            self.metrics.reports_inflight.set(spool.len() as i64);
            tokio::select! {
                _ = &mut feeder, if !fed => fed = true,
                msg = acks.message() => match msg {
                    Ok(Some(a)) => self.on_ack(a, spool),
                    Ok(None) => return StreamEnd::Disconnected,
                    Err(status) => {
                        tracing::warn!(%status, "collector stream failed");
                        return StreamEnd::Disconnected;
                    }
                },
                Some(report) = queue.recv(), if fed && spool.has_room(self.max_inflight) => {
                    let encoded = self.take(spool, &report, true);
                    if tx.send(encoded).await.is_err() {
                        return StreamEnd::Disconnected;
                    }
                    self.metrics.reports_sent.inc();
                }
                _ = tick.tick() => {
                    self.sync(spool, syncing);
                    if drained(*stop.borrow_and_update(), queue, spool) {
                        return StreamEnd::Drained;
                    }
                }
            }
        }
    }

    fn on_ack(&self, a: Ack, spool: &mut Spool) {
        let status = ack::Status::try_from(a.status).unwrap_or(ack::Status::Unspecified);
        match status {
            ack::Status::Accepted | ack::Status::Duplicate => {
                if let Some(sent) = spool.ack(a.agent_epoch, a.seq) {
                    self.metrics.reports_acked.inc();
                    self.metrics.report_ack.record(sent.elapsed());
                }
            }
            ack::Status::Rejected => {
                if spool.ack(a.agent_epoch, a.seq).is_some() {
                    self.metrics.reports_rejected.inc();
                }
                tracing::error!(seq = a.seq, reason = %a.reason, "collector rejected a report");
            }
            ack::Status::Unspecified => {
                tracing::warn!(seq = a.seq, "ack without status ignored");
            }
        }
        self.metrics.spool_bytes.set(spool.bytes() as i64);
    }
}
