//! The collector's owner of estimation state: step assembly, the live estimators and the
//! Parquet sink.
//!
//! New reports arrive from the durability stage ([`crate::durable`]), already logged or being
//! logged. A tick releases straggling steps and rolls files; file writes run on the blocking
//! pool while the pipeline goes on assembling (one write per run at a time): all tables of a
//! write are committed together in the publication journal ([`crate::journal`]), and each
//! write's reports are then reported back so their log segments can be deleted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::CollectorConfig;
use crate::assembler::{Assembler, Assembly};
use crate::journal::{self, Logged};
use crate::live::Live;
use crate::live::checkpoint::{self, CheckpointError};
use crate::metrics::CollectorMetrics;
use crate::report::Report;
use crate::sink::{self, Buffer, Sink};
use crate::tables::{Tables, steps};

// Reports go unboxed: a box made on a runtime thread and freed on the pipeline's costs the
// allocator's cross-thread slow path (see [`Back::Spent`]) for every report.
#[allow(clippy::large_enum_variant)]
pub enum Inbound {
    Report(Report),
    /// Sent once at start, before any replayed report: the (run, rank, shard, step) of every
    /// report a previous process published (a report for one of those steps is late, and a
    /// rank going back below them was resumed).
    Released(Vec<(Arc<str>, u32, u32, u64)>),
    /// Sent once at start, after the replayed reports (the replay is over): the runs the
    /// write-ahead log held reports of, whose crashed writes' temporary files are deleted (not
    /// this process's).
    RemoveTemps(Vec<Arc<str>>),
    /// Release every pending step, write every buffer, then answer.
    Drain(oneshot::Sender<()>),
}

pub struct Pipeline {
    pub out: PathBuf,
    /// Where the publication journals live (the write-ahead log's directory).
    pub wal_dir: PathBuf,
    pub instance: String,
    pub assembler: Assembler,
    pub sink: Sink,
    pub metrics: Arc<CollectorMetrics>,
    pub live: Live,
    files: u64,
    /// Writes on the blocking pool, at most one per run.
    writes: JoinSet<Flushed>,
    in_flight: HashSet<Arc<str>>,
    /// Log segments of published reports, and reports done with, back to the durability stage.
    back: mpsc::UnboundedSender<Back>,
    uploads: Option<mpsc::UnboundedSender<PathBuf>>,
}

/// What the pipeline hands back to the durability stage.
pub enum Back {
    /// The log segments of reports whose rows are published (one entry per report).
    Published(Vec<u64>),
    /// Reports whose step is merged and whose rows are built: dropped (their vectors recycled)
    /// by the durability stage, which runs beside the streams that decoded them. Freed here,
    /// each of their allocations would go back to another thread's allocator: glibc then makes
    /// the two threads wait on each other's arena lock, and every allocator takes its slow
    /// path on both sides.
    Spent(Vec<Report>),
}

/// What a write did: its result, what it published or dropped, and the rows not yet published
/// (kept for a retry).
type WriteOutcome = (Result<(), sink::SinkError>, Written, Tables);

/// What became of the live-state checkpoint that went with a write: the CPU time writing it
/// took, or why it was not written.
type CheckpointOutcome = Result<Duration, CheckpointError>;

/// The tables a write is done with.
#[derive(Default)]
struct Written {
    /// (bytes, rows, path) of each published file.
    published: Vec<(u64, usize, PathBuf)>,
    /// Tables whose rows could not be encoded: (table, rows, why).
    unencodable: Vec<(&'static str, usize, sink::SinkError)>,
    /// Committed in the journal, but a rename or directory sync failed: the next start
    /// finishes it from the journal, which must stay until then.
    unfinished: Option<sink::SinkError>,
    /// The run's live-state checkpoint, when one went with the write and the write was
    /// committed.
    checkpoint: Option<CheckpointOutcome>,
}

/// A finished write: the run, what happened with its reports, and the state version and copy
/// time of the live-state checkpoint that went with it, if one did.
struct Flushed {
    run: Arc<str>,
    started: Instant,
    written: Result<(WriteOutcome, Vec<Logged>), tokio::task::JoinError>,
    checkpoint: Option<(u64, Instant, Duration)>,
}

/// Write each table of a run's rows as one file (all under the same `name`, in their own
/// partitions), publishing them all or none: every file is written and synced under its
/// temporary name, the write is committed in the journal of each log segment holding one of
/// `reports`, and only then are the files renamed into place. A failure before the commit
/// removes the temporary files and leaves `rows` whole for a retry; rows that cannot be
/// encoded would fail the same way on every retry, holding the run's acks (and its log)
/// forever: they are dropped, and returned to be counted and logged.
///
/// `state`, the run's live state holding exactly these rows' steps, is committed with the
/// tables: written under its pending name before the journal commit and renamed into place
/// with the files ([`checkpoint::stage`]), so that after a crash the checkpoint and the
/// published rows agree whatever the moment (a failure to write it only leaves the run's
/// previous checkpoint).
fn write_tables(
    out: &Path,
    wal_dir: &Path,
    run: &str,
    name: &str,
    mut rows: Tables,
    reports: &[Logged],
    state: Option<&checkpoint::RunState>,
) -> WriteOutcome {
    let mut done = Written::default();
    let mut staged: Vec<(&'static str, sink::Staged, usize)> = Vec::new();
    let discard = |staged: &[(&str, sink::Staged, usize)]| {
        for (_, s, _) in staged {
            let _ = std::fs::remove_file(&s.tmp);
        }
    };
    for table in rows.names() {
        let batches = match rows
            .batches(table)
            .map_err(sink::SinkError::from)
            .and_then(|b| sink::check_schema(&b).map(|()| b))
        {
            Ok(b) => b,
            Err(e) => {
                done.unencodable.push((table, rows.len_of(table), e));
                rows.clear(table);
                continue;
            }
        };
        let n = batches.iter().map(|b| b.num_rows()).sum();
        match sink::partition_dir(out, run, table)
            .and_then(|d| sink::write_temp(&d, name, &batches))
        {
            Ok(s) => staged.push((table, s, n)),
            Err(e) => {
                discard(&staged);
                return (Err(e), done, rows);
            }
        }
    }
    let cpu = gradtel_telemetry::process::thread_cpu_time;
    let started = cpu();
    let pending = state.map(|st| checkpoint::stage(&checkpoint::dir(wal_dir), run, name, st));
    let staging = cpu().saturating_sub(started);
    if let Err(e) = commit(out, wal_dir, run, &staged, reports) {
        discard(&staged);
        if let Some(Ok(p)) = pending {
            checkpoint::discard(p);
        }
        return (Err(e), done, rows);
    }
    let mut dirs: Vec<&Path> = Vec::new();
    for (table, s, n) in &staged {
        rows.clear(table);
        match sink::publish(s) {
            Ok(()) => done.published.push((s.size, *n, s.dest.clone())),
            Err(e) => {
                done.unfinished.get_or_insert(e);
            }
        }
        if let Some(d) = s.dest.parent()
            && !dirs.contains(&d)
        {
            dirs.push(d);
        }
    }
    for d in dirs {
        if let Err(e) = sink::sync_dir(d) {
            done.unfinished.get_or_insert(e);
        }
    }
    // Committed: even when a rename above failed, the next start finishes this write, and
    // this checkpoint with it.
    done.checkpoint = pending.map(|p| {
        let started = cpu();
        p.and_then(checkpoint::publish)
            .map(|()| staging + cpu().saturating_sub(started))
    });
    (Ok(()), done, rows)
}

/// The commit point of a write: one record naming its files and reports, in the journal of
/// the newest log segment holding one of the reports (rows that come from no logged report
/// need none). One record, so a failed append commits nothing; the journal outlives every
/// older segment still in the log (`Wal::prune_journals`), so replay sees it wherever the
/// reports are logged.
fn commit(
    out: &Path,
    wal_dir: &Path,
    run: &str,
    staged: &[(&str, sink::Staged, usize)],
    reports: &[Logged],
) -> Result<(), sink::SinkError> {
    let Some(newest) = reports.iter().map(|l| l.segment).max() else {
        return Ok(());
    };
    let rel = |p: &Path| {
        p.strip_prefix(out)
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    };
    let c = journal::Commit {
        run: run.to_string(),
        reports: reports.iter().map(|l| l.report).collect(),
        files: staged
            .iter()
            .map(|(_, s, _)| (rel(&s.tmp), rel(&s.dest)))
            .collect(),
    };
    Ok(journal::append(wal_dir, newest, &c)?)
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Pipeline {
    /// A pipeline that sends the log segments of published reports, and the reports it is
    /// done with, on `back`.
    pub fn new(
        config: &CollectorConfig,
        instance: String,
        metrics: Arc<CollectorMetrics>,
        back: mpsc::UnboundedSender<Back>,
    ) -> Self {
        Self {
            out: config.out.clone(),
            wal_dir: config.wal_dir(),
            instance,
            assembler: Assembler::new(config.straggler_timeout, config.max_pending_steps),
            sink: Sink::new(config.roll_rows, config.roll_interval),
            live: Live::new(config.file.clone(), metrics.clone()),
            metrics,
            files: 0,
            writes: JoinSet::new(),
            in_flight: HashSet::new(),
            back,
            uploads: None,
        }
    }

    /// Also name every published file on `uploads` (the object-store uploader's queue).
    pub fn with_uploads(mut self, uploads: mpsc::UnboundedSender<PathBuf>) -> Self {
        self.uploads = Some(uploads);
        self
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Inbound>, tick: Duration) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Inbound::Report(r)) => self.on_report(r),
                    Some(Inbound::Released(steps)) => {
                        self.assembler.begin_replay();
                        for (run, rank, shard, step) in &steps {
                            self.assembler.mark_published(run, *rank, *shard, *step);
                        }
                    }
                    Some(Inbound::RemoveTemps(runs)) => {
                        self.assembler.end_replay();
                        self.remove_temps(&runs);
                    }
                    Some(Inbound::Drain(done)) => {
                        let all = self.assembler.drain();
                        self.on_assemblies(all);
                        self.settle().await;
                        for run in self.sink.runs() {
                            self.start_flush(run);
                        }
                        self.settle().await;
                        self.checkpoint_published().await;
                        let _ = done.send(());
                    }
                    None => break,
                },
                _ = ticker.tick() => {
                    let now = Instant::now();
                    let expired = self.assembler.expire(now);
                    self.on_assemblies(expired);
                    for run in self.sink.due(now) {
                        self.start_flush(run);
                    }
                }
                Some(done) = self.writes.join_next(), if !self.writes.is_empty() => match done {
                    Ok(f) => self.finish_flush(f),
                    Err(e) => tracing::error!(error = %e, "flush task failed"),
                },
            }
            self.metrics
                .pending_steps
                .set(self.assembler.pending_len() as i64);
        }
    }

    fn remove_temps(&self, runs: &[Arc<str>]) {
        for run in runs {
            let removed = sink::remove_temp_files(&self.out, run, &self.instance);
            if removed > 0 {
                tracing::info!(run = %run, files = removed, "temporary files of writes a crash cut short deleted");
            }
        }
    }

    fn on_report(&mut self, mut r: Report) {
        // Out of the queues: its bytes are the pending steps' now (bounded by their count).
        r.held = None;
        let done = self.assembler.add(r);
        for resume in self.assembler.take_resumes() {
            self.metrics.trajectories_resumed.inc();
            if let Some(tables) = self.live.resumed(&resume, unix_nanos()) {
                self.sink.append(resume.run_id, tables, Vec::new());
            }
        }
        self.on_assemblies(done);
    }

    fn on_assemblies(&mut self, done: Vec<Assembly>) {
        let now = unix_nanos();
        for mut a in done {
            self.metrics.steps_assembled.inc();
            if a.late {
                self.metrics.reports_late.inc();
                tracing::warn!(run = %a.run_id, step = a.step, rank = a.parts[0].key.rank, "late report written as its own row");
            } else if (a.parts.len() as u64) < u64::from(a.world_size) * u64::from(a.shard_count) {
                self.metrics.steps_incomplete.inc();
                tracing::warn!(run = %a.run_id, step = a.step, got = a.parts.len(), "step written with missing ranks");
            }
            let merged = std::mem::take(&mut a.hists);
            let (mut rows, errors) = steps::build_rows(&a, merged, now);
            if errors > 0 {
                self.metrics.merge_errors.add(errors);
                tracing::error!(run = %a.run_id, step = a.step, errors, "summaries left out of a merge");
            }
            let mut tables = self.live.observe(&a, &mut rows, now);
            for r in &mut tables.tails {
                r.trajectory = a.trajectory;
            }
            for r in &mut tables.sgn {
                r.trajectory = a.trajectory;
            }
            tables.steps = rows;
            self.sink.append(a.run_id.clone(), tables, a.reports);
            let _ = self.back.send(Back::Spent(a.parts));
        }
    }

    /// Start writing a run's buffered rows on the blocking pool; the pipeline keeps assembling
    /// while the files are written, and [`Pipeline::finish_flush`] sends the acks.
    fn start_flush(&mut self, run: Arc<str>) {
        if self.in_flight.contains(&run) {
            return;
        }
        let Some(buf) = self.sink.take(&run) else {
            return;
        };
        // Reports without rows still go through a write: their commit keeps a replay from
        // making rows of them.
        self.files += 1;
        let name = format!(
            "part-{}-{}-{:06}.parquet",
            unix_nanos() / 1_000_000,
            self.instance,
            self.files
        );
        let (out, wal_dir) = (self.out.clone(), self.wal_dir.clone());
        let run_for_write = run.clone();
        let rows = buf.rows;
        self.in_flight.insert(run.clone());
        let reports = buf.reports;
        // Taken now, this state holds exactly the steps whose rows this write publishes (any
        // earlier write of the run is done), and it is committed with them.
        let taken = self.live.checkpoint(&run, false, unix_nanos());
        let checkpoint = taken.as_ref().map(|t| (t.version, t.at, t.copy));
        let write = move || {
            let state = taken.as_ref().map(|t| &t.state);
            let w = write_tables(&out, &wal_dir, &run_for_write, &name, rows, &reports, state);
            (w, reports)
        };
        let started = Instant::now();
        self.writes.spawn(async move {
            let written = tokio::task::spawn_blocking(write).await;
            Flushed {
                run,
                started,
                written,
                checkpoint,
            }
        });
    }

    fn finish_flush(&mut self, f: Flushed) {
        let Flushed {
            run,
            started,
            written,
            checkpoint,
        } = f;
        self.in_flight.remove(&run);
        let ((result, mut done, rows), reports) = match written {
            Ok(x) => x,
            Err(e) => {
                // The blocking task panicked or was cancelled; the rows went with it. Their
                // segments stay in the write-ahead log, so the next start replays them.
                self.metrics.write_errors.inc();
                tracing::error!(error = %e, run = %run, "parquet writer task failed; its reports stay in the write-ahead log");
                return;
            }
        };
        if let (Some((version, at, copy)), Some(saved)) = (checkpoint, done.checkpoint.take()) {
            self.on_checkpointed(&run, version, at, saved.map(|write| copy + write));
        }
        for (table, n, e) in &done.unencodable {
            self.metrics.rows_unencodable.add(*n as u64);
            tracing::error!(run = %run, table, rows = n, error = %e, "rows that cannot be encoded dropped");
        }
        let published = done.published;
        for (size, n, path) in &published {
            self.metrics.files_written.inc();
            self.metrics.bytes_written.add(*size);
            self.metrics.rows_written.add(*n as u64);
            // Whatever else happened to the write, this file is in place: upload it.
            if let Some(up) = &self.uploads {
                let _ = up.send(path.clone());
            }
        }
        match result {
            Ok(()) if done.unfinished.is_some() => {
                // Committed: the rows must not be written again, and the journal that lets the
                // next start finish the renames must stay, so the reports are not released.
                self.metrics.write_errors.inc();
                if let Some(e) = &done.unfinished {
                    tracing::error!(error = %e, run = %run, "parquet files committed but not all renamed into place; the next start publishes them from the journal");
                }
            }
            Ok(()) => {
                self.sink.recycle(rows);
                self.metrics.flush.record(started.elapsed());
                tracing::debug!(run = %run, files = published.len(), "parquet files published");
                let _ = self
                    .back
                    .send(Back::Published(reports.iter().map(|l| l.segment).collect()));
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                tracing::error!(error = %e, run = %run, "parquet write failed; will retry");
                self.sink.restore(
                    run,
                    // Retried a roll interval from now: with no new rows (an intake paused
                    // until writes catch up) nothing else would make it due.
                    Buffer {
                        rows,
                        reports,
                        since: Some(Instant::now()),
                    },
                );
            }
        }
    }

    /// A checkpoint of `version` of `run`'s state, taken `at`, was written at a cost of that
    /// much CPU time, or not.
    fn on_checkpointed(&mut self, run: &str, version: u64, at: Instant, saved: CheckpointOutcome) {
        match saved {
            Ok(cost) => {
                tracing::debug!(run = %run, cpu_s = cost.as_secs_f64(), "live-state checkpoint written");
                self.live.checkpointed(run, version, at, cost);
                self.metrics.live_checkpoints_written.inc();
            }
            Err(e) => {
                self.metrics.live_checkpoint_errors.inc();
                tracing::error!(error = %e, run = %run, "live-state checkpoint not written; the previous one stays");
            }
        }
    }

    /// Checkpoint every run whose live state changed and whose rows are all published (no
    /// write in flight, nothing buffered): after a drain, the state a restart continues from.
    async fn checkpoint_published(&mut self) {
        let buffered: HashSet<Arc<str>> = self.sink.runs().into_iter().collect();
        let now = unix_nanos();
        let due: Vec<(Arc<str>, checkpoint::Taken)> = self
            .live
            .unsaved()
            .into_iter()
            .filter(|run| !buffered.contains(run) && !self.in_flight.contains(run))
            .filter_map(|run| Some((run.clone(), self.live.checkpoint(&run, true, now)?)))
            .collect();
        if due.is_empty() {
            return;
        }
        let dir = checkpoint::dir(&self.wal_dir);
        let written = tokio::task::spawn_blocking(move || {
            due.into_iter()
                .map(|(run, t)| {
                    let cpu = gradtel_telemetry::process::thread_cpu_time;
                    let started = cpu();
                    let saved = checkpoint::save(&dir, &run, &t.state)
                        .map(|()| t.copy + cpu().saturating_sub(started));
                    (run, t.version, t.at, saved)
                })
                .collect::<Vec<_>>()
        })
        .await;
        match written {
            Ok(all) => {
                for (run, version, at, saved) in all {
                    self.on_checkpointed(&run, version, at, saved);
                }
            }
            Err(e) => tracing::error!(error = %e, "live-state checkpoint task failed"),
        }
    }

    /// Wait for every write in flight.
    async fn settle(&mut self) {
        while let Some(done) = self.writes.join_next().await {
            match done {
                Ok(f) => self.finish_flush(f),
                Err(e) => tracing::error!(error = %e, "flush task failed"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::steps::build_rows;

    fn step_rows() -> Tables {
        let a = Assembly {
            run_id: "r".into(),
            step: 1,
            world_size: 1,
            shard_count: 1,
            parts: vec![Report::for_test(0, 1, 1, &[("fc.w", &[1.0, -2.0][..])])],
            hists: Default::default(),
            reports: vec![],
            late: false,
            trajectory: 0,
        };
        Tables {
            steps: build_rows(&a, Default::default(), 0).0,
            ..Tables::default()
        }
    }

    fn logged(segment: u64, seq: u64) -> Logged {
        Logged {
            segment,
            report: journal::Published {
                rank: 0,
                shard: 0,
                epoch: 1,
                seq,
                step: 1,
            },
        }
    }

    /// Steps and alerts rows: two tables, written in that order.
    fn two_tables() -> Tables {
        let mut rows = step_rows();
        rows.alerts.push(crate::tables::alerts::AlertRow {
            run_id: "r".into(),
            step: 1,
            kind: crate::live::alerts::kind::STRAGGLER,
            ..Default::default()
        });
        rows
    }

    fn files_under(dir: &Path) -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    let p = e.path();
                    found.push(p.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        found.sort();
        found
    }

    #[test]
    fn a_write_commits_its_reports_in_the_newest_segments_journal_then_publishes() {
        let (out, wal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let reports = [logged(3, 1), logged(4, 2), logged(3, 3)];
        let state = live_state(4);
        let (result, done, left) = write_tables(
            out.path(),
            wal.path(),
            "r",
            "p.parquet",
            two_tables(),
            &reports,
            Some(&state),
        );
        assert!(result.is_ok() && done.unfinished.is_none() && left.is_empty());
        assert_eq!(done.published.len(), 2);
        assert!(matches!(done.checkpoint, Some(Ok(_))));
        let ckpt = checkpoint::dir(wal.path());
        assert_eq!(files_under(&ckpt), ["run=r.live"]);
        assert_eq!(checkpoint::load(&ckpt).0, vec![state]);
        assert_eq!(
            files_under(out.path()),
            [
                "run=r/table=alerts/p.parquet",
                "run=r/table=steps/p.parquet"
            ]
        );
        let files = vec![
            (
                "run=r/table=steps/.p.parquet.tmp".to_string(),
                "run=r/table=steps/p.parquet".to_string(),
            ),
            (
                "run=r/table=alerts/.p.parquet.tmp".to_string(),
                "run=r/table=alerts/p.parquet".to_string(),
            ),
        ];
        assert_eq!(
            journal::segments(wal.path()),
            vec![4],
            "one record, one journal"
        );
        let (four, torn) = journal::read(wal.path(), 4).unwrap();
        assert!(!torn);
        assert_eq!(four.len(), 1);
        assert_eq!(four[0].run, "r");
        assert_eq!(four[0].reports, reports.map(|l| l.report));
        assert_eq!(four[0].files, files);
    }

    #[test]
    fn a_write_failing_before_its_commit_leaves_nothing_and_keeps_its_rows() {
        let (out, wal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // The alerts partition cannot be made (a file has its name), after steps was written.
        std::fs::create_dir_all(out.path().join("run=r")).unwrap();
        std::fs::write(out.path().join("run=r").join("table=alerts"), b"").unwrap();
        let rows = two_tables();
        let n = rows.len();
        let (result, done, left) = write_tables(
            out.path(),
            wal.path(),
            "r",
            "p.parquet",
            rows,
            &[logged(3, 1)],
            Some(&live_state(4)),
        );
        assert!(result.is_err());
        assert!(done.published.is_empty());
        assert!(done.checkpoint.is_none());
        assert_eq!(left.len(), n, "every row kept for the retry");
        assert_eq!(files_under(out.path()), ["run=r/table=alerts"]);
        assert!(journal::segments(wal.path()).is_empty(), "no commit");
        assert!(checkpoint::load(&checkpoint::dir(wal.path())).0.is_empty());
    }

    /// A live state of run `r` that has seen `steps` steps.
    fn live_state(steps: u64) -> checkpoint::RunState {
        checkpoint::RunState {
            version: checkpoint::VERSION,
            run_id: "r".into(),
            steps_seen: steps,
            ..Default::default()
        }
    }

    #[test]
    fn a_checkpoint_is_put_in_place_at_the_next_start_exactly_when_its_write_was_committed() {
        let wal = tempfile::tempdir().unwrap();
        let ckpt = checkpoint::dir(wal.path());
        checkpoint::save(&ckpt, "r", &live_state(1)).unwrap();
        // Writes the process died in, after staging their checkpoints: `a` and `c` (of run
        // `r`) were committed, in that order; `b` (of `r`) and `d` (of run `q`) were not.
        let mut commits = Vec::new();
        for (write, steps, committed) in [("a", 2, true), ("b", 3, false), ("c", 4, true)] {
            let name = format!("part-{write}.parquet");
            checkpoint::stage(&ckpt, "r", &name, &live_state(steps)).unwrap();
            if committed {
                commits.push(journal::Commit {
                    run: "r".into(),
                    reports: vec![logged(1, steps).report],
                    files: vec![(
                        format!("run=r/table=steps/.{name}.tmp"),
                        format!("run=r/table=steps/{name}"),
                    )],
                });
            }
        }
        let other = checkpoint::RunState {
            run_id: "q".into(),
            ..live_state(9)
        };
        checkpoint::stage(&ckpt, "q", "part-c.parquet", &other).unwrap();
        // Not yet in place: the run's last checkpoint is still the one before them.
        assert_eq!(checkpoint::load(&ckpt).0, vec![live_state(1)]);
        assert_eq!(checkpoint::settle_pending(&ckpt, &commits).unwrap(), 2);
        assert_eq!(files_under(&ckpt), ["run=r.live"]);
        assert_eq!(checkpoint::load(&ckpt).0, vec![live_state(4)]);
        // Only uncommitted ones: all deleted, the last in place stays.
        checkpoint::stage(&ckpt, "r", "part-e.parquet", &live_state(5)).unwrap();
        assert_eq!(checkpoint::settle_pending(&ckpt, &commits).unwrap(), 0);
        assert_eq!(checkpoint::load(&ckpt).0, vec![live_state(4)]);
        assert_eq!(files_under(&ckpt), ["run=r.live"]);
    }

    #[test]
    fn a_commit_whose_renames_a_crash_cut_short_is_published_at_the_next_start() {
        let (out, wal) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        // What a write leaves when the process dies between its commit and its renames.
        let rows = two_tables();
        let mut staged = Vec::new();
        for table in rows.names() {
            let dir = sink::partition_dir(out.path(), "r", table).unwrap();
            let s = sink::write_temp(&dir, "p.parquet", &rows.batches(table).unwrap()).unwrap();
            staged.push((table, s, 1));
        }
        commit(out.path(), wal.path(), "r", &staged, &[logged(1, 1)]).unwrap();
        assert!(files_under(out.path()).iter().all(|f| f.ends_with(".tmp")));

        let (_, _, recovered) = crate::wal::Wal::open(wal.path(), 1 << 20).unwrap();
        assert_eq!(recovered.commits.len(), 1);
        assert_eq!(
            journal::roll_forward(out.path(), &recovered.commits).unwrap(),
            2
        );
        assert_eq!(
            files_under(out.path()),
            [
                "run=r/table=alerts/p.parquet",
                "run=r/table=steps/p.parquet"
            ]
        );
        // The journal outlived its segment (never written): it is retired like one.
        let (mut wal_side, _, _) = crate::wal::Wal::open(wal.path(), 1 << 20).unwrap();
        assert_eq!(wal_side.retire(None), vec![1]);
    }

    #[test]
    fn temporary_files_of_a_crashed_write_are_deleted() {
        let out = tempfile::tempdir().unwrap();
        let dir = sink::partition_dir(out.path(), "r", "steps").unwrap();
        let rows = step_rows();
        let batches = rows.batches(steps::TABLE).unwrap();
        sink::write_temp(&dir, "part-1-a-000001.parquet", &batches).unwrap();
        sink::write_file(&dir, "part-1-a-000002.parquet", &batches).unwrap();
        // This process's own write in flight stays.
        sink::write_temp(&dir, "part-2-b-000001.parquet", &batches).unwrap();
        assert_eq!(sink::remove_temp_files(out.path(), "other", "b"), 0);
        assert_eq!(sink::remove_temp_files(out.path(), "r", "b"), 1);
        assert_eq!(
            files_under(out.path()),
            [
                "run=r/table=steps/.part-2-b-000001.parquet.tmp",
                "run=r/table=steps/part-1-a-000002.parquet"
            ]
        );
    }

    #[test]
    fn rows_that_cannot_be_encoded_are_dropped_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let rows = step_rows();
        let n = rows.steps.len();
        let (result, done, left) =
            write_tables(dir.path(), dir.path(), "r", "p.parquet", rows, &[], None);
        assert!(result.is_ok());
        assert_eq!(done.published.len(), 1);
        assert_eq!(done.published[0].1, n);
        assert!(done.unencodable.is_empty() && left.is_empty());

        let mut rows = step_rows();
        rows.poisoned = Some(steps::TABLE);
        let (result, done, left) =
            write_tables(dir.path(), dir.path(), "r", "q.parquet", rows, &[], None);
        assert!(result.is_ok(), "a retry would fail the same way");
        assert!(done.published.is_empty() && left.is_empty());
        assert_eq!(done.unencodable.len(), 1);
        assert_eq!(
            (done.unencodable[0].0, done.unencodable[0].1),
            (steps::TABLE, n)
        );
        let files = std::fs::read_dir(dir.path().join("run=r").join("table=steps"))
            .unwrap()
            .count();
        assert_eq!(files, 1, "nothing written for the dropped rows");
    }
}
