//! `idem-lab demo`: N actions over every cell through faulty partner simulators, on the direct
//! Postgres or the Kafka transport, with a worker killed mid-flight; then the partners'
//! ledgers are compared with idem's receipts, cell by cell.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use idem_sim::FaultRates;
use idem_store::{enqueue, NewAction, Store};
use idem_worker::{Worker, WorkerConfig};
use rand::{Rng, SeedableRng};
use serde::Serialize;
use sqlx::{ConnectOptions, Connection};

use crate::checker::{self, Verdict};
use crate::partners::{fast_timings, Knobs, Partners};
use crate::workload;

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// PostgreSQL server; the demo (re)creates its own database `idem_demo` there. Without
    /// it the demo starts a PostgreSQL cluster of its own (and stops it at the end).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
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
    /// KAFKA_BOOTSTRAP) the demo starts a one-node Apache Kafka of its own.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Do not kill a worker mid-flight (partner faults stay on). Counters are per process:
    /// a task aborted while its commit is in flight can leave one batch uncounted.
    #[arg(long)]
    no_kill: bool,
}

/// Where the demo's (and the latency benchmark's) workers get actions from.
pub(crate) enum Transport {
    Postgres,
    Kafka {
        config: Box<idem_kafka::KafkaConfig>,
        topic: String,
        group: String,
        kafka: Box<crate::services::Kafka>,
    },
}

impl Transport {
    /// `kind` is `postgres` or `kafka`; on Kafka, a fresh topic and group named after
    /// `label` on `bootstrap` (or on a one-node Apache Kafka started here).
    pub(crate) async fn new(kind: &str, bootstrap: Option<String>, label: &str) -> Result<Self> {
        if kind != "kafka" {
            return Ok(Self::Postgres);
        }
        let kafka = crate::services::Kafka::given_or_started(bootstrap, 1, None).await?;
        let bootstrap = kafka.bootstrap().to_owned();
        // Fresh topic and group per run: the broker may keep earlier runs' messages.
        let run = uuid::Uuid::new_v4().simple().to_string();
        let topic = format!("idem.{label}.{run}");
        let mut config = idem_kafka::KafkaConfig::new(bootstrap);
        config.routing = idem_kafka::TopicRouting::Single(topic.clone());
        config.partitions = 6;
        idem_kafka::topics::ensure(&config, std::slice::from_ref(&topic)).await?;
        Ok(Self::Kafka {
            config: Box::new(config),
            topic,
            group: format!("idem-{label}-{run}"),
            kafka: Box::new(kafka),
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
                    (**config).clone(),
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

    /// The broker, for reports (`None` on the Postgres transport).
    pub(crate) fn broker(&self) -> Option<String> {
        match self {
            Transport::Postgres => None,
            Transport::Kafka { kafka, .. } => Some(kafka.broker().to_owned()),
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
            (**config).clone(),
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

#[derive(Debug, Serialize)]
struct Report {
    transport: String,
    /// The Kafka broker the run used (`apache-kafka 4.4.0, 1 node`); absent on Postgres.
    #[serde(skip_serializing_if = "Option::is_none")]
    broker: Option<String>,
    #[serde(flatten)]
    verdict: Verdict,
    enqueue_calls: usize,
    enqueue_duplicates_suppressed: usize,
    worker_killed: bool,
    elapsed_ms: u64,
    faults: FaultRates,
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
            "cannot reach PostgreSQL at {}:{} ({e}). Start it, or unset DATABASE_URL to let the command start one of its own",
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
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab demo")
            .await?;
    let url = fresh_database(pg.url(), &args.database_name).await?;
    let store = Store::connect(&url, 24).await?;
    store.migrate().await?;
    // The example declarative cell is not built in: register it before the agents start
    // (enqueue refuses unknown cells; the workers register it too, but may start later).
    idem_store::cells::register(store.pool(), &["acme.payout".to_owned()], "idem-lab demo").await?;

    let faults = FaultRates {
        drop_after_effect: args.drop_after_effect,
        fail_before: args.fail_before,
        fail_after: args.fail_after,
        rate_limit: args.rate_limit,
        ..FaultRates::default()
    };
    // Slack's and Twilio's histories lag 200 ms; lookups trust a miss after 1 s.
    let partners = Partners::start(Knobs {
        seed: args.seed,
        faults,
        history_lag: Duration::from_millis(200),
        search_lag: Duration::ZERO,
        key_retention: None,
    })
    .await?;
    let registry = || partners.registry(fast_timings, Duration::from_secs(1));
    let worker_config = |i: usize| WorkerConfig {
        id: format!("demo-worker-{i}"),
        concurrency: args.concurrency,
        batch: 64,
        poll_interval: Duration::from_millis(100),
        sweep_interval: Duration::from_millis(200),
        claim_outbox: true,
        approval_ttl: Duration::from_secs(3600),
        ..WorkerConfig::default()
    };

    // Workers (and on Kafka the relay) first, so the run overlaps enqueueing like a live
    // system.
    let transport = Transport::new(&args.transport, args.bootstrap.clone(), "demo").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let relay = transport.relay(&store, &url, stop_rx.clone())?;
    let mut workers = vec![];
    for i in 0..args.workers.max(1) {
        let w = Worker::new(store.clone(), registry()?, worker_config(i));
        workers.push(transport.spawn(w, stop_rx.clone()));
    }

    // Agents: each action inside an application transaction, in groups; some enqueued
    // twice (a retried tool call), some re-planned from the same intent.
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed);
    let mut ids = vec![];
    let mut calls = 0;
    let mut suppressed = 0;
    for chunk in (0..args.actions).collect::<Vec<_>>().chunks(50) {
        let mut tx = store.pool().begin().await?;
        for &i in chunk {
            let (cell, args_json) = workload::action(i, &mut rng, &partners)?;
            let action = NewAction::from_intent(
                "demo-agents",
                format!("turn-{i}"),
                cell.clone(),
                args_json.clone(),
            );
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
                let replanned = NewAction::from_intent(
                    "demo-agents",
                    format!("turn-{i}"),
                    cell.clone(),
                    args_json,
                );
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
        let settled = idem_store::audit::settled_count(store.pool()).await?;
        bar.set_position(settled as u64);
        if !args.no_kill && !killed && settled as usize >= ids.len() / 4 {
            // Kill a worker mid-flight: its in-flight calls are abandoned with their leases
            // held; another worker's sweeper must settle them. Then restart it.
            workers[0].abort();
            let _ = (&mut workers[0]).await;
            bar.set_message("worker 0 killed mid-flight, restarting");
            tokio::time::sleep(Duration::from_millis(300)).await;
            let w = Worker::new(store.clone(), registry()?, worker_config(100));
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

    let read_only: Vec<String> = registry()?
        .iter()
        .filter(|c| !c.effectful())
        .map(|c| c.name().to_string())
        .collect();
    let verdict = checker::check(&store, &partners.ledger(), &read_only, ids.len()).await?;
    let mut report = Report {
        transport: args.transport.clone(),
        broker: transport.broker(),
        verdict,
        enqueue_calls: calls,
        enqueue_duplicates_suppressed: suppressed,
        worker_killed: killed,
        elapsed_ms: started.elapsed().as_millis() as u64,
        faults,
        metrics: String::new(),
    };
    idem_telemetry::metrics::observe_fleet(idem_store::stats::fleet(store.pool()).await?);
    report.metrics = metrics.render();
    let ok = report.verdict.holds() && report.verdict.unsettled == 0;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ok)
}

fn print_table(r: &Report) {
    let v = &r.verdict;
    println!(
        "idem-lab demo ({} transport): {} actions, {} enqueue calls ({} duplicates suppressed at enqueue), worker killed mid-flight: {}",
        r.transport, v.actions, r.enqueue_calls, r.enqueue_duplicates_suppressed, r.worker_killed
    );
    println!(
        "faults: {:.0}% lost responses after effect, {:.0}% 5xx before, {:.0}% 5xx after, {:.0}% 429",
        r.faults.drop_after_effect * 100.0,
        r.faults.fail_before * 100.0,
        r.faults.fail_after * 100.0,
        r.faults.rate_limit * 100.0
    );
    println!();
    checker::print_cells(v);
    println!();
    println!(
        "total: {} actions, {} effects, {} duplicates, {} lost, {} needs_human ({:.1}s)",
        v.actions,
        v.effects,
        v.duplicates,
        v.lost,
        v.needs_human,
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
