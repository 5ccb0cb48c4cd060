//! Dimension-wise tails, per step and scope (tensor, layer, model): the sample is every value of
//! the scope at one step, held by the collector only as the merged summary.
//!
//! * Hill, Pickands, DEdH on the merged top-k (`gradtel_stats::tail`; exact, since the top-k of
//!   a union is the top-k of the parts' top-k), `k = ⌊√n⌋` capped by the top list (Pickands
//!   uses a quarter of it).
//! * Clauset's power-law fit and KS decision on the merged |g| histogram
//!   (`gradtel_stats::powerlaw_binned`), every `clauset_every` steps.
//! * D'Agostino K² and Jarque–Bera from the merged moments (exact for the concatenation).
//! * The α-stable estimator (Mohammadi et al. 2015) on the tracked coordinates of the scope's
//!   minibatch gradient (tensor and model scopes): it needs raw signed values, which only the
//!   tracked sample provides, so it is noisier (n = the tracked count).

use gradtel_stats::{normality, powerlaw_binned, tail};

use crate::tables::steps::StepRow;
use crate::tables::tails::TailRow;

pub const OBJECT: &str = "dimension";

/// x_min candidates of the histogram fit: a 30-octave histogram gets one per ~half octave.
pub const CLAUSET_CANDIDATES: usize = 64;

/// Rows for one step row. `tracked` are the scope's tracked minibatch values (empty for
/// layers); `clauset_min_tail` is `Some` on the steps where the Clauset fit runs.
pub fn rows(r: &StepRow, tracked: &[f64], clauset_min_tail: Option<u64>) -> Vec<TailRow> {
    let base = TailRow {
        run_id: r.run_id.clone(),
        step: r.step,
        object: OBJECT,
        scope_kind: r.scope_kind,
        scope: r.scope.clone(),
        ..Default::default()
    };
    let s = &r.summary;
    let n = s.pos_count + s.neg_count;
    let top: Vec<f64> = s
        .top_abs
        .sorted_desc()
        .into_iter()
        .filter(|v| *v > 0.0)
        .collect();
    let k = tail::default_k(n as usize, top.len());
    let mut out = Vec::with_capacity(7);
    let estimate = |name: &'static str,
                    k: usize,
                    samples: u64,
                    e: Result<tail::TailEstimate, gradtel_stats::StatsError>| {
        let mut row = TailRow {
            estimator: name,
            samples,
            k: Some(k as u64),
            ..base.clone()
        };
        match e {
            Ok(t) => {
                row.alpha = t.alpha;
                row.alpha_se = t.alpha_se;
                row.k = Some(t.k as u64);
            }
            Err(e) => row.error = Some(e.to_string()),
        }
        row
    };
    let enough = |k: usize, need: usize| {
        if top.len() >= need && k >= 2 {
            Ok(())
        } else {
            Err(gradtel_stats::StatsError::TooFewValues {
                needed: need.max(3),
                got: top.len(),
            })
        }
    };
    out.push(estimate(
        "hill",
        k,
        n,
        enough(k, k + 1).and_then(|_| tail::hill(&top, k)),
    ));
    let kp = k.min(top.len() / 4);
    out.push(estimate(
        "pickands",
        kp,
        n,
        enough(kp, 4 * kp).and_then(|_| tail::pickands(&top, kp)),
    ));
    out.push(estimate(
        "dedh",
        k,
        n,
        enough(k, k + 1).and_then(|_| tail::dedh(&top, k)),
    ));
    if r.scope_kind != "layer" {
        let nonzero: Vec<f64> = tracked.iter().copied().filter(|v| *v != 0.0).collect();
        let e = tail::alpha_stable(&nonzero, None);
        let k1 = e.as_ref().map_or(0, |t| t.k);
        out.push(estimate("alpha_stable", k1, nonzero.len() as u64, e));
    }
    if let Some(min_tail) = clauset_min_tail {
        let mut row = TailRow {
            estimator: "clauset",
            samples: n,
            ..base.clone()
        };
        match powerlaw_binned::fit_histogram(&s.abs_hist, min_tail, CLAUSET_CANDIDATES) {
            Ok(f) => {
                row.k = Some(f.n_tail);
                row.alpha = Some(f.alpha - 1.0);
                row.xmin = Some(f.xmin);
                row.statistic = Some(f.ks_d);
                row.critical = Some(f.ks_critical);
                row.rejected = Some(f.rejected_ks);
            }
            Err(e) => row.error = Some(e.to_string()),
        }
        out.push(row);
    }
    for (name, test) in [
        ("dagostino_k2", normality::dagostino_k2 as fn(_) -> _),
        ("jarque_bera", normality::jarque_bera),
    ] {
        let mut row = TailRow {
            estimator: name,
            samples: s.moments.n,
            ..base.clone()
        };
        match test(&s.moments) {
            Ok(t) => {
                row.statistic = Some(t.statistic);
                row.p_value = Some(t.p_value);
                row.rejected = Some(t.p_value < 0.05);
            }
            Err(e) => row.error = Some(e.to_string()),
        }
        out.push(row);
    }
    out
}

/// The Hill estimate of a set of rows' model scope, if any (for alerts and gauges).
pub fn hill_of(rows: &[TailRow], scope_kind: &str, scope: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.estimator == "hill" && r.scope_kind == scope_kind && r.scope == scope)
        .and_then(|r| r.alpha)
}
