//! Property tests: for every summary type, merging the summaries of the parts of any split
//! equals summarising the concatenation.

use gradtel_stats::{GradSummary, LogHistogram, Moments, SparseHistogram, SparseSummary, TopK};
use proptest::prelude::*;

fn close(a: f64, b: f64, scale: f64) -> bool {
    (a - b).abs() <= 1e-9 * scale.max(1e-300)
}

/// Values with mixed scales and signs, as gradients have.
fn values() -> impl Strategy<Value = Vec<f64>> {
    prop::collection::vec(
        (any::<bool>(), -30i32..3, 0.0f64..1.0)
            .prop_map(|(neg, e, m)| if neg { -1.0 } else { 1.0 } * m * 10f64.powi(e)),
        0..1200,
    )
}

fn splits(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len, 0..5).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

fn parts(xs: &[f64], cuts: &[usize]) -> Vec<Vec<f64>> {
    let mut out = Vec::new();
    let mut start = 0;
    for &c in cuts {
        out.push(xs[start..c].to_vec());
        start = c;
    }
    out.push(xs[start..].to_vec());
    out
}

proptest! {
    #[test]
    fn moments_merge_equals_concatenation((xs, cuts) in values().prop_flat_map(|v| { let n = v.len(); (Just(v), splits(n)) })) {
        let whole = Moments::from_slice(&xs);
        let mut merged = Moments::new();
        for p in parts(&xs, &cuts) {
            merged.merge(&Moments::from_slice(&p));
        }
        prop_assert_eq!(merged.n, whole.n);
        let scale2 = whole.m2.abs() + whole.mean * whole.mean * whole.n as f64;
        prop_assert!(close(merged.mean, whole.mean, whole.mean.abs() + scale2.sqrt()));
        prop_assert!(close(merged.m2, whole.m2, scale2));
        prop_assert!(close(merged.m3, whole.m3, scale2.powf(1.5)));
        prop_assert!(close(merged.m4, whole.m4, scale2 * scale2));
    }

    #[test]
    fn histogram_merge_is_exact((xs, cuts) in values().prop_flat_map(|v| { let n = v.len(); (Just(v), splits(n)) })) {
        let mut whole = LogHistogram::default();
        xs.iter().for_each(|x| whole.record(x.abs()));
        let mut merged = LogHistogram::default();
        for p in parts(&xs, &cuts) {
            let mut h = LogHistogram::default();
            p.iter().for_each(|x| h.record(x.abs()));
            merged.merge(&h).unwrap();
        }
        prop_assert_eq!(merged.buckets().collect::<Vec<_>>(), whole.buckets().collect::<Vec<_>>());
        prop_assert_eq!(merged.total(), whole.total());
    }

    #[test]
    fn topk_merge_is_exact((xs, cuts) in values().prop_flat_map(|v| { let n = v.len(); (Just(v), splits(n)) }), k in 0usize..40) {
        let abs: Vec<f64> = xs.iter().map(|x| x.abs()).collect();
        let whole = TopK::from_values(k, &abs);
        let mut merged = TopK::new(k);
        for p in parts(&abs, &cuts) {
            merged.merge(&TopK::from_values(k, &p));
        }
        let mut sorted = abs.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        sorted.truncate(k);
        prop_assert_eq!(merged.sorted_desc(), sorted.clone());
        prop_assert_eq!(whole.sorted_desc(), sorted);
    }

    #[test]
    fn grad_summary_merge_equals_concatenation(
        (mut xs, cuts) in values().prop_flat_map(|v| { let n = v.len(); (Just(v), splits(n)) }),
        specials in prop::collection::vec((0usize..400, 0u8..4), 0..10),
    ) {
        for (at, kind) in specials {
            if !xs.is_empty() {
                let i = at % xs.len();
                xs[i] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0][kind as usize];
            }
        }
        let mut whole = GradSummary::new(16, 7).unwrap();
        whole.extend_f64(&xs);
        let mut merged = GradSummary::new(16, 7).unwrap();
        for p in parts(&xs, &cuts) {
            let mut s = GradSummary::new(16, 7).unwrap();
            s.extend_f64(&p);
            merged.merge(&s).unwrap();
        }
        prop_assert_eq!(merged.moments.n, whole.moments.n);
        prop_assert_eq!((merged.nan_count, merged.pos_inf_count, merged.neg_inf_count),
            (whole.nan_count, whole.pos_inf_count, whole.neg_inf_count));
        prop_assert_eq!((merged.pos_count, merged.neg_count, merged.zero_count),
            (whole.pos_count, whole.neg_count, whole.zero_count));
        prop_assert_eq!(merged.max_abs, whole.max_abs);
        prop_assert!(close(merged.sum_sq, whole.sum_sq, whole.sum_sq));
        prop_assert_eq!(&merged.abs_hist, &whole.abs_hist);
        prop_assert_eq!(&merged.top_abs, &whole.top_abs);
        merged.validate().unwrap();
    }

    /// The collector's path: parts as they come off the wire (sparse histograms, checked by
    /// `SparseSummary::new`), the first expanded, the rest merged sparse, equal the whole.
    #[test]
    fn sparse_merge_equals_concatenation(
        (xs, cuts) in values().prop_flat_map(|v| { let n = v.len(); (Just(v), splits(n)) }),
    ) {
        let mut whole = GradSummary::new(16, 7).unwrap();
        whole.extend_f64(&xs);
        let received: Vec<SparseSummary> = parts(&xs, &cuts)
            .iter()
            .map(|p| {
                let mut s = GradSummary::new(16, 7).unwrap();
                s.extend_f64(p);
                let mut rest = s.clone();
                rest.abs_hist = LogHistogram::new(7).unwrap();
                let (index, count) = s.abs_hist.sparse();
                let sparse = SparseSummary::new(rest, SparseHistogram::new(7, index, count).unwrap()).unwrap();
                assert_eq!(sparse, SparseSummary::of(&s));
                assert_eq!(sparse.to_dense(), s);
                sparse
            })
            .collect();
        let mut merged = received[0].to_dense();
        for s in &received[1..] {
            merged.merge_sparse(s).unwrap();
        }
        let mut dense = received[0].to_dense();
        for s in &received[1..] {
            dense.merge(&s.to_dense()).unwrap();
        }
        prop_assert_eq!(&merged, &dense);
        prop_assert_eq!(&merged.abs_hist, &whole.abs_hist);
        prop_assert_eq!(&merged.top_abs, &whole.top_abs);
        prop_assert_eq!((merged.pos_count, merged.neg_count, merged.zero_count),
            (whole.pos_count, whole.neg_count, whole.zero_count));
        merged.validate().unwrap();
    }
}

proptest! {
    #[test]
    fn block_fast_path_equals_pushing_one_by_one(xs in values(), specials in prop::collection::vec((0usize..400, 0u8..4), 0..10)) {
        let mut xs = xs;
        for (at, kind) in specials {
            if !xs.is_empty() {
                let i = at % xs.len();
                xs[i] = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0][kind as usize];
            }
        }
        let mut fast = GradSummary::new(16, 7).unwrap();
        fast.extend_f64(&xs);
        let mut slow = GradSummary::new(16, 7).unwrap();
        xs.iter().for_each(|&x| slow.push(x));
        let (a, b) = (fast.moments, slow.moments);
        prop_assert_eq!(a.n, b.n);
        let scale2 = b.m2.abs() + b.mean * b.mean * b.n as f64;
        prop_assert!(close(a.mean, b.mean, b.mean.abs() + scale2.sqrt()));
        prop_assert!(close(a.m2, b.m2, scale2));
        prop_assert!(close(a.m3, b.m3, scale2.powf(1.5)));
        prop_assert!(close(a.m4, b.m4, scale2 * scale2));
        prop_assert!(close(fast.sum_sq, slow.sum_sq, slow.sum_sq));
        prop_assert_eq!(fast.max_abs, slow.max_abs);
        prop_assert_eq!((fast.nan_count, fast.pos_inf_count, fast.neg_inf_count, fast.pos_count, fast.neg_count, fast.zero_count),
            (slow.nan_count, slow.pos_inf_count, slow.neg_inf_count, slow.pos_count, slow.neg_count, slow.zero_count));
        prop_assert_eq!(&fast.abs_hist, &slow.abs_hist);
        prop_assert_eq!(&fast.top_abs, &slow.top_abs);
    }
}

proptest! {
    /// The f32 fast path, fed in arbitrary pieces through one stream, equals pushing the same
    /// values one at a time: exactly for counts, histogram, top-k and max; to rounding for the
    /// sums. Bit patterns are arbitrary finite f32 (zeros, subnormals, 2^±127 included).
    /// Samples reach past 4,096 values, so pieces both through and around the histogram's
    /// count lanes (which short pieces skip) meet in one stream.
    #[test]
    fn f32_stream_in_pieces_equals_the_value_path(
        (xs, cuts) in prop::collection::vec(any::<u32>(), 0..10_000)
            .prop_map(|bits| bits.into_iter()
                .map(f32::from_bits)
                .map(|x| if x.is_finite() { x } else { 0.0 })
                .collect::<Vec<f32>>())
            .prop_flat_map(|v| { let n = v.len(); (Just(v), splits(n)) })
    ) {
        let mut fast = GradSummary::new(16, 7).unwrap();
        {
            let mut stream = fast.f32_stream();
            let mut start = 0;
            for &c in cuts.iter().chain(std::iter::once(&xs.len())) {
                stream.push(&xs[start..c]);
                start = c;
            }
        }
        let mut slow = GradSummary::new(16, 7).unwrap();
        for &x in &xs {
            slow.push(f64::from(x));
        }
        prop_assert_eq!(&fast.abs_hist, &slow.abs_hist);
        prop_assert_eq!(fast.top_abs.sorted_desc(), slow.top_abs.sorted_desc());
        prop_assert_eq!(
            (fast.pos_count, fast.neg_count, fast.zero_count, fast.moments.n),
            (slow.pos_count, slow.neg_count, slow.zero_count, slow.moments.n)
        );
        prop_assert_eq!(fast.max_abs, slow.max_abs);
        let scale = slow.sum_sq;
        prop_assert!(close(fast.sum_sq, slow.sum_sq, scale), "{} vs {}", fast.sum_sq, slow.sum_sq);
    }
}
