//! Shard-summable random projections R^d → R^m whose matrix is fixed by a seed and generated
//! column by column from (seed, coordinate), so no agent ever stores a d×m matrix.
//!
//! * **CountSketch** (Charikar, Chen & Farach-Colton 2002; Clarkson & Woodruff 2013): column j has
//!   one non-zero, `s(j) ∈ {±1}` in row `h(j) ∈ [0, m)`, from two seeded 2-universal
//!   multiply-add-shift hashes of j (see [`CountSketch::bucket`]).
//!   `E[⟨Sx, Sy⟩] = ⟨x, y⟩`; with m = O(k²/ε²) rows it is a subspace embedding for rank-k spans.
//! * **Gaussian** (Johnson–Lindenstrauss): entries i.i.d. N(0, 1/m), column j drawn from a
//!   generator seeded by (seed, j). `E[‖Gx‖²] = ‖x‖²`.
//!
//! Sharding: projecting coordinates `[a, b)` of x (with their true offsets) and adding the results
//! over a partition of `[0, d)` gives the projection of x, because the projection is linear and
//! each column depends only on (seed, j). For CountSketch the partial results are signed sums of
//! the inputs, so the total is identical to the whole-vector projection whenever the f64
//! additions are exact (e.g. f32 inputs whose magnitudes in one bucket span fewer than 2²⁹), and
//! otherwise equal up to f64 rounding of the additions; Gaussian sums agree to f64 rounding.
//! Cost: CountSketch O(b − a) (one hash per coordinate), Gaussian O(m (b − a)).

use crate::rng::SplitMix64;

/// Mix (seed, j) into 64 well-distributed bits (SplitMix64's finaliser over a keyed counter).
#[inline]
fn hash(seed: u64, j: u64) -> u64 {
    let mut z = seed ^ j.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A linear map R^d → R^m defined by a seed, applicable to any coordinate range.
pub trait Projection {
    /// Output dimension m.
    fn dim(&self) -> usize;
    /// Add the projection of `values` (coordinates `offset .. offset + len`) into `out` (length m).
    fn project_range(&self, offset: u64, values: &[f32], out: &mut [f64]);
}

#[derive(Debug, Clone, Copy)]
pub struct CountSketch {
    m: usize,
    /// Keys of the hash (c odd).
    a: u64,
    b: u64,
    c: u64,
}

impl CountSketch {
    pub fn new(m: usize, seed: u64) -> Self {
        let mut r = SplitMix64::new(seed);
        Self {
            m: m.clamp(1, u32::MAX as usize),
            a: r.next_u64() | 1,
            b: r.next_u64(),
            c: r.next_u64() | 1,
        }
    }

    /// Row and sign of column j. Columns go in pairs (j = 2g, 2g + 1): one 64×64→128-bit
    /// multiply of `g ⊕ a` by the odd key `c`, folded (hi ⊕ lo ⊕ b, wyhash's "mum" mixer), gives
    /// 64 well-mixed bits; each column of the pair takes 31 bits for its row and 1 for its sign.
    /// Every input bit reaches every output bit, so periodic gradients do not alias onto buckets,
    /// and a multiplication serves two coordinates.
    #[inline]
    pub fn bucket(&self, j: u64) -> (usize, f64) {
        let h = self.mix(j >> 1);
        let (row, sign) = self.split(h, (j & 1) as u32);
        (row, if sign == 0 { 1.0 } else { -1.0 })
    }

    #[inline]
    fn mix(&self, g: u64) -> u64 {
        let p = u128::from(g ^ self.a) * u128::from(self.c);
        (p as u64) ^ ((p >> 64) as u64) ^ self.b
    }

    /// Row and sign bit (as the f64 sign mask) of lane 0 or 1 of a mixed word.
    #[inline]
    fn split(&self, h: u64, lane: u32) -> (usize, u64) {
        let half = (h >> (32 * lane)) as u32;
        let row = ((u64::from(half >> 1) * self.m as u64) >> 31) as usize;
        // `row < m` always; the min only lets the compiler drop the bounds check.
        (row.min(self.m - 1), u64::from(half & 1) << 63)
    }
}

impl Projection for CountSketch {
    fn dim(&self) -> usize {
        self.m
    }

    fn project_range(&self, offset: u64, values: &[f32], out: &mut [f64]) {
        assert_eq!(out.len(), self.m, "output must have the sketch dimension");
        let mut j = offset;
        let mut rest = values;
        // An odd offset starts mid-pair: do that column alone.
        if j & 1 == 1
            && let Some((&v, tail)) = rest.split_first()
        {
            let (r, s) = self.split(self.mix(j >> 1), 1);
            out[r] += f64::from_bits(f64::from(v).to_bits() ^ s);
            j += 1;
            rest = tail;
        }
        let pairs = rest.chunks_exact(2);
        let last = pairs.remainder();
        for pair in pairs {
            let h = self.mix(j >> 1);
            let (r0, s0) = self.split(h, 0);
            let (r1, s1) = self.split(h, 1);
            // Flip the sign bit instead of multiplying by ±1 (exactly the same value).
            out[r0] += f64::from_bits(f64::from(pair[0]).to_bits() ^ s0);
            out[r1] += f64::from_bits(f64::from(pair[1]).to_bits() ^ s1);
            j += 2;
        }
        if let [v] = last {
            let (r, s) = self.split(self.mix(j >> 1), 0);
            out[r] += f64::from_bits(f64::from(*v).to_bits() ^ s);
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct GaussianProjection {
    m: usize,
    seed: u64,
}

impl GaussianProjection {
    pub fn new(m: usize, seed: u64) -> Self {
        Self { m: m.max(1), seed }
    }
}

impl Projection for GaussianProjection {
    fn dim(&self) -> usize {
        self.m
    }

    fn project_range(&self, offset: u64, values: &[f32], out: &mut [f64]) {
        assert_eq!(out.len(), self.m, "output must have the sketch dimension");
        let scale = 1.0 / (self.m as f64).sqrt();
        for (i, &v) in values.iter().enumerate() {
            let v = f64::from(v) * scale;
            let mut rng = SplitMix64::new(hash(self.seed, offset + i as u64));
            for o in out.iter_mut() {
                *o += rng.normal() * v;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn countsketch_preserves_norms_on_average() {
        let d = 20_000;
        let x: Vec<f32> = (0..d)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
            .collect();
        let norm2: f64 = x.iter().map(|v| f64::from(*v).powi(2)).sum();
        let mut ratios = Vec::new();
        for seed in 0..400 {
            let p = CountSketch::new(256, seed);
            let mut out = vec![0.0; 256];
            p.project_range(0, &x, &mut out);
            ratios.push(out.iter().map(|v| v * v).sum::<f64>() / norm2);
        }
        let mean = ratios.iter().sum::<f64>() / ratios.len() as f64;
        assert!((mean - 1.0).abs() < 0.05, "{mean}");
    }

    #[test]
    fn buckets_are_uniform_and_signs_balanced() {
        let p = CountSketch::new(10, 3);
        let mut counts = [0usize; 10];
        let mut plus = 0;
        for j in 0..100_000u64 {
            let (r, s) = p.bucket(j);
            counts[r] += 1;
            plus += usize::from(s > 0.0);
        }
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
        assert!((49_000..51_000).contains(&plus));
    }
}
