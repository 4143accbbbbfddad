//! idem's Postgres store. The inbox is the single place that decides whether a partner is
//! called: every state change here is a compare-and-set on the expected state (and attempt
//! number), applied in batches so that claim and settle cost one round trip per batch.
//!
//! **Plans.** The hot batch statements (the claim, the Kafka delivery's lock, the
//! compare-and-set with its attempts and audit) are prepared once per connection:
//! unprepared, sqlx spends a second round trip on each (Parse/Describe, then Bind/Execute)
//! and PostgreSQL re-parses it, which cost 30 % of the Kafka worker's one-at-a-time
//! throughput (`idem-lab bench kafka-worker`, 918–930 against 1,325–1,423 actions/s). A
//! prepared statement's generic plan, made while a table was small, can keep seq-scanning
//! it as it grows (the settle's attempts UPDATE once took 4.6 ms a call at 20,000 rows),
//! so every [`REPREPARE_EVERY`]th connection handed out drops its prepared statements and
//! the next use plans against the table as it is. Colder statements that join an
//! `unnest()` of ids to `actions` or `attempts` stay unprepared (`.persistent(false)`).
//! The worker runs the hot statements inside `SET LOCAL plan_cache_mode =
//! force_generic_plan` (its `GENERIC_PLANS`): left to choose, PostgreSQL re-planned them on
//! every call, since a custom plan for a small batch is always the cheaper guess, and the
//! planning cost more than the execution. So each must have a generic plan that is index
//! lookups whatever `LIMIT $1` or an array's length turns out to be: `= ANY(ARRAY(…))`
//! rather than a join where a generic estimate could pick a hash join over a sequential
//! scan. (A connection-wide `plan_cache_mode` would be simpler, but it is a startup
//! parameter that poolers such as PgBouncer refuse, and a session `SET` would follow the
//! connection to whoever borrows it next.)

pub mod across;
pub mod attempts;
pub mod audit;
pub mod cells;
pub mod decisions;
pub mod enqueue;
pub mod error;
pub mod explore;
pub mod failover;
pub mod inbox;
pub mod outbox;
pub mod policy;
pub mod queue;
pub mod replay;
pub mod retention;
pub mod stats;
pub mod stores;
pub mod tokens;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection as _;

/// One connection handed out in this many drops its prepared statements (see "Plans"):
/// with 16 connections each is re-prepared about every 1,000 uses, a few seconds at load.
pub const REPREPARE_EVERY: u64 = 64;

/// Connections handed out by every pool of this process.
static ACQUIRES: AtomicU64 = AtomicU64::new(0);

use backon::{ExponentialBuilder, Retryable};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

pub use across::{Gathered, Placed};
pub use attempts::{AttemptOutcome, AttemptRow, NewAttempt};
pub use decisions::{DecisionError, Resolution};
pub use enqueue::{enqueue, Enqueued, Intent, NewAction};
pub use error::{EnqueueError, StoreError};
pub use inbox::{await_settled, ActionRow, Change};
pub use queue::{DeadLetter, OutboxMessage, Received};
pub use stores::{StoreSpec, Stores, StoresError};

/// The migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// The default when neither `--database-url` nor `DATABASE_URL` is given: the local server.
pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// A handle on idem's tables.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// With several hosts: the one written to now, and the watcher that follows promotions.
    primary: Option<(failover::Current, Arc<failover::Watch>)>,
}

impl Store {
    /// Connect, retrying briefly so that a database still starting up is not an error, and
    /// giving up within about 5 s. The error says which of "server down", "no such
    /// database" and "bad credentials" it is, naming the server (never the password).
    ///
    /// A URL with several hosts (`postgres://u@a:5432,b:5432/db`) is a primary and its
    /// standbys: idem writes to the one that is not in recovery and follows a promotion
    /// (see [`failover`]).
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let hosts = failover::hosts(url)?;
        let several = hosts.len() > 1;
        let opts = if several {
            let names = hosts.iter().map(|h| h.label.as_str()).collect::<Vec<_>>();
            let find = || failover::find_primary(&hosts);
            let primary = find
                .retry(
                    ExponentialBuilder::default()
                        .with_min_delay(Duration::from_millis(200))
                        .with_max_times(4),
                )
                .await
                .map_err(|why| StoreError::NoPrimary {
                    hosts: names.join(", "),
                    why,
                })?;
            tracing::info!(primary = %primary.label, hosts = %names.join(", "), "PostgreSQL primary found");
            primary.options.clone()
        } else {
            hosts[0].options.clone()
        };
        let server = format!("{}:{}", opts.get_host(), opts.get_port());
        let database = opts.get_database().unwrap_or("postgres").to_owned();
        let connect = || {
            let opts = opts.clone();
            async move {
                PgPoolOptions::new()
                    .max_connections(max_connections)
                    .acquire_timeout(Duration::from_millis(1200))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            // A promoted standby's old primary may come back as a standby (or a
                            // host list may name one first): never write through it.
                            if several && failover::in_recovery(conn).await? {
                                return Err(sqlx::Error::Protocol(
                                    "this PostgreSQL is a standby (in recovery); waiting for \
                                     the primary"
                                        .into(),
                                ));
                            }
                            Ok(())
                        })
                    })
                    .before_acquire(|conn, _| {
                        Box::pin(async move {
                            // See "Plans" above.
                            if ACQUIRES
                                .fetch_add(1, Ordering::Relaxed)
                                .is_multiple_of(REPREPARE_EVERY)
                            {
                                conn.clear_cached_statements().await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(opts)
                    .await
            }
        };
        let pool = connect
            .retry(
                ExponentialBuilder::default()
                    .with_min_delay(Duration::from_millis(200))
                    .with_max_times(2),
            )
            // Only a server that may still be starting is worth waiting for.
            .when(|e| sql_state(e).is_none())
            .await
            .map_err(|e| match sql_state(&e).as_deref() {
                Some("3D000") => StoreError::NoDatabase {
                    server: server.clone(),
                    database,
                },
                Some("28P01") | Some("28000") => StoreError::Auth {
                    server: server.clone(),
                    source: e,
                },
                _ => StoreError::Unreachable {
                    target: format!("{server}/{database}"),
                    source: e,
                },
            })?;
        let primary = several.then(|| {
            let current: failover::Current = Arc::new(Mutex::new(server));
            let watch = failover::watch(pool.clone(), hosts, current.clone());
            (current, Arc::new(watch))
        });
        Ok(Self { pool, primary })
    }

    /// The host written to now (`host:port`), for a store with several hosts.
    pub fn primary(&self) -> Option<String> {
        let (current, _) = self.primary.as_ref()?;
        current.lock().ok().map(|c| c.clone())
    }

    /// Connect and check the schema is this idem's: a database not migrated (or migrated
    /// by an older idem) is an error saying to run `idem migrate`, not a loop of warnings.
    pub async fn connect_migrated(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let store = Self::connect(url, max_connections).await?;
        store.check_migrated().await?;
        Ok(store)
    }

    /// `Err(NotMigrated)` unless every migration this binary carries has been applied.
    pub async fn check_migrated(&self) -> Result<(), StoreError> {
        let want = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
        let table: (Option<String>,) =
            sqlx::query_as("SELECT to_regclass('public._sqlx_migrations')::text")
                .fetch_one(&self.pool)
                .await?;
        let have: i64 = if table.0.is_some() {
            sqlx::query_as::<_, (Option<i64>,)>(
                "SELECT max(version) FROM _sqlx_migrations WHERE success",
            )
            .fetch_one(&self.pool)
            .await?
            .0
            .unwrap_or(0)
        } else {
            0
        };
        if have < want {
            return Err(StoreError::NotMigrated { have, want });
        }
        Ok(())
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Self {
            pool,
            primary: None,
        }
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

/// The SQLSTATE of a database error, if the server answered with one.
fn sql_state(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Database(d) => d.code().map(|c| c.into_owned()),
        _ => None,
    }
}

/// A URL with its password replaced, for logs and `idem config`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let userinfo = &url[s + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:<redacted>{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
