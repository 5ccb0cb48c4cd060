//! Calibration of Clauset's bootstrap p-value, with fixed seeds.
//!
//! * Under the null (true power laws) p is roughly uniform: over 30 samples of n = 300 with 50
//!   replicates each, the mean p lies in [0.3, 0.7] and at most 25 % fall at or below 0.1
//!   (expected 10 %).
//! * A lognormal with enough tail is ruled out: σ = 0.5, n = 20000 (≈1200 values above the
//!   fitted x_min) gives p ≤ 0.1 with 50 replicates. With less tail (n = 5000, ≈300 values
//!   above x_min) the lognormal's upper tail is indistinguishable from a power law and p is
//!   large, as Clauset et al. (2009, §4.2) warn.

use gradtel_stats::bootstrap::p_value;
use gradtel_stats::powerlaw::{FitOptions, Prepared, fit};
use gradtel_stats::rng::SplitMix64;

fn p_of(xs: &[f64], replicates: usize, seed: u64) -> f64 {
    let o = FitOptions::default();
    let f = fit(xs, &o).unwrap();
    let prepared = Prepared::from_values(xs).unwrap();
    p_value(&prepared, &f, &o, replicates, seed, 2)
        .unwrap()
        .p_value
}

#[test]
fn p_is_roughly_uniform_on_true_power_laws() {
    let mut rng = SplitMix64::new(0xC0FF_EE00_1234_5678);
    let ps: Vec<f64> = (0..30)
        .map(|i| {
            let xs: Vec<f64> = (0..300).map(|_| rng.uniform().powf(-1.0 / 1.5)).collect();
            p_of(&xs, 50, i)
        })
        .collect();
    let mean = ps.iter().sum::<f64>() / ps.len() as f64;
    let low = ps.iter().filter(|&&p| p <= 0.1).count() as f64 / ps.len() as f64;
    assert!((0.3..=0.7).contains(&mean), "mean p {mean}: {ps:?}");
    assert!(low <= 0.25, "{low} of p-values <= 0.1: {ps:?}");
}

#[test]
fn lognormal_is_ruled_out() {
    let mut rng = SplitMix64::new(42);
    let xs: Vec<f64> = (0..20_000).map(|_| (0.5 * rng.normal()).exp()).collect();
    let p = p_of(&xs, 50, 1);
    assert!(p <= 0.1, "p = {p}");
}
