//! Agent configuration: command-line flags (and `GRADTEL_AGENT_*` environment variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Configuration of one agent (one per training process / rank).
#[derive(Debug, Clone, clap::Args)]
pub struct AgentConfig {
    /// Unix socket the training process connects to (Ingest service). A stale socket file left
    /// by a previous agent is replaced.
    #[arg(
        long,
        env = "GRADTEL_AGENT_SOCKET",
        default_value = "gradtel-agent.sock"
    )]
    pub socket: PathBuf,

    /// Also serve Ingest on this TCP address (use a loopback address, e.g. 127.0.0.1:4318).
    #[arg(long, env = "GRADTEL_AGENT_TCP")]
    pub tcp: Option<SocketAddr>,

    /// Collector endpoint the reports are streamed to.
    #[arg(
        long,
        env = "GRADTEL_COLLECTOR",
        default_value = "http://127.0.0.1:4317"
    )]
    pub collector: String,

    /// How many of the largest |g| per tensor shard and step to keep (feeds tail indices).
    #[arg(long, default_value_t = 64)]
    pub top_k: usize,

    /// Mantissa bits of the |g| histogram: relative error 2^-(p+1); 7 gives 0.39 %.
    #[arg(long, default_value_t = gradtel_stats::loghist::DEFAULT_PRECISION_BITS)]
    pub hist_precision: u32,

    /// Finished steps waiting to be shipped. When full, newly finished steps are dropped (and
    /// counted) instead of blocking the training process.
    #[arg(long, default_value_t = 256)]
    pub queue: usize,

    /// Reports sent but not yet acknowledged (kept for resending after a reconnect). When this
    /// many are outstanding the agent stops sending and the queue above fills.
    #[arg(long, default_value_t = 4096)]
    pub max_inflight: usize,

    /// Steps that may be open (chunks received, no EndStep yet) at once; beyond it the oldest
    /// open step is abandoned and counted as dropped.
    #[arg(long, default_value_t = 64)]
    pub max_open_steps: usize,

    /// Serve Prometheus metrics on this address at /metrics.
    #[arg(long, env = "GRADTEL_AGENT_METRICS")]
    pub metrics: Option<SocketAddr>,

    /// Longest wait between reconnection attempts to the collector.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub max_backoff: Duration,
}

impl AgentConfig {
    /// Defaults with the given socket and collector, for embedding (tests, demo).
    pub fn new(socket: PathBuf, collector: String) -> Self {
        Self {
            socket,
            tcp: None,
            collector,
            top_k: 64,
            hist_precision: gradtel_stats::loghist::DEFAULT_PRECISION_BITS,
            queue: 256,
            max_inflight: 4096,
            max_open_steps: 64,
            metrics: None,
            max_backoff: Duration::from_secs(5),
        }
    }
}
