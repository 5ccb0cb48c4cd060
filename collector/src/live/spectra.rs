//! The live covariance spectra: two centred Frequent-Directions sketches per run (Ghashami et
//! al. 2016; `gradtel_stats::fd`) over the rank-summed projections — `gradient` (the projected
//! gradients) and `sgn` (the projected SGN rows) — snapshotted into the `spectra` table.
//!
//! Guarantee carried to every snapshot: each covariance eigenvalue λ_k of the sketched rows
//! lies in `[λ̂_k, λ̂_k + Δ/(n−1)]` (Δ the sketch's total shrinkage), reported as `error_bound`.
//! With `fd_decay` γ < 1 the sketch and Δ are multiplied by γ every step, so old rows fade.

use std::sync::Arc;

use gradtel_stats::fd::{FdState, FrequentDirections};
use gradtel_stats::spectrum;

use super::checkpoint::{CheckpointError, IdentityState, SketchState, SketchesState};
use crate::tables::spectra::SpectrumRow;

pub const GRADIENT: &str = "gradient";
pub const SGN: &str = "sgn";

/// The projection all rows of a run must share: (kind, seed, dimension).
pub type Identity = (i32, u64, usize);

pub struct Sketches {
    ell: usize,
    identity: Option<Identity>,
    gradient: Option<FrequentDirections>,
    sgn: Option<FrequentDirections>,
    /// Rows refused: a different projection than the run's first, or non-finite.
    pub refused: u64,
}

/// Slope and R² of one sketch's latest snapshot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fit {
    pub sketch: &'static str,
    pub slope: f64,
    pub r2: f64,
}

impl Sketches {
    pub fn new(ell: usize) -> Self {
        Self {
            ell,
            identity: None,
            gradient: None,
            sgn: None,
            refused: 0,
        }
    }

    /// Add a row to `sketch` (`GRADIENT` or `SGN`).
    pub fn insert(&mut self, sketch: &'static str, id: Identity, row: &[f64]) {
        if *self.identity.get_or_insert(id) != id || row.len() != id.2 {
            self.refused += 1;
            return;
        }
        let ell = self.ell.min(id.2);
        let slot = if sketch == SGN {
            &mut self.sgn
        } else {
            &mut self.gradient
        };
        if slot.is_none() {
            *slot = FrequentDirections::new(id.2, ell, true).ok();
        }
        let accepted = slot
            .as_mut()
            .is_some_and(|fd| fd.insert(row).unwrap_or(false));
        if !accepted {
            self.refused += 1;
        }
    }

    pub fn decay(&mut self, gamma: f64) {
        if gamma < 1.0 {
            for fd in [&mut self.gradient, &mut self.sgn].into_iter().flatten() {
                let _ = fd.decay(gamma);
            }
        }
    }

    /// Eigenvalues and fit of both sketches at `step`.
    pub fn snapshot(&self, run: &Arc<str>, step: u64) -> (Vec<SpectrumRow>, Vec<Fit>) {
        let mut rows = Vec::new();
        let mut fits = Vec::new();
        for (name, fd) in [(GRADIENT, &self.gradient), (SGN, &self.sgn)] {
            let Some(fd) = fd else { continue };
            let norm = fd.normaliser();
            let bound = fd.shrinkage() / norm;
            let (eigen, error) = match fd.eigenvalues() {
                // Directions past ℓ are the buffer's unshrunk rows: not part of the guarantee.
                Ok(ev) => (
                    ev.iter()
                        .take(fd.ell())
                        .map(|v| v / norm)
                        .collect::<Vec<_>>(),
                    None,
                ),
                Err(e) => (Vec::new(), Some(e.to_string())),
            };
            let fit = if error.is_none() {
                spectrum::fit_sketch(&eigen, bound, fd.ell(), None).map_err(|e| e.to_string())
            } else {
                Err(error.clone().unwrap_or_default())
            };
            let base = SpectrumRow {
                run_id: run.clone(),
                step,
                sketch: name,
                rows: fd.rows(),
                dim: fd.dim() as u32,
                ell: fd.ell() as u32,
                error_bound: bound,
                ..Default::default()
            };
            let base = match &fit {
                Ok(f) => {
                    fits.push(Fit {
                        sketch: name,
                        slope: f.slope,
                        r2: f.r2,
                    });
                    SpectrumRow {
                        slope: Some(f.slope),
                        intercept: Some(f.intercept),
                        r2: Some(f.r2),
                        ks: Some(f.ks_distance),
                        window_lo: Some(f.window.0 as u32),
                        window_hi: Some(f.window.1 as u32),
                        ..base
                    }
                }
                Err(e) => SpectrumRow {
                    error: Some(e.clone()),
                    ..base
                },
            };
            if eigen.is_empty() {
                rows.push(base.clone());
            }
            for (i, v) in eigen.iter().enumerate() {
                rows.push(SpectrumRow {
                    k: i as u32 + 1,
                    eigenvalue: *v,
                    ..base.clone()
                });
            }
        }
        (rows, fits)
    }
}

impl Sketches {
    /// The sketches as a checkpoint holds them.
    pub(super) fn save(&self) -> SketchesState {
        let sketch =
            |fd: &Option<FrequentDirections>| fd.as_ref().map(|fd| SketchState::from(fd.state()));
        SketchesState {
            ell: self.ell as u64,
            identity: self.identity.map(|(kind, seed, dim)| IdentityState {
                kind,
                seed,
                dim: dim as u64,
            }),
            gradient: sketch(&self.gradient),
            sgn: sketch(&self.sgn),
            refused: self.refused,
        }
    }

    /// The sketches a checkpoint holds. Sketches of another ℓ than `ell` (the configuration
    /// changed) are dropped and start afresh; the run keeps its projection.
    pub(super) fn load(s: SketchesState, ell: usize) -> Result<Self, CheckpointError> {
        let identity = s.identity.map(|i| (i.kind, i.seed, i.dim as usize));
        if identity.is_some_and(|id| id.2 == 0 || id.2 > crate::report::MAX_SKETCH_DIM as usize) {
            return Err(CheckpointError::Invalid(
                "the run's projection has a dimension no report may carry",
            ));
        }
        let sketch = |st: Option<SketchState>| -> Result<_, CheckpointError> {
            let Some(st) = st else { return Ok(None) };
            // Checked before the sketch is built, which allocates its dimension × 2ℓ buffer.
            if identity.is_none_or(|id| id.2 as u64 != st.dim) {
                return Err(CheckpointError::Invalid(
                    "a covariance sketch does not match the run's projection",
                ));
            }
            if s.ell as usize != ell {
                // The configuration changed: this sketch's shape is no longer the run's.
                return Ok(None);
            }
            if st.ell != ell.min(st.dim as usize) as u64 {
                return Err(CheckpointError::Invalid(
                    "a covariance sketch keeps another number of directions than its run's",
                ));
            }
            let fd = FrequentDirections::from_state(FdState::from(st))
                .map_err(|_| CheckpointError::Invalid("a covariance sketch is malformed"))?;
            Ok(Some(fd))
        };
        Ok(Self {
            ell,
            identity,
            gradient: sketch(s.gradient)?,
            sgn: sketch(s.sgn)?,
            refused: s.refused,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradtel_stats::rng::SplitMix64;

    #[test]
    fn a_planted_slope_is_recovered_and_foreign_rows_are_refused() {
        let mut s = Sketches::new(32);
        let mut r = SplitMix64::new(5);
        let dim = 128;
        for _ in 0..2000 {
            // Independent coordinates with variance k^-1.5: the covariance spectrum itself.
            let row: Vec<f64> = (1..=dim)
                .map(|k| r.normal() * (k as f64).powf(-0.75))
                .collect();
            s.insert(GRADIENT, (1, 7, dim), &row);
        }
        s.insert(GRADIENT, (1, 8, dim), &vec![0.0; dim]);
        assert_eq!(s.refused, 1);
        let (rows, fits) = s.snapshot(&"r".into(), 10);
        assert_eq!(fits.len(), 1);
        assert!((fits[0].slope - 1.5).abs() < 0.2, "{:?}", fits[0]);
        assert!(fits[0].r2 > 0.95);
        assert_eq!(rows.len(), 32);
        assert!(rows.windows(2).all(|w| w[0].eigenvalue >= w[1].eigenvalue));
        assert_eq!(rows[0].rows, 2000);
    }
}
