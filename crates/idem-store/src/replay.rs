//! Putting dead work back, by a person's audited decision: a dead letter's bytes into the
//! outbox again, and a dead action back to `received`.
//!
//! Neither can make a second effect. A dead letter never became an action, and a dead action
//! never had an attempt (`dead` is entered only from `received`, before any request), so
//! what goes back is delivered once more through the inbox, which decides as always.

use chrono::{DateTime, Utc};
use idem_core::{ActionId, Envelope, Event, State};
use sqlx::PgPool;

use crate::decisions::DecisionError;
use crate::inbox::{self, Change};
use crate::StoreError;

/// Why a replay was refused. Nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("no dead letter {0}")]
    NotFound(i64),
    #[error("dead letter {id} was replayed already, by {by} at {at}")]
    AlreadyReplayed {
        id: i64,
        by: String,
        at: DateTime<Utc>,
    },
    #[error("dead letter {id} still cannot be read ({reason}): replaying would only dead-letter it again; fix the producer or upgrade the workers first")]
    StillUndecodable { id: i64, reason: String },
    #[error("dead letter {id} names cell {cell:?}, which no worker has registered: deploy a worker that runs it first")]
    UnknownCell { id: i64, cell: String },
    #[error("dead letter {id}: action {action_id} exists with other arguments ({state}); an action id names one request forever, so submit this one under a new id")]
    Conflict {
        id: i64,
        action_id: ActionId,
        state: State,
    },
    #[error("dead letter {id}: action {action_id} already exists with these arguments and is {state}: nothing to replay (a dead action is sent again with resend)")]
    AlreadyAnAction {
        id: i64,
        action_id: ActionId,
        state: State,
    },
    #[error("a replay needs the deciding person's name")]
    NoActor,
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ReplayError {
    fn from(e: sqlx::Error) -> Self {
        ReplayError::Store(e.into())
    }
}

/// Put dead letter `id`'s bytes back into the outbox, once, if they are now an envelope this
/// build reads, for a registered cell, naming no existing action. Returns the action id the
/// bytes name. Who, when and why are kept on the letter.
pub async fn dead_letter(
    pool: &PgPool,
    id: i64,
    actor: &str,
    reason: &str,
) -> Result<ActionId, ReplayError> {
    let who = actor.trim();
    if who.is_empty() {
        return Err(ReplayError::NoActor);
    }
    let mut tx = pool.begin().await?;
    /// The letter's bytes, and when and by whom it was replayed, if it was.
    type Letter = (Vec<u8>, Option<DateTime<Utc>>, Option<String>);
    let letter: Option<Letter> = sqlx::query_as(
        "SELECT raw, replayed_at, replayed_by FROM idem.dead_letters WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((raw, replayed_at, replayed_by)) = letter else {
        return Err(ReplayError::NotFound(id));
    };
    if let Some(at) = replayed_at {
        return Err(ReplayError::AlreadyReplayed {
            id,
            by: replayed_by.unwrap_or_default(),
            at,
        });
    }
    let env = Envelope::decode(&raw).map_err(|e| ReplayError::StillUndecodable {
        id,
        reason: e.to_string(),
    })?;
    let (known,): (bool,) =
        sqlx::query_as("SELECT EXISTS (SELECT 1 FROM idem.cells WHERE name = $1)")
            .bind(&env.cell)
            .fetch_one(&mut *tx)
            .await?;
    if !known {
        return Err(ReplayError::UnknownCell { id, cell: env.cell });
    }
    // The fingerprint exactly as idem.enqueue and the worker compute it.
    let existing: Option<(String, bool)> = sqlx::query_as(
        r#"SELECT state, fingerprint = sha256(convert_to($2 || E'\n' || $3::jsonb::text, 'UTF8'))
           FROM idem.actions WHERE action_id = $1 FOR UPDATE"#,
    )
    .bind(env.action_id.as_uuid())
    .bind(&env.cell)
    .bind(&env.args)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some((state, same)) = existing {
        let state: State =
            state
                .parse()
                .map_err(|e: idem_core::state::UnknownState| StoreError::Corrupt {
                    action_id: env.action_id,
                    detail: e.to_string(),
                })?;
        return Err(if same {
            ReplayError::AlreadyAnAction {
                id,
                action_id: env.action_id,
                state,
            }
        } else {
            ReplayError::Conflict {
                id,
                action_id: env.action_id,
                state,
            }
        });
    }
    crate::outbox::put_back(&mut tx, env.action_id, &env.ordering_key, &raw).await?;
    sqlx::query(
        "UPDATE idem.dead_letters SET replayed_at = now(), replayed_by = $2, replay_reason = $3 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(format!("human:{who}"))
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(env.action_id)
}

/// Bring a `dead` action back to `received` and deliver it again, after what killed it was
/// fixed (its cell deployed, its cell's rules corrected). A worker then checks it afresh: it
/// runs, waits for approval, or goes dead again with the reason. Audited as a decision.
pub async fn revive(
    pool: &PgPool,
    id: ActionId,
    actor: &str,
    reason: &str,
) -> Result<(), DecisionError> {
    let who = crate::decisions::person(actor)?;
    let now = Utc::now();
    let mut tx = pool.begin().await?;
    let (row, fp) = crate::decisions::locked(&mut tx, id, State::Dead, None).await?;
    debug_assert_eq!(row.attempts, 0, "a dead action never had an attempt");
    crate::decisions::record(&mut tx, id, "revive", &fp, &who, Some(reason), None).await?;
    let change = Change::new(&row, Event::Revive, now)
        .map_err(|e| StoreError::Config(e.to_string()))?
        .reason(Some(format!("revived by {}: {reason}", actor.trim())));
    let applied = inbox::apply(&mut tx, &[change], &who).await?;
    let envelope = Envelope {
        v: idem_core::envelope::ENVELOPE_VERSION,
        action_id: id,
        cell: row.cell.clone(),
        args: row.args.clone(),
        ordering_key: row.ordering_key.clone(),
    };
    crate::outbox::put_back(&mut tx, id, &row.ordering_key, &envelope.encode()).await?;
    tx.commit().await?;
    applied.record();
    Ok(())
}
