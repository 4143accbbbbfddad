//! The guarantee as a predicate. design.md allows a partner request for an action only when
//! (a) no earlier attempt exists, (b) every earlier attempt is proven not to have happened,
//! or (c) the request carries the same key and parameters as every earlier unproven attempt
//! and the first of them is still inside the key's replay window. Workers call
//! [`check_send`] right before writing an attempt ahead; a violation means no request.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::CellProfile;

/// The classified result of one attempt, as stored in its audit row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptResult {
    Succeeded,
    Failed,
    NotProcessed,
    Ambiguous,
    /// The partner replayed a stored error for this key.
    ReplayedError,
    /// The worker lost its lease mid-call (died, hung): the request may have gone out.
    LeaseExpired,
}

impl AttemptResult {
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptResult::Succeeded => "succeeded",
            AttemptResult::Failed => "failed",
            AttemptResult::NotProcessed => "not_processed",
            AttemptResult::Ambiguous => "ambiguous",
            AttemptResult::ReplayedError => "replayed_error",
            AttemptResult::LeaseExpired => "lease_expired",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            AttemptResult::Succeeded,
            AttemptResult::Failed,
            AttemptResult::NotProcessed,
            AttemptResult::Ambiguous,
            AttemptResult::ReplayedError,
            AttemptResult::LeaseExpired,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
    }

    /// The partner itself said this attempt had no effect.
    pub fn proves_no_effect(self) -> bool {
        matches!(self, AttemptResult::Failed | AttemptResult::NotProcessed)
    }
}

impl From<&crate::ExecOutcome> for AttemptResult {
    fn from(outcome: &crate::ExecOutcome) -> Self {
        use crate::ExecOutcome as O;
        match outcome {
            O::Succeeded(_) => AttemptResult::Succeeded,
            O::Failed { .. } => AttemptResult::Failed,
            O::NotProcessed { .. } => AttemptResult::NotProcessed,
            O::Ambiguous {
                replayed_error: true,
                ..
            } => AttemptResult::ReplayedError,
            O::Ambiguous { .. } => AttemptResult::Ambiguous,
        }
    }
}

/// One attempt as the guard and planner see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptRecord {
    pub number: u32,
    /// Bumped when every attempt before it was proven not to have happened (a trusted
    /// reconciliation or a person's decision). Attempts of older generations are proven.
    pub key_generation: u32,
    pub key: Option<String>,
    pub request_fingerprint: String,
    pub started_at: DateTime<Utc>,
    /// `None` while the attempt is in flight (or its worker died before recording it).
    pub result: Option<AttemptResult>,
}

impl AttemptRecord {
    /// Proven to have no effect: a partner refusal or an older key generation.
    pub fn is_proven_not_happened(&self, current_generation: u32) -> bool {
        if mutation::active(mutation::Mutation::AmbiguousCountsAsProven)
            && self.result == Some(AttemptResult::Ambiguous)
        {
            return true;
        }
        self.key_generation < current_generation
            || self.result.is_some_and(AttemptResult::proves_no_effect)
    }
}

/// Deliberately broken rules, switched on per thread by the protocol check
/// (`crates/idem-core/tests/protocol.rs`) to show that the check catches a broken guarantee
/// in the real code rather than in a copy of it. Only with the test-only `mutations`
/// feature (idem-core's own dev-dependency turns it on); without it `active` is `false`
/// and there is no way to set one.
#[doc(hidden)]
pub mod mutation {
    #[cfg(feature = "mutations")]
    use std::cell::Cell;

    /// A broken rule.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Mutation {
        /// Rule (b) broken: an attempt whose answer was lost counts as proven not to have
        /// happened.
        AmbiguousCountsAsProven,
        /// The trust rule before the chaos soak's fix: a lookup miss is trusted
        /// `max(settle time, lag bound)` after the attempt, ignoring that a request can land
        /// at the partner until the call timeout.
        TrustIgnoresCallTimeout,
    }

    #[cfg(feature = "mutations")]
    thread_local! {
        static ACTIVE: Cell<Option<Mutation>> = const { Cell::new(None) };
    }

    /// Break `m` on this thread (`None` restores the real rules).
    #[cfg(feature = "mutations")]
    pub fn set(m: Option<Mutation>) {
        ACTIVE.with(|a| a.set(m));
    }

    #[cfg(feature = "mutations")]
    pub(crate) fn active(m: Mutation) -> bool {
        ACTIVE.with(|a| a.get() == Some(m))
    }

    #[cfg(not(feature = "mutations"))]
    pub(crate) fn active(_: Mutation) -> bool {
        false
    }
}

/// Which rule of the guarantee allows a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SendRule {
    /// (a) no earlier attempt exists.
    FirstAttempt,
    /// (b) every earlier attempt is proven not to have happened.
    ProvenNotHappened,
    /// (c) same key and parameters as every unproven attempt, inside the replay window.
    SameKeyReplay,
}

/// Why a request must not be sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendViolation {
    #[error("attempt {0} already succeeded")]
    AlreadySucceeded(u32),
    #[error("attempt {0} may have had an effect and the cell has no idempotency key")]
    NoKey(u32),
    #[error("attempt {attempt} may have had an effect and used another key or other parameters")]
    DifferentRequest { attempt: u32 },
    #[error("attempt {attempt} may have had an effect and its key is past the replay window")]
    KeyExpired { attempt: u32 },
}

/// Decide whether a request with `key` and `request_fingerprint`, sent now under
/// `key_generation`, is allowed by rule (a), (b) or (c).
pub fn check_send(
    profile: &CellProfile,
    history: &[AttemptRecord],
    key_generation: u32,
    key: Option<&str>,
    request_fingerprint: &str,
    now: DateTime<Utc>,
) -> Result<SendRule, SendViolation> {
    if let Some(a) = history
        .iter()
        .find(|a| a.result == Some(AttemptResult::Succeeded))
    {
        return Err(SendViolation::AlreadySucceeded(a.number));
    }
    if history.is_empty() {
        return Ok(SendRule::FirstAttempt);
    }
    let unproven: Vec<&AttemptRecord> = history
        .iter()
        .filter(|a| !a.is_proven_not_happened(key_generation))
        .collect();
    let Some(first) = unproven.iter().min_by_key(|a| a.started_at) else {
        return Ok(SendRule::ProvenNotHappened);
    };
    let Some(support) = &profile.key else {
        return Err(SendViolation::NoKey(first.number));
    };
    let (Some(key), true) = (key, profile.replay != crate::ReplayModel::None) else {
        return Err(SendViolation::NoKey(first.number));
    };
    if let Some(other) = unproven
        .iter()
        .find(|a| a.key.as_deref() != Some(key) || a.request_fingerprint != request_fingerprint)
    {
        return Err(SendViolation::DifferentRequest {
            attempt: other.number,
        });
    }
    let window =
        chrono::Duration::from_std(support.replay_window()).unwrap_or(chrono::Duration::MAX);
    if now - first.started_at >= window {
        return Err(SendViolation::KeyExpired {
            attempt: first.number,
        });
    }
    Ok(SendRule::SameKeyReplay)
}
