//! Write-ahead log of accepted reports (DESIGN.md §3.6: nothing acknowledged is lost).
//!
//! A report is acknowledged once its encoded bytes are synced here, not once its Parquet rows
//! are published: the ack's latency is one group commit (all reports that arrived while the
//! previous sync ran share the next one), and Parquet files can roll every few seconds instead
//! of every few milliseconds. Each report is counted against the segment it went to; a segment
//! is deleted once every report in it has its Parquet rows published. After a crash the
//! segments left are replayed into the pipeline as already-durable reports, so what was
//! acknowledged reaches Parquet.
//!
//! On disk: `<dir>/<segment:020>.wal`, a 16-byte header (the magic `GTWAL\0\x02\0`, then the
//! segment's id, u64 LE) and a sequence of records `len: u32 LE, crc32: u32 LE, segment: u64
//! LE, payload`, where the payload is the report as a `gradtel.v1.ShardReport` message and the
//! CRC (IEEE) covers the payload. A torn record at a segment's end (a crash mid-write) fails its
//! length or CRC check: replay stops reading that segment there and counts it.
//!
//! Finished segments are recycled: up to [`SPARE_SEGMENTS`] of them are renamed
//! `<id:020>.spare` instead of deleted, and a new segment takes a spare's file and overwrites it
//! from the start. Overwriting allocated, cached blocks keeps each sync to the data (an
//! appended file's sync also allocated its blocks and wrote its inode): on the 2-core VM of
//! `bench/RESULTS.md` the paced report → ack p99 fell from 53–76 ms to 17–19 ms. The records of
//! the file's previous life that lie past the new ones name another segment, so replay stops
//! there without counting a tear. Segments of the first format (records `len, crc, payload`
//! from offset 0, no header) are still replayed: as a first record's length the magic would
//! read ≈ 1.1 GB, above any record.
//!
//! Each segment may have a publication journal beside it ([`crate::journal`]): the commits of
//! the writes whose newest report it holds, naming reports whose rows are already in Parquet;
//! replay skips those. A retired segment's journal is kept while an older segment is still in
//! the log, and then among the last [`KEPT_JOURNALS`], so that resends of their reports after a
//! restart (an ack lost in the crash) are still known as duplicates; older ones are deleted.
//!
//! Guarantee: a report whose ack was sent is in a synced segment or in a published Parquet file,
//! and a report in a segment is published once.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A new segment is started once the current one holds this many bytes.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// Largest record accepted on replay (the collector's message limit).
const MAX_RECORD: usize = crate::MAX_MESSAGE_BYTES;
/// Finished segments kept for reuse (each up to the segment size on disk).
pub const SPARE_SEGMENTS: usize = 2;
/// Publication journals of retired segments kept, newest first (see `Wal::prune_journals`).
pub const KEPT_JOURNALS: usize = 4;
const MAGIC: [u8; 8] = *b"GTWAL\x00\x02\x00";
/// Magic and segment id.
const FILE_HEADER: usize = 16;
/// Per record: length, CRC, segment id.
const HEADER: usize = 16;
/// Per record in the first format: length, CRC.
const LEGACY_HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log I/O on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Journal(#[from] crate::journal::JournalError),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> WalError + '_ {
    move |source| WalError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.wal"))
}

fn spare_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.spare"))
}

/// The spare segment files in `dir`, lowest id first.
fn spares(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "spare"))
        .collect();
    found.sort();
    found
}

/// One report's bytes, bound for a segment.
#[derive(Debug, Clone)]
pub struct Record {
    pub segment: u64,
    pub payload: bytes::Bytes,
}

/// What a previous process left: the log segments to replay, read one at a time
/// ([`Recovered::read`]) so that replay holds one segment in memory, not the whole log.
#[derive(Debug, Default)]
pub struct Recovered {
    dir: PathBuf,
    /// Segments to replay, oldest first.
    pub segments: Vec<u64>,
    /// The writes their journals name: their reports are published, and their files are
    /// renamed into place if a crash cut that short.
    pub commits: Vec<crate::journal::Commit>,
    /// Journals whose end was torn (a crash mid-append: that write never became visible).
    pub journals_torn: u64,
}

impl Recovered {
    /// The whole records of log segment `id`, and whether its end was torn or corrupt (the
    /// rest of it is then skipped).
    pub fn read(&self, id: u64) -> Result<(Vec<Record>, bool), WalError> {
        let path = segment_path(&self.dir, id);
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|mut f| f.read_to_end(&mut bytes))
            .map_err(io_err(&path))?;
        Ok(parse_segment(id, &bytes::Bytes::from(bytes)))
    }

    /// Every segment's records, and how many segments were torn.
    #[cfg(test)]
    fn read_all(&self) -> (Vec<Record>, u64) {
        let mut out = (Vec::new(), 0);
        for &id in &self.segments {
            let (records, torn) = self.read(id).unwrap();
            out.0.extend(records);
            out.1 += u64::from(torn);
        }
        out
    }
}

/// The file side of the log: appends records and syncs them. It is moved to the blocking pool
/// for each commit and handed back.
pub struct Writer {
    dir: PathBuf,
    /// The segment being written, its file, and where its next record goes.
    open: Option<(u64, File, u64)>,
    /// Where the synced records of each segment this process wrote end: a failed commit is
    /// retried whole, and may go back to a segment it had synced (a recycled file's length
    /// says nothing about that).
    ends: BTreeMap<u64, u64>,
}

impl Writer {
    /// Append `records` (in segment order) and sync every file they touched. On error the
    /// segment being written is cut back to its last synced length, so a retry appends whole
    /// records only.
    pub fn commit(&mut self, records: &[Record]) -> Result<u64, WalError> {
        let mut written = 0u64;
        let mut i = 0;
        while i < records.len() {
            let seg = records[i].segment;
            let end = records[i..]
                .iter()
                .position(|r| r.segment != seg)
                .map_or(records.len(), |n| i + n);
            written += self.append(seg, &records[i..end])?;
            i = end;
        }
        Ok(written)
    }

    /// Write `records` to segment `seg` and sync it; returns the bytes written. The headers
    /// and the payloads go to the kernel as they lie (one `writev` per 1,024 pieces): gathering
    /// a group commit into one frame first copied every report once more, into megabytes of
    /// freshly faulted-in memory.
    fn append(&mut self, seg: u64, records: &[Record]) -> Result<u64, WalError> {
        if self.open.as_ref().is_none_or(|(id, _, _)| *id != seg) {
            self.open = None;
            self.open = Some(self.open_segment(seg)?);
        }
        let path = segment_path(&self.dir, seg);
        let Some((_, file, len)) = self.open.as_mut() else {
            return Ok(0);
        };
        let headers: Vec<[u8; HEADER]> = records
            .iter()
            .map(|r| {
                let mut h = [0; HEADER];
                h[..4].copy_from_slice(&(r.payload.len() as u32).to_le_bytes());
                h[4..8].copy_from_slice(&crc32fast::hash(&r.payload).to_le_bytes());
                h[8..].copy_from_slice(&seg.to_le_bytes());
                h
            })
            .collect();
        let mut pieces: Vec<IoSlice<'_>> = headers
            .iter()
            .zip(records)
            .flat_map(|(h, r)| [IoSlice::new(h), IoSlice::new(&r.payload)])
            .collect();
        let total: u64 = records
            .iter()
            .map(|r| (HEADER + r.payload.len()) as u64)
            .sum();
        let result = file
            .seek(SeekFrom::Start(*len))
            .and_then(|_| write_all_vectored(file, &mut pieces))
            .and_then(|()| file.sync_data());
        match result {
            Ok(()) => {
                *len += total;
                self.ends.insert(seg, *len);
                // Only the newest segments can be gone back to (a retried commit).
                while self.ends.len() > 8 {
                    self.ends.pop_first();
                }
                Ok(total)
            }
            Err(e) => {
                // Whatever lies past the synced records is stale or unsynced: cut it, so a
                // retry writes after whole records only.
                let _ = file.set_len(*len);
                Err(WalError::Io { path, source: e })
            }
        }
    }

    /// Open segment `seg` for writing: where this process left it, or else as a new file —
    /// a spare's, renamed, when there is one — with its header written at the start (synced
    /// with the segment's first records).
    fn open_segment(&mut self, seg: u64) -> Result<(u64, File, u64), WalError> {
        let path = segment_path(&self.dir, seg);
        if let Some(&end) = self.ends.get(&seg) {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(io_err(&path))?;
            return Ok((seg, file, end));
        }
        if !path.exists()
            && let Some(spare) = spares(&self.dir).into_iter().next()
            && let Err(e) = std::fs::rename(&spare, &path)
        {
            tracing::warn!(error = %e, path = %spare.display(), "cannot reuse a spare WAL segment");
        }
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut header = [0; FILE_HEADER];
        header[..8].copy_from_slice(&MAGIC);
        header[8..].copy_from_slice(&seg.to_le_bytes());
        file.write_all_at(&header, 0).map_err(io_err(&path))?;
        // The file's (new) name must survive a crash too.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok((seg, file, FILE_HEADER as u64))
    }
}

/// `Write::write_all_vectored` (unstable in std): write every byte of `pieces`, retrying
/// short writes and interruptions.
fn write_all_vectored(file: &mut File, mut pieces: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut pieces, 0);
    while !pieces.is_empty() {
        match file.write_vectored(pieces) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut pieces, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The pipeline's side of the log: which segment new records go to, and how many reports of
/// each segment still wait for their Parquet rows.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    current: u64,
    current_bytes: u64,
    outstanding: BTreeMap<u64, u64>,
    /// Bytes of the records of each segment not yet retired, and their total: what the log
    /// holds that is not yet in Parquet, give or take the published part of a live segment.
    bytes: BTreeMap<u64, u64>,
    unpublished: u64,
}

impl Wal {
    /// Open (creating) `dir`, read what a previous process left, and start a fresh segment
    /// after it.
    pub fn open(dir: &Path, segment_bytes: u64) -> Result<(Wal, Writer, Recovered), WalError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        let mut ids: Vec<u64> = std::fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                name.strip_suffix(".wal")?.parse().ok()
            })
            .collect();
        let logs: std::collections::BTreeSet<u64> = ids.iter().copied().collect();
        // A journal whose segment is gone (retired, or never synced) still names published
        // reports; listing its id retires it with the others.
        ids.extend(crate::journal::segments(dir));
        ids.sort_unstable();
        ids.dedup();
        let mut recovered = Recovered {
            dir: dir.to_path_buf(),
            segments: logs.iter().copied().collect(),
            ..Recovered::default()
        };
        for &id in &ids {
            let (commits, torn) = crate::journal::read(dir, id)?;
            recovered.commits.extend(commits);
            recovered.journals_torn += u64::from(torn);
        }
        let wal = Wal {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(1),
            current: ids.last().map_or(1, |l| l + 1),
            current_bytes: 0,
            // Every old segment is listed, so one left without a readable record is deleted
            // by the first retire.
            outstanding: ids.iter().map(|&id| (id, 0)).collect(),
            bytes: BTreeMap::new(),
            unpublished: 0,
        };
        // Spares beyond the pool (a smaller pool than the last process's) are deleted.
        for extra in spares(dir).into_iter().skip(SPARE_SEGMENTS) {
            let _ = std::fs::remove_file(extra);
        }
        let writer = Writer {
            dir: dir.to_path_buf(),
            open: None,
            ends: BTreeMap::new(),
        };
        Ok((wal, writer, recovered))
    }

    /// The segment a new record of `len` bytes goes to; counts it as outstanding.
    pub fn assign(&mut self, len: usize) -> u64 {
        let frame = (len + HEADER) as u64;
        if self.current_bytes > 0 && self.current_bytes + frame > self.segment_bytes {
            self.current += 1;
            self.current_bytes = 0;
        }
        self.current_bytes += frame;
        *self.outstanding.entry(self.current).or_default() += 1;
        self.add_bytes(self.current, frame);
        self.current
    }

    /// Count a replayed record of `len` bytes of an older segment as outstanding.
    pub fn adopt(&mut self, segment: u64, len: usize) {
        *self.outstanding.entry(segment).or_default() += 1;
        self.add_bytes(segment, (len + HEADER) as u64);
    }

    fn add_bytes(&mut self, segment: u64, bytes: u64) {
        *self.bytes.entry(segment).or_default() += bytes;
        self.unpublished += bytes;
    }

    /// Bytes of records in segments not yet retired.
    pub fn unpublished_bytes(&self) -> u64 {
        self.unpublished
    }

    /// The rows of one report of `segment` are published.
    pub fn published(&mut self, segment: u64) {
        if let Some(n) = self.outstanding.get_mut(&segment) {
            *n = n.saturating_sub(1);
        }
    }

    /// Delete every segment none of whose reports wait any more and below `busy` (the lowest
    /// segment a record is staged or being written for). With nothing busy the current
    /// segment may go too, and new records start a new one. Returns the segments deleted.
    pub fn retire(&mut self, busy: Option<u64>) -> Vec<u64> {
        let done: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|&(&seg, &n)| n == 0 && busy.is_none_or(|b| seg < b))
            .map(|(&seg, _)| seg)
            .collect();
        for &seg in &done {
            self.outstanding.remove(&seg);
            self.unpublished -= self.bytes.remove(&seg).unwrap_or(0);
            if seg == self.current {
                self.current += 1;
                self.current_bytes = 0;
            }
            let path = segment_path(&self.dir, seg);
            let result = if spares(&self.dir).len() < SPARE_SEGMENTS {
                std::fs::rename(&path, spare_path(&self.dir, seg))
            } else {
                std::fs::remove_file(&path)
            };
            if let Err(e) = result
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(error = %e, path = %path.display(), "cannot retire a finished WAL segment");
            }
        }
        if !done.is_empty() {
            self.prune_journals();
        }
        done
    }

    /// Delete the journals of retired segments older than every segment still in the log, but
    /// the newest [`KEPT_JOURNALS`] of them. A write's commit goes to the journal of the newest
    /// segment among its reports, so a journal must outlive every older segment still in the
    /// log (it may name their reports); and the newest few still name recently published
    /// reports: an agent whose ack a crash lost resends one, and the next start must know it is
    /// a duplicate. A journal whose segment file is still there (its deletion failed) stays,
    /// since that segment will be replayed.
    fn prune_journals(&self) {
        let oldest_live = self.outstanding.keys().next().copied().unwrap_or(u64::MAX);
        let mut retired: Vec<u64> = crate::journal::segments(&self.dir)
            .into_iter()
            .filter(|&s| {
                s < oldest_live
                    && !self.outstanding.contains_key(&s)
                    && !segment_path(&self.dir, s).exists()
            })
            .collect();
        retired.sort_unstable();
        for &seg in retired.iter().rev().skip(KEPT_JOURNALS) {
            crate::journal::remove(&self.dir, seg);
        }
    }

    /// Segments still holding reports whose rows are not published.
    pub fn live_segments(&self) -> usize {
        self.outstanding.len()
    }
}

/// The whole records of one segment, and whether its end was torn or corrupt.
fn parse_segment(id: u64, bytes: &bytes::Bytes) -> (Vec<Record>, bool) {
    if !bytes.starts_with(&MAGIC) {
        return parse_records(id, bytes, 0, None);
    }
    let Some(header) = bytes.get(8..FILE_HEADER) else {
        // Torn in its header: nothing in it was ever synced.
        return (Vec::new(), false);
    };
    if header != id.to_le_bytes() {
        // A spare renamed for this segment before its header was rewritten: empty.
        return (Vec::new(), false);
    }
    parse_records(id, bytes, FILE_HEADER, Some(id))
}

/// Records from `at` on. With `seg`, each names its segment, and the first naming another —
/// the previous life of a recycled file — ends the segment cleanly.
fn parse_records(
    id: u64,
    bytes: &bytes::Bytes,
    mut at: usize,
    seg: Option<u64>,
) -> (Vec<Record>, bool) {
    let header = if seg.is_some() { HEADER } else { LEGACY_HEADER };
    let mut out = Vec::new();
    while at < bytes.len() {
        let Some(head) = bytes.get(at..at + header) else {
            return (out, seg.is_none());
        };
        if let Some(seg) = seg
            && head[8..16] != seg.to_le_bytes()
        {
            return (out, false);
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(payload) = bytes.get(at + header..at + header + len) else {
            return (out, true);
        };
        if len > MAX_RECORD || crc32fast::hash(payload) != crc {
            return (out, true);
        }
        out.push(Record {
            segment: id,
            payload: bytes.slice(at + header..at + header + len),
        });
        at += header + len;
    }
    (out, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(wal: &mut Wal, payload: &[u8]) -> Record {
        Record {
            segment: wal.assign(payload.len()),
            payload: bytes::Bytes::copy_from_slice(payload),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_finished_segments_are_retired() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, mut w, rec0) = Wal::open(dir.path(), 120).unwrap();
        assert!(rec0.read_all().0.is_empty());
        let batch: Vec<Record> = (0..5u8).map(|i| rec(&mut wal, &[i; 40])).collect();
        // 56-byte frames, 120-byte segments: two records per segment.
        let segs: Vec<u64> = batch.iter().map(|r| r.segment).collect();
        assert_eq!(segs, vec![1, 1, 2, 2, 3]);
        assert_eq!(wal.unpublished_bytes(), 5 * 56);
        w.commit(&batch).unwrap();
        wal.published(1);
        wal.published(1);
        wal.published(2);
        assert_eq!(wal.retire(Some(3)), vec![1]);
        assert_eq!(
            wal.unpublished_bytes(),
            3 * 56,
            "a segment's bytes go with it"
        );
        // A segment stays while records may still be staged or written for it.
        wal.published(2);
        wal.published(3);
        assert_eq!(wal.retire(Some(3)), vec![2]);
        assert_eq!(wal.unpublished_bytes(), 56);
        drop((wal, w));

        let (_, _, found) = Wal::open(dir.path(), 120).unwrap();
        let payloads: Vec<u8> = found.read_all().0.iter().map(|r| r.payload[0]).collect();
        assert_eq!(payloads, vec![4], "segment 3 was never retired");
        assert_eq!(found.read_all().1, 0);
        let (mut wal, _, _) = Wal::open(dir.path(), 120).unwrap();
        wal.adopt(3, 40);
        wal.published(3);
        assert_eq!(wal.retire(None), vec![3]);
        let (_, _, empty) = Wal::open(dir.path(), 120).unwrap();
        assert!(empty.read_all().0.is_empty());
        // Retired segments are kept as spares, up to the pool's size; the rest are deleted.
        assert_eq!(spares(dir.path()).len(), SPARE_SEGMENTS);
        assert!(!segment_path(dir.path(), 3).exists());
    }

    #[test]
    fn journals_of_the_newest_retired_segments_are_kept_and_read_back() {
        use crate::journal::{self, Commit, Published};
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, mut w, _) = Wal::open(dir.path(), 60).unwrap();
        // One 56-byte frame per segment: segments 1..=7.
        let batch: Vec<Record> = (0..7u8).map(|i| rec(&mut wal, &[i; 40])).collect();
        w.commit(&batch).unwrap();
        let commit = |seq| Commit {
            run: "r".into(),
            reports: vec![Published {
                rank: 0,
                shard: 0,
                epoch: 1,
                seq,
                step: seq,
            }],
            files: vec![],
        };
        for r in &batch {
            journal::append(dir.path(), r.segment, &commit(r.segment)).unwrap();
        }
        let journals = || {
            let mut s = journal::segments(dir.path());
            s.sort();
            s
        };
        for seg in 2..=6 {
            wal.published(seg);
        }
        assert_eq!(wal.retire(Some(7)), (2..=6).collect::<Vec<_>>());
        // Segment 1 is still in the log: a newer journal may name its reports, so all stay.
        assert_eq!(journals(), (1..=7).collect::<Vec<_>>());
        wal.published(1);
        assert_eq!(wal.retire(Some(7)), vec![1]);
        // 7 is live; of the retired, the newest four journals stay.
        assert_eq!(journals(), vec![3, 4, 5, 6, 7]);
        drop((wal, w));
        let (_, _, found) = Wal::open(dir.path(), 60).unwrap();
        assert_eq!(found.read_all().0.len(), 1, "segment 7 only");
        let mut seqs: Vec<u64> = found.commits.iter().map(|c| c.reports[0].seq).collect();
        seqs.sort();
        assert_eq!(seqs, vec![3, 4, 5, 6, 7], "every kept journal is read");
    }

    /// A recycled segment's file holds the records of its previous life past the new ones:
    /// replay stops at them without counting a tear, and a spare renamed for a segment whose
    /// header was not yet rewritten (a crash in between) reads as empty.
    #[test]
    fn a_recycled_segment_replays_only_its_own_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, mut w, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        let old: Vec<Record> = (0..6u8).map(|i| rec(&mut wal, &[i; 100])).collect();
        w.commit(&old).unwrap();
        for _ in 0..6 {
            wal.published(1);
        }
        assert_eq!(wal.retire(None), vec![1]);
        assert!(spare_path(dir.path(), 1).exists());
        let new: Vec<Record> = (10..12u8).map(|i| rec(&mut wal, &[i; 30])).collect();
        assert_eq!(new[0].segment, 2);
        w.commit(&new).unwrap();
        assert!(
            !spare_path(dir.path(), 1).exists(),
            "segment 2 took the spare's file"
        );
        let file_len = std::fs::metadata(segment_path(dir.path(), 2))
            .unwrap()
            .len();
        assert_eq!(
            file_len as usize,
            FILE_HEADER + 6 * (HEADER + 100),
            "overwritten in place"
        );
        drop((wal, w));
        let (_, _, found) = Wal::open(dir.path(), 1 << 20).unwrap();
        let payloads: Vec<u8> = found.read_all().0.iter().map(|r| r.payload[0]).collect();
        assert_eq!(payloads, vec![10, 11]);
        assert_eq!(found.read_all().1, 0);

        // A spare renamed to a new segment's name, then a crash before its first commit.
        std::fs::rename(segment_path(dir.path(), 2), segment_path(dir.path(), 7)).unwrap();
        let (_, _, found) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert!(found.read_all().0.is_empty());
        assert_eq!(found.read_all().1, 0);
    }

    /// Segments written by the first format (no header, 8-byte record headers) still replay.
    #[test]
    fn first_format_segments_still_replay() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        for p in [&b"first"[..], &b"second report"[..]] {
            bytes.extend_from_slice(&(p.len() as u32).to_le_bytes());
            bytes.extend_from_slice(&crc32fast::hash(p).to_le_bytes());
            bytes.extend_from_slice(p);
        }
        std::fs::write(segment_path(dir.path(), 4), &bytes).unwrap();
        let (mut wal, mut w, found) = Wal::open(dir.path(), 1 << 20).unwrap();
        let records = found.read_all().0;
        let payloads: Vec<&[u8]> = records.iter().map(|r| &r.payload[..]).collect();
        assert_eq!(payloads, vec![&b"first"[..], &b"second report"[..]]);
        assert_eq!(found.read_all().1, 0);
        // New records go to a new segment, in the current format.
        let r = rec(&mut wal, b"third");
        assert_eq!(r.segment, 5);
        w.commit(&[r]).unwrap();
        let head = std::fs::read(segment_path(dir.path(), 5)).unwrap();
        assert!(head.starts_with(&MAGIC));
    }

    /// A failed commit is retried whole and may go back to a segment it had synced: the
    /// retry continues after that segment's synced records, even in a recycled file.
    #[test]
    fn a_retried_commit_goes_back_to_a_synced_segment_without_losing_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, mut w, _) = Wal::open(dir.path(), 200).unwrap();
        let a: Vec<Record> = (0..2u8).map(|i| rec(&mut wal, &[i; 50])).collect();
        w.commit(&a).unwrap();
        let b: Vec<Record> = (2..6u8).map(|i| rec(&mut wal, &[i; 50])).collect();
        let segs: Vec<u64> = b.iter().map(|r| r.segment).collect();
        assert_eq!(segs, vec![1, 2, 2, 2]);
        w.commit(&b).unwrap();
        // The same records again, as a retry would send them.
        w.commit(&b).unwrap();
        drop((wal, w));
        let (_, _, found) = Wal::open(dir.path(), 200).unwrap();
        let payloads: Vec<u8> = found.read_all().0.iter().map(|r| r.payload[0]).collect();
        assert_eq!(payloads, vec![0, 1, 2, 2, 3, 4, 5, 3, 4, 5]);
        assert_eq!(found.read_all().1, 0);
    }

    /// A group commit of more pieces than one `writev` takes (1,024 on Linux) is written
    /// whole and in order.
    #[test]
    fn a_commit_larger_than_one_writev_is_written_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, mut w, _) = Wal::open(dir.path(), 1 << 30).unwrap();
        let batch: Vec<Record> = (0..1500u32)
            .map(|i| rec(&mut wal, &i.to_le_bytes().repeat(1 + i as usize % 7)))
            .collect();
        let written = w.commit(&batch).unwrap();
        let expected: usize = batch.iter().map(|r| HEADER + r.payload.len()).sum();
        assert_eq!(written, expected as u64);
        let (_, _, found) = Wal::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(found.read_all().1, 0);
        let records = found.read_all().0;
        let got: Vec<&[u8]> = records.iter().map(|r| &r.payload[..]).collect();
        let want: Vec<&[u8]> = batch.iter().map(|r| &r.payload[..]).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_and_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, mut w, _) = Wal::open(dir.path(), 1 << 20).unwrap();
        let batch: Vec<Record> = (0..3u8).map(|i| rec(&mut wal, &[i; 10])).collect();
        w.commit(&batch).unwrap();
        let path = segment_path(dir.path(), batch[0].segment);
        let whole = std::fs::read(&path).unwrap();
        // A crash mid-record: the last record lost 3 bytes.
        std::fs::write(&path, &whole[..whole.len() - 3]).unwrap();
        let (_, _, found) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(found.read_all().0.len(), 2);
        assert_eq!(found.read_all().1, 1);
        // A flipped payload bit fails the CRC.
        let mut bad = whole.clone();
        bad[FILE_HEADER + HEADER + 2] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let (_, _, found) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert!(found.read_all().0.is_empty());
        assert_eq!(found.read_all().1, 1);
        // An absurd length fails without reading past the end.
        let mut huge = whole;
        huge[FILE_HEADER..FILE_HEADER + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&path, &huge).unwrap();
        let (_, _, found) = Wal::open(dir.path(), 1 << 20).unwrap();
        assert!(found.read_all().0.is_empty());
        assert_eq!(found.read_all().1, 1);
    }
}
