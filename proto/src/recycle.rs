//! Vectors handed back by the consumer of decoded messages, for the decoders to fill again.
//!
//! The collector decodes reports on its runtime threads and is done with them on its pipeline
//! thread, once their step is merged. Freed there, every packed field of a report (histogram
//! indices and counts, top-k lists, tracked coordinates, the projection) was an allocation on one thread and
//! a free on another, thousands of times a second: the allocator's slow path on both sides
//! (glibc takes the allocating thread's arena lock for every such free, and the two threads
//! waited on each other in `futex`; tcmalloc moves the objects through its central lists). So
//! the pipeline hands spent reports back to the stage beside the streams, which gives their
//! vectors back here, for the next decodes to fill.
//!
//! Guarantees: a vector taken from a pool is empty; its contents never leak into a message
//! (the decoders only append). Each pool keeps at most [`MAX_POOLED_BYTES`] of capacity and
//! drops vectors beyond it, so the memory it holds is bounded whatever the traffic.

use std::sync::Mutex;

/// Most capacity (in bytes) one pool keeps.
pub const MAX_POOLED_BYTES: usize = 32 << 20;
/// Vectors larger than this are not kept (one would crowd out many ordinary ones).
const MAX_VEC_BYTES: usize = 1 << 20;
/// Pooled vectors [`Pool::take`] looks at for one with enough room.
const LOOK_BACK: usize = 4;

/// A stack of empty vectors with their capacity.
pub struct Pool<T> {
    inner: Mutex<Stack<T>>,
}

struct Stack<T> {
    free: Vec<Vec<T>>,
    bytes: usize,
}

impl<T> Pool<T> {
    pub const fn new() -> Self {
        Self {
            inner: Mutex::new(Stack {
                free: Vec::new(),
                bytes: 0,
            }),
        }
    }

    /// An empty vector with room for at least `n` values: a pooled one when one of the last
    /// few given back is large enough (growing a smaller one would copy its stale room).
    pub fn take(&self, n: usize) -> Vec<T> {
        let pooled = self.inner.lock().ok().and_then(|mut s| {
            let len = s.free.len();
            let i = (len.saturating_sub(LOOK_BACK)..len)
                .rev()
                .find(|&i| s.free[i].capacity() >= n)?;
            let v = s.free.swap_remove(i);
            s.bytes -= bytes_of(&v);
            Some(v)
        });
        pooled.unwrap_or_else(|| Vec::with_capacity(n))
    }

    /// Keep the vectors' allocations for later decodes (their contents are dropped).
    pub fn give(&self, vs: impl IntoIterator<Item = Vec<T>>) {
        let Ok(mut s) = self.inner.lock() else {
            return;
        };
        for mut v in vs {
            let b = bytes_of(&v);
            if b == 0 || b > MAX_VEC_BYTES || s.bytes + b > MAX_POOLED_BYTES {
                continue;
            }
            v.clear();
            s.bytes += b;
            s.free.push(v);
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
        let w = p.take(10);
        assert!(w.is_empty());
        assert_eq!(
            (w.as_ptr(), w.capacity()),
            (ptr, 100),
            "the same allocation"
        );
        assert_eq!(p.pooled_bytes(), 0);
        // Empty pool: a fresh vector of the asked room.
        assert!(p.take(7).capacity() >= 7);
        // Too small a pooled vector stays pooled; a fresh one is made.
        p.give([Vec::with_capacity(4)]);
        assert!(p.take(1000).capacity() >= 1000);
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
