//! `idem-lab`: the lab beside the product. The partner simulators (`sim`), the demo, the
//! fault campaign (`chaos`) and the benchmarks (`bench`) link idem's simulators; the
//! operator binary `idem` does not. The lab starts `idem` processes (workers, relays) from
//! the binary next to this one.

mod bench;
mod chaos;
mod checker;
mod demo;
mod partners;
mod services;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "idem-lab",
    version,
    about = "idem's lab: partner simulators, the demo, the fault campaign, the benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a partner simulator.
    Sim {
        #[command(subcommand)]
        partner: SimCommand,
    },
    /// The main job: run N actions through faulty partners and count effects.
    Demo(demo::DemoArgs),
    /// The fault campaign: relay and worker processes killed at random, PostgreSQL and the
    /// broker restarted, deliveries duplicated, partners faulty; then the ledgers are checked.
    Chaos(chaos::ChaosArgs),
    /// Benchmarks with baselines measured in the same run; prints JSON. Without a
    /// subcommand: every benchmark, one JSON array (`idem-lab bench --json --markdown FILE`).
    Bench {
        #[command(subcommand)]
        what: Option<BenchCommand>,
        #[command(flatten)]
        suite: bench::SuiteArgs,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Relay drain rate vs raw Postgres drain and raw rdkafka produce.
    Relay(bench::BenchArgs),
    /// Kafka worker throughput (no-op cell) vs a naive at-least-once consumer.
    KafkaWorker(bench::WorkerBenchArgs),
    /// The whole Kafka path at once (relay + broker + consumer-group worker) vs the worker
    /// alone on an already-published topic.
    KafkaPath(bench::KafkaPathArgs),
    /// End-to-end latency p50/p99, enqueue → partner call, at fixed offered loads.
    Latency(bench::LatencyArgs),
    /// Enqueue inside an application transaction vs a plain INSERT of the same row.
    Enqueue(bench::EnqueueBenchArgs),
    /// Direct-Postgres worker throughput (no-op cell) vs a plain SKIP LOCKED job queue.
    PgWorker(bench::PgWorkerBenchArgs),
    /// Enqueue over 1, 2 and 3 stores, and routed vs straight to the home store.
    Stores(bench::StoresBenchArgs),
    /// The same no-op workload through idem and through peer job queues (River), on the
    /// same server, interleaved rounds; idem's ratio to each.
    Peers(bench::PeersArgs),
    /// Throughput vs number of worker processes with a slow (20 ms) partner, vs linear.
    Scaling(bench::ScalingArgs),
    /// Seconds from a kill -9 of every worker to the last in-flight action settled, with
    /// heartbeat leases vs the lease before them; the ledger must show one charge each.
    Recovery(bench::RecoveryArgs),
    /// The inbox with millions of settled actions: worker, status and sweep latencies
    /// before and after, and beside a retention purge.
    InboxScale(bench::InboxScaleArgs),
}

#[derive(Subcommand, Debug)]
enum SimCommand {
    /// The Stripe simulator (PaymentIntents, Idempotency-Key store, ledger at /_sim/ledger).
    Stripe {
        #[arg(long, default_value = "127.0.0.1:12111")]
        listen: SocketAddr,
        #[command(flatten)]
        faults: FaultArgs,
        /// Key retention in seconds (Stripe: 24 h).
        #[arg(long, default_value_t = 86_400.0)]
        key_retention_secs: f64,
        /// Search indexing lag in seconds.
        #[arg(long, default_value_t = 0.0)]
        search_lag_secs: f64,
    },
    /// A generic partner following the IETF Idempotency-Key draft (`POST /v1/{resource}`,
    /// lookup `GET /v1/{resource}?idempotency_key=`), for declarative cells.
    Ietf {
        #[arg(long, default_value = "127.0.0.1:12113")]
        listen: SocketAddr,
        #[command(flatten)]
        faults: FaultArgs,
        /// Key retention in seconds.
        #[arg(long, default_value_t = 86_400.0)]
        key_retention_secs: f64,
        /// Lookup lag in seconds.
        #[arg(long, default_value_t = 0.0)]
        lookup_lag_secs: f64,
    },
    /// The Amadeus Self-Service simulator (pricing, flight orders create/get/delete).
    Amadeus {
        #[arg(long, default_value = "127.0.0.1:12117")]
        listen: SocketAddr,
        #[command(flatten)]
        faults: FaultArgs,
    },
    /// The Gmail API simulator (messages.send, profile, history, messages.get/list).
    Gmail {
        #[arg(long, default_value = "127.0.0.1:12116")]
        listen: SocketAddr,
        #[command(flatten)]
        faults: FaultArgs,
        /// Keep client-set Message-IDs (undocumented; the worse case replaces them).
        #[arg(long)]
        keep_message_id: bool,
        /// Seconds before a sent message is found by rfc822msgid search.
        #[arg(long, default_value_t = 0.0)]
        search_lag_secs: f64,
        /// Seconds a historyId stays valid for history.list.
        #[arg(long, default_value_t = 3600.0)]
        history_retention_secs: f64,
    },
    /// The Twilio Messaging simulator (Messages create and list; no REST key).
    Twilio {
        #[arg(long, default_value = "127.0.0.1:12115")]
        listen: SocketAddr,
        #[command(flatten)]
        faults: FaultArgs,
        /// Seconds before a message shows in the Messages list.
        #[arg(long, default_value_t = 0.0)]
        list_lag_secs: f64,
    },
    /// The Slack Web API simulator (chat.postMessage with metadata, conversations.history).
    Slack {
        #[arg(long, default_value = "127.0.0.1:12114")]
        listen: SocketAddr,
        #[command(flatten)]
        faults: FaultArgs,
        /// Seconds before a post shows in conversations.history.
        #[arg(long, default_value_t = 0.0)]
        history_lag_secs: f64,
        /// One conversations.history request per this many seconds (Slack, for an app
        /// outside the Marketplace: 60); the next inside it is a 429.
        #[arg(long, default_value_t = 60.0)]
        history_every_secs: f64,
    },
    /// The HubSpot CRM simulator (batch upsert by unique property, read; ledger at
    /// /_sim/ledger).
    Hubspot {
        #[arg(long, default_value = "127.0.0.1:12112")]
        listen: SocketAddr,
        #[command(flatten)]
        faults: FaultArgs,
    },
}

/// Seed and fault rates of a simulator.
#[derive(Args, Debug, Clone)]
struct FaultArgs {
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Probability of a lost response after the effect.
    #[arg(long, default_value_t = 0.0)]
    drop_after_effect: f64,
    /// Probability of a 500 before the effect.
    #[arg(long, default_value_t = 0.0)]
    fail_before: f64,
    /// Probability of a 500 after the effect.
    #[arg(long, default_value_t = 0.0)]
    fail_after: f64,
    /// Probability of a 429.
    #[arg(long, default_value_t = 0.0)]
    rate_limit: f64,
    /// Probability of a 409 (key or object busy).
    #[arg(long, default_value_t = 0.0)]
    conflict_409: f64,
}

impl FaultArgs {
    fn rates(&self) -> idem_sim::FaultRates {
        idem_sim::FaultRates {
            drop_after_effect: self.drop_after_effect,
            fail_before: self.fail_before,
            fail_after: self.fail_after,
            rate_limit: self.rate_limit,
            conflict_409: self.conflict_409,
            ..Default::default()
        }
    }
}

/// mimalloc instead of glibc's malloc: allocation and free were about a quarter of the
/// worker process's CPU under load (`perf record` on `idem-lab bench pg-worker`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    let (name, filter) = match cli.command {
        Command::Sim { .. } => ("sim", "warn,idem=info"),
        // The demo prints a table; its workers' info lines would drown it.
        Command::Demo(_) => ("demo", "warn,sqlx::postgres::notice=error"),
        // The harness's own Kafka clients see the broker restart it causes: expected.
        Command::Chaos(_) => (
            "chaos",
            "warn,sqlx::postgres::notice=error,sqlx::pool=error,librdkafka=off,rdkafka=off",
        ),
        Command::Bench { .. } => ("bench", "warn,idem=info"),
    };
    idem_telemetry::process::run(&format!("idem-{name}"), filter, |metrics| run(cli, metrics))
}

/// The operator binary the lab starts workers and relays from: `idem` beside this one.
pub(crate) fn idem_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("where is the idem-lab binary")?;
    let idem = exe.with_file_name(format!("idem{}", std::env::consts::EXE_SUFFIX));
    anyhow::ensure!(
        idem.is_file(),
        "{} is not there: build the operator binary too (cargo build --bin idem)",
        idem.display()
    );
    Ok(idem)
}

async fn run(cli: Cli, metrics: std::sync::Arc<idem_telemetry::metrics::Metrics>) -> Result<()> {
    match cli.command {
        Command::Sim { partner } => {
            let (name, listen, router) = match partner {
                SimCommand::Stripe {
                    listen,
                    faults,
                    key_retention_secs,
                    search_lag_secs,
                } => {
                    let sim = idem_sim::StripeSim::new(idem_sim::StripeSimConfig {
                        seed: faults.seed,
                        key_retention: Duration::from_secs_f64(key_retention_secs),
                        search_lag: Duration::from_secs_f64(search_lag_secs),
                        faults: faults.rates(),
                        ..Default::default()
                    });
                    ("stripe", listen, sim.router())
                }
                SimCommand::Ietf {
                    listen,
                    faults,
                    key_retention_secs,
                    lookup_lag_secs,
                } => {
                    let sim = idem_sim::IetfSim::new(
                        faults.seed,
                        faults.rates(),
                        idem_sim::IetfConfig {
                            key_retention: Duration::from_secs_f64(key_retention_secs),
                            lookup_lag: Duration::from_secs_f64(lookup_lag_secs),
                        },
                    );
                    ("IETF Idempotency-Key", listen, sim.router())
                }
                SimCommand::Amadeus { listen, faults } => {
                    let sim = idem_sim::AmadeusSim::new(faults.seed, faults.rates());
                    ("amadeus", listen, sim.router())
                }
                SimCommand::Gmail {
                    listen,
                    faults,
                    keep_message_id,
                    search_lag_secs,
                    history_retention_secs,
                } => {
                    let sim = idem_sim::GmailSim::new(
                        faults.seed,
                        faults.rates(),
                        idem_sim::GmailConfig {
                            keep_message_id,
                            search_lag: Duration::from_secs_f64(search_lag_secs),
                            history_retention: Duration::from_secs_f64(history_retention_secs),
                        },
                    );
                    ("gmail", listen, sim.router())
                }
                SimCommand::Twilio {
                    listen,
                    faults,
                    list_lag_secs,
                } => {
                    let sim = idem_sim::TwilioSim::new(
                        faults.seed,
                        faults.rates(),
                        Duration::from_secs_f64(list_lag_secs),
                    );
                    ("twilio", listen, sim.router())
                }
                SimCommand::Slack {
                    listen,
                    faults,
                    history_lag_secs,
                    history_every_secs,
                } => {
                    let sim = idem_sim::SlackSim::new(
                        faults.seed,
                        faults.rates(),
                        Duration::from_secs_f64(history_lag_secs),
                    )
                    .with_history_rate(Duration::from_secs_f64(history_every_secs.max(0.0)));
                    ("slack", listen, sim.router())
                }
                SimCommand::Hubspot { listen, faults } => {
                    let sim = idem_sim::HubSpotSim::new(faults.seed, faults.rates());
                    sim.add_unique_property(
                        "companies",
                        idem_cells::hubspot::COMPANY_UNIQUE_PROPERTY,
                    );
                    ("hubspot", listen, sim.router())
                }
            };
            let server = idem_sim::SimServer::start(router, listen).await?;
            eprintln!(
                "{name} simulator on {} (ledger: /_sim/ledger)",
                server.base_url()
            );
            tokio::signal::ctrl_c().await?;
        }
        Command::Bench {
            what: Some(what), ..
        } => {
            let figures = match what {
                BenchCommand::Relay(a) => bench::relay(a).await?,
                BenchCommand::KafkaWorker(a) => bench::kafka_worker(a).await?,
                BenchCommand::KafkaPath(a) => bench::kafka_path(a).await?,
                BenchCommand::PgWorker(a) => bench::pg_worker(a).await?,
                BenchCommand::Peers(a) => bench::peers(a).await?,
                BenchCommand::Enqueue(a) => bench::enqueue_bench(a).await?,
                BenchCommand::Stores(a) => bench::stores_bench(a).await?,
                BenchCommand::Latency(a) => bench::latency(a).await?,
                BenchCommand::Scaling(a) => bench::scaling(a).await?,
                BenchCommand::Recovery(a) => bench::recovery(a).await?,
                BenchCommand::InboxScale(a) => bench::inbox_scale(a).await?,
            };
            println!("{}", serde_json::to_string_pretty(&figures)?);
        }
        Command::Bench { what: None, suite } => {
            let figures = bench::suite(suite).await?;
            println!("{}", serde_json::to_string_pretty(&figures)?);
        }
        Command::Demo(args) => {
            let ok = demo::run(args, &metrics).await?;
            if !ok {
                std::process::exit(1);
            }
        }
        Command::Chaos(args) => {
            if !chaos::run(args).await? {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
