//! Upload of the Parquet lake to S3 or an S3-compatible store (DESIGN.md §3, decision 8: "the
//! Parquet lake can live on object storage"), so that DuckDB, Spark and Trino read it there.
//!
//! The local lake stays the staging area: files are published there as before (written under a
//! hidden name, synced, renamed), and this uploader copies each published file to
//! `s3://bucket/prefix/<the same relative path>` — the same Hive layout, `run=<id>/table=<name>/`.
//! The pipeline names each file it publishes to the uploader, which uploads them in order; at
//! start it scans the lake once for what a previous run left:
//! * `<out>/_uploaded` lists the files already uploaded (one relative path per line, appended
//!   after the store answered 200). A file not in it is uploaded (again): PUT replaces an
//!   object whole, so an upload cut short by a crash is simply redone, and a reader of the
//!   store sees a whole file or none.
//! * With `delete_local`, a file is removed from the local lake once uploaded (the manifest
//!   still names it, so it is not looked for again).
//! * A failed upload (store unreachable, refused) is counted and retried after `retry`; later
//!   files wait, so the store receives each table's files in the order they were written.

use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gradtel_s3::S3Client;
use tokio::sync::{mpsc, watch};

use crate::metrics::CollectorMetrics;

/// The manifest of uploaded files, under the lake's root (a name Hive readers skip).
pub const MANIFEST: &str = "_uploaded";

/// Published Parquet files under `out`, as `/`-separated paths relative to it, sorted:
/// `run=*/table=*/*.parquet`, hidden temporaries and `_`-prefixed directories skipped.
pub fn published_files(out: &Path) -> Vec<String> {
    let visible = |name: &str| !name.starts_with('.') && !name.starts_with('_');
    let dirs = |p: &Path, prefix: &str| -> Vec<(PathBuf, String)> {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                (visible(&name) && name.starts_with(prefix)).then(|| (e.path(), name))
            })
            .collect()
    };
    let mut files = Vec::new();
    for (run_dir, run) in dirs(out, "run=") {
        for (table_dir, table) in dirs(&run_dir, "table=") {
            for e in std::fs::read_dir(&table_dir)
                .into_iter()
                .flatten()
                .flatten()
            {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if visible(&name) && name.ends_with(".parquet") {
                    files.push(format!("{run}/{table}/{name}"));
                }
            }
        }
    }
    files.sort();
    files
}

/// The files to upload at start: those published and not in the manifest (a previous run's
/// leftovers, or files a crash left for the journal to publish). The manifest is rewritten
/// with the entries whose files are still there, so it stays as long as the local lake.
pub fn recover(out: &Path) -> VecDeque<String> {
    let listed: HashSet<String> = std::fs::read_to_string(out.join(MANIFEST))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    let (done, todo): (Vec<String>, Vec<String>) = published_files(out)
        .into_iter()
        .partition(|f| listed.contains(f));
    if done.len() < listed.len() {
        let tmp = out.join(format!(".{MANIFEST}.tmp"));
        let text: String = done.iter().map(|f| format!("{f}\n")).collect();
        if let Err(e) =
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, out.join(MANIFEST)))
        {
            tracing::warn!(error = %e, "cannot compact the upload manifest");
        }
    }
    todo.into()
}

pub struct Uploader {
    pub out: PathBuf,
    pub client: S3Client,
    pub delete_local: bool,
    /// Wait before retrying after a failed upload.
    pub retry: Duration,
    pub metrics: Arc<CollectorMetrics>,
}

impl Uploader {
    fn manifest(&self) -> PathBuf {
        self.out.join(MANIFEST)
    }

    /// Upload from the front of `queue` until it is empty (true), or an upload fails or
    /// `deadline` passes (false).
    async fn round(&self, queue: &mut VecDeque<String>, deadline: Option<Instant>) -> bool {
        while let Some(rel) = queue.front() {
            self.metrics.upload_pending.set(queue.len() as i64);
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return false;
            }
            let path = self.out.join(rel);
            let body = match tokio::fs::read(&path).await {
                Ok(b) => b,
                // Removed under us (by an operator): nothing to upload.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    queue.pop_front();
                    continue;
                }
                Err(e) => {
                    self.metrics.upload_errors.inc();
                    tracing::warn!(file = %path.display(), error = %e, "cannot read a file to upload");
                    return false;
                }
            };
            let bytes = body.len() as u64;
            let key = self.client.key(rel);
            if let Err(e) = self.client.put(&key, body.into()).await {
                self.metrics.upload_errors.inc();
                tracing::warn!(key = %key, error = %e, "upload failed; retried");
                return false;
            }
            self.metrics.uploaded_files.inc();
            self.metrics.uploaded_bytes.add(bytes);
            if let Err(e) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.manifest())
                .and_then(|mut f| writeln!(f, "{rel}"))
            {
                // Not recorded: uploaded again after a restart, which is harmless.
                tracing::warn!(error = %e, "cannot append to the upload manifest");
            }
            if self.delete_local {
                let _ = std::fs::remove_file(&path);
            }
            queue.pop_front();
        }
        self.metrics.upload_pending.set(0);
        true
    }

    fn enqueue(&self, queue: &mut VecDeque<String>, path: PathBuf) {
        match path.strip_prefix(&self.out).ok().and_then(|p| p.to_str()) {
            Some(rel) => queue.push_back(rel.replace(std::path::MAIN_SEPARATOR, "/")),
            None => {
                tracing::warn!(file = %path.display(), "published file outside the lake not uploaded")
            }
        }
        self.metrics.upload_pending.set(queue.len() as i64);
    }

    /// Upload what a previous run left, then every file the pipeline publishes (named on
    /// `files`), in order, until `stop` turns true; then what is queued, in one pass that stops
    /// at a failure or after `drain`.
    pub async fn run(
        self,
        mut files: mpsc::UnboundedReceiver<PathBuf>,
        mut stop: watch::Receiver<bool>,
        drain: Duration,
    ) {
        let out = self.out.clone();
        let mut queue = tokio::task::spawn_blocking(move || recover(&out))
            .await
            .unwrap_or_default();
        tracing::info!(to = %self.client.location(), waiting = queue.len(), "uploading the lake");
        // After a failure, nothing is tried before this (the store is failing).
        let mut retry_at: Option<Instant> = None;
        loop {
            if retry_at.is_none_or(|t| Instant::now() >= t) {
                retry_at =
                    (!self.round(&mut queue, None).await).then(|| Instant::now() + self.retry);
            }
            let retry = retry_at.map(tokio::time::Instant::from_std);
            tokio::select! {
                Some(path) = files.recv() => {
                    self.enqueue(&mut queue, path);
                    while let Ok(p) = files.try_recv() {
                        self.enqueue(&mut queue, p);
                    }
                }
                _ = tokio::time::sleep_until(retry.unwrap_or_else(tokio::time::Instant::now)), if retry.is_some() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        while let Ok(p) = files.try_recv() {
            self.enqueue(&mut queue, p);
        }
        // One pass, bounded: a store that fails now is not waited for (the next start uploads
        // what is left), so that a stopping collector stops.
        self.round(&mut queue, Some(Instant::now() + drain)).await;
        if !queue.is_empty() {
            tracing::warn!(
                files = queue.len(),
                "stopped with files not uploaded; the next start uploads them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_start_what_the_manifest_lacks_is_queued_and_the_manifest_shrinks_to_the_lake() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for f in [
            "run=a/table=t/1.parquet",
            "run=a/table=t/2.parquet",
            "run=a/table=t/3.parquet",
        ] {
            let p = root.join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        }
        // 1 uploaded; 0 uploaded and since deleted locally; 2 and 3 never uploaded.
        std::fs::write(
            root.join(MANIFEST),
            "run=a/table=t/0.parquet\nrun=a/table=t/1.parquet\n",
        )
        .unwrap();
        let todo: Vec<String> = recover(root).into();
        assert_eq!(
            todo,
            vec!["run=a/table=t/2.parquet", "run=a/table=t/3.parquet"]
        );
        assert_eq!(
            std::fs::read_to_string(root.join(MANIFEST)).unwrap(),
            "run=a/table=t/1.parquet\n"
        );
    }

    #[test]
    fn only_published_parquet_files_of_the_lake_are_listed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mk = |p: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, b"x").unwrap();
        };
        mk("run=b/table=steps/part-2.parquet");
        mk("run=b/table=steps/part-1.parquet");
        mk("run=a/table=coords/part-9.parquet");
        mk("run=b/table=steps/.part-3.parquet.tmp");
        mk("run=b/table=steps/notes.txt");
        mk("_wal/00000001.wal");
        mk("run=b/_journal/x.parquet");
        mk("stray/table=t/x.parquet");
        mk(MANIFEST);
        assert_eq!(
            published_files(root),
            vec![
                "run=a/table=coords/part-9.parquet",
                "run=b/table=steps/part-1.parquet",
                "run=b/table=steps/part-2.parquet",
            ]
        );
    }
}
