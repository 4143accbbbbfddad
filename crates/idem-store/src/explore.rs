//! Reads for an operator looking for an action and its history (the console's explorer):
//! find actions by id, named intent, cell, state and time; read every transition with who
//! and why; list dead letters with their raw bytes and where they came from.

use chrono::{DateTime, Utc};
use idem_core::{ActionId, State};
use serde::Serialize;
use sqlx::PgPool;

use crate::inbox::{ActionRow, RawRow, COLUMNS};
use crate::StoreError;

/// What to look for; every field given must match. Newest first.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub id: Option<ActionId>,
    /// The scope a named intent lives in (a session, a conversation).
    pub scope: Option<String>,
    pub intent: Option<String>,
    pub cell: Option<String>,
    pub state: Option<State>,
    pub since: Option<DateTime<Utc>>,
    pub limit: i64,
}

/// A found action with the named intent it was enqueued under, if any.
#[derive(Debug, Clone)]
pub struct Found {
    pub row: ActionRow,
    pub scope: Option<String>,
    pub intent: Option<String>,
}

pub async fn search(pool: &PgPool, f: &Filter) -> Result<Vec<Found>, StoreError> {
    let sql = format!(
        "SELECT {COLUMNS}, intent_scope, intent FROM idem.actions \
         WHERE ($1::uuid IS NULL OR action_id = $1) \
           AND ($2::text IS NULL OR intent_scope = $2) \
           AND ($3::text IS NULL OR intent = $3) \
           AND ($4::text IS NULL OR cell = $4) \
           AND ($5::text IS NULL OR state = $5) \
           AND ($6::timestamptz IS NULL OR created_at >= $6) \
         ORDER BY created_at DESC LIMIT $7"
    );
    let rows = sqlx::query(&sql)
        // Planned per call, so a given id or intent uses its index.
        .persistent(false)
        .bind(f.id.map(|i| i.as_uuid()))
        .bind(&f.scope)
        .bind(&f.intent)
        .bind(&f.cell)
        .bind(f.state.map(|s| s.as_str()))
        .bind(f.since)
        .bind(f.limit.clamp(1, 500))
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            use sqlx::{FromRow, Row};
            Ok(Found {
                row: ActionRow::try_from(RawRow::from_row(r)?)?,
                scope: r.try_get("intent_scope")?,
                intent: r.try_get("intent")?,
            })
        })
        .collect()
}

/// One audited state change.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Transition {
    pub from_state: String,
    pub to_state: String,
    pub event: String,
    pub actor: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// Every transition of `id`, oldest first.
pub async fn transitions(pool: &PgPool, id: ActionId) -> Result<Vec<Transition>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT from_state, to_state, event, actor, reason, at FROM idem.transitions \
         WHERE action_id = $1 ORDER BY id",
    )
    .bind(id.as_uuid())
    .fetch_all(pool)
    .await?)
}

/// A delivery that could not become an action, as it was kept.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetterRow {
    pub id: i64,
    pub action_id: Option<uuid::Uuid>,
    /// As delivered; serialised as `raw_hex` (JSON has no bytes).
    #[serde(rename = "raw_hex", serialize_with = "as_hex")]
    pub raw: Vec<u8>,
    pub reason: String,
    /// Outbox sequence, or Kafka topic, partition and offset.
    pub source: serde_json::Value,
    pub at: DateTime<Utc>,
    /// Set once a person replayed it (see [`crate::replay::dead_letter`]).
    pub replayed_at: Option<DateTime<Utc>>,
    pub replayed_by: Option<String>,
    pub replay_reason: Option<String>,
}

fn as_hex<S: serde::Serializer>(raw: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(raw))
}

/// One dead letter, by id.
pub async fn dead_letter(pool: &PgPool, id: i64) -> Result<Option<DeadLetterRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, action_id, raw, reason, source, at, replayed_at, replayed_by, replay_reason \
         FROM idem.dead_letters WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// The newest `limit` dead letters.
pub async fn dead_letters(pool: &PgPool, limit: i64) -> Result<Vec<DeadLetterRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, action_id, raw, reason, source, at, replayed_at, replayed_by, replay_reason \
         FROM idem.dead_letters ORDER BY id DESC LIMIT $1",
    )
    .bind(limit.clamp(1, 500))
    .fetch_all(pool)
    .await?)
}
