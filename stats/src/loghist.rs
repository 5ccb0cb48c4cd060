//! Relative-error log-bucketed histogram of positive values, mergeable by adding counts.
//!
//! A value `v > 0` goes to bucket `bits(v) >> (52 − p)` where `bits` is the IEEE-754 binary64
//! encoding: the index keeps the exponent and the top `p` mantissa bits (DESIGN.md §6). Bucket
//! `i` covers `[lo_i, hi_i)` with `lo_i = from_bits(i << (52 − p))`, so `hi_i − lo_i ≤ 2^−p · lo_i`.
//!
//! Guarantees:
//! * Every quantile is answered with the midpoint of the bucket that holds the exact order
//!   statistic, so its relative error is at most `2^−(p+1)` (0.39 % at the default p = 7) for
//!   every normal binary64 input. Values converted from f32/f16/bf16 are always normal in f64.
//! * Merge (adding counts per index) is exact: the histogram of a concatenation equals the merge
//!   of the histograms of its parts, whatever the split.
//!
//! Unlike DDSketch's default floor (1e-9) or HdrHistogram (integers), the range is the full
//! f64 range, which gradients need (they go far below 1e-9).

use std::sync::OnceLock;

use crate::StatsError;
use crate::summary::BLOCK;

/// Count lanes per bucket of a [`LaneCounter`].
const LANES: usize = 4;

/// Default mantissa bits: relative error ≤ 2^-8 ≈ 0.39 %.
pub const DEFAULT_PRECISION_BITS: u32 = 7;
/// Largest supported precision (bucket count grows as 2^p per binade).
pub const MAX_PRECISION_BITS: u32 = 16;

/// Log-bucketed histogram; counts are stored densely over a range that holds every index seen
/// (it may have empty buckets at its ends: see [`LogHistogram::cover`]).
#[derive(Debug, Clone)]
pub struct LogHistogram {
    precision_bits: u32,
    /// Index of `counts[0]`.
    offset: u64,
    counts: Vec<u64>,
    total: u64,
}

/// Two histograms are equal when they count the same values: empty buckets at the ends of the
/// stored range do not matter.
impl PartialEq for LogHistogram {
    fn eq(&self, other: &Self) -> bool {
        fn occupied(h: &LogHistogram) -> (u64, &[u64]) {
            let Some(first) = h.counts.iter().position(|&c| c > 0) else {
                return (0, &[]);
            };
            let last = h.counts.iter().rposition(|&c| c > 0).unwrap_or(first);
            (h.offset + first as u64, &h.counts[first..=last])
        }
        self.precision_bits == other.precision_bits
            && self.total == other.total
            && occupied(self) == occupied(other)
    }
}

impl Eq for LogHistogram {}

impl Default for LogHistogram {
    fn default() -> Self {
        Self::new(DEFAULT_PRECISION_BITS).expect("default precision is valid")
    }
}

/// A histogram as the wire carries it: its occupied buckets only, indices strictly increasing,
/// counts positive, all within one span of 2^24 buckets (what [`LogHistogram::from_sparse`]
/// accepts). The collector keeps each report's histogram in this form and adds it into a
/// step's dense histogram ([`LogHistogram::merge_sparse`]): expanding it first cost a zeroed
/// allocation over its whole range (thousands of buckets) per tensor and report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SparseHistogram {
    precision_bits: u32,
    index: Vec<u64>,
    count: Vec<u64>,
    total: u64,
}

impl SparseHistogram {
    /// The (index, count) vectors, for a caller that reuses their allocations; this
    /// histogram is left empty.
    pub fn take_parts(&mut self) -> (Vec<u64>, Vec<u64>) {
        self.total = 0;
        (
            std::mem::take(&mut self.index),
            std::mem::take(&mut self.count),
        )
    }

    /// Check and keep (index, count) pairs, as carried on the wire.
    pub fn new(precision_bits: u32, index: Vec<u64>, count: Vec<u64>) -> Result<Self, StatsError> {
        LogHistogram::new(precision_bits)?;
        let total = check_sparse(precision_bits, &index, &count)?;
        Ok(Self {
            precision_bits,
            index,
            count,
            total,
        })
    }

    /// The occupied buckets of `h`.
    pub fn of(h: &LogHistogram) -> Self {
        let (index, count) = h.sparse();
        Self {
            precision_bits: h.precision_bits,
            index,
            count,
            total: h.total,
        }
    }

    pub fn precision_bits(&self) -> u32 {
        self.precision_bits
    }

    /// Number of values counted.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Number of occupied buckets.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// First and last occupied bucket, `None` when empty.
    pub fn span(&self) -> Option<(u64, u64)> {
        Some((*self.index.first()?, *self.index.last()?))
    }

    /// The dense histogram of the same counts.
    pub fn to_dense(&self) -> LogHistogram {
        let mut h = LogHistogram::new(self.precision_bits).expect("precision checked in new");
        h.merge_sparse(self).expect("same precision");
        h
    }
}

/// Validate sparse (index, count) pairs: same lengths, indices strictly increasing within one
/// span of 2^24 buckets and below the +Inf bucket, counts positive. Returns their total.
fn check_sparse(precision_bits: u32, indices: &[u64], counts: &[u64]) -> Result<u64, StatsError> {
    if indices.len() != counts.len() {
        return Err(StatsError::Malformed(
            "histogram index/count lengths differ",
        ));
    }
    // Indices of finite positive values stay below the +Inf bucket.
    let limit = f64::INFINITY.to_bits() >> (52 - precision_bits);
    let mut prev: Option<u64> = None;
    let mut total = 0u64;
    for (&i, &c) in indices.iter().zip(counts) {
        if prev.is_some_and(|p| i <= p) {
            return Err(StatsError::Malformed("histogram indices not increasing"));
        }
        if i >= limit || i == 0 || c == 0 {
            return Err(StatsError::Malformed("histogram bucket out of range"));
        }
        if indices.len() > 1 && i - indices[0] > (1 << 24) {
            return Err(StatsError::Malformed("histogram spans too many buckets"));
        }
        total = total
            .checked_add(c)
            .ok_or(StatsError::Malformed("histogram counts overflow"))?;
        prev = Some(i);
    }
    Ok(total)
}

impl LogHistogram {
    pub fn new(precision_bits: u32) -> Result<Self, StatsError> {
        if !(1..=MAX_PRECISION_BITS).contains(&precision_bits) {
            return Err(StatsError::InvalidPrecision(precision_bits));
        }
        Ok(Self {
            precision_bits,
            offset: 0,
            counts: Vec::new(),
            total: 0,
        })
    }

    pub fn precision_bits(&self) -> u32 {
        self.precision_bits
    }

    /// Guaranteed relative error of [`Self::quantile`]: `2^−(p+1)`.
    pub fn relative_error(&self) -> f64 {
        0.5f64.powi(self.precision_bits as i32 + 1)
    }

    /// Number of values recorded.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Bucket index of a positive finite value.
    #[inline]
    pub fn index_of(&self, v: f64) -> u64 {
        v.to_bits() >> (52 - self.precision_bits)
    }

    /// Lower and upper bound of bucket `index`.
    pub fn bucket_bounds(&self, index: u64) -> (f64, f64) {
        let shift = 52 - self.precision_bits;
        (
            f64::from_bits(index << shift),
            f64::from_bits((index + 1) << shift),
        )
    }

    /// `ln` of the lower bound of bucket `index` (the upper bound of bucket `index − 1`). A
    /// normal edge is `2^(e−1023) · (1 + k/2^p)`, so its log is `(e − 1023) ln 2` plus one of
    /// 2^p mantissa logs, tabulated once per process: a fit over thousands of buckets then pays
    /// no `ln` per edge. Subnormal edges (below 2.2e−308) take `ln` directly.
    pub fn ln_lower_edge(&self, index: u64) -> f64 {
        let p = self.precision_bits;
        let exponent = index >> p;
        if exponent == 0 {
            return f64::from_bits(index << (52 - p)).ln();
        }
        let mantissa = (index & ((1 << p) - 1)) as usize;
        (exponent as f64 - 1023.0) * std::f64::consts::LN_2 + ln_mantissas(p)[mantissa]
    }

    /// Record a positive finite value; other values are ignored (the caller counts them).
    #[inline]
    pub fn record(&mut self, v: f64) {
        if v > 0.0 && v.is_finite() {
            self.add_count(self.index_of(v), 1);
        }
    }

    /// Record a block of finite values (non-positive ones are skipped). Indices are computed
    /// first and the dense range grown once, so the counting loop has no growth branches.
    pub fn record_block(&mut self, xs: &[f64]) {
        let shift = 52 - self.precision_bits;
        let mut idx = [0u64; 256];
        for block in xs.chunks(idx.len()) {
            let mut n = 0;
            let (mut lo, mut hi) = (u64::MAX, 0u64);
            for &x in block {
                // Finite and > 0: bit patterns of positive finite doubles lie in (0, +Inf).
                let bits = x.to_bits();
                if bits.wrapping_sub(1) < f64::INFINITY.to_bits() - 1 {
                    let i = bits >> shift;
                    idx[n] = i;
                    n += 1;
                    lo = lo.min(i);
                    hi = hi.max(i);
                }
            }
            if n == 0 {
                continue;
            }
            // Make [lo, hi] addressable, then count without range checks per value.
            self.cover(lo, hi);
            let offset = self.offset;
            let counts = &mut self.counts[(lo - offset) as usize..=(hi - offset) as usize];
            for &i in &idx[..n] {
                counts[(i - lo) as usize] += 1;
            }
            self.total += n as u64;
        }
    }

    #[inline]
    fn add_count(&mut self, index: u64, count: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(0);
        } else if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat_n(0, grow));
            self.offset = index;
        } else if index >= self.offset + self.counts.len() as u64 {
            self.counts.resize((index - self.offset + 1) as usize, 0);
        }
        self.counts[(index - self.offset) as usize] += count;
        self.total += count;
    }

    /// Make buckets `lo..=hi` addressable with at most one allocation and one copy (growing at
    /// the front and then the back, as two `add_count`s would, copied the counts twice; merges
    /// of tensors with different ranges into a layer or the model did that for every tensor).
    pub fn cover(&mut self, lo: u64, hi: u64) {
        debug_assert!(lo <= hi);
        if self.counts.is_empty() {
            self.offset = lo;
            self.counts = vec![0; (hi - lo + 1) as usize];
            return;
        }
        let end = self.offset + self.counts.len() as u64 - 1;
        if lo >= self.offset && hi <= end {
            return;
        }
        if lo >= self.offset {
            self.counts.resize((hi - self.offset + 1) as usize, 0);
            return;
        }
        let (new_lo, new_hi) = (lo, hi.max(end));
        let mut counts = vec![0; (new_hi - new_lo + 1) as usize];
        let at = (self.offset - new_lo) as usize;
        counts[at..at + self.counts.len()].copy_from_slice(&self.counts);
        self.counts = counts;
        self.offset = new_lo;
    }

    /// The addressable bucket range `(first, last)` (what [`Self::cover`] last made
    /// addressable; it may hold empty buckets at its ends), `None` when empty.
    pub fn span(&self) -> Option<(u64, u64)> {
        let n = self.counts.len() as u64;
        (n > 0).then(|| (self.offset, self.offset + n - 1))
    }

    /// Add every count of `other` (same precision required).
    pub fn merge(&mut self, other: &LogHistogram) -> Result<(), StatsError> {
        if other.precision_bits != self.precision_bits {
            return Err(StatsError::PrecisionMismatch(
                self.precision_bits,
                other.precision_bits,
            ));
        }
        if other.counts.is_empty() {
            return Ok(());
        }
        self.add_dense(other.offset, other.counts.iter().copied());
        Ok(())
    }

    /// Add the `j`-th count to bucket `offset + j`: grow once to cover the range, then add
    /// slice-wise.
    fn add_dense(&mut self, offset: u64, counts: impl ExactSizeIterator<Item = u64>) {
        let Some(last) = counts.len().checked_sub(1) else {
            return;
        };
        self.cover(offset, offset + last as u64);
        let start = (offset - self.offset) as usize;
        // The total in a local: added to `self.total` inside the loop, it made every iteration
        // wait for the previous one's store (and kept the loop scalar).
        let mut added = 0u64;
        for (a, b) in self.counts[start..=start + last].iter_mut().zip(counts) {
            *a += b;
            added += b;
        }
        self.total += added;
    }

    /// Non-empty buckets as (index, count), index increasing.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.counts
            .iter()
            .enumerate()
            .filter(|(_, c)| **c > 0)
            .map(move |(i, c)| (self.offset + i as u64, *c))
    }

    /// [`Self::buckets`] as parallel vectors appended to `index` and `count`. Branch-free: the
    /// empty buckets between a gradient's occupied ones follow no pattern a branch predictor
    /// could learn, and this runs for every summary the agent sends and every row the
    /// collector writes.
    pub fn sparse_into(&self, index: &mut Vec<u64>, count: &mut Vec<u64>) {
        let (i0, c0, n) = (index.len(), count.len(), self.counts.len());
        index.resize(i0 + n, 0);
        count.resize(c0 + n, 0);
        let (is, cs) = (&mut index[i0..], &mut count[c0..]);
        let mut k = 0;
        for (j, &c) in self.counts.iter().enumerate() {
            // k ≤ j < n: every write is in range; a slot is kept only when its count is not 0.
            is[k] = self.offset + j as u64;
            cs[k] = c;
            k += usize::from(c != 0);
        }
        index.truncate(i0 + k);
        count.truncate(c0 + k);
    }

    /// [`Self::sparse_into`] into new vectors.
    pub fn sparse(&self) -> (Vec<u64>, Vec<u64>) {
        let (mut index, mut count) = (Vec::new(), Vec::new());
        self.sparse_into(&mut index, &mut count);
        (index, count)
    }

    /// Rebuild from sparse (index, count) pairs, as carried on the wire.
    pub fn from_sparse(
        precision_bits: u32,
        indices: &[u64],
        counts: &[u64],
    ) -> Result<Self, StatsError> {
        let mut h = Self::new(precision_bits)?;
        let total = check_sparse(precision_bits, indices, counts)?;
        // Validated, increasing and within 2^24 of the first: one allocation, then a store
        // per bucket.
        if let (Some(&first), Some(&last)) = (indices.first(), indices.last()) {
            h.offset = first;
            h.counts = vec![0; (last - first + 1) as usize];
            for (&i, &c) in indices.iter().zip(counts) {
                h.counts[(i - first) as usize] = c;
            }
            h.total = total;
        }
        Ok(h)
    }

    /// Add the counts of `other` (same precision required) without expanding it first.
    pub fn merge_sparse(&mut self, other: &SparseHistogram) -> Result<(), StatsError> {
        if other.precision_bits != self.precision_bits {
            return Err(StatsError::PrecisionMismatch(
                self.precision_bits,
                other.precision_bits,
            ));
        }
        let Some((lo, hi)) = other.span() else {
            return Ok(());
        };
        self.cover(lo, hi);
        let counts = &mut self.counts[(lo - self.offset) as usize..=(hi - self.offset) as usize];
        for (&i, &c) in other.index.iter().zip(&other.count) {
            counts[(i - lo) as usize] += c;
        }
        self.total += other.total;
        Ok(())
    }

    /// The `q`-quantile (0 ≤ q ≤ 1) as the midpoint of the bucket holding the order statistic of
    /// rank `max(1, ⌈q·n⌉)`; `None` when empty or `q` is not in [0, 1].
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let [v] = self.quantiles([q]);
        v
    }

    /// [`Self::quantile`] of each of `qs`, in one pass over the buckets.
    pub fn quantiles<const N: usize>(&self, qs: [f64; N]) -> [Option<f64>; N] {
        let mut out = [None; N];
        let ranks = qs.map(|q| {
            (self.total > 0 && (0.0..=1.0).contains(&q))
                .then(|| ((q * self.total as f64).ceil() as u64).clamp(1, self.total))
        });
        // Visit the wanted ranks in increasing order, so each bucket costs one comparison
        // whatever N is (this runs on every `steps` row the collector writes).
        let mut order: [usize; N] = std::array::from_fn(|i| i);
        order.sort_unstable_by_key(|&i| ranks[i]);
        let mut next = order.iter().position(|&i| ranks[i].is_some()).unwrap_or(N);
        // Blocks of buckets that cannot reach the next rank are summed, not walked: histograms
        // span thousands of mostly empty buckets.
        const BLOCK: usize = 16;
        let mut seen = 0u64;
        for (b, block) in self.counts.chunks(BLOCK).enumerate() {
            let Some(want) = order.get(next).and_then(|&i| ranks[i]) else {
                break;
            };
            let sum: u64 = block.iter().sum();
            if seen + sum < want {
                seen += sum;
                continue;
            }
            for (j, &c) in block.iter().enumerate() {
                seen += c;
                while next < N && ranks[order[next]].is_some_and(|r| seen >= r) {
                    let (lo, hi) = self.bucket_bounds(self.offset + (b * BLOCK + j) as u64);
                    out[order[next]] = Some(lo + (hi - lo) / 2.0);
                    next += 1;
                }
            }
        }
        out
    }
}

/// Bucket counts of `|x|` for f32 values, gathered before they are added to a [`LogHistogram`].
///
/// Gradients put long runs of consecutive values into the same few buckets, and a single count
/// array makes each increment wait for the previous store to the same slot. Four interleaved
/// count lanes (value `j` counts in lane `j mod 4`) break that chain; [`Self::drain_into`] adds
/// the lanes up, so the histogram is exactly the one [`LogHistogram::record`] would build.
#[derive(Debug, Default)]
pub struct LaneCounter {
    offset: u64,
    lanes: Vec<[u32; LANES]>,
    recorded: u64,
}

impl LaneCounter {
    /// Most values one counter takes between drains: no lane count can overflow `u32`.
    pub const CAPACITY: u64 = u32::MAX as u64;

    /// Count `|x|` of the non-zero values among `xs` (finite f32) in `h`'s buckets. `min_pos`
    /// and `max` are the smallest non-zero and the largest bit pattern of `|x|` over the block
    /// (at most [`BLOCK`] values), and `zeros` the number of ±0 among them (the caller's
    /// extremes pass has all three); `slots` is scratch. The caller drains before
    /// [`Self::CAPACITY`] values have been recorded.
    ///
    /// A vectorised pass computes every value's slot in the flattened lanes (bucket × 4 + lane);
    /// the increments are then a plain loop of loads and adds. Zeros are clamped to `min_pos`
    /// and counted with the rest, then taken off that slot again: no test per value.
    #[inline(always)]
    pub fn record_abs_f32(
        &mut self,
        h: &LogHistogram,
        xs: &[f32],
        min_pos: u32,
        max: u32,
        zeros: u32,
        slots: &mut [u32; BLOCK],
    ) {
        if max == 0 {
            return;
        }
        // The unchecked increments below rely on every slot lying in the span these two give.
        assert!(min_pos <= max, "extremes out of order");
        debug_assert!(xs.len() <= BLOCK);
        debug_assert!(self.recorded + xs.len() as u64 <= Self::CAPACITY);
        self.recorded += xs.len() as u64;
        let p = h.precision_bits;
        let index = |b: u32| f64::from(f32::from_bits(b)).to_bits() >> (52 - p);
        // Bit patterns of non-negative floats order like the values, and f32 -> f64 is exact,
        // so the block's buckets lie in [index(min_pos), index(max)].
        let (lo, hi) = (index(min_pos), index(max));
        self.cover(lo, hi);
        let start = (lo - self.offset) as usize;
        let lanes = self.lanes[start..=start + (hi - lo) as usize].as_flattened_mut();
        let slots = &mut slots[..xs.len()];
        let abs = |x: f32| (x.to_bits() & 0x7fff_ffff).clamp(min_pos, max);
        if p <= 23 && min_pos >= f32::MIN_POSITIVE.to_bits() {
            // Normal f32: the f64 bucket is the f32 pattern's top bits plus the exponent
            // rebias (1023 − 127) << p, so the slot is plain integer arithmetic.
            let (shift, lo32) = (23 - p, min_pos >> (23 - p));
            for (j, (s, &x)) in slots.iter_mut().zip(xs).enumerate() {
                *s = ((abs(x) >> shift) - lo32) * LANES as u32 + (j as u32 % LANES as u32);
            }
        } else {
            for (j, (s, &x)) in slots.iter_mut().zip(xs).enumerate() {
                *s = (index(abs(x)) - lo) as u32 * LANES as u32 + (j as u32 % LANES as u32);
            }
        }
        for &s in slots.iter() {
            // SAFETY: `abs` clamps every pattern into [min_pos, max], whose buckets are the
            // `hi − lo + 1` rows of `lanes`, and the lane is below LANES; so the slot is below
            // `lanes.len()`. A bounds check here cost a compare and branch per increment, in
            // the agent's hottest loop. Tested by
            // `lane_counter_matches_record_for_dense_and_spread_blocks` and
            // `record_abs_f32_keeps_wrong_extremes_in_bounds`.
            let c = unsafe { lanes.get_unchecked_mut(s as usize) };
            *c = c.wrapping_add(1);
        }
        // Lanes may wrap here: a slot's lanes add up (mod 2^32) to its count, which is below
        // 2^32 (see `drain_into`).
        lanes[0] = lanes[0].wrapping_sub(zeros);
    }

    fn cover(&mut self, lo: u64, hi: u64) {
        if self.lanes.is_empty() {
            self.offset = lo;
        } else if lo < self.offset {
            let grow = (self.offset - lo) as usize;
            self.lanes
                .splice(0..0, std::iter::repeat_n([0; LANES], grow));
            self.offset = lo;
        }
        let len = (hi - self.offset + 1) as usize;
        if len > self.lanes.len() {
            self.lanes.resize(len, [0; LANES]);
        }
    }

    /// Values recorded since the last drain.
    pub fn recorded(&self) -> u64 {
        self.recorded
    }

    /// Add the counts to `h` (same precision as recorded with) and start empty.
    pub fn drain_into(&mut self, h: &mut LogHistogram) {
        h.add_dense(
            self.offset,
            self.lanes
                .iter()
                .map(|l| u64::from(l.iter().fold(0u32, |a, &c| a.wrapping_add(c)))),
        );
        self.lanes.clear();
        self.recorded = 0;
    }
}

#[cfg(test)]
impl LogHistogram {
    /// The definition of [`Self::quantile`], bucket by bucket, as a reference.
    fn quantile_by_scan(&self, q: f64) -> Option<f64> {
        if self.total == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        self.buckets().find_map(|(i, c)| {
            seen += c;
            (seen >= rank).then(|| {
                let (lo, hi) = self.bucket_bounds(i);
                lo + (hi - lo) / 2.0
            })
        })
    }
}

/// `ln(1 + k/2^p)` for `k < 2^p`, one table per precision, built on first use.
pub(crate) fn ln_mantissas(p: u32) -> &'static [f64] {
    static TABLES: [OnceLock<Box<[f64]>>; MAX_PRECISION_BITS as usize + 1] =
        [const { OnceLock::new() }; MAX_PRECISION_BITS as usize + 1];
    TABLES[p as usize].get_or_init(|| {
        let scale = 0.5f64.powi(p as i32);
        (0..1u64 << p).map(|k| (k as f64 * scale).ln_1p()).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_histograms_are_checked_and_merge_like_dense_ones() {
        let p = DEFAULT_PRECISION_BITS;
        let ok = SparseHistogram::new(p, vec![10, 12, 500], vec![1, 2, 3]).unwrap();
        assert_eq!((ok.total(), ok.span()), (6, Some((10, 500))));
        assert_eq!(
            ok.to_dense().buckets().collect::<Vec<_>>(),
            vec![(10, 1), (12, 2), (500, 3)]
        );
        assert_eq!(SparseHistogram::of(&ok.to_dense()), ok);
        let empty = SparseHistogram::new(p, vec![], vec![]).unwrap();
        assert_eq!((empty.total(), empty.span()), (0, None));
        let mut taken = ok.clone();
        assert_eq!(taken.take_parts(), (vec![10, 12, 500], vec![1, 2, 3]));
        assert_eq!(taken, empty, "left empty");
        let inf = f64::INFINITY.to_bits() >> (52 - p);
        for (index, count) in [
            (vec![10, 10], vec![1, 1]),
            (vec![12, 10], vec![1, 1]),
            (vec![10], vec![0]),
            (vec![0], vec![1]),
            (vec![inf], vec![1]),
            (vec![10, 11], vec![1]),
            (vec![10, 10 + (1 << 24) + 1], vec![1, 1]),
            (vec![10, 11], vec![u64::MAX, 1]),
        ] {
            assert!(SparseHistogram::new(p, index.clone(), count.clone()).is_err());
            assert!(LogHistogram::from_sparse(p, &index, &count).is_err());
        }
        assert!(SparseHistogram::new(0, vec![], vec![]).is_err());
        // Into a histogram whose range it extends at both ends, and into one that covers it.
        let mut h = LogHistogram::from_sparse(p, &[11, 300], &[4, 5]).unwrap();
        let mut reference = h.clone();
        h.merge_sparse(&ok).unwrap();
        reference.merge(&ok.to_dense()).unwrap();
        assert_eq!(h, reference);
        assert_eq!(h.total(), 15);
        h.merge_sparse(&ok).unwrap();
        reference.merge(&ok.to_dense()).unwrap();
        assert_eq!(h, reference);
        let other = SparseHistogram::new(p + 1, vec![10], vec![1]).unwrap();
        assert!(h.merge_sparse(&other).is_err());
        assert_eq!(h, reference);
    }

    #[test]
    fn cover_grows_in_place_of_counts_and_keeps_them() {
        let mut h = LogHistogram::default();
        assert_eq!(h.span(), None);
        h.cover(100, 102);
        assert_eq!((h.span(), h.total()), (Some((100, 102)), 0));
        h.add_count(101, 5);
        for (lo, hi) in [(90, 95), (100, 101), (99, 120), (50, 200), (60, 70)] {
            h.cover(lo, hi);
            let (a, b) = h.span().unwrap();
            assert!(a <= lo && b >= hi);
            assert_eq!(h.buckets().collect::<Vec<_>>(), vec![(101, 5)]);
        }
        assert_eq!(h.span(), Some((50, 200)));
        // Merging into a covered histogram is the plain merge.
        let mut other = LogHistogram::default();
        other.add_count(55, 2);
        other.add_count(199, 3);
        h.merge(&other).unwrap();
        assert_eq!(
            h.buckets().collect::<Vec<_>>(),
            vec![(55, 2), (101, 5), (199, 3)]
        );
        assert_eq!(h.total(), 10);
        // Equality ignores the empty ends of the range.
        let mut narrow = LogHistogram::default();
        for (i, c) in [(55, 2), (101, 5), (199, 3)] {
            narrow.add_count(i, c);
        }
        assert_eq!(h, narrow);
        narrow.add_count(56, 1);
        assert_ne!(h, narrow);
    }

    #[test]
    fn sparse_vectors_are_the_non_empty_buckets() {
        let mut rng = crate::rng::SplitMix64::new(5);
        let mut h = LogHistogram::default();
        assert_eq!(h.sparse(), (vec![], vec![]));
        for _ in 0..3_000 {
            h.record(rng.student_t(2).abs() * 1e-3);
        }
        let (index, count): (Vec<u64>, Vec<u64>) = h.buckets().unzip();
        assert!(h.counts.contains(&0) && index.len() > 100);
        assert_eq!(h.sparse(), (index.clone(), count.clone()));
        // Appends after what the vectors already hold.
        let (mut i2, mut c2) = (vec![7], vec![9]);
        h.sparse_into(&mut i2, &mut c2);
        assert_eq!((i2[0], c2[0]), (7, 9));
        assert_eq!((&i2[1..], &c2[1..]), (&index[..], &count[..]));
    }

    #[test]
    fn one_pass_quantiles_equal_single_quantiles() {
        let mut rng = crate::rng::SplitMix64::new(11);
        let mut h = LogHistogram::default();
        assert_eq!(h.quantiles([0.5, 0.9]), [None, None]);
        for _ in 0..5_000 {
            h.record(rng.student_t(3).abs());
        }
        // Unsorted, repeated, edge and out-of-range levels.
        let qs = [0.99, 0.5, 0.0, 1.0, 0.5, -0.1, 1.5, 0.9];
        let one_by_one = qs.map(|q| h.quantile_by_scan(q));
        assert_eq!(h.quantiles(qs), one_by_one);
        assert!(one_by_one[0].is_some() && one_by_one[5].is_none());
        // Levels in the first and last blocks of a wide histogram.
        for _ in 0..200 {
            h.record(rng.normal().abs() * 1e-12);
        }
        let qs = [0.001, 0.01, 0.25, 0.75, 0.999, 0.9999];
        assert_eq!(h.quantiles(qs), qs.map(|q| h.quantile_by_scan(q)));
    }

    #[test]
    fn tabulated_edge_logs_match_ln() {
        let mut rng = crate::rng::SplitMix64::new(3);
        for p in [1, 7, 16] {
            let h = LogHistogram::new(p).unwrap();
            for _ in 0..10_000 {
                // Magnitudes across the whole range, subnormals included.
                let v = f64::from_bits(rng.next_u64() % f64::MAX.to_bits() + 1);
                let i = h.index_of(v);
                let exact = h.bucket_bounds(i).0.ln();
                let got = h.ln_lower_edge(i);
                assert!(
                    got == exact
                        || (got - exact).abs() <= 4.0 * f64::EPSILON * exact.abs().max(1.0),
                    "p={p} i={i}: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn quantiles_are_within_stated_relative_error() {
        let mut h = LogHistogram::default();
        // A deterministic LCG spread over 40 decades.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut xs: Vec<f64> = (0..10_000)
            .map(|i| {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (state >> 11) as f64 / (1u64 << 53) as f64;
                (u + 1e-3) * 10f64.powi(i % 40 - 30)
            })
            .collect();
        for &x in &xs {
            h.record(x);
        }
        xs.sort_by(f64::total_cmp);
        for q in [0.0, 0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 1.0] {
            let rank = ((q * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
            let exact = xs[rank - 1];
            let est = h.quantile(q).unwrap();
            assert!(
                (est - exact).abs() <= h.relative_error() * exact,
                "q={q}: {est} vs {exact}"
            );
        }
    }

    #[test]
    fn bucket_width_is_bounded_by_precision() {
        let h = LogHistogram::new(7).unwrap();
        for v in [1e-300, 3.3e-12, 0.5, 1.0, 1.999, 7.0e5] {
            let (lo, hi) = h.bucket_bounds(h.index_of(v));
            assert!(lo <= v && v < hi);
            assert!((hi - lo) / lo <= 1.0 / 128.0 + 1e-15);
        }
    }

    #[test]
    fn lane_counter_matches_record_for_dense_and_spread_blocks() {
        // Blocks dense in a few buckets, and one of three values over 60 binades with zeros of
        // both signs and a negative value, drained together.
        let dense: Vec<f32> = (0..4096).map(|i| 1.0 + (i % 97) as f32 * 1e-3).collect();
        let spread = [1e-30f32, 0.0, -3e-12, 2e+8, -0.0];
        let mut h = LogHistogram::new(7).unwrap();
        let mut c = LaneCounter::default();
        let mut slots = [0; BLOCK];
        for block in dense.chunks(BLOCK).chain([&spread[..]]) {
            let bits = block.iter().map(|x| x.abs().to_bits());
            let min_pos = bits.clone().filter(|&b| b != 0).min().unwrap();
            let zeros = bits.clone().filter(|&b| b == 0).count() as u32;
            let max = bits.max().unwrap();
            c.record_abs_f32(&h, block, min_pos, max, zeros, &mut slots);
        }
        c.drain_into(&mut h);
        let mut want = LogHistogram::new(7).unwrap();
        for &x in dense.iter().chain(&spread) {
            want.record(f64::from(x.abs()));
        }
        assert_eq!(
            h.buckets().collect::<Vec<_>>(),
            want.buckets().collect::<Vec<_>>()
        );
        assert_eq!(h.total(), 4099);
        assert_eq!(c.recorded(), 0, "drained");
    }

    #[test]
    fn record_abs_f32_keeps_wrong_extremes_in_bounds() {
        // Extremes narrower than the values: counts land in the edge buckets, never outside
        // the counter's rows. Extremes out of order: a panic.
        let h = LogHistogram::new(7).unwrap();
        let (mut c, mut slots) = (LaneCounter::default(), [0; BLOCK]);
        let xs = [1e-20f32, 1.0, 1e20, -3.0];
        let (lo, hi) = (0.5f32.to_bits(), 2.0f32.to_bits());
        c.record_abs_f32(&h, &xs, lo, hi, 0, &mut slots);
        let mut got = LogHistogram::new(7).unwrap();
        c.drain_into(&mut got);
        let mut want = LogHistogram::new(7).unwrap();
        for v in [0.5, 1.0, 2.0, 2.0] {
            want.record(v);
        }
        assert_eq!(
            got.buckets().collect::<Vec<_>>(),
            want.buckets().collect::<Vec<_>>()
        );
        let out_of_order = std::panic::catch_unwind(move || {
            let mut c = LaneCounter::default();
            c.record_abs_f32(&h, &xs, hi, lo, 0, &mut [0; BLOCK]);
        });
        assert!(out_of_order.is_err());
    }

    #[test]
    fn rejects_malformed_sparse_input() {
        assert!(LogHistogram::from_sparse(7, &[5, 3], &[1, 1]).is_err());
        assert!(LogHistogram::from_sparse(7, &[5], &[1, 1]).is_err());
        assert!(LogHistogram::from_sparse(7, &[5], &[0]).is_err());
        assert!(LogHistogram::from_sparse(0, &[], &[]).is_err());
        assert!(LogHistogram::from_sparse(7, &[u64::MAX], &[1]).is_err());
        assert!(LogHistogram::from_sparse(7, &[5, 6], &[u64::MAX, 1]).is_err());
    }

    #[test]
    fn ignores_non_positive_and_non_finite() {
        let mut h = LogHistogram::default();
        for v in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            h.record(v);
        }
        assert_eq!(h.total(), 0);
        assert_eq!(h.quantile(0.5), None);
    }
}
