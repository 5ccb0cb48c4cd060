//! Continuous power-law fit of Clauset, Shalizi & Newman (2009), "Power-law distributions in
//! empirical data", SIAM Review 51(4), §3.
//!
//! For a candidate lower bound `x_min` with tail `{x_i ≥ x_min}` of size `m`:
//! * MLE (eq. 3.1): `α̂ = 1 + m / Σ ln(x_i / x_min)`, standard error (eq. 3.2) `(α̂ − 1)/√m`;
//! * KS distance (eq. 3.9): `D = max_x |S(x) − P(x)|` between the fitted CDF
//!   `P(x) = 1 − (x/x_min)^(1−α̂)` and the tail's empirical CDF `S`. Like the reference
//!   implementation (`powerlaw`, Alstott et al. 2014), `S` is evaluated at each distinct tail
//!   value `u` as the fraction of the tail strictly below `u`.
//! * `x_min` minimises `D` over the candidates: every distinct value but the largest (the full
//!   search of `powerlaw`), or a log-spaced grid of them.
//!
//! Exactness: `α̂`, `x_min` and `D` are those of the exhaustive search (ties go to the smallest
//! `x_min`, as `numpy.argmin`). Speed comes from branch and bound, not approximation: a
//! candidate is abandoned as soon as one point proves its `D` exceeds the best found so far;
//! candidates are first screened on a coarse subset of points, and the search starts from the
//! best of a coarse grid so the bound is tight early. Tail sums of logs use compensated
//! (Neumaier) suffix sums so every candidate's α̂ costs O(1) and keeps full precision.
//!
//! Two modes, as `powerlaw` versions differ:
//! * default: pure Clauset, no cap on α̂ (`powerlaw` 1.5; 2.0 with `alpha: [1, None]`);
//! * `alpha_range = Some((lo, hi))`: only candidates with `lo < α̂ < hi` are kept (`powerlaw`
//!   2.0's default is (0, 3), which discards the α̂ > 3 tails real gradients often have).

use crate::StatsError;

/// Options of [`fit`].
#[derive(Debug, Clone, Default)]
pub struct FitOptions {
    /// Keep only candidates whose α̂ lies strictly inside (lo, hi).
    pub alpha_range: Option<(f64, f64)>,
    /// Search `n` log-spaced candidates instead of every distinct value.
    pub xmin_grid: Option<usize>,
}

/// Result of a power-law fit.
#[derive(Debug, Clone, PartialEq)]
pub struct PowerLawFit {
    /// Positive values used (after dropping non-positive ones).
    pub n: usize,
    pub n_tail: usize,
    pub xmin: f64,
    pub alpha: f64,
    pub alpha_se: f64,
    /// KS distance at the chosen x_min.
    pub ks_d: f64,
    /// 0.05 critical value `1.36 / √n_tail` (asymptotic Kolmogorov).
    pub ks_critical: f64,
    /// The paper-style decision: `ks_d > ks_critical`.
    pub rejected_ks: bool,
    /// Candidates examined.
    pub candidates: usize,
}

/// Sorted positive sample with the prefix structure the search needs.
pub struct Prepared {
    /// Sorted ascending, all > 0 and finite.
    xs: Vec<f64>,
    /// Distinct values, ascending.
    uniq: Vec<f64>,
    /// `first[k]`: index in `xs` of the first occurrence of `uniq[k]` (= count below it).
    first: Vec<usize>,
    /// Compensated suffix sums of ln x: `suffix[i] = Σ_{j ≥ i} ln xs[j]`, as (sum, compensation).
    suffix: Vec<(f64, f64)>,
}

impl Prepared {
    /// Takes `|x|`, drops zeros; NaN or ±Inf are an error (they have no place in a tail fit).
    pub fn from_values(values: &[f64]) -> Result<Self, StatsError> {
        if values.iter().any(|v| !v.is_finite()) {
            return Err(StatsError::NonFinite);
        }
        let mut xs: Vec<f64> = values
            .iter()
            .map(|v| v.abs())
            .filter(|v| *v > 0.0)
            .collect();
        xs.sort_by(f64::total_cmp);
        Self::from_sorted_positive(xs)
    }

    fn from_sorted_positive(xs: Vec<f64>) -> Result<Self, StatsError> {
        let mut uniq = Vec::new();
        let mut first = Vec::new();
        for (i, &x) in xs.iter().enumerate() {
            if uniq.last() != Some(&x) {
                uniq.push(x);
                first.push(i);
            }
        }
        let mut suffix = vec![(0.0, 0.0); xs.len() + 1];
        for i in (0..xs.len()).rev() {
            let (s, c) = suffix[i + 1];
            let v = xs[i].ln();
            let t = s + v;
            // Neumaier: keep what the addition rounded away.
            let c = if s.abs() >= v.abs() {
                c + ((s - t) + v)
            } else {
                c + ((v - t) + s)
            };
            suffix[i] = (t, c);
        }
        Ok(Self {
            xs,
            uniq,
            first,
            suffix,
        })
    }

    pub fn len(&self) -> usize {
        self.xs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.xs.is_empty()
    }

    /// The sorted positive values.
    pub fn values(&self) -> &[f64] {
        &self.xs
    }

    /// The values at or above `xmin` (a power-law fit's tail), ascending.
    pub fn tail(&self, xmin: f64) -> &[f64] {
        &self.xs[self.xs.partition_point(|&x| x < xmin)..]
    }

    /// α̂ and tail size for candidate `k` (x_min = uniq[k]).
    #[inline]
    fn alpha(&self, k: usize) -> (f64, usize) {
        let i = self.first[k];
        let m = self.xs.len() - i;
        let (s, c) = self.suffix[i];
        let sum_log_ratio = (s + c) - m as f64 * self.uniq[k].ln();
        (1.0 + m as f64 / sum_log_ratio, m)
    }

    /// `|P(u_l) − S(u_l)|` for candidate `k` at distinct value `l ≥ k`.
    #[inline]
    fn deviation(&self, k: usize, alpha: f64, m: usize, l: usize) -> f64 {
        let theo = 1.0 - (self.uniq[l] / self.uniq[k]).powf(1.0 - alpha);
        let actual = (self.first[l] - self.first[k]) as f64 / m as f64;
        (theo - actual).abs()
    }

    /// KS distance of candidate `k`, or `None` once it is proven to exceed `bound`.
    fn ks(&self, k: usize, alpha: f64, m: usize, bound: f64) -> Option<f64> {
        let u = self.uniq.len();
        // Screen on ~64 spread points first: most candidates fail there.
        let span = u - k;
        let stride = (span / 64).max(1);
        if stride > 1 {
            let mut l = k;
            while l < u {
                if self.deviation(k, alpha, m, l) > bound {
                    return None;
                }
                l += stride;
            }
        }
        let mut d = 0.0f64;
        for l in k..u {
            let dev = self.deviation(k, alpha, m, l);
            if dev > d {
                d = dev;
                if d > bound {
                    return None;
                }
            }
        }
        Some(d)
    }

    /// Candidate indices into `uniq`: all distinct values but the largest, or a log-spaced grid.
    fn candidates(&self, grid: Option<usize>) -> Vec<usize> {
        let last = self.uniq.len().saturating_sub(1);
        match grid {
            None => (0..last).collect(),
            Some(g) => {
                if last == 0 || g == 0 {
                    return Vec::new();
                }
                let (lo, hi) = (self.uniq[0].ln(), self.uniq[last - 1].ln());
                let mut out: Vec<usize> = (0..g)
                    .map(|i| {
                        let t = if g == 1 {
                            0.0
                        } else {
                            i as f64 / (g - 1) as f64
                        };
                        let target = (lo + t * (hi - lo)).exp();
                        // The smallest distinct value at or above the grid point.
                        self.uniq[..last]
                            .partition_point(|&v| v < target)
                            .min(last - 1)
                    })
                    .collect();
                out.dedup();
                out
            }
        }
    }
}

/// Fit a power law to `|values|` (zeros dropped).
pub fn fit(values: &[f64], opts: &FitOptions) -> Result<PowerLawFit, StatsError> {
    fit_prepared(&Prepared::from_values(values)?, opts)
}

/// Fit on an already prepared sample (the bootstrap reuses this).
pub fn fit_prepared(p: &Prepared, opts: &FitOptions) -> Result<PowerLawFit, StatsError> {
    if p.len() < 2 {
        return Err(StatsError::TooFewValues {
            needed: 2,
            got: p.len(),
        });
    }
    let cands = p.candidates(opts.xmin_grid);
    if cands.is_empty() {
        return Err(StatsError::AllEqual);
    }
    let valid = |alpha: f64| {
        alpha.is_finite()
            && opts
                .alpha_range
                .is_none_or(|(lo, hi)| alpha > lo && alpha < hi)
    };
    // Seed the bound with the best of a coarse subset, fully evaluated.
    let mut best: Option<(usize, f64, f64, usize)> = None;
    let consider = |k: usize, best: &mut Option<(usize, f64, f64, usize)>| {
        let (alpha, m) = p.alpha(k);
        if !valid(alpha) {
            return;
        }
        let bound = best.map_or(f64::INFINITY, |b| b.1);
        if let Some(d) = p.ks(k, alpha, m, bound) {
            let better = match *best {
                None => true,
                Some((bk, bd, _, _)) => d < bd || (d == bd && k < bk),
            };
            if better {
                *best = Some((k, d, alpha, m));
            }
        }
    };
    let seed_stride = (cands.len() / 32).max(1);
    for &k in cands.iter().step_by(seed_stride) {
        consider(k, &mut best);
    }
    for &k in &cands {
        consider(k, &mut best);
    }
    let (k, d, alpha, m) = best.ok_or(StatsError::NoValidXmin)?;
    let crit = 1.36 / (m as f64).sqrt();
    Ok(PowerLawFit {
        n: p.len(),
        n_tail: m,
        xmin: p.uniq[k],
        alpha,
        alpha_se: (alpha - 1.0) / (m as f64).sqrt(),
        ks_d: d,
        ks_critical: crit,
        rejected_ks: d > crit,
        candidates: cands.len(),
    })
}

/// KS distance and α̂ at a given x_min by direct evaluation (the reference the search must meet).
pub fn ks_at(p: &Prepared, xmin: f64) -> Option<(f64, f64, usize)> {
    let k = p.uniq.partition_point(|&v| v < xmin);
    if k + 1 >= p.uniq.len() || p.uniq[k] != xmin {
        return None;
    }
    let (alpha, m) = p.alpha(k);
    p.ks(k, alpha, m, f64::INFINITY).map(|d| (d, alpha, m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Exhaustive O(n²) search written plainly, as `powerlaw` does it.
    fn brute(values: &[f64]) -> (f64, f64, f64) {
        let mut xs: Vec<f64> = values
            .iter()
            .map(|v| v.abs())
            .filter(|v| *v > 0.0)
            .collect();
        xs.sort_by(f64::total_cmp);
        let mut uniq = xs.clone();
        uniq.dedup();
        let mut best = (f64::INFINITY, 0.0, 0.0);
        for &xmin in &uniq[..uniq.len() - 1] {
            let tail: Vec<f64> = xs.iter().copied().filter(|&x| x >= xmin).collect();
            let m = tail.len() as f64;
            let alpha = 1.0 + m / tail.iter().map(|x| (x / xmin).ln()).sum::<f64>();
            let mut d = 0.0f64;
            for &u in uniq.iter().filter(|&&u| u >= xmin) {
                let below = tail.iter().filter(|&&x| x < u).count() as f64;
                d = d.max((1.0 - (u / xmin).powf(1.0 - alpha) - below / m).abs());
            }
            if d < best.0 {
                best = (d, xmin, alpha);
            }
        }
        best
    }

    fn pareto(n: usize, alpha: f64, seed: u64) -> Vec<f64> {
        let mut s = seed | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let u = ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
                u.powf(-1.0 / (alpha - 1.0))
            })
            .collect()
    }

    #[test]
    fn branch_and_bound_equals_brute_force() {
        for (seed, n) in [(1u64, 300usize), (2, 500), (3, 50)] {
            let mut xs = pareto(n, 2.5, seed);
            // Ties and a lognormal-ish body below the tail.
            for (i, x) in xs.iter_mut().take(n / 5).enumerate() {
                *x = 0.5 + (i % 7) as f64 * 0.05;
            }
            let f = fit(&xs, &FitOptions::default()).unwrap();
            let (d, xmin, alpha) = brute(&xs);
            assert_eq!(f.xmin, xmin, "seed {seed}");
            assert!((f.ks_d - d).abs() <= 1e-12 * d, "{} vs {d}", f.ks_d);
            assert!((f.alpha - alpha).abs() <= 1e-12 * alpha);
        }
    }

    #[test]
    fn recovers_a_pareto_exponent() {
        let f = fit(&pareto(20_000, 2.5, 9), &FitOptions::default()).unwrap();
        assert!((f.alpha - 2.5).abs() < 4.0 * f.alpha_se + 0.02, "{f:?}");
        assert!(!f.rejected_ks);
    }

    #[test]
    fn bad_input_is_a_typed_error() {
        let o = FitOptions::default();
        assert_eq!(
            fit(&[], &o),
            Err(StatsError::TooFewValues { needed: 2, got: 0 })
        );
        assert_eq!(
            fit(&[0.0, 0.0], &o),
            Err(StatsError::TooFewValues { needed: 2, got: 0 })
        );
        assert_eq!(fit(&[1.0, f64::NAN], &o), Err(StatsError::NonFinite));
        assert_eq!(fit(&[1.0, f64::INFINITY], &o), Err(StatsError::NonFinite));
        assert_eq!(fit(&[3.0, 3.0, 3.0], &o), Err(StatsError::AllEqual));
        let narrow = FitOptions {
            alpha_range: Some((100.0, 101.0)),
            ..Default::default()
        };
        assert_eq!(
            fit(&pareto(100, 2.5, 4), &narrow),
            Err(StatsError::NoValidXmin)
        );
    }

    #[test]
    fn grid_search_uses_data_values() {
        let xs = pareto(5000, 2.2, 5);
        let o = FitOptions {
            xmin_grid: Some(50),
            ..Default::default()
        };
        let f = fit(&xs, &o).unwrap();
        assert!(f.candidates <= 50);
        assert!(xs.contains(&f.xmin));
        let p = Prepared::from_values(&xs).unwrap();
        let (d, alpha, m) = ks_at(&p, f.xmin).unwrap();
        assert_eq!((d, alpha, m), (f.ks_d, f.alpha, f.n_tail));
    }
}
