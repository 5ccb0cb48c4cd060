//! Agent per-step cost on a 10M-coordinate f32 gradient, through the real Ingest code path
//! (`AgentState::add_chunk`: decode, summary, tracked coordinates, CountSketch projection;
//! then `end_step`), against a memory-read baseline over the same bytes measured in the same
//! run: summing the buffer as u64 words (pure read bandwidth) with the same number of threads,
//! both on persistent worker threads (see `pooled`).
//!
//! Two temperatures of the same bytes, for the read and the agent alike: *warm*, one 40 MB
//! buffer read over and over (it stays in a large last-level cache, as a gradient the client
//! has just copied may), and *cold*, repetitions rotating over copies that together exceed the
//! last-level cache (`GRADTEL_BENCH_COLD_MB`, default 1,024 MB), so that each is read from
//! memory.
//!
//! Run: `cargo bench -p gradtel-agent --bench step_cost`. Results: bench/RESULTS.md. Env:
//! `GRADTEL_BENCH_CHUNK` (values per chunk), `GRADTEL_BENCH_COLD_MB`, `GRADTEL_BENCH_AGENT_REPS`
//! (steps per measurement, default 3: more to profile the agent), `GRADTEL_BENCH_SKETCH_DIM`
//! (the projection's m, default 256; 0 leaves it out).

mod common;

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Barrier, Mutex};
use std::time::{Duration, Instant};

use gradtel_agent::AgentConfig;
use gradtel_proto::v1::{Dtype, EndStep, GradientChunk};

const N: u64 = 10_000_000;

const READ_REPS: usize = 5;
/// Steps per measurement; `GRADTEL_BENCH_AGENT_REPS` raises it (to profile the agent's share).
const AGENT_REPS: usize = 3;

/// Runs `job(worker)` on `nt` persistent workers released together, `reps` times: `setup`
/// before each repetition, `finish` on this thread after all workers are done. Each
/// repetition's time runs from the release to the end of `finish`; with it, the sum of what
/// the workers' `job`s returned (their busy seconds).
///
/// Persistent, for the read and the agent alike: the agent's ingest tasks run on tokio's
/// blocking pool, whose threads outlive a step; a thread spawned per step (this bench until
/// session 22) charged both sides for thread start.
fn pooled(
    nt: usize,
    reps: usize,
    job: &(dyn Fn(usize) -> f64 + Sync),
    setup: &mut dyn FnMut(usize),
    finish: &mut dyn FnMut(),
) -> Vec<(f64, f64)> {
    let start = Barrier::new(nt + 1);
    let done = Barrier::new(nt + 1);
    let go = AtomicBool::new(true);
    let busy = Mutex::new(0.0f64);
    let mut out = Vec::with_capacity(reps);
    std::thread::scope(|sc| {
        for w in 0..nt {
            let (start, done, go, busy) = (&start, &done, &go, &busy);
            sc.spawn(move || {
                loop {
                    start.wait();
                    if !go.load(Ordering::Acquire) {
                        break;
                    }
                    let b = job(w);
                    *busy.lock().expect("lock") += b;
                    done.wait();
                }
            });
        }
        for rep in 0..reps {
            setup(rep);
            *busy.lock().expect("lock") = 0.0;
            let t = Instant::now();
            start.wait();
            done.wait();
            finish();
            out.push((t.elapsed().as_secs_f64(), *busy.lock().expect("lock")));
        }
        go.store(false, Ordering::Release);
        start.wait();
    });
    out
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
    let gradient = common::heavy_tailed_bytes(N, &mut seed);
    // Each copy is one allocation, its chunks slices of it (the agent reads them in place).
    let copy = |bytes: &[u8]| -> (bytes::Bytes, Vec<GradientChunk>) {
        let whole = bytes::Bytes::copy_from_slice(bytes);
        let chunks = (0..N.div_ceil(chunk))
            .map(|i| {
                let a = i * chunk;
                let b = (a + chunk).min(N);
                GradientChunk {
                    step: 0,
                    tensor: "w".into(),
                    offset: a,
                    dtype: Dtype::F32 as i32,
                    data: whole.slice((a * 4) as usize..(b * 4) as usize),
                    local: true,
                    shared: None,
                }
            })
            .collect();
        (whole, chunks)
    };
    let cold_mb: usize = std::env::var("GRADTEL_BENCH_COLD_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024);
    let agent_reps: usize = std::env::var("GRADTEL_BENCH_AGENT_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(AGENT_REPS);
    let warm = vec![copy(&gradient)];
    let cold: Vec<_> = (0..(cold_mb << 20).div_ceil(gradient.len()).max(2))
        .map(|_| copy(&gradient))
        .collect();
    drop(gradient);

    let mut cfg = AgentConfig::new("unused.sock".into(), "http://127.0.0.1:1".into());
    cfg.queue = 1 << 16;
    // `GRADTEL_BENCH_SKETCH_DIM=0` leaves the projection out, to measure its share.
    if let Some(m) = std::env::var("GRADTEL_BENCH_SKETCH_DIM")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        cfg.sketch_dim = m;
    }
    let (state, mut rx) = common::registered_agent(cfg, &[("w".to_string(), N)]);

    // Each repetition takes the next copy of the set.
    let turn = AtomicUsize::new(0);
    let read = |nt: usize, set: &[(bytes::Bytes, Vec<GradientChunk>)]| {
        let per = (N as usize * 4).div_ceil(nt).next_multiple_of(8);
        let job = |w: usize| {
            let t = Instant::now();
            let bytes = &set[turn.load(Ordering::Acquire) % set.len()].0;
            let part = bytes.chunks(per).nth(w).unwrap_or(&[]);
            let s = part
                .chunks_exact(8)
                .map(|x| u64::from_le_bytes(x.try_into().expect("8 bytes")))
                .fold(0u64, u64::wrapping_add);
            black_box(s);
            t.elapsed().as_secs_f64()
        };
        let reps = pooled(
            nt,
            READ_REPS,
            &job,
            &mut |_| {
                turn.fetch_add(1, Ordering::AcqRel);
            },
            &mut || {},
        );
        reps.iter().map(|r| r.0).fold(f64::MAX, f64::min)
    };
    // Each repetition is one step: its chunks taken by the workers as they go (as the agent's
    // ingest tasks do: a fixed split of 40 chunks over 16 threads left 3 threads idle), then
    // `end_step` on this thread. Best step, and the share of its threads' time spent inside
    // `add_chunk`: below 1, threads waited for work (too few chunks for the threads).
    let step = AtomicU64::new(0);
    let next = AtomicUsize::new(0);
    let mut agent = |nt: usize, set: &[(bytes::Bytes, Vec<GradientChunk>)]| {
        let job = |_: usize| {
            let st = step.load(Ordering::Acquire);
            let chunks = &set[turn.load(Ordering::Acquire) % set.len()].1;
            let mut busy = Duration::ZERO;
            while let Some(c) = chunks.get(next.fetch_add(1, Ordering::Relaxed)) {
                let mut c = c.clone();
                c.step = st;
                let t = Instant::now();
                state.add_chunk(&c).expect("chunk");
                busy += t.elapsed();
            }
            busy.as_secs_f64()
        };
        let reps = pooled(
            nt,
            agent_reps,
            &job,
            &mut |_| {
                step.fetch_add(1, Ordering::AcqRel);
                turn.fetch_add(1, Ordering::AcqRel);
                next.store(0, Ordering::Release);
            },
            &mut || {
                state
                    .end_step(&EndStep {
                        step: step.load(Ordering::Acquire),
                        ..Default::default()
                    })
                    .expect("end step");
                while rx.try_recv().is_ok() {}
            },
        );
        let (took, busy) = reps
            .into_iter()
            .fold((f64::MAX, 0.0), |b, r| if r.0 < b.0 { r } else { b });
        (took, busy / (nt as f64 * took))
    };
    println!(
        "10M f32 coordinates (40 MB), chunks of {chunk} values, threads available: {threads}, \
         kernels: {}; cold: {} copies ({} MB)",
        gradtel_stats::isa::name(),
        cold.len(),
        (cold.len() * N as usize * 4) >> 20
    );
    // 1 thread, the agent's default of 4 ingest threads per stream, and every core.
    let mut counts = vec![1, 4.min(threads), threads];
    counts.dedup();
    for (name, set) in [("warm", &warm), ("cold", &cold)] {
        for &nt in &counts {
            let (t_read, (t_agent, used)) = (read(nt, set), agent(nt, set));
            println!(
                "{name} {nt} thread(s): read {:.2} ms ({:.1} GB/s), agent step {:.1} ms ({:.2} ns/value, {:.2} GB/s, threads busy {:.0} %) → agent/read bandwidth = {:.3}",
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
}
