//! The `idem` command.

mod bench;
mod cells;
mod chaos;
mod checker;
mod decide;
mod demo;
mod partners;
mod policy;
mod services;
mod workload;

/// Exit codes a script can branch on (`idem enqueue`, `idem status --wait`).
mod exit {
    use idem_core::State;

    /// `status --wait`: the action did not settle in time (still open).
    pub const UNSETTLED: i32 = 2;
    /// `enqueue`: the id or named intent already names an action with other arguments.
    pub const CONFLICT: i32 = 3;
    /// `enqueue`: never valid (a field PostgreSQL cannot store, a bad intent).
    pub const INVALID: i32 = 4;
    /// `status --wait`: settled without the effect (failed, rejected, dead).
    pub const FAILED: i32 = 5;
    /// `status --wait`: settled in needs_human, a person must decide.
    pub const NEEDS_HUMAN: i32 = 6;
    /// `status`: no such action.
    pub const NOT_FOUND: i32 = 7;

    pub fn for_state(s: State) -> i32 {
        match s {
            State::Succeeded => 0,
            State::Failed | State::Rejected | State::Dead => FAILED,
            State::NeedsHuman => NEEDS_HUMAN,
            _ => UNSETTLED,
        }
    }
}

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use idem_core::{ActionId, CellName};
use idem_store::{enqueue, NewAction, Store, DEFAULT_DATABASE_URL};
use idem_worker::{Worker, WorkerConfig};

#[derive(Parser, Debug)]
#[command(
    name = "idem",
    version,
    about = "The exactly-once layer under AI agents"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct Db {
    /// PostgreSQL URL (defaults to the local server).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    database_url: String,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Apply idem's migrations (schema `idem`).
    Migrate(Db),
    /// Run a worker on the direct Postgres transport (claims from the outbox, sweeps).
    Worker(WorkerArgs),
    /// Publish committed outbox rows to Kafka (one leader among all relays).
    Relay(RelayArgs),
    /// Run one sweep pass: expire leases, start due retries, reconcile doubts.
    Sweep(WorkerArgs),
    /// Retention: delete settled actions older than --older-than-hours, in small batches
    /// that never block workers. Refuses a retention shorter than a cell's key window.
    Purge(PurgeArgs),
    /// Enqueue one action (in its own transaction).
    Enqueue(EnqueueArgs),
    /// Show an action, its receipt and its attempts as JSON.
    Status {
        #[command(flatten)]
        db: Db,
        action_id: ActionId,
        /// Wait up to this many seconds for the action to settle first. With a wait the
        /// exit code says how it ended: 0 succeeded, 2 not settled in time (or waiting for
        /// approval), 5 failed, rejected or dead, 6 needs_human; 7 no such action.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
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
    /// Actions awaiting approval: list, approve, reject (each decision audited).
    Approvals {
        #[command(subcommand)]
        what: decide::ApprovalsCommand,
    },
    /// The fleet's approval policy in PostgreSQL: list, set (audited), history.
    Policy {
        #[command(subcommand)]
        what: policy::PolicyCommand,
    },
    /// Actions idem could not settle alone (`needs_human`), oldest first.
    NeedsHuman {
        #[command(flatten)]
        db: decide::Db,
        #[arg(long)]
        json: bool,
    },
    /// The HTTP API: submit actions, read receipts (bearer tokens with scopes).
    Serve {
        #[command(flatten)]
        db: Db,
        #[command(flatten)]
        cells: cells::CellArgs,
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Requests per second each token may make (429 with Retry-After beyond it).
        #[arg(long, default_value_t = idem_api::RateLimit::default().per_second)]
        rate_limit: std::num::NonZeroU32,
        /// Requests a token may make at once before the per-second rate applies.
        #[arg(long, default_value_t = idem_api::RateLimit::default().burst)]
        rate_burst: std::num::NonZeroU32,
        /// A Host name (or host:port) /mcp accepts besides loopback; repeat for several.
        #[arg(long = "public-host")]
        public_hosts: Vec<String>,
    },
    /// MCP server: each cell is a tool. Over stdin/stdout by default (one session per
    /// process; --session pins it); with --listen, streamable HTTP at /mcp behind bearer
    /// tokens (submit scope), as `serve` also offers.
    Mcp {
        #[command(flatten)]
        db: Db,
        #[command(flatten)]
        cells: cells::CellArgs,
        /// The session intents are scoped to (e.g. the agent's conversation id); a new
        /// random one per process if not given.
        #[arg(long)]
        session: Option<String>,
        /// Seconds a tool call waits for its action to settle before answering "in progress".
        #[arg(long, default_value_t = 20)]
        wait_secs: u64,
        /// Serve streamable HTTP on this address instead of stdio.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Print the HTTP API's OpenAPI document (the same JSON `serve` gives at /openapi.json).
    Openapi,
    /// API tokens for the HTTP surface: create (secret shown once), list, revoke.
    Tokens {
        #[command(subcommand)]
        what: decide::TokensCommand,
    },
    /// Resolve a `needs_human` case: --recheck (ask the partner again), --happened REF,
    /// --not-happened or --retry, with --reason.
    Resolve(decide::ResolveArgs),
    /// Send a `failed` action again (it had no effect): a fresh partner key, a fresh outage
    /// budget, the same action id; audited with --as and --reason.
    Resend(decide::ResendArgs),
    /// List every cell this binary runs: the three questions (key? lookup? human?), the
    /// strategy and where its card is.
    Cells {
        /// Print JSON (name, card, full profile) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        cells: cells::CellArgs,
    },
    /// Benchmarks with baselines measured in the same run; prints JSON. Without a
    /// subcommand: every benchmark, one JSON array (`idem bench --json --markdown FILE`).
    Bench {
        #[command(subcommand)]
        what: Option<BenchCommand>,
        #[command(flatten)]
        suite: bench::SuiteArgs,
    },
}

#[derive(Args, Debug, Clone)]
struct WorkerArgs {
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    cells: cells::CellArgs,
    /// Partner calls in flight at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Actions claimed or settled per transaction.
    #[arg(long, default_value_t = 64)]
    batch: u32,
    #[arg(long, default_value_t = 500)]
    poll_interval_ms: u64,
    #[arg(long, default_value_t = 1000)]
    sweep_interval_ms: u64,
    /// Worker name in leases and audit rows.
    #[arg(long)]
    id: Option<String>,
    /// Serve this worker's counters and the fleet gauges at http://ADDR/metrics (needs a
    /// token with the read scope). OTLP export needs only OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Where actions come from: the outbox directly, or a Kafka consumer group.
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "kafka"])]
    transport: String,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Consumer group (Kafka transport).
    #[arg(long, default_value = "idem-workers")]
    group: String,
    /// Consumer group protocol: `consumer` (KIP-848, Kafka 4: the broker assigns, members
    /// come and go without stopping the others) or `classic` (cooperative-sticky; older
    /// brokers and librdkafka's mock cluster).
    #[arg(long, default_value = "consumer")]
    group_protocol: idem_kafka::GroupProtocol,
    /// Static group membership for the classic protocol (`group.instance.id`): a worker
    /// restarted under the same id gets its partitions back without a rebalance. Unique
    /// per live worker (a supervisor slot, a pod name).
    #[arg(long)]
    instance_id: Option<String>,
    /// How long settled actions are kept in the inbox, if a retention job deletes them
    /// (hours). The worker refuses to start if this is shorter than a cell's key window.
    #[arg(long)]
    inbox_retention_hours: Option<u64>,
    /// Seconds an action may wait for approval before it is rejected as expired.
    #[arg(long, default_value_t = 86_400)]
    approval_ttl_secs: u64,
    /// An action still `received` this long after enqueue (ms) is started by the sweeper
    /// from its inbox row: its delivery was lost (e.g. a Kafka message dropped by retention
    /// before any worker read it). Such starts give up per-key order, so keep this well
    /// above the normal delivery lag. 0: never.
    #[arg(long, default_value_t = 600_000)]
    stranded_after_ms: u64,
}

/// Where Kafka is and which topics idem uses.
#[derive(Args, Debug, Clone)]
struct KafkaArgs {
    /// Kafka bootstrap servers.
    #[arg(
        long = "bootstrap",
        env = "KAFKA_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    /// Topic routing: one topic for every action, or `per-cell` / `per-integration` with
    /// --topic as the prefix.
    #[arg(long, default_value = "single", value_parser = ["single", "per-cell", "per-integration"])]
    routing: String,
    /// The topic (single) or topic prefix.
    #[arg(long, default_value = "idem.actions")]
    topic: String,
    /// Partitions of topics idem creates.
    #[arg(long, default_value_t = 6)]
    partitions: i32,
}

impl KafkaArgs {
    fn config(&self) -> idem_kafka::KafkaConfig {
        let mut c = idem_kafka::KafkaConfig::new(&self.bootstrap);
        c.routing = match self.routing.as_str() {
            "per-cell" => idem_kafka::TopicRouting::PerCell(self.topic.clone()),
            "per-integration" => idem_kafka::TopicRouting::PerIntegration(self.topic.clone()),
            _ => idem_kafka::TopicRouting::Single(self.topic.clone()),
        };
        c.partitions = self.partitions;
        c
    }

    /// Topics a worker subscribes to for the cells it runs.
    fn topics(&self, cells: &idem_cells::Registry) -> Vec<String> {
        let c = self.config();
        let mut t: Vec<String> = cells
            .iter()
            .map(|cell| c.routing.topic_for(cell.name().as_str()))
            .collect();
        t.sort();
        t.dedup();
        t
    }
}

#[derive(Args, Debug)]
struct PurgeArgs {
    #[command(flatten)]
    db: Db,
    /// The cells whose key windows and doubt horizons the retention must cover.
    #[command(flatten)]
    cells: cells::CellArgs,
    /// Keep settled actions this long (hours).
    #[arg(long)]
    older_than_hours: u64,
    /// Actions per transaction.
    #[arg(long, default_value_t = 1000)]
    batch: i64,
    /// Stop after this many batches (run again later to go on).
    #[arg(long)]
    max_batches: Option<u64>,
    /// Pause between batches (ms), so the purge leaves the workers the machine.
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

#[derive(Args, Debug)]
struct RelayArgs {
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Rows per batch.
    #[arg(long, default_value_t = 500)]
    batch: i64,
    /// Producer linger (ms).
    #[arg(long, default_value_t = idem_relay::RelayConfig::default().linger.as_millis() as u64)]
    linger_ms: u64,
    #[arg(long, default_value_t = 500)]
    poll_interval_ms: u64,
}

#[derive(Args, Debug)]
struct EnqueueArgs {
    #[command(flatten)]
    db: Db,
    /// Cell, e.g. stripe.charge.
    #[arg(long)]
    cell: CellName,
    /// Arguments as a JSON object.
    #[arg(long)]
    args: String,
    /// Action id (reuse it on retry). Without it, the id comes from --intent-scope and
    /// --intent.
    #[arg(long, conflicts_with = "intent_scope")]
    id: Option<ActionId>,
    /// The scope a named intent lives in (a session, a conversation, a tenant).
    #[arg(long, requires = "intent_or_arguments")]
    intent_scope: Option<String>,
    /// The effect this action means ("invoice-42-payment"): the same scope and intent is
    /// the same action, and with other arguments a conflict (exit code 3).
    #[arg(long, group = "intent_or_arguments")]
    intent: Option<String>,
    /// Derive the id from (scope, cell, arguments) instead of a named intent. Risk: a
    /// re-planned call with other arguments gets a second action.
    #[arg(long, group = "intent_or_arguments", requires = "intent_scope")]
    id_from_arguments: bool,
    #[arg(long)]
    ordering_key: Option<String>,
    /// Declarative cell definitions to validate against (as given to the workers).
    #[arg(long = "cell-config")]
    cell_configs: Vec<std::path::PathBuf>,
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// Relay drain rate vs raw Postgres drain and raw rdkafka produce.
    Relay(bench::BenchArgs),
    /// Kafka worker throughput (no-op cell) vs a naive at-least-once consumer.
    KafkaWorker(bench::WorkerBenchArgs),
    /// End-to-end latency p50/p99, enqueue → partner call, at fixed offered loads.
    Latency(bench::LatencyArgs),
    /// Enqueue inside an application transaction vs a plain INSERT of the same row.
    Enqueue(bench::EnqueueBenchArgs),
    /// Direct-Postgres worker throughput (no-op cell) vs a plain SKIP LOCKED job queue.
    PgWorker(bench::PgWorkerBenchArgs),
    /// Throughput vs number of worker processes with a slow (20 ms) partner, vs linear.
    Scaling(bench::ScalingArgs),
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

fn main() -> Result<()> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let cli = Cli::parse();
    // The demo prints a table; its workers' info lines would drown it.
    let default_filter = match cli.command {
        Command::Demo(_) => "warn,sqlx::postgres::notice=error",
        // The harness's own Kafka clients see the broker restart it causes: expected.
        Command::Chaos(_) => {
            "warn,sqlx::postgres::notice=error,sqlx::pool=error,librdkafka=off,rdkafka=off"
        }
        _ => "warn,idem=info",
    };
    // OTLP exporters (when OTEL_EXPORTER_OTLP_ENDPOINT is set) use a blocking HTTP client:
    // built here, before the async runtime, and shut down after it.
    let service = format!("idem-{}", cli.command.name());
    let tracer = idem_telemetry::metrics::otlp_tracer(&service)?;
    let metrics = std::sync::Arc::new(idem_telemetry::metrics::Metrics::install(&service)?);
    use tracing_subscriber::Layer as _;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    // Logs follow RUST_LOG; exported spans are idem's info-level spans whatever the log level.
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let otel = tracer.as_ref().map(|provider| {
        idem_telemetry::layer(provider).with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(cli, metrics.clone()));
    if let Some(provider) = tracer {
        if let Err(e) = provider.shutdown() {
            eprintln!("trace export shutdown: {e}");
        }
    }
    if let Ok(m) = std::sync::Arc::try_unwrap(metrics) {
        m.shutdown();
    }
    result
}

impl Command {
    /// The service name exported telemetry carries (`idem-worker`, `idem-serve`, …).
    fn name(&self) -> &'static str {
        match self {
            Command::Migrate(_) => "migrate",
            Command::Worker(_) => "worker",
            Command::Relay(_) => "relay",
            Command::Sweep(_) => "sweep",
            Command::Purge(_) => "purge",
            Command::Enqueue(_) => "enqueue",
            Command::Status { .. } => "status",
            Command::Sim { .. } => "sim",
            Command::Demo(_) => "demo",
            Command::Chaos(_) => "chaos",
            Command::Approvals { .. } => "approvals",
            Command::Policy { .. } => "policy",
            Command::NeedsHuman { .. } => "needs-human",
            Command::Serve { .. } => "serve",
            Command::Mcp { .. } => "mcp",
            Command::Openapi => "openapi",
            Command::Tokens { .. } => "tokens",
            Command::Resolve(_) => "resolve",
            Command::Resend(_) => "resend",
            Command::Cells { .. } => "cells",
            Command::Bench { .. } => "bench",
        }
    }
}

async fn run(cli: Cli, metrics: std::sync::Arc<idem_telemetry::metrics::Metrics>) -> Result<()> {
    match cli.command {
        Command::Migrate(db) => {
            let store = Store::connect(&db.database_url, 8).await?;
            store.migrate().await?;
            println!("migrated");
        }
        Command::Worker(args) => run_worker(args, metrics).await?,
        Command::Relay(args) => run_relay(args).await?,
        Command::Purge(args) => {
            let retention = Duration::from_secs(args.older_than_hours.saturating_mul(3600));
            let registry = args.cells.registry().map_err(anyhow::Error::msg)?;
            for cell in registry.iter() {
                if let Err(why) = cell.profile().window_check(Some(retention)) {
                    bail!("refusing to purge: cell {}: {why}", cell.name());
                }
            }
            let store = connect(&args.db).await?;
            let purged = idem_store::retention::purge_settled(
                store.pool(),
                retention,
                args.batch.max(1),
                args.max_batches,
                Duration::from_millis(args.pause_ms),
            )
            .await?;
            println!(
                "{} settled actions purged in {} batches",
                purged.actions, purged.batches
            );
        }
        Command::Sweep(args) => {
            let worker = build_worker(&args).await?;
            let n = worker.sweep_once().await?;
            println!("{n} actions moved on");
        }
        Command::Enqueue(a) => {
            let store = connect(&a.db).await?;
            let args: serde_json::Value =
                serde_json::from_str(&a.args).context("--args must be JSON")?;
            let registry = cells::CellArgs {
                cell_configs: a.cell_configs.clone(),
                ..cells::CellArgs::default()
            }
            .registry()
            .map_err(anyhow::Error::msg)?;
            let Some(cell) = registry.get(a.cell.as_str()) else {
                bail!(
                    "unknown cell {}; known: {}",
                    a.cell,
                    cells::names(&registry)
                );
            };
            cell.validate(&args)?;
            let mut action = match (a.id, a.intent_scope, a.intent) {
                (Some(id), _, _) => NewAction::new(id, a.cell, args),
                (None, Some(scope), Some(intent)) => {
                    NewAction::from_intent(scope, intent, a.cell, args)
                }
                (None, Some(scope), None) => NewAction::from_arguments(&scope, a.cell, args),
                (None, None, _) => {
                    bail!("give --id (reused on retry) or --intent-scope with --intent")
                }
            };
            if let Some(k) = a.ordering_key {
                action = action.with_ordering_key(k);
            }
            match enqueue(store.pool(), &action).await {
                Ok(done) => println!("{}", serde_json::to_string_pretty(&done)?),
                Err(e @ idem_store::EnqueueError::Conflict { .. }) => {
                    eprintln!("idem enqueue: {e}");
                    std::process::exit(exit::CONFLICT);
                }
                Err(idem_store::EnqueueError::Invalid { field, message }) => {
                    eprintln!(
                        "idem enqueue: {}{message}",
                        field.map(|f| format!("{f}: ")).unwrap_or_default()
                    );
                    std::process::exit(exit::INVALID);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Command::Status {
            db,
            action_id,
            wait,
        } => {
            let store = connect(&db).await?;
            let row = if wait > 0 {
                idem_store::await_settled(store.pool(), action_id, Duration::from_secs(wait))
                    .await?
            } else {
                idem_store::inbox::get(store.pool(), action_id).await?
            };
            let row = match row {
                Some(r) => r,
                // await_settled gives None when the wait ended first: read it as it stands.
                None => match idem_store::inbox::get(store.pool(), action_id).await? {
                    Some(r) => r,
                    None => {
                        eprintln!("idem status: no action {action_id}");
                        std::process::exit(exit::NOT_FOUND);
                    }
                },
            };
            let attempts = idem_store::attempts::load(store.pool(), &[action_id.as_uuid()]).await?;
            let state = row.state;
            let out = serde_json::json!({
                "action": row,
                "attempts": attempts.get(&action_id).cloned().unwrap_or_default(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            if wait > 0 {
                let code = exit::for_state(state);
                if code != 0 {
                    std::process::exit(code);
                }
            }
        }
        Command::Approvals { what } => decide::approvals(what).await?,
        Command::Policy { what } => policy::run(what).await?,
        Command::NeedsHuman { db, json } => decide::needs_human(db, json).await?,
        Command::Resolve(args) => decide::resolve(args).await?,
        Command::Resend(args) => decide::resend(args).await?,
        Command::Tokens { what } => decide::tokens(what).await?,
        Command::Serve {
            db,
            cells,
            listen,
            rate_limit,
            rate_burst,
            public_hosts,
        } => {
            let store = connect(&db).await?;
            let registry = cells.registry().map_err(anyhow::Error::msg)?;
            let state = idem_api::ApiState::with_rate_limit(
                store,
                std::sync::Arc::new(registry),
                idem_api::RateLimit {
                    per_second: rate_limit,
                    burst: rate_burst,
                },
            )
            .with_public_hosts(public_hosts)
            .with_metrics(metrics);
            // Keep the fleet gauges fresh for OTLP export (a scrape refreshes them too).
            let refresher = state.clone();
            tokio::spawn(async move {
                loop {
                    if let Err(e) = idem_api::metrics::refresh(&refresher).await {
                        tracing::warn!(error = %e, "fleet gauges not refreshed");
                    }
                    tokio::time::sleep(std::time::Duration::from_secs(10)).await;
                }
            });
            let app = idem_api::router(state);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("cannot listen on {listen}"))?;
            eprintln!("idem API on http://{}", listener.local_addr()?);
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
        Command::Mcp {
            db,
            cells,
            session,
            wait_secs,
            listen,
        } => {
            let store = connect(&db).await?;
            let registry = std::sync::Arc::new(cells.registry().map_err(anyhow::Error::msg)?);
            match listen {
                None => {
                    let session = session.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                    idem_mcp::IdemMcp::new(
                        store,
                        registry,
                        session,
                        std::time::Duration::from_secs(wait_secs),
                    )
                    .serve_stdio()
                    .await?;
                }
                Some(addr) => {
                    let state = idem_api::ApiState::new(store, registry)
                        .with_tool_wait(std::time::Duration::from_secs(wait_secs));
                    let app = idem_api::mcp::routes(&state);
                    let listener = tokio::net::TcpListener::bind(addr)
                        .await
                        .with_context(|| format!("cannot listen on {addr}"))?;
                    eprintln!("idem MCP on http://{}/mcp", listener.local_addr()?);
                    axum::serve(listener, app)
                        .with_graceful_shutdown(shutdown_signal())
                        .await?;
                }
            }
        }
        Command::Openapi => {
            println!("{}", serde_json::to_string_pretty(&idem_api::openapi())?);
        }
        Command::Cells { json, cells } => {
            let grid = cells::grid(&cells.registry().map_err(anyhow::Error::msg)?);
            if json {
                println!("{}", serde_json::to_string_pretty(&grid)?);
            } else {
                print!("{}", cells::table(&grid));
            }
        }
        Command::Sim { partner } => match partner {
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
                let server = idem_sim::SimServer::start(sim.router(), listen).await?;
                eprintln!(
                    "stripe simulator on {} (ledger: /_sim/ledger)",
                    server.base_url()
                );
                tokio::signal::ctrl_c().await?;
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
                let server = idem_sim::SimServer::start(sim.router(), listen).await?;
                eprintln!(
                    "IETF Idempotency-Key simulator on {} (ledger: /_sim/ledger)",
                    server.base_url()
                );
                tokio::signal::ctrl_c().await?;
            }
            SimCommand::Amadeus { listen, faults } => {
                let sim = idem_sim::AmadeusSim::new(faults.seed, faults.rates());
                let server = idem_sim::SimServer::start(sim.router(), listen).await?;
                eprintln!(
                    "amadeus simulator on {} (ledger: /_sim/ledger)",
                    server.base_url()
                );
                tokio::signal::ctrl_c().await?;
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
                let server = idem_sim::SimServer::start(sim.router(), listen).await?;
                eprintln!(
                    "gmail simulator on {} (ledger: /_sim/ledger)",
                    server.base_url()
                );
                tokio::signal::ctrl_c().await?;
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
                let server = idem_sim::SimServer::start(sim.router(), listen).await?;
                eprintln!(
                    "twilio simulator on {} (ledger: /_sim/ledger)",
                    server.base_url()
                );
                tokio::signal::ctrl_c().await?;
            }
            SimCommand::Slack {
                listen,
                faults,
                history_lag_secs,
            } => {
                let sim = idem_sim::SlackSim::new(
                    faults.seed,
                    faults.rates(),
                    Duration::from_secs_f64(history_lag_secs),
                );
                let server = idem_sim::SimServer::start(sim.router(), listen).await?;
                eprintln!(
                    "slack simulator on {} (ledger: /_sim/ledger)",
                    server.base_url()
                );
                tokio::signal::ctrl_c().await?;
            }
            SimCommand::Hubspot { listen, faults } => {
                let sim = idem_sim::HubSpotSim::new(faults.seed, faults.rates());
                let server = idem_sim::SimServer::start(sim.router(), listen).await?;
                eprintln!(
                    "hubspot simulator on {} (ledger: /_sim/ledger)",
                    server.base_url()
                );
                tokio::signal::ctrl_c().await?;
            }
        },
        Command::Bench {
            what: Some(what), ..
        } => {
            let figures = match what {
                BenchCommand::Relay(a) => bench::relay(a).await?,
                BenchCommand::KafkaWorker(a) => bench::kafka_worker(a).await?,
                BenchCommand::PgWorker(a) => bench::pg_worker(a).await?,
                BenchCommand::Enqueue(a) => bench::enqueue_bench(a).await?,
                BenchCommand::Latency(a) => bench::latency(a).await?,
                BenchCommand::Scaling(a) => bench::scaling(a).await?,
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

/// Every command but `migrate`: the schema must be this idem's.
async fn connect(db: &Db) -> Result<Store> {
    Ok(Store::connect_migrated(&db.database_url, 8).await?)
}

async fn build_worker(args: &WorkerArgs) -> Result<Worker> {
    let store = Store::connect_migrated(
        &args.db.database_url,
        (args.concurrency as u32 / 4).clamp(4, 32),
    )
    .await?;
    let mut config = WorkerConfig {
        concurrency: args.concurrency.max(1),
        batch: args.batch.max(1),
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        sweep_interval: Duration::from_millis(args.sweep_interval_ms),
        ..WorkerConfig::default()
    };
    if let Some(id) = &args.id {
        config.id = id.clone();
    }
    config.approval_ttl = Duration::from_secs(args.approval_ttl_secs.max(1));
    config.stranded_after =
        (args.stranded_after_ms > 0).then(|| Duration::from_millis(args.stranded_after_ms));
    let registry = args.cells.registry().map_err(anyhow::Error::msg)?;
    args.cells.check(&registry).map_err(anyhow::Error::msg)?;
    // Window safety check: refuse to start rather than risk a replay outside a key window.
    let retention = args
        .inbox_retention_hours
        .map(|h| Duration::from_secs(h * 3600));
    for cell in registry.iter() {
        if let Err(why) = cell.profile().window_check(retention) {
            bail!("refusing to start: cell {}: {why}", cell.name());
        }
    }
    Ok(Worker::new(store, registry, config))
}

fn shutdown_channel() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight work");
        let _ = tx.send(true);
    });
    rx
}

async fn run_worker(
    args: WorkerArgs,
    metrics: std::sync::Arc<idem_telemetry::metrics::Metrics>,
) -> Result<()> {
    let kafka = args.transport == "kafka";
    let mut args = args;
    let mut worker = build_worker(&args).await?;
    if let Some(addr) = args.metrics_listen {
        let state = idem_api::ApiState::new(
            connect(&args.db).await?,
            std::sync::Arc::new(
                cells::CellArgs::registry(&args.cells).map_err(anyhow::Error::msg)?,
            ),
        )
        .with_metrics(metrics);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        tracing::info!(addr = %listener.local_addr()?, "worker metrics at /metrics");
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, idem_api::metrics::routes(state)).await {
                tracing::error!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    let rx = shutdown_channel();
    tracing::info!(worker = worker.id(), transport = %args.transport, "worker started");
    if !kafka {
        worker.run(rx).await?;
        return Ok(());
    }
    // Kafka: the consumer group delivers new actions; this process still sweeps (leases,
    // retries, doubts) but does not claim from the outbox, which the relay drains.
    args.poll_interval_ms = args.poll_interval_ms.max(1);
    worker = worker.without_outbox_claims();
    let topics = args.kafka.topics(worker.cells());
    let transport = idem_kafka::KafkaTransport::new(worker.clone(), args.kafka.config(), {
        let mut t = idem_kafka::TransportConfig::new(&args.group, topics);
        t.protocol = args.group_protocol;
        t.instance_id = args.instance_id.clone();
        t
    });
    let sweeper = worker.clone();
    let sweep_rx = rx.clone();
    let sweeping = tokio::spawn(async move { sweeper.run(sweep_rx).await });
    transport.run(rx).await?;
    sweeping.await??;
    Ok(())
}

async fn run_relay(args: RelayArgs) -> Result<()> {
    let store = Store::connect_migrated(&args.db.database_url, 4).await?;
    let config = idem_relay::RelayConfig {
        batch: args.batch.max(1),
        linger: Duration::from_millis(args.linger_ms),
        poll_interval: Duration::from_millis(args.poll_interval_ms),
        ..idem_relay::RelayConfig::default()
    };
    let relay = idem_relay::Relay::new(store, &args.db.database_url, args.kafka.config(), config)?;
    tracing::info!("relay started; waiting to be elected");
    relay.run(shutdown_channel()).await?;
    Ok(())
}

pub(crate) async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
