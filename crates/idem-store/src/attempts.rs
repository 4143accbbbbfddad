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

/// Write attempts ahead (one statement for the batch).
pub async fn insert(conn: &mut PgConnection, attempts: &[NewAttempt]) -> Result<(), StoreError> {
    if attempts.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = attempts.iter().map(|a| a.action_id.as_uuid()).collect();
    let numbers: Vec<i32> = attempts.iter().map(|a| a.number as i32).collect();
    let generations: Vec<i32> = attempts.iter().map(|a| a.key_generation as i32).collect();
    let keys: Vec<Option<String>> = attempts.iter().map(|a| a.key.clone()).collect();
    let fps: Vec<String> = attempts
        .iter()
        .map(|a| a.request_fingerprint.clone())
        .collect();
    let rules: Vec<&str> = attempts.iter().map(|a| rule_str(a.rule)).collect();
    let pre: Vec<serde_json::Value> = attempts.iter().map(|a| a.pre_state.clone()).collect();
    let workers: Vec<String> = attempts.iter().map(|a| a.worker.clone()).collect();
    let started: Vec<DateTime<Utc>> = attempts.iter().map(|a| a.started_at).collect();
    sqlx::query(
        r#"INSERT INTO idem.attempts (action_id, number, key_generation, idem_key,
               request_fingerprint, rule, pre_state, worker, started_at)
           SELECT * FROM unnest($1::uuid[], $2::int4[], $3::int4[], $4::text[], $5::text[],
                                $6::text[], $7::jsonb[], $8::text[], $9::timestamptz[])"#,
    )
    .bind(&ids)
    .bind(&numbers)
    .bind(&generations)
    .bind(&keys)
    .bind(&fps)
    .bind(&rules)
    .bind(&pre)
    .bind(&workers)
    .bind(&started)
    .execute(conn)
    .await?;
    Ok(())
}

/// Record classified results (one statement for the batch). An attempt's result is written
/// once: a late worker cannot overwrite what the sweeper recorded, nor the reverse.
pub async fn record(
    conn: &mut PgConnection,
    outcomes: &[AttemptOutcome],
) -> Result<(), StoreError> {
    if outcomes.is_empty() {
        return Ok(());
    }
    let ids: Vec<Uuid> = outcomes.iter().map(|o| o.action_id.as_uuid()).collect();
    let numbers: Vec<i32> = outcomes.iter().map(|o| o.number as i32).collect();
    let results: Vec<&str> = outcomes.iter().map(|o| o.result.as_str()).collect();
    let details: Vec<serde_json::Value> = outcomes.iter().map(|o| o.detail.clone()).collect();
    sqlx::query(
        r#"UPDATE idem.attempts t SET result = v.result, detail = v.detail, finished_at = now()
           FROM unnest($1::uuid[], $2::int4[], $3::text[], $4::jsonb[]) AS v(id, number, result, detail)
           WHERE t.action_id = v.id AND t.number = v.number
             AND (t.result IS NULL OR (t.result = 'lease_expired' AND v.result = 'succeeded'))"#,
    )
    // Planned per call: see the crate docs, "Plans".
    .persistent(false)
    .bind(&ids)
    .bind(&numbers)
    .bind(&results)
    .bind(&details)
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
