//! What the on-disk spool adds per report, against what shipping a report costs anyway: its
//! protobuf encoding (every send needs it; with the spool the report is encoded once, into its
//! record, and the shipper sends those bytes), measured over the same reports in the same run.
//!
//! Reports are real: made by the agent's own Ingest path (`AgentState::add_chunk`, `end_step`)
//! from heavy-tailed gradients, for two layouts — 8 tensors (the digits CNN of the examples)
//! and 161 tensors (ResNet-50's parameter count). Spool figures: a report written to a segment
//! and then acknowledged (both in the shipper's path), and the same with an `fdatasync` after
//! every report, the most the shipper does (it syncs at most every 50 ms, and only after a
//! write). The spool lives under `target/` (a real disk, not tmpfs).
//!
//! Run: `cargo bench -p gradtel-agent --bench spool`. Results: bench/RESULTS.md.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use gradtel_agent::service::AgentState;
use gradtel_agent::spool::{DEFAULT_SEGMENT_BYTES, Spool};
use gradtel_agent::{AgentConfig, AgentMetrics};
use gradtel_proto::v1::{
    Dtype, EndStep, GradientChunk, RegisterRequest, ShardReport, TensorLayout,
};
use prost::Message;

/// `steps` real reports of a layout of `tensors` tensors of `numel` values.
fn reports(tensors: usize, numel: u64, steps: u64) -> Vec<ShardReport> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(steps as usize + 1);
    let mut cfg = AgentConfig::new("unused.sock".into(), "http://127.0.0.1:1".into());
    cfg.queue = steps as usize + 1;
    let state = AgentState::new(cfg, Arc::new(AgentMetrics::default()), tx);
    let names: Vec<String> = (0..tensors).map(|i| format!("layer{i}.weight")).collect();
    state
        .register(&RegisterRequest {
            run_id: "bench".into(),
            world_size: 1,
            shard_count: 1,
            tensors: names
                .iter()
                .map(|n| TensorLayout {
                    name: n.clone(),
                    shape: vec![numel],
                    dtype: Dtype::F32 as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .expect("register");
    let mut s = common::SEED;
    let mut out = Vec::new();
    for step in 0..steps {
        for n in &names {
            let bytes = common::heavy_tailed_bytes(numel, &mut s);
            state
                .add_chunk(&GradientChunk {
                    step,
                    tensor: n.clone(),
                    offset: 0,
                    dtype: Dtype::F32 as i32,
                    data: bytes.into(),
                    local: true,
                    shared: None,
                })
                .expect("chunk");
        }
        state
            .end_step(&EndStep {
                step,
                ..Default::default()
            })
            .expect("end step");
        out.push(rx.try_recv().expect("a report per step"));
    }
    out
}

/// Seconds per report of `f` over all reports, best of `reps`.
fn per_report(reps: usize, n: usize, mut f: impl FnMut()) -> f64 {
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min)
        / n as f64
}

fn main() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/spool-bench");
    let _ = std::fs::remove_dir_all(&root);
    for (label, tensors, numel) in [
        ("8 tensors (digits CNN)", 8, 4_096),
        ("161 tensors (ResNet-50 layout)", 161, 4_096),
    ] {
        let rs = reports(tensors, numel, 100);
        let n = rs.len();
        let bytes: usize = rs.iter().map(|r| r.encoded_len()).sum();
        let encode = per_report(5, n, || {
            for r in &rs {
                black_box(r.encode_to_vec());
            }
        });
        let mut round = 0;
        let mut spool_run = |sync: bool| {
            round += 1;
            let dir = root.join(format!("{tensors}-{round}"));
            let (mut spool, _) = Spool::open(&dir, 1 << 40, DEFAULT_SEGMENT_BYTES).expect("spool");
            let t = Instant::now();
            for r in &rs {
                black_box(spool.push(r, true));
                if sync && let Some(f) = spool.take_sync() {
                    f.sync_data().expect("sync");
                }
            }
            for r in &rs {
                spool.ack(r.agent_epoch, r.seq);
            }
            let took = t.elapsed().as_secs_f64();
            spool.close();
            let _ = std::fs::remove_dir_all(&dir);
            took / n as f64
        };
        let spool = (0..5).map(|_| spool_run(false)).fold(f64::MAX, f64::min);
        let synced = (0..3).map(|_| spool_run(true)).fold(f64::MAX, f64::min);
        println!(
            "{label}: {:.1} kB per report; encode (baseline) {:.1} µs; spool write + ack {:.1} µs \
             ({:.2} × encode, {:.0} MB/s); with a sync per report {:.1} µs ({:.2} × encode)",
            bytes as f64 / n as f64 / 1e3,
            encode * 1e6,
            spool * 1e6,
            spool / encode,
            bytes as f64 / n as f64 / spool / 1e6,
            synced * 1e6,
            synced / encode,
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}
