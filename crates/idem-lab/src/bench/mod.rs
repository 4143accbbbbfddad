//! `idem-lab bench`: figures with the baselines they are compared to, measured in the same run.

mod cpu;
mod enqueue;
mod inbox_scale;
mod kafka_path;
mod latency;
mod peers;
mod pg_worker;
mod recovery;
mod scaling;
mod stores;
mod suite;

pub use enqueue::{enqueue_bench, EnqueueBenchArgs};
pub use inbox_scale::{inbox_scale, InboxScaleArgs};
pub use kafka_path::{kafka_path, KafkaPathArgs};
pub use latency::{latency, LatencyArgs};
pub use peers::{peers, PeersArgs};
pub use pg_worker::{pg_worker, PgWorkerBenchArgs};
pub use recovery::{recovery, RecoveryArgs};
pub use scaling::{scaling, ScalingArgs};
pub use stores::{stores_bench, StoresBenchArgs};
pub use suite::{suite, SuiteArgs};

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use idem_store::Store;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// PostgreSQL server; the benchmark (re)creates its own database `idem_bench` there.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Kafka bootstrap; without it the benchmark starts a one-node Apache Kafka of its own.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Outbox rows to drain.
    #[arg(long, default_value_t = 100_000)]
    rows: i64,
    /// Rows per relay batch (and per baseline DELETE).
    #[arg(long, default_value_t = 1000)]
    batch: i64,
}

/// One figure, with the baseline it is compared to in the same run (`null` for a curve
/// point that has none, such as a latency at one offered load).
#[derive(Debug, Serialize)]
pub struct Figure {
    name: String,
    value: f64,
    unit: String,
    baseline: Option<String>,
    baseline_value: Option<f64>,
    ratio: Option<f64>,
}

impl Figure {
    fn versus(name: String, value: f64, unit: &str, baseline: String, baseline_value: f64) -> Self {
        Self {
            name,
            value,
            unit: unit.into(),
            baseline: Some(baseline),
            baseline_value: Some(baseline_value),
            ratio: Some(value / baseline_value),
        }
    }

    fn alone(name: String, value: f64, unit: &str) -> Self {
        Self {
            name,
            value,
            unit: unit.into(),
            baseline: None,
            baseline_value: None,
            ratio: None,
        }
    }
}

/// A Stripe simulator that holds every request `ms` before answering (and succeeding).
fn slow_stripe(ms: u64) -> idem_sim::StripeSim {
    idem_sim::StripeSim::new(idem_sim::StripeSimConfig {
        faults: idem_sim::FaultRates {
            delay: 1.0,
            delay_ms: ms,
            ..idem_sim::FaultRates::default()
        },
        ..idem_sim::StripeSimConfig::default()
    })
}

/// An `idem worker` process for a benchmark: direct Postgres transport, the Stripe
/// simulator at `stripe`, quiet, killed when dropped; `extra` flags go last.
fn worker_process(
    exe: &std::path::Path,
    url: &str,
    stripe: &str,
    concurrency: usize,
    id: &str,
    extra: &[String],
) -> Result<tokio::process::Child> {
    Ok(tokio::process::Command::new(exe)
        .args(["worker", "--database-url", url, "--stripe-base", stripe])
        .args(["--concurrency", &concurrency.to_string()])
        .args(["--poll-interval-ms", "50", "--id", id])
        .args(extra)
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?)
}

async fn preload(store: &Store, rows: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO idem.outbox (action_id, ordering_key, payload) \
         SELECT id, id::text, convert_to(jsonb_build_object('v', 1, 'action_id', id, 'cell', 'stripe.charge', \
                'args', jsonb_build_object('amount', g, 'currency', 'usd'), 'ordering_key', id::text)::text, 'UTF8') \
         FROM (SELECT gen_random_uuid() AS id, g FROM generate_series(1, $1) g) s",
    )
    .bind(rows)
    .execute(store.pool())
    .await?;
    sqlx::query("VACUUM ANALYZE idem.outbox")
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Enqueue `n` no-op actions through `idem.enqueue`, then analyze the tables, as a
/// deployment's are (the baselines get the same).
async fn enqueue_noop(store: &Store, n: i64) -> Result<()> {
    sqlx::query(
        "SELECT idem.enqueue(gen_random_uuid(), 'bench.noop', jsonb_build_object('n', g)) \
         FROM generate_series(1, $1) g",
    )
    .bind(n)
    .execute(store.pool())
    .await?;
    sqlx::query("VACUUM ANALYZE idem.actions, idem.outbox, idem.attempts, idem.transition_log")
        .execute(store.pool())
        .await?;
    Ok(())
}

fn rate(rows: i64, d: Duration) -> f64 {
    rows as f64 / d.as_secs_f64()
}

pub async fn relay(args: BenchArgs) -> Result<Vec<Figure>> {
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let url = crate::demo::fresh_database(pg.url(), "idem_bench").await?;
    let store = Store::connect(&url, 8).await?;
    store.migrate().await?;
    let broker = crate::services::Kafka::given_or_started(args.bootstrap.clone(), 1, None).await?;
    let bootstrap = broker.bootstrap().to_owned();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let mut kafka = idem_kafka::KafkaConfig::new(&bootstrap);

    // Baseline 1: the raw Postgres drain of the same rows.
    preload(&store, args.rows).await?;
    let t = Instant::now();
    loop {
        let n = sqlx::query(
            "DELETE FROM idem.outbox WHERE seq IN (SELECT seq FROM idem.outbox ORDER BY seq LIMIT $1) RETURNING payload",
        )
        .bind(args.batch)
        .fetch_all(store.pool())
        .await?
        .len();
        if n == 0 {
            break;
        }
    }
    let raw_pg = t.elapsed();

    // Baseline 2: raw rdkafka produce of the same payloads (idempotent, acks=all).
    preload(&store, args.rows).await?;
    let payloads: Vec<(String, Vec<u8>)> =
        sqlx::query_as("SELECT ordering_key, payload FROM idem.outbox ORDER BY seq")
            .fetch_all(store.pool())
            .await?;
    let raw_topic = format!("idem.bench.raw.{run}");
    kafka.routing = idem_kafka::TopicRouting::Single(raw_topic.clone());
    idem_kafka::topics::ensure(&kafka, std::slice::from_ref(&raw_topic)).await?;
    let producer: FutureProducer = kafka
        .client()
        .set("enable.idempotence", "true")
        .set("acks", "all")
        // The relay's own linger, so the ratio compares like with like.
        .set(
            "linger.ms",
            idem_relay::RelayConfig::default()
                .linger
                .as_millis()
                .to_string(),
        )
        .create()?;
    let t = Instant::now();
    for chunk in payloads.chunks(args.batch as usize) {
        let mut pending = Vec::with_capacity(chunk.len());
        for (key, payload) in chunk {
            let record = FutureRecord::to(&raw_topic)
                .key(key.as_str())
                .payload(payload.as_slice());
            pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
        }
        for f in pending {
            f.await?.map_err(|(e, _)| e)?;
        }
    }
    let raw_kafka = t.elapsed();

    // The relay: read in order, produce, await acks, delete the acknowledged rows.
    let relay_topic = format!("idem.bench.relay.{run}");
    kafka.routing = idem_kafka::TopicRouting::Single(relay_topic);
    let relay = idem_relay::Relay::new(
        store.clone(),
        &url,
        kafka,
        idem_relay::RelayConfig {
            batch: args.batch,
            pause_after_ack: None,
            ..Default::default()
        },
    )?;
    let t = Instant::now();
    while relay.drain_once().await? > 0 {}
    let relayed = t.elapsed();

    let value = rate(args.rows, relayed);
    Ok(vec![
        Figure::versus(
            format!("relay drain of {} outbox rows", args.rows),
            value,
            "rows/s",
            format!(
                "raw Postgres batched DELETE … RETURNING ({} rows a batch)",
                args.batch
            ),
            rate(args.rows, raw_pg),
        ),
        Figure::versus(
            format!("relay drain of {} outbox rows", args.rows),
            value,
            "rows/s",
            "raw rdkafka produce of the same payloads (idempotent, acks=all)".into(),
            rate(args.rows, raw_kafka),
        ),
    ])
}

#[derive(Args, Debug)]
pub struct WorkerBenchArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Actions (messages) to process.
    #[arg(long, default_value_t = 5_000)]
    actions: i64,
    /// Messages a partition lane takes per batch (1 = strict per-key order).
    #[arg(long, default_value_t = 1)]
    per_partition_batch: usize,
}

/// Kafka worker throughput with the no-op cell vs a naive at-least-once consumer
/// (consume, call, commit) reading the same topic.
pub async fn kafka_worker(args: WorkerBenchArgs) -> Result<Vec<Figure>> {
    use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
    use rdkafka::Message;

    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let url = crate::demo::fresh_database(pg.url(), "idem_bench").await?;
    let store = Store::connect(&url, 16).await?;
    store.migrate().await?;
    let broker = crate::services::Kafka::given_or_started(args.bootstrap.clone(), 1, None).await?;
    let bootstrap = broker.bootstrap().to_owned();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("idem.bench.worker.{run}");
    let mut kafka = idem_kafka::KafkaConfig::new(&bootstrap);
    kafka.routing = idem_kafka::TopicRouting::Single(topic.clone());
    kafka.partitions = 6;
    // N real actions through enqueue, published by the relay.
    sqlx::query(
        "SELECT idem.enqueue(gen_random_uuid(), 'bench.noop', jsonb_build_object('n', g)) FROM generate_series(1, $1) g",
    )
    .bind(args.actions)
    .execute(store.pool())
    .await?;
    let relay = idem_relay::Relay::new(
        store.clone(),
        &url,
        kafka.clone(),
        idem_relay::RelayConfig {
            batch: 1000,
            pause_after_ack: None,
            ..Default::default()
        },
    )?;
    while relay.drain_once().await? > 0 {}

    // Baseline: naive at-least-once consumer: consume, call (no-op), commit each message.
    // Read twice, each time as a new group, timing the second: a broker the bench has just
    // started commits offsets several times slower until its JVM is warm (measured: a
    // first read at 2,700-3,400 messages/s, later ones at 10,000-11,000), which flattered
    // idem, timed afterwards.
    let mut naive_time = Duration::ZERO;
    for pass in ["warm", "timed"] {
        let naive: StreamConsumer = kafka
            .client()
            .set("group.id", format!("naive-{pass}-{run}"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()?;
        naive.subscribe(&[topic.as_str()])?;
        let mut seen = 0i64;
        let mut t_naive = None;
        // Timed from the first message, like idem's side, so group-join time is excluded.
        // The commit is synchronous: per-message async commits overran tansu's group
        // coordinator.
        while seen < args.actions {
            let m = naive.recv().await?;
            t_naive.get_or_insert_with(Instant::now);
            std::hint::black_box(m.payload());
            naive.commit_message(&m, CommitMode::Sync)?;
            seen += 1;
        }
        naive_time = t_naive.map(|t| t.elapsed()).unwrap_or_default();
    }

    // idem's Kafka worker with the no-op cell, timed from its first settled action.
    let worker = noop_kafka_worker(&store);
    let mut tconf = idem_kafka::TransportConfig::new(format!("idem-{run}"), vec![topic.clone()]);
    tconf.per_partition_batch = args.per_partition_batch.max(1);
    let transport = idem_kafka::KafkaTransport::new(worker, kafka, tconf);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { transport.run(stop_rx).await });
    let mut first: Option<Instant> = None;
    loop {
        let (done,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'succeeded'")
                .fetch_one(store.pool())
                .await?;
        if done > 0 && first.is_none() {
            first = Some(Instant::now());
        }
        if done >= args.actions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idem_time = first.map(|t| t.elapsed()).unwrap_or_default();
    let _ = stop_tx.send(true);
    let _ = running.await;
    let value = rate(args.actions, idem_time);
    let base = rate(args.actions, naive_time);
    Ok(vec![Figure::versus(
        format!(
            "Kafka worker throughput, no-op cell, {} actions, per-partition batch {}",
            args.actions, args.per_partition_batch
        ),
        value,
        "actions/s",
        "naive at-least-once consumer on the same topic (consume, no-op call, commit)".into(),
        base,
    )])
}

/// idem's worker for the Kafka benchmarks: the no-op cell, outbox claims off (the relay
/// drains the outbox), default settings otherwise.
fn noop_kafka_worker(store: &Store) -> idem_worker::Worker {
    idem_worker::Worker::new(
        store.clone(),
        idem_cells::Registry::new().with(idem_cells::noop::Noop::default()),
        idem_worker::WorkerConfig {
            claim_outbox: false,
            ..Default::default()
        },
    )
}
