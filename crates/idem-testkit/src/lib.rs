//! Test kit for idem and for applications that use it: a fresh, migrated PostgreSQL
//! database per test, and the partner simulators on local ports.
//!
//! PostgreSQL comes from `DATABASE_URL` first, then from testcontainers where a Docker
//! engine exists; with neither, [`TestDb::new`] panics with a message that says what to
//! start. Tests never skip silently.

pub mod conformance;
pub mod harness;
pub mod subjects;

use idem_cells::TypedCell as _;
use std::sync::OnceLock;

use idem_sim::{SimServer, StripeSim, StripeSimConfig};
use idem_store::Store;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// A database of its own for one test, dropped when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    pub store: Store,
    name: String,
    admin: PgConnectOptions,
}

const HOW_TO: &str = "idem's tests need PostgreSQL: set DATABASE_URL \
     (e.g. postgres://postgres@127.0.0.1:5432/postgres), let the test kit start one of its own \
     (it needs Debian's postgresql package, or root to install it), or run a Docker engine so \
     testcontainers can start one";

fn docker_available() -> bool {
    std::env::var_os("DOCKER_HOST").is_some()
        || std::path::Path::new("/var/run/docker.sock").exists()
}

/// Services this test process started itself; never dropped (statics are not), stopped by
/// idem-services' watchdog when the process ends.
#[derive(Debug, Default)]
#[allow(dead_code)] // held, never read: holding them is the point
struct Own {
    postgres: Option<idem_services::LocalPostgres>,
    kafka: Option<idem_services::KafkaCluster>,
}

/// The directory this process's own services live in, removed once the process is gone.
fn own_dir() -> Result<std::path::PathBuf, String> {
    static DIR: OnceLock<Result<std::path::PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = idem_services::run_dir("testkit").map_err(|e| e.to_string())?;
        idem_services::remove_when_process_exits(&d);
        Ok(d)
    })
    .clone()
}

/// The server every test database is created on: `DATABASE_URL`, else a PostgreSQL of
/// this process's own, else testcontainers where a Docker engine exists.
fn admin_url() -> String {
    static URL: OnceLock<(String, Own)> = OnceLock::new();
    URL.get_or_init(|| {
        if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty()) {
            return (url, Own::default());
        }
        let opts = idem_services::PostgresOptions {
            fast_unsafe: true,
            ..Default::default()
        };
        let own = own_dir().and_then(|d| {
            idem_services::LocalPostgres::start(&d.join("pg"), &opts).map_err(|e| e.to_string())
        });
        match own {
            Ok(pg) => (
                pg.url(),
                Own {
                    postgres: Some(pg),
                    ..Own::default()
                },
            ),
            Err(e) if docker_available() => {
                eprintln!("idem-testkit: own PostgreSQL failed ({e}); trying testcontainers");
                (start_postgres_container(), Own::default())
            }
            Err(e) => panic!("{HOW_TO} (starting one here failed: {e})"),
        }
    })
    .0
    .clone()
}

/// Start a container once per test binary on a thread of its own, which keeps it (and
/// the runtime that owns it) alive until the process exits; returns what `address` makes
/// of the started container.
fn start_container<I, F, Fut>(image: I, address: F) -> Result<String, String>
where
    I: testcontainers_modules::testcontainers::Image + Send + 'static,
    F: FnOnce(testcontainers_modules::testcontainers::ContainerAsync<I>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (Result<String, String>, Box<dyn std::any::Any + Send>)>,
{
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            match image.start().await {
                Ok(container) => {
                    let (addr, _keep) = address(container).await;
                    let _ = tx.send(addr);
                    // Keep the container alive for the whole test run.
                    std::future::pending::<()>().await;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        });
    });
    rx.recv()
        .unwrap_or_else(|_| Err("testcontainers thread died".into()))
}

/// PostgreSQL in a container.
fn start_postgres_container() -> String {
    use testcontainers_modules::postgres::Postgres;
    let started = start_container(Postgres::default(), |c| async move {
        let port = c.get_host_port_ipv4(5432).await.map_err(|e| e.to_string());
        let url = port.map(|p| format!("postgres://postgres:postgres@127.0.0.1:{p}/postgres"));
        (url, Box::new(c) as Box<dyn std::any::Any + Send>)
    });
    started.unwrap_or_else(|e| panic!("testcontainers could not start PostgreSQL ({e}). {HOW_TO}"))
}

/// Apache Kafka (KRaft, native image) in a container.
fn start_kafka_container() -> Result<String, String> {
    use testcontainers_modules::kafka::apache::{Kafka, KAFKA_PORT};
    start_container(Kafka::default(), |c| async move {
        let port = c
            .get_host_port_ipv4(KAFKA_PORT)
            .await
            .map_err(|e| e.to_string());
        (
            port.map(|p| format!("127.0.0.1:{p}")),
            Box::new(c) as Box<dyn std::any::Any + Send>,
        )
    })
}

impl TestDb {
    /// Create and migrate a fresh database.
    pub async fn new() -> Self {
        let url = admin_url();
        let admin: PgConnectOptions = url
            .parse()
            .unwrap_or_else(|e| panic!("DATABASE_URL {url:?} is not a PostgreSQL URL: {e}"));
        let name = format!("idem_t_{}", uuid::Uuid::new_v4().simple());
        let mut conn = admin.connect().await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to {}:{} ({e}). {HOW_TO}",
                admin.get_host(),
                admin.get_port()
            )
        });
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&mut conn)
            .await
            .expect("CREATE DATABASE");
        let _ = conn.close().await;
        let opts = admin.clone().database(&name);
        let test_url = opts.to_url_lossy().to_string();
        let store = Store::connect(&test_url, 16)
            .await
            .expect("connect to the test database");
        store.migrate().await.expect("migrate the test database");
        Self {
            url: test_url,
            store,
            name,
            admin,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop the database from a thread of its own: Drop cannot await, and the test's own
        // runtime is blocked here. WITH (FORCE) ends the pool's connections.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) = admin.connect().await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&mut c)
                            .await;
                }
            });
        })
        .join();
    }
}

/// A Stripe simulator serving on a free local port.
#[derive(Debug)]
pub struct StripeFixture {
    pub sim: StripeSim,
    pub server: SimServer,
}

impl StripeFixture {
    pub async fn start(config: StripeSimConfig) -> Self {
        let sim = StripeSim::new(config);
        let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
            .await
            .expect("bind a local port for the simulator");
        Self { sim, server }
    }

    pub fn base_url(&self) -> String {
        self.server.base_url()
    }
}

/// The test secret the simulator accepts.
pub const TEST_SECRET: &str = "sk_test_idem_testkit";

/// `stripe.charge` against `stripe` with short test timings; with `approve_from`, charges
/// of that amount and more wait for a person.
pub fn stripe_cells(stripe: &StripeFixture, approve_from: Option<i64>) -> idem_cells::Registry {
    idem_cells::Registry::new().with(
        idem_cells::StripeCharge::new(stripe.base_url(), TEST_SECRET).with_profile(|p| {
            p.call_timeout = std::time::Duration::from_millis(1000);
            p.settle_time = std::time::Duration::from_millis(200);
            if let Some(threshold) = approve_from {
                p.approval = idem_core::profile::ApprovalPolicy::Above {
                    argument: "amount".into(),
                    threshold,
                };
            }
        }),
    )
}

/// A worker polling every 50 ms in the background until [`RunningWorker::stop`].
#[derive(Debug)]
pub struct RunningWorker {
    stop: tokio::sync::watch::Sender<bool>,
    handle: tokio::task::JoinHandle<()>,
}

impl RunningWorker {
    pub fn start(store: &Store, cells: idem_cells::Registry) -> Self {
        let w = harness::worker(store, cells, "testkit-worker");
        let (stop, rx) = tokio::sync::watch::channel(false);
        let handle = tokio::spawn(async move { w.run(rx).await.expect("worker runs") });
        Self { stop, handle }
    }

    /// Stop and wait for the worker to finish what it holds.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        self.handle.await.expect("worker task");
    }
}

/// The broker for tests: `KAFKA_BOOTSTRAP` first; else Apache Kafka (one node, from Maven
/// Central through idem-services) started once per test process; else Apache Kafka from
/// testcontainers where a Docker engine exists; else a panic that says what to start.
pub fn kafka_bootstrap() -> String {
    static BOOTSTRAP: OnceLock<(String, Own)> = OnceLock::new();
    BOOTSTRAP
        .get_or_init(|| {
            if let Some(b) = std::env::var("KAFKA_BOOTSTRAP")
                .ok()
                .filter(|b| !b.is_empty())
            {
                return (b, Own::default());
            }
            let own = own_dir().and_then(|d| {
                idem_services::KafkaCluster::start(
                    &d.join("kafka"),
                    &idem_services::KafkaOptions::nodes(1),
                )
                .map_err(|e| e.to_string())
            });
            let why = match own {
                Ok(k) => {
                    return (
                        k.bootstrap(),
                        Own {
                            kafka: Some(k),
                            ..Own::default()
                        },
                    )
                }
                Err(e) => e,
            };
            if docker_available() {
                match start_kafka_container() {
                    Ok(b) => return (b, Own::default()),
                    Err(e) => panic!("{KAFKA_HOW_TO} (own broker: {why}; testcontainers: {e})"),
                }
            }
            panic!("{KAFKA_HOW_TO} (starting one here failed: {why})")
        })
        .0
        .clone()
}

const KAFKA_HOW_TO: &str = "idem's Kafka tests need Apache Kafka: set KAFKA_BOOTSTRAP=host:port, \
     let the test kit start one (it needs Java 17+ and Maven to fetch Kafka from Maven \
     Central: scripts/kafka-classpath.sh), or run a Docker engine so testcontainers can start one";
