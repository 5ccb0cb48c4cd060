//! Consistency of the tail-index estimators at n = 10⁶ with their default k (⌊√n⌋ = 1000):
//! Pareto with tail index 1.5, and |Student-t(3)| (tail index 3 = the degrees of freedom).
//! Also: Hill on a merged top-k equals Hill on the whole sample.

use gradtel_stats::TopK;
use gradtel_stats::rng::SplitMix64;
use gradtel_stats::tail::{alpha_stable, dedh, default_k, hill, pickands};

fn desc_abs(xs: &[f64]) -> Vec<f64> {
    let mut d: Vec<f64> = xs.iter().map(|x| x.abs()).collect();
    d.sort_by(|a, b| b.total_cmp(a));
    d
}

#[test]
fn hill_is_within_5_percent_at_a_million() {
    let n = 1_000_000;
    let mut rng = SplitMix64::new(0x1234_5678_9ABC_DEF1);
    let pareto: Vec<f64> = (0..n).map(|_| rng.uniform().powf(-1.0 / 1.5)).collect();
    let t3: Vec<f64> = (0..n).map(|_| rng.student_t(3)).collect();
    for (name, xs, truth) in [("pareto", &pareto, 1.5), ("student-t3", &t3, 3.0)] {
        let d = desc_abs(xs);
        let k = default_k(n, d.len());
        let h = hill(&d, k).unwrap().alpha.unwrap();
        assert!(
            (h - truth).abs() <= 0.05 * truth,
            "{name}: Hill {h} vs {truth}"
        );
        // The other estimators are noisier: each must land within 3 of its own standard errors.
        for (est, e) in [("Pickands", pickands(&d, k / 4)), ("DEdH", dedh(&d, k))] {
            let e = e.unwrap();
            let (a, se) = (e.alpha.unwrap(), e.alpha_se.unwrap());
            assert!((a - truth).abs() <= 3.0 * se, "{name}: {est} {a} ± {se}");
        }
    }
    // α-stable estimator on symmetric Pareto-tailed data with α = 1.5 (< 2, its domain).
    let signed: Vec<f64> = pareto
        .iter()
        .enumerate()
        .map(|(i, x)| if i % 2 == 0 { *x } else { -x })
        .collect();
    let a = alpha_stable(&signed, None).unwrap().alpha.unwrap();
    assert!((a - 1.5).abs() < 0.2, "alpha-stable {a}");
}

#[test]
fn hill_from_a_merged_top_k_equals_hill_on_the_whole() {
    let mut rng = SplitMix64::new(99);
    let xs: Vec<f64> = (0..50_000).map(|_| rng.student_t(3)).collect();
    let mut merged = TopK::new(301);
    for part in xs.chunks(7_000) {
        merged.merge(&TopK::from_values(301, &desc_abs(part)));
    }
    let whole = desc_abs(&xs);
    let a = hill(&merged.sorted_desc(), 300).unwrap();
    let b = hill(&whole, 300).unwrap();
    assert_eq!(a, b);
}
