//! The paper-style summary (Xie et al. 2023, Tables 1–3): per object and layer, how many
//! samples were tested, the fraction whose power law survives the KS test at 0.05 (and, with
//! `--bootstrap`, Clauset's p > 0.1), the mean and median α̂ (Clauset's density exponent, as the
//! `powerlaw` package and the paper report it), the fraction rejecting Gaussianity (D'Agostino
//! K², p < 0.05), and the covariance spectrum's slope with R².

use std::fmt::Write;

use super::objects::{Sample, SpectrumSnapshot};

#[derive(Debug, Clone, serde::Serialize)]
pub struct SummaryRow {
    pub object: String,
    pub layer: String,
    pub samples: usize,
    pub tested: usize,
    pub powerlaw_not_rejected_ks: Option<f64>,
    pub bootstrap_plausible: Option<f64>,
    pub exponential_preferred: Option<f64>,
    pub alpha_mean: Option<f64>,
    pub alpha_median: Option<f64>,
    pub gaussian_rejected: Option<f64>,
    pub slope: Option<f64>,
    pub r2: Option<f64>,
}

fn fraction(flags: impl Iterator<Item = bool>) -> Option<f64> {
    let (mut n, mut yes) = (0usize, 0usize);
    for f in flags {
        n += 1;
        yes += usize::from(f);
    }
    (n > 0).then(|| yes as f64 / n as f64)
}

fn row(object: &str, layer: &str, samples: &[&Sample]) -> SummaryRow {
    let tested: Vec<&&Sample> = samples.iter().filter(|s| s.ks_rejected.is_some()).collect();
    let mut alphas: Vec<f64> = tested.iter().filter_map(|s| s.alpha).collect();
    alphas.sort_by(f64::total_cmp);
    SummaryRow {
        object: object.to_string(),
        layer: layer.to_string(),
        samples: samples.len(),
        tested: tested.len(),
        powerlaw_not_rejected_ks: fraction(tested.iter().map(|s| s.ks_rejected == Some(false))),
        bootstrap_plausible: fraction(
            samples
                .iter()
                .filter_map(|s| s.bootstrap_p)
                .map(|p| p > 0.1),
        ),
        exponential_preferred: fraction(samples.iter().filter_map(|s| {
            s.vuong_exponential_r
                .zip(s.vuong_exponential_p)
                .map(|(r, p)| r < 0.0 && p < 0.1)
        })),
        alpha_mean: (!alphas.is_empty()).then(|| alphas.iter().sum::<f64>() / alphas.len() as f64),
        alpha_median: gradtel_stats::robust::median(&alphas),
        gaussian_rejected: fraction(samples.iter().filter_map(|s| s.k2_p).map(|p| p < 0.05)),
        slope: None,
        r2: None,
    }
}

/// Rows per object: one per layer, then `all`.
pub fn summarise(objects: &[(&str, &[Sample])], spectra: &[SpectrumSnapshot]) -> Vec<SummaryRow> {
    let mut out = Vec::new();
    for (object, samples) in objects {
        let mut layers: Vec<&str> = samples.iter().map(|s| s.layer.as_str()).collect();
        layers.sort();
        layers.dedup();
        for layer in &layers {
            let of: Vec<&Sample> = samples.iter().filter(|s| s.layer == *layer).collect();
            out.push(row(object, layer, &of));
        }
        let all: Vec<&Sample> = samples.iter().collect();
        out.push(row(object, "all", &all));
    }
    for s in spectra {
        out.push(SummaryRow {
            object: format!("spectrum ({})", s.fit.sketch),
            layer: "model (projected)".into(),
            samples: s.eigenvalues.len(),
            tested: s.eigenvalues.len(),
            powerlaw_not_rejected_ks: None,
            bootstrap_plausible: None,
            exponential_preferred: None,
            alpha_mean: None,
            alpha_median: None,
            gaussian_rejected: None,
            slope: s.fit.slope,
            r2: s.fit.r2,
        });
    }
    out
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{:.0} %", 100.0 * v))
}

fn num(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.3}"))
}

/// The summary as a Markdown table.
pub fn markdown(run: &str, rows: &[SummaryRow], bootstrap: usize) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## gradtel analyze — run `{run}`\n");
    let _ = writeln!(
        s,
        "| object | layer | samples | tested | power law not rejected (KS 0.05) | bootstrap p > 0.1{} | exponential preferred (Vuong) | α̂ mean | α̂ median | Gaussianity rejected (K² 0.05) | spectrum slope s | R² |",
        if bootstrap > 0 {
            format!(" ({bootstrap} reps)")
        } else {
            String::new()
        }
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.object,
            r.layer,
            r.samples,
            r.tested,
            pct(r.powerlaw_not_rejected_ks),
            pct(r.bootstrap_plausible),
            pct(r.exponential_preferred),
            num(r.alpha_mean),
            num(r.alpha_median),
            pct(r.gaussian_rejected),
            num(r.slope),
            num(r.r2),
        );
    }
    s
}

/// Rows as CSV (header first).
pub fn csv<T: serde::Serialize>(rows: &[T]) -> anyhow::Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    for r in rows {
        w.serialize(r)?;
    }
    Ok(String::from_utf8(w.into_inner()?)?)
}
