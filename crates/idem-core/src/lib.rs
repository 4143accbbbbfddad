//! idem's core: identifiers, the inbox state machine, outcome classes, cell profiles and
//! the rules that decide whether a partner request may be sent. Nothing here does I/O, so
//! the store, the workers and the model tests all run the very same decision code.

pub mod action;
pub mod backoff;
pub mod canonical;
pub mod envelope;
pub mod guard;
pub mod outcome;
pub mod plan;
pub mod profile;
pub mod state;
pub mod transition;

pub use action::{check_intent_part, ActionId, CellName, InvalidCellName, InvalidIntent};
pub use backoff::RetryPolicy;
pub use envelope::{DecodeError, Envelope};
pub use guard::{check_send, AttemptRecord, AttemptResult, SendRule, SendViolation};
pub use outcome::{ExecOutcome, Receipt, Verdict};
pub use plan::{after_outcome, after_verdict, plan_in_doubt, InDoubtPlan, Next};
pub use profile::{CellProfile, KeySupport, Lookup, RateLimit, ReplayModel};
pub use state::State;
pub use transition::{transition, Event, TransitionError};
