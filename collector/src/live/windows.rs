//! Iteration-wise and SGN samples: per tracked coordinate, a sliding window of its recent
//! values (the minibatch gradient for `iteration`, the ranks' SGN values for `sgn`).
//!
//! Every `window_every` steps each coordinate's window is tested:
//! * Clauset's power-law fit of |x| (zeros dropped) with the paper-style KS decision, on the
//!   window's log-bucketed histogram (`gradtel_stats::powerlaw_binned`, p = 7) with `x_min`
//!   restricted to tails of at least half the window (≥ 20 values), 16 candidates: with a free `x_min` a power
//!   law "fits" the five largest of any 100 values, which says nothing. Even so, with so few
//!   values the KS test has little power (it rejects ≈ 20 % of Gaussian windows of 100), so
//!   the Vuong likelihood-ratio test against an exponential tail (Clauset et al. 2009 §5) is
//!   reported beside it: `vuong_exponential` rejects when the exponential is significantly
//!   better (R < 0, p < 0.1);
//! * Hill's tail index with `k = ⌊√n⌋`;
//! * D'Agostino K² and Jarque–Bera on the signed values (rejects at p < 0.05).
//!
//! A tensor's row (and the model's, over all coordinates) reports the fraction of its tested
//! coordinates that reject and the median tail index. Memory: `window` values per coordinate
//! (`window × min(R, sgn_ranks)` for SGN), for at most `max_tracked` coordinates per run; coordinates beyond it
//! are counted in `refused` and not tracked.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use gradtel_stats::{LogHistogram, Moments, normality, powerlaw_binned, robust, tail, vuong};

use super::checkpoint::{CheckpointError, TensorWindowsState, WindowsState};
use crate::tables::tails::TailRow;

/// x_min candidates per window (spread evenly over the occupied buckets of the lower half).
pub const WINDOW_CANDIDATES: usize = 16;

/// Fewest values a coordinate's window needs to be tested.
pub const MIN_VALUES: usize = 20;

#[derive(Debug, Default)]
pub struct Windows {
    /// Tensor → coordinate → window. Two levels, so a step's coordinates of one tensor find
    /// their windows by integer keys after one lookup of the name.
    series: BTreeMap<Arc<str>, BTreeMap<u64, VecDeque<f64>>>,
    tracked: usize,
    pub refused: u64,
}

/// One coordinate's test results.
#[derive(Debug, Default, Clone, Copy)]
struct Verdict {
    powerlaw: Option<(f64, bool)>,
    /// The likelihood ratio favours an exponential tail over the power law (p < 0.1).
    exponential: Option<bool>,
    hill: Option<f64>,
    k2: Option<bool>,
    jb: Option<bool>,
}

/// Fractions over every tested coordinate of a run, for gauges and the demo verdict.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Summary {
    pub coordinates: u64,
    pub powerlaw_rejected: Option<f64>,
    /// Fraction where the Vuong test prefers an exponential tail (R < 0, p < 0.1).
    pub exponential_preferred: Option<f64>,
    pub gaussian_rejected: Option<f64>,
}

/// The windows of one tensor's coordinates (see [`Windows::tensor`]).
pub struct TensorWindows<'a> {
    series: &'a mut BTreeMap<u64, VecDeque<f64>>,
    tracked: &'a mut usize,
    refused: &'a mut u64,
}

impl TensorWindows<'_> {
    /// Append the finite `values` to coordinate `index`'s window, keeping the last `cap`. A
    /// new coordinate beyond the run's `max_tracked` is refused (counted).
    pub fn push(&mut self, index: u64, values: &[f64], cap: usize, max_tracked: usize) {
        let s = match self.series.entry(index) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                if *self.tracked >= max_tracked {
                    *self.refused += 1;
                    return;
                }
                *self.tracked += 1;
                e.insert(VecDeque::new())
            }
        };
        s.extend(values.iter().copied().filter(|v| v.is_finite()));
        while s.len() > cap {
            s.pop_front();
        }
    }
}

impl Windows {
    /// The windows of `tensor`'s coordinates.
    pub fn tensor(&mut self, tensor: &Arc<str>) -> TensorWindows<'_> {
        if !self.series.contains_key(tensor.as_ref()) {
            self.series.insert(tensor.clone(), BTreeMap::new());
        }
        TensorWindows {
            series: self
                .series
                .get_mut(tensor.as_ref())
                .expect("inserted above"),
            tracked: &mut self.tracked,
            refused: &mut self.refused,
        }
    }

    /// Append `values` to coordinate `key`'s window, keeping the last `cap`.
    #[cfg(test)]
    fn push(&mut self, key: (Arc<str>, u64), values: &[f64], cap: usize, max_tracked: usize) {
        self.tensor(&key.0).push(key.1, values, cap, max_tracked);
    }

    pub fn len(&self) -> usize {
        self.tracked
    }

    pub fn is_empty(&self) -> bool {
        self.tracked == 0
    }

    /// Test every window; rows per tensor and for the model.
    pub fn evaluate(
        &self,
        run: &Arc<str>,
        step: u64,
        object: &'static str,
    ) -> (Vec<TailRow>, Summary) {
        let mut by_tensor: BTreeMap<&str, Vec<Verdict>> = BTreeMap::new();
        let mut samples = 0u64;
        let mut buf = Vec::new();
        for (tensor, coords) in &self.series {
            for values in coords.values() {
                samples = samples.max(values.len() as u64);
                buf.clear();
                buf.extend(values.iter().copied());
                by_tensor.entry(tensor).or_default().push(test(&buf));
            }
        }
        let mut rows = Vec::new();
        let all: Vec<Verdict> = by_tensor.values().flatten().copied().collect();
        for (scope_kind, scope, verdicts) in by_tensor
            .iter()
            .map(|(t, v)| ("tensor", t.to_string(), v.as_slice()))
            .chain(std::iter::once(("model", String::new(), all.as_slice())))
        {
            let base = TailRow {
                run_id: run.clone(),
                step,
                object,
                scope_kind,
                scope,
                samples,
                ..Default::default()
            };
            rows.extend(scope_rows(&base, verdicts));
        }
        let fraction = |f: &dyn Fn(&Verdict) -> Option<bool>| {
            let tested: Vec<bool> = all.iter().filter_map(f).collect();
            (!tested.is_empty())
                .then(|| tested.iter().filter(|r| **r).count() as f64 / tested.len() as f64)
        };
        let summary = Summary {
            coordinates: all.len() as u64,
            powerlaw_rejected: fraction(&|v| v.powerlaw.map(|p| p.1)),
            exponential_preferred: fraction(&|v| v.exponential),
            gaussian_rejected: fraction(&|v| v.k2),
        };
        (rows, summary)
    }
}

impl Windows {
    /// The windows as a checkpoint holds them.
    pub(super) fn save(&self) -> WindowsState {
        let tensors = self
            .series
            .iter()
            .map(|(name, coords)| {
                let mut t = TensorWindowsState {
                    name: name.to_string(),
                    ..Default::default()
                };
                for (&index, values) in coords {
                    t.index.push(index);
                    t.len.push(values.len() as u32);
                    t.values.extend(values.iter().copied());
                }
                t
            })
            .collect();
        WindowsState {
            tensors,
            refused: self.refused,
        }
    }

    /// The windows a checkpoint holds; windows longer than the configuration now allows are
    /// cut at their next value.
    pub(super) fn load(s: WindowsState) -> Result<Self, CheckpointError> {
        let bad = |why| Err(CheckpointError::Invalid(why));
        let mut w = Windows {
            refused: s.refused,
            ..Default::default()
        };
        for t in s.tensors {
            if t.index.len() != t.len.len()
                || t.len.iter().map(|&l| l as usize).sum::<usize>() != t.values.len()
            {
                return bad("a tensor's windows do not add up to its values");
            }
            if !t.index.windows(2).all(|p| p[0] < p[1]) {
                return bad("a tensor's coordinates are not increasing");
            }
            if !t.values.iter().all(|v| v.is_finite()) {
                return bad("a window holds a value that is not finite");
            }
            let mut coords = BTreeMap::new();
            let mut rest = t.values.as_slice();
            for (&index, &len) in t.index.iter().zip(&t.len) {
                let (values, tail) = rest.split_at(len as usize);
                coords.insert(index, values.iter().copied().collect::<VecDeque<f64>>());
                rest = tail;
            }
            w.tracked += coords.len();
            if w.series.insert(Arc::from(t.name), coords).is_some() {
                return bad("a tensor's windows appear twice");
            }
        }
        Ok(w)
    }
}

fn test(values: &[f64]) -> Verdict {
    let mut v = Verdict::default();
    if values.len() < MIN_VALUES {
        return v;
    }
    let mut abs: Vec<f64> = values
        .iter()
        .map(|x| x.abs())
        .filter(|x| *x > 0.0)
        .collect();
    if abs.len() >= MIN_VALUES {
        let mut h = LogHistogram::default();
        for &a in &abs {
            h.record(a);
        }
        let min_tail = (abs.len() as u64).div_ceil(2).max(MIN_VALUES as u64);
        if let Ok(f) = powerlaw_binned::fit_histogram(&h, min_tail, WINDOW_CANDIDATES) {
            v.powerlaw = Some((f.alpha - 1.0, f.rejected_ks));
            let tail: Vec<f64> = abs.iter().copied().filter(|&a| a >= f.xmin).collect();
            v.exponential = vuong::vs_exponential(&tail, f.xmin, f.alpha)
                .ok()
                .map(|r| r.r < 0.0 && r.p < 0.1);
        }
        abs.sort_by(|a, b| b.total_cmp(a));
        let k = tail::default_k(abs.len(), abs.len());
        v.hill = tail::hill(&abs, k).ok().and_then(|t| t.alpha);
    }
    let m = Moments::from_block(values);
    v.k2 = normality::dagostino_k2(&m).ok().map(|t| t.p_value < 0.05);
    v.jb = normality::jarque_bera(&m).ok().map(|t| t.p_value < 0.05);
    v
}

fn scope_rows(base: &TailRow, verdicts: &[Verdict]) -> Vec<TailRow> {
    let n = verdicts.len() as u64;
    let fraction = |tested: &[bool]| {
        (!tested.is_empty())
            .then(|| tested.iter().filter(|r| **r).count() as f64 / tested.len() as f64)
    };
    let pl: Vec<(f64, bool)> = verdicts.iter().filter_map(|v| v.powerlaw).collect();
    let hill: Vec<f64> = verdicts.iter().filter_map(|v| v.hill).collect();
    let exp: Vec<bool> = verdicts.iter().filter_map(|v| v.exponential).collect();
    let k2: Vec<bool> = verdicts.iter().filter_map(|v| v.k2).collect();
    let jb: Vec<bool> = verdicts.iter().filter_map(|v| v.jb).collect();
    let row = |estimator: &'static str,
               tested: usize,
               rejected: Option<f64>,
               alpha: Option<f64>| TailRow {
        estimator,
        coordinates: Some(tested as u64),
        failed: Some(n - tested as u64),
        rejected_fraction: rejected,
        median_alpha: alpha,
        ..base.clone()
    };
    vec![
        row(
            "clauset",
            pl.len(),
            fraction(&pl.iter().map(|p| p.1).collect::<Vec<_>>()),
            robust::median(&pl.iter().map(|p| p.0).collect::<Vec<_>>()),
        ),
        row("vuong_exponential", exp.len(), fraction(&exp), None),
        row("hill", hill.len(), None, robust::median(&hill)),
        row("dagostino_k2", k2.len(), fraction(&k2), None),
        row("jarque_bera", jb.len(), fraction(&jb), None),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradtel_stats::rng::SplitMix64;

    #[test]
    fn gaussian_series_are_judged_gaussian_and_pareto_ones_heavy() {
        let mut r = SplitMix64::new(3);
        let mut w = Windows::default();
        let run: Arc<str> = "r".into();
        for j in 0..40u64 {
            let g: Vec<f64> = (0..100).map(|_| r.normal()).collect();
            w.push(("gauss".into(), j), &g, 100, 1000);
            let p: Vec<f64> = (0..100)
                .map(|_| r.pareto(1.2) * if r.uniform() < 0.5 { -1.0 } else { 1.0 })
                .collect();
            w.push(("pareto".into(), j), &p, 100, 1000);
        }
        let (rows, summary) = w.evaluate(&run, 100, "iteration");
        let get = |scope: &str, est: &str| {
            rows.iter()
                .find(|r| r.scope == scope && r.estimator == est)
                .unwrap()
        };
        assert!(get("gauss", "dagostino_k2").rejected_fraction.unwrap() < 0.2);
        assert!(get("pareto", "dagostino_k2").rejected_fraction.unwrap() > 0.8);
        // The KS test has little power on 100 values; the likelihood ratio against an
        // exponential tail separates the two.
        assert!(get("gauss", "vuong_exponential").rejected_fraction.unwrap() > 0.5);
        assert!(
            get("pareto", "vuong_exponential")
                .rejected_fraction
                .unwrap()
                < 0.1
        );
        assert!(get("pareto", "clauset").rejected_fraction.unwrap() < 0.1);
        let pareto_alpha = get("pareto", "hill").median_alpha.unwrap();
        assert!((pareto_alpha - 1.2).abs() < 0.4, "{pareto_alpha}");
        assert_eq!(summary.coordinates, 80);
    }

    #[test]
    fn windows_are_bounded() {
        let mut w = Windows::default();
        for i in 0..10 {
            w.push(("t".into(), 0), &[i as f64, f64::NAN], 4, 1);
        }
        w.push(("t".into(), 1), &[1.0], 4, 1);
        assert_eq!(w.len(), 1);
        assert_eq!(w.refused, 1);
        assert_eq!(w.series["t"][&0].len(), 4);
    }
}
