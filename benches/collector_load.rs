//! Collector under load: 64 simulated agents (64 data-parallel ranks of one run) stream
//! realistic reports over loopback gRPC to a real `gradtel-collector` process. Like real agents,
//! which send the encoded reports their spool holds, they send encoded bytes (until session 26
//! they encoded every report afresh, which on a 2-core machine took CPU from the collector).
//!
//! Measures (1) saturation throughput, as reports per second of wall time and per CPU-second
//! of the collector process (utime + stime from /proc), and (2) report → durable-ack latency
//! (p50/p99, hdrhistogram) at a paced load below saturation. Baseline measured in the same run:
//! protobuf decoding alone of the same reports, the least any receiver must do, as reports per
//! CPU-second of one core.
//!
//! Run: `cargo bench --bench collector_load` (report shape: `GRADTEL_BENCH_TENSORS`,
//! `GRADTEL_BENCH_VALUES`; steps: `GRADTEL_BENCH_STEPS`). `GRADTEL_BENCH_WARMUP` steps (default
//! 0) are first sent at saturation and not measured, so that the measured phase finds a
//! collector that has already grown to its working size, as a long-running one has.
//! Results: bench/RESULTS.md.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use gradtel_proto::encoded::EncodedReport;
use gradtel_proto::encoded::collect_client::CollectClient;
use gradtel_proto::v1::{Projection, ShardReport, TensorReport, TrackedValues};
use gradtel_stats::GradSummary;
use gradtel_stats::rng::SplitMix64;
use prost::Message;
use tokio_stream::wrappers::ReceiverStream;

const AGENTS: u32 = 64;
/// Unacknowledged reports one simulated agent keeps in flight at saturation.
const WINDOW: usize = 64;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One agent's report of one step: `GRADTEL_BENCH_TENSORS` tensors (default 6) of
/// `GRADTEL_BENCH_VALUES` values (default 10k) summarised (top-64, 7-bit histogram), 64 tracked
/// values per tensor, a 256-dimensional projection — what the demo's agents send, at a larger
/// model size.
fn report(rank: u32, step: u64, seq: u64, epoch: u64, r: &mut SplitMix64) -> ShardReport {
    let mut tensors = Vec::new();
    let mut tracked = Vec::new();
    let values = env("GRADTEL_BENCH_VALUES", 10_000);
    for t in 0..env("GRADTEL_BENCH_TENSORS", 6) {
        let mut s = GradSummary::new(64, 7).expect("valid");
        let vals: Vec<f64> = (0..values).map(|_| 0.01 * r.normal()).collect();
        s.extend_f64(&vals);
        let name = format!("layer{t}.weight");
        tensors.push(TensorReport {
            name: name.clone(),
            numel: values as u64,
            elements_expected: values as u64,
            elements_received: values as u64,
            summary: Some(gradtel_codec::summary::to_wire(&s)),
        });
        tracked.push(TrackedValues {
            name,
            index: (0..64.min(values as u64)).collect(),
            value: vals.iter().take(64).map(|&v| v as f32).collect(),
        });
    }
    ShardReport {
        protocol_minor: gradtel_proto::PROTOCOL_MINOR,
        run_id: "bench".into(),
        rank,
        world_size: AGENTS,
        shard: 0,
        shard_count: 1,
        seq,
        step,
        local: true,
        batch_size: Some(32),
        tensors,
        agent_epoch: epoch,
        tracked,
        projection: Some(Projection {
            kind: 1,
            dim: 256,
            seed: 7,
            values: (0..256).map(|_| r.normal()).collect(),
            coordinates: 0,
        }),
        ..Default::default()
    }
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Wait until the collector at `pid` is idle — under 5 % of a core over a quarter second — or
/// 60 s have passed; the seconds waited. Acks come once a report is in the log; the estimators
/// and the Parquet writes behind them go on after the last ack, and their CPU belongs to the
/// reports too (and must not run into the next phase).
fn wait_idle(pid: u32) -> f64 {
    let t = Instant::now();
    let mut before = cpu_seconds(pid);
    while t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(250));
        let now = cpu_seconds(pid);
        if now - before < 0.0125 {
            break;
        }
        before = now;
    }
    t.elapsed().as_secs_f64()
}

/// `base` (a report's encoding without `seq` and `step`) with those two fields appended: a
/// field later in the bytes is as good as one in field order, so each send costs a copy, not an
/// encoding. Real agents send the encoded bytes their spool holds
/// (`gradtel_proto::encoded`), so the simulated ones do too: encoding each report afresh on the
/// two vCPUs the collector shares with them made the bench measure its own agents as well.
fn numbered(base: &Bytes, seq: u64, step: u64) -> EncodedReport {
    let mut b = BytesMut::with_capacity(base.len() + 22);
    b.extend_from_slice(base);
    prost::encoding::uint64::encode(7, &seq, &mut b);
    prost::encoding::uint64::encode(8, &step, &mut b);
    EncodedReport(b.freeze())
}

/// Send `steps` steps from every agent; at most `window` unacknowledged per agent; one step
/// per `pace` (None: as fast as acks allow). Returns (wall seconds, latencies).
async fn run_load(
    url: &str,
    steps: u64,
    first_step: u64,
    window: usize,
    pace: Option<Duration>,
    reports: &Arc<Vec<Vec<Bytes>>>,
) -> (f64, hdrhistogram::Histogram<u64>) {
    let lat = Arc::new(Mutex::new(
        hdrhistogram::Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("bounds"),
    ));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for rank in 0..AGENTS {
        let url = url.to_string();
        let lat = lat.clone();
        let reports = reports.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = CollectClient::connect(url)
                .await
                .expect("connect")
                .max_decoding_message_size(64 << 20);
            let (tx, rx) = tokio::sync::mpsc::channel(window);
            let mut acks = client
                .stream(ReceiverStream::new(rx))
                .await
                .expect("stream")
                .into_inner();
            let sent_at: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
            let permits = Arc::new(tokio::sync::Semaphore::new(window));
            let sender = {
                let sent_at = sent_at.clone();
                let permits = permits.clone();
                let reports = reports.clone();
                tokio::spawn(async move {
                    let t0 = Instant::now();
                    for i in 0..steps {
                        if let Some(p) = pace {
                            tokio::time::sleep_until((t0 + p * i as u32).into()).await;
                        }
                        permits.acquire().await.expect("open").forget();
                        let (seq, step) = (first_step + i + 1, first_step + i);
                        let rep = numbered(&reports[rank as usize][(i % 8) as usize], seq, step);
                        sent_at.lock().expect("lock").insert(seq, Instant::now());
                        if tx.send(rep).await.is_err() {
                            break;
                        }
                    }
                    tx
                })
            };
            let mut got = 0;
            while got < steps {
                let Ok(Some(ack)) = acks.message().await else {
                    break;
                };
                if let Some(t) = sent_at.lock().expect("lock").remove(&ack.seq) {
                    let _ = lat
                        .lock()
                        .expect("lock")
                        .record(t.elapsed().as_micros() as u64);
                }
                permits.add_permits(1);
                got += 1;
            }
            drop(sender.await);
        }));
    }
    for t in tasks {
        t.await.expect("agent task");
    }
    let wall = started.elapsed().as_secs_f64();
    let h = lat.lock().expect("lock").clone();
    (wall, h)
}

fn main() {
    let steps = env("GRADTEL_BENCH_STEPS", 300) as u64;
    let mut r = SplitMix64::new(1);
    // Eight distinct reports per agent, reused with new step numbers.
    let reports: Arc<Vec<Vec<ShardReport>>> = Arc::new(
        (0..AGENTS)
            .map(|rank| {
                (0..8)
                    .map(|i| report(rank, i, i + 1, 1 + u64::from(rank), &mut r))
                    .collect()
            })
            .collect(),
    );
    let size = reports[0][0].encoded_len();
    // What the simulated agents send: each report's encoding without `seq` and `step`.
    let unnumbered: Arc<Vec<Vec<Bytes>>> = Arc::new(
        reports
            .iter()
            .map(|agent| {
                agent
                    .iter()
                    .map(|r| {
                        let mut r = r.clone();
                        (r.seq, r.step) = (0, 0);
                        Bytes::from(r.encode_to_vec())
                    })
                    .collect()
            })
            .collect(),
    );
    // The appended fields read back as the report's own.
    let mut want = reports[3][5].clone();
    (want.seq, want.step) = (12, 11);
    let sent = numbered(&unnumbered[3][5], 12, 11).0;
    assert_eq!(ShardReport::decode(sent).expect("decode"), want);

    // Baseline: decoding the same reports, one core.
    let encoded: Vec<Vec<u8>> = reports
        .iter()
        .flatten()
        .map(|m| m.encode_to_vec())
        .collect();
    let t = Instant::now();
    let mut decoded = 0u64;
    while t.elapsed() < Duration::from_secs(1) {
        for b in &encoded {
            let m = ShardReport::decode(b.as_slice()).expect("decode");
            decoded += u64::from(m.rank > AGENTS);
            decoded += 1;
        }
    }
    let decode_rate = decoded as f64 / t.elapsed().as_secs_f64();

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_gradtel-collector"))
        .args(["--listen", "127.0.0.1:0"])
        .args(["--metrics", "127.0.0.1:0"])
        .arg("--out")
        .arg(dir.path())
        .env("GRADTEL_LOG", "error")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn gradtel-collector");
    let pid = child.id();
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut metrics_addr = String::new();
    let addr = loop {
        let line = lines.next().expect("collector output").expect("line");
        if let Some(m) = line.strip_prefix("gradtel-collector metrics on ") {
            metrics_addr = m.trim().to_string();
        }
        if let Some(a) = line.strip_prefix("gradtel-collector listening on ") {
            break a.trim().to_string();
        }
    };
    let url = format!("http://{addr}");
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    let warmup = env("GRADTEL_BENCH_WARMUP", 0) as u64;
    if warmup > 0 {
        rt.block_on(run_load(&url, warmup, 0, WINDOW, None, &unnumbered));
        wait_idle(pid);
    }
    let cpu0 = cpu_seconds(pid);
    let (wall, sat) = rt.block_on(run_load(&url, steps, warmup, WINDOW, None, &unnumbered));
    let cpu_acked = cpu_seconds(pid) - cpu0;
    let drain = wait_idle(pid);
    let cpu = cpu_seconds(pid) - cpu0;
    let n = (steps * u64::from(AGENTS)) as f64;
    println!(
        "saturation: {n} reports of {size} bytes from {AGENTS} agents in {wall:.2} s = {:.0} reports/s; collector CPU {cpu:.2} s = {:.0} reports per CPU-second ({cpu_acked:.2} s = {:.0} per CPU-second until the last ack, then {drain:.1} s to go idle); p50 {:.1} ms, p99 {:.1} ms",
        n / wall,
        n / cpu,
        n / cpu_acked,
        sat.value_at_quantile(0.5) as f64 / 1e3,
        sat.value_at_quantile(0.99) as f64 / 1e3
    );
    // Paced at about a third of saturation, every agent sending steps at the same rate.
    let per_step = Duration::from_secs_f64(3.0 * wall / steps as f64);
    let (_, paced) = rt.block_on(run_load(
        &url,
        steps,
        warmup + steps,
        4,
        Some(per_step),
        &unnumbered,
    ));
    println!(
        "paced ({:.0} reports/s): report → durable ack p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        f64::from(AGENTS) / per_step.as_secs_f64(),
        paced.value_at_quantile(0.5) as f64 / 1e3,
        paced.value_at_quantile(0.99) as f64 / 1e3,
        paced.max() as f64 / 1e3
    );
    println!(
        "baseline: protobuf decode alone {decode_rate:.0} reports per CPU-second; collector / decode = {:.3}",
        (n / cpu) / decode_rate
    );
    // The collector's own view: time to write a flush, and receive → durable.
    if let Ok(mut sock) = std::net::TcpStream::connect(&metrics_addr) {
        use std::io::{Read, Write};
        let _ = write!(
            sock,
            "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let mut text = String::new();
        let _ = sock.read_to_string(&mut text);
        for line in text.lines().filter(|l| {
            (l.starts_with("gradtel_collector_flush_seconds{")
                || l.starts_with("gradtel_collector_report_durable_seconds{")
                || l.starts_with("gradtel_collector_wal_commit_seconds{"))
                && (l.contains("\"0.5\"") || l.contains("\"0.99\""))
        }) {
            println!("collector metrics (both phases): {line}");
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}
