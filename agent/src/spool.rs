//! The agent's spool: every report from the moment the shipper takes it off the queue until the
//! collector acknowledges it (DESIGN.md §3, decision 6: "the agent keeps unacknowledged reports
//! in a bounded on-disk spool and replays them after a collector restart").
//!
//! On disk (the default), a directory holds:
//! * `lock` — an exclusive `flock` held while an agent uses the spool (with its pid), so two
//!   agents cannot interleave one spool;
//! * segments `<first order, 20 digits>.seg`: the magic `GTSPOOL1`, then records
//!   `len u32 | crc32 u32 | order u64 | epoch u64 | seq u64 | payload`, little-endian, the CRC
//!   (IEEE) over everything after it and the payload the report's protobuf encoding;
//! * `<first>.acks` beside a segment once one of its reports is acknowledged: the acknowledged
//!   orders, 8 bytes each.
//!
//! `order` numbers the reports in the order they were taken off the queue, across agent
//! restarts; resends go in that order, so a rank's steps reach the collector in the order they
//! were ended even when an agent restarted in between (the collector takes a step below one it
//! has seen from a rank as a job resumed from a checkpoint). `epoch` and `seq` are the report's
//! own: a report replayed by the next agent is the same report to the collector's
//! deduplication.
//!
//! Guarantees:
//! * A report is written (`write(2)`) before it is first sent, so every report the collector
//!   may not have made durable is in the spool until its ack comes back: killing the agent loses
//!   nothing it took off the queue. The segment is synced (`fdatasync`) by the shipper at most
//!   every second after a write, which bounds what a power loss can take.
//! * At start the next agent replays the unacknowledged reports, oldest first. A record cut
//!   short by a crash mid-write, or one whose CRC does not match, ends that segment's replay and
//!   is counted (`gradtel_agent_spool_lost_total`); the records before it are replayed.
//! * Acks are written without a sync: one lost in a crash makes its report replayed, and the
//!   collector answers DUPLICATE (at least once, never lost).
//! * Bounded: `max_bytes` of segments. When full the shipper takes nothing more off the queue,
//!   and the queue's overflow is dropped and counted, as without a spool. A fully acknowledged
//!   segment other than the one being appended is deleted at once.
//! * A write that fails (disk full, I/O error) keeps that report in memory instead, counted
//!   (`gradtel_agent_spool_write_errors_total`): it is still delivered at least once while the
//!   agent lives.
//!
//! Without a directory (`--no-spool`) the same bookkeeping keeps the reports in memory only.
//!
//! The spool holds each report encoded, and the shipper sends those bytes as they are
//! ([`gradtel_proto::encoded`]): a report is encoded once whether or not it is spooled.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use gradtel_proto::encoded::EncodedReport;
use gradtel_proto::v1::ShardReport;
use prost::Message;

const MAGIC: &[u8; 8] = b"GTSPOOL1";
/// `len`, `crc`, `order`, `epoch`, `seq`.
const HEADER: usize = 4 + 4 + 8 + 8 + 8;
/// Segments roll at this size, so acknowledged reports leave the disk soon.
pub const DEFAULT_SEGMENT_BYTES: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {dir}: {source}")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("spool {dir} is in use by another agent{owner} (give each agent its own --spool-dir)")]
    InUse { dir: PathBuf, owner: String },
    #[error("spooled report {order} in {path}: {reason}")]
    Unreadable {
        path: PathBuf,
        order: u64,
        reason: String,
    },
}

/// Where an unacknowledged report is kept.
#[derive(Debug, Clone)]
pub enum Stored {
    Memory(EncodedReport),
    Disk {
        path: Arc<PathBuf>,
        order: u64,
        /// Of the payload, past the record's header.
        offset: u64,
        len: u32,
    },
}

impl Stored {
    /// The encoded report, read back from its segment if it is on disk (blocking I/O). Its
    /// CRC was checked when the spool was opened (or it was written by this process).
    pub fn load(&self) -> Result<EncodedReport, SpoolError> {
        match self {
            Stored::Memory(r) => Ok(r.clone()),
            Stored::Disk {
                path,
                order,
                offset,
                len,
            } => {
                let unreadable = |reason: String| SpoolError::Unreadable {
                    path: path.to_path_buf(),
                    order: *order,
                    reason,
                };
                let mut f = File::open(path.as_path()).map_err(|e| unreadable(e.to_string()))?;
                f.seek(SeekFrom::Start(*offset))
                    .map_err(|e| unreadable(e.to_string()))?;
                let mut buf = vec![0u8; *len as usize];
                f.read_exact(&mut buf)
                    .map_err(|e| unreadable(e.to_string()))?;
                Ok(EncodedReport(buf.into()))
            }
        }
    }
}

struct Entry {
    stored: Stored,
    key: (u64, u64),
    since: Instant,
    /// Sent at least once (or, taken over from a previous agent, perhaps sent).
    sent: bool,
}

struct Segment {
    path: Arc<PathBuf>,
    bytes: u64,
    /// Records not yet acknowledged.
    live: usize,
    acks: Option<File>,
}

struct Disk {
    dir: PathBuf,
    /// Held (flocked) for the spool's lifetime.
    _lock: File,
    segments: BTreeMap<u64, Segment>,
    /// First order and file of the segment being appended.
    active: Option<(u64, File)>,
    bytes: u64,
    max_bytes: u64,
    segment_bytes: u64,
    dirty: bool,
}

/// What opening a spool found of a previous agent's.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Recovered {
    /// Unacknowledged reports, to be sent again.
    pub replayed: usize,
    /// Records cut short or corrupt (never sent again).
    pub lost: usize,
}

/// The unacknowledged reports, in the order they were taken off the queue.
pub struct Spool {
    disk: Option<Disk>,
    entries: BTreeMap<u64, Entry>,
    by_key: HashMap<(u64, u64), u64>,
    next_order: u64,
    /// Writes that failed; those reports are kept in memory.
    pub write_errors: u64,
}

fn io_err(dir: &Path) -> impl Fn(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        dir: dir.to_path_buf(),
        source,
    }
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("{first:020}.seg"))
}

fn acks_path(seg: &Path) -> PathBuf {
    seg.with_extension("acks")
}

/// One record's header fields, read back.
struct Record {
    order: u64,
    epoch: u64,
    seq: u64,
    payload_offset: u64,
    len: u32,
}

/// The records of one segment's bytes up to the first that is cut short or corrupt; the second
/// value says whether one was.
fn parse_segment(bytes: &[u8]) -> (Vec<Record>, bool) {
    let mut records = Vec::new();
    if bytes.len() < MAGIC.len() {
        // A crash right after the segment was created: nothing was in it.
        return (records, !MAGIC.starts_with(bytes));
    }
    if &bytes[..MAGIC.len()] != MAGIC {
        return (records, true);
    }
    let mut at = MAGIC.len();
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap_or([0; 4]));
    let u64_at = |b: &[u8], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let mut last_order = None;
    while at < bytes.len() {
        if bytes.len() - at < HEADER {
            return (records, true);
        }
        let len = u32_at(bytes, at);
        let crc = u32_at(bytes, at + 4);
        let end = at + HEADER + len as usize;
        if end > bytes.len() || crc32fast::hash(&bytes[at + 8..end]) != crc {
            return (records, true);
        }
        let order = u64_at(bytes, at + 8);
        if last_order.is_some_and(|l| order <= l) {
            return (records, true);
        }
        last_order = Some(order);
        records.push(Record {
            order,
            epoch: u64_at(bytes, at + 16),
            seq: u64_at(bytes, at + 24),
            payload_offset: (at + HEADER) as u64,
            len,
        });
        at = end;
    }
    (records, false)
}

impl Spool {
    /// Reports kept in memory only (`--no-spool`): lost if the agent dies.
    pub fn in_memory() -> Spool {
        Spool {
            disk: None,
            entries: BTreeMap::new(),
            by_key: HashMap::new(),
            next_order: 1,
            write_errors: 0,
        }
    }

    /// Open (creating) the spool directory, take its lock, and take in the unacknowledged
    /// reports a previous agent left there. Fully acknowledged segments are deleted.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        segment_bytes: u64,
    ) -> Result<(Spool, Recovered), SpoolError> {
        let err = io_err(dir);
        std::fs::create_dir_all(dir).map_err(&err)?;
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("lock"))
            .map_err(&err)?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut owner = String::new();
            let _ = lock.read_to_string(&mut owner);
            let owner = owner.trim();
            return Err(SpoolError::InUse {
                dir: dir.to_path_buf(),
                owner: if owner.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {owner})")
                },
            });
        }
        lock.set_len(0).map_err(&err)?;
        write!(lock, "{}", std::process::id()).map_err(&err)?;

        let mut firsts: Vec<u64> = Vec::new();
        for e in std::fs::read_dir(dir).map_err(&err)? {
            let name = e.map_err(&err)?.file_name();
            let name = name.to_string_lossy();
            if let Some(first) = name.strip_suffix(".seg").and_then(|s| s.parse().ok()) {
                firsts.push(first);
            } else if let Some(stem) = name.strip_suffix(".acks")
                && !dir.join(format!("{stem}.seg")).exists()
            {
                let _ = std::fs::remove_file(dir.join(&*name));
            }
        }
        firsts.sort_unstable();

        let mut spool = Spool::in_memory();
        let mut recovered = Recovered::default();
        let mut disk = Disk {
            dir: dir.to_path_buf(),
            _lock: lock,
            segments: BTreeMap::new(),
            active: None,
            bytes: 0,
            max_bytes,
            segment_bytes: segment_bytes.max(MAGIC.len() as u64 + 1),
            dirty: false,
        };
        let now = Instant::now();
        for first in firsts {
            let path = Arc::new(segment_path(dir, first));
            let bytes = std::fs::read(path.as_path()).map_err(&err)?;
            let (records, cut) = parse_segment(&bytes);
            if cut {
                recovered.lost += 1;
                tracing::warn!(segment = %path.display(), kept = records.len(),
                    "spool segment ends in a record cut short or corrupt: it is not replayed");
            }
            let acked: HashSet<u64> = std::fs::read(acks_path(&path))
                .unwrap_or_default()
                .chunks_exact(8)
                .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
                .collect();
            let mut live = 0;
            for r in &records {
                spool.next_order = spool.next_order.max(r.order + 1);
                if acked.contains(&r.order) || spool.by_key.contains_key(&(r.epoch, r.seq)) {
                    continue;
                }
                live += 1;
                spool.by_key.insert((r.epoch, r.seq), r.order);
                spool.entries.insert(
                    r.order,
                    Entry {
                        stored: Stored::Disk {
                            path: path.clone(),
                            order: r.order,
                            offset: r.payload_offset,
                            len: r.len,
                        },
                        key: (r.epoch, r.seq),
                        since: now,
                        sent: true,
                    },
                );
            }
            spool.next_order = spool.next_order.max(first + 1);
            if live == 0 {
                let _ = std::fs::remove_file(path.as_path());
                let _ = std::fs::remove_file(acks_path(&path));
                continue;
            }
            recovered.replayed += live;
            disk.bytes += bytes.len() as u64;
            disk.segments.insert(
                first,
                Segment {
                    path,
                    bytes: bytes.len() as u64,
                    live,
                    acks: None,
                },
            );
        }
        spool.disk = Some(disk);
        Ok((spool, recovered))
    }

    /// Reports held, unacknowledged.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Reports held on disk, which outlive the agent.
    pub fn held_on_disk(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e.stored, Stored::Disk { .. }))
            .count()
    }

    /// Bytes of segments on disk (0 in memory).
    pub fn bytes(&self) -> u64 {
        self.disk.as_ref().map_or(0, |d| d.bytes)
    }

    /// Whether another report may be taken: fewer than `max_reports` held and, on disk, the
    /// segments under their byte budget.
    pub fn has_room(&mut self, max_reports: usize) -> bool {
        if self.entries.len() >= max_reports {
            return false;
        }
        let Some(disk) = self.disk.as_mut() else {
            return true;
        };
        if disk.bytes >= disk.max_bytes {
            // The segment being appended is kept while the collector keeps up (no file created
            // and deleted per report); over budget, a fully acknowledged one goes now.
            if let Some((first, _)) = disk.active
                && disk.segments.get(&first).is_some_and(|s| s.live == 0)
            {
                disk.active = None;
                disk.remove(first);
            }
        }
        disk.bytes < disk.max_bytes
    }

    /// Keep `report` until it is acknowledged (on disk, written before this returns); its
    /// encoding, to send. `sent`: whether the caller sends it now.
    pub fn push(&mut self, report: &ShardReport, sent: bool) -> EncodedReport {
        let order = self.next_order;
        self.next_order += 1;
        let key = (report.agent_epoch, report.seq);
        let record = encode_record(order, report);
        let payload = EncodedReport(record.slice(HEADER..));
        let stored = match self.disk.as_mut().map(|d| d.append(order, &record)) {
            Some(Ok(stored)) => stored,
            Some(Err(e)) => {
                self.write_errors += 1;
                tracing::warn!(error = %e, "spool write failed: the report is kept in memory only");
                Stored::Memory(payload.clone())
            }
            None => Stored::Memory(payload.clone()),
        };
        if let Some(old) = self.by_key.insert(key, order) {
            // The same report twice (cannot come from one agent); keep the newer copy only.
            self.forget(old);
        }
        self.entries.insert(
            order,
            Entry {
                stored,
                key,
                since: Instant::now(),
                sent,
            },
        );
        payload
    }

    /// The collector acknowledged (epoch, seq): forget it. Returns when it was taken, if held.
    pub fn ack(&mut self, epoch: u64, seq: u64) -> Option<Instant> {
        let order = self.by_key.remove(&(epoch, seq))?;
        let since = self.entries.get(&order).map(|e| e.since);
        self.forget(order);
        since
    }

    fn forget(&mut self, order: u64) {
        let Some(entry) = self.entries.remove(&order) else {
            return;
        };
        if self.by_key.get(&entry.key) == Some(&order) {
            self.by_key.remove(&entry.key);
        }
        if let (Some(disk), Stored::Disk { .. }) = (self.disk.as_mut(), &entry.stored) {
            disk.acknowledged(order);
        }
    }

    /// Every held report's place, oldest first, to be sent now; also how many of them were
    /// sent before.
    pub fn take_for_sending(&mut self) -> (Vec<Stored>, usize) {
        let mut before = 0;
        let list = self
            .entries
            .values_mut()
            .map(|e| {
                before += usize::from(std::mem::replace(&mut e.sent, true));
                e.stored.clone()
            })
            .collect();
        (list, before)
    }

    /// A handle to sync, if something was appended since the last call.
    pub fn take_sync(&mut self) -> Option<File> {
        let disk = self.disk.as_mut()?;
        if !std::mem::take(&mut disk.dirty) {
            return None;
        }
        disk.active.as_ref().and_then(|(_, f)| f.try_clone().ok())
    }

    /// On shutdown: delete what is fully acknowledged; the rest waits for the next agent.
    pub fn close(mut self) {
        if let Some(disk) = self.disk.as_mut()
            && let Some((first, f)) = disk.active.take()
        {
            let _ = f.sync_data();
            if disk.segments.get(&first).is_some_and(|s| s.live == 0) {
                disk.remove(first);
            }
        }
    }
}

/// A report's spool record: header and protobuf encoding in one buffer, so that the payload
/// sent is a slice of the bytes written.
fn encode_record(order: u64, report: &ShardReport) -> Bytes {
    let len = report.encoded_len();
    let mut rec = Vec::with_capacity(HEADER + len);
    // Reports are bounded far below 4 GiB (the collector takes 64 MiB messages).
    rec.extend_from_slice(&(len as u32).to_le_bytes());
    rec.extend_from_slice(&[0; 4]);
    rec.extend_from_slice(&order.to_le_bytes());
    rec.extend_from_slice(&report.agent_epoch.to_le_bytes());
    rec.extend_from_slice(&report.seq.to_le_bytes());
    // Encoding fails only for want of room, and a Vec grows.
    let _ = report.encode(&mut rec);
    let crc = crc32fast::hash(&rec[8..]);
    rec[4..8].copy_from_slice(&crc.to_le_bytes());
    rec.into()
}

impl Disk {
    fn append(&mut self, order: u64, rec: &[u8]) -> Result<Stored, std::io::Error> {
        let len = rec.len() - HEADER;
        let roll = match &self.active {
            None => true,
            Some((first, _)) => self.segments.get(first).is_none_or(|s| {
                s.bytes > MAGIC.len() as u64 && s.bytes + rec.len() as u64 > self.segment_bytes
            }),
        };
        if roll {
            self.roll(order)?;
        }
        let Some((first, file)) = self.active.as_mut() else {
            return Err(std::io::Error::other("no spool segment open"));
        };
        let first = *first;
        let Some(seg) = self.segments.get_mut(&first) else {
            return Err(std::io::Error::other("spool segment lost"));
        };
        if let Err(e) = file.write_all(rec) {
            // Whatever part of the record landed ends this segment's replay; start another.
            self.active = None;
            if seg.live == 0 {
                self.remove(first);
            }
            return Err(e);
        }
        let offset = seg.bytes + HEADER as u64;
        seg.bytes += rec.len() as u64;
        seg.live += 1;
        self.bytes += rec.len() as u64;
        self.dirty = true;
        Ok(Stored::Disk {
            path: seg.path.clone(),
            order,
            offset,
            len: len as u32,
        })
    }

    /// Start a new segment whose first record is `order`; the old one is deleted if done.
    fn roll(&mut self, order: u64) -> Result<(), std::io::Error> {
        if let Some((first, f)) = self.active.take() {
            let _ = f.sync_data();
            if self.segments.get(&first).is_some_and(|s| s.live == 0) {
                self.remove(first);
            }
        }
        let path = segment_path(&self.dir, order);
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        if let Err(e) = f.write_all(MAGIC) {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        self.bytes += MAGIC.len() as u64;
        self.segments.insert(
            order,
            Segment {
                path: Arc::new(path),
                bytes: MAGIC.len() as u64,
                live: 0,
                acks: None,
            },
        );
        self.active = Some((order, f));
        Ok(())
    }

    fn acknowledged(&mut self, order: u64) {
        let Some((&first, seg)) = self.segments.range_mut(..=order).next_back() else {
            return;
        };
        seg.live = seg.live.saturating_sub(1);
        let active = self.active.as_ref().is_some_and(|(a, _)| *a == first);
        if seg.live == 0 && !active {
            self.remove(first);
            return;
        }
        if seg.acks.is_none() {
            seg.acks = OpenOptions::new()
                .append(true)
                .create(true)
                .open(acks_path(&seg.path))
                .ok();
        }
        // Without the ack on disk the report is replayed after a restart and the collector
        // answers DUPLICATE: nothing is lost, so a failed write is not an error.
        if let Some(f) = seg.acks.as_mut() {
            let _ = f.write_all(&order.to_le_bytes());
        }
    }

    fn remove(&mut self, first: u64) {
        if let Some(seg) = self.segments.remove(&first) {
            self.bytes = self.bytes.saturating_sub(seg.bytes);
            let _ = std::fs::remove_file(seg.path.as_path());
            let _ = std::fs::remove_file(acks_path(&seg.path));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn report(epoch: u64, seq: u64, pad: usize) -> ShardReport {
        ShardReport {
            run_id: format!("run-{}", "x".repeat(pad)),
            agent_epoch: epoch,
            seq,
            step: seq * 10,
            loss: Some(seq as f64 / 7.0),
            ..Default::default()
        }
    }

    fn loaded(spool: &mut Spool) -> Vec<ShardReport> {
        spool
            .take_for_sending()
            .0
            .iter()
            .map(|s| ShardReport::decode(s.load().unwrap().0).unwrap())
            .collect()
    }

    fn segments(dir: &Path) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn unacknowledged_reports_outlive_the_agent_and_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let sent: Vec<ShardReport> = (1..=10).map(|s| report(7, s, s as usize)).collect();
        {
            let (mut spool, found) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
            assert_eq!(found, Recovered::default());
            for r in &sent {
                spool.push(r, true);
            }
            for seq in [2, 5, 7] {
                assert!(spool.ack(7, seq).is_some());
            }
            assert!(spool.ack(7, 5).is_none(), "a second ack finds nothing");
            assert!(spool.ack(8, 1).is_none(), "acks are per epoch");
            // Dropped without `close`, as by a SIGKILL: the lock goes with the process.
        }
        let (mut spool, found) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        assert_eq!(
            found,
            Recovered {
                replayed: 7,
                lost: 0
            }
        );
        let want: Vec<ShardReport> = sent
            .iter()
            .filter(|r| ![2, 5, 7].contains(&r.seq))
            .cloned()
            .collect();
        assert_eq!(loaded(&mut spool), want);
        assert_eq!(spool.held_on_disk(), 7);
    }

    #[test]
    fn a_restarted_agent_appends_after_what_it_replays() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
            for s in 1..=3 {
                spool.push(&report(100, s, 0), true);
            }
        }
        {
            let (mut spool, found) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
            assert_eq!(found.replayed, 3);
            // The next agent has an epoch of its own and numbers its reports from 1 again.
            for s in 1..=2 {
                spool.push(&report(5, s, 0), true);
            }
            assert!(spool.ack(100, 1).is_some());
        }
        let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        let keys: Vec<(u64, u64)> = loaded(&mut spool)
            .iter()
            .map(|r| (r.agent_epoch, r.seq))
            .collect();
        assert_eq!(keys, vec![(100, 2), (100, 3), (5, 1), (5, 2)]);
    }

    #[test]
    fn a_second_agent_cannot_share_a_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (_first, _) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        let err = Spool::open(dir.path(), 1 << 30, 1 << 20).err().unwrap();
        let msg = err.to_string();
        assert!(matches!(err, SpoolError::InUse { .. }), "{msg}");
        assert!(
            msg.contains(&format!("pid {}", std::process::id())),
            "{msg}"
        );
    }

    #[test]
    fn a_spool_path_that_is_a_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let msg = Spool::open(&file, 1 << 30, 1 << 20)
            .err()
            .unwrap()
            .to_string();
        assert!(msg.contains("not-a-dir"), "{msg}");
    }

    #[test]
    fn segments_roll_and_acknowledged_ones_leave_the_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 1_000).unwrap();
        for s in 1..=20 {
            spool.push(&report(1, s, 200), true);
        }
        let segs = segments(dir.path()).len();
        assert!(
            segs >= 5,
            "{segs} segments of ≤ 1000 bytes for 20 records of ≈ 250"
        );
        let before = spool.bytes();
        for s in 1..=10 {
            spool.ack(1, s);
        }
        assert!(segments(dir.path()).len() < segs);
        assert!(spool.bytes() < before);
        for s in 11..=20 {
            spool.ack(1, s);
        }
        // Only the segment being appended is left, and closing removes it.
        assert_eq!(segments(dir.path()).len(), 1);
        spool.close();
        assert!(segments(dir.path()).is_empty());
        let (spool, found) = Spool::open(dir.path(), 1 << 30, 1_000).unwrap();
        assert_eq!((spool.len(), found), (0, Recovered::default()));
    }

    #[test]
    fn a_record_cut_short_or_corrupt_ends_its_segment_replay_and_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
            for s in 1..=5 {
                spool.push(&report(1, s, 50), true);
            }
        }
        let seg = segments(dir.path()).remove(0);
        let bytes = std::fs::read(&seg).unwrap();
        // A crash in the middle of writing the last record.
        std::fs::write(&seg, &bytes[..bytes.len() - 3]).unwrap();
        {
            let (mut spool, found) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
            assert_eq!(
                found,
                Recovered {
                    replayed: 4,
                    lost: 1
                }
            );
            assert_eq!(loaded(&mut spool).last().unwrap().seq, 4);
        }
        // A flipped bit in the third record's payload: its CRC no longer matches.
        let mut bytes = std::fs::read(&seg).unwrap();
        let record = HEADER + report(1, 1, 50).encoded_len();
        bytes[MAGIC.len() + 2 * record + HEADER + 3] ^= 0x10;
        std::fs::write(&seg, &bytes).unwrap();
        let (spool, found) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        assert_eq!(
            found,
            Recovered {
                replayed: 2,
                lost: 1
            }
        );
        assert_eq!(spool.len(), 2);
    }

    #[test]
    fn the_byte_budget_bounds_the_spool() {
        let dir = tempfile::tempdir().unwrap();
        let (mut spool, _) = Spool::open(dir.path(), 2_000, 1 << 20).unwrap();
        let mut pushed = 0;
        while spool.has_room(usize::MAX) {
            pushed += 1;
            spool.push(&report(1, pushed, 200), true);
        }
        assert!(
            (7..=9).contains(&pushed),
            "{pushed} records of ≈ 250 bytes in 2000"
        );
        assert!(!spool.has_room(usize::MAX));
        // Acks free the budget, even of the segment being appended (no deadlock when the
        // budget is below one segment).
        for s in 1..pushed {
            spool.ack(1, s);
        }
        assert!(
            !spool.has_room(usize::MAX),
            "one record is still unacknowledged"
        );
        spool.ack(1, pushed);
        assert!(spool.has_room(usize::MAX));
        spool.push(&report(1, pushed + 1, 200), true);
        assert_eq!(spool.len(), 1);
        assert!(!Spool::in_memory().has_room(0), "the count bound holds too");
    }

    #[test]
    fn resends_count_only_reports_sent_before() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
            spool.push(&report(1, 1, 0), true);
        }
        let (mut spool, _) = Spool::open(dir.path(), 1 << 30, 1 << 20).unwrap();
        // Taken while the collector was away: never sent.
        spool.push(&report(2, 1, 0), false);
        spool.push(&report(2, 2, 0), false);
        let (list, before) = spool.take_for_sending();
        assert_eq!(
            (list.len(), before),
            (3, 1),
            "the replayed one may have been sent"
        );
        let (_, before) = spool.take_for_sending();
        assert_eq!(before, 3);
    }

    #[test]
    fn a_report_pushed_twice_is_held_once_and_acknowledged_once() {
        let mut spool = Spool::in_memory();
        spool.push(&report(1, 1, 0), true);
        spool.push(&report(1, 1, 5), true);
        assert_eq!(spool.len(), 1);
        assert_eq!(
            loaded(&mut spool)[0].run_id,
            report(1, 1, 5).run_id,
            "the newer copy"
        );
        assert!(spool.ack(1, 1).is_some());
        assert!(spool.is_empty());
    }

    #[test]
    fn in_memory_the_same_bookkeeping_holds() {
        let mut spool = Spool::in_memory();
        for s in 1..=4 {
            spool.push(&report(3, s, 0), true);
        }
        spool.ack(3, 2);
        let seqs: Vec<u64> = loaded(&mut spool).iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 3, 4]);
        assert_eq!((spool.held_on_disk(), spool.bytes()), (0, 0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(usize),
        Ack(usize),
        Restart,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0usize..400).prop_map(Op::Push),
            2 => (0usize..64).prop_map(Op::Ack),
            1 => Just(Op::Restart),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the pushes, acks and restarts, the spool holds exactly the reports pushed
        /// and not acknowledged, in the order they were pushed.
        #[test]
        fn the_spool_holds_exactly_the_unacknowledged_reports_in_order(
            ops in proptest::collection::vec(op(), 1..80),
            segment_bytes in 200u64..4_000,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut model: Vec<ShardReport> = Vec::new();
            let (mut spool, _) = Spool::open(dir.path(), 1 << 30, segment_bytes).unwrap();
            let mut epoch = 1;
            let mut seq = 0;
            for op in ops {
                match op {
                    Op::Push(pad) => {
                        seq += 1;
                        let r = report(epoch, seq, pad);
                        spool.push(&r, true);
                        model.push(r);
                    }
                    Op::Ack(i) if !model.is_empty() => {
                        let r = model.remove(i % model.len());
                        prop_assert!(spool.ack(r.agent_epoch, r.seq).is_some());
                    }
                    Op::Ack(_) => {}
                    Op::Restart => {
                        drop(spool);
                        let (again, found) =
                            Spool::open(dir.path(), 1 << 30, segment_bytes).unwrap();
                        prop_assert_eq!(found, Recovered { replayed: model.len(), lost: 0 });
                        spool = again;
                        epoch += 1;
                        seq = 0;
                    }
                }
                prop_assert_eq!(loaded(&mut spool), model.clone());
            }
        }
    }
}
