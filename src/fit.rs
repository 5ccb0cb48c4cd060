//! `gradtel fit`: the paper's tests on any column of numbers (not only gradtel's).

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use gradtel_stats::powerlaw::{self, FitOptions, Prepared};
use gradtel_stats::{Moments, bootstrap, normality, tail, vuong};
use serde_json::{Value, json};

const POWERLAW_HELP: &str = "\
Clauset-Shalizi-Newman continuous power-law fit of |x| (zeros dropped): alpha by maximum
likelihood, x_min by minimising the KS distance over every distinct value (or --xmin-grid
log-spaced candidates), the paper-style KS decision (D > 1.36/sqrt(n_tail) rejects at 0.05),
Vuong tests against lognormal and exponential tails, and on request Clauset's bootstrap p-value
(the power law is ruled out when p <= 0.1).

Two modes give different answers on real gradients:
  default            pure Clauset: every candidate x_min counts, whatever its alpha. This is
                     what powerlaw 1.5 computes (and 2.0 with parameter_ranges={'alpha': [1, None]}).
  --alpha-range 0,3  only candidates whose alpha lies strictly inside (0, 3) count: powerlaw
                     2.0's default. Gradient tails often have alpha > 3; under this mode their
                     best fit is discarded and a worse x_min with alpha < 3 is reported instead.";

#[derive(Debug, Args)]
pub struct FitArgs {
    #[command(subcommand)]
    pub test: FitCommand,
}

#[derive(Debug, Subcommand)]
pub enum FitCommand {
    /// Power-law fit with KS decision, Vuong tests and optional bootstrap p-value.
    #[command(long_about = POWERLAW_HELP)]
    Powerlaw(PowerlawArgs),
    /// Tail-index estimates of |x|: Hill, Pickands, Dekkers-Einmahl-de Haan, alpha-stable.
    Tail(TailArgs),
    /// Gaussianity tests: D'Agostino-Pearson K2, Jarque-Bera, Anderson-Darling, Shapiro-Wilk.
    Normality(InputArgs),
    /// Covariance spectrum of row vectors by Frequent Directions, with its power-law slope.
    #[command(long_about = SPECTRUM_HELP)]
    Spectrum(SpectrumArgs),
}

const SPECTRUM_HELP: &str = "\
Covariance spectrum of row vectors (one vector per row: a 2-D .npy, or a Parquet list or
fixed-size-list column of numbers), sketched by Frequent Directions with ell directions, and the
least-squares power-law fit log(lambda_k) = c - s log(k) over a rank window.

The eigenvalues are those of the covariance (the mean is removed; divided by n - 1, as
numpy.cov). error_bound is the sketch's guarantee: each true eigenvalue lies in
[lambda_k, lambda_k + error_bound]. The slope is fitted on lambda_k + error_bound over ranks
[2, ell/2] by default (see docs: the sketch under-estimates by up to the bound, the head is
where its directions persist). --exact also computes the exact eigenvalues (O(n d^2 + d^3)).
Rows holding NaN or Inf are skipped and counted.";

#[derive(Debug, Args)]
pub struct SpectrumArgs {
    /// Input file: a 2-D .npy (rows × dim) or a .parquet file with a list column.
    #[arg(long)]
    pub input: PathBuf,
    /// The list column (Parquet); optional when there is only one.
    #[arg(long)]
    pub column: Option<String>,
    /// Directions the sketch keeps (1 <= ell <= dim).
    #[arg(long, default_value_t = 64)]
    pub ell: usize,
    /// Also compute the exact covariance eigenvalues for comparison.
    #[arg(long)]
    pub exact: bool,
    /// Rank window K_LO,K_HI (1-based, inclusive) of the slope fit.
    #[arg(long, value_parser = parse_window)]
    pub window: Option<(usize, usize)>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn parse_window(s: &str) -> Result<(usize, usize), String> {
    let (lo, hi) = s
        .split_once(',')
        .ok_or_else(|| format!("expected K_LO,K_HI, got {s:?}"))?;
    let lo: usize = lo
        .trim()
        .parse()
        .map_err(|_| format!("bad K_LO in {s:?}"))?;
    let hi: usize = hi
        .trim()
        .parse()
        .map_err(|_| format!("bad K_HI in {s:?}"))?;
    if lo < 1 || hi < lo + 2 {
        return Err(format!("need 1 <= K_LO and K_HI >= K_LO + 2 in {s:?}"));
    }
    Ok((lo, hi))
}

#[derive(Debug, Args)]
pub struct InputArgs {
    /// Input file: .parquet (numeric column; nulls dropped), .csv (header row; empty fields
    /// dropped) or .npy (little-endian numbers, any shape).
    #[arg(long)]
    pub input: PathBuf,
    /// Column to read (Parquet/CSV); optional when the file has one numeric column.
    #[arg(long)]
    pub column: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PowerlawArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Bootstrap replicates for Clauset's goodness-of-fit p-value (0 = skip).
    #[arg(long, default_value_t = 0)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Search this many log-spaced x_min candidates instead of every distinct value.
    #[arg(long)]
    pub xmin_grid: Option<usize>,
    /// Keep only x_min candidates whose alpha lies strictly inside LO,HI (e.g. 0,3).
    #[arg(long, value_parser = parse_range)]
    pub alpha_range: Option<(f64, f64)>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Order statistics for Hill and DEdH (Pickands uses k/4); default floor(sqrt(n)).
    #[arg(long)]
    pub k: Option<usize>,
    /// Block size K1 of the alpha-stable estimator; default floor(sqrt(n)).
    #[arg(long)]
    pub k1: Option<usize>,
}

fn parse_range(s: &str) -> Result<(f64, f64), String> {
    let (lo, hi) = s
        .split_once(',')
        .ok_or_else(|| format!("expected LO,HI, got {s:?}"))?;
    let lo: f64 = lo.trim().parse().map_err(|_| format!("bad LO in {s:?}"))?;
    let hi: f64 = hi.trim().parse().map_err(|_| format!("bad HI in {s:?}"))?;
    if lo.is_nan() || hi.is_nan() || lo >= hi {
        return Err(format!("LO must be below HI in {s:?}"));
    }
    Ok((lo, hi))
}

/// An estimator's result, or its error, as JSON.
fn or_error<T>(r: Result<T, gradtel_stats::StatsError>, f: impl FnOnce(T) -> Value) -> Value {
    match r {
        Ok(v) => f(v),
        Err(e) => json!({ "error": e.to_string() }),
    }
}

fn load(args: &InputArgs) -> anyhow::Result<(Vec<f64>, Value)> {
    let col = crate::input::read_column(&args.input, args.column.as_deref())?;
    let nonfinite = col.data.iter().filter(|v| !v.is_finite()).count();
    anyhow::ensure!(
        nonfinite == 0,
        "{}: {nonfinite} NaN or infinite values; remove them first (gradtel never fits around them)",
        args.input.display()
    );
    let meta = json!({
        "path": args.input.display().to_string(),
        "column": col.column,
        "values": col.data.len(),
        "nulls_dropped": col.nulls,
    });
    Ok((col.data, meta))
}

pub fn run(args: FitArgs) -> anyhow::Result<()> {
    let (json_out, out) = match args.test {
        FitCommand::Powerlaw(a) => (a.input.json, powerlaw_json(&a)?),
        FitCommand::Tail(a) => (a.input.json, tail_json(&a)?),
        FitCommand::Normality(a) => (a.json, normality_json(&a)?),
        FitCommand::Spectrum(a) => (a.json, spectrum_json(&a)?),
    };
    if json_out {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        print_table(&out, "");
    }
    Ok(())
}

pub fn powerlaw_json(a: &PowerlawArgs) -> anyhow::Result<Value> {
    let (values, input) = load(&a.input)?;
    let zeros = values.iter().filter(|v| **v == 0.0).count();
    let prepared = Prepared::from_values(&values)?;
    let opts = FitOptions {
        alpha_range: a.alpha_range,
        xmin_grid: a.xmin_grid,
    };
    let fit = powerlaw::fit_prepared(&prepared, &opts).context("power-law fit")?;
    let tail = prepared.tail(fit.xmin);
    let vuong_json =
        |r: vuong::VuongResult| json!({"R": r.r, "p": r.p, "R_normalized": r.r_normalized});
    let mut out = json!({
        "n": fit.n,
        "zeros_dropped": zeros,
        "n_tail": fit.n_tail,
        "xmin": fit.xmin,
        "alpha": fit.alpha,
        "alpha_se": fit.alpha_se,
        "ks_d": fit.ks_d,
        "ks_critical": fit.ks_critical,
        "power_law_rejected_ks": fit.rejected_ks,
        "mode": if a.alpha_range.is_some() { "alpha_range" } else { "pure" },
        "alpha_range": a.alpha_range.map(|(lo, hi)| vec![lo, hi]),
        "candidates": fit.candidates,
        "vuong": {
            "lognormal": or_error(vuong::vs_lognormal(tail, fit.xmin, fit.alpha), |(r, _)| vuong_json(r)),
            "exponential": or_error(vuong::vs_exponential(tail, fit.xmin, fit.alpha), vuong_json),
        },
        "input": input,
    });
    if a.bootstrap > 0 {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let b = bootstrap::p_value(&prepared, &fit, &opts, a.bootstrap, a.seed, threads)?;
        out["p_bootstrap"] = json!(b.p_value);
        out["bootstrap_replicates"] = json!(b.replicates);
        out["bootstrap_failed_replicates"] = json!(b.failed);
        out["power_law_rejected_bootstrap"] = json!(b.p_value <= 0.1);
        out["seed"] = json!(a.seed);
    }
    Ok(out)
}

pub fn tail_json(a: &TailArgs) -> anyhow::Result<Value> {
    let (values, input) = load(&a.input)?;
    let mut desc: Vec<f64> = values.iter().map(|v| v.abs()).collect();
    desc.sort_by(|x, y| y.total_cmp(x));
    let n = desc.len();
    let k = a.k.unwrap_or_else(|| tail::default_k(n, n));
    let est = |e: tail::TailEstimate| json!({"alpha": e.alpha, "gamma": e.gamma, "alpha_se": e.alpha_se, "k": e.k});
    let nonzero: Vec<f64> = values.iter().copied().filter(|v| *v != 0.0).collect();
    Ok(json!({
        "n": n,
        "k": k,
        "convention": "tail index alpha of P(|X| > x) ~ x^-alpha; gamma = 1/alpha (Clauset's density exponent is alpha + 1)",
        "hill": or_error(tail::hill(&desc, k), est),
        "pickands": or_error(tail::pickands(&desc, (k / 4).max(1)), est),
        "dedh": or_error(tail::dedh(&desc, k), est),
        "alpha_stable": or_error(tail::alpha_stable(&nonzero, a.k1), est),
        "input": input,
    }))
}

pub fn normality_json(a: &InputArgs) -> anyhow::Result<Value> {
    let (values, input) = load(a)?;
    let m = Moments::from_slice(&values);
    let test = |r: normality::TestResult| json!({"statistic": r.statistic, "p_value": r.p_value});
    Ok(json!({
        "n": values.len(),
        "dagostino_k2": or_error(normality::dagostino_k2(&m), test),
        "jarque_bera": or_error(normality::jarque_bera(&m), test),
        "anderson_darling": or_error(normality::anderson_darling(&values), |r| json!({
            "statistic": r.statistic,
            "critical_values": r.critical_values,
            "significance_levels_percent": normality::AD_SIGNIFICANCE,
        })),
        "shapiro_wilk": or_error(normality::shapiro_wilk(&values), test),
        "input": input,
    }))
}

pub fn spectrum_json(a: &SpectrumArgs) -> anyhow::Result<Value> {
    use gradtel_stats::fd::{FrequentDirections, exact_eigenvalues};
    use gradtel_stats::spectrum;
    let m = crate::input::read_matrix(&a.input, a.column.as_deref())?;
    let dim = m.data.first().map_or(0, Vec::len);
    anyhow::ensure!(!m.data.is_empty(), "{}: no rows", a.input.display());
    let mut fd = FrequentDirections::new(dim, a.ell, true)
        .with_context(|| format!("--ell {} with vectors of dimension {dim}", a.ell))?;
    for (i, row) in m.data.iter().enumerate() {
        fd.insert(row)
            .with_context(|| format!("row {i} of {}", a.input.display()))?;
    }
    let norm = fd.normaliser();
    let eigenvalues: Vec<f64> = fd.eigenvalues()?.iter().map(|v| v / norm).collect();
    let bound = fd.shrinkage() / norm;
    let fit = spectrum::fit_sketch(&eigenvalues, bound, a.ell, a.window);
    let mut out = json!({
        "n_rows": fd.rows(),
        "rows_skipped_nonfinite": fd.skipped(),
        "null_rows_dropped": m.nulls,
        "dim": dim,
        "ell": a.ell,
        "eigenvalues": eigenvalues,
        "error_bound": bound,
        "input": {"path": a.input.display().to_string(), "column": m.column},
    });
    match fit {
        Ok(f) => {
            out["slope"] = json!(f.slope);
            out["intercept"] = json!(f.intercept);
            out["r2"] = json!(f.r2);
            out["ks_distance"] = json!(f.ks_distance);
            out["window"] = json!([f.window.0, f.window.1]);
        }
        Err(e) => out["fit_error"] = json!(e.to_string()),
    }
    if a.exact {
        let finite: Vec<Vec<f64>> = m
            .data
            .into_iter()
            .filter(|r| r.iter().all(|v| v.is_finite()))
            .collect();
        let n = finite.len() as f64;
        let ev: Vec<f64> = exact_eigenvalues(&finite, true)?
            .into_iter()
            .map(|v| v / (n - 1.0).max(1.0))
            .collect();
        let window = a.window.or(out["window"].as_array().map(|w| {
            (
                w[0].as_u64().unwrap_or(2) as usize,
                w[1].as_u64().unwrap_or(4) as usize,
            )
        }));
        out["exact"] = json!({
            "eigenvalues": ev,
            "fit": or_error(spectrum::fit(&ev, window), |f| json!({
                "slope": f.slope, "intercept": f.intercept, "r2": f.r2,
                "ks_distance": f.ks_distance, "window": [f.window.0, f.window.1],
            })),
        });
    }
    Ok(out)
}

/// A readable two-column table of a JSON object (nested keys joined with '.').
fn print_table(v: &Value, prefix: &str) {
    if let Value::Object(map) = v {
        for (k, val) in map {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match val {
                Value::Object(_) => print_table(val, &key),
                Value::Number(n) => match n.as_f64() {
                    Some(f) if n.is_f64() => println!("{key:<36} {f:.6}"),
                    _ => println!("{key:<36} {n}"),
                },
                Value::Null => {}
                other => println!("{key:<36} {other}"),
            }
        }
    }
}
