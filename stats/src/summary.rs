//! The per-shard gradient summary an agent sends for one tensor at one step.
//!
//! It bundles every mergeable statistic of DESIGN.md §3.1 over a multiset of values:
//! * [`Moments`] (count, mean, M2..M4) of the finite values — Pébay merge;
//! * `Σ x²` (squared L2 norm) — merges by addition;
//! * `max |x|` — merges by max;
//! * counts of NaN, +Inf, −Inf, and of positive, negative and zero finite values — add;
//! * a [`LogHistogram`] of `|x|` over finite non-zero values — adds counts, exact;
//! * the [`TopK`] largest `|x|` over finite values — exact (see its module).
//!
//! Guarantee: for any split of a sample into parts, merging the parts' summaries gives the
//! summary of the whole: exactly for counts, max, histogram and top-k; to rounding for the
//! moments and `Σ x²`. NaN/Inf never enter the moments, so one bad value cannot poison them.

use crate::loghist::LaneCounter;
use crate::moments::{ShiftedSums, sum_sq_f32};
use crate::{LogHistogram, Moments, SparseHistogram, StatsError, TopK};

/// Values summarised per block on the fast path.
pub const BLOCK: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub struct GradSummary {
    pub moments: Moments,
    pub sum_sq: f64,
    pub max_abs: f64,
    pub nan_count: u64,
    pub pos_inf_count: u64,
    pub neg_inf_count: u64,
    pub pos_count: u64,
    pub neg_count: u64,
    pub zero_count: u64,
    pub abs_hist: LogHistogram,
    pub top_abs: TopK,
}

impl GradSummary {
    pub fn new(top_k: usize, hist_precision_bits: u32) -> Result<Self, StatsError> {
        Ok(Self {
            moments: Moments::new(),
            sum_sq: 0.0,
            max_abs: 0.0,
            nan_count: 0,
            pos_inf_count: 0,
            neg_inf_count: 0,
            pos_count: 0,
            neg_count: 0,
            zero_count: 0,
            abs_hist: LogHistogram::new(hist_precision_bits)?,
            top_abs: TopK::new(top_k),
        })
    }

    /// Record one value.
    #[inline]
    pub fn push(&mut self, x: f64) {
        if x.is_nan() {
            self.nan_count += 1;
            return;
        }
        if x.is_infinite() {
            if x > 0.0 {
                self.pos_inf_count += 1;
            } else {
                self.neg_inf_count += 1;
            }
            return;
        }
        self.moments.push(x);
        self.sum_sq += x * x;
        let a = x.abs();
        if a > self.max_abs {
            self.max_abs = a;
        }
        if x > 0.0 {
            self.pos_count += 1;
        } else if x < 0.0 {
            self.neg_count += 1;
        } else {
            self.zero_count += 1;
        }
        if a > 0.0 {
            self.abs_hist.record(a);
        }
        // Cheap reject before touching the heap: most values are below the k-th largest.
        match self.top_abs.threshold() {
            Some(t) if a <= t => {}
            _ => self.top_abs.push(a),
        }
    }

    pub fn extend_f64(&mut self, xs: &[f64]) {
        self.extend_values(xs.iter().copied());
    }

    pub fn extend_f32(&mut self, xs: &[f32]) {
        self.f32_stream().push(xs);
    }

    /// Summarise f32 values that arrive in pieces (e.g. decoded a block at a time). The
    /// histogram's count lanes live as long as the stream and are added into `abs_hist` once,
    /// when it is dropped: adding them up costs a pass over the bucket range, too much per
    /// small piece.
    pub fn f32_stream(&mut self) -> F32Stream<'_> {
        F32Stream {
            summary: self,
            counter: LaneCounter::default(),
        }
    }

    #[inline(always)]
    fn extend_f32_blocks(&mut self, xs: &[f32], counter: &mut LaneCounter) {
        // Scratch for every block of the call: zeroing it per block costs as much as a pass.
        let mut slots = [0u32; BLOCK];
        // The finite blocks' power sums, about one shift for the call, are converted and
        // merged once at its end. The shift is the running mean (on a summary's first call,
        // its first finite value): the mean is then close to it and the sums lose nothing to
        // cancellation (see `ShiftedSums` for the bound when that first value lies far out).
        let shift = if self.moments.n > 0 {
            self.moments.mean
        } else {
            xs.iter()
                .find(|x| x.is_finite())
                .map_or(0.0, |&x| f64::from(x))
        };
        let mut sums = ShiftedSums::new(shift);
        for block in xs.chunks(BLOCK) {
            // One pass over the bit patterns of |x|, which for finite values order like the
            // values: extremes, signs, and whether the block is all finite (patterns of NaN
            // and ±Inf are the largest).
            let (mut max, mut min_pos_less_1, mut nonzero, mut neg) = (0u32, u32::MAX, 0u32, 0u32);
            for &x in block {
                let b = x.to_bits() & 0x7fff_ffff;
                max = max.max(b);
                // Zero wraps to u32::MAX, so the minimum is over the non-zero patterns.
                min_pos_less_1 = min_pos_less_1.min(b.wrapping_sub(1));
                nonzero += u32::from(b != 0);
                neg += (x.to_bits() >> 31) & u32::from(b != 0);
            }
            // Gradients are almost always all finite: such a block takes the fused f32 path,
            // which skips the per-value gather of `extend_values`.
            if max < f32::INFINITY.to_bits() {
                let extremes = Extremes {
                    max,
                    min_pos: min_pos_less_1.wrapping_add(1),
                    nonzero,
                    neg,
                };
                sums.add(block);
                self.absorb_finite_f32(block, extremes, counter, &mut slots);
            } else {
                self.extend_values(block.iter().map(|&x| f64::from(x)));
            }
        }
        let (moments, sum_sq) = sums.finish();
        self.moments.merge(&moments);
        self.sum_sq += sum_sq.unwrap_or_else(|| {
            // Far from the shift the identity for Σx² would cancel: the finite blocks'
            // squares are summed (rare: a constant tensor, or one far from its running mean).
            xs.chunks(BLOCK)
                .filter(|b| b.iter().all(|x| x.is_finite()))
                .map(sum_sq_f32)
                .sum()
        });
    }

    /// Add a block (at most [`BLOCK`]) of finite f32 values whose `|x|` bit patterns have the
    /// given extremes, all but their moments (the caller's [`ShiftedSums`]). The histogram
    /// counts in interleaved lanes, and the top-k is only visited by blocks whose largest `|x|`
    /// beats its current k-th largest. Equal to [`Self::absorb_finite`] on the widened values
    /// (to rounding for the sums).
    #[inline(always)]
    fn absorb_finite_f32(
        &mut self,
        xs: &[f32],
        e: Extremes,
        counter: &mut LaneCounter,
        slots: &mut [u32; BLOCK],
    ) {
        let n = xs.len();
        self.pos_count += u64::from(e.nonzero - e.neg);
        self.neg_count += u64::from(e.neg);
        self.zero_count += u64::from(n as u32 - e.nonzero);
        let zeros = n as u32 - e.nonzero;
        counter.record_abs_f32(&self.abs_hist, xs, e.min_pos, e.max, zeros, slots);
        let max = f64::from(f32::from_bits(e.max));
        self.max_abs = self.max_abs.max(max);
        let abs = |j: usize| f64::from(f32::from_bits(xs[j].to_bits() & 0x7fff_ffff));
        // Until the top-k is full every value enters it.
        let mut first = 0;
        while first < n && self.top_abs.threshold().is_none() {
            self.top_abs.push(abs(first));
            first += 1;
        }
        let Some(mut threshold) = self.top_abs.threshold() else {
            return;
        };
        if first == n || max <= threshold {
            return;
        }
        // Candidates beat the threshold as it was on entry (it only rises): gathered branch-free
        // by comparing bit patterns against the largest f32 at or below it, then checked exactly.
        // (A threshold of 0, all zeros so far, admits exactly the positive values.)
        let floor = if threshold > 0.0 {
            f32_at_or_below(threshold).to_bits()
        } else {
            0
        };
        // One bit per value above the floor, 64 values a word: the comparisons vectorise and
        // only the few set bits are visited.
        for (w, word) in xs.chunks(64).enumerate() {
            let mut above = 0u64;
            for (i, &x) in word.iter().enumerate() {
                above |= u64::from(x.to_bits() & 0x7fff_ffff > floor) << i;
            }
            // Values before `first` are in the top-k already.
            let base = w * 64;
            if first > base {
                above &= u64::MAX.checked_shl((first - base) as u32).unwrap_or(0);
            }
            while above != 0 {
                let a = abs(base + above.trailing_zeros() as usize);
                above &= above - 1;
                if a > threshold {
                    self.top_abs.push(a);
                    threshold = self.top_abs.threshold().unwrap_or(f64::NEG_INFINITY);
                }
            }
        }
    }

    /// The fast path: values go through in blocks of [`BLOCK`]. Per block, finite values are
    /// gathered, counted and bucketed in one pass; their moments come from a two-pass block
    /// summary merged once per block (Pébay), which avoids the division per value of the
    /// one-pass update. The result equals pushing the values one by one (to rounding).
    pub fn extend_values(&mut self, xs: impl Iterator<Item = f64>) {
        let mut block = [0f64; BLOCK];
        let mut len = 0;
        for x in xs {
            if x.is_finite() {
                block[len] = x;
                len += 1;
                if len == BLOCK {
                    self.absorb_finite(&block);
                    len = 0;
                }
            } else if x.is_nan() {
                self.nan_count += 1;
            } else if x > 0.0 {
                self.pos_inf_count += 1;
            } else {
                self.neg_inf_count += 1;
            }
        }
        self.absorb_finite(&block[..len]);
    }

    /// Add a block of finite values.
    fn absorb_finite(&mut self, xs: &[f64]) {
        if xs.is_empty() {
            return;
        }
        let (mut pos, mut neg, mut max_abs) = (0u64, 0u64, self.max_abs);
        let mut abs = [0f64; BLOCK];
        for (a, &x) in abs.iter_mut().zip(xs) {
            pos += u64::from(x > 0.0);
            neg += u64::from(x < 0.0);
            *a = x.abs();
            // Values are finite here, so a plain compare (which vectorises) is exact.
            max_abs = if *a > max_abs { *a } else { max_abs };
        }
        let abs = &abs[..xs.len()];
        self.pos_count += pos;
        self.neg_count += neg;
        self.zero_count += xs.len() as u64 - pos - neg;
        self.sum_sq += crate::moments::lanes_sum(xs, |x| x * x);
        self.max_abs = max_abs;
        self.moments.merge(&Moments::from_block(xs));
        self.abs_hist.record_block(abs);
        // Most values are below the k-th largest: test against a cached threshold.
        let mut threshold = self.top_abs.threshold();
        for &a in abs {
            if threshold.is_none_or(|t| a > t) {
                self.top_abs.push(a);
                threshold = self.top_abs.threshold();
            }
        }
    }

    /// Number of values of every kind (finite, NaN, ±Inf).
    pub fn total_count(&self) -> u64 {
        self.moments.n + self.nan_count + self.pos_inf_count + self.neg_inf_count
    }

    /// L2 norm of the finite values.
    pub fn l2_norm(&self) -> f64 {
        self.sum_sq.sqrt()
    }

    /// Merge the summary of a disjoint sample.
    pub fn merge(&mut self, other: &GradSummary) -> Result<(), StatsError> {
        self.abs_hist.merge(&other.abs_hist)?;
        self.merge_rest(other);
        Ok(())
    }

    /// [`Self::merge`] of a summary kept with a sparse histogram: the same result as merging
    /// [`SparseSummary::to_dense`].
    pub fn merge_sparse(&mut self, other: &SparseSummary) -> Result<(), StatsError> {
        self.abs_hist.merge_sparse(&other.hist)?;
        self.merge_rest(&other.rest);
        Ok(())
    }

    /// Everything of [`Self::merge`] but the histogram.
    fn merge_rest(&mut self, other: &GradSummary) {
        self.moments.merge(&other.moments);
        self.sum_sq += other.sum_sq;
        self.max_abs = self.max_abs.max(other.max_abs);
        self.nan_count += other.nan_count;
        self.pos_inf_count += other.pos_inf_count;
        self.neg_inf_count += other.neg_inf_count;
        self.pos_count += other.pos_count;
        self.neg_count += other.neg_count;
        self.zero_count += other.zero_count;
        self.top_abs.merge(&other.top_abs);
    }

    /// Check the internal consistency of a summary received from outside.
    pub fn validate(&self) -> Result<(), StatsError> {
        self.validate_with_histogram_total(self.abs_hist.total())
    }

    /// [`Self::validate`] with the histogram's total given (that of a histogram kept apart).
    fn validate_with_histogram_total(&self, hist_total: u64) -> Result<(), StatsError> {
        let m = &self.moments;
        if m.n != self.pos_count + self.neg_count + self.zero_count {
            return Err(StatsError::Malformed("sign counts do not add up to count"));
        }
        if hist_total != self.pos_count + self.neg_count {
            return Err(StatsError::Malformed(
                "histogram total differs from non-zero count",
            ));
        }
        let finite = [m.mean, m.m2, m.m3, m.m4, self.sum_sq, self.max_abs];
        if finite.iter().any(|v| !v.is_finite()) {
            return Err(StatsError::Malformed("non-finite moment"));
        }
        if m.m2 < 0.0 || m.m4 < 0.0 || self.sum_sq < 0.0 || self.max_abs < 0.0 {
            return Err(StatsError::Malformed("negative even moment"));
        }
        if self.top_abs.len() as u64 > m.n || self.top_abs.len() > self.top_abs.capacity() {
            return Err(StatsError::Malformed("top-k longer than its sample"));
        }
        Ok(())
    }
}

/// A [`GradSummary`] whose histogram is kept in its sparse wire form ([`SparseHistogram`]), as
/// the collector holds each received part until it is merged into its step
/// ([`GradSummary::merge_sparse`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SparseSummary {
    /// Everything but the histogram; its `abs_hist` is empty, of `hist`'s precision.
    pub rest: GradSummary,
    pub hist: SparseHistogram,
}

impl SparseSummary {
    /// Join a summary without its histogram to the histogram, checking that they are one
    /// consistent summary (as [`GradSummary::validate`] does).
    pub fn new(rest: GradSummary, hist: SparseHistogram) -> Result<Self, StatsError> {
        if rest.abs_hist.total() != 0 {
            return Err(StatsError::Malformed(
                "a sparse summary's dense histogram must be empty",
            ));
        }
        if rest.abs_hist.precision_bits() != hist.precision_bits() {
            return Err(StatsError::PrecisionMismatch(
                rest.abs_hist.precision_bits(),
                hist.precision_bits(),
            ));
        }
        rest.validate_with_histogram_total(hist.total())?;
        Ok(Self { rest, hist })
    }

    /// `s` with its histogram made sparse.
    pub fn of(s: &GradSummary) -> Self {
        let mut rest = s.clone();
        rest.abs_hist = LogHistogram::new(s.abs_hist.precision_bits()).expect("valid precision");
        Self {
            rest,
            hist: SparseHistogram::of(&s.abs_hist),
        }
    }

    /// The same summary with a dense histogram.
    pub fn to_dense(&self) -> GradSummary {
        let mut s = self.rest.clone();
        s.abs_hist = self.hist.to_dense();
        s
    }
}

/// Extremes and sign counts of a block of finite f32 values, from the bit patterns of `|x|`.
#[derive(Debug, Clone, Copy)]
struct Extremes {
    /// Largest pattern, and smallest non-zero pattern (`u32::MAX` when all are zero).
    max: u32,
    min_pos: u32,
    /// Values that are not ±0, and those among them that are negative.
    nonzero: u32,
    neg: u32,
}

/// The largest f32 `f` with `f ≤ t`, for `t > 0` (`t` may not be an f32: summaries merge f64).
fn f32_at_or_below(t: f64) -> f32 {
    let f = t as f32;
    if f64::from(f) > t {
        f32::from_bits(f.to_bits() - 1)
    } else {
        f
    }
}

/// Pieces shorter than this skip the histogram's count lanes (see [`F32Stream::push`]).
const LANES_MIN_VALUES: usize = 4096;

/// A [`GradSummary`] being fed f32 pieces; see [`GradSummary::f32_stream`].
pub struct F32Stream<'a> {
    summary: &'a mut GradSummary,
    counter: LaneCounter,
}

impl F32Stream<'_> {
    /// Add `xs` to the summary.
    pub fn push(&mut self, xs: &[f32]) {
        if xs.len() < LANES_MIN_VALUES {
            // The lanes cost a pass over the bucket span (often thousands of buckets, as
            // gradients span many octaves) to clear and to drain: more than a short piece's
            // values take on the plain path, which counts straight into the histogram.
            self.summary.extend_values(xs.iter().map(|&x| f64::from(x)));
            return;
        }
        for part in xs.chunks(LaneCounter::CAPACITY as usize) {
            if self.counter.recorded() + part.len() as u64 > LaneCounter::CAPACITY {
                self.counter.drain_into(&mut self.summary.abs_hist);
            }
            // The loops are plain Rust; `dispatch` runs a copy compiled for the CPU's widest
            // vectors, with the same arithmetic (see `isa`).
            let (summary, counter) = (&mut *self.summary, &mut self.counter);
            crate::isa::dispatch(
                #[inline(always)]
                || summary.extend_f32_blocks(part, counter),
            );
        }
    }
}

impl Drop for F32Stream<'_> {
    fn drop(&mut self) {
        self.counter.drain_into(&mut self.summary.abs_hist);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_values_are_counted_not_mixed_in() {
        let mut s = GradSummary::new(3, 7).unwrap();
        s.extend_f64(&[
            1.0,
            -2.0,
            0.0,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            0.5,
        ]);
        assert_eq!(s.moments.n, 4);
        assert_eq!((s.nan_count, s.pos_inf_count, s.neg_inf_count), (1, 1, 1));
        assert_eq!((s.pos_count, s.neg_count, s.zero_count), (2, 1, 1));
        assert_eq!(s.max_abs, 2.0);
        assert_eq!(s.sum_sq, 1.0 + 4.0 + 0.25);
        assert_eq!(s.top_abs.sorted_desc(), vec![2.0, 1.0, 0.5]);
        assert_eq!(s.abs_hist.total(), 3);
        assert_eq!(s.total_count(), 7);
        s.validate().unwrap();
    }

    #[test]
    fn f32_blocks_with_and_without_non_finite_values_match_the_value_path() {
        // 17 blocks and a tail (long enough for the count lanes) over ~70 binades, with zeros
        // of both signs and f32 subnormals (whose f64 buckets the integer fast path cannot
        // compute) in the first block only, and a NaN and an Inf in the second block only.
        let mut xs: Vec<f32> = (0..17 * BLOCK + 17)
            .map(|i| ((i as f32) * 0.37).sin() * 2f32.powi((i % 70) as i32 - 40))
            .collect();
        xs[3] = 0.0;
        xs[4] = -0.0;
        xs[7] = f32::from_bits(1);
        xs[8] = -f32::from_bits(0x0040_0000);
        xs[2 * BLOCK + 3] = 0.0;
        xs[BLOCK + 5] = f32::NAN;
        xs[BLOCK + 9] = f32::NEG_INFINITY;
        assert!(xs.len() >= LANES_MIN_VALUES);
        for p in [1, 7, 16] {
            let mut fast = GradSummary::new(8, p).unwrap();
            fast.extend_f32(&xs);
            let mut reference = GradSummary::new(8, p).unwrap();
            for &x in &xs {
                reference.push(f64::from(x));
            }
            assert_eq!(fast.moments.n, reference.moments.n);
            assert_eq!((fast.nan_count, fast.neg_inf_count), (1, 1));
            assert_eq!(
                (fast.pos_count, fast.neg_count, fast.zero_count),
                (
                    reference.pos_count,
                    reference.neg_count,
                    reference.zero_count
                )
            );
            assert_eq!(fast.zero_count, 4, "sin(0) and the three planted zeros");
            assert_eq!(fast.abs_hist, reference.abs_hist, "precision {p}");
            assert_eq!(fast.top_abs.sorted_desc(), reference.top_abs.sorted_desc());
            assert_eq!(fast.max_abs, reference.max_abs);
            let close = |a: f64, b: f64| (a - b).abs() <= 1e-12 * b.abs().max(1e-300);
            assert!(close(fast.moments.mean, reference.moments.mean));
            assert!(close(fast.moments.m2, reference.moments.m2));
            assert!(close(fast.moments.m4, reference.moments.m4));
            assert!(close(fast.sum_sq, reference.sum_sq));
            fast.validate().unwrap();
        }
    }

    #[test]
    fn f32_top_k_matches_the_value_path_after_zeros_and_f64_thresholds() {
        // All-zero blocks first (threshold 0), then f64 values that are not f32 (a threshold
        // between two f32s), then f32 values straddling it.
        let t = 0.1f64 + 1e-12;
        let f64s: Vec<f64> = (0..8).map(|i| t + f64::from(i) * 1e-13).collect();
        let near: Vec<f32> = (0..17 * BLOCK)
            .map(|i| {
                (t as f32)
                    * (1.0 + ((i % 7) as f32 - 3.0) * 1e-7)
                    * if i % 2 == 0 { 1.0 } else { -1.0 }
            })
            .collect();
        let mut fast = GradSummary::new(8, 7).unwrap();
        let mut reference = GradSummary::new(8, 7).unwrap();
        // Long pieces go through the count lanes; the short one below does not.
        fast.extend_f32(&[0.0; 17 * BLOCK + 3]);
        reference.extend_values(std::iter::repeat_n(0.0, 17 * BLOCK + 3));
        assert_eq!(fast.top_abs.sorted_desc(), vec![0.0; 8]);
        fast.extend_f32(&[0.0, 1e-30, 0.0, 2e-30]);
        reference.extend_values(
            [0.0, 1e-30, 0.0, 2e-30]
                .iter()
                .map(|&x| f64::from(x as f32)),
        );
        assert_eq!(fast.top_abs.sorted_desc(), reference.top_abs.sorted_desc());
        fast.extend_f64(&f64s);
        reference.extend_f64(&f64s);
        fast.extend_f32(&near);
        for &x in &near {
            reference.push(f64::from(x));
        }
        assert_eq!(fast.top_abs.sorted_desc(), reference.top_abs.sorted_desc());
        let from_f32 = fast
            .top_abs
            .sorted_desc()
            .into_iter()
            .filter(|&a| f64::from(a as f32) == a)
            .count();
        assert!(from_f32 > 0, "the f32 values beat the f64 threshold");
    }

    #[test]
    fn every_instruction_set_gives_the_same_bits() {
        use crate::projection::{CountSketch, Projection};
        // Heavy-tailed values over many binades, a partial last block, and an odd offset.
        let mut rng = crate::rng::SplitMix64::new(3);
        let xs: Vec<f32> = (0..20_000 + 77)
            .map(|_| (rng.normal() / rng.uniform().max(1e-9).powf(0.7)) as f32)
            .collect();
        let runs = crate::isa::at_each_level(|| {
            let mut s = GradSummary::new(16, 7).unwrap();
            s.extend_f32(&xs);
            let mut out = vec![0.0; 256];
            CountSketch::new(256, 9).project_range(12_345, &xs, &mut out);
            let m = s.moments;
            let bits = [m.mean, m.m2, m.m3, m.m4, s.sum_sq].map(f64::to_bits);
            (s, bits, out.iter().map(|v| v.to_bits()).collect::<Vec<_>>())
        });
        assert!(!runs.is_empty());
        for (s, bits, out) in &runs[1..] {
            assert_eq!(s, &runs[0].0);
            assert_eq!(bits, &runs[0].1, "moments");
            assert_eq!(out, &runs[0].2, "projection");
        }
    }

    #[test]
    fn validate_catches_inconsistency() {
        let mut s = GradSummary::new(3, 7).unwrap();
        s.extend_f64(&[1.0, 2.0]);
        s.pos_count = 5;
        assert!(s.validate().is_err());
    }
}
