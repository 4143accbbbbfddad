//! Retention: settled actions leave the inbox in small batches, each its own short
//! transaction that skips rows another transaction holds, so a purge never blocks a worker
//! and a worker never waits for a purge.
//!
//! Purging an action forgets its id: the same id enqueued or delivered again afterwards is a
//! new action. Keep settled actions longer than any redelivery can arrive and longer than
//! every cell's key window (`idem worker --inbox-retention-hours` checks the latter).
//! `needs_human` and open actions are never purged.

use std::time::Duration;

use sqlx::PgPool;

use crate::error::StoreError;

/// What a purge removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Purged {
    pub actions: u64,
    pub batches: u64,
}

/// Delete actions settled (succeeded, failed, rejected, dead) more than `older_than` ago,
/// with their attempts, decisions and transitions, `batch` per transaction, oldest first,
/// until none is left or `max_batches` ran.
pub async fn purge_settled(
    pool: &PgPool,
    older_than: Duration,
    batch: i64,
    max_batches: Option<u64>,
    pause: Duration,
) -> Result<Purged, StoreError> {
    let mut purged = Purged::default();
    while max_batches.is_none_or(|m| purged.batches < m) {
        let n = purge_batch(pool, older_than, batch.max(1)).await?;
        if n == 0 {
            break;
        }
        purged.actions += n;
        purged.batches += 1;
        // Flat out, a purge takes most of a small machine from the workers (measured:
        // `idem-lab bench inbox-scale`); a pause between batches spreads it out.
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    Ok(purged)
}

/// One batch; how many actions it removed.
pub async fn purge_batch(
    pool: &PgPool,
    older_than: Duration,
    batch: i64,
) -> Result<u64, StoreError> {
    let (n,): (i64,) = sqlx::query_as(
        "WITH doomed AS ( \
             SELECT action_id FROM idem.actions \
             WHERE settled_at IS NOT NULL \
               AND settled_at < now() - make_interval(secs => $1) \
               AND state IN ('succeeded', 'failed', 'rejected', 'dead') \
             ORDER BY settled_at LIMIT $2 \
             FOR UPDATE SKIP LOCKED), \
         t AS (DELETE FROM idem.transition_log WHERE action_id IN (SELECT action_id FROM doomed)), \
         a AS (DELETE FROM idem.actions WHERE action_id IN (SELECT action_id FROM doomed) RETURNING 1) \
         SELECT count(*) FROM a",
    )
    .bind(older_than.as_secs_f64())
    .bind(batch)
    .fetch_one(pool)
    .await?;
    Ok(n as u64)
}
