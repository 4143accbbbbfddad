//! People's decisions: approving or rejecting an action that awaits approval, and
//! resolving a `needs_human` case. Each is recorded in `idem.decisions` with who, when,
//! why and the argument fingerprint it was made on, and audited in `idem.transitions`
//! with the person as the actor.
//!
//! An approval does not call the partner itself: it is a record a worker's sweeper acts on
//! (writing the attempt ahead like any first attempt), and it counts only while the
//! action's fingerprint equals the one approved.

use chrono::{DateTime, Utc};
use idem_core::{ActionId, Event, State};
use serde::Serialize;
use sqlx::PgPool;

use crate::inbox::{self, ActionRow, Change};
use crate::StoreError;

/// Why a decision was refused. Nothing was recorded.
#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("no action {0}")]
    NotFound(ActionId),
    #[error("action {action_id} is {state}, not {expected}: nothing to decide")]
    WrongState {
        action_id: ActionId,
        state: State,
        expected: State,
    },
    #[error("action {action_id}: the arguments' fingerprint is {actual}, not the {given} you reviewed; review it again")]
    FingerprintMismatch {
        action_id: ActionId,
        actual: String,
        given: String,
    },
    #[error("a decision needs the deciding person's name")]
    NoActor,
    #[error("{cell}: the partner has no lookup, so there is nothing to check again; decide happened, not_happened or retry")]
    NoLookup { cell: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for DecisionError {
    fn from(e: sqlx::Error) -> Self {
        DecisionError::Store(e.into())
    }
}

/// What a person says about a `needs_human` case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// The effect happened; `partner_ref` names it (e.g. the PaymentIntent id).
    Happened { partner_ref: String },
    /// It did not happen and must not be tried again.
    NotHappened,
    /// It did not happen; try again (every earlier attempt counts as proven not to have
    /// happened, so the next request goes out under a new key generation).
    Retry,
}

impl Resolution {
    fn kind(&self) -> &'static str {
        match self {
            Resolution::Happened { .. } => "happened",
            Resolution::NotHappened => "not_happened",
            Resolution::Retry => "retry",
        }
    }
}

/// An action waiting for a person, as an approver or resolver sees it.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    #[serde(flatten)]
    pub row: ActionRow,
    /// Hex SHA-256 of cell and arguments: what an approval is bound to.
    pub fingerprint: String,
}

/// Actions in `state` (awaiting_approval or needs_human), oldest first.
pub async fn waiting(pool: &PgPool, state: State, limit: i64) -> Result<Vec<Waiting>, StoreError> {
    let ids: Vec<(uuid::Uuid, Vec<u8>)> = sqlx::query_as(
        // An approved action waits for a sweeper to start it; it no longer waits for a person.
        "SELECT a.action_id, a.fingerprint FROM idem.actions a WHERE a.state = $1 \
         AND NOT EXISTS (SELECT 1 FROM idem.decisions d WHERE d.action_id = a.action_id \
                         AND d.kind = 'approve' AND d.fingerprint = a.fingerprint) \
         ORDER BY a.updated_at LIMIT $2",
    )
    .bind(state.as_str())
    .bind(limit)
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for (id, fp) in ids {
        if let Some(row) = inbox::get(pool, ActionId(id)).await? {
            out.push(Waiting {
                row,
                fingerprint: hex::encode(fp),
            });
        }
    }
    Ok(out)
}

/// How far back [`ended_recently`] looks.
pub const FAILED_WINDOW_DAYS: i64 = 7;

/// Actions that ended `failed` or `dead` (`state`) in the last [`FAILED_WINDOW_DAYS`] days,
/// newest first: what a person may send again.
pub async fn ended_recently(
    pool: &PgPool,
    state: State,
    limit: i64,
) -> Result<Vec<Waiting>, StoreError> {
    let ids: Vec<(uuid::Uuid, Vec<u8>)> = sqlx::query_as(
        "SELECT action_id, fingerprint FROM idem.actions WHERE state = $3 \
         AND updated_at > now() - make_interval(days => $1::int) \
         ORDER BY updated_at DESC LIMIT $2",
    )
    .bind(FAILED_WINDOW_DAYS)
    .bind(limit)
    .bind(state.as_str())
    .fetch_all(pool)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for (id, fp) in ids {
        if let Some(row) = inbox::get(pool, ActionId(id)).await? {
            out.push(Waiting {
                row,
                fingerprint: hex::encode(fp),
            });
        }
    }
    Ok(out)
}

/// Lock the action and check it is in `expected` with the fingerprint the person saw.
pub(crate) async fn locked(
    tx: &mut sqlx::PgConnection,
    id: ActionId,
    expected: State,
    fingerprint: Option<&str>,
) -> Result<(ActionRow, Vec<u8>), DecisionError> {
    let row = inbox::lock(tx, &[id.as_uuid()])
        .await?
        .pop()
        .ok_or(DecisionError::NotFound(id))?;
    if row.state != expected {
        return Err(DecisionError::WrongState {
            action_id: id,
            state: row.state,
            expected,
        });
    }
    let (fp,): (Vec<u8>,) =
        sqlx::query_as("SELECT fingerprint FROM idem.actions WHERE action_id = $1")
            .bind(id.as_uuid())
            .fetch_one(&mut *tx)
            .await?;
    if let Some(given) = fingerprint {
        if !given.eq_ignore_ascii_case(&hex::encode(&fp)) {
            return Err(DecisionError::FingerprintMismatch {
                action_id: id,
                actual: hex::encode(&fp),
                given: given.to_owned(),
            });
        }
    }
    Ok((row, fp))
}

pub(crate) async fn record(
    tx: &mut sqlx::PgConnection,
    id: ActionId,
    kind: &str,
    fingerprint: &[u8],
    actor: &str,
    reason: Option<&str>,
    partner_ref: Option<&str>,
) -> Result<(), DecisionError> {
    sqlx::query(
        "INSERT INTO idem.decisions (action_id, kind, fingerprint, actor, reason, partner_ref) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(id.as_uuid())
    .bind(kind)
    .bind(fingerprint)
    .bind(actor)
    .bind(reason)
    .bind(partner_ref)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) fn person(actor: &str) -> Result<String, DecisionError> {
    let a = actor.trim();
    if a.is_empty() {
        return Err(DecisionError::NoActor);
    }
    Ok(format!("human:{a}"))
}

/// Approve an action awaiting approval. `fingerprint` (hex) is what the approver reviewed;
/// when given it must match. A worker's sweeper then starts the action.
pub async fn approve(
    pool: &PgPool,
    id: ActionId,
    actor: &str,
    reason: Option<&str>,
    fingerprint: Option<&str>,
) -> Result<(), DecisionError> {
    let who = person(actor)?;
    let mut tx = pool.begin().await?;
    let (_, fp) = locked(&mut tx, id, State::AwaitingApproval, fingerprint).await?;
    let (already,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM idem.decisions WHERE action_id = $1 \
         AND kind = 'approve' AND fingerprint = $2)",
    )
    .bind(id.as_uuid())
    .bind(&fp)
    .fetch_one(&mut *tx)
    .await?;
    if already {
        // A second click (or a retried request) approves nothing new.
        return Ok(());
    }
    record(&mut tx, id, "approve", &fp, &who, reason, None).await?;
    // Wake workers: the sweeper takes approved actions.
    sqlx::query("SELECT pg_notify('idem_outbox', '')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Reject an action awaiting approval: it ends `rejected`, and nothing is ever sent.
pub async fn reject(
    pool: &PgPool,
    id: ActionId,
    actor: &str,
    reason: Option<&str>,
    fingerprint: Option<&str>,
) -> Result<(), DecisionError> {
    let who = person(actor)?;
    let mut tx = pool.begin().await?;
    let (row, fp) = locked(&mut tx, id, State::AwaitingApproval, fingerprint).await?;
    record(&mut tx, id, "reject", &fp, &who, reason, None).await?;
    let change = Change::new(&row, Event::Reject, Utc::now())
        .map_err(|e| StoreError::Config(e.to_string()))?
        .reason(Some(format!(
            "rejected by {}{}",
            actor.trim(),
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        )));
    let applied = inbox::apply(&mut tx, &[change], &who).await?;
    tx.commit().await?;
    applied.record();
    Ok(())
}

/// Resolve a `needs_human` case with an audited decision.
pub async fn resolve(
    pool: &PgPool,
    id: ActionId,
    resolution: &Resolution,
    actor: &str,
    reason: &str,
) -> Result<State, DecisionError> {
    let who = person(actor)?;
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    let (row, fp) = locked(&mut tx, id, State::NeedsHuman, None).await?;
    let partner_ref = match resolution {
        Resolution::Happened { partner_ref } => Some(partner_ref.as_str()),
        _ => None,
    };
    record(
        &mut tx,
        id,
        resolution.kind(),
        &fp,
        &who,
        Some(reason),
        partner_ref,
    )
    .await?;
    let why = Some(format!("resolved by {}: {reason}", actor.trim()));
    let change = match resolution {
        Resolution::Happened { partner_ref } => {
            let mut c = Change::new(&row, Event::HumanSucceeded, now)
                .map_err(|e| StoreError::Config(e.to_string()))?
                .reason(why);
            c.receipt = Some(serde_json::json!({
                "partner_ref": partner_ref,
                "response_digest": "",
                "detail": {"resolved_by": actor.trim(), "reason": reason},
            }));
            c
        }
        Resolution::NotHappened => Change::new(&row, Event::HumanFailed, now)
            .map_err(|e| StoreError::Config(e.to_string()))?
            .reason(why),
        Resolution::Retry => {
            let mut c = Change::new(&row, Event::HumanRetry, now)
                .map_err(|e| StoreError::Config(e.to_string()))?
                .reason(why)
                .due(Some(now));
            // The person vouches that no earlier attempt happened.
            c.key_generation = row.key_generation + 1;
            c
        }
    };
    let to = change.to;
    let applied = inbox::apply(&mut tx, &[change], &who).await?;
    tx.commit().await?;
    applied.record();
    Ok(to)
}

/// Send a `failed` action again. `failed` means the partner confirmed no effect (a
/// refusal, a decline, an outage past the cell's budget), so the next request goes out
/// under a new key generation — a fresh partner key, so the partner does not replay its
/// stored refusal — with a fresh outage budget. Audited like every decision.
pub async fn resend(
    pool: &PgPool,
    id: ActionId,
    actor: &str,
    reason: &str,
) -> Result<(), DecisionError> {
    let who = person(actor)?;
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    let (row, fp) = locked(&mut tx, id, State::Failed, None).await?;
    record(&mut tx, id, "resend", &fp, &who, Some(reason), None).await?;
    let mut change = Change::new(&row, Event::Resend, now)
        .map_err(|e| StoreError::Config(e.to_string()))?
        .reason(Some(format!("sent again by {}: {reason}", actor.trim())))
        .due(Some(now));
    change.key_generation = row.key_generation + 1;
    let applied = inbox::apply(&mut tx, &[change], &who).await?;
    // Wake workers: the action is due now.
    sqlx::query("SELECT pg_notify('idem_outbox', '')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    applied.record();
    Ok(())
}

/// Send a `failed` action again ([`resend`]) or deliver a `dead` one again
/// ([`crate::replay::revive`]): the one "send it again" a person has. Returns the state it
/// went to (`retry_scheduled` or `received`).
pub async fn send_again(
    pool: &PgPool,
    id: ActionId,
    actor: &str,
    reason: &str,
) -> Result<State, DecisionError> {
    match resend(pool, id, actor, reason).await {
        Ok(()) => Ok(State::RetryScheduled),
        Err(DecisionError::WrongState {
            state: State::Dead, ..
        }) => crate::replay::revive(pool, id, actor, reason)
            .await
            .map(|()| State::Received),
        Err(e) => Err(e),
    }
}

/// Have the partner checked again for a `needs_human` case: the action goes back to
/// `in_doubt` with a fresh doubt horizon and is reconciled at once. A check that finds the
/// effect settles it `succeeded`; one that proves it absent past the settle time lets it be
/// sent again (rule b); one that still cannot tell returns it to `needs_human` with what
/// was checked and when. Refused for a cell whose partner has no lookup.
pub async fn recheck(
    pool: &PgPool,
    id: ActionId,
    actor: &str,
    reason: &str,
) -> Result<(), DecisionError> {
    let who = person(actor)?;
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    let (row, fp) = locked(&mut tx, id, State::NeedsHuman, None).await?;
    if crate::cells::lookup(pool, &row.cell).await?.as_deref() == Some("none") {
        return Err(DecisionError::NoLookup { cell: row.cell });
    }
    record(&mut tx, id, "recheck", &fp, &who, Some(reason), None).await?;
    let mut change = Change::new(&row, Event::Recheck, now)
        .map_err(|e| StoreError::Config(e.to_string()))?
        .reason(Some(format!(
            "check again asked by {}: {reason}",
            actor.trim()
        )))
        .due(Some(now));
    change.reconcile_rounds = 0;
    let applied = inbox::apply(&mut tx, &[change], &who).await?;
    sqlx::query("SELECT pg_notify('idem_outbox', '')")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    applied.record();
    Ok(())
}

/// Decisions recorded for an action, oldest first: (kind, actor, reason, partner_ref, at).
/// One decision: kind, actor, reason, partner reference, when.
pub type Decided = (
    String,
    String,
    Option<String>,
    Option<String>,
    DateTime<Utc>,
);

pub async fn history(pool: &PgPool, id: ActionId) -> Result<Vec<Decided>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT kind, actor, reason, partner_ref, at FROM idem.decisions \
         WHERE action_id = $1 ORDER BY id",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?)
}
