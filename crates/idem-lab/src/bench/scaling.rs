//! `idem-lab bench scaling`: throughput against the number of `idem worker` processes (direct
//! Postgres transport) when every partner call takes 20 ms, compared with the linear ideal
//! (N × what one process achieved in the same run).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use idem_sim::SimServer;
use idem_store::Store;

use super::{rate, Figure};

#[derive(Args, Debug)]
pub struct ScalingArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Worker process counts, one round each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    processes: Vec<usize>,
    /// Actions per worker process in a round.
    #[arg(long, default_value_t = 1500)]
    actions_per_process: i64,
    /// Partner calls in flight per process.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long every partner call takes (ms).
    #[arg(long, default_value_t = 20)]
    partner_ms: u64,
}

pub async fn scaling(args: ScalingArgs) -> Result<Vec<Figure>> {
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let url = crate::demo::fresh_database(pg.url(), "idem_bench").await?;
    let store = Store::connect(&url, 8).await?;
    store.migrate().await?;
    // Every request is held for partner_ms, then succeeds.
    let sim = super::slow_stripe(args.partner_ms);
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into()).await?;
    let exe = crate::idem_binary()?;

    let mut figures = vec![];
    let mut one = None;
    for &n in &args.processes {
        if n == 0 {
            bail!("--processes: counts start at 1");
        }
        sqlx::query(
            "TRUNCATE idem.actions, idem.outbox, idem.attempts, idem.transition_log CASCADE",
        )
        .execute(store.pool())
        .await?;
        let mut children = vec![];
        for i in 0..n {
            children.push(super::worker_process(
                &exe,
                &url,
                &server.base_url(),
                args.concurrency,
                &format!("scale-{n}-{i}"),
                &[],
            )?);
        }
        // Let every process connect and LISTEN before the work arrives.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let actions = args.actions_per_process * n as i64;
        let t = Instant::now();
        sqlx::query(
            "SELECT idem.enqueue(gen_random_uuid(), 'stripe.charge', \
             jsonb_build_object('amount', 100 + g, 'currency', 'usd', 'customer', 'cus_scale')) \
             FROM generate_series(1, $1) g",
        )
        .bind(actions)
        .execute(store.pool())
        .await?;
        loop {
            let (open,): (i64,) =
                sqlx::query_as("SELECT count(*) FROM idem.actions WHERE settled_at IS NULL")
                    .fetch_one(store.pool())
                    .await?;
            if open == 0 {
                break;
            }
            if t.elapsed() > Duration::from_secs(600) {
                bail!("{n} processes: {open} actions still open after 600 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let took = t.elapsed();
        for mut c in children {
            let _ = c.kill().await;
        }
        let (ok,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'succeeded'")
                .fetch_one(store.pool())
                .await?;
        if ok != actions {
            bail!("{n} processes: {ok} of {actions} actions succeeded");
        }
        let value = rate(actions, took);
        let single = *one.get_or_insert(value / n as f64);
        figures.push(Figure::versus(
            format!(
                "throughput, {n} worker process(es), direct Postgres transport, {} ms partner, {} calls in flight each",
                args.partner_ms, args.concurrency
            ),
            value,
            "actions/s",
            format!("linear ideal: {n} × one process in this run"),
            single * n as f64,
        ));
    }
    drop(server);
    Ok(figures)
}
