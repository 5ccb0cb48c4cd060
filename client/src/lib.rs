//! Rust client of the Ingest protocol: what a training process uses to hand gradients to its
//! local agent over a Unix socket (or TCP loopback).
//!
//! One [`IngestClient::push_step`] call sends every tensor of a step as raw little-endian
//! chunks of at most `chunk_elems` values, then the EndStep, on one Push stream.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use gradtel_proto::v1::ingest_client::IngestClient as RawClient;
use gradtel_proto::v1::{
    Dtype, EndStep, GradientChunk, PushRequest, PushResponse, RegisterRequest, RegisterResponse,
    StepAck, TensorLayout, push_request,
};
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub use gradtel_proto::v1;

/// Largest message the client sends.
const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the agent at {target}: {source}")]
    Connect {
        target: String,
        source: tonic::transport::Error,
    },
    #[error("agent refused: {0}")]
    Status(#[from] tonic::Status),
}

/// A tensor declaration for [`IngestClient::register`].
#[derive(Debug, Clone)]
pub struct TensorDecl {
    pub name: String,
    pub shape: Vec<u64>,
    pub dtype: Dtype,
    /// Owned coordinate range; `None` for the whole tensor.
    pub owned: Option<(u64, u64)>,
    /// Expected tracked coordinates in this tensor; `None` for the agent's default.
    pub track_count: Option<u64>,
}

/// Values of one tensor at one step, as raw little-endian bytes of the registered dtype.
#[derive(Debug, Clone)]
pub struct TensorData {
    pub name: String,
    pub dtype: Dtype,
    /// Flattened coordinate of the first element.
    pub offset: u64,
    pub bytes: Bytes,
}

impl TensorData {
    pub fn from_f32(name: impl Into<String>, offset: u64, values: &[f32]) -> Self {
        let mut b = Vec::with_capacity(values.len() * 4);
        for v in values {
            b.extend_from_slice(&v.to_le_bytes());
        }
        Self {
            name: name.into(),
            dtype: Dtype::F32,
            offset,
            bytes: Bytes::from(b),
        }
    }
}

/// Optional training scalars sent with EndStep.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepScalars {
    pub loss: Option<f64>,
    pub learning_rate: Option<f64>,
    pub batch_size: Option<u64>,
}

#[derive(Clone)]
pub struct IngestClient {
    raw: RawClient<Channel>,
    /// Largest chunk, in elements.
    pub chunk_elems: usize,
}

impl IngestClient {
    /// Connect over a Unix domain socket.
    pub async fn connect_uds(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        let path: PathBuf = path.as_ref().to_path_buf();
        let target = path.display().to_string();
        // The URI is required by the API but unused: the connector ignores it.
        let channel = Endpoint::from_static("http://[::1]:0")
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            }))
            .await
            .map_err(|source| ClientError::Connect { target, source })?;
        Ok(Self::from_channel(channel))
    }

    /// Connect over TCP, e.g. `http://127.0.0.1:4318`.
    pub async fn connect_tcp(url: &str) -> Result<Self, ClientError> {
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|source| ClientError::Connect {
                target: url.into(),
                source,
            })?
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                target: url.into(),
                source,
            })?;
        Ok(Self::from_channel(channel))
    }

    fn from_channel(channel: Channel) -> Self {
        Self {
            raw: RawClient::new(channel)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            chunk_elems: 1 << 16,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn register(
        &mut self,
        run_id: &str,
        rank: u32,
        world_size: u32,
        shard: u32,
        shard_count: u32,
        tensors: &[TensorDecl],
    ) -> Result<RegisterResponse, ClientError> {
        let req = layout_request(run_id, rank, world_size, shard, shard_count, tensors);
        self.register_raw(req).await
    }

    /// Register a request the caller built (e.g. one naming a shared memory region).
    pub async fn register_raw(
        &mut self,
        req: RegisterRequest,
    ) -> Result<RegisterResponse, ClientError> {
        Ok(self.raw.register(req).await?.into_inner())
    }

    /// Send raw Push messages on one stream (for callers that build their own).
    pub async fn push_raw(&mut self, msgs: Vec<PushRequest>) -> Result<PushResponse, ClientError> {
        Ok(self.raw.push(tokio_stream::iter(msgs)).await?.into_inner())
    }

    /// Send raw messages on one PushSteps stream: the acks received, and the status that ended
    /// the stream if it failed (acks sent before a refused message still arrive).
    pub async fn push_steps_raw(
        &mut self,
        msgs: Vec<PushRequest>,
    ) -> Result<(Vec<StepAck>, Option<tonic::Status>), ClientError> {
        let mut stream = self
            .raw
            .push_steps(tokio_stream::iter(msgs))
            .await?
            .into_inner();
        let mut acks = Vec::new();
        loop {
            match stream.message().await {
                Ok(Some(ack)) => acks.push(ack),
                Ok(None) => return Ok((acks, None)),
                Err(status) => return Ok((acks, Some(status))),
            }
        }
    }

    /// Send one step: every tensor split into chunks, then EndStep.
    pub async fn push_step(
        &mut self,
        step: u64,
        tensors: &[TensorData],
        local: bool,
        scalars: StepScalars,
    ) -> Result<PushResponse, ClientError> {
        let mut msgs = Vec::new();
        for t in tensors {
            let size = t.dtype.element_size().unwrap_or(1);
            let chunk_bytes = (self.chunk_elems.max(1) * size).max(size);
            let mut at = 0usize;
            // An empty tensor still sends one (empty) chunk so the agent sees it.
            loop {
                let end = (at + chunk_bytes).min(t.bytes.len());
                msgs.push(PushRequest {
                    msg: Some(push_request::Msg::Chunk(GradientChunk {
                        step,
                        tensor: t.name.clone(),
                        offset: t.offset + (at / size) as u64,
                        dtype: t.dtype as i32,
                        data: t.bytes.slice(at..end),
                        local,
                        shared: None,
                    })),
                });
                at = end;
                if at >= t.bytes.len() {
                    break;
                }
            }
        }
        msgs.push(PushRequest {
            msg: Some(push_request::Msg::EndStep(EndStep {
                step,
                loss: scalars.loss,
                learning_rate: scalars.learning_rate,
                batch_size: scalars.batch_size,
            })),
        });
        self.push_raw(msgs).await
    }
}

/// The RegisterRequest for a layout (no shared memory region).
pub fn layout_request(
    run_id: &str,
    rank: u32,
    world_size: u32,
    shard: u32,
    shard_count: u32,
    tensors: &[TensorDecl],
) -> RegisterRequest {
    RegisterRequest {
        protocol_minor: gradtel_proto::PROTOCOL_MINOR,
        run_id: run_id.into(),
        rank,
        world_size,
        shard,
        shard_count,
        tensors: tensors
            .iter()
            .map(|t| TensorLayout {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype as i32,
                owned_start: t.owned.map_or(0, |o| o.0),
                owned_end: t.owned.map_or(0, |o| o.1),
                track_count: t.track_count,
            })
            .collect(),
        shared_memory: None,
    }
}
