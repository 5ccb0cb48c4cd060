//! Collector configuration: command-line flags (and `GRADTEL_COLLECTOR_*` environment variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, Clone, clap::Args)]
pub struct CollectorConfig {
    /// Address the Collect gRPC service listens on (agents connect here).
    #[arg(
        long,
        env = "GRADTEL_COLLECTOR_LISTEN",
        default_value = "127.0.0.1:4317"
    )]
    pub listen: SocketAddr,

    /// Root of the Parquet lake: files go to <out>/run=<id>/table=<name>/part-*.parquet.
    #[arg(long, env = "GRADTEL_COLLECTOR_OUT", default_value = "gradtel-data")]
    pub out: PathBuf,

    /// How long a step waits for missing ranks/shards after its first report arrives. After it,
    /// the step is written with the missing ranks recorded; reports arriving later are written
    /// as separate rows marked late.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub straggler_timeout: Duration,

    /// Roll (close and publish) a run's Parquet file once it holds this many rows...
    #[arg(long, default_value_t = 50_000)]
    pub roll_rows: usize,

    /// ...or once its oldest row has waited this long. Reports are acknowledged only when their
    /// file is published, so this bounds the acknowledgement latency agents see.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub roll_interval: Duration,

    /// Steps being assembled at once; beyond it the oldest is written as it stands.
    #[arg(long, default_value_t = 4096)]
    pub max_pending_steps: usize,

    /// Serve Prometheus metrics on this address at /metrics.
    #[arg(long, env = "GRADTEL_COLLECTOR_METRICS")]
    pub metrics: Option<SocketAddr>,
}

impl CollectorConfig {
    /// Defaults writing under `out`, listening on `listen`, for embedding (tests, demo).
    pub fn new(listen: SocketAddr, out: PathBuf) -> Self {
        Self {
            listen,
            out,
            straggler_timeout: Duration::from_secs(5),
            roll_rows: 50_000,
            roll_interval: Duration::from_secs(2),
            max_pending_steps: 4096,
            metrics: None,
        }
    }
}
