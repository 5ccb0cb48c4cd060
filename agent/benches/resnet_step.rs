//! Agent per-step cost on a gradient shaped like ResNet-50's: its 161 parameter tensors
//! (25.6M values; 106 of them batch-norm weights and biases of 64–2,048 values), one chunk per
//! tensor as `watch` pushes them, through the real ingest path (`AgentState::add_chunk`, then
//! `end_step`). Where `step_cost` measures the cost per value on one large tensor, this adds
//! what each tensor costs on its own (its summary's setup, merge and encoding in the report).
//!
//! Baselines in the same run: a read of the same bytes (summing them as u64 words), and the
//! same 25.6M values as one tensor through the same path; the difference between the two agent
//! steps, over 160, is the cost of a tensor.
//!
//! Run: `cargo bench -p gradtel-agent --bench resnet_step`. Results: bench/RESULTS.md. Env:
//! `GRADTEL_BENCH_REPS` (steps per measurement, default 7: more to profile the agent).

mod common;

use std::hint::black_box;
use std::time::Instant;

use gradtel_agent::AgentConfig;
use gradtel_proto::v1::{Dtype, EndStep, GradientChunk};

/// Steps per measurement; `GRADTEL_BENCH_REPS` raises it.
const REPS: usize = 7;

fn reps() -> usize {
    std::env::var("GRADTEL_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(REPS)
}

/// ResNet-50's parameter tensors (torchvision's `resnet50`), in its order: name, values.
fn resnet50() -> Vec<(String, u64)> {
    let mut t = Vec::new();
    let mut conv_bn = |name: &str, out: u64, inp: u64, k: u64| {
        t.push((format!("{name}.conv.weight"), out * inp * k * k));
        t.push((format!("{name}.bn.weight"), out));
        t.push((format!("{name}.bn.bias"), out));
    };
    conv_bn("stem", 64, 3, 7);
    let mut inp = 64;
    for (layer, (blocks, width)) in [(3, 64), (4, 128), (6, 256), (3, 512)]
        .into_iter()
        .enumerate()
    {
        for b in 0..blocks {
            let name = format!("layer{}.{b}", layer + 1);
            conv_bn(&format!("{name}.1"), width, inp, 1);
            conv_bn(&format!("{name}.2"), width, width, 3);
            conv_bn(&format!("{name}.3"), width * 4, width, 1);
            if b == 0 {
                conv_bn(&format!("{name}.downsample"), width * 4, inp, 1);
            }
            inp = width * 4;
        }
    }
    t.push(("fc.weight".into(), 1000 * 2048));
    t.push(("fc.bias".into(), 1000));
    t
}

/// Best of [`reps`] steps, one chunk per tensor on this thread, then `end_step`; and the size
/// of the step's report as encoded for the collector.
fn step_time(tensors: &[(String, u64)], bytes: &bytes::Bytes) -> (f64, usize) {
    let cfg = AgentConfig::new("unused.sock".into(), "http://127.0.0.1:1".into());
    let (state, mut rx) = common::registered_agent(cfg, tensors);
    let (mut best, mut size) = (f64::MAX, 0);
    for step in 0..reps() as u64 {
        let t = Instant::now();
        let mut at = 0usize;
        for (name, n) in tensors {
            let len = *n as usize * 4;
            state
                .add_chunk(&GradientChunk {
                    step,
                    tensor: name.clone(),
                    offset: 0,
                    dtype: Dtype::F32 as i32,
                    data: bytes.slice(at..at + len),
                    local: true,
                    shared: None,
                })
                .expect("chunk");
            at += len;
        }
        state
            .end_step(&EndStep {
                step,
                ..Default::default()
            })
            .expect("end step");
        best = best.min(t.elapsed().as_secs_f64());
        while let Ok(report) = rx.try_recv() {
            size = prost::Message::encoded_len(&report);
        }
    }
    (best, size)
}

fn main() {
    let tensors = resnet50();
    let n: u64 = tensors.iter().map(|t| t.1).sum();
    let mut seed = common::SEED;
    let bytes = bytes::Bytes::from(common::heavy_tailed_bytes(n, &mut seed));
    let read = (0..reps())
        .map(|_| {
            let t = Instant::now();
            let s = bytes
                .chunks_exact(8)
                .map(|x| u64::from_le_bytes(x.try_into().expect("8 bytes")))
                .fold(0u64, u64::wrapping_add);
            black_box(s);
            t.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    let (whole, _) = step_time(&[("all".to_string(), n)], &bytes);
    let (split, size) = step_time(&tensors, &bytes);
    let small = tensors.iter().filter(|t| t.1 <= 2048).count();
    println!(
        "ResNet-50 gradient: {} tensors ({small} of ≤ 2,048 values), {n} f32 values ({:.1} MB), one thread, kernels: {}",
        tensors.len(),
        n as f64 * 4.0 / 1e6,
        gradtel_stats::isa::name()
    );
    println!(
        "read {:.2} ms; agent step as one tensor {:.2} ms ({:.2} ns/value), as ResNet-50's {} tensors {:.2} ms → {:.1} µs per tensor beyond its values; agent/read bandwidth {:.3}",
        read * 1e3,
        whole * 1e3,
        whole * 1e9 / n as f64,
        tensors.len(),
        split * 1e3,
        (split - whole) * 1e6 / (tensors.len() - 1) as f64,
        read / split
    );
    println!(
        "the step's report: {size} bytes ({:.0} per tensor)",
        size as f64 / tensors.len() as f64
    );
}
