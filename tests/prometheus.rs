//! Fleet-wide alerts through Prometheus itself: `deploy/prometheus/gradtel.rules.yml` is checked
//! and unit-tested with `promtool`, then loaded into a real `prometheus` server that scrapes a
//! real collector while real agents report a run with one NaN and one norm spike. The server
//! must page for exactly those two, naming the run; and, on the telemetry path, for a report the
//! collector refuses.
//!
//! Needs `promtool` and `prometheus` on the PATH (Debian's `prometheus` package; the README's
//! test command installs it). Without them these tests say so and pass, unless
//! `GRADTEL_REQUIRE_PROMETHEUS=1` (set by that command), which makes their absence a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Daemon, Harness, faulty_gradient, free_port};
use gradtel_stats::rng::SplitMix64;

/// The rules, their unit tests and their directory.
fn rules_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

/// `name` on the PATH, or `None` when absent and not required.
fn tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("GRADTEL_REQUIRE_PROMETHEUS").as_deref() != Ok("1"),
            "{name} is required (GRADTEL_REQUIRE_PROMETHEUS=1) but not on the PATH"
        );
        eprintln!("{name} not on the PATH: skipped (apt-get install prometheus)");
    }
    found
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    for args in [
        ["check", "rules", "gradtel.rules.yml"],
        ["test", "rules", "gradtel.rules.test.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(rules_dir())
            .output()
            .expect("run promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn every_metric_the_rules_name_is_exported() {
    use gradtel_telemetry::Render;
    let collector = gradtel_collector::metrics::CollectorMetrics::default();
    collector
        .runs
        .lock()
        .unwrap()
        .insert("r".into(), Default::default());
    let exposed = collector.render() + &gradtel_agent::AgentMetrics::default().render();
    let families: std::collections::BTreeSet<&str> = exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let rules = std::fs::read_to_string(rules_dir().join("gradtel.rules.yml")).unwrap();
    let mut named = 0;
    for word in rules.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if !word.starts_with("gradtel_") {
            continue;
        }
        // A summary's series are its family's name with `_sum` or `_count`.
        let family = ["_sum", "_count"]
            .iter()
            .find_map(|s| word.strip_suffix(s).filter(|f| families.contains(f)))
            .unwrap_or(word);
        assert!(families.contains(family), "{word} is not exported");
        named += 1;
    }
    assert!(named >= 15, "{named} metric names in the rules");
    // And every alert kind the collector raises has its rule.
    for kind in gradtel_collector::live::alerts::kind::ALL {
        assert!(
            rules.contains(&format!("kind=\"{kind}\"")),
            "no rule for {kind}"
        );
    }
}

/// `GET path` over HTTP/1.0 (so the answer is not chunked); the body when the status is 200.
fn get(addr: &str, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    (head.split_whitespace().nth(1) == Some("200")).then(|| body.to_string())
}

/// The value of an instant query with one result, from the Prometheus at `addr`.
fn query(addr: &str, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let body = get(addr, &format!("/api/v1/query?query={encoded}"))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// (alertname, severity) of the alerts firing for `run`, sorted.
fn firing(addr: &str, run: &str) -> Vec<(String, String)> {
    let Some(body) = get(addr, "/api/v1/alerts") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
    let mut out: Vec<(String, String)> = v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing" && a["labels"]["run"] == run)
        .map(|a| {
            let label = |k: &str| a["labels"][k].as_str().unwrap_or_default().to_string();
            (label("alertname"), label("severity"))
        })
        .collect();
    out.sort();
    out
}

fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn a_real_prometheus_pages_for_a_nan_a_norm_spike_and_a_refused_report_and_nothing_else() {
    let Some(prometheus) = tool("prometheus") else {
        return;
    };
    let run = "fleet";
    let n = 2_000u64;
    let mut h = Harness::start(run, 2, &[("w.weight", n)], "", &[], &["--sketch-dim", "0"]);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {}\n\
             scrape_configs:\n  - job_name: gradtel-collector\n    static_configs:\n      - targets: ['{}']\n",
            rules_dir().join("gradtel.rules.yml").display(),
            h.metrics
        ),
    )
    .unwrap();
    let addr = format!("127.0.0.1:{}", free_port());
    let _server = Daemon {
        child: Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn prometheus"),
        name: "prometheus",
    };
    wait_until("Prometheus ready", Duration::from_secs(60), || {
        get(&addr, "/-/ready").is_some()
    });

    let mut r = SplitMix64::new(5);
    let mut push = |h: &mut Harness, steps: std::ops::Range<u64>| {
        for step in steps {
            for rank in 0..2 {
                let v = faulty_gradient(&mut r, n, step, rank);
                h.push(rank, step, &[("w.weight", &v)]);
            }
        }
    };
    // Healthy steps first, until Prometheus holds the run's alert counters (all at 0).
    push(&mut h, 0..20);
    h.wait_steps(20);
    let counters = format!("count(gradtel_collector_alerts_total{{run=\"{run}\"}} == 0)");
    wait_until("the run's alert counters", Duration::from_secs(60), || {
        query(&addr, &counters) == Some(7.0)
    });
    assert_eq!(
        firing(&addr, run),
        vec![],
        "nothing pages for a healthy run"
    );

    push(&mut h, 20..60);
    h.wait_steps(60);
    let want = vec![
        ("GradtelGradNormSpike".to_string(), "warning".to_string()),
        (
            "GradtelNonFiniteGradients".to_string(),
            "critical".to_string(),
        ),
    ];
    wait_until("both alerts firing", Duration::from_secs(60), || {
        firing(&addr, run) == want
    });
    // A few more scrapes and evaluations: still exactly these two.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(firing(&addr, run), want);

    // The telemetry path, live too: a report the collector refuses (a run id with a space)
    // pages as the collector's, not any run's.
    assert!(!alert_names(&addr).contains(&"GradtelCollectorRejectingReports".to_string()));
    let status = refused_report(&h.collector_url());
    assert_eq!(status, gradtel_proto::v1::ack::Status::Rejected as i32);
    wait_until("the rejection alert", Duration::from_secs(60), || {
        alert_names(&addr).contains(&"GradtelCollectorRejectingReports".to_string())
    });
    assert_eq!(firing(&addr, run), want);
}

/// Names of every alert firing, whatever its labels.
fn alert_names(addr: &str) -> Vec<String> {
    let Some(body) = get(addr, "/api/v1/alerts") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .filter_map(|a| a["labels"]["alertname"].as_str().map(String::from))
        .collect()
}

/// Send one report with a malformed run id on its own stream; the status of its ack.
fn refused_report(url: &str) -> i32 {
    use gradtel_proto::v1::ShardReport;
    use gradtel_proto::v1::collect_client::CollectClient;
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = CollectClient::connect(url.to_string()).await.unwrap();
        let report = ShardReport {
            run_id: "not a run id".into(),
            world_size: 1,
            shard_count: 1,
            seq: 1,
            agent_epoch: 1,
            ..Default::default()
        };
        let mut acks = client
            .stream(tokio_stream::iter([report]))
            .await
            .unwrap()
            .into_inner();
        let ack = tokio::time::timeout(Duration::from_secs(10), acks.message())
            .await
            .expect("an ack within 10 s")
            .expect("a healthy stream")
            .expect("an ack");
        ack.status
    })
}
