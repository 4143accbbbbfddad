//! A store on a primary with a synchronous streaming standby (the project's own pair:
//! `pg_basebackup`, `synchronous_standby_names`, `synchronous_commit = on`), the primary
//! SIGKILLed mid-run and the standby promoted with `pg_ctl promote`. idem, given both hosts
//! in one URL, follows the promotion: every enqueue acknowledged before the kill is on the
//! promoted server, every action settles, and no charge is made twice — counted in the
//! Stripe simulator's ledger.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use idem_core::{ActionId, CellName, State};
use idem_services::{LocalPostgres, PostgresOptions};
use idem_sim::{FaultRates, StripeSimConfig};
use idem_store::{enqueue, inbox, NewAction, Store};
use idem_testkit::harness::wait_settled;
use idem_testkit::{stripe_cells, RunningWorker, StripeFixture};
use serde_json::json;

const STANDBY: &str = "idem_standby";

/// The primary and its synchronous standby, started in `dir`; the standby is in sync when
/// this returns.
async fn replicated_pair(dir: &Path) -> (LocalPostgres, LocalPostgres) {
    let primary = LocalPostgres::start(
        &dir.join("primary"),
        &PostgresOptions {
            synchronous_standby: Some(STANDBY.into()),
            max_connections: 60,
            ..PostgresOptions::default()
        },
    )
    .expect("start the primary (Debian's postgresql server binaries)");
    let standby = LocalPostgres::start_standby(&primary, &dir.join("standby"), STANDBY)
        .expect("pg_basebackup a standby and start it");
    let admin = sqlx::PgPool::connect(&primary.url()).await.unwrap();
    for _ in 0..200 {
        let sync: Option<(String,)> = sqlx::query_as(
            "SELECT sync_state FROM pg_stat_replication WHERE application_name = $1",
        )
        .bind(STANDBY)
        .fetch_optional(&admin)
        .await
        .unwrap();
        if sync.is_some_and(|(s,)| s == "sync") {
            admin.close().await;
            return (primary, standby);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the standby never became synchronous");
}

fn charge(i: usize) -> NewAction {
    NewAction::from_intent(
        "failover-test",
        format!("charge {i}"),
        CellName::new("stripe.charge").unwrap(),
        json!({"amount": 1000 + i, "currency": "usd", "customer": "cus_failover"}),
    )
}

/// Enqueue until acknowledged (the same action again after an error: a lost answer to a
/// commit that landed is found as the existing action, not a second one).
async fn enqueue_acknowledged(store: &Store, a: &NewAction) -> Duration {
    let start = tokio::time::Instant::now();
    loop {
        match enqueue(store.pool(), a).await {
            Ok(_) => return start.elapsed(),
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "enqueue of {} failed for a minute: {e}",
                    a.action_id
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_promoted_standby_keeps_every_acknowledged_enqueue_and_charges_nothing_twice() {
    let dir = idem_services::run_dir("failover").unwrap();
    idem_services::remove_when_process_exits(&dir);
    let (primary, standby) = replicated_pair(&dir).await;
    let url = format!(
        "postgres://postgres@127.0.0.1:{},127.0.0.1:{}/postgres?target_session_attrs=read-write",
        primary.port(),
        standby.port()
    );
    let store = Store::connect(&url, 16).await.unwrap();
    store.migrate().await.unwrap();
    let first = format!("127.0.0.1:{}", primary.port());
    assert_eq!(store.primary().as_deref(), Some(first.as_str()));

    // Calls that take a while, so some are in flight when the primary dies.
    let stripe = StripeFixture::start(StripeSimConfig {
        faults: FaultRates {
            delay: 0.3,
            delay_ms: 400,
            ..FaultRates::default()
        },
        ..StripeSimConfig::default()
    })
    .await;
    let worker = RunningWorker::start(&store, stripe_cells(&stripe, None));

    const N: usize = 120;
    let producer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut acked = vec![];
            for i in 0..N {
                let a = charge(i);
                let took = enqueue_acknowledged(&store, &a).await;
                acked.push((tokio::time::Instant::now(), a.action_id, took));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            acked
        })
    };

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let killed_at = tokio::time::Instant::now();
    let (primary, standby) = (Arc::new(primary), Arc::new(standby));
    let (p, s) = (primary.clone(), standby.clone());
    tokio::task::spawn_blocking(move || {
        p.kill().expect("SIGKILL the primary");
        std::thread::sleep(Duration::from_millis(1500));
        s.promote().expect("pg_ctl promote");
    })
    .await
    .unwrap();
    let promoted = format!("127.0.0.1:{}", standby.port());

    let acked = producer.await.unwrap();
    let before: Vec<ActionId> = acked
        .iter()
        .filter(|(at, _, _)| *at < killed_at)
        .map(|(_, id, _)| *id)
        .collect();
    let longest = acked
        .iter()
        .map(|(_, _, took)| *took)
        .max()
        .unwrap_or_default();
    assert!(
        !before.is_empty() && before.len() < N,
        "the kill came mid-run: {} of {N} acknowledged before it",
        before.len()
    );
    let ids: Vec<ActionId> = acked.iter().map(|(_, id, _)| *id).collect();
    wait_settled(&store, &ids, Duration::from_secs(90)).await;
    eprintln!(
        "failover: {} of {N} enqueues acknowledged before the kill; the longest enqueue \
         (through the kill and promotion) took {longest:?}; all settled {:?} after the kill",
        before.len(),
        killed_at.elapsed()
    );
    assert_eq!(
        store.primary().as_deref(),
        Some(promoted.as_str()),
        "idem follows the promotion"
    );
    worker.stop().await;

    // Every acknowledged action is on the promoted server and settled; at most one charge
    // each, and exactly one for each that succeeded.
    let mut succeeded = 0;
    for id in &ids {
        let row = inbox::get(store.pool(), *id)
            .await
            .unwrap()
            .unwrap_or_else(|| {
                panic!(
                    "acknowledged action {id} is missing after the promotion (acknowledged \
                     before the kill: {})",
                    before.contains(id)
                )
            });
        let effects = stripe.sim.effects_for(&id.to_string());
        assert!(effects <= 1, "{id}: {effects} charges");
        if row.state == State::Succeeded {
            assert_eq!(effects, 1, "{id} succeeded without its charge");
            succeeded += 1;
        }
    }
    let ledger = stripe.sim.ledger();
    let charged: BTreeSet<_> = ledger
        .iter()
        .filter_map(|e| e.idem_action_id.clone())
        .collect();
    assert_eq!(charged.len(), ledger.len(), "no action charged twice");
    assert_eq!(
        succeeded,
        ids.len(),
        "every charge succeeds on a fault-free partner"
    );
    drop((primary, standby));
}
