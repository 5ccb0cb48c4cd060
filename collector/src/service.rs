//! The Collect gRPC service: one bidirectional stream per agent.
//!
//! Each report is validated and decoded here; a report that can never be accepted is answered
//! at once with a REJECTED ack carrying the reason (the stream stays open). Valid reports go to
//! the durability stage; their acks come back through the [`AckRouter`] once the write-ahead
//! log holds them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use gradtel_proto::logged::LoggedReport;
use gradtel_proto::logged::collect_server::Collect;
use gradtel_proto::v1::{Ack, ShardReport, ack};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::acks::{AckRouter, AckSender};
use crate::metrics::CollectorMetrics;
use crate::pipeline::Inbound;
use crate::report::{self, AgentKey};

/// Acks buffered per stream before they are dropped (and the agent resends).
const ACK_BUFFER: usize = 1 << 16;

#[derive(Clone)]
pub struct CollectService {
    /// Into the durability stage ([`crate::durable`]).
    pub inbound: mpsc::Sender<Inbound>,
    /// Bounds the bytes of decoded reports queued behind the streams.
    pub budget: Arc<crate::queue_budget::QueueBudget>,
    pub router: Arc<AckRouter>,
    pub metrics: Arc<CollectorMetrics>,
    pub next_conn: Arc<AtomicU64>,
}

/// A REJECTED ack addressed like `r`, prepared before `r` is consumed by decoding.
fn rejection(r: &ShardReport) -> Ack {
    Ack {
        run_id: r
            .run_id
            .chars()
            .take(gradtel_proto::MAX_RUN_ID_LEN)
            .collect(),
        rank: r.rank,
        shard: r.shard,
        seq: r.seq,
        status: ack::Status::Rejected as i32,
        reason: String::new(),
        agent_epoch: r.agent_epoch,
    }
}

impl CollectService {
    async fn serve_stream(self, mut inbound: Streaming<LoggedReport>, tx: AckSender) {
        let conn = self.next_conn.fetch_add(1, Ordering::Relaxed);
        self.metrics.streams_active.add(1);
        let mut keys: HashSet<AgentKey> = HashSet::new();
        let mut names = report::Names::default();
        loop {
            match inbound.message().await {
                Ok(Some(LoggedReport {
                    report: mut raw,
                    raw: wire,
                })) => {
                    self.metrics.reports_received.inc();
                    match report::decode_sharing(&mut raw, &mut names) {
                        Ok(mut rep) => {
                            rep.wire = wire;
                            // Before reading the next: a stream over the budget waits here.
                            rep.held = Some(self.budget.hold(rep.heap_bytes()).await);
                            if keys.insert(rep.key.clone()) {
                                self.router.attach(rep.key.clone(), conn, tx.clone());
                            }
                            if self.inbound.send(Inbound::Report(rep)).await.is_err() {
                                break;
                            }
                        }
                        Err(reason) => {
                            self.metrics.reports_rejected.inc();
                            tracing::warn!(%reason, seq = raw.seq, "report rejected");
                            let mut rejected = rejection(&raw);
                            rejected.reason = reason;
                            if tx.try_send(Ok(rejected)).is_err() {
                                self.metrics.acks_dropped.inc();
                            }
                        }
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, "agent stream ended with an error");
                    break;
                }
            }
        }
        self.router.detach(&keys, conn);
        self.metrics.streams_active.add(-1);
    }
}

#[tonic::async_trait]
impl Collect for CollectService {
    type StreamStream = ReceiverStream<Result<Ack, Status>>;

    async fn stream(
        &self,
        request: Request<Streaming<LoggedReport>>,
    ) -> Result<Response<Self::StreamStream>, Status> {
        let (tx, rx) = mpsc::channel(ACK_BUFFER);
        tokio::spawn(self.clone().serve_stream(request.into_inner(), tx));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
