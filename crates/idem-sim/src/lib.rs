//! HTTP simulators of idem's partners. Each reproduces the documented semantics of
//! `docs/partners.md` (status codes, error bodies, idempotency and lookup behaviour),
//! keeps an **effect ledger** of every real effect it performed, and injects faults
//! deterministically from a seed. Tests count effects here, from the partner's side.

pub mod amadeus;
pub mod fault;
pub mod gmail;
pub mod hubspot;
pub mod ietf;
pub mod partner;
pub mod server;
pub mod slack;
pub mod stripe;
pub mod twilio;

pub use amadeus::AmadeusSim;
pub use fault::{Fault, FaultRates};
pub use gmail::{GmailConfig, GmailSim};
pub use hubspot::HubSpotSim;
pub use ietf::{IetfConfig, IetfSim};
pub use partner::{Effect, PartnerCore};
pub use server::SimServer;
pub use slack::SlackSim;
pub use stripe::{LedgerEntry, StripeSim, StripeSimConfig};
pub use twilio::TwilioSim;
