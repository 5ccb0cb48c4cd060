//! Acknowledgement routing and deduplication.
//!
//! Acks are routed by agent identity, not by the stream a report came in on: when an agent
//! reconnects, acks for reports it sent on the old stream reach it on the new one.
//! Deduplication keeps, per agent incarnation, a watermark below which every seq is durable plus
//! the durable seqs above it, so its memory is bounded by the reordering, not by the run length.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Mutex;

use gradtel_proto::v1::{Ack, ack};
use tokio::sync::mpsc;

use crate::metrics::CollectorMetrics;
use crate::report::AgentKey;

pub type AckSender = mpsc::Sender<Result<Ack, tonic::Status>>;

pub fn make_ack(key: &AgentKey, seq: u64, status: ack::Status, reason: String) -> Ack {
    Ack {
        run_id: key.run_id.to_string(),
        rank: key.rank,
        shard: key.shard,
        seq,
        status: status as i32,
        reason,
        agent_epoch: key.epoch,
    }
}

/// Current stream of each agent.
#[derive(Default)]
pub struct AckRouter {
    routes: Mutex<HashMap<AgentKey, (u64, AckSender)>>,
}

impl AckRouter {
    pub fn attach(&self, key: AgentKey, conn: u64, tx: AckSender) {
        if let Ok(mut r) = self.routes.lock() {
            r.insert(key, (conn, tx));
        }
    }

    /// Forget the routes of a closed stream (unless the agent already moved to a newer one).
    pub fn detach(&self, keys: &HashSet<AgentKey>, conn: u64) {
        if let Ok(mut r) = self.routes.lock() {
            for k in keys {
                if r.get(k).is_some_and(|(c, _)| *c == conn) {
                    r.remove(k);
                }
            }
        }
    }

    /// Never blocks: an ack that cannot be delivered is counted; the agent resends the report
    /// and gets a DUPLICATE ack then.
    pub fn send(&self, key: &AgentKey, ack: Ack, metrics: &CollectorMetrics) {
        let tx = self
            .routes
            .lock()
            .ok()
            .and_then(|r| r.get(key).map(|(_, tx)| tx.clone()));
        match tx.map(|tx| tx.try_send(Ok(ack))) {
            Some(Ok(())) => metrics.acks_sent.inc(),
            _ => metrics.acks_dropped.inc(),
        }
    }
}

#[derive(Debug, Default)]
struct SeqState {
    /// Every seq < watermark is durable.
    watermark: u64,
    durable: BTreeSet<u64>,
    pending: HashSet<u64>,
}

/// What to do with an arriving report.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    /// Already durable: acknowledge as duplicate.
    Durable,
    /// Received, not durable yet: its ack will follow; drop this copy.
    Pending,
}

#[derive(Default)]
pub struct Dedup {
    seqs: HashMap<AgentKey, SeqState>,
}

impl Dedup {
    pub fn arrive(&mut self, key: &AgentKey, seq: u64) -> Seen {
        let s = self.seqs.entry(key.clone()).or_insert_with(|| SeqState {
            watermark: 1,
            ..Default::default()
        });
        if seq < s.watermark || s.durable.contains(&seq) {
            Seen::Durable
        } else if !s.pending.insert(seq) {
            Seen::Pending
        } else {
            Seen::New
        }
    }

    pub fn made_durable(&mut self, key: &AgentKey, seq: u64) {
        if let Some(s) = self.seqs.get_mut(key) {
            s.pending.remove(&seq);
            s.durable.insert(seq);
            while s.durable.remove(&s.watermark) {
                s.watermark += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_repeats_and_compacts() {
        let k = AgentKey {
            run_id: "r".into(),
            rank: 0,
            shard: 0,
            epoch: 9,
        };
        let mut d = Dedup::default();
        assert_eq!(d.arrive(&k, 1), Seen::New);
        assert_eq!(d.arrive(&k, 2), Seen::New);
        assert_eq!(d.arrive(&k, 1), Seen::Pending);
        d.made_durable(&k, 2);
        assert_eq!(d.arrive(&k, 2), Seen::Durable);
        d.made_durable(&k, 1);
        assert_eq!(d.seqs[&k].watermark, 3);
        assert!(d.seqs[&k].durable.is_empty());
        assert_eq!(d.arrive(&k, 1), Seen::Durable);
        let other = AgentKey { epoch: 10, ..k };
        assert_eq!(d.arrive(&other, 1), Seen::New);
    }
}
