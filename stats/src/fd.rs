//! Frequent Directions (Liberty 2013; Ghashami, Liberty, Phillips & Woodruff 2016, "Frequent
//! Directions: simple and deterministic matrix sketching", SIAM J. Comput. 45(5)), fast variant
//! with a 2ℓ-row buffer, mergeable, optionally centred, with exponential forgetting.
//!
//! Rows a_t ∈ R^d stream in. The sketch B holds at most 2ℓ rows; when full it is shrunk: with
//! BᵀB = Σ λ_i v_i v_iᵀ (λ descending) and δ = λ_ℓ, B becomes the rows √(λ_i − δ) v_iᵀ for
//! λ_i > δ (at most ℓ − 1 rows). The shrink is computed through the eigendecomposition of the
//! small Gram matrix BBᵀ (2ℓ × 2ℓ, in f64, with `faer`), so it costs O(ℓ² d) per ℓ rows.
//!
//! **Guarantee** (Ghashami et al. 2016, Thm. 1.1 and §3 for the fast variant): with Δ the total
//! of the δ's, `0 ⪯ AᵀA − BᵀB ⪯ Δ·I`, hence for every i, `0 ≤ λ_i(AᵀA) − λ_i(BᵀB) ≤ Δ`, and
//! `Δ ≤ ‖A − A_k‖²_F / (ℓ − k)` for every k < ℓ. [`FrequentDirections::shrinkage`] returns Δ,
//! the bound the sketch guarantees *now* (usually far below the worst case).
//!
//! **Merge** (Agarwal et al. 2012, "Mergeable summaries"): stacking two sketches and shrinking
//! keeps the same guarantee for the union of rows, with Δ = Δ_a + Δ_b + the merge's own shrinks.
//!
//! **Centring.** To sketch the covariance rather than the raw second moment, rows are fed as
//! `r_n = √((n−1)/n)·(x_n − μ_{n−1})` (Welford), whose Σ r r ᵀ is exactly the centred scatter
//! matrix Σ (x − x̄)(x − x̄)ᵀ; the guarantee therefore holds for the scatter matrix with A the
//! matrix of rows r_n. Two centred sketches merge by also adding the row
//! `√(n_a n_b / n)·(μ_a − μ_b)` (Chan et al.'s pairwise update). Covariance eigenvalues are the
//! scatter's divided by (n − 1), like `numpy.cov`.
//!
//! **Forgetting.** [`FrequentDirections::decay`] multiplies the sketched scatter and Δ by γ, so
//! calling it every N rows weights old rows by γ^age. The running mean used for centring keeps
//! its full memory, so after decay the sketch approximates Σ γ^age (x − μ)(x − μ)ᵀ around the
//! long-run mean μ; the difference is the rank-one term of the mean's drift.

use faer::diag::Diag;
use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::evd::{ComputeEigenvectors, self_adjoint_evd, self_adjoint_evd_scratch};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par, Side};

use crate::StatsError;

#[derive(Debug, Clone)]
pub struct FrequentDirections {
    ell: usize,
    dim: usize,
    centred: bool,
    /// Column i is sketch row i (column-major, so a row is contiguous).
    buf: Mat<f64>,
    filled: usize,
    /// Columns 0..ortho are mutually orthogonal (the rows a shrink kept), with squared norms
    /// `ortho_sq`: their block of the Gram matrix is diagonal and need not be recomputed.
    ortho: usize,
    ortho_sq: Vec<f64>,
    shrinkage: f64,
    rows: u64,
    /// Effective number of rows after decay (for the covariance normalisation).
    weight: f64,
    mean: Vec<f64>,
    skipped: u64,
}

/// Products below this many multiply-adds run on the calling thread: handing a small sketch's
/// product to the thread pool costs more than it saves, and keeps idle pool threads spinning
/// beside a collector that sketches many small streams.
const PARALLEL_MIN_FLOPS: usize = 1 << 24;

/// `a · b`, in parallel only when large.
fn product(a: MatRef<'_, f64>, b: MatRef<'_, f64>) -> Mat<f64> {
    let mut out = Mat::<f64>::zeros(a.nrows(), b.ncols());
    let par = if a.nrows() * a.ncols() * b.ncols() >= PARALLEL_MIN_FLOPS {
        faer::get_global_parallelism()
    } else {
        Par::Seq
    };
    matmul(out.as_mut(), Accum::Replace, a, b, 1.0, par);
    crate::simd_state::after_vector_kernels(par != Par::Seq);
    out
}

/// Eigenvalues (ascending) and eigenvectors of the symmetric `g` (both triangles filled).
/// A Gram matrix of at most 2ℓ rows is decomposed on the calling thread: faer's
/// `self_adjoint_eigen` takes the global parallelism, and handing a 64 × 64 problem's
/// Householder blocks to rayon cost more than it saved and left the pool's threads spinning
/// (≈ 2 % of a busy collector's CPU in `sched_yield`).
fn symmetric_evd(g: MatRef<'_, f64>) -> Result<(Vec<f64>, Mat<f64>), StatsError> {
    let n = g.nrows();
    let par = if n * n * n >= PARALLEL_MIN_FLOPS {
        faer::get_global_parallelism()
    } else {
        Par::Seq
    };
    let (mut u, mut s) = (Mat::<f64>::zeros(n, n), Diag::<f64>::zeros(n));
    let mut mem = MemBuffer::new(self_adjoint_evd_scratch::<f64>(
        n,
        ComputeEigenvectors::Yes,
        par,
        Default::default(),
    ));
    let result = self_adjoint_evd(
        g,
        s.as_mut(),
        Some(u.as_mut()),
        par,
        MemStack::new(&mut mem),
        Default::default(),
    );
    crate::simd_state::after_vector_kernels(par != Par::Seq);
    result.map_err(evd_failed)?;
    let s = s.column_vector();
    Ok(((0..n).map(|i| s[i]).collect(), u))
}

/// Eigenvalues (descending) and eigenvectors (columns, same order) of a sketch's BᵀB.
#[derive(Debug, Clone)]
pub struct SketchSpectrum {
    pub values: Vec<f64>,
    pub vectors: Mat<f64>,
}

fn evd_failed(_: faer::linalg::evd::EvdError) -> StatsError {
    StatsError::Degenerate("eigendecomposition did not converge")
}

impl FrequentDirections {
    /// A sketch of rows in R^dim keeping ℓ directions (1 ≤ ℓ ≤ dim).
    pub fn new(dim: usize, ell: usize, centred: bool) -> Result<Self, StatsError> {
        if ell == 0 || dim == 0 {
            return Err(StatsError::BadParameter(
                "dimension and ell must be positive",
            ));
        }
        if ell > dim {
            return Err(StatsError::BadParameter(
                "ell must not exceed the dimension",
            ));
        }
        Ok(Self {
            ell,
            dim,
            centred,
            buf: Mat::zeros(dim, 2 * ell),
            filled: 0,
            ortho: 0,
            ortho_sq: Vec::new(),
            shrinkage: 0.0,
            rows: 0,
            weight: 0.0,
            mean: vec![0.0; if centred { dim } else { 0 }],
            skipped: 0,
        })
    }

    pub fn ell(&self) -> usize {
        self.ell
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Rows absorbed (NaN/Inf rows excluded).
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Rows skipped because they held NaN or ±Inf.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Δ: the current guarantee `0 ≤ λ_i(AᵀA) − λ_i(BᵀB) ≤ Δ` (scatter units).
    pub fn shrinkage(&self) -> f64 {
        self.shrinkage
    }

    /// Divisor turning scatter eigenvalues into covariance eigenvalues (n − 1, or n uncentred).
    pub fn normaliser(&self) -> f64 {
        if self.centred {
            (self.weight - 1.0).max(1.0)
        } else {
            self.weight.max(1.0)
        }
    }

    /// Add one row. Returns `Ok(false)` when the row was skipped (NaN or ±Inf, counted).
    pub fn insert(&mut self, row: &[f64]) -> Result<bool, StatsError> {
        if row.len() != self.dim {
            return Err(StatsError::DimensionMismatch {
                expected: self.dim,
                got: row.len(),
            });
        }
        if row.iter().any(|v| !v.is_finite()) {
            self.skipped += 1;
            return Ok(false);
        }
        self.rows += 1;
        self.weight += 1.0;
        if self.centred {
            let n = self.rows as f64;
            let scale = ((n - 1.0) / n).sqrt();
            // r_n = √((n−1)/n)(x − μ_{n−1}); then μ_n = μ_{n−1} + (x − μ_{n−1})/n.
            let c = self.filled;
            let col = self.buf.col_as_slice_mut(c);
            for ((slot, m), &x) in col.iter_mut().zip(self.mean.iter_mut()).zip(row) {
                let d = x - *m;
                *m += d / n;
                *slot = scale * d;
            }
        } else {
            self.next_column().copy_from_slice(row);
        }
        self.commit_row()
    }

    fn next_column(&mut self) -> &mut [f64] {
        let c = self.filled;
        self.buf.col_as_slice_mut(c)
    }

    fn commit_row(&mut self) -> Result<bool, StatsError> {
        self.filled += 1;
        if self.filled == 2 * self.ell {
            self.shrink()?;
        }
        Ok(true)
    }

    /// Gram eigendecomposition of the filled rows: (eigenvalues ascending, eigenvectors).
    /// Only the columns added since the last shrink are multiplied out (O(d·f·(f − k)) instead
    /// of O(d·f²)); the kept block is the known diagonal.
    fn gram_evd(&self) -> Result<(Vec<f64>, Mat<f64>), StatsError> {
        let f = self.filled;
        let k = self.ortho.min(f);
        let m = self.buf.subcols(0, f);
        let cross = product(m.transpose(), self.buf.subcols(k, f - k));
        let g = Mat::<f64>::from_fn(f, f, |r, c| match (r < k, c < k) {
            (true, true) => {
                if r == c {
                    self.ortho_sq[r]
                } else {
                    0.0
                }
            }
            (_, false) => cross[(r, c - k)],
            (false, true) => cross[(c, r - k)],
        });
        symmetric_evd(g.as_ref())
    }

    fn shrink(&mut self) -> Result<(), StatsError> {
        let f = self.filled;
        let (lam, u) = self.gram_evd()?;
        let delta = if f >= self.ell {
            lam[f - self.ell].max(0.0)
        } else {
            0.0
        };
        let keep: Vec<usize> = (0..f).rev().filter(|&i| lam[i] > delta).collect();
        let mut coef = Mat::<f64>::zeros(f, keep.len());
        for (k, &i) in keep.iter().enumerate() {
            let c = ((lam[i] - delta) / lam[i]).sqrt();
            for r in 0..f {
                coef[(r, k)] = u[(r, i)] * c;
            }
        }
        let shrunk = product(self.buf.subcols(0, f), coef.as_ref());
        self.buf.subcols_mut(0, keep.len()).copy_from(&shrunk);
        self.filled = keep.len();
        self.ortho = keep.len();
        self.ortho_sq = keep.iter().map(|&i| lam[i] - delta).collect();
        self.shrinkage += delta;
        Ok(())
    }

    /// Merge another sketch of the same shape; the result sketches the union of both streams.
    pub fn merge(&mut self, other: &FrequentDirections) -> Result<(), StatsError> {
        if other.dim != self.dim || other.ell != self.ell || other.centred != self.centred {
            return Err(StatsError::BadParameter(
                "only sketches with the same dimension, ell and centring merge",
            ));
        }
        let (na, nb) = (self.weight, other.weight);
        if self.centred && na > 0.0 && nb > 0.0 {
            let n = na + nb;
            let scale = (na * nb / n).sqrt();
            let diff: Vec<f64> = self
                .mean
                .iter()
                .zip(&other.mean)
                .map(|(a, b)| a - b)
                .collect();
            for (m, d) in self.mean.iter_mut().zip(&diff) {
                *m -= d * nb / n;
            }
            let col = self.next_column();
            for (c, d) in col.iter_mut().zip(&diff) {
                *c = scale * d;
            }
            self.commit_row()?;
        } else if self.centred && na == 0.0 {
            self.mean.clone_from(&other.mean);
        }
        for c in 0..other.filled {
            self.next_column()
                .copy_from_slice(other.buf.col_as_slice(c));
            self.commit_row()?;
        }
        self.shrinkage += other.shrinkage;
        self.rows += other.rows;
        self.weight += other.weight;
        self.skipped += other.skipped;
        Ok(())
    }

    /// Forget: scale the sketched scatter and its bound by γ ∈ (0, 1].
    pub fn decay(&mut self, gamma: f64) -> Result<(), StatsError> {
        if !(gamma > 0.0 && gamma <= 1.0) {
            return Err(StatsError::BadParameter("decay factor must lie in (0, 1]"));
        }
        let s = gamma.sqrt();
        for c in 0..self.filled {
            self.buf
                .col_as_slice_mut(c)
                .iter_mut()
                .for_each(|v| *v *= s);
        }
        self.ortho_sq.iter_mut().for_each(|v| *v *= gamma);
        self.shrinkage *= gamma;
        self.weight *= gamma;
        Ok(())
    }

    /// Eigenvalues (descending) and eigenvectors of BᵀB, scatter units.
    pub fn spectrum(&self) -> Result<SketchSpectrum, StatsError> {
        if self.filled == 0 {
            return Ok(SketchSpectrum {
                values: Vec::new(),
                vectors: Mat::zeros(self.dim, 0),
            });
        }
        let (lam, u) = self.gram_evd()?;
        // Directions at rounding level of the largest carry no information and would be
        // amplified by 1/√λ: leave them out.
        let floor = lam.last().copied().unwrap_or(0.0) * 1e-12 * self.filled as f64;
        let order: Vec<usize> = (0..self.filled).rev().filter(|&i| lam[i] > floor).collect();
        let mut coef = Mat::<f64>::zeros(self.filled, order.len());
        for (k, &i) in order.iter().enumerate() {
            let c = 1.0 / lam[i].sqrt();
            for r in 0..self.filled {
                coef[(r, k)] = u[(r, i)] * c;
            }
        }
        let vectors = product(self.buf.subcols(0, self.filled), coef.as_ref());
        Ok(SketchSpectrum {
            values: order.iter().map(|&i| lam[i]).collect(),
            vectors,
        })
    }

    /// Eigenvalues of BᵀB, descending (scatter units).
    pub fn eigenvalues(&self) -> Result<Vec<f64>, StatsError> {
        if self.filled == 0 {
            return Ok(Vec::new());
        }
        let (lam, _) = self.gram_evd()?;
        Ok(lam.into_iter().rev().map(|v| v.max(0.0)).collect())
    }
}

/// Everything a [`FrequentDirections`] holds, as plain values: what a process writes to
/// resume a sketch after a restart ([`FrequentDirections::state`],
/// [`FrequentDirections::from_state`]). A sketch rebuilt from its state continues exactly (bit
/// for bit) as the original would have.
#[derive(Debug, Clone, PartialEq)]
pub struct FdState {
    pub dim: usize,
    pub ell: usize,
    pub centred: bool,
    /// The filled sketch rows, `dim` values each, one after the other.
    pub rows_filled: Vec<f64>,
    /// How many of the filled rows are mutually orthogonal, and their squared norms.
    pub ortho: usize,
    pub ortho_sq: Vec<f64>,
    pub shrinkage: f64,
    pub rows: u64,
    pub weight: f64,
    /// The running mean (centred sketches; empty otherwise).
    pub mean: Vec<f64>,
    pub skipped: u64,
}

impl FrequentDirections {
    /// The sketch's state (see [`FdState`]).
    pub fn state(&self) -> FdState {
        let mut rows_filled = Vec::with_capacity(self.filled * self.dim);
        for c in 0..self.filled {
            rows_filled.extend_from_slice(self.buf.col_as_slice(c));
        }
        FdState {
            dim: self.dim,
            ell: self.ell,
            centred: self.centred,
            rows_filled,
            ortho: self.ortho,
            ortho_sq: self.ortho_sq.clone(),
            shrinkage: self.shrinkage,
            rows: self.rows,
            weight: self.weight,
            mean: self.mean.clone(),
            skipped: self.skipped,
        }
    }

    /// Rebuild a sketch from its state. The state comes from a file, so every shape and value
    /// is checked: a buffer that is not a whole number of rows below 2ℓ, orthogonal rows
    /// beyond the filled ones, a mean of the wrong length, or a non-finite or negative value
    /// where the sketch keeps none is refused.
    pub fn from_state(s: FdState) -> Result<Self, StatsError> {
        let mut fd = Self::new(s.dim, s.ell, s.centred)?;
        let bad = |why| Err(StatsError::BadParameter(why));
        if !s.rows_filled.len().is_multiple_of(s.dim) || s.rows_filled.len() / s.dim >= 2 * s.ell {
            return bad("sketch state: buffer is not a whole number of rows below 2ℓ");
        }
        let filled = s.rows_filled.len() / s.dim;
        if s.ortho > filled || s.ortho_sq.len() != s.ortho {
            return bad("sketch state: orthogonal rows do not match the filled ones");
        }
        if s.mean.len() != fd.mean.len() {
            return bad("sketch state: mean has the wrong length");
        }
        let finite = |v: &f64| v.is_finite();
        let non_negative = |v: &f64| v.is_finite() && *v >= 0.0;
        let sound = s.rows_filled.iter().all(finite)
            && s.mean.iter().all(finite)
            && s.ortho_sq.iter().all(non_negative)
            && non_negative(&s.shrinkage)
            && non_negative(&s.weight);
        if !sound {
            return bad("sketch state: a value is negative or not finite");
        }
        for (c, row) in s.rows_filled.chunks_exact(s.dim).enumerate() {
            fd.buf.col_as_slice_mut(c).copy_from_slice(row);
        }
        fd.filled = filled;
        fd.ortho = s.ortho;
        fd.ortho_sq = s.ortho_sq;
        fd.shrinkage = s.shrinkage;
        fd.rows = s.rows;
        fd.weight = s.weight;
        fd.mean = s.mean;
        fd.skipped = s.skipped;
        Ok(fd)
    }
}

/// Exact eigenvalues (descending) of the scatter matrix of `rows` (centred or not), for
/// comparison with a sketch. O(n d² + d³).
pub fn exact_eigenvalues(rows: &[Vec<f64>], centred: bool) -> Result<Vec<f64>, StatsError> {
    let n = rows.len();
    let d = rows.first().map_or(0, Vec::len);
    if rows.iter().any(|r| r.len() != d) {
        return Err(StatsError::DimensionMismatch {
            expected: d,
            got: rows.iter().map(Vec::len).find(|&l| l != d).unwrap_or(0),
        });
    }
    let mut mean = vec![0.0; d];
    if centred && n > 0 {
        for r in rows {
            for (m, v) in mean.iter_mut().zip(r) {
                *m += v / n as f64;
            }
        }
    }
    let a = Mat::<f64>::from_fn(n, d, |i, j| rows[i][j] - mean[j]);
    let s = a.transpose() * &a;
    let ev = s.self_adjoint_eigenvalues(Side::Lower);
    crate::simd_state::after_vector_kernels(true);
    let mut ev = ev.map_err(evd_failed)?;
    ev.reverse();
    Ok(ev)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix64;

    fn data(n: usize, d: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut r = SplitMix64::new(seed);
        (0..n)
            .map(|_| (0..d).map(|j| r.normal() / (1.0 + j as f64)).collect())
            .collect()
    }

    /// Below and above the size where the pool would be used: G = U Λ Uᵀ with U orthonormal and
    /// Λ ascending, for a random symmetric G.
    #[test]
    fn symmetric_evd_reconstructs_the_matrix() {
        for n in [1, 7, 64, 300] {
            let rows = data(n + 5, n, n as u64);
            let x = Mat::<f64>::from_fn(n + 5, n, |i, j| rows[i][j]);
            let g = x.transpose() * &x;
            let (lam, u) = symmetric_evd(g.as_ref()).unwrap();
            assert!(
                lam.windows(2).all(|w| w[0] <= w[1]),
                "n = {n}: not ascending"
            );
            let scale = lam[n - 1].abs().max(1.0);
            let rebuilt = &u
                * Mat::<f64>::from_fn(n, n, |i, j| if i == j { lam[i] } else { 0.0 })
                * u.transpose();
            let gram = u.transpose() * &u;
            for i in 0..n {
                for j in 0..n {
                    assert!(
                        (rebuilt[(i, j)] - g[(i, j)]).abs() <= 1e-9 * scale,
                        "n = {n}"
                    );
                    let id = if i == j { 1.0 } else { 0.0 };
                    assert!(
                        (gram[(i, j)] - id).abs() <= 1e-9,
                        "n = {n}: U not orthonormal"
                    );
                }
            }
        }
    }

    #[test]
    fn a_sketch_rebuilt_from_its_state_continues_bit_for_bit() {
        let rows = data(300, 12, 5);
        for centred in [true, false] {
            // 83 rows: mid-buffer, after several shrinks and a decay.
            let mut whole = FrequentDirections::new(12, 4, centred).unwrap();
            for r in &rows[..83] {
                whole.insert(r).unwrap();
            }
            whole.decay(0.9).unwrap();
            let mut resumed = FrequentDirections::from_state(whole.state()).unwrap();
            assert_eq!(resumed.state(), whole.state());
            for r in &rows[83..] {
                whole.insert(r).unwrap();
                resumed.insert(r).unwrap();
            }
            assert!(whole.shrinkage() > 0.0);
            assert_eq!(resumed.state(), whole.state());
            assert_eq!(resumed.eigenvalues().unwrap(), whole.eigenvalues().unwrap());
        }
    }

    #[test]
    fn malformed_states_are_refused() {
        let mut fd = FrequentDirections::new(6, 3, true).unwrap();
        for r in &data(4, 6, 1) {
            fd.insert(r).unwrap();
        }
        let good = fd.state();
        let mut bad = Vec::new();
        let mut s = good.clone();
        s.rows_filled.pop();
        bad.push(s);
        let mut s = good.clone();
        s.rows_filled.extend([0.0; 12]);
        bad.push(s);
        let mut s = good.clone();
        s.ortho = 5;
        bad.push(s);
        let mut s = good.clone();
        s.mean.push(0.0);
        bad.push(s);
        let mut s = good.clone();
        s.rows_filled[0] = f64::NAN;
        bad.push(s);
        let mut s = good.clone();
        s.shrinkage = -1.0;
        bad.push(s);
        let mut s = good.clone();
        s.ell = 0;
        bad.push(s);
        for s in bad {
            assert!(FrequentDirections::from_state(s).is_err());
        }
        assert!(FrequentDirections::from_state(good).is_ok());
    }

    #[test]
    fn sketch_obeys_its_bound() {
        let rows = data(500, 30, 1);
        for centred in [false, true] {
            let mut fd = FrequentDirections::new(30, 8, centred).unwrap();
            for r in &rows {
                fd.insert(r).unwrap();
            }
            let exact = exact_eigenvalues(&rows, centred).unwrap();
            let sk = fd.eigenvalues().unwrap();
            let delta = fd.shrinkage();
            for (i, s) in sk.iter().enumerate() {
                let diff = exact[i] - s;
                assert!(
                    diff >= -1e-9 * exact[0] && diff <= delta + 1e-9 * exact[0],
                    "{i}: {diff} vs {delta}"
                );
            }
            for k in 0..8 {
                let tail: f64 = exact[k..].iter().sum();
                assert!(delta <= tail / (8 - k) as f64 + 1e-9 * exact[0]);
            }
        }
    }

    #[test]
    fn bad_input_is_typed() {
        assert!(FrequentDirections::new(4, 5, false).is_err());
        assert!(FrequentDirections::new(4, 0, false).is_err());
        let mut fd = FrequentDirections::new(3, 2, true).unwrap();
        assert!(matches!(
            fd.insert(&[1.0, 2.0]),
            Err(StatsError::DimensionMismatch {
                expected: 3,
                got: 2
            })
        ));
        assert_eq!(fd.insert(&[1.0, f64::NAN, 0.0]), Ok(false));
        assert_eq!(fd.skipped(), 1);
        assert_eq!(fd.rows(), 0);
        assert!(fd.decay(1.5).is_err());
    }

    #[test]
    fn eigenvectors_are_unit_and_match_values() {
        let rows = data(200, 12, 5);
        let mut fd = FrequentDirections::new(12, 12, false).unwrap();
        for r in &rows {
            fd.insert(r).unwrap();
        }
        let sp = fd.spectrum().unwrap();
        for k in 0..sp.values.len() {
            let v = sp.vectors.col(k);
            let norm: f64 = (0..12).map(|i| v[i] * v[i]).sum();
            assert!((norm - 1.0).abs() < 1e-9);
        }
    }
}
