//! `idem-lab bench pg-worker`: the worker on the direct Postgres transport (claim from the
//! outbox, write the attempt ahead, call the no-op cell, settle) against a plain job queue
//! (`DELETE … WHERE id IN (SELECT … FOR UPDATE SKIP LOCKED LIMIT n) RETURNING`, no-op, commit).

use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use idem_store::Store;

use super::{rate, Figure};

#[derive(Args, Debug)]
pub struct PgWorkerBenchArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Actions (jobs) to process.
    #[arg(long, default_value_t = 20_000)]
    actions: i64,
    /// Rows claimed per transaction, by both sides.
    #[arg(long, default_value_t = 64)]
    batch: u32,
}

pub async fn pg_worker(args: PgWorkerBenchArgs) -> Result<Vec<Figure>> {
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let url = crate::demo::fresh_database(pg.url(), "idem_bench").await?;
    let store = Store::connect(&url, 16).await?;
    store.migrate().await?;

    // Baseline: a plain SKIP LOCKED job queue holding the same payloads. One drain takes
    // about a quarter of a second, and single drains gave from about 60,000 to 120,000
    // jobs/s on this machine from one run to the next: the median of three counts.
    sqlx::query("CREATE TABLE bench_jobs (id bigserial PRIMARY KEY, payload jsonb NOT NULL)")
        .execute(store.pool())
        .await?;
    let mut drains = Vec::with_capacity(BASELINE_DRAINS);
    for _ in 0..BASELINE_DRAINS {
        drains.push(raw_drain(&store, args.actions, args.batch).await?);
    }
    drains.sort_by_key(|r| r.elapsed);
    let baseline = drains[drains.len() / 2];

    // idem: the same number of actions through enqueue, then the worker.
    let idem = idem_noop_run(&store, args.actions, args.batch, 32).await?;
    let mut figures = vec![Figure::versus(
        format!(
            "worker throughput, direct Postgres transport, no-op cell, {} actions, batch {}",
            args.actions, args.batch
        ),
        rate(args.actions, idem.elapsed),
        "actions/s",
        format!(
            "plain SKIP LOCKED job claim + delete of the same payloads ({} a batch, median of {BASELINE_DRAINS} drains)",
            args.batch
        ),
        rate(args.actions, baseline.elapsed),
    )];
    if let (Some(mine), Some(theirs)) = (
        idem.cpu_ms_per(args.actions),
        baseline.cpu_ms_per(args.actions),
    ) {
        figures.push(Figure::versus(
            format!(
                "CPU per action, machine-wide (PostgreSQL + worker), direct Postgres transport, no-op cell, {} actions",
                args.actions
            ),
            mine,
            "ms/action",
            format!(
                "the plain SKIP LOCKED job queue's CPU per job ({} a batch)",
                args.batch
            ),
            theirs,
        ));
    }
    Ok(figures)
}

/// Drains of the plain queue timed; the median is the baseline.
const BASELINE_DRAINS: usize = 3;

/// Fill the plain queue with `jobs` payloads and time one consumer draining it, `batch` a
/// transaction.
async fn raw_drain(store: &Store, jobs: i64, batch: u32) -> Result<Run> {
    sqlx::query(
        "INSERT INTO bench_jobs (payload) SELECT jsonb_build_object('cell', 'bench.noop', 'args', jsonb_build_object('n', g)) \
         FROM generate_series(1, $1) g",
    )
    .bind(jobs)
    .execute(store.pool())
    .await?;
    sqlx::query("VACUUM ANALYZE bench_jobs")
        .execute(store.pool())
        .await?;
    let cpu = super::cpu::MachineCpu::now();
    let t = Instant::now();
    loop {
        let mut tx = store.pool().begin().await?;
        let rows: Vec<(serde_json::Value,)> = sqlx::query_as(
            "DELETE FROM bench_jobs WHERE id IN \
             (SELECT id FROM bench_jobs ORDER BY id FOR UPDATE SKIP LOCKED LIMIT $1) RETURNING payload",
        )
        .bind(i64::from(batch))
        .fetch_all(&mut *tx)
        .await?;
        for r in &rows {
            std::hint::black_box(&r.0);
        }
        tx.commit().await?;
        if rows.is_empty() {
            break;
        }
    }
    Ok(Run {
        elapsed: t.elapsed(),
        cpu: cpu.and_then(|c| c.since()).map(|(busy, _)| busy),
    })
}

/// What one timed run took: wall time, and the machine's busy CPU time meanwhile
/// (PostgreSQL, the worker, everything; None off Linux).
#[derive(Debug, Clone, Copy)]
pub(super) struct Run {
    pub elapsed: Duration,
    pub cpu: Option<Duration>,
}

impl Run {
    /// Busy CPU milliseconds per item processed.
    pub fn cpu_ms_per(&self, items: i64) -> Option<f64> {
        self.cpu
            .map(|c| c.as_secs_f64() * 1000.0 / items.max(1) as f64)
    }
}

/// Enqueue `actions` no-op actions, then time one direct-Postgres worker (`in_flight` calls
/// at once, `batch` claimed per transaction) until every one has settled. Used by the peer
/// comparison too, so both measure the same thing.
pub(super) async fn idem_noop_run(
    store: &Store,
    actions: i64,
    batch: u32,
    in_flight: usize,
) -> Result<Run> {
    super::enqueue_noop(store, actions).await?;
    let worker = idem_worker::Worker::new(
        store.clone(),
        idem_cells::Registry::new().with(idem_cells::noop::Noop::default()),
        idem_worker::WorkerConfig {
            batch,
            concurrency: in_flight,
            poll_interval: Duration::from_millis(20),
            ..Default::default()
        },
    );
    // Count settlements from their notifications rather than scanning the table while the
    // worker runs (a count(*) every 50 ms took ~10 % of this 2-core machine); the scan
    // confirms once the notifications say every action has settled.
    let mut listener = sqlx::postgres::PgListener::connect_with(store.pool()).await?;
    listener.listen("idem_settled").await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let cpu = super::cpu::MachineCpu::now();
    let t = Instant::now();
    let running = tokio::spawn(async move { worker.run(stop_rx).await });
    let mut settled = 0i64;
    loop {
        if settled >= actions {
            let (open,): (i64,) = sqlx::query_as(
                "SELECT count(*) FROM idem.actions WHERE state NOT IN ('succeeded','failed','dead')",
            )
            .fetch_one(store.pool())
            .await?;
            if open == 0 {
                break;
            }
        }
        match tokio::time::timeout(Duration::from_secs(1), listener.recv()).await {
            Ok(Ok(_)) => settled += 1,
            // The listening connection dropped (it reconnects on the next call), or a
            // quiet second: count from the table instead.
            Ok(Err(_)) | Err(_) => {
                let (done,): (i64,) = sqlx::query_as(
                    "SELECT count(*) FROM idem.actions WHERE state IN ('succeeded','failed','dead')",
                )
                .fetch_one(store.pool())
                .await?;
                settled = done;
            }
        }
    }
    let elapsed = t.elapsed();
    let cpu = cpu.and_then(|c| c.since()).map(|(busy, _)| busy);
    let _ = stop_tx.send(true);
    let _ = running.await;
    Ok(Run { elapsed, cpu })
}
