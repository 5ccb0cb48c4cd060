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
        // `try_send` never waits, so it runs under the lock: no clone (and drop) of the sender,
        // two atomic updates, per ack.
        let sent = self
            .routes
            .lock()
            .ok()
            .and_then(|r| r.get(key).map(|(_, tx)| tx.try_send(Ok(ack)).is_ok()));
        if sent == Some(true) {
            metrics.acks_sent.inc();
        } else {
            metrics.acks_dropped.inc();
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

impl SeqState {
    fn arrive(&mut self, seq: u64) -> Seen {
        if seq < self.watermark || self.durable.contains(&seq) {
            Seen::Durable
        } else if !self.pending.insert(seq) {
            Seen::Pending
        } else {
            Seen::New
        }
    }
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
        // Looked up before inserting: `entry` wants the key by value, a clone per report.
        if let Some(s) = self.seqs.get_mut(key) {
            return s.arrive(seq);
        }
        let mut s = SeqState {
            watermark: 1,
            ..Default::default()
        };
        let seen = s.arrive(seq);
        self.seqs.insert(key.clone(), s);
        seen
    }

    pub fn made_durable(&mut self, key: &AgentKey, seq: u64) {
        if let Some(s) = self.seqs.get_mut(key) {
            s.pending.remove(&seq);
            // In order (the usual case) the watermark moves and the set stays empty: inserting
            // and removing `seq` allocated and freed a tree node per report.
            if seq == s.watermark {
                s.watermark += 1;
            } else {
                s.durable.insert(seq);
            }
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
        // In order the watermark moves; a gap holds the later seqs until it closes.
        for seq in [3, 5, 4] {
            assert_eq!(d.arrive(&k, seq), Seen::New);
        }
        d.made_durable(&k, 3);
        assert_eq!((d.seqs[&k].watermark, d.seqs[&k].durable.len()), (4, 0));
        d.made_durable(&k, 5);
        assert_eq!((d.seqs[&k].watermark, d.seqs[&k].durable.len()), (4, 1));
        assert_eq!(d.arrive(&k, 5), Seen::Durable);
        assert_eq!(d.arrive(&k, 4), Seen::Pending);
        d.made_durable(&k, 4);
        assert_eq!((d.seqs[&k].watermark, d.seqs[&k].durable.len()), (6, 0));
        assert!(d.seqs[&k].pending.is_empty());
        let other = AgentKey { epoch: 10, ..k };
        assert_eq!(d.arrive(&other, 1), Seen::New);
    }
}
