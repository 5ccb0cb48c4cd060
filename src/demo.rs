//! `gradtel demo`: the whole pipeline on one machine, on real training.
//!
//! An embedded collector writes Parquet under `--out`; one embedded agent per rank listens on
//! its own Unix socket; the digits MLP trains with R data-parallel ranks, and each rank hands its
//! local gradient to its agent over the Ingest protocol every step, as a real training process
//! would.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use gradtel_agent::{Agent, AgentConfig};
use gradtel_client::{IngestClient, StepScalars, TensorData, TensorDecl};
use gradtel_collector::metrics::RunGauges;
use gradtel_collector::{Collector, CollectorConfig};
use gradtel_trainer::{RankSink, TrainConfig};
use tokio::runtime::Handle;

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Data-parallel ranks (threads), each with its own agent.
    #[arg(long, default_value_t = 4)]
    pub ranks: usize,
    /// Optimiser steps.
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    /// Minibatch size per rank.
    #[arg(long, default_value_t = 32)]
    pub batch: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.1)]
    pub lr: f64,
    /// Output root of the Parquet lake.
    #[arg(long, default_value = "gradtel-data")]
    pub out: PathBuf,
    /// Run id (default: demo-<unix seconds>).
    #[arg(long)]
    pub run_id: Option<String>,
    /// Collector address (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
    /// Random seed of initialisation and minibatch sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Do not draw a progress bar.
    #[arg(long)]
    pub quiet: bool,
    /// Put one NaN into rank 0's telemetry (never into training) at this step, so the alert path
    /// shows up in the demo; 0 turns it off. Default: two thirds of the way through.
    #[arg(long)]
    pub fault_step: Option<u64>,
}

/// What the demo did, also printed at the end.
#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub run_id: String,
    pub out: PathBuf,
    pub steps: u64,
    pub reports_sent: u64,
    pub reports_received: u64,
    pub steps_dropped: u64,
    pub files_written: u64,
    pub rows_written: u64,
    pub unacknowledged: usize,
    pub test_accuracy: f64,
    pub first_loss: f64,
    pub final_loss: f64,
    pub elapsed: Duration,
    /// The collector's live estimates of the run at the end.
    pub live: Option<RunGauges>,
    pub fault_step: Option<u64>,
}

struct AgentSink {
    client: IngestClient,
    handle: Handle,
    /// Step at which this rank's telemetry gets one NaN.
    fault_step: Option<u64>,
}

impl RankSink for AgentSink {
    fn push_step(
        &mut self,
        step: u64,
        tensors: &[(&str, &[f32])],
        loss: f64,
        learning_rate: f64,
        batch_size: u64,
    ) -> Result<(), String> {
        let data: Vec<TensorData> = tensors
            .iter()
            .enumerate()
            .map(|(i, (name, values))| {
                if i == 0 && self.fault_step == Some(step) {
                    let mut faulty = values.to_vec();
                    faulty[0] = f32::NAN;
                    TensorData::from_f32(*name, 0, &faulty)
                } else {
                    TensorData::from_f32(*name, 0, values)
                }
            })
            .collect();
        let scalars = StepScalars {
            loss: Some(loss),
            learning_rate: Some(learning_rate),
            batch_size: Some(batch_size),
        };
        self.handle
            .block_on(self.client.push_step(step, &data, true, scalars))
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<DemoSummary> {
    let started = Instant::now();
    anyhow::ensure!(args.ranks >= 1, "--ranks must be at least 1");
    let run_id = args.run_id.clone().unwrap_or_else(|| {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("demo-{secs}")
    });
    gradtel_proto::validate_run_id(&run_id).map_err(|e| anyhow::anyhow!("--run-id: {e}"))?;

    let mut ccfg = CollectorConfig::new(args.listen, args.out.clone());
    ccfg.roll_interval = Duration::from_secs(1);
    let collector = Collector::start(ccfg)
        .await
        .context("starting the collector")?;
    let endpoint = format!("http://{}", collector.addr());

    let sockets = tempfile::Builder::new()
        .prefix("gradtel-demo-")
        .tempdir()
        .context("creating the socket directory")?;
    let mut agents = Vec::with_capacity(args.ranks);
    for rank in 0..args.ranks {
        let cfg = AgentConfig::new(
            sockets.path().join(format!("rank{rank}.sock")),
            endpoint.clone(),
        );
        agents.push(
            Agent::start(cfg)
                .await
                .with_context(|| format!("starting agent {rank}"))?,
        );
    }

    let train_cfg = TrainConfig {
        ranks: args.ranks,
        steps: args.steps,
        batch_per_rank: args.batch,
        learning_rate: args.lr,
        seed: args.seed,
        ..Default::default()
    };
    let layout = gradtel_trainer::mlp::Mlp::new(&train_cfg.widths, 0).parameter_layout();
    let decls: Vec<TensorDecl> = layout
        .iter()
        .map(|(name, shape)| TensorDecl {
            name: name.clone(),
            shape: shape.iter().map(|&d| d as u64).collect(),
            dtype: gradtel_proto::v1::Dtype::F32,
            owned: None,
            track_count: None,
        })
        .collect();
    let fault_step = match args.fault_step {
        Some(0) => None,
        Some(s) => Some(s),
        None => Some(args.steps * 2 / 3),
    };
    let mut sinks = Vec::with_capacity(args.ranks);
    for (rank, agent) in agents.iter().enumerate() {
        let mut client = IngestClient::connect_uds(agent.socket()).await?;
        client
            .register(&run_id, rank as u32, args.ranks as u32, 0, 1, &decls)
            .await
            .with_context(|| format!("registering rank {rank}"))?;
        sinks.push(AgentSink {
            client,
            handle: Handle::current(),
            fault_step: fault_step.filter(|_| rank == 0),
        });
    }

    let bar = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(args.steps)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} training [{bar:30}] {pos}/{len} steps  {msg}  ({elapsed}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let bar_for_steps = bar.clone();
    let summary = tokio::task::spawn_blocking(move || {
        gradtel_trainer::train(&train_cfg, sinks, &|step, loss| {
            bar_for_steps.set_position(step + 1);
            bar_for_steps.set_message(format!("loss {loss:.3}"));
        })
    })
    .await
    .context("training thread")??;
    bar.finish_and_clear();

    let mut sent = 0;
    let mut dropped = 0;
    let mut unacknowledged = 0;
    for agent in agents {
        let m = agent.metrics();
        let report = agent.shutdown(Duration::from_secs(30)).await;
        sent += m.reports_sent.get() - m.reports_retried.get();
        dropped += m.steps_dropped_total();
        unacknowledged += report.unacknowledged;
    }
    let cm = collector.metrics();
    collector.shutdown(Duration::from_secs(2)).await;
    let live = cm
        .runs
        .lock()
        .ok()
        .and_then(|runs| runs.get(run_id.as_str()).cloned());

    Ok(DemoSummary {
        run_id,
        out: args.out,
        steps: summary.steps,
        reports_sent: sent,
        reports_received: cm.reports_received.get(),
        steps_dropped: dropped,
        files_written: cm.files_written.get(),
        rows_written: cm.rows_written.get(),
        unacknowledged,
        test_accuracy: summary.test_accuracy,
        first_loss: summary.first_loss,
        final_loss: summary.final_loss,
        elapsed: started.elapsed(),
        live,
        fault_step,
    })
}

impl std::fmt::Display for DemoSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let out = self.out.display();
        writeln!(
            f,
            "gradtel demo finished in {:.1} s",
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "  run id            {}", self.run_id)?;
        writeln!(
            f,
            "  training          {} steps, loss {:.3} -> {:.3}, test accuracy {:.1} %",
            self.steps,
            self.first_loss,
            self.final_loss,
            100.0 * self.test_accuracy
        )?;
        writeln!(
            f,
            "  reports           {} sent by agents, {} received by the collector, {} unacknowledged",
            self.reports_sent, self.reports_received, self.unacknowledged
        )?;
        writeln!(
            f,
            "  drops             {} steps dropped at agents",
            self.steps_dropped
        )?;
        writeln!(
            f,
            "  parquet           {} rows in {} files under {}/run={}/table={{steps,tails,coords,sgn,spectra,alerts}}/",
            self.rows_written, self.files_written, out, self.run_id
        )?;
        if let Some(g) = &self.live {
            write_verdict(f, g, self.fault_step)?;
        }
        writeln!(f, "query it with DuckDB:")?;
        write!(
            f,
            "  duckdb -c \"SELECT step, scope, l2_norm, max_abs, abs_p99 FROM read_parquet('{out}/*/table=steps/*.parquet', hive_partitioning=1) WHERE run='{}' AND scope_kind='model' ORDER BY step LIMIT 10\"",
            self.run_id
        )
    }
}

/// The live verdict in the paper's terms (Xie et al. 2023, Table 1): how often the power law
/// survives the KS test for each object, and the covariance spectrum's slope.
fn write_verdict(
    f: &mut std::fmt::Formatter<'_>,
    g: &RunGauges,
    fault_step: Option<u64>,
) -> std::fmt::Result {
    let pct = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{:.0} %", 100.0 * v));
    let kept = |object: &str| pct(g.powerlaw_rejected(object).map(|r| 1.0 - r));
    writeln!(
        f,
        "live verdict (power law not rejected by KS at 0.05; paper: dimension-wise mostly yes, iteration-wise and SGN mostly no)"
    )?;
    writeln!(
        f,
        "  dimension-wise    {} of {} tensor-step samples; model tail index (Hill) {}",
        kept("dimension"),
        g.dimension_tested,
        g.tail_index
            .get("model")
            .map_or("n/a".into(), |a| format!("{a:.2}"))
    )?;
    for (object, label) in [("iteration", "iteration-wise"), ("sgn", "SGN")] {
        match g.windows.get(object) {
            Some(w) => writeln!(
                f,
                "  {label:<17} {} of {} tracked coordinates (Vuong prefers an exponential tail in {}); Gaussianity (K²) rejected in {}",
                kept(object),
                w.coordinates,
                pct(w.exponential_preferred),
                pct(w.gaussian_rejected)
            )?,
            None => writeln!(f, "  {label:<17} not evaluated (too few steps or ranks)")?,
        }
    }
    for (sketch, fit) in &g.spectra {
        writeln!(
            f,
            "  spectrum ({sketch:<8}) slope s = {:.2}, R² = {:.3} (λ_k ∝ k^-s)",
            fit.slope, fit.r2
        )?;
    }
    let alerts: Vec<String> = g
        .alerts_total
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    writeln!(
        f,
        "  alerts            {}{}",
        if alerts.is_empty() {
            "none".to_string()
        } else {
            alerts.join(", ")
        },
        fault_step.map_or(String::new(), |s| format!(
            " (a NaN was injected into rank 0's telemetry at step {s}; --fault-step 0 turns it off)"
        ))
    )
}
