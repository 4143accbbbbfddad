//! idem's worker runtime, transport-agnostic, with the direct Postgres transport.
//!
//! Per action: receive (decode, match the inbox) → policy gate → write the attempt ahead and
//! commit → call the partner → classify → settle with a compare-and-set. The sweeper drives
//! expired leases, due retries and doubts on. Claims and settlements are batched: one
//! transaction per batch, not per action.

mod combine;
pub mod config;
mod heartbeat;
mod pace;
pub mod partner;
pub mod runtime;
pub mod steps;

pub use combine::{Combiner, Window};
pub use config::WorkerConfig;
pub use idem_telemetry::TraceHeaders;
pub use runtime::{Delivery, ReceiveReport, Worker, WorkerBuilder, WorkerError};
