//! The outbox as the relay reads it: the oldest rows in order, deleted once Kafka
//! acknowledged them; the results outbox likewise; and the advisory lock that makes one
//! relay the leader.

use std::time::Duration;

use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// Claim again this long after a notification on `idem_outbox` woke the claimer. An
/// enqueue does not notify when another did in the last `idem.settings.notify_window_ms`
/// (2 ms by default: a notifying commit takes a database-wide lock, see migration 0016),
/// so a row that committed just after the notified claim ran has no notification of its
/// own; these claims find it instead of the next poll.
pub const RECHECKS_AFTER_NOTIFY: [Duration; 2] =
    [Duration::from_millis(4), Duration::from_millis(20)];

/// The rechecks still due after a notification (see [`RECHECKS_AFTER_NOTIFY`]).
#[derive(Debug, Default)]
pub struct Rechecks(Vec<tokio::time::Instant>);

impl Rechecks {
    /// A notification arrived: claim again at each of [`RECHECKS_AFTER_NOTIFY`] from now.
    pub fn notified(&mut self) {
        let now = tokio::time::Instant::now();
        self.0 = RECHECKS_AFTER_NOTIFY.iter().map(|d| now + *d).collect();
    }

    /// When to wake: the next recheck, or `poll` if that is sooner.
    pub fn wake(&self, poll: tokio::time::Instant) -> tokio::time::Instant {
        self.0.first().map_or(poll, |at| (*at).min(poll))
    }

    /// The timer fired: forget the rechecks that are past.
    pub fn fired(&mut self) {
        let now = tokio::time::Instant::now();
        self.0.retain(|at| *at > now);
    }
}

/// One queued action, as enqueued.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OutboxRow {
    pub seq: i64,
    pub action_id: Uuid,
    pub ordering_key: String,
    pub payload: Vec<u8>,
    pub headers: serde_json::Value,
}

/// One queued receipt for the results topic.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ResultRow {
    pub seq: i64,
    pub action_id: Uuid,
    pub payload: Vec<u8>,
}

/// The oldest `limit` outbox rows, in outbox order.
pub async fn oldest(pool: &PgPool, limit: i64) -> Result<Vec<OutboxRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, action_id, ordering_key, payload, headers FROM idem.outbox \
         ORDER BY seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Delete the outbox rows Kafka acknowledged.
pub async fn delete(pool: &PgPool, seqs: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idem.outbox WHERE seq = ANY($1)")
        .bind(seqs)
        .execute(pool)
        .await
        .map(drop)
}

/// The oldest `limit` queued receipts.
pub async fn oldest_results(pool: &PgPool, limit: i64) -> Result<Vec<ResultRow>, sqlx::Error> {
    sqlx::query_as("SELECT seq, action_id, payload FROM idem.results_outbox ORDER BY seq LIMIT $1")
        .bind(limit)
        .fetch_all(pool)
        .await
}

/// Delete the receipts Kafka acknowledged.
pub async fn delete_results(pool: &PgPool, seqs: &[i64]) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM idem.results_outbox WHERE seq = ANY($1)")
        .bind(seqs)
        .execute(pool)
        .await
        .map(drop)
}

/// From now on settled actions queue their receipts for the results topic.
pub async fn publish_results(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE idem.settings SET publish_results = true")
        .execute(pool)
        .await
        .map(drop)
}

/// Take the leader lock `key` on this session if it is free; it lasts as long as the
/// session.
pub async fn try_lead(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    let (leader,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(conn)
        .await?;
    Ok(leader)
}

/// Fails once the session (and with it the leader lock) is gone.
pub async fn still_leading(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1").execute(conn).await.map(drop)
}

/// Queue `payload` for `action_id` again (a replayed dead letter, a revived action), inside
/// the deciding transaction, and wake workers and relays at its commit.
pub async fn put_back(
    conn: &mut PgConnection,
    action_id: idem_core::ActionId,
    ordering_key: &str,
    payload: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idem.outbox (action_id, ordering_key, payload, headers) \
         VALUES ($1, $2, $3, '{}'::jsonb)",
    )
    .bind(action_id.as_uuid())
    .bind(ordering_key)
    .bind(payload)
    .execute(&mut *conn)
    .await?;
    sqlx::query("SELECT pg_notify('idem_outbox', '')")
        .execute(&mut *conn)
        .await?;
    Ok(())
}
