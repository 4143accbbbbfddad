//! `idem demo`: N actions (charges, and refunds of earlier charges) through a faulty
//! Stripe simulator on the direct Postgres or the Kafka transport, with a worker killed
//! mid-flight; then the partner's ledger is compared with idem's receipts, cell by cell.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use idem_cells::{
    AmadeusBook, AmadeusCancel, AmadeusPrice, DeclarativeCell, GmailSend, HubSpotUpsert, Registry,
    SlackPost, StripeCharge, StripeRefund, TwilioSms,
};
use idem_core::CellProfile;
use idem_core::{CellName, RetryPolicy};
use idem_sim::{
    AmadeusSim, FaultRates, GmailConfig, GmailSim, HubSpotSim, IetfConfig, IetfSim, SimServer,
    SlackSim, StripeSim, StripeSimConfig, TwilioSim,
};
use idem_store::{enqueue, NewAction, Store, DEFAULT_DATABASE_URL};
use idem_worker::{Worker, WorkerConfig};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sqlx::{ConnectOptions, Connection};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// PostgreSQL server; the demo (re)creates its own database `idem_demo` there.
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    database_url: String,
    /// The database the demo (re)creates on that server ([a-z0-9_] only).
    #[arg(long, default_value = "idem_demo", value_parser = database_name)]
    database_name: String,
    /// Actions to run.
    #[arg(long, default_value_t = 1000)]
    actions: usize,
    /// Print the result as one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Worker tasks (one of them is killed and restarted mid-flight).
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Partner calls in flight per worker.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Lost responses after the effect.
    #[arg(long, default_value_t = 0.10)]
    drop_after_effect: f64,
    /// 500 before the effect.
    #[arg(long, default_value_t = 0.05)]
    fail_before: f64,
    /// 500 after the effect.
    #[arg(long, default_value_t = 0.02)]
    fail_after: f64,
    /// 429 before the idempotency layer.
    #[arg(long, default_value_t = 0.02)]
    rate_limit: f64,
    /// Give up waiting after this many seconds.
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    /// `postgres` (workers claim from the outbox) or `kafka` (relay → Kafka → consumer group).
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "kafka"])]
    transport: String,
    /// Kafka bootstrap servers for `--transport kafka`; without it (and without
    /// KAFKA_BOOTSTRAP) the demo starts tansu itself if it is on PATH.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Do not kill a worker mid-flight (partner faults stay on). Counters are per process:
    /// a task aborted while its commit is in flight can leave one batch uncounted.
    #[arg(long)]
    no_kill: bool,
}

/// The declarative cell the demo runs (`acme.payout`, against `idem sim ietf` semantics).
const EXAMPLE_CELL: &str = include_str!("../../../examples/cells/acme.payout.toml");

/// Where the demo's (and the latency benchmark's) workers get actions from.
pub(crate) enum Transport {
    Postgres,
    Kafka {
        config: idem_kafka::KafkaConfig,
        topic: String,
        group: String,
        _tansu: Option<Box<idem_kafka::tansu::Tansu>>,
    },
}

impl Transport {
    /// `kind` is `postgres` or `kafka`; on Kafka, a fresh topic and group named after
    /// `label` on `bootstrap` (or on a tansu started here).
    pub(crate) async fn new(kind: &str, bootstrap: Option<String>, label: &str) -> Result<Self> {
        if kind != "kafka" {
            return Ok(Self::Postgres);
        }
        let (bootstrap, tansu) = idem_kafka::tansu::given_or_started(bootstrap)
            .await
            .map_err(anyhow::Error::msg)?;
        let tansu = tansu.map(Box::new);
        // Fresh topic and group per run: the broker may keep earlier runs' messages.
        let run = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("idem.{label}.{run}");
        let mut config = idem_kafka::KafkaConfig::new(bootstrap);
        config.routing = idem_kafka::TopicRouting::Single(topic.clone());
        config.partitions = 6;
        idem_kafka::topics::ensure(&config, std::slice::from_ref(&topic)).await?;
        Ok(Self::Kafka {
            config,
            topic,
            group: format!("idem-{label}-{run}"),
            _tansu: tansu,
        })
    }

    /// One worker unit: on Kafka a consumer-group member plus its sweeper.
    pub(crate) fn spawn(
        &self,
        worker: Worker,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<Result<()>> {
        match self {
            Transport::Postgres => tokio::spawn(async move { Ok(worker.run(stop).await?) }),
            Transport::Kafka {
                config,
                topic,
                group,
                ..
            } => {
                let worker = worker.without_outbox_claims();
                let transport = idem_kafka::KafkaTransport::new(
                    worker.clone(),
                    config.clone(),
                    idem_kafka::TransportConfig::new(group, vec![topic.clone()]),
                );
                tokio::spawn(async move {
                    let (a, b) = tokio::join!(worker.run(stop.clone()), transport.run(stop));
                    a?;
                    b?;
                    Ok(())
                })
            }
        }
    }

    pub(crate) fn relay(
        &self,
        store: &Store,
        url: &str,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> Result<Option<tokio::task::JoinHandle<Result<()>>>> {
        let Transport::Kafka { config, .. } = self else {
            return Ok(None);
        };
        let relay = idem_relay::Relay::new(
            store.clone(),
            url,
            config.clone(),
            idem_relay::RelayConfig {
                poll_interval: Duration::from_millis(100),
                pause_after_ack: None,
                ..Default::default()
            },
        )?;
        Ok(Some(tokio::spawn(
            async move { Ok(relay.run(stop).await?) },
        )))
    }
}

#[derive(Debug, Default, Serialize)]
struct CellReport {
    actions: usize,
    effects: usize,
    duplicates: usize,
    lost: usize,
    succeeded: usize,
    failed: usize,
    needs_human: usize,
    dead: usize,
    in_doubt_resolved_by_reconcile: usize,
    in_doubt_resolved_by_replay: usize,
    p50_ms: u64,
    p99_ms: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    transport: String,
    actions: usize,
    effects: usize,
    duplicates: usize,
    lost: usize,
    needs_human: usize,
    enqueue_calls: usize,
    enqueue_duplicates_suppressed: usize,
    worker_killed: bool,
    elapsed_ms: u64,
    faults: FaultRates,
    cells: HashMap<String, CellReport>,
    /// This run's metrics (Prometheus text), to check against the ledgers.
    #[serde(skip_serializing_if = "String::is_empty")]
    metrics: String,
}

/// A database name that is safe to splice into DDL (identifiers cannot be bound).
fn database_name(s: &str) -> Result<String, String> {
    if !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        Ok(s.to_owned())
    } else {
        Err("use 1-63 characters of [a-z0-9_]".into())
    }
}

/// Drop and create the database `name` on the server of `server_url`; its URL.
pub(crate) async fn fresh_database(server_url: &str, name: &str) -> Result<String> {
    let admin: sqlx::postgres::PgConnectOptions = server_url.parse().context("DATABASE_URL")?;
    let mut conn = admin.connect().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot reach PostgreSQL at {}:{} ({e}). Start it (e.g. `pg_ctlcluster 15 main start`) or set DATABASE_URL",
            admin.get_host(),
            admin.get_port()
        )
    })?;
    // `name` is checked by `database_name`: identifiers cannot be bound as parameters.
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&mut conn)
        .await?;
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await?;
    let _ = conn.close().await;
    Ok(admin.database(name).to_url_lossy().to_string())
}

pub async fn run(args: DemoArgs, metrics: &idem_telemetry::metrics::Metrics) -> Result<bool> {
    let started = Instant::now();
    let url = fresh_database(&args.database_url, &args.database_name).await?;
    let store = Store::connect(&url, 24).await?;
    store.migrate().await?;

    let faults = FaultRates {
        drop_after_effect: args.drop_after_effect,
        fail_before: args.fail_before,
        fail_after: args.fail_after,
        rate_limit: args.rate_limit,
        ..FaultRates::default()
    };
    let sim = StripeSim::new(StripeSimConfig {
        seed: args.seed,
        faults,
        ..StripeSimConfig::default()
    });
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into()).await?;
    let hubspot = HubSpotSim::new(args.seed, faults);
    let hubspot_server = SimServer::start(hubspot.router(), ([127, 0, 0, 1], 0).into()).await?;
    let slack = SlackSim::new(args.seed, faults, Duration::from_millis(200));
    let slack_server = SimServer::start(slack.router(), ([127, 0, 0, 1], 0).into()).await?;
    let twilio = TwilioSim::new(args.seed, faults, Duration::from_millis(200));
    let twilio_server = SimServer::start(twilio.router(), ([127, 0, 0, 1], 0).into()).await?;
    let gmail = GmailSim::new(args.seed, faults, GmailConfig::default());
    let gmail_server = SimServer::start(gmail.router(), ([127, 0, 0, 1], 0).into()).await?;
    let amadeus = AmadeusSim::new(args.seed, faults);
    let amadeus_server = SimServer::start(amadeus.router(), ([127, 0, 0, 1], 0).into()).await?;
    let ietf = IetfSim::new(args.seed, faults, IetfConfig::default());
    let ietf_server = SimServer::start(ietf.router(), ([127, 0, 0, 1], 0).into()).await?;
    // Demo timings: a lost response is noticed in 1 s, a lease lasts 3 s.
    let timings = |p: &mut CellProfile| {
        p.call_timeout = Duration::from_millis(1000);
        p.settle_time = Duration::from_millis(500);
        p.retry = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(2),
            max_attempts: 8,
            jitter: 0.5,
        };
    };
    let payout = DeclarativeCell::from_toml(EXAMPLE_CELL)?
        .with_base(ietf_server.base_url())
        .with_token("tok_idem_demo")
        .with_profile(timings);
    let registry = || {
        Registry::new()
            .with(StripeCharge::new(server.base_url(), "sk_test_idem_demo").with_profile(timings))
            .with(StripeRefund::new(server.base_url(), "sk_test_idem_demo").with_profile(timings))
            .with(
                HubSpotUpsert::new(hubspot_server.base_url(), "pat-idem-demo")
                    .with_profile(timings),
            )
            .with(payout.clone())
            .with(
                AmadeusPrice::new(amadeus_server.base_url(), "amadeus-demo").with_profile(timings),
            )
            .with(AmadeusBook::new(amadeus_server.base_url(), "amadeus-demo").with_profile(timings))
            .with(
                AmadeusCancel::new(amadeus_server.base_url(), "amadeus-demo").with_profile(timings),
            )
            .with(
                GmailSend::new(gmail_server.base_url(), "ya29.idem-demo").with_profile(|p| {
                    timings(p);
                    p.lookup = idem_core::profile::Lookup::Eventual {
                        lag_bound: Duration::from_secs(1),
                    };
                }),
            )
            .with(
                TwilioSms::new(
                    twilio_server.base_url(),
                    "AC00000000000000000000000000000042",
                    "twilio-idem-demo",
                    "https://hooks.invalid/twilio/status",
                )
                .with_profile(|p| {
                    timings(p);
                    p.lookup = idem_core::profile::Lookup::Eventual {
                        lag_bound: Duration::from_secs(1),
                    };
                }),
            )
            .with(
                SlackPost::new(slack_server.base_url(), "xoxb-idem-demo").with_profile(|p| {
                    timings(p);
                    // The demo's history lags 200 ms; trust a miss after 1 s.
                    p.lookup = idem_core::profile::Lookup::Eventual {
                        lag_bound: Duration::from_secs(1),
                    };
                }),
            )
    };
    let worker_config = |i: usize| WorkerConfig {
        id: format!("demo-worker-{i}"),
        concurrency: args.concurrency,
        batch: 64,
        poll_interval: Duration::from_millis(100),
        sweep_interval: Duration::from_millis(200),
        claim_outbox: true,
        approval_ttl: Duration::from_secs(3600),
    };

    // Workers (and on Kafka the relay) first, so the run overlaps enqueueing like a live
    // system.
    let transport = Transport::new(&args.transport, args.bootstrap.clone(), "demo").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let relay = transport.relay(&store, &url, stop_rx.clone())?;
    let mut workers = vec![];
    for i in 0..args.workers.max(1) {
        let w = Worker::new(store.clone(), registry(), worker_config(i));
        workers.push(transport.spawn(w, stop_rx.clone()));
    }

    // Agents: each action inside an application transaction, in groups; some enqueued
    // twice (a retried tool call), some re-planned from the same intent.
    let charge = CellName::new("stripe.charge")?;
    let refund = CellName::new("stripe.refund")?;
    let upsert = CellName::new("hubspot.upsert")?;
    let acme = CellName::new("acme.payout")?;
    let post = CellName::new("slack.post")?;
    let sms = CellName::new("twilio.sms.send")?;
    let email = CellName::new("gmail.send")?;
    let book = CellName::new("amadeus.book")?;
    let price = CellName::new("amadeus.price")?;
    let cancel = CellName::new("amadeus.cancel")?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut ids = vec![];
    let mut calls = 0;
    let mut suppressed = 0;
    for chunk in (0..args.actions).collect::<Vec<_>>().chunks(50) {
        let mut tx = store.pool().begin().await?;
        for &i in chunk {
            // One action in ten refunds a charge made earlier (outside idem); 5% of those
            // ask for more than is left, which Stripe refuses: a definitive failure.
            let offers = serde_json::json!([{"id": format!("OFFER{i}")}]);
            let (cell, args_json) = if i % 40 == 5 {
                // A flight booking: no key, no lookup; any doubt goes to a person.
                (
                    book.clone(),
                    serde_json::json!({
                        "flight_offers": offers,
                        "travelers": [{"id": "1", "name": {"firstName": "ADA", "lastName": "LOVELACE"}}],
                    }),
                )
            } else if i % 40 == 15 {
                (price.clone(), serde_json::json!({"flight_offers": offers}))
            } else if i % 40 == 25 {
                let order = amadeus.seed_order();
                (cancel.clone(), serde_json::json!({"order_id": order}))
            } else if i % 10 == 0 {
                // A receipt by email: never resent automatically.
                (
                    email.clone(),
                    serde_json::json!({
                        "to": format!("customer{i}@demo.example"),
                        "subject": format!("Receipt for order {i}"),
                        "text": "Thank you for your order.",
                    }),
                )
            } else if i % 10 == 6 {
                // A one-time code by SMS: at most once, a person decides what is unprovable.
                (
                    sms.clone(),
                    serde_json::json!({
                        "to": format!("+1555{:07}", i),
                        "from": "+15550000000",
                        "body": format!("Your code is {}", 100_000 + i),
                    }),
                )
            } else if i % 10 == 1 {
                // A notification: Slack has no key; the history decides doubts.
                (
                    post.clone(),
                    serde_json::json!({"channel": "C0DEMO", "text": format!("order {i} charged")}),
                )
            } else if i % 10 == 2 {
                // A payout through the declarative http.idempotent cell.
                (
                    acme.clone(),
                    serde_json::json!({
                        "amount": rng.gen_range(100..100_000),
                        "currency": "eur",
                        "destination": format!("acct_demo{:03}", i % 100),
                    }),
                )
            } else if i % 5 == 3 {
                // A CRM upsert: naturally idempotent by the contact's email.
                (
                    upsert.clone(),
                    serde_json::json!({
                        "id": format!("customer{i}@demo.example"),
                        "properties": {"firstname": format!("Customer {i}"), "lifecyclestage": "customer"},
                    }),
                )
            } else if i % 10 == 4 {
                let charged = rng.gen_range(1_000..100_000);
                let pi = sim.create_succeeded_intent(charged, "usd");
                let amount = if rng.gen_bool(0.05) {
                    charged + 1
                } else {
                    charged / 2
                };
                (
                    refund.clone(),
                    serde_json::json!({"payment_intent": pi, "amount": amount, "reason": "requested_by_customer"}),
                )
            } else {
                let declined = rng.gen_bool(0.03);
                (
                    charge.clone(),
                    serde_json::json!({
                        "amount": rng.gen_range(100..100_000),
                        "currency": "usd",
                        "customer": format!("cus_demo{:03}", i % 100),
                        "description": format!("demo order {i}"),
                        "payment_method": if declined { "pm_card_chargeDeclined" } else { "pm_card_visa" },
                    }),
                )
            };
            let action =
                NewAction::from_intent(&format!("agent-turn-{i}"), cell.clone(), args_json.clone());
            calls += 1;
            if !enqueue(&mut *tx, &action).await?.created {
                suppressed += 1;
            }
            ids.push(action.action_id);
            if rng.gen_bool(0.10) {
                // The same tool call retried with the same id.
                calls += 1;
                if !enqueue(&mut *tx, &action).await?.created {
                    suppressed += 1;
                }
            }
            if rng.gen_bool(0.10) {
                // The model re-plans the same charge in the same turn: same intent, same id.
                let replanned =
                    NewAction::from_intent(&format!("agent-turn-{i}"), cell.clone(), args_json);
                calls += 1;
                if !enqueue(&mut *tx, &replanned).await?.created {
                    suppressed += 1;
                }
            }
        }
        tx.commit().await?;
    }

    let bar = indicatif::ProgressBar::new(ids.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} settled {pos}/{len} [{elapsed}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let deadline = Instant::now() + Duration::from_secs(args.timeout_secs);
    let mut killed = false;
    loop {
        let (settled,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM idem.actions WHERE state IN ('succeeded','failed','rejected','needs_human','dead')",
        )
        .fetch_one(store.pool())
        .await?;
        bar.set_position(settled as u64);
        if !args.no_kill && !killed && settled as usize >= ids.len() / 4 {
            // Kill a worker mid-flight: its in-flight calls are abandoned with their leases
            // held; another worker's sweeper must settle them. Then restart it.
            workers[0].abort();
            let _ = (&mut workers[0]).await;
            bar.set_message("worker 0 killed mid-flight, restarting");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let w = Worker::new(store.clone(), registry(), worker_config(100));
            workers[0] = transport.spawn(w, stop_rx.clone());
            killed = true;
        }
        if settled as usize >= ids.len() {
            break;
        }
        if Instant::now() > deadline {
            bar.abandon();
            bail!("not every action settled within {}s", args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bar.finish_and_clear();
    let _ = stop_tx.send(true);
    for w in workers {
        let _ = w.await;
    }
    if let Some(r) = relay {
        let _ = r.await;
    }

    // Every partner's ledger, as (action, partner object id).
    let ledger: Vec<(Option<String>, String)> = sim
        .ledger()
        .into_iter()
        .map(|e| (e.idem_action_id, e.id))
        .chain(
            hubspot
                .core
                .ledger()
                .into_iter()
                .chain(ietf.core.ledger())
                .chain(slack.core.ledger())
                .chain(twilio.core.ledger())
                .chain(gmail.core.ledger())
                .chain(amadeus.core.ledger())
                .map(|e| (e.idem_action_id, e.id)),
        )
        .collect();
    let read_only: Vec<String> = registry()
        .iter()
        .filter(|c| !c.effectful())
        .map(|c| c.name().to_string())
        .collect();
    let mut report = check(
        &store,
        &ledger,
        &read_only,
        ids.len(),
        calls,
        suppressed,
        killed,
        faults,
        started,
    )
    .await?;
    report.transport = args.transport.clone();
    idem_telemetry::metrics::observe_fleet(idem_store::stats::fleet(store.pool()).await?);
    report.metrics = metrics.render();
    let ok = report.duplicates == 0 && report.lost == 0;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    drop(server);
    drop(hubspot_server);
    drop(ietf_server);
    drop(slack_server);
    drop(twilio_server);
    drop(gmail_server);
    drop(amadeus_server);
    Ok(ok)
}

/// (action id, cell, state, receipt, settle latency in ms)
type ActionSummary = (
    uuid::Uuid,
    String,
    String,
    Option<serde_json::Value>,
    Option<f64>,
);

/// Compare the partner's ledger with idem's view, action by action.
#[allow(clippy::too_many_arguments)]
async fn check(
    store: &Store,
    ledger: &[(Option<String>, String)],
    read_only: &[String],
    actions: usize,
    calls: usize,
    suppressed: usize,
    killed: bool,
    faults: FaultRates,
    started: Instant,
) -> Result<Report> {
    let rows: Vec<ActionSummary> = sqlx::query_as(
        "SELECT action_id, cell, state, receipt, \
         (extract(epoch from (settled_at - created_at)) * 1000)::float8 FROM idem.actions",
    )
    .fetch_all(store.pool())
    .await?;
    let events: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT DISTINCT action_id, event FROM idem.transitions \
         WHERE event IN ('reconciled_happened','reconciled_not_happened','reconciled_failed','replay')",
    )
    .fetch_all(store.pool())
    .await?;
    let mut effects_by_action: HashMap<String, Vec<String>> = HashMap::new();
    for (action, id) in ledger {
        effects_by_action
            .entry(action.clone().unwrap_or_default())
            .or_default()
            .push(id.clone());
    }
    let mut cells: HashMap<String, CellReport> = HashMap::new();
    let mut latencies: HashMap<String, Vec<u64>> = HashMap::new();
    for (id, cell, state, receipt, ms) in &rows {
        let c = cells.entry(cell.clone()).or_default();
        c.actions += 1;
        let effects = effects_by_action
            .get(&id.to_string())
            .cloned()
            .unwrap_or_default();
        c.effects += effects.len();
        c.duplicates += effects.len().saturating_sub(1);
        match state.as_str() {
            "succeeded" => {
                c.succeeded += 1;
                let partner_ref = receipt.as_ref().and_then(|r| r["partner_ref"].as_str());
                // Lost: succeeded without the effect its receipt names (read-only cells
                // have none to name).
                if !read_only.contains(cell)
                    && partner_ref.is_none_or(|r| !effects.iter().any(|e| e == r))
                {
                    c.lost += 1;
                }
            }
            "failed" | "rejected" | "dead" => {
                if state == "failed" {
                    c.failed += 1;
                } else if state == "dead" {
                    c.dead += 1;
                }
                // Lost: the partner did it but idem says it did not.
                if !effects.is_empty() {
                    c.lost += 1;
                }
            }
            "needs_human" => c.needs_human += 1,
            _ => c.lost += 1, // never settled
        }
        if let Some(ms) = ms {
            latencies.entry(cell.clone()).or_default().push(*ms as u64);
        }
    }
    for (id, event) in &events {
        let Some((_, cell, ..)) = rows.iter().find(|r| r.0 == *id) else {
            continue;
        };
        let c = cells.entry(cell.clone()).or_default();
        if event == "replay" {
            c.in_doubt_resolved_by_replay += 1;
        } else {
            c.in_doubt_resolved_by_reconcile += 1;
        }
    }
    for (cell, mut l) in latencies {
        l.sort_unstable();
        let pct = |p: f64| {
            l.get(((l.len() as f64 - 1.0) * p).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        if let Some(c) = cells.get_mut(&cell) {
            c.p50_ms = pct(0.50);
            c.p99_ms = pct(0.99);
        }
    }
    let sum = |f: fn(&CellReport) -> usize| cells.values().map(f).sum::<usize>();
    Ok(Report {
        transport: String::new(),
        actions,
        effects: sum(|c| c.effects),
        duplicates: sum(|c| c.duplicates),
        lost: sum(|c| c.lost) + actions.saturating_sub(rows.len()),
        needs_human: sum(|c| c.needs_human),
        enqueue_calls: calls,
        enqueue_duplicates_suppressed: suppressed,
        worker_killed: killed,
        elapsed_ms: started.elapsed().as_millis() as u64,
        faults,
        cells,
        metrics: String::new(),
    })
}

fn print_table(r: &Report) {
    println!(
        "idem demo ({} transport): {} actions, {} enqueue calls ({} duplicates suppressed at enqueue), worker killed mid-flight: {}",
        r.transport, r.actions, r.enqueue_calls, r.enqueue_duplicates_suppressed, r.worker_killed
    );
    println!(
        "faults: {:.0}% lost responses after effect, {:.0}% 5xx before, {:.0}% 5xx after, {:.0}% 429",
        r.faults.drop_after_effect * 100.0,
        r.faults.fail_before * 100.0,
        r.faults.fail_after * 100.0,
        r.faults.rate_limit * 100.0
    );
    println!();
    println!(
        "{:<16} {:>7} {:>7} {:>10} {:>5} {:>9} {:>6} {:>11} {:>16} {:>14} {:>7} {:>7}",
        "cell",
        "actions",
        "effects",
        "duplicates",
        "lost",
        "succeeded",
        "failed",
        "needs_human",
        "doubt→reconcile",
        "doubt→replay",
        "p50 ms",
        "p99 ms"
    );
    let mut names: Vec<_> = r.cells.keys().collect();
    names.sort();
    for n in names {
        let c = &r.cells[n];
        println!(
            "{:<16} {:>7} {:>7} {:>10} {:>5} {:>9} {:>6} {:>11} {:>16} {:>14} {:>7} {:>7}",
            n,
            c.actions,
            c.effects,
            c.duplicates,
            c.lost,
            c.succeeded,
            c.failed,
            c.needs_human,
            c.in_doubt_resolved_by_reconcile,
            c.in_doubt_resolved_by_replay,
            c.p50_ms,
            c.p99_ms
        );
    }
    println!();
    println!(
        "total: {} actions, {} effects, {} duplicates, {} lost, {} needs_human ({:.1}s)",
        r.actions,
        r.effects,
        r.duplicates,
        r.lost,
        r.needs_human,
        r.elapsed_ms as f64 / 1000.0
    );
}

#[cfg(test)]
mod tests {
    use super::database_name;

    #[test]
    fn database_names_are_plain_identifiers() {
        assert!(database_name("idem_demo").is_ok());
        assert!(database_name("idem_demo; DROP DATABASE postgres").is_err());
        assert!(database_name("Idem").is_err());
        assert!(database_name("").is_err());
    }
}
