//! Gradient-health alerts, evaluated per run on every assembled step. Each alert is
//! edge-triggered: it fires once when its condition becomes true and re-arms when the condition
//! clears, so a persistent fault raises one alert, not one per step.
//!
//! | kind | condition (thresholds in `[alerts]` of the collector's TOML) |
//! |---|---|
//! | `nonfinite` | the step's gradient holds NaN or ±Inf values (critical) |
//! | `norm_spike` | robust z of the model's L2 norm against the previous `norm_window` steps > `norm_z` |
//! | `tail_collapse` | the model's dimension-wise Hill index < `tail_alpha_min` (heavier tails) |
//! | `tail_change` | that index is more than `tail_change_factor` times above or below the median of the previous `norm_window` steps |
//! | `slope_change` | a covariance spectrum's slope moves by more than `slope_change` between snapshots |
//! | `straggler` | a rank is missing from a step released after the straggler timeout |
//! | `resumed` | a rank went back over steps it had reported: the job was resumed from a checkpoint (raised by `Live::resumed` when the assembler begins a trajectory) |
//!
//! The robust z-score is `(x − median)/(1.4826 · MAD)` (`gradtel_stats::robust`): a spike cannot
//! mask itself by inflating the scale it is judged against, as it would with a mean and SD.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;

use gradtel_stats::robust;

use super::checkpoint::{AlertsState, CheckpointError, SlopeState};
use super::spectra::{GRADIENT, SGN};
use crate::config::AlertConfig;
use crate::tables::alerts::AlertRow;

/// The alert kinds, as written to `alerts.kind` and as the `kind` label of
/// `gradtel_collector_alerts_total`. Every kind is exported for a run from its first step on,
/// at 0 until it is raised: a Prometheus rule's `increase()` over a counter that first appears
/// at 1 sees no increase, so without the zeros a run's first alert of a kind would page no one.
pub mod kind {
    pub const NONFINITE: &str = "nonfinite";
    pub const NORM_SPIKE: &str = "norm_spike";
    pub const TAIL_COLLAPSE: &str = "tail_collapse";
    pub const TAIL_CHANGE: &str = "tail_change";
    pub const SLOPE_CHANGE: &str = "slope_change";
    pub const STRAGGLER: &str = "straggler";
    pub const RESUMED: &str = "resumed";
    pub const ALL: [&str; 7] = [
        NONFINITE,
        NORM_SPIKE,
        TAIL_COLLAPSE,
        TAIL_CHANGE,
        SLOPE_CHANGE,
        STRAGGLER,
        RESUMED,
    ];
}

#[derive(Debug, Default)]
pub struct AlertState {
    norms: VecDeque<f64>,
    in_spike: bool,
    nonfinite: bool,
    tails: VecDeque<f64>,
    collapsed: bool,
    changed: bool,
    slopes: BTreeMap<&'static str, f64>,
    slope_changed: BTreeMap<&'static str, bool>,
    missing: BTreeSet<u32>,
}

/// What one step tells the alerts.
pub struct StepFacts<'a> {
    pub run: &'a Arc<str>,
    pub step: u64,
    pub now_ns: i64,
    pub nonfinite: u64,
    /// Tensors holding the non-finite values.
    pub nonfinite_tensors: Vec<String>,
    pub norm: Option<f64>,
    pub hill: Option<f64>,
    pub missing_ranks: &'a [u32],
    pub ranks_reported: &'a [u32],
}

impl AlertState {
    /// Evaluate one step; returns the alerts it raises and the norm's robust z.
    pub fn step(&mut self, cfg: &AlertConfig, f: &StepFacts) -> (Vec<AlertRow>, Option<f64>) {
        let mut out = Vec::new();
        let alert =
            |kind, severity, scope_kind, scope: String, value, threshold, message| AlertRow {
                run_id: f.run.clone(),
                step: f.step,
                raised_at_ns: f.now_ns,
                kind,
                severity,
                scope_kind,
                scope,
                value,
                threshold,
                message,
            };

        let now_nonfinite = f.nonfinite > 0;
        if cfg.nonfinite && now_nonfinite && !self.nonfinite {
            out.push(alert(
                kind::NONFINITE,
                "critical",
                "model",
                String::new(),
                Some(f.nonfinite as f64),
                Some(0.0),
                format!(
                    "{} NaN/Inf gradient values at step {} in {}",
                    f.nonfinite,
                    f.step,
                    f.nonfinite_tensors.join(", ")
                ),
            ));
        }
        self.nonfinite = now_nonfinite;

        let mut z = None;
        if let Some(norm) = f.norm.filter(|n| n.is_finite()) {
            let history: Vec<f64> = self.norms.iter().copied().collect();
            if history.len() >= cfg.norm_min_history {
                z = robust::robust_z(norm, &history);
            }
            let spike = z.is_some_and(|z| z > cfg.norm_z);
            if spike && !self.in_spike {
                out.push(alert(
                    kind::NORM_SPIKE,
                    "warning",
                    "model",
                    String::new(),
                    z,
                    Some(cfg.norm_z),
                    format!(
                        "gradient norm {norm:.4e} at step {} is {} robust SDs above the median of the last {} steps",
                        f.step,
                        sds(z.unwrap_or(0.0)),
                        history.len()
                    ),
                ));
            }
            self.in_spike = spike;
            // Spikes stay out of the history, so a burst does not become the new normal.
            if !spike {
                self.norms.push_back(norm);
                while self.norms.len() > cfg.norm_window {
                    self.norms.pop_front();
                }
            }
        }

        if let Some(alpha) = f.hill.filter(|a| a.is_finite()) {
            let collapsed = cfg.tail_alpha_min > 0.0 && alpha < cfg.tail_alpha_min;
            if collapsed && !self.collapsed {
                out.push(alert(
                    kind::TAIL_COLLAPSE,
                    "warning",
                    "model",
                    String::new(),
                    Some(alpha),
                    Some(cfg.tail_alpha_min),
                    format!(
                        "dimension-wise tail index {alpha:.3} at step {} is below {}",
                        f.step, cfg.tail_alpha_min
                    ),
                ));
            }
            self.collapsed = collapsed;
            let history: Vec<f64> = self.tails.iter().copied().collect();
            let median = (history.len() >= cfg.norm_min_history)
                .then(|| robust::median(&history))
                .flatten();
            let ratio = median.filter(|m| *m > 0.0).map(|m| alpha / m);
            let changed = cfg.tail_change_factor > 1.0
                && ratio.is_some_and(|r| {
                    r > cfg.tail_change_factor || r < 1.0 / cfg.tail_change_factor
                });
            if changed && !self.changed {
                out.push(alert(
                    kind::TAIL_CHANGE,
                    "warning",
                    "model",
                    String::new(),
                    Some(alpha),
                    median,
                    format!(
                        "dimension-wise tail index moved to {alpha:.3} at step {} from a median of {:.3}",
                        f.step,
                        median.unwrap_or(f64::NAN)
                    ),
                ));
            }
            self.changed = changed;
            self.tails.push_back(alpha);
            while self.tails.len() > cfg.norm_window {
                self.tails.pop_front();
            }
        }

        if cfg.straggler {
            for &r in f.missing_ranks {
                if self.missing.insert(r) {
                    out.push(alert(
                        kind::STRAGGLER,
                        "warning",
                        "rank",
                        r.to_string(),
                        Some(f64::from(r)),
                        None,
                        format!(
                            "rank {r} missing from step {} (released after the straggler timeout)",
                            f.step
                        ),
                    ));
                }
            }
            for r in f.ranks_reported {
                self.missing.remove(r);
            }
        }
        (out, z)
    }

    /// Compare a snapshot's slope with the previous one of the same sketch.
    pub fn slope(
        &mut self,
        cfg: &AlertConfig,
        run: &Arc<str>,
        step: u64,
        now_ns: i64,
        sketch: &'static str,
        slope: f64,
    ) -> Option<AlertRow> {
        let previous = self.slopes.insert(sketch, slope);
        let changed = cfg.slope_change > 0.0
            && previous.is_some_and(|p| (slope - p).abs() > cfg.slope_change);
        let was = self.slope_changed.insert(sketch, changed).unwrap_or(false);
        (changed && !was).then(|| AlertRow {
            run_id: run.clone(),
            step,
            raised_at_ns: now_ns,
            kind: kind::SLOPE_CHANGE,
            severity: "warning",
            scope_kind: "sketch",
            scope: sketch.to_string(),
            value: Some(slope),
            threshold: previous,
            message: format!(
                "{sketch} covariance spectrum slope moved from {:.3} to {slope:.3} at step {step}",
                previous.unwrap_or(f64::NAN)
            ),
        })
    }
}

impl AlertState {
    /// The alerts' histories and edge states as a checkpoint holds them.
    pub(super) fn save(&self) -> AlertsState {
        let sketches: BTreeSet<&'static str> = self
            .slopes
            .keys()
            .chain(self.slope_changed.keys())
            .copied()
            .collect();
        AlertsState {
            norms: self.norms.iter().copied().collect(),
            in_spike: self.in_spike,
            nonfinite: self.nonfinite,
            tails: self.tails.iter().copied().collect(),
            collapsed: self.collapsed,
            changed: self.changed,
            slopes: sketches
                .into_iter()
                .map(|k| SlopeState {
                    sketch: k.to_string(),
                    slope: self.slopes.get(k).copied(),
                    changed: self.slope_changed.get(k).copied(),
                })
                .collect(),
            missing: self.missing.iter().copied().collect(),
        }
    }

    /// The state a checkpoint holds.
    pub(super) fn load(s: AlertsState) -> Result<Self, CheckpointError> {
        if !s.norms.iter().chain(&s.tails).all(|v| v.is_finite()) {
            return Err(CheckpointError::Invalid(
                "an alert history holds a value that is not finite",
            ));
        }
        let mut a = AlertState {
            norms: s.norms.into(),
            in_spike: s.in_spike,
            nonfinite: s.nonfinite,
            tails: s.tails.into(),
            collapsed: s.collapsed,
            changed: s.changed,
            missing: s.missing.into_iter().collect(),
            ..Default::default()
        };
        for slope in s.slopes {
            let sketch = [GRADIENT, SGN]
                .into_iter()
                .find(|k| *k == slope.sketch)
                .ok_or(CheckpointError::Invalid("a slope names an unknown sketch"))?;
            if let Some(v) = slope.slope {
                a.slopes.insert(sketch, v);
            }
            if let Some(c) = slope.changed {
                a.slope_changed.insert(sketch, c);
            }
        }
        Ok(a)
    }
}

/// A z-score for a message: a constant history (zero MAD, see `robust_z`) makes it astronomically
/// large, which reads better as a power of ten than as 300 digits.
fn sds(z: f64) -> String {
    if z.abs() < 1e6 {
        format!("{z:.1}")
    } else {
        format!("{z:.1e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts<'a>(
        run: &'a Arc<str>,
        step: u64,
        norm: f64,
        nonfinite: u64,
        missing: &'a [u32],
    ) -> StepFacts<'a> {
        StepFacts {
            run,
            step,
            now_ns: 0,
            nonfinite,
            nonfinite_tensors: vec!["w".into()],
            norm: Some(norm),
            hill: Some(2.0),
            missing_ranks: missing,
            ranks_reported: &[0],
        }
    }

    #[test]
    fn each_fault_raises_exactly_one_alert() {
        let cfg = AlertConfig::default();
        let run: Arc<str> = "r".into();
        let mut s = AlertState::default();
        let mut kinds = Vec::new();
        for step in 0..100u64 {
            let norm = 1.0
                + 0.01 * ((step * 7) % 5) as f64
                + if (40..43).contains(&step) { 50.0 } else { 0.0 };
            let nonfinite = u64::from((60..65).contains(&step));
            let missing: &[u32] = if step >= 80 { &[1] } else { &[] };
            let (a, _) = s.step(&cfg, &facts(&run, step, norm, nonfinite, missing));
            kinds.extend(a.into_iter().map(|a| (a.kind, a.step)));
        }
        assert_eq!(
            kinds,
            vec![("norm_spike", 40), ("nonfinite", 60), ("straggler", 80)]
        );
    }

    #[test]
    fn a_departure_from_a_constant_norm_is_flagged_with_a_readable_message() {
        let cfg = AlertConfig::default();
        let run: Arc<str> = "r".into();
        let mut s = AlertState::default();
        let mut raised = Vec::new();
        for step in 0..40u64 {
            let norm = if step < 30 { 0.0 } else { 4.4e-3 };
            let (a, _) = s.step(&cfg, &facts(&run, step, norm, 0, &[]));
            raised.extend(a);
        }
        assert_eq!(raised.len(), 1);
        assert_eq!((raised[0].kind, raised[0].step), ("norm_spike", 30));
        assert!(raised[0].message.len() < 120, "{}", raised[0].message);
        assert!(raised[0].message.contains("e30"), "{}", raised[0].message);
    }

    #[test]
    fn slope_changes_are_edge_triggered() {
        let cfg = AlertConfig::default();
        let run: Arc<str> = "r".into();
        let mut s = AlertState::default();
        let raised: Vec<bool> = [1.0, 1.1, 2.0, 3.0, 3.1]
            .iter()
            .map(|&v| s.slope(&cfg, &run, 0, 0, "gradient", v).is_some())
            .collect();
        assert_eq!(raised, vec![false, false, true, false, false]);
    }
}
