//! idem's Postgres store. The inbox is the single place that decides whether a partner is
//! called: every state change here is a compare-and-set on the expected state (and attempt
//! number), applied in batches so that claim and settle cost one round trip per batch.

pub mod attempts;
pub mod decisions;
pub mod enqueue;
pub mod error;
pub mod inbox;
pub mod policy;
pub mod queue;
pub mod retention;
pub mod stats;
pub mod tokens;

use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use attempts::{AttemptOutcome, AttemptRow, NewAttempt};
pub use decisions::{DecisionError, Resolution};
pub use enqueue::{enqueue, Enqueued, Intent, NewAction};
pub use error::{EnqueueError, StoreError};
pub use inbox::{await_settled, ActionRow, Change};
pub use queue::{DeadLetter, OutboxMessage, Received};

/// The migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The default when neither `--database-url` nor `DATABASE_URL` is given: the local server.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A handle on idem's tables.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connect, retrying briefly so that a database still starting up is not an error.
    /// The error names the server that could not be reached (without its password).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let opts: PgConnectOptions = url
            .parse()
            .map_err(|e: sqlx::Error| StoreError::Config(e.to_string()))?;
        let target = format!(
            "{}:{}/{}",
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("postgres")
        );
        let connect = || {
            let opts = opts.clone();
            async move {
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(opts)
                    .await
            }
        };
        let pool = connect
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(100))
                    .with_max_times(4),
            )
            .await
            .map_err(|e| StoreError::Unreachable { target, source: e })?;
        Ok(Self { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Apply pending migrations (idempotent; serialised by sqlx's advisory lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }
}
