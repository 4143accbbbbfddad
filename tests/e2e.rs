//! End-to-end tests of the direct Postgres path: real PostgreSQL (from DATABASE_URL or
//! testcontainers), real HTTP to idem's Stripe simulator, real child processes. Every
//! exactly-once claim is checked in the simulator's effect ledger.

use idem_cells::TypedCell as _;
use std::time::Duration;

use idem_cells::{Registry, StripeCharge};
use idem_core::{ActionId, CellName, RetryPolicy, State};
use idem_sim::{Fault, StripeSimConfig};
use idem_store::{enqueue, inbox, EnqueueError, NewAction, Store};
use idem_testkit::harness::{spawn_idem, wait_until, worker, ChildGuard};
use idem_testkit::{StripeFixture, TestDb, TEST_SECRET};
use idem_worker::{Delivery, Worker, WorkerConfig};
use serde_json::json;

fn charge_args(amount: i64) -> serde_json::Value {
    json!({"amount": amount, "currency": "usd", "customer": "cus_test"})
}

fn cell_name() -> CellName {
    CellName::new("stripe.charge").unwrap()
}

/// A stripe.charge cell with test timings: 1 s calls, 300 ms settle time, fast retries.
fn cell(base: &str, f: impl FnOnce(StripeCharge) -> StripeCharge) -> Registry {
    let c = StripeCharge::new(base, TEST_SECRET).with_profile(|p| {
        p.call_timeout = Duration::from_millis(1000);
        p.settle_time = Duration::from_millis(300);
        p.retry = RetryPolicy {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
            max_attempts: 8,
            outage_budget: idem_core::backoff::DEFAULT_OUTAGE_BUDGET,
            jitter: 0.0,
        };
    });
    Registry::new().with(f(c))
}

async fn state(store: &Store, id: ActionId) -> inbox::ActionRow {
    inbox::get(store.pool(), id)
        .await
        .unwrap()
        .expect("action exists")
}

/// Take the action's outbox message as a transport would deliver it.
async fn take_delivery(store: &Store) -> Delivery {
    let mut tx = store.pool().begin().await.unwrap();
    let msgs = idem_store::queue::take_outbox(&mut tx, 1).await.unwrap();
    tx.commit().await.unwrap();
    let m = msgs.into_iter().next().expect("one outbox row");
    Delivery {
        payload: m.payload,
        source: json!({"outbox_seq": m.seq}),
        trace: idem_worker::TraceHeaders::from_json(&m.headers),
        misrouted: None,
    }
}

/// Run sweeps until the action settles (or panic after `limit`).
async fn sweep_until_settled(
    w: &Worker,
    store: &Store,
    id: ActionId,
    limit: Duration,
) -> inbox::ActionRow {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        w.sweep_once().await.unwrap();
        let row = state(store, id).await;
        if row.state.is_settled() {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn transitions(store: &Store, id: ActionId) -> Vec<String> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT event FROM idem.transitions WHERE action_id = $1 ORDER BY id")
            .bind(id.as_uuid())
            .fetch_all(store.pool())
            .await
            .unwrap();
    rows.into_iter().map(|r| r.0).collect()
}

fn receipt_ref(row: &inbox::ActionRow) -> String {
    row.receipt
        .as_ref()
        .and_then(|r| r["partner_ref"].as_str())
        .expect("receipt")
        .to_owned()
}

// ---------------------------------------------------------------- enqueue

#[tokio::test]
async fn enqueue_rolled_back_leaves_nothing() {
    let db = TestDb::new().await;
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(500));
    let mut tx = db.store.pool().begin().await.unwrap();
    let e = enqueue(&mut *tx, &action).await.unwrap();
    assert!(e.created);
    tx.rollback().await.unwrap();
    assert!(inbox::get(db.store.pool(), action.action_id)
        .await
        .unwrap()
        .is_none());
    let (outbox,): (i64,) = sqlx::query_as("SELECT count(*) FROM idem.outbox")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(outbox, 0);
}

#[tokio::test]
async fn enqueue_is_idempotent_and_conflicts_on_other_arguments() {
    let db = TestDb::new().await;
    let action = NewAction::from_arguments("session-1", cell_name(), charge_args(500));
    assert!(enqueue(db.store.pool(), &action).await.unwrap().created);
    let again = enqueue(db.store.pool(), &action).await.unwrap();
    assert!(!again.created);
    assert_eq!(again.state, State::Received);
    // Re-planned with the same arguments in another key order: same id, no second action.
    let replanned = NewAction::from_arguments(
        "session-1",
        cell_name(),
        json!({"customer": "cus_test", "currency": "usd", "amount": 500}),
    );
    assert_eq!(replanned.action_id, action.action_id);
    assert!(!enqueue(db.store.pool(), &replanned).await.unwrap().created);
    // Same id, other arguments: a conflict, and nothing changes.
    let other = NewAction::new(action.action_id, cell_name(), charge_args(501));
    match enqueue(db.store.pool(), &other).await {
        Err(EnqueueError::Conflict { action_id }) => assert_eq!(action_id, action.action_id),
        r => panic!("expected a conflict, got {r:?}"),
    }
    let (actions, outbox): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM idem.actions), (SELECT count(*) FROM idem.outbox)",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!((actions, outbox), (1, 1));
    assert_eq!(state(&db.store, action.action_id).await.args["amount"], 500);
}

#[tokio::test]
async fn enqueue_from_plain_sql() {
    let db = TestDb::new().await;
    let id = uuid::Uuid::new_v4();
    let mut conn = db.store.pool().acquire().await.unwrap();
    sqlx::raw_sql(&format!(
        "BEGIN; \
         SELECT * FROM idem.enqueue('{id}', 'stripe.charge', '{{\"amount\": 700, \"currency\": \"usd\"}}'::jsonb, 'session-7'); \
         SELECT * FROM idem.enqueue('{id}', 'stripe.charge', '{{\"currency\": \"usd\", \"amount\": 700}}'::jsonb, 'session-7'); \
         COMMIT;"
    ))
    .execute(&mut *conn)
    .await
    .unwrap();
    let (state, key): (String, String) = sqlx::query_as("SELECT state, ordering_key FROM idem.action_status JOIN idem.actions USING (action_id, cell, state) WHERE action_id = $1")
        .bind(id)
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!((state.as_str(), key.as_str()), ("received", "session-7"));
    let err = sqlx::raw_sql(&format!(
        "SELECT * FROM idem.enqueue('{id}', 'stripe.charge', '{{\"amount\": 1}}'::jsonb)"
    ))
    .execute(&mut *conn)
    .await
    .unwrap_err();
    let code = err
        .as_database_error()
        .and_then(|e| e.code())
        .map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("IDM01"), "{err}");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM idem.outbox")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

// ---------------------------------------------------------------- faults

#[tokio::test]
async fn lost_response_after_effect_is_replayed_under_the_same_key() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    stripe.sim.script([Fault::DropAfterEffect]);
    let w = worker(&db.store, cell(&stripe.base_url(), |c| c), "w1");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(1500));
    enqueue(db.store.pool(), &action).await.unwrap();
    let report = w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    assert_eq!(report.started, 1);
    assert_eq!(
        state(&db.store, action.action_id).await.state,
        State::InDoubt
    );
    let row = sweep_until_settled(&w, &db.store, action.action_id, Duration::from_secs(10)).await;
    assert_eq!(row.state, State::Succeeded);
    let ledger = stripe.sim.ledger();
    assert_eq!(
        stripe.sim.effects_for(&action.action_id.to_string()),
        1,
        "{ledger:?}"
    );
    assert_eq!(
        receipt_ref(&row),
        ledger[0].id,
        "receipt matches the ledger"
    );
    let reqs = stripe.sim.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].idempotency_key, reqs[1].idempotency_key);
    assert!(reqs[1].replayed);
}

#[tokio::test]
async fn stored_500_after_effect_is_found_by_reconcile() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    stripe.sim.script([Fault::FailAfter]);
    let w = worker(&db.store, cell(&stripe.base_url(), |c| c), "w1");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(2500));
    enqueue(db.store.pool(), &action).await.unwrap();
    w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    let row = sweep_until_settled(&w, &db.store, action.action_id, Duration::from_secs(10)).await;
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    assert_eq!(receipt_ref(&row), stripe.sim.ledger()[0].id);
    let events = transitions(&db.store, action.action_id).await;
    assert!(
        events.contains(&"reconciled_happened".to_string()),
        "{events:?}"
    );
}

/// A start is audited on its attempt row (migration 0017), not as a second row: the
/// `idem.transitions` view still shows every change in order, the log holds only the
/// others, and a retried action has one start per attempt.
#[tokio::test]
async fn starts_and_settles_are_audited_on_their_attempt_rows_and_read_in_order() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    stripe.sim.script([Fault::FailAfter]);
    let w = worker(&db.store, cell(&stripe.base_url(), |c| c), "w1");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(2600));
    enqueue(db.store.pool(), &action).await.unwrap();
    w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    let row = sweep_until_settled(&w, &db.store, action.action_id, Duration::from_secs(10)).await;
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    let pool = db.store.pool();
    let id = action.action_id.as_uuid();
    let view: Vec<(i64, String, String, String)> = sqlx::query_as(
        "SELECT id, from_state, to_state, actor FROM idem.transitions \
         WHERE action_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let starts: Vec<(i64, i32, String)> = sqlx::query_as(
        "SELECT audit_id, number, to_state FROM idem.attempts \
         WHERE action_id = $1 ORDER BY number",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let (logged,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM idem.transition_log WHERE action_id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    let settles: Vec<(i64, i32, String)> = sqlx::query_as(
        "SELECT settle_audit_id, number, settle_to FROM idem.attempts \
         WHERE action_id = $1 AND settle_audit_id IS NOT NULL ORDER BY number",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(!starts.is_empty());
    assert_eq!(
        view.len() as i64,
        logged + starts.len() as i64 + settles.len() as i64,
        "{view:?}"
    );
    // The first attempt's settle (its answer was lost: in doubt) rides on that attempt's
    // finishing update (migration 0019), in its place right after the start.
    let (first_settle, first_number, first_to) = settles.first().expect("a settle on its attempt");
    assert_eq!(*first_number, starts[0].1);
    assert_eq!(first_to, "in_doubt");
    assert_eq!(view[1].0, *first_settle, "{view:?}");
    let ids: std::collections::BTreeSet<i64> = view.iter().map(|v| v.0).collect();
    assert_eq!(ids.len(), view.len(), "no transition twice: {view:?}");
    // Each attempt's start is in the view, in its place, going to executing.
    for (audit_id, _, to) in &starts {
        assert_eq!(to, "executing");
        assert!(view.iter().any(|(v, ..)| v == audit_id), "{view:?}");
    }
    assert_eq!(
        view[0].0, starts[0].0,
        "the first change is the first start: {view:?}"
    );
    assert_eq!(view.last().unwrap().2, "succeeded", "{view:?}");
    assert!(view.iter().all(|(.., actor)| !actor.is_empty()));
    let (in_log,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM idem.transition_log WHERE action_id = $1 AND to_state = 'executing' \
         AND from_state = 'received'",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(in_log, 0, "the start is not written twice");
    let (settled_in_log,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM idem.transition_log WHERE action_id = $1 \
         AND from_state = 'executing' AND to_state = 'in_doubt'",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(settled_in_log, 0, "the settle is not written twice");
}

#[tokio::test]
async fn stored_500_before_effect_is_retried_once_under_a_new_key() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    stripe.sim.script([Fault::FailBefore]);
    let w = worker(&db.store, cell(&stripe.base_url(), |c| c), "w1");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(3500));
    enqueue(db.store.pool(), &action).await.unwrap();
    w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    let row = sweep_until_settled(&w, &db.store, action.action_id, Duration::from_secs(10)).await;
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    assert_eq!(
        row.key_generation, 1,
        "the poisoned key was retired after a trusted miss"
    );
    let keys: std::collections::BTreeSet<_> = stripe
        .sim
        .requests()
        .into_iter()
        .filter_map(|r| r.idempotency_key)
        .collect();
    assert_eq!(keys.len(), 2, "{keys:?}");
    let events = transitions(&db.store, action.action_id).await;
    assert!(
        events.contains(&"reconciled_not_happened".to_string()),
        "{events:?}"
    );
}

#[tokio::test]
async fn await_settled_wakes_when_a_worker_settles_the_action() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(990));
    enqueue(db.store.pool(), &action).await.unwrap();
    let pool = db.store.pool().clone();
    let id = action.action_id;
    let waiter =
        tokio::spawn(
            async move { idem_store::await_settled(&pool, id, Duration::from_secs(20)).await },
        );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiter.is_finished(), "nothing settled yet");
    let w = worker(&db.store, cell(&stripe.base_url(), |c| c), "w1");
    w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    let row = waiter.await.unwrap().unwrap().expect("action exists");
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(receipt_ref(&row), stripe.sim.ledger()[0].id);
    let missing = idem_store::await_settled(
        db.store.pool(),
        ActionId::random(),
        Duration::from_millis(100),
    )
    .await
    .unwrap();
    assert!(missing.is_none());
}

#[tokio::test]
async fn rate_limit_is_retried_and_declines_fail_without_effect() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    stripe.sim.script([Fault::RateLimit]);
    let w = worker(&db.store, cell(&stripe.base_url(), |c| c), "w1");
    let ok = NewAction::new(ActionId::random(), cell_name(), charge_args(100));
    enqueue(db.store.pool(), &ok).await.unwrap();
    w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    assert_eq!(
        state(&db.store, ok.action_id).await.state,
        State::RetryScheduled
    );
    assert_eq!(
        sweep_until_settled(&w, &db.store, ok.action_id, Duration::from_secs(10))
            .await
            .state,
        State::Succeeded
    );
    let declined = NewAction::new(
        ActionId::random(),
        cell_name(),
        json!({"amount": 100, "currency": "usd", "payment_method": "pm_card_chargeDeclined"}),
    );
    enqueue(db.store.pool(), &declined).await.unwrap();
    w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    let row = state(&db.store, declined.action_id).await;
    assert_eq!(row.state, State::Failed);
    assert!(row.reason.unwrap().contains("card_error"));
    assert_eq!(stripe.sim.effects_for(&declined.action_id.to_string()), 0);
    assert_eq!(stripe.sim.effects_for(&ok.action_id.to_string()), 1);
}

#[tokio::test]
async fn conflict_409_backs_off_and_replays_the_same_key() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    stripe.sim.script([Fault::Conflict409]);
    let w = worker(&db.store, cell(&stripe.base_url(), |c| c), "w1");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(1900));
    enqueue(db.store.pool(), &action).await.unwrap();
    w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    assert_eq!(
        state(&db.store, action.action_id).await.state,
        State::InDoubt
    );
    let row = sweep_until_settled(&w, &db.store, action.action_id, Duration::from_secs(10)).await;
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    let reqs = stripe.sim.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        vec![409, 200]
    );
    assert_eq!(reqs[0].idempotency_key, reqs[1].idempotency_key);
}

#[tokio::test]
async fn same_action_delivered_to_two_workers_at_once_calls_the_partner_once() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    // Slow partner, so both deliveries overlap the call.
    stripe.sim.script([Fault::Delay(300)]);
    let other = Store::connect(&db.url, 4).await.unwrap();
    let w1 = worker(&db.store, cell(&stripe.base_url(), |c| c), "w1");
    let w2 = worker(&other, cell(&stripe.base_url(), |c| c), "w2");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(4500));
    enqueue(db.store.pool(), &action).await.unwrap();
    let d = take_delivery(&db.store).await;
    let (r1, r2) = tokio::join!(
        w1.deliver(std::slice::from_ref(&d)),
        w2.deliver(std::slice::from_ref(&d))
    );
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert_eq!(r1.started + r2.started, 1, "{r1:?} {r2:?}");
    assert_eq!(r1.duplicates + r2.duplicates, 1);
    assert_eq!(stripe.sim.requests().len(), 1);
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    assert_eq!(
        state(&db.store, action.action_id).await.state,
        State::Succeeded
    );
    // A redelivery after settlement: acknowledged, no partner call.
    let r3 = w1.deliver(&[d]).await.unwrap();
    assert_eq!((r3.started, r3.duplicates), (0, 1));
    assert_eq!(stripe.sim.requests().len(), 1);
}

#[tokio::test]
async fn key_past_retention_is_not_replayed_blindly() {
    let db = TestDb::new().await;
    // The simulator prunes keys after 1 s; the cell knows the window (1.2 s minus margin).
    let stripe = StripeFixture::start(StripeSimConfig {
        key_retention: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    stripe.sim.script([Fault::DropAfterEffect]);
    let cells = cell(&stripe.base_url(), |c| {
        c.with_profile(|p| {
            let k = p.key.as_mut().unwrap();
            k.retention = Duration::from_millis(1200);
            k.safety_margin = Duration::from_millis(200);
        })
    });
    let w = worker(&db.store, cells, "w1");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(5500));
    enqueue(db.store.pool(), &action).await.unwrap();
    w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    assert_eq!(
        state(&db.store, action.action_id).await.state,
        State::InDoubt
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let row = sweep_until_settled(&w, &db.store, action.action_id, Duration::from_secs(10)).await;
    assert_eq!(row.state, State::Succeeded);
    // A blind replay would have hit a pruned key and charged again.
    assert_eq!(stripe.sim.requests().len(), 1, "no second request");
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    assert!(transitions(&db.store, action.action_id)
        .await
        .contains(&"reconciled_happened".to_string()));
}

#[tokio::test]
async fn lagging_search_miss_is_not_trusted_before_the_settle_time() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig {
        key_retention: Duration::from_millis(300),
        search_lag: Duration::from_millis(1500),
        ..Default::default()
    })
    .await;
    stripe.sim.script([Fault::DropAfterEffect]);
    let cells = cell(&stripe.base_url(), |c| {
        c.with_profile(|p| {
            let k = p.key.as_mut().unwrap();
            k.retention = Duration::from_millis(300);
            k.safety_margin = Duration::from_millis(100);
        })
        .reconcile_via_search(Duration::from_millis(2500))
    });
    let w = worker(&db.store, cells, "w1");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(6500));
    enqueue(db.store.pool(), &action).await.unwrap();
    w.deliver(&[take_delivery(&db.store).await]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    // Search does not see the charge yet: the miss must not lead to a retry.
    for _ in 0..5 {
        w.sweep_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let row = state(&db.store, action.action_id).await;
    assert_eq!(row.state, State::InDoubt, "{row:?}");
    assert!(row.reconcile_rounds >= 1, "it did reconcile");
    assert_eq!(stripe.sim.requests().len(), 1);
    let row = sweep_until_settled(&w, &db.store, action.action_id, Duration::from_secs(10)).await;
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    assert_eq!(stripe.sim.requests().len(), 1);
}

#[tokio::test]
async fn malformed_actions_go_dead_and_the_worker_keeps_running() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let pool = db.store.pool();
    // A buggy producer wrote bytes that are not an envelope.
    sqlx::query("INSERT INTO idem.outbox (action_id, ordering_key, payload) VALUES ($1, 'k', $2)")
        .bind(uuid::Uuid::new_v4())
        .bind(b"{not json".to_vec())
        .execute(pool)
        .await
        .unwrap();
    // Enqueue refuses a cell no worker ever registered, in SQL too (IDM03)...
    let refused = sqlx::query("SELECT * FROM idem.enqueue($1, 'nosuch.cell', '{\"x\":1}'::jsonb)")
        .bind(uuid::Uuid::new_v4())
        .execute(pool)
        .await;
    match refused {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("IDM03"));
            assert!(e.message().contains("known: "), "{}", e.message());
        }
        other => panic!("expected IDM03, got {other:?}"),
    }
    // ...but a cell the fleet once ran and this worker does not still goes dead.
    idem_store::cells::register(pool, &["nosuch.cell".into()], "an older worker")
        .await
        .unwrap();
    let unknown = uuid::Uuid::new_v4();
    sqlx::query("SELECT * FROM idem.enqueue($1, 'nosuch.cell', '{\"x\":1}'::jsonb)")
        .bind(unknown)
        .execute(pool)
        .await
        .unwrap();
    // A delivery naming a cell no one ever registered (another producer's bug, a separate
    // inbox database) goes dead too, rather than failing the worker's batch.
    let stray = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO idem.outbox (action_id, ordering_key, payload) VALUES ($1, 'k', $2)")
        .bind(stray)
        .bind(
            json!({"v": 1, "action_id": stray, "cell": "never.registered", "args": {}, "ordering_key": "k"})
                .to_string()
                .into_bytes(),
        )
        .execute(pool)
        .await
        .unwrap();
    let invalid = NewAction::new(ActionId::random(), cell_name(), json!({"currency": "usd"}));
    enqueue(pool, &invalid).await.unwrap();
    let good = NewAction::new(ActionId::random(), cell_name(), charge_args(700));
    enqueue(pool, &good).await.unwrap();

    let w = worker(&db.store, cell(&stripe.base_url(), |c| c), "w1");
    let (tx, rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move { w.run(rx).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state(&db.store, good.action_id).await.state != State::Succeeded {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tx.send(true).unwrap();
    run.await.unwrap().unwrap();

    let (raw, reason): (Vec<u8>, String) =
        sqlx::query_as("SELECT raw, reason FROM idem.dead_letters")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(raw, b"{not json");
    assert!(reason.contains("not a JSON envelope"), "{reason}");
    let st = state(&db.store, ActionId(stray)).await;
    assert_eq!(st.state, State::Dead, "{st:?}");
    let u = state(&db.store, ActionId(unknown)).await;
    assert_eq!(u.state, State::Dead);
    assert!(u.reason.unwrap().contains("unknown cell"));
    let i = state(&db.store, invalid.action_id).await;
    assert_eq!(i.state, State::Dead);
    assert!(
        i.reason.unwrap().contains("amount"),
        "reason names the field"
    );
    assert_eq!(stripe.sim.ledger().len(), 1);
}

/// A worker stopped while it claims and calls finishes what it started: it runs and
/// settles every action a claim of its started, and leaves the rest in the outbox. Nothing
/// is left `executing` on a lease, and every settled action is one effect.
#[tokio::test]
async fn a_worker_stopped_mid_run_settles_what_it_started() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let pool = db.store.pool();
    let mut ids = vec![];
    for i in 0..400 {
        let action = NewAction::new(ActionId::random(), cell_name(), charge_args(100 + i));
        enqueue(pool, &action).await.unwrap();
        ids.push(action.action_id.as_uuid());
    }
    let w = Worker::new(
        db.store.clone(),
        cell(&stripe.base_url(), |c| c),
        WorkerConfig {
            batch: 4,
            ..idem_testkit::harness::worker_config("stopping-w")
        },
    );
    stop_once_settled(w, pool, 20, Duration::from_secs(20)).await;
    let states = state_counts(pool).await;
    let count = |s: &str| states.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n);
    assert_eq!(
        count("succeeded") + count("received"),
        400,
        "only settled or untouched actions after a stop: {states:?}"
    );
    assert!(count("received") > 0, "stopped before the end: {states:?}");
    let (queued,): (i64,) = sqlx::query_as("SELECT count(*) FROM idem.outbox")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(
        queued,
        count("received"),
        "each untouched action keeps its message"
    );
    assert_eq!(stripe.sim.ledger().len() as i64, count("succeeded"));
}

/// Run `w` until at least `settled` actions have succeeded, then stop it gracefully and
/// wait for the stop.
async fn stop_once_settled(w: Worker, pool: &sqlx::PgPool, settled: i64, within: Duration) {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move { w.run(rx).await });
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (done,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'succeeded'")
                .fetch_one(pool)
                .await
                .unwrap();
        if done >= settled {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{done} settled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tx.send(true).unwrap();
    run.await.unwrap().unwrap();
}

/// How many actions are in each state.
async fn state_counts(pool: &sqlx::PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT state, count(*) FROM idem.actions GROUP BY state ORDER BY state")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// A Kafka-style delivery's write-ahead and its settle run their prepared statements'
/// generic plans (`SET LOCAL plan_cache_mode`), and the setting ends with each
/// transaction: the one pooled connection they used answers `auto` afterwards, so nothing
/// else that borrows it is planned differently.
#[tokio::test]
async fn generic_plans_for_a_delivery_do_not_leak_into_the_pool() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let one = Store::connect(&db.url, 1).await.unwrap();
    let w = worker(&one, cell(&stripe.base_url(), |c| c), "plans-w");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(4200));
    enqueue(one.pool(), &action).await.unwrap();
    let report = w.deliver(&[take_delivery(&one).await]).await.unwrap();
    assert_eq!(report.started, 1, "{report:?}");
    assert_eq!(state(&one, action.action_id).await.state, State::Succeeded);
    assert_eq!(stripe.sim.ledger().len(), 1);
    let (mode,): (String,) = sqlx::query_as("SHOW plan_cache_mode")
        .fetch_one(one.pool())
        .await
        .unwrap();
    assert_eq!(mode, "auto");
}

/// The direct transport's claim takes outbox rows and locks the inbox rows their
/// `action_id` column names in one statement, but trusts nothing it did not check: a
/// payload that names that action with other arguments is a conflict (dead letter, the
/// first action stands), a payload naming another action goes through the full receive,
/// and a second copy of the same message is a duplicate. One effect per action.
#[tokio::test]
async fn outbox_rows_that_disagree_with_their_action_are_checked_not_trusted() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let pool = db.store.pool();
    let w = worker(&db.store, cell(&stripe.base_url(), |c| c), "claim-w");
    w.register_with_fleet().await.unwrap();
    let first = NewAction::new(ActionId::random(), cell_name(), charge_args(800));
    enqueue(pool, &first).await.unwrap();
    let other = ActionId::random();
    let envelope = |id: ActionId, amount: i64| {
        json!({"v": 1, "action_id": id, "cell": "stripe.charge", "args": charge_args(amount),
               "ordering_key": id.to_string()})
        .to_string()
        .into_bytes()
    };
    // All three rows carry the first action's id in the outbox's own column.
    let conflicting = envelope(first.action_id, 900);
    for payload in [
        conflicting.clone(),
        envelope(other, 950),
        envelope(first.action_id, 800),
    ] {
        sqlx::query(
            "INSERT INTO idem.outbox (action_id, ordering_key, payload) VALUES ($1, 'k', $2)",
        )
        .bind(first.action_id.as_uuid())
        .bind(payload)
        .execute(pool)
        .await
        .unwrap();
    }
    // A fourth action, not yet in the inbox, arrives twice in the batch with different
    // arguments (outbox rows naming some other id): whichever is received first stands,
    // the other is a conflict.
    let twice = ActionId::random();
    let versions = [envelope(twice, 960), envelope(twice, 970)];
    for payload in &versions {
        sqlx::query(
            "INSERT INTO idem.outbox (action_id, ordering_key, payload) VALUES ($1, 'k', $2)",
        )
        .bind(uuid::Uuid::new_v4())
        .bind(payload)
        .execute(pool)
        .await
        .unwrap();
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(async move { w.run(rx).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for id in [first.action_id, other, twice] {
        while !state(&db.store, id).await.state.is_settled() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{id} did not settle"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    tx.send(true).unwrap();
    run.await.unwrap().unwrap();

    let a = state(&db.store, first.action_id).await;
    assert_eq!(a.state, State::Succeeded, "{a:?}");
    assert_eq!(
        a.args,
        charge_args(800),
        "the first action's arguments stand"
    );
    assert_eq!(state(&db.store, other).await.state, State::Succeeded);
    assert_eq!(stripe.sim.effects_for(&first.action_id.to_string()), 1);
    assert_eq!(stripe.sim.effects_for(&other.to_string()), 1);
    let t = state(&db.store, twice).await;
    assert_eq!(t.state, State::Succeeded, "{t:?}");
    assert_eq!(stripe.sim.effects_for(&twice.to_string()), 1);
    assert_eq!(stripe.sim.ledger().len(), 3);
    let stood = if t.args == charge_args(960) { 0 } else { 1 };
    assert_eq!(t.args, charge_args([960, 970][stood]));
    let letters: Vec<(Vec<u8>, String)> =
        sqlx::query_as("SELECT raw, reason FROM idem.dead_letters ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let raws: Vec<&Vec<u8>> = letters.iter().map(|l| &l.0).collect();
    assert!(raws.contains(&&conflicting), "{letters:?}");
    assert!(raws.contains(&&versions[1 - stood]), "{letters:?}");
    for (_, reason) in &letters {
        assert!(reason.contains("conflict"), "{reason}");
    }
    let (left,): (i64,) = sqlx::query_as("SELECT count(*) FROM idem.outbox")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 0);
}

/// Once a worker has registered a cell's input schema, enqueue checks the arguments' top
/// level in SQL (for every language), SQLSTATE IDM05 with the field in DETAIL; the Rust
/// surface maps it to an invalid-arguments error naming the field. Nothing is stored.
#[tokio::test]
async fn sql_enqueue_checks_arguments_against_the_registered_schema() {
    let db = TestDb::new().await;
    let pool = db.store.pool();
    let w = worker(&db.store, cell("http://127.0.0.1:9", |c| c), "schema-w");
    w.register_with_fleet().await.unwrap();
    let cases = [
        (r#"{"currency": "usd"}"#, "/args/amount", "required"),
        (
            r#"{"amount": 0, "currency": "usd"}"#,
            "/args/amount",
            "at least 1",
        ),
        (
            r#"{"amount": 12.5, "currency": "usd"}"#,
            "/args/amount",
            "type integer",
        ),
        (
            r#"{"amount": "12", "currency": "usd"}"#,
            "/args/amount",
            "type integer",
        ),
        (
            r#"{"amount": 100, "currency": "USD"}"#,
            "/args/currency",
            "must match",
        ),
        (
            r#"{"amount": 100, "currency": "usd", "tip": 5}"#,
            "/args/tip",
            "unknown field",
        ),
        (
            r#"{"amount": 100, "currency": "usd", "customer": 7}"#,
            "/args/customer",
            "type string",
        ),
    ];
    for (args, field, says) in cases {
        let r = sqlx::query("SELECT * FROM idem.enqueue($1, 'stripe.charge', $2::jsonb)")
            .bind(uuid::Uuid::new_v4())
            .bind(args)
            .execute(pool)
            .await;
        match r {
            Err(sqlx::Error::Database(e)) => {
                assert_eq!(e.code().as_deref(), Some("IDM05"), "{args}: {e}");
                let pg = e.downcast_ref::<sqlx::postgres::PgDatabaseError>();
                assert_eq!(pg.detail(), Some(field), "{args}");
                assert!(e.message().contains(says), "{args}: {}", e.message());
            }
            other => panic!("{args}: expected IDM05, got {other:?}"),
        }
    }
    let ok = sqlx::query("SELECT * FROM idem.enqueue($1, 'stripe.charge', $2::jsonb)")
        .bind(uuid::Uuid::new_v4())
        .bind(r#"{"amount": 100, "currency": "usd", "description": "Plan — Größe M"}"#)
        .execute(pool)
        .await;
    assert!(ok.is_ok(), "{ok:?}");
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM idem.actions")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(n, 1, "only the valid action was stored");
    // Rust callers get the same refusal, typed, naming the field.
    let bad = NewAction::new(
        ActionId::random(),
        cell_name(),
        json!({"amount": -3, "currency": "usd"}),
    );
    match enqueue(pool, &bad).await {
        Err(idem_store::EnqueueError::Invalid { field, message }) => {
            assert_eq!(field.as_deref(), Some("/args/amount"));
            assert!(message.contains("at least 1"), "{message}");
        }
        other => panic!("expected Invalid, got {other:?}"),
    }
}

// ---------------------------------------------------------------- processes

fn spawn_worker(db_url: &str, stripe: &str, id: &str) -> ChildGuard {
    spawn_worker_timed(
        db_url,
        stripe,
        id,
        &[
            "--stripe-call-timeout-ms",
            "1000",
            "--stripe-settle-ms",
            "300",
        ],
    )
}

/// An `idem worker` process polling and sweeping fast, with `timing` flags of its own.
fn spawn_worker_timed(db_url: &str, stripe: &str, id: &str, timing: &[&str]) -> ChildGuard {
    let mut args = vec![
        "worker",
        "--id",
        id,
        "--poll-interval-ms",
        "50",
        "--sweep-interval-ms",
        "100",
    ];
    args.extend_from_slice(timing);
    spawn_idem(
        env!("CARGO_BIN_EXE_idem"),
        &args,
        &[
            ("DATABASE_URL", db_url),
            ("IDEM_STRIPE_BASE", stripe),
            ("STRIPE_SECRET_KEY", TEST_SECRET),
        ],
    )
}

#[tokio::test]
async fn worker_process_killed_mid_call_is_settled_by_another_worker() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    // The partner takes 700 ms; the first worker is killed while waiting for it.
    stripe.sim.script([Fault::Delay(700)]);
    let mut first = spawn_worker(&db.url, &stripe.base_url(), "doomed");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(8500));
    enqueue(db.store.pool(), &action).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while state(&db.store, action.action_id).await.state != State::Executing {
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker never claimed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // SIGKILL: no cleanup, the lease stays held.
    first.kill();
    let row = state(&db.store, action.action_id).await;
    assert_eq!(row.state, State::Executing);
    assert_eq!(row.lease_owner.as_deref(), Some("doomed"));

    let _second = spawn_worker(&db.url, &stripe.base_url(), "survivor");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let row = loop {
        let row = state(&db.store, action.action_id).await;
        if row.state.is_settled() {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    assert_eq!(receipt_ref(&row), stripe.sim.ledger()[0].id);
    let events = transitions(&db.store, action.action_id).await;
    assert!(events.contains(&"lease_expired".to_string()), "{events:?}");
}

#[tokio::test]
async fn demo_binary_reports_no_duplicates_and_nothing_lost() {
    // The README's main job, small: through the real binary, its own database.
    let db = TestDb::new().await;
    let out = tokio::process::Command::new(idem_testkit::harness::lab_binary(env!(
        "CARGO_BIN_EXE_idem"
    )))
    .args([
        "demo",
        "--actions",
        "200",
        "--json",
        "--database-name",
        "idem_demo_e2e",
        "--seed",
        "7",
    ])
    .env("DATABASE_URL", &db.url)
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("demo --json prints JSON");
    assert_eq!(v["actions"], 200);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["lost"], 0);
    assert!(v["effects"].as_u64().unwrap() > 150);
    for (cell, n) in [
        ("stripe.charge", 45),
        ("hubspot.upsert", 40),
        ("stripe.refund", 20),
        ("acme.payout", 20),
        ("gmail.send", 20),
        ("twilio.sms.send", 20),
        ("slack.post", 20),
        ("amadeus.book", 5),
        ("amadeus.price", 5),
        ("amadeus.cancel", 5),
    ] {
        assert_eq!(v["cells"][cell]["actions"], n, "{cell}");
    }
    for (cell, c) in v["cells"].as_object().unwrap() {
        assert_eq!(c["duplicates"], 0, "{cell}");
        assert_eq!(c["lost"], 0, "{cell}");
        let settled = ["succeeded", "failed", "needs_human", "dead"]
            .iter()
            .map(|k| c[*k].as_u64().unwrap())
            .sum::<u64>();
        assert_eq!(
            settled,
            c["actions"].as_u64().unwrap(),
            "{cell}: every action settled"
        );
        if c["actions"].as_u64().unwrap() >= 20 {
            assert!(c["succeeded"].as_u64().unwrap() > 0, "{cell}");
        }
        // Only cells whose card sends doubts to a person may leave needs_human.
        if !["twilio.sms.send", "gmail.send", "amadeus.book"].contains(&cell.as_str()) {
            assert_eq!(c["needs_human"], 0, "{cell}");
        }
    }
    assert_eq!(v["transport"], "postgres");
}

// ---------------------------------------------------------------- simulator semantics

#[tokio::test]
async fn stripe_simulator_reproduces_idempotency_semantics() {
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/payment_intents", stripe.base_url());
    let post = |key: &'static str, amount: &'static str| {
        http.post(&url)
            .bearer_auth(TEST_SECRET)
            .header("Idempotency-Key", key)
            .form(&[
                ("amount", amount),
                ("currency", "usd"),
                ("confirm", "true"),
                ("payment_method", "pm_card_visa"),
                ("automatic_payment_methods[allow_redirects]", "never"),
                ("metadata[idem_action_id]", "a1"),
            ])
            .send()
    };
    // No or wrong secret: 401 before the idempotency layer, not stored.
    let r = http
        .post(&url)
        .header("Idempotency-Key", "k1")
        .form(&[("amount", "100")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // First use executes; the same key replays the stored response with the header.
    let first = post("k1", "100").await.unwrap();
    assert_eq!(first.status(), 200);
    assert_eq!(first.headers()["idempotency-key"], "k1");
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: serde_json::Value = first.json().await.unwrap();
    let replay = post("k1", "100").await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(first, replay);
    // Other parameters under the same key: 400 idempotency_error.
    let mismatch = post("k1", "200").await.unwrap();
    assert_eq!(mismatch.status(), 400);
    let body: serde_json::Value = mismatch.json().await.unwrap();
    assert_eq!(body["error"]["type"], "idempotency_error");
    // A concurrent request with a key in flight: 409.
    stripe.sim.script([Fault::Delay(400)]);
    let (a, b) = tokio::join!(post("k2", "100"), async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        post("k2", "100").await
    });
    assert_eq!(a.unwrap().status(), 200);
    assert_eq!(b.unwrap().status(), 409);
    // 429 is not stored: the next request with the key executes.
    stripe.sim.script([Fault::RateLimit]);
    assert_eq!(post("k3", "100").await.unwrap().status(), 429);
    let r = post("k3", "100").await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("idempotent-replayed").is_none());
    // A stored 500 is replayed as a 500.
    stripe.sim.script([Fault::FailBefore]);
    assert_eq!(post("k4", "100").await.unwrap().status(), 500);
    let r = post("k4", "100").await.unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["idempotent-replayed"].to_str().unwrap()
        ),
        (500, "true")
    );
    assert_eq!(
        stripe.sim.ledger().len(),
        3,
        "k1, k2, k3 charged; k4 failed before the effect"
    );
    // A lost response: the client sees an error, the partner charged anyway.
    stripe.sim.script([Fault::DropAfterEffect]);
    let lost = match post("k5", "100").await {
        Ok(r) => r.bytes().await.is_err(),
        Err(_) => true,
    };
    assert!(lost, "the response must not arrive");
    assert_eq!(stripe.sim.ledger().len(), 4);
}

/// With `notify_on_enqueue` off (high-concurrency deployments), enqueue sends no NOTIFY and
/// a polling worker still finds and settles the action; on, it notifies.
#[tokio::test]
async fn enqueue_without_notify_is_found_by_polling() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let pool = db.store.pool();
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("idem_outbox").await.unwrap();
    let charge = || {
        NewAction::new(
            ActionId::from(uuid::Uuid::new_v4()),
            CellName::new("stripe.charge").unwrap(),
            json!({"amount": 500, "currency": "usd"}),
        )
    };
    enqueue(pool, &charge()).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(heard.is_ok(), "NOTIFY on by default");
    sqlx::query("UPDATE idem.settings SET notify_on_enqueue = false")
        .execute(pool)
        .await
        .unwrap();
    let quiet = charge();
    enqueue(pool, &quiet).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(heard.is_err(), "no NOTIFY when turned off");
    let worker =
        idem_testkit::RunningWorker::start(&db.store, idem_testkit::stripe_cells(&stripe, None));
    let row = idem_store::await_settled(pool, quiet.action_id, Duration::from_secs(20))
        .await
        .unwrap()
        .expect("settled by polling");
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(stripe.sim.effects_for(&quiet.action_id.to_string()), 1);
    worker.stop().await;
}

/// Enqueues inside one `notify_window_ms` share a notification (a notifying commit takes a
/// database-wide lock, so one per enqueue serialises enqueuers), and the enqueues that sent
/// none are still delivered, each charged once.
#[tokio::test]
async fn enqueues_in_one_notify_window_share_a_notification_and_are_all_delivered() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let pool = db.store.pool();
    let window = |ms: i32| {
        sqlx::query("UPDATE idem.settings SET notify_window_ms = $1")
            .bind(ms)
            .execute(pool)
    };
    window(10_000).await.unwrap();
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("idem_outbox").await.unwrap();
    let charge = |amount: i64| {
        NewAction::new(
            ActionId::random(),
            CellName::new("stripe.charge").unwrap(),
            json!({"amount": amount, "currency": "usd"}),
        )
    };
    let first = charge(100);
    enqueue(pool, &first).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(heard.is_ok(), "the first enqueue notifies");
    let quiet: Vec<NewAction> = (0..5).map(|i| charge(200 + i)).collect();
    for a in &quiet {
        enqueue(pool, a).await.unwrap();
    }
    let heard = tokio::time::timeout(Duration::from_millis(500), listener.recv()).await;
    assert!(heard.is_err(), "no notification inside the window");
    // Window 0: every enqueue notifies, as before migration 0016.
    window(0).await.unwrap();
    enqueue(pool, &charge(300)).await.unwrap();
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    assert!(heard.is_ok(), "window 0 notifies on every enqueue");

    let worker =
        idem_testkit::RunningWorker::start(&db.store, idem_testkit::stripe_cells(&stripe, None));
    for a in std::iter::once(&first).chain(&quiet) {
        let row = idem_store::await_settled(pool, a.action_id, Duration::from_secs(20))
            .await
            .unwrap()
            .expect("settled without a notification of its own");
        assert_eq!(row.state, State::Succeeded);
        assert_eq!(stripe.sim.effects_for(&a.action_id.to_string()), 1);
    }
    worker.stop().await;
}

/// A role that may enqueue (insert into the inbox and outbox) but has no privilege on the
/// notification clock still enqueues, and its enqueue still wakes the workers: the clock is
/// ticked by a function that runs as its owner (migration 0018).
#[tokio::test]
async fn a_role_without_rights_on_the_notify_clock_still_enqueues_and_notifies() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    let db = TestDb::new().await;
    let pool = db.store.pool();
    let role = format!("idem_app_{}", uuid::Uuid::new_v4().simple());
    let password = uuid::Uuid::new_v4().simple().to_string();
    for sql in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{password}'"),
        format!("GRANT USAGE ON SCHEMA idem TO {role}"),
        format!("GRANT SELECT, INSERT ON idem.actions, idem.outbox TO {role}"),
        format!("GRANT SELECT ON idem.cells, idem.settings TO {role}"),
        format!("GRANT USAGE ON SEQUENCE idem.outbox_seq_seq TO {role}"),
    ] {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
    let mut listener = sqlx::postgres::PgListener::connect(&db.url).await.unwrap();
    listener.listen("idem_outbox").await.unwrap();
    let opts: PgConnectOptions = db.url.parse().unwrap();
    let app = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(opts.username(&role).password(&password))
        .await
        .unwrap();
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(2700));
    let result = enqueue(&app, &action).await;
    app.close().await;
    let heard = tokio::time::timeout(Duration::from_secs(5), listener.recv()).await;
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::query(&sql).execute(pool).await.unwrap();
    }
    let enqueued = result.expect("enqueue as a role without rights on idem.notify_clock");
    assert!(enqueued.created);
    assert!(heard.is_ok(), "its enqueue notifies");
}

/// Retention deletes only old settled actions (with their attempts and transitions), in
/// batches, and skips a row another transaction holds instead of waiting for it.
#[tokio::test]
async fn retention_purges_old_settled_actions_without_waiting_for_locked_rows() {
    let db = TestDb::new().await;
    let pool = db.store.pool();
    let mut ids = vec![];
    for (i, state) in [
        "succeeded",
        "failed",
        "succeeded",
        "needs_human",
        "received",
    ]
    .into_iter()
    .enumerate()
    {
        let a = NewAction::new(ActionId::random(), cell_name(), charge_args(100 + i as i64));
        enqueue(pool, &a).await.unwrap();
        // Settled (or stuck) two days ago, with an attempt and a transition.
        sqlx::query(
            "UPDATE idem.actions SET state = $2, attempts = 1, \
             settled_at = CASE WHEN $2 = 'received' THEN NULL ELSE now() - interval '2 days' END \
             WHERE action_id = $1",
        )
        .bind(a.action_id.as_uuid())
        .bind(state)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO idem.attempts (action_id, number, key_generation, request_fingerprint, rule, worker, started_at) \
             VALUES ($1, 1, 0, 'fp', 'first', 'test', now() - interval '2 days')",
        )
        .bind(a.action_id.as_uuid())
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO idem.transition_log (action_id, from_state, to_state, event, actor) \
             VALUES ($1, 'received', $2, 'test', 'test')",
        )
        .bind(a.action_id.as_uuid())
        .bind(state)
        .execute(pool)
        .await
        .unwrap();
        ids.push(a.action_id);
    }
    // A recent settled action stays.
    let recent = NewAction::new(ActionId::random(), cell_name(), charge_args(999));
    enqueue(pool, &recent).await.unwrap();
    sqlx::query(
        "UPDATE idem.actions SET state = 'succeeded', settled_at = now() WHERE action_id = $1",
    )
    .bind(recent.action_id.as_uuid())
    .execute(pool)
    .await
    .unwrap();

    // Another transaction (a worker, say) holds the third action's row.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM idem.actions WHERE action_id = $1 FOR UPDATE")
        .bind(ids[2].as_uuid())
        .execute(&mut *holder)
        .await
        .unwrap();
    let day = Duration::from_secs(24 * 3600);
    let purged = tokio::time::timeout(
        Duration::from_secs(10),
        idem_store::retention::purge_settled(pool, day, 1, None, Duration::ZERO),
    )
    .await
    .expect("purge waited for a locked row")
    .unwrap();
    assert_eq!(purged.actions, 2, "{purged:?}");
    assert_eq!(purged.batches, 2, "one action per batch");
    let left = |id: ActionId| async move {
        let (n,): (i64,) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM idem.actions WHERE action_id = $1) \
                  + (SELECT count(*) FROM idem.attempts WHERE action_id = $1) \
                  + (SELECT count(*) FROM idem.transitions WHERE action_id = $1)",
        )
        .bind(id.as_uuid())
        .fetch_one(pool)
        .await
        .unwrap();
        n
    };
    assert_eq!(left(ids[0]).await, 0, "old succeeded: gone with its rows");
    assert_eq!(left(ids[1]).await, 0, "old failed: gone with its rows");
    assert_eq!(left(ids[2]).await, 3, "locked: skipped, kept");
    assert_eq!(left(ids[3]).await, 3, "needs_human is never purged");
    assert_eq!(left(ids[4]).await, 3, "open actions are never purged");
    assert!(left(recent.action_id).await >= 1, "recent: kept");
    holder.rollback().await.unwrap();
    // Released, the held one goes on the next run.
    let again = idem_store::retention::purge_settled(pool, day, 100, None, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(again.actions, 1);
    assert_eq!(left(ids[2]).await, 0);
}

/// A delivery the broker dropped (e.g. Kafka retention deleted the message before any
/// worker read it): the action sits in `received` with no message left anywhere. Past
/// `stranded_after` the sweeper starts it from its inbox row, once; a younger one is left
/// to its delivery; a message that turns up afterwards is absorbed as a duplicate.
#[tokio::test]
async fn an_action_whose_delivery_was_lost_is_started_from_the_inbox_once() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let w = Worker::new(
        db.store.clone(),
        cell(&stripe.base_url(), |c| c),
        WorkerConfig {
            id: "w-stranded".into(),
            stranded_after: Some(Duration::from_secs(600)),
            ..WorkerConfig::default()
        },
    );
    let old = NewAction::new(ActionId::random(), cell_name(), charge_args(700));
    enqueue(db.store.pool(), &old).await.unwrap();
    // The relay published it and deleted the row; the broker then lost the message.
    let lost = take_delivery(&db.store).await;
    sqlx::query(
        "UPDATE idem.actions SET created_at = now() - interval '1 hour' WHERE action_id = $1",
    )
    .bind(old.action_id.as_uuid())
    .execute(db.store.pool())
    .await
    .unwrap();
    let young = NewAction::new(ActionId::random(), cell_name(), charge_args(701));
    enqueue(db.store.pool(), &young).await.unwrap();
    let _young_lost = take_delivery(&db.store).await;

    w.sweep_once().await.unwrap();
    let row = state(&db.store, old.action_id).await;
    assert_eq!(row.state, State::Succeeded, "{row:?}");
    assert_eq!(stripe.sim.effects_for(&old.action_id.to_string()), 1);
    let reason: (Option<String>,) = sqlx::query_as(
        "SELECT reason FROM idem.transitions WHERE action_id = $1 AND event = 'start'",
    )
    .bind(old.action_id.as_uuid())
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!(
        reason
            .0
            .as_deref()
            .unwrap_or("")
            .starts_with("re-driven from the inbox"),
        "{reason:?}"
    );
    assert_eq!(
        state(&db.store, young.action_id).await.state,
        State::Received,
        "younger than stranded_after: left to its delivery"
    );
    assert_eq!(stripe.sim.effects_for(&young.action_id.to_string()), 0);

    // The lost message turns up after all.
    let report = w.deliver(&[lost]).await.unwrap();
    assert_eq!((report.started, report.duplicates), (0, 1));
    assert_eq!(stripe.sim.effects_for(&old.action_id.to_string()), 1);
}

/// SQL derives the same ids as Rust (and as every client): `testdata/intent_ids.json`.
#[tokio::test]
async fn sql_intent_ids_match_the_shared_vectors() {
    let db = TestDb::new().await;
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/intent_ids.json"
    ))
    .unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let vectors = v["intent_ids"]["vectors"].as_array().unwrap();
    assert!(vectors.len() >= 5);
    for t in vectors {
        let (id,): (uuid::Uuid,) = sqlx::query_as("SELECT idem.intent_id($1, $2)")
            .bind(t["scope"].as_str().unwrap())
            .bind(t["intent"].as_str().unwrap())
            .fetch_one(db.store.pool())
            .await
            .unwrap();
        assert_eq!(id.to_string(), t["id"].as_str().unwrap(), "{}", t["note"]);
    }
}

/// From SQL, the same (scope, intent) is one action; with other arguments it is SQLSTATE
/// IDM01 naming the existing action; an empty intent is IDM02.
#[tokio::test]
async fn sql_enqueue_intent_is_one_action_and_conflicts_on_other_arguments() {
    let db = TestDb::new().await;
    let call = |amount: i64| {
        sqlx::query_as::<_, (uuid::Uuid, String, bool)>(
            "SELECT action_id, state, created FROM idem.enqueue_intent('session-42', 'invoice-42-payment', \
             'stripe.charge', jsonb_build_object('amount', $1::int, 'currency', 'usd'))",
        )
        .bind(amount as i32)
        .fetch_one(db.store.pool())
    };
    let (id, state, created) = call(500).await.unwrap();
    assert!(created);
    assert_eq!(state, "received");
    assert_eq!(
        id,
        ActionId::from_intent("session-42", "invoice-42-payment").as_uuid()
    );
    let (again, _, created) = call(500).await.unwrap();
    assert_eq!((again, created), (id, false));
    match call(501).await {
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(e.code().as_deref(), Some("IDM01"));
            assert!(e.message().contains(&id.to_string()), "{}", e.message());
        }
        other => panic!("expected IDM01, got {other:?}"),
    }
    let empty = sqlx::query("SELECT * FROM idem.enqueue_intent('s', ' ', 'stripe.charge', '{}')")
        .execute(db.store.pool())
        .await;
    match empty {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("IDM02")),
        other => panic!("expected IDM02, got {other:?}"),
    }
    let (n,): (i64,) = sqlx::query_as("SELECT count(*) FROM idem.actions")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);
}

/// What an operator sees when the database is not ready: an unmigrated database says to
/// run `idem migrate`, a missing database is not "the server is down", and a server that
/// is down is reported within 5 s.
#[tokio::test]
async fn store_errors_say_what_is_wrong_and_come_fast() {
    let db = TestDb::new().await;
    // A database of the same server, never migrated.
    let opts: sqlx::postgres::PgConnectOptions = db.url.parse().unwrap();
    let bare = format!("idem_bare_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {bare}"))
        .execute(db.store.pool())
        .await
        .unwrap();
    use sqlx::ConnectOptions;
    let bare_url = opts.clone().database(&bare).to_url_lossy().to_string();
    let e = Store::connect_migrated(&bare_url, 1).await.unwrap_err();
    assert!(e.to_string().contains("run `idem migrate`"), "{e}");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(["status", &uuid::Uuid::new_v4().to_string()])
        .env("DATABASE_URL", &bare_url)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("idem migrate"));
    sqlx::query(&format!("DROP DATABASE {bare} WITH (FORCE)"))
        .execute(db.store.pool())
        .await
        .unwrap();
    // A database that does not exist.
    let missing = opts
        .clone()
        .database("idem_no_such_db")
        .to_url_lossy()
        .to_string();
    let e = Store::connect(&missing, 1).await.unwrap_err();
    assert!(
        matches!(e, idem_store::StoreError::NoDatabase { .. }),
        "{e}"
    );
    assert!(e.to_string().contains("createdb"), "{e}");
    // A server that is not there: refused fast, within 5 s.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let t = std::time::Instant::now();
    let e = Store::connect(&format!("postgres://postgres@127.0.0.1:{port}/postgres"), 1)
        .await
        .unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert!(e.to_string().contains("cannot reach PostgreSQL"), "{e}");
}

// ---------------------------------------------------------------- partner stack

/// The cell's documented rate holds at the partner: 20 Slack posts to one channel under a
/// limit of 5/s per channel arrive spread over ≥ 3.4 s with never more than 6 (the burst
/// of 1 plus 5) in any second, while another channel is counted apart; each post lands
/// once, including those the limiter held past their budget and the state machine retried.
#[tokio::test]
async fn the_cells_rate_limit_holds_per_channel_at_the_partner() {
    use idem_cells::SlackPost;
    use idem_core::RateLimit;
    use idem_sim::{FaultRates, SimServer, SlackSim};

    let db = TestDb::new().await;
    let sim = SlackSim::new(1, FaultRates::default(), Duration::ZERO);
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let slack = SlackPost::new(server.base_url(), "xoxb-rate-test").with_profile(|p| {
        p.rate_limit = Some(RateLimit::per_second(5).with_burst(1).per("channel"));
        p.call_timeout = Duration::from_secs(4);
        p.retry.base = Duration::from_millis(50);
        p.retry.max = Duration::from_millis(200);
    });
    let w = worker(&db.store, Registry::new().with(slack), "w-rate");
    w.register_with_fleet().await.unwrap();
    let slack_cell = CellName::new("slack.post").unwrap();
    let mut ids = vec![];
    for (channel, n) in [("C0BUSY", 20), ("C0QUIET", 5)] {
        for i in 0..n {
            let a = NewAction::new(
                ActionId::random(),
                slack_cell.clone(),
                json!({"channel": channel, "text": format!("post {i}")}),
            );
            enqueue(db.store.pool(), &a).await.unwrap();
            ids.push(a.action_id);
        }
    }
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn({
        let w = w.clone();
        async move { w.run(shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    for id in &ids {
        loop {
            let row = state(&db.store, *id).await;
            if row.state.is_settled() {
                assert_eq!(row.state, State::Succeeded, "{row:?}");
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not settled: {row:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();

    for id in &ids {
        assert_eq!(
            sim.core.effects_for(&id.to_string()),
            1,
            "one post per action"
        );
    }
    let timed = sim.core.ledger_timed();
    assert_eq!(timed.len(), ids.len());
    for (channel, n) in [("C0BUSY", 20usize), ("C0QUIET", 5)] {
        let mut at: Vec<_> = timed
            .iter()
            .filter(|(e, _)| e.id.starts_with(&format!("{channel}/")))
            .map(|(_, t)| *t)
            .collect();
        at.sort();
        assert_eq!(at.len(), n);
        let ms: Vec<u128> = at.iter().map(|t| (*t - at[0]).as_millis()).collect();
        let most_in_a_second = (0..at.len())
            .map(|i| {
                at[i..]
                    .iter()
                    .take_while(|t| **t - at[i] < Duration::from_secs(1))
                    .count()
            })
            .max()
            .unwrap();
        assert!(
            most_in_a_second <= 6,
            "{channel}: {most_in_a_second} posts within one second (limit 5/s, burst 1): {ms:?} ms"
        );
        let span = at[n - 1] - at[0];
        let least = Duration::from_millis(200 * (n as u64 - 1)).mul_f64(0.85);
        assert!(
            span >= least,
            "{channel}: {n} posts in {span:?}, expected ≥ {least:?}: {ms:?} ms"
        );
    }
}

#[tokio::test]
async fn a_call_longer_than_the_lease_keeps_it_by_heartbeat() {
    // A 600 ms lease under a 2 s call: only the heartbeat stops the other worker's sweeper
    // from taking the action mid-call (it would replay the key: a second request, a 409).
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    stripe.sim.script([Fault::Delay(2000)]);
    let slow = |c: StripeCharge| c.with_profile(|p| p.call_timeout = Duration::from_secs(5));
    let mut config = idem_testkit::harness::worker_config("beating");
    config.lease = Duration::from_millis(600);
    let w1 = Worker::new(db.store.clone(), cell(&stripe.base_url(), slow), config);
    let w2 = worker(&db.store, cell(&stripe.base_url(), slow), "sweeper");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(6100));
    enqueue(db.store.pool(), &action).await.unwrap();
    let d = take_delivery(&db.store).await;
    let call = tokio::spawn(async move { w1.deliver(&[d]).await });
    while !call.is_finished() {
        w2.sweep_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(call.await.unwrap().unwrap().started, 1);
    let row = state(&db.store, action.action_id).await;
    assert_eq!(row.state, State::Succeeded, "{row:?}");
    assert_eq!(
        stripe.sim.requests().len(),
        1,
        "no replay while the call ran"
    );
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    let events = transitions(&db.store, action.action_id).await;
    assert!(!events.contains(&"lease_expired".to_string()), "{events:?}");
}

#[tokio::test]
async fn a_killed_workers_long_call_is_taken_over_within_the_heartbeat_lease() {
    // A 20 s call timeout means a 41 s lease without heartbeats; with a 1 s heartbeat
    // lease the survivor replays the key within seconds of the kill -9.
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    stripe.sim.script([Fault::Delay(3000)]);
    let url = stripe.base_url();
    let spawn = |id: &str| {
        spawn_worker_timed(
            &db.url,
            &url,
            id,
            &["--stripe-call-timeout-ms", "20000", "--lease-ms", "1000"],
        )
    };
    let mut first = spawn("doomed");
    let action = NewAction::new(ActionId::random(), cell_name(), charge_args(6200));
    enqueue(db.store.pool(), &action).await.unwrap();
    wait_until(&db.store, action.action_id, Duration::from_secs(20), |r| {
        r.state == State::Executing
    })
    .await;
    first.kill();
    let killed = tokio::time::Instant::now();
    let _second = spawn("survivor");
    let row = wait_until(&db.store, action.action_id, Duration::from_secs(30), |r| {
        r.state.is_settled()
    })
    .await;
    let took = killed.elapsed();
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(stripe.sim.effects_for(&action.action_id.to_string()), 1);
    let events = transitions(&db.store, action.action_id).await;
    assert!(events.contains(&"lease_expired".to_string()), "{events:?}");
    // Lease 1 s + the first call's 3 s (its replay meets it in flight: 409, then the stored
    // answer) + process start: far from the 41 s a call-timeout lease would take.
    assert!(
        took < Duration::from_secs(15),
        "settled {took:?} after the kill"
    );
}

/// With fast calls a direct claim takes more actions than there are free call slots and
/// queues them (`idem_worker::pace`), yet no more than `concurrency` calls are ever made at
/// once; a stop mid-run calls and settles every queued action, and each action that settled
/// was charged once.
#[tokio::test]
async fn claims_run_ahead_of_fast_calls_but_calls_stay_within_the_slots() {
    claims_ahead_with_batch(32).await;
}

/// With claims of two slots' worth (batch 8, 4 slots) a second claim runs while the first
/// commits (`CLAIMS_AT_ONCE`); the same holds: never more calls than slots, a stop settles
/// every claimed action (including a claim under way), each charged once.
#[tokio::test]
async fn overlapping_claims_keep_calls_within_the_slots_and_stop_cleanly() {
    claims_ahead_with_batch(8).await;
}

async fn claims_ahead_with_batch(batch: u32) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use tower::ServiceExt as _;

    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let pool = db.store.pool();
    for i in 0..600 {
        let action = NewAction::new(ActionId::random(), cell_name(), charge_args(100 + i));
        enqueue(pool, &action).await.unwrap();
    }
    let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let counting = {
        let (now, most) = (now.clone(), most.clone());
        tower::layer::layer_fn(move |inner: idem_worker::partner::PartnerService| {
            let (now, most) = (now.clone(), most.clone());
            tower::service_fn(move |call| {
                let (inner, now, most) = (inner.clone(), now.clone(), most.clone());
                async move {
                    most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    let answer = inner.oneshot(call).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    answer
                }
            })
        })
    };
    let w = Worker::builder(db.store.clone(), cell(&stripe.base_url(), |c| c))
        .config(WorkerConfig {
            concurrency: 4,
            batch,
            ..idem_testkit::harness::worker_config("ahead-w")
        })
        .partner_layer(counting)
        .build();
    stop_once_settled(w, pool, 100, Duration::from_secs(30)).await;

    assert!(
        most.load(Ordering::SeqCst) <= 4,
        "{} calls at once with 4 slots",
        most.load(Ordering::SeqCst)
    );
    // A claim's attempts share its transaction's now().
    let (largest,): (i64,) = sqlx::query_as(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM idem.attempts GROUP BY at) c",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(
        largest > 4,
        "no claim ran ahead of the 4 slots: {largest} at most"
    );
    let states = state_counts(pool).await;
    let count = |s: &str| states.iter().find(|(st, _)| st == s).map_or(0, |(_, n)| *n);
    assert_eq!(
        count("succeeded") + count("received"),
        600,
        "a stop leaves only settled or untouched actions, queued ones settled: {states:?}"
    );
    assert!(count("received") > 0, "stopped before the end: {states:?}");
    let ledger = stripe.sim.ledger();
    assert_eq!(ledger.len() as i64, count("succeeded"));
    let mut charged: Vec<_> = ledger.iter().map(|e| e.idem_action_id.clone()).collect();
    charged.sort();
    charged.dedup();
    assert_eq!(charged.len(), ledger.len(), "an action charged twice");
}

/// The Slack simulator holds callers to what Slack gives an app outside the Marketplace
/// (2025 limits): 15 messages a history page whatever `limit` asks, one history request a
/// minute (the next is HTTP 429 with `Retry-After`); and the cell, asking for 15 within the
/// window its attempt can have landed in, finds a lost post and never posts it again.
#[tokio::test]
async fn slack_history_is_held_to_fifteen_a_page_and_one_request_a_minute() {
    use idem_cells::SlackPost;
    use idem_sim::{FaultRates, SimServer, SlackSim};

    let sim = SlackSim::new(1, FaultRates::default(), Duration::ZERO);
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let base = server.base_url();
    for i in 0..20 {
        let r: serde_json::Value = http
            .post(format!("{base}/api/chat.postMessage"))
            .bearer_auth("xoxb-limits")
            .json(&json!({"channel": "C0LIMITS", "text": format!("chatter {i}")}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(r["ok"], true, "{r}");
    }
    let history = || {
        http.get(format!("{base}/api/conversations.history"))
            .bearer_auth("xoxb-limits")
            .query(&[("channel", "C0LIMITS"), ("limit", "200")])
            .send()
    };
    let r = history().await.unwrap();
    assert_eq!(r.status(), 200);
    let page: serde_json::Value = r.json().await.unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 15, "{page}");
    assert_eq!(page["has_more"], true);
    let r = history().await.unwrap();
    assert_eq!(r.status(), 429, "a second request inside the minute");
    let wait: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((55..=60).contains(&wait), "Retry-After {wait}");

    // The cell's lookup, on a simulator whose minute is a second: a post whose answer was
    // lost, after 20 others in the channel, is found.
    let sim = SlackSim::new(2, FaultRates::default(), Duration::ZERO)
        .with_history_rate(Duration::from_secs(1));
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let db = TestDb::new().await;
    let slack = SlackPost::new(server.base_url(), "xoxb-limits").with_profile(|p| {
        p.lookup = idem_core::profile::Lookup::Eventual {
            lag_bound: Duration::from_millis(200),
        };
        p.settle_time = Duration::from_millis(200);
        p.retry.base = Duration::from_millis(50);
    });
    let w = worker(&db.store, Registry::new().with(slack), "w-slack-limits");
    w.register_with_fleet().await.unwrap();
    for i in 0..20 {
        http.post(format!("{}/api/chat.postMessage", server.base_url()))
            .bearer_auth("xoxb-limits")
            .json(&json!({"channel": "C0LIMITS", "text": format!("chatter {i}")}))
            .send()
            .await
            .unwrap();
    }
    sim.core.script([idem_sim::Fault::DropAfterEffect]);
    let a = NewAction::new(
        ActionId::random(),
        CellName::new("slack.post").unwrap(),
        json!({"channel": "C0LIMITS", "text": "the one that matters"}),
    );
    enqueue(db.store.pool(), &a).await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn({
        let w = w.clone();
        async move { w.run(shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let row = loop {
        let row = state(&db.store, a.action_id).await;
        if row.state.is_settled() {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(row.state, State::Succeeded, "{row:?}");
    assert_eq!(sim.core.effects_for(&a.action_id.to_string()), 1);
    assert_eq!(sim.post_requests(), 21, "posted once, never again");
}

/// A queued SMS has no send date at Twilio, so a `DateSent` filter never lists it: the
/// cell lists by To/From only, page after page, and finds a queued message whose answer
/// was lost among 1,200 others to the same number — succeeded, sent once, no person asked.
#[tokio::test]
async fn a_queued_sms_whose_answer_was_lost_is_found_without_a_send_date() {
    use idem_cells::TwilioSms;
    use idem_sim::{FaultRates, SimServer, TwilioSim};

    let sim = TwilioSim::new(3, FaultRates::default(), Duration::ZERO);
    sim.set_queued_for(Duration::from_secs(3600));
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let account = idem_testkit::subjects::TWILIO_TEST_ACCOUNT;
    let http = reqwest::Client::new();
    let create = format!(
        "{}/2010-04-01/Accounts/{account}/Messages.json",
        server.base_url()
    );
    for i in 0..1200 {
        let r = http
            .post(&create)
            .basic_auth(account, Some("twilio-test-token"))
            .form(&[
                ("To", "+15550001111"),
                ("From", "+15550002222"),
                ("Body", &format!("reminder {i}")),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    // The Twilio list, as documented: a DateSent filter finds none of the queued messages.
    let listed: serde_json::Value = http
        .get(&create)
        .basic_auth(account, Some("twilio-test-token"))
        .query(&[("To", "+15550001111"), ("DateSent>", "2000-01-01")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["messages"].as_array().unwrap().len(), 0, "{listed}");

    let db = TestDb::new().await;
    let cell = TwilioSms::new(
        server.base_url(),
        account,
        "twilio-test-token",
        "https://hooks.example/s",
    )
    .with_profile(|p| {
        p.lookup = idem_core::profile::Lookup::Eventual {
            lag_bound: Duration::from_millis(300),
        };
        p.settle_time = Duration::from_millis(300);
        p.retry.base = Duration::from_millis(50);
    });
    let w = worker(&db.store, Registry::new().with(cell), "w-twilio-queued");
    w.register_with_fleet().await.unwrap();
    sim.core.script([idem_sim::Fault::DropAfterEffect]);
    let a = NewAction::new(
        ActionId::random(),
        CellName::new("twilio.sms.send").unwrap(),
        json!({"to": "+15550001111", "from": "+15550002222", "body": "your code is 4711"}),
    );
    enqueue(db.store.pool(), &a).await.unwrap();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn({
        let w = w.clone();
        async move { w.run(shutdown).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let row = loop {
        let row = state(&db.store, a.action_id).await;
        if row.state.is_settled() || row.state == State::NeedsHuman {
            break row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not settled: {row:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(row.state, State::Succeeded, "{row:?}");
    assert_eq!(sim.core.effects_for(&a.action_id.to_string()), 1);
    assert_eq!(sim.create_requests(), 1201, "sent once, never again");
}

/// The IETF draft makes `Idempotency-Key` an RFC 8941 String: the generic simulator refuses
/// a bare key with a 400 that says so (and creates nothing), and takes the quoted one.
#[tokio::test]
async fn the_ietf_simulator_takes_the_key_only_as_a_structured_header_string() {
    use idem_sim::{FaultRates, IetfConfig, IetfSim, SimServer};
    let sim = IetfSim::new(1, FaultRates::default(), IetfConfig::default());
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let http = reqwest::Client::new();
    let post = |key: &'static str| {
        http.post(format!("{}/v1/payouts", server.base_url()))
            .bearer_auth("tok")
            .header("Idempotency-Key", key)
            .json(&json!({"amount": 100, "currency": "eur", "destination": "acct 1"}))
            .send()
    };
    let bare = post("8e03978e-40d5-43e8-bc93-6894a57f9324").await.unwrap();
    assert_eq!(bare.status(), 400);
    let body: serde_json::Value = bare.json().await.unwrap();
    assert!(body.to_string().contains("RFC 8941"), "{body}");
    assert!(
        sim.core.ledger().is_empty(),
        "nothing created under a malformed key"
    );
    let quoted = post("\"8e03978e-40d5-43e8-bc93-6894a57f9324\"")
        .await
        .unwrap();
    assert_eq!(quoted.status(), 201, "{}", quoted.text().await.unwrap());
    assert_eq!(sim.core.ledger().len(), 1);
}

/// Stripe as published: confirming needs a payment method (Stripe does not take the
/// customer's by itself) and, with automatic payment methods, a `return_url` unless
/// redirects are ruled out; a card that needs 3-D Secure waits in `requires_action` unless
/// `error_on_requires_action`. The cell charges the customer's default payment method when
/// none is given, rules redirects out, and a card that needs authentication fails at once —
/// never a charge, never days in doubt.
#[tokio::test]
async fn stripe_charges_need_a_payment_method_and_fail_at_once_when_authentication_is_required() {
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1/payment_intents", stripe.base_url());
    let post = |form: Vec<(&'static str, &'static str)>| {
        http.post(&url).bearer_auth(TEST_SECRET).form(&form).send()
    };
    let base = vec![("amount", "500"), ("currency", "usd"), ("confirm", "true")];
    let r = post(base.clone()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("missing a payment method"));
    let mut with_pm = base.clone();
    with_pm.push(("payment_method", "pm_card_visa"));
    let r = post(with_pm.clone()).await.unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("return_url"));
    with_pm.push(("automatic_payment_methods[allow_redirects]", "never"));
    assert_eq!(post(with_pm).await.unwrap().status(), 200);
    assert_eq!(stripe.sim.ledger().len(), 1);

    let db = TestDb::new().await;
    stripe.sim.add_customer("cus_nodefault", None);
    stripe
        .sim
        .add_customer("cus_card", Some("pm_card_mastercard"));
    let cell = StripeCharge::new(stripe.base_url(), TEST_SECRET).with_profile(|p| {
        p.retry.base = Duration::from_millis(50);
        p.settle_time = Duration::from_millis(300);
    });
    let w = worker(&db.store, Registry::new().with(cell), "w-stripe-contract");
    w.register_with_fleet().await.unwrap();
    let charge = CellName::new("stripe.charge").unwrap();
    let cases = [
        (
            json!({"amount": 900, "currency": "usd", "payment_method": "pm_card_authenticationRequired"}),
            State::Failed,
            "authentication_required",
        ),
        (
            json!({"amount": 901, "currency": "usd", "customer": "cus_nodefault"}),
            State::Failed,
            "no default payment method",
        ),
        (
            json!({"amount": 902, "currency": "usd", "customer": "cus_card"}),
            State::Succeeded,
            "",
        ),
    ];
    let mut ids = vec![];
    for (args, _, _) in &cases {
        let a = NewAction::new(ActionId::random(), charge.clone(), args.clone());
        enqueue(db.store.pool(), &a).await.unwrap();
        ids.push(a.action_id);
    }
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let running = tokio::spawn({
        let w = w.clone();
        async move { w.run(shutdown).await }
    });
    for (id, (_, want, why)) in ids.iter().zip(&cases) {
        let row = wait_until(&db.store, *id, Duration::from_secs(10), |r| {
            r.state.is_settled()
        })
        .await;
        assert_eq!(row.state, *want, "{row:?}");
        assert!(row.reason.as_deref().unwrap_or("").contains(why), "{row:?}");
    }
    stop.send(true).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(stripe.sim.effects_for(&ids[0].to_string()), 0);
    assert_eq!(stripe.sim.effects_for(&ids[1].to_string()), 0);
    assert_eq!(stripe.sim.effects_for(&ids[2].to_string()), 1);
    // The customer's default was the card charged.
    let row = state(&db.store, ids[2]).await;
    let receipt = row.receipt.unwrap();
    let pi_id = receipt["partner_ref"].as_str().unwrap();
    let pi: serde_json::Value = http
        .get(format!("{}/v1/payment_intents/{pi_id}", stripe.base_url()))
        .bearer_auth(TEST_SECRET)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(pi["payment_method"], "pm_card_mastercard", "{pi}");
}
