//! Upload of the Parquet lake to S3 or an S3-compatible store (DESIGN.md §3, decision 8: "the
//! Parquet lake can live on object storage"), so that DuckDB, Spark and Trino read it there.
//!
//! The local lake stays the staging area: files are published there as before (written under a
//! hidden name, synced, renamed), and this uploader copies each published file to
//! `s3://bucket/prefix/<the same relative path>` — the same Hive layout, `run=<id>/table=<name>/`.
//! It scans the lake every `interval`, so it needs nothing from the write path and picks up
//! after a crash on its own:
//! * `<out>/_uploaded` lists the files already uploaded (one relative path per line, appended
//!   after the store answered 200). A file not in it is uploaded (again): PUT replaces an
//!   object whole, so an upload cut short by a crash is simply redone, and a reader of the
//!   store sees a whole file or none.
//! * With `delete_local`, a file is removed from the local lake once uploaded (the manifest
//!   still names it, so it is not looked for again).
//! * A failed upload (store unreachable, refused) is counted and retried at the next scan, in
//!   path order; later files wait, so the store receives each table's files in the order they
//!   were written.

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gradtel_s3::S3Client;
use tokio::sync::watch;

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

pub struct Uploader {
    pub out: PathBuf,
    pub client: S3Client,
    pub delete_local: bool,
    pub interval: Duration,
    pub metrics: Arc<CollectorMetrics>,
}

impl Uploader {
    fn manifest(&self) -> PathBuf {
        self.out.join(MANIFEST)
    }

    fn uploaded(&self) -> HashSet<String> {
        std::fs::read_to_string(self.manifest())
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Upload every published file not yet uploaded, in path order, stopping at the first
    /// failure or at `deadline`. Returns how many are left.
    async fn round(&self, done: &mut HashSet<String>, deadline: Option<Instant>) -> usize {
        let out = self.out.clone();
        let todo: Vec<String> = tokio::task::spawn_blocking(move || published_files(&out))
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|f| !done.contains(f))
            .collect();
        self.metrics.upload_pending.set(todo.len() as i64);
        for (i, rel) in todo.iter().enumerate() {
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return todo.len() - i;
            }
            let path = self.out.join(rel);
            let body = match tokio::fs::read(&path).await {
                Ok(b) => b,
                // Deleted under us (by an operator): nothing to upload.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    self.metrics.upload_errors.inc();
                    tracing::warn!(file = %path.display(), error = %e, "cannot read a file to upload");
                    return todo.len() - i;
                }
            };
            let bytes = body.len() as u64;
            let key = self.client.key(rel);
            match self.client.put(&key, body.into()).await {
                Ok(()) => {
                    self.metrics.uploaded_files.inc();
                    self.metrics.uploaded_bytes.add(bytes);
                    self.metrics.upload_pending.set((todo.len() - i - 1) as i64);
                    if let Err(e) = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(self.manifest())
                        .and_then(|mut f| writeln!(f, "{rel}"))
                    {
                        // Not recorded: uploaded again after a restart, which is harmless.
                        tracing::warn!(error = %e, "cannot append to the upload manifest");
                    }
                    done.insert(rel.clone());
                    if self.delete_local {
                        let _ = std::fs::remove_file(&path);
                    }
                }
                Err(e) => {
                    self.metrics.upload_errors.inc();
                    tracing::warn!(key = %key, error = %e, "upload failed; retried at the next scan");
                    return todo.len() - i;
                }
            }
        }
        0
    }

    /// Scan and upload every `interval` until `stop` turns true; then one last round that
    /// lasts at most `drain`, for the files the collector wrote as it stopped.
    pub async fn run(self, mut stop: watch::Receiver<bool>, drain: Duration) {
        let mut done = self.uploaded();
        tracing::info!(to = %self.client.location(), already = done.len(), "uploading the lake");
        loop {
            self.round(&mut done, None).await;
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.wait_for(|s| *s) => break,
            }
        }
        let left = self.round(&mut done, Some(Instant::now() + drain)).await;
        if left > 0 {
            tracing::warn!(
                files = left,
                "stopped with files not uploaded; the next start uploads them"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
