//! TLS of the Collect service with certificate rotation: the certificate and key files are
//! checked every `--tls-reload-interval` and, when either changed, read again and served to
//! every new connection, without a restart (cert-manager, Vault and ACME clients rewrite them in
//! place well before they expire). A rewrite that does not parse — a half-written file, a key
//! that does not match — keeps the previous certificate, and is logged and counted
//! (`gradtel_collector_tls_reload_errors_total`) until the files are whole again.
//!
//! Handshakes run on tasks of their own, so a slow or silent client cannot hold up the accept
//! loop; the client CA of mutual TLS (`--tls-client-ca`) is read at start.

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

/// The rustls configuration of the Collect service and the certificate it serves.
pub type ServerTls = (Arc<ServerConfig>, Arc<Reloading>);

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

/// Check the certificate files every `every` until `stop`; counts reloads and failed ones.
pub async fn watch(
    certs: Arc<Reloading>,
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
        let c = certs.clone();
        match tokio::task::spawn_blocking(move || c.refresh()).await {
            Ok(Ok(true)) => {
                metrics.tls_reloads.inc();
                tracing::info!(cert = %certs.cert.display(), "TLS certificate reloaded");
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => {
                metrics.tls_reload_errors.inc();
                tracing::warn!(error = %e, "TLS certificate files changed but cannot be used; the previous certificate is still served");
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
    config: Arc<ServerConfig>,
    metrics: Arc<crate::metrics::CollectorMetrics>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> tokio_stream::wrappers::ReceiverStream<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
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
            let (acceptor, tx, metrics) = (acceptor.clone(), tx.clone(), metrics.clone());
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
        for p in [&cert, &key] {
            std::fs::File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_modified(later)
                .unwrap();
        }
        assert!(r.refresh().unwrap());
        let second = served(&r);
        assert_ne!(first, second);
        // Half a rewrite: a key that does not belong to the certificate.
        let (_, k3) = pair(dir.path(), "c");
        std::fs::copy(&k3, &key).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&key)
            .unwrap()
            .set_modified(later + Duration::from_secs(5))
            .unwrap();
        let e = r.refresh().unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        assert_eq!(served(&r), second);
        // Not PEM at all.
        std::fs::write(&cert, b"garbage").unwrap();
        assert!(Reloading::open(&cert, &k2).is_err());
    }
}
