//! Shard-summable random projections R^d → R^m whose matrix is fixed by a seed and generated
//! column by column from (seed, coordinate), so no agent ever stores a d×m matrix.
//!
//! * **CountSketch**, block-rotated (Charikar, Chen & Farach-Colton 2002; Clarkson & Woodruff
//!   2013, with the hash drawn per block): column j has one non-zero, `s(j) ∈ {±1}` in row
//!   `h(j)`. Coordinates are cut into aligned blocks of m (block `b = ⌊j/m⌋`, position
//!   `t = j mod m`); block b is shifted cyclically by `r_b`, uniform on [0, m), so
//!   `h(j) = (t + r_b) mod m`, and `s(j)` is an independent hashed bit. Both come from keyed
//!   SplitMix64 finalisers of the block (one per block for `r_b`, one per 64 positions for the
//!   signs). What CountSketch's guarantees use holds: the signs are independent of each other
//!   and of h, and `P[h(i) = h(j)] = 1/m` for coordinates of different blocks and 0 within a
//!   block (≤ 1/m for every pair). Hence `E[⟨Sx, Sy⟩] = ⟨x, y⟩` and
//!   `Var ‖Sx‖² = 2 Σ_{i≠j} P[h(i)=h(j)] x_i² x_j² ≤ (2/m) ‖x‖⁴` (the JL moment bound), and with
//!   m = O(k²/ε²) rows it is a subspace embedding for rank-k spans (Nelson & Nguyễn 2013: the
//!   proof needs only these collision probabilities and 4-wise independent signs). The random
//!   shift per block is what keeps periodic gradients (period m, e.g. a row-major matrix with
//!   m columns) from piling onto a few rows.
//!
//!   Why blocks: with one multiply-hash per coordinate the sketch cost 1.5–2.5 ns per value,
//!   as much as the whole summary; within a block the rows are contiguous, so projecting is a
//!   vectorised signed add into a slice of row sums (`cargo bench -p gradtel-stats --bench
//!   sketch`). The row sums are f32 over at most 17 values a row before they are added to the
//!   f64 output (`F32_ROW_RUN`).
//! * **Gaussian** (Johnson–Lindenstrauss): entries i.i.d. N(0, 1/m), column j drawn from a
//!   generator seeded by (seed, j). `E[‖Gx‖²] = ‖x‖²`.
//!
//! Sharding: projecting coordinates `[a, b)` of x (with their true offsets) and adding the results
//! over a partition of `[0, d)` gives the projection of x, because the projection is linear and
//! each column depends only on (seed, j). For CountSketch the partial results are signed sums of
//! the inputs, so the total is identical to the whole-vector projection whenever the additions
//! are exact (f32 inputs whose sums in one row need at most 24 significant bits), and otherwise
//! equal up to the f32 rounding of ≤ 17-term row sums (relative 17 · 2⁻²⁴ of the row's Σ|x|,
//! far below the sketch's own error of order 1/√m); Gaussian sums agree to f64 rounding.
//! Cost: CountSketch O(b − a) (a hash per 64 coordinates and one per block), Gaussian
//! O(m (b − a)).

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

    /// Add the projection of `values` (coordinates `offset .. offset + len`) into `out`
    /// (length m), possibly keeping partial sums in `scratch` until [`Self::flush`]. Feeding a
    /// range in pieces through one scratch costs less than [`Self::project_range`] per piece.
    fn accumulate(
        &self,
        offset: u64,
        values: &[f32],
        out: &mut [f64],
        scratch: &mut ProjectionScratch,
    );

    /// Add the partial sums held in `scratch` into `out`, leaving it empty.
    fn flush(&self, out: &mut [f64], scratch: &mut ProjectionScratch) {
        let _ = (out, scratch);
    }

    /// Add the projection of `values` (coordinates `offset .. offset + len`) into `out`.
    fn project_range(&self, offset: u64, values: &[f32], out: &mut [f64]) {
        let mut scratch = ProjectionScratch::default();
        self.accumulate(offset, values, out, &mut scratch);
        self.flush(out, &mut scratch);
    }
}

/// Partial sums a projection keeps between [`Projection::accumulate`] calls on one output.
#[derive(Debug, Default)]
pub struct ProjectionScratch {
    /// CountSketch: m + 64 f32 row sums.
    acc: Vec<f32>,
    /// Values added into `acc` since its last flush.
    pending: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct CountSketch {
    m: usize,
    /// Keys of the sign words and of the block rotations.
    sign_key: u64,
    shift_key: u64,
}

impl CountSketch {
    pub fn new(m: usize, seed: u64) -> Self {
        let mut r = SplitMix64::new(seed);
        Self {
            m: m.clamp(1, u32::MAX as usize),
            sign_key: r.next_u64(),
            shift_key: r.next_u64(),
        }
    }

    /// Row and sign of column j: with `b = ⌊j / m⌋` and `t = j mod m`, the row is
    /// `(t + r_b) mod m` and the sign is bit `t mod 64` of the word `w_{b, ⌊t / 64⌋}`, where
    /// the rotation `r_b` and the words are keyed hashes of the block (see the module header).
    pub fn bucket(&self, j: u64) -> (usize, f64) {
        let m = self.m as u64;
        let (b, t) = (j / m, j % m);
        let row = (t + self.rotation(b)) % m;
        let bit = (self.sign_word(b, t / 64) >> (t % 64)) & 1;
        (row as usize, if bit == 0 { 1.0 } else { -1.0 })
    }

    /// The cyclic shift of block `b`, uniform on `[0, m)` (multiply-high of 32 hashed bits).
    #[inline]
    fn rotation(&self, b: u64) -> u64 {
        ((hash(self.shift_key, b) >> 32) * self.m as u64) >> 32
    }

    /// Sign bits of positions `64 w .. 64 w + 63` of block `b` (1 = minus).
    #[inline]
    fn sign_word(&self, b: u64, w: u64) -> u64 {
        let words = (self.m as u64).div_ceil(64);
        hash(self.sign_key, b.wrapping_mul(words).wrapping_add(w))
    }
}

/// `out[i] += ±values[i]`, the sign of `i` being bit `i` of `signs` (1 = minus); at most 64
/// values. Flipping the sign bit gives exactly `−x`, and the loop vectorises (a variable shift
/// per lane).
#[inline(always)]
fn add_signed(out: &mut [f64], values: &[f32], signs: u64) {
    for (i, (o, &x)) in out.iter_mut().zip(values).enumerate() {
        *o += f64::from_bits(f64::from(x).to_bits() ^ (((signs >> i) & 1) << 63));
    }
}

/// [`add_signed`] into f32 accumulators: sixteen lanes a vector and no widening, with the sign
/// word split in 32-bit halves so the per-lane shifts stay 32-bit.
#[inline(always)]
fn add_signed_f32(out: &mut [f32], values: &[f32], signs: u64) {
    for (k, (out, values)) in out.chunks_mut(32).zip(values.chunks(32)).enumerate() {
        let half = (signs >> (32 * k)) as u32;
        for (i, (o, &x)) in out.iter_mut().zip(values).enumerate() {
            *o += f32::from_bits(x.to_bits() ^ (((half >> i) & 1) << 31));
        }
    }
}

/// Values per row summed in f32 before they are added to the f64 output: bounds the f32
/// rounding at ≈ 17 · 2⁻²⁴ of the row's Σ|x| (a piece of 16 m values meets at most 17 blocks,
/// each contributing one value per row).
const F32_ROW_RUN: usize = 16;

impl CountSketch {
    /// Visit `values` (coordinates `offset ..`) as runs of up to 64 positions that share a
    /// block and a sign word: `f(row, run, signs)` with the run's first row and its sign
    /// bits. Rows run on past m − 1 where the block's rotation wraps: position `row + i` of
    /// the run stands for row `(row + i) mod m`, and `row + run.len() ≤ m + 64`.
    #[inline(always)]
    fn for_each_run(&self, offset: u64, values: &[f32], mut f: impl FnMut(usize, &[f32], u64)) {
        let m = self.m as u64;
        // One division per call; the block and position then advance by additions.
        let (mut b, mut t) = (offset / m, offset % m);
        let mut r = self.rotation(b);
        let mut rest = values;
        while !rest.is_empty() {
            let len = (64 - t % 64).min(m - t).min(rest.len() as u64) as usize;
            let (run, tail) = rest.split_at(len);
            let signs = self.sign_word(b, t / 64) >> (t % 64);
            let row = t + r;
            f((if row >= m { row - m } else { row }) as usize, run, signs);
            t += len as u64;
            if t == m && !tail.is_empty() {
                (b, t) = (b + 1, 0);
                r = self.rotation(b);
            }
            rest = tail;
        }
    }

    /// Fold the f32 row sums into `out` and zero them.
    fn flush_f32(&self, out: &mut [f64], scratch: &mut ProjectionScratch) {
        let (rows, past) = scratch.acc.split_at_mut(self.m);
        for (o, a) in out.iter_mut().zip(rows) {
            *o += f64::from(std::mem::take(a));
        }
        for (o, a) in out.iter_mut().zip(past) {
            *o += f64::from(std::mem::take(a));
        }
        scratch.pending = 0;
    }
}

impl Projection for CountSketch {
    fn dim(&self) -> usize {
        self.m
    }

    /// Values are summed per row in f32, over m + 64 rows (runs that wrap past row m − 1 go on
    /// into the extra rows), which are added to `out` in f64 after every [`F32_ROW_RUN`] · m
    /// values and at [`Projection::flush`]: widening each value to f64 cost half the
    /// projection. A first call shorter than 2 m values, with nothing pending, adds straight
    /// into `out` in f64 instead (clearing and folding the row sums would cost more than it).
    /// Sums of f32 values that need at most 24 significant bits are exact either way.
    fn accumulate(
        &self,
        offset: u64,
        values: &[f32],
        out: &mut [f64],
        scratch: &mut ProjectionScratch,
    ) {
        assert_eq!(out.len(), self.m, "output must have the sketch dimension");
        let m = self.m;
        let stride = m + 64;
        crate::isa::dispatch(
            #[inline(always)]
            || {
                if scratch.pending == 0 && values.len() < 2 * m {
                    self.for_each_run(offset, values, |row, run, signs| {
                        let wrap = (m - row).min(run.len());
                        add_signed(&mut out[row..row + wrap], &run[..wrap], signs);
                        // A run that does not wrap leaves nothing here, and a 64-bit shift.
                        let rest = signs.checked_shr(wrap as u32).unwrap_or(0);
                        add_signed(&mut out[..run.len() - wrap], &run[wrap..], rest);
                    });
                    return;
                }
                if scratch.acc.len() != stride {
                    scratch.acc = vec![0.0; stride];
                    scratch.pending = 0;
                }
                let piece = F32_ROW_RUN * m;
                let (mut offset, mut rest) = (offset, values);
                while !rest.is_empty() {
                    let take = (piece - scratch.pending).min(rest.len());
                    let (now, later) = rest.split_at(take);
                    let acc = &mut scratch.acc;
                    self.for_each_run(offset, now, |row, run, signs| {
                        add_signed_f32(&mut acc[row..row + run.len()], run, signs);
                    });
                    scratch.pending += take;
                    if scratch.pending == piece {
                        self.flush_f32(out, scratch);
                    }
                    (offset, rest) = (offset + take as u64, later);
                }
            },
        );
    }

    fn flush(&self, out: &mut [f64], scratch: &mut ProjectionScratch) {
        assert_eq!(out.len(), self.m, "output must have the sketch dimension");
        if scratch.pending > 0 {
            self.flush_f32(out, scratch);
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

    fn accumulate(&self, offset: u64, values: &[f32], out: &mut [f64], _: &mut ProjectionScratch) {
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
    fn project_range_follows_the_per_coordinate_definition() {
        // Offsets and lengths that start mid-block and mid-word, span several blocks, and
        // wrap around the rotation; m below, at and above the 64-position sign word.
        let mut rng = SplitMix64::new(11);
        for m in [1usize, 3, 10, 64, 100, 256, 300] {
            let p = CountSketch::new(m, 42 + m as u64);
            for &(offset, len) in &[
                (0u64, 1usize),
                (5, 700),
                (63, 65),
                (1 << 40, 2000),
                (999, 3),
            ] {
                // Multiples of 1/8 below 2¹⁰ in magnitude: every row sum is exact in f32 and
                // f64, so both paths must match the definition bit for bit.
                let values: Vec<f32> = (0..len)
                    .map(|_| (rng.normal() * 64.0).round() as f32 / 8.0)
                    .collect();
                let mut fast = vec![0.0; m];
                p.project_range(offset, &values, &mut fast);
                let mut reference = vec![0.0; m];
                for (i, &v) in values.iter().enumerate() {
                    let (row, sign) = p.bucket(offset + i as u64);
                    reference[row] += sign * f64::from(v);
                }
                assert_eq!(fast, reference, "m = {m}, offset = {offset}, len = {len}");
                // The same range fed in pieces through one scratch, as the agent does: short
                // first pieces take the f64 path, later ones join the pending f32 sums, and
                // pieces cross the flush points.
                for piece in [1usize, 7, 100, 1000] {
                    let (mut pieces, mut scratch) = (vec![0.0; m], ProjectionScratch::default());
                    for (k, part) in values.chunks(piece).enumerate() {
                        let at = offset + (k * piece) as u64;
                        p.accumulate(at, part, &mut pieces, &mut scratch);
                    }
                    p.flush(&mut pieces, &mut scratch);
                    assert_eq!(pieces, reference, "m = {m}, len = {len}, pieces of {piece}");
                }
            }
        }
    }

    #[test]
    fn squared_norm_variance_matches_the_closed_form_on_periodic_input() {
        // x_j depends only on j mod m: a hash of (j mod m) alone would put every block's
        // copies of a coordinate on one row. With a random shift per block,
        // Var ‖Sx‖² = (2/m) Σ over pairs in different blocks of x_i² x_j² (module header).
        let (m, blocks) = (16usize, 6usize);
        let x: Vec<f32> = (0..m * blocks).map(|j| 1.0 + (j % m) as f32).collect();
        let sq: Vec<f64> = x.iter().map(|&v| f64::from(v).powi(2)).collect();
        let norm2: f64 = sq.iter().sum();
        let same_block: f64 = sq
            .chunks(m)
            .map(|b| b.iter().sum::<f64>().powi(2) - b.iter().map(|v| v * v).sum::<f64>())
            .sum();
        let cross = norm2 * norm2 - sq.iter().map(|v| v * v).sum::<f64>() - same_block;
        let want = 2.0 / m as f64 * cross;
        let seeds = 4000;
        let samples: Vec<f64> = (0..seeds)
            .map(|seed| {
                let p = CountSketch::new(m, seed);
                let mut out = vec![0.0; m];
                p.project_range(0, &x, &mut out);
                out.iter().map(|v| v * v).sum::<f64>()
            })
            .collect();
        let mean = samples.iter().sum::<f64>() / seeds as f64;
        let var = samples.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (seeds - 1) as f64;
        assert!((mean / norm2 - 1.0).abs() < 0.03, "mean {mean} vs {norm2}");
        assert!(
            (var / want - 1.0).abs() < 0.12,
            "variance {var} vs closed form {want}"
        );
    }

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
