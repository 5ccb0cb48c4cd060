//! The five figures of an analysis, built from its results (data) and drawn by [`plots`].

use std::collections::BTreeMap;
use std::path::Path;

use gradtel_stats::normality::normal_ppf;

use super::Analysis;
use super::plots::{self, Figure, Kind, Series};

/// Names of the figures `write_all` produces (each as .png and .svg).
pub const NAMES: [&str; 5] = ["tail_index", "ccdf", "spectrum", "qq_sgn", "alpha_hist"];

pub fn write_all(lake: &Path, a: &Analysis, out: &Path) -> anyhow::Result<()> {
    plots::write(out, "tail_index", &tail_index(a))?;
    plots::write(out, "ccdf", &ccdf(lake, a)?)?;
    plots::write(out, "spectrum", &spectrum(a))?;
    plots::write(out, "qq_sgn", &qq_sgn(a))?;
    plots::write(out, "alpha_hist", &alpha_hist(a))?;
    Ok(())
}

/// Dimension-wise α per step, averaged over each layer's tensors.
fn tail_index(a: &Analysis) -> Figure {
    let mut by_layer: BTreeMap<&str, BTreeMap<u64, Vec<f64>>> = BTreeMap::new();
    for s in &a.dimension {
        if let (Some(step), Some(alpha)) = (s.step, s.alpha) {
            by_layer
                .entry(&s.layer)
                .or_default()
                .entry(step)
                .or_default()
                .push(alpha);
        }
    }
    Figure {
        title: format!("Dimension-wise tail index over training — run {}", a.run),
        x_label: "step".into(),
        y_label: "tail index α (Clauset, density exponent)".into(),
        log_log: false,
        legend_lower_left: false,
        series: by_layer
            .into_iter()
            .map(|(layer, steps)| Series {
                name: format!("layer {layer}"),
                points: steps
                    .into_iter()
                    .map(|(s, v)| (s as f64, v.iter().sum::<f64>() / v.len() as f64))
                    .collect(),
                kind: Kind::Line,
            })
            .collect(),
    }
}

/// CCDF of |g| of the largest tensor at its first and last step, with the fitted power law.
fn ccdf(lake: &Path, a: &Analysis) -> anyhow::Result<Figure> {
    let mut series = Vec::new();
    let tensor = a
        .dimension
        .iter()
        .max_by_key(|s| s.n)
        .map(|s| s.tensor.clone())
        .unwrap_or_default();
    let of: Vec<_> = a
        .dimension
        .iter()
        .filter(|s| s.tensor == tensor && s.alpha.is_some())
        .collect();
    let picks = [of.first(), of.last()];
    for sample in picks.into_iter().flatten() {
        let Some(step) = sample.step else { continue };
        let Some(h) = super::objects::histogram_of(lake, &a.run, (&tensor, step), &a.trajectories)?
        else {
            continue;
        };
        let n = h.total() as f64;
        let mut above = n;
        let mut points = Vec::new();
        for (i, c) in h.buckets() {
            let (lo, _) = h.bucket_bounds(i);
            points.push((lo, above / n));
            above -= c as f64;
        }
        let (xmin, alpha, n_tail) = (
            sample.xmin.unwrap_or(0.0),
            sample.alpha.unwrap_or(0.0),
            sample.n_tail.unwrap_or(0) as f64,
        );
        let xmax = points.last().map_or(xmin, |p| p.0);
        let fit: Vec<(f64, f64)> = (0..=40)
            .map(|k| {
                let x = xmin * (xmax / xmin).powf(k as f64 / 40.0);
                (x, n_tail / n * (x / xmin).powf(1.0 - alpha))
            })
            .collect();
        series.push(Series {
            name: format!("step {step}: |g| of {tensor}"),
            points,
            kind: Kind::Points,
        });
        series.push(Series {
            name: format!("step {step}: power law α = {alpha:.2} from x_min = {xmin:.2e}"),
            points: fit,
            kind: Kind::Line,
        });
    }
    Ok(Figure {
        title: format!("Rank–frequency of |g| ({tensor})"),
        x_label: "|g| (gradient units)".into(),
        y_label: "P(|G| ≥ |g|)".into(),
        log_log: true,
        legend_lower_left: true,
        series,
    })
}

/// Eigenvalues of each sketch's latest snapshot and its fitted line over the window.
fn spectrum(a: &Analysis) -> Figure {
    let mut series = Vec::new();
    for s in &a.spectra {
        // The fit is of λ̂_k + Δ (the sketch under-estimates by up to Δ): plot what is fitted.
        let f = &s.fit;
        let delta = f.error_bound.unwrap_or(0.0);
        series.push(Series {
            name: format!(
                "{} sketch, step {} ({} rows), Δ = {delta:.2e}",
                f.sketch, f.step, f.rows
            ),
            points: s
                .eigenvalues
                .iter()
                .map(|&(k, v)| (k as f64, v + delta))
                .collect(),
            kind: Kind::Points,
        });
        if let (Some(slope), Some(c), Some(lo), Some(hi)) =
            (f.slope, f.intercept, f.window_lo, f.window_hi)
        {
            series.push(Series {
                name: format!(
                    "{}: λ_k ∝ k^-{slope:.2}, R² = {:.3}, window [{lo}, {hi}]",
                    f.sketch,
                    f.r2.unwrap_or(f64::NAN)
                ),
                points: (lo..=hi)
                    .map(|k| (k as f64, (c - slope * (k as f64).ln()).exp()))
                    .collect(),
                kind: Kind::Line,
            });
        }
    }
    Figure {
        title: "Covariance spectrum of the projected gradient".into(),
        x_label: "rank k".into(),
        y_label: "λ_k + Δ ((gradient units)²)".into(),
        log_log: true,
        legend_lower_left: true,
        series,
    }
}

/// Sorted standardised SGN values against normal quantiles (at most 2,000 points).
fn qq_sgn(a: &Analysis) -> Figure {
    let mut z = a.sgn_standardised.clone();
    z.sort_by(f64::total_cmp);
    let n = z.len();
    let step = n.div_ceil(2000).max(1);
    let points: Vec<(f64, f64)> = (0..n)
        .step_by(step)
        .map(|i| (normal_ppf((i as f64 + 0.5) / n as f64), z[i]))
        .collect();
    let lim = points.iter().map(|p| p.0.abs()).fold(1.0f64, f64::max);
    Figure {
        title: "SGN against the normal (Q–Q)".into(),
        x_label: "standard normal quantile".into(),
        y_label: "SGN quantile (standardised per coordinate)".into(),
        log_log: false,
        legend_lower_left: false,
        series: vec![
            Series {
                name: format!("SGN, {n} values"),
                points,
                kind: Kind::Points,
            },
            Series {
                name: "normal (y = x)".into(),
                points: vec![(-lim, -lim), (lim, lim)],
                kind: Kind::Line,
            },
        ],
    }
}

/// Histogram of iteration-wise α (30 bins over the central range).
fn alpha_hist(a: &Analysis) -> Figure {
    let alphas: Vec<f64> = a
        .iteration
        .iter()
        .filter_map(|s| s.alpha)
        .filter(|v| v.is_finite())
        .collect();
    let (lo, hi) = alphas
        .iter()
        .fold((f64::MAX, f64::MIN), |(l, h), &v| (l.min(v), h.max(v)));
    let (lo, hi) = if lo < hi {
        (lo, hi.min(lo + 20.0))
    } else {
        (1.0, 2.0)
    };
    let bins = 30;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u64; bins];
    for v in &alphas {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    Figure {
        title: "Iteration-wise tail index across tracked coordinates".into(),
        x_label: "tail index α (Clauset, density exponent)".into(),
        y_label: "coordinates".into(),
        log_log: false,
        legend_lower_left: false,
        series: vec![Series {
            name: format!("{} coordinates", alphas.len()),
            points: counts
                .iter()
                .enumerate()
                .map(|(i, &c)| (lo + (i as f64 + 0.5) * width, c as f64))
                .collect(),
            kind: Kind::Bars,
        }],
    }
}
