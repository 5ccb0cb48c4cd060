//! `gradtel-agent`: the sidecar daemon beside one training process.

use clap::Parser;
use gradtel_agent::{Agent, AgentConfig};

const ABOUT: &str = "\
gradtel sidecar agent: summarises one training process's gradients and streams the summaries to
a gradtel collector.

Run one agent beside each training process (each data-parallel rank). The training process
connects to the agent's Unix socket (--socket), registers its run layout (run id, rank, world
size, tensors), then per optimiser step streams raw f32/f16/bf16 gradient bytes and ends the step.
The agent computes, per step and tensor: count, mean and central moments to order 4, L2 norm,
max |g|, NaN/Inf counts, a log-bucketed |g| histogram (relative error 2^-(p+1)) and the top-k |g|,
and ships one report per step to the collector (--collector), at least once.

Reports stay in an on-disk spool (--spool-dir, by default beside the socket) until the
collector acknowledges them; an agent started on the same spool sends what its predecessor left.

The training process is never blocked: if the collector is slow or gone and the spool is full,
finished steps are dropped at the agent's queue and counted
(gradtel_agent_steps_dropped_queue_full_total).";

const EXAMPLES: &str = "\
Examples:
  # beside rank 0, shipping to a collector on this host
  gradtel-agent --socket /run/gradtel/rank0.sock --collector http://127.0.0.1:4317

  # also serve Ingest on TCP loopback and expose metrics
  gradtel-agent --socket rank0.sock --tcp 127.0.0.1:4318 --metrics 127.0.0.1:9465";

#[derive(Parser)]
#[command(name = "gradtel-agent", version, about = ABOUT, after_help = EXAMPLES)]
struct Cli {
    #[command(flatten)]
    config: AgentConfig,

    /// Log filter (tracing EnvFilter syntax), e.g. info, debug, gradtel_agent=debug.
    #[arg(long, env = "GRADTEL_LOG", default_value = "info")]
    log: String,

    /// On shutdown, how long to wait for the collector to acknowledge what is still in flight.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    drain: std::time::Duration,

    /// Scheduling niceness of the agent (-20..=19; 19 = lowest priority). At the default the
    /// agent only takes CPU time the training process leaves: on a saturated host it falls
    /// behind and whole steps are dropped and counted, instead of the training slowing down.
    /// Raising priority (a value below the current one) needs CAP_SYS_NICE.
    #[arg(long, env = "GRADTEL_AGENT_NICE", default_value_t = 19,
          value_parser = clap::value_parser!(i32).range(-20..=19))]
    nice: i32,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Before the runtime exists: Linux keeps niceness per thread, and threads inherit it.
    rustix::process::setpriority_process(None, cli.nice)
        .map_err(|e| anyhow::anyhow!("cannot set niceness {}: {e}", cli.nice))?;
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    gradtel::init_logging(&cli.log);
    let agent = Agent::start(cli.config).await?;
    gradtel::wait_for_signal().await;
    tracing::info!("signal received; draining");
    let report = agent.shutdown(cli.drain).await;
    let lost = report.unacknowledged - report.spooled;
    if lost > 0 {
        anyhow::bail!("{lost} reports were never acknowledged by the collector and are lost");
    }
    Ok(())
}
