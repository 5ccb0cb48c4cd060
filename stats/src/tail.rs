//! Tail-index estimators on `|x|`, from the largest order statistics.
//!
//! Convention: the tail index `α` is that of the survival function, `P(|X| > x) ~ x^(−α)`, and
//! `γ = 1/α` is the extreme-value index. (Clauset's density exponent is `α + 1`.) With the
//! descending order statistics `X_(1) ≥ X_(2) ≥ …`:
//!
//! * **Hill** (1975): `γ̂ = (1/k) Σ_{i≤k} ln(X_(i)/X_(k+1))`; `se(α̂) = α̂/√k`.
//! * **Pickands** (1975): `γ̂ = ln((X_(k) − X_(2k)) / (X_(2k) − X_(4k))) / ln 2`; asymptotic
//!   variance of `γ̂`: `γ²(2^{2γ+1} + 1) / (2(2^γ − 1) ln 2)² / k` (Dekkers & de Haan 1989).
//! * **Dekkers–Einmahl–de Haan** (1989) moment estimator: with `M_j = (1/k) Σ ln^j(X_(i)/X_(k+1))`,
//!   `γ̂ = M_1 + 1 − ½ (1 − M_1²/M_2)^{−1}`; for `γ > 0` the asymptotic variance is `1 + γ²`.
//! * **α-stable** (Mohammadi, Mohammadpour & Ogata 2015, as used by Simsekli et al. 2019): split
//!   `K = K1·K2` signed values into `K2` blocks of `K1`, `Y_i` the block sums;
//!   `1/α̂ = (mean ln|Y_i| − mean ln|X_j|) / ln K1`, valid for `α ∈ (0, 2]`.
//!
//! Mergeability: Hill and DEdH need the top `k+1` values, Pickands the top `4k`; the top-k of
//! a union is the top-k of the parts' top-k ([`crate::TopK`]), so all three run on merged
//! summaries. The α-stable estimator needs every raw value (block sums) and is offline only.
//!
//! Default `k` for a sample of `n` values: `⌊√n⌋` (at least 2), capped by what the top list
//! holds. `√n` balances the variance (∝ 1/k) against second-order bias for the common heavy
//! tails (Student-t, stable) without tuning; pass `k` explicitly to study stability.

use crate::StatsError;

/// One tail-index estimate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TailEstimate {
    /// Tail index α = 1/γ (`None` when γ ≤ 0: no heavy tail).
    pub alpha: Option<f64>,
    /// Extreme-value index γ.
    pub gamma: f64,
    /// Standard error of α̂ (delta method from γ̂), where known.
    pub alpha_se: Option<f64>,
    /// Order statistics used.
    pub k: usize,
}

impl TailEstimate {
    fn from_gamma(gamma: f64, gamma_se: Option<f64>, k: usize) -> Result<Self, StatsError> {
        if !gamma.is_finite() {
            return Err(StatsError::Degenerate(
                "estimate is not finite (ties in the tail?)",
            ));
        }
        let alpha = (gamma > 0.0).then(|| 1.0 / gamma);
        Ok(Self {
            alpha,
            gamma,
            alpha_se: alpha.and(gamma_se.map(|s| s / (gamma * gamma))),
            k,
        })
    }
}

/// Default number of order statistics for `n` values with `available` top values.
pub fn default_k(n: usize, available: usize) -> usize {
    ((n as f64).sqrt().floor() as usize)
        .max(2)
        .min(available.saturating_sub(1))
}

fn check_desc(desc: &[f64], need: usize) -> Result<(), StatsError> {
    if desc.iter().any(|v| !v.is_finite() || *v < 0.0) {
        return Err(StatsError::NonFinite);
    }
    if desc.windows(2).any(|w| w[0] < w[1]) {
        return Err(StatsError::BadParameter(
            "order statistics must be sorted descending",
        ));
    }
    if desc.len() < need {
        return Err(StatsError::TooFewValues {
            needed: need,
            got: desc.len(),
        });
    }
    Ok(())
}

/// Log-moments `M_1`, `M_2` of the top `k` over `X_(k+1)`.
fn log_moments(desc: &[f64], k: usize) -> Result<(f64, f64), StatsError> {
    let base = desc[k];
    if base <= 0.0 {
        return Err(StatsError::Degenerate(
            "X_(k+1) is zero: take fewer order statistics",
        ));
    }
    let (mut m1, mut m2) = (0.0, 0.0);
    for &x in &desc[..k] {
        let l = (x / base).ln();
        m1 += l;
        m2 += l * l;
    }
    Ok((m1 / k as f64, m2 / k as f64))
}

/// Hill estimator on the top `k` of `desc` (descending |x|; needs `k + 1` values).
pub fn hill(desc: &[f64], k: usize) -> Result<TailEstimate, StatsError> {
    if k < 1 {
        return Err(StatsError::BadParameter("k must be at least 1"));
    }
    check_desc(desc, k + 1)?;
    let (m1, _) = log_moments(desc, k)?;
    if m1 <= 0.0 {
        return Err(StatsError::Degenerate(
            "the top order statistics are all equal",
        ));
    }
    // se(γ̂) = γ/√k, so se(α̂) = α/√k.
    TailEstimate::from_gamma(m1, Some(m1 / (k as f64).sqrt()), k)
}

/// Pickands estimator (needs `4k` values).
pub fn pickands(desc: &[f64], k: usize) -> Result<TailEstimate, StatsError> {
    if k < 1 {
        return Err(StatsError::BadParameter("k must be at least 1"));
    }
    check_desc(desc, 4 * k)?;
    let (a, b, c) = (desc[k - 1], desc[2 * k - 1], desc[4 * k - 1]);
    if b - c <= 0.0 || a - b <= 0.0 {
        return Err(StatsError::Degenerate(
            "tied order statistics in the Pickands spacing",
        ));
    }
    let ln2 = std::f64::consts::LN_2;
    let g = ((a - b) / (b - c)).ln() / ln2;
    let var = if g.abs() < 1e-12 {
        // Limit γ → 0 of the variance formula.
        3.0 / (ln2.powi(4) * 4.0)
    } else {
        g * g * (2f64.powf(2.0 * g + 1.0) + 1.0) / (2.0 * (2f64.powf(g) - 1.0) * ln2).powi(2)
    };
    TailEstimate::from_gamma(g, Some((var / k as f64).sqrt()), k)
}

/// Dekkers–Einmahl–de Haan moment estimator (needs `k + 1` values).
pub fn dedh(desc: &[f64], k: usize) -> Result<TailEstimate, StatsError> {
    if k < 2 {
        return Err(StatsError::BadParameter("k must be at least 2"));
    }
    check_desc(desc, k + 1)?;
    let (m1, m2) = log_moments(desc, k)?;
    if m2 <= 0.0 {
        return Err(StatsError::Degenerate(
            "the top order statistics are all equal",
        ));
    }
    let g = m1 + 1.0 - 0.5 / (1.0 - m1 * m1 / m2);
    let se = (g > 0.0).then(|| ((1.0 + g * g) / k as f64).sqrt());
    TailEstimate::from_gamma(g, se, k)
}

/// α-stable index of Mohammadi et al. (2015) on signed values, blocks of `k1` (default
/// `⌊√n⌋`). Uses the first `⌊n/k1⌋·k1` values.
pub fn alpha_stable(values: &[f64], k1: Option<usize>) -> Result<TailEstimate, StatsError> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(StatsError::NonFinite);
    }
    let n = values.len();
    let k1 = k1.unwrap_or((n as f64).sqrt().floor() as usize);
    if k1 < 2 || n / k1.max(1) < 2 {
        return Err(StatsError::TooFewValues { needed: 4, got: n });
    }
    let k2 = n / k1;
    let used = &values[..k1 * k2];
    if used.contains(&0.0) {
        return Err(StatsError::Degenerate(
            "a zero value has no logarithm: drop zeros first",
        ));
    }
    let mean_log_x = used.iter().map(|x| x.abs().ln()).sum::<f64>() / used.len() as f64;
    let mut mean_log_y = 0.0;
    for block in used.chunks_exact(k1) {
        let y: f64 = block.iter().sum();
        if y == 0.0 {
            return Err(StatsError::Degenerate("a block sums to zero"));
        }
        mean_log_y += y.abs().ln();
    }
    mean_log_y /= k2 as f64;
    let inv_alpha = (mean_log_y - mean_log_x) / (k1 as f64).ln();
    if !(inv_alpha.is_finite() && inv_alpha > 0.0) {
        return Err(StatsError::Degenerate("estimate is not positive"));
    }
    // The estimator targets 1/α directly; γ is reported as 1/α for uniformity.
    Ok(TailEstimate {
        alpha: Some(1.0 / inv_alpha),
        gamma: inv_alpha,
        alpha_se: None,
        k: k1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exact Pareto quantiles: X_(i) = (n / i)^(1/α) for a perfect sample.
    fn ideal_pareto(n: usize, alpha: f64) -> Vec<f64> {
        (1..=n)
            .map(|i| (n as f64 / (i as f64 - 0.5)).powf(1.0 / alpha))
            .collect()
    }

    #[test]
    fn estimators_recover_an_ideal_pareto() {
        let desc = ideal_pareto(100_000, 1.5);
        let h = hill(&desc, 2000).unwrap();
        assert!((h.alpha.unwrap() - 1.5).abs() < 0.01, "{h:?}");
        let p = pickands(&desc, 2000).unwrap();
        assert!((p.alpha.unwrap() - 1.5).abs() < 0.01, "{p:?}");
        let d = dedh(&desc, 2000).unwrap();
        assert!((d.alpha.unwrap() - 1.5).abs() < 0.02, "{d:?}");
    }

    #[test]
    fn hill_closed_form_on_a_tiny_sample() {
        // γ̂ = (ln 8 + ln 4 + ln 2)/3 / with base X_(4) = 1 → ln(64)/3 = 2 ln 2.
        let h = hill(&[8.0, 4.0, 2.0, 1.0], 3).unwrap();
        assert!((h.gamma - 2.0 * std::f64::consts::LN_2).abs() < 1e-15);
        assert!((h.alpha_se.unwrap() - h.alpha.unwrap() / 3f64.sqrt()).abs() < 1e-15);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        assert!(hill(&[1.0], 1).is_err());
        assert!(hill(&[2.0, 2.0, 2.0], 2).is_err());
        assert!(hill(&[1.0, 2.0, 3.0], 1).is_err());
        assert!(hill(&[f64::NAN, 1.0], 1).is_err());
        assert!(pickands(&[4.0, 3.0, 2.0], 1).is_err());
        assert!(dedh(&[3.0, 2.0, 1.0, 0.0], 3).is_err());
        assert!(alpha_stable(&[1.0, 2.0], None).is_err());
        assert!(alpha_stable(&[1.0, f64::INFINITY, 2.0, 3.0], Some(2)).is_err());
    }
}
