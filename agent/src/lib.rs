//! gradtel agent: the sidecar beside one training process.
//!
//! ```text
//! training process ──Ingest (UDS)──▶ service ──▶ open steps ──EndStep──▶ queue ──▶ shipper ──Collect──▶ collector
//! ```
//!
//! * [`service`]: the Ingest gRPC service; decodes raw f32/f16/bf16 chunks into summaries.
//! * [`shared`]: the client's optional shared memory region for payloads.
//! * [`steps`]: per-step, per-tensor accumulation until EndStep.
//! * [`spool`]: unacknowledged reports on disk, replayed by the next agent.
//! * [`shipper`]: the at-least-once Collect stream with resend after reconnect.
//! * [`config`], [`metrics`]: flags and self-measurement.

pub mod config;
pub mod layout;
pub mod metrics;
pub mod service;
pub mod shared;
pub mod shipper;
pub mod spool;
pub mod steps;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use config::AgentConfig;
use gradtel_proto::v1::ingest_server::IngestServer;
pub use metrics::AgentMetrics;
use service::{AgentState, IngestService};
pub use shipper::ShipperReport;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};

/// Largest gRPC message the agent accepts (one chunk).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// HTTP/2 flow-control window of an Ingest stream.
const INGEST_WINDOW_BYTES: u32 = 16 << 20;

/// Errors of the agent; each maps to the gRPC status a client sees.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bad run id: {0}")]
    BadRunId(String),
    #[error("bad layout: {0}")]
    BadLayout(String),
    #[error("no layout registered: call Register before pushing gradients")]
    NotRegistered,
    #[error("tensor {0:?} is not in the registered layout")]
    UnknownTensor(String),
    #[error("tensor {tensor:?} was registered as {registered} but the chunk is {got}")]
    DtypeMismatch {
        tensor: String,
        registered: &'static str,
        got: &'static str,
    },
    #[error(
        "chunk [{offset}, {offset}+{len}) of tensor {tensor:?} is outside the owned range [{start}, {end})"
    )]
    OutOfRange {
        tensor: String,
        offset: u64,
        len: u64,
        start: u64,
        end: u64,
    },
    #[error("step {step}: {received} values received for a tensor that owns only {owned}")]
    TooManyValues {
        step: u64,
        received: u64,
        owned: u64,
    },
    #[error("step {step} mixes local (pre-all-reduce) and reduced gradients")]
    MixedLocal { step: u64 },
    #[error("push message carries neither a chunk nor an end of step")]
    EmptyMessage,
    #[error("a batch of messages contains a batch of messages")]
    NestedBatch,
    #[error("chunk of tensor {0:?} names a shared memory slice, but no region is registered")]
    NoSharedRegion(String),
    #[error("chunk of tensor {0:?} carries both inline data and a shared memory slice")]
    DataAndShared(String),
    #[error(
        "shared slice [{offset}, {offset}+{bytes}) of tensor {tensor:?} is outside the {size}-byte region"
    )]
    SharedOutOfRange {
        tensor: String,
        offset: u64,
        bytes: u64,
        size: u64,
    },
    #[error(transparent)]
    Payload(#[from] gradtel_codec::CodecError),
    #[error(transparent)]
    Stats(#[from] gradtel_stats::StatsError),
    #[error("internal lock poisoned")]
    Poisoned,
    #[error(transparent)]
    Spool(#[from] spool::SpoolError),
    #[error("collector TLS: {0}")]
    Tls(String),
    #[error("cannot listen on {what}: {source}")]
    Listen {
        what: String,
        source: std::io::Error,
    },
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        use AgentError::*;
        let msg = e.to_string();
        match e {
            BadRunId(_)
            | BadLayout(_)
            | DtypeMismatch { .. }
            | OutOfRange { .. }
            | TooManyValues { .. }
            | MixedLocal { .. }
            | EmptyMessage
            | NestedBatch
            | NoSharedRegion(_)
            | DataAndShared(_)
            | SharedOutOfRange { .. }
            | Payload(_) => tonic::Status::invalid_argument(msg),
            NotRegistered => tonic::Status::failed_precondition(msg),
            UnknownTensor(_) => tonic::Status::not_found(msg),
            Stats(_) | Poisoned | Listen { .. } | Tls(_) | Spool(_) => tonic::Status::internal(msg),
        }
    }
}

/// A running agent: Ingest server(s), shipper, optional metrics endpoint.
pub struct Agent {
    state: Arc<AgentState>,
    stop_servers: watch::Sender<bool>,
    stop_shipper: watch::Sender<Option<Instant>>,
    servers: Vec<JoinHandle<Result<(), tonic::transport::Error>>>,
    shipper: JoinHandle<ShipperReport>,
    socket: PathBuf,
}

/// Bind a listening Unix socket at `path` so that the path appears only once connections are
/// accepted: bound and listening under a temporary name beside it, then renamed into place.
/// Binding at the path itself creates the file a moment before `listen`, and a client that
/// waits for the file (the Python sidecar, the tests) could be refused in between. Falls back
/// to binding in place if the temporary name cannot be bound (too long for a socket address).
fn bind_then_publish(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    match tokio::net::UnixListener::bind(&tmp) {
        Ok(l) => match std::fs::rename(&tmp, path) {
            Ok(()) => Ok(l),
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                Err(e)
            }
        },
        Err(_) => tokio::net::UnixListener::bind(path),
    }
}

impl Agent {
    /// Bind the Ingest socket (replacing a stale socket file) and start serving and shipping.
    pub async fn start(config: AgentConfig) -> Result<Agent, AgentError> {
        // Before anything starts: bad TLS material fails the start, not every reconnection.
        let tls = config.client_tls()?;
        let metrics = Arc::new(AgentMetrics::default());
        // Also before serving: a spool another agent holds fails the start.
        let spool = match config.spool_path() {
            None => spool::Spool::in_memory(),
            Some(dir) => {
                let (spool, found) = spool::Spool::open(
                    &dir,
                    config.spool_max_mib.saturating_mul(1 << 20),
                    spool::DEFAULT_SEGMENT_BYTES,
                )?;
                metrics.spool_replayed.add(found.replayed as u64);
                metrics.spool_lost.add(found.lost as u64);
                metrics.reports_inflight.set(spool.len() as i64);
                metrics.spool_bytes.set(spool.bytes() as i64);
                if found.replayed > 0 || found.lost > 0 {
                    tracing::info!(spool = %dir.display(), replayed = found.replayed,
                        cut_segments = found.lost, "reports a previous agent left unacknowledged will be sent");
                }
                spool
            }
        };
        let (queue_tx, queue_rx) = mpsc::channel(config.queue.max(1));
        let state = Arc::new(AgentState::new(config.clone(), metrics.clone(), queue_tx));
        let (stop_servers, stop_rx) = watch::channel(false);
        let (stop_shipper, shipper_rx) = watch::channel(None);

        let listen_err = |what: String| move |source| AgentError::Listen { what, source };
        if config.socket.exists() {
            // A socket file survives its process; binding over it needs it gone.
            std::fs::remove_file(&config.socket)
                .map_err(listen_err(config.socket.display().to_string()))?;
        }
        let uds = bind_then_publish(&config.socket)
            .map_err(listen_err(config.socket.display().to_string()))?;
        let service = IngestService {
            state: state.clone(),
        };
        let svc = || {
            IngestServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES)
        };
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        // Gradient chunks are megabytes: HTTP/2 windows of that order keep the client sending
        // instead of waiting for window updates after every 64 kB.
        let builder = || {
            tonic::transport::Server::builder()
                .initial_stream_window_size(Some(INGEST_WINDOW_BYTES))
                .initial_connection_window_size(Some(2 * INGEST_WINDOW_BYTES))
        };
        let mut servers = vec![tokio::spawn(
            builder().add_service(svc()).serve_with_incoming_shutdown(
                UnixListenerStream::new(uds),
                stopped(stop_rx.clone()),
            ),
        )];
        if let Some(addr) = config.tcp {
            let tcp = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(listen_err(addr.to_string()))?;
            servers.push(tokio::spawn(
                builder().add_service(svc()).serve_with_incoming_shutdown(
                    TcpListenerStream::new(tcp),
                    stopped(stop_rx.clone()),
                ),
            ));
        }
        if let Some(addr) = config.metrics {
            gradtel_telemetry::serve_metrics(addr, metrics.clone(), stopped(stop_rx.clone()))
                .await
                .map_err(listen_err(addr.to_string()))?;
        }
        let shipper = tokio::spawn(
            shipper::Shipper {
                collector: config.collector.clone(),
                tls,
                max_inflight: config.max_inflight.max(1),
                max_backoff: config.max_backoff,
                metrics: metrics.clone(),
            }
            .run(queue_rx, shipper_rx, spool),
        );
        tracing::info!(socket = %config.socket.display(), collector = %config.collector, epoch = state.epoch, "agent started");
        Ok(Agent {
            state,
            stop_servers,
            stop_shipper,
            servers,
            shipper,
            socket: config.socket,
        })
    }

    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.state.metrics.clone()
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// Stop serving Ingest, then give the shipper up to `drain` to get every queued and
    /// in-flight report acknowledged. Returns what could not be delivered.
    pub async fn shutdown(self, drain: Duration) -> ShipperReport {
        let _ = self.stop_servers.send(true);
        for s in self.servers {
            if let Ok(Err(e)) = s.await {
                tracing::warn!(error = %e, "ingest server ended with an error");
            }
        }
        let _ = self.stop_shipper.send(Some(Instant::now() + drain));
        let report = self.shipper.await.unwrap_or_default();
        let _ = std::fs::remove_file(&self.socket);
        if report.unacknowledged > report.spooled {
            tracing::warn!(
                lost = report.unacknowledged - report.spooled,
                "agent stopped with reports the collector never acknowledged and the spool could not keep"
            );
        }
        if report.spooled > 0 {
            tracing::info!(
                spooled = report.spooled,
                "reports not yet acknowledged stay in the spool for the next agent"
            );
        }
        report
    }
}

#[cfg(test)]
mod tests {
    use super::bind_then_publish;

    #[test]
    fn the_socket_path_appears_listening_and_replaces_a_stale_file() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("agent.sock");
            std::fs::write(&path, b"stale").unwrap();
            let listener = bind_then_publish(&path).unwrap();
            // Connectable as soon as the path is there, and only the path is left.
            let client = tokio::net::UnixStream::connect(&path).await;
            assert!(client.is_ok(), "{client:?}");
            assert!(listener.accept().await.is_ok());
            let names: Vec<_> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert_eq!(names, vec![std::ffi::OsString::from("agent.sock")]);
        });
    }
}
