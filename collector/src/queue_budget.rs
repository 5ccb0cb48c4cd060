//! A bound, in bytes, on the decoded reports waiting between the agents' streams and the
//! estimators.
//!
//! The queues there are bounded in reports (4,096 to the log's stage and 4,096 from it to the
//! pipeline). With the default small reports that is tens of megabytes; a large model's
//! report decodes to megabytes (16 bytes per histogram bucket, ≈ 5 MB for ResNet-50's 161
//! tensors), so at saturation the queues alone could hold tens of gigabytes, and every report
//! was decoded into fresh memory the kernel had to zero (half the collector's CPU in
//! `bench/RESULTS.md`, "Reports the size of a large model's"). A stream now holds a share of
//! this budget for each decoded report from its decode until the pipeline takes the report
//! up; a stream whose next report does not fit waits before reading another, so its agent is
//! slowed by gRPC flow control and keeps its reports (it spools them, as when the collector is
//! away). A report larger than the whole budget takes all of it, so it still passes alone.
//!
//! Guarantee: the decoded reports in these queues hold at most `--max-queued-mb` (plus one
//! KiB of rounding per report), as `gradtel_collector_queued_report_bytes` shows.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::metrics::CollectorMetrics;

pub struct QueueBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
    metrics: Arc<CollectorMetrics>,
}

/// A report's share of the budget, given back when dropped.
#[derive(Debug)]
pub struct Held {
    _permit: OwnedSemaphorePermit,
    bytes: i64,
    metrics: Arc<CollectorMetrics>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.queued_report_bytes.add(-self.bytes);
    }
}

impl QueueBudget {
    pub fn new(bytes: u64, metrics: Arc<CollectorMetrics>) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, Semaphore::MAX_PERMITS as u32);
        Self {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            metrics,
        }
    }

    /// Wait until `bytes` fit (all of the budget for a report larger than it), then hold them.
    pub async fn hold(&self, bytes: usize) -> Held {
        let kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .clamp(1, self.total_kib);
        let permit = self
            .kib
            .clone()
            .acquire_many_owned(kib)
            .await
            .expect("the budget's semaphore is never closed");
        let bytes = i64::from(kib) * 1024;
        self.metrics.queued_report_bytes.add(bytes);
        Held {
            _permit: permit,
            bytes,
            metrics: self.metrics.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_holder_waits_until_its_bytes_fit_and_an_oversized_one_takes_all() {
        let metrics = Arc::new(CollectorMetrics::default());
        let budget = Arc::new(QueueBudget::new(10 * 1024, metrics.clone()));
        let a = budget.hold(6 * 1024).await;
        let b = budget.hold(3 * 1024 + 1).await;
        assert_eq!(
            metrics.queued_report_bytes.get(),
            10 * 1024,
            "3 KiB + 1 byte is 4 KiB"
        );
        // Nothing more fits: the next waits.
        let waiting = {
            let budget = budget.clone();
            tokio::spawn(async move { budget.hold(1).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(b);
        let c = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("freed room lets it in")
            .unwrap();
        assert_eq!(metrics.queued_report_bytes.get(), 7 * 1024);
        drop((a, c));
        assert_eq!(metrics.queued_report_bytes.get(), 0);
        // Larger than the whole budget: it takes all of it, and passes alone.
        let huge = budget.hold(1 << 30).await;
        assert_eq!(metrics.queued_report_bytes.get(), 10 * 1024);
        drop(huge);
        assert_eq!(metrics.queued_report_bytes.get(), 0);
    }
}
