//! The `idem` command: one module per command (`worker`, `relay`, `serve`, …); `decide`
//! holds the commands through which a person decides (approvals, needs-human, resolve,
//! resend, tokens).

mod cells;
mod config;
mod decide;
mod enqueue;
mod kafka;
mod mcp;
mod policy;
mod purge;
mod relay;
mod serve;
mod status;
mod worker;

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

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use idem_store::Store;

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
    Worker(worker::WorkerArgs),
    /// Publish committed outbox rows to Kafka (one leader among all relays).
    Relay(relay::RelayArgs),
    /// Run one sweep pass: expire leases, start due retries, reconcile doubts.
    Sweep(worker::WorkerArgs),
    /// Retention: delete settled actions older than --older-than-hours, in small batches
    /// that never block workers. Refuses a retention shorter than a cell's key window.
    Purge(purge::PurgeArgs),
    /// Enqueue one action (in its own transaction).
    Enqueue(enqueue::EnqueueArgs),
    /// Show an action, its receipt and its attempts as JSON.
    Status(status::StatusArgs),
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
    Serve(serve::ServeArgs),
    /// MCP server: each cell is a tool. Over stdin/stdout by default (the session, which is
    /// the intents' scope, is --session, else random per process); with --listen,
    /// streamable HTTP at /mcp behind bearer tokens (submit scope), each request naming its
    /// session (?session= or Idem-Session), as `serve` also offers.
    Mcp(mcp::McpArgs),
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
    /// budget, the same action id; a `dead` one (never attempted) is delivered again.
    /// Audited with --as and --reason.
    Resend(decide::ResendArgs),
    /// Dead letters (deliveries that could not become an action): list them, or replay one
    /// after what made it dead was fixed; audited with --as and --reason.
    DeadLetters {
        #[command(subcommand)]
        what: decide::DeadLettersCommand,
    },
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

/// mimalloc instead of glibc's malloc: allocation and free were about a quarter of the
/// worker process's CPU under load (`perf record` on `idem-lab bench pg-worker`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    let cli = Cli::parse();
    config::init(cli.config.as_deref())?;
    let service = format!("idem-{}", cli.command.name());
    idem_telemetry::process::run(&service, "warn,idem=info", |metrics| run(cli, metrics))
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
            Command::Status(_) => "status",
            Command::Approvals { .. } => "approvals",
            Command::Policy { .. } => "policy",
            Command::NeedsHuman { .. } => "needs-human",
            Command::Serve(_) => "serve",
            Command::Mcp(_) => "mcp",
            Command::Openapi => "openapi",
            Command::Config { .. } => "config",
            Command::Tokens { .. } => "tokens",
            Command::Resolve(_) => "resolve",
            Command::Resend(_) => "resend",
            Command::DeadLetters { .. } => "dead-letters",
            Command::Cells { .. } => "cells",
        }
    }
}

async fn run(cli: Cli, metrics: std::sync::Arc<idem_telemetry::metrics::Metrics>) -> Result<()> {
    match cli.command {
        Command::Migrate(db) => {
            let (specs, prefixes) = db.stores().map_err(anyhow::Error::msg)?;
            let stores = idem_store::Stores::connect(&specs, &prefixes, 4, false).await?;
            for (name, store) in stores.iter() {
                store
                    .migrate()
                    .await
                    .with_context(|| format!("migrate store {name:?}"))?;
            }
            if stores.len() == 1 {
                println!("migrated");
            } else {
                let names: Vec<&str> = stores.iter().map(|(n, _)| n).collect();
                println!("migrated stores {}", names.join(", "));
            }
        }
        Command::Worker(args) => worker::run(args, metrics).await?,
        Command::Sweep(args) => worker::sweep(args).await?,
        Command::Relay(args) => relay::run(args).await?,
        Command::Purge(args) => purge::run(args).await?,
        Command::Enqueue(args) => enqueue::run(args).await?,
        Command::Status(args) => status::run(args).await?,
        Command::Approvals { what } => decide::approvals(what).await?,
        Command::Policy { what } => policy::run(what).await?,
        Command::NeedsHuman { db, json } => decide::needs_human(db, json).await?,
        Command::Resolve(args) => decide::resolve(args).await?,
        Command::Resend(args) => decide::resend(args).await?,
        Command::DeadLetters { what } => decide::dead_letters(what).await?,
        Command::Tokens { what } => decide::tokens(what).await?,
        Command::Serve(args) => serve::run(args, metrics).await?,
        Command::Mcp(args) => mcp::run(args).await?,
        Command::Config { json } => {
            let c = config::get();
            if json {
                println!("{}", serde_json::to_string_pretty(&c.redacted())?);
            } else {
                print!("{}", c.render()?);
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
/// With `[[stores]]`, the default store (tokens, approvals and decisions read there).
pub(crate) async fn connect(db: &Db) -> Result<Store> {
    let (specs, _) = db.stores().map_err(anyhow::Error::msg)?;
    Ok(Store::connect_migrated(&specs[0].url, 8).await?)
}

/// Every store of the configuration (or the one database), connected and migrated.
pub(crate) async fn connect_stores(db: &Db, max_connections: u32) -> Result<idem_store::Stores> {
    let (specs, prefixes) = db.stores().map_err(anyhow::Error::msg)?;
    if specs.len() == 1 {
        let store = Store::connect_migrated(&specs[0].url, max_connections).await?;
        return Ok(idem_store::Stores::from_stores(
            vec![(specs[0].name.clone(), store)],
            &prefixes,
        )?);
    }
    Ok(idem_store::Stores::connect(&specs, &prefixes, max_connections, true).await?)
}

pub(crate) fn shutdown_channel() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        idem_telemetry::process::shutdown_signal().await;
        tracing::info!("shutting down: finishing in-flight work");
        let _ = tx.send(true);
    });
    rx
}
