//! Enqueue into the outbox inside the caller's own transaction.

use idem_core::{ActionId, CellName, State};
use idem_telemetry::TraceHeaders;
use serde::Serialize;
use sqlx::PgExecutor;

use crate::EnqueueError;

/// An action as an agent asks for it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NewAction {
    pub action_id: ActionId,
    pub cell: CellName,
    pub args: serde_json::Value,
    /// Actions with the same ordering key are delivered in enqueue order (Kafka partition
    /// key). Defaults to the action id.
    pub ordering_key: Option<String>,
    /// Trace context to continue. Empty: the current span's, captured at enqueue.
    pub trace: TraceHeaders,
}

impl NewAction {
    /// An action whose id the caller chose (and must reuse on retry).
    pub fn new(action_id: ActionId, cell: CellName, args: serde_json::Value) -> Self {
        Self {
            action_id,
            cell,
            args,
            ordering_key: None,
            trace: TraceHeaders::default(),
        }
    }

    /// An action whose id is derived from the intent: the same scope, cell and arguments
    /// always name the same action, so a re-planned turn cannot produce a second effect.
    pub fn from_intent(scope: &str, cell: CellName, args: serde_json::Value) -> Self {
        Self::new(ActionId::from_intent(scope, &cell, &args), cell, args)
    }

    /// Continue the trace these headers describe (e.g. an HTTP request's `traceparent`)
    /// instead of the current span's.
    pub fn with_trace(mut self, trace: TraceHeaders) -> Self {
        self.trace = trace;
        self
    }

    pub fn with_ordering_key(mut self, key: impl Into<String>) -> Self {
        self.ordering_key = Some(key.into());
        self
    }
}

/// What enqueue did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub action_id: ActionId,
    /// The action's current state (`received` when just created).
    pub state: State,
    /// False when the action already existed with the same arguments.
    pub created: bool,
}

/// Enqueue `action` on `executor`: pass the agent's own transaction, and the action exists
/// exactly when that transaction commits. Idempotent on the action id; the same id with
/// other arguments is [`EnqueueError::Conflict`]. Goes through the `idem.enqueue` SQL
/// function, so Rust and other languages share one implementation.
#[tracing::instrument(name = "idem.enqueue", skip_all, fields(action_id = %action.action_id, cell = %action.cell))]
pub async fn enqueue<'e, E: PgExecutor<'e>>(
    executor: E,
    action: &NewAction,
) -> Result<Enqueued, EnqueueError> {
    if !action.args.is_object() {
        return Err(EnqueueError::Invalid("args must be a JSON object".into()));
    }
    // The relay and the worker continue the trace from here (or from the caller's headers).
    let trace = if action.trace.is_empty() {
        TraceHeaders::current()
    } else {
        action.trace.clone()
    };
    let row: Result<(uuid::Uuid, String, bool), sqlx::Error> =
        sqlx::query_as("SELECT action_id, state, created FROM idem.enqueue($1, $2, $3, $4, $5)")
            .bind(action.action_id.as_uuid())
            .bind(action.cell.as_str())
            .bind(&action.args)
            .bind(action.ordering_key.as_deref())
            .bind(trace.to_json())
            .fetch_one(executor)
            .await;
    match row {
        Ok((id, state, created)) => {
            if !created {
                // The same id with the same arguments: the earlier action stands.
                idem_telemetry::metrics::duplicate_suppressed(
                    idem_telemetry::metrics::Layer::Enqueue,
                    1,
                );
            }
            Ok(Enqueued {
                action_id: id.into(),
                state: state.parse().map_err(|e: idem_core::state::UnknownState| {
                    EnqueueError::Invalid(e.to_string())
                })?,
                created,
            })
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("IDM01") => {
            Err(EnqueueError::Conflict {
                action_id: action.action_id,
            })
        }
        Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some("IDM02") => {
            Err(EnqueueError::Invalid(db.message().to_owned()))
        }
        Err(e) => Err(e.into()),
    }
}
