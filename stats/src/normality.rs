//! Gaussianity tests, matching `scipy.stats` (1.17).
//!
//! * **D'Agostino–Pearson K²** (`scipy.stats.normaltest`): `K² = Z_s² + Z_k²` with Z_s the
//!   skewness test of D'Agostino (1970) and Z_k the kurtosis test of Anscombe & Glynn (1983);
//!   `p = P(χ²₂ > K²) = exp(−K²/2)`. Needs n ≥ 8 (scipy's skewtest limit).
//! * **Jarque–Bera** (1980): `JB = n/6 · (S² + K²/4)` with S the biased skewness and K the biased
//!   excess kurtosis; `p = exp(−JB/2)`.
//!
//!   Both depend only on (n, M2, M3, M4), so they run on merged [`Moments`] and cost O(1) per
//!   merge and per test: this is what lets the collector test Gaussianity on streams.
//! * **Anderson–Darling** for the normal with estimated mean and variance
//!   (`scipy.stats.anderson(x, 'norm')`): `A² = −n − Σ (2i−1)/n (ln Φ(w_i) + ln(1 − Φ(w_{n+1−i})))`,
//!   `w = (x_(i) − x̄)/s` with `s` the ddof=1 standard deviation. Critical values at 15, 10, 5,
//!   2.5, 1 %: `[0.561, 0.631, 0.752, 0.873, 1.035] / (1 + 0.75/n + 2.25/n²)`, rounded to 3
//!   decimals (Stephens 1974, D'Agostino & Stephens 1986, Table 4.7; scipy's values).

use statrs::function::erf::erfc;

use crate::{Moments, StatsError};

/// A test statistic and its p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TestResult {
    pub statistic: f64,
    pub p_value: f64,
}

fn shape(m: &Moments, min_n: u64) -> Result<(f64, f64, f64), StatsError> {
    if m.n < min_n {
        return Err(StatsError::TooFewValues {
            needed: min_n as usize,
            got: m.n as usize,
        });
    }
    let (Some(s), Some(k)) = (m.skewness(), m.excess_kurtosis()) else {
        return Err(StatsError::AllEqual);
    };
    if !(s.is_finite() && k.is_finite()) {
        return Err(StatsError::NonFinite);
    }
    Ok((m.n as f64, s, k))
}

/// D'Agostino's skewness test Z (scipy `skewtest` statistic).
pub fn skewtest_z(m: &Moments) -> Result<f64, StatsError> {
    let (n, b2, _) = shape(m, 8)?;
    let y = b2 * ((n + 1.0) * (n + 3.0) / (6.0 * (n - 2.0))).sqrt();
    let beta2 = 3.0 * (n * n + 27.0 * n - 70.0) * (n + 1.0) * (n + 3.0)
        / ((n - 2.0) * (n + 5.0) * (n + 7.0) * (n + 9.0));
    let w2 = -1.0 + (2.0 * (beta2 - 1.0)).sqrt();
    let delta = 1.0 / (0.5 * w2.ln()).sqrt();
    let alpha = (2.0 / (w2 - 1.0)).sqrt();
    let y = if y == 0.0 { 1.0 } else { y };
    Ok(delta * (y / alpha + ((y / alpha).powi(2) + 1.0).sqrt()).ln())
}

/// Anscombe–Glynn kurtosis test Z (scipy `kurtosistest` statistic).
pub fn kurtosistest_z(m: &Moments) -> Result<f64, StatsError> {
    let (n, _, k) = shape(m, 5)?;
    let b2 = k + 3.0;
    let e = 3.0 * (n - 1.0) / (n + 1.0);
    let varb2 = 24.0 * n * (n - 2.0) * (n - 3.0) / ((n + 1.0) * (n + 1.0) * (n + 3.0) * (n + 5.0));
    let x = (b2 - e) / varb2.sqrt();
    let sqrtbeta1 = 6.0 * (n * n - 5.0 * n + 2.0) / ((n + 7.0) * (n + 9.0))
        * (6.0 * (n + 3.0) * (n + 5.0) / (n * (n - 2.0) * (n - 3.0))).sqrt();
    let a =
        6.0 + 8.0 / sqrtbeta1 * (2.0 / sqrtbeta1 + (1.0 + 4.0 / (sqrtbeta1 * sqrtbeta1)).sqrt());
    let term1 = 1.0 - 2.0 / (9.0 * a);
    let denom = 1.0 + x * (2.0 / (a - 4.0)).sqrt();
    if denom == 0.0 {
        return Err(StatsError::Degenerate("kurtosis test denominator is zero"));
    }
    let term2 = denom.signum() * ((1.0 - 2.0 / a) / denom.abs()).powf(1.0 / 3.0);
    Ok((term1 - term2) / (2.0 / (9.0 * a)).sqrt())
}

/// D'Agostino–Pearson K² from moments.
pub fn dagostino_k2(m: &Moments) -> Result<TestResult, StatsError> {
    let k2 = skewtest_z(m)?.powi(2) + kurtosistest_z(m)?.powi(2);
    Ok(TestResult {
        statistic: k2,
        p_value: (-k2 / 2.0).exp(),
    })
}

/// Jarque–Bera from moments.
pub fn jarque_bera(m: &Moments) -> Result<TestResult, StatsError> {
    let (n, s, k) = shape(m, 2)?;
    let jb = n / 6.0 * (s * s + k * k / 4.0);
    Ok(TestResult {
        statistic: jb,
        p_value: (-jb / 2.0).exp(),
    })
}

/// Anderson–Darling result: statistic and critical values at [`AD_SIGNIFICANCE`].
#[derive(Debug, Clone, PartialEq)]
pub struct AndersonResult {
    pub statistic: f64,
    pub critical_values: [f64; 5],
}

/// Significance levels (percent) of [`AndersonResult::critical_values`].
pub const AD_SIGNIFICANCE: [f64; 5] = [15.0, 10.0, 5.0, 2.5, 1.0];

/// ln Φ(w), accurate in both tails.
fn log_norm_cdf(w: f64) -> f64 {
    (0.5 * erfc(-w / std::f64::consts::SQRT_2)).ln()
}

/// Anderson–Darling test for normality (offline: needs the sorted sample).
pub fn anderson_darling(values: &[f64]) -> Result<AndersonResult, StatsError> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(StatsError::NonFinite);
    }
    let n = values.len();
    if n < 3 {
        return Err(StatsError::TooFewValues { needed: 3, got: n });
    }
    let mut y = values.to_vec();
    y.sort_by(f64::total_cmp);
    let m = Moments::from_slice(&y);
    let s = m.variance_sample().unwrap_or(0.0).sqrt();
    if s <= 0.0 {
        return Err(StatsError::AllEqual);
    }
    let nf = n as f64;
    let mut sum = 0.0;
    for i in 0..n {
        let lc = log_norm_cdf((y[i] - m.mean) / s);
        let ls = log_norm_cdf(-(y[n - 1 - i] - m.mean) / s);
        sum += (2.0 * (i + 1) as f64 - 1.0) / nf * (lc + ls);
    }
    let factor = 1.0 + 0.75 / nf + 2.25 / (nf * nf);
    let cv =
        [0.561, 0.631, 0.752, 0.873, 1.035].map(|a: f64| (a / factor * 1000.0).round() / 1000.0);
    Ok(AndersonResult {
        statistic: -nf - sum,
        critical_values: cv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_or_constant_samples_are_typed_errors() {
        assert!(dagostino_k2(&Moments::from_slice(&[1.0, 2.0, 3.0])).is_err());
        assert!(dagostino_k2(&Moments::from_slice(&[2.0; 20])).is_err());
        assert!(jarque_bera(&Moments::from_slice(&[2.0; 20])).is_err());
        assert!(anderson_darling(&[1.0, f64::NAN, 2.0]).is_err());
        assert!(anderson_darling(&[1.0, 1.0, 1.0]).is_err());
    }

    #[test]
    fn jarque_bera_closed_form() {
        // x = [1, 2, 3, 4, 10]: g1 = √5·180/50^1.5, g2 = 5·1394/2500 − 3.
        let m = Moments::from_slice(&[1.0, 2.0, 3.0, 4.0, 10.0]);
        let (g1, g2) = (
            5f64.sqrt() * 180.0 / 50f64.powf(1.5),
            5.0 * 1394.0 / 2500.0 - 3.0,
        );
        let jb = 5.0 / 6.0 * (g1 * g1 + g2 * g2 / 4.0);
        let r = jarque_bera(&m).unwrap();
        assert!((r.statistic - jb).abs() < 1e-12);
        assert!((r.p_value - (-jb / 2.0).exp()).abs() < 1e-15);
    }
}
