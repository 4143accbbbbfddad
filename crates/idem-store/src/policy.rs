//! The fleet's approval policy, in PostgreSQL (`idem.policies`): one rule per cell —
//! `never`, `always` or `ARGUMENT>=THRESHOLD` — changed with who and why
//! (`idem.policy_changes`). Workers read it in the transaction that starts an action, so a
//! change holds everywhere at once and a worker started without flags holds what the
//! policy holds; a trigger refuses to start a held action that no one approved.

use chrono::{DateTime, Utc};
use idem_core::profile::ApprovalPolicy;
use idem_core::ActionId;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

/// One cell's rule as stored.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct Policy {
    pub cell: String,
    /// `never`, `always` or `ARGUMENT>=THRESHOLD`.
    pub rule: String,
    pub changed_by: String,
    pub reason: String,
    pub changed_at: DateTime<Utc>,
}

/// One change in the audit.
#[derive(Debug, Clone, PartialEq, Serialize, sqlx::FromRow)]
pub struct PolicyChange {
    pub cell: String,
    pub old_rule: Option<String>,
    pub new_rule: String,
    pub changed_by: String,
    pub reason: String,
    pub changed_at: DateTime<Utc>,
}

fn columns(rule: &ApprovalPolicy) -> (&'static str, Option<&str>, Option<String>) {
    match rule {
        ApprovalPolicy::Never => ("never", None, None),
        ApprovalPolicy::Always => ("always", None, None),
        ApprovalPolicy::Above {
            argument,
            threshold,
        } => ("above", Some(argument), Some(threshold.to_string())),
    }
}

/// Every cell's rule.
pub async fn list(pool: &PgPool) -> Result<Vec<Policy>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.cell, idem.policy_rule(p) AS rule, p.changed_by, p.reason, p.changed_at \
         FROM idem.policies p ORDER BY p.cell",
    )
    .fetch_all(pool)
    .await
}

/// The latest changes, newest first.
pub async fn history(pool: &PgPool, limit: i64) -> Result<Vec<PolicyChange>, sqlx::Error> {
    sqlx::query_as(
        "SELECT cell, old_rule, new_rule, changed_by, reason, changed_at \
         FROM idem.policy_changes ORDER BY id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Set `cell`'s rule, audited; returns the rule it replaced.
pub async fn set(
    pool: &PgPool,
    cell: &str,
    rule: &ApprovalPolicy,
    by: &str,
    reason: &str,
) -> Result<Option<String>, sqlx::Error> {
    write(pool, cell, rule, by, reason, true).await
}

/// Set `cell`'s rule only if it has none (a worker's `--approval` flag, a cell's default):
/// the database's rule always wins. True when it was written.
pub async fn seed(
    pool: &PgPool,
    cell: &str,
    rule: &ApprovalPolicy,
    by: &str,
) -> Result<bool, sqlx::Error> {
    let reason = "seeded: the cell had no rule";
    Ok(write(pool, cell, rule, by, reason, false).await? == Some(String::new()))
}

/// Upsert (or insert if absent) and audit in one transaction. `Some("")` from an insert
/// that wrote a new row, `Some(old)` from a replace, `None` when nothing was written.
async fn write(
    pool: &PgPool,
    cell: &str,
    rule: &ApprovalPolicy,
    by: &str,
    reason: &str,
    replace: bool,
) -> Result<Option<String>, sqlx::Error> {
    let (kind, argument, threshold) = columns(rule);
    let mut tx = pool.begin().await?;
    let old: Option<(String,)> = sqlx::query_as(
        "SELECT idem.policy_rule(p) FROM idem.policies p WHERE p.cell = $1 FOR UPDATE",
    )
    .bind(cell)
    .fetch_optional(&mut *tx)
    .await?;
    if old.is_some() && !replace {
        return Ok(None);
    }
    let (new_rule,): (String,) = sqlx::query_as(
        "INSERT INTO idem.policies AS p (cell, kind, argument, threshold, changed_by, reason) \
         VALUES ($1, $2, $3, $4::numeric, $5, $6) \
         ON CONFLICT (cell) DO UPDATE SET kind = EXCLUDED.kind, argument = EXCLUDED.argument, \
           threshold = EXCLUDED.threshold, changed_by = EXCLUDED.changed_by, \
           reason = EXCLUDED.reason, changed_at = now() \
         RETURNING idem.policy_rule(p)",
    )
    .bind(cell)
    .bind(kind)
    .bind(argument)
    .bind(threshold)
    .bind(by)
    .bind(reason)
    .fetch_one(&mut *tx)
    .await?;
    let old = old.map(|(r,)| r);
    sqlx::query(
        "INSERT INTO idem.policy_changes (cell, old_rule, new_rule, changed_by, reason) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(cell)
    .bind(old.as_deref())
    .bind(&new_rule)
    .bind(by)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(old.unwrap_or_default()))
}

/// Of these actions, those the policy holds, with the rule that holds each.
pub async fn held(
    conn: &mut PgConnection,
    ids: &[ActionId],
) -> Result<std::collections::HashMap<ActionId, String>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let ids: Vec<uuid::Uuid> = ids.iter().map(|i| i.as_uuid()).collect();
    let rows: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT a.action_id, idem.policy_rule(p) FROM idem.actions a \
         JOIN idem.policies p ON p.cell = a.cell \
         WHERE a.action_id = ANY($1) AND idem.policy_holds(a.cell, a.args)",
    )
    .bind(&ids)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(id, r)| (id.into(), r)).collect())
}
