//! The k largest values of a stream, mergeable.
//!
//! Guarantee: the k largest values of a union lie in the union of each part's k largest, so
//! `merge(top_k(A), top_k(B)) = top_k(A ++ B)` exactly, as multisets. Merging two lists with
//! different capacities keeps the smaller capacity (the larger list cannot be trusted beyond it).
//! The top-k order statistics feed the tail-index estimators (Hill, Pickands, DEdH), which use
//! only the largest order statistics.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// Total order on f64 for the heap (values are finite here).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Key(f64);
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Key {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Keeps the `capacity` largest values pushed.
#[derive(Debug, Clone)]
pub struct TopK {
    capacity: usize,
    heap: BinaryHeap<Reverse<Key>>,
}

impl TopK {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity,
            heap: BinaryHeap::with_capacity(capacity + 1),
        }
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Smallest value kept, once full: anything not larger cannot enter.
    #[inline]
    pub fn threshold(&self) -> Option<f64> {
        (self.heap.len() == self.capacity)
            .then(|| self.heap.peek().map(|r| r.0.0))
            .flatten()
    }

    #[inline]
    pub fn push(&mut self, v: f64) {
        if self.capacity == 0 {
            return;
        }
        if self.heap.len() < self.capacity {
            self.heap.push(Reverse(Key(v)));
        } else if let Some(mut min) = self.heap.peek_mut()
            && v > min.0.0
        {
            *min = Reverse(Key(v));
        }
    }

    pub fn merge(&mut self, other: &TopK) {
        if other.capacity < self.capacity {
            self.capacity = other.capacity;
            while self.heap.len() > self.capacity {
                self.heap.pop();
            }
        }
        for r in other.heap.iter() {
            self.push(r.0.0);
        }
    }

    /// Values in descending order.
    pub fn sorted_desc(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.heap.iter().map(|r| r.0.0).collect();
        v.sort_by(|a, b| b.total_cmp(a));
        v
    }

    /// Rebuild from a list (any order); keeps the `capacity` largest.
    pub fn from_values(capacity: usize, values: &[f64]) -> Self {
        if values.len() > capacity {
            let mut t = Self::new(capacity);
            for &v in values {
                t.push(v);
            }
            return t;
        }
        let mut heap = Vec::with_capacity(capacity);
        heap.extend_from_slice(values);
        Self::from_vec(capacity, heap)
    }

    /// [`Self::from_values`], the heap taking over the list's allocation when all of it fits
    /// (this runs for every tensor of every report the collector receives, on the list just
    /// decoded).
    pub fn from_vec(capacity: usize, values: Vec<f64>) -> Self {
        if values.len() > capacity {
            return Self::from_values(capacity, &values);
        }
        // Same size and alignment, so std collects in place, keeping the allocation; and one
        // linear heapify instead of a sift per push.
        let heap: Vec<Reverse<Key>> = values.into_iter().map(|v| Reverse(Key(v))).collect();
        Self {
            capacity,
            heap: BinaryHeap::from(heap),
        }
    }

    /// The values kept, in no particular order, in the heap's allocation.
    pub fn into_vec(self) -> Vec<f64> {
        self.heap.into_vec().into_iter().map(|r| r.0.0).collect()
    }

    /// [`Self::into_vec`], leaving this list empty (of the same capacity).
    pub fn take_vec(&mut self) -> Vec<f64> {
        Self {
            capacity: self.capacity,
            heap: std::mem::take(&mut self.heap),
        }
        .into_vec()
    }
}

impl PartialEq for TopK {
    fn eq(&self, other: &Self) -> bool {
        self.capacity == other.capacity && self.sorted_desc() == other.sorted_desc()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_values_equals_pushing_one_by_one() {
        let xs = [5.0, 1.0, 9.0, 7.0, 3.0, 9.0, 0.0, 2.5];
        for n in 0..=xs.len() {
            for capacity in [0, 1, 3, n, n + 2] {
                for order in [xs[..n].to_vec(), xs[..n].iter().rev().copied().collect()] {
                    let mut pushed = TopK::new(capacity);
                    order.iter().for_each(|&v| pushed.push(v));
                    let built = TopK::from_values(capacity, &order);
                    assert_eq!(built, pushed);
                    assert_eq!(TopK::from_vec(capacity, order.clone()), pushed);
                    let mut back = built.clone().into_vec();
                    back.sort_by(|a, b| b.total_cmp(a));
                    assert_eq!(back, pushed.sorted_desc());
                    let mut taken = built.clone();
                    let mut back = taken.take_vec();
                    back.sort_by(|a, b| b.total_cmp(a));
                    assert_eq!(back, pushed.sorted_desc());
                    assert!(taken.is_empty());
                    assert_eq!(taken.capacity(), capacity);
                    assert_eq!(built.threshold(), pushed.threshold());
                    let mut more = built.clone();
                    more.push(8.0);
                    pushed.push(8.0);
                    assert_eq!(more, pushed);
                }
            }
        }
    }

    #[test]
    fn keeps_largest_in_order() {
        let t = TopK::from_values(3, &[5.0, 1.0, 9.0, 7.0, 3.0, 9.0]);
        assert_eq!(t.sorted_desc(), vec![9.0, 9.0, 7.0]);
        assert_eq!(t.threshold(), Some(7.0));
    }

    #[test]
    fn merge_with_smaller_capacity_truncates() {
        let mut a = TopK::from_values(4, &[1.0, 2.0, 3.0, 4.0]);
        let b = TopK::from_values(2, &[2.5, 0.5]);
        a.merge(&b);
        assert_eq!(a.capacity(), 2);
        assert_eq!(a.sorted_desc(), vec![4.0, 3.0]);
    }

    #[test]
    fn zero_capacity_keeps_nothing() {
        let t = TopK::from_values(0, &[1.0]);
        assert!(t.is_empty());
    }
}
