//! The inbox state machine: one pure function from (state, event) to the next state.
//! The store applies its result as a compare-and-set on the expected current state, so
//! two workers can never both move an action forward.

use serde::{Deserialize, Serialize};

use crate::State;

/// Something that happened to an action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// Policy gate passed; attempt 1 is written ahead and leased.
    Start,
    /// Policy wants a person before anything is sent.
    RequireApproval,
    Approve,
    Reject,
    /// Undecodable, unknown cell, invalid arguments, id reused with other arguments.
    Poison,
    /// The partner answered with an effect.
    Succeeded,
    /// The partner confirmed that nothing happened and never will for this request.
    Failed,
    /// The partner confirmed nothing happened; a later attempt may succeed.
    NotProcessed,
    /// No answer can tell whether the effect happened.
    Ambiguous,
    /// The lease of the executing worker ran out: it died or hung mid-call.
    LeaseExpired,
    /// A scheduled retry is due; the next attempt is written ahead.
    RetryDue,
    /// In doubt, and rule (c) allows resending under the same key.
    Replay,
    /// Reconciliation found the effect.
    ReconciledHappened,
    /// Reconciliation proved there is no effect (trustworthy: past the settle time).
    ReconciledNotHappened,
    /// Reconciliation found the attempt definitively failed at the partner.
    ReconciledFailed,
    /// Reconciliation could not tell yet (lag, partner down): look again later.
    ReconciledUnknown,
    /// Nothing can prove it either way (no lookup, or the window is over).
    GiveUp,
    /// A person resolved a `needs_human` case.
    HumanSucceeded,
    HumanFailed,
    HumanRetry,
    /// A person or program replays a dead action after fixing it.
    Revive,
    /// A person sends a `failed` action again. `failed` means the partner confirmed no
    /// effect, so the next request goes out under a new key generation (rule b).
    Resend,
    /// A person asks for the partner to be checked again before deciding a `needs_human`
    /// case (a lookup that lagged may find the effect now).
    Recheck,
}

/// The event does not apply in that state; the caller must not write anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("event {event:?} is not allowed in state {from}")]
pub struct TransitionError {
    pub from: State,
    pub event: Event,
}

/// The next state, or an error if design.md's table has no such edge.
pub fn transition(from: State, event: Event) -> Result<State, TransitionError> {
    use Event as E;
    use State as S;
    let to = match (from, event) {
        (S::Received, E::Start) => S::Executing,
        (S::Received, E::RequireApproval) => S::AwaitingApproval,
        (S::Received, E::Poison) => S::Dead,
        (S::AwaitingApproval, E::Approve) => S::Executing,
        (S::AwaitingApproval, E::Reject) => S::Rejected,
        (S::Executing, E::Succeeded) => S::Succeeded,
        (S::Executing, E::Failed) => S::Failed,
        (S::Executing, E::NotProcessed) => S::RetryScheduled,
        (S::Executing, E::Ambiguous | E::LeaseExpired) => S::InDoubt,
        (S::RetryScheduled, E::RetryDue) => S::Executing,
        (S::InDoubt, E::Replay) => S::Executing,
        (S::InDoubt, E::ReconciledHappened) => S::Succeeded,
        (S::InDoubt, E::ReconciledFailed) => S::Failed,
        (S::InDoubt, E::ReconciledNotHappened) => S::RetryScheduled,
        (S::InDoubt, E::ReconciledUnknown) => S::InDoubt,
        (S::InDoubt, E::GiveUp) => S::NeedsHuman,
        (S::NeedsHuman, E::HumanSucceeded) => S::Succeeded,
        (S::NeedsHuman, E::HumanFailed) => S::Failed,
        (S::NeedsHuman, E::HumanRetry) => S::RetryScheduled,
        (S::NeedsHuman, E::Recheck) => S::InDoubt,
        (S::Dead, E::Revive) => S::Received,
        (S::Failed, E::Resend) => S::RetryScheduled,
        _ => return Err(TransitionError { from, event }),
    };
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENTS: [Event; 23] = [
        Event::Start,
        Event::RequireApproval,
        Event::Approve,
        Event::Reject,
        Event::Poison,
        Event::Succeeded,
        Event::Failed,
        Event::NotProcessed,
        Event::Ambiguous,
        Event::LeaseExpired,
        Event::RetryDue,
        Event::Replay,
        Event::ReconciledHappened,
        Event::ReconciledNotHappened,
        Event::ReconciledFailed,
        Event::ReconciledUnknown,
        Event::GiveUp,
        Event::HumanSucceeded,
        Event::HumanFailed,
        Event::HumanRetry,
        Event::Revive,
        Event::Resend,
        Event::Recheck,
    ];

    /// design.md's table, written out independently of `transition`: the "leaves to" column.
    fn allowed_targets(s: State) -> &'static [State] {
        use State::*;
        match s {
            Received => &[Executing, AwaitingApproval, Dead],
            AwaitingApproval => &[Executing, Rejected],
            Executing => &[Succeeded, Failed, InDoubt, RetryScheduled],
            RetryScheduled => &[Executing],
            InDoubt => &[
                Succeeded,
                Failed,
                RetryScheduled,
                InDoubt,
                NeedsHuman,
                Executing,
            ],
            Succeeded | Rejected => &[],
            // idem's addition to design.md's table: a person may send a failed action
            // again (it had no effect) or have a needs_human case checked again.
            Failed => &[RetryScheduled],
            NeedsHuman => &[Succeeded, Failed, RetryScheduled, InDoubt],
            Dead => &[Received],
        }
    }

    #[test]
    fn every_pair_matches_the_design_table() {
        let mut edges = 0;
        for s in State::ALL {
            for e in EVENTS {
                if let Ok(to) = transition(s, e) {
                    edges += 1;
                    assert!(
                        allowed_targets(s).contains(&to),
                        "{s} --{e:?}--> {to} is not in design.md's table"
                    );
                }
            }
            // every edge of the table is reachable by some event
            for t in allowed_targets(s) {
                assert!(
                    EVENTS.iter().any(|e| transition(s, *e) == Ok(*t)),
                    "{s} -> {t} has no event"
                );
            }
        }
        assert_eq!(edges, 23);
    }

    #[test]
    fn final_states_have_no_exit() {
        for s in State::ALL.into_iter().filter(|s| s.is_final()) {
            for e in EVENTS {
                assert!(transition(s, e).is_err());
            }
        }
    }

    #[test]
    fn people_reopen_only_through_their_own_events() {
        // Nothing a worker reports moves an action out of failed or needs_human.
        for e in EVENTS {
            let by_person = matches!(
                e,
                Event::Resend
                    | Event::Recheck
                    | Event::HumanSucceeded
                    | Event::HumanFailed
                    | Event::HumanRetry
            );
            for s in [State::Failed, State::NeedsHuman] {
                if transition(s, e).is_ok() {
                    assert!(by_person, "{s} --{e:?}--> is not a person's decision");
                }
            }
        }
    }

    #[test]
    fn only_executing_can_report_outcomes() {
        for s in State::ALL {
            let ok = transition(s, Event::Succeeded).is_ok();
            assert_eq!(ok, s == State::Executing, "{s}");
        }
    }

    #[test]
    fn executing_is_entered_only_at_the_write_ahead_points() {
        let mut entries = vec![];
        for s in State::ALL {
            for e in EVENTS {
                if transition(s, e) == Ok(State::Executing) {
                    entries.push((s, e));
                }
            }
        }
        assert_eq!(
            entries,
            vec![
                (State::Received, Event::Start),
                (State::AwaitingApproval, Event::Approve),
                (State::RetryScheduled, Event::RetryDue),
                (State::InDoubt, Event::Replay),
            ]
        );
    }
}
