//! The services the lab commands (demo, bench, chaos) run on: what the user gives
//! (`DATABASE_URL`, `KAFKA_BOOTSTRAP`), else a PostgreSQL cluster and Apache Kafka of
//! their own (idem-services), stopped and removed when the command ends.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use idem_services::{KafkaCluster, KafkaOptions, LocalPostgres, PostgresOptions};

/// A directory of a command's own services, removed when dropped.
struct RunDir(PathBuf);

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The PostgreSQL server a lab command creates its database on.
pub(crate) struct Postgres {
    url: String,
    _own: Option<LocalPostgres>,
    _dir: Option<RunDir>,
}

impl Postgres {
    /// `given` (from `--database-url`/`DATABASE_URL`), else a cluster started here.
    pub(crate) async fn given_or_started(given: Option<String>, label: &str) -> Result<Self> {
        if let Some(url) = given.filter(|u| !u.is_empty()) {
            return Ok(Self {
                url,
                _own: None,
                _dir: None,
            });
        }
        let label = label.to_owned();
        tokio::task::spawn_blocking(move || {
            let dir = idem_services::run_dir(&label)?;
            let pg = LocalPostgres::start(&dir.join("pg"), &PostgresOptions::default())?;
            eprintln!(
                "{label}: no DATABASE_URL; started PostgreSQL of its own at {}",
                pg.url()
            );
            Ok::<_, idem_services::ServiceError>(Self {
                url: pg.url(),
                _own: Some(pg),
                _dir: Some(RunDir(dir)),
            })
        })
        .await?
        .context("starting a PostgreSQL of its own (or set DATABASE_URL)")
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }
}

/// The Kafka cluster a lab command publishes to.
pub(crate) struct Kafka {
    bootstrap: String,
    broker: String,
    own: Option<Arc<KafkaCluster>>,
    _dir: Option<RunDir>,
}

impl Kafka {
    /// `given` (from `--bootstrap`/`KAFKA_BOOTSTRAP`), else Apache Kafka with `nodes`
    /// nodes started here in `dir` (a fresh directory when `None`).
    pub(crate) async fn given_or_started(
        given: Option<String>,
        nodes: usize,
        dir: Option<&Path>,
    ) -> Result<Self> {
        if let Some(bootstrap) = given.filter(|b| !b.is_empty()) {
            // The test script says what it started; otherwise all we know is the address.
            let broker = std::env::var("IDEM_KAFKA_BROKER")
                .ok()
                .filter(|b| !b.is_empty())
                .unwrap_or_else(|| format!("given at {bootstrap}"));
            return Ok(Self {
                bootstrap,
                broker,
                own: None,
                _dir: None,
            });
        }
        let dir = dir.map(Path::to_path_buf);
        tokio::task::spawn_blocking(move || {
            let (dir, remove) = match dir {
                Some(d) => (d, None),
                None => {
                    let d = idem_services::run_dir("kafka")?;
                    (d.clone(), Some(RunDir(d)))
                }
            };
            let k = KafkaCluster::start(&dir.join("kafka"), &KafkaOptions::nodes(nodes))?;
            eprintln!(
                "started {} at {} (logs {})",
                k.describe(),
                k.bootstrap(),
                k.dir().display()
            );
            Ok::<_, idem_services::ServiceError>(Self {
                bootstrap: k.bootstrap(),
                broker: k.describe(),
                own: Some(Arc::new(k)),
                _dir: remove,
            })
        })
        .await?
        .context("starting Apache Kafka of its own (or set KAFKA_BOOTSTRAP)")
    }

    pub(crate) fn bootstrap(&self) -> &str {
        &self.bootstrap
    }

    /// What to report: `apache-kafka 4.4.0, 3 nodes`.
    pub(crate) fn broker(&self) -> &str {
        &self.broker
    }

    /// The cluster this command started (and may crash nodes of).
    pub(crate) fn own(&self) -> Option<&Arc<KafkaCluster>> {
        self.own.as_ref()
    }
}
