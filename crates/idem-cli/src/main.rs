//! The `idem` command.

mod cells;
mod config;
mod decide;
mod policy;
mod process;

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
use idem_store::{enqueue, NewAction, Store};
use idem_worker::{Worker, WorkerConfig};

#[derive(Parser, Debug)]
#[command(
    name = "idem",
    version,
    about = "The exactly-once layer under AI agents"
)]
struct Cli {
    /// Configuration file (`idem.toml`, e.g. `examples/idem.toml`); the environment
    /// overlay `IDEM__SECTION__KEY` and a command's flags go on top. `idem config` shows
    /// the result.
    #[arg(long, global = true, env = "IDEM_CONFIG")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

use config::Db;

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
        db: Db,
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
    /// Print the effective configuration (defaults ← --config file ← IDEM__… environment)
    /// as TOML, secrets redacted.
    Config {
        /// JSON instead of TOML (secrets redacted too).
        #[arg(long)]
        json: bool,
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
}

/// A worker's flags: each overrides its `[worker]` key in the configuration, where the
/// defaults are.
#[derive(Args, Debug, Clone)]
struct WorkerArgs {
    #[command(flatten)]
    db: Db,
    #[command(flatten)]
    cells: cells::CellArgs,
    /// Partner calls in flight at once (`worker.concurrency`, default 32).
    #[arg(long)]
    concurrency: Option<usize>,
    /// Actions claimed or settled per transaction (`worker.batch`, default 64).
    #[arg(long)]
    batch: Option<u32>,
    /// `worker.poll_interval` in ms.
    #[arg(long)]
    poll_interval_ms: Option<u64>,
    /// `worker.sweep_interval` in ms.
    #[arg(long)]
    sweep_interval_ms: Option<u64>,
    /// Worker name in leases and audit rows.
    #[arg(long)]
    id: Option<String>,
    /// Serve this worker's counters and the fleet gauges at http://ADDR/metrics (needs a
    /// token with the read scope). OTLP export needs only OTEL_EXPORTER_OTLP_ENDPOINT.
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Where actions come from: the outbox directly, or a Kafka consumer group
    /// (`worker.transport`, default postgres).
    #[arg(long, value_enum)]
    transport: Option<config::Transport>,
    #[command(flatten)]
    kafka: KafkaArgs,
    /// Consumer group (Kafka transport; `worker.group`, default idem-workers).
    #[arg(long)]
    group: Option<String>,
    /// Consumer group protocol: `consumer` (KIP-848, Kafka 4: the broker assigns, members
    /// come and go without stopping the others) or `classic` (cooperative-sticky; older
    /// brokers and librdkafka's mock cluster).
    #[arg(long, value_enum)]
    group_protocol: Option<config::GroupProtocol>,
    /// Static group membership for the classic protocol (`group.instance.id`): a worker
    /// restarted under the same id gets its partitions back without a rebalance. Unique
    /// per live worker (a supervisor slot, a pod name).
    #[arg(long)]
    instance_id: Option<String>,
    /// How long settled actions are kept in the inbox, if a retention job deletes them
    /// (hours). The worker refuses to start if this is shorter than a cell's key window.
    #[arg(long)]
    inbox_retention_hours: Option<u64>,
    /// Seconds an action may wait for approval before it is rejected as expired
    /// (`worker.approval_ttl`, default 24h).
    #[arg(long)]
    approval_ttl_secs: Option<u64>,
    /// An action still `received` this long after enqueue (ms) is started by the sweeper
    /// from its inbox row: its delivery was lost (e.g. a Kafka message dropped by retention
    /// before any worker read it). Such starts give up per-key order, so keep this well
    /// above the normal delivery lag. 0: never (`worker.stranded_after`, default 10m).
    #[arg(long)]
    stranded_after_ms: Option<u64>,
}

impl WorkerArgs {
    /// The `[worker]` section with this command's flags on top.
    fn effective(&self) -> config::WorkerSection {
        let mut w = config::get().worker.clone();
        let ms = Duration::from_millis;
        macro_rules! set {
            ($flag:expr, $field:expr) => {
                if let Some(v) = $flag.clone() {
                    $field = v;
                }
            };
        }
        set!(self.concurrency, w.concurrency);
        set!(self.batch, w.batch);
        set!(self.poll_interval_ms.map(ms), w.poll_interval);
        set!(self.sweep_interval_ms.map(ms), w.sweep_interval);
        set!(
            self.approval_ttl_secs.map(Duration::from_secs),
            w.approval_ttl
        );
        set!(self.stranded_after_ms.map(ms), w.stranded_after);
        set!(self.transport, w.transport);
        set!(self.group, w.group);
        set!(self.group_protocol, w.group_protocol);
        if self.id.is_some() {
            w.id = self.id.clone();
        }
        if self.instance_id.is_some() {
            w.instance_id = self.instance_id.clone();
        }
        if self.metrics_listen.is_some() {
            w.metrics_listen = self.metrics_listen;
        }
        if let Some(h) = self.inbox_retention_hours {
            w.inbox_retention = Some(Duration::from_secs(h.saturating_mul(3600)));
        }
        w
    }
}

/// Where Kafka is and which topics idem uses: flags over the `[kafka]` section.
#[derive(Args, Debug, Clone)]
struct KafkaArgs {
    /// Kafka bootstrap servers (`kafka.bootstrap`, default 127.0.0.1:9092).
    #[arg(long = "bootstrap", env = "KAFKA_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Topic routing: one topic for every action, or `per-cell` / `per-integration` with
    /// --topic as the prefix.
    #[arg(long, value_enum)]
    routing: Option<config::Routing>,
    /// The topic (single) or topic prefix (`kafka.topic`, default idem.actions).
    #[arg(long)]
    topic: Option<String>,
    /// Partitions of topics idem creates (`kafka.partitions`, default 6).
    #[arg(long)]
    partitions: Option<i32>,
}

impl KafkaArgs {
    fn config(&self) -> Result<idem_kafka::KafkaConfig> {
        let mut k = config::get().kafka.clone();
        if let Some(b) = &self.bootstrap {
            k.bootstrap = b.clone();
        }
        if let Some(r) = self.routing {
            k.routing = r;
        }
        if let Some(t) = &self.topic {
            k.topic = t.clone();
        }
        if let Some(p) = self.partitions {
            k.partitions = p;
        }
        k.to_kafka().map_err(anyhow::Error::msg)
    }

    /// Topics a worker subscribes to for the cells it runs.
    fn topics(&self, cells: &idem_cells::Registry) -> Result<Vec<String>> {
        let c = self.config()?;
        let mut t: Vec<String> = cells
            .iter()
            .map(|cell| c.routing.topic_for(cell.name().as_str()))
            .collect();
        t.sort();
        t.dedup();
        Ok(t)
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
    /// Rows per batch (`relay.batch`, default 500).
    #[arg(long)]
    batch: Option<i64>,
    /// Producer linger in ms (`relay.linger`, default 1ms).
    #[arg(long)]
    linger_ms: Option<u64>,
    /// `relay.poll_interval` in ms.
    #[arg(long)]
    poll_interval_ms: Option<u64>,
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

fn main() -> Result<()> {
    let cli = Cli::parse();
    config::init(cli.config.as_deref())?;
    let service = format!("idem-{}", cli.command.name());
    process::run(&service, "warn,idem=info", |metrics| run(cli, metrics))
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
            Command::Approvals { .. } => "approvals",
            Command::Policy { .. } => "policy",
            Command::NeedsHuman { .. } => "needs-human",
            Command::Serve { .. } => "serve",
            Command::Mcp { .. } => "mcp",
            Command::Openapi => "openapi",
            Command::Config { .. } => "config",
            Command::Tokens { .. } => "tokens",
            Command::Resolve(_) => "resolve",
            Command::Resend(_) => "resend",
            Command::Cells { .. } => "cells",
        }
    }
}

async fn run(cli: Cli, metrics: std::sync::Arc<idem_telemetry::metrics::Metrics>) -> Result<()> {
    match cli.command {
        Command::Migrate(db) => {
            let store = Store::connect(&db.database_url(), 8).await?;
            store.migrate().await?;
            println!("migrated");
        }
        Command::Worker(args) => run_worker(args, metrics).await?,
        Command::Config { json } => {
            let c = config::get();
            if json {
                println!("{}", serde_json::to_string_pretty(&c.redacted())?);
            } else {
                print!("{}", c.render()?);
            }
        }
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
                .with_graceful_shutdown(process::shutdown_signal())
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
                        .with_graceful_shutdown(process::shutdown_signal())
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
    }
    Ok(())
}

/// Every command but `migrate`: the schema must be this idem's.
async fn connect(db: &Db) -> Result<Store> {
    Ok(Store::connect_migrated(&db.database_url(), 8).await?)
}

async fn build_worker(args: &WorkerArgs) -> Result<Worker> {
    let w = args.effective();
    let store = Store::connect_migrated(
        &args.db.database_url(),
        (w.concurrency as u32 / 4).clamp(4, 32),
    )
    .await?;
    let mut config = WorkerConfig {
        concurrency: w.concurrency.max(1),
        batch: w.batch.max(1),
        poll_interval: w.poll_interval,
        sweep_interval: w.sweep_interval,
        approval_ttl: w.approval_ttl.max(Duration::from_secs(1)),
        stranded_after: (!w.stranded_after.is_zero()).then_some(w.stranded_after),
        ..WorkerConfig::default()
    };
    if let Some(id) = &w.id {
        config.id = id.clone();
    }
    let registry = args.cells.registry().map_err(anyhow::Error::msg)?;
    args.cells.check(&registry).map_err(anyhow::Error::msg)?;
    // Window safety check: refuse to start rather than risk a replay outside a key window.
    for cell in registry.iter() {
        if let Err(why) = cell.profile().window_check(w.inbox_retention) {
            bail!("refusing to start: cell {}: {why}", cell.name());
        }
    }
    Ok(Worker::builder(store, registry).config(config).build())
}

fn shutdown_channel() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        process::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight work");
        let _ = tx.send(true);
    });
    rx
}

async fn run_worker(
    args: WorkerArgs,
    metrics: std::sync::Arc<idem_telemetry::metrics::Metrics>,
) -> Result<()> {
    let settings = args.effective();
    let kafka = settings.transport == config::Transport::Kafka;
    let mut worker = build_worker(&args).await?;
    if let Some(addr) = settings.metrics_listen {
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
    tracing::info!(worker = worker.id(), transport = ?settings.transport, "worker started");
    if !kafka {
        worker.run(rx).await?;
        return Ok(());
    }
    // Kafka: the consumer group delivers new actions; this process still sweeps (leases,
    // retries, doubts) but does not claim from the outbox, which the relay drains.
    worker = worker.without_outbox_claims();
    let topics = args.kafka.topics(worker.cells())?;
    let transport = idem_kafka::KafkaTransport::new(worker.clone(), args.kafka.config()?, {
        let mut t = idem_kafka::TransportConfig::new(&settings.group, topics);
        t.protocol = settings.group_protocol.into();
        t.instance_id = settings.instance_id.clone();
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
    let store = Store::connect_migrated(&args.db.database_url(), 4).await?;
    let r = &config::get().relay;
    let config = idem_relay::RelayConfig {
        batch: args.batch.unwrap_or(r.batch).max(1),
        linger: args
            .linger_ms
            .map(Duration::from_millis)
            .unwrap_or(r.linger),
        poll_interval: args
            .poll_interval_ms
            .map(Duration::from_millis)
            .unwrap_or(r.poll_interval),
        ..idem_relay::RelayConfig::default()
    };
    let relay =
        idem_relay::Relay::new(store, &args.db.database_url(), args.kafka.config()?, config)?;
    tracing::info!("relay started; waiting to be elected");
    relay.run(shutdown_channel()).await?;
    Ok(())
}
