//! An allocator that counts each thread's allocations, for tests that hold a decoder to a
//! number of them: one that reserves a field's room once makes at most one allocation per
//! field, and none when the pool ([`crate::recycle`]) has a vector; one that grows its vectors
//! by doubling makes one per doubling. This crate's unit-test binary uses it; a dependent's
//! test binary opts in with the `testing` feature and
//! `#[global_allocator] static A: Counting = Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates, so the
    // allocator may use it.
    static MADE: Cell<usize> = const { Cell::new(0) };
}

/// What `f` returns, and the allocations and reallocations it made on this thread (0 unless
/// [`Counting`] is the global allocator).
pub fn allocations<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = made();
    let r = f();
    (r, made() - before)
}

fn made() -> usize {
    MADE.try_with(Cell::get).unwrap_or(0)
}

fn count() {
    let _ = MADE.try_with(|c| c.set(c.get() + 1));
}

/// The system's allocator, counting.
pub struct Counting;

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds
// `GlobalAlloc`'s contract; counting touches only a thread-local `Cell` and never allocates.
// `allocations_are_counted_per_thread` tests it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: the caller's guarantees for `layout` are `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` was allocated by this allocator, i.e. by `System`, with `layout`, as
        // the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    #[test]
    fn allocations_are_counted_per_thread() {
        assert_eq!(allocations(|| 1 + 1).1, 0);
        let (v, n) = allocations(|| Vec::<u64>::with_capacity(10));
        assert_eq!(n, 1);
        // Growing a vector a push at a time: a reallocation per doubling.
        let (_, n) = allocations(|| {
            let mut v = v;
            for i in 0..100 {
                v.push(i);
            }
            v
        });
        assert_eq!(n, 4, "10 → 20 → 40 → 80 → 160");
        let elsewhere = std::thread::spawn(|| allocations(|| vec![1u8; 5]).1);
        assert_eq!(elsewhere.join().expect("thread"), 1);
    }
}
