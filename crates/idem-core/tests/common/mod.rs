//! What the model test and the protocol check share: the cell profile they exercise.

use std::time::Duration;

use idem_core::profile::{ApprovalPolicy, KeySupport, Lookup, ReplayModel};
use idem_core::{CellProfile, RetryPolicy};

/// A Stripe-like profile: a 100 s key window with a 10 s margin (when `key`), a 5 s settle
/// time, 2 s calls, six attempts; `doubt_horizon` before a person takes over.
pub fn profile(lookup: Lookup, key: bool, doubt_horizon: Duration) -> CellProfile {
    CellProfile {
        key: key.then(|| KeySupport {
            field: "Idempotency-Key".into(),
            max_len: 255,
            retention: Duration::from_secs(100),
            safety_margin: Duration::from_secs(10),
        }),
        replay: if key {
            ReplayModel::FrozenResponse
        } else {
            ReplayModel::None
        },
        lookup,
        settle_time: Duration::from_secs(5),
        doubt_horizon,
        call_timeout: Duration::from_secs(2),
        retry: RetryPolicy {
            base: Duration::from_secs(1),
            max: Duration::from_secs(8),
            max_attempts: 6,
            outage_budget: idem_core::backoff::DEFAULT_OUTAGE_BUDGET,
            jitter: 0.5,
        },
        approval: ApprovalPolicy::Never,
        rate_limit: None,
        strategy: "test".into(),
    }
}
