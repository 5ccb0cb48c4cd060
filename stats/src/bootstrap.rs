//! Clauset's semi-parametric bootstrap p-value for a power-law fit (Clauset, Shalizi & Newman
//! 2009, §4.1).
//!
//! Given the fit (x_min, α̂, D) of n values with n_tail in the tail, each replicate draws n values:
//! with probability n_tail/n from the fitted power law (`x_min (1−u)^{−1/(α̂−1)}`), otherwise
//! uniformly with replacement from the values below x_min. It then re-estimates x_min and α
//! exactly as the original fit did (same search, same options) and records its KS distance. The
//! p-value is the fraction of replicates with `D ≥ D_obs`; the power law is ruled out when
//! p ≤ 0.1. With R replicates the p-value's standard error is ≤ 1/(2√R) (R = 2500 gives ±0.01).
//!
//! Determinism: replicate r uses its own generator seeded from (seed, r), so the result does not
//! depend on the number of threads.

use crate::StatsError;
use crate::powerlaw::{FitOptions, PowerLawFit, Prepared, fit_prepared};
use crate::rng::SplitMix64;

/// Bootstrap outcome.
#[derive(Debug, Clone, PartialEq)]
pub struct BootstrapResult {
    pub p_value: f64,
    pub replicates: usize,
    /// Replicates whose fit failed (e.g. no valid x_min under an alpha range); they count as
    /// not exceeding D_obs, which makes the p-value conservative for rejecting.
    pub failed: usize,
}

/// The p-value of `fit` (obtained from `data` with `opts`) by `replicates` bootstrap samples.
pub fn p_value(
    data: &Prepared,
    fit: &PowerLawFit,
    opts: &FitOptions,
    replicates: usize,
    seed: u64,
    threads: usize,
) -> Result<BootstrapResult, StatsError> {
    if replicates == 0 {
        return Err(StatsError::BadParameter(
            "bootstrap needs at least one replicate",
        ));
    }
    if fit.alpha.is_nan() || fit.alpha <= 1.0 {
        return Err(StatsError::BadParameter(
            "bootstrap needs a fitted alpha > 1",
        ));
    }
    let body: Vec<f64> = data
        .values()
        .iter()
        .copied()
        .take_while(|&x| x < fit.xmin)
        .collect();
    let n = data.len();
    let p_tail = fit.n_tail as f64 / n as f64;
    let threads = threads.clamp(1, replicates);
    let one = |r: usize| -> Option<bool> {
        let mut rng = SplitMix64::new(seed ^ (r as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next_u64();
        let mut sample: Vec<f64> = (0..n)
            .map(|_| {
                if body.is_empty() || rng.uniform() < p_tail {
                    fit.xmin * (1.0 - rng.uniform()).powf(-1.0 / (fit.alpha - 1.0))
                } else {
                    body[(rng.next_u64() % body.len() as u64) as usize]
                }
            })
            .collect();
        sample.sort_by(f64::total_cmp);
        let prepared = Prepared::from_values(&sample).ok()?;
        fit_prepared(&prepared, opts)
            .ok()
            .map(|f| f.ks_d >= fit.ks_d)
    };
    let counts = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let (mut above, mut failed) = (0usize, 0usize);
                    for r in (t..replicates).step_by(threads) {
                        match one(r) {
                            Some(true) => above += 1,
                            Some(false) => {}
                            None => failed += 1,
                        }
                    }
                    (above, failed)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((0, 0)))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    });
    Ok(BootstrapResult {
        p_value: counts.0 as f64 / replicates as f64,
        replicates,
        failed: counts.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::powerlaw::fit;

    #[test]
    fn same_seed_same_answer_whatever_the_threads() {
        let mut rng = SplitMix64::new(3);
        let xs: Vec<f64> = (0..400).map(|_| rng.uniform().powf(-1.0 / 1.5)).collect();
        let o = FitOptions::default();
        let p = Prepared::from_values(&xs).unwrap();
        let f = fit(&xs, &o).unwrap();
        let a = p_value(&p, &f, &o, 40, 7, 1).unwrap();
        let b = p_value(&p, &f, &o, 40, 7, 3).unwrap();
        assert_eq!(a, b);
        let c = p_value(&p, &f, &o, 40, 8, 2).unwrap();
        assert_eq!(c.replicates, 40);
    }
}
