//! `idem-lab bench latency`: end-to-end latency from enqueue commit to the partner call at
//! fixed offered loads (open loop: arrivals do not wait for earlier actions), on either
//! transport, with the no-op cell so idem's own path is what is measured.
//!
//! Enqueue time is the action's `created_at` (its transaction's start, just before the
//! commit); call time is the attempt's `started_at`, written ahead immediately before the
//! cell is called. Both come from this machine's clock.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use idem_cells::{noop::Noop, Registry};
use idem_core::{ActionId, CellName};
use idem_store::{enqueue, NewAction, Store};
use idem_worker::{Worker, WorkerConfig};
use serde_json::json;
use tokio::task::JoinSet;

use super::Figure;
use crate::demo::Transport;

#[derive(Args, Debug)]
pub struct LatencyArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Kafka bootstrap for `--transport kafka`; without it a one-node Apache Kafka is started.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    bootstrap: Option<String>,
    #[arg(long, default_value = "postgres", value_parser = ["postgres", "kafka"])]
    transport: String,
    /// Offered loads in actions per second, one run each.
    #[arg(long, value_delimiter = ',', default_value = "50,200,500")]
    rates: Vec<u32>,
    /// Seconds of offered load per rate.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

/// One point of the curve.
struct Point {
    offered: u32,
    achieved: f64,
    p50_ms: f64,
    p99_ms: f64,
}

pub async fn latency(args: LatencyArgs) -> Result<Vec<Figure>> {
    // One broker for all points.
    // One PostgreSQL and one broker for all points.
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let kafka = if args.transport == "kafka" {
        Some(crate::services::Kafka::given_or_started(args.bootstrap.clone(), 1, None).await?)
    } else {
        None
    };
    let bootstrap = kafka.as_ref().map(|k| k.bootstrap().to_owned());
    let mut figures = vec![];
    for &rate in &args.rates {
        if rate == 0 {
            bail!("--rates: an offered load must be at least 1 action/s");
        }
        let p = point(&args, pg.url(), bootstrap.clone(), rate).await?;
        let label = format!(
            "{} transport at {} actions/s offered",
            args.transport, p.offered
        );
        figures.push(Figure::alone(
            format!("end-to-end latency p50, enqueue → partner call, {label}"),
            p.p50_ms,
            "ms",
        ));
        figures.push(Figure::alone(
            format!("end-to-end latency p99, enqueue → partner call, {label}"),
            p.p99_ms,
            "ms",
        ));
        figures.push(Figure::versus(
            format!("throughput kept up, {label}"),
            p.achieved,
            "actions/s",
            "offered load".into(),
            p.offered as f64,
        ));
    }
    Ok(figures)
}

async fn point(
    args: &LatencyArgs,
    server_url: &str,
    bootstrap: Option<String>,
    rate: u32,
) -> Result<Point> {
    let url = crate::demo::fresh_database(server_url, "idem_bench").await?;
    let store = Store::connect(&url, 24).await?;
    store.migrate().await?;
    let transport = Transport::new(&args.transport, bootstrap, "bench.latency").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let relay = transport.relay(&store, &url, stop_rx.clone())?;
    let worker = Worker::new(
        store.clone(),
        Registry::new().with(Noop::default()),
        WorkerConfig {
            id: format!("bench-latency-{rate}"),
            poll_interval: Duration::from_millis(100),
            ..Default::default()
        },
    );
    let running = transport.spawn(worker, stop_rx);
    let cell = CellName::new("bench.noop")?;

    // Warm-up: one action through the whole path (group join, topic metadata), not counted.
    let warm = NewAction::new(ActionId::random(), cell.clone(), json!({"warmup": true}));
    enqueue(store.pool(), &warm).await?;
    if idem_store::inbox::await_settled(store.pool(), warm.action_id, Duration::from_secs(60))
        .await?
        .is_none()
    {
        bail!("the warm-up action did not settle within 60 s; is the transport running?");
    }

    // Open loop: one arrival every 1/rate s, each enqueued in its own task.
    let n = rate as u64 * args.seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut enqueues = JoinSet::new();
    let started = Instant::now();
    for i in 0..n {
        ticker.tick().await;
        let store = store.clone();
        let a = NewAction::new(ActionId::random(), cell.clone(), json!({ "i": i }));
        enqueues.spawn(async move { enqueue(store.pool(), &a).await });
    }
    while let Some(r) = enqueues.join_next().await {
        r??;
    }
    let deadline = Instant::now() + Duration::from_secs(120 + args.seconds);
    loop {
        let (done,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM idem.actions WHERE state = 'succeeded' AND NOT args ? 'warmup'",
        )
        .fetch_one(store.pool())
        .await?;
        if done as u64 >= n {
            break;
        }
        if Instant::now() > deadline {
            bail!("only {done} of {n} actions settled at {rate}/s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let elapsed = started.elapsed();
    let (p50, p99): (f64, f64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms), \
                percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) \
         FROM (SELECT extract(epoch FROM (t.started_at - a.created_at)) * 1000 AS ms \
               FROM idem.actions a JOIN idem.attempts t \
                 ON t.action_id = a.action_id AND t.number = 1 \
               WHERE NOT a.args ? 'warmup') s",
    )
    .fetch_one(store.pool())
    .await?;
    let _ = stop_tx.send(true);
    let _ = running.await;
    if let Some(r) = relay {
        let _ = r.await;
    }
    Ok(Point {
        offered: rate,
        achieved: n as f64 / elapsed.as_secs_f64(),
        p50_ms: p50,
        p99_ms: p99,
    })
}
