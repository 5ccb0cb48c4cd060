//! The paper's four objects, gathered from the lake and tested (Xie et al. 2023, §3–4).
//!
//! * Dimension-wise: each (step, tensor) row of `steps`; its |g| histogram gets the
//!   Clauset fit and KS decision (`gradtel_stats::powerlaw_binned`, every occupied bucket a
//!   candidate x_min, tails ≥ 50 values), its moments K² and JB.
//! * Iteration-wise: each tracked coordinate's series over steps from `coords`: the minibatch
//!   gradient (the mean over ranks of local gradients, or the reduced gradient).
//! * SGN: each tracked coordinate's deviations `√(R/(R−1))(g_r − ḡ)` over ranks and steps.
//!   Both get the exact Clauset fit of |x| (`gradtel_stats::powerlaw`, the same α̂, x_min and D
//!   as the `powerlaw` package), the KS decision, Vuong tests against exponential and lognormal
//!   tails, optionally Clauset's bootstrap p-value, and K², JB.
//! * Spectrum: the latest snapshot of each sketch in `spectra` (slope, R², window).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use gradtel_stats::powerlaw::{self, FitOptions, Prepared};
use gradtel_stats::{LogHistogram, Moments, bootstrap, normality, powerlaw_binned, vuong};

use super::lake;

/// One tested sample.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Sample {
    pub object: &'static str,
    pub step: Option<u64>,
    pub tensor: String,
    pub layer: String,
    pub index: Option<u64>,
    pub n: u64,
    pub n_tail: Option<u64>,
    pub xmin: Option<f64>,
    /// Clauset's density exponent (the `powerlaw` package's alpha).
    pub alpha: Option<f64>,
    pub ks_d: Option<f64>,
    pub ks_critical: Option<f64>,
    pub ks_rejected: Option<bool>,
    pub bootstrap_p: Option<f64>,
    /// Vuong log-likelihood ratios (power law − alternative) and p-values.
    pub vuong_exponential_r: Option<f64>,
    pub vuong_exponential_p: Option<f64>,
    pub vuong_lognormal_r: Option<f64>,
    pub vuong_lognormal_p: Option<f64>,
    pub k2_p: Option<f64>,
    pub jb_p: Option<f64>,
    pub error: Option<String>,
}

/// Options shared by the sample tests.
#[derive(Debug, Clone, Copy)]
pub struct TestOptions {
    pub bootstrap: usize,
    pub seed: u64,
    pub threads: usize,
}

/// Steps and tensors to include, and for coordinates one of `parts` disjoint hash partitions
/// (a lake whose tracked series exceed the memory budget is read once per partition).
pub struct Selection<'a> {
    pub steps: Option<(u64, u64)>,
    pub tensors: Option<&'a glob_lite::Pattern>,
    pub partition: (u64, u64),
    pub trajectories: &'a Trajectories,
}

/// The trajectory each step of a run counts from. A job resumed from a checkpoint under the
/// same run id reports the steps since the checkpoint again, and the collector writes them in
/// a new trajectory of the run (a larger `trajectory` value): the latest trajectory of a step
/// is the training that went on, so only its rows count.
#[derive(Debug, Default)]
pub struct Trajectories {
    /// A step's largest trajectory, where it is not 0.
    latest: HashMap<u64, u64>,
    /// Steps written in more than one trajectory.
    repeated: usize,
}

impl Trajectories {
    /// From the `steps` table: each step's largest `trajectory` (0 throughout a lake written
    /// before the column existed).
    pub fn read(lake: &Path, run: &str) -> anyhow::Result<Self> {
        // (smallest, largest) trajectory of each step.
        let mut range: HashMap<u64, (u64, u64)> = HashMap::new();
        let columns = ["step", "trajectory"];
        lake::for_each_batch_of(lake, run, "steps", Some(&columns), |b| {
            let step = b.u64s("step")?;
            let trajectory = trajectories(b)?;
            for (s, t) in step.iter().zip(trajectory) {
                let r = range.entry(s.unwrap_or(0)).or_insert((t, t));
                *r = (r.0.min(t), r.1.max(t));
            }
            Ok(())
        })?;
        Ok(Self {
            repeated: range.values().filter(|(lo, hi)| lo < hi).count(),
            latest: range
                .into_iter()
                .filter(|(_, (_, hi))| *hi > 0)
                .map(|(s, (_, hi))| (s, hi))
                .collect(),
        })
    }

    /// Whether a row of `step` in `trajectory` counts.
    fn current(&self, step: u64, trajectory: u64) -> bool {
        self.latest.get(&step).is_none_or(|&t| trajectory >= t)
    }

    /// Steps reported in more than one trajectory.
    pub fn resumed_steps(&self) -> usize {
        self.repeated
    }
}

/// The `trajectory` column of a batch, 0 where the file has none.
fn trajectories(b: &lake::Batch) -> anyhow::Result<Vec<u64>> {
    Ok(if b.has("trajectory") {
        b.u64s("trajectory")?
            .into_iter()
            .map(|t| t.unwrap_or(0))
            .collect()
    } else {
        vec![0; b.rows()]
    })
}

impl Selection<'_> {
    fn coordinate(&self, tensor: &str, index: u64) -> bool {
        let (k, parts) = self.partition;
        if parts <= 1 {
            return true;
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in tensor.bytes().chain(index.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        h % parts == k
    }

    fn step(&self, s: u64) -> bool {
        self.steps.is_none_or(|(a, b)| (a..=b).contains(&s))
    }
    fn tensor(&self, t: &str) -> bool {
        self.tensors.is_none_or(|p| p.matches(t))
    }
}

pub fn layer_of(name: &str) -> &str {
    name.rsplit_once('.').map_or(name, |(l, _)| l)
}

/// One (step, tensor) row of `steps` (not late): its histogram and moments.
struct TensorRow<'a> {
    step: u64,
    tensor: &'a str,
    histogram: Result<LogHistogram, gradtel_stats::StatsError>,
    moments: Moments,
}

/// Call `f` on every non-late tensor row of `steps` that `keep(step, tensor)` accepts and that
/// is of its step's latest trajectory, once per (step, tensor): a repeat of a row (a lake some
/// writer wrote a step into twice) is skipped.
fn for_each_tensor_row(
    lake: &Path,
    run: &str,
    keep: impl Fn(u64, &str) -> bool,
    latest: &Trajectories,
    mut f: impl FnMut(TensorRow),
) -> anyhow::Result<()> {
    let mut seen: HashSet<(u64, String)> = HashSet::new();
    lake::for_each_batch(lake, run, "steps", |b| {
        let kind = b.strs("scope_kind")?;
        let scope = b.strs("scope")?;
        let step = b.u64s("step")?;
        let trajectory = trajectories(b)?;
        let late = b.bools("late")?;
        let precision = b.u64s("hist_precision_bits")?;
        let index = b.u64_lists("hist_index")?;
        let count = b.u64_lists("hist_count")?;
        let n = b.u64s("count")?;
        let mean = b.f64s("mean")?;
        let m = [b.f64s("m2")?, b.f64s("m3")?, b.f64s("m4")?];
        for i in 0..b.rows() {
            let s = step[i].unwrap_or(0);
            if kind[i] != "tensor"
                || late[i]
                || !latest.current(s, trajectory[i])
                || !keep(s, &scope[i])
                || !seen.insert((s, scope[i].clone()))
            {
                continue;
            }
            f(TensorRow {
                step: s,
                tensor: &scope[i],
                histogram: LogHistogram::from_sparse(
                    precision[i].unwrap_or(7) as u32,
                    &index[i],
                    &count[i],
                ),
                moments: Moments {
                    n: n[i].unwrap_or(0),
                    mean: mean[i].unwrap_or(0.0),
                    m2: m[0][i].unwrap_or(0.0),
                    m3: m[1][i].unwrap_or(0.0),
                    m4: m[2][i].unwrap_or(0.0),
                },
            });
        }
        Ok(())
    })
}

/// Dimension-wise samples from the `steps` table.
pub fn dimension(lake: &Path, run: &str, sel: &Selection) -> anyhow::Result<Vec<Sample>> {
    let mut out = Vec::new();
    let keep = |s: u64, t: &str| sel.step(s) && sel.tensor(t);
    for_each_tensor_row(lake, run, keep, sel.trajectories, |row| {
        let mut sample = Sample {
            object: "dimension",
            step: Some(row.step),
            tensor: row.tensor.to_string(),
            layer: layer_of(row.tensor).to_string(),
            ..Default::default()
        };
        match row
            .histogram
            .and_then(|h| powerlaw_binned::fit_histogram(&h, 50, usize::MAX))
        {
            Ok(f) => {
                sample.n = f.n;
                sample.n_tail = Some(f.n_tail);
                sample.xmin = Some(f.xmin);
                sample.alpha = Some(f.alpha);
                sample.ks_d = Some(f.ks_d);
                sample.ks_critical = Some(f.ks_critical);
                sample.ks_rejected = Some(f.rejected_ks);
            }
            Err(e) => sample.error = Some(e.to_string()),
        }
        sample.k2_p = normality::dagostino_k2(&row.moments)
            .ok()
            .map(|t| t.p_value);
        sample.jb_p = normality::jarque_bera(&row.moments).ok().map(|t| t.p_value);
        out.push(sample);
    })?;
    Ok(out)
}

/// One value of a tracked coordinate: 24 bytes, so a partition's series fit the budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Obs {
    pub step: u64,
    pub rank: u32,
    /// The value as the training process held it (coords stores f32).
    pub value: f32,
    pub local: bool,
}

/// Per tracked coordinate: (tensor, index) → its values in any order.
type Series = HashMap<(String, u64), Vec<Obs>>;

/// Read `coords` for the selection.
pub fn series(lake: &Path, run: &str, sel: &Selection) -> anyhow::Result<Series> {
    let mut out: Series = HashMap::new();
    lake::for_each_batch(lake, run, "coords", |b| {
        let b = b.map(gradtel_collector::tables::coords::explode)?;
        let step = b.u64s("step")?;
        let rank = b.u64s("rank")?;
        let tensor = b.strs("tensor")?;
        let index = b.u64s("index")?;
        let value = b.f64s("value")?;
        let local = b.bools("local")?;
        let trajectory = trajectories(&b)?;
        for i in 0..b.rows() {
            let s = step[i].unwrap_or(0);
            if !sel.step(s)
                || !sel.tensor(&tensor[i])
                || !sel.trajectories.current(s, trajectory[i])
            {
                continue;
            }
            let (Some(v), Some(j), Some(r)) = (value[i], index[i], rank[i]) else {
                continue;
            };
            if !sel.coordinate(&tensor[i], j) {
                continue;
            }
            out.entry((tensor[i].clone(), j)).or_default().push(Obs {
                step: s,
                rank: r as u32,
                value: v as f32,
                local: local[i],
            });
        }
        Ok(())
    })?;
    Ok(out)
}

/// Iteration-wise and SGN value lists of one coordinate, in step order. A rank's value of a
/// step counts once, however many rows repeat it.
pub fn coordinate_samples(obs: &[Obs]) -> (Vec<f64>, Vec<f64>) {
    let mut sorted = obs.to_vec();
    sorted.sort_by_key(|o| (o.step, o.rank));
    sorted.dedup_by_key(|o| (o.step, o.rank));
    let mut iteration = Vec::new();
    let mut sgn = Vec::new();
    for vals in sorted.chunk_by(|a, b| a.step == b.step) {
        if vals.iter().any(|v| !v.value.is_finite()) {
            continue;
        }
        if !vals.iter().all(|v| v.local) {
            iteration.push(f64::from(vals[0].value));
            continue;
        }
        let r = vals.len() as f64;
        let mean = vals.iter().map(|v| f64::from(v.value)).sum::<f64>() / r;
        iteration.push(mean);
        if vals.len() >= 2 {
            let scale = (r / (r - 1.0)).sqrt();
            sgn.extend(vals.iter().map(|v| scale * (f64::from(v.value) - mean)));
        }
    }
    (iteration, sgn)
}

/// The exact tests on one sample of signed values.
pub fn test_values(mut sample: Sample, values: &[f64], opts: &TestOptions) -> Sample {
    sample.n = values.len() as u64;
    let m = Moments::from_slice(values);
    sample.k2_p = normality::dagostino_k2(&m).ok().map(|t| t.p_value);
    sample.jb_p = normality::jarque_bera(&m).ok().map(|t| t.p_value);
    let prepared = match Prepared::from_values(values) {
        Ok(p) => p,
        Err(e) => {
            sample.error = Some(e.to_string());
            return sample;
        }
    };
    let fopts = FitOptions::default();
    let fit = match powerlaw::fit_prepared(&prepared, &fopts) {
        Ok(f) => f,
        Err(e) => {
            sample.error = Some(e.to_string());
            return sample;
        }
    };
    sample.n_tail = Some(fit.n_tail as u64);
    sample.xmin = Some(fit.xmin);
    sample.alpha = Some(fit.alpha);
    sample.ks_d = Some(fit.ks_d);
    sample.ks_critical = Some(fit.ks_critical);
    sample.ks_rejected = Some(fit.rejected_ks);
    let tail = prepared.tail(fit.xmin);
    if let Ok(v) = vuong::vs_exponential(tail, fit.xmin, fit.alpha) {
        sample.vuong_exponential_r = Some(v.r);
        sample.vuong_exponential_p = Some(v.p);
    }
    if let Ok((v, _)) = vuong::vs_lognormal(tail, fit.xmin, fit.alpha) {
        sample.vuong_lognormal_r = Some(v.r);
        sample.vuong_lognormal_p = Some(v.p);
    }
    if opts.bootstrap > 0 {
        match bootstrap::p_value(&prepared, &fit, &fopts, opts.bootstrap, opts.seed, 1) {
            Ok(b) => sample.bootstrap_p = Some(b.p_value),
            Err(e) => sample.error = Some(e.to_string()),
        }
    }
    sample
}

/// Iteration-wise and SGN samples of every coordinate, tested in parallel.
/// SGN values per coordinate kept for the Q–Q plot, standardised by the coordinate's rms.
const QQ_PER_COORDINATE: usize = 200;

/// Results of the coordinate tests: iteration-wise and SGN samples, and standardised SGN values
/// (up to 200 per coordinate) for the Q–Q plot.
pub struct CoordinateResults {
    pub iteration: Vec<Sample>,
    pub sgn: Vec<Sample>,
    pub sgn_standardised: Vec<f64>,
}

pub fn coordinates(
    series: &Series,
    opts: &TestOptions,
    progress: &indicatif::ProgressBar,
) -> CoordinateResults {
    let mut keys: Vec<&(String, u64)> = series.keys().collect();
    keys.sort();
    let chunk = keys.len().div_ceil(opts.threads.max(1)).max(1);
    type One = (Sample, Option<Sample>, Vec<f64>);
    let results: Vec<One> = std::thread::scope(|s| {
        let handles: Vec<_> = keys
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|key| {
                            let (iteration, sgn) = coordinate_samples(&series[*key]);
                            let base = Sample {
                                tensor: key.0.clone(),
                                layer: layer_of(&key.0).to_string(),
                                index: Some(key.1),
                                ..Default::default()
                            };
                            let it = test_values(
                                Sample {
                                    object: "iteration",
                                    ..base.clone()
                                },
                                &iteration,
                                opts,
                            );
                            let rms = (sgn.iter().map(|v| v * v).sum::<f64>()
                                / sgn.len().max(1) as f64)
                                .sqrt();
                            let z: Vec<f64> = if sgn.len() >= 20 && rms > 0.0 {
                                sgn.iter()
                                    .take(QQ_PER_COORDINATE)
                                    .map(|v| v / rms)
                                    .collect()
                            } else {
                                Vec::new()
                            };
                            let sg = (!sgn.is_empty()).then(|| {
                                test_values(
                                    Sample {
                                        object: "sgn",
                                        ..base
                                    },
                                    &sgn,
                                    opts,
                                )
                            });
                            progress.inc(1);
                            (it, sg, z)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut out = CoordinateResults {
        iteration: Vec::with_capacity(results.len()),
        sgn: Vec::new(),
        sgn_standardised: Vec::new(),
    };
    for (it, sg, z) in results {
        out.iteration.push(it);
        out.sgn.extend(sg);
        out.sgn_standardised.extend(z);
    }
    out
}

/// The |g| histogram of one tensor at one step, from the step's latest trajectory (for the
/// CCDF figure).
pub fn histogram_of(
    lake: &Path,
    run: &str,
    (tensor, step): (&str, u64),
    latest: &Trajectories,
) -> anyhow::Result<Option<LogHistogram>> {
    let mut found = None;
    for_each_tensor_row(
        lake,
        run,
        |s, t| s == step && t == tensor,
        latest,
        |row| found = row.histogram.ok(),
    )?;
    Ok(found)
}

/// One snapshot's fit, as the `spectra` table states it (a flat row: it is also the CSV form).
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpectrumFit {
    pub sketch: String,
    pub step: u64,
    pub rows: u64,
    pub slope: Option<f64>,
    pub intercept: Option<f64>,
    pub r2: Option<f64>,
    pub window_lo: Option<u64>,
    pub window_hi: Option<u64>,
    /// Every true eigenvalue lies in [λ̂_k, λ̂_k + error_bound].
    pub error_bound: Option<f64>,
}

/// A spectrum snapshot: its fit and its eigenvalues.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SpectrumSnapshot {
    #[serde(flatten)]
    pub fit: SpectrumFit,
    /// (k, eigenvalue), k ascending.
    pub eigenvalues: Vec<(u64, f64)>,
}

/// Every spectrum snapshot of the run, by (sketch, step).
pub fn spectra(lake: &Path, run: &str) -> anyhow::Result<Vec<SpectrumSnapshot>> {
    let mut snaps: BTreeMap<(String, u64), SpectrumSnapshot> = BTreeMap::new();
    lake::for_each_batch(lake, run, "spectra", |b| {
        let sketch = b.strs("sketch")?;
        let step = b.u64s("step")?;
        let rows = b.u64s("rows")?;
        let k = b.u64s("k")?;
        let ev = b.f64s("eigenvalue")?;
        let slope = b.f64s("slope")?;
        let intercept = b.f64s("intercept")?;
        let bound = b.f64s("error_bound")?;
        let r2 = b.f64s("r2")?;
        let lo = b.u64s("window_lo")?;
        let hi = b.u64s("window_hi")?;
        for i in 0..b.rows() {
            let s = step[i].unwrap_or(0);
            let e = snaps
                .entry((sketch[i].clone(), s))
                .or_insert_with(|| SpectrumSnapshot {
                    fit: SpectrumFit {
                        sketch: sketch[i].clone(),
                        step: s,
                        rows: rows[i].unwrap_or(0),
                        slope: slope[i],
                        intercept: intercept[i],
                        r2: r2[i],
                        window_lo: lo[i],
                        window_hi: hi[i],
                        error_bound: bound[i],
                    },
                    eigenvalues: Vec::new(),
                });
            if let (Some(k), Some(v)) = (k[i], ev[i])
                && k > 0
            {
                e.eigenvalues.push((k, v));
            }
        }
        Ok(())
    })?;
    let mut out: Vec<SpectrumSnapshot> = snaps.into_values().collect();
    for s in &mut out {
        s.eigenvalues.sort_by_key(|e| e.0);
    }
    Ok(out)
}

/// The last snapshot of each sketch.
pub fn latest(all: &[SpectrumSnapshot]) -> Vec<SpectrumSnapshot> {
    let mut by: BTreeMap<&str, &SpectrumSnapshot> = BTreeMap::new();
    for s in all {
        let e = by.entry(&s.fit.sketch).or_insert(s);
        if s.fit.step > e.fit.step {
            *e = s;
        }
    }
    by.into_values().cloned().collect()
}

/// A minimal glob (`*` any run of characters, `?` one character) for tensor names.
pub mod glob_lite {
    #[derive(Debug, Clone)]
    pub struct Pattern(Vec<char>);

    impl Pattern {
        pub fn new(p: &str) -> Self {
            Self(p.chars().collect())
        }

        pub fn matches(&self, s: &str) -> bool {
            let s: Vec<char> = s.chars().collect();
            fn go(p: &[char], s: &[char]) -> bool {
                match (p.first(), s.first()) {
                    (None, None) => true,
                    (Some('*'), _) => go(&p[1..], s) || (!s.is_empty() && go(p, &s[1..])),
                    (Some('?'), Some(_)) => go(&p[1..], &s[1..]),
                    (Some(a), Some(b)) if a == b => go(&p[1..], &s[1..]),
                    _ => false,
                }
            }
            go(&self.0, &s)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn stars_and_marks() {
            assert!(Pattern::new("fc1.*").matches("fc1.weight"));
            assert!(Pattern::new("*.bias").matches("fc3.bias"));
            assert!(!Pattern::new("*.bias").matches("fc3.weight"));
            assert!(Pattern::new("fc?.weight").matches("fc2.weight"));
            assert!(Pattern::new("*").matches(""));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minibatch_and_sgn_follow_the_definitions() {
        let o = |step, rank, value, local| Obs {
            step,
            rank,
            value,
            local,
        };
        let obs = [
            // A non-finite value drops the whole step.
            o(2, 0, f32::NAN, true),
            o(2, 1, 1.0, true),
            // A reduced gradient: one value, no SGN.
            o(1, 0, 5.0, false),
            // Two local ranks: mean 2, deviations ±1 scaled by √(2/1).
            o(0, 1, 3.0, true),
            o(0, 0, 1.0, true),
        ];
        let (it, sgn) = coordinate_samples(&obs);
        assert_eq!(it, vec![2.0, 5.0]);
        let s = 2f64.sqrt();
        assert_eq!(sgn, vec![-s, s]);
    }

    #[test]
    fn a_repeated_row_counts_once() {
        let o = |step, rank, value| Obs {
            step,
            rank,
            value,
            local: true,
        };
        let once = [o(0, 0, 1.0), o(0, 1, 3.0), o(1, 0, 2.0), o(1, 1, 6.0)];
        let mut twice = once.to_vec();
        twice.extend([o(0, 1, 3.0), o(1, 0, 2.0), o(1, 0, 2.0)]);
        assert_eq!(coordinate_samples(&twice), coordinate_samples(&once));
    }
}
