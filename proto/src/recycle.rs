//! Vectors handed back by the consumer of decoded messages, for the decoders to fill again.
//!
//! The collector decodes reports on its runtime threads and is done with them on its pipeline
//! thread, once their step is merged. Freed there, every packed field of a report (histogram
//! indices and counts, top-k lists, tracked coordinates, the projection) was an allocation on
//! one thread and a free on another, thousands of times a second: the allocator's slow path
//! on both sides (glibc takes the allocating thread's arena lock for every such free, and the
//! two threads waited on each other in `futex`; tcmalloc moves the objects through its central
//! lists). So the pipeline hands spent reports back to the stage beside the streams, which
//! gives their vectors back here, for the next decodes to fill; a report's histogram vectors
//! the pipeline gives back itself, as soon as their counts are merged into the step's (giving
//! is no free, so no thread's arena is involved).
//!
//! Guarantees: a vector taken from a pool is empty; its contents never leak into a message
//! (the decoders only append). Each pool keeps at most [`MAX_POOLED_BYTES`] of capacity and
//! drops vectors beyond it, so the memory it holds is bounded whatever the traffic.

use std::sync::Mutex;

/// Most capacity (in bytes) one pool keeps.
pub const MAX_POOLED_BYTES: usize = 32 << 20;
/// Vectors larger than this are not kept (one would crowd out many ordinary ones).
const MAX_VEC_BYTES: usize = 1 << 20;
/// Size classes: class `k` holds vectors with room for `2^k ..< 2^(k+1)` values; no kept
/// vector has room for more than [`MAX_VEC_BYTES`] ≤ `2^20` values.
const CLASSES: usize = 21;
/// Vectors of the class below the asked size's [`Pool::take`] looks at for one with enough
/// room.
const LOOK_BACK: usize = 4;

/// Stacks of empty vectors with their capacity, one per size class. The vectors this pool
/// makes have room for a power of two values, so any vector of a class serves any request
/// that class is asked for. With one stack and exact sizes, the 64-value vectors of tracked
/// coordinates lay above the few-hundred-value ones of histograms, and of those the larger
/// were taken first: histogram decodes missed, allocated afresh, and the pool, full of the
/// vectors they missed, freed what came back.
pub struct Pool<T> {
    inner: Mutex<Classes<T>>,
}

struct Classes<T> {
    free: [Vec<Vec<T>>; CLASSES],
    bytes: usize,
}

/// The class of a vector with room for `n ≥ 1` values.
fn class(n: usize) -> usize {
    n.ilog2() as usize
}

impl<T> Pool<T> {
    pub const fn new() -> Self {
        Self {
            inner: Mutex::new(Classes {
                free: [const { Vec::new() }; CLASSES],
                bytes: 0,
            }),
        }
    }

    /// An empty vector with room for at least `n` values: a pooled one of the smallest class
    /// whose vectors all have that room, else one of the last few given back to the class
    /// below that has it, else a new one with room for `n` rounded up to a power of two (at
    /// most twice what is asked, so that it can serve every request of its class later).
    pub fn take(&self, n: usize) -> Vec<T> {
        let Some(rounded) = n
            .checked_next_power_of_two()
            .filter(|&r| n > 0 && r * std::mem::size_of::<T>() <= MAX_VEC_BYTES)
        else {
            // Nothing, or more than the pool keeps: exactly what is asked.
            return Vec::with_capacity(n);
        };
        let k = class(rounded);
        let pooled = self.inner.lock().ok().and_then(|mut s| {
            let v = match s.free.get_mut(k).and_then(Vec::pop) {
                Some(v) => v,
                None => {
                    let below = s.free.get_mut(class(n))?;
                    let len = below.len();
                    let i = (len.saturating_sub(LOOK_BACK)..len)
                        .rev()
                        .find(|&i| below[i].capacity() >= n)?;
                    below.swap_remove(i)
                }
            };
            s.bytes -= bytes_of(&v);
            Some(v)
        });
        pooled.unwrap_or_else(|| Vec::with_capacity(rounded))
    }

    /// Keep the vectors' allocations for later decodes (their contents are dropped).
    pub fn give(&self, vs: impl IntoIterator<Item = Vec<T>>) {
        let Ok(mut s) = self.inner.lock() else {
            return;
        };
        for mut v in vs {
            let b = bytes_of(&v);
            if v.capacity() == 0 || b > MAX_VEC_BYTES || s.bytes + b > MAX_POOLED_BYTES {
                continue;
            }
            let Some(stack) = s.free.get_mut(class(v.capacity())) else {
                continue; // zero-sized values: nothing to keep
            };
            v.clear();
            stack.push(v);
            s.bytes += b;
        }
    }

    /// Capacity kept, in bytes.
    pub fn pooled_bytes(&self) -> usize {
        self.inner.lock().map_or(0, |s| s.bytes)
    }
}

impl<T> Default for Pool<T> {
    fn default() -> Self {
        Self::new()
    }
}

fn bytes_of<T>(v: &Vec<T>) -> usize {
    v.capacity() * std::mem::size_of::<T>()
}

/// Histogram indices and counts, tracked coordinates.
pub static U64: Pool<u64> = Pool::new();
/// Projections and top-k lists.
pub static F64: Pool<f64> = Pool::new();
/// Tracked values.
pub static F32: Pool<f32> = Pool::new();

/// Make room for `n` more values in `values`, from `pool` when it has no allocation yet.
pub(crate) fn reserve<T>(pool: &Pool<T>, values: &mut Vec<T>, n: usize) {
    if values.capacity() == 0 && n > 0 {
        *values = pool.take(n);
    } else {
        values.reserve_exact(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectors_come_back_empty_with_their_room() {
        let p = Pool::<u64>::new();
        let mut v = Vec::with_capacity(100);
        v.extend(0..50u64);
        let ptr = v.as_ptr();
        p.give([v]);
        assert_eq!(p.pooled_bytes(), 800);
        // Not for a request of another size class (10: a fresh 16), but for one that a
        // 100 serves (65..=100: its class 64..128 is the one below theirs).
        assert_eq!(p.take(10).capacity(), 16);
        assert_eq!(p.take(101).capacity(), 128);
        let w = p.take(70);
        assert!(w.is_empty());
        assert_eq!(
            (w.as_ptr(), w.capacity()),
            (ptr, 100),
            "the same allocation"
        );
        assert_eq!(p.pooled_bytes(), 0);
        // Empty pool: a fresh vector of the asked room, rounded up to a power of two; and
        // exactly the asked room beyond what the pool keeps.
        assert_eq!(p.take(7).capacity(), 8);
        assert_eq!(p.take(0).capacity(), 0);
        let big = MAX_VEC_BYTES / 8 + 1;
        assert_eq!(p.take(big).capacity(), big);
        // Too small a pooled vector stays pooled; a fresh one is made.
        p.give([Vec::with_capacity(4)]);
        assert_eq!(p.take(1000).capacity(), 1024);
        assert_eq!(p.pooled_bytes(), 32);
        assert_eq!(p.take(4).capacity(), 4);
    }

    #[test]
    fn decodes_into_given_back_vectors_equal_fresh_ones() {
        use crate::v1::{LogHistogram, Projection, TrackedValues};
        use prost::Message;
        let h = LogHistogram {
            precision_bits: 7,
            index: vec![3, 9, 400, 1 << 40],
            count: vec![1, 2, 3, 300],
        };
        let t = TrackedValues {
            name: "w".into(),
            index: vec![1, 5, 7],
            value: vec![0.5, -1.0, f32::NAN],
        };
        let p = Projection {
            kind: 3,
            dim: 3,
            seed: 1,
            values: vec![1.0, -2.0, 3.5],
            coordinates: 9,
        };
        for round in 0..3 {
            // Stale contents, of every size around the messages' (the pool is shared with
            // the other tests, so these may or may not be the vectors taken).
            for n in [1, 3, 4, 64] {
                U64.give([vec![u64::MAX; n], vec![7; n]]);
                F64.give([vec![f64::NAN; n]]);
                F32.give([vec![9.0; n]]);
            }
            let h2 = LogHistogram::decode(h.encode_to_vec().as_slice()).unwrap();
            assert_eq!(h2, h, "round {round}");
            let t2 = TrackedValues::decode(t.encode_to_vec().as_slice()).unwrap();
            assert_eq!((&t2.name, &t2.index), (&t.name, &t.index));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&t2.value), bits(&t.value));
            let p2 = Projection::decode(p.encode_to_vec().as_slice()).unwrap();
            assert_eq!(p2, p);
            U64.give([h2.index, h2.count, t2.index]);
            F64.give([p2.values]);
            F32.give([t2.value]);
        }
    }

    #[test]
    fn small_vectors_do_not_hide_large_ones() {
        let p = Pool::<u64>::new();
        // What decodes of 300-value histograms and 64-value tracked lists give back, the
        // small ones last.
        let hists: Vec<Vec<u64>> = (0..4).map(|_| p.take(300)).collect();
        assert!(hists.iter().all(|v| v.capacity() == 512));
        p.give(hists);
        p.give((0..30).map(|_| Vec::with_capacity(64)));
        for n in [300, 257, 512, 400] {
            assert_eq!(p.take(n).capacity(), 512, "a pooled one for {n}");
        }
        assert_eq!(p.pooled_bytes(), 30 * 64 * 8);
        // A vector of exact size (not made here) serves from the class below.
        p.give([Vec::with_capacity(300)]);
        assert_eq!(p.take(290).capacity(), 300);
        assert_eq!(p.pooled_bytes(), 30 * 64 * 8);
    }

    #[test]
    fn zero_sized_values_are_not_kept() {
        let p = Pool::<()>::new();
        p.give([vec![(); 5]]);
        assert_eq!(p.pooled_bytes(), 0);
        assert!(p.take(3).is_empty());
    }

    #[test]
    fn the_pool_stays_within_its_budget() {
        let p = Pool::<u8>::new();
        p.give((0..100).map(|_| Vec::with_capacity(MAX_VEC_BYTES)));
        assert!(p.pooled_bytes() <= MAX_POOLED_BYTES);
        assert_eq!(
            p.pooled_bytes(),
            MAX_POOLED_BYTES,
            "filled up to the budget"
        );
        p.give([Vec::with_capacity(MAX_VEC_BYTES + 1), Vec::new()]);
        assert_eq!(p.pooled_bytes(), MAX_POOLED_BYTES);
        let q = Pool::<u8>::new();
        q.give([Vec::with_capacity(MAX_VEC_BYTES + 1), Vec::new()]);
        assert_eq!(
            q.pooled_bytes(),
            0,
            "too large and empty vectors are not kept"
        );
    }
}
