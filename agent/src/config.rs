//! Agent configuration: command-line flags (and `GRADTEL_AGENT_*` environment variables).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::AgentError;

/// Default seeds: any fixed values work, as long as every rank of a run uses the same.
pub const DEFAULT_TRACK_SEED: u64 = 0x6772_6164_7465_6c01;
pub const DEFAULT_SKETCH_SEED: u64 = 0x6772_6164_7465_6c02;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SketchKind {
    CountSketch,
    Gaussian,
}

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

    /// Collector endpoint the reports are streamed to: `http://…` plain gRPC, `https://…` TLS
    /// (with `--collector-ca`).
    #[arg(
        long,
        env = "GRADTEL_COLLECTOR",
        default_value = "http://127.0.0.1:4317"
    )]
    pub collector: String,

    /// PEM CA certificate the collector's certificate must chain to (needed for `https://`).
    #[arg(long, env = "GRADTEL_COLLECTOR_CA")]
    pub collector_ca: Option<PathBuf>,

    /// Name the collector's certificate must carry, when it is not the endpoint's host.
    #[arg(long, env = "GRADTEL_COLLECTOR_TLS_NAME")]
    pub collector_tls_name: Option<String>,

    /// PEM certificate (with `--tls-key`) the agent presents to a collector that requires
    /// mutual TLS (`--tls-client-ca` there).
    #[arg(long, env = "GRADTEL_AGENT_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of `--tls-cert`.
    #[arg(long, env = "GRADTEL_AGENT_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

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

    /// Large gradient chunks of one Push stream summarised at once (each on its own core) while
    /// the stream is read on: the ingest rate of one training process scales with it, and so does
    /// the agent's peak CPU use.
    #[arg(long, env = "GRADTEL_AGENT_INGEST_THREADS", default_value_t = 4)]
    pub ingest_threads: usize,

    /// Serve Prometheus metrics on this address at /metrics.
    #[arg(long, env = "GRADTEL_AGENT_METRICS")]
    pub metrics: Option<SocketAddr>,

    /// Expected number of tracked coordinates per tensor (whose raw values are sent every step;
    /// the iteration-wise and SGN samples). A tensor's layout may override it. Every rank of a
    /// run must use the same value and seed.
    #[arg(long, env = "GRADTEL_TRACK_COUNT", default_value_t = 64)]
    pub track_count: u64,

    /// Seed of the tracked-coordinate sample (shared by all ranks of a run).
    #[arg(long, env = "GRADTEL_TRACK_SEED", default_value_t = DEFAULT_TRACK_SEED)]
    pub track_seed: u64,

    /// Dimension m of the per-step projection of the gradient (0: none). Every rank of a run
    /// must use the same dimension, kind and seed.
    #[arg(long, env = "GRADTEL_SKETCH_DIM", default_value_t = 256)]
    pub sketch_dim: u32,

    /// Projection kind: `count-sketch` (≈ 1 ns per coordinate) or `gaussian` (m multiply-adds
    /// per coordinate; for small models only).
    #[arg(long, env = "GRADTEL_SKETCH_KIND", value_enum, default_value_t = SketchKind::CountSketch)]
    pub sketch_kind: SketchKind,

    /// Seed of the shared projection matrix.
    #[arg(long, env = "GRADTEL_SKETCH_SEED", default_value_t = DEFAULT_SKETCH_SEED)]
    pub sketch_seed: u64,

    /// Directory of the on-disk spool, which keeps every report until the collector
    /// acknowledges it, so that a restarted agent sends what its predecessor could not.
    /// Default: the socket path with `.spool` appended. One agent per spool (it is locked).
    #[arg(long, env = "GRADTEL_AGENT_SPOOL_DIR")]
    pub spool_dir: Option<PathBuf>,

    /// Keep unacknowledged reports in memory only (a killed agent loses them).
    #[arg(long, env = "GRADTEL_AGENT_NO_SPOOL", conflicts_with = "spool_dir",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub no_spool: bool,

    /// Largest size of the spool on disk, in MiB. When full the agent stops taking reports off
    /// its queue, and the queue's overflow is dropped and counted.
    #[arg(long, env = "GRADTEL_AGENT_SPOOL_MAX_MIB", default_value_t = 1024)]
    pub spool_max_mib: u64,

    /// Longest wait between reconnection attempts to the collector.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub max_backoff: Duration,
}

impl AgentConfig {
    /// The TLS settings of the collector stream, read from the PEM files and checked: None for
    /// an `http://` collector. TLS settings for a plain endpoint, or an `https://` one without
    /// a CA to check it against, are refused rather than silently ignored or failing at every
    /// reconnection. The files are read again at each connection ([`ClientTls`]).
    pub fn client_tls(&self) -> Result<Option<ClientTls>, AgentError> {
        let https = self.collector.starts_with("https://");
        let any = self.collector_ca.is_some()
            || self.collector_tls_name.is_some()
            || self.tls_cert.is_some();
        if !https {
            return if any {
                Err(AgentError::Tls(format!(
                    "TLS options given, but the collector {} is plain http:// (use https://)",
                    self.collector
                )))
            } else {
                Ok(None)
            };
        }
        let Some(ca) = &self.collector_ca else {
            return Err(AgentError::Tls(format!(
                "{} needs --collector-ca (the PEM CA certificate its certificate chains to)",
                self.collector
            )));
        };
        let files = ClientTlsFiles {
            collector: self.collector.clone(),
            ca: ca.clone(),
            name: self.collector_tls_name.clone(),
            identity: self.tls_cert.clone().zip(self.tls_key.clone()),
        };
        // Read once here so that a bad key or certificate is an error now.
        let last = files.load()?;
        Ok(Some(ClientTls {
            files,
            last: std::sync::Mutex::new(last),
        }))
    }

    /// The spool directory in use, if any (`--spool-dir`, else beside the socket).
    pub fn spool_path(&self) -> Option<PathBuf> {
        if self.no_spool {
            return None;
        }
        Some(self.spool_dir.clone().unwrap_or_else(|| {
            let mut p = self.socket.as_os_str().to_owned();
            p.push(".spool");
            PathBuf::from(p)
        }))
    }

    /// Defaults with the given socket and collector, for embedding (tests, demo).
    pub fn new(socket: PathBuf, collector: String) -> Self {
        Self {
            socket,
            tcp: None,
            collector,
            collector_ca: None,
            collector_tls_name: None,
            tls_cert: None,
            tls_key: None,
            top_k: 64,
            hist_precision: gradtel_stats::loghist::DEFAULT_PRECISION_BITS,
            queue: 256,
            max_inflight: 4096,
            max_open_steps: 64,
            ingest_threads: 4,
            metrics: None,
            track_count: 64,
            track_seed: DEFAULT_TRACK_SEED,
            sketch_dim: 256,
            sketch_kind: SketchKind::CountSketch,
            sketch_seed: DEFAULT_SKETCH_SEED,
            spool_dir: None,
            no_spool: false,
            spool_max_mib: 1024,
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// Where the agent's TLS material for the collector stream lives.
#[derive(Debug, Clone)]
struct ClientTlsFiles {
    collector: String,
    ca: PathBuf,
    name: Option<String>,
    identity: Option<(PathBuf, PathBuf)>,
}

impl ClientTlsFiles {
    fn load(&self) -> Result<ClientTlsConfig, AgentError> {
        use gradtel_proto::tls::read_pem;
        let pem = |p: &std::path::Path| read_pem(p).map_err(|e| AgentError::Tls(e.to_string()));
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem(&self.ca)?));
        if let Some(name) = &self.name {
            tls = tls.domain_name(name.clone());
        }
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(pem(cert)?, pem(key)?));
        }
        Endpoint::from_shared(self.collector.clone())
            .and_then(|e| e.tls_config(tls.clone()))
            .map_err(|e| AgentError::Tls(format!("{}: {e}", self.collector)))?;
        Ok(tls)
    }
}

/// The agent's TLS settings for the collector stream, read from their files again at every
/// connection attempt, so that a CA, certificate or key rotated in place (cert-manager, Vault
/// agents) is used from the next connection on without a restart; a read that fails — a file
/// half rewritten — keeps the last settings that loaded, and says so.
#[derive(Debug)]
pub struct ClientTls {
    files: ClientTlsFiles,
    last: std::sync::Mutex<ClientTlsConfig>,
}

impl ClientTls {
    /// The settings for the next connection, and the error of the files if they no longer
    /// load (the settings are then the last ones that did).
    pub fn current(&self) -> (ClientTlsConfig, Option<AgentError>) {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match self.files.load() {
            Ok(tls) => {
                *last = tls.clone();
                (tls, None)
            }
            Err(e) => (last.clone(), Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certificate(path: &std::path::Path) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["collector".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(path, cert.pem()).unwrap();
    }

    #[test]
    fn tls_files_are_read_at_each_connection_and_a_broken_one_keeps_the_last() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        certificate(&ca);
        let mut config = AgentConfig::new(
            dir.path().join("a.sock"),
            "https://127.0.0.1:4317".to_string(),
        );
        config.collector_ca = Some(ca.clone());
        let tls = config.client_tls().unwrap().expect("https: TLS");
        let seen = |t: &ClientTls| {
            let (c, e) = t.current();
            (format!("{c:?}"), e.map(|e| e.to_string()))
        };
        let (first, none) = seen(&tls);
        assert!(none.is_none());
        // Rotated in place: the next connection gets the new CA.
        certificate(&ca);
        let (second, none) = seen(&tls);
        assert!(none.is_none());
        assert_ne!(first, second);
        // Half rewritten: an error, and the last settings that loaded.
        std::fs::write(&ca, b"-----BEGIN CERT").unwrap();
        let (kept, error) = seen(&tls);
        assert_eq!(kept, second);
        assert!(error.is_some_and(|e| e.contains("ca.pem")));
        // At start a broken file is an error, not a fallback.
        assert!(config.client_tls().is_err());
    }
}
