//! The cells the fleet runs (`idem.cells`): enqueue refuses any other (SQLSTATE IDM03) on
//! every surface. Migrations register the built-in cells; each worker registers its own
//! when it starts, so a declarative cell is accepted once a worker that runs it is up.

use sqlx::PgPool;

/// Register `names` (idempotent; refreshes `last_seen`).
pub async fn register(pool: &PgPool, names: &[String], by: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO idem.cells (name, registered_by) SELECT unnest($1::text[]), $2 \
         ON CONFLICT (name) DO UPDATE SET last_seen = now()",
    )
    .bind(names)
    .bind(by)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every registered cell name, sorted.
pub async fn names(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT name FROM idem.cells ORDER BY name")
        .fetch_all(pool)
        .await
}
