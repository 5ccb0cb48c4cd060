//! The durability stage, between the Collect streams and the pipeline: deduplication, the
//! write-ahead log ([`crate::wal`]) and the acks.
//!
//! A new report is staged for the log and passed on to the pipeline at once. The log is synced
//! on the blocking pool, one commit at a time, each taking every report staged meanwhile (group
//! commit); a report is acknowledged when its commit is synced. This stage does no estimation,
//! so an ack waits for a sync, never for the live estimators or a Parquet file. The pipeline
//! reports back the log segments whose rows it has published, and finished segments are deleted.
//!
//! At start the records a previous process left are replayed: registered as durable (so an
//! agent's resend is answered DUPLICATE) and passed to the pipeline before any new report —
//! except those a publication journal ([`crate::journal`]) names, whose rows are published.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gradtel_proto::v1::ack;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use crate::acks::{AckRouter, Dedup, Seen, make_ack};
use crate::metrics::CollectorMetrics;
use crate::pipeline::{Back, Inbound};
use crate::report::{AgentKey, Report};
use crate::wal::{Record, Recovered, Wal, WalError, Writer};

/// Pause after a failed log commit before the next try.
const COMMIT_RETRY: Duration = Duration::from_millis(100);

pub struct Durable {
    pub dedup: Dedup,
    pub router: Arc<AckRouter>,
    pub metrics: Arc<CollectorMetrics>,
    pipeline: mpsc::Sender<Inbound>,
    wal: Wal,
    /// The log's file side; `None` while a commit holds it.
    writer: Option<Writer>,
    /// Records waiting for the next commit, and the acks they release.
    staged: Vec<Record>,
    staged_acks: Vec<(AgentKey, u64, Instant)>,
    /// Emptied lists of the last commit, for the next one to stage into.
    spare: (Vec<Record>, Vec<(AgentKey, u64, Instant)>),
    commit: JoinSet<Committed>,
    /// Lowest segment of a record in the commit in flight.
    committing_from: Option<u64>,
    /// After a failed commit, none is tried before this.
    commit_after: Option<Instant>,
    /// Most unpublished bytes before new reports are left waiting, and whether they are.
    max_unpublished: u64,
    paused: bool,
}

/// A finished commit.
struct Committed {
    writer: Writer,
    records: Vec<Record>,
    acks: Vec<(AgentKey, u64, Instant)>,
    started: Instant,
    result: Result<u64, WalError>,
}

impl Durable {
    pub fn new(
        router: Arc<AckRouter>,
        metrics: Arc<CollectorMetrics>,
        pipeline: mpsc::Sender<Inbound>,
        (wal, writer): (Wal, Writer),
        max_unpublished: u64,
    ) -> Self {
        Self {
            dedup: Dedup::default(),
            router,
            metrics,
            pipeline,
            wal,
            writer: Some(writer),
            staged: Vec::new(),
            staged_acks: Vec::new(),
            spare: (Vec::new(), Vec::new()),
            commit: JoinSet::new(),
            committing_from: None,
            commit_after: None,
            max_unpublished,
            paused: false,
        }
    }

    /// Replay `recovered`, then serve: reports from the streams on `rx` (left waiting there
    /// while the unpublished bytes are over the limit: the streams then stop reading, and the
    /// agents keep their reports), drain requests on `drains`, published segments and spent
    /// reports from the pipeline on `back`.
    pub async fn run(
        mut self,
        recovered: Recovered,
        mut rx: mpsc::Receiver<Inbound>,
        mut drains: mpsc::Receiver<oneshot::Sender<()>>,
        mut back: mpsc::UnboundedReceiver<Back>,
    ) {
        self.replay(recovered).await;
        self.update_paused();
        loop {
            tokio::select! {
                msg = rx.recv(), if !self.paused => match msg {
                    Some(Inbound::Report(r)) => self.on_report(r).await,
                    // Drains come on their own channel; the rest only this stage sends.
                    Some(_) => {}
                    None => break,
                },
                Some(done) = drains.recv() => {
                    // What the streams handed over before the drain goes first, unless the
                    // intake is paused: then it stays unacknowledged, and its agents resend it.
                    while !self.paused
                        && let Ok(Inbound::Report(r)) = rx.try_recv()
                    {
                        self.on_report(r).await;
                        self.update_paused();
                    }
                    self.settle_commits().await;
                    let (tx, done_rx) = oneshot::channel();
                    if self.pipeline.send(Inbound::Drain(tx)).await.is_ok() {
                        let _ = done_rx.await;
                    }
                    while let Ok(b) = back.try_recv() {
                        self.on_back(b);
                    }
                    let _ = done.send(());
                }
                Some(b) = back.recv() => self.on_back(b),
                Some(done) = self.commit.join_next(), if !self.commit.is_empty() => {
                    self.finish_commit(done);
                }
                // Paused with the pipeline and the drain requests gone: nothing can resume it.
                else => break,
            }
            self.start_commit();
            self.update_paused();
        }
    }

    fn update_paused(&mut self) {
        let bytes = self.wal.unpublished_bytes();
        let paused = bytes > self.max_unpublished;
        if paused != self.paused {
            if paused {
                tracing::warn!(
                    bytes,
                    limit = self.max_unpublished,
                    "reports not yet in Parquet are over the limit; new reports wait until writes catch up"
                );
            } else {
                tracing::info!(bytes, "intake resumed");
            }
            self.paused = paused;
        }
        self.metrics.unpublished_bytes.set(bytes as i64);
        self.metrics.intake_paused.set(i64::from(paused));
    }

    /// Feed the reports a previous process logged: they are durable already (their acks were
    /// sent, or the agent resends and is told DUPLICATE), so they are only passed on — except
    /// those the publication journals name, whose rows are in Parquet already: they are only
    /// registered as durable, and their steps as released.
    async fn replay(&mut self, recovered: Recovered) {
        if recovered.journals_torn > 0 {
            tracing::warn!(
                journals = recovered.journals_torn,
                "publication journals ended in a torn record: a write cut short before its commit, replayed"
            );
        }
        let mut released = Vec::new();
        for c in &recovered.commits {
            let run: Arc<str> = c.run.as_str().into();
            for p in &c.reports {
                let key = AgentKey {
                    run_id: run.clone(),
                    rank: p.rank,
                    shard: p.shard,
                    epoch: p.epoch,
                };
                if self.dedup.arrive(&key, p.seq) == Seen::New {
                    self.dedup.made_durable(&key, p.seq);
                }
                released.push((run.clone(), p.rank, p.shard, p.step));
            }
        }
        released.sort_unstable();
        released.dedup();
        // Before any replayed report: a straggler's report of a published step is late.
        if self
            .pipeline
            .send(Inbound::Released(released))
            .await
            .is_err()
        {
            return;
        }
        let (mut n, mut skipped, mut torn) = (0, 0, 0);
        let mut runs = BTreeSet::new();
        let recovered = Arc::new(recovered);
        // One segment in memory at a time, read on the blocking pool.
        for &id in &recovered.segments {
            let reader = recovered.clone();
            let read = tokio::task::spawn_blocking(move || reader.read(id))
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            let records = match read {
                Ok((records, cut)) => {
                    torn += u64::from(cut);
                    records
                }
                Err(error) => {
                    // Kept for the next start: counted as holding a report, it is never retired.
                    self.wal.adopt(id, 0);
                    self.metrics.wal_errors.inc();
                    tracing::error!(segment = id, %error, "cannot read a write-ahead log segment; it is kept for the next start");
                    continue;
                }
            };
            n += records.len();
            for rec in records {
                if !self.replay_record(rec, &mut runs, &mut skipped).await {
                    return;
                }
            }
        }
        self.metrics.wal_corrupt.add(torn);
        if torn > 0 {
            tracing::warn!(
                segments = torn,
                "write-ahead log segments ended in a torn or corrupt record; the rest of each was skipped"
            );
        }
        let _ = self
            .pipeline
            .send(Inbound::RemoveTemps(runs.into_iter().collect()))
            .await;
        self.retire();
        if n > 0 {
            tracing::info!(
                reports = n,
                published_before = skipped,
                "write-ahead log replayed"
            );
        }
    }

    /// Replay one logged report (see [`Self::replay`]); false once the pipeline is gone.
    async fn replay_record(
        &mut self,
        rec: Record,
        runs: &mut BTreeSet<Arc<str>>,
        skipped: &mut u64,
    ) -> bool {
        let decoded =
            <gradtel_proto::v1::ShardReport as prost::Message>::decode(rec.payload.clone())
                .map_err(|e| e.to_string())
                .and_then(crate::report::decode);
        let mut r = match decoded {
            Ok(r) => r,
            Err(reason) => {
                self.metrics.wal_corrupt.inc();
                tracing::warn!(%reason, segment = rec.segment, "unreadable report in the write-ahead log skipped");
                return true;
            }
        };
        self.metrics.wal_replayed.inc();
        runs.insert(r.key.run_id.clone());
        if self.dedup.arrive(&r.key, r.seq) != Seen::New {
            self.metrics.wal_published_skipped.inc();
            *skipped += 1;
            return true;
        }
        self.dedup.made_durable(&r.key, r.seq);
        self.wal.adopt(rec.segment, rec.payload.len());
        r.wal_segment = rec.segment;
        self.pipeline.send(Inbound::Report(r)).await.is_ok()
    }

    async fn on_report(&mut self, mut r: Report) {
        match self.dedup.arrive(&r.key, r.seq) {
            Seen::New => {
                let payload = std::mem::take(&mut r.wire);
                let segment = self.wal.assign(payload.len());
                r.wal_segment = segment;
                self.staged.push(Record { segment, payload });
                self.staged_acks.push((r.key.clone(), r.seq, r.received_at));
                // Before waiting on the pipeline, so this report's sync is under way.
                self.start_commit();
                let _ = self.pipeline.send(Inbound::Report(r)).await;
            }
            Seen::Durable => {
                self.metrics.reports_duplicate.inc();
                let a = make_ack(&r.key, r.seq, ack::Status::Duplicate, String::new());
                self.router.send(&r.key, a, &self.metrics);
            }
            Seen::Pending => self.metrics.reports_duplicate.inc(),
        }
    }

    fn on_back(&mut self, b: Back) {
        match b {
            Back::Published(segments) => self.published(segments),
            Back::Spent(reports) => crate::report::recycle(reports),
        }
    }

    /// The pipeline published the rows of one report of each of `segments`.
    fn published(&mut self, segments: Vec<u64>) {
        for s in segments {
            self.wal.published(s);
        }
        self.retire();
    }

    /// Start syncing the staged records, unless a commit is in flight or backing off.
    fn start_commit(&mut self) {
        if self.staged.is_empty() || self.commit_after.is_some_and(|t| Instant::now() < t) {
            return;
        }
        let Some(mut writer) = self.writer.take() else {
            return;
        };
        let (spare_records, spare_acks) = std::mem::take(&mut self.spare);
        let records = std::mem::replace(&mut self.staged, spare_records);
        let acks = std::mem::replace(&mut self.staged_acks, spare_acks);
        self.committing_from = records.first().map(|r| r.segment);
        let started = Instant::now();
        self.commit.spawn_blocking(move || {
            let result = writer.commit(&records);
            Committed {
                writer,
                records,
                acks,
                started,
                result,
            }
        });
    }

    fn finish_commit(&mut self, done: Result<Committed, tokio::task::JoinError>) {
        self.committing_from = None;
        let c = match done {
            Ok(c) => c,
            Err(e) => {
                // Only a panic gets here, and it took the writer: nothing can be logged any
                // more, so nothing more is acknowledged (agents keep and resend).
                self.metrics.wal_errors.inc();
                tracing::error!(error = %e, "write-ahead log task failed; acknowledgements stop");
                return;
            }
        };
        self.writer = Some(c.writer);
        match c.result {
            Ok(bytes) => {
                // The emptied lists stage the commit after next, keeping their room: fresh
                // ones grew a push at a time for every commit.
                let (mut records, mut acks) = (c.records, c.acks);
                records.clear();
                self.commit_after = None;
                self.metrics.wal_commit.record(c.started.elapsed());
                self.metrics.wal_bytes.add(bytes);
                for (key, seq, received) in acks.drain(..) {
                    self.dedup.made_durable(&key, seq);
                    self.metrics.report_durable.record(received.elapsed());
                    let a = make_ack(&key, seq, ack::Status::Accepted, String::new());
                    self.router.send(&key, a, &self.metrics);
                }
                self.spare = (records, acks);
                self.retire();
            }
            Err(e) => {
                self.metrics.wal_errors.inc();
                tracing::error!(error = %e, "write-ahead log commit failed; will retry");
                let mut records = c.records;
                records.append(&mut self.staged);
                self.staged = records;
                let mut acks = c.acks;
                acks.append(&mut self.staged_acks);
                self.staged_acks = acks;
                self.commit_after = Some(Instant::now() + COMMIT_RETRY);
            }
        }
    }

    /// Delete the log segments whose reports are all published.
    fn retire(&mut self) {
        let busy = self
            .committing_from
            .into_iter()
            .chain(self.staged.first().map(|r| r.segment))
            .min();
        self.wal.retire(busy);
        self.metrics
            .wal_segments
            .set(self.wal.live_segments() as i64);
    }

    /// Commit everything staged and wait for it.
    async fn settle_commits(&mut self) {
        loop {
            if let Some(done) = self.commit.join_next().await {
                self.finish_commit(done);
                continue;
            }
            if self.staged.is_empty() || self.writer.is_none() {
                return;
            }
            self.commit_after = None;
            self.start_commit();
            if self.commit.is_empty() {
                return;
            }
        }
    }
}
