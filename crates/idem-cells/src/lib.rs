//! idem's cells. A cell is the adapter for one (integration, operation) pair: it declares a
//! profile (the three questions: key? lookup? human?) and implements `execute` and
//! `reconcile`. It never decides whether a request may be sent; the worker does that with
//! the core guard before it calls `execute`.
//!
//! One folder per integration holds its cells and their cards; [`kit`] is what a cell is
//! written with, [`builtin`] the one list of them.

pub mod amadeus;
pub mod builtin;
pub mod cards;
pub mod cell;
pub mod declarative;
pub mod gmail;
pub mod http;
pub mod hubspot;
pub mod kit;
pub mod noop;
pub mod registry;
pub mod slack;
pub mod stripe;
pub mod summary;
pub mod twilio;

pub use amadeus::{AmadeusBook, AmadeusCancel, AmadeusPrice};
pub use cell::{Attempt, Cell, InvalidArgs};
pub use declarative::DeclarativeCell;
pub use gmail::GmailSend;
pub use hubspot::HubSpotUpsert;
pub use kit::{CellArgs, TypedCell};
pub use registry::{ArgError, Registry};
pub use slack::SlackPost;
pub use stripe::{StripeCharge, StripeRefund};
pub use twilio::TwilioSms;
