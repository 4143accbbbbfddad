//! Fleet figures for the metrics gauges: what waits, what is open, how deep the outbox is.
//! Open states only, so the query stays cheap however many settled actions are kept.

use idem_telemetry::metrics::Fleet;
use sqlx::PgPool;

use crate::StoreError;

/// Count open actions by cell and state, and measure the outbox.
pub async fn fleet(pool: &PgPool) -> Result<Fleet, StoreError> {
    let actions: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT cell, state, count(*) FROM idem.actions \
         WHERE state IN ('received', 'awaiting_approval', 'executing', 'retry_scheduled', \
                         'in_doubt', 'needs_human') \
         GROUP BY cell, state ORDER BY cell, state",
    )
    .fetch_all(pool)
    .await?;
    let (depth, lag): (i64, Option<f64>) = sqlx::query_as(
        "SELECT count(*), extract(epoch FROM now() - min(enqueued_at))::float8 FROM idem.outbox",
    )
    .fetch_one(pool)
    .await?;
    Ok(Fleet {
        actions: actions
            .into_iter()
            .map(|(c, s, n)| (c, s, n.max(0) as u64))
            .collect(),
        outbox_depth: depth.max(0) as u64,
        outbox_lag_seconds: lag.unwrap_or(0.0).max(0.0),
    })
}
