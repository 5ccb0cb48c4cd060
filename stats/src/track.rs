//! Tracked coordinates: a seeded, hash-based sample of a tensor's coordinates that every rank
//! and every sharding selects identically (DESIGN.md §3.4).
//!
//! Coordinate `j` of tensor `name` is tracked iff `h(key(seed, name), j) < ⌊rate · 2^64⌋`, with
//! `h` the SplitMix64 finaliser of `key + (j + 1)·φ` (φ the 64-bit golden ratio) and
//! `rate = min(1, count / numel)`. The decision depends only on (seed, name, j, rate), never on
//! which agent owns `j`, so the shards' selections are disjoint and together form the selection
//! of the whole tensor. The number of tracked coordinates is Binomial(numel, rate): its mean is
//! `count` and its relative standard deviation `≈ 1/√count`.

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn finalise(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The tracked-coordinate rule of one tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    key: u64,
    /// Coordinates whose hash is below this are tracked (`u64::MAX` with rate 1 tracks all).
    threshold: u64,
    all: bool,
}

impl Tracker {
    /// The rule for tensor `name` of `numel` coordinates, tracking `count` of them on average.
    pub fn new(seed: u64, name: &str, numel: u64, count: u64) -> Self {
        // FNV-1a of the name, then mixed with the seed, so tensors get independent selections.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let key = finalise(h ^ finalise(seed));
        let all = numel > 0 && count >= numel;
        let rate = if numel == 0 {
            0.0
        } else {
            (count as f64 / numel as f64).min(1.0)
        };
        // rate · 2^64, computed in f64 (exact enough: the rate itself is a ratio of integers).
        let threshold = if all {
            u64::MAX
        } else {
            (rate * 18_446_744_073_709_551_616.0) as u64
        };
        Self {
            key,
            threshold,
            all,
        }
    }

    /// Whether coordinate `j` is tracked.
    #[inline]
    pub fn is_tracked(&self, j: u64) -> bool {
        self.all
            || finalise(
                self.key
                    .wrapping_add(j.wrapping_add(1).wrapping_mul(GOLDEN)),
            ) < self.threshold
    }

    /// The tracked coordinates in `[start, end)`, ascending.
    pub fn tracked_in(&self, start: u64, end: u64) -> Vec<u64> {
        if self.threshold == 0 {
            return Vec::new();
        }
        (start..end).filter(|&j| self.is_tracked(j)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_select_the_same_coordinates_as_the_whole() {
        let t = Tracker::new(7, "fc1.weight", 10_000, 300);
        let whole = t.tracked_in(0, 10_000);
        let mut parts = t.tracked_in(0, 3_333);
        parts.extend(t.tracked_in(3_333, 7_001));
        parts.extend(t.tracked_in(7_001, 10_000));
        assert_eq!(whole, parts);
        // Binomial(10000, 0.03): mean 300, sd ≈ 17.
        assert!((230..370).contains(&whole.len()), "{}", whole.len());
    }

    #[test]
    fn seeds_and_names_give_different_samples_and_extremes_hold() {
        let a = Tracker::new(1, "a", 100_000, 1000).tracked_in(0, 100_000);
        let b = Tracker::new(1, "b", 100_000, 1000).tracked_in(0, 100_000);
        let c = Tracker::new(2, "a", 100_000, 1000).tracked_in(0, 100_000);
        let overlap =
            |x: &[u64], y: &[u64]| x.iter().filter(|j| y.binary_search(j).is_ok()).count();
        // Independent 1 % samples share about 1 % of their members.
        assert!(overlap(&a, &b) < 40 && overlap(&a, &c) < 40);
        assert_eq!(Tracker::new(1, "a", 10, 50).tracked_in(0, 10).len(), 10);
        assert!(Tracker::new(1, "a", 10, 0).tracked_in(0, 10).is_empty());
    }
}
