//! `idem-lab bench enqueue`: the price of writing an action inside the application's own
//! transaction, against a plain INSERT of the same row in the same transaction.

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use idem_core::CellName;
use idem_store::{enqueue, NewAction, Store};

use super::Figure;

#[derive(Args, Debug)]
pub struct EnqueueBenchArgs {
    /// PostgreSQL server; the benchmark (re)creates its own database `idem_bench` there.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Application transactions per round (each writes one order and one action).
    #[arg(long, default_value_t = 5_000)]
    transactions: usize,
    /// Concurrent application connections.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Rounds of each, interleaved (baseline, idem, baseline, …); the median round counts.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

/// How the action is written next to the order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    /// `INSERT INTO bench_plain (…)`: the same columns, no outbox, no inbox, no checks.
    Plain,
    /// `idem_store::enqueue`: the inbox row, the outbox row, the conflict check, NOTIFY.
    Idem,
}

async fn notify(store: &Store, on: bool) -> Result<()> {
    sqlx::query("UPDATE idem.settings SET notify_on_enqueue = $1")
        .bind(on)
        .execute(store.pool())
        .await?;
    Ok(())
}

async fn round(store: &Store, writer: Writer, n: usize, concurrency: usize) -> Result<Duration> {
    let cell = CellName::new("stripe.charge").expect("valid");
    let per_task = n.div_ceil(concurrency);
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (store, cell) = (store.clone(), cell.clone());
        set.spawn(async move {
            for _ in 0..per_task {
                let id = uuid::Uuid::new_v4();
                let args =
                    serde_json::json!({"amount": 4200, "currency": "usd", "customer": "cus_bench"});
                let mut tx = store.pool().begin().await?;
                sqlx::query("INSERT INTO bench_orders (id, amount) VALUES ($1, 4200)")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                match writer {
                    Writer::Plain => {
                        sqlx::query(
                            "INSERT INTO bench_plain (action_id, cell, args) VALUES ($1, $2, $3)",
                        )
                        .bind(id)
                        .bind(cell.as_str())
                        .bind(&args)
                        .execute(&mut *tx)
                        .await?;
                    }
                    Writer::Idem => {
                        let action = NewAction::new(id.into(), cell.clone(), args);
                        enqueue(&mut *tx, &action).await?;
                    }
                }
                tx.commit().await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(t.elapsed())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub async fn enqueue_bench(args: EnqueueBenchArgs) -> Result<Vec<Figure>> {
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let url = crate::demo::fresh_database(pg.url(), "idem_bench").await?;
    let store = Store::connect(&url, (args.concurrency + 2) as u32).await?;
    store.migrate().await?;
    sqlx::query("CREATE TABLE bench_orders (id uuid PRIMARY KEY, amount int NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        .execute(store.pool())
        .await?;
    sqlx::query("CREATE TABLE bench_plain (action_id uuid PRIMARY KEY, cell text NOT NULL, args jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())")
        .execute(store.pool())
        .await?;
    // Warm both paths (connections, prepared statements, the enqueue function).
    round(&store, Writer::Plain, 200, args.concurrency).await?;
    round(&store, Writer::Idem, 200, args.concurrency).await?;
    let (mut plain, mut idem, mut quiet) = (vec![], vec![], vec![]);
    for _ in 0..args.rounds.max(1) {
        plain.push(round(&store, Writer::Plain, args.transactions, args.concurrency).await?);
        notify(&store, true).await?;
        idem.push(round(&store, Writer::Idem, args.transactions, args.concurrency).await?);
        notify(&store, false).await?;
        quiet.push(round(&store, Writer::Idem, args.transactions, args.concurrency).await?);
    }
    notify(&store, true).await?;
    let n = args.transactions.div_ceil(args.concurrency) * args.concurrency;
    let tps = |d: Duration| n as f64 / d.as_secs_f64();
    let baseline = tps(median(plain));
    let versus = |what: &str, d: Vec<Duration>| {
        Figure::versus(
            format!(
                "enqueue inside an application transaction, {what} ({} connections)",
                args.concurrency
            ),
            tps(median(d)),
            "transactions/s",
            "the same transaction with a plain INSERT of the same row instead of enqueue".into(),
            baseline,
        )
    };
    Ok(vec![
        versus("NOTIFY on (default)", idem),
        versus("notify_on_enqueue = false", quiet),
    ])
}
