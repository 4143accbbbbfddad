//! Whole-run reads for checking a run against the partners' ledgers (the demo, the fault
//! campaign): every action's outcome, which ones were reconciled or replayed, how many have
//! settled. They scan whole tables, so they are for a run's end, not for a live fleet.

use sqlx::PgPool;

use crate::StoreError;

/// One action's outcome as a checker reads it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Outcome {
    pub action_id: uuid::Uuid,
    pub cell: String,
    pub state: String,
    pub reason: Option<String>,
    pub receipt: Option<serde_json::Value>,
    /// Enqueue to settle, in ms; `None` while open.
    pub settle_ms: Option<f64>,
}

/// Every action's outcome.
pub async fn outcomes(pool: &PgPool) -> Result<Vec<Outcome>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT action_id, cell, state, reason, receipt, \
         (extract(epoch from (settled_at - created_at)) * 1000)::float8 AS settle_ms \
         FROM idem.actions",
    )
    .fetch_all(pool)
    .await?)
}

/// (action, event) for every action that was reconciled with its partner or replayed under
/// its key: the paths a checker counts separately.
pub async fn recoveries(pool: &PgPool) -> Result<Vec<(uuid::Uuid, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT action_id, event FROM idem.transitions \
         WHERE event IN ('reconciled_happened','reconciled_not_happened','reconciled_failed','replay')",
    )
    .fetch_all(pool)
    .await?)
}

/// Actions in a settled state (succeeded, failed, rejected, needs_human, dead).
pub async fn settled_count(pool: &PgPool) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM idem.actions \
         WHERE state IN ('succeeded','failed','rejected','needs_human','dead')",
    )
    .fetch_one(pool)
    .await?;
    Ok(n)
}

/// Deliveries kept as dead letters (poison).
pub async fn dead_letter_count(pool: &PgPool) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM idem.dead_letters")
        .fetch_one(pool)
        .await?;
    Ok(n)
}

/// Actions the sweeper started from their inbox row because their delivery was lost.
pub async fn redriven_from_inbox(pool: &PgPool) -> Result<i64, StoreError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(DISTINCT action_id) FROM idem.transitions \
         WHERE reason LIKE 're-driven from the inbox%'",
    )
    .fetch_one(pool)
    .await?;
    Ok(n)
}
