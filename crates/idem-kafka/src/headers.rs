//! Headers on every action message, so a consumer can route, trace and dead-letter a
//! message without decoding its payload.

pub const ACTION_ID: &str = "idem-action-id";
pub const CELL: &str = "idem-cell";
pub const CONTENT_TYPE: &str = "content-type";
pub const SCHEMA_VERSION: &str = "idem-schema-version";
/// The action's home store, when the deployment has several (`[[stores]]`).
pub const STORE: &str = "idem-store";
pub use idem_telemetry::{TRACEPARENT, TRACESTATE};

pub const JSON: &str = "application/json";
