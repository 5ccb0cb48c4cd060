//! The publication journal: which logged reports already have their rows in Parquet, and which
//! files a write published together.
//!
//! Without it a crash replays every report of a segment not yet retired, including those whose
//! rows were already published, and their rows are written twice (a segment holds minutes of
//! reports, so one crash doubled most of a run's recent rows). With it:
//!
//! * a write puts each table's file under a hidden temporary name and syncs it, then appends a
//!   [`Commit`] — the run, every report the rows come from, and each file's temporary and final
//!   name — to the journal of the newest log segment holding one of those reports, syncs that,
//!   and only then renames the files into place. The journal record is the commit point (one
//!   record, so a failed append commits nothing): a crash
//!   before it leaves only hidden temporary files (deleted at the next start) and the reports
//!   replayed; a crash after it is finished at the next start by renaming whatever is still
//!   temporary ([`roll_forward`]). So the tables of one write are published all or none.
//! * replay skips the reports a journal names (their rows are in Parquet), still counting them
//!   as durable, so an agent's resend of one is answered DUPLICATE — even one whose log record
//!   had not been synced when its rows were published.
//!
//! A segment's journal is `<dir>/<segment:020>.pub`. It is kept after its segment is retired
//! (every report in it published) while any older segment is still in the log (its commits
//! may name that segment's reports), and then among the newest `wal::KEPT_JOURNALS`: a crash
//! can cut off the acks of just-published reports, and their resends must still be
//! duplicates. Records are framed like the log's: `len: u32 LE, crc32: u32 LE, payload`; a
//! torn last record (a crash mid-append) fails its check and ends the file, and since its
//! renames never started, nothing it names is visible.
//!
//! Payload: the run id (`u16` length, bytes), the report count (`u32`) and each report's
//! `rank: u32, shard: u32, epoch: u64, seq: u64, step: u64`, the file count (`u16`) and each
//! file's temporary and final path relative to the output root (`u16` length, bytes each);
//! integers little-endian.
//!
//! Guarantee: a report's rows are published at most once by this collector's log, and a write
//! is visible whole or not at all. What it cannot see: a report whose segment's journal was
//! already deleted and which its agent resends across a restart (its ack lost) is new again.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Largest journal record read back: 16 Mi reports would be far beyond any write.
const MAX_RECORD: usize = 512 << 20;

/// One published report, as the log and the agents name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Published {
    pub rank: u32,
    pub shard: u32,
    pub epoch: u64,
    pub seq: u64,
    pub step: u64,
}

/// A report the pipeline holds rows of: where it is logged and who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged {
    pub segment: u64,
    pub report: Published,
}

/// One write: a run's reports whose rows it publishes, and its files (temporary, final), both
/// relative to the output root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    pub run: String,
    pub reports: Vec<Published>,
    pub files: Vec<(String, String)>,
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("publication journal I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("a journal record cannot hold {0}")]
    TooLarge(&'static str),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> JournalError + '_ {
    move |source| JournalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub fn path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}.pub"))
}

/// The segments that have a journal in `dir`.
pub fn segments(dir: &Path) -> Vec<u64> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .into_string()
                .ok()?
                .strip_suffix(".pub")?
                .parse()
                .ok()
        })
        .collect()
}

fn put_str(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), JournalError> {
    let len = u16::try_from(s.len()).map_err(|_| JournalError::TooLarge(what))?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn encode(c: &Commit) -> Result<Vec<u8>, JournalError> {
    let mut p = Vec::with_capacity(64 + c.reports.len() * 32);
    put_str(&mut p, &c.run, "the run id")?;
    let n = u32::try_from(c.reports.len()).map_err(|_| JournalError::TooLarge("the reports"))?;
    p.extend_from_slice(&n.to_le_bytes());
    for r in &c.reports {
        p.extend_from_slice(&r.rank.to_le_bytes());
        p.extend_from_slice(&r.shard.to_le_bytes());
        p.extend_from_slice(&r.epoch.to_le_bytes());
        p.extend_from_slice(&r.seq.to_le_bytes());
        p.extend_from_slice(&r.step.to_le_bytes());
    }
    let n = u16::try_from(c.files.len()).map_err(|_| JournalError::TooLarge("the files"))?;
    p.extend_from_slice(&n.to_le_bytes());
    for (tmp, dest) in &c.files {
        put_str(&mut p, tmp, "a path")?;
        put_str(&mut p, dest, "a path")?;
    }
    if p.len() > MAX_RECORD {
        return Err(JournalError::TooLarge("this many reports"));
    }
    let mut frame = Vec::with_capacity(8 + p.len());
    frame.extend_from_slice(&(p.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(&p).to_le_bytes());
    frame.extend_from_slice(&p);
    Ok(frame)
}

/// A cursor over a record's payload; `None` once it runs short.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.take(2)?.try_into().ok()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn string(&mut self) -> Option<String> {
        let n = usize::from(self.u16()?);
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
}

fn decode(p: &[u8]) -> Option<Commit> {
    let mut c = Cursor(p);
    let run = c.string()?;
    let n = c.u32()? as usize;
    // Checked against what is left before allocating: a damaged count cannot ask for more.
    if n.checked_mul(32)? > c.0.len() {
        return None;
    }
    let mut reports = Vec::with_capacity(n);
    for _ in 0..n {
        reports.push(Published {
            rank: c.u32()?,
            shard: c.u32()?,
            epoch: c.u64()?,
            seq: c.u64()?,
            step: c.u64()?,
        });
    }
    let files = (0..c.u16()?)
        .map(|_| Some((c.string()?, c.string()?)))
        .collect::<Option<Vec<_>>>()?;
    c.0.is_empty().then_some(Commit {
        run,
        reports,
        files,
    })
}

/// Append `commit` to `segment`'s journal and sync it (and, for a new journal, the directory,
/// so the file itself survives a power cut).
pub fn append(dir: &Path, segment: u64, commit: &Commit) -> Result<(), JournalError> {
    let frame = encode(commit)?;
    let path = path(dir, segment);
    let existed = path.exists();
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io_err(&path))?;
    // One `write` per record: appends of concurrent writes (other runs) never interleave.
    f.write_all(&frame).map_err(io_err(&path))?;
    f.sync_data().map_err(io_err(&path))?;
    if !existed {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))?;
    }
    Ok(())
}

/// The whole records of `segment`'s journal (none if it has none), and whether its end was
/// torn or corrupt.
pub fn read(dir: &Path, segment: u64) -> Result<(Vec<Commit>, bool), JournalError> {
    let path = path(dir, segment);
    let mut bytes = Vec::new();
    match File::open(&path) {
        Ok(mut f) => {
            f.read_to_end(&mut bytes).map_err(io_err(&path))?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), false)),
        Err(e) => return Err(io_err(&path)(e)),
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + 8) else {
            return Ok((out, true));
        };
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = bytes.get(at + 8..at + 8 + len) else {
            return Ok((out, true));
        };
        if len > MAX_RECORD || crc32fast::hash(payload) != crc {
            return Ok((out, true));
        }
        match decode(payload) {
            Some(c) => out.push(c),
            None => return Ok((out, true)),
        }
        at += 8 + len;
    }
    Ok((out, false))
}

/// Delete `segment`'s journal (its segment is retired).
pub fn remove(dir: &Path, segment: u64) {
    let path = path(dir, segment);
    if let Err(e) = std::fs::remove_file(&path)
        && e.kind() != io::ErrorKind::NotFound
    {
        tracing::warn!(error = %e, path = %path.display(), "cannot delete a publication journal");
    }
}

/// A relative path from a journal, refused if it could leave the output root.
fn inside(out: &Path, rel: &str) -> Option<PathBuf> {
    let p = Path::new(rel);
    p.components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
        .then(|| out.join(p))
}

/// Finish the renames of committed writes that a crash cut short: every file of `commits`
/// still under its temporary name is renamed into place (and its directory synced). Returns
/// how many were.
pub fn roll_forward(out: &Path, commits: &[Commit]) -> Result<usize, JournalError> {
    let mut renamed = 0;
    for (tmp, dest) in commits.iter().flat_map(|c| &c.files) {
        let (Some(tmp), Some(dest)) = (inside(out, tmp), inside(out, dest)) else {
            tracing::warn!(%tmp, %dest, "a journal names a file outside the output root; ignored");
            continue;
        };
        if !tmp.exists() {
            continue;
        }
        std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        if let Some(parent) = dest.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io_err(parent))?;
        }
        renamed += 1;
    }
    Ok(renamed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(run: &str, seqs: std::ops::Range<u64>, files: &[(&str, &str)]) -> Commit {
        Commit {
            run: run.into(),
            reports: seqs
                .map(|seq| Published {
                    rank: (seq % 3) as u32,
                    shard: 1,
                    epoch: 0xDEAD_BEEF_0000_0001,
                    seq,
                    step: seq / 3,
                })
                .collect(),
            files: files
                .iter()
                .map(|(t, d)| (t.to_string(), d.to_string()))
                .collect(),
        }
    }

    #[test]
    fn records_read_back_and_a_torn_tail_ends_the_journal() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path(), 7).unwrap(), (vec![], false));
        let a = commit(
            "run-a",
            0..5,
            &[("run=a/table=steps/.p.tmp", "run=a/table=steps/p")],
        );
        let b = commit("run-b", 5..6, &[]);
        append(dir.path(), 7, &a).unwrap();
        append(dir.path(), 7, &b).unwrap();
        assert_eq!(read(dir.path(), 7).unwrap(), (vec![a.clone(), b], false));
        assert_eq!(segments(dir.path()), vec![7]);

        // A crash mid-append: every cut of the last record reads as torn, the first intact.
        let full = std::fs::read(path(dir.path(), 7)).unwrap();
        let first = encode(&a).unwrap().len();
        for cut in first + 1..full.len() {
            std::fs::write(path(dir.path(), 7), &full[..cut]).unwrap();
            assert_eq!(
                read(dir.path(), 7).unwrap(),
                (vec![a.clone()], true),
                "cut {cut}"
            );
        }
        // A flipped byte fails the CRC.
        let mut bad = full.clone();
        bad[first + 12] ^= 1;
        std::fs::write(path(dir.path(), 7), &bad).unwrap();
        assert_eq!(read(dir.path(), 7).unwrap(), (vec![a], true));
        remove(dir.path(), 7);
        assert!(segments(dir.path()).is_empty());
    }

    #[test]
    fn roll_forward_renames_what_is_still_temporary_and_stays_inside_the_root() {
        let out = tempfile::tempdir().unwrap();
        let part = out.path().join("run=a").join("table=steps");
        std::fs::create_dir_all(&part).unwrap();
        std::fs::write(part.join(".p1.tmp"), b"one").unwrap();
        std::fs::write(part.join("p2"), b"two").unwrap();
        std::fs::write(out.path().join(".evil.tmp"), b"x").unwrap();
        let c = commit(
            "a",
            0..1,
            &[
                ("run=a/table=steps/.p1.tmp", "run=a/table=steps/p1"),
                // Renamed before the crash: nothing to do.
                ("run=a/table=steps/.p2.tmp", "run=a/table=steps/p2"),
                ("../.evil.tmp", "run=a/table=steps/evil"),
            ],
        );
        assert_eq!(
            roll_forward(out.path(), std::slice::from_ref(&c)).unwrap(),
            1
        );
        assert_eq!(std::fs::read(part.join("p1")).unwrap(), b"one");
        assert_eq!(std::fs::read(part.join("p2")).unwrap(), b"two");
        assert!(!part.join(".p1.tmp").exists() && !part.join("evil").exists());
        // Idempotent: a second start finds nothing left to rename.
        assert_eq!(roll_forward(out.path(), &[c]).unwrap(), 0);
    }

    #[test]
    fn damaged_counts_are_refused_without_allocating() {
        let mut p = Vec::new();
        put_str(&mut p, "r", "run").unwrap();
        p.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(decode(&p), None);
        assert_eq!(decode(&[]), None);
        // Trailing bytes are damage too.
        let mut ok = encode(&commit("r", 0..2, &[])).unwrap()[8..].to_vec();
        assert!(decode(&ok).is_some());
        ok.push(0);
        assert_eq!(decode(&ok), None);
    }
}
