//! `gradtel`: the command line.

use clap::{Parser, Subcommand};

const ABOUT: &str = "\
gradtel: streaming telemetry for the structure of stochastic gradients.

Agents beside each training process summarise gradients (moments, norms, NaN/Inf, |g| histogram,
top-k); a collector merges them across ranks and shards and writes Parquet. `gradtel demo` runs
the whole pipeline on a real small training job. The daemons are `gradtel-agent` and
`gradtel-collector`.";

#[derive(Parser)]
#[command(name = "gradtel", version, about = ABOUT)]
struct Cli {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, env = "GRADTEL_LOG", default_value = "warn", global = true)]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train an MLP on the 8x8 digits with data-parallel ranks, each feeding its own agent, into
    /// an embedded collector that writes Parquet under --out.
    Demo(gradtel::demo::DemoArgs),
    /// Run the paper's statistical tests on a column of numbers (Parquet, CSV or .npy).
    Fit(gradtel::fit::FitArgs),
    /// Run the paper's tests over a collector's Parquet lake and report them per object/layer.
    Analyze(gradtel::analyze::AnalyzeArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    gradtel::init_logging(&cli.log);
    match cli.command {
        Command::Demo(args) => {
            let summary = gradtel::demo::run(args).await?;
            println!("{summary}");
            anyhow::ensure!(
                summary.unacknowledged == 0,
                "{} reports were not acknowledged",
                summary.unacknowledged
            );
        }
        Command::Fit(args) => gradtel::fit::run(args)?,
        Command::Analyze(args) => gradtel::analyze::run(args)?,
    }
    Ok(())
}
