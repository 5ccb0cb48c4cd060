//! What the agent's benches share.

/// The seed both benches start from.
pub const SEED: u64 = 0x2545_F491_4F6C_DD1D;

/// `n` heavy-tailed f32 values spanning many binades, like real gradients, as little-endian
/// bytes; `state` is a xorshift generator's state, carried from call to call.
pub fn heavy_tailed_bytes(n: u64, state: &mut u64) -> Vec<u8> {
    (0..n)
        .flat_map(|_| {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            let s = *state;
            let u = (s >> 40) as f32 / (1u64 << 24) as f32;
            let v = ((s >> 16) & 0xFF_FFFF) as f32 / (1u64 << 24) as f32 + 1e-6;
            ((u - 0.5) * 1e-3 / v.powf(0.8)).to_le_bytes()
        })
        .collect()
}

/// A fresh agent state with `cfg`, registered as rank 0 of 1 of run `bench` with `tensors`
/// (name, f32 values); the receiver takes the reports its steps queue.
#[allow(dead_code)] // not every bench drives an agent
pub fn registered_agent(
    cfg: gradtel_agent::AgentConfig,
    tensors: &[(String, u64)],
) -> (
    std::sync::Arc<gradtel_agent::service::AgentState>,
    tokio::sync::mpsc::Receiver<gradtel_proto::v1::ShardReport>,
) {
    use gradtel_proto::v1::{Dtype, RegisterRequest, TensorLayout};
    let (tx, rx) = tokio::sync::mpsc::channel(cfg.queue.max(1));
    let metrics = std::sync::Arc::new(gradtel_agent::AgentMetrics::default());
    let state = std::sync::Arc::new(gradtel_agent::service::AgentState::new(cfg, metrics, tx));
    state
        .register(&RegisterRequest {
            run_id: "bench".into(),
            world_size: 1,
            shard_count: 1,
            tensors: tensors
                .iter()
                .map(|(name, n)| TensorLayout {
                    name: name.clone(),
                    shape: vec![*n],
                    dtype: Dtype::F32 as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
        .expect("register");
    (state, rx)
}
