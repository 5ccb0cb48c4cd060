//! Checkpoints of a run's live state, so that a collector restart (an upgrade, a crash) does
//! not blind its estimators and alerts: the iteration-wise and SGN windows, both
//! Frequent-Directions sketches, the alerts' histories and edge states, the step counters
//! that pace window and spectrum evaluations, and the run's gauges and counters on `/metrics`.
//!
//! **When.** A run's state is copied when one of its Parquet writes starts and committed with
//! that write: written under a pending name (`run=<id>.live+<write>`) and synced before the
//! write's journal commit, renamed into place with its files after it ([`stage`],
//! [`publish`]), and at the next start put in place if a journal names the write, deleted if
//! not ([`settle_pending`]). So the checkpoint in place holds exactly the steps of the run's
//! committed writes up to some write, whatever moment a crash chose. At start the collector
//! restores the checkpoints and then replays its write-ahead log, whose replayed steps are the
//! unpublished ones: no step enters the state twice, and when every write carried a checkpoint
//! none is missing. A write carries one when its CPU cost (the copy, the encoding, the synced
//! file) is at most `live.checkpoint_time_share` (2 %) of the time since the run's last, or
//! `live.checkpoint_every_s` (30 s) has passed: small states go with every write, large ones
//! as often as their cost allows, and a crash loses at most the steps of the writes between.
//! A drain (and so a clean shutdown) checkpoints every run whose rows are all published, so a
//! stopped and restarted collector continues exactly where it stopped: the unit test
//! `a_run_restored_from_its_checkpoint_continues_as_if_never_stopped` requires the same rows as
//! an uninterrupted collector.
//!
//! **Format.** One file per run, `<wal dir>/live/run=<id>.live`: the magic `GTLIVE01`, the
//! CRC-32 of the rest (little-endian), then a protobuf message ([`RunState`], version 1).
//! Written under a temporary name, synced, renamed into place and the directory synced. A file
//! that fails any check (magic, CRC, decode, version, run id, shapes, non-finite values) is
//! refused whole, counted in `gradtel_collector_live_checkpoint_errors_total`, logged and
//! renamed `….refused`: that run's state starts afresh, as before checkpoints existed. Files
//! of runs beyond `live.max_runs` (the least recently saved) are deleted at start.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use gradtel_stats::fd::FdState;
use prost::Message;

use super::alerts::kind;
use super::spectra::{Fit, GRADIENT, SGN};
use super::windows::Summary;
use crate::metrics::RunGauges;

/// First bytes of every checkpoint file.
const MAGIC: &[u8; 8] = b"GTLIVE01";
/// Version of [`RunState`] this collector writes and reads.
pub const VERSION: u32 = 1;
/// File name suffix of a run's checkpoint.
const SUFFIX: &str = ".live";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("reading or writing the checkpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("not a live-state checkpoint (bad magic bytes)")]
    Magic,
    #[error("checksum mismatch: the file is damaged")]
    Checksum,
    #[error("undecodable: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("version {0}, this collector reads version {VERSION}")]
    Version(u32),
    #[error("holds run {found:?}, its name says {named:?}")]
    RunMismatch { named: String, found: String },
    #[error("bad run id: {0}")]
    RunId(String),
    #[error("inconsistent state: {0}")]
    Invalid(&'static str),
}

/// The directory of the checkpoints, beside the write-ahead log.
pub fn dir(wal_dir: &Path) -> PathBuf {
    wal_dir.join("live")
}

/// The file of `run`'s checkpoint under `dir`.
pub fn file_of(dir: &Path, run: &str) -> PathBuf {
    // Run ids are checked when their reports arrive: 1..=128 of [A-Za-z0-9._-], never `.` or
    // `..`, so they are safe in a file name.
    dir.join(format!("run={run}{SUFFIX}"))
}

/// Frame an encoded state for its file.
pub fn frame(state: &RunState) -> Vec<u8> {
    frame_body(&state.encode_to_vec())
}

/// Frame a state's protobuf encoding (see [`frame`]).
pub fn frame_body(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(12 + body.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Check and decode a file's bytes (see [`frame`]).
pub fn unframe(bytes: &[u8]) -> Result<RunState, CheckpointError> {
    let rest = bytes.strip_prefix(MAGIC).ok_or(CheckpointError::Magic)?;
    let (crc, body) = rest
        .split_first_chunk::<4>()
        .ok_or(CheckpointError::Magic)?;
    if crc32fast::hash(body) != u32::from_le_bytes(*crc) {
        return Err(CheckpointError::Checksum);
    }
    let state = RunState::decode(body)?;
    if state.version != VERSION {
        return Err(CheckpointError::Version(state.version));
    }
    Ok(state)
}

/// A copy of a run's state taken for its checkpoint (`Live::checkpoint`).
pub struct Taken {
    pub state: RunState,
    /// The state's version (steps observed in this process) it holds.
    pub version: u64,
    /// The CPU time the copy took on the estimators' thread.
    pub copy: std::time::Duration,
    /// When it was taken: the next one's interval runs from here, not from the end of this
    /// one's write (a slow write would otherwise shorten the interval it is judged by).
    pub at: std::time::Instant,
}

/// Encode `state` and write it as `run`'s checkpoint ([`frame`], then [`write`]).
pub fn save(dir: &Path, run: &str, state: &RunState) -> Result<(), CheckpointError> {
    write(dir, run, &frame(state))
}

/// Write `framed` as `run`'s checkpoint, replacing the previous one atomically: under a
/// temporary name, synced, then renamed into place ([`publish`]).
pub fn write(dir: &Path, run: &str, framed: &[u8]) -> Result<(), CheckpointError> {
    let dest = file_of(dir, run);
    let tmp = dest.with_extension("live.tmp");
    write_synced(dir, &tmp, framed)?;
    publish(Pending { tmp, dest })
}

/// A checkpoint written under its pending name, to be committed with a Parquet write: named
/// `run=<id>.live+<write>`, where `<write>` is the file name the write's tables share (run ids
/// never hold a `+`).
#[derive(Debug)]
pub struct Pending {
    tmp: PathBuf,
    dest: PathBuf,
}

/// Write `run`'s state under its pending name for the write whose files are named `write`,
/// synced with its directory entry: once the write's journal commit names that file, the
/// checkpoint survives any crash ([`settle_pending`] finishes its rename at the next start).
pub fn stage(
    dir: &Path,
    run: &str,
    write: &str,
    state: &RunState,
) -> Result<Pending, CheckpointError> {
    let tmp = dir.join(format!("run={run}{SUFFIX}+{write}"));
    write_synced(dir, &tmp, &frame(state))?;
    // The journal commit will name this file: its directory entry must outlive a crash too.
    if let Err(e) = fs::File::open(dir).and_then(|d| d.sync_all()) {
        let _ = fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(Pending {
        tmp,
        dest: file_of(dir, run),
    })
}

/// Write `bytes` to `tmp` in `dir` (made if missing) and sync the file; on a failure the file
/// is removed.
fn write_synced(dir: &Path, tmp: &Path, bytes: &[u8]) -> Result<(), CheckpointError> {
    fs::create_dir_all(dir)?;
    let written = fs::File::create(tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written {
        let _ = fs::remove_file(tmp);
        return Err(e.into());
    }
    Ok(())
}

/// Rename a committed pending checkpoint into place, replacing the run's previous one.
pub fn publish(p: Pending) -> Result<(), CheckpointError> {
    fs::rename(&p.tmp, &p.dest)?;
    if let Some(dir) = p.dest.parent() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

/// Delete a pending checkpoint whose write was not committed.
pub fn discard(p: Pending) {
    let _ = fs::remove_file(&p.tmp);
}

/// At start, before [`load`]: every pending checkpoint (see [`stage`]) whose write one of
/// `commits` (the publication journals, in order) names is renamed into place, as that write's
/// Parquet files are ([`crate::journal::roll_forward`]); the others belong to writes a crash
/// cut short before their commit, and are deleted. Of two committed for one run, the later
/// wins. Returns how many were renamed.
pub fn settle_pending(
    dir: &Path,
    commits: &[crate::journal::Commit],
) -> Result<usize, CheckpointError> {
    let committed: std::collections::HashMap<(&str, &str), usize> = commits
        .iter()
        .enumerate()
        .flat_map(|(at, c)| {
            c.files.iter().filter_map(move |(_, dest)| {
                let write = Path::new(dest).file_name()?.to_str()?;
                Some(((c.run.as_str(), write), at))
            })
        })
        .collect();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e.into()),
    };
    let mut promote = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some((run, write)) = name
            .strip_prefix("run=")
            .and_then(|n| n.split_once(&format!("{SUFFIX}+")))
        else {
            continue;
        };
        match committed.get(&(run, write)) {
            Some(&at) => promote.push((at, file_of(dir, run), path)),
            None => fs::remove_file(&path)?,
        }
    }
    promote.sort();
    for (_, dest, tmp) in &promote {
        fs::rename(tmp, dest)?;
    }
    if !promote.is_empty() {
        fs::File::open(dir)?.sync_all()?;
    }
    Ok(promote.len())
}

/// Delete `run`'s checkpoint (a run no longer restored).
pub fn remove(dir: &Path, run: &str) -> Result<(), CheckpointError> {
    match fs::remove_file(file_of(dir, run)) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
        _ => Ok(()),
    }
}

/// Rename a refused checkpoint file to `….refused`: kept for a look, no longer read at start.
pub fn set_aside(path: &Path) -> Result<PathBuf, CheckpointError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".refused");
    let to = PathBuf::from(name);
    fs::rename(path, &to)?;
    Ok(to)
}

/// Every checkpoint under `dir` that passes its checks, and the files that did not (with
/// why). Temporary files of a write a crash cut short are deleted. A missing directory holds
/// none.
pub fn load(dir: &Path) -> (Vec<RunState>, Vec<(PathBuf, CheckpointError)>) {
    let (mut states, mut refused) = (Vec::new(), Vec::new());
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (states, refused),
        Err(e) => {
            refused.push((dir.to_path_buf(), e.into()));
            return (states, refused);
        }
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if name.ends_with(".live.tmp") {
            let _ = fs::remove_file(&path);
            continue;
        }
        let Some(run) = name
            .strip_prefix("run=")
            .and_then(|n| n.strip_suffix(SUFFIX))
        else {
            continue;
        };
        let state = fs::read(&path)
            .map_err(CheckpointError::from)
            .and_then(|b| unframe(&b))
            .and_then(|s| {
                if s.run_id == run {
                    Ok(s)
                } else {
                    Err(CheckpointError::RunMismatch {
                        named: run.to_string(),
                        found: s.run_id.clone(),
                    })
                }
            });
        match state {
            Ok(s) => states.push(s),
            Err(e) => refused.push((path, e)),
        }
    }
    (states, refused)
}

/// One run's live state (`Live`'s `RunLive`).
#[derive(Clone, PartialEq, Message)]
pub struct RunState {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    #[prost(string, tag = "2")]
    pub run_id: String,
    /// When it was encoded (Unix ns): the newest runs are restored first.
    #[prost(int64, tag = "3")]
    pub saved_at_ns: i64,
    #[prost(uint64, tag = "4")]
    pub steps_seen: u64,
    #[prost(uint64, tag = "5")]
    pub since_windows: u64,
    #[prost(uint64, tag = "6")]
    pub since_spectra: u64,
    #[prost(message, optional, tag = "7")]
    pub iteration: Option<WindowsState>,
    #[prost(message, optional, tag = "8")]
    pub sgn: Option<WindowsState>,
    #[prost(message, optional, tag = "9")]
    pub sketches: Option<SketchesState>,
    #[prost(message, optional, tag = "10")]
    pub alerts: Option<AlertsState>,
    /// The run's gauges and counters on `/metrics`, so that they do not vanish until the next
    /// window or spectrum evaluation after a restart, nor the counters restart from zero.
    #[prost(message, optional, tag = "11")]
    pub gauges: Option<GaugesState>,
}

/// A `metrics::RunGauges`.
#[derive(Clone, PartialEq, Message)]
pub struct GaugesState {
    #[prost(uint64, tag = "1")]
    pub last_step: u64,
    #[prost(double, optional, tag = "2")]
    pub grad_norm: Option<f64>,
    #[prost(uint64, tag = "3")]
    pub nonfinite_values_total: u64,
    #[prost(message, repeated, tag = "4")]
    pub tail_index: Vec<Labelled>,
    #[prost(uint64, tag = "5")]
    pub dimension_tested: u64,
    #[prost(uint64, tag = "6")]
    pub dimension_rejected: u64,
    #[prost(message, repeated, tag = "7")]
    pub windows: Vec<WindowSummaryState>,
    #[prost(double, optional, tag = "8")]
    pub sgn_rms: Option<f64>,
    #[prost(message, repeated, tag = "9")]
    pub spectra: Vec<FitState>,
    #[prost(message, repeated, tag = "10")]
    pub alerts_total: Vec<Labelled>,
}

/// A value under a label: a scope's tail index, or an alert kind's count.
#[derive(Clone, PartialEq, Message)]
pub struct Labelled {
    #[prost(string, tag = "1")]
    pub label: String,
    #[prost(double, tag = "2")]
    pub value: f64,
}

/// A `windows::Summary` of one object (`iteration`, `sgn`).
#[derive(Clone, PartialEq, Message)]
pub struct WindowSummaryState {
    #[prost(string, tag = "1")]
    pub object: String,
    #[prost(uint64, tag = "2")]
    pub coordinates: u64,
    #[prost(double, optional, tag = "3")]
    pub powerlaw_rejected: Option<f64>,
    #[prost(double, optional, tag = "4")]
    pub exponential_preferred: Option<f64>,
    #[prost(double, optional, tag = "5")]
    pub gaussian_rejected: Option<f64>,
}

/// A `spectra::Fit`.
#[derive(Clone, PartialEq, Message)]
pub struct FitState {
    #[prost(string, tag = "1")]
    pub sketch: String,
    #[prost(double, tag = "2")]
    pub slope: f64,
    #[prost(double, tag = "3")]
    pub r2: f64,
}

/// The gauges as a checkpoint holds them.
pub fn gauges_state(g: &RunGauges) -> GaugesState {
    GaugesState {
        last_step: g.last_step,
        grad_norm: g.grad_norm,
        nonfinite_values_total: g.nonfinite_values_total,
        tail_index: g
            .tail_index
            .iter()
            .map(|(scope, &value)| Labelled {
                label: scope.clone(),
                value,
            })
            .collect(),
        dimension_tested: g.dimension_tested,
        dimension_rejected: g.dimension_rejected,
        windows: g
            .windows
            .iter()
            .map(|(object, w)| WindowSummaryState {
                object: object.to_string(),
                coordinates: w.coordinates,
                powerlaw_rejected: w.powerlaw_rejected,
                exponential_preferred: w.exponential_preferred,
                gaussian_rejected: w.gaussian_rejected,
            })
            .collect(),
        sgn_rms: g.sgn_rms,
        spectra: g
            .spectra
            .values()
            .map(|f| FitState {
                sketch: f.sketch.to_string(),
                slope: f.slope,
                r2: f.r2,
            })
            .collect(),
        alerts_total: g
            .alerts_total
            .iter()
            .map(|(kind, &n)| Labelled {
                label: kind.to_string(),
                value: n as f64,
            })
            .collect(),
    }
}

/// The gauges a checkpoint holds; names of objects, sketches and alert kinds this collector
/// does not know are refused.
pub fn gauges_from(s: GaugesState) -> Result<RunGauges, CheckpointError> {
    fn known(all: &[&'static str], name: &str) -> Result<&'static str, CheckpointError> {
        all.iter()
            .find(|k| **k == name)
            .copied()
            .ok_or(CheckpointError::Invalid("a gauge names something unknown"))
    }
    let mut g = RunGauges {
        last_step: s.last_step,
        grad_norm: s.grad_norm,
        nonfinite_values_total: s.nonfinite_values_total,
        tail_index: s
            .tail_index
            .into_iter()
            .map(|l| (l.label, l.value))
            .collect(),
        dimension_tested: s.dimension_tested,
        dimension_rejected: s.dimension_rejected,
        sgn_rms: s.sgn_rms,
        ..RunGauges::default()
    };
    for w in s.windows {
        let object = known(&["iteration", "sgn"], &w.object)?;
        let summary = Summary {
            coordinates: w.coordinates,
            powerlaw_rejected: w.powerlaw_rejected,
            exponential_preferred: w.exponential_preferred,
            gaussian_rejected: w.gaussian_rejected,
        };
        g.windows.insert(object, summary);
    }
    for f in s.spectra {
        let sketch = known(&[GRADIENT, SGN], &f.sketch)?;
        let fit = Fit {
            sketch,
            slope: f.slope,
            r2: f.r2,
        };
        g.spectra.insert(sketch, fit);
    }
    for a in s.alerts_total {
        let kind = known(&kind::ALL, &a.label)?;
        if !(a.value >= 0.0 && a.value.fract() == 0.0) {
            return Err(CheckpointError::Invalid("an alert count is not a count"));
        }
        g.alerts_total.insert(kind, a.value as u64);
    }
    Ok(g)
}

/// A `windows::Windows`.
#[derive(Clone, PartialEq, Message)]
pub struct WindowsState {
    #[prost(message, repeated, tag = "1")]
    pub tensors: Vec<TensorWindowsState>,
    #[prost(uint64, tag = "2")]
    pub refused: u64,
}

/// One tensor's windows: coordinate `index[i]` holds the next `len[i]` of `values`, oldest
/// first.
#[derive(Clone, PartialEq, Message)]
pub struct TensorWindowsState {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(uint64, repeated, tag = "2")]
    pub index: Vec<u64>,
    #[prost(uint32, repeated, tag = "3")]
    pub len: Vec<u32>,
    #[prost(double, repeated, tag = "4")]
    pub values: Vec<f64>,
}

/// A `spectra::Sketches`.
#[derive(Clone, PartialEq, Message)]
pub struct SketchesState {
    #[prost(uint64, tag = "1")]
    pub ell: u64,
    #[prost(message, optional, tag = "2")]
    pub identity: Option<IdentityState>,
    #[prost(message, optional, tag = "3")]
    pub gradient: Option<SketchState>,
    #[prost(message, optional, tag = "4")]
    pub sgn: Option<SketchState>,
    #[prost(uint64, tag = "5")]
    pub refused: u64,
}

/// The projection a run's rows share: (kind, seed, dimension).
#[derive(Clone, PartialEq, Message)]
pub struct IdentityState {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(uint64, tag = "2")]
    pub seed: u64,
    #[prost(uint64, tag = "3")]
    pub dim: u64,
}

/// A `gradtel_stats::fd::FdState`.
#[derive(Clone, PartialEq, Message)]
pub struct SketchState {
    #[prost(uint64, tag = "1")]
    pub dim: u64,
    #[prost(uint64, tag = "2")]
    pub ell: u64,
    #[prost(bool, tag = "3")]
    pub centred: bool,
    #[prost(double, repeated, tag = "4")]
    pub rows_filled: Vec<f64>,
    #[prost(uint64, tag = "5")]
    pub ortho: u64,
    #[prost(double, repeated, tag = "6")]
    pub ortho_sq: Vec<f64>,
    #[prost(double, tag = "7")]
    pub shrinkage: f64,
    #[prost(uint64, tag = "8")]
    pub rows: u64,
    #[prost(double, tag = "9")]
    pub weight: f64,
    #[prost(double, repeated, tag = "10")]
    pub mean: Vec<f64>,
    #[prost(uint64, tag = "11")]
    pub skipped: u64,
}

impl From<FdState> for SketchState {
    fn from(s: FdState) -> Self {
        Self {
            dim: s.dim as u64,
            ell: s.ell as u64,
            centred: s.centred,
            rows_filled: s.rows_filled,
            ortho: s.ortho as u64,
            ortho_sq: s.ortho_sq,
            shrinkage: s.shrinkage,
            rows: s.rows,
            weight: s.weight,
            mean: s.mean,
            skipped: s.skipped,
        }
    }
}

/// Shapes out of `usize`'s range on this machine become `usize::MAX`, which
/// `FrequentDirections::from_state` refuses.
impl From<SketchState> for FdState {
    fn from(s: SketchState) -> Self {
        let size = |v: u64| usize::try_from(v).unwrap_or(usize::MAX);
        Self {
            dim: size(s.dim),
            ell: size(s.ell),
            centred: s.centred,
            rows_filled: s.rows_filled,
            ortho: size(s.ortho),
            ortho_sq: s.ortho_sq,
            shrinkage: s.shrinkage,
            rows: s.rows,
            weight: s.weight,
            mean: s.mean,
            skipped: s.skipped,
        }
    }
}

/// An `alerts::AlertState`.
#[derive(Clone, PartialEq, Message)]
pub struct AlertsState {
    #[prost(double, repeated, tag = "1")]
    pub norms: Vec<f64>,
    #[prost(bool, tag = "2")]
    pub in_spike: bool,
    #[prost(bool, tag = "3")]
    pub nonfinite: bool,
    #[prost(double, repeated, tag = "4")]
    pub tails: Vec<f64>,
    #[prost(bool, tag = "5")]
    pub collapsed: bool,
    #[prost(bool, tag = "6")]
    pub changed: bool,
    #[prost(message, repeated, tag = "7")]
    pub slopes: Vec<SlopeState>,
    #[prost(uint32, repeated, tag = "8")]
    pub missing: Vec<u32>,
}

/// A sketch's last spectrum slope and whether it stands changed.
#[derive(Clone, PartialEq, Message)]
pub struct SlopeState {
    #[prost(string, tag = "1")]
    pub sketch: String,
    #[prost(double, optional, tag = "2")]
    pub slope: Option<f64>,
    #[prost(bool, optional, tag = "3")]
    pub changed: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> RunState {
        RunState {
            version: VERSION,
            run_id: "r-1".into(),
            steps_seen: 7,
            alerts: Some(AlertsState {
                norms: vec![1.0, 2.0],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn damaged_files_are_refused_and_good_ones_load() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "r-1", &frame(&state())).unwrap();
        let (states, refused) = load(dir.path());
        assert_eq!(states, vec![state()]);
        assert!(refused.is_empty());

        let good = frame(&state());
        let mut flipped = good.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut other_version = state();
        other_version.version = 2;
        type Expect = fn(&CheckpointError) -> bool;
        let cases: Vec<(&str, Vec<u8>, Expect)> = vec![
            ("a", b"GTLIVE0".to_vec(), |e| {
                matches!(e, CheckpointError::Magic)
            }),
            ("b", b"nonsense, not a checkpoint".to_vec(), |e| {
                matches!(e, CheckpointError::Magic)
            }),
            ("c", flipped, |e| matches!(e, CheckpointError::Checksum)),
            ("d", frame(&other_version), |e| {
                matches!(e, CheckpointError::Version(2))
            }),
            // A file renamed to another run's name.
            ("e", good.clone(), |e| {
                matches!(e, CheckpointError::RunMismatch { .. })
            }),
        ];
        let dir = tempfile::tempdir().unwrap();
        for (run, bytes, _) in &cases {
            fs::write(file_of(dir.path(), run), bytes).unwrap();
        }
        fs::write(dir.path().join("run=x.live.tmp"), b"half").unwrap();
        let (states, mut refused) = load(dir.path());
        assert!(states.is_empty());
        refused.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(refused.len(), cases.len());
        for ((path, e), (run, _, expected)) in refused.iter().zip(&cases) {
            assert_eq!(path, &file_of(dir.path(), run));
            assert!(expected(e), "{run}: {e}");
        }
        assert!(!dir.path().join("run=x.live.tmp").exists());
        assert!(load(&dir.path().join("absent")).0.is_empty());
    }
}
