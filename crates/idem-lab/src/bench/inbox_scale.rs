//! `idem-lab bench inbox-scale`: the inbox with millions of settled actions. A generator (not
//! the pipeline) fills `idem.actions` with settled rows, each with its attempt and two
//! transitions; a probe — fresh no-op actions through the real worker, status lookups of
//! random ids, sweeps — runs on the empty inbox (the baseline), on the full one, and again
//! while the retention purge deletes old rows in bounded batches beside it.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Args;
use idem_store::Store;
use serde::Serialize;

use super::Figure;

#[derive(Args, Debug)]
pub struct InboxScaleArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Settled actions to generate.
    #[arg(long, default_value_t = 10_000_000)]
    rows: i64,
    /// Fresh actions per probe.
    #[arg(long, default_value_t = 2_000)]
    probe: i64,
    /// Actions the retention purge deletes during the last probe (oldest first).
    #[arg(long, default_value_t = 100_000)]
    purge: i64,
    /// Actions per purge transaction.
    #[arg(long, default_value_t = 1_000)]
    purge_batch: i64,
    /// Use the `idem_scale` database an earlier run filled (no new fill, no empty-inbox
    /// baseline): the figures then stand without a ratio.
    #[arg(long)]
    reuse: bool,
}

/// One probe's figures (milliseconds).
#[derive(Debug, Clone, Copy, Serialize)]
struct Probe {
    settle_p50: f64,
    settle_p99: f64,
    throughput: f64,
    status_p50: f64,
    status_p99: f64,
    sweep_p50: f64,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// `n` fresh no-op actions through a real worker; status lookups and sweeps beside them.
async fn probe(store: &Store, n: i64) -> Result<Probe> {
    let worker = idem_worker::Worker::new(
        store.clone(),
        idem_cells::Registry::new().with(idem_cells::noop::Noop::default()),
        idem_worker::WorkerConfig {
            poll_interval: Duration::from_millis(20),
            ..Default::default()
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let runner = worker.clone();
    let running = tokio::spawn(async move { runner.run(stop_rx).await });
    let ids: Vec<(uuid::Uuid,)> = sqlx::query_as(
        "SELECT (idem.enqueue(gen_random_uuid(), 'bench.noop', jsonb_build_object('n', g))).action_id \
         FROM generate_series(1, $1) g",
    )
    .bind(n)
    .fetch_all(store.pool())
    .await?;
    let t = Instant::now();
    let mut status = vec![];
    let mut sweeps = vec![];
    loop {
        // Status of a random existing action (most of them old and settled), by id.
        for _ in 0..20 {
            let s = Instant::now();
            let _: Option<(String,)> = sqlx::query_as(
                "SELECT state FROM idem.action_status WHERE action_id = \
                 (SELECT action_id FROM idem.actions TABLESAMPLE SYSTEM_ROWS(1))",
            )
            .fetch_optional(store.pool())
            .await
            .or_else(|_| Ok::<_, sqlx::Error>(None))?;
            status.push(s.elapsed().as_secs_f64() * 1000.0);
        }
        let s = Instant::now();
        worker.sweep_once().await?;
        sweeps.push(s.elapsed().as_secs_f64() * 1000.0);
        let (open,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM idem.actions WHERE action_id = ANY($1) AND settled_at IS NULL",
        )
        .bind(ids.iter().map(|r| r.0).collect::<Vec<_>>())
        .fetch_one(store.pool())
        .await?;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let took = t.elapsed();
    let _ = stop_tx.send(true);
    let _ = running.await;
    let mut settle: Vec<f64> = sqlx::query_as::<_, (f64,)>(
        "SELECT (extract(epoch from (settled_at - created_at)) * 1000)::float8 \
         FROM idem.actions WHERE action_id = ANY($1)",
    )
    .bind(ids.iter().map(|r| r.0).collect::<Vec<_>>())
    .fetch_all(store.pool())
    .await?
    .into_iter()
    .map(|r| r.0)
    .collect();
    Ok(Probe {
        settle_p50: pct(&mut settle, 0.5),
        settle_p99: pct(&mut settle, 0.99),
        throughput: n as f64 / took.as_secs_f64(),
        status_p50: pct(&mut status, 0.5),
        status_p99: pct(&mut status, 0.99),
        sweep_p50: pct(&mut sweeps, 0.5),
    })
}

/// Settled actions, each with one attempt and two transitions, settled over the last 30
/// days; in chunks so no one statement holds too much.
async fn fill(store: &Store, rows: i64) -> Result<()> {
    const CHUNK: i64 = 500_000;
    let mut done = 0;
    while done < rows {
        let n = CHUNK.min(rows - done);
        let t = Instant::now();
        sqlx::query(
            "WITH ids AS ( \
                 SELECT gen_random_uuid() AS id, g, now() - (random() * interval '30 days') AS at \
                 FROM generate_series(1, $1) g), \
             a AS ( \
                 INSERT INTO idem.actions (action_id, cell, args, fingerprint, ordering_key, state, \
                     attempts, receipt, created_at, updated_at, settled_at) \
                 SELECT id, 'stripe.charge', \
                     jsonb_build_object('amount', 100 + g % 10000, 'currency', 'usd', 'customer', 'cus_' || g % 1000), \
                     sha256(convert_to(id::text, 'UTF8')), id::text, 'succeeded', 1, \
                     jsonb_build_object('partner_ref', 'pi_' || replace(id::text, '-', ''), 'status', 'succeeded'), \
                     at - interval '2 seconds', at, at \
                 FROM ids), \
             t AS ( \
                 INSERT INTO idem.attempts (action_id, number, key_generation, idem_key, request_fingerprint, \
                     rule, worker, started_at, finished_at, result) \
                 SELECT id, 1, 0, id::text, md5(id::text), 'first', 'gen', at - interval '1 second', at, 'success' \
                 FROM ids) \
             INSERT INTO idem.transition_log (action_id, from_state, to_state, event, actor, at) \
             SELECT id, f, s, e, 'gen', at FROM ids, \
                 (VALUES ('received', 'executing', 'claimed'), ('executing', 'succeeded', 'success')) v(f, s, e)",
        )
        .bind(n)
        .execute(store.pool())
        .await?;
        done += n;
        eprintln!(
            "  {done} / {rows} settled actions ({:.0} rows/s)",
            n as f64 / t.elapsed().as_secs_f64()
        );
    }
    sqlx::query("VACUUM ANALYZE idem.actions, idem.attempts, idem.transition_log")
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Bytes of the inbox tables with their indexes.
async fn size(store: &Store) -> Result<f64> {
    let (b,): (i64,) = sqlx::query_as(
        "SELECT (pg_total_relation_size('idem.actions') + pg_total_relation_size('idem.attempts') \
                 + pg_total_relation_size('idem.transition_log'))::bigint",
    )
    .fetch_one(store.pool())
    .await?;
    Ok(b as f64)
}

fn figures(label: &str, p: Probe, base: Probe) -> Vec<Figure> {
    let f = |what: &str, v: f64, b: f64, unit: &str| {
        Figure::versus(
            format!("inbox {label}: {what}"),
            v,
            unit,
            format!("{what}, empty inbox, same run"),
            b,
        )
    };
    vec![
        f(
            "enqueue→settled p50 (no-op cell)",
            p.settle_p50,
            base.settle_p50,
            "ms",
        ),
        f(
            "enqueue→settled p99 (no-op cell)",
            p.settle_p99,
            base.settle_p99,
            "ms",
        ),
        f(
            "worker throughput (no-op cell)",
            p.throughput,
            base.throughput,
            "actions/s",
        ),
        f(
            "status lookup by id p50",
            p.status_p50,
            base.status_p50,
            "ms",
        ),
        f(
            "status lookup by id p99",
            p.status_p99,
            base.status_p99,
            "ms",
        ),
        f("sweep p50", p.sweep_p50, base.sweep_p50, "ms"),
    ]
}

pub async fn inbox_scale(args: InboxScaleArgs) -> Result<Vec<Figure>> {
    if args.reuse {
        return reuse(args).await;
    }
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let url = crate::demo::fresh_database(pg.url(), "idem_scale").await?;
    let store = Store::connect(&url, 16).await?;
    store.migrate().await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS tsm_system_rows")
        .execute(store.pool())
        .await?;
    // The empty inbox: a few settled rows so random status lookups find something.
    fill(&store, 1_000).await?;
    let empty = probe(&store, args.probe).await?;
    eprintln!("empty inbox: {empty:?}");

    let t = Instant::now();
    fill(&store, args.rows).await?;
    let fill_secs = t.elapsed().as_secs_f64();
    let full_size = size(&store).await?;
    let full = probe(&store, args.probe).await?;
    eprintln!("{} settled actions: {full:?}", args.rows);

    // Retention beside the workers: bounded batches of the oldest rows.
    let purger = spawn_purge(&store, args.purge, args.purge_batch);
    let during = probe(&store, args.probe).await?;
    eprintln!("during purge: {during:?}");
    let (purged, purge_time) = purger.await??;
    eprintln!("during purge: {during:?}; purged {purged} in {purge_time:?}");
    sqlx::query("VACUUM ANALYZE idem.actions, idem.attempts, idem.transition_log")
        .execute(store.pool())
        .await?;
    let after_size = size(&store).await?;

    let mut out = figures(&format!("with {} settled actions", args.rows), full, empty);
    out.extend(figures("during a retention purge", during, empty));
    out.push(Figure::alone(
        format!(
            "generator: {} settled actions (1 attempt, 2 transitions each)",
            args.rows
        ),
        args.rows as f64 / fill_secs,
        "actions/s",
    ));
    out.push(Figure::alone(
        format!("inbox tables + indexes with {} settled actions", args.rows),
        full_size / 1e9,
        "GB",
    ));
    out.push(Figure::alone(
        format!(
            "retention purge beside a worker, {} per transaction",
            args.purge_batch
        ),
        purged as f64 / purge_time.as_secs_f64(),
        "actions/s",
    ));
    out.push(Figure::alone(
        "inbox tables + indexes after the purge and VACUUM (space kept for reuse)".into(),
        after_size / 1e9,
        "GB",
    ));
    Ok(out)
}

/// The retention purge of the oldest `n` settled actions, `batch` per transaction, beside
/// whatever else runs; how many it removed and how long that took.
fn spawn_purge(
    store: &Store,
    n: i64,
    batch: i64,
) -> tokio::task::JoinHandle<Result<(u64, Duration)>> {
    let pool = store.pool().clone();
    tokio::spawn(async move {
        let t = Instant::now();
        let mut done = 0u64;
        while (done as i64) < n {
            let got = idem_store::retention::purge_batch(&pool, Duration::ZERO, batch).await?;
            if got == 0 {
                break;
            }
            done += got;
        }
        Ok((done, t.elapsed()))
    })
}

/// Probe the inbox an earlier run filled, alone and beside a purge; no baseline.
async fn reuse(args: InboxScaleArgs) -> Result<Vec<Figure>> {
    use sqlx::ConnectOptions;
    let server = args.database_url.as_deref().context(
        "--reuse probes the inbox an earlier run filled: give its server's --database-url",
    )?;
    let opts: sqlx::postgres::PgConnectOptions = server.parse()?;
    let url = opts.database("idem_scale").to_url_lossy().to_string();
    let store = Store::connect(&url, 16).await?;
    let (settled,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM idem.actions WHERE settled_at IS NOT NULL")
            .fetch_one(store.pool())
            .await?;
    let size_before = size(&store).await?;
    let full = probe(&store, args.probe).await?;
    eprintln!("{settled} settled actions: {full:?}");
    let batch = args.purge_batch;
    let purger = spawn_purge(&store, args.purge, batch);
    let during = probe(&store, args.probe).await?;
    eprintln!("during purge: {during:?}");
    let (purged, took) = purger.await??;
    let alone = |label: &str, p: Probe| {
        [
            ("enqueue→settled p50 (no-op cell)", p.settle_p50, "ms"),
            ("enqueue→settled p99 (no-op cell)", p.settle_p99, "ms"),
            ("worker throughput (no-op cell)", p.throughput, "actions/s"),
            ("status lookup by id p50", p.status_p50, "ms"),
            ("status lookup by id p99", p.status_p99, "ms"),
            ("sweep p50", p.sweep_p50, "ms"),
        ]
        .into_iter()
        .map(|(what, v, unit)| Figure::alone(format!("inbox {label}: {what}"), v, unit))
        .collect::<Vec<_>>()
    };
    let mut out = alone(&format!("with {settled} settled actions"), full);
    out.extend(alone("during a retention purge", during));
    out.push(Figure::alone(
        format!("inbox tables + indexes with {settled} settled actions"),
        size_before / 1e9,
        "GB",
    ));
    out.push(Figure::alone(
        format!("retention purge beside a worker, {batch} per transaction"),
        purged as f64 / took.as_secs_f64(),
        "actions/s",
    ));
    Ok(out)
}
