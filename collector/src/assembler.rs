//! Step assembly: gathers the reports of every (rank, shard) of one (run, step).
//!
//! A step is complete when `world_size × shard_count` distinct (rank, shard) reports are in. A
//! step that waits longer than the straggler timeout after its first report is released as it
//! stands and its missing ranks are recorded. A report for a step that was already released is
//! released alone, marked late, so nothing acknowledged is lost. Memory is bounded by
//! `max_pending` steps and by a bounded memory of released steps per run.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    /// Distinct (rank, shard) parts, in (rank, shard) order.
    pub parts: Vec<Report>,
    /// Every logged report this assembly releases once its rows are published, including
    /// repeats of a (rank, shard) that were not merged (an agent restarted mid-step).
    pub reports: Vec<Logged>,
    pub late: bool,
}

struct Pending {
    world_size: u32,
    shard_count: u32,
    parts: BTreeMap<(u32, u32), Report>,
    reports: Vec<Logged>,
    first_at: Instant,
}

#[derive(Default)]
struct Released {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

pub struct Assembler {
    timeout: Duration,
    max_pending: usize,
    pending: HashMap<(Arc<str>, u64), Pending>,
    released: HashMap<Arc<str>, Released>,
}

impl Assembler {
    pub fn new(timeout: Duration, max_pending: usize) -> Self {
        Self {
            timeout,
            max_pending: max_pending.max(1),
            pending: HashMap::new(),
            released: HashMap::new(),
        }
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Add a report; returns the assemblies it completes (itself if late, the completed step,
    /// and possibly the oldest pending step evicted to make room).
    pub fn add(&mut self, r: Report) -> Vec<Assembly> {
        let run = r.key.run_id.clone();
        let step = r.step;
        let logged = r.logged();
        if self
            .released
            .get(&run)
            .is_some_and(|rel| rel.set.contains(&step))
        {
            return vec![Assembly {
                run_id: run,
                step,
                world_size: r.world_size,
                shard_count: r.shard_count,
                parts: vec![r],
                reports: vec![logged],
                late: true,
            }];
        }
        let mut out = Vec::new();
        let key = (run.clone(), step);
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
            reports: Vec::new(),
            // The clock starts when the assembler sees the step, not when the report was read
            // off the wire: a backlog in the collector must not make ranks look late.
            first_at: Instant::now(),
        });
        p.reports.push(logged);
        p.parts.entry((r.key.rank, r.key.shard)).or_insert(r);
        if p.parts.len() as u64 >= u64::from(p.world_size) * u64::from(p.shard_count) {
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

    fn release(&mut self, key: &(Arc<str>, u64)) -> Option<Assembly> {
        let p = self.pending.remove(key)?;
        self.mark_released(&key.0, key.1);
        Some(Assembly {
            run_id: key.0.clone(),
            step: key.1,
            world_size: p.world_size,
            shard_count: p.shard_count,
            parts: p.parts.into_values().collect(),
            reports: p.reports,
            late: false,
        })
    }

    /// Remember that `step` of `run` was released, so a report for it is late: also told of
    /// the steps a previous process published (their reports are not replayed).
    pub fn mark_released(&mut self, run: &Arc<str>, step: u64) {
        let rel = self.released.entry(run.clone()).or_default();
        if rel.set.insert(step) {
            rel.order.push_back(step);
            if rel.order.len() > RELEASED_MEMORY
                && let Some(old) = rel.order.pop_front()
            {
                rel.set.remove(&old);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut a = Assembler::new(Duration::from_secs(60), 16);
        a.add(report(0, 7, 1));
        let mut again = report(0, 7, 1);
        again.key.epoch = 2;
        a.add(again);
        let done = a.add(report(1, 7, 1));
        assert_eq!(done[0].parts.len(), 2);
        assert_eq!(done[0].reports.len(), 3);
    }
}
