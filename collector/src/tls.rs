//! TLS of the Collect service with certificate rotation: the certificate and key files are
//! checked every `--tls-reload-interval` and, when either changed, read again and served to
//! every new connection, without a restart (cert-manager, Vault and ACME clients rewrite them in
//! place well before they expire). A rewrite that does not parse — a half-written file, a key
//! that does not match — keeps the previous certificate, and is logged and counted
//! (`gradtel_collector_tls_reload_errors_total`) until the files are whole again.
//!
//! The client CA of mutual TLS (`--tls-client-ca`) is checked the same way: a changed file is
//! read again and required of every new connection (connections already made keep the
//! verdict they were given); a file that does not parse keeps the previous CA, counted alike.
//!
//! Handshakes run on tasks of their own, so a slow or silent client cannot hold up the accept
//! loop. With `--metrics-tls`, `/metrics` is served through the same machinery
//! ([`MetricsListener`]) with the same, rotating, certificate.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    #[error("TLS configuration: {0}")]
    Config(String),
}

fn file_err(path: &Path) -> impl Fn(String) -> TlsError + '_ {
    move |reason| TlsError::File {
        path: path.to_path_buf(),
        reason,
    }
}

/// A certificate chain and its key, read from PEM files and checked to belong together.
fn load(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| file_err(cert)(e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(cert)(e.to_string()))?;
    if chain.is_empty() {
        return Err(file_err(cert)("no certificate in the file".into()));
    }
    let der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err(key)(e.to_string()))?;
    let signing = ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| file_err(key)(e.to_string()))?;
    let certified = CertifiedKey::new(chain, signing);
    certified
        .keys_match()
        .map_err(|e| file_err(key)(format!("does not match {}: {e}", cert.display())))?;
    Ok(certified)
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The Collect service's TLS: the certificate it serves and the rustls configuration new
/// connections get, both replaced when their files change ([`ServerTls::refresh`]).
#[derive(Debug)]
pub struct ServerTls {
    certs: Arc<Reloading>,
    /// `--tls-client-ca` and its modification time when last read.
    client_ca: Option<(PathBuf, Mutex<Option<SystemTime>>)>,
    config: RwLock<Arc<ServerConfig>>,
}

impl ServerTls {
    pub fn open(cert: &Path, key: &Path, client_ca: Option<&Path>) -> Result<ServerTls, TlsError> {
        let certs = Arc::new(Reloading::open(cert, key)?);
        let stamp = client_ca.and_then(modified);
        let config = server_config(certs.clone(), client_ca)?;
        Ok(ServerTls {
            certs,
            client_ca: client_ca.map(|p| (p.to_path_buf(), Mutex::new(stamp))),
            config: RwLock::new(config),
        })
    }

    /// The configuration a connection accepted now gets.
    pub fn current(&self) -> Option<Arc<ServerConfig>> {
        self.config.read().ok().map(|c| c.clone())
    }

    /// The configuration of `/metrics` over TLS (`--metrics-tls`): the same certificate, rotated
    /// alike, HTTP/1.1, and no client certificate asked (Prometheus scrapes it).
    pub fn metrics_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(self.certs.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }

    /// Read the certificate pair and the client CA again where their files changed: Ok(true)
    /// when new connections get something new from now on. An error leaves what it concerns
    /// as it was (the other file is still taken up).
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let certs = self.certs.refresh();
        let ca = self.refresh_client_ca();
        match (certs, ca) {
            (Ok(a), Ok(b)) => Ok(a || b),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    fn refresh_client_ca(&self) -> Result<bool, TlsError> {
        let Some((ca, stamp)) = &self.client_ca else {
            return Ok(false);
        };
        let now = modified(ca);
        let Ok(mut stamp) = stamp.lock() else {
            return Ok(false);
        };
        if *stamp == now {
            return Ok(false);
        }
        let config = server_config(self.certs.clone(), Some(ca))?;
        *stamp = now;
        if let Ok(mut c) = self.config.write() {
            *c = config;
        }
        Ok(true)
    }
}

/// TLS connections from [`incoming`], as a listener `/metrics` can be served on.
pub struct MetricsListener {
    streams: tokio_stream::wrappers::ReceiverStream<
        Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
    >,
    addr: std::net::SocketAddr,
}

impl MetricsListener {
    /// `listener`'s connections (bound to `addr`) with `tls`'s metrics configuration.
    pub fn new(
        listener: tokio::net::TcpListener,
        addr: std::net::SocketAddr,
        tls: &ServerTls,
        metrics: Arc<crate::metrics::CollectorMetrics>,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<MetricsListener, TlsError> {
        let config = tls.metrics_config()?;
        Ok(MetricsListener {
            streams: incoming(listener, move || Some(config.clone()), metrics, stop),
            addr,
        })
    }
}

impl gradtel_telemetry::Listener for MetricsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt;
        loop {
            match self.streams.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.addr);
                    return (stream, peer);
                }
                Some(Err(_)) => continue,
                // Stopped: the server's graceful shutdown ends it.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}

/// The served certificate, swapped when its files change.
#[derive(Debug)]
pub struct Reloading {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    /// Modification times of (cert, key) when last read.
    stamps: Mutex<(Option<SystemTime>, Option<SystemTime>)>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current.read().ok().map(|c| c.clone())
    }
}

impl Reloading {
    pub fn open(cert: &Path, key: &Path) -> Result<Reloading, TlsError> {
        let stamps = (modified(cert), modified(key));
        Ok(Reloading {
            current: RwLock::new(Arc::new(load(cert, key)?)),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            stamps: Mutex::new(stamps),
        })
    }

    /// Read the files again if either changed since they were last read: Ok(true) when a new
    /// certificate is served from now on.
    pub fn refresh(&self) -> Result<bool, TlsError> {
        let now = (modified(&self.cert), modified(&self.key));
        let Ok(mut stamps) = self.stamps.lock() else {
            return Ok(false);
        };
        if *stamps == now {
            return Ok(false);
        }
        let certified = load(&self.cert, &self.key)?;
        *stamps = now;
        if let Ok(mut c) = self.current.write() {
            *c = Arc::new(certified);
        }
        Ok(true)
    }
}

/// The rustls configuration of the Collect service (HTTP/2 by ALPN), serving `certs`' current
/// certificate, and requiring client certificates signed by `client_ca` if given.
pub fn server_config(
    certs: Arc<Reloading>,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|e| file_err(ca)(e.to_string()))? {
                roots
                    .add(c.map_err(|e| file_err(ca)(e.to_string()))?)
                    .map_err(|e| file_err(ca)(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(file_err(ca)("no certificate in the file".into()));
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Check the certificate and client CA files every `every` until `stop`; counts reloads and
/// failed ones.
pub async fn watch(
    tls: Arc<ServerTls>,
    every: Duration,
    metrics: Arc<crate::metrics::CollectorMetrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let t = tls.clone();
        match tokio::task::spawn_blocking(move || t.refresh()).await {
            Ok(Ok(true)) => {
                metrics.tls_reloads.inc();
                tracing::info!(cert = %tls.certs.cert.display(), "TLS files reloaded");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                metrics.tls_reload_errors.inc();
                tracing::warn!(error = %e, "TLS files changed but cannot be used; what they held before is still in use");
            }
            Err(e) => tracing::warn!(error = %e, "TLS reload task failed"),
        }
    }
}

/// Longest a client may take to complete its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The TLS connections of `listener`, each handshake on a task of its own; failed or timed-out
/// handshakes are counted and logged, never passed on. Ends at `stop`.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: impl Fn() -> Option<Arc<ServerConfig>> + Send + 'static,
    metrics: Arc<crate::metrics::CollectorMetrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        // Out of file descriptors and the like: pause rather than spin.
                        tracing::warn!(error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                r = stop.changed() => {
                    if r.is_err() || *stop.borrow() {
                        return;
                    }
                    continue;
                }
                _ = tx.closed() => return,
            };
            // The configuration of the moment: a rotated client CA applies from the next
            // connection on.
            let Some(config) = config() else {
                metrics.tls_handshake_errors.inc();
                continue;
            };
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let (tx, metrics) = (tx.clone(), metrics.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => {
                        metrics.tls_handshake_errors.inc();
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        metrics.tls_handshake_errors.inc();
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}-key.pem")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn served(r: &Reloading) -> Vec<u8> {
        r.current.read().unwrap().cert[0].to_vec()
    }

    fn touch(p: &Path, at: SystemTime) {
        std::fs::File::options()
            .write(true)
            .open(p)
            .unwrap()
            .set_modified(at)
            .unwrap();
    }

    #[test]
    fn a_changed_client_ca_gives_new_connections_a_new_configuration() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "server");
        let (ca, _) = pair(dir.path(), "ca");
        let tls = ServerTls::open(&cert, &key, Some(&ca)).unwrap();
        let first = tls.current().unwrap();
        assert!(!tls.refresh().unwrap(), "nothing changed");
        assert!(Arc::ptr_eq(&first, &tls.current().unwrap()));
        let (other, _) = pair(dir.path(), "other-ca");
        std::fs::copy(&other, &ca).unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        touch(&ca, later);
        assert!(tls.refresh().unwrap());
        let second = tls.current().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        // A CA file that does not parse: an error, and the configuration stays.
        std::fs::write(&ca, b"garbage").unwrap();
        touch(&ca, later + Duration::from_secs(5));
        assert!(tls.refresh().is_err());
        assert!(Arc::ptr_eq(&second, &tls.current().unwrap()));
        // Without mutual TLS there is no CA to watch.
        let plain = ServerTls::open(&cert, &key, None).unwrap();
        assert!(!plain.refresh().unwrap());
    }

    #[test]
    fn changed_files_are_served_and_broken_ones_keep_the_previous_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let r = Reloading::open(&cert, &key).unwrap();
        let first = served(&r);
        assert!(!r.refresh().unwrap(), "nothing changed");
        // A rotation: both files rewritten (and their times moved on, whatever the clock's
        // resolution).
        let (c2, k2) = pair(dir.path(), "b");
        std::fs::copy(&c2, &cert).unwrap();
        std::fs::copy(&k2, &key).unwrap();
        let later = SystemTime::now() + Duration::from_secs(5);
        touch(&cert, later);
        touch(&key, later);
        assert!(r.refresh().unwrap());
        let second = served(&r);
        assert_ne!(first, second);
        // Half a rewrite: a key that does not belong to the certificate.
        let (_, k3) = pair(dir.path(), "c");
        std::fs::copy(&k3, &key).unwrap();
        touch(&key, later + Duration::from_secs(5));
        let e = r.refresh().unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        assert_eq!(served(&r), second);
        // Not PEM at all.
        std::fs::write(&cert, b"garbage").unwrap();
        assert!(Reloading::open(&cert, &k2).is_err());
    }
}
