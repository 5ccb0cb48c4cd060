//! Step assembly: gathers the reports of every (rank, shard) of one (run, step).
//!
//! A step is complete when `world_size × shard_count` distinct (rank, shard) reports are in. A
//! step that waits longer than the straggler timeout after its first report is released as it
//! stands and its missing ranks are recorded. A report for a step that was already released is
//! released alone, marked late, so nothing acknowledged is lost. Memory is bounded by
//! `max_pending` steps and by a bounded memory of released steps per run.
//!
//! Each part's histograms are merged into its step's as the part arrives, and given back to
//! the decoders: a pending step holds one dense histogram per tensor, not one per part. A
//! decoded histogram takes 16 bytes a bucket, so for a large model (161 tensors, ≈ 5 MB a
//! report) the steps waiting for their last ranks held gigabytes (bench/RESULTS.md, "Reports
//! the size of a large model's"). Counts add exactly, so the rows are the same whatever the
//! order of arrival. A histogram whose dense form would be larger than the step's sparse parts
//! (a few buckets over a wide range) stays in its part, and so does one whose precision differs
//! from the first arrived's; [`crate::tables::steps::build_rows`] merges the first at release
//! and counts the second as a merge error.
//!
//! A training job resumed from a checkpoint under the same run id goes back over steps it has
//! reported already. Each (rank, shard) reports its steps in increasing order, so a report for a
//! step below the highest one its (rank, shard) has reported starts a new *trajectory* of the
//! run for that (rank, shard); the other ranks join it when they go back too. The steps a
//! previous collector published count as reported (from the publication journals), so a resume
//! is recognised across a collector restart too; while the write-ahead log is replayed, only a
//! step already released counts (a step that waited for a straggler is replayed after later
//! steps that were published). A trajectory is labelled with the collector's clock (Unix ns)
//! when it first saw one of its ranks go back (0 for the run's first one, and for the one its
//! ranks are in when a collector starts), and steps are assembled per (trajectory, step): the
//! resumed job's steps are merged across ranks and estimated like any other, not taken as late
//! reports, and every row says which trajectory it belongs to, so a reader keeps the latest of
//! each step.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque, btree_map};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gradtel_stats::LogHistogram;

use crate::journal::Logged;
use crate::report::Report;

/// Released steps remembered per run, to recognise late reports.
const RELEASED_MEMORY: usize = 1 << 16;

/// The reports of one (run, step), ready to merge.
#[derive(Debug)]
pub struct Assembly {
    pub run_id: Arc<str>,
    pub step: u64,
    pub world_size: u32,
    pub shard_count: u32,
    /// Distinct (rank, shard) parts, in (rank, shard) order. A tensor's histogram is empty in
    /// every part whose histogram is in `hists`.
    pub parts: Vec<Report>,
    /// Per tensor, the histograms of the parts merged as they arrived (see the module header).
    pub hists: HashMap<Arc<str>, LogHistogram>,
    /// Every logged report this assembly releases once its rows are published, including
    /// repeats of a (rank, shard) that were not merged (an agent restarted mid-step).
    pub reports: Vec<Logged>,
    pub late: bool,
    /// The run's trajectory the step belongs to: 0 for the first, else the Unix ns at which the
    /// collector first saw a rank go back to an earlier step (see the module header).
    pub trajectory: u64,
}

struct Pending {
    world_size: u32,
    shard_count: u32,
    parts: BTreeMap<(u32, u32), Report>,
    hists: HashMap<Arc<str>, LogHistogram>,
    reports: Vec<Logged>,
    first_at: Instant,
}

/// Merge the histograms of a part that joins its step into the step's `hists`, and give their
/// vectors back to the decoders. `parts` is how many parts the step expects.
///
/// Dense, a histogram takes 8 bytes a bucket of its range; sparse, 16 a non-empty bucket. A
/// histogram merges only where the step's dense one is no larger than the step's parts would
/// hold sparse, were they all like this one: one with a few buckets spread over a wide range
/// (the f32 range is 35,000 buckets at 7 bits, 4.6 million at 14) stays in its part, merged
/// at release as before.
fn absorb_hists(hists: &mut HashMap<Arc<str>, LogHistogram>, r: &mut Report, parts: u64) {
    let mut spent = Vec::new();
    for t in &mut r.tensors {
        let h = &mut t.summary.hist;
        let Some((lo, hi)) = h.span() else { continue };
        let room = 2 * (h.len() as u64).saturating_mul(parts);
        let merged = match hists.entry(t.name.clone()) {
            Entry::Occupied(e) => {
                let m = e.into_mut();
                let (first, last) = m.span().unwrap_or((lo, hi));
                if hi.max(last) - lo.min(first) >= room {
                    continue;
                }
                m
            }
            Entry::Vacant(e) => {
                let span = hi - lo + 1;
                if span > room {
                    continue;
                }
                // Checked when decoded; a histogram that fails it stays in its part.
                let Ok(mut m) = LogHistogram::new(h.precision_bits()) else {
                    continue;
                };
                // Room for the other parts' ranges, which differ a little from this one's:
                // growing downwards copies the counts.
                let margin = (span / 8).min((room - span) / 2);
                m.cover(lo.saturating_sub(margin), hi.saturating_add(margin));
                e.insert(m)
            }
        };
        if merged.merge_sparse(h).is_ok() {
            let (index, count) = h.take_parts();
            spent.extend([index, count]);
        }
    }
    if !spent.is_empty() {
        gradtel_proto::recycle::U64.give(spent);
    }
}

/// A run's new trajectory: the first of its ranks to go back, and where from and to.
#[derive(Debug, Clone, PartialEq)]
pub struct Resume {
    pub run_id: Arc<str>,
    pub rank: u32,
    pub shard: u32,
    /// The highest step the rank had reported, and the step it went back to.
    pub from: u64,
    pub to: u64,
    pub trajectory: u64,
}

/// (trajectory, step) of a run.
type StepKey = (u64, u64);

#[derive(Default)]
struct Released {
    set: HashSet<StepKey>,
    order: VecDeque<StepKey>,
}

/// The trajectories of one run, as its (rank, shard)s go back to earlier steps.
struct Trajectories {
    /// Per (rank, shard): the highest step it reported in its current trajectory, and that
    /// trajectory's position in `labels`.
    sources: HashMap<(u32, u32), (u64, usize)>,
    /// Each trajectory's label, in the order they began; the first is 0.
    labels: Vec<u64>,
}

impl Default for Trajectories {
    fn default() -> Self {
        Self {
            sources: HashMap::new(),
            labels: vec![0],
        }
    }
}

impl Trajectories {
    /// The label of the trajectory a report of `step` by (rank, shard) belongs to, and, when it
    /// began one (no other rank had gone back that far in the run's trajectories yet), the
    /// highest step the rank had reported before.
    ///
    /// A rank goes back when it reports a step below its highest one, and `counts` says the
    /// step may be a resume (see [`Assembler::add`]). Equal steps are not one (an agent that
    /// restarted mid-step may report one twice).
    fn place(
        &mut self,
        (rank, shard, step): (u32, u32, u64),
        counts: impl Fn(StepKey) -> bool,
        now_ns: impl FnOnce() -> u64,
    ) -> (u64, Option<u64>) {
        let (highest, at) = self.sources.entry((rank, shard)).or_insert((step, 0));
        let mut began = None;
        if step < *highest && self.labels[..=*at].iter().any(|&l| counts((l, step))) {
            *at += 1;
            if *at == self.labels.len() {
                let last = self.labels.last().copied().unwrap_or(0);
                self.labels.push(now_ns().max(last + 1));
                began = Some(*highest);
            }
            *highest = step;
        } else {
            *highest = (*highest).max(step);
        }
        (self.labels[*at], began)
    }

    /// A step a previous process published for (rank, shard), in the first trajectory.
    fn seed(&mut self, rank: u32, shard: u32, step: u64) {
        let (highest, _) = self.sources.entry((rank, shard)).or_insert((step, 0));
        *highest = (*highest).max(step);
    }
}

pub struct Assembler {
    timeout: Duration,
    max_pending: usize,
    pending: HashMap<(Arc<str>, u64, u64), Pending>,
    released: HashMap<Arc<str>, Released>,
    trajectories: HashMap<Arc<str>, Trajectories>,
    /// Trajectories begun since [`Assembler::take_resumes`] last took them.
    resumes: Vec<Resume>,
    /// Between [`Assembler::begin_replay`] and [`Assembler::end_replay`]: the reports come from
    /// the write-ahead log of a previous process.
    replaying: bool,
}

impl Assembler {
    pub fn new(timeout: Duration, max_pending: usize) -> Self {
        Self {
            timeout,
            max_pending: max_pending.max(1),
            pending: HashMap::new(),
            released: HashMap::new(),
            trajectories: HashMap::new(),
            resumes: Vec::new(),
            replaying: false,
        }
    }

    /// The trajectories begun since the last call: resumed jobs going back over reported
    /// steps.
    pub fn take_resumes(&mut self) -> Vec<Resume> {
        std::mem::take(&mut self.resumes)
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Add a report; returns the assemblies it completes (itself if late, the completed step,
    /// and possibly the oldest pending step evicted to make room).
    pub fn add(&mut self, mut r: Report) -> Vec<Assembly> {
        let run = r.key.run_id.clone();
        let step = r.step;
        let logged = r.logged();
        // Live, a (rank, shard)'s steps arrive in increasing order unless its job was resumed.
        // Replayed, a step that waited for a straggler comes after later steps that were
        // published before the crash: there only a step released already (by this trajectory
        // or an earlier one) is a resume.
        let (released, replaying) = (self.released.get(&run), self.replaying);
        let (trajectory, began) = match self.trajectories.get_mut(&run) {
            Some(t) => t.place(
                (r.key.rank, r.key.shard, step),
                |k| !replaying || released.is_some_and(|rel| rel.set.contains(&k)),
                unix_nanos,
            ),
            None => {
                let mut t = Trajectories::default();
                t.sources.insert((r.key.rank, r.key.shard), (step, 0));
                self.trajectories.insert(run.clone(), t);
                (0, None)
            }
        };
        let late = released.is_some_and(|rel| rel.set.contains(&(trajectory, step)));
        if let Some(from) = began {
            self.resumes.push(Resume {
                run_id: run.clone(),
                rank: r.key.rank,
                shard: r.key.shard,
                from,
                to: step,
                trajectory,
            });
        }
        if late {
            return vec![Assembly {
                run_id: run,
                step,
                world_size: r.world_size,
                shard_count: r.shard_count,
                parts: vec![r],
                hists: HashMap::new(),
                reports: vec![logged],
                late: true,
                trajectory,
            }];
        }
        let mut out = Vec::new();
        let key = (run.clone(), trajectory, step);
        if !self.pending.contains_key(&key)
            && self.pending.len() >= self.max_pending
            && let Some(oldest) = self
                .pending
                .iter()
                .min_by_key(|(_, p)| p.first_at)
                .map(|(k, _)| k.clone())
        {
            out.extend(self.release(&oldest));
        }
        let p = self.pending.entry(key.clone()).or_insert_with(|| Pending {
            world_size: r.world_size,
            shard_count: r.shard_count,
            parts: BTreeMap::new(),
            hists: HashMap::new(),
            reports: Vec::new(),
            // The clock starts when the assembler sees the step, not when the report was read
            // off the wire: a backlog in the collector must not make ranks look late.
            first_at: Instant::now(),
        });
        p.reports.push(logged);
        let expected = u64::from(p.world_size) * u64::from(p.shard_count);
        if let btree_map::Entry::Vacant(e) = p.parts.entry((r.key.rank, r.key.shard)) {
            absorb_hists(&mut p.hists, &mut r, expected);
            e.insert(r);
        }
        if p.parts.len() as u64 >= expected {
            out.extend(self.release(&key));
        }
        out
    }

    /// Release every step whose first report is older than the straggler timeout.
    pub fn expire(&mut self, now: Instant) -> Vec<Assembly> {
        let mut due: Vec<_> = self
            .pending
            .iter()
            .filter(|(_, p)| now.duration_since(p.first_at) >= self.timeout)
            .map(|(k, _)| k.clone())
            .collect();
        // In step order, so the live estimators see a run's steps in sequence.
        due.sort();
        due.iter().filter_map(|k| self.release(k)).collect()
    }

    /// Release everything (shutdown).
    pub fn drain(&mut self) -> Vec<Assembly> {
        let mut keys: Vec<_> = self.pending.keys().cloned().collect();
        keys.sort();
        keys.iter().filter_map(|k| self.release(k)).collect()
    }

    fn release(&mut self, key: &(Arc<str>, u64, u64)) -> Option<Assembly> {
        let p = self.pending.remove(key)?;
        let (run, trajectory, step) = key;
        self.released_of(run).insert((*trajectory, *step));
        Some(Assembly {
            run_id: run.clone(),
            step: *step,
            trajectory: *trajectory,
            world_size: p.world_size,
            shard_count: p.shard_count,
            parts: p.parts.into_values().collect(),
            hists: p.hists,
            reports: p.reports,
            late: false,
        })
    }

    /// Told of a report a previous process published (its rows are in Parquet, it is not
    /// replayed): its step is released, so a straggler's report of it is late, and its
    /// (rank, shard) has reported it, so going back below it is a resume. This process numbers
    /// trajectories afresh: the steps count as its first trajectory's.
    pub fn mark_published(&mut self, run: &Arc<str>, rank: u32, shard: u32, step: u64) {
        self.released_of(run).insert((0, step));
        self.trajectories
            .entry(run.clone())
            .or_default()
            .seed(rank, shard, step);
    }

    /// The reports that follow are replayed from the write-ahead log, until
    /// [`Assembler::end_replay`].
    pub fn begin_replay(&mut self) {
        self.replaying = true;
    }

    /// The write-ahead log's reports are all replayed.
    pub fn end_replay(&mut self) {
        self.replaying = false;
    }

    fn released_of(&mut self, run: &Arc<str>) -> &mut Released {
        self.released.entry(run.clone()).or_default()
    }
}

impl Released {
    fn insert(&mut self, key: StepKey) {
        if self.set.insert(key) {
            self.order.push_back(key);
            if self.order.len() > RELEASED_MEMORY
                && let Some(old) = self.order.pop_front()
            {
                self.set.remove(&old);
            }
        }
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Trajectories begun so far.
    fn resumes(a: &mut Assembler, seen: &mut Vec<Resume>) -> usize {
        seen.extend(a.take_resumes());
        seen.len()
    }

    fn report(rank: u32, step: u64, seq: u64) -> Report {
        Report {
            seq,
            ..Report::for_test(rank, 2, step, &[])
        }
    }

    #[test]
    fn completes_when_all_ranks_report() {
        let mut a = Assembler::new(Duration::from_secs(60), 16);
        assert!(a.add(report(0, 7, 1)).is_empty());
        let done = a.add(report(1, 7, 1));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].parts.len(), 2);
        assert!(!done[0].late);
        assert_eq!(a.pending_len(), 0);
    }

    #[test]
    fn stragglers_are_released_and_late_reports_marked() {
        let mut a = Assembler::new(Duration::from_millis(0), 16);
        assert!(a.add(report(0, 7, 1)).is_empty());
        let done = a.expire(Instant::now());
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].parts.len(), 1);
        let late = a.add(report(1, 7, 1));
        assert_eq!(late.len(), 1);
        assert!(late[0].late);
    }

    #[test]
    fn evicts_oldest_beyond_max_pending() {
        let mut a = Assembler::new(Duration::from_secs(60), 2);
        assert!(a.add(report(0, 1, 1)).is_empty());
        assert!(a.add(report(0, 2, 2)).is_empty());
        let out = a.add(report(0, 3, 3));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].step, 1);
    }

    #[test]
    fn a_repeated_rank_is_acked_but_merged_once() {
        let mut seen = Vec::new();
        let mut a = Assembler::new(Duration::from_secs(60), 16);
        a.add(report(0, 7, 1));
        let mut again = report(0, 7, 1);
        again.key.epoch = 2;
        a.add(again);
        let done = a.add(report(1, 7, 1));
        assert_eq!(done[0].parts.len(), 2);
        assert_eq!(done[0].reports.len(), 3);
        // The same step again is a repeat, not a resumed job.
        assert_eq!((done[0].trajectory, resumes(&mut a, &mut seen)), (0, 0));
    }

    /// Steps 0..6 of two ranks, then both go back to step 3 (a job resumed from a checkpoint):
    /// its steps are assembled across the ranks again, in a new trajectory, not taken as late.
    #[test]
    fn a_resumed_job_starts_a_trajectory_the_other_ranks_join() {
        let mut seen = Vec::new();
        let mut a = Assembler::new(Duration::from_secs(60), 16);
        for step in 0..6 {
            assert!(a.add(report(0, step, step + 1)).is_empty());
            let done = a.add(report(1, step, step + 1));
            assert_eq!((done.len(), done[0].trajectory), (1, 0));
        }
        let before = unix_nanos();
        assert!(
            a.add(report(0, 3, 7)).is_empty(),
            "rank 1 has not resumed yet"
        );
        assert_eq!(resumes(&mut a, &mut seen), 1);
        let done = a.add(report(1, 3, 7));
        assert_eq!(done.len(), 1);
        let t = done[0].trajectory;
        assert!(!done[0].late);
        assert_eq!(done[0].parts.len(), 2);
        assert!(
            t >= before,
            "labelled with the clock when the rewind was seen"
        );
        assert_eq!(
            resumes(&mut a, &mut seen),
            1,
            "rank 1 joined rank 0's trajectory"
        );
        assert_eq!(
            seen[0],
            Resume {
                run_id: "r".into(),
                rank: 0,
                shard: 0,
                from: 5,
                to: 3,
                trajectory: t
            }
        );
        // The resumed job goes on past the first one's last step in the same trajectory.
        for step in 4..8 {
            a.add(report(0, step, step + 4));
            let done = a.add(report(1, step, step + 4));
            assert_eq!((done[0].trajectory, done[0].late), (t, false));
        }
        // Resumed a second time: a later label.
        a.add(report(0, 2, 12));
        let done = a.add(report(1, 2, 12));
        assert!(done[0].trajectory > t);
        assert_eq!(resumes(&mut a, &mut seen), 2);
    }

    /// After a restart: steps a previous process published are told first, then the log's
    /// unpublished reports are replayed. A step that waited for a straggler while later steps
    /// were published is not a resume; a resumed job's report of a published step is.
    #[test]
    fn replayed_reports_below_published_steps_are_a_resume_only_over_released_steps() {
        let mut seen = Vec::new();
        let mut a = Assembler::new(Duration::from_secs(60), 16);
        let run: Arc<str> = "r".into();
        a.begin_replay();
        for step in [7, 9] {
            for rank in 0..2 {
                a.mark_published(&run, rank, 0, step);
            }
        }
        // Step 8 of rank 0 was pending (rank 1 had dropped it) when 9 was published.
        assert!(a.add(report(0, 8, 3)).is_empty());
        assert_eq!(resumes(&mut a, &mut seen), 0);
        // A resumed job's step 7 (published by the previous process): a new trajectory.
        assert!(a.add(report(0, 7, 4)).is_empty());
        assert_eq!(resumes(&mut a, &mut seen), 1);
        let done = a.add(report(1, 7, 4));
        assert_eq!(done.len(), 1);
        assert!(!done[0].late && done[0].trajectory > 0);
        assert_eq!(done[0].parts.len(), 2);
        // Live again: going back below the highest step is a resume even where this process
        // never saw the step (the journals of long-published steps are pruned).
        a.end_replay();
        a.add(report(0, 9, 5));
        assert!(a.add(report(0, 2, 6)).is_empty());
        assert_eq!(resumes(&mut a, &mut seen), 2);
    }

    /// A rank that straggles in the first trajectory is still late there while another rank
    /// has already gone back: only its own steps going back move it.
    #[test]
    fn a_straggler_of_the_first_trajectory_stays_late_in_it() {
        let mut a = Assembler::new(Duration::from_millis(0), 16);
        for step in 3..5 {
            a.add(report(1, step, step));
            assert_eq!(a.add(report(0, step, step)).len(), 1);
        }
        assert!(a.add(report(0, 5, 2)).is_empty());
        assert_eq!(
            a.expire(Instant::now()).len(),
            1,
            "step 5 released without rank 1"
        );
        assert!(
            a.add(report(0, 3, 3)).is_empty(),
            "rank 0 resumed at step 3"
        );
        let late = a.add(report(1, 5, 2));
        assert_eq!(late.len(), 1);
        assert!(late[0].late);
        assert_eq!(late[0].trajectory, 0);
        // Rank 1 then goes back too and joins rank 0's step 3.
        let done = a.add(report(1, 3, 3));
        assert_eq!(done.len(), 1);
        assert_eq!(done[0].parts.len(), 2);
        assert!(done[0].trajectory > 0);
    }

    /// The rows of a step as [`crate::tables::steps::build_rows`] makes them, in a form to
    /// compare: scope, summary, tensors and elements.
    fn rows_of(a: &mut Assembly) -> (Vec<(String, gradtel_stats::GradSummary, u32, u64)>, u64) {
        let merged = std::mem::take(&mut a.hists);
        let (rows, errors) = crate::tables::steps::build_rows(a, merged, 0);
        let rows = rows
            .into_iter()
            .map(|r| {
                let scope = format!("{}:{}", r.scope_kind, r.scope);
                (scope, r.summary, r.tensors, r.elements_received)
            })
            .collect();
        (rows, errors)
    }

    fn two_tensors(rank: u32, world: u32, values: &[f64]) -> Report {
        let half = &values[..values.len() / 2];
        report_of(rank, world, &[("l.w", values), ("l.b", half)])
    }

    fn report_of(rank: u32, world: u32, tensors: &[(&str, &[f64])]) -> Report {
        Report {
            seq: 1,
            ..Report::for_test(rank, world, 3, tensors)
        }
    }

    proptest::proptest! {
        /// Histograms merged as the parts arrive, in any order, make the rows that merging the
        /// whole parts at release makes; the parts keep none of their histograms' buckets.
        #[test]
        fn histograms_merged_on_arrival_make_the_rows_of_the_whole_parts(
            // Values within one binade make dense histograms, merged on arrival; spread over
            // six decades, sparse ones that stay in their parts.
            values in proptest::collection::vec(
                proptest::collection::vec(
                    proptest::prop_oneof![1.0f64..2.0, -1e3f64..1e3], 0..40),
                1..5),
            keys in proptest::collection::vec(proptest::prelude::any::<u64>(), 5),
        ) {
            let world = values.len() as u32;
            let mut order: Vec<u32> = (0..world).collect();
            order.sort_by_key(|&r| keys[r as usize]);
            let mut a = Assembler::new(Duration::from_secs(60), 16);
            let mut done = Vec::new();
            for &rank in &order {
                done.extend(a.add(two_tensors(rank, world, &values[rank as usize])));
            }
            proptest::prop_assert_eq!(done.len(), 1);
            let mut step = done.pop().unwrap();
            let mut whole = Assembly {
                parts: (0..world).map(|r| two_tensors(r, world, &values[r as usize])).collect(),
                hists: HashMap::new(),
                reports: Vec::new(),
                run_id: step.run_id.clone(),
                step: step.step,
                world_size: step.world_size,
                shard_count: step.shard_count,
                late: step.late,
                trajectory: step.trajectory,
            };
            let merged_on_arrival = rows_of(&mut step);
            proptest::prop_assert_eq!(merged_on_arrival.1, 0);
            proptest::prop_assert_eq!(merged_on_arrival, rows_of(&mut whole));
        }
    }

    /// A dense histogram (values within a binade) is merged on arrival and leaves its part
    /// empty; one of a few buckets over a wide range stays in its part; both make the rows of
    /// the whole parts.
    #[test]
    fn only_histograms_no_larger_dense_than_sparse_are_merged_on_arrival() {
        let dense: Vec<f64> = (0..200).map(|i| 1.0 + f64::from(i) / 200.0).collect();
        let wide = [1e-30, 1.0, 1e30];
        let part = |rank| report_of(rank, 2, &[("l.w", &dense), ("l.b", &wide)]);
        let mut a = Assembler::new(Duration::from_secs(60), 16);
        assert!(a.add(part(1)).is_empty());
        let mut done = a.add(part(0));
        let step = &mut done[0];
        for p in &step.parts {
            assert_eq!(p.tensors[0].summary.hist.len(), 0, "l.w merged");
            assert_eq!(p.tensors[1].summary.hist.len(), 3, "l.b left whole");
        }
        assert_eq!(step.hists["l.w"].total(), 400);
        assert!(!step.hists.contains_key("l.b"));
        let mut whole = assembly_of(vec![part(0), part(1)]);
        assert_eq!(rows_of(step), rows_of(&mut whole));
    }

    /// Step 3 of run "r", made of `parts` taken whole.
    fn assembly_of(parts: Vec<Report>) -> Assembly {
        Assembly {
            run_id: "r".into(),
            step: 3,
            world_size: 2,
            shard_count: 1,
            parts,
            hists: HashMap::new(),
            reports: Vec::new(),
            late: false,
            trajectory: 0,
        }
    }

    /// A part whose histogram's precision differs from the first arrived's is left whole and
    /// counted as a merge error; the others merge.
    #[test]
    fn a_part_of_another_histogram_precision_is_a_merge_error() {
        let xs = [1.0, -2.0, 3.5];
        let mut other = report_of(0, 2, &[("l.w", &xs)]);
        let mut fine = gradtel_stats::GradSummary::new(4, 8).expect("valid parameters");
        fine.extend_f64(&xs);
        other.tensors[0].summary = gradtel_stats::SparseSummary::of(&fine);
        let dense: Vec<f64> = (0..200).map(|i| 4.0 + f64::from(i) / 50.0).collect();
        let mut a = Assembler::new(Duration::from_secs(60), 16);
        assert!(a.add(report_of(1, 2, &[("l.w", &dense)])).is_empty());
        let mut done = a.add(other);
        let step = &mut done[0];
        assert_eq!(step.parts[1].tensors[0].summary.hist.len(), 0, "merged");
        assert_eq!(step.parts[0].tensors[0].summary.hist.len(), 3, "left whole");
        let (rows, errors) = rows_of(step);
        assert_eq!(errors, 1);
        let tensor = rows
            .iter()
            .find(|r| r.0 == "tensor:l.w")
            .expect("tensor row");
        assert_eq!((tensor.1.moments.n, tensor.1.abs_hist.total()), (200, 200));
    }
}
