//! `gradtel analyze`: the paper's formal tests over a lake the collector left behind, reported
//! in the paper's form. Method and decision rules: `docs/analysis.md`.
//!
//! Components: [`lake`] (partition-pruned, batch-streamed Parquet reading with typed errors),
//! [`objects`] (the four objects and their tests), [`report`] (summary table, Markdown/JSON/CSV).

pub mod figures;
pub mod lake;
pub mod objects;
pub mod plots;
pub mod remote;
pub mod report;

use std::path::PathBuf;

use anyhow::{Context, bail};
use objects::{Selection, TestOptions, glob_lite::Pattern};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Md,
    Json,
    Csv,
}

#[derive(Debug, clap::Args)]
pub struct AnalyzeArgs {
    /// The collector's output root (the directory holding `run=<id>/`), or the S3 location it
    /// uploaded the lake to (`s3://bucket/prefix`, see `--s3-endpoint`).
    pub lake: PathBuf,
    /// Run to analyse (needed when the lake holds several).
    #[arg(long)]
    pub run: Option<String>,
    /// Inclusive step range A..B.
    #[arg(long, value_parser = parse_steps)]
    pub steps: Option<(u64, u64)>,
    /// Only tensors whose name matches this glob (`*`, `?`), e.g. 'fc1.*'.
    #[arg(long)]
    pub tensors: Option<String>,
    /// Write summary.{md,json,csv} and per-sample detail CSVs here.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Clauset bootstrap replicates per iteration-wise and SGN sample (0: none).
    #[arg(long, default_value_t = 0)]
    pub bootstrap: usize,
    /// Seed of the bootstrap.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Memory for tracked-coordinate series, in MiB: beyond it `coords` is read in several
    /// passes, each holding a disjoint hash partition of the coordinates.
    #[arg(long, default_value_t = 1024)]
    pub memory_mb: u64,
    /// Format of the summary on stdout.
    #[arg(long, value_enum, default_value_t = Format::Md)]
    pub format: Format,
    #[command(flatten)]
    pub s3: remote::S3Args,
}

fn parse_steps(s: &str) -> Result<(u64, u64), String> {
    let (a, b) = s
        .split_once("..")
        .ok_or_else(|| format!("expected A..B, got {s:?}"))?;
    let a = a.trim().parse().map_err(|e| format!("{a:?}: {e}"))?;
    let b = b.trim().parse().map_err(|e| format!("{b:?}: {e}"))?;
    if a > b {
        return Err(format!("empty range {s}"));
    }
    Ok((a, b))
}

/// Everything one analysis produced.
pub struct Analysis {
    pub run: String,
    pub summary: Vec<report::SummaryRow>,
    pub dimension: Vec<objects::Sample>,
    pub iteration: Vec<objects::Sample>,
    pub sgn: Vec<objects::Sample>,
    /// Standardised SGN values (for the Q–Q figure).
    pub sgn_standardised: Vec<f64>,
    /// The latest snapshot of each sketch, and every snapshot.
    pub spectra: Vec<objects::SpectrumSnapshot>,
    pub all_spectra: Vec<objects::SpectrumSnapshot>,
    /// Each step's latest trajectory (a resumed job's steps count once, from it).
    pub trajectories: objects::Trajectories,
}

pub fn analyze(args: &AnalyzeArgs) -> anyhow::Result<Analysis> {
    let runs = lake::runs(&args.lake)?;
    let run = match &args.run {
        Some(r) => {
            if !runs.contains(r) {
                bail!(
                    "run {r:?} is not in {} (runs there: {})",
                    args.lake.display(),
                    if runs.is_empty() {
                        "none".to_string()
                    } else {
                        runs.join(", ")
                    }
                );
            }
            r.clone()
        }
        None => match runs.as_slice() {
            [one] => one.clone(),
            [] => bail!(
                "{} holds no run (no run=<id> directory)",
                args.lake.display()
            ),
            many => bail!(
                "{} holds {} runs; choose one with --run ({})",
                args.lake.display(),
                many.len(),
                many.join(", ")
            ),
        },
    };
    let pattern = args.tensors.as_deref().map(Pattern::new);
    let trajectories = objects::Trajectories::read(&args.lake, &run)?;
    let mut sel = Selection {
        steps: args.steps,
        tensors: pattern.as_ref(),
        partition: (0, 1),
        trajectories: &trajectories,
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let opts = TestOptions {
        bootstrap: args.bootstrap,
        seed: args.seed,
        threads,
    };

    let dimension = objects::dimension(&args.lake, &run, &sel)?;
    // A held value is a 24-byte `Obs`; vectors grow by doubling, so budget twice that.
    const BYTES_PER_VALUE: u64 = 48;
    let values = lake::value_count(&args.lake, &run, "coords", "index")?;
    let passes = (values * BYTES_PER_VALUE)
        .div_ceil(args.memory_mb.max(1) << 20)
        .max(1);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} testing tracked coordinates [{bar:30}] {pos}/{len} ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let (mut iteration, mut sgn, mut sgn_standardised) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..passes {
        sel.partition = (k, passes);
        let series = objects::series(&args.lake, &run, &sel)?;
        bar.inc_length(series.len() as u64);
        let r = objects::coordinates(&series, &opts, &bar);
        iteration.extend(r.iteration);
        sgn.extend(r.sgn);
        sgn_standardised.extend(r.sgn_standardised);
    }
    bar.finish_and_clear();
    let key = |s: &objects::Sample| (s.tensor.clone(), s.index);
    iteration.sort_by_key(key);
    sgn.sort_by_key(key);
    let all_spectra = objects::spectra(&args.lake, &run)?;
    let spectra = objects::latest(&all_spectra);
    let summary = report::summarise(
        &[
            ("dimension-wise", &dimension),
            ("iteration-wise", &iteration),
            ("SGN", &sgn),
        ],
        &spectra,
    );
    Ok(Analysis {
        run,
        summary,
        dimension,
        iteration,
        sgn,
        sgn_standardised,
        spectra,
        all_spectra,
        trajectories,
    })
}

pub fn run(mut args: AnalyzeArgs) -> anyhow::Result<()> {
    // Held to the end: a temporary copy of an S3 lake is removed when it is dropped.
    let local = remote::local(&args.lake, args.run.as_deref(), &args.s3)?;
    args.lake = local.path.clone();
    let a = analyze(&args)?;
    let mut md = report::markdown(&a.run, &a.summary, args.bootstrap);
    let resumed_steps = a.trajectories.resumed_steps();
    if resumed_steps > 0 {
        md.push_str(&format!(
            "\n{} steps were reported again by a job resumed from a checkpoint; each counts once, from its latest trajectory (docs/parquet.md, \"Resumed runs\").\n",
            resumed_steps
        ));
    }
    let json = serde_json::to_string_pretty(&serde_json::json!({
        "run": a.run,
        "summary": a.summary,
        "spectra": a.spectra,
        "resumed_steps": resumed_steps,
    }))?;
    let csv = report::csv(&a.summary)?;
    match args.format {
        Format::Md => println!("{md}"),
        Format::Json => println!("{json}"),
        Format::Csv => print!("{csv}"),
    }
    if let Some(out) = &args.out {
        std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
        let write = |name: &str, text: &str| {
            std::fs::write(out.join(name), text)
                .with_context(|| format!("write {}", out.join(name).display()))
        };
        write("summary.md", &md)?;
        write("summary.json", &json)?;
        write("summary.csv", &csv)?;
        write("dimension.csv", &report::csv(&a.dimension)?)?;
        write("iteration.csv", &report::csv(&a.iteration)?)?;
        write("sgn.csv", &report::csv(&a.sgn)?)?;
        let fits: Vec<&objects::SpectrumFit> = a.all_spectra.iter().map(|s| &s.fit).collect();
        write("spectra.csv", &report::csv(&fits)?)?;
        figures::write_all(&args.lake, &a, out)?;
    }
    Ok(())
}
