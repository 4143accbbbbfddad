//! Model test of the protocol over the pure state machine and planner.
//!
//! A simulated partner with Stripe's key semantics (frozen replay, retention, a lookup that
//! lags, requests that keep running after the client gave up) and a worker that follows
//! idem's real `transition`, `check_send`, `after_outcome`, `plan_in_doubt` and
//! `after_verdict`. proptest draws the faults: lost responses, 5xx before and after the
//! effect, 429s, worker crashes with the lease held, clock
//! jumps past the key window. A redelivery is one more `Work` step: it can only enter
//! through the same compare-and-set edges. The checks are on the partner's ground truth, not on idem's
//! view: at most one effect ever, a succeeded action has exactly one effect, a failed one
//! none, and once faults stop every action settles.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use idem_core::guard::{AttemptRecord, AttemptResult};
use idem_core::plan::{after_outcome, after_verdict, plan_in_doubt, InDoubtPlan};
use idem_core::profile::Lookup;
use idem_core::{check_send, transition, CellProfile, Event, ExecOutcome, Receipt, State, Verdict};
use proptest::prelude::*;

mod common;

fn profile(lookup: Lookup, key: bool) -> CellProfile {
    common::profile(lookup, key, Duration::from_secs(10_000))
}

/// What the partner does with one request, drawn by proptest.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Ok,
    LostAfterEffect,
    Error5xxBefore,
    Error5xxAfter,
    RateLimited,
    Declined,
    /// The worker dies mid-call; the request reached the partner and did its work late.
    CrashAfterEffect,
    /// The worker dies before the request left.
    CrashBeforeSend,
}

#[derive(Debug, Clone, Copy)]
enum Step {
    Work(Fate),
    Advance(u32),
}

fn fate() -> impl Strategy<Value = Fate> {
    prop_oneof![
        3 => Just(Fate::Ok),
        2 => Just(Fate::LostAfterEffect),
        1 => Just(Fate::Error5xxBefore),
        1 => Just(Fate::Error5xxAfter),
        1 => Just(Fate::RateLimited),
        1 => Just(Fate::Declined),
        1 => Just(Fate::CrashAfterEffect),
        1 => Just(Fate::CrashBeforeSend),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => fate().prop_map(Step::Work),
        3 => (1u32..200).prop_map(Step::Advance),
    ]
}

/// The partner's ground truth.
#[derive(Default)]
struct Partner {
    effects: u32,
    /// key -> (first used at, stored response: Some(true)=success, Some(false)=stored 5xx)
    keys: Vec<(String, DateTime<Utc>, bool)>,
    /// when the effect became visible to the lookup
    effect_at: Option<DateTime<Utc>>,
    lag: i64,
    retention: i64,
}

impl Partner {
    fn stored(&mut self, key: &str, now: DateTime<Utc>) -> Option<bool> {
        let retention = self.retention;
        self.keys
            .retain(|(_, at, _)| (now - *at).num_seconds() < retention);
        self.keys.iter().find(|(k, _, _)| k == key).map(|k| k.2)
    }

    fn effect(&mut self, now: DateTime<Utc>) {
        self.effects += 1;
        self.effect_at.get_or_insert(now);
    }

    fn lookup(&self, now: DateTime<Utc>) -> bool {
        self.effect_at
            .is_some_and(|t| (now - t).num_seconds() >= self.lag)
    }
}

struct World {
    profile: CellProfile,
    partner: Partner,
    state: State,
    history: Vec<AttemptRecord>,
    generation: u32,
    due: DateTime<Utc>,
    doubt_since: DateTime<Utc>,
    rounds: u32,
    now: DateTime<Utc>,
    sends: u32,
}

impl World {
    fn new(profile: CellProfile, lag: i64) -> Self {
        let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        Self {
            partner: Partner {
                lag,
                retention: profile
                    .key
                    .as_ref()
                    .map_or(0, |k| k.retention.as_secs() as i64),
                ..Partner::default()
            },
            profile,
            state: State::Received,
            history: vec![],
            generation: 0,
            due: now,
            doubt_since: now,
            rounds: 0,
            now,
            sends: 0,
        }
    }

    fn go(&mut self, e: Event) {
        self.state = transition(self.state, e).expect("planner chose an edge the table lacks");
    }

    fn key(&self) -> String {
        format!("k-{}", self.generation)
    }

    /// One request under the guard; returns the classified outcome.
    fn send(&mut self, fate: Fate) -> Option<ExecOutcome> {
        let key = self.key();
        let rule = check_send(
            &self.profile,
            &self.history,
            self.generation,
            Some(&key),
            "fp",
            self.now,
        );
        assert!(
            rule.is_ok(),
            "planner asked to send against the guard: {rule:?}"
        );
        self.sends += 1;
        let number = self.history.len() as u32 + 1;
        self.history.push(AttemptRecord {
            number,
            key_generation: self.generation,
            key: Some(key.clone()),
            request_fingerprint: "fp".into(),
            started_at: self.now,
            result: None,
        });
        let now = self.now;
        let keyed = self.profile.key.is_some();
        // Frozen replay for a key the partner still holds.
        if keyed {
            if let Some(stored) = self.partner.stored(&key, now) {
                return Some(if stored {
                    ExecOutcome::Succeeded(receipt())
                } else {
                    ExecOutcome::Ambiguous {
                        reason: "replayed 500".into(),
                        replayed_error: true,
                    }
                });
            }
        }
        let remember = |p: &mut Partner, ok: bool| {
            if keyed {
                p.keys.push((key.clone(), now, ok));
            }
        };
        match fate {
            Fate::Ok => {
                self.partner.effect(now);
                remember(&mut self.partner, true);
                Some(ExecOutcome::Succeeded(receipt()))
            }
            Fate::LostAfterEffect | Fate::CrashAfterEffect => {
                // The effect lands late, but inside the settle time.
                let t = now + chrono::Duration::seconds(3);
                self.partner.effects += 1;
                self.partner.effect_at.get_or_insert(t);
                remember(&mut self.partner, true);
                match fate {
                    Fate::CrashAfterEffect => None,
                    _ => Some(ExecOutcome::Ambiguous {
                        reason: "timeout".into(),
                        replayed_error: false,
                    }),
                }
            }
            Fate::Error5xxBefore => {
                remember(&mut self.partner, false);
                Some(ExecOutcome::Ambiguous {
                    reason: "500".into(),
                    replayed_error: false,
                })
            }
            Fate::Error5xxAfter => {
                self.partner.effect(now);
                remember(&mut self.partner, false);
                Some(ExecOutcome::Ambiguous {
                    reason: "500".into(),
                    replayed_error: false,
                })
            }
            Fate::RateLimited => Some(ExecOutcome::NotProcessed {
                reason: "429".into(),
                retry_after: None,
            }),
            Fate::Declined => {
                remember(&mut self.partner, false);
                Some(ExecOutcome::Failed {
                    reason: "card_declined".into(),
                })
            }
            Fate::CrashBeforeSend => {
                self.sends -= 1; // nothing left the machine
                None
            }
        }
    }

    fn record(&mut self, outcome: &ExecOutcome) {
        let r = AttemptResult::from(outcome);
        self.history.last_mut().unwrap().result = Some(r);
    }

    fn execute(&mut self, fate: Fate) {
        match self.send(fate) {
            Some(outcome) => {
                self.record(&outcome);
                let next = after_outcome(
                    &self.profile,
                    &outcome,
                    self.history.len() as u32,
                    &self.history,
                    self.generation,
                    self.now,
                    0.5,
                );
                self.go(next.event);
                if self.state == State::InDoubt {
                    self.doubt_since = self.now;
                }
                if let Some(d) = next.due_at {
                    self.due = d;
                }
            }
            None => {
                // Crash: the sweeper finds the lease expired.
                self.history.last_mut().unwrap().result = Some(AttemptResult::LeaseExpired);
                self.now += chrono::Duration::from_std(self.profile.lease()).unwrap();
                self.go(Event::LeaseExpired);
                self.doubt_since = self.now;
                self.due = self.now;
            }
        }
    }

    fn work(&mut self, fate: Fate) {
        if self.due > self.now {
            return; // not due yet: the sweeper leaves it alone
        }
        match self.state {
            State::Received => {
                self.go(Event::Start);
                self.execute(fate);
            }
            State::RetryScheduled => {
                self.go(Event::RetryDue);
                self.execute(fate);
            }
            State::InDoubt => match plan_in_doubt(
                &self.profile,
                &self.history,
                self.generation,
                self.doubt_since,
                self.now,
            ) {
                InDoubtPlan::AdoptSuccess { .. } => self.go(Event::ReconciledHappened),
                InDoubtPlan::Replay => {
                    self.go(Event::Replay);
                    self.execute(fate);
                }
                InDoubtPlan::GiveUp { .. } => self.go(Event::GiveUp),
                InDoubtPlan::Reconcile => {
                    let verdict = if self.partner.lookup(self.now) {
                        Verdict::Happened(receipt())
                    } else {
                        Verdict::NotHappened
                    };
                    let next = after_verdict(
                        &self.profile,
                        &verdict,
                        &self.history,
                        self.generation,
                        self.rounds,
                        self.now,
                        0.5,
                    );
                    self.rounds += 1;
                    if next.bump_generation {
                        self.generation += 1;
                    }
                    self.go(next.event);
                    if let Some(d) = next.due_at {
                        self.due = d;
                    }
                }
            },
            _ => {}
        }
    }

    fn check(&self) {
        assert!(
            self.partner.effects <= 1,
            "second effect: {} effects after {} sends",
            self.partner.effects,
            self.sends
        );
        if self.state == State::Succeeded {
            assert_eq!(self.partner.effects, 1, "succeeded without an effect");
        }
        if self.state == State::Failed {
            assert_eq!(
                self.partner.effects, 0,
                "failed but the partner has the effect"
            );
        }
    }
}

fn receipt() -> Receipt {
    Receipt {
        partner_ref: "pi_1".into(),
        response_digest: "d".into(),
        detail: serde_json::Value::Null,
    }
}

fn run(profile: CellProfile, lag: i64, steps: Vec<Step>) -> World {
    let mut w = World::new(profile, lag);
    for s in steps {
        match s {
            Step::Work(f) => w.work(f),
            Step::Advance(secs) => w.now += chrono::Duration::seconds(secs as i64),
        }
        w.check();
    }
    // Faults stop: the partner answers, time moves on; every action must settle.
    for _ in 0..200 {
        if w.state.is_settled() {
            break;
        }
        w.now += chrono::Duration::seconds(10);
        w.work(Fate::Ok);
        w.check();
    }
    assert!(
        w.state.is_settled(),
        "never settled: {:?} after {:?}",
        w.state,
        w.history
    );
    w
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn keyed_cell_with_strong_lookup(steps in prop::collection::vec(step(), 1..60)) {
        run(profile(Lookup::Strong, true), 0, steps);
    }

    #[test]
    fn keyed_cell_with_lagging_lookup(steps in prop::collection::vec(step(), 1..60), lag in 0i64..30) {
        let p = profile(Lookup::Eventual { lag_bound: Duration::from_secs(30) }, true);
        run(p, lag, steps);
    }

    #[test]
    fn keyless_cell_with_lookup(steps in prop::collection::vec(step(), 1..60)) {
        run(profile(Lookup::Strong, false), 0, steps);
    }

    #[test]
    fn keyless_cell_without_lookup_ends_with_a_person(steps in prop::collection::vec(step(), 1..60)) {
        let w = run(profile(Lookup::None, false), 0, steps);
        prop_assert!(w.partner.effects <= 1);
    }
}

/// The check can fail: a planner that trusts a lagging lookup at once double-charges.
#[test]
fn trusting_a_lagging_miss_is_caught() {
    let mut p = profile(
        Lookup::Eventual {
            lag_bound: Duration::from_secs(0),
        },
        true,
    );
    p.settle_time = Duration::from_secs(0);
    let result = std::panic::catch_unwind(|| {
        run(
            p,
            20,
            vec![
                Step::Work(Fate::Error5xxAfter),
                Step::Advance(1),
                Step::Work(Fate::Ok),
                Step::Work(Fate::Ok),
            ],
        )
    });
    assert!(
        result.is_err(),
        "a wrong lag bound must produce a second effect"
    );
}
