//! The worker's decisions, as data: which change and which write-ahead attempt a step
//! produces. The runtime only moves these to and from the store.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use idem_cells::{Attempt, Cell};
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::guard::{AttemptRecord, AttemptResult};
use idem_core::plan::{after_outcome, after_verdict, Next};
use idem_core::{check_send, Event, ExecOutcome, Receipt, SendRule, SendViolation, Verdict};
use idem_store::{ActionRow, AttemptOutcome, AttemptRow, Change, NewAttempt};

/// An attempt written ahead, ready to send.
#[derive(Debug, Clone)]
pub struct Started {
    pub row: ActionRow,
    pub cell: Arc<dyn Cell>,
    pub attempt: Attempt,
    /// Every attempt of the action, this one included.
    pub history: Vec<AttemptRecord>,
    /// Why the guard allowed this send.
    pub rule: SendRule,
}

/// An action in doubt, due for reconciliation.
#[derive(Debug, Clone)]
pub struct ReconcileJob {
    pub row: ActionRow,
    pub cell: Arc<dyn Cell>,
    pub attempts: Vec<AttemptRow>,
}

/// What every request of an action is fingerprinted by: the cell builds the request
/// deterministically from the (immutable) arguments and the key.
pub fn request_fingerprint(cell: &str, args: &serde_json::Value) -> String {
    sha256_hex(format!("{cell}\n{}", canonical_json(args)).as_bytes())
}

/// Who takes an attempt, and for how long its lease first runs.
#[derive(Debug, Clone, Copy)]
pub struct Lessee<'a> {
    pub worker: &'a str,
    /// The worker's heartbeat lease; the cell's own (call timeout × 2 + 1 s) when longer.
    pub lease: std::time::Duration,
}

/// Write-ahead for the next attempt of `row` via `event` (Start, Approve, RetryDue,
/// Replay), if the guard allows a request now.
pub fn start_attempt(
    row: &ActionRow,
    cell: &Arc<dyn Cell>,
    history: &[AttemptRecord],
    event: Event,
    lessee: Lessee<'_>,
    now: DateTime<Utc>,
) -> Result<(Change, NewAttempt, Started), StartError> {
    let worker = lessee.worker;
    let key = cell.key(row.action_id, row.key_generation);
    let fingerprint = request_fingerprint(&row.cell, &row.args);
    let rule = check_send(
        cell.profile(),
        history,
        row.key_generation,
        key.as_deref(),
        &fingerprint,
        now,
    )?;
    let number = row.attempts + 1;
    let lease = chrono::Duration::from_std(cell.profile().lease().min(lessee.lease))
        .unwrap_or(chrono::Duration::MAX);
    let mut change = Change::new(row, event, now)?;
    change.attempts = number;
    change.lease_owner = Some(worker.to_owned());
    change.lease_until = Some(now + lease);
    let pre_state = cell.pre_state(now);
    let new = NewAttempt {
        action_id: row.action_id,
        number,
        key_generation: row.key_generation,
        key: key.clone(),
        request_fingerprint: fingerprint.clone(),
        rule,
        pre_state: pre_state.clone(),
        worker: worker.to_owned(),
        started_at: now,
    };
    let mut after = row.clone();
    after.state = change.to;
    after.attempts = number;
    after.lease_owner = change.lease_owner.clone();
    after.lease_until = change.lease_until;
    after.due_at = None;
    after.doubt_since = change.doubt_since;
    let mut history = history.to_vec();
    history.push(AttemptRecord {
        number,
        key_generation: row.key_generation,
        key: key.clone(),
        request_fingerprint: fingerprint,
        started_at: now,
        result: None,
    });
    let started = Started {
        rule,
        row: after,
        cell: cell.clone(),
        attempt: Attempt {
            number,
            key,
            started_at: now,
            pre_state,
        },
        history,
    };
    Ok((change, new, started))
}

/// Why no attempt was started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("guard refused the request: {0}")]
    Guard(#[from] SendViolation),
    #[error(transparent)]
    Transition(#[from] idem_core::TransitionError),
}

fn receipt_json(r: &Receipt) -> serde_json::Value {
    serde_json::to_value(r).unwrap_or_default()
}

/// The audit result and the compare-and-set that settle one executed attempt.
pub fn settle(
    started: &Started,
    outcome: &ExecOutcome,
    now: DateTime<Utc>,
    sample: f64,
) -> (AttemptOutcome, Change, Next) {
    let mut history = started.history.clone();
    if let Some(last) = history
        .iter_mut()
        .find(|a| a.number == started.attempt.number)
    {
        last.result = Some(AttemptResult::from(outcome));
    }
    let next = after_outcome(
        started.cell.profile(),
        outcome,
        started.attempt.number,
        &history,
        started.row.key_generation,
        now,
        sample,
    );
    // Every attempt that did not succeed says so once, where an operator looks.
    if !matches!(outcome, ExecOutcome::Succeeded(_)) {
        tracing::warn!(
            cell = %started.row.cell,
            action_id = %started.row.action_id,
            attempt = started.attempt.number,
            next = ?next.event,
            reason = next.reason.as_deref().unwrap_or(""),
            "partner attempt did not succeed"
        );
    }
    let (reason, receipt) = match outcome {
        ExecOutcome::Succeeded(r) => (None, Some(receipt_json(r))),
        ExecOutcome::Failed { reason }
        | ExecOutcome::NotProcessed { reason, .. }
        | ExecOutcome::Ambiguous { reason, .. } => (Some(reason.clone()), None),
    };
    let audit = AttemptOutcome {
        action_id: started.row.action_id,
        number: started.attempt.number,
        result: AttemptResult::from(outcome),
        detail: serde_json::json!({ "reason": reason, "receipt": receipt }),
    };
    let mut change = Change::new(&started.row, next.event, now)
        .expect("an executing action accepts every outcome event")
        .reason(next.reason.clone().or(reason))
        .due(next.due_at);
    change.receipt = receipt;
    (audit, change, next)
}

/// The compare-and-set for a reconciliation verdict.
pub fn verdict_change(
    job: &ReconcileJob,
    verdict: &Verdict,
    now: DateTime<Utc>,
    sample: f64,
) -> Change {
    let history: Vec<AttemptRecord> = job.attempts.iter().map(AttemptRow::record).collect();
    let next = after_verdict(
        job.cell.profile(),
        verdict,
        &history,
        job.row.key_generation,
        job.row.reconcile_rounds,
        now,
        sample,
    );
    // Never schedule the next look past the end of the doubt horizon: at that moment the
    // sweeper hands the case to a person, and waiting longer helps nobody.
    let horizon_end = job.row.doubt_since.map(|d| {
        d + chrono::Duration::from_std(job.cell.profile().doubt_horizon)
            .unwrap_or(chrono::Duration::MAX)
    });
    let due = match (next.due_at, horizon_end) {
        (Some(due), Some(end)) if next.event == idem_core::Event::ReconciledUnknown => {
            Some(due.min(end.max(now)))
        }
        (due, _) => due,
    };
    let mut change = Change::new(&job.row, next.event, now)
        .expect("an in-doubt action accepts every verdict event")
        .reason(next.reason.clone())
        .due(due);
    change.reconcile_rounds = job.row.reconcile_rounds + 1;
    if next.bump_generation {
        change.key_generation = job.row.key_generation + 1;
    }
    if let Verdict::Happened(r) = verdict {
        change.receipt = Some(receipt_json(r));
        change.reason = Some("reconciled: the partner has the effect".into());
    }
    change
}

/// The cell's view of stored attempts.
pub fn cell_attempts(rows: &[AttemptRow]) -> Vec<Attempt> {
    rows.iter()
        .map(|a| Attempt {
            number: a.number.max(0) as u32,
            key: a.idem_key.clone(),
            started_at: a.started_at,
            pre_state: a.pre_state.clone(),
        })
        .collect()
}
