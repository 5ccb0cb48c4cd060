//! Vuong's (1989) likelihood-ratio test of the fitted power-law tail against alternatives, as
//! Clauset et al. (2009, §5) use it and as `powerlaw`'s `distribution_compare` computes it.
//!
//! On the tail `x ≥ x_min` (m values) with per-point log-likelihoods `l₁` (power law) and `l₂`
//! (alternative, each fitted by maximum likelihood on the same tail):
//! `R = Σ (l₁ − l₂)`, `σ² = mean((l₁ − l₂ − mean(l₁ − l₂))²)`, `p = erfc(|R| / √(2 m σ²))`.
//! `R > 0` favours the power law; the sign is significant when p is small. The normalised ratio
//! `R/(√m σ)` is also given.
//!
//! Densities on `[x_min, ∞)`:
//! * power law: `(α−1)/x_min · (x/x_min)^(−α)`;
//! * exponential: `λ e^{−λ(x − x_min)}`, MLE `λ̂ = 1/(mean(x) − x_min)` (closed form);
//! * lognormal truncated at x_min: `φ((ln x − μ)/σ) / (x σ Q)`, `Q = ½ erfc((ln x_min − μ)/(σ√2))`,
//!   fitted numerically (Nelder–Mead to 1e-12 in its natural parameters, see [`fit_lognormal`]). `powerlaw` stops its optimiser at tol 1e-4, so ours reaches a likelihood at least
//!   as high; R then differs from `powerlaw`'s by the likelihood it left on the table.

use statrs::function::erf::erfc;

use crate::StatsError;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VuongResult {
    /// Σ (ℓ_powerlaw − ℓ_alternative).
    pub r: f64,
    pub p: f64,
    /// R / (√m σ).
    pub r_normalized: f64,
    /// Total log-likelihood of the alternative at its MLE.
    pub loglik_alternative: f64,
}

/// Fitted lognormal tail.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LognormalFit {
    pub mu: f64,
    pub sigma: f64,
    pub loglik: f64,
}

fn power_law_logliks(tail: &[f64], xmin: f64, alpha: f64) -> Vec<f64> {
    let c = ((alpha - 1.0) / xmin).ln();
    tail.iter().map(|&x| c - alpha * (x / xmin).ln()).collect()
}

fn compare(l1: &[f64], l2: &[f64]) -> VuongResult {
    let n = l1.len() as f64;
    let diff: Vec<f64> = l1.iter().zip(l2).map(|(a, b)| a - b).collect();
    let r: f64 = diff.iter().sum();
    let mean = r / n;
    let var = diff.iter().map(|d| (d - mean).powi(2)).sum::<f64>() / n;
    let (p, rn) = if var > 0.0 {
        (erfc(r.abs() / (2.0 * n * var).sqrt()), r / (n * var).sqrt())
    } else {
        (1.0, 0.0)
    };
    VuongResult {
        r,
        p,
        r_normalized: rn,
        loglik_alternative: l2.iter().sum(),
    }
}

fn check(tail: &[f64], xmin: f64, alpha: f64) -> Result<(), StatsError> {
    if tail.len() < 2 {
        return Err(StatsError::TooFewValues {
            needed: 2,
            got: tail.len(),
        });
    }
    if !(xmin > 0.0 && alpha > 1.0 && xmin.is_finite() && alpha.is_finite()) {
        return Err(StatsError::BadParameter("needs x_min > 0 and alpha > 1"));
    }
    if tail.iter().any(|&x| !(x >= xmin && x.is_finite())) {
        return Err(StatsError::BadParameter(
            "tail values must be finite and >= x_min",
        ));
    }
    Ok(())
}

/// Power law versus exponential on the tail.
pub fn vs_exponential(tail: &[f64], xmin: f64, alpha: f64) -> Result<VuongResult, StatsError> {
    check(tail, xmin, alpha)?;
    let excess = tail.iter().map(|x| x - xmin).sum::<f64>() / tail.len() as f64;
    if excess <= 0.0 {
        return Err(StatsError::AllEqual);
    }
    let lambda = 1.0 / excess;
    let l2: Vec<f64> = tail
        .iter()
        .map(|&x| lambda.ln() - lambda * (x - xmin))
        .collect();
    Ok(compare(&power_law_logliks(tail, xmin, alpha), &l2))
}

/// ln erfc(z), finite for large z where erfc underflows.
fn ln_erfc(z: f64) -> f64 {
    if z < 25.0 {
        erfc(z).ln()
    } else {
        // Asymptotic series: erfc z = e^{−z²}/(z√π) · (1 − 1/(2z²) + 3/(4z⁴) − …).
        let z2 = z * z;
        -z2 - (z * std::f64::consts::PI.sqrt()).ln() + (1.0 - 0.5 / z2 + 0.75 / (z2 * z2)).ln()
    }
}

fn lognormal_logliks(tail: &[f64], xmin: f64, mu: f64, sigma: f64) -> Vec<f64> {
    let ln_q =
        ln_erfc((xmin.ln() - mu) / (sigma * std::f64::consts::SQRT_2)) - std::f64::consts::LN_2;
    let c = -sigma.ln() - 0.5 * (2.0 * std::f64::consts::PI).ln() - ln_q;
    tail.iter()
        .map(|&x| {
            let l = x.ln();
            c - l - (l - mu).powi(2) / (2.0 * sigma * sigma)
        })
        .collect()
}

/// Total log-likelihood of a lognormal truncated at `xmin` with parameters (μ, σ).
pub fn lognormal_loglik(tail: &[f64], xmin: f64, mu: f64, sigma: f64) -> f64 {
    lognormal_logliks(tail, xmin, mu, sigma).iter().sum()
}

/// Total log-likelihood of an exponential tail `λ e^{−λ(x − x_min)}`.
pub fn exponential_loglik(tail: &[f64], xmin: f64, lambda: f64) -> f64 {
    tail.iter()
        .map(|&x| lambda.ln() - lambda * (x - xmin))
        .sum()
}

/// Maximum-likelihood lognormal truncated at `xmin`.
///
/// In `y = ln(x/x_min) ≥ 0` the truncated lognormal is the exponential family
/// `f(y) ∝ exp(a·y − b·y²)` with natural parameters `a = (μ − ln x_min)/σ²`, `b = 1/(2σ²)`, whose
/// log-likelihood is concave in (a, b). The optimum is often far out on the ridge towards the
/// power-law limit `b → 0` (μ → −∞); searching over (a, ln b) from two starts (the moments of
/// ln x, and the power-law limit) reaches it reliably.
pub fn fit_lognormal(tail: &[f64], xmin: f64) -> Result<LognormalFit, StatsError> {
    let m = tail.len() as f64;
    let ys: Vec<f64> = tail.iter().map(|x| (x / xmin).ln()).collect();
    let (s1, s2) = (
        ys.iter().sum::<f64>(),
        ys.iter().map(|y| y * y).sum::<f64>(),
    );
    let mean = s1 / m;
    let var = s2 / m - mean * mean;
    if var.is_nan() || var <= 0.0 || mean <= 0.0 {
        return Err(StatsError::AllEqual);
    }
    // Mean log-likelihood in y (the Jacobian −Σ ln x is added back at the end).
    let ll = |a: f64, b: f64| -> f64 {
        let sqrt_b = b.sqrt();
        let ln_z = 0.5 * (std::f64::consts::PI / (4.0 * b)).ln()
            + a * a / (4.0 * b)
            + ln_erfc(-a / (2.0 * sqrt_b));
        (a * s1 - b * s2) / m - ln_z
    };
    let neg = |p: [f64; 2]| {
        let v = -ll(p[0], p[1].exp());
        if v.is_finite() { v } else { f64::INFINITY }
    };
    let starts = [
        [mean / var, (0.5 / var).ln()],
        // Power-law limit: exponent 1/mean in y, almost no curvature.
        [-1.0 / mean, (1e-6 / var).ln()],
    ];
    let best = starts
        .iter()
        .map(|&st| nelder_mead(neg, st, [0.1 / mean, 1.0]))
        .min_by(|p, q| neg(*p).total_cmp(&neg(*q)))
        .unwrap_or(starts[0]);
    let b = best[1].exp();
    let sigma = (0.5 / b).sqrt();
    let mu = xmin.ln() + best[0] / (2.0 * b);
    Ok(LognormalFit {
        mu,
        sigma,
        loglik: lognormal_logliks(tail, xmin, mu, sigma).iter().sum(),
    })
}

/// Power law versus (truncated) lognormal on the tail.
pub fn vs_lognormal(
    tail: &[f64],
    xmin: f64,
    alpha: f64,
) -> Result<(VuongResult, LognormalFit), StatsError> {
    check(tail, xmin, alpha)?;
    let f = fit_lognormal(tail, xmin)?;
    let l2 = lognormal_logliks(tail, xmin, f.mu, f.sigma);
    Ok((compare(&power_law_logliks(tail, xmin, alpha), &l2), f))
}

/// Nelder–Mead minimisation in two dimensions (standard coefficients 1, 2, ½, ½).
fn nelder_mead(f: impl Fn([f64; 2]) -> f64, start: [f64; 2], step: [f64; 2]) -> [f64; 2] {
    let mut s = [
        start,
        [start[0] + step[0], start[1]],
        [start[0], start[1] + step[1]],
    ];
    let mut v = s.map(&f);
    for _ in 0..5000 {
        let mut idx = [0usize, 1, 2];
        idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
        s = idx.map(|i| s[i]);
        v = idx.map(|i| v[i]);
        let size = (s[1][0] - s[0][0])
            .abs()
            .max((s[1][1] - s[0][1]).abs())
            .max((s[2][0] - s[0][0]).abs().max((s[2][1] - s[0][1]).abs()));
        if size < 1e-12 && (v[2] - v[0]).abs() <= 1e-12 * v[0].abs().max(1.0) {
            break;
        }
        let c = [(s[0][0] + s[1][0]) / 2.0, (s[0][1] + s[1][1]) / 2.0];
        let at = |t: f64| [c[0] + t * (s[2][0] - c[0]), c[1] + t * (s[2][1] - c[1])];
        let r = at(-1.0);
        let fr = f(r);
        if fr < v[0] {
            let e = at(-2.0);
            let fe = f(e);
            if fe < fr {
                s[2] = e;
                v[2] = fe;
            } else {
                s[2] = r;
                v[2] = fr;
            }
        } else if fr < v[1] {
            s[2] = r;
            v[2] = fr;
        } else {
            let k = if fr < v[2] { at(-0.5) } else { at(0.5) };
            let fk = f(k);
            if fk < v[2].min(fr) {
                s[2] = k;
                v[2] = fk;
            } else {
                for i in 1..3 {
                    s[i] = [(s[i][0] + s[0][0]) / 2.0, (s[i][1] + s[0][1]) / 2.0];
                    v[i] = f(s[i]);
                }
            }
        }
    }
    let best = (0..3).min_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap_or(0);
    s[best]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exponential_mle_is_the_closed_form() {
        let tail = [1.0, 1.5, 2.0, 4.0];
        let r = vs_exponential(&tail, 1.0, 2.5).unwrap();
        let lambda: f64 = 1.0 / (0.5 + 1.0 + 3.0) * 4.0;
        let ll: f64 = tail.iter().map(|x| lambda.ln() - lambda * (x - 1.0)).sum();
        assert!((r.loglik_alternative - ll).abs() < 1e-12);
    }

    #[test]
    fn lognormal_fit_is_a_maximum() {
        let tail: Vec<f64> = (1..200)
            .map(|i| 1.0 + (i as f64 * 0.37).sin().abs() * 3.0 + i as f64 * 0.01)
            .collect();
        let f = fit_lognormal(&tail, 1.0).unwrap();
        for (dm, ds) in [(1e-4, 0.0), (-1e-4, 0.0), (0.0, 1e-4), (0.0, -1e-4)] {
            let ll: f64 = lognormal_logliks(&tail, 1.0, f.mu + dm, f.sigma + ds)
                .iter()
                .sum();
            assert!(ll <= f.loglik + 1e-9, "({dm}, {ds}) beats the optimum");
        }
    }

    #[test]
    fn ln_erfc_is_continuous_at_the_switch() {
        let a = ln_erfc(25.0 - 1e-9);
        let b = ln_erfc(25.0 + 1e-9);
        assert!((a - b).abs() < 1e-6 * a.abs());
    }
}
