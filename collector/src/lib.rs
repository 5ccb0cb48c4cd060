//! gradtel collector: receives agents' shard reports, assembles each (run, step) across ranks
//! and shards, merges per tensor, layer and model, and writes Hive-partitioned Parquet.
//!
//! ```text
//! agents ──Collect──▶ service ──▶ durable: dedup → wal ──▶ pipeline: assembler → live → sink ──▶ Parquet
//!   ▲                 (validate)          │      ▲                                      │
//!   └──── acks once the log is synced ◀───┘      └──── published segments deleted ◀─────┘
//! ```
//!
//! Components: [`config`], [`service`], [`report`], [`durable`], [`wal`] and [`journal`],
//! [`assembler`], [`live`] (online estimators and alerts), [`tables`], [`sink`], [`acks`],
//! [`pipeline`], [`metrics`].

pub mod acks;
pub mod assembler;
pub mod config;
pub mod durable;
pub mod journal;
pub mod live;
pub mod metrics;
pub mod pipeline;
pub mod queue_budget;
pub mod report;
pub mod service;
pub mod sink;
pub mod tables;
pub mod tls;
pub mod upload;
pub mod wal;

/// Counts each thread's allocations, for tests that hold a path to a number of them.
#[cfg(test)]
#[global_allocator]
static ALLOCATOR: gradtel_proto::counting::Counting = gradtel_proto::counting::Counting;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use config::CollectorConfig;
use gradtel_proto::logged::collect_server::CollectServer;
pub use metrics::CollectorMetrics;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

/// Largest report accepted.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot create the output root {path}: {source}")]
    Out {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Wal(#[from] wal::WalError),
    #[error(transparent)]
    Journal(#[from] journal::JournalError),
    #[error("cannot start the pipeline thread: {0}")]
    Runtime(std::io::Error),
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    #[error("TLS of the Collect service: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("--upload: {0}")]
    Upload(#[from] gradtel_s3::S3Error),
}

pub struct Collector {
    addr: SocketAddr,
    metrics_addr: Option<SocketAddr>,
    metrics: Arc<CollectorMetrics>,
    /// Reports into the durability stage.
    inbound: mpsc::Sender<Inbound>,
    /// Drain requests to it (apart, so that a paused intake cannot hold them up).
    drains: mpsc::Sender<oneshot::Sender<()>>,
    durable: JoinHandle<()>,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    stop: watch::Sender<bool>,
    /// The object-store upload (`--upload`) and its own stop, given after the last write.
    uploader: Option<(watch::Sender<bool>, JoinHandle<()>)>,
}

/// How long a stopping collector keeps uploading what it wrote last.
const UPLOAD_DRAIN: Duration = Duration::from_secs(30);

use pipeline::Inbound;

/// Ask the durability stage and the pipeline behind it to write everything pending and wait
/// until they have.
async fn drain(drains: &mpsc::Sender<oneshot::Sender<()>>) {
    let (tx, rx) = oneshot::channel();
    if drains.send(tx).await.is_ok() {
        let _ = rx.await;
    }
}

impl Collector {
    /// Bind, then serve until [`Collector::shutdown`].
    pub async fn start(config: CollectorConfig) -> Result<Collector, CollectorError> {
        // Before anything starts: a bad certificate or key fails the start, not a handshake.
        let tls = config.server_tls()?;
        // Before anything starts: a bad endpoint, CA or missing credentials fail the start.
        let upload = config.upload_client()?;
        std::fs::create_dir_all(&config.out).map_err(|source| CollectorError::Out {
            path: config.out.clone(),
            source,
        })?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| CollectorError::Listen {
                addr: config.listen,
                source,
            })?;
        let addr = listener
            .local_addr()
            .map_err(|source| CollectorError::Listen {
                addr: config.listen,
                source,
            })?;
        let metrics = Arc::new(CollectorMetrics::default());
        let router = Arc::new(acks::AckRouter::default());
        let (pipeline_tx, pipeline_rx) = mpsc::channel(4096);
        let instance = format!(
            "{:x}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0)
                ^ u64::from(std::process::id())
        );
        let tick =
            (config.roll_interval / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let (wal, writer, recovered) =
            wal::Wal::open(&config.wal_dir(), wal::DEFAULT_SEGMENT_BYTES)?;
        // Before anything reads or writes the lake: writes committed before a crash become
        // visible whole.
        let finished = journal::roll_forward(&config.out, &recovered.commits)?;
        if finished > 0 {
            tracing::info!(
                files = finished,
                "parquet files of committed writes a crash cut short renamed into place"
            );
        }
        let (back_tx, back_rx) = mpsc::unbounded_channel();
        let (inbound, durable_rx) = mpsc::channel(4096);
        let (drains, drains_rx) = mpsc::channel(4);
        let mut pipeline = pipeline::Pipeline::new(&config, instance, metrics.clone(), back_tx);
        // Before the log's replay: the replayed steps are the unpublished ones, which no
        // checkpoint holds.
        if config.file.live.checkpoints {
            restore_live(
                &mut pipeline.live,
                &config.wal_dir(),
                &recovered.commits,
                &metrics,
            );
        }
        let uploads = match upload {
            Some(client) => {
                let (tx, rx) = mpsc::unbounded_channel();
                pipeline = pipeline.with_uploads(tx);
                Some((client, rx))
            }
            None => None,
        };
        // The estimators hold their thread for milliseconds per step; on a thread of their own
        // they never delay the streams or an ack behind them.
        let nice = config.estimators_nice;
        let estimators = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("gradtel-estimators")
            .on_thread_start(move || lower_priority(nice))
            .build()
            .map_err(CollectorError::Runtime)?;
        std::thread::Builder::new()
            .name("gradtel-pipeline".into())
            .spawn(move || {
                lower_priority(nice);
                estimators.block_on(pipeline.run(pipeline_rx, tick))
            })
            .map_err(CollectorError::Runtime)?;
        let durable = tokio::spawn(
            durable::Durable::new(
                router.clone(),
                metrics.clone(),
                pipeline_tx,
                (wal, writer),
                config.max_unpublished_mb.saturating_mul(1 << 20),
            )
            .run(recovered, durable_rx, drains_rx, back_rx),
        );
        let service = service::CollectService {
            budget: Arc::new(queue_budget::QueueBudget::new(
                config.max_queued_mb.saturating_mul(1 << 20),
                metrics.clone(),
            )),
            inbound: inbound.clone(),
            router,
            metrics: metrics.clone(),
            next_conn: Arc::new(AtomicU64::new(1)),
        };
        let (stop, stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let tls = tls.map(Arc::new);
        let metrics_addr = match (config.metrics, &tls) {
            (Some(m), Some(server_tls)) if config.metrics_tls => {
                let listen = |source| CollectorError::Listen { addr: m, source };
                let listener = tokio::net::TcpListener::bind(m).await.map_err(listen)?;
                let bound = listener.local_addr().map_err(listen)?;
                let listener = tls::MetricsListener::new(
                    listener,
                    bound,
                    server_tls,
                    metrics.clone(),
                    stop_rx.clone(),
                )?;
                gradtel_telemetry::serve_metrics_on(
                    listener,
                    metrics.clone(),
                    stopped(stop_rx.clone()),
                );
                Some(bound)
            }
            (Some(m), _) => Some(
                gradtel_telemetry::serve_metrics(m, metrics.clone(), stopped(stop_rx.clone()))
                    .await
                    .map_err(|source| CollectorError::Listen { addr: m, source })?,
            ),
            (None, _) => None,
        };
        let collect = CollectServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut builder = tonic::transport::Server::builder();
        let server = match tls {
            None => tokio::spawn(builder.add_service(collect).serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stopped(stop_rx),
            )),
            Some(server_tls) => {
                tokio::spawn(tls::watch(
                    server_tls.clone(),
                    config.tls_reload_interval,
                    metrics.clone(),
                    stop_rx.clone(),
                ));
                let incoming = tls::incoming(
                    listener,
                    move || server_tls.current(),
                    metrics.clone(),
                    stop_rx.clone(),
                );
                tokio::spawn(
                    builder
                        .add_service(collect)
                        .serve_with_incoming_shutdown(incoming, stopped(stop_rx)),
                )
            }
        };
        let tls = match (&config.tls_cert, &config.tls_client_ca) {
            (None, _) => "off",
            (Some(_), None) => "on",
            (Some(_), Some(_)) => "mutual",
        };
        let uploader = uploads.map(|(client, files)| {
            let (tx, rx) = watch::channel(false);
            let task = tokio::spawn(
                upload::Uploader {
                    out: config.out.clone(),
                    client,
                    delete_local: config.upload_delete_local,
                    retry: config.roll_interval.max(Duration::from_millis(200)),
                    metrics: metrics.clone(),
                }
                .run(files, rx, UPLOAD_DRAIN),
            );
            (tx, task)
        });
        tracing::info!(%addr, out = %config.out.display(), tls, "collector started");
        Ok(Collector {
            uploader,
            addr,
            metrics_addr,
            metrics,
            inbound,
            drains,
            durable,
            server,
            stop,
        })
    }

    /// The address the Collect service is bound to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address /metrics and /healthz are served on, if any.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    pub fn metrics(&self) -> Arc<CollectorMetrics> {
        self.metrics.clone()
    }

    /// Write everything pending now (steps still waiting for ranks are written as they stand).
    pub async fn drain(&self) {
        drain(&self.drains).await;
    }

    /// Stop accepting streams, write everything pending, and stop. Open agent streams are given
    /// `grace` to end by themselves before they are cut.
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let mut server = self.server;
        if tokio::time::timeout(grace, &mut server).await.is_err() {
            server.abort();
        }
        drain(&self.drains).await;
        // The pipeline's thread ends when the durability stage, its only sender, is gone.
        drop(self.inbound);
        self.durable.abort();
        if let Some((stop, task)) = self.uploader {
            let _ = stop.send(true);
            let _ = task.await;
        }
        tracing::info!("collector stopped");
    }
}

/// Restore the runs' live state from their checkpoints; refused files are set aside (renamed
/// `….refused`, counted and logged), and those of runs beyond `live.max_runs` deleted, so the
/// directory holds no more than the collector can restore. First the checkpoints of writes
/// that `commits` (the publication journals) name are put in place, as their Parquet files
/// were (`journal::roll_forward`), and those of uncommitted writes deleted.
fn restore_live(
    live: &mut live::Live,
    wal_dir: &std::path::Path,
    commits: &[journal::Commit],
    metrics: &CollectorMetrics,
) {
    use live::checkpoint;
    let dir = checkpoint::dir(wal_dir);
    match checkpoint::settle_pending(&dir, commits) {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!(
                runs = n,
                "live-state checkpoints of committed writes a crash cut short put in place"
            )
        }
        Err(e) => {
            metrics.live_checkpoint_errors.inc();
            tracing::warn!(error = %e, "pending live-state checkpoints not settled; the last ones in place are restored");
        }
    }
    let (states, damaged) = checkpoint::load(&dir);
    let r = live.restore(states);
    let refused = damaged.into_iter().chain(
        r.refused
            .into_iter()
            .map(|(run, e)| (checkpoint::file_of(&dir, &run), e)),
    );
    for (path, e) in refused {
        metrics.live_checkpoint_errors.inc();
        let aside = checkpoint::set_aside(&path);
        tracing::warn!(checkpoint = %path.display(), error = %e, set_aside = aside.is_ok(), "live-state checkpoint refused; that run's live state starts afresh");
    }
    for run in &r.surplus {
        if let Err(e) = checkpoint::remove(&dir, run) {
            tracing::warn!(run = %run, error = %e, "checkpoint of a run beyond live.max_runs not deleted");
        }
    }
    metrics.live_runs_restored.add(r.restored as u64);
    if r.restored > 0 {
        tracing::info!(runs = r.restored, "live state restored from checkpoints");
    }
}

/// Raise the calling thread's nice value by `by` (Linux keeps one per thread). The estimators
/// and their Parquet writes run behind the streams and acknowledgements: in a burst of reports
/// the CPU goes to taking them in and logging them, and the estimators catch up after it.
fn lower_priority(by: i32) {
    if by <= 0 {
        return;
    }
    let tid = rustix::thread::gettid();
    let now = rustix::process::getpriority_process(Some(tid)).unwrap_or(0);
    if let Err(e) = rustix::process::setpriority_process(Some(tid), (now + by).min(19)) {
        tracing::warn!(error = %e, "could not lower the estimator threads' priority");
    }
}
