//! Online estimators per run (DESIGN.md §3.2–3.4): the collector as an instrument.
//!
//! For every assembled step [`Live::observe`] derives, from the merged summaries, the tracked
//! coordinates and the projections the reports carry:
//! * `coords` rows: every tracked value as received;
//! * dimension-wise tails and Gaussianity per tensor, layer and model ([`dimwise`]);
//! * the minibatch gradient on tracked coordinates (mean over ranks of local gradients, or the
//!   reduced gradient), fed to the iteration-wise windows, and with R ≥ 2 local ranks the SGN
//!   rows `√(R/(R−1)) (g_r − ḡ)` on tracked coordinates and projections ([`windows`], the `sgn`
//!   table);
//! * the Frequent-Directions sketches of projected gradients and SGN ([`spectra`]);
//! * health alerts ([`alerts`]) and per-run gauges for `/metrics`.
//!
//! Memory per run is bounded: `window` values per tracked coordinate (at most `max_tracked`),
//! two ℓ × m sketches, and `norm_window` norms; at most `max_runs` runs keep state (the least
//! recently active is dropped first). Late reports (their step was already written) only add
//! `coords` rows: the estimators see each step once, in arrival order.

pub mod alerts;
pub mod checkpoint;
pub mod dimwise;
pub mod spectra;
pub mod windows;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gradtel_stats::{Moments, normality};

use crate::assembler::{Assembly, Resume};
use crate::config::FileConfig;
use crate::metrics::{CollectorMetrics, RunGauges};
use crate::report::TrackedPart;
use crate::tables::Tables;
use crate::tables::alerts::AlertRow;
use crate::tables::sgn::SgnRow;
use crate::tables::steps::StepRow;

struct RunLive {
    last_active: u64,
    iteration: windows::Windows,
    sgn: windows::Windows,
    sketches: spectra::Sketches,
    alerts: alerts::AlertState,
    steps_seen: u64,
    /// Steps observed since the windows / spectra were last evaluated.
    since_windows: u64,
    since_spectra: u64,
    /// Steps observed in this process (the state's version), the version the run's last
    /// written checkpoint holds, when that checkpoint was taken, and what it cost (its copy
    /// and its file).
    version: u64,
    saved_version: u64,
    saved_at: Option<Instant>,
    saved_cost: Duration,
}

impl RunLive {
    fn new(ell: usize) -> Self {
        Self {
            last_active: 0,
            iteration: windows::Windows::default(),
            sgn: windows::Windows::default(),
            sketches: spectra::Sketches::new(ell),
            alerts: alerts::AlertState::default(),
            steps_seen: 0,
            since_windows: 0,
            since_spectra: 0,
            version: 0,
            saved_version: 0,
            saved_at: None,
            saved_cost: Duration::ZERO,
        }
    }

    fn save(&self, run: &str, now_ns: i64) -> checkpoint::RunState {
        checkpoint::RunState {
            version: checkpoint::VERSION,
            run_id: run.to_string(),
            saved_at_ns: now_ns,
            steps_seen: self.steps_seen,
            since_windows: self.since_windows,
            since_spectra: self.since_spectra,
            iteration: Some(self.iteration.save()),
            sgn: Some(self.sgn.save()),
            sketches: Some(self.sketches.save()),
            alerts: Some(self.alerts.save()),
            // Held by the metrics, not the run: `Live::save` adds them.
            gauges: None,
        }
    }

    fn load(s: checkpoint::RunState, ell: usize) -> Result<Self, checkpoint::CheckpointError> {
        let mut r = Self::new(ell);
        r.steps_seen = s.steps_seen;
        r.since_windows = s.since_windows;
        r.since_spectra = s.since_spectra;
        if let Some(w) = s.iteration {
            r.iteration = windows::Windows::load(w)?;
        }
        if let Some(w) = s.sgn {
            r.sgn = windows::Windows::load(w)?;
        }
        if let Some(k) = s.sketches {
            r.sketches = spectra::Sketches::load(k, ell)?;
        }
        if let Some(a) = s.alerts {
            r.alerts = alerts::AlertState::load(a)?;
        }
        // The file holds this state: nothing to write until a step changes it.
        r.saved_at = Some(Instant::now());
        Ok(r)
    }
}

/// What [`Live::restore`] did with the checkpoints it was given.
#[derive(Debug, Default)]
pub struct Restored {
    pub restored: usize,
    /// Runs whose checkpoint failed its checks, with why.
    pub refused: Vec<(String, checkpoint::CheckpointError)>,
    /// Runs beyond `live.max_runs` (the least recently saved): not restored, and no longer
    /// worth keeping.
    pub surplus: Vec<String>,
}

pub struct Live {
    cfg: FileConfig,
    metrics: Arc<CollectorMetrics>,
    runs: HashMap<Arc<str>, RunLive>,
    clock: u64,
}

impl Live {
    pub fn new(cfg: FileConfig, metrics: Arc<CollectorMetrics>) -> Self {
        Self {
            cfg,
            metrics,
            runs: HashMap::new(),
            clock: 0,
        }
    }

    fn run_state(&mut self, run: &Arc<str>) -> &mut RunLive {
        self.clock += 1;
        if !self.runs.contains_key(run)
            && self.runs.len() >= self.cfg.live.max_runs
            && let Some(oldest) = self
                .runs
                .iter()
                .min_by_key(|(_, r)| r.last_active)
                .map(|(k, _)| k.clone())
        {
            self.runs.remove(&oldest);
            if let Ok(mut g) = self.metrics.runs.lock() {
                g.remove(&oldest);
            }
            tracing::info!(run = %oldest, "live state of the least recently active run dropped");
        }
        let ell = self.cfg.live.fd_ell;
        let r = self
            .runs
            .entry(run.clone())
            .or_insert_with(|| RunLive::new(ell));
        r.last_active = self.clock;
        r
    }

    /// A copy of `run`'s state for its checkpoint, with the version it holds and the CPU time
    /// the copy took: when checkpoints are on, a step changed the state since its last
    /// checkpoint, and `force` or one is due. One is due when the time since the last is at
    /// least that checkpoint's CPU time divided by `live.checkpoint_time_share`, or at least
    /// `live.checkpoint_every_s`: a small state goes with every Parquet write (so a crash loses
    /// none of it), a large one as often as its cost allows. (Only the copy is made here, on
    /// the pipeline's thread; the encoding and the file are the writer's.)
    pub fn checkpoint(&self, run: &str, force: bool, now_ns: i64) -> Option<checkpoint::Taken> {
        let live = &self.cfg.live;
        let st = self.runs.get(run)?;
        // An interval no Duration holds (set in code, not parsed and checked) means never.
        let every = Duration::try_from_secs_f64(live.checkpoint_every_s).unwrap_or(Duration::MAX);
        let afforded =
            Duration::try_from_secs_f64(st.saved_cost.as_secs_f64() / live.checkpoint_time_share)
                .unwrap_or(Duration::MAX);
        let due = force
            || st
                .saved_at
                .is_none_or(|t| t.elapsed() >= every.min(afforded));
        if !(live.checkpoints && st.version != st.saved_version && due) {
            return None;
        }
        let (at, started) = (
            Instant::now(),
            gradtel_telemetry::process::thread_cpu_time(),
        );
        let state = self.save(run, st, now_ns);
        Some(checkpoint::Taken {
            state,
            version: st.version,
            copy: gradtel_telemetry::process::thread_cpu_time().saturating_sub(started),
            at,
        })
    }

    /// A copy of `run`'s state as its checkpoint holds it, whether or not one is due.
    pub fn state(&self, run: &str, now_ns: i64) -> Option<checkpoint::RunState> {
        self.runs.get(run).map(|st| self.save(run, st, now_ns))
    }

    fn save(&self, run: &str, st: &RunLive, now_ns: i64) -> checkpoint::RunState {
        let gauges = self
            .metrics
            .runs
            .lock()
            .ok()
            .and_then(|all| all.get(run).map(checkpoint::gauges_state));
        checkpoint::RunState {
            gauges,
            ..st.save(run, now_ns)
        }
    }

    /// The checkpoint of `version` of `run`'s state, taken `at`, is written; copying, encoding
    /// and writing it took `cost` of CPU time.
    pub fn checkpointed(&mut self, run: &str, version: u64, at: Instant, cost: Duration) {
        if let Some(st) = self.runs.get_mut(run) {
            st.saved_version = version;
            st.saved_at = Some(at);
            st.saved_cost = cost;
        }
    }

    /// Runs whose state changed since their last checkpoint.
    pub fn unsaved(&self) -> Vec<Arc<str>> {
        self.runs
            .iter()
            .filter(|(_, st)| st.version != st.saved_version)
            .map(|(run, _)| run.clone())
            .collect()
    }

    /// Take up the states of checkpoints (before any report is observed), the most recently
    /// saved first, up to `live.max_runs`.
    pub fn restore(&mut self, mut states: Vec<checkpoint::RunState>) -> Restored {
        let mut out = Restored::default();
        if !self.cfg.live.checkpoints {
            return out;
        }
        states.sort_by_key(|s| std::cmp::Reverse(s.saved_at_ns));
        out.surplus = states
            .drain(self.cfg.live.max_runs.min(states.len())..)
            .map(|s| s.run_id)
            .collect();
        let Restored {
            restored, refused, ..
        } = &mut out;
        // Oldest first, so that the least recently active run is dropped first as before.
        for mut s in states.into_iter().rev() {
            let run = s.run_id.clone();
            if let Err(e) = gradtel_proto::validate_run_id(&run) {
                refused.push((run, checkpoint::CheckpointError::RunId(e.to_string())));
                continue;
            }
            let gauges = s.gauges.take().map(checkpoint::gauges_from).transpose();
            match RunLive::load(s, self.cfg.live.fd_ell).and_then(|st| Ok((st, gauges?))) {
                Ok((mut st, gauges)) => {
                    self.clock += 1;
                    st.last_active = self.clock;
                    let run: Arc<str> = Arc::from(run);
                    if let (Some(g), Ok(mut all)) = (gauges, self.metrics.runs.lock()) {
                        all.insert(run.clone(), g);
                    }
                    self.runs.insert(run, st);
                    *restored += 1;
                }
                Err(e) => refused.push((run, e)),
            }
        }
        out
    }

    /// Derive every live table's rows from one assembly; fills `norm_robust_z` of the model
    /// row in `steps`.
    pub fn observe(&mut self, a: &Assembly, steps: &mut [StepRow], now_ns: i64) -> Tables {
        let mut out = Tables::default();
        let run = a.run_id.clone();
        // Tracked values by tensor: the parts (rank, shard) that carried the tensor.
        let mut tracked: BTreeMap<&str, Vec<(u32, &TrackedPart)>> = BTreeMap::new();
        for p in &a.parts {
            for t in &p.tracked {
                tracked.entry(&*t.name).or_default().push((p.key.rank, t));
            }
        }
        let names: BTreeMap<&str, Arc<str>> = tracked.keys().map(|&n| (n, Arc::from(n))).collect();
        let tracked_parts = || a.parts.iter().flat_map(|p| &p.tracked);
        out.coords.reserve(
            tracked_parts().count(),
            tracked_parts().map(|t| t.index.len()).sum(),
        );
        for p in &a.parts {
            for t in &p.tracked {
                let name = &names[&*t.name];
                out.coords.push_group(
                    &run,
                    (a.step, a.trajectory),
                    p.key.rank,
                    name,
                    p.local,
                    a.late,
                    &t.index,
                    &t.value,
                );
            }
        }
        if a.late {
            return out;
        }
        let cfg = self.cfg.clone();
        let metrics = self.metrics.clone();
        let st = self.run_state(&run);
        st.version += 1;
        st.steps_seen += 1;
        st.since_windows += 1;
        st.since_spectra += 1;

        let ranks: BTreeSet<u32> = a.parts.iter().map(|p| p.key.rank).collect();
        let local = a.parts.iter().all(|p| p.local);
        let r = ranks.len();
        let sgn_ready = local && r >= 2;
        let scale = if r >= 2 {
            (r as f64 / (r as f64 - 1.0)).sqrt()
        } else {
            1.0
        };

        // Minibatch gradient and SGN on tracked coordinates, tensor by tensor, coordinates in
        // increasing order. Every rank tracks the same coordinates (a shared seeded sample), so
        // a tensor's parts normally carry identical index lists and are read column by column;
        // other layouts (FSDP shards owning different coordinates) are grouped by coordinate.
        let mut minibatch: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let mut sgn_by_tensor: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
        let (mut vals, mut d): (Vec<(u32, f32)>, Vec<f64>) = (Vec::new(), Vec::new());
        for (&tensor, parts) in &tracked {
            let name = &names[tensor];
            let (mut iteration, mut sgn) = (st.iteration.tensor(name), st.sgn.tensor(name));
            let (mut mb, mut sgn_values) = (Vec::new(), Vec::new());
            let mut visit = |j: u64, vals: &[(u32, f32)]| {
                if vals.iter().any(|(_, v)| !v.is_finite()) {
                    return;
                }
                let g: f64 = if local {
                    if vals.len() < r {
                        return;
                    }
                    vals.iter().map(|(_, v)| f64::from(*v)).sum::<f64>() / vals.len() as f64
                } else {
                    f64::from(vals[0].1)
                };
                mb.push(g);
                iteration.push(j, &[g], cfg.live.window, cfg.live.max_tracked);
                if sgn_ready {
                    d.clear();
                    d.extend(vals.iter().map(|(_, v)| scale * (f64::from(*v) - g)));
                    sgn_values.extend_from_slice(&d);
                    let kept = r.min(cfg.live.sgn_ranks);
                    sgn.push(j, &d[..kept], cfg.live.window * kept, cfg.live.max_tracked);
                }
            };
            let first = &parts[0].1.index;
            let aligned = first.windows(2).all(|w| w[0] < w[1])
                && parts
                    .iter()
                    .all(|(_, t)| t.index == *first && t.value.len() == first.len());
            if aligned {
                for (k, &j) in first.iter().enumerate() {
                    vals.clear();
                    vals.extend(parts.iter().map(|(rank, t)| (*rank, t.value[k])));
                    visit(j, &vals);
                }
            } else {
                let mut by_coord: BTreeMap<u64, Vec<(u32, f32)>> = BTreeMap::new();
                for (rank, t) in parts {
                    for (&j, &v) in t.index.iter().zip(&t.value) {
                        by_coord.entry(j).or_default().push((*rank, v));
                    }
                }
                for (&j, v) in &by_coord {
                    visit(j, v);
                }
            }
            if !mb.is_empty() {
                minibatch.insert(tensor, mb);
            }
            if !sgn_values.is_empty() {
                sgn_by_tensor.insert(tensor, sgn_values);
            }
        }

        // Dimension-wise tails.
        let clauset = (cfg.live.clauset_every > 0
            && (st.steps_seen - 1).is_multiple_of(cfg.live.clauset_every))
        .then_some(cfg.live.clauset_min_tail);
        let all_tracked: Vec<f64> = minibatch.values().flatten().copied().collect();
        for row in steps.iter() {
            let tracked: &[f64] = match row.scope_kind {
                "tensor" => minibatch.get(row.scope.as_str()).map_or(&[], |v| v),
                "model" => &all_tracked,
                _ => &[],
            };
            out.tails.extend(dimwise::rows(row, tracked, clauset));
        }

        // SGN per step.
        let batch = {
            let b: Vec<f64> = a
                .parts
                .iter()
                .filter_map(|p| p.batch_size)
                .map(|b| b as f64)
                .collect();
            (!b.is_empty()).then(|| b.iter().sum::<f64>() / b.len() as f64)
        };
        if sgn_ready {
            let all: Vec<f64> = sgn_by_tensor.values().flatten().copied().collect();
            for (kind, scope, d) in sgn_by_tensor
                .iter()
                .map(|(t, d)| ("tensor", t.to_string(), d.as_slice()))
                .chain(std::iter::once(("model", String::new(), all.as_slice())))
            {
                out.sgn
                    .push(sgn_row(&run, a.step, kind, scope, r as u32, d, batch));
            }
        }

        // Projections: each rank's full projection is the sum of its shards'.
        let mut per_rank: BTreeMap<u32, (spectra::Identity, Vec<f64>, u32)> = BTreeMap::new();
        for p in &a.parts {
            let Some(x) = &p.projection else { continue };
            let id = (x.kind, x.seed, x.values.len());
            let e = per_rank
                .entry(p.key.rank)
                .or_insert_with(|| (id, vec![0.0; x.values.len()], 0));
            if e.0 != id {
                st.sketches.refused += 1;
                continue;
            }
            for (s, v) in e.1.iter_mut().zip(&x.values) {
                *s += v;
            }
            e.2 += 1;
        }
        per_rank.retain(|_, (_, _, shards)| *shards == a.shard_count);
        let ids: BTreeSet<spectra::Identity> = per_rank.values().map(|v| v.0).collect();
        if let (1, Some(&id)) = (ids.len(), ids.first()) {
            let rows: Vec<&Vec<f64>> = per_rank.values().map(|v| &v.1).collect();
            // Ranks are exchangeable: the lowest `sgn_ranks` give the sketches the same
            // covariance at a bounded cost per step however many ranks report.
            let sketched = cfg.live.sgn_ranks;
            if local {
                for row in rows.iter().take(sketched) {
                    st.sketches.insert(spectra::GRADIENT, id, row);
                }
            } else if let Some(row) = rows.first() {
                st.sketches.insert(spectra::GRADIENT, id, row);
            }
            if sgn_ready && rows.len() >= 2 {
                // Row by row (the same additions per coordinate as a column sum, in the same
                // order), so that the loop runs over contiguous lanes instead of striding
                // across the ranks' vectors.
                let mut mean = vec![0.0; id.2];
                for row in &rows {
                    for (m, x) in mean.iter_mut().zip(row.iter()) {
                        *m += x;
                    }
                }
                let n = rows.len() as f64;
                mean.iter_mut().for_each(|m| *m /= n);
                let mut norms = Vec::new();
                for (i, row) in rows.iter().enumerate() {
                    let d: Vec<f64> = row
                        .iter()
                        .zip(&mean)
                        .map(|(x, m)| scale * (x - m))
                        .collect();
                    norms.push(d.iter().map(|v| v * v).sum::<f64>().sqrt());
                    if i < sketched {
                        st.sketches.insert(spectra::SGN, id, &d);
                    }
                }
                let norm = norms.iter().sum::<f64>() / norms.len() as f64;
                out.sgn.push(SgnRow {
                    run_id: run.clone(),
                    step: a.step,
                    scope_kind: "projection",
                    scope: String::new(),
                    ranks: rows.len() as u32,
                    samples: rows.len() as u64,
                    norm: Some(norm),
                    local_batch_size: batch,
                    ..Default::default()
                });
            }
        }
        st.sketches.decay(cfg.live.fd_decay);

        // Windows and spectra snapshots.
        let mut window_summaries = Vec::new();
        if st.since_windows >= cfg.live.window_every {
            st.since_windows = 0;
            for (object, w) in [("iteration", &st.iteration), ("sgn", &st.sgn)] {
                if !w.is_empty() {
                    let (rows, summary) = w.evaluate(&run, a.step, object);
                    out.tails.extend(rows);
                    window_summaries.push((object, summary));
                }
            }
        }
        let mut fits = Vec::new();
        if st.since_spectra >= cfg.live.spectrum_every {
            st.since_spectra = 0;
            let (rows, f) = st.sketches.snapshot(&run, a.step);
            out.spectra.extend(rows);
            for fit in &f {
                if let Some(al) =
                    st.alerts
                        .slope(&cfg.alerts, &run, a.step, now_ns, fit.sketch, fit.slope)
                {
                    out.alerts.push(al);
                }
            }
            fits = f;
        }

        // Alerts on the model row.
        let model_idx = steps.iter().position(|r| r.scope_kind == "model");
        let hill = dimwise::hill_of(&out.tails, "model", "");
        if let Some(mi) = model_idx {
            let m = &steps[mi];
            let nonfinite = m.summary.nan_count + m.summary.pos_inf_count + m.summary.neg_inf_count;
            let nonfinite_tensors = steps
                .iter()
                .filter(|r| {
                    r.scope_kind == "tensor"
                        && r.summary.nan_count + r.summary.pos_inf_count + r.summary.neg_inf_count
                            > 0
                })
                .map(|r| r.scope.clone())
                .collect();
            let reported: Vec<u32> = ranks.iter().copied().collect();
            let facts = alerts::StepFacts {
                run: &run,
                step: a.step,
                now_ns,
                nonfinite,
                nonfinite_tensors,
                norm: Some(m.summary.l2_norm()),
                hill,
                missing_ranks: &m.missing_ranks,
                ranks_reported: &reported,
            };
            let (raised, z) = st.alerts.step(&cfg.alerts, &facts);
            out.alerts.extend(raised);
            steps[mi].norm_robust_z = z;
        }

        // Gauges for /metrics.
        if let Ok(mut all) = metrics.runs.lock() {
            let g = all.entry(run.clone()).or_insert_with(RunGauges::default);
            g.last_step = a.step;
            if let Some(mi) = model_idx {
                let m = &steps[mi];
                g.grad_norm = Some(m.summary.l2_norm());
                g.nonfinite_values_total +=
                    m.summary.nan_count + m.summary.pos_inf_count + m.summary.neg_inf_count;
            }
            for t in out.tails.iter().filter(|t| t.object == dimwise::OBJECT) {
                match (t.estimator, t.scope_kind) {
                    ("hill", "model" | "layer") => {
                        let scope = if t.scope_kind == "model" {
                            "model".to_string()
                        } else {
                            t.scope.clone()
                        };
                        match t.alpha {
                            Some(v) => g.tail_index.insert(scope, v),
                            None => g.tail_index.remove(&scope),
                        };
                    }
                    ("clauset", "tensor") => {
                        if let Some(rej) = t.rejected {
                            g.dimension_tested += 1;
                            g.dimension_rejected += u64::from(rej);
                        }
                    }
                    _ => {}
                }
            }
            for (object, s) in window_summaries {
                g.windows.insert(object, s);
            }
            if let Some(s) = out.sgn.iter().find(|s| s.scope_kind == "model") {
                g.sgn_rms = s.rms;
            }
            for fit in fits {
                g.spectra.insert(fit.sketch, fit);
            }
            for al in &out.alerts {
                *g.alerts_total.entry(al.kind).or_default() += 1;
            }
        }
        for al in &out.alerts {
            tracing::warn!(run = %al.run_id, step = al.step, kind = al.kind, "{}", al.message);
        }
        out
    }
}

impl Live {
    /// The `resumed` alert of a run's new trajectory (a job resumed from a checkpoint): the
    /// first of its ranks that went back, and from which step to which. None when the alert
    /// is off.
    pub fn resumed(&mut self, r: &Resume, now_ns: i64) -> Option<Tables> {
        if !self.cfg.alerts.resumed {
            return None;
        }
        let row = AlertRow {
            run_id: r.run_id.clone(),
            step: r.to,
            raised_at_ns: now_ns,
            kind: alerts::kind::RESUMED,
            severity: "warning",
            scope_kind: "rank",
            scope: r.rank.to_string(),
            value: Some(r.to as f64),
            threshold: Some(r.from as f64),
            message: format!(
                "run resumed: rank {} (shard {}) went back from step {} to step {}; its steps from there form trajectory {}",
                r.rank, r.shard, r.from, r.to, r.trajectory
            ),
        };
        tracing::warn!(run = %row.run_id, step = row.step, kind = row.kind, "{}", row.message);
        if let Ok(mut all) = self.metrics.runs.lock() {
            let g = all.entry(r.run_id.clone()).or_default();
            *g.alerts_total.entry(row.kind).or_default() += 1;
        }
        Some(Tables {
            alerts: vec![row],
            ..Tables::default()
        })
    }
}

fn sgn_row(
    run: &Arc<str>,
    step: u64,
    scope_kind: &'static str,
    scope: String,
    ranks: u32,
    d: &[f64],
    batch: Option<f64>,
) -> SgnRow {
    let m = Moments::from_block(d);
    let rms =
        (!d.is_empty()).then(|| (d.iter().map(|v| v * v).sum::<f64>() / d.len() as f64).sqrt());
    let mut row = SgnRow {
        run_id: run.clone(),
        step,
        scope_kind,
        scope,
        ranks,
        samples: d.len() as u64,
        rms,
        local_batch_size: batch,
        noise_scale_per_example: rms.zip(batch).map(|(r, b)| r * b.sqrt()),
        ..Default::default()
    };
    match (normality::dagostino_k2(&m), normality::jarque_bera(&m)) {
        (Ok(k2), Ok(jb)) => {
            row.k2 = Some(k2.statistic);
            row.k2_p = Some(k2.p_value);
            row.jb = Some(jb.statistic);
            row.jb_p = Some(jb.p_value);
        }
        (Err(e), _) | (_, Err(e)) => row.error = Some(e.to_string()),
    }
    row
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Report;
    use gradtel_stats::rng::SplitMix64;

    /// Steps of a 3-rank run whose ranks track coordinates 0, 3, 6, … of two tensors, with
    /// `split` each rank's tracked values of a tensor come as two pieces (as FSDP shards would
    /// send them), which takes the by-coordinate path instead of the column-wise one.
    fn run(split: bool) -> (Tables, usize, usize) {
        let mut cfg = FileConfig::default();
        cfg.live.window_every = 40;
        let mut live = Live::new(cfg, Arc::new(CollectorMetrics::default()));
        let mut rng = SplitMix64::new(9);
        let mut all = Tables::default();
        for step in 0..80 {
            let parts: Vec<Report> = (0..3)
                .map(|rank| {
                    let mut p =
                        Report::for_test(rank, 3, step, &[("a.w", &[1.0]), ("b.w", &[2.0])]);
                    for name in ["a.w", "b.w"] {
                        let index: Vec<u64> = (0..24).map(|i| 3 * i).collect();
                        let value: Vec<f32> =
                            index.iter().map(|_| (0.1 + rng.normal()) as f32).collect();
                        let cut = if split { 10 } else { 24 };
                        p.tracked.push(TrackedPart {
                            name: name.into(),
                            index: index[..cut].to_vec(),
                            value: value[..cut].to_vec(),
                        });
                        if split {
                            p.tracked.push(TrackedPart {
                                name: name.into(),
                                index: index[cut..].to_vec(),
                                value: value[cut..].to_vec(),
                            });
                        }
                    }
                    p
                })
                .collect();
            let a = assembly(step, parts);
            let (mut rows, _) = crate::tables::steps::build_rows(&a, Default::default(), 0);
            all.append(live.observe(&a, &mut rows, 0));
        }
        let st = &live.runs["r"];
        (all, st.iteration.len(), st.sgn.len())
    }

    /// Step `step` of a 3-rank run: two tensors, 24 tracked coordinates each, a 16-value
    /// projection per rank; the norm spikes at step 50 and rank 1 sends a NaN at step 60.
    fn step_of(step: u64, rng: &mut SplitMix64) -> Assembly {
        let parts = (0..3)
            .map(|rank| {
                let scale = if step == 50 { 100.0 } else { 1.0 };
                let mut values: Vec<f64> = (0..64).map(|_| scale * rng.normal()).collect();
                if step == 60 && rank == 1 {
                    values[3] = f64::NAN;
                }
                let mut p = Report::for_test(rank, 3, step, &[("a.w", &values)]);
                let index: Vec<u64> = (0..24).map(|i| 2 * i).collect();
                p.tracked.push(TrackedPart {
                    name: "a.w".into(),
                    value: index
                        .iter()
                        .map(|_| (rng.normal() * 0.5 + 0.1) as f32)
                        .collect(),
                    index,
                });
                p.projection = Some(crate::report::ProjectionPart {
                    kind: 1,
                    seed: 7,
                    values: (1..=16)
                        .map(|k| rng.normal() * (k as f64).powf(-0.75))
                        .collect(),
                    coordinates: 64,
                });
                p
            })
            .collect();
        assembly(step, parts)
    }

    /// Step `step` of run "r" of 3 ranks, made of `parts`.
    fn assembly(step: u64, parts: Vec<Report>) -> Assembly {
        Assembly {
            run_id: "r".into(),
            step,
            world_size: 3,
            shard_count: 1,
            parts,
            hists: Default::default(),
            reports: vec![],
            late: false,
            trajectory: 0,
        }
    }

    /// Every live row `live` makes of `steps`, with the model rows' robust z of the norm.
    fn observe_all(live: &mut Live, steps: &[Assembly]) -> (Tables, Vec<Option<f64>>) {
        let mut all = Tables::default();
        let mut z = Vec::new();
        for a in steps {
            let (mut rows, _) = crate::tables::steps::build_rows(a, Default::default(), 0);
            all.append(live.observe(a, &mut rows, 0));
            z.extend(
                rows.iter()
                    .filter(|r| r.scope_kind == "model")
                    .map(|r| r.norm_robust_z),
            );
        }
        (all, z)
    }

    #[test]
    fn a_run_restored_from_its_checkpoint_continues_as_if_never_stopped() {
        let mut cfg = FileConfig::default();
        cfg.live.window = 30;
        cfg.live.window_every = 10;
        cfg.live.spectrum_every = 10;
        cfg.live.fd_ell = 4;
        cfg.alerts.slope_change = 0.01;
        let mut rng = SplitMix64::new(4);
        let steps: Vec<Assembly> = (0..90).map(|s| step_of(s, &mut rng)).collect();
        let (cut, later) = steps.split_at(45);
        let metrics = || Arc::new(CollectorMetrics::default());

        let whole_metrics = metrics();
        let mut whole = Live::new(cfg.clone(), whole_metrics.clone());
        observe_all(&mut whole, cut);
        let expected = observe_all(&mut whole, later);

        let mut stopped = Live::new(cfg.clone(), metrics());
        observe_all(&mut stopped, cut);
        let taken = stopped
            .checkpoint("r", false, 0)
            .expect("changed, never saved");
        stopped.checkpointed("r", taken.version, taken.at, Duration::ZERO);
        assert!(
            stopped.checkpoint("r", true, 0).is_none(),
            "nothing new to save"
        );
        let state = checkpoint::unframe(&checkpoint::frame(&taken.state)).unwrap();
        let restarted_metrics = metrics();
        let mut restarted = Live::new(cfg.clone(), restarted_metrics.clone());
        let r = restarted.restore(vec![state]);
        assert_eq!((r.restored, r.refused.len()), (1, 0));
        assert!(restarted.unsaved().is_empty());
        let got = observe_all(&mut restarted, later);

        assert_eq!(got.1, expected.1);
        assert_eq!(got.0.tails, expected.0.tails);
        assert_eq!(got.0.sgn, expected.0.sgn);
        assert_eq!(got.0.spectra, expected.0.spectra);
        assert_eq!(got.0.alerts, expected.0.alerts);
        let kinds: Vec<_> = got.0.alerts.iter().map(|a| (a.kind, a.step)).collect();
        assert!(kinds.contains(&(alerts::kind::NORM_SPIKE, 50)), "{kinds:?}");
        assert!(kinds.contains(&(alerts::kind::NONFINITE, 60)), "{kinds:?}");
        assert!(got.0.spectra.iter().any(|r| r.sketch == spectra::SGN));
        assert!(got.0.tails.iter().any(|r| r.object == "iteration"));
        // The run's gauges and counters on /metrics went through the restart too.
        let gauges = |m: &Arc<CollectorMetrics>| m.runs.lock().unwrap()["r"].clone();
        let (g, want) = (gauges(&restarted_metrics), gauges(&whole_metrics));
        assert_eq!(g, want);
        assert!(g.alerts_total[alerts::kind::NONFINITE] == 1 && g.dimension_tested > 0);
        assert_eq!(g.windows.len(), 2);

        // Without the checkpoint the same steps give other rows: the spike finds too short a
        // history, the windows and sketches start empty.
        let mut fresh = Live::new(cfg, metrics());
        let (rows, z) = observe_all(&mut fresh, later);
        assert!(
            !rows
                .alerts
                .iter()
                .any(|a| a.kind == alerts::kind::NORM_SPIKE)
        );
        assert_ne!(z, expected.1);
        assert_ne!(rows.spectra, expected.0.spectra);
        assert_ne!(rows.tails, expected.0.tails);
    }

    #[test]
    fn the_most_recently_saved_runs_are_restored_up_to_max_runs() {
        let mut cfg = FileConfig::default();
        cfg.live.max_runs = 2;
        let states: Vec<checkpoint::RunState> = [("a", 3), ("b", 1), ("c", 2)]
            .iter()
            .map(|&(run, at)| checkpoint::RunState {
                version: checkpoint::VERSION,
                run_id: run.into(),
                saved_at_ns: at,
                ..Default::default()
            })
            .collect();
        let mut live = Live::new(cfg, Arc::new(CollectorMetrics::default()));
        let r = live.restore(states);
        assert_eq!((r.restored, r.surplus), (2, vec!["b".to_string()]));
        let mut kept: Vec<&str> = live.runs.keys().map(|k| &**k).collect();
        kept.sort();
        assert_eq!(kept, ["a", "c"]);
        // The newest is the most recently active: a third run drops "c" first.
        assert!(live.runs["a"].last_active > live.runs["c"].last_active);
    }

    #[test]
    fn a_checkpoint_is_due_as_often_as_its_cost_allows_and_at_least_every_interval() {
        let mut cfg = FileConfig::default();
        cfg.live.checkpoint_every_s = 0.4;
        cfg.live.checkpoint_time_share = 0.01;
        let mut live = Live::new(cfg, Arc::new(CollectorMetrics::default()));
        let mut rng = SplitMix64::new(2);
        let mut step = 0;
        let mut observe = |live: &mut Live| {
            observe_all(live, &[step_of(step, &mut rng)]);
            step += 1;
        };
        observe(&mut live);
        let taken = live.checkpoint("r", false, 0).expect("never saved: due");
        assert_eq!(taken.state.steps_seen, 1);
        // A 1 ms checkpoint may come 100 ms after the last.
        live.checkpointed("r", taken.version, taken.at, Duration::from_millis(1));
        observe(&mut live);
        assert!(live.checkpoint("r", false, 0).is_none(), "1 ms → 100 ms");
        std::thread::sleep(Duration::from_millis(120));
        let taken = live.checkpoint("r", false, 0).expect("100 ms on");
        assert_eq!(taken.state.steps_seen, 2);
        // A 1 s checkpoint would wait 100 s: the 0.4 s interval comes first.
        live.checkpointed("r", taken.version, taken.at, Duration::from_secs(1));
        observe(&mut live);
        std::thread::sleep(Duration::from_millis(120));
        assert!(live.checkpoint("r", false, 0).is_none(), "1 s → 0.4 s");
        assert!(live.checkpoint("r", true, 0).is_some(), "forced");
        std::thread::sleep(Duration::from_millis(300));
        assert!(live.checkpoint("r", false, 0).is_some(), "0.4 s on");
    }

    #[test]
    fn malformed_checkpoints_are_refused_whole() {
        let cfg = FileConfig::default();
        let mut live = Live::new(cfg.clone(), Arc::new(CollectorMetrics::default()));
        let mut rng = SplitMix64::new(1);
        let steps: Vec<Assembly> = (0..12).map(|s| step_of(s, &mut rng)).collect();
        observe_all(&mut live, &steps);
        let good = live.checkpoint("r", true, 0).unwrap().state;
        let mut bad = Vec::new();
        let mut s = good.clone();
        s.iteration.as_mut().unwrap().tensors[0].len[0] += 1;
        bad.push(s);
        let mut s = good.clone();
        s.sgn.as_mut().unwrap().tensors[0].values[0] = f64::INFINITY;
        bad.push(s);
        let mut s = good.clone();
        s.sketches
            .as_mut()
            .unwrap()
            .gradient
            .as_mut()
            .unwrap()
            .mean
            .pop();
        bad.push(s);
        let mut s = good.clone();
        s.sketches.as_mut().unwrap().identity.as_mut().unwrap().dim = 8;
        bad.push(s);
        // Shapes that would have the restore allocate terabytes are refused before.
        let mut s = good.clone();
        let k = s.sketches.as_mut().unwrap();
        k.identity.as_mut().unwrap().dim = 1 << 40;
        k.gradient.as_mut().unwrap().dim = 1 << 40;
        bad.push(s);
        let mut s = good.clone();
        s.sketches.as_mut().unwrap().gradient.as_mut().unwrap().ell = 1 << 15;
        bad.push(s);
        let mut s = good.clone();
        s.alerts.as_mut().unwrap().norms.push(f64::NAN);
        bad.push(s);
        let mut s = good.clone();
        s.run_id = "../etc".into();
        bad.push(s);
        let n = bad.len();
        let mut restarted = Live::new(cfg, Arc::new(CollectorMetrics::default()));
        let r = restarted.restore(bad);
        assert_eq!((r.restored, r.refused.len()), (0, n));
        assert!(restarted.runs.is_empty());
        assert_eq!(restarted.restore(vec![good]).restored, 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(1500))]

        /// A checkpoint edited inside its protobuf body, its checksum made to match (as a
        /// bug, not a disk, would write it), is refused or restored, never a panic; what is
        /// restored observes further steps.
        #[test]
        fn edited_checkpoints_are_refused_or_restored(
            edits in proptest::collection::vec((0u8..6, 0usize..1 << 14, 0u8..=255), 1..6),
        ) {
            use gradtel_proto::mutate::{Edit, apply};
            use prost::Message;
            let steps = || {
                let mut rng = SplitMix64::new(2);
                (0..14).map(|s| step_of(s, &mut rng)).collect::<Vec<Assembly>>()
            };
            static GOOD: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let body = GOOD.get_or_init(|| {
                let mut cfg = FileConfig::default();
                cfg.live.fd_ell = 4;
                let mut live = Live::new(cfg, Arc::new(CollectorMetrics::default()));
                observe_all(&mut live, &steps()[..12]);
                live.state("r", 0).unwrap().encode_to_vec()
            });
            let edits: Vec<Edit> = edits.into_iter().map(|(k, at, b)| Edit::from_parts(k, at, b)).collect();
            let edited = apply(body, &edits);
            let mut cfg = FileConfig::default();
            cfg.live.fd_ell = 4;
            let mut live = Live::new(cfg, Arc::new(CollectorMetrics::default()));
            if let Ok(state) = checkpoint::unframe(&checkpoint::frame_body(&edited)) {
                let r = live.restore(vec![state]);
                proptest::prop_assert_eq!(r.restored + r.refused.len() + r.surplus.len(), 1);
                observe_all(&mut live, &steps()[12..]);
            }
        }
    }

    #[test]
    fn column_wise_and_by_coordinate_paths_agree() {
        let (aligned, it, sgn) = run(false);
        let (pieces, it2, sgn2) = run(true);
        assert_eq!((it, sgn), (48, 48));
        assert_eq!((it2, sgn2), (48, 48));
        assert!(aligned.sgn.iter().any(|r| r.scope == "b.w"));
        assert_eq!(aligned.sgn, pieces.sgn);
        assert_eq!(aligned.tails, pieces.tails);
        // The windows were evaluated (iteration-wise and SGN rows per tensor and the model).
        for object in ["iteration", "sgn"] {
            assert!(
                aligned
                    .tails
                    .iter()
                    .any(|r| r.object == object && r.scope == "a.w")
            );
        }
        assert_eq!(aligned.coords.len(), 80 * 3 * 48);
    }
}
