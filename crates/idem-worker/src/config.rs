//! Worker settings.

use std::time::Duration;

/// How a worker runs. The defaults suit one machine; the demo and tests shorten intervals.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Names this worker in leases and audit rows.
    pub id: String,
    /// Partner calls in flight at once. Claims stop here, except that with fast calls a
    /// direct claim may queue what the slots will take within a few milliseconds (see
    /// `idem_worker::pace`): queued actions are written ahead and leased, never called
    /// beyond this many at once.
    pub concurrency: usize,
    /// Most actions claimed or settled in one transaction.
    pub batch: u32,
    /// Poll the outbox this often when no NOTIFY arrives.
    pub poll_interval: Duration,
    /// Look for expired leases, due retries and doubts this often. Short, because it bounds
    /// how long a dead worker's expired leases wait to be noticed and how unevenly the
    /// survivors share its actions (the first to sweep takes what its permits allow); a
    /// sweep that finds nothing is a few index lookups.
    pub sweep_interval: Duration,
    /// Claim new actions from the outbox (direct transport). Off for a sweep-only process.
    pub claim_outbox: bool,
    /// How long an action waits for approval before it is rejected as expired.
    pub approval_ttl: Duration,
    /// An action still `received` this long after enqueue is started from its inbox row by
    /// the sweeper (its delivery was lost, e.g. dropped by Kafka retention). `None`: never.
    /// Keep it well above the normal delivery lag: these starts skip per-key ordering.
    pub stranded_after: Option<Duration>,
    /// How long a lease runs without a heartbeat. While a call is in flight the worker
    /// renews its leases every third of this, so a dead worker's actions are in doubt (and
    /// replayed or reconciled) within about this long, whatever the call timeout. A cell
    /// whose own lease (call timeout × 2 + 1 s) is shorter keeps that. 8 s: the kill -9
    /// recovery of `idem-lab bench recovery` (500 in flight) measured 14.6–15.2 s with 10 s,
    /// against a 15 s target; heartbeats every 2.7 s cost one statement per worker.
    pub lease: Duration,
    /// How long the settler waits for more finished calls, while some are still in flight,
    /// before it commits a batch: longer means fewer, larger commits and a later receipt.
    pub settle_linger: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            id: format!("worker-{}", uuid::Uuid::new_v4().simple()),
            concurrency: 32,
            batch: 64,
            poll_interval: Duration::from_millis(500),
            sweep_interval: Duration::from_millis(250),
            claim_outbox: true,
            approval_ttl: Duration::from_secs(24 * 3600),
            stranded_after: Some(Duration::from_secs(600)),
            lease: Duration::from_secs(8),
            settle_linger: Duration::from_millis(1),
        }
    }
}
