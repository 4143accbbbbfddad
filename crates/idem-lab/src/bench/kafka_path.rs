//! `idem-lab bench kafka-path`: the whole Kafka path at once — actions enqueued up front,
//! then the relay publishing them while a consumer-group worker (no-op cell) takes them —
//! timed from the relay's start to the last action settled; against the Kafka worker alone on
//! the same, already-published topic (so the figure says whether the relay is the bottleneck).

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use idem_store::Store;

use super::{rate, Figure};

#[derive(Args, Debug)]
pub struct KafkaPathArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap: Option<String>,
    /// Actions through the path.
    #[arg(long, default_value_t = 20_000)]
    actions: i64,
    /// Messages a partition lane takes per batch (1 = strict per-key order).
    #[arg(long, default_value_t = 32)]
    per_partition_batch: usize,
}

/// Enqueue `actions` no-op actions into a fresh database; the store, its URL and the Kafka
/// settings with a topic of their own.
async fn setup(
    pg_url: &str,
    bootstrap: &str,
    actions: i64,
) -> Result<(Store, String, idem_kafka::KafkaConfig, String)> {
    let url = crate::demo::fresh_database(pg_url, "idem_bench").await?;
    let store = Store::connect(&url, 16).await?;
    store.migrate().await?;
    let topic = format!("idem.bench.path.{}", uuid::Uuid::new_v4().simple());
    let mut kafka = idem_kafka::KafkaConfig::new(bootstrap);
    kafka.routing = idem_kafka::TopicRouting::Single(topic.clone());
    kafka.partitions = 6;
    super::enqueue_noop(&store, actions).await?;
    Ok((store, url, kafka, topic))
}

/// Run the worker (and, with `relay`, the relay) until `actions` have succeeded; the time.
async fn run_path(
    store: &Store,
    url: &str,
    kafka: idem_kafka::KafkaConfig,
    topic: &str,
    actions: i64,
    per_partition_batch: usize,
    relay: bool,
) -> Result<Duration> {
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let worker = super::noop_kafka_worker(store);
    let group = format!("idem-{}", uuid::Uuid::new_v4().simple());
    let mut tconf = idem_kafka::TransportConfig::new(group, vec![topic.to_owned()]);
    tconf.per_partition_batch = per_partition_batch.max(1);
    let transport = idem_kafka::KafkaTransport::new(worker, kafka.clone(), tconf);
    let t = Instant::now();
    let relay_task = if relay {
        let r = idem_relay::Relay::new(
            store.clone(),
            url,
            kafka,
            idem_relay::RelayConfig::default(),
        )?;
        let stop = stop_rx.clone();
        Some(tokio::spawn(async move { r.run(stop).await }))
    } else {
        None
    };
    let worker_task = tokio::spawn(async move { transport.run(stop_rx).await });
    loop {
        let (done,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'succeeded'")
                .fetch_one(store.pool())
                .await?;
        if done >= actions {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = t.elapsed();
    let _ = stop_tx.send(true);
    let _ = worker_task.await;
    if let Some(r) = relay_task {
        let _ = r.await;
    }
    Ok(elapsed)
}

pub async fn kafka_path(args: KafkaPathArgs) -> Result<Vec<Figure>> {
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let broker = crate::services::Kafka::given_or_started(args.bootstrap.clone(), 1, None).await?;

    // Baseline: the worker alone, on a topic the relay filled beforehand.
    let (store, url, kafka, topic) = setup(pg.url(), broker.bootstrap(), args.actions).await?;
    let relay = idem_relay::Relay::new(
        store.clone(),
        &url,
        kafka.clone(),
        idem_relay::RelayConfig::default(),
    )?;
    while relay.drain_once().await? > 0 {}
    let alone = run_path(
        &store,
        &url,
        kafka,
        &topic,
        args.actions,
        args.per_partition_batch,
        false,
    )
    .await?;
    store.pool().close().await;

    // The path: relay and worker at once, from a full outbox.
    let (store, url, kafka, topic) = setup(pg.url(), broker.bootstrap(), args.actions).await?;
    let path = run_path(
        &store,
        &url,
        kafka,
        &topic,
        args.actions,
        args.per_partition_batch,
        true,
    )
    .await?;
    Ok(vec![Figure::versus(
        format!(
            "Kafka path end to end (relay + broker + consumer-group worker at once), no-op cell, {} actions, per-partition batch {}",
            args.actions, args.per_partition_batch
        ),
        rate(args.actions, path),
        "actions/s",
        format!(
            "the Kafka worker alone on the same actions already published ({})",
            broker.broker()
        ),
        rate(args.actions, alone),
    )])
}
