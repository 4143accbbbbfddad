//! `idem-lab bench recovery`: how long after a kill -9 of every worker the last in-flight
//! action settles. N `idem worker` processes hold `--in-flight` stripe.charge calls (the
//! simulated partner holds each call `--partner-ms`); all are killed at once and N fresh
//! ones started. Measured with heartbeat leases (the default) against the same run with
//! the lease a worker had before them (call timeout × 2 + 1 s). The ledger must show one
//! charge per action either way.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;
use idem_sim::SimServer;
use idem_store::Store;

use super::Figure;

#[derive(Args, Debug)]
pub struct RecoveryArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Worker processes killed, then started again.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Calls in flight when the workers are killed.
    #[arg(long, default_value_t = 500)]
    in_flight: i64,
    /// How long the partner holds every call (ms): long enough that they are in flight.
    #[arg(long, default_value_t = 3000)]
    partner_ms: u64,
    /// The heartbeat lease of the measured round (ms); the worker's default if not given.
    #[arg(long)]
    lease_ms: Option<u64>,
    /// Skip the baseline round (the lease without heartbeats: about a minute).
    #[arg(long)]
    no_baseline: bool,
}

/// stripe.charge's call timeout is 30 s, so its lease without heartbeats was 61 s.
const LEASE_BEFORE_MS: u64 = 61_000;

pub async fn recovery(args: RecoveryArgs) -> Result<Vec<Figure>> {
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let url = crate::demo::fresh_database(pg.url(), "idem_bench").await?;
    let store = Store::connect(&url, 8).await?;
    store.migrate().await?;
    let heartbeat = round(&args, &store, &url, args.lease_ms, "beat").await?;
    let mut figures = vec![];
    let lease = args.lease_ms.map_or_else(
        || {
            format!(
                "the default {} s",
                idem_worker::WorkerConfig::default().lease.as_secs_f64()
            )
        },
        |ms| format!("{ms} ms"),
    );
    let name = format!(
        "settle after kill -9 of every worker ({} processes), stripe.charge, {} calls in flight, heartbeat lease {lease}",
        args.workers, args.in_flight
    );
    if args.no_baseline {
        figures.push(Figure::alone(name, heartbeat, "s"));
    } else {
        let before = round(&args, &store, &url, Some(LEASE_BEFORE_MS), "before").await?;
        figures.push(Figure::versus(
            name,
            heartbeat,
            "s",
            "the same with the lease before heartbeats (call timeout × 2 + 1 s = 61 s)".into(),
            before,
        ));
    }
    Ok(figures)
}

/// One round; returns seconds from the kill to the last action settled.
async fn round(
    args: &RecoveryArgs,
    store: &Store,
    url: &str,
    lease_ms: Option<u64>,
    tag: &str,
) -> Result<f64> {
    sqlx::query("TRUNCATE idem.actions, idem.outbox, idem.attempts, idem.transition_log CASCADE")
        .execute(store.pool())
        .await?;
    let sim = super::slow_stripe(args.partner_ms);
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into()).await?;
    let exe = crate::idem_binary()?;
    let per_process = (args.in_flight as usize).div_ceil(args.workers.max(1)) + 8;
    let extra: Vec<String> = lease_ms
        .map(|ms| vec!["--lease-ms".to_owned(), ms.to_string()])
        .unwrap_or_default();
    let base = server.base_url();
    let spawn = |name: String| super::worker_process(&exe, url, &base, per_process, &name, &extra);
    let mut doomed = (0..args.workers.max(1))
        .map(|i| spawn(format!("doomed-{tag}-{i}")))
        .collect::<Result<Vec<_>>>()?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query(
        "SELECT idem.enqueue(gen_random_uuid(), 'stripe.charge', \
         jsonb_build_object('amount', 100 + g, 'currency', 'usd', 'customer', 'cus_recovery')) \
         FROM generate_series(1, $1) g",
    )
    .bind(args.in_flight)
    .execute(store.pool())
    .await?;
    let t = Instant::now();
    loop {
        let (executing,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'executing'")
                .fetch_one(store.pool())
                .await?;
        if executing >= args.in_flight {
            break;
        }
        if t.elapsed() > Duration::from_secs(60) {
            bail!(
                "only {executing} of {} calls in flight after 60 s",
                args.in_flight
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for c in &mut doomed {
        c.start_kill()?; // SIGKILL
    }
    for c in &mut doomed {
        let _ = c.wait().await;
    }
    let killed = Instant::now();
    let _survivors = (0..args.workers.max(1))
        .map(|i| spawn(format!("survivor-{tag}-{i}")))
        .collect::<Result<Vec<_>>>()?;
    loop {
        let settled = idem_store::audit::settled_count(store.pool()).await?;
        if settled >= args.in_flight {
            break;
        }
        if killed.elapsed() > Duration::from_secs(600) {
            bail!(
                "{settled} of {} settled 600 s after the kill",
                args.in_flight
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = killed.elapsed().as_secs_f64();
    // Where the time went, from the kill: leases ending, then replays settling.
    let phases: Vec<(String, f64, f64, i64)> = sqlx::query_as(
        "SELECT event, extract(epoch FROM now() - max(at))::float8,                 extract(epoch FROM now() - min(at))::float8, count(*)          FROM idem.transitions WHERE event IN ('lease_expired', 'replay', 'succeeded')          GROUP BY event",
    )
    .fetch_all(store.pool())
    .await?;
    for (event, last_ago, first_ago, n) in phases {
        eprintln!(
            "  {tag}: {n} × {event}: first {:.1} s, last {:.1} s after the kill",
            took - first_ago,
            took - last_ago
        );
    }
    let (ok,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'succeeded'")
            .fetch_one(store.pool())
            .await?;
    let mut effects: HashMap<String, usize> = HashMap::new();
    for e in sim.ledger() {
        *effects
            .entry(e.idem_action_id.unwrap_or_default())
            .or_default() += 1;
    }
    let duplicates: usize = effects.values().map(|n| n - 1).sum();
    if ok != args.in_flight || effects.len() as i64 != args.in_flight || duplicates != 0 {
        bail!(
            "after recovery: {ok} of {} succeeded, {} charged, {duplicates} duplicate charges",
            args.in_flight,
            effects.len()
        );
    }
    Ok(took)
}
