//! Collector configuration: command-line flags (and `GRADTEL_COLLECTOR_*` environment
//! variables) for the daemon, and an optional TOML file (`--config`) for the online estimators
//! and the health alerts. Every TOML key has a default, so an empty file is valid; unknown keys
//! are an error (a misspelt threshold must not be silently ignored).

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

    /// ...or once its oldest row has waited this long. Reports are acknowledged as soon as the
    /// write-ahead log holds them, so this no longer bounds the latency agents see; it sets how
    /// fresh the lake is and how large its files are.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "2s")]
    pub roll_interval: Duration,

    /// Write-ahead log directory (default `<out>/_wal`, which Hive-style readers skip).
    /// Reports are acknowledged once synced there and replayed from it after a crash.
    #[arg(long, env = "GRADTEL_COLLECTOR_WAL_DIR")]
    pub wal_dir: Option<PathBuf>,

    /// Niceness added to the estimator threads (live estimators and Parquet writes), so that
    /// taking in reports and acknowledging them goes first when CPU is short; 0 leaves them as
    /// the rest of the process.
    #[arg(long, env = "GRADTEL_COLLECTOR_ESTIMATORS_NICE", default_value_t = 10, value_parser = clap::value_parser!(i32).range(0..=19))]
    pub estimators_nice: i32,

    /// Threads of the runtime that takes in reports (gRPC, decoding, the write-ahead log,
    /// acks). Default: one less than the available cores, at least one — the pipeline and
    /// estimator threads have threads of their own. On a 2-core machine a second runtime thread
    /// cost ≈ 10 % more CPU per report (tasks handed between the two; bench/RESULTS.md).
    #[arg(long, env = "GRADTEL_COLLECTOR_RUNTIME_THREADS", value_parser = clap::value_parser!(u16).range(1..))]
    pub runtime_threads: Option<u16>,

    /// Steps being assembled at once; beyond it the oldest is written as it stands.
    #[arg(long, default_value_t = 4096)]
    pub max_pending_steps: usize,

    /// Most megabytes of acknowledged reports whose rows are not yet in Parquet (the
    /// write-ahead log's live segments). Beyond it the collector stops taking in reports until
    /// writes catch up: agents keep theirs and, when their queues fill, drop whole steps and
    /// count them. Bounds the collector's memory and disk when Parquet cannot be written.
    #[arg(long, env = "GRADTEL_COLLECTOR_MAX_UNPUBLISHED_MB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_unpublished_mb: u64,

    /// Most megabytes of decoded reports waiting between the agents' streams and the
    /// estimators. A stream whose next report does not fit waits (and its agent with it, by
    /// gRPC flow control): the collector's memory stays bounded whatever the reports' size.
    #[arg(long, env = "GRADTEL_COLLECTOR_MAX_QUEUED_MB", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    pub max_queued_mb: u64,

    /// Serve Prometheus metrics on this address at /metrics (and /healthz).
    #[arg(long, env = "GRADTEL_COLLECTOR_METRICS")]
    pub metrics: Option<SocketAddr>,

    /// PEM certificate (chain) the Collect service presents: with `--tls-key` it serves TLS
    /// only, and agents connect to `https://…` with `--collector-ca`. Without it the service is
    /// plain gRPC, for loopback or a network trusted as it is.
    #[arg(long, env = "GRADTEL_COLLECTOR_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "GRADTEL_COLLECTOR_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificate: agents must present a certificate it signed (mutual TLS; agent
    /// `--tls-cert`/`--tls-key`), others are refused at the handshake.
    #[arg(long, env = "GRADTEL_COLLECTOR_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Serve `--metrics` over TLS too, with the `--tls-cert` certificate (rotated alike), so
    /// that Prometheus scrapes it as `https` (no client certificate asked).
    #[arg(long, env = "GRADTEL_COLLECTOR_METRICS_TLS", requires_all = ["tls_cert", "metrics"],
          value_parser = clap::builder::BoolishValueParser::new())]
    pub metrics_tls: bool,

    /// How often the certificate and key files are checked: a rotated pair is served to new
    /// connections without a restart.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    pub tls_reload_interval: Duration,

    /// Upload every published Parquet file to this S3 location, `s3://bucket/prefix`, keeping
    /// the lake's layout under the prefix (credentials from `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY` and optionally `AWS_SESSION_TOKEN`).
    #[arg(long, env = "GRADTEL_COLLECTOR_UPLOAD")]
    pub upload: Option<gradtel_s3::S3Location>,

    /// The S3 endpoint: `https://s3.<region>.amazonaws.com` by default, or an S3-compatible
    /// server's `http(s)://host:port` (MinIO, Ceph). Path-style requests.
    #[arg(long, env = "GRADTEL_S3_ENDPOINT", requires = "upload")]
    pub s3_endpoint: Option<String>,

    /// Region of the bucket (signed into every request).
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub s3_region: String,

    /// PEM CA bundle to trust for an `https://` endpoint instead of the system's.
    #[arg(long, env = "GRADTEL_S3_CA", requires = "upload")]
    pub s3_ca: Option<PathBuf>,

    /// Delete each Parquet file from the local lake once it is uploaded.
    #[arg(long, requires = "upload")]
    pub upload_delete_local: bool,

    /// TOML file with `[live]` (online estimators) and `[alerts]` (health alerts) sections.
    #[arg(long, env = "GRADTEL_COLLECTOR_CONFIG")]
    pub config: Option<PathBuf>,

    /// Settings from `--config` (defaults when absent); filled by [`CollectorConfig::load_file`].
    #[arg(skip)]
    pub file: FileConfig,
}

/// The TOML file.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FileConfig {
    pub live: LiveConfig,
    pub alerts: AlertConfig,
}

/// Online estimators (collector/src/live).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LiveConfig {
    /// Steps in the iteration-wise and SGN windows of each tracked coordinate.
    pub window: usize,
    /// Evaluate the windows every this many steps.
    pub window_every: u64,
    /// Ranks (the lowest-numbered) whose SGN values enter a coordinate's window each step, and
    /// whose projected gradient and SGN rows enter the covariance sketches: the window holds at
    /// most `window × sgn_ranks` values and the sketches take at most `2 × sgn_ranks` rows per
    /// step, bounding memory and cost with many ranks. The per-step `sgn` rows, and the mean
    /// that SGN is measured from, always use every rank.
    pub sgn_ranks: usize,
    /// Fit the dimension-wise power law (Clauset, on the merged histogram) every this many
    /// steps; 0 never. Hill, Pickands, DEdH and K²/JB run every step.
    pub clauset_every: u64,
    /// Smallest tail the dimension-wise Clauset fit may choose.
    pub clauset_min_tail: u64,
    /// Directions ℓ kept by each Frequent-Directions sketch.
    pub fd_ell: usize,
    /// Multiply each sketch by this every step (1 = no forgetting; 0.99 halves a row's weight
    /// after 69 steps).
    pub fd_decay: f64,
    /// Snapshot the covariance spectra every this many steps.
    pub spectrum_every: u64,
    /// Tracked coordinates kept per run (bounds memory at window × this × 8 bytes per series).
    pub max_tracked: usize,
    /// Runs with live state; beyond it the least recently active run's state is dropped.
    pub max_runs: usize,
    /// Checkpoint each run's live state beside the write-ahead log, so that a restarted
    /// collector continues its windows, sketches and alert histories
    /// (`collector/src/live/checkpoint.rs`).
    pub checkpoints: bool,
    /// Longest time between a run's checkpoints while it is written (they go with its
    /// Parquet writes; 0: with every write). A crash loses at most this much of the live
    /// state, never counts a step twice.
    pub checkpoint_every_s: f64,
    /// Share of the time between two checkpoints of a run that the second may cost in CPU time
    /// (its copy on the estimators' thread, its encoding and synced file on the writer's):
    /// while that allows, a checkpoint goes with every write and a crash loses nothing of the
    /// live state.
    pub checkpoint_time_share: f64,
}

impl Default for LiveConfig {
    fn default() -> Self {
        Self {
            window: 100,
            window_every: 50,
            sgn_ranks: 8,
            clauset_every: 10,
            clauset_min_tail: 50,
            fd_ell: 32,
            fd_decay: 1.0,
            spectrum_every: 50,
            max_tracked: 100_000,
            max_runs: 64,
            checkpoints: true,
            checkpoint_every_s: 30.0,
            checkpoint_time_share: 0.02,
        }
    }
}

/// Health alerts (collector/src/live/alerts.rs). Every alert is edge-triggered: it fires when
/// its condition becomes true and re-arms when the condition clears.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// NaN or ±Inf values appear in a step's gradient.
    pub nonfinite: bool,
    /// Robust z-score of the model's gradient L2 norm against the previous `norm_window`
    /// steps above which a step is a spike.
    pub norm_z: f64,
    pub norm_window: usize,
    /// Steps of history needed before spikes are judged.
    pub norm_min_history: usize,
    /// Dimension-wise Hill tail index (survival function) of the whole model below which the
    /// tails have collapsed (0 disables).
    pub tail_alpha_min: f64,
    /// Factor by which that tail index must differ from the median of the last `norm_window`
    /// steps (either way) to count as a sudden change (0 disables).
    pub tail_change_factor: f64,
    /// Absolute change of a covariance spectrum's slope between snapshots (0 disables).
    pub slope_change: f64,
    /// A rank missing from a step released after the straggler timeout.
    pub straggler: bool,
    /// A run's ranks going back over reported steps (a job resumed from a checkpoint).
    pub resumed: bool,
}

impl Default for AlertConfig {
    fn default() -> Self {
        Self {
            nonfinite: true,
            norm_z: 8.0,
            norm_window: 50,
            norm_min_history: 10,
            tail_alpha_min: 0.5,
            tail_change_factor: 2.0,
            slope_change: 0.5,
            straggler: true,
            resumed: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Parse {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    #[error("{}: {what}", path.display())]
    Invalid { path: PathBuf, what: String },
}

impl FileConfig {
    pub fn parse(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        let c: FileConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(e),
        })?;
        let bad = |what: &str| {
            Err(ConfigError::Invalid {
                path: path.to_path_buf(),
                what: what.to_string(),
            })
        };
        let l = &c.live;
        if l.window < 8 || l.window_every == 0 || l.spectrum_every == 0 {
            return bad("live.window must be ≥ 8, live.window_every and live.spectrum_every ≥ 1");
        }
        if l.sgn_ranks < 2 {
            return bad("live.sgn_ranks must be ≥ 2");
        }
        if l.fd_ell < 4 || !(l.fd_decay > 0.0 && l.fd_decay <= 1.0) {
            return bad("live.fd_ell must be ≥ 4 and live.fd_decay in (0, 1]");
        }
        if l.max_runs == 0 {
            return bad("live.max_runs must be ≥ 1");
        }
        if !(l.checkpoint_every_s >= 0.0 && l.checkpoint_every_s <= 1e9) {
            return bad("live.checkpoint_every_s must be a number of seconds ≥ 0");
        }
        if !(l.checkpoint_time_share > 0.0 && l.checkpoint_time_share <= 1.0) {
            return bad("live.checkpoint_time_share must be in (0, 1]");
        }
        let a = &c.alerts;
        if a.norm_z.is_nan() || a.norm_z <= 0.0 || a.norm_window < 3 || a.norm_min_history < 3 {
            return bad("alerts.norm_z must be > 0, alerts.norm_window and norm_min_history ≥ 3");
        }
        if a.tail_alpha_min < 0.0 || a.slope_change < 0.0 {
            return bad("alert thresholds must be ≥ 0");
        }
        if a.tail_change_factor != 0.0 && a.tail_change_factor <= 1.0 {
            return bad("alerts.tail_change_factor must be > 1 (or 0 to disable)");
        }
        Ok(c)
    }
}

impl CollectorConfig {
    /// Read `--config`, if given, into `self.file`.
    pub fn load_file(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = &self.config {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            self.file = FileConfig::parse(&text, path)?;
        }
        Ok(())
    }
}

impl CollectorConfig {
    /// [`Self::runtime_threads`] or its default for this machine.
    pub fn runtime_threads(&self) -> usize {
        self.runtime_threads.map_or_else(
            || {
                std::thread::available_parallelism()
                    .map_or(1, |n| n.get().saturating_sub(1))
                    .max(1)
            },
            usize::from,
        )
    }

    /// The Collect service's TLS settings, read from the PEM files (re-read when they change,
    /// [`crate::tls`]); None when it serves plain gRPC.
    pub fn server_tls(&self) -> Result<Option<crate::tls::ServerTls>, crate::tls::TlsError> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        crate::tls::ServerTls::open(cert, key, self.tls_client_ca.as_deref()).map(Some)
    }

    /// The S3 client of `--upload`, checked (endpoint, credentials, CA); None without it.
    pub fn upload_client(&self) -> Result<Option<gradtel_s3::S3Client>, gradtel_s3::S3Error> {
        let Some(location) = &self.upload else {
            return Ok(None);
        };
        gradtel_s3::S3Client::from_env(
            self.s3_endpoint.as_deref(),
            location.clone(),
            &self.s3_region,
            self.s3_ca.as_deref(),
        )
        .map(Some)
    }

    /// Where the write-ahead log lives.
    pub fn wal_dir(&self) -> PathBuf {
        self.wal_dir
            .clone()
            .unwrap_or_else(|| self.out.join("_wal"))
    }

    /// Defaults writing under `out`, listening on `listen`, for embedding (tests, demo).
    pub fn new(listen: SocketAddr, out: PathBuf) -> Self {
        Self {
            listen,
            out,
            straggler_timeout: Duration::from_secs(5),
            roll_rows: 50_000,
            roll_interval: Duration::from_secs(2),
            wal_dir: None,
            estimators_nice: 10,
            runtime_threads: None,
            max_pending_steps: 4096,
            max_unpublished_mb: 2048,
            max_queued_mb: 256,
            metrics: None,
            tls_cert: None,
            tls_key: None,
            tls_client_ca: None,
            metrics_tls: false,
            tls_reload_interval: Duration::from_secs(30),
            upload: None,
            s3_endpoint: None,
            s3_region: "us-east-1".into(),
            s3_ca: None,
            upload_delete_local: false,
            config: None,
            file: FileConfig::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn empty_file_gives_defaults_and_keys_override() {
        let p = Path::new("c.toml");
        assert_eq!(FileConfig::parse("", p).unwrap(), FileConfig::default());
        let c = FileConfig::parse("[alerts]\nnorm_z = 4.5\n[live]\nfd_ell = 16\n", p).unwrap();
        assert_eq!(c.alerts.norm_z, 4.5);
        assert_eq!(c.live.fd_ell, 16);
        assert_eq!(c.live.window, LiveConfig::default().window);
    }

    #[test]
    fn runtime_threads_leave_a_core_to_the_pipeline_unless_set() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            config: CollectorConfig,
        }
        use clap::Parser;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let default = Cli::parse_from(["c"]).config;
        assert_eq!(default.runtime_threads(), cores.saturating_sub(1).max(1));
        let set = Cli::parse_from(["c", "--runtime-threads", "3"]).config;
        assert_eq!(set.runtime_threads(), 3);
        assert!(Cli::try_parse_from(["c", "--runtime-threads", "0"]).is_err());
    }

    #[test]
    fn misspelt_keys_and_bad_values_are_errors() {
        let p = Path::new("c.toml");
        let e = FileConfig::parse("[alerts]\nnorm_zz = 4.5\n", p).unwrap_err();
        assert!(e.to_string().contains("norm_zz"), "{e}");
        assert!(FileConfig::parse("[live]\nfd_decay = 1.5\n", p).is_err());
        assert!(FileConfig::parse("[live]\ncheckpoint_every_s = -1.0\n", p).is_err());
        assert!(FileConfig::parse("[live]\ncheckpoint_every_s = nan\n", p).is_err());
        for share in ["0.0", "1.5", "nan", "-0.1"] {
            let toml = format!("[live]\ncheckpoint_time_share = {share}\n");
            assert!(FileConfig::parse(&toml, p).is_err(), "{share}");
        }
        assert!(FileConfig::parse("[live]\ncheckpoint_time_share = 1.0\n", p).is_ok());
        assert!(FileConfig::parse("[live]\nwindow = 2\n", p).is_err());
    }
}
