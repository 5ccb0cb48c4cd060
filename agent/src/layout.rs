//! The registered run layout of one agent, validated once at Register time so the hot path
//! (every chunk) only does lookups.

use std::collections::HashMap;

use gradtel_proto::v1::{Dtype, RegisterRequest};
use gradtel_proto::validate_run_id;
use gradtel_stats::track::Tracker;

use crate::AgentError;

/// Longest tensor name accepted.
const MAX_TENSOR_NAME: usize = 512;
/// Most tensors one layout may declare.
const MAX_TENSORS: usize = 1 << 20;

#[derive(Debug, Clone)]
pub struct TensorSpec {
    pub name: String,
    pub numel: u64,
    pub dtype: Dtype,
    pub owned_start: u64,
    pub owned_end: u64,
    /// Coordinate of this tensor's first element in the model's flattened parameter vector
    /// (tensors concatenated in registered order): the projection's column index.
    pub base: u64,
    /// Tracked coordinates inside the owned range, ascending.
    pub tracked: Vec<u64>,
}

impl TensorSpec {
    pub fn owned_len(&self) -> u64 {
        self.owned_end - self.owned_start
    }
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub run_id: String,
    pub rank: u32,
    pub world_size: u32,
    pub shard: u32,
    pub shard_count: u32,
    pub tensors: Vec<TensorSpec>,
    by_name: HashMap<String, usize>,
}

impl Layout {
    /// Validate `r`; tensors without their own `track_count` track `default_track` coordinates
    /// drawn with `track_seed`.
    pub fn from_request(
        r: &RegisterRequest,
        track_seed: u64,
        default_track: u64,
    ) -> Result<Self, AgentError> {
        let bad = |m: String| Err(AgentError::BadLayout(m));
        validate_run_id(&r.run_id).map_err(|e| AgentError::BadRunId(e.to_string()))?;
        if r.world_size == 0 || r.rank >= r.world_size {
            return bad(format!(
                "rank {} is not in 0..world_size ({})",
                r.rank, r.world_size
            ));
        }
        if r.shard_count == 0 || r.shard >= r.shard_count {
            return bad(format!(
                "shard {} is not in 0..shard_count ({})",
                r.shard, r.shard_count
            ));
        }
        if r.tensors.is_empty() || r.tensors.len() > MAX_TENSORS {
            return bad(format!(
                "a layout needs 1..={MAX_TENSORS} tensors, got {}",
                r.tensors.len()
            ));
        }
        let mut tensors = Vec::with_capacity(r.tensors.len());
        let mut by_name = HashMap::with_capacity(r.tensors.len());
        let mut base = 0u64;
        for t in &r.tensors {
            if t.name.is_empty() || t.name.len() > MAX_TENSOR_NAME {
                return bad(format!(
                    "tensor names must have 1..={MAX_TENSOR_NAME} bytes: {:?}",
                    t.name
                ));
            }
            let dtype = Dtype::try_from(t.dtype)
                .ok()
                .filter(|d| *d != Dtype::Unspecified)
                .ok_or_else(|| {
                    AgentError::BadLayout(format!("tensor {:?} has no valid dtype", t.name))
                })?;
            let numel = t
                .shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(d))
                .ok_or_else(|| {
                    AgentError::BadLayout(format!("tensor {:?} shape overflows", t.name))
                })?;
            let (owned_start, owned_end) = if t.owned_start == 0 && t.owned_end == 0 {
                (0, numel)
            } else {
                (t.owned_start, t.owned_end)
            };
            if owned_start >= owned_end || owned_end > numel {
                return bad(format!(
                    "tensor {:?}: owned range [{owned_start}, {owned_end}) is not a non-empty part of 0..{numel}",
                    t.name
                ));
            }
            if by_name.insert(t.name.clone(), tensors.len()).is_some() {
                return bad(format!("tensor {:?} is declared twice", t.name));
            }
            let tracker = Tracker::new(
                track_seed,
                &t.name,
                numel,
                t.track_count.unwrap_or(default_track),
            );
            tensors.push(TensorSpec {
                name: t.name.clone(),
                numel,
                dtype,
                owned_start,
                owned_end,
                base,
                tracked: tracker.tracked_in(owned_start, owned_end),
            });
            base = base
                .checked_add(numel)
                .ok_or_else(|| AgentError::BadLayout("the model's total size overflows".into()))?;
        }
        Ok(Self {
            run_id: r.run_id.clone(),
            rank: r.rank,
            world_size: r.world_size,
            shard: r.shard,
            shard_count: r.shard_count,
            tensors,
            by_name,
        })
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradtel_proto::v1::TensorLayout;

    fn req() -> RegisterRequest {
        RegisterRequest {
            protocol_minor: 0,
            run_id: "r1".into(),
            rank: 0,
            world_size: 2,
            shard: 0,
            shard_count: 1,
            tensors: vec![TensorLayout {
                name: "fc.weight".into(),
                shape: vec![3, 4],
                dtype: Dtype::F32 as i32,
                owned_start: 0,
                owned_end: 0,
                track_count: None,
            }],
            shared_memory: None,
        }
    }

    #[test]
    fn whole_tensor_by_default() {
        let l = Layout::from_request(&req(), 1, 4).unwrap();
        assert_eq!(l.tensors[0].numel, 12);
        assert_eq!((l.tensors[0].owned_start, l.tensors[0].owned_end), (0, 12));
        assert!(l.tensors[0].tracked.iter().all(|&j| j < 12));
    }

    #[test]
    fn shards_track_their_part_of_the_same_sample_and_bases_follow_model_order() {
        let mut r = req();
        r.tensors[0].shape = vec![100, 100];
        r.tensors[0].track_count = Some(500);
        let mut second = r.tensors[0].clone();
        second.name = "fc2.weight".into();
        r.tensors.push(second);
        let whole = Layout::from_request(&r, 9, 4).unwrap();
        assert_eq!(whole.tensors[1].base, 10_000);
        let mut halves = Vec::new();
        for (a, b) in [(0, 4_000), (4_000, 10_000)] {
            r.tensors[0].owned_start = a;
            r.tensors[0].owned_end = b;
            halves.extend(
                Layout::from_request(&r, 9, 4).unwrap().tensors[0]
                    .tracked
                    .clone(),
            );
        }
        assert_eq!(halves, whole.tensors[0].tracked);
    }

    #[test]
    fn refuses_bad_layouts() {
        let mut r = req();
        r.run_id = "../x".into();
        assert!(matches!(
            Layout::from_request(&r, 1, 4),
            Err(AgentError::BadRunId(_))
        ));
        let mut r = req();
        r.rank = 2;
        assert!(Layout::from_request(&r, 1, 4).is_err());
        let mut r = req();
        r.tensors[0].owned_end = 13;
        r.tensors[0].owned_start = 1;
        assert!(Layout::from_request(&r, 1, 4).is_err());
        let mut r = req();
        r.tensors.push(r.tensors[0].clone());
        assert!(Layout::from_request(&r, 1, 4).is_err());
        let mut r = req();
        r.tensors[0].dtype = 0;
        assert!(Layout::from_request(&r, 1, 4).is_err());
        let mut r = req();
        r.tensors[0].shape = vec![u64::MAX, 2];
        assert!(Layout::from_request(&r, 1, 4).is_err());
    }
}
