//! Agent per-step cost on a 10M-coordinate f32 gradient, through the real Ingest code path
//! (`AgentState::add_chunk`: decode, summary, tracked coordinates, CountSketch projection;
//! then `end_step`), against a memory-read baseline over the same bytes measured in the same
//! run: summing the buffer as u64 words (pure read bandwidth) with the same number of threads.
//!
//! Run: `cargo bench -p gradtel-agent --bench step_cost`. Results: bench/RESULTS.md.

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use gradtel_agent::service::AgentState;
use gradtel_agent::{AgentConfig, AgentMetrics};
use gradtel_proto::v1::{Dtype, EndStep, GradientChunk, RegisterRequest, TensorLayout};

const N: u64 = 10_000_000;

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        best = best.min(t.elapsed());
    }
    best.as_secs_f64()
}

fn main() {
    let threads: usize = std::thread::available_parallelism().map_or(1, |n| n.get());
    // 1 MiB chunks by default (the Python client's per-parameter chunks average 0.6 MB): 39
    // chunks, so 16 threads all get work.
    let chunk: u64 = std::env::var("GRADTEL_BENCH_CHUNK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1 << 18);
    let mut seed = common::SEED;
    let bytes = common::heavy_tailed_bytes(N, &mut seed);
    let chunks: Vec<GradientChunk> = (0..N.div_ceil(chunk))
        .map(|i| {
            let a = i * chunk;
            let b = (a + chunk).min(N);
            GradientChunk {
                step: 0,
                tensor: "w".into(),
                offset: a,
                dtype: Dtype::F32 as i32,
                data: bytes[(a * 4) as usize..(b * 4) as usize].to_vec().into(),
                local: true,
                shared: None,
            }
        })
        .collect();

    let (tx, mut rx) = tokio::sync::mpsc::channel(1 << 16);
    let mut cfg = AgentConfig::new("unused.sock".into(), "http://127.0.0.1:1".into());
    cfg.queue = 1 << 16;
    let state = Arc::new(AgentState::new(cfg, Arc::new(AgentMetrics::default()), tx));
    state
        .register(&RegisterRequest {
            run_id: "bench".into(),
            world_size: 1,
            shard_count: 1,
            tensors: vec![TensorLayout {
                name: "w".into(),
                shape: vec![N],
                dtype: Dtype::F32 as i32,
                ..Default::default()
            }],
            ..Default::default()
        })
        .expect("register");

    let read = |nt: usize| {
        best(5, || {
            let per = bytes.len().div_ceil(nt).next_multiple_of(8);
            let total: u64 = std::thread::scope(|sc| {
                let hs: Vec<_> = bytes
                    .chunks(per)
                    .map(|part| {
                        sc.spawn(move || {
                            part.chunks_exact(8)
                                .map(|w| u64::from_le_bytes(w.try_into().expect("8 bytes")))
                                .fold(0u64, u64::wrapping_add)
                        })
                    })
                    .collect();
                hs.into_iter()
                    .map(|h| h.join().expect("thread"))
                    .fold(0, u64::wrapping_add)
            });
            black_box(total);
        })
    };
    let mut step = 0u64;
    // Best of three steps, and the share of its threads' time spent inside `add_chunk`: below
    // 1, threads waited for work (too few chunks for the threads) or for thread start.
    let mut agent = |nt: usize| {
        let mut best = (f64::MAX, 0.0);
        for _ in 0..3 {
            step += 1;
            let st = step;
            let t = Instant::now();
            // Each thread takes the next chunk when it is done with one, as the agent's ingest
            // tasks do: a fixed split of 40 chunks over 16 threads left 3 threads idle and the
            // others with 3 chunks each.
            let next = AtomicUsize::new(0);
            let busy: f64 = std::thread::scope(|sc| {
                let hs: Vec<_> = (0..nt)
                    .map(|_| {
                        let (state, next, chunks) = (&state, &next, &chunks);
                        sc.spawn(move || {
                            let mut busy = Duration::ZERO;
                            while let Some(c) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                                let mut c = c.clone();
                                c.step = st;
                                let t = Instant::now();
                                state.add_chunk(&c).expect("chunk");
                                busy += t.elapsed();
                            }
                            busy.as_secs_f64()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().expect("thread")).sum()
            });
            state
                .end_step(&EndStep {
                    step: st,
                    ..Default::default()
                })
                .expect("end step");
            let took = t.elapsed().as_secs_f64();
            while rx.try_recv().is_ok() {}
            if took < best.0 {
                best = (took, busy / (nt as f64 * took));
            }
        }
        best
    };
    println!(
        "10M f32 coordinates (40 MB), chunks of {chunk} values, threads available: {threads}, \
         kernels: {}",
        gradtel_stats::isa::name()
    );
    // 1 thread, the agent's default of 4 ingest threads per stream, and every core.
    let mut counts = vec![1, 4.min(threads), threads];
    counts.dedup();
    for nt in counts {
        let (t_read, (t_agent, used)) = (read(nt), agent(nt));
        println!(
            "{nt} thread(s): read {:.2} ms ({:.1} GB/s), agent step {:.1} ms ({:.2} ns/value, {:.2} GB/s, threads busy {:.0} %) → agent/read bandwidth = {:.3}",
            t_read * 1e3,
            N as f64 * 4.0 / t_read / 1e9,
            t_agent * 1e3,
            t_agent * 1e9 / N as f64,
            N as f64 * 4.0 / t_agent / 1e9,
            used * 100.0,
            t_read / t_agent
        );
    }
}
