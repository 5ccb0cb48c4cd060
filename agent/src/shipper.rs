//! Ships queued reports to the collector over one Collect stream, at least once.
//!
//! Every report stays in `inflight` until the collector acknowledges it as durable. After a
//! disconnect the shipper reconnects with exponential backoff and sends every unacknowledged
//! report again, oldest first. When `max_inflight` reports are outstanding it stops taking from
//! the queue, so a slow or absent collector makes the *queue* fill, and the Ingest side drops new
//! steps there (counted) rather than the agent growing without bound.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gradtel_proto::v1::collect_client::CollectClient;
use gradtel_proto::v1::{Ack, ShardReport, ack};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::metrics::AgentMetrics;

/// Outcome of a shipper run, for the caller's summary.
#[derive(Debug, Clone, Copy, Default)]
pub struct ShipperReport {
    /// Reports never acknowledged when the shipper stopped (they were lost with it).
    pub unacknowledged: usize,
}

pub struct Shipper {
    pub collector: String,
    /// For an `https://` collector (`AgentConfig::client_tls`).
    pub tls: Option<ClientTlsConfig>,
    pub max_inflight: usize,
    pub max_backoff: Duration,
    pub metrics: Arc<AgentMetrics>,
}

/// Once stopping, the shipper is done when nothing is left or the drain deadline passed.
fn drained(
    stop: Option<Instant>,
    queue: &mpsc::Receiver<ShardReport>,
    inflight: &BTreeMap<u64, (ShardReport, Instant)>,
) -> bool {
    stop.is_some_and(|deadline| {
        (queue.is_empty() && inflight.is_empty()) || Instant::now() >= deadline
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
    ) -> ShipperReport {
        let mut inflight: BTreeMap<u64, (ShardReport, Instant)> = BTreeMap::new();
        let mut backoff = Duration::from_millis(50);
        loop {
            if drained(*stop.borrow(), &queue, &inflight) {
                break;
            }
            match self.connect().await {
                Ok(client) => {
                    backoff = Duration::from_millis(50);
                    match self
                        .stream(client, &mut queue, &mut inflight, &mut stop)
                        .await
                    {
                        StreamEnd::Drained => break,
                        StreamEnd::Disconnected => {
                            tracing::warn!(
                                unacked = inflight.len(),
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
            let sleep = tokio::time::sleep(backoff);
            tokio::select! {
                _ = sleep => {}
                _ = stop.changed() => {}
            }
            backoff = (backoff * 2).min(self.max_backoff);
        }
        self.metrics.reports_inflight.set(inflight.len() as i64);
        ShipperReport {
            unacknowledged: inflight.len() + queue.len(),
        }
    }

    async fn connect(
        &self,
    ) -> Result<CollectClient<tonic::transport::Channel>, tonic::transport::Error> {
        let mut endpoint = Endpoint::from_shared(self.collector.clone())?;
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
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
        inflight: &mut BTreeMap<u64, (ShardReport, Instant)>,
        stop: &mut watch::Receiver<Option<Instant>>,
    ) -> StreamEnd {
        let (tx, rx) = mpsc::channel::<ShardReport>(256);
        // Resends go first, in seq order. The channel is fresh, so they are queued before any
        // new report; sending happens concurrently with opening the call below.
        let resend: Vec<ShardReport> = inflight.values().map(|(r, _)| r.clone()).collect();
        let resend_count = resend.len() as u64;
        let feeder = {
            let tx = tx.clone();
            tokio::spawn(async move {
                for r in resend {
                    if tx.send(r).await.is_err() {
                        break;
                    }
                }
            })
        };
        let mut acks = match client.stream(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(status) => {
                feeder.abort();
                tracing::warn!(%status, "collector refused the stream");
                self.metrics.collector_connect_failures.inc();
                return StreamEnd::Disconnected;
            }
        };
        self.metrics.collector_connects.inc();
        self.metrics.reports_retried.add(resend_count);
        self.metrics.reports_sent.add(resend_count);
        if resend_count > 0 {
            tracing::info!(resent = resend_count, "resending unacknowledged reports");
        }
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            self.metrics.reports_inflight.set(inflight.len() as i64);
            tokio::select! {
                msg = acks.message() => match msg {
                    Ok(Some(a)) => self.on_ack(a, inflight),
                    Ok(None) => return StreamEnd::Disconnected,
                    Err(status) => {
                        tracing::warn!(%status, "collector stream failed");
                        return StreamEnd::Disconnected;
                    }
                },
                Some(report) = queue.recv(), if inflight.len() < self.max_inflight => {
                    self.metrics.queue_depth.add(-1);
                    inflight.insert(report.seq, (report.clone(), Instant::now()));
                    if tx.send(report).await.is_err() {
                        return StreamEnd::Disconnected;
                    }
                    self.metrics.reports_sent.inc();
                }
                _ = tick.tick() => {
                    if drained(*stop.borrow_and_update(), queue, inflight) {
                        return StreamEnd::Drained;
                    }
                }
            }
        }
    }

    fn on_ack(&self, a: Ack, inflight: &mut BTreeMap<u64, (ShardReport, Instant)>) {
        let status = ack::Status::try_from(a.status).unwrap_or(ack::Status::Unspecified);
        match status {
            ack::Status::Accepted | ack::Status::Duplicate => {
                if let Some((_, sent)) = inflight.remove(&a.seq) {
                    self.metrics.reports_acked.inc();
                    self.metrics.report_ack.record(sent.elapsed());
                }
            }
            ack::Status::Rejected => {
                if inflight.remove(&a.seq).is_some() {
                    self.metrics.reports_rejected.inc();
                }
                tracing::error!(seq = a.seq, reason = %a.reason, "collector rejected a report");
            }
            ack::Status::Unspecified => {
                tracing::warn!(seq = a.seq, "ack without status ignored");
            }
        }
    }
}
