//! Power-law fit of a covariance spectrum, `λ_k ∝ k^(−s)` (Xie et al.'s fourth object).
//!
//! Over a rank window `[k_lo, k_hi]` (1-based, inclusive) the fit is ordinary least squares of
//! `ln λ_k` on `ln k`: slope `−s`, intercept `c`, and the coefficient of determination R².
//! The KS-type distance compares the normalised spectrum over the window, read as a distribution
//! on ranks (`p_k = λ_k / Σ λ`), with the fitted one (`q_k ∝ k^(−s)`): `max_k |P(k) − Q(k)|` of
//! their cumulative sums. It is 0 for an exact power law and grows with curvature.
//!
//! **Default window** `[2, ⌊r/2⌋]` of the r positive eigenvalues (at least 3 ranks): the first
//! eigenvalue is left out because the leading direction of gradients (the mean/drift direction,
//! or a few outliers) routinely sits off the power law, and the upper half is left out because a
//! Frequent-Directions sketch under-estimates its smaller eigenvalues by up to Δ (DESIGN.md §6),
//! so only the head of the sketched spectrum is trustworthy. Pass an explicit window to fit
//! elsewhere; report Δ alongside.

use crate::StatsError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SpectrumFit {
    /// Decay exponent s of λ_k ∝ k^(−s).
    pub slope: f64,
    /// Intercept of ln λ_k = c − s ln k.
    pub intercept: f64,
    pub r2: f64,
    pub ks_distance: f64,
    /// The 1-based inclusive rank window used.
    pub window: (usize, usize),
}

/// Default window for `r` positive eigenvalues.
pub fn default_window(r: usize) -> (usize, usize) {
    let lo = 2.min(r.max(1));
    (lo, (r / 2).max(lo + 2).min(r))
}

/// Fit `eigenvalues` (descending) on `window` (default: [`default_window`]).
pub fn fit(eigenvalues: &[f64], window: Option<(usize, usize)>) -> Result<SpectrumFit, StatsError> {
    if eigenvalues.iter().any(|v| !v.is_finite()) {
        return Err(StatsError::NonFinite);
    }
    if eigenvalues.windows(2).any(|w| w[0] < w[1]) {
        return Err(StatsError::BadParameter(
            "eigenvalues must be sorted descending",
        ));
    }
    let positive = eigenvalues.iter().take_while(|v| **v > 0.0).count();
    let (lo, hi) = window.unwrap_or_else(|| default_window(positive));
    if lo < 1 || hi > positive || hi < lo + 2 {
        return Err(StatsError::TooFewValues {
            needed: 3,
            got: hi.saturating_sub(lo) + 1,
        });
    }
    let pts: Vec<(f64, f64)> = (lo..=hi)
        .map(|k| ((k as f64).ln(), eigenvalues[k - 1].ln()))
        .collect();
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let syy: f64 = pts.iter().map(|p| (p.1 - my).powi(2)).sum();
    let b = sxy / sxx;
    let a = my - b * mx;
    let r2 = if syy > 0.0 {
        (sxy * sxy) / (sxx * syy)
    } else {
        1.0
    };
    let s = -b;
    let total: f64 = eigenvalues[lo - 1..hi].iter().sum();
    let fitted: Vec<f64> = (lo..=hi).map(|k| (k as f64).powf(-s)).collect();
    let fitted_total: f64 = fitted.iter().sum();
    let (mut p, mut q, mut d) = (0.0, 0.0, 0.0f64);
    for (i, k) in (lo..=hi).enumerate() {
        p += eigenvalues[k - 1] / total;
        q += fitted[i] / fitted_total;
        d = d.max((p - q).abs());
    }
    Ok(SpectrumFit {
        slope: s,
        intercept: a,
        r2,
        ks_distance: d,
        window: (lo, hi),
    })
}

/// Fit a Frequent-Directions spectrum. Each sketched eigenvalue λ̂_k satisfies
/// `λ̂_k ≤ λ_k ≤ λ̂_k + Δ`, and FD removes the same δ from every retained direction at each
/// shrink, so for directions that stayed in the sketch (the head of the spectrum) `λ̂_k + Δ` is
/// nearly exact while `λ̂_k` is biased low by Δ, which would bend the log–log line. The fit
/// therefore uses `λ̂_k + Δ` on the window `[2, ⌊ℓ/2⌋]` (default), where the directions persist.
pub fn fit_sketch(
    eigenvalues: &[f64],
    delta: f64,
    ell: usize,
    window: Option<(usize, usize)>,
) -> Result<SpectrumFit, StatsError> {
    if !(delta.is_finite() && delta >= 0.0) {
        return Err(StatsError::BadParameter(
            "shrinkage must be finite and non-negative",
        ));
    }
    let positive = eigenvalues.iter().take_while(|v| **v > 0.0).count();
    let compensated: Vec<f64> = eigenvalues[..positive].iter().map(|v| v + delta).collect();
    let lo = 2.min(positive.max(1));
    let window = window.unwrap_or((lo, (ell / 2).min(positive).max(lo + 2)));
    fit(&compensated, Some(window))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_power_law_is_recovered() {
        let ev: Vec<f64> = (1..=100).map(|k| 3.0 * (k as f64).powf(-1.3)).collect();
        let f = fit(&ev, None).unwrap();
        assert!((f.slope - 1.3).abs() < 1e-12);
        assert!((f.intercept - 3f64.ln()).abs() < 1e-12);
        assert!((f.r2 - 1.0).abs() < 1e-12);
        assert!(f.ks_distance < 1e-12);
        assert_eq!(f.window, (2, 50));
    }

    #[test]
    fn curvature_shows_in_r2_and_distance() {
        let ev: Vec<f64> = (1..=100).map(|k| (-(k as f64) / 10.0).exp()).collect();
        let f = fit(&ev, None).unwrap();
        assert!(f.r2 < 0.95 && f.ks_distance > 0.05, "{f:?}");
    }

    #[test]
    fn bad_input_is_typed() {
        assert!(fit(&[3.0, 2.0], None).is_err());
        assert!(fit(&[1.0, 2.0, 3.0, 4.0], None).is_err());
        assert!(fit(&[4.0, f64::NAN, 1.0], None).is_err());
        assert!(fit(&[4.0, 3.0, 2.0, 1.0], Some((1, 9))).is_err());
    }
}
