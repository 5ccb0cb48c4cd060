//! Open steps: per (step, tensor) summaries accumulated chunk by chunk until EndStep.
//!
//! Chunks are summarised outside the lock and merged in (the summary merge is exact for counts,
//! extremes, histogram and top-k), so concurrent Push streams of one process do not serialise
//! on decoding. Memory is bounded by `max_open_steps`.

use std::collections::BTreeMap;

use gradtel_stats::GradSummary;

use crate::AgentError;

#[derive(Debug)]
pub struct TensorAccum {
    pub summary: GradSummary,
    pub received: u64,
}

#[derive(Debug, Default)]
pub struct StepAccum {
    /// Set by the first chunk of the step; later chunks must agree.
    pub local: Option<bool>,
    /// Indexed like the layout's tensors.
    pub tensors: Vec<Option<TensorAccum>>,
    /// Tracked (tensor index, coordinate, value), in arrival order.
    pub tracked: Vec<(usize, u64, f32)>,
    /// Sum of the chunks' projections (linear, so the order of chunks does not matter) and
    /// the number of coordinates projected.
    pub projection: Option<(Vec<f64>, u64)>,
}

/// What one chunk contributes to its step.
#[derive(Debug)]
pub struct ChunkPart {
    pub summary: GradSummary,
    pub n: u64,
    pub tracked: Vec<(u64, f32)>,
    pub projection: Option<Vec<f64>>,
}

/// Steps with chunks but no EndStep yet, for one layout generation.
#[derive(Debug, Default)]
pub struct OpenSteps {
    pub generation: u64,
    pub steps: BTreeMap<u64, StepAccum>,
}

impl OpenSteps {
    /// Drop every open step (layout replaced). Returns how many were open.
    pub fn reset(&mut self, generation: u64) -> usize {
        let n = self.steps.len();
        self.steps.clear();
        self.generation = generation;
        n
    }

    /// Merge one chunk's summary into (step, tensor). `owned_len` bounds what may arrive.
    /// Returns how many open steps were abandoned to make room.
    #[allow(clippy::too_many_arguments)]
    pub fn add_chunk(
        &mut self,
        step: u64,
        tensor_index: usize,
        tensor_count: usize,
        owned_len: u64,
        local: bool,
        chunk: ChunkPart,
        max_open: usize,
    ) -> Result<usize, AgentError> {
        let n = chunk.n;
        let mut abandoned = 0;
        if !self.steps.contains_key(&step) {
            while self.steps.len() >= max_open.max(1) {
                self.steps.pop_first();
                abandoned += 1;
            }
        }
        let acc = self.steps.entry(step).or_default();
        match acc.local {
            Some(l) if l != local => return Err(AgentError::MixedLocal { step }),
            _ => acc.local = Some(local),
        }
        if acc.tensors.len() < tensor_count {
            acc.tensors.resize_with(tensor_count, || None);
        }
        let slot = &mut acc.tensors[tensor_index];
        let already = slot.as_ref().map_or(0, |t| t.received);
        if already + n > owned_len {
            return Err(AgentError::TooManyValues {
                step,
                received: already + n,
                owned: owned_len,
            });
        }
        match slot {
            Some(t) => {
                t.summary.merge(&chunk.summary)?;
                t.received += n;
            }
            None => {
                *slot = Some(TensorAccum {
                    summary: chunk.summary,
                    received: n,
                })
            }
        }
        acc.tracked
            .extend(chunk.tracked.into_iter().map(|(j, v)| (tensor_index, j, v)));
        if let Some(p) = chunk.projection {
            match &mut acc.projection {
                Some((sum, coords)) if sum.len() == p.len() => {
                    for (s, v) in sum.iter_mut().zip(&p) {
                        *s += v;
                    }
                    *coords += n;
                }
                _ => acc.projection = Some((p, n)),
            }
        }
        Ok(abandoned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(xs: &[f64]) -> ChunkPart {
        let mut s = GradSummary::new(4, 7).unwrap();
        s.extend_f64(xs);
        ChunkPart {
            summary: s,
            n: xs.len() as u64,
            tracked: vec![(0, xs[0] as f32)],
            projection: Some(vec![xs.iter().sum(), 1.0]),
        }
    }

    #[test]
    fn chunks_merge_and_are_bounded_by_the_owned_range() {
        let mut o = OpenSteps::default();
        o.add_chunk(1, 0, 1, 4, true, summary(&[1.0, 2.0]), 8)
            .unwrap();
        o.add_chunk(1, 0, 1, 4, true, summary(&[3.0]), 8).unwrap();
        let t = o.steps[&1].tensors[0].as_ref().unwrap();
        assert_eq!(t.received, 3);
        assert_eq!(t.summary.moments.n, 3);
        assert_eq!(o.steps[&1].tracked.len(), 2);
        // Projections add: [3 + 3, 1 + 1] over 3 coordinates.
        assert_eq!(o.steps[&1].projection, Some((vec![6.0, 2.0], 3)));
        assert!(matches!(
            o.add_chunk(1, 0, 1, 4, true, summary(&[1.0, 1.0]), 8),
            Err(AgentError::TooManyValues { .. })
        ));
        assert!(matches!(
            o.add_chunk(1, 0, 1, 4, false, summary(&[1.0]), 8),
            Err(AgentError::MixedLocal { .. })
        ));
    }

    #[test]
    fn oldest_step_is_abandoned_beyond_the_limit() {
        let mut o = OpenSteps::default();
        for step in 0..3 {
            let a = o
                .add_chunk(step, 0, 1, 4, false, summary(&[1.0]), 2)
                .unwrap();
            assert_eq!(a, usize::from(step == 2));
        }
        assert_eq!(o.steps.keys().copied().collect::<Vec<_>>(), vec![1, 2]);
    }
}
