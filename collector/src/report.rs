//! A validated report: a `ShardReport` from the wire, checked and decoded into estimator types
//! before anything else in the collector sees it.

use std::sync::Arc;
use std::time::Instant;

use gradtel_proto::recycle::Pool;
use gradtel_proto::v1::ShardReport;
use gradtel_stats::SparseSummary;

use crate::journal::{Logged, Published};

/// Identity of one agent incarnation: acks and deduplication are keyed on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AgentKey {
    pub run_id: Arc<str>,
    pub rank: u32,
    pub shard: u32,
    pub epoch: u64,
}

#[derive(Debug, Clone)]
pub struct TensorPart {
    /// Shared by every report of the stream that names this tensor ([`Names`]).
    pub name: Arc<str>,
    pub numel: u64,
    pub elements_expected: u64,
    pub elements_received: u64,
    /// As received: its histogram stays sparse until merged into the step's.
    pub summary: SparseSummary,
}

/// Raw values of one tensor's tracked coordinates (strictly increasing `index`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrackedPart {
    pub name: Arc<str>,
    pub index: Vec<u64>,
    pub value: Vec<f32>,
}

/// A shard's projection of its gradient.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionPart {
    /// `Projection.Kind` as on the wire, with the seed: shards agree on both or cannot be added.
    pub kind: i32,
    pub seed: u64,
    pub values: Vec<f64>,
    pub coordinates: u64,
}

#[derive(Debug)]
pub struct Report {
    pub key: AgentKey,
    pub seq: u64,
    pub world_size: u32,
    pub shard_count: u32,
    pub step: u64,
    pub local: bool,
    pub loss: Option<f64>,
    pub learning_rate: Option<f64>,
    pub batch_size: Option<u64>,
    pub tensors: Vec<TensorPart>,
    pub ended_unix_nanos: i64,
    pub agent_steps_dropped_total: u64,
    pub tracked: Vec<TrackedPart>,
    pub projection: Option<ProjectionPart>,
    pub received_at: Instant,
    /// The report as received (a `ShardReport` message), for the write-ahead log; taken out
    /// when the report is logged.
    pub wire: bytes::Bytes,
    /// The write-ahead log segment holding this report.
    pub wal_segment: u64,
    /// Its share of the queues' byte budget, from its decode until the pipeline takes it up
    /// ([`crate::queue_budget`]); `None` for reports replayed from the log.
    pub held: Option<crate::queue_budget::Held>,
}

impl Report {
    /// The bytes this report holds in memory, decoded and as received: what it weighs in the
    /// queues' budget.
    pub fn heap_bytes(&self) -> usize {
        let tensors: usize = self
            .tensors
            .iter()
            .map(|t| 16 * t.summary.hist.len() + 8 * t.summary.rest.top_abs.len() + 256)
            .sum();
        let tracked: usize = self.tracked.iter().map(|t| 12 * t.index.len() + 64).sum();
        let projection = self.projection.as_ref().map_or(0, |p| 8 * p.values.len());
        self.wire.len() + tensors + tracked + projection + 256
    }

    /// Where this report is logged and who it is, for the publication journal.
    pub fn logged(&self) -> Logged {
        Logged {
            segment: self.wal_segment,
            report: Published {
                rank: self.key.rank,
                shard: self.key.shard,
                epoch: self.key.epoch,
                seq: self.seq,
                step: self.step,
            },
        }
    }

    /// A report of run "r" for tests: `world_size` ranks, one shard, the given tensors' values.
    #[cfg(test)]
    pub fn for_test(rank: u32, world_size: u32, step: u64, tensors: &[(&str, &[f64])]) -> Self {
        Report {
            key: AgentKey {
                run_id: "r".into(),
                rank,
                shard: 0,
                epoch: 1,
            },
            seq: 1,
            world_size,
            shard_count: 1,
            step,
            local: true,
            loss: None,
            learning_rate: None,
            batch_size: None,
            tensors: tensors
                .iter()
                .map(|(n, xs)| {
                    let mut s = gradtel_stats::GradSummary::new(4, 7).expect("valid parameters");
                    s.extend_f64(xs);
                    TensorPart {
                        name: (*n).into(),
                        numel: xs.len() as u64,
                        elements_expected: xs.len() as u64,
                        elements_received: xs.len() as u64,
                        summary: SparseSummary::of(&s),
                    }
                })
                .collect(),
            ended_unix_nanos: 0,
            agent_steps_dropped_total: 0,
            tracked: Vec::new(),
            projection: None,
            received_at: Instant::now(),
            wire: bytes::Bytes::new(),
            wal_segment: 0,
            held: None,
        }
    }
}

/// Hand the decoded vectors of reports that are done with back to the decoders
/// ([`gradtel_proto::recycle`]): the next reports decoded fill them again, instead of each
/// allocating on a runtime thread what the pipeline's thread then frees.
pub fn recycle(mut reports: Vec<Report>) {
    use gradtel_proto::recycle;
    use std::mem::take;
    recycle::U64.give(reports.iter_mut().flat_map(|r| {
        let hists = r.tensors.iter_mut().flat_map(|t| {
            let (index, count) = t.summary.hist.take_parts();
            [index, count]
        });
        hists.chain(r.tracked.iter_mut().map(|t| take(&mut t.index)))
    }));
    recycle::F64.give(reports.iter_mut().flat_map(|r| {
        let tops = r
            .tensors
            .iter_mut()
            .map(|t| t.summary.rest.top_abs.take_vec());
        tops.chain(r.projection.as_mut().map(|p| take(&mut p.values)))
    }));
    recycle::F32.give(
        reports
            .iter_mut()
            .flat_map(|r| r.tracked.iter_mut().map(|t| take(&mut t.value))),
    );
    // The lists themselves too (their parts are dropped here, on this thread).
    TENSORS.give(reports.iter_mut().map(|r| take(&mut r.tensors)));
    TRACKED.give(reports.iter_mut().map(|r| take(&mut r.tracked)));
}

/// Given-back lists of a report's tensors and tracked values, for [`decode`] to fill.
static TENSORS: Pool<TensorPart> = Pool::new();
static TRACKED: Pool<TrackedPart> = Pool::new();

/// Most tensors one report may carry.
const MAX_TENSORS: usize = 1 << 20;
/// Largest world size or shard count accepted.
const MAX_WORLD: u32 = 1 << 20;
/// Largest projection dimension accepted.
pub const MAX_SKETCH_DIM: u32 = 1 << 16;

/// The run id and tensor names a stream's reports have named, shared by the reports that name
/// them again (a stream's reports name one run and the same tensors step after step). Each
/// decoded name is dropped at once, on the thread that allocated it; kept in its report, it
/// was freed with thousands of others when the pipeline gave a step's reports back, through
/// glibc's slow path (≈ 3 % of the collector's CPU).
#[derive(Debug, Default)]
pub struct Names {
    run: Option<Arc<str>>,
    tensors: std::collections::HashSet<Arc<str>>,
    /// Bytes of the names in `tensors`.
    bytes: usize,
}

/// Most tensor names, and bytes of them, one stream's [`Names`] keeps (beyond, names are not
/// shared): a stream cannot grow the collector's memory by naming ever new tensors.
const MAX_NAMES: usize = 1 << 16;
const MAX_NAME_BYTES: usize = 4 << 20;

impl Names {
    fn run(&mut self, id: &str) -> Arc<str> {
        match &self.run {
            Some(run) if **run == *id => run.clone(),
            _ => self.run.insert(id.into()).clone(),
        }
    }

    fn tensor(&mut self, name: String) -> Arc<str> {
        if let Some(shared) = self.tensors.get(name.as_str()) {
            return shared.clone();
        }
        let shared: Arc<str> = name.into();
        if self.tensors.len() < MAX_NAMES && self.bytes + shared.len() <= MAX_NAME_BYTES {
            self.bytes += shared.len();
            self.tensors.insert(shared.clone());
        }
        shared
    }
}

/// Check and decode. The error string becomes the Ack's `reason`.
pub fn decode(mut r: ShardReport) -> Result<Report, String> {
    decode_sharing(&mut r, &mut Names::default())
}

/// [`decode`], sharing the run id and tensor names with the stream's earlier reports
/// ([`Names`]). It takes the tensors, tracked values and projection out of `r`; the rest stays,
/// for a rejection to name the report.
pub fn decode_sharing(r: &mut ShardReport, names: &mut Names) -> Result<Report, String> {
    gradtel_proto::validate_run_id(&r.run_id).map_err(|e| format!("bad run id: {e}"))?;
    if r.world_size == 0 || r.world_size > MAX_WORLD || r.rank >= r.world_size {
        return Err(format!(
            "rank {} is not in 0..world_size ({})",
            r.rank, r.world_size
        ));
    }
    if r.shard_count == 0 || r.shard_count > MAX_WORLD || r.shard >= r.shard_count {
        return Err(format!(
            "shard {} is not in 0..shard_count ({})",
            r.shard, r.shard_count
        ));
    }
    if r.seq == 0 {
        return Err("seq must start at 1".into());
    }
    if r.tensors.len() > MAX_TENSORS {
        return Err(format!("{} tensors in one report", r.tensors.len()));
    }
    let mut tensors = TENSORS.take(r.tensors.len());
    let mut precision = None;
    for t in std::mem::take(&mut r.tensors) {
        if t.name.is_empty() {
            return Err("tensor with an empty name".into());
        }
        if t.elements_received > t.elements_expected || t.elements_expected > t.numel {
            return Err(format!(
                "tensor {:?}: received {} > expected {} or expected > numel {}",
                t.name, t.elements_received, t.elements_expected, t.numel
            ));
        }
        let w = t
            .summary
            .ok_or_else(|| format!("tensor {:?} has no summary", t.name))?;
        let summary = gradtel_codec::summary::from_wire_sparse(w)
            .map_err(|e| format!("tensor {:?}: {e}", t.name))?;
        if summary.rest.total_count() != t.elements_received {
            return Err(format!(
                "tensor {:?}: summary counts {} values but {} were received",
                t.name,
                summary.rest.total_count(),
                t.elements_received
            ));
        }
        let p = summary.hist.precision_bits();
        if *precision.get_or_insert(p) != p {
            return Err("tensors of one report use different histogram precisions".into());
        }
        tensors.push(TensorPart {
            name: names.tensor(t.name),
            numel: t.numel,
            elements_expected: t.elements_expected,
            elements_received: t.elements_received,
            summary,
        });
    }
    let mut tracked = TRACKED.take(r.tracked.len());
    // Agents send tracked values in their tensors' order: each search starts after the last
    // tensor found, so a report's lookups cost O(tensors), not O(tensors²).
    let mut at = 0;
    for t in std::mem::take(&mut r.tracked) {
        let n = tensors.len();
        let found = (0..n)
            .map(|j| (at + j) % n)
            .find(|&k| *tensors[k].name == *t.name);
        let Some(tensor) = found.map(|k| {
            at = k + 1;
            &tensors[k]
        }) else {
            return Err(format!(
                "tracked values for tensor {:?}, which the report does not carry",
                t.name
            ));
        };
        if t.index.len() != t.value.len() {
            return Err(format!(
                "tracked tensor {:?}: {} indices but {} values",
                t.name,
                t.index.len(),
                t.value.len()
            ));
        }
        if t.index.windows(2).any(|w| w[0] >= w[1])
            || t.index.last().is_some_and(|&j| j >= tensor.numel)
        {
            return Err(format!(
                "tracked tensor {:?}: indices must increase strictly and stay below numel {}",
                t.name, tensor.numel
            ));
        }
        tracked.push(TrackedPart {
            name: tensor.name.clone(),
            index: t.index,
            value: t.value,
        });
    }
    let projection = match r.projection.take() {
        None => None,
        Some(p) => {
            if p.dim == 0 || p.dim > MAX_SKETCH_DIM || p.values.len() != p.dim as usize {
                return Err(format!(
                    "projection of dimension {} carries {} values (dimension must be 1..={MAX_SKETCH_DIM})",
                    p.dim,
                    p.values.len()
                ));
            }
            Some(ProjectionPart {
                kind: p.kind,
                seed: p.seed,
                values: p.values,
                coordinates: p.coordinates,
            })
        }
    };
    let run_id = names.run(&r.run_id);
    Ok(Report {
        key: AgentKey {
            run_id,
            rank: r.rank,
            shard: r.shard,
            epoch: r.agent_epoch,
        },
        seq: r.seq,
        world_size: r.world_size,
        shard_count: r.shard_count,
        step: r.step,
        local: r.local,
        loss: r.loss.filter(|v| v.is_finite()),
        learning_rate: r.learning_rate.filter(|v| v.is_finite()),
        batch_size: r.batch_size,
        tensors,
        ended_unix_nanos: r.ended_unix_nanos,
        agent_steps_dropped_total: r.agent_steps_dropped_total,
        tracked,
        projection,
        received_at: Instant::now(),
        wire: bytes::Bytes::new(),
        wal_segment: 0,
        held: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradtel_proto::v1::{Projection, TensorReport, TrackedValues};
    use gradtel_stats::GradSummary;

    fn good() -> ShardReport {
        let mut s = GradSummary::new(4, 7).unwrap();
        s.extend_f64(&[1.0, -2.0]);
        ShardReport {
            run_id: "run".into(),
            rank: 1,
            world_size: 2,
            shard: 0,
            shard_count: 1,
            seq: 1,
            step: 3,
            tensors: vec![TensorReport {
                name: "a.w".into(),
                numel: 4,
                elements_expected: 4,
                elements_received: 2,
                summary: Some(gradtel_codec::summary::to_wire(&s)),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn accepts_a_consistent_report() {
        let r = decode(good()).unwrap();
        assert_eq!(r.tensors[0].summary.rest.moments.n, 2);
        let mut names = Names::default();
        let a = decode_sharing(&mut good(), &mut names).unwrap();
        let b = decode_sharing(&mut good(), &mut names).unwrap();
        assert!(
            Arc::ptr_eq(&a.key.run_id, &b.key.run_id),
            "one run id, shared"
        );
        assert!(
            Arc::ptr_eq(&a.tensors[0].name, &b.tensors[0].name),
            "one tensor name, shared"
        );
        // Tracked values in any order of their tensors.
        let mut two = good();
        let mut b = two.tensors[0].clone();
        b.name = "b.w".into();
        two.tensors.push(b);
        two.tracked = ["b.w", "a.w", "b.w"]
            .map(|name| TrackedValues {
                name: name.into(),
                index: vec![1],
                value: vec![0.5],
            })
            .into();
        let d = decode(two).unwrap();
        let tracked: Vec<&str> = d.tracked.iter().map(|t| &*t.name).collect();
        assert_eq!(tracked, ["b.w", "a.w", "b.w"]);
        assert!(Arc::ptr_eq(&d.tracked[0].name, &d.tensors[1].name));
        let mut other = good();
        other.run_id = "other".into();
        let c = decode_sharing(&mut other, &mut names).unwrap();
        assert_eq!(&*c.key.run_id, "other");
        assert_eq!(names.run.as_deref(), Some("other"));
        // Bounded: past the budget, names are still decoded, just not kept.
        let mut few = Names::default();
        let long = "x".repeat(MAX_NAME_BYTES / 2 + 1);
        for _ in 0..2 {
            assert_eq!(&*few.tensor(long.clone()), long);
            assert_eq!(&*few.tensor("y".repeat(10)), "y".repeat(10));
        }
        assert_eq!((few.tensors.len(), few.bytes), (2, long.len() + 10));
        let other = "z".repeat(MAX_NAME_BYTES / 2);
        assert_eq!(&*few.tensor(other.clone()), other);
        assert_eq!(few.tensors.len(), 2, "beyond the budget");
    }

    #[test]
    fn reports_decoded_after_recycling_equal_fresh_ones() {
        use prost::Message;
        let mut full = good();
        full.tracked = vec![TrackedValues {
            name: "a.w".into(),
            index: vec![0, 3],
            value: vec![0.5, -1.5],
        }];
        full.projection = Some(Projection {
            kind: 3,
            dim: 2,
            seed: 7,
            values: vec![1.0, -2.0],
            coordinates: 4,
        });
        let wire = full.encode_to_vec();
        let fresh = decode(ShardReport::decode(wire.as_slice()).unwrap()).unwrap();
        for _ in 0..3 {
            recycle(vec![
                decode(ShardReport::decode(wire.as_slice()).unwrap()).unwrap(),
            ]);
            let again = decode(ShardReport::decode(wire.as_slice()).unwrap()).unwrap();
            assert_eq!(again.tracked, fresh.tracked);
            assert_eq!(again.projection, fresh.projection);
            assert_eq!(again.tensors.len(), 1);
            let (a, b) = (&again.tensors[0], &fresh.tensors[0]);
            assert_eq!((&a.name, a.numel), (&b.name, b.numel));
            assert_eq!(a.summary.hist, b.summary.hist);
            assert_eq!(a.summary.rest, b.summary.rest);
        }
    }

    #[test]
    fn refuses_what_could_escape_or_lie() {
        let mut r = good();
        r.run_id = "../x".into();
        assert!(decode(r).unwrap_err().contains("run id"));
        let mut r = good();
        r.rank = 2;
        assert!(decode(r).is_err());
        let mut r = good();
        r.tensors[0].elements_received = 3;
        assert!(decode(r).unwrap_err().contains("summary counts"));
        let mut r = good();
        r.tensors[0].summary = None;
        assert!(decode(r).is_err());
        let mut r = good();
        r.seq = 0;
        assert!(decode(r).is_err());
        let mut r = good();
        r.tracked = vec![TrackedValues {
            name: "a.w".into(),
            index: vec![1, 4],
            value: vec![0.5, 1.0],
        }];
        assert!(decode(r).unwrap_err().contains("below numel"));
        let mut r = good();
        r.tracked = vec![TrackedValues {
            name: "other".into(),
            index: vec![1],
            value: vec![0.5],
        }];
        assert!(decode(r).unwrap_err().contains("does not carry"));
        let mut r = good();
        r.projection = Some(Projection {
            dim: 4,
            values: vec![1.0; 3],
            ..Default::default()
        });
        assert!(decode(r).unwrap_err().contains("dimension"));
    }

    /// A report with every part: two tensors whose summaries hold a few hundred values of
    /// several octaves, tracked values of both, and a projection.
    fn full_wire() -> Vec<u8> {
        use prost::Message;
        let mut r = good();
        r.world_size = 4;
        r.tensors = ["a.w", "b.w"]
            .iter()
            .enumerate()
            .map(|(k, name)| {
                let xs: Vec<f64> = (0..300)
                    .map(|i| ((i * 37 + k * 11) % 101) as f64 * 0.25f64.powi((i % 9) as i32) - 3.0)
                    .collect();
                let mut s = GradSummary::new(16, 7).unwrap();
                s.extend_f64(&xs);
                TensorReport {
                    name: (*name).into(),
                    numel: 1000,
                    elements_expected: 300,
                    elements_received: 300,
                    summary: Some(gradtel_codec::summary::to_wire(&s)),
                }
            })
            .collect();
        r.tracked = ["a.w", "b.w"]
            .map(|name| TrackedValues {
                name: name.into(),
                index: vec![2, 40, 999],
                value: vec![0.5, -1.25, 3.0],
            })
            .into();
        r.projection = Some(Projection {
            kind: 1,
            dim: 8,
            seed: 7,
            values: (0..8).map(|i| f64::from(i) - 3.5).collect(),
            coordinates: 2000,
        });
        r.encode_to_vec()
    }

    /// A stream past its first report decodes one with the allocations of its strings and of
    /// prost's two lists (tensors, tracked values), and no more: every vector of numbers comes
    /// from the pools, the report's lists of parts too, and its run id and tensor names are the
    /// stream's. (Session 25 took the collector's CPU per report from 36 to 32 µs this way;
    /// this test keeps it so.)
    #[test]
    fn a_warm_stream_decodes_a_report_with_its_strings_allocations_only() {
        use gradtel_proto::counting::allocations;
        use prost::Message;
        let wire = full_wire();
        let decode_with = |names: &mut Names| {
            let mut r = ShardReport::decode(wire.as_slice()).expect("decode");
            decode_sharing(&mut r, names).expect("accepted")
        };
        let mut names = Names::default();
        let mut decode_one = || decode_with(&mut names);
        // The pools are the process's: other tests' threads take from them too, so each
        // round gives back several reports' vectors before the one counted.
        let mut made = usize::MAX;
        for _ in 0..5 {
            let warm: Vec<Report> = (0..4).map(|_| decode_one()).collect();
            recycle(warm);
            let (r, n) = allocations(&mut decode_one);
            recycle(vec![r]);
            made = made.min(n);
        }
        // The run id, two tensor names and two tracked tensors' names; the two lists (one
        // allocation each: room for four from the first push).
        let strings = 1 + 2 + 2;
        let lists = 2;
        assert!(
            made <= strings + lists,
            "{made} allocations for a report of {strings} strings and {lists} lists"
        );
        // A new stream's first report allocates its shared names besides.
        let mut cold_names = Names::default();
        let (_, cold) = allocations(|| decode_with(&mut cold_names));
        assert!(cold > made, "cold {cold}, warm {made}");
    }

    /// What a stream makes of `wire`: the decoded report's contents, or why it was refused.
    fn decoded(wire: &[u8], names: &mut Names) -> (String, Option<Report>) {
        use prost::Message;
        match ShardReport::decode(wire) {
            Err(e) => (format!("malformed: {e}"), None),
            Ok(mut r) => match decode_sharing(&mut r, names) {
                Err(e) => (format!("refused: {e}"), None),
                Ok(r) => (
                    format!(
                        "{:?}",
                        (&r.key, r.seq, r.step, &r.tensors, &r.tracked, &r.projection)
                    ),
                    Some(r),
                ),
            },
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(2000))]

        /// Edited encodings of a full report through the decoding a Collect stream runs
        /// (prost's generated report with the hand-written histogram, summary, tracked and
        /// projection decoders, then `decode_sharing`): never a panic; an accepted report's
        /// summaries are consistent; and decoding it again after its vectors went back to the
        /// pools gives the same (a pooled vector never brings old contents along).
        #[test]
        fn edited_reports_are_refused_or_decoded_alike(
            edits in proptest::collection::vec((0u8..6, 0usize..1 << 12, 0u8..=255), 1..6),
        ) {
            use gradtel_proto::mutate::{Edit, apply};
            let edits: Vec<Edit> = edits.into_iter().map(|(k, at, b)| Edit::from_parts(k, at, b)).collect();
            let wire = apply(&full_wire(), &edits);
            let mut names = Names::default();
            let (first, report) = decoded(&wire, &mut names);
            if let Some(r) = report {
                for t in &r.tensors {
                    proptest::prop_assert!(t.summary.to_dense().validate().is_ok(), "{}", first);
                }
                recycle(vec![r]);
            }
            let (again, _) = decoded(&wire, &mut names);
            proptest::prop_assert_eq!(first, again);
        }
    }
}
