//! The services idem's own tests, demo, benchmarks and fault campaign need, started by the
//! project itself on a machine where nothing runs: a PostgreSQL cluster of their own
//! (initdb, trust auth on 127.0.0.1, a free port) and Apache Kafka from Maven Central (one
//! combined broker+controller, or a three-node KRaft cluster).
//!
//! Everything a value starts is stopped when the value is dropped, and a watchdog stops it
//! when the process that started it dies without dropping it (a SIGKILLed test binary).
//! `DATABASE_URL` and `KAFKA_BOOTSTRAP` always win: [`postgres_or_start`] and
//! [`kafka_or_start`] start nothing when they are set.

pub mod kafka;
pub mod postgres;
mod process;

use std::path::{Path, PathBuf};

pub use kafka::{KafkaCluster, KafkaOptions};
pub use postgres::{LocalPostgres, PostgresOptions};

/// Why a service could not be started; each says what to install or set instead.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{tool} failed ({status}): {output}")]
    Tool {
        tool: String,
        status: String,
        output: String,
    },
    #[error("{0}")]
    Missing(String),
    #[error("{what} did not come up within {secs} s; its log: {log}")]
    Timeout {
        what: String,
        secs: u64,
        log: PathBuf,
    },
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServiceError {
    let what = what.into();
    move |source| ServiceError::Io { what, source }
}

/// A free TCP port on 127.0.0.1 (free when asked; the service binds it right after).
pub fn free_port() -> Result<u16> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(io("find a free port on 127.0.0.1"))
}

/// A fresh directory for one run's services under the system temporary directory,
/// readable by others (PostgreSQL runs as `postgres` when we are root).
pub fn run_dir(label: &str) -> Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    // Paths go into PostgreSQL's option string unquoted: letters, digits and '-' only.
    let label: String = label
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let dir = std::env::temp_dir().join(format!("idem-{label}-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))
        .map_err(io(format!("chmod {}", dir.display())))?;
    Ok(dir)
}

/// `DATABASE_URL` if set, else a PostgreSQL cluster started here in `dir` (kept alive by
/// the returned handle).
pub fn postgres_or_start(dir: &Path) -> Result<(String, Option<LocalPostgres>)> {
    if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
        return Ok((url, None));
    }
    let pg = LocalPostgres::start(&dir.join("pg"), &PostgresOptions::default())?;
    Ok((pg.url(), Some(pg)))
}

/// `given` (or `KAFKA_BOOTSTRAP`) if set, else Apache Kafka started here in `dir` with
/// `nodes` nodes (kept alive by the returned handle).
pub fn kafka_or_start(
    given: Option<String>,
    dir: &Path,
    nodes: usize,
) -> Result<(String, Option<KafkaCluster>)> {
    let given = given.or_else(|| std::env::var("KAFKA_BOOTSTRAP").ok());
    if let Some(b) = given.filter(|b| !b.is_empty()) {
        return Ok((b, None));
    }
    let k = KafkaCluster::start(&dir.join("kafka"), &KafkaOptions::nodes(nodes))?;
    Ok((k.bootstrap(), Some(k)))
}

/// Remove `dir` once this process is gone (after its services' watchdogs stopped them).
pub fn remove_when_process_exits(dir: &Path) {
    process::watchdog(&format!("sleep 3; rm -rf '{}'", dir.display()));
}
