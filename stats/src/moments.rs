//! Streaming central moments up to order 4, mergeable.
//!
//! Keeps `n`, the mean and the central moment sums `M_p = Σ (x_i − x̄)^p` for p = 2, 3, 4.
//!
//! * Single-value update: Terriberry (2007), the one-pass extension of Welford's algorithm to
//!   M3 and M4.
//! * Merge of two disjoint samples A and B (Pébay 2008, "Formulas for robust, one-pass parallel
//!   computation of covariances and arbitrary-order statistical moments", eqs. 2.1–2.2), with
//!   δ = x̄_B − x̄_A and n = n_A + n_B:
//!   - `M2 = M2_A + M2_B + δ² n_A n_B / n`
//!   - `M3 = M3_A + M3_B + δ³ n_A n_B (n_A − n_B) / n² + 3δ (n_A M2_B − n_B M2_A) / n`
//!   - `M4 = M4_A + M4_B + δ⁴ n_A n_B (n_A² − n_A n_B + n_B²) / n³
//!          + 6δ² (n_A² M2_B + n_B² M2_A) / n² + 4δ (n_A M3_B − n_B M3_A) / n`
//!
//! * f32 values ([`ShiftedSums`], the agent's path): power sums of the deviations from a shift
//!   near the mean, converted exactly to central sums; the shift keeps them clear of the
//!   cancellation that raw power sums suffer.
//!
//! Guarantee: merging is exact in real arithmetic, so `merge(summary(A), summary(B))` equals
//! `summary(A ++ B)`; in floating point the two agree to a few ulps of the moment's scale
//! (both are backward-stable; no path forms unshifted power sums).

/// Count, mean and central moment sums of a sample.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Moments {
    pub n: u64,
    pub mean: f64,
    pub m2: f64,
    pub m3: f64,
    pub m4: f64,
}

impl Moments {
    pub fn new() -> Self {
        Self::default()
    }

    /// Summarise a slice in one pass.
    pub fn from_slice(xs: &[f64]) -> Self {
        let mut m = Self::new();
        for &x in xs {
            m.push(x);
        }
        m
    }

    /// Summarise a block exactly with two passes (mean first, then central sums): no division
    /// per value, so the inner loop vectorises. Used on short blocks that are then merged with
    /// [`Moments::merge`]; numerically at least as accurate as the one-pass update.
    pub fn from_block(xs: &[f64]) -> Self {
        if xs.is_empty() {
            return Self::new();
        }
        Self::from_block_with_sum(xs, lanes_sum(xs, |x| x))
    }

    /// [`Self::from_block`] when the caller already has `sum = Σ xs`.
    #[inline(always)]
    pub fn from_block_with_sum(xs: &[f64], sum: f64) -> Self {
        if xs.is_empty() {
            return Self::new();
        }
        let n = xs.len() as f64;
        let mean = sum / n;
        // Σd, Σd², Σd³, Σd⁴ (d = x − mean), eight lanes each so the additions pipeline. The
        // computed mean is off by rounding; corr = Σd/n corrects it (corrected two-pass, Chan,
        // Golub & LeVeque 1983), with the matching −n·corr² term in M2. The deviations go to a
        // scratch block first and each power is then summed in its own loop: one loop for all
        // four kept 32 accumulators live and compiled to scalar code with spills; these compile
        // to two AVX2 vectors per power. Lane i takes the values at i mod 8 and the last
        // `len % 8` values go to lane 0, as before: the sums are the same bit for bit.
        const L: usize = 8;
        let (mut a1, mut a2, mut a3, mut a4) = ([0.0f64; L], [0.0f64; L], [0.0f64; L], [0.0f64; L]);
        let mut d = [0.0f64; 256];
        let pieces = xs.chunks(d.len());
        let last = pieces.len() - 1;
        for (k, piece) in pieces.enumerate() {
            let d = &mut d[..piece.len()];
            for (o, &x) in d.iter_mut().zip(piece) {
                *o = x - mean;
            }
            let whole = &d[..d.len() / L * L];
            add_lanes(&mut a1, whole, |d| d);
            add_lanes(&mut a2, whole, |d| d * d);
            add_lanes(&mut a3, whole, |d| d * d * d);
            add_lanes(&mut a4, whole, |d| {
                let d2 = d * d;
                d2 * d2
            });
            let rest = &d[whole.len()..];
            debug_assert!(
                rest.is_empty() || k == last,
                "only the last piece has a remainder"
            );
            for &d in rest {
                let d2 = d * d;
                a1[0] += d;
                a2[0] += d2;
                a3[0] += d2 * d;
                a4[0] += d2 * d2;
            }
        }
        let fold = |l: [f64; L]| ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
        let [s1, s2, s3, s4] = [a1, a2, a3, a4].map(fold);
        let corr = s1 / n;
        let (m2, m3, m4) = (s2 - n * corr * corr, s3, s4);
        Self {
            n: xs.len() as u64,
            mean: mean + corr,
            m2,
            m3,
            m4,
        }
    }

    /// Add one value (Terriberry's update).
    #[inline]
    pub fn push(&mut self, x: f64) {
        let n1 = self.n as f64;
        self.n += 1;
        let n = self.n as f64;
        let delta = x - self.mean;
        let delta_n = delta / n;
        let delta_n2 = delta_n * delta_n;
        let term1 = delta * delta_n * n1;
        self.mean += delta_n;
        self.m4 += term1 * delta_n2 * (n * n - 3.0 * n + 3.0) + 6.0 * delta_n2 * self.m2
            - 4.0 * delta_n * self.m3;
        self.m3 += term1 * delta_n * (n - 2.0) - 3.0 * delta_n * self.m2;
        self.m2 += term1;
    }

    /// Combine with the moments of a disjoint sample (Pébay's pairwise formulas).
    pub fn merge(&mut self, other: &Moments) {
        if other.n == 0 {
            return;
        }
        if self.n == 0 {
            *self = *other;
            return;
        }
        let na = self.n as f64;
        let nb = other.n as f64;
        let n = na + nb;
        let delta = other.mean - self.mean;
        let d2 = delta * delta;
        let d3 = d2 * delta;
        let d4 = d2 * d2;
        let m2 = self.m2 + other.m2 + d2 * na * nb / n;
        let m3 = self.m3
            + other.m3
            + d3 * na * nb * (na - nb) / (n * n)
            + 3.0 * delta * (na * other.m2 - nb * self.m2) / n;
        let m4 = self.m4
            + other.m4
            + d4 * na * nb * (na * na - na * nb + nb * nb) / (n * n * n)
            + 6.0 * d2 * (na * na * other.m2 + nb * nb * self.m2) / (n * n)
            + 4.0 * delta * (na * other.m3 - nb * self.m3) / n;
        // Weighted mean form keeps the result inside [min(mean_a, mean_b), max(...)].
        self.mean = (na * self.mean + nb * other.mean) / n;
        self.m2 = m2;
        self.m3 = m3;
        self.m4 = m4;
        self.n += other.n;
    }

    /// Population variance `M2 / n` (numpy `var(ddof=0)`); `None` when empty.
    pub fn variance_population(&self) -> Option<f64> {
        (self.n > 0).then(|| self.m2 / self.n as f64)
    }

    /// Sample variance `M2 / (n − 1)` (numpy `var(ddof=1)`); `None` when n < 2.
    pub fn variance_sample(&self) -> Option<f64> {
        (self.n > 1).then(|| self.m2 / (self.n - 1) as f64)
    }

    /// Biased sample skewness `g1 = √n M3 / M2^{3/2}` (scipy `skew(bias=True)`).
    pub fn skewness(&self) -> Option<f64> {
        (self.n > 0 && self.m2 > 0.0).then(|| {
            let n = self.n as f64;
            n.sqrt() * self.m3 / self.m2.powf(1.5)
        })
    }

    /// Biased excess kurtosis `g2 = n M4 / M2² − 3` (scipy `kurtosis(fisher=True, bias=True)`).
    pub fn excess_kurtosis(&self) -> Option<f64> {
        (self.n > 0 && self.m2 > 0.0).then(|| {
            let n = self.n as f64;
            n * self.m4 / (self.m2 * self.m2) - 3.0
        })
    }
}

/// Lanes of [`ShiftedSums`]: lane i takes the values at i mod 16.
const LANES: usize = 16;

/// Power sums `S_p = Σ (x − c)^p`, p = 1..4, of f32 values about a fixed shift c, kept in
/// [`LANES`] lanes across any number of [`Self::add`] calls and converted once, by
/// [`Self::finish`], into central sums: with `e = S1/n`, exactly `M2 = S2 − n e²`,
/// `M3 = S3 − 3e S2 + 2n e³`, `M4 = S4 − 4e S3 + 6e² S2 − 3n e⁴`. Rounding grows with
/// `e²/variance`, so callers shift by an estimate of the mean (the running mean, or a value
/// of the data): gradients then have `|e|` well below the spread, and the result agrees with
/// the two-pass [`Moments::from_block`] to a few ulps. A shift at one of the values that lies
/// far out costs at most about n ulps: that value's own term in `M_p` is then `e^p`-sized.
///
/// Why lanes kept across calls: the agent adds a decode block at a time in pieces of 256
/// values; folding the lanes and merging (Pébay, with its divisions) per piece had cost as
/// much as the sums themselves. The four sums run in one loop, their lanes in registers.
#[derive(Debug, Clone)]
pub struct ShiftedSums {
    shift: f64,
    n: u64,
    s1: [f64; LANES],
    s2: [f64; LANES],
    s3: [f64; LANES],
    s4: [f64; LANES],
}

impl ShiftedSums {
    pub fn new(shift: f64) -> Self {
        Self {
            shift,
            n: 0,
            s1: [0.0; LANES],
            s2: [0.0; LANES],
            s3: [0.0; LANES],
            s4: [0.0; LANES],
        }
    }

    /// Add the values' power sums. Each call starts again at lane 0.
    #[inline(always)]
    pub fn add(&mut self, xs: &[f32]) {
        // Local copies indexed only by constants stay in registers for the whole loop.
        let (mut a1, mut a2, mut a3, mut a4) = (self.s1, self.s2, self.s3, self.s4);
        let c = self.shift;
        let mut row = |d: [f64; LANES]| {
            for j in 0..LANES {
                let d2 = d[j] * d[j];
                a1[j] += d[j];
                a2[j] += d2;
                a3[j] += d2 * d[j];
                a4[j] += d2 * d2;
            }
        };
        let (rows, rest) = xs.as_chunks::<LANES>();
        for r in rows {
            row(r.map(|x| f64::from(x) - c));
        }
        if !rest.is_empty() {
            // Zero deviations add nothing.
            let mut d = [0.0f64; LANES];
            for (d, &x) in d.iter_mut().zip(rest) {
                *d = f64::from(x) - c;
            }
            row(d);
        }
        (self.s1, self.s2, self.s3, self.s4) = (a1, a2, a3, a4);
        self.n += xs.len() as u64;
    }

    /// The moments of the values added, and their `Σ x²` when the identity
    /// `Σ x² = S2 + 2c S1 + n c²` is accurate: while `4n c² ≤ S2` — the shift within half the
    /// values' spread about it, as for gradients, whose mean is far below their spread — every
    /// term is at most a few times `Σ x²` (|2c S1| ≤ n c² + S2, and `‖x‖ ≥ √S2 − √n |c|`), so
    /// it is good to about ten ulps. `None` otherwise (a constant block, or one far from the
    /// shift): the caller sums the squares ([`sum_sq_f32`]).
    pub fn finish(&self) -> (Moments, Option<f64>) {
        if self.n == 0 {
            return (Moments::new(), Some(0.0));
        }
        let [s1, s2, s3, s4] = [self.s1, self.s2, self.s3, self.s4].map(fold_lanes);
        let (n, c) = (self.n as f64, self.shift);
        let sq = (4.0 * n * c * c <= s2).then_some(s2 + 2.0 * c * s1 + n * c * c);
        let e = s1 / n;
        let e2 = e * e;
        let moments = Moments {
            n: self.n,
            mean: c + e,
            m2: (s2 - n * e2).max(0.0),
            m3: s3 - 3.0 * e * s2 + 2.0 * n * e2 * e,
            m4: (s4 - 4.0 * e * s3 + 6.0 * e2 * s2 - 3.0 * n * e2 * e2).max(0.0),
        };
        (moments, sq)
    }
}

/// `Σ x²` of f32 values in [`LANES`] lanes.
#[inline(always)]
pub fn sum_sq_f32(xs: &[f32]) -> f64 {
    let mut acc = [0.0f64; LANES];
    let (rows, rest) = xs.as_chunks::<LANES>();
    for r in rows {
        for j in 0..LANES {
            acc[j] += f64::from(r[j]) * f64::from(r[j]);
        }
    }
    for (a, &x) in acc.iter_mut().zip(rest) {
        *a += f64::from(x) * f64::from(x);
    }
    fold_lanes(acc)
}

/// The lanes added pairwise.
#[inline(always)]
fn fold_lanes(mut a: [f64; LANES]) -> f64 {
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            a[i] += a[i + width];
        }
    }
    a[0]
}

/// Add f(x) of the values at i mod L into `acc[i]`; `xs.len()` is a multiple of L.
#[inline(always)]
fn add_lanes<const L: usize>(acc: &mut [f64; L], xs: &[f64], f: impl Fn(f64) -> f64) {
    for c in xs.chunks_exact(L) {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
}

/// Σ f(x) with four independent accumulators, so the additions pipeline (and vectorise)
/// instead of waiting on one another.
#[inline(always)]
pub(crate) fn lanes_sum(xs: &[f64], f: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let chunks = xs.chunks_exact(4);
    let rest = chunks.remainder();
    for c in chunks {
        acc[0] += f(c[0]);
        acc[1] += f(c[1]);
        acc[2] += f(c[2]);
        acc[3] += f(c[3]);
    }
    for &x in rest {
        acc[0] += f(x);
    }
    (acc[0] + acc[1]) + (acc[2] + acc[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The single-loop form `from_block_with_sum` had before its passes were split: the
    /// split must give the same bits.
    fn one_loop(xs: &[f64], sum: f64) -> (f64, f64, f64, f64) {
        let n = xs.len() as f64;
        let mean = sum / n;
        let (mut a1, mut a2, mut a3, mut a4) = ([0.0f64; 8], [0.0f64; 8], [0.0f64; 8], [0.0f64; 8]);
        let chunks = xs.chunks_exact(8);
        let rest = chunks.remainder();
        for c in chunks {
            for lane in 0..8 {
                let d = c[lane] - mean;
                let d2 = d * d;
                a1[lane] += d;
                a2[lane] += d2;
                a3[lane] += d2 * d;
                a4[lane] += d2 * d2;
            }
        }
        for &x in rest {
            let d = x - mean;
            let d2 = d * d;
            a1[0] += d;
            a2[0] += d2;
            a3[0] += d2 * d;
            a4[0] += d2 * d2;
        }
        let fold = |l: [f64; 8]| ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7]));
        let [s1, s2, s3, s4] = [a1, a2, a3, a4].map(fold);
        let corr = s1 / n;
        (mean + corr, s2 - n * corr * corr, s3, s4)
    }

    /// Σx² of an f32 block against an exact sum (f64 squares of f32 values are exact; their
    /// sum in long double-free form via two-sum compensation), with the shift near the values
    /// (the identity) and far from them (the direct sum), including zeros and a constant block.
    #[test]
    fn f32_blocks_sum_of_squares_is_accurate_near_and_far_from_the_shift() {
        fn exact(xs: &[f32]) -> f64 {
            // Neumaier's compensated sum of the (exact) squares.
            let (mut sum, mut c) = (0.0f64, 0.0f64);
            for &x in xs {
                let v = f64::from(x) * f64::from(x);
                let t = sum + v;
                c += if sum.abs() >= v {
                    (sum - t) + v
                } else {
                    (v - t) + sum
                };
                sum = t;
            }
            sum + c
        }
        let mut r = crate::rng::SplitMix64::new(5);
        let mut unif = || (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
        let gradient: Vec<f32> = (0..256).map(|_| (unif() * 1e-3) as f32).collect();
        let offset: Vec<f32> = (0..200).map(|_| (1e3 + unif()) as f32).collect();
        let tiny: Vec<f32> = (0..256).map(|_| (unif() * 1e-6) as f32).collect();
        let constant = vec![3.0f32; 100];
        let zeros = vec![0.0f32; 17];
        for (xs, shifts) in [
            (&gradient, [0.0, 1e-7, 1e-2, -5.0]),
            (&offset, [1e3, 999.9, 0.0, 1e6]),
            (&tiny, [0.0, 1e-9, 1e3, -1e6]),
            (&constant, [3.0, 0.0, 2.5, 1e9]),
            (&zeros, [0.0, 1.0, -1e-30, 1e30]),
        ] {
            let want = exact(xs);
            for shift in shifts {
                let mut sums = ShiftedSums::new(shift);
                sums.add(xs);
                let (m, sq) = sums.finish();
                assert_eq!(m.n, xs.len() as u64);
                // The identity where it holds, else the direct sum the caller takes.
                let far = 4.0 * xs.len() as f64 * shift * shift > 4.0 * want + 1e-300;
                assert!(
                    !far || sq.is_none(),
                    "shift {shift}: the identity taken far out"
                );
                let sq = sq.unwrap_or_else(|| sum_sq_f32(xs));
                assert!(
                    (sq - want).abs() <= 1e-14 * want,
                    "shift {shift}: {sq} against {want}"
                );
            }
        }
    }

    /// Sums kept across calls of uneven lengths (each restarting at lane 0) give the two-pass
    /// moments of all the values, for shifts at the first value, the mean and a few deviations off it.
    #[test]
    fn shifted_sums_across_calls_match_two_pass() {
        let mut r = crate::rng::SplitMix64::new(3);
        let xs: Vec<f32> = (0..5000)
            .map(|_| (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.3)
            .map(|u| (u * u * u * 1e-2 + 1e-4) as f32)
            .collect();
        let wide: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
        let (mean, m2, m3, m4) = two_pass(&wide);
        for shift in [wide[0], mean, 2e-3] {
            let mut sums = ShiftedSums::new(shift);
            for piece in [&xs[..1], &xs[1..257], &xs[257..1000], &xs[1000..]] {
                sums.add(piece);
            }
            let (m, _) = sums.finish();
            assert_eq!(m.n, 5000);
            let close = |a: f64, b: f64, scale: f64| (a - b).abs() <= 1e-11 * scale;
            assert!(close(m.mean, mean, m2.sqrt()), "shift {shift}");
            assert!(close(m.m2, m2, m2), "shift {shift}: {} vs {m2}", m.m2);
            assert!(
                close(m.m3, m3, m2.powf(1.5)),
                "shift {shift}: {} vs {m3}",
                m.m3
            );
            assert!(close(m.m4, m4, m4), "shift {shift}: {} vs {m4}", m.m4);
        }
    }

    /// The agent shifts a summary's first values by the first one, which may be an outlier.
    /// The rounding then grows with `n e^p`, but the outlier's own term in `M_p` is at least
    /// `e^p`-sized, so the moments stay good to about `n` ulps of themselves.
    #[test]
    fn a_first_value_far_out_as_the_shift_costs_at_most_n_ulps() {
        let mut r = crate::rng::SplitMix64::new(9);
        let mut xs = vec![1e4f32];
        xs.extend(
            (0..5000).map(|_| ((r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 - 0.5) as f32),
        );
        let wide: Vec<f64> = xs.iter().map(|&x| f64::from(x)).collect();
        let (mean, m2, m3, m4) = two_pass(&wide);
        let mut sums = ShiftedSums::new(wide[0]);
        sums.add(&xs);
        let (m, _) = sums.finish();
        let bound = 8.0 * xs.len() as f64 * f64::EPSILON;
        for (got, want) in [(m.mean, mean), (m.m2, m2), (m.m3, m3), (m.m4, m4)] {
            assert!((got - want).abs() <= bound * want.abs(), "{got} vs {want}");
        }
    }

    #[test]
    fn split_passes_give_the_single_loops_bits() {
        let mut r = crate::rng::SplitMix64::new(11);
        for len in [1usize, 7, 8, 9, 255, 256, 257, 1000, 4099] {
            let xs: Vec<f64> = (0..len)
                .map(|_| (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 3.0 - 1.0)
                .map(|u| u.powi(3) * 1e-3)
                .collect();
            let sum = lanes_sum(&xs, |x| x);
            let m = Moments::from_block_with_sum(&xs, sum);
            let (mean, m2, m3, m4) = one_loop(&xs, sum);
            assert_eq!(
                [m.mean, m.m2, m.m3, m.m4].map(f64::to_bits),
                [mean, m2, m3, m4].map(f64::to_bits),
                "len {len}"
            );
        }
    }

    fn two_pass(xs: &[f64]) -> (f64, f64, f64, f64) {
        let n = xs.len() as f64;
        let mean = xs.iter().sum::<f64>() / n;
        let mut m = (0.0, 0.0, 0.0);
        for &x in xs {
            let d = x - mean;
            m.0 += d * d;
            m.1 += d * d * d;
            m.2 += d * d * d * d;
        }
        (mean, m.0, m.1, m.2)
    }

    #[test]
    fn streaming_matches_two_pass_closed_form() {
        let xs: Vec<f64> = (0..1000)
            .map(|i| ((i * 7919) % 1013) as f64 / 37.0 - 9.0)
            .collect();
        let m = Moments::from_slice(&xs);
        let (mean, m2, m3, m4) = two_pass(&xs);
        assert_eq!(m.n, 1000);
        assert!((m.mean - mean).abs() < 1e-12);
        assert!((m.m2 - m2).abs() < 1e-9 * m2.abs());
        assert!((m.m3 - m3).abs() < 1e-9 * m2.abs().powf(1.5));
        assert!((m.m4 - m4).abs() < 1e-9 * m4.abs());
    }

    #[test]
    fn merge_with_empty_is_identity() {
        let a = Moments::from_slice(&[1.0, 2.0, 4.0]);
        let mut b = a;
        b.merge(&Moments::new());
        assert_eq!(a, b);
        let mut e = Moments::new();
        e.merge(&a);
        assert_eq!(a, e);
    }

    #[test]
    fn shape_statistics_of_a_known_sample() {
        // x = [1, 2, 3, 4, 10]: mean 4, M2 = 50, M3 = 180, M4 = 1394 (by hand).
        let m = Moments::from_slice(&[1.0, 2.0, 3.0, 4.0, 10.0]);
        assert!((m.m2 - 50.0).abs() < 1e-12);
        assert!((m.m3 - 180.0).abs() < 1e-10);
        assert!((m.m4 - 1394.0).abs() < 1e-9);
        let g1 = 5f64.sqrt() * 180.0 / 50f64.powf(1.5);
        assert!((m.skewness().unwrap() - g1).abs() < 1e-12);
        let g2 = 5.0 * 1394.0 / 2500.0 - 3.0;
        assert!((m.excess_kurtosis().unwrap() - g2).abs() < 1e-12);
    }
}
