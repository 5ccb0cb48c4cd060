//! The Ingest gRPC service: Register, and Push streams of chunks and step ends.
//!
//! Never blocks the training process on the collector: a finished step goes into a bounded
//! queue with `try_reserve`; when the queue is full the step is dropped, counted and logged.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use gradtel_codec::payload;
use gradtel_proto::v1::ingest_server::Ingest;
use gradtel_proto::v1::projection::Kind as ProjectionKind;
use gradtel_proto::v1::{
    Dtype, EndStep, GradientChunk, Projection as WireProjection, PushRequest, PushResponse,
    RegisterRequest, RegisterResponse, ShardReport, StepAck, TensorReport, TrackedValues,
    push_request,
};
use gradtel_stats::GradSummary;
use gradtel_stats::projection::{CountSketch, GaussianProjection, Projection, ProjectionScratch};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::config::SketchKind;
use crate::layout::Layout;
use crate::metrics::AgentMetrics;
use crate::shared::{SharedError, SharedRegion};
use crate::steps::{ChunkPart, OpenSteps};
use crate::{AgentConfig, AgentError};

/// Values decoded at a time (16 kB of f32: stays in L1 for the summary and the projection).
const DECODE_BLOCK: usize = 4096;

/// Chunks at least this large are summarised on the blocking pool (≈ 0.5 ms of work).
const BLOCKING_CHUNK_BYTES: usize = 256 * 1024;

/// What happened to a step at EndStep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndOutcome {
    Queued,
    Dropped,
}

/// The layout in force, its generation, and the shared memory region registered with it.
#[derive(Clone)]
struct Registered {
    generation: u64,
    layout: Arc<Layout>,
    shared: Option<Arc<SharedRegion>>,
}

/// What became of the shared memory region a Register asked for.
#[derive(Debug)]
pub enum SharedStatus {
    NotRequested,
    Mapped,
    /// The layout is registered all the same; the client sends payloads inline.
    Refused(SharedError),
}

/// State shared by the Ingest service and the shipper.
pub struct AgentState {
    pub config: AgentConfig,
    pub metrics: Arc<AgentMetrics>,
    /// Random per-process epoch, so `seq` can restart at 1 without colliding (see collect.proto).
    pub epoch: u64,
    /// The shared-seed projection of every step's gradient, if configured.
    projection: Option<(ProjectionKind, Box<dyn Projection + Send + Sync>)>,
    layout: Mutex<Option<Registered>>,
    open: Mutex<OpenSteps>,
    next_seq: AtomicU64,
    generation: AtomicU64,
    queue: mpsc::Sender<ShardReport>,
}

impl AgentState {
    pub fn new(
        config: AgentConfig,
        metrics: Arc<AgentMetrics>,
        queue: mpsc::Sender<ShardReport>,
    ) -> Self {
        let m = config.sketch_dim as usize;
        let projection: Option<(ProjectionKind, Box<dyn Projection + Send + Sync>)> =
            match (m, config.sketch_kind) {
                (0, _) => None,
                (m, SketchKind::CountSketch) => Some((
                    ProjectionKind::RotatedCountSketch,
                    Box::new(CountSketch::new(m, config.sketch_seed)),
                )),
                (m, SketchKind::Gaussian) => Some((
                    ProjectionKind::Gaussian,
                    Box::new(GaussianProjection::new(m, config.sketch_seed)),
                )),
            };
        Self {
            projection,
            config,
            metrics,
            epoch: new_epoch(),
            layout: Mutex::new(None),
            open: Mutex::new(OpenSteps::default()),
            next_seq: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            queue,
        }
    }

    pub fn register(&self, req: &RegisterRequest) -> Result<SharedStatus, AgentError> {
        let layout = Arc::new(Layout::from_request(
            req,
            self.config.track_seed,
            self.config.track_count,
        )?);
        let (shared, status) = match &req.shared_memory {
            None => (None, SharedStatus::NotRequested),
            Some(m) => match SharedRegion::open(&m.path, m.bytes) {
                Ok(r) => (Some(Arc::new(r)), SharedStatus::Mapped),
                Err(e) => {
                    self.metrics.shared_regions_refused.inc();
                    tracing::warn!(error = %e, "shared memory refused: payloads come inline");
                    (None, SharedStatus::Refused(e))
                }
            },
        };
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let mut slot = self.layout.lock().map_err(|_| AgentError::Poisoned)?;
        let abandoned = self
            .open
            .lock()
            .map_err(|_| AgentError::Poisoned)?
            .reset(generation);
        self.metrics.steps_abandoned.add(abandoned as u64);
        tracing::info!(
            run = %layout.run_id, rank = layout.rank, world = layout.world_size,
            shard = layout.shard, tensors = layout.tensors.len(),
            shared_bytes = shared.as_ref().map_or(0, |r| r.len()), "layout registered"
        );
        *slot = Some(Registered {
            generation,
            layout,
            shared,
        });
        Ok(status)
    }

    fn current_layout(&self) -> Result<Registered, AgentError> {
        self.layout
            .lock()
            .map_err(|_| AgentError::Poisoned)?
            .clone()
            .ok_or(AgentError::NotRegistered)
    }

    pub fn add_chunk(&self, c: &GradientChunk) -> Result<(), AgentError> {
        let started = Instant::now();
        let Registered {
            generation,
            layout,
            shared,
        } = self.current_layout()?;
        let idx = layout
            .index_of(&c.tensor)
            .ok_or_else(|| AgentError::UnknownTensor(c.tensor.clone()))?;
        let spec = &layout.tensors[idx];
        let dtype = Dtype::try_from(c.dtype).unwrap_or(Dtype::Unspecified);
        if dtype != spec.dtype {
            return Err(AgentError::DtypeMismatch {
                tensor: spec.name.clone(),
                registered: payload::dtype_name(spec.dtype),
                got: payload::dtype_name(dtype),
            });
        }
        let data: &[u8] = match (&c.shared, &shared) {
            (None, _) => &c.data,
            (Some(_), _) if !c.data.is_empty() => {
                return Err(AgentError::DataAndShared(spec.name.clone()));
            }
            (Some(_), None) => return Err(AgentError::NoSharedRegion(spec.name.clone())),
            (Some(s), Some(region)) => {
                region
                    .slice(s.offset, s.bytes)
                    .ok_or_else(|| AgentError::SharedOutOfRange {
                        tensor: spec.name.clone(),
                        offset: s.offset,
                        bytes: s.bytes,
                        size: region.len(),
                    })?
            }
        };
        let n = payload::element_count(dtype, data)? as u64;
        let end = c.offset.checked_add(n);
        if c.offset < spec.owned_start || end.is_none_or(|e| e > spec.owned_end) {
            return Err(AgentError::OutOfRange {
                tensor: spec.name.clone(),
                offset: c.offset,
                len: n,
                start: spec.owned_start,
                end: spec.owned_end,
            });
        }
        let mut summary = GradSummary::new(self.config.top_k, self.config.hist_precision)?;
        // One decode feeds the summary, the tracked coordinates and the projection, a block at
        // a time so the decoded values stay in cache for all three.
        let mut projection = self.projection.as_ref().map(|(_, p)| vec![0.0; p.dim()]);
        let mut sums = ProjectionScratch::default();
        let mut tracked = Vec::new();
        let mut scratch = Vec::with_capacity(DECODE_BLOCK);
        let size = dtype.element_size().unwrap_or(4);
        let mut at = c.offset;
        let mut next_tracked = spec.tracked.partition_point(|&j| j < c.offset);
        let mut stream = summary.f32_stream();
        for block in data.chunks(DECODE_BLOCK * size) {
            let values = payload::f32_values(dtype, block, &mut scratch)?;
            stream.push(values);
            let end = at + values.len() as u64;
            while let Some(&j) = spec.tracked.get(next_tracked).filter(|&&j| j < end) {
                tracked.push((j, values[(j - at) as usize]));
                next_tracked += 1;
            }
            if let (Some(out), Some((_, p))) = (projection.as_mut(), self.projection.as_ref()) {
                p.accumulate(spec.base + at, values, out, &mut sums);
            }
            at = end;
        }
        if let (Some(out), Some((_, p))) = (projection.as_mut(), self.projection.as_ref()) {
            p.flush(out, &mut sums);
        }
        drop(stream);
        let chunk = ChunkPart {
            summary,
            n,
            tracked,
            projection,
        };

        let mut open = self.open.lock().map_err(|_| AgentError::Poisoned)?;
        if open.generation != generation {
            // The layout was replaced while this chunk was decoded; it belongs to the old one.
            return Err(AgentError::NotRegistered);
        }
        let abandoned = open.add_chunk(
            c.step,
            idx,
            layout.tensors.len(),
            spec.owned_len(),
            c.local,
            chunk,
            self.config.max_open_steps,
        )?;
        drop(open);
        if abandoned > 0 {
            self.metrics.steps_abandoned.add(abandoned as u64);
            tracing::warn!(
                abandoned,
                "too many open steps: oldest abandoned without EndStep"
            );
        }
        self.metrics.chunks_received.inc();
        self.metrics.bytes_received.add(data.len() as u64);
        if c.shared.is_some() {
            self.metrics.shared_bytes_received.add(data.len() as u64);
        }
        self.metrics.values_received.add(n);
        self.metrics.chunk_summarize.record(started.elapsed());
        Ok(())
    }

    pub fn end_step(&self, e: &EndStep) -> Result<EndOutcome, AgentError> {
        let layout = self.current_layout()?.layout;
        let acc = self
            .open
            .lock()
            .map_err(|_| AgentError::Poisoned)?
            .steps
            .remove(&e.step)
            .unwrap_or_default();
        self.metrics.steps_ended.inc();
        let mut tracked: Vec<TrackedValues> = Vec::new();
        let mut by_tensor = acc.tracked;
        by_tensor.sort_unstable_by_key(|&(t, j, _)| (t, j));
        for (t, j, v) in by_tensor {
            match tracked.last_mut() {
                Some(last) if last.name == layout.tensors[t].name => {
                    last.index.push(j);
                    last.value.push(v);
                }
                _ => tracked.push(TrackedValues {
                    name: layout.tensors[t].name.clone(),
                    index: vec![j],
                    value: vec![v],
                }),
            }
        }
        let projection = acc.projection.and_then(|(values, coordinates)| {
            self.projection.as_ref().map(|(kind, p)| WireProjection {
                kind: *kind as i32,
                dim: p.dim() as u32,
                seed: self.config.sketch_seed,
                values,
                coordinates,
            })
        });
        let tensors = acc
            .tensors
            .into_iter()
            .zip(&layout.tensors)
            .filter_map(|(t, spec)| {
                t.map(|t| TensorReport {
                    name: spec.name.clone(),
                    numel: spec.numel,
                    elements_expected: spec.owned_len(),
                    elements_received: t.received,
                    summary: Some(gradtel_codec::summary::to_wire(&t.summary)),
                })
            })
            .collect();
        let ended = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as i64)
            .unwrap_or(0);
        let permit = match self.queue.try_reserve() {
            Ok(p) => p,
            Err(_) => {
                self.metrics.steps_dropped_queue_full.inc();
                tracing::warn!(
                    step = e.step,
                    dropped_total = self.metrics.steps_dropped_total(),
                    "shipping queue full (collector slow or absent): step dropped"
                );
                return Ok(EndOutcome::Dropped);
            }
        };
        // The seq is taken only once the report is sure to be queued, so seqs have no gaps.
        let report = ShardReport {
            protocol_minor: gradtel_proto::PROTOCOL_MINOR,
            run_id: layout.run_id.clone(),
            rank: layout.rank,
            world_size: layout.world_size,
            shard: layout.shard,
            shard_count: layout.shard_count,
            seq: self.next_seq.fetch_add(1, Ordering::Relaxed),
            step: e.step,
            local: acc.local.unwrap_or(false),
            loss: e.loss,
            learning_rate: e.learning_rate,
            batch_size: e.batch_size,
            tensors,
            ended_unix_nanos: ended,
            agent_steps_dropped_total: self.metrics.steps_dropped_total(),
            agent_epoch: self.epoch,
            tracked,
            projection,
        };
        permit.send(report);
        self.metrics.queue_depth.add(1);
        Ok(EndOutcome::Queued)
    }
}

/// A per-process epoch: start time in nanoseconds mixed with the pid. Two agents of one
/// (run, rank, shard) that start in the same nanosecond in the same pid cannot exist.
fn new_epoch() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    (nanos ^ (u64::from(std::process::id()) << 48)).max(1)
}

/// tonic service wrapper.
#[derive(Clone)]
pub struct IngestService {
    pub state: Arc<AgentState>,
}

#[tonic::async_trait]
impl Ingest for IngestService {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let req = request.into_inner();
        let shared = self.state.register(&req).map_err(|e| {
            self.state.metrics.chunks_rejected.inc();
            tracing::warn!(error = %e, "register refused");
            Status::from(e)
        })?;
        Ok(Response::new(RegisterResponse {
            protocol_minor: gradtel_proto::PROTOCOL_MINOR,
            top_k: self.state.config.top_k as u32,
            hist_precision_bits: self.state.config.hist_precision,
            shared_memory: matches!(shared, SharedStatus::Mapped),
            shared_memory_error: match shared {
                SharedStatus::Refused(e) => e.to_string(),
                _ => String::new(),
            },
        }))
    }

    async fn push(
        &self,
        request: Request<Streaming<PushRequest>>,
    ) -> Result<Response<PushResponse>, Status> {
        let resp = ingest(&self.state, request.into_inner(), None).await?;
        Ok(Response::new(resp))
    }

    type PushStepsStream = ReceiverStream<Result<StepAck, Status>>;

    async fn push_steps(
        &self,
        request: Request<Streaming<PushRequest>>,
    ) -> Result<Response<Self::PushStepsStream>, Status> {
        let (tx, rx) = mpsc::channel(ACKS_BUFFERED);
        let state = self.state.clone();
        let stream = request.into_inner();
        tokio::spawn(async move {
            if let Err(status) = ingest(&state, stream, Some(&tx)).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Acks a PushSteps stream may have waiting for the client before the agent stops reading.
const ACKS_BUFFERED: usize = 256;

/// Read one Push/PushSteps stream to its end. Large chunks (or batches) are summarised on the
/// blocking pool — CPU work, ≈ 5 ns per value with the projection, that must not stall the
/// runtime's I/O threads — up to `ingest_threads` at once while the next messages are read, so
/// one stream uses several cores. Chunks of a step merge in any order (summaries and
/// projections are sums); an EndStep waits for every chunk before it. With `acks`, each message
/// that ends steps is answered at once (a `MessageBatch`'s ends in one StepAck).
async fn ingest(
    state: &Arc<AgentState>,
    mut stream: Streaming<PushRequest>,
    acks: Option<&mpsc::Sender<Result<StepAck, Status>>>,
) -> Result<PushResponse, Status> {
    let reject = |e: AgentError| {
        state.metrics.chunks_rejected.inc();
        tracing::warn!(error = %e, "ingest message refused");
        Status::from(e)
    };
    let limit = state.config.ingest_threads.max(1);
    let mut pending: JoinSet<Result<u64, AgentError>> = JoinSet::new();
    let mut resp = PushResponse::default();
    let mut since_ack = 0u64;
    while let Some(msg) = stream.message().await? {
        let items = match msg.msg {
            Some(push_request::Msg::Messages(b)) => b.requests,
            other => vec![PushRequest { msg: other }],
        };
        let mut acked: Vec<StepAck> = Vec::new();
        for item in items {
            let (chunks, end) = match item.msg {
                Some(push_request::Msg::Chunk(c)) => (vec![c], None),
                Some(push_request::Msg::Batch(b)) => (b.chunks, None),
                Some(push_request::Msg::EndStep(e)) => (Vec::new(), Some(e)),
                Some(push_request::Msg::Messages(_)) => {
                    return Err(reject(AgentError::NestedBatch));
                }
                None => return Err(reject(AgentError::EmptyMessage)),
            };
            let bytes: u64 = chunks.iter().map(payload_bytes).sum();
            if bytes >= BLOCKING_CHUNK_BYTES as u64 {
                while pending.len() >= limit {
                    if let Some(done) = pending.join_next().await {
                        since_ack += settle(done).map_err(reject)?;
                    }
                }
                let state = state.clone();
                pending.spawn_blocking(move || add_chunks(&state, &chunks));
            } else if !chunks.is_empty() {
                since_ack += add_chunks(state, &chunks).map_err(reject)?;
            }
            let Some(e) = end else {
                continue;
            };
            while let Some(done) = pending.join_next().await {
                since_ack += settle(done).map_err(reject)?;
            }
            let dropped = state.end_step(&e).map_err(reject)? == EndOutcome::Dropped;
            resp.steps_dropped += u64::from(dropped);
            resp.steps_ended += 1;
            resp.chunks_accepted += since_ack;
            acked.push(StepAck {
                step: e.step,
                dropped,
                chunks_accepted: since_ack,
                more: Vec::new(),
            });
            since_ack = 0;
        }
        // One answer per request message: a batch's later acks ride in the first one's `more`.
        if let Some(tx) = acks
            && !acked.is_empty()
        {
            let mut ack = acked.remove(0);
            ack.more = acked;
            if tx.send(Ok(ack)).await.is_err() {
                // The client went away; what it sent is already handled.
                return Ok(resp);
            }
        }
    }
    while let Some(done) = pending.join_next().await {
        since_ack += settle(done).map_err(reject)?;
    }
    resp.chunks_accepted += since_ack;
    Ok(resp)
}

/// Payload bytes of a chunk, inline or in shared memory (as the client declares them).
fn payload_bytes(c: &GradientChunk) -> u64 {
    c.data.len() as u64 + c.shared.as_ref().map_or(0, |s| s.bytes)
}

fn add_chunks(state: &AgentState, chunks: &[GradientChunk]) -> Result<u64, AgentError> {
    for c in chunks {
        state.add_chunk(c)?;
    }
    Ok(chunks.len() as u64)
}

fn settle(
    done: Result<Result<u64, AgentError>, tokio::task::JoinError>,
) -> Result<u64, AgentError> {
    done.map_err(|_| AgentError::Poisoned)?
}
