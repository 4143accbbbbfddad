//! Attempt audit rows: written ahead and committed before the partner request, completed
//! with the classified result afterwards.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use idem_core::{ActionId, AttemptRecord, AttemptResult, SendRule};
use serde::Serialize;
use sqlx::{PgConnection, PgExecutor};
use uuid::Uuid;

use crate::StoreError;

/// An attempt about to be sent.
#[derive(Debug, Clone, PartialEq)]
pub struct NewAttempt {
    pub action_id: ActionId,
    pub number: u32,
    pub key_generation: u32,
    pub key: Option<String>,
    pub request_fingerprint: String,
    pub rule: SendRule,
    pub pre_state: serde_json::Value,
    pub worker: String,
    pub started_at: DateTime<Utc>,
}

/// The classified result of an attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct AttemptOutcome {
    pub action_id: ActionId,
    pub number: u32,
    pub result: AttemptResult,
    pub detail: serde_json::Value,
}

/// One stored attempt.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct AttemptRow {
    pub action_id: Uuid,
    pub number: i32,
    pub key_generation: i32,
    pub idem_key: Option<String>,
    pub request_fingerprint: String,
    pub rule: String,
    pub pre_state: serde_json::Value,
    pub worker: String,
    pub started_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub result: Option<String>,
    pub detail: Option<serde_json::Value>,
}

impl AttemptRow {
    /// The view the guard and planner take of this attempt.
    pub fn record(&self) -> AttemptRecord {
        AttemptRecord {
            number: self.number.max(0) as u32,
            key_generation: self.key_generation.max(0) as u32,
            key: self.idem_key.clone(),
            request_fingerprint: self.request_fingerprint.clone(),
            started_at: self.started_at,
            result: self.result.as_deref().and_then(AttemptResult::parse),
        }
    }
}

fn rule_str(r: SendRule) -> &'static str {
    match r {
        SendRule::FirstAttempt => "first_attempt",
        SendRule::ProvenNotHappened => "proven_not_happened",
        SendRule::SameKeyReplay => "same_key_replay",
    }
}

/// [`NewAttempt`]s as one array per column, for an `unnest()` insert.
pub(crate) struct StartColumns {
    pub ids: Vec<Uuid>,
    pub numbers: Vec<i32>,
    pub generations: Vec<i32>,
    pub keys: Vec<Option<String>>,
    pub fingerprints: Vec<String>,
    pub rules: Vec<&'static str>,
    pub pre_states: Vec<serde_json::Value>,
    pub workers: Vec<String>,
    pub started_at: Vec<DateTime<Utc>>,
}

impl StartColumns {
    pub fn of(attempts: &[NewAttempt]) -> Self {
        Self {
            ids: attempts.iter().map(|a| a.action_id.as_uuid()).collect(),
            numbers: attempts.iter().map(|a| a.number as i32).collect(),
            generations: attempts.iter().map(|a| a.key_generation as i32).collect(),
            keys: attempts.iter().map(|a| a.key.clone()).collect(),
            fingerprints: attempts
                .iter()
                .map(|a| a.request_fingerprint.clone())
                .collect(),
            rules: attempts.iter().map(|a| rule_str(a.rule)).collect(),
            pre_states: attempts.iter().map(|a| a.pre_state.clone()).collect(),
            workers: attempts.iter().map(|a| a.worker.clone()).collect(),
            started_at: attempts.iter().map(|a| a.started_at).collect(),
        }
    }
}

/// [`AttemptOutcome`]s as one array per column, for an `unnest()` update.
pub(crate) struct FinishColumns {
    pub ids: Vec<Uuid>,
    pub numbers: Vec<i32>,
    pub results: Vec<&'static str>,
    pub details: Vec<serde_json::Value>,
}

impl FinishColumns {
    pub fn of(outcomes: &[AttemptOutcome]) -> Self {
        Self {
            ids: outcomes.iter().map(|o| o.action_id.as_uuid()).collect(),
            numbers: outcomes.iter().map(|o| o.number as i32).collect(),
            results: outcomes.iter().map(|o| o.result.as_str()).collect(),
            details: outcomes.iter().map(|o| o.detail.clone()).collect(),
        }
    }
}

/// Write attempts ahead (one statement for the batch). The worker writes them in the
/// statement that starts their actions ([`crate::inbox::apply_with`]); this is for callers
/// that write attempts alone.
pub async fn insert(conn: &mut PgConnection, attempts: &[NewAttempt]) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    let c = StartColumns::of(attempts);
    sqlx::query(
        r#"INSERT INTO idem.attempts (action_id, number, key_generation, idem_key,
               request_fingerprint, rule, pre_state, worker, started_at)
           SELECT * FROM unnest($1::uuid[], $2::int4[], $3::int4[], $4::text[], $5::text[],
                                $6::text[], $7::jsonb[], $8::text[], $9::timestamptz[])"#,
    )
    .bind(&c.ids)
    .bind(&c.numbers)
    .bind(&c.generations)
    .bind(&c.keys)
    .bind(&c.fingerprints)
    .bind(&c.rules)
    .bind(&c.pre_states)
    .bind(&c.workers)
    .bind(&c.started_at)
    .execute(conn)
    .await?;
    Ok(())
}

/// Record classified results (one statement for the batch). An attempt's result is written
/// once: a late worker cannot overwrite what the sweeper recorded, nor the reverse. The
/// worker records them in its settle statement ([`crate::inbox::apply_with`], the same
/// condition).
pub async fn record(
    conn: &mut PgConnection,
    outcomes: &[AttemptOutcome],
) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let c = FinishColumns::of(outcomes);
    sqlx::query(
        r#"UPDATE idem.attempts t SET result = v.result, detail = v.detail, finished_at = now()
           FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::jsonb[]) AS v(id, number, result, detail)
           WHERE t.action_id = v.id AND t.number = v.number
             AND (t.result IS NULL OR (t.result = 'lease_expired' AND v.result = 'succeeded'))"#,
    )
    // Planned per call: see the crate docs, "Plans".
    .persistent(false)
    .bind(&c.ids)
    .bind(&c.numbers)
    .bind(&c.results)
    .bind(&c.details)
    .execute(conn)
    .await?;
    Ok(())
}

/// All attempts of the given actions, in order.
pub async fn load<'e, E: PgExecutor<'e>>(
    executor: E,
    ids: &[Uuid],
) -> Result<HashMap<ActionId, Vec<AttemptRow>>, StoreError> {
    let rows: Vec<AttemptRow> = sqlx::query_as(
        r#"SELECT action_id, number, key_generation, idem_key, request_fingerprint, rule,
                  pre_state, worker, started_at, finished_at, result, detail
           FROM idem.attempts WHERE action_id = ANY($1) ORDER BY action_id, number"#,
    )
    .persistent(false)
    .bind(ids)
    .fetch_all(executor)
    .await?;
    let mut map: HashMap<ActionId, Vec<AttemptRow>> = HashMap::new();
    for r in rows {
        map.entry(ActionId(r.action_id)).or_default().push(r);
    }
    Ok(map)
}
