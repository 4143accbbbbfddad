//! What to do next after a partner answer, a reconciliation verdict, or for an action that
//! sits in doubt. Pure functions of the profile, the attempt history and the clock.

use chrono::{DateTime, Utc};

use crate::guard::{check_send, AttemptRecord, AttemptResult, SendRule};
use crate::{CellProfile, Event, ExecOutcome, Lookup, Verdict};

/// The next transition and the bookkeeping that goes with it.
#[derive(Debug, Clone, PartialEq)]
pub struct Next {
    pub event: Event,
    /// When the action is due again (`retry_scheduled`, `in_doubt`), if it stays open.
    pub due_at: Option<DateTime<Utc>>,
    /// Every attempt so far is proven not to have happened: the next request starts a new
    /// key generation (a fresh partner key).
    pub bump_generation: bool,
    /// Why, for the audit row and `idem status`.
    pub reason: Option<String>,
}

impl Next {
    fn settle(event: Event) -> Self {
        Self {
            event,
            due_at: None,
            bump_generation: false,
            reason: None,
        }
    }

    fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

fn after(now: DateTime<Utc>, d: std::time::Duration) -> DateTime<Utc> {
    now + chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// What to do with the answer to attempt number `attempt` (1-based). `history` holds the
/// earlier attempts (the current one may be included). `sample` is a uniform random number
/// in [0, 1) for jitter.
pub fn after_outcome(
    profile: &CellProfile,
    outcome: &ExecOutcome,
    attempt: u32,
    history: &[AttemptRecord],
    key_generation: u32,
    now: DateTime<Utc>,
    sample: f64,
) -> Next {
    // "Not processed" proves nothing about earlier attempts: if one of them may have had an
    // effect, the action is still in doubt, not merely due for a retry.
    let earlier_unproven = history
        .iter()
        .filter(|a| a.number != attempt)
        .find(|a| !a.is_proven_not_happened(key_generation));
    if let (ExecOutcome::NotProcessed { reason, .. }, Some(a)) = (outcome, earlier_unproven) {
        return Next {
            event: Event::Ambiguous,
            due_at: Some(after(now, profile.retry.delay(attempt, sample))),
            bump_generation: false,
            reason: Some(format!(
                "{reason}; attempt {} is still unproven, so the action stays in doubt",
                a.number
            )),
        };
    }
    match outcome {
        ExecOutcome::Succeeded(_) => Next::settle(Event::Succeeded),
        ExecOutcome::Failed { reason } => Next::settle(Event::Failed).with_reason(reason.clone()),
        ExecOutcome::NotProcessed {
            reason,
            retry_after,
        } => {
            // An outage is retried on a time budget, not a count. The budget runs from the
            // first attempt of this key generation: a person's resend starts a new one.
            let first = history
                .iter()
                .filter(|a| a.key_generation == key_generation)
                .map(|a| a.started_at)
                .min()
                .unwrap_or(now);
            let spent = (now - first).to_std().unwrap_or_default();
            if spent >= profile.retry.outage_budget {
                return Next::settle(Event::Failed).with_reason(format!(
                    "not processed for {}s over {attempt} attempts, past the cell's outage \
                     budget of {}s (last: {reason}); nothing reached the partner: a person \
                     can send it again",
                    spent.as_secs(),
                    profile.retry.outage_budget.as_secs()
                ));
            }
            let delay = profile
                .retry
                .delay(attempt, sample)
                .max(retry_after.unwrap_or_default());
            Next {
                event: Event::NotProcessed,
                due_at: Some(after(now, delay)),
                bump_generation: false,
                reason: Some(reason.clone()),
            }
        }
        ExecOutcome::Ambiguous { reason, .. } => Next {
            event: Event::Ambiguous,
            due_at: Some(after(now, profile.retry.delay(attempt, sample))),
            bump_generation: false,
            reason: Some(reason.clone()),
        },
    }
}

/// What an action in doubt should do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InDoubtPlan {
    /// A worker that lost its lease still recorded success on this attempt: adopt it.
    AdoptSuccess { attempt: u32 },
    /// Resend the last request byte for byte under the same key (rule c).
    Replay,
    /// Ask the partner whether the effect exists.
    Reconcile,
    /// Nothing can prove it either way: `needs_human`.
    GiveUp { reason: String },
}

/// Plan for an action in `in_doubt` since `doubt_since`.
pub fn plan_in_doubt(
    profile: &CellProfile,
    history: &[AttemptRecord],
    key_generation: u32,
    doubt_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> InDoubtPlan {
    if let Some(a) = history
        .iter()
        .find(|a| a.result == Some(AttemptResult::Succeeded))
    {
        return InDoubtPlan::AdoptSuccess { attempt: a.number };
    }
    if now - doubt_since
        > chrono::Duration::from_std(profile.doubt_horizon).unwrap_or(chrono::Duration::MAX)
    {
        return InDoubtPlan::GiveUp {
            reason: format!(
                "still in doubt after {}s, the cell's doubt horizon",
                profile.doubt_horizon.as_secs()
            ),
        };
    }
    let last = history.iter().max_by_key(|a| a.number);
    if let Some(last) = last {
        let replay_useful = last.result != Some(AttemptResult::ReplayedError)
            && (history.len() as u32) < profile.retry.max_attempts;
        if replay_useful
            && check_send(
                profile,
                history,
                key_generation,
                last.key.as_deref(),
                &last.request_fingerprint,
                now,
            ) == Ok(SendRule::SameKeyReplay)
        {
            return InDoubtPlan::Replay;
        }
    }
    if profile.lookup == Lookup::None {
        return InDoubtPlan::GiveUp {
            reason:
                "the outcome is unknown, no key replay is allowed and the partner has no lookup"
                    .into(),
        };
    }
    InDoubtPlan::Reconcile
}

/// What a reconciliation verdict means for an action in doubt. `round` counts the
/// reconciliations so far (for backoff).
pub fn after_verdict(
    profile: &CellProfile,
    verdict: &Verdict,
    history: &[AttemptRecord],
    key_generation: u32,
    round: u32,
    now: DateTime<Utc>,
    sample: f64,
) -> Next {
    let later = |reason: String| Next {
        event: Event::ReconciledUnknown,
        due_at: Some(after(now, profile.retry.delay(round + 1, sample))),
        bump_generation: false,
        reason: Some(reason),
    };
    match verdict {
        Verdict::Happened(_) => Next::settle(Event::ReconciledHappened),
        Verdict::Failed { reason } => {
            Next::settle(Event::ReconciledFailed).with_reason(reason.clone())
        }
        Verdict::Unknowable { reason } => Next::settle(Event::GiveUp).with_reason(reason.clone()),
        Verdict::Unknown { reason } => later(reason.clone()),
        Verdict::NotHappened => {
            let trust =
                chrono::Duration::from_std(profile.trust_after()).unwrap_or(chrono::Duration::MAX);
            let newest_unproven = history
                .iter()
                .filter(|a| !a.is_proven_not_happened(key_generation))
                .map(|a| a.started_at)
                .max();
            match newest_unproven {
                Some(t) if now - t < trust => {
                    // Too early to trust a miss: look again once it can be trusted.
                    let mut n = later(format!(
                        "not found, but the last attempt is younger than the {}ms settle time",
                        profile.trust_after().as_millis()
                    ));
                    n.due_at = Some((t + trust).max(now + chrono::Duration::milliseconds(10)));
                    n
                }
                _ if history.len() as u32 >= profile.retry.max_attempts => {
                    Next::settle(Event::ReconciledFailed).with_reason(format!(
                        "proven not to have happened after {} attempts",
                        history.len()
                    ))
                }
                _ => Next {
                    event: Event::ReconciledNotHappened,
                    due_at: Some(now),
                    bump_generation: true,
                    reason: Some("reconciled: the partner has no such effect".into()),
                },
            }
        }
    }
}

#[cfg(test)]
mod trust_tests {
    use std::time::Duration;

    use chrono::{TimeZone, Utc};

    use super::*;

    /// The soak's timings: 500 ms settle time, 1 s call timeout.
    fn profile(lookup: Lookup) -> crate::CellProfile {
        crate::CellProfile {
            key: None,
            replay: crate::profile::ReplayModel::FrozenResponse,
            lookup,
            settle_time: Duration::from_millis(500),
            doubt_horizon: Duration::from_secs(3600),
            call_timeout: Duration::from_millis(1000),
            retry: crate::RetryPolicy::default(),
            approval: crate::profile::ApprovalPolicy::Never,
            rate_limit: None,
            strategy: String::new(),
        }
    }

    /// The chaos soak's timings: 500 ms settle time, 1 s call timeout, a lookup that may lag
    /// 1 s behind the partner. A request can land at the partner until the call timeout and
    /// show up in the lookup a lag bound later, so a miss before 2 s is no proof.
    #[test]
    fn a_miss_is_not_trusted_before_call_timeout_plus_lag() {
        let p = profile(Lookup::Eventual {
            lag_bound: Duration::from_millis(1000),
        });
        assert_eq!(p.trust_after(), Duration::from_millis(2000));
        let t0 = Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap();
        let history = [AttemptRecord {
            number: 1,
            key_generation: 0,
            key: None,
            request_fingerprint: "fp".into(),
            started_at: t0,
            result: Some(AttemptResult::LeaseExpired),
        }];
        let at = |ms| t0 + chrono::Duration::milliseconds(ms);
        // 1.2 s after the start: trusted under the old max(settle, lag) rule, a duplicate.
        let early = after_verdict(&p, &Verdict::NotHappened, &history, 0, 0, at(1200), 0.5);
        assert_eq!(early.event, Event::ReconciledUnknown);
        assert!(!early.bump_generation);
        assert_eq!(
            early.due_at,
            Some(at(2000)),
            "look again once it can be trusted"
        );
        let late = after_verdict(&p, &Verdict::NotHappened, &history, 0, 0, at(2000), 0.5);
        assert_eq!(late.event, Event::ReconciledNotHappened);
        assert!(late.bump_generation);
    }

    /// An outage (connection refused, 5xx before the effect) is retried on the cell's time
    /// budget: 20 refusals within it are still retried; past it the action fails, saying
    /// nothing reached the partner.
    #[test]
    fn an_outage_is_retried_on_a_time_budget_not_a_count() {
        let mut p = profile(Lookup::None);
        p.retry.outage_budget = Duration::from_secs(600);
        let t0 = Utc.with_ymd_and_hms(2026, 11, 29, 0, 0, 0).unwrap();
        let history: Vec<AttemptRecord> = (1..=20)
            .map(|n| AttemptRecord {
                number: n,
                key_generation: 0,
                key: None,
                request_fingerprint: "fp".into(),
                started_at: t0 + chrono::Duration::seconds(i64::from(n) * 10),
                result: Some(AttemptResult::NotProcessed),
            })
            .collect();
        let refused = ExecOutcome::NotProcessed {
            reason: "connection refused: the request never left".into(),
            retry_after: None,
        };
        let within = after_outcome(
            &p,
            &refused,
            20,
            &history,
            0,
            t0 + chrono::Duration::seconds(200),
            0.5,
        );
        assert_eq!(within.event, Event::NotProcessed);
        let past = after_outcome(
            &p,
            &refused,
            20,
            &history,
            0,
            t0 + chrono::Duration::seconds(611),
            0.5,
        );
        assert_eq!(past.event, Event::Failed);
        assert!(past.reason.unwrap().contains("nothing reached the partner"));
        // A person sent it again (generation 1): the budget runs from that attempt.
        let mut resent = history.clone();
        resent.push(AttemptRecord {
            number: 21,
            key_generation: 1,
            key: None,
            request_fingerprint: "fp".into(),
            started_at: t0 + chrono::Duration::seconds(900),
            result: Some(AttemptResult::NotProcessed),
        });
        let again = after_outcome(
            &p,
            &refused,
            21,
            &resent,
            1,
            t0 + chrono::Duration::seconds(901),
            0.5,
        );
        assert_eq!(again.event, Event::NotProcessed, "a fresh budget");
    }
}
