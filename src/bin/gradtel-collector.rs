//! `gradtel-collector`: receives agents' reports and writes the Parquet lake.

use clap::Parser;
use gradtel_collector::{Collector, CollectorConfig};

const ABOUT: &str = "\
gradtel collector: receives per-step shard reports from gradtel agents, assembles each
(run, step) across ranks and shards, merges the summaries per tensor, per layer and for the
whole model, and writes them as Parquet under <out>/run=<id>/table=steps/ (Hive partitions,
readable by DuckDB, pandas/pyarrow, Spark).

A step is written when every rank and shard has reported, or when --straggler-timeout has passed
since its first report (missing ranks are recorded in the row). Files are written under a hidden
temporary name and renamed into place. A report is acknowledged to its agent once it is synced
to the collector's write-ahead log (<out>/_wal), which is replayed after a crash; agents resend
anything not acknowledged.";

const EXAMPLES: &str = "\
Examples:
  gradtel-collector --listen 127.0.0.1:4317 --out ./gradtel-data
  gradtel-collector --listen 0.0.0.0:4317 --out /data/gradtel --roll-interval 10s --metrics 0.0.0.0:9464

Query the output:
  duckdb -c \"SELECT step, scope, l2_norm FROM read_parquet('gradtel-data/**/*.parquet', hive_partitioning=1) WHERE scope_kind='model' ORDER BY step\"";

#[derive(Parser)]
#[command(name = "gradtel-collector", version, about = ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    config: CollectorConfig,

    /// Log filter (tracing EnvFilter syntax), e.g. info, debug, gradtel_collector=debug.
    #[arg(long, env = "GRADTEL_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    gradtel::init_logging(&cli.log);
    cli.config.load_file()?;
    let collector = Collector::start(cli.config).await?;
    // A line the caller (or a test) can wait for; the port matters when --listen used port 0.
    if let Some(m) = collector.metrics_addr() {
        println!("gradtel-collector metrics on {m}");
    }
    println!("gradtel-collector listening on {}", collector.addr());
    gradtel::wait_for_signal().await;
    tracing::info!("signal received; writing what is pending");
    collector.shutdown(std::time::Duration::from_secs(2)).await;
    Ok(())
}
