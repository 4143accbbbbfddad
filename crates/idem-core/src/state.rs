//! The inbox states of design.md.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where an action stands. The string forms are what the `idem.actions.state` column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Received,
    AwaitingApproval,
    Executing,
    RetryScheduled,
    InDoubt,
    Succeeded,
    Failed,
    Rejected,
    NeedsHuman,
    Dead,
}

impl State {
    pub const ALL: [State; 10] = [
        State::Received,
        State::AwaitingApproval,
        State::Executing,
        State::RetryScheduled,
        State::InDoubt,
        State::Succeeded,
        State::Failed,
        State::Rejected,
        State::NeedsHuman,
        State::Dead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Received => "received",
            State::AwaitingApproval => "awaiting_approval",
            State::Executing => "executing",
            State::RetryScheduled => "retry_scheduled",
            State::InDoubt => "in_doubt",
            State::Succeeded => "succeeded",
            State::Failed => "failed",
            State::Rejected => "rejected",
            State::NeedsHuman => "needs_human",
            State::Dead => "dead",
        }
    }

    /// Settled: idem will never call the partner for this action again on its own.
    /// `needs_human` and `dead` count as settled for "nothing lost": each is a state a
    /// person or program can act on.
    pub fn is_settled(self) -> bool {
        matches!(
            self,
            State::Succeeded | State::Failed | State::Rejected | State::NeedsHuman | State::Dead
        )
    }

    /// Final: no transition leaves this state at all. (`failed` is settled but not final:
    /// a person may send it again, since it had no effect.)
    pub fn is_final(self) -> bool {
        matches!(self, State::Succeeded | State::Rejected)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not one of the inbox states.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown inbox state {0:?}")]
pub struct UnknownState(pub String);

impl FromStr for State {
    type Err = UnknownState;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        State::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_text() {
        for s in State::ALL {
            assert_eq!(s.as_str().parse::<State>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
        assert!("running".parse::<State>().is_err());
    }
}
