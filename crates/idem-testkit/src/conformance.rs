//! The conformance suite every cell must pass against its simulator.
//!
//! Each scenario runs one action through a real worker on a fresh database against the
//! cell's simulator with one fault injected, and judges the result by the partner's
//! ledger alone: at most one effect; a succeeded action has exactly one, a failed or dead
//! one none; `needs_human` only where the cell's card says a person decides. An action
//! left unsettled fails the scenario (never silently lost).
//!
//! A cell joins the suite by implementing [`Subject`]; `tests/conformance.rs` runs every
//! scenario for every cell.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem_cells::{Cell, Registry};
use idem_core::{ActionId, CellProfile, RetryPolicy, State};
use idem_sim::Fault;
use idem_store::{enqueue, inbox, NewAction};
use idem_worker::{Delivery, ReceiveReport, TraceHeaders, Worker};
use serde_json::Value;

use crate::TestDb;

/// A cell under test together with its simulator.
#[async_trait]
pub trait Subject: Send + Sync {
    /// The cell, talking to this subject's simulator, with `profile` applied over the
    /// suite's test timings.
    fn cell(&self, profile: &dyn Fn(&mut CellProfile)) -> Arc<dyn Cell>;
    /// Valid arguments for the `n`th action (may create partner objects first).
    async fn args(&self, n: usize) -> Value;
    /// Arguments the cell must refuse before any request.
    fn malformed(&self) -> Vec<Value>;
    /// Effects in the simulator's ledger attributed to `action`.
    fn effects_for(&self, action: ActionId) -> usize;
    /// Requests the simulator received on the cell's effect route.
    fn effect_requests(&self) -> usize;
    /// Faults for the next effect requests, in order.
    fn script(&self, faults: Vec<Fault>);
    /// Set how long the cell's lookup lags behind writes; false if the simulator's lookup
    /// for this cell has no lag (then the profile must not claim one).
    fn set_lookup_lag(&self, lag: Duration) -> bool;
    /// Set how long the simulator keeps idempotency keys; false if the cell's key is a
    /// natural one the partner never forgets (then the profile must say so).
    fn set_key_retention(&self, retention: Duration) -> bool;
    /// Whether the cell's card sends ambiguous outcomes to a person.
    fn may_need_human(&self) -> bool;
    /// False for read-only cells: their ledger must stay empty whatever happens.
    fn effectful(&self) -> bool {
        true
    }
}

/// The effects a successful action leaves: one, or none for a read-only cell.
fn one_effect(s: &dyn Subject) -> usize {
    usize::from(s.effectful())
}

/// What a scenario found it could test for a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coverage {
    /// The scenario ran and its assertions held.
    Tested,
    /// The scenario does not apply to this cell (its profile's claim was checked), and why.
    NotApplicable(&'static str),
}

/// Hold a scenario's coverage to what the suite declared: a scenario declared not
/// applicable must find itself so, and every other must have run. Nothing passes by
/// not testing.
pub fn expect(coverage: Coverage, scenario: &str, not_applicable: &[&str]) {
    let declared = not_applicable.contains(&scenario);
    match coverage {
        Coverage::Tested => assert!(
            !declared,
            "{scenario} is declared not applicable but ran: drop it from the list"
        ),
        Coverage::NotApplicable(why) => {
            assert!(
                declared,
                "{scenario} did not test anything ({why}): declare it not applicable"
            );
            eprintln!("{scenario}: not applicable: {why}");
        }
    }
}

/// Test timings: 1 s calls (lease 3 s), 300 ms settle time, fast retries.
pub fn test_timings(p: &mut CellProfile) {
    p.call_timeout = Duration::from_millis(1000);
    p.settle_time = Duration::from_millis(300);
    p.doubt_horizon = Duration::from_secs(120);
    p.retry = RetryPolicy {
        base: Duration::from_millis(50),
        max: Duration::from_millis(400),
        max_attempts: 8,
        outage_budget: idem_core::backoff::DEFAULT_OUTAGE_BUDGET,
        jitter: 0.0,
    };
}

struct Run {
    db: TestDb,
    cell: Arc<dyn Cell>,
}

impl Run {
    async fn new(s: &dyn Subject, profile: &dyn Fn(&mut CellProfile)) -> Self {
        let run = Self {
            db: TestDb::new().await,
            cell: s.cell(&|p| {
                test_timings(p);
                profile(p);
            }),
        };
        // Enqueue accepts the cells a worker registered; the scenarios enqueue first.
        idem_store::cells::register(
            run.db.store.pool(),
            &[run.cell.name().to_string()],
            "conformance",
        )
        .await
        .expect("register the cell");
        run
    }

    fn worker(&self, id: &str) -> Worker {
        crate::harness::worker(
            &self.db.store,
            Registry::new().with_arc(self.cell.clone()),
            id,
        )
    }

    async fn enqueue(&self, args: Value) -> ActionId {
        let a = NewAction::new(ActionId::random(), self.cell.name().clone(), args);
        enqueue(self.db.store.pool(), &a).await.expect("enqueue");
        a.action_id
    }

    /// The action's outbox message, as a transport hands it over.
    async fn take(&self) -> Delivery {
        let mut tx = self.db.store.pool().begin().await.expect("begin");
        let m = idem_store::queue::take_outbox(&mut tx, 1)
            .await
            .expect("take outbox")
            .pop()
            .expect("one outbox row");
        tx.commit().await.expect("commit");
        Delivery {
            payload: m.payload,
            source: serde_json::json!({"outbox_seq": m.seq}),
            trace: TraceHeaders::from_json(&m.headers),
            misrouted: None,
        }
    }

    async fn row(&self, id: ActionId) -> inbox::ActionRow {
        inbox::get(self.db.store.pool(), id)
            .await
            .expect("read action")
            .expect("action exists")
    }

    /// Sweep until the action settles; panics (the action would be lost) after `limit`.
    async fn settle(&self, w: &Worker, id: ActionId, limit: Duration) -> inbox::ActionRow {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            w.sweep_once().await.expect("sweep");
            let row = self.row(id).await;
            if row.state.is_settled() {
                return row;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{}: action never settled: {row:?}",
                self.cell.name()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The suite's judgement of one settled action.
fn judge(s: &dyn Subject, cell: &str, row: &inbox::ActionRow) {
    let effects = s.effects_for(row.action_id);
    assert!(
        effects <= 1,
        "{cell}: {effects} effects for one action: {row:?}"
    );
    if !s.effectful() {
        assert_eq!(
            effects, 0,
            "{cell}: a read-only cell left an effect: {row:?}"
        );
    }
    match row.state {
        State::Succeeded => assert_eq!(
            effects,
            one_effect(s),
            "{cell}: succeeded without an effect: {row:?}"
        ),
        State::Failed | State::Rejected | State::Dead => {
            assert_eq!(
                effects, 0,
                "{cell}: effect lost behind {:?}: {row:?}",
                row.state
            )
        }
        State::NeedsHuman => assert!(
            s.may_need_human(),
            "{cell}: needs_human, but its card says the cell settles alone: {row:?}"
        ),
        other => panic!("{cell}: not settled: {other:?}"),
    }
}

async fn one(
    s: &dyn Subject,
    faults: Vec<Fault>,
    profile: &dyn Fn(&mut CellProfile),
) -> (Run, inbox::ActionRow) {
    let run = Run::new(s, profile).await;
    let id = run.enqueue(s.args(0).await).await;
    s.script(faults);
    let w = run.worker("conformance");
    let d = run.take().await;
    w.deliver(&[d]).await.expect("deliver");
    let row = run.settle(&w, id, Duration::from_secs(30)).await;
    judge(s, run.cell.name().as_str(), &row);
    (run, row)
}

fn no_change(_: &mut CellProfile) {}

/// No fault: the action succeeds with exactly one effect.
pub async fn happy_path(s: &dyn Subject) -> Coverage {
    let (run, row) = one(s, vec![], &no_change).await;
    assert_eq!(row.state, State::Succeeded, "{}: {row:?}", run.cell.name());
    assert_eq!(s.effects_for(row.action_id), one_effect(s));
    // The published schema (HTTP API, MCP tools) accepts what the cell accepts.
    let registry = Registry::new().with_arc(run.cell.clone());
    for n in 1..4 {
        let args = s.args(n).await;
        if let Err(e) = registry.check(run.cell.name().as_str(), &args) {
            panic!(
                "{}: valid arguments {args} refused by the schema: {e}",
                run.cell.name()
            );
        }
    }
    Coverage::Tested
}

/// The partner commits and the response is lost.
pub async fn lost_response_after_effect(s: &dyn Subject) -> Coverage {
    let (run, row) = one(s, vec![Fault::DropAfterEffect], &no_change).await;
    assert_eq!(
        s.effects_for(row.action_id),
        one_effect(s),
        "{}: the effect happened once",
        run.cell.name()
    );
    Coverage::Tested
}

/// A 5xx before any effect.
pub async fn server_error_before_effect(s: &dyn Subject) -> Coverage {
    one(s, vec![Fault::FailBefore], &no_change).await;
    Coverage::Tested
}

/// The partner rate-limits twice (each simulator answers the ways its partner documents;
/// Slack's alternate HTTP 429 and `ok:false, rate_limited`): nothing happened either time,
/// so the action is sent again after the wait and succeeds with one effect.
pub async fn rate_limited(s: &dyn Subject) -> Coverage {
    let (run, row) = one(s, vec![Fault::RateLimit, Fault::RateLimit], &no_change).await;
    assert_eq!(
        row.state,
        State::Succeeded,
        "{}: a rate limit is not a failure: {row:?}",
        run.cell.name()
    );
    assert_eq!(s.effects_for(row.action_id), one_effect(s));
    assert!(
        s.effect_requests() >= 3,
        "{}: sent again after each limit",
        run.cell.name()
    );
    Coverage::Tested
}

/// A 5xx after the effect.
pub async fn server_error_after_effect(s: &dyn Subject) -> Coverage {
    let (run, row) = one(s, vec![Fault::FailAfter], &no_change).await;
    assert_eq!(
        s.effects_for(row.action_id),
        one_effect(s),
        "{}: the effect happened once",
        run.cell.name()
    );
    Coverage::Tested
}

/// The same message delivered again after the action settled: no second request.
pub async fn duplicate_delivery(s: &dyn Subject) -> Coverage {
    let run = Run::new(s, &no_change).await;
    let id = run.enqueue(s.args(0).await).await;
    let w = run.worker("conformance");
    let d = run.take().await;
    w.deliver(std::slice::from_ref(&d)).await.expect("deliver");
    let row = run.settle(&w, id, Duration::from_secs(30)).await;
    let requests = s.effect_requests();
    let again: ReceiveReport = w.deliver(&[d]).await.expect("redeliver");
    assert_eq!(
        again.duplicates,
        1,
        "{}: redelivery recognised",
        run.cell.name()
    );
    assert_eq!(
        s.effect_requests(),
        requests,
        "{}: no request on redelivery",
        run.cell.name()
    );
    judge(s, run.cell.name().as_str(), &run.row(id).await);
    assert_eq!(row.state, State::Succeeded);
    Coverage::Tested
}

/// Two workers receive the same message at the same moment.
pub async fn two_workers_at_once(s: &dyn Subject) -> Coverage {
    let run = Run::new(s, &no_change).await;
    let id = run.enqueue(s.args(0).await).await;
    let d = run.take().await;
    let (a, b) = (run.worker("conformance-a"), run.worker("conformance-b"));
    let (ra, rb) = tokio::join!(
        a.deliver(std::slice::from_ref(&d)),
        b.deliver(std::slice::from_ref(&d))
    );
    let (ra, rb) = (ra.expect("deliver a"), rb.expect("deliver b"));
    assert_eq!(
        ra.started + rb.started,
        1,
        "{}: one worker starts it",
        run.cell.name()
    );
    let row = run.settle(&a, id, Duration::from_secs(30)).await;
    judge(s, run.cell.name().as_str(), &row);
    assert_eq!(
        s.effect_requests(),
        1,
        "{}: one request in all",
        run.cell.name()
    );
    Coverage::Tested
}

/// The worker dies while its request is at the partner (which finishes it anyway); its
/// lease expires and another worker's sweeper settles the action.
pub async fn worker_killed_mid_call(s: &dyn Subject) -> Coverage {
    let run = Run::new(s, &no_change).await;
    let id = run.enqueue(s.args(0).await).await;
    s.script(vec![Fault::Delay(600)]);
    let d = run.take().await;
    let doomed = run.worker("conformance-doomed");
    let call = tokio::spawn(async move { doomed.deliver(&[d]).await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    call.abort();
    let _ = call.await;
    assert_eq!(
        run.row(id).await.state,
        State::Executing,
        "{}: killed mid-call",
        run.cell.name()
    );
    let survivor = run.worker("conformance-survivor");
    let row = run.settle(&survivor, id, Duration::from_secs(30)).await;
    judge(s, run.cell.name().as_str(), &row);
    assert_eq!(
        s.effects_for(id),
        one_effect(s),
        "{}: the partner finished the call",
        run.cell.name()
    );
    Coverage::Tested
}

/// The lookup lags: a miss must not be trusted before the lag bound.
pub async fn lookup_lag(s: &dyn Subject) -> Coverage {
    let lag = Duration::from_millis(1500);
    let probe = s.cell(&test_timings);
    if !s.set_lookup_lag(lag) {
        assert!(
            !matches!(
                probe.profile().lookup,
                idem_core::profile::Lookup::Eventual { .. }
            ),
            "{}: the profile claims a lagging lookup the simulator cannot lag",
            probe.name()
        );
        return Coverage::NotApplicable("the partner's lookup reads its own writes: no lag");
    }
    // The effect happens and the 500 is stored under the key: replay is useless, only the
    // (lagging) lookup can tell.
    let (run, row) = one(s, vec![Fault::FailAfter], &no_change).await;
    assert_eq!(
        s.effects_for(row.action_id),
        one_effect(s),
        "{}",
        run.cell.name()
    );
    Coverage::Tested
}

/// The partner forgot the key: the worker must not replay past the key window.
pub async fn key_expiry(s: &dyn Subject) -> Coverage {
    let probe = s.cell(&test_timings);
    let Some(key) = probe.profile().key.clone() else {
        // Keyless cells never replay; nothing can expire. The profile is the claim.
        assert_eq!(probe.key(ActionId::random(), 0), None, "{}", probe.name());
        return Coverage::NotApplicable("no partner key: nothing to expire");
    };
    if !s.set_key_retention(Duration::from_millis(400)) {
        assert!(
            key.retention >= Duration::from_secs(365 * 24 * 3600),
            "{}: the simulator never forgets this key, but the profile says it is kept {:?}",
            probe.name(),
            key.retention
        );
        return Coverage::NotApplicable("a natural key the partner never forgets");
    }
    let run = Run::new(s, &|p| {
        if let Some(k) = p.key.as_mut() {
            k.retention = Duration::from_millis(400);
            k.safety_margin = Duration::from_millis(100);
        }
    })
    .await;
    let id = run.enqueue(s.args(0).await).await;
    // The response is lost and the sweeper only comes back after the key window.
    s.script(vec![Fault::DropAfterEffect]);
    let w = run.worker("conformance");
    let d = run.take().await;
    w.deliver(&[d]).await.expect("deliver");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let row = run.settle(&w, id, Duration::from_secs(30)).await;
    judge(s, run.cell.name().as_str(), &row);
    assert_eq!(
        s.effects_for(id),
        one_effect(s),
        "{}: no replay after the key was forgotten",
        run.cell.name()
    );
    Coverage::Tested
}

/// Malformed arguments: refused at enqueue where SQL's check of the registered schema sees
/// it; and whatever reaches a worker anyway (another producer, an older schema) goes dead
/// with a reason. No request at all.
pub async fn malformed_arguments(s: &dyn Subject) -> Coverage {
    let run = Run::new(s, &no_change).await;
    let w = run.worker("conformance");
    w.register_with_fleet().await.expect("register");
    let before = s.effect_requests();
    let registry = Registry::new().with_arc(run.cell.clone());
    for args in s.malformed() {
        assert!(
            registry.check(run.cell.name().as_str(), &args).is_err(),
            "{}: {args} passes the published schema but the worker refuses it",
            run.cell.name()
        );
        let a = NewAction::new(ActionId::random(), run.cell.name().clone(), args.clone());
        let id = a.action_id;
        let d = match enqueue(run.db.store.pool(), &a).await {
            Ok(_) => run.take().await,
            Err(idem_store::EnqueueError::Invalid { field, .. }) => {
                assert!(
                    field.is_some(),
                    "{}: {args}: names the field",
                    run.cell.name()
                );
                // As another producer would have written it.
                Delivery {
                    payload: serde_json::json!({"v": 1, "action_id": id, "cell": run.cell.name(),
                                                "args": args, "ordering_key": id.to_string()})
                    .to_string()
                    .into_bytes(),
                    source: serde_json::json!({"test": "malformed"}),
                    trace: TraceHeaders::default(),
                    misrouted: None,
                }
            }
            Err(e) => panic!("{}: {args}: {e}", run.cell.name()),
        };
        let report = w.deliver(&[d]).await.expect("deliver");
        assert_eq!(report.dead, 1, "{}: {args} refused", run.cell.name());
        let row = run.row(id).await;
        assert_eq!(row.state, State::Dead, "{}: {args}", run.cell.name());
        assert!(
            row.reason.as_deref().is_some_and(|r| !r.is_empty()),
            "dead with a reason"
        );
    }
    assert_eq!(
        s.effect_requests(),
        before,
        "{}: no request for malformed arguments",
        run.cell.name()
    );
    Coverage::Tested
}
