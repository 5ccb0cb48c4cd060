//! Frequent Directions and the spectrum fit against `numpy.linalg.eigvalsh` of the exact centred
//! covariance (fixtures from `tests/reference/gen_spectrum.py`), on power-law, flat and
//! low-rank-plus-noise spectra.

use gradtel_stats::fd::{FrequentDirections, exact_eigenvalues};
use gradtel_stats::spectrum;
use serde_json::Value;

const ELL: usize = 16;

/// Minimal reader for the fixtures: little-endian f8, C order, 2-D.
fn read_npy(name: &str) -> Vec<Vec<f64>> {
    let path = format!("{}/tests/reference/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(path).unwrap();
    let hlen = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + hlen]).unwrap();
    assert!(header.contains("'<f8'") && header.contains("False"));
    let shape: Vec<usize> = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap()
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let vals: Vec<f64> = bytes[10 + hlen..]
        .chunks_exact(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    vals.chunks_exact(shape[1]).map(<[f64]>::to_vec).collect()
}

fn cases() -> Vec<(String, Vec<Vec<f64>>, Vec<f64>)> {
    let fx: Value = serde_json::from_str(include_str!("reference/spectrum.json")).unwrap();
    let n = fx["n"].as_f64().unwrap();
    fx["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let rows = read_npy(c["file"].as_str().unwrap());
            // numpy's covariance eigenvalues, back to scatter units (× (n − 1)).
            let scatter: Vec<f64> = c["cov_eigenvalues"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap() * (n - 1.0))
                .collect();
            (c["name"].as_str().unwrap().to_string(), rows, scatter)
        })
        .collect()
}

/// 0 ≤ λ_i(AᵀA) − λ_i(BᵀB) ≤ Δ for every sketched eigenvalue, and Δ ≤ ‖A − A_k‖²_F/(ℓ − k).
fn assert_within_bound(name: &str, fd: &FrequentDirections, exact: &[f64]) {
    let sk = fd.eigenvalues().unwrap();
    let delta = fd.shrinkage();
    let tol = 1e-9 * exact[0];
    assert!(!sk.is_empty());
    for (i, s) in sk.iter().enumerate() {
        let diff = exact[i] - s;
        assert!(
            diff >= -tol,
            "{name}: λ_{i} sketched {s} above exact {}",
            exact[i]
        );
        assert!(
            diff <= delta + tol,
            "{name}: λ_{i} off by {diff} > Δ = {delta}"
        );
    }
    for k in 0..ELL {
        let tail: f64 = exact[k..].iter().sum();
        assert!(
            delta <= tail / (ELL - k) as f64 + tol,
            "{name}: Δ {delta} above the k={k} bound"
        );
    }
}

#[test]
fn sketch_and_merged_sketch_stay_within_the_fd_bound() {
    for (name, rows, exact) in cases() {
        let d = rows[0].len();
        // Our exact path agrees with numpy.
        let ours = exact_eigenvalues(&rows, true).unwrap();
        for (a, b) in ours.iter().zip(&exact) {
            assert!(
                (a - b).abs() <= 1e-9 * exact[0],
                "{name}: exact {a} vs numpy {b}"
            );
        }
        let mut whole = FrequentDirections::new(d, ELL, true).unwrap();
        rows.iter().for_each(|r| assert!(whole.insert(r).unwrap()));
        assert_within_bound(&name, &whole, &exact);

        // Three uneven shards, sketched apart and merged.
        let mut parts: Vec<FrequentDirections> = [&rows[..77], &rows[77..400], &rows[400..]]
            .iter()
            .map(|chunk| {
                let mut fd = FrequentDirections::new(d, ELL, true).unwrap();
                chunk.iter().for_each(|r| assert!(fd.insert(r).unwrap()));
                fd
            })
            .collect();
        let c = parts.pop().unwrap();
        let b = parts.pop().unwrap();
        let mut a = parts.pop().unwrap();
        a.merge(&b).unwrap();
        a.merge(&c).unwrap();
        assert_eq!(a.rows(), rows.len() as u64);
        assert_within_bound(&format!("{name} (merged)"), &a, &exact);
    }
}

#[test]
fn spectrum_slope_is_recovered() {
    // The power-law fixture has population spectrum k^-1.5; with n = 600 samples in d = 48 the
    // sample eigenvalues flatten the tail a little (Marchenko–Pastur), so the tolerance is 0.15
    // on the default window [2, 24] of the exact spectrum. The sketch (ℓ = 16, window [2, 8],
    // Δ-compensated) must agree with the exact fit on the same window to 0.05.
    let (_, rows, exact) = cases().into_iter().find(|c| c.0 == "power_law").unwrap();
    let f = spectrum::fit(&exact, None).unwrap();
    assert!((f.slope - 1.5).abs() < 0.15 && f.r2 > 0.98, "{f:?}");
    let mut fd = FrequentDirections::new(rows[0].len(), ELL, true).unwrap();
    rows.iter().for_each(|r| assert!(fd.insert(r).unwrap()));
    let sk = spectrum::fit_sketch(&fd.eigenvalues().unwrap(), fd.shrinkage(), ELL, None).unwrap();
    let ex = spectrum::fit(&exact, Some(sk.window)).unwrap();
    assert!(
        (sk.slope - ex.slope).abs() < 0.05,
        "sketch {sk:?} vs exact {ex:?}"
    );

    let flat = cases().into_iter().find(|c| c.0 == "flat").unwrap();
    let f = spectrum::fit(&flat.2, None).unwrap();
    assert!(f.slope < 0.5, "a flat spectrum has a small slope: {f:?}");
}
