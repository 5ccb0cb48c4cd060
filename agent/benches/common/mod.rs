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
