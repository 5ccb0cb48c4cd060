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
    let families = families();
    let rules = std::fs::read_to_string(rules_dir().join("gradtel.rules.yml")).unwrap();
    let named = metric_names(&rules);
    for word in &named {
        assert!(exported(&families, word), "{word} is not exported");
    }
    assert!(
        named.len() >= 15,
        "{} metric names in the rules",
        named.len()
    );
    // And every alert kind the collector raises has its rule.
    for kind in gradtel_collector::live::alerts::kind::ALL {
        assert!(
            rules.contains(&format!("kind=\"{kind}\"")),
            "no rule for {kind}"
        );
    }
}

/// The metric families the collector and the agent export.
fn families() -> std::collections::BTreeSet<String> {
    use gradtel_telemetry::Render;
    let collector = gradtel_collector::metrics::CollectorMetrics::default();
    collector
        .runs
        .lock()
        .unwrap()
        .insert("r".into(), Default::default());
    let exposed = collector.render() + &gradtel_agent::AgentMetrics::default().render();
    exposed
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Every `gradtel_…` and `process_…` word of `text`.
fn metric_names(text: &str) -> Vec<&str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("gradtel_") || w.starts_with("process_"))
        .collect()
}

/// Whether `name` is an exported family, or a summary's `_sum` / `_count` series.
fn exported(families: &std::collections::BTreeSet<String>, name: &str) -> bool {
    families.contains(name)
        || ["_sum", "_count"]
            .iter()
            .any(|s| name.strip_suffix(s).is_some_and(|f| families.contains(f)))
}

/// The Grafana dashboard and every (panel title, PromQL) it holds.
fn dashboard() -> (serde_json::Value, Vec<(String, String)>) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/gradtel.dashboard.json");
    let d: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).expect("dashboard JSON");
    let mut queries = Vec::new();
    for p in d["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().into_iter().flatten() {
            let title = p["title"].as_str().unwrap_or_default().to_string();
            queries.push((title, t["expr"].as_str().expect("expr").to_string()));
        }
    }
    (d, queries)
}

#[test]
fn the_dashboard_queries_exported_metrics_in_a_sound_layout() {
    let families = families();
    let (d, queries) = dashboard();
    assert!(queries.len() >= 30, "{} queries", queries.len());
    for (title, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{title}: {expr} names no metric");
        for name in names {
            assert!(exported(&families, name), "{title}: {name} is not exported");
        }
    }
    // Every gradient-structure gauge has its panel.
    for family in families.iter().filter(|f| f.starts_with("gradtel_run_")) {
        assert!(
            queries
                .iter()
                .any(|(_, e)| metric_names(e).contains(&family.as_str())),
            "no panel shows {family}"
        );
    }
    // Panels: unique ids, the dashboard's data source, inside 24 columns, none overlapping.
    let panels = d["panels"].as_array().unwrap();
    let mut ids = std::collections::BTreeSet::new();
    let mut cells = std::collections::BTreeSet::new();
    for p in panels {
        assert!(ids.insert(p["id"].as_u64().expect("id")), "duplicate id");
        let g = &p["gridPos"];
        let [x, y, w, h] = ["x", "y", "w", "h"].map(|k| g[k].as_u64().expect("gridPos"));
        assert!(x + w <= 24, "{} is wider than the dashboard", p["title"]);
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{} overlaps another panel",
                    p["title"]
                );
            }
        }
        if p["type"] != "row" {
            assert_eq!(p["datasource"]["uid"], "${datasource}", "{}", p["title"]);
        }
    }
}

/// `GET path` over HTTP/1.0 (so the answer is not chunked): the status and body.
fn get_status(addr: &str, path: &str) -> Option<(String, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((
        head.split_whitespace().nth(1)?.to_string(),
        body.to_string(),
    ))
}

/// The body of `GET path` when the status is 200.
fn get(addr: &str, path: &str) -> Option<String> {
    get_status(addr, path).and_then(|(status, body)| (status == "200").then_some(body))
}

/// The body of `GET path`, whatever the status (Prometheus explains a refused query in it).
fn get_any(addr: &str, path: &str) -> Option<String> {
    get_status(addr, path).map(|(_, body)| body)
}

/// `promql` encoded for a URL's query string.
fn encode(promql: &str) -> String {
    promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' | b'-' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of an instant query with one result, from the Prometheus at `addr`.
fn query(addr: &str, promql: &str) -> Option<f64> {
    let body = get(addr, &format!("/api/v1/query?query={}", encode(promql)))?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
}

/// The label sets of every alert firing on the Prometheus at `addr`.
fn firing_labels(addr: &str) -> Vec<serde_json::Value> {
    let Some(body) = get(addr, "/api/v1/alerts") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).expect("alerts JSON");
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| a["labels"].clone())
        .collect()
}

/// (alertname, severity) of the alerts firing for `run`, sorted.
fn firing(addr: &str, run: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = firing_labels(addr)
        .iter()
        .filter(|l| l["run"] == run)
        .map(|l| {
            let label = |k: &str| l[k].as_str().unwrap_or_default().to_string();
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

    // Every dashboard query is valid PromQL on this Prometheus, and those over the run and
    // its collector have data (not the spectrum: no projection here; nor the agents, not
    // scraped here).
    let (_, queries) = dashboard();
    for (title, expr) in &queries {
        let expr = expr.replace("$run", run);
        let series = series_of(&addr, &expr).unwrap_or_else(|e| panic!("{title}: {expr}: {e}"));
        let expect_data = !(expr.contains("spectrum") || expr.contains("gradtel_agent_"));
        if expect_data {
            assert!(series > 0, "{title}: {expr} has no data");
        }
    }

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

/// How many series an instant query gives; the error Prometheus gives when it refuses it.
fn series_of(addr: &str, promql: &str) -> Result<usize, String> {
    let body = get_any(addr, &format!("/api/v1/query?query={}", encode(promql)))
        .ok_or("no answer from Prometheus")?;
    let v: serde_json::Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
    if v["status"] != "success" {
        return Err(v["error"].to_string());
    }
    Ok(v["data"]["result"].as_array().map_or(0, Vec::len))
}

/// Names of every alert firing, whatever its labels.
fn alert_names(addr: &str) -> Vec<String> {
    firing_labels(addr)
        .iter()
        .filter_map(|l| l["alertname"].as_str().map(String::from))
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
