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

/// Shapiro–Wilk W test (Royston 1995, algorithm AS R94), as `scipy.stats.shapiro`, 3 ≤ n ≤ 5000.
///
/// The coefficients `a` come from Royston's polynomial approximation to the normalised expected
/// normal order statistics (m_i = Φ⁻¹((i − 3/8)/(n + 1/4))), W is the squared correlation
/// between the sorted sample and `a` (computed as 1 − W to keep precision near 1), and the
/// p-value from Royston's normalising transformation of ln(1 − W) (n ≤ 11: a further log
/// transform with γ = −2.273 + 0.459 n; n = 3: exact).
pub fn shapiro_wilk(values: &[f64]) -> Result<TestResult, StatsError> {
    if values.iter().any(|v| !v.is_finite()) {
        return Err(StatsError::NonFinite);
    }
    let n = values.len();
    if n < 3 {
        return Err(StatsError::TooFewValues { needed: 3, got: n });
    }
    if n > 5000 {
        return Err(StatsError::BadParameter(
            "Shapiro-Wilk is defined here for n <= 5000",
        ));
    }
    let mut x = values.to_vec();
    x.sort_by(f64::total_cmp);
    // W is scale-free, so only an exactly zero range is refused. (scipy's swilk refuses any
    // range below 1e-19 and then reports W = 1, p = 1 with a warning.)
    let range = x[n - 1] - x[0];
    if range <= 0.0 {
        return Err(StatsError::AllEqual);
    }
    // Horner evaluation of c[0] + c[1] t + c[2] t² + …
    let poly = |c: &[f64], t: f64| c.iter().rev().fold(0.0, |acc, &ci| acc * t + ci);
    let nf = n as f64;
    let half = n / 2;
    let mut a = vec![0.0f64; half];
    if n == 3 {
        a[0] = std::f64::consts::FRAC_1_SQRT_2;
    } else {
        let m: Vec<f64> = (1..=half)
            .map(|i| normal_ppf((i as f64 - 0.375) / (nf + 0.25)))
            .collect();
        let summ2 = 2.0 * m.iter().map(|v| v * v).sum::<f64>();
        let ssumm2 = summ2.sqrt();
        let rsn = 1.0 / nf.sqrt();
        let c1 = [0.0, 0.221157, -0.147981, -2.07119, 4.434685, -2.706056];
        let c2 = [0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633];
        let a1 = poly(&c1, rsn) - m[0] / ssumm2;
        let (first, fac) = if n > 5 {
            let a2 = -m[1] / ssumm2 + poly(&c2, rsn);
            let fac = ((summ2 - 2.0 * m[0] * m[0] - 2.0 * m[1] * m[1])
                / (1.0 - 2.0 * a1 * a1 - 2.0 * a2 * a2))
                .sqrt();
            a[1] = a2;
            (2, fac)
        } else {
            (
                1,
                ((summ2 - 2.0 * m[0] * m[0]) / (1.0 - 2.0 * a1 * a1)).sqrt(),
            )
        };
        a[0] = a1;
        for i in first..half {
            a[i] = -m[i] / fac;
        }
    }
    // Antisymmetric coefficient vector over the sorted sample (largest values positive).
    let coef = |i: usize| -> f64 {
        let j = n - 1 - i;
        match i.cmp(&j) {
            std::cmp::Ordering::Less => -a[i],
            std::cmp::Ordering::Greater => a[j],
            std::cmp::Ordering::Equal => 0.0,
        }
    };
    let sa = (0..n).map(coef).sum::<f64>() / nf;
    let sx = x.iter().map(|v| v / range).sum::<f64>() / nf;
    let (mut ssa, mut ssx, mut sax) = (0.0, 0.0, 0.0);
    for (i, &xi) in x.iter().enumerate() {
        let asa = coef(i) - sa;
        let xsx = xi / range - sx;
        ssa += asa * asa;
        ssx += xsx * xsx;
        sax += asa * xsx;
    }
    let ssassx = (ssa * ssx).sqrt();
    let w1 = (ssassx - sax) * (ssassx + sax) / (ssa * ssx);
    let w = 1.0 - w1;
    if n == 3 {
        let pi6 = 6.0 / std::f64::consts::PI;
        let stqr = std::f64::consts::FRAC_PI_3;
        let p = (pi6 * (w.sqrt().asin() - stqr)).max(0.0);
        return Ok(TestResult {
            statistic: w,
            p_value: p,
        });
    }
    let mut y = w1.ln();
    let (mean, sd) = if n <= 11 {
        let gamma = poly(&[-2.273, 0.459], nf);
        if y >= gamma {
            return Ok(TestResult {
                statistic: w,
                p_value: 1e-99,
            });
        }
        y = -(gamma - y).ln();
        (
            poly(&[0.544, -0.39978, 0.025054, -6.714e-4], nf),
            poly(&[1.3822, -0.77857, 0.062767, -0.0020322], nf).exp(),
        )
    } else {
        let ln_n = nf.ln();
        (
            poly(&[-1.5861, -0.31082, -0.083751, 0.0038915], ln_n),
            poly(&[-0.4803, -0.082676, 0.0030302], ln_n).exp(),
        )
    };
    let z = (y - mean) / sd;
    Ok(TestResult {
        statistic: w,
        p_value: 0.5 * erfc(z / std::f64::consts::SQRT_2),
    })
}

/// Standard normal quantile Φ⁻¹(p), 0 < p < 1.
pub fn normal_ppf(p: f64) -> f64 {
    -std::f64::consts::SQRT_2 * statrs::function::erf::erfc_inv(2.0 * p)
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
