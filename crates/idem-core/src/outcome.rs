//! What a cell reports back: the classified result of a partner call, and the verdict of a
//! reconciliation.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Proof of the effect, returned identically every time the action is asked about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    /// The partner's reference for the effect (e.g. a PaymentIntent id).
    pub partner_ref: String,
    /// SHA-256 of the partner's response body, to compare with the partner's own records.
    pub response_digest: String,
    /// The fields of the response a caller needs (status, amount, …); never secrets.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// The classified answer to one partner request.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecOutcome {
    /// The effect exists.
    Succeeded(Receipt),
    /// The partner definitively refused: no effect, and retrying will not change that.
    Failed { reason: String },
    /// The partner did not process the request (e.g. rate limited before its idempotency
    /// layer): no effect, safe to send again.
    NotProcessed {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The effect may or may not exist: timeout, reset, 5xx.
    Ambiguous {
        reason: String,
        /// The partner replayed a stored error for our key: sending the key again will only
        /// replay it again, so the next step is reconciliation, not replay.
        replayed_error: bool,
    },
}

impl ExecOutcome {
    pub fn class(&self) -> &'static str {
        match self {
            ExecOutcome::Succeeded(_) => "succeeded",
            ExecOutcome::Failed { .. } => "failed",
            ExecOutcome::NotProcessed { .. } => "not_processed",
            ExecOutcome::Ambiguous {
                replayed_error: true,
                ..
            } => "replayed_error",
            ExecOutcome::Ambiguous { .. } => "ambiguous",
        }
    }
}

/// The answer to "did the effect happen?".
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// The partner has the effect.
    Happened(Receipt),
    /// The partner has the request but it definitively failed (no effect).
    Failed { reason: String },
    /// The partner has no trace of it. Trustworthy only once every attempt is older than the
    /// cell's settle time; the planner checks that, not the cell.
    NotHappened,
    /// The lookup could not answer now (partner down, lag); ask again later.
    Unknown { reason: String },
    /// No lookup can ever answer: only a person can.
    Unknowable { reason: String },
}

impl Verdict {
    pub fn class(&self) -> &'static str {
        match self {
            Verdict::Happened(_) => "happened",
            Verdict::Failed { .. } => "failed",
            Verdict::NotHappened => "not_happened",
            Verdict::Unknown { .. } => "unknown",
            Verdict::Unknowable { .. } => "unknowable",
        }
    }
}
