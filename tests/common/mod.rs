//! Helpers for end-to-end tests: real daemons as child processes, Parquet read back.

#![allow(dead_code)]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use gradtel_client::{IngestClient, StepScalars, TensorData, TensorDecl};
use gradtel_proto::v1::Dtype;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, RecordBatch};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// A child process killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub name: &'static str,
}

impl Daemon {
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not stop on SIGTERM",
                self.name
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `gradtel-collector` on an ephemeral (or given) port; returns it and its URL.
pub fn start_collector(out: &Path, listen: &str, extra: &[&str]) -> (Daemon, String) {
    let (d, url, _) = start_collector_with_metrics(out, listen, extra);
    (d, url)
}

/// As [`start_collector`]; also returns the metrics address when `extra` has `--metrics`.
pub fn start_collector_with_metrics(
    out: &Path,
    listen: &str,
    extra: &[&str],
) -> (Daemon, String, Option<String>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradtel-collector"))
        .args(["--listen", listen, "--out"])
        .arg(out)
        .args(
            (!extra.contains(&"--roll-interval"))
                .then_some(["--roll-interval", "200ms"])
                .into_iter()
                .flatten(),
        )
        .args(
            (!extra.contains(&"--straggler-timeout"))
                .then_some(["--straggler-timeout", "3s"])
                .into_iter()
                .flatten(),
        )
        .args(extra)
        .env("GRADTEL_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gradtel-collector");
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut metrics = None;
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(m) = line.strip_prefix("gradtel-collector metrics on ") {
                metrics = Some(m.trim().to_string());
            }
            if let Some(addr) = line.strip_prefix("gradtel-collector listening on ") {
                let _ = tx.send((addr.trim().to_string(), metrics.clone()));
            }
        }
    });
    let (addr, metrics) = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("collector did not report its address");
    (
        Daemon {
            child,
            name: "gradtel-collector",
        },
        format!("http://{addr}"),
        metrics,
    )
}

/// Start `gradtel-agent` on a Unix socket and wait until the socket exists.
pub fn start_agent(socket: &Path, collector: &str, extra: &[&str]) -> Daemon {
    let child = Command::new(env!("CARGO_BIN_EXE_gradtel-agent"))
        .arg("--socket")
        .arg(socket)
        .args(["--collector", collector])
        .args(extra)
        .env("GRADTEL_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn gradtel-agent");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !socket.exists() {
        assert!(Instant::now() < deadline, "agent socket never appeared");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon {
        child,
        name: "gradtel-agent",
    }
}

/// Every published Parquet file under `dir` (recursively), skipping hidden temporaries.
pub fn parquet_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "parquet") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// The `steps` table under the lake root `dir`.
pub fn read_batches(dir: &Path) -> Vec<RecordBatch> {
    read_table(dir, "steps")
}

/// Every batch of one table (files under a `table=<name>` partition) below `dir`.
pub fn read_table(dir: &Path, table: &str) -> Vec<RecordBatch> {
    let partition = format!("table={table}");
    parquet_files(dir)
        .iter()
        .filter(|p| p.components().any(|c| c.as_os_str() == partition.as_str()))
        .flat_map(|p| {
            ParquetRecordBatchReaderBuilder::try_new(File::open(p).expect("open parquet"))
                .expect("parquet metadata")
                .build()
                .expect("parquet reader")
                .map(|b| b.expect("parquet batch"))
                .collect::<Vec<_>>()
        })
        // A row per tracked value, as the tests reason about them.
        .map(|b| {
            if table == gradtel_collector::tables::coords::TABLE {
                gradtel_collector::tables::coords::explode(&b).expect("coords lists")
            } else {
                b
            }
        })
        .collect()
}

/// Poll until `dir` holds at least `rows` rows, or panic after `timeout`.
pub fn wait_for_rows(dir: &Path, rows: usize, timeout: Duration) -> Vec<RecordBatch> {
    let deadline = Instant::now() + timeout;
    loop {
        let batches = read_batches(dir);
        let n: usize = batches.iter().map(|b| b.num_rows()).sum();
        if n >= rows {
            return batches;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} of {rows} rows arrived in {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One row of the `steps` table, decoded by column name.
#[derive(Debug, Clone)]
pub struct Row {
    pub step: u64,
    pub scope_kind: String,
    pub scope: String,
    pub run_id: String,
    pub local: bool,
    pub late: bool,
    pub ranks_reported: u32,
    pub missing_ranks: Vec<u32>,
    pub u64s: std::collections::HashMap<String, Option<u64>>,
    pub f64s: std::collections::HashMap<String, Option<f64>>,
    pub top_abs: Vec<f64>,
}

impl Row {
    pub fn u(&self, c: &str) -> u64 {
        self.u64s[c].unwrap_or_else(|| panic!("{c} is null"))
    }
    pub fn f(&self, c: &str) -> Option<f64> {
        self.f64s[c]
    }
}

pub fn rows(batches: &[RecordBatch]) -> Vec<Row> {
    let mut out = Vec::new();
    for b in batches {
        let col = |n: &str| {
            b.column_by_name(n)
                .unwrap_or_else(|| panic!("no column {n}"))
        };
        let s = |n: &str, i: usize| col(n).as_string::<i32>().value(i).to_string();
        for i in 0..b.num_rows() {
            let mut u64s = std::collections::HashMap::new();
            let mut f64s = std::collections::HashMap::new();
            for f in b.schema().fields() {
                let c = col(f.name());
                match f.data_type() {
                    arrow_schema::DataType::UInt64 => {
                        let a = c.as_primitive::<UInt64Type>();
                        u64s.insert(f.name().clone(), a.is_valid(i).then(|| a.value(i)));
                    }
                    arrow_schema::DataType::Float64 => {
                        let a = c.as_primitive::<Float64Type>();
                        f64s.insert(f.name().clone(), a.is_valid(i).then(|| a.value(i)));
                    }
                    _ => {}
                }
            }
            let missing = col("missing_ranks").as_list::<i32>().value(i);
            let top = col("top_abs").as_list::<i32>().value(i);
            out.push(Row {
                step: col("step").as_primitive::<UInt64Type>().value(i),
                scope_kind: s("scope_kind", i),
                scope: s("scope", i),
                run_id: s("run_id", i),
                local: col("local").as_boolean().value(i),
                late: col("late").as_boolean().value(i),
                ranks_reported: col("ranks_reported").as_primitive::<UInt32Type>().value(i),
                missing_ranks: missing.as_primitive::<UInt32Type>().values().to_vec(),
                u64s,
                f64s,
                top_abs: top.as_primitive::<Float64Type>().values().to_vec(),
            });
        }
    }
    out
}

/// A free loopback port (bound and released; fine for tests on one machine).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// One row of any table, by column name (strings, unsigned, floats, booleans; nulls absent).
#[derive(Debug, Clone, Default)]
pub struct Record {
    pub strs: std::collections::HashMap<String, String>,
    pub nums: std::collections::HashMap<String, f64>,
    pub bools: std::collections::HashMap<String, bool>,
}

impl Record {
    pub fn s(&self, c: &str) -> &str {
        self.strs.get(c).map_or("", |s| s.as_str())
    }
    /// A numeric column (unsigned integers and floats alike); `None` when null.
    pub fn n(&self, c: &str) -> Option<f64> {
        self.nums.get(c).copied()
    }
    pub fn b(&self, c: &str) -> Option<bool> {
        self.bools.get(c).copied()
    }
}

/// Decode every row of `batches` generically.
pub fn records(batches: &[RecordBatch]) -> Vec<Record> {
    use arrow_array::types::Float32Type;
    use arrow_schema::DataType;
    let mut out = Vec::new();
    for b in batches {
        for i in 0..b.num_rows() {
            let mut r = Record::default();
            for (f, c) in b.schema().fields().iter().zip(b.columns()) {
                if !c.is_valid(i) {
                    continue;
                }
                let name = f.name().clone();
                match f.data_type() {
                    DataType::Utf8 => {
                        r.strs
                            .insert(name, c.as_string::<i32>().value(i).to_string());
                    }
                    DataType::UInt64 => {
                        r.nums
                            .insert(name, c.as_primitive::<UInt64Type>().value(i) as f64);
                    }
                    DataType::UInt32 => {
                        r.nums
                            .insert(name, f64::from(c.as_primitive::<UInt32Type>().value(i)));
                    }
                    DataType::Float64 => {
                        r.nums
                            .insert(name, c.as_primitive::<Float64Type>().value(i));
                    }
                    DataType::Float32 => {
                        r.nums
                            .insert(name, f64::from(c.as_primitive::<Float32Type>().value(i)));
                    }
                    DataType::Boolean => {
                        r.bools.insert(name, c.as_boolean().value(i));
                    }
                    _ => {}
                }
            }
            out.push(r);
        }
    }
    out
}

/// The value of an unlabelled sample in Prometheus text.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// `GET path` over plain HTTP/1.1; returns (status code, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    let (head, body) = text.split_once("\r\n\r\n").expect("HTTP response");
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, body.to_string())
}

/// The steps of the lake's model rows (one per step written), in order.
pub fn model_steps(lake: &Path) -> Vec<u64> {
    let mut steps: Vec<u64> = records(&read_table(lake, "steps"))
        .iter()
        .filter(|s| s.s("scope_kind") == "model")
        .map(|s| s.n("step").unwrap() as u64)
        .collect();
    steps.sort_unstable();
    steps
}

/// A collector and one agent per rank, with clients registered under `run`.
pub struct Harness {
    _dir: tempfile::TempDir,
    pub out: PathBuf,
    collector: Option<Daemon>,
    /// The collector's address and arguments, to start it again in its place.
    collector_addr: String,
    collector_args: Vec<String>,
    pub metrics: String,
    _agents: Vec<Daemon>,
    clients: Vec<IngestClient>,
    rt: tokio::runtime::Runtime,
}

impl Harness {
    pub fn start(
        run: &str,
        world: u32,
        tensors: &[(&str, u64)],
        toml: &str,
        collector_extra: &[&str],
        agent_extra: &[&str],
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("lake");
        let cfg = dir.path().join("collector.toml");
        std::fs::write(&cfg, toml).unwrap();
        let mut extra = vec![
            "--config",
            cfg.to_str().unwrap(),
            "--metrics",
            "127.0.0.1:0",
        ];
        extra.extend_from_slice(collector_extra);
        let (collector, url, metrics) = start_collector_with_metrics(&out, "127.0.0.1:0", &extra);
        let collector_args = extra.iter().map(|a| a.to_string()).collect();
        let sock = |r: u32| dir.path().join(format!("rank{r}.sock"));
        let agents: Vec<Daemon> = (0..world)
            .map(|r| start_agent(&sock(r), &url, agent_extra))
            .collect();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let decls: Vec<TensorDecl> = tensors
            .iter()
            .map(|(name, numel)| TensorDecl {
                name: name.to_string(),
                shape: vec![*numel],
                dtype: Dtype::F32,
                owned: None,
                track_count: None,
            })
            .collect();
        let clients = rt.block_on(async {
            let mut clients = Vec::new();
            for rank in 0..world {
                let mut c = IngestClient::connect_uds(sock(rank)).await.unwrap();
                c.register(run, rank, world, 0, 1, &decls).await.unwrap();
                clients.push(c);
            }
            clients
        });
        Self {
            _dir: dir,
            out,
            collector: Some(collector),
            collector_addr: url.trim_start_matches("http://").to_string(),
            collector_args,
            metrics: metrics.expect("metrics address"),
            _agents: agents,
            clients,
            rt,
        }
    }

    pub fn push(&mut self, rank: usize, step: u64, tensors: &[(&str, &[f32])]) {
        let data: Vec<TensorData> = tensors
            .iter()
            .map(|(name, v)| TensorData::from_f32(*name, 0, v))
            .collect();
        let scalars = StepScalars {
            batch_size: Some(16),
            ..Default::default()
        };
        let client = &mut self.clients[rank];
        let resp = self
            .rt
            .block_on(client.push_step(step, &data, true, scalars))
            .unwrap();
        assert_eq!(resp.steps_dropped, 0);
    }

    /// Wait until `model_rows` steps are written, stop the collector (it writes what is
    /// pending), and return the lake root.
    pub fn finish(&mut self, model_rows: usize) -> &Path {
        self.wait_steps(model_rows);
        if let Some(c) = self.collector.take() {
            assert!(c.terminate().success());
        }
        &self.out
    }

    /// The collector's gRPC URL.
    pub fn collector_url(&self) -> String {
        format!("http://{}", self.collector_addr)
    }

    /// Stop the collector — killed (`crash`) or with SIGTERM — and start it again on the same
    /// address, lake and arguments; the agents reconnect by themselves.
    pub fn restart_collector(&mut self, crash: bool) {
        if let Some(c) = self.collector.take() {
            if crash {
                drop(c);
            } else {
                assert!(c.terminate().success());
            }
        }
        let args: Vec<&str> = self.collector_args.iter().map(String::as_str).collect();
        let (collector, _, metrics) =
            start_collector_with_metrics(&self.out, &self.collector_addr, &args);
        self.collector = Some(collector);
        self.metrics = metrics.expect("metrics address");
    }

    pub fn wait_steps(&self, model_rows: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let n = records(&read_table(&self.out, "steps"))
                .iter()
                .filter(|r| r.s("scope_kind") == "model")
                .count();
            if n >= model_rows {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} of {model_rows} steps"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Register `run` as rank 0 of 1 on the agent at `socket` (one tensor `w` of `numel` values) and
/// push `steps`, each fully ended, with values that change from step to step; none dropped.
pub fn push_steps(socket: &Path, run: &str, steps: std::ops::Range<u64>, numel: u64) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut c = IngestClient::connect_uds(socket).await.unwrap();
        let decl = TensorDecl {
            name: "w".into(),
            shape: vec![numel],
            dtype: Dtype::F32,
            owned: None,
            track_count: None,
        };
        c.register(run, 0, 1, 0, 1, &[decl]).await.unwrap();
        for step in steps {
            let v: Vec<f32> = (0..numel)
                .map(|i| ((i as f32 + step as f32) * 0.37).sin())
                .collect();
            let resp = c
                .push_step(
                    step,
                    &[TensorData::from_f32("w", 0, &v)],
                    false,
                    StepScalars::default(),
                )
                .await
                .unwrap();
            assert_eq!(resp.steps_dropped, 0);
        }
    });
}

/// Rank `rank`'s gradient at `step` of the fault-injection runs (`tests/live.rs`,
/// `tests/prometheus.rs`): `n` values of N(0, 0.01²), one NaN at step 30 on rank 1, and every
/// value ×100 at step 50 (a norm spike).
pub fn faulty_gradient(
    r: &mut gradtel_stats::rng::SplitMix64,
    n: u64,
    step: u64,
    rank: usize,
) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n).map(|_| (0.01 * r.normal()) as f32).collect();
    if step == 30 && rank == 1 {
        v[17] = f32::NAN;
    }
    if step == 50 {
        v.iter_mut().for_each(|x| *x *= 100.0);
    }
    v
}
