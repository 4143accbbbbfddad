//! The human side of the loop, through the real `idem` binary: approvals bound to the
//! reviewed arguments, rejections, expiry, and resolutions of needs_human cases — each
//! audited with who decided, and each checked against the Stripe simulator's ledger.

use idem_cells::TypedCell as _;
use std::time::Duration;

use idem_cells::{Registry, StripeCharge};
use idem_core::profile::ApprovalPolicy;
use idem_core::{ActionId, CellName, RetryPolicy, State};
use idem_sim::{Fault, StripeSimConfig};
use idem_store::{enqueue, inbox, NewAction, Store};
use idem_testkit::harness::worker_config;
use idem_testkit::{StripeFixture, TestDb, TEST_SECRET};
use idem_worker::{Delivery, TraceHeaders, Worker, WorkerConfig};
use serde_json::json;

fn worker(store: &Store, cell: StripeCharge, approval_ttl: Duration) -> Worker {
    let cell = cell.with_profile(|p| {
        p.call_timeout = Duration::from_millis(1000);
        p.settle_time = Duration::from_millis(200);
        p.retry = RetryPolicy {
            base: Duration::from_millis(50),
            max: Duration::from_millis(200),
            max_attempts: 8,
            // A test that shortens the outage budget keeps it.
            outage_budget: p.retry.outage_budget,
            jitter: 0.0,
        };
    });
    Worker::new(
        store.clone(),
        Registry::new().with(cell),
        WorkerConfig {
            approval_ttl,
            ..worker_config("human-test-worker")
        },
    )
}

async fn enqueue_charge(store: &Store, amount: i64) -> ActionId {
    let a = NewAction::new(
        ActionId::random(),
        CellName::new("stripe.charge").unwrap(),
        json!({"amount": amount, "currency": "usd", "customer": "cus_human"}),
    );
    enqueue(store.pool(), &a).await.unwrap();
    a.action_id
}

/// Everything in the outbox, as a transport would hand it over.
async fn take_deliveries(store: &Store) -> Vec<Delivery> {
    let mut tx = store.pool().begin().await.unwrap();
    let msgs = idem_store::queue::take_outbox(&mut tx, 100).await.unwrap();
    tx.commit().await.unwrap();
    msgs.into_iter()
        .map(|m| Delivery {
            payload: m.payload,
            source: json!({"outbox_seq": m.seq}),
            trace: TraceHeaders::default(),
            misrouted: None,
        })
        .collect()
}

async fn deliver_all(store: &Store, w: &Worker) {
    let ds = take_deliveries(store).await;
    w.deliver(&ds).await.unwrap();
}

async fn state(store: &Store, id: ActionId) -> inbox::ActionRow {
    inbox::get(store.pool(), id).await.unwrap().unwrap()
}

/// Run `idem ARGS` against the test database: (success, stdout, stderr).
async fn idem(db: &TestDb, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_idem"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .env_remove("IDEM_ACTOR")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn sweep_until(w: &Worker, store: &Store, id: ActionId, want: State, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        w.sweep_once().await.unwrap();
        let row = state(store, id).await;
        if row.state == want {
            return;
        }
        if tokio::time::Instant::now() >= deadline || row.state.is_settled() {
            let t: Vec<(String, String, Option<String>)> = sqlx::query_as(
                "SELECT event, to_state, to_char(at, 'HH24:MI:SS.MS') || ' ' || actor FROM idem.transitions WHERE action_id = $1 ORDER BY id",
            )
            .bind(id.as_uuid())
            .fetch_all(store.pool())
            .await
            .unwrap();
            panic!("wanted {want}, got {row:?}; transitions {t:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn approvals_bind_to_the_reviewed_arguments_reject_and_expire() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let cell = StripeCharge::new(stripe.base_url(), TEST_SECRET).with_profile(|p| {
        p.approval = ApprovalPolicy::Above {
            argument: "amount".into(),
            threshold: 50_000,
        };
    });
    let w = worker(&db.store, cell, Duration::from_secs(3));
    let small = enqueue_charge(&db.store, 100).await;
    let approve_me = enqueue_charge(&db.store, 60_000).await;
    let reject_me = enqueue_charge(&db.store, 70_000).await;
    let forget_me = enqueue_charge(&db.store, 80_000).await;
    deliver_all(&db.store, &w).await;
    assert_eq!(state(&db.store, small).await.state, State::Succeeded);
    for id in [approve_me, reject_me, forget_me] {
        assert_eq!(state(&db.store, id).await.state, State::AwaitingApproval);
    }
    assert_eq!(
        stripe.sim.requests().len(),
        1,
        "nothing sent before approval"
    );

    let (ok, out, err) = idem(&db, &["approvals", "list", "--json"]).await;
    assert!(ok, "{err}");
    let pending: serde_json::Value = serde_json::from_str(&out).unwrap();
    let pending = pending.as_array().unwrap();
    assert_eq!(pending.len(), 3);
    let fp = pending
        .iter()
        .find(|p| p["action_id"] == approve_me.to_string())
        .unwrap()["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(fp.len(), 64);

    // An approval given on other arguments than the action's is refused.
    let wrong = "0".repeat(64);
    let a = approve_me.to_string();
    let (ok, _, err) = idem(
        &db,
        &[
            "approvals",
            "approve",
            &a,
            "--as",
            "alice",
            "--fingerprint",
            &wrong,
        ],
    )
    .await;
    assert!(!ok && err.contains("fingerprint"), "{err}");
    // Without a name, no decision.
    let (ok, _, err) = idem(&db, &["approvals", "approve", &a]).await;
    assert!(!ok && err.contains("--as"), "{err}");
    w.sweep_once().await.unwrap();
    assert_eq!(
        state(&db.store, approve_me).await.state,
        State::AwaitingApproval
    );

    let (ok, _, err) = idem(
        &db,
        &[
            "approvals",
            "approve",
            &a,
            "--as",
            "alice",
            "--fingerprint",
            &fp,
            "--reason",
            "known customer",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let r = reject_me.to_string();
    let (ok, _, err) = idem(
        &db,
        &[
            "approvals",
            "reject",
            &r,
            "--as",
            "bob",
            "--reason",
            "too much",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(state(&db.store, reject_me).await.state, State::Rejected);

    sweep_until(
        &w,
        &db.store,
        approve_me,
        State::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(stripe.sim.effects_for(&a), 1);
    assert_eq!(stripe.sim.effects_for(&r), 0);
    let hist = idem_store::decisions::history(db.store.pool(), approve_me)
        .await
        .unwrap();
    assert_eq!(hist.len(), 1);
    assert_eq!(
        (hist[0].0.as_str(), hist[0].1.as_str()),
        ("approve", "human:alice")
    );
    let (actor,): (String,) = sqlx::query_as(
        "SELECT actor FROM idem.transitions WHERE action_id = $1 AND event = 'reject'",
    )
    .bind(reject_me.as_uuid())
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert_eq!(actor, "human:bob");
    // The worker starts the approved charge; its transition names the person who approved.
    let (actor, reason): (String, Option<String>) = sqlx::query_as(
        "SELECT actor, reason FROM idem.transitions WHERE action_id = $1 AND event = 'approve'",
    )
    .bind(approve_me.as_uuid())
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!(!actor.starts_with("human:"), "{actor}");
    let reason = reason.unwrap_or_default();
    assert!(reason.starts_with("approved by alice"), "{reason}");

    // Nobody decides on the third: after the approval window it is rejected, never sent.
    sweep_until(
        &w,
        &db.store,
        forget_me,
        State::Rejected,
        Duration::from_secs(10),
    )
    .await;
    let row = state(&db.store, forget_me).await;
    assert!(
        row.reason.as_deref().unwrap().contains("expired"),
        "{row:?}"
    );
    assert_eq!(stripe.sim.effects_for(&forget_me.to_string()), 0);
    let f = forget_me.to_string();
    let (ok, _, err) = idem(&db, &["approvals", "approve", &f, "--as", "alice"]).await;
    assert!(
        !ok && err.contains("rejected"),
        "late approval refused: {err}"
    );
    assert_eq!(
        stripe.sim.requests().len(),
        2,
        "the small charge and the approved one"
    );
}

#[tokio::test]
async fn needs_human_cases_are_resolved_with_audited_decisions() {
    let db = TestDb::new().await;
    // Search lags a minute and the key window is 300 ms: after a lost answer idem can
    // neither replay nor trust a miss, so within the 1 s doubt horizon it asks a person.
    let stripe = StripeFixture::start(StripeSimConfig {
        search_lag: Duration::from_secs(60),
        key_retention: Duration::from_millis(400),
        ..StripeSimConfig::default()
    })
    .await;
    let cell = StripeCharge::new(stripe.base_url(), TEST_SECRET)
        .reconcile_via_search(Duration::from_secs(60))
        .with_profile(|p| {
            let k = p.key.as_mut().unwrap();
            k.retention = Duration::from_millis(400);
            k.safety_margin = Duration::from_millis(100);
            p.doubt_horizon = Duration::from_secs(1);
        });
    let w = worker(&db.store, cell, Duration::from_secs(3600));
    let retry_me = enqueue_charge(&db.store, 1_111).await;
    let happened = enqueue_charge(&db.store, 2_222).await;
    let not_happened = enqueue_charge(&db.store, 3_333).await;
    // Delivered together: in enqueue order the three requests meet these faults.
    stripe
        .sim
        .script([Fault::FailBefore, Fault::DropAfterEffect, Fault::FailBefore]);
    let mut tx = db.store.pool().begin().await.unwrap();
    let msgs = idem_store::queue::take_outbox(&mut tx, 100).await.unwrap();
    tx.commit().await.unwrap();
    for m in msgs {
        // One at a time, so the scripted faults land in order.
        w.deliver(&[Delivery {
            payload: m.payload,
            source: json!({"outbox_seq": m.seq}),
            trace: TraceHeaders::default(),
            misrouted: None,
        }])
        .await
        .unwrap();
    }
    // Past the key window before the first sweep: no replay can settle them.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in [retry_me, happened, not_happened] {
        sweep_until(
            &w,
            &db.store,
            id,
            State::NeedsHuman,
            Duration::from_secs(15),
        )
        .await;
    }
    let (ok, out, err) = idem(&db, &["needs-human", "--json"]).await;
    assert!(ok, "{err}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // Retry: the person vouches nothing happened; idem sends again under a new key.
    let id = retry_me.to_string();
    let (ok, _, err) = idem(&db, &["resolve", &id, "--retry", "--as", "carol"]).await;
    assert!(
        !ok && err.contains("--reason"),
        "a resolution needs a reason: {err}"
    );
    let (ok, out, err) = idem(
        &db,
        &[
            "resolve",
            &id,
            "--retry",
            "--as",
            "carol",
            "--reason",
            "no charge in the dashboard",
        ],
    )
    .await;
    assert!(ok && out.contains("retry_scheduled"), "{out}{err}");
    sweep_until(
        &w,
        &db.store,
        retry_me,
        State::Succeeded,
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(stripe.sim.effects_for(&id), 1);
    assert_eq!(state(&db.store, retry_me).await.key_generation, 1);

    // Happened: the person found the charge; its id becomes the receipt.
    let id = happened.to_string();
    let pi = stripe
        .sim
        .ledger()
        .into_iter()
        .find(|e| e.idem_action_id.as_deref() == Some(id.as_str()))
        .expect("the lost answer's charge is in the ledger")
        .id;
    let (ok, _, err) = idem(
        &db,
        &[
            "resolve",
            &id,
            "--happened",
            &pi,
            "--as",
            "carol",
            "--reason",
            "found in the dashboard",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let row = state(&db.store, happened).await;
    assert_eq!(row.state, State::Succeeded);
    assert_eq!(row.receipt.unwrap()["partner_ref"], pi.as_str());
    assert_eq!(stripe.sim.effects_for(&id), 1);

    // Not happened: final, nothing sent.
    let id = not_happened.to_string();
    let (ok, _, err) = idem(
        &db,
        &[
            "resolve",
            &id,
            "--not-happened",
            "--as",
            "carol",
            "--reason",
            "customer cancelled",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(state(&db.store, not_happened).await.state, State::Failed);
    assert_eq!(stripe.sim.effects_for(&id), 0);

    // Decisions are recorded with who and why; a settled action takes no more.
    let hist = idem_store::decisions::history(db.store.pool(), not_happened)
        .await
        .unwrap();
    assert_eq!(hist[0].0, "not_happened");
    assert_eq!(hist[0].1, "human:carol");
    assert_eq!(hist[0].2.as_deref(), Some("customer cancelled"));
    let (ok, _, err) = idem(
        &db,
        &[
            "resolve", &id, "--retry", "--as", "carol", "--reason", "again",
        ],
    )
    .await;
    assert!(!ok && err.contains("failed"), "{err}");
}

#[tokio::test]
async fn an_email_that_cannot_be_found_goes_to_a_person_and_is_never_resent() {
    use idem_cells::GmailSend;
    use idem_sim::{GmailConfig, GmailSim, SimServer};
    let db = TestDb::new().await;
    // Worse case on every undocumented knob: Gmail replaces our Message-ID (search finds
    // nothing) and forgets history at once (history reads answer 404).
    let sim = GmailSim::new(
        1,
        Default::default(),
        GmailConfig {
            keep_message_id: false,
            search_lag: Duration::ZERO,
            history_retention: Duration::ZERO,
        },
    );
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let cell = GmailSend::new(server.base_url(), "ya29.human-test").with_profile(|p| {
        p.call_timeout = Duration::from_millis(1000);
        p.settle_time = Duration::from_millis(200);
        p.doubt_horizon = Duration::from_secs(30);
        p.lookup = idem_core::profile::Lookup::Eventual {
            lag_bound: Duration::from_millis(800),
        };
    });
    let w =
        idem_testkit::harness::worker(&db.store, Registry::new().with(cell), "gmail-human-test");
    let a = NewAction::new(
        ActionId::random(),
        CellName::new("gmail.send").unwrap(),
        json!({"to": "customer@example.com", "subject": "Receipt", "text": "Paid."}),
    );
    enqueue(db.store.pool(), &a).await.unwrap();
    // The send happens, then Gmail answers 500.
    sim.core.script([Fault::FailAfter]);
    deliver_all(&db.store, &w).await;
    sweep_until(
        &w,
        &db.store,
        a.action_id,
        State::NeedsHuman,
        Duration::from_secs(15),
    )
    .await;
    let id = a.action_id.to_string();
    assert_eq!(sim.core.effects_for(&id), 1, "the email went out once");
    assert_eq!(sim.send_requests(), 1, "and was never resent");
    let row = state(&db.store, a.action_id).await;
    assert!(
        row.reason.as_deref().unwrap().contains("never resent"),
        "{row:?}"
    );
    let sent = sim.core.ledger().remove(0).id;
    let (ok, _, err) = idem(
        &db,
        &[
            "resolve",
            &id,
            "--happened",
            &sent,
            "--as",
            "dana",
            "--reason",
            "in the Sent folder",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(state(&db.store, a.action_id).await.state, State::Succeeded);
    assert_eq!(sim.send_requests(), 1);
}

#[tokio::test]
async fn api_tokens_are_shown_once_stored_hashed_and_revocable() {
    use idem_store::tokens::{self, Scope};
    let db = TestDb::new().await;
    let (ok, secret, err) = idem(
        &db,
        &[
            "tokens",
            "create",
            "--name",
            "approver-bot",
            "--scope",
            "read",
            "--scope",
            "approve",
        ],
    )
    .await;
    assert!(ok, "{err}");
    let secret = secret.trim().to_owned();
    assert!(
        secret.starts_with("idem_") && secret.len() == 69,
        "{secret}"
    );
    // Only a hash is stored: the secret appears nowhere in the table.
    let (dump,): (String,) =
        sqlx::query_as("SELECT string_agg(t::text, ' ') FROM idem.api_tokens t")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert!(!dump.contains(&secret[5..]), "secret stored in clear");
    let t = tokens::authenticate(db.store.pool(), &secret)
        .await
        .unwrap()
        .expect("valid token");
    assert!(t.allows(Scope::Approve) && t.allows(Scope::Read) && !t.allows(Scope::Submit));
    assert!(tokens::authenticate(db.store.pool(), "idem_wrong")
        .await
        .unwrap()
        .is_none());
    let mut forged = secret.clone();
    forged.replace_range(68..69, if secret.ends_with('0') { "1" } else { "0" });
    assert!(tokens::authenticate(db.store.pool(), &forged)
        .await
        .unwrap()
        .is_none());
    let (ok, _, err) = idem(
        &db,
        &["tokens", "create", "--name", "x", "--scope", "admin"],
    )
    .await;
    assert!(!ok && err.contains("admin"), "{err}");
    let (ok, out, _) = idem(&db, &["tokens", "list", "--json"]).await;
    assert!(ok && !out.contains(&secret), "list never shows secrets");
    let id = t.id.to_string();
    let (ok, _, err) = idem(&db, &["tokens", "revoke", &id]).await;
    assert!(ok, "{err}");
    assert!(
        tokens::authenticate(db.store.pool(), &secret)
            .await
            .unwrap()
            .is_none(),
        "revoked"
    );
    let (ok, _, err) = idem(&db, &["tokens", "revoke", &id]).await;
    assert!(!ok && err.contains("no live token"), "{err}");
}

/// Policy lives in PostgreSQL for the whole fleet: two workers, one started with no
/// approval rule at all, and `amount>=50000` set in the database — a 60,000 charge is held
/// whichever worker receives it; a change takes effect without restarts; and the trigger
/// refuses to start a held action that no one approved, whatever process asks.
#[tokio::test]
async fn the_fleet_policy_holds_for_a_worker_started_without_flags() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let plain = || StripeCharge::new(stripe.base_url(), TEST_SECRET);
    let (ok, out, err) = idem(
        &db,
        &[
            "policy",
            "set",
            "stripe.charge",
            "amount>=50000",
            "--as",
            "alice",
            "--reason",
            "large charges need a person",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("amount>=50000"), "{out}");
    let w1 = worker(&db.store, plain(), Duration::from_secs(3600));
    let w2 = worker(&db.store, plain(), Duration::from_secs(3600));
    let (a, b) = (
        enqueue_charge(&db.store, 60_000).await,
        enqueue_charge(&db.store, 70_000).await,
    );
    let small = enqueue_charge(&db.store, 100).await;
    // Each worker takes part of the outbox: both must hold.
    let ds = take_deliveries(&db.store).await;
    w1.deliver(&ds[..1]).await.unwrap();
    w2.deliver(&ds[1..]).await.unwrap();
    for id in [a, b] {
        let row = state(&db.store, id).await;
        assert_eq!(row.state, State::AwaitingApproval, "{row:?}");
        assert!(row.reason.unwrap().contains("amount>=50000"));
    }
    assert_eq!(state(&db.store, small).await.state, State::Succeeded);
    assert_eq!(
        stripe.sim.ledger().len(),
        1,
        "only the small charge was sent"
    );

    // No process can start a held action that no one approved: the database refuses.
    let held = enqueue_charge(&db.store, 90_000).await;
    let forced = sqlx::query(
        "UPDATE idem.actions SET state = 'executing', attempts = 1 WHERE action_id = $1",
    )
    .bind(held.as_uuid())
    .execute(db.store.pool())
    .await;
    match forced {
        Err(sqlx::Error::Database(e)) => assert_eq!(e.code().as_deref(), Some("IDM04"), "{e}"),
        other => panic!("expected IDM04, got {other:?}"),
    }

    // A change holds at once, without restarting anyone: now nothing is held.
    idem_store::policy::set(
        db.store.pool(),
        "stripe.charge",
        &ApprovalPolicy::Never,
        "bob",
        "trial",
    )
    .await
    .unwrap();
    deliver_all(&db.store, &w1).await;
    assert_eq!(state(&db.store, held).await.state, State::Succeeded);
    let (ok, out, _) = idem(&db, &["policy", "history", "--json"]).await;
    assert!(ok);
    let h: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(h[0]["new_rule"], "never");
    assert_eq!(h[0]["changed_by"], "bob");
    assert_eq!(h[1]["new_rule"], "amount>=50000");
    assert_eq!(h[1]["changed_by"], "human:cli:alice");
    assert_eq!(h[1]["reason"], "large charges need a person");

    // A worker's own rule only seeds a cell that has none: the database's rule wins.
    let seeding = worker(
        &db.store,
        plain().with_profile(|p| p.approval = ApprovalPolicy::Always),
        Duration::from_secs(3600),
    );
    seeding.register_with_fleet().await.unwrap();
    let rules = idem_store::policy::list(db.store.pool()).await.unwrap();
    assert_eq!(rules[0].rule, "never");
}

/// The database's fence (migration 0020) for each kind of rule: `always` holds every first
/// start, `amount>=50000` only a number at or over it (a string or a missing amount is not
/// held), `never` nothing; a start that is not the first (a retry) is not fenced.
#[tokio::test]
async fn the_database_fence_applies_each_kind_of_rule() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let cell = StripeCharge::new(stripe.base_url(), TEST_SECRET);
    let w = worker(&db.store, cell, Duration::from_secs(3600));
    w.register_with_fleet().await.unwrap();
    let pool = db.store.pool();
    let set = |rule: ApprovalPolicy| async move {
        idem_store::policy::set(pool, "stripe.charge", &rule, "carol", "fence test")
            .await
            .unwrap();
    };
    // A forced first start, as a process that skipped the worker's check would make it.
    let force = |id: ActionId, from: &'static str, attempts: i32| async move {
        sqlx::query(
            "UPDATE idem.actions SET state = 'executing', attempts = $3 \
             WHERE action_id = $1 AND state = $2",
        )
        .bind(id.as_uuid())
        .bind(from)
        .bind(attempts)
        .execute(pool)
        .await
        .map(|r| r.rows_affected())
    };
    let refused = |r: Result<u64, sqlx::Error>| match r {
        Err(sqlx::Error::Database(e)) => e.code().as_deref() == Some("IDM04"),
        Ok(n) => {
            assert_eq!(n, 1, "the start matched its row");
            false
        }
        Err(e) => panic!("{e}"),
    };
    let holds = |args: serde_json::Value| async move {
        sqlx::query_scalar::<_, bool>("SELECT idem.policy_holds('stripe.charge', $1)")
            .bind(args)
            .fetch_one(pool)
            .await
            .unwrap()
    };

    set(ApprovalPolicy::Above {
        argument: "amount".into(),
        threshold: 50_000,
    })
    .await;
    assert!(refused(
        force(enqueue_charge(&db.store, 60_000).await, "received", 1).await
    ));
    assert!(refused(
        force(enqueue_charge(&db.store, 50_000).await, "received", 1).await
    ));
    assert!(!refused(
        force(enqueue_charge(&db.store, 49_999).await, "received", 1).await
    ));
    assert!(holds(json!({"amount": 50_000})).await);
    assert!(
        !holds(json!({"amount": "60000"})).await,
        "a string is not a number"
    );
    assert!(!holds(json!({"currency": "usd"})).await, "no amount");
    assert!(
        !sqlx::query_scalar::<_, bool>("SELECT idem.policy_holds('gmail.send', '{}')")
            .fetch_one(pool)
            .await
            .unwrap(),
        "no rule for the cell"
    );

    set(ApprovalPolicy::Always).await;
    let small = enqueue_charge(&db.store, 100).await;
    assert!(refused(force(small, "received", 1).await));
    // A retry of an action that already made an attempt is not a first start.
    sqlx::query(
        "UPDATE idem.actions SET state = 'retry_scheduled', attempts = 1 WHERE action_id = $1",
    )
    .bind(small.as_uuid())
    .execute(pool)
    .await
    .unwrap();
    assert!(!refused(force(small, "retry_scheduled", 2).await));

    set(ApprovalPolicy::Never).await;
    assert!(!refused(
        force(enqueue_charge(&db.store, 90_000).await, "received", 1).await
    ));
}

/// An outage longer than the cell's budget ends `failed` ("nothing reached the partner");
/// a person sends it again with an audited decision and it goes out once, under a fresh
/// key, with the same action id. Only a failed action can be sent again.
#[tokio::test]
async fn a_failed_action_is_sent_again_by_an_audited_decision() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let cell = StripeCharge::new(stripe.base_url(), TEST_SECRET)
        .with_profile(|p| p.retry.outage_budget = Duration::from_millis(1500));
    let w = worker(&db.store, cell, Duration::from_secs(3600));
    // Stripe answers every request 429 (Retry-After: 1): not processed, never an effect.
    stripe.sim.set_faults(idem_sim::FaultRates {
        rate_limit: 1.0,
        ..Default::default()
    });
    let id = enqueue_charge(&db.store, 4_200).await;
    deliver_all(&db.store, &w).await;
    sweep_until(&w, &db.store, id, State::Failed, Duration::from_secs(20)).await;
    let row = state(&db.store, id).await;
    assert!(
        row.reason
            .as_deref()
            .unwrap()
            .contains("a person can send it again"),
        "{row:?}"
    );
    let refused = stripe.sim.requests().len();
    assert!(
        refused >= 2,
        "retried within the budget: {refused} requests"
    );
    assert_eq!(stripe.sim.ledger().len(), 0);

    // Stripe is back. Without a reason nothing is recorded.
    stripe.sim.set_faults(idem_sim::FaultRates::default());
    let sid = id.to_string();
    let (ok, _, err) = idem(&db, &["resend", &sid, "--as", "dana", "--reason", " "]).await;
    assert!(!ok && err.contains("--reason"), "{err}");
    assert_eq!(state(&db.store, id).await.state, State::Failed);
    let (ok, out, err) = idem(
        &db,
        &[
            "resend",
            &sid,
            "--as",
            "dana",
            "--reason",
            "Stripe is back up",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("retry_scheduled"), "{out}");
    sweep_until(&w, &db.store, id, State::Succeeded, Duration::from_secs(15)).await;
    assert_eq!(
        stripe.sim.effects_for(&sid),
        1,
        "sent once after the resend"
    );
    assert_eq!(stripe.sim.ledger().len(), 1);

    // The audit: who sent it again and why, and a fresh key for the new request.
    let history = idem_store::decisions::history(db.store.pool(), id)
        .await
        .unwrap();
    let last = history.last().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str(), last.2.as_deref()),
        ("resend", "human:dana", Some("Stripe is back up"))
    );
    let keys: Vec<(i32, Option<String>)> = sqlx::query_as(
        "SELECT key_generation, idem_key FROM idem.attempts WHERE action_id = $1 ORDER BY number",
    )
    .bind(id.as_uuid())
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let (first, last) = (keys.first().unwrap(), keys.last().unwrap());
    assert_eq!((first.0, last.0), (0, 1), "{keys:?}");
    assert_ne!(first.1, last.1, "a fresh partner key: {keys:?}");

    // A succeeded action cannot be sent again.
    let (ok, _, err) = idem(
        &db,
        &["resend", &sid, "--as", "dana", "--reason", "once more"],
    )
    .await;
    assert!(!ok && err.contains("not failed"), "{err}");
    assert_eq!(stripe.sim.ledger().len(), 1);
}

/// A gmail.send whose lookup lagged behind the partner goes to a person; "check the
/// partner again" finds the email once the index has caught up, and nothing is resent.
#[tokio::test]
async fn check_the_partner_again_finds_an_email_the_lookup_missed() {
    use idem_cells::GmailSend;
    use idem_sim::{GmailConfig, GmailSim, SimServer};
    let db = TestDb::new().await;
    // Search lags 3 s behind a send, longer than the cell's 500 ms lag bound; history is
    // not kept, so search is the only lookup.
    let sim = GmailSim::new(
        1,
        Default::default(),
        GmailConfig {
            keep_message_id: true,
            search_lag: Duration::from_secs(3),
            history_retention: Duration::ZERO,
        },
    );
    let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
        .await
        .unwrap();
    let cell = GmailSend::new(server.base_url(), "ya29.human-test").with_profile(|p| {
        p.call_timeout = Duration::from_millis(1000);
        p.settle_time = Duration::from_millis(200);
        p.doubt_horizon = Duration::from_secs(30);
        p.lookup = idem_core::profile::Lookup::Eventual {
            lag_bound: Duration::from_millis(500),
        };
    });
    let w =
        idem_testkit::harness::worker(&db.store, Registry::new().with(cell), "gmail-recheck-test");
    w.register_with_fleet().await.unwrap();
    let a = NewAction::new(
        ActionId::random(),
        CellName::new("gmail.send").unwrap(),
        json!({"to": "customer@example.com", "subject": "Receipt", "text": "Paid."}),
    );
    enqueue(db.store.pool(), &a).await.unwrap();
    sim.core.script([Fault::FailAfter]);
    deliver_all(&db.store, &w).await;
    sweep_until(
        &w,
        &db.store,
        a.action_id,
        State::NeedsHuman,
        Duration::from_secs(15),
    )
    .await;
    let id = a.action_id.to_string();
    let reason = state(&db.store, a.action_id).await.reason.unwrap();
    assert!(
        reason.contains("checked at") && reason.contains("Absence is not proof"),
        "{reason}"
    );

    // Without --reason clap refuses; with it the case goes back to the partner.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (ok, out, err) = idem(
        &db,
        &[
            "resolve",
            &id,
            "--recheck",
            "--as",
            "dana",
            "--reason",
            "search may have caught up",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("in_doubt"), "{out}");
    sweep_until(
        &w,
        &db.store,
        a.action_id,
        State::Succeeded,
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(sim.core.effects_for(&id), 1);
    assert_eq!(sim.send_requests(), 1, "found, never resent");
    let row = state(&db.store, a.action_id).await;
    assert!(row.receipt.is_some(), "{row:?}");
    let kinds: Vec<String> = idem_store::decisions::history(db.store.pool(), a.action_id)
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.0)
        .collect();
    assert_eq!(kinds, ["recheck"]);
}

/// "Check the partner again" is refused, recording nothing, for a cell whose partner has
/// no lookup: there is nothing to ask, and a person must decide.
#[tokio::test]
async fn a_recheck_is_refused_where_the_partner_has_no_lookup() {
    let db = TestDb::new().await;
    let pool = db.store.pool();
    idem_store::cells::register_cells(
        pool,
        &[idem_store::cells::CellFacts {
            name: "acme.book".into(),
            input_schema: json!({"type": "object"}),
            lookup: "none",
        }],
        "test",
    )
    .await
    .unwrap();
    let a = NewAction::new(
        ActionId::random(),
        CellName::new("acme.book").unwrap(),
        json!({"seat": "12A"}),
    );
    enqueue(pool, &a).await.unwrap();
    // As the reconciler leaves it when nothing can tell.
    sqlx::query("UPDATE idem.actions SET state = 'needs_human' WHERE action_id = $1")
        .bind(a.action_id.as_uuid())
        .execute(pool)
        .await
        .unwrap();
    let r = idem_store::decisions::recheck(pool, a.action_id, "dana", "look again").await;
    assert!(
        matches!(r, Err(idem_store::decisions::DecisionError::NoLookup { ref cell }) if cell == "acme.book"),
        "{r:?}"
    );
    assert_eq!(state(&db.store, a.action_id).await.state, State::NeedsHuman);
    assert!(idem_store::decisions::history(pool, a.action_id)
        .await
        .unwrap()
        .is_empty());
}

/// A dead action (here: no worker ran its cell) is delivered again by an audited decision
/// once a worker runs the cell, and charged exactly once; dead letters are replayed only
/// when their bytes can become a new action, each refusal changing nothing.
#[tokio::test]
async fn dead_work_is_put_back_by_audited_decisions_and_acts_once() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let pool = db.store.pool();
    // A worker deployed without stripe.charge: the action goes dead, never attempted.
    let without = Worker::new(
        db.store.clone(),
        Registry::new(),
        worker_config("human-test-no-stripe"),
    );
    let id = enqueue_charge(&db.store, 3_100).await;
    // Enqueued through SQL with no name given: the database role is recorded.
    let by = state(&db.store, id).await.submitted_by.unwrap();
    assert!(by.starts_with("role:") && by.len() > 5, "{by}");
    deliver_all(&db.store, &without).await;
    let row = state(&db.store, id).await;
    assert_eq!(row.state, State::Dead, "{row:?}");
    assert!(
        row.reason.as_deref().unwrap().contains("unknown cell"),
        "{row:?}"
    );

    // Sent again through the CLI: back to received and delivered again.
    let sid = id.to_string();
    let (ok, out, err) = idem(
        &db,
        &[
            "resend",
            &sid,
            "--as",
            "erin",
            "--reason",
            "stripe worker deployed",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("received again"), "{out}");
    assert_eq!(state(&db.store, id).await.state, State::Received);
    let w = worker(
        &db.store,
        StripeCharge::new(stripe.base_url(), TEST_SECRET),
        Duration::from_secs(3600),
    );
    deliver_all(&db.store, &w).await;
    sweep_until(&w, &db.store, id, State::Succeeded, Duration::from_secs(15)).await;
    assert_eq!(stripe.sim.effects_for(&sid), 1);
    let history = idem_store::decisions::history(pool, id).await.unwrap();
    let last = history.last().unwrap();
    assert_eq!(
        (last.0.as_str(), last.1.as_str(), last.2.as_deref()),
        ("revive", "human:erin", Some("stripe worker deployed"))
    );
    let (actor,): (String,) = sqlx::query_as(
        "SELECT actor FROM idem.transitions WHERE action_id = $1 AND event = 'revive'",
    )
    .bind(id.as_uuid())
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(actor, "human:erin");
    // Succeeded now: neither failed nor dead, so nothing to send again.
    let (ok, _, err) = idem(&db, &["resend", &sid, "--as", "erin", "--reason", "x"]).await;
    assert!(!ok && err.contains("not failed"), "{err}");

    // Dead letters: an envelope version this build does not read, and the same action id
    // with other arguments.
    let raw_v9 = br#"{"v":9,"action_id":"7a1c6c1e-4a8e-4bd6-9d44-07c1d2f8e0a1"}"#.to_vec();
    let forged = idem_core::Envelope {
        v: 1,
        action_id: id,
        cell: "stripe.charge".into(),
        args: json!({"amount": 999_999, "currency": "usd", "customer": "cus_human"}),
        ordering_key: sid.clone(),
    };
    let delivery = |payload: Vec<u8>, offset: i64| Delivery {
        payload,
        source: json!({"topic": "idem.actions", "partition": 0, "offset": offset}),
        trace: TraceHeaders::default(),
        misrouted: None,
    };
    w.deliver(&[delivery(raw_v9, 41), delivery(forged.encode(), 42)])
        .await
        .unwrap();
    let letters = idem_store::explore::dead_letters(pool, 10).await.unwrap();
    assert_eq!(letters.len(), 2, "{letters:?}");
    let by_offset = |o: i64| letters.iter().find(|l| l.source["offset"] == o).unwrap().id;
    for (letter, refusal) in [
        (by_offset(41), "still cannot be read"),
        (by_offset(42), "exists with other arguments"),
    ] {
        let (ok, _, err) = idem(
            &db,
            &[
                "dead-letters",
                "replay",
                &letter.to_string(),
                "--as",
                "erin",
                "--reason",
                "try",
            ],
        )
        .await;
        assert!(!ok && err.contains(refusal), "{letter}: {err}");
    }
    let (replayed,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM idem.dead_letters WHERE replayed_at IS NOT NULL")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(replayed, 0, "refusals record nothing");
    assert_eq!(stripe.sim.ledger().len(), 1, "one charge in all");
    let (ok, out, err) = idem(&db, &["dead-letters", "list"]).await;
    assert!(ok, "{err}");
    assert!(
        out.contains("unknown envelope version 9") && out.contains("not replayed"),
        "{out}"
    );
}

/// Gmail returns only the headers `metadataHeaders` names: the cell asks for X-Idem-Key
/// as well as the Message-ID Gmail rewrites, so a send whose answer was lost is found in
/// the SENT history (not sent to a person). With a token that may send but not read, every
/// lookup is refused: the case goes to a person at once, saying which scope is missing.
#[tokio::test]
async fn a_lost_email_is_found_by_its_idem_header_and_a_send_only_token_is_named() {
    use idem_cells::GmailSend;
    use idem_sim::{GmailConfig, GmailSim, SimServer};
    for (token, want) in [
        ("ya29.reads-too", State::Succeeded),
        ("ya29.send-only", State::NeedsHuman),
    ] {
        let db = TestDb::new().await;
        // Gmail replaces our Message-ID: only X-Idem-Key identifies the message.
        let sim = GmailSim::new(1, Default::default(), GmailConfig::default());
        let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
            .await
            .unwrap();
        let cell = GmailSend::new(server.base_url(), token).with_profile(|p| {
            p.call_timeout = Duration::from_millis(1000);
            p.settle_time = Duration::from_millis(200);
            p.doubt_horizon = Duration::from_secs(30);
            p.lookup = idem_core::profile::Lookup::Eventual {
                lag_bound: Duration::from_secs(20),
            };
        });
        let w = idem_testkit::harness::worker(&db.store, Registry::new().with(cell), "gmail-hdr");
        let a = NewAction::new(
            ActionId::random(),
            CellName::new("gmail.send").unwrap(),
            json!({"to": "customer@example.com", "subject": "Receipt", "text": "Paid."}),
        );
        enqueue(db.store.pool(), &a).await.unwrap();
        sim.core.script([Fault::DropAfterEffect]);
        deliver_all(&db.store, &w).await;
        // Well inside the 20 s lag bound: neither outcome waits for it.
        sweep_until(&w, &db.store, a.action_id, want, Duration::from_secs(8)).await;
        assert_eq!(sim.core.effects_for(&a.action_id.to_string()), 1, "{token}");
        assert_eq!(sim.send_requests(), 1, "{token}: never resent");
        if want == State::NeedsHuman {
            let row = state(&db.store, a.action_id).await;
            let why = row.reason.unwrap_or_default();
            assert!(why.contains("gmail.readonly or gmail.modify"), "{why}");
        }
    }
}
