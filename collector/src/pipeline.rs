//! The collector's owner of estimation state: step assembly, the live estimators and the
//! Parquet sink.
//!
//! New reports arrive from the durability stage ([`crate::durable`]), already logged or being
//! logged. A tick releases straggling steps and rolls files; file writes run on the blocking
//! pool while the pipeline goes on assembling (one write per run at a time), and each
//! published file's reports are reported back so their log segments can be deleted.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::CollectorConfig;
use crate::assembler::{Assembler, Assembly};
use crate::live::Live;
use crate::metrics::CollectorMetrics;
use crate::report::Report;
use crate::sink::{self, Buffer, Sink};
use crate::tables::{Tables, steps};

pub enum Inbound {
    Report(Box<Report>),
    /// Release every pending step, write every buffer, then answer.
    Drain(oneshot::Sender<()>),
}

pub struct Pipeline {
    pub out: PathBuf,
    pub instance: String,
    pub assembler: Assembler,
    pub sink: Sink,
    pub metrics: Arc<CollectorMetrics>,
    pub live: Live,
    files: u64,
    /// Writes on the blocking pool, at most one per run.
    writes: JoinSet<Flushed>,
    in_flight: HashSet<Arc<str>>,
    /// Log segments of published reports, back to the durability stage.
    published: mpsc::UnboundedSender<Vec<u64>>,
}

/// What a write did: its result, what it published or dropped, and the rows not yet published
/// (kept for a retry).
type WriteOutcome = (Result<(), sink::SinkError>, Written, Tables);

/// The tables a write is done with.
#[derive(Default)]
struct Written {
    /// (bytes, rows) of each published file.
    published: Vec<(u64, usize)>,
    /// Tables whose rows could not be encoded: (table, rows, why).
    unencodable: Vec<(&'static str, usize, sink::SinkError)>,
}

/// A finished write: the run, the log segments of its reports, and what happened.
struct Flushed {
    run: Arc<str>,
    segments: Vec<u64>,
    started: Instant,
    written: Result<WriteOutcome, tokio::task::JoinError>,
}

/// Write each table of a run's rows as one file (all under the same `name`, in their own
/// partitions). A table whose file is published leaves `rows` at once, so a retry after a
/// failure never writes its rows twice; the acks wait until every table is published. Rows
/// that cannot be encoded would fail the same way on every retry, holding the run's acks (and
/// its log) forever: they are dropped, and returned to be counted and logged.
fn write_tables(out: &Path, run: &str, name: &str, mut rows: Tables) -> WriteOutcome {
    let mut done = Written::default();
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
        let result = (|| {
            let dir = sink::partition_dir(out, run, table)?;
            let (_, size) = sink::write_file(&dir, name, &batches)?;
            Ok::<_, sink::SinkError>((size, batches.iter().map(|b| b.num_rows()).sum()))
        })();
        match result {
            Ok(p) => {
                rows.clear(table);
                done.published.push(p);
            }
            Err(e) => return (Err(e), done, rows),
        }
    }
    (Ok(()), done, rows)
}

fn unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

impl Pipeline {
    /// A pipeline that reports the log segments of published reports on `published`.
    pub fn new(
        config: &CollectorConfig,
        instance: String,
        metrics: Arc<CollectorMetrics>,
        published: mpsc::UnboundedSender<Vec<u64>>,
    ) -> Self {
        Self {
            out: config.out.clone(),
            instance,
            assembler: Assembler::new(config.straggler_timeout, config.max_pending_steps),
            sink: Sink::new(config.roll_rows, config.roll_interval),
            live: Live::new(config.file.clone(), metrics.clone()),
            metrics,
            files: 0,
            writes: JoinSet::new(),
            in_flight: HashSet::new(),
            published,
        }
    }

    pub async fn run(mut self, mut rx: mpsc::Receiver<Inbound>, tick: Duration) {
        let mut ticker = tokio::time::interval(tick);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(Inbound::Report(r)) => self.on_report(*r),
                    Some(Inbound::Drain(done)) => {
                        let all = self.assembler.drain();
                        self.on_assemblies(all);
                        self.settle().await;
                        for run in self.sink.runs() {
                            self.start_flush(run);
                        }
                        self.settle().await;
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

    fn on_report(&mut self, r: Report) {
        let done = self.assembler.add(r);
        self.on_assemblies(done);
    }

    fn on_assemblies(&mut self, done: Vec<Assembly>) {
        let now = unix_nanos();
        for a in done {
            self.metrics.steps_assembled.inc();
            if a.late {
                self.metrics.reports_late.inc();
                tracing::warn!(run = %a.run_id, step = a.step, rank = a.parts[0].key.rank, "late report written as its own row");
            } else if (a.parts.len() as u64) < u64::from(a.world_size) * u64::from(a.shard_count) {
                self.metrics.steps_incomplete.inc();
                tracing::warn!(run = %a.run_id, step = a.step, got = a.parts.len(), "step written with missing ranks");
            }
            let (mut rows, errors) = steps::build_rows(&a, now);
            if errors > 0 {
                self.metrics.merge_errors.add(errors);
                tracing::error!(run = %a.run_id, step = a.step, errors, "summaries left out of a merge");
            }
            let mut tables = self.live.observe(&a, &mut rows, now);
            tables.steps = rows;
            self.sink.append(a.run_id.clone(), tables, a.segments);
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
        if buf.rows.is_empty() {
            let _ = self.published.send(buf.segments);
            return;
        }
        self.files += 1;
        let name = format!(
            "part-{}-{}-{:06}.parquet",
            unix_nanos() / 1_000_000,
            self.instance,
            self.files
        );
        let out = self.out.clone();
        let run_for_write = run.clone();
        let rows = buf.rows;
        self.in_flight.insert(run.clone());
        let write = move || write_tables(&out, &run_for_write, &name, rows);
        let segments = buf.segments;
        let started = Instant::now();
        self.writes.spawn(async move {
            let written = tokio::task::spawn_blocking(write).await;
            Flushed {
                run,
                segments,
                started,
                written,
            }
        });
    }

    fn finish_flush(&mut self, f: Flushed) {
        let Flushed {
            run,
            segments,
            started,
            written,
        } = f;
        self.in_flight.remove(&run);
        let (result, done, rows) = match written {
            Ok(x) => x,
            Err(e) => {
                // The blocking task panicked or was cancelled; the rows went with it. Their
                // segments stay in the write-ahead log, so the next start replays them.
                self.metrics.write_errors.inc();
                tracing::error!(error = %e, run = %run, "parquet writer task failed; its reports stay in the write-ahead log");
                return;
            }
        };
        for (table, n, e) in &done.unencodable {
            self.metrics.rows_unencodable.add(*n as u64);
            tracing::error!(run = %run, table, rows = n, error = %e, "rows that cannot be encoded dropped");
        }
        let published = done.published;
        for (size, n) in &published {
            self.metrics.files_written.inc();
            self.metrics.bytes_written.add(*size);
            self.metrics.rows_written.add(*n as u64);
        }
        match result {
            Ok(()) => {
                self.metrics.flush.record(started.elapsed());
                tracing::debug!(run = %run, files = published.len(), "parquet files published");
                let _ = self.published.send(segments);
            }
            Err(e) => {
                self.metrics.write_errors.inc();
                tracing::error!(error = %e, run = %run, "parquet write failed; will retry");
                self.sink.restore(
                    run,
                    Buffer {
                        rows,
                        segments,
                        ..Default::default()
                    },
                );
            }
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
            segments: vec![],
            late: false,
        };
        Tables {
            steps: build_rows(&a, 0).0,
            ..Tables::default()
        }
    }

    #[test]
    fn rows_that_cannot_be_encoded_are_dropped_not_retried() {
        let dir = tempfile::tempdir().unwrap();
        let rows = step_rows();
        let n = rows.steps.len();
        let (result, done, left) = write_tables(dir.path(), "r", "p.parquet", rows);
        assert!(result.is_ok());
        assert_eq!(done.published.len(), 1);
        assert_eq!(done.published[0].1, n);
        assert!(done.unencodable.is_empty() && left.is_empty());

        let mut rows = step_rows();
        rows.poisoned = Some(steps::TABLE);
        let (result, done, left) = write_tables(dir.path(), "r", "q.parquet", rows);
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
