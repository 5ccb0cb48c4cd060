//! `PutObject`, `GetObject` and `ListObjectsV2` against S3 or an S3-compatible server, over
//! HTTP/1.1 (plain, or TLS through rustls), with path-style URLs (`endpoint/bucket/key`), one
//! connection per request.
//!
//! The collector uploads a few files per roll interval, so a connection per request costs
//! nothing that matters and leaves no pool to go stale across a server restart. An object
//! appears whole or not at all (S3's PUT is atomic), so a retried upload never exposes a part.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

use crate::sigv4::{self, Credentials};

#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    #[error("bad S3 location {0:?}: expected s3://bucket[/prefix]")]
    BadLocation(String),
    #[error("bad S3 endpoint {0:?}: expected http://host[:port] or https://host[:port]")]
    BadEndpoint(String),
    #[error("S3 credentials: {0}")]
    Credentials(String),
    #[error("CA certificates {path}: {reason}")]
    Roots { path: String, reason: String },
    #[error("cannot reach {endpoint}: {source}")]
    Connect {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("TLS with {endpoint}: {source}")]
    Tls {
        endpoint: String,
        source: std::io::Error,
    },
    #[error("HTTP with {endpoint}: {source}")]
    Http {
        endpoint: String,
        source: hyper::Error,
    },
    #[error("{endpoint} answered {status} to {method} {key}: {body}")]
    Status {
        endpoint: String,
        method: String,
        key: String,
        status: u16,
        body: String,
    },
    #[error("{endpoint} did not answer within {0:?}", .timeout)]
    Timeout { endpoint: String, timeout: Duration },
}

/// Bucket and key prefix: `s3://bucket/prefix`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// Without leading or trailing `/`; may be empty.
    pub prefix: String,
}

impl std::str::FromStr for S3Location {
    type Err = S3Error;

    fn from_str(s: &str) -> Result<Self, S3Error> {
        let bad = || S3Error::BadLocation(s.to_string());
        let rest = s.strip_prefix("s3://").ok_or_else(bad)?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        // S3's bucket naming rules: 3–63 of lower-case letters, digits, dots and hyphens.
        let valid = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !valid {
            return Err(bad());
        }
        Ok(S3Location {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// A client of one bucket at one endpoint.
#[derive(Clone)]
pub struct S3Client {
    endpoint: String,
    host: String,
    port: u16,
    tls: Option<TlsConnector>,
    location: S3Location,
    region: String,
    creds: Credentials,
    timeout: Duration,
}

impl std::fmt::Debug for S3Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Client")
            .field("endpoint", &self.endpoint)
            .field("location", &self.location)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// Roots for an `https://` endpoint: the PEM bundle `ca` (or the system's, from `SSL_CERT_FILE`
/// or Debian's / Red Hat's usual paths).
fn roots(ca: Option<&std::path::Path>) -> Result<RootCertStore, S3Error> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let path = match ca {
        Some(p) => p.to_path_buf(),
        None => std::env::var_os("SSL_CERT_FILE")
            .map(std::path::PathBuf::from)
            .or_else(|| {
                [
                    "/etc/ssl/certs/ca-certificates.crt",
                    "/etc/pki/tls/certs/ca-bundle.crt",
                    "/etc/ssl/cert.pem",
                ]
                .iter()
                .map(std::path::PathBuf::from)
                .find(|p| p.exists())
            })
            .ok_or_else(|| S3Error::Roots {
                path: "(system)".into(),
                reason: "no CA bundle found: give one with --s3-ca".into(),
            })?,
    };
    let err = |reason: String| S3Error::Roots {
        path: path.display().to_string(),
        reason,
    };
    let mut store = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&path).map_err(|e| err(e.to_string()))? {
        let cert = cert.map_err(|e| err(e.to_string()))?;
        store.add(cert).map_err(|e| err(e.to_string()))?;
    }
    if store.is_empty() {
        return Err(err("no certificate in the file".into()));
    }
    Ok(store)
}

impl S3Client {
    /// `endpoint`: `http(s)://host[:port]` (e.g. `https://s3.eu-west-1.amazonaws.com`, or a
    /// MinIO server); `ca`: a PEM bundle to trust instead of the system's, for `https://`.
    pub fn new(
        endpoint: &str,
        location: S3Location,
        region: &str,
        creds: Credentials,
        ca: Option<&std::path::Path>,
    ) -> Result<S3Client, S3Error> {
        let bad = || S3Error::BadEndpoint(endpoint.to_string());
        let (https, rest) = if let Some(r) = endpoint.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = endpoint.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(bad());
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => {
                (h.to_string(), p.parse().map_err(|_| bad())?)
            }
            _ => (authority.to_string(), if https { 443 } else { 80 }),
        };
        if creds.access_key_id.is_empty() || creds.secret_access_key.is_empty() {
            return Err(S3Error::Credentials(
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            ));
        }
        let tls = if https {
            let config = ClientConfig::builder_with_provider(Arc::new(
                tokio_rustls::rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| S3Error::Roots {
                path: endpoint.to_string(),
                reason: e.to_string(),
            })?
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth();
            Some(TlsConnector::from(Arc::new(config)))
        } else {
            None
        };
        Ok(S3Client {
            endpoint: endpoint.trim_end_matches('/').to_string(),
            host,
            port,
            tls,
            location,
            region: region.to_string(),
            creds,
            timeout: Duration::from_secs(60),
        })
    }

    /// [`Self::new`] as the daemons and the CLI configure it: credentials from
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`, and AWS's own
    /// endpoint for `region` unless `endpoint` names another.
    pub fn from_env(
        endpoint: Option<&str>,
        location: S3Location,
        region: &str,
        ca: Option<&std::path::Path>,
    ) -> Result<S3Client, S3Error> {
        let endpoint = endpoint
            .map(str::to_string)
            .unwrap_or_else(|| format!("https://s3.{region}.amazonaws.com"));
        let var = |k: &str| std::env::var(k).unwrap_or_default();
        let creds = Credentials {
            access_key_id: var("AWS_ACCESS_KEY_ID"),
            secret_access_key: var("AWS_SECRET_ACCESS_KEY"),
            session_token: std::env::var("AWS_SESSION_TOKEN").ok(),
        };
        S3Client::new(&endpoint, location, region, creds, ca)
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }

    /// The object key of `relative` (a path below the lake's root, `/`-separated).
    pub fn key(&self, relative: &str) -> String {
        if self.location.prefix.is_empty() {
            relative.to_string()
        } else {
            format!("{}/{relative}", self.location.prefix)
        }
    }

    /// PUT `body` at `key`; Ok once the server answered 200.
    pub async fn put(&self, key: &str, body: Bytes) -> Result<(), S3Error> {
        self.call("PUT", key, &[], body).await.map(|_| ())
    }

    /// The object at `key`.
    pub async fn get(&self, key: &str) -> Result<Bytes, S3Error> {
        self.call("GET", key, &[], Bytes::new()).await
    }

    /// Every key under `prefix` (ListObjectsV2, page after page), in the store's order (UTF-8
    /// binary order for S3).
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, S3Error> {
        let mut keys = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut query = vec![
                ("list-type", "2".to_string()),
                ("prefix", prefix.to_string()),
            ];
            if let Some(t) = &token {
                query.push(("continuation-token", t.clone()));
            }
            let body = self.call("GET", "", &query, Bytes::new()).await?;
            let page = ListPage::parse(&String::from_utf8_lossy(&body));
            keys.extend(page.keys);
            match page.next {
                Some(t) if page.truncated => token = Some(t),
                _ => return Ok(keys),
            }
        }
    }

    /// One signed request on the bucket (`key` empty: the bucket itself); the body of a 200.
    async fn call(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, String)],
        body: Bytes,
    ) -> Result<Bytes, S3Error> {
        let timeout = self.timeout;
        tokio::time::timeout(timeout, self.call_inner(method, key, query, body))
            .await
            .map_err(|_| S3Error::Timeout {
                endpoint: self.endpoint.clone(),
                timeout,
            })?
    }

    async fn call_inner(
        &self,
        method: &str,
        key: &str,
        query: &[(&str, String)],
        body: Bytes,
    ) -> Result<Bytes, S3Error> {
        let uri = if key.is_empty() {
            format!("/{}", self.location.bucket)
        } else {
            format!("/{}/{}", self.location.bucket, sigv4::uri_encode(key, true))
        };
        let query = sigv4::canonical_query(query);
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let host = if self.port == default_port {
            self.host.clone()
        } else {
            format!("{}:{}", self.host, self.port)
        };
        let hash = sigv4::sha256_hex(&body);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let date = sigv4::amz_date(now);
        let mut headers = vec![
            ("host", host.as_str()),
            ("x-amz-content-sha256", hash.as_str()),
            ("x-amz-date", date.as_str()),
        ];
        if let Some(t) = &self.creds.session_token {
            headers.push(("x-amz-security-token", t.as_str()));
        }
        let auth = sigv4::authorization(
            &self.creds,
            &sigv4::Request {
                method,
                canonical_uri: &uri,
                canonical_query: &query,
                headers: &headers,
                payload_sha256: &hash,
                amz_date: &date,
                region: &self.region,
                service: "s3",
            },
        );
        let target = if query.is_empty() {
            uri.clone()
        } else {
            format!("{uri}?{query}")
        };
        let mut req = hyper::Request::builder().method(method).uri(&target);
        for (n, v) in &headers {
            req = req.header(*n, *v);
        }
        let req = req
            .header("authorization", auth)
            .header("content-length", body.len())
            .body(Full::new(body))
            .map_err(|e| S3Error::BadEndpoint(format!("{}: {e}", self.endpoint)))?;

        let tcp = TcpStream::connect((self.host.trim_matches(['[', ']']), self.port))
            .await
            .map_err(|source| S3Error::Connect {
                endpoint: self.endpoint.clone(),
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        let response = match &self.tls {
            None => send(TokioIo::new(tcp), req, &self.endpoint).await?,
            Some(tls) => {
                let name = rustls_pki_types::ServerName::try_from(
                    self.host.trim_matches(['[', ']']).to_string(),
                )
                .map_err(|e| S3Error::BadEndpoint(format!("{}: {e}", self.endpoint)))?;
                let stream = tls
                    .connect(name, tcp)
                    .await
                    .map_err(|source| S3Error::Tls {
                        endpoint: self.endpoint.clone(),
                        source,
                    })?;
                send(TokioIo::new(stream), req, &self.endpoint).await?
            }
        };
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|source| S3Error::Http {
                endpoint: self.endpoint.clone(),
                source,
            })?
            .to_bytes();
        if status == 200 {
            return Ok(body);
        }
        Err(S3Error::Status {
            endpoint: self.endpoint.clone(),
            method: method.to_string(),
            key: key.to_string(),
            status,
            body: String::from_utf8_lossy(&body).chars().take(500).collect(),
        })
    }
}

/// One page of a ListObjectsV2 answer. Read by scanning for its few elements: the keys
/// gradtel writes need no more of XML than its five predefined entities.
#[derive(Debug, Default, PartialEq)]
struct ListPage {
    keys: Vec<String>,
    truncated: bool,
    next: Option<String>,
}

fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&amp;", "&")
}

fn elements<'a>(xml: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(i) = rest.find(&open) {
        let after = &rest[i + open.len()..];
        let Some(j) = after.find(&close) else { break };
        out.push(&after[..j]);
        rest = &after[j + close.len()..];
    }
    out
}

impl ListPage {
    fn parse(xml: &str) -> ListPage {
        ListPage {
            keys: elements(xml, "Contents")
                .into_iter()
                .flat_map(|c| elements(c, "Key"))
                .map(unescape)
                .collect(),
            truncated: elements(xml, "IsTruncated").first() == Some(&"true"),
            next: elements(xml, "NextContinuationToken")
                .first()
                .map(|t| unescape(t)),
        }
    }
}

async fn send<IO>(
    io: IO,
    req: hyper::Request<Full<Bytes>>,
    endpoint: &str,
) -> Result<hyper::Response<hyper::body::Incoming>, S3Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let http = |source| S3Error::Http {
        endpoint: endpoint.to_string(),
        source,
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(http)?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "S3 connection ended");
        }
    });
    sender.send_request(req).await.map_err(http)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds() -> Credentials {
        Credentials {
            access_key_id: "AKID".into(),
            secret_access_key: "secret".into(),
            session_token: None,
        }
    }

    #[test]
    fn locations_parse_and_bad_ones_are_refused() {
        let l: S3Location = "s3://my-lake/a/b/".parse().unwrap();
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-lake", "a/b"));
        let l: S3Location = "s3://lake".parse().unwrap();
        assert_eq!(l.prefix, "");
        for bad in [
            "lake",
            "s3://",
            "s3://UPPER",
            "s3://ab",
            "file:///tmp",
            "s3://a_b/x",
        ] {
            assert!(bad.parse::<S3Location>().is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints_and_credentials_are_checked() {
        let loc: S3Location = "s3://lake/p".parse().unwrap();
        let c = S3Client::new(
            "http://127.0.0.1:9000",
            loc.clone(),
            "us-east-1",
            creds(),
            None,
        )
        .unwrap();
        assert_eq!((c.host.as_str(), c.port), ("127.0.0.1", 9000));
        assert_eq!(
            c.key("run=r/table=t/x.parquet"),
            "p/run=r/table=t/x.parquet"
        );
        let c = S3Client::new("http://minio", loc.clone(), "us-east-1", creds(), None).unwrap();
        assert_eq!(c.port, 80);
        for bad in ["ftp://x", "http://", "http://h:notaport", "http://h/path"] {
            let e = S3Client::new(bad, loc.clone(), "us-east-1", creds(), None).unwrap_err();
            assert!(matches!(e, S3Error::BadEndpoint(_)), "{bad}: {e}");
        }
        let none = Credentials {
            secret_access_key: String::new(),
            ..creds()
        };
        let e = S3Client::new("http://h", loc.clone(), "r", none, None).unwrap_err();
        assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
        let dir = std::env::temp_dir().join(format!("gradtel-s3-test-{}", std::process::id()));
        std::fs::write(&dir, b"not pem").unwrap();
        let e = S3Client::new("https://h", loc, "r", creds(), Some(&dir)).unwrap_err();
        let _ = std::fs::remove_file(&dir);
        assert!(matches!(e, S3Error::Roots { .. }), "{e}");
    }

    #[test]
    fn list_pages_give_their_keys_and_continuation() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>lake</Name>
<Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>1000</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>p/run=a/table=steps/x.parquet</Key><Size>10</Size></Contents>
<Contents><Key>p/a&amp;b</Key><Size>3</Size></Contents>
<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=</NextContinuationToken>
</ListBucketResult>"#;
        assert_eq!(
            ListPage::parse(xml),
            ListPage {
                keys: vec!["p/run=a/table=steps/x.parquet".into(), "p/a&b".into()],
                truncated: true,
                next: Some("1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=".into()),
            }
        );
        let last = "<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(ListPage::parse(last), ListPage::default());
    }

    #[tokio::test]
    async fn an_unreachable_endpoint_is_an_error_not_a_hang() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let c = S3Client::new(
            &format!("http://127.0.0.1:{port}"),
            "s3://lake".parse().unwrap(),
            "us-east-1",
            creds(),
            None,
        )
        .unwrap();
        let e = c.put("k", Bytes::from_static(b"x")).await.unwrap_err();
        assert!(matches!(e, S3Error::Connect { .. }), "{e}");
    }
}
