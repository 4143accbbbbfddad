//! idem's cells. A cell is the adapter for one (integration, operation) pair: it declares a
//! profile (the three questions: key? lookup? human?) and implements `execute` and
//! `reconcile`. It never decides whether a request may be sent; the worker does that with
//! the core guard before it calls `execute`.

pub mod amadeus;
pub mod cards;
pub mod cell;
pub mod declarative;
pub mod gmail;
pub mod http;
pub mod hubspot;
pub mod noop;
pub mod registry;
pub mod slack;
pub mod stripe;
pub mod twilio;

pub use amadeus::{AmadeusBook, AmadeusCancel, AmadeusPrice};
pub use cell::{Attempt, Cell, InvalidArgs};
pub use declarative::DeclarativeCell;
pub use gmail::GmailSend;
pub use hubspot::HubSpotUpsert;
pub use registry::{ArgError, Registry};
pub use slack::SlackPost;
pub use stripe::charge::StripeCharge;
pub use stripe::refund::StripeRefund;
pub use twilio::TwilioSms;
