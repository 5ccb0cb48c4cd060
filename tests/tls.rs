//! The Collect stream over TLS, through real agent and collector processes: certificates from
//! a throwaway CA (rcgen); a report crosses only with the right CA, and, when the collector
//! asks for client certificates, only from an agent that presents one the CA signed. Bad TLS
//! settings stop a daemon at start with an error naming what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// PEM files of a CA, a server certificate for 127.0.0.1, and a client certificate.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server: (PathBuf, PathBuf),
    client: (PathBuf, PathBuf),
}

fn make_pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let write = |name: &str, pem: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, pem).unwrap();
        p
    };
    let leaf = |name: &str, sans: &[&str], usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut p =
            CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        p.extended_key_usages = vec![usage];
        let cert = p.signed_by(&key, &ca).unwrap();
        (
            write(&format!("{name}.pem"), cert.pem()),
            write(&format!("{name}-key.pem"), key.serialize_pem()),
        )
    };
    let server = leaf(
        "server",
        &["127.0.0.1", "localhost"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let client = leaf(
        "client",
        &["gradtel-agent"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    let ca_path = write("ca.pem", ca.pem());
    Pki {
        _dir: dir,
        ca: ca_path,
        server,
        client,
    }
}

/// Model rows of `run` in the lake under `out`.
fn model_rows(out: &Path, run: &str) -> usize {
    rows(&read_batches(out))
        .iter()
        .filter(|r| r.run_id == run && r.scope_kind == "model")
        .count()
}

fn tls_url(url: &str) -> String {
    url.replacen("http://", "https://", 1)
}

#[test]
fn reports_cross_only_over_tls_checked_against_the_collectors_ca() {
    let pki = make_pki();
    let other = make_pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let (cert, key) = (
        pki.server.0.to_str().unwrap(),
        pki.server.1.to_str().unwrap(),
    );
    let (_collector, url) =
        start_collector(&out, "127.0.0.1:0", &["--tls-cert", cert, "--tls-key", key]);
    let https = tls_url(&url);
    let ca = pki.ca.to_str().unwrap();
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    let _good = start_agent(&sock("good"), &https, &["--collector-ca", ca]);
    // Plain gRPC to a TLS port, and TLS checked against another CA: neither may deliver.
    let _plain = start_agent(&sock("plain"), &url, &[]);
    let other_ca = other.ca.to_str().unwrap();
    let mut wrong = start_agent(&sock("wrong"), &https, &["--collector-ca", other_ca]);
    push_steps(&sock("plain"), "plain", 0..3, 64);
    push_steps(&sock("wrong"), "wrong", 0..3, 64);
    push_steps(&sock("good"), "good", 0..3, 64);
    wait_for_rows(&out, 3, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(model_rows(&out, "good"), 3);
    assert_eq!(model_rows(&out, "plain"), 0);
    assert_eq!(model_rows(&out, "wrong"), 0);
    assert!(wrong.alive(), "a failed handshake is retried, not fatal");
}

#[test]
fn mutual_tls_takes_reports_only_from_agents_with_a_certificate_the_ca_signed() {
    let pki = make_pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (cert, key, ca) = (s(&pki.server.0), s(&pki.server.1), s(&pki.ca));
    let (_collector, url) = start_collector(
        &out,
        "127.0.0.1:0",
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    );
    let https = tls_url(&url);
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    let (ccert, ckey) = (s(&pki.client.0), s(&pki.client.1));
    let _with = start_agent(
        &sock("with"),
        &https,
        &[
            "--collector-ca",
            &ca,
            "--tls-cert",
            &ccert,
            "--tls-key",
            &ckey,
        ],
    );
    let _without = start_agent(&sock("without"), &https, &["--collector-ca", &ca]);
    push_steps(&sock("without"), "without", 0..2, 64);
    push_steps(&sock("with"), "with", 0..2, 64);
    wait_for_rows(&out, 2, Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(model_rows(&out, "with"), 2);
    assert_eq!(model_rows(&out, "without"), 0);
}

/// Run a daemon that must refuse to start; returns its stderr.
/// Poll until `f` holds, or panic after 30 s.
fn wait(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(std::time::Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A collector serving TLS with `tls` (its certificate options), checking its files every
/// 100 ms, with metrics: the daemon, its `https://` URL and its metrics address.
fn rotating_collector(out: &Path, tls: &[&str]) -> (Daemon, String, String) {
    let mut args = tls.to_vec();
    args.extend(["--tls-reload-interval", "100ms", "--metrics", "127.0.0.1:0"]);
    let (daemon, url, metrics) = start_collector_with_metrics(out, "127.0.0.1:0", &args);
    (daemon, tls_url(&url), metrics.expect("metrics address"))
}

#[test]
fn a_rotated_certificate_is_served_without_a_restart() {
    let first = make_pki();
    let second = make_pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let (cert, key) = (dir.path().join("tls.pem"), dir.path().join("tls-key.pem"));
    std::fs::copy(&first.server.0, &cert).unwrap();
    std::fs::copy(&first.server.1, &key).unwrap();
    let (_collector, https, metrics) = rotating_collector(
        &out,
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let counter = |name: &str| metric(&http_get(&metrics, "/metrics").1, name);
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    // An agent that trusts only the CA of the certificate to come delivers nothing yet.
    let second_ca = second.ca.to_str().unwrap();
    let _next = start_agent(
        &sock("next"),
        &https,
        &["--collector-ca", second_ca, "--max-backoff", "200ms"],
    );
    push_steps(&sock("next"), "rotated", 0..4, 64);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(model_rows(&out, "rotated"), 0);
    assert!(counter("gradtel_collector_tls_handshake_errors_total") > 0.0);
    // The rotation, as certificate managers do it: new files renamed over the old ones.
    rotate(&second.server.0, &cert);
    rotate(&second.server.1, &key);
    wait("the rotated certificate was never served", || {
        model_rows(&out, "rotated") == 4
    });
    assert!(counter("gradtel_collector_tls_reloads_total") >= 1.0);
    // A broken rewrite keeps the certificate served: counted, and agents still deliver.
    std::fs::write(&cert, b"-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    wait("a broken certificate file was not noticed", || {
        counter("gradtel_collector_tls_reload_errors_total") >= 1.0
    });
    let _later = start_agent(&sock("later"), &https, &["--collector-ca", second_ca]);
    push_steps(&sock("later"), "after-a-bad-rewrite", 0..3, 64);
    wait("no agent could connect after a broken rewrite", || {
        model_rows(&out, "after-a-bad-rewrite") == 3
    });
}

/// Replace `to` with a copy of `from` the way certificate managers do: a new file renamed over.
fn rotate(from: &Path, to: &Path) {
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

#[test]
fn a_rotated_client_ca_is_required_of_new_agents_without_a_restart() {
    let first = make_pki();
    let second = make_pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let client_ca = dir.path().join("client-ca.pem");
    std::fs::copy(&first.ca, &client_ca).unwrap();
    let (_collector, https, metrics) = rotating_collector(
        &out,
        &[
            "--tls-cert",
            &s(&first.server.0),
            "--tls-key",
            &s(&first.server.1),
            "--tls-client-ca",
            &s(&client_ca),
        ],
    );
    let counter = |name: &str| metric(&http_get(&metrics, "/metrics").1, name);
    let sock = |n: &str| dir.path().join(format!("{n}.sock"));
    let agent = |name: &str, client: &(PathBuf, PathBuf)| {
        start_agent(
            &sock(name),
            &https,
            &[
                "--collector-ca",
                &s(&first.ca),
                "--tls-cert",
                &s(&client.0),
                "--tls-key",
                &s(&client.1),
                "--max-backoff",
                "200ms",
            ],
        )
    };
    // An agent whose certificate the next CA signed is refused while the first CA is required.
    let _next = agent("next", &second.client);
    push_steps(&sock("next"), "next-ca", 0..4, 64);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(model_rows(&out, "next-ca"), 0);
    assert!(counter("gradtel_collector_tls_handshake_errors_total") > 0.0);
    // The client CA rotated: the waiting agent gets in on its next attempt, and an agent with a
    // certificate of the old CA started now is refused.
    rotate(&second.ca, &client_ca);
    wait("the rotated client CA was never required", || {
        model_rows(&out, "next-ca") == 4
    });
    assert!(counter("gradtel_collector_tls_reloads_total") >= 1.0);
    let _old = agent("old", &first.client);
    push_steps(&sock("old"), "old-ca", 0..2, 64);
    // A broken rewrite keeps the CA required: counted, and agents of the second CA still
    // deliver while those of the first stay out.
    std::fs::write(&client_ca, b"-----BEGIN CERTIFICATE-----\ntruncated").unwrap();
    wait("a broken client CA file was not noticed", || {
        counter("gradtel_collector_tls_reload_errors_total") >= 1.0
    });
    let _later = agent("later", &second.client);
    push_steps(&sock("later"), "after-a-bad-rewrite", 0..3, 64);
    wait("no agent could connect after a broken rewrite", || {
        model_rows(&out, "after-a-bad-rewrite") == 3
    });
    assert_eq!(model_rows(&out, "old-ca"), 0);
}

#[test]
fn an_agent_reads_its_rotated_ca_at_its_next_connection() {
    let first = make_pki();
    let second = make_pki();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("lake");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    // The collector already serves the certificate of the second CA; the agent still trusts
    // only the first.
    let (_collector, url) = start_collector(
        &out,
        "127.0.0.1:0",
        &[
            "--tls-cert",
            &s(&second.server.0),
            "--tls-key",
            &s(&second.server.1),
        ],
    );
    let agent_ca = dir.path().join("agent-ca.pem");
    std::fs::copy(&first.ca, &agent_ca).unwrap();
    let sock = dir.path().join("a.sock");
    let _agent = start_agent(
        &sock,
        &tls_url(&url),
        &["--collector-ca", &s(&agent_ca), "--max-backoff", "200ms"],
    );
    push_steps(&sock, "agent-rotated", 0..4, 64);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(model_rows(&out, "agent-rotated"), 0);
    // The CA file rotated under the running agent: its next attempt trusts the new CA.
    rotate(&second.ca, &agent_ca);
    wait("the agent never used its rotated CA", || {
        model_rows(&out, "agent-rotated") == 4
    });
}

/// `GET path` over TLS from a client that trusts `ca`: the status and the body.
fn https_get(addr: &str, ca: &Path, path: &str) -> std::io::Result<(u16, String)> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    use std::io::{Read, Write};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut tcp = std::net::TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    tls.read_to_string(&mut text)?;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((code, body.to_string()))
}

#[test]
fn metrics_are_served_over_tls_with_the_collectors_certificate() {
    let pki = make_pki();
    let other = make_pki();
    let dir = tempfile::tempdir().unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    let (_collector, _url, metrics) = start_collector_with_metrics(
        &dir.path().join("lake"),
        "127.0.0.1:0",
        &[
            "--tls-cert",
            &s(&pki.server.0),
            "--tls-key",
            &s(&pki.server.1),
            "--metrics",
            "127.0.0.1:0",
            "--metrics-tls",
        ],
    );
    let metrics = metrics.expect("metrics address");
    let (code, body) = https_get(&metrics, &pki.ca, "/metrics").expect("https GET /metrics");
    assert_eq!(code, 200);
    let lines = body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    assert!(
        scrape
            .samples
            .iter()
            .any(|m| m.metric == "gradtel_collector_reports_received_total"),
        "{body}"
    );
    assert_eq!(https_get(&metrics, &pki.ca, "/healthz").unwrap().0, 200);
    // A client that trusts another CA is refused, and plain HTTP gets no answer.
    assert!(https_get(&metrics, &other.ca, "/metrics").is_err());
    use std::io::{Read, Write};
    let mut plain = std::net::TcpStream::connect(&metrics).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(plain, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = Vec::new();
    let _ = plain.read_to_end(&mut reply);
    assert!(!reply.starts_with(b"HTTP/"), "plain HTTP was answered");
}

fn refused(bin: &str, args: &[&str]) -> String {
    let out = Command::new(bin)
        .args(args)
        .env("GRADTEL_LOG", "warn")
        .output()
        .unwrap();
    assert!(!out.status.success(), "{bin} {args:?} started");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_tls_settings_stop_the_daemons_at_start_with_a_clear_error() {
    let pki = make_pki();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("a.sock");
    let sock = sock.to_str().unwrap();
    let ca = pki.ca.to_str().unwrap();
    let agent = env!("CARGO_BIN_EXE_gradtel-agent");
    let e = refused(
        agent,
        &["--socket", sock, "--collector", "https://127.0.0.1:1"],
    );
    assert!(e.contains("--collector-ca"), "{e}");
    let e = refused(
        agent,
        &[
            "--socket",
            sock,
            "--collector",
            "http://127.0.0.1:1",
            "--collector-ca",
            ca,
        ],
    );
    assert!(e.contains("plain http://"), "{e}");
    let der = dir.path().join("ca.der");
    std::fs::write(&der, [0x30u8, 0x82, 0x01, 0x0a]).unwrap();
    let e = refused(
        agent,
        &[
            "--socket",
            sock,
            "--collector",
            "https://127.0.0.1:1",
            "--collector-ca",
            der.to_str().unwrap(),
        ],
    );
    assert!(e.contains("ca.der") && e.contains("not a PEM file"), "{e}");

    let out = dir.path().join("lake");
    let collector = env!("CARGO_BIN_EXE_gradtel-collector");
    // The key in place of the certificate: rustls finds no certificate in it.
    let e = refused(
        collector,
        &[
            "--listen",
            "127.0.0.1:0",
            "--out",
            out.to_str().unwrap(),
            "--tls-cert",
            pki.server.1.to_str().unwrap(),
            "--tls-key",
            pki.server.1.to_str().unwrap(),
        ],
    );
    assert!(e.contains("TLS"), "{e}");
    // A certificate without its key is refused by the flags themselves.
    let e = refused(
        collector,
        &[
            "--out",
            out.to_str().unwrap(),
            "--tls-cert",
            pki.server.0.to_str().unwrap(),
        ],
    );
    assert!(e.contains("--tls-key"), "{e}");
    // /metrics over TLS needs the certificate to serve it with.
    let e = refused(
        collector,
        &[
            "--out",
            out.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
            "--metrics-tls",
        ],
    );
    assert!(e.contains("--tls-cert"), "{e}");
}
