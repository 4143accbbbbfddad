//! Store errors, split by what the caller can do about them.

use idem_core::ActionId;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot reach PostgreSQL at {target}: {source}. Start it, or set DATABASE_URL to a server that runs")]
    Unreachable { target: String, source: sqlx::Error },
    #[error(
        "no primary among the PostgreSQL hosts {hosts}: {why}. Start one, or promote a standby"
    )]
    NoPrimary { hosts: String, why: String },
    #[error("PostgreSQL at {server} answers, but has no database {database:?}: create it (`createdb {database}`) or fix DATABASE_URL")]
    NoDatabase { server: String, database: String },
    #[error("PostgreSQL at {server} refused the credentials in DATABASE_URL: {source}")]
    Auth { server: String, source: sqlx::Error },
    #[error("the database is not migrated for this idem (schema version {have}, this binary needs {want}): run `idem migrate`")]
    NotMigrated { have: i64, want: i64 },
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("invalid database configuration: {0}")]
    Config(String),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("corrupt row for action {action_id}: {detail}")]
    Corrupt { action_id: ActionId, detail: String },
}

/// Why an enqueue was refused. Nothing was written in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum EnqueueError {
    /// The id (or the named intent it came from) already names an action with other
    /// arguments: `action_id` is that existing action.
    #[error("action {action_id} already exists with other arguments: an action id (and a named intent) names one request forever")]
    Conflict { action_id: ActionId },
    /// Never valid, whatever the retry: `field` is a JSON pointer when one is at fault.
    #[error("invalid action: {message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}
