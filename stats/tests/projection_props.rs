//! Property tests: projections of shards sum to the projection of the whole vector, and
//! merging Frequent-Directions sketches is associative within the sketch bound.

use gradtel_stats::fd::FrequentDirections;
use gradtel_stats::projection::{CountSketch, GaussianProjection, Projection};
use proptest::prelude::*;

fn cuts(len: usize) -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(0..=len, 0..6).prop_map(|mut v| {
        v.sort_unstable();
        v
    })
}

fn by_shards(p: &dyn Projection, x: &[f32], cuts: &[usize]) -> Vec<f64> {
    let mut out = vec![0.0; p.dim()];
    let mut start = 0;
    for &c in cuts.iter().chain(std::iter::once(&x.len())) {
        p.project_range(start as u64, &x[start..c], &mut out);
        start = c;
    }
    out
}

proptest! {
    #[test]
    fn countsketch_shards_sum_bit_for_bit_on_exact_inputs(
        (x, cuts) in prop::collection::vec(-1000i32..1000, 0..3000)
            .prop_map(|v| v.into_iter().map(|i| i as f32 / 8.0).collect::<Vec<f32>>())
            .prop_flat_map(|x| { let n = x.len(); (Just(x), cuts(n)) }),
        m in 1usize..64,
        seed in any::<u64>(),
    ) {
        let p = CountSketch::new(m, seed);
        let whole = by_shards(&p, &x, &[]);
        prop_assert_eq!(by_shards(&p, &x, &cuts), whole);
    }

    #[test]
    fn shards_sum_to_the_whole_to_rounding(
        (x, cuts) in prop::collection::vec((-30i32..3, -1.0f32..1.0), 0..2000)
            .prop_map(|v| v.into_iter().map(|(e, m)| m * 10f32.powi(e)).collect::<Vec<f32>>())
            .prop_flat_map(|x| { let n = x.len(); (Just(x), cuts(n)) }),
        m in 1usize..32,
        seed in any::<u64>(),
    ) {
        let l1: f64 = x.iter().map(|v| f64::from(v.abs())).sum();
        // CountSketch sums up to 17 values per row in f32 before adding them in f64
        // (`F32_ROW_RUN`), so shards and the whole may differ by that rounding, twice; Gaussian
        // entries are below ~6/√m in magnitude for these sizes and sum in f64.
        let countsketch_tol = 2.0 * 17.0 * f64::from(f32::EPSILON) / 2.0 * l1;
        for (p, tol) in [
            (&CountSketch::new(m, seed) as &dyn Projection, countsketch_tol),
            (&GaussianProjection::new(m, seed), 1e-12 * 8.0 * l1),
        ] {
            let whole = by_shards(p, &x, &[]);
            let parts = by_shards(p, &x, &cuts);
            for (a, b) in whole.iter().zip(&parts) {
                prop_assert!((a - b).abs() <= tol.max(1e-300), "{a} vs {b}");
            }
        }
    }

    #[test]
    fn fd_merge_is_associative_within_the_bound(
        rows in prop::collection::vec(prop::collection::vec(-10.0f64..10.0, 6), 3..90),
        c1 in 1usize..30, c2 in 1usize..30,
        centred in any::<bool>(),
    ) {
        let n = rows.len();
        let (i, j) = ((c1 % n).min(n - 2) , 0);
        let k = (i + 1 + c2 % (n - i - 1)).min(n - 1);
        let parts = [&rows[j..i], &rows[i..k], &rows[k..]];
        let sketch = |chunk: &[Vec<f64>]| {
            let mut fd = FrequentDirections::new(6, 3, centred).unwrap();
            chunk.iter().for_each(|r| { fd.insert(r).unwrap(); });
            fd
        };
        let (a, b, c) = (sketch(parts[0]), sketch(parts[1]), sketch(parts[2]));
        let mut left = a.clone();
        left.merge(&b).unwrap();
        left.merge(&c).unwrap();
        let mut bc = b.clone();
        bc.merge(&c).unwrap();
        let mut right = a.clone();
        right.merge(&bc).unwrap();
        prop_assert_eq!(left.rows(), right.rows());
        let (l, r) = (left.eigenvalues().unwrap(), right.eigenvalues().unwrap());
        let bound = left.shrinkage().max(right.shrinkage());
        let scale = l.first().copied().unwrap_or(0.0).max(1.0);
        for t in 0..l.len().min(r.len()).min(3) {
            prop_assert!((l[t] - r[t]).abs() <= bound + 1e-9 * scale, "{t}: {} vs {} (bound {bound})", l[t], r[t]);
        }
    }
}
