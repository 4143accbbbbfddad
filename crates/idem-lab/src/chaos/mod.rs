//! `idem-lab chaos`: the fault campaign. Agents enqueue actions over every cell while several
//! real `idem relay` and `idem worker` processes carry them through Kafka to faulty partner
//! simulators; the harness kills a random process with SIGKILL every few seconds (and
//! restarts it), crashes and restarts PostgreSQL once and the broker once, and publishes a
//! fraction of the deliveries again, out of order. Then the independent checker compares
//! the simulators' ledgers with idem's receipts.

mod broker;
mod fleet;
mod replayer;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use idem_sim::FaultRates;
use idem_store::{enqueue, NewAction, Store};
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::checker::{self, Verdict};
use crate::partners::{Knobs, Partners, EXAMPLE_CELL};
use crate::services::Kafka;
use crate::workload;
use broker::{Broker, MockBroker};
use fleet::{Fleet, FleetStats, Spec};

#[derive(Args, Debug)]
pub struct ChaosArgs {
    /// Actions to run (sized for CI by default; `--actions 100000` for the full soak).
    #[arg(long, default_value_t = 2000)]
    actions: usize,
    /// Actions the agents enqueue per second.
    #[arg(long, default_value_t = 40.0)]
    rate: f64,
    /// Worker processes (Kafka consumer-group members, each also sweeping).
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Relay processes (one is elected; the others wait).
    #[arg(long, default_value_t = 2)]
    relays: usize,
    /// SIGKILL a random relay or worker this often (ms); 0: never.
    #[arg(long, default_value_t = 4000)]
    kill_every_ms: u64,
    /// `kafka`: relays publish to a broker, workers form a consumer group (the default).
    /// `postgres`: workers claim from the outbox; no relays and no broker, and duplicate
    /// deliveries are copies of outbox rows.
    #[arg(long, default_value = "kafka", value_parser = ["kafka", "postgres"])]
    transport: String,
    /// Kill relays on their own schedule instead (ms; 0: never), and only workers every
    /// --kill-every-ms (a relay killed every few seconds is a new idempotent producer each
    /// time, which stand-in brokers handled badly).
    #[arg(long)]
    relay_kill_every_ms: Option<u64>,
    /// A killed process is started again after this long (ms).
    #[arg(long, default_value_t = 500)]
    restart_after_ms: u64,
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Print the checker's figures as one JSON object.
    #[arg(long)]
    json: bool,
    /// Give up waiting for every action to settle after this many seconds.
    #[arg(long, default_value_t = 1200)]
    timeout_secs: u64,
    /// Partner: response lost after the effect.
    #[arg(long, default_value_t = 0.05)]
    drop_after_effect: f64,
    /// Partner: 500 before the effect.
    #[arg(long, default_value_t = 0.03)]
    fail_before: f64,
    /// Partner: 500 after the effect.
    #[arg(long, default_value_t = 0.02)]
    fail_after: f64,
    /// Partner: 409, the same key still in flight.
    #[arg(long, default_value_t = 0.02)]
    conflict_409: f64,
    /// Partner: 429 rate limit.
    #[arg(long, default_value_t = 0.02)]
    rate_limit: f64,
    /// Partner lookups (histories, lists, search) lag this far behind effects (ms).
    #[arg(long, default_value_t = 300)]
    lookup_lag_ms: u64,
    /// Stripe and the IETF partner forget idempotency keys after this long (ms); the
    /// workers are told, so they must reconcile rather than replay past the window.
    #[arg(long, default_value_t = 5000)]
    key_retention_ms: u64,
    /// Fraction of Kafka deliveries published a second time, later and out of order.
    #[arg(long, default_value_t = 0.05)]
    duplicate_deliveries: f64,
    /// Longest delay of such a second delivery (ms).
    #[arg(long, default_value_t = 5000)]
    redelivery_delay_ms: u64,
    /// How long PostgreSQL and the broker stay down when restarted (ms).
    #[arg(long, default_value_t = 2000)]
    downtime_ms: u64,
    /// A PostgreSQL server to use instead of a cluster of the soak's own (which it starts
    /// with initdb so it can crash it); needs --postgres-restart-cmd or --no-postgres-restart.
    #[arg(long)]
    database_url: Option<String>,
    /// Shell command that restarts that server.
    #[arg(long)]
    postgres_restart_cmd: Option<String>,
    #[arg(long)]
    no_postgres_restart: bool,
    /// The soak's own broker: `apache` (Apache Kafka from Maven Central, --kafka-nodes
    /// combined broker+controller processes; a crash SIGKILLs one and restarts it on its
    /// log directory) or `mock` (librdkafka's mock cluster, three brokers served over TCP
    /// from the harness, no JVM; its restart takes every broker down and back).
    #[arg(long, default_value = "apache", value_parser = ["apache", "mock"])]
    broker: String,
    /// Nodes of the soak's own Apache Kafka (replication factor 3 and
    /// min.insync.replicas=2 from three nodes on).
    #[arg(long, default_value_t = 3)]
    kafka_nodes: usize,
    /// The workers' consumer group protocol: `consumer` (KIP-848) or `classic` (static
    /// membership by slot, cooperative-sticky). The mock cluster always gets `classic`.
    #[arg(long, default_value = "consumer", value_parser = ["consumer", "classic"])]
    group_protocol: String,
    /// Broker crashes during the enqueueing (alternately the leader of a partition in use
    /// and the group coordinator).
    #[arg(long, default_value_t = 1)]
    broker_crashes: usize,
    /// A Kafka broker to use instead of one of the soak's own; needs
    /// --broker-restart-cmd or --no-broker-restart.
    #[arg(long, conflicts_with = "broker")]
    bootstrap: Option<String>,
    /// Shell command that restarts that broker.
    #[arg(long)]
    broker_restart_cmd: Option<String>,
    #[arg(long)]
    no_broker_restart: bool,
    /// Workers start an action still `received` this long after enqueue from its inbox row
    /// (ms): a delivery the broker dropped (the mock cluster keeps 5 MB per partition, so a
    /// long backlog loses its oldest messages, as Kafka's retention would).
    #[arg(long, default_value_t = 120_000)]
    stranded_after_ms: u64,
    /// Keep the run directory (every process's log, the soak's own PostgreSQL and Kafka).
    #[arg(long)]
    keep: bool,
}

#[derive(Debug, Serialize)]
struct ChaosReport {
    /// The Kafka cluster the soak ran on (`apache-kafka 4.4.0, 3 nodes`); absent on the
    /// Postgres transport.
    #[serde(skip_serializing_if = "Option::is_none")]
    broker: Option<String>,
    #[serde(flatten)]
    verdict: Verdict,
    enqueue_calls: usize,
    enqueue_duplicates_suppressed: usize,
    enqueue_retries: usize,
    dead_letters: i64,
    /// Actions the sweeper started from their inbox rows because no delivery came.
    redriven_from_inbox: i64,
    fleet: FleetStats,
    postgres_restarts: usize,
    broker_restarts: usize,
    deliveries_seen_by_replayer: usize,
    deliveries_published_again: usize,
    faults: FaultRates,
    lookup_lag_ms: u64,
    key_retention_ms: u64,
    elapsed_ms: u64,
    /// What the harness did, with seconds since the start.
    events: Vec<String>,
    run_dir: String,
}

/// Which restart the harness can do.
enum Restart {
    Own,
    Command(String),
    Skip,
}

fn restart_plan(own: bool, cmd: &Option<String>, skip: bool, what: &str) -> Result<Restart> {
    Ok(match (own, cmd, skip) {
        (_, _, true) => Restart::Skip,
        (true, _, _) => Restart::Own,
        (false, Some(c), _) => Restart::Command(c.clone()),
        (false, None, false) => bail!(
            "the soak restarts {what} once: with your own {what}, say how \
             (--{}-restart-cmd) or that it must not (--no-{}-restart)",
            if what == "PostgreSQL" {
                "postgres"
            } else {
                "broker"
            },
            if what == "PostgreSQL" {
                "postgres"
            } else {
                "broker"
            },
        ),
    })
}

fn shell(cmd: &str) -> Result<()> {
    let ok = std::process::Command::new("sh")
        .args(["-c", cmd])
        .status()
        .with_context(|| format!("run {cmd:?}"))?
        .success();
    if !ok {
        bail!("{cmd:?} failed");
    }
    Ok(())
}

/// A fresh directory for the run, readable by the `postgres` user.
fn run_dir() -> Result<std::path::PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let dir = std::env::temp_dir().join(format!("idem-chaos-{}-{stamp}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755))?;
    Ok(dir)
}

/// The example payout cell with this soak's key retention and lookup lag.
fn payout_cell(key_retention: Duration, lookup_lag: Duration) -> Result<String> {
    let mut text = EXAMPLE_CELL.to_owned();
    let secs = |d: Duration| d.as_secs_f64().ceil().max(1.0) as u64;
    for (old, new) in [
        (
            "key_retention_secs = 86400",
            format!("key_retention_secs = {}", secs(key_retention).max(2)),
        ),
        ("key_margin_secs = 3600", "key_margin_secs = 1".to_owned()),
        ("lag_secs = 0", format!("lag_secs = {}", secs(lookup_lag))),
    ] {
        if !text.contains(old) {
            bail!("examples/cells/acme.payout.toml no longer has {old:?}");
        }
        text = text.replace(old, &new);
    }
    Ok(text)
}

pub async fn run(args: ChaosArgs) -> Result<bool> {
    let started = Instant::now();
    let dir = run_dir()?;
    let at = move || started.elapsed().as_secs_f64();
    let mut events: Vec<String> = vec![];
    let log = |events: &mut Vec<String>, what: String| {
        eprintln!("[{:7.1}s] {what}", at());
        events.push(format!("{:.1}s {what}", at()));
    };

    // PostgreSQL: a cluster of our own unless one is given.
    let pg_plan = restart_plan(
        args.database_url.is_none(),
        &args.postgres_restart_cmd,
        args.no_postgres_restart,
        "PostgreSQL",
    )?;
    let kafka_path = args.transport == "kafka";
    let broker_plan = if kafka_path {
        restart_plan(
            args.bootstrap.is_none(),
            &args.broker_restart_cmd,
            args.no_broker_restart,
            "broker",
        )?
    } else {
        Restart::Skip
    };
    // The soak's own cluster lives in the run directory (kept with --keep).
    let own_pg = match &args.database_url {
        Some(_) => None,
        None => {
            let d = dir.join("pg");
            Some(Arc::new(
                tokio::task::spawn_blocking(move || {
                    idem_services::LocalPostgres::start(&d, &Default::default())
                })
                .await??,
            ))
        }
    };
    let server_url = match (&own_pg, &args.database_url) {
        (Some(pg), _) => pg.url(),
        (None, Some(u)) => u.clone(),
        (None, None) => unreachable!("own cluster started above"),
    };
    let url = crate::demo::fresh_database(&server_url, "idem_chaos").await?;
    let store = Store::connect(&url, 8).await?;
    store.migrate().await?;
    // The example declarative cell is not built in: register it before the agents start
    // (enqueue refuses unknown cells; the workers register it too, but may start later).
    idem_store::cells::register(store.pool(), &["acme.payout".to_owned()], "idem-lab chaos")
        .await?;

    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let topic = format!("idem.chaos.{run_id}");
    const PARTITIONS: i32 = 6;
    // Where the relays publish receipts (the default results topic).
    let results_topic = idem_kafka::KafkaConfig::new(String::new()).results_topic;
    let group = format!("idem-chaos-{run_id}");
    // The broker: one of our own (Apache Kafka, or the mock cluster in this process) unless
    // given.
    let broker: Option<Arc<Broker>> = if !kafka_path {
        None
    } else if args.bootstrap.is_none() && args.broker == "mock" {
        let (t, r) = (topic.clone(), results_topic.clone());
        Some(Arc::new(Broker::Mock(
            tokio::task::spawn_blocking(move || MockBroker::start(3, &[&t, &r], PARTITIONS))
                .await??,
        )))
    } else {
        let kafka =
            Kafka::given_or_started(args.bootstrap.clone(), args.kafka_nodes, Some(&dir)).await?;
        Some(Arc::new(Broker::Kafka {
            kafka,
            restart_cmd: args.broker_restart_cmd.clone(),
            topic: topic.clone(),
            group: group.clone(),
            crashes: Default::default(),
        }))
    };
    let bootstrap = broker
        .as_ref()
        .map_or_else(|| "127.0.0.1:9".to_owned(), |b| b.bootstrap()); // unused without one
    let mut kafka = idem_kafka::KafkaConfig::new(&bootstrap);
    kafka.partitions = PARTITIONS;
    if kafka_path {
        idem_kafka::topics::ensure(&kafka, std::slice::from_ref(&topic)).await?;
    }

    let faults = FaultRates {
        drop_after_effect: args.drop_after_effect,
        fail_before: args.fail_before,
        fail_after: args.fail_after,
        rate_limit: args.rate_limit,
        conflict_409: args.conflict_409,
        ..FaultRates::default()
    };
    let lookup_lag = Duration::from_millis(args.lookup_lag_ms);
    let key_retention = Duration::from_millis(args.key_retention_ms.max(1000));
    let partners = Arc::new(
        Partners::start(Knobs {
            seed: args.seed,
            faults,
            history_lag: lookup_lag,
            search_lag: lookup_lag,
            key_retention: Some(key_retention),
        })
        .await?,
    );
    let cell_file = dir.join("acme.payout.toml");
    std::fs::write(&cell_file, payout_cell(key_retention, lookup_lag)?)?;

    let common = |extra: &[&str]| -> Vec<String> {
        [
            "--database-url",
            &url,
            "--bootstrap",
            &bootstrap,
            "--topic",
            &topic,
            "--partitions",
            &PARTITIONS.to_string(),
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let lag_bound = (args.lookup_lag_ms * 3).max(1000).to_string();
    let mut worker_args = common(&[
        "--transport",
        &args.transport,
        "--group",
        &group,
        "--group-protocol",
        if args.broker == "mock" && args.bootstrap.is_none() {
            "classic"
        } else {
            &args.group_protocol
        },
        "--concurrency",
        "16",
        "--batch",
        "32",
        "--poll-interval-ms",
        "250",
        "--sweep-interval-ms",
        "300",
        "--cell-config",
        &cell_file.to_string_lossy(),
        "--call-timeout-ms",
        "1000",
        "--settle-ms",
        "500",
        "--retry-base-ms",
        "100",
        "--retry-max-ms",
        "2000",
        "--lookup-lag-bound-ms",
        &lag_bound,
        "--stripe-key-retention-ms",
        &key_retention.as_millis().to_string(),
        "--stranded-after-ms",
        &args.stranded_after_ms.to_string(),
    ]);
    worker_args.extend(partners.worker_flags());
    let spec = Spec {
        exe: crate::idem_binary()?,
        dir: dir.clone(),
        relay_args: common(&["--poll-interval-ms", "100", "--batch", "200"]),
        worker_args,
        env: vec![
            ("ACME_BASE".into(), partners.ietf_base()),
            ("ACME_TOKEN".into(), "tok_idem_chaos".into()),
            (
                "RUST_LOG".into(),
                std::env::var("IDEM_CHAOS_LOG").unwrap_or_else(|_| "warn".into()),
            ),
        ],
        restart_after: Duration::from_millis(args.restart_after_ms),
    };
    let relays = if kafka_path { args.relays.max(1) } else { 0 };
    let mut fleet = Fleet::start(spec, relays, args.workers.max(1))?;
    log(
        &mut events,
        format!(
            "started {} relay and {} worker processes; PostgreSQL at {}, broker at {bootstrap}; logs in {}",
            relays,
            args.workers.max(1),
            server_url,
            dir.display()
        ),
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (replayed, replayer_task) = if kafka_path {
        replayer::start(
            &bootstrap,
            &topic,
            PARTITIONS,
            args.duplicate_deliveries,
            Duration::from_millis(args.redelivery_delay_ms),
            args.seed,
            stop_rx,
        )?
    } else {
        replayer::start_outbox(store.clone(), args.duplicate_deliveries, stop_rx)
    };

    // The agents, in a task of their own: they keep retrying through the outages.
    let committed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let enqueuer = tokio::spawn(agents(
        store.clone(),
        partners.clone(),
        args.actions,
        args.rate,
        args.seed,
        committed.clone(),
    ));

    // The schedule: PostgreSQL at a third of the enqueueing, the broker crashes spread over
    // the middle of it (one: at 55 %).
    let enqueue_span = Duration::from_secs_f64(args.actions as f64 / args.rate.max(0.1));
    let pg_at = started + enqueue_span.mul_f64(0.35);
    let crashes = args.broker_crashes;
    let broker_at = |k: usize| {
        started + enqueue_span.mul_f64(0.2 + 0.7 * (k as f64 + 0.5) / crashes.max(1) as f64)
    };
    let downtime = Duration::from_millis(args.downtime_ms);
    let mut pg_restart: Option<tokio::task::JoinHandle<Result<()>>> = None;
    let mut broker_restart: Option<tokio::task::JoinHandle<Result<String>>> = None;
    let (mut pg_done, mut broker_done) = (
        matches!(pg_plan, Restart::Skip),
        matches!(broker_plan, Restart::Skip) || crashes == 0,
    );
    let (mut postgres_restarts, mut broker_restarts) = (0, 0);
    let mut rng = rand::rngs::StdRng::seed_from_u64(args.seed ^ 0xc4a05);
    let kill_every = Duration::from_millis(args.kill_every_ms);
    let mut next_kill = started + kill_every;
    let relay_every = args.relay_kill_every_ms.map(Duration::from_millis);
    let mut next_relay_kill = started + relay_every.unwrap_or_default();
    let mut agents_result = None;
    let mut enqueuer = Some(enqueuer);
    let mut last_progress = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_secs);
    // Ctrl-C or SIGTERM: stop the soak the orderly way, so its processes, PostgreSQL
    // cluster and broker go with it instead of outliving the harness.
    let interrupted = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let flag = interrupted.clone();
        tokio::spawn(async move {
            idem_telemetry::process::shutdown_signal().await;
            flag.store(true, Ordering::Relaxed);
        });
    }
    let mut settled = 0i64;
    loop {
        fleet.tick()?;
        let now = Instant::now();
        if args.kill_every_ms > 0 && now >= next_kill {
            next_kill = now + kill_every;
            let only = relay_every.map(|_| fleet::Role::Worker);
            if let Some(who) = fleet.kill_random(&mut rng, only).await {
                log(&mut events, format!("SIGKILL {who}"));
            }
        }
        if let Some(every) = relay_every.filter(|d| !d.is_zero()) {
            if now >= next_relay_kill {
                next_relay_kill = now + every;
                if let Some(who) = fleet.kill_random(&mut rng, Some(fleet::Role::Relay)).await {
                    log(&mut events, format!("SIGKILL {who}"));
                }
            }
        }
        if !pg_done && pg_restart.is_none() && now >= pg_at {
            log(
                &mut events,
                format!("PostgreSQL: crash (immediate stop), down for {downtime:?}, start"),
            );
            let (plan, pg) = (&pg_plan, own_pg.clone());
            pg_restart = Some(match plan {
                Restart::Own => tokio::task::spawn_blocking(move || {
                    Ok(pg.expect("own cluster").crash_and_restart(downtime)?)
                }),
                Restart::Command(c) => {
                    let c = c.clone();
                    tokio::task::spawn_blocking(move || shell(&c))
                }
                Restart::Skip => unreachable!(),
            });
        }
        if pg_restart.as_ref().is_some_and(|t| t.is_finished()) {
            pg_restart.take().expect("checked").await??;
            pg_done = true;
            postgres_restarts += 1;
            log(&mut events, "PostgreSQL is back".into());
        }
        if !broker_done && broker_restart.is_none() && now >= broker_at(broker_restarts) {
            let b = broker.clone().context("a broker to restart")?;
            log(&mut events, format!("broker crash {}", broker_restarts + 1));
            broker_restart = Some(tokio::task::spawn_blocking(move || b.restart(downtime)));
        }
        if broker_restart.as_ref().is_some_and(|t| t.is_finished()) {
            let what = broker_restart.take().expect("checked").await??;
            broker_restarts += 1;
            broker_done = broker_restarts >= crashes;
            log(&mut events, format!("broker: {what}; back"));
        }
        if enqueuer.as_ref().is_some_and(|t| t.is_finished()) {
            let r = enqueuer.take().expect("checked").await??;
            log(
                &mut events,
                format!(
                    "agents done: {} actions in {} enqueue calls",
                    r.ids.len(),
                    r.calls
                ),
            );
            agents_result = Some(r);
        }
        if last_progress.elapsed() >= Duration::from_secs(1) {
            last_progress = Instant::now();
            if let Ok(n) = idem_store::audit::settled_count(store.pool()).await {
                settled = n;
            }
            if (at() as u64).is_multiple_of(10) {
                eprintln!(
                    "[{:7.1}s] settled {settled}/{} (kills: {} relay, {} worker)",
                    at(),
                    args.actions,
                    fleet.stats.relays_killed,
                    fleet.stats.workers_killed
                );
            }
        }
        let all_settled = agents_result
            .as_ref()
            .is_some_and(|r| settled as usize >= r.ids.len());
        if all_settled && pg_done && broker_done {
            break;
        }
        if interrupted.load(Ordering::Relaxed) {
            log(
                &mut events,
                "interrupted: stopping and checking what there is".into(),
            );
            break;
        }
        if Instant::now() > deadline {
            log(
                &mut events,
                format!(
                    "timeout after {}s: checking what there is",
                    args.timeout_secs
                ),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let _ = stop_tx.send(true);
    let fleet_stats = fleet.stats.clone();
    fleet.stop(Duration::from_secs(10)).await;
    let _ = replayer_task.await;
    if let Some(e) = enqueuer {
        e.abort();
    }

    let read_only: Vec<String> = partners
        .registry(crate::partners::fast_timings, Duration::from_secs(1))?
        .iter()
        .filter(|c| !c.effectful())
        .map(|c| c.name().to_string())
        .collect();
    // The actions the agents got committed (all of them, unless interrupted or timed out
    // while still enqueueing).
    let meant = agents_result
        .as_ref()
        .map_or(committed.load(Ordering::Relaxed), |a| a.ids.len());
    let verdict = checker::check(&store, &partners.ledger(), &read_only, meant).await?;
    let dead_letters = idem_store::audit::dead_letter_count(store.pool()).await?;
    let redriven_from_inbox = idem_store::audit::redriven_from_inbox(store.pool()).await?;
    let agents = agents_result.unwrap_or_default();
    let report = ChaosReport {
        broker: broker.as_ref().map(|b| b.describe()),
        verdict,
        enqueue_calls: agents.calls,
        enqueue_duplicates_suppressed: agents.suppressed,
        enqueue_retries: agents.retries,
        dead_letters,
        redriven_from_inbox,
        fleet: fleet_stats,
        postgres_restarts,
        broker_restarts,
        deliveries_seen_by_replayer: replayed.seen.load(Ordering::Relaxed),
        deliveries_published_again: replayed.published_again.load(Ordering::Relaxed),
        faults,
        lookup_lag_ms: args.lookup_lag_ms,
        key_retention_ms: key_retention.as_millis() as u64,
        elapsed_ms: started.elapsed().as_millis() as u64,
        events,
        run_dir: dir.display().to_string(),
    };
    let ok = report.verdict.holds() && report.verdict.unsettled == 0;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    store.pool().close().await;
    drop(own_pg);
    drop(broker);
    if !args.keep && ok {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ok)
}

/// What the agents did.
#[derive(Debug, Default)]
struct Agents {
    ids: Vec<idem_core::ActionId>,
    calls: usize,
    suppressed: usize,
    /// Transactions tried again after an error (PostgreSQL down, connection cut).
    retries: usize,
}

/// Enqueue `n` actions at `rate` per second, ten per application transaction; some twice
/// (a retried tool call) or re-planned from the same intent. A transaction that fails is
/// tried again with the same actions, as an agent framework would.
async fn agents(
    store: Store,
    partners: Arc<Partners>,
    n: usize,
    rate: f64,
    seed: u64,
    committed: Arc<std::sync::atomic::AtomicUsize>,
) -> Result<Agents> {
    const CHUNK: usize = 10;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut out = Agents::default();
    let start = tokio::time::Instant::now();
    let per_chunk = Duration::from_secs_f64(CHUNK as f64 / rate.max(0.1));
    for (k, chunk) in (0..n).collect::<Vec<_>>().chunks(CHUNK).enumerate() {
        tokio::time::sleep_until(start + per_chunk * k as u32).await;
        let mut calls = vec![];
        for &i in chunk {
            let (cell, args) = workload::action(i, &mut rng, &partners)?;
            let action = NewAction::from_intent(
                "chaos-agents",
                format!("turn-{i}"),
                cell.clone(),
                args.clone(),
            );
            out.ids.push(action.action_id);
            calls.push(action.clone());
            if rng.gen_bool(0.10) {
                calls.push(action);
            }
            if rng.gen_bool(0.10) {
                calls.push(NewAction::from_intent(
                    "chaos-agents",
                    format!("turn-{i}"),
                    cell,
                    args,
                ));
            }
        }
        loop {
            match try_enqueue(&store, &calls).await {
                Ok(suppressed) => {
                    committed.fetch_add(chunk.len(), Ordering::Relaxed);
                    out.calls += calls.len();
                    out.suppressed += suppressed;
                    break;
                }
                Err(_) => {
                    out.retries += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }
    Ok(out)
}

/// One application transaction; how many calls found their action there already.
async fn try_enqueue(store: &Store, calls: &[NewAction]) -> Result<usize> {
    let mut tx = store.pool().begin().await?;
    let mut suppressed = 0;
    for a in calls {
        if !enqueue(&mut *tx, a).await?.created {
            suppressed += 1;
        }
    }
    tx.commit().await?;
    Ok(suppressed)
}

fn print_report(r: &ChaosReport) {
    let v = &r.verdict;
    println!(
        "idem-lab chaos: {} actions over {} relay and {} worker processes, {:.0} s",
        v.actions,
        r.fleet.relays,
        r.fleet.workers,
        r.elapsed_ms as f64 / 1000.0
    );
    println!(
        "injected: SIGKILL {} relays and {} workers ({} exited on their own); {} PostgreSQL and {} broker restarts; {} of {} deliveries published again; partner faults {:.0}% lost answers, {:.0}% 5xx before, {:.0}% 5xx after, {:.0}% 409, {:.0}% 429, lookups {} ms behind, keys kept {} ms; {} enqueue transactions retried",
        r.fleet.relays_killed,
        r.fleet.workers_killed,
        r.fleet.relay_exits + r.fleet.worker_exits,
        r.postgres_restarts,
        r.broker_restarts,
        r.deliveries_published_again,
        r.deliveries_seen_by_replayer,
        r.faults.drop_after_effect * 100.0,
        r.faults.fail_before * 100.0,
        r.faults.fail_after * 100.0,
        r.faults.conflict_409 * 100.0,
        r.faults.rate_limit * 100.0,
        r.lookup_lag_ms,
        r.key_retention_ms,
        r.enqueue_retries,
    );
    println!();
    checker::print_cells(v);
    if !v.needs_human_reasons.is_empty() {
        println!();
        println!("needs_human, by cell and reason:");
        for (cell, reason, n) in v.reasons_by_cell() {
            println!("  {n:>6}  {cell:<16} {reason}");
        }
    }
    println!();
    println!(
        "total: {} actions, {} effects, {} duplicates, {} lost, {} unsettled, {} needs_human, {} dead letters; {} started from the inbox (no delivery came)",
        v.actions, v.effects, v.duplicates, v.lost, v.unsettled, v.needs_human, r.dead_letters, r.redriven_from_inbox
    );
}
