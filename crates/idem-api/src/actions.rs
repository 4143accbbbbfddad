//! Submitting actions and reading their receipts.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use idem_cells::ArgError;
use idem_core::{ActionId, CellName};
use idem_store::tokens::Scope;
use idem_store::{enqueue, inbox, EnqueueError, NewAction};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument as _;
use utoipa::{IntoParams, ToSchema};

use crate::auth::authorize;
use crate::problem::{bad_body, invalid_field, problem, unavailable, Problem};
use crate::ApiState;

/// Longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// An action to run. Name it with `action_id` (yours, a UUID) or `intent_scope` (idem
/// derives the id from the scope, cell and arguments, so a re-planned call with the same
/// arguments in the same scope names the same action).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// A cell from `GET /v1/cells`, e.g. `stripe.charge`.
    pub cell: String,
    /// The cell's arguments; `GET /v1/cells` gives each cell's JSON Schema.
    pub args: Value,
    pub action_id: Option<uuid::Uuid>,
    pub intent_scope: Option<String>,
    /// Actions with the same ordering key run one at a time, in order.
    pub ordering_key: Option<String>,
}

/// The action a submission named: the same body whether this request created it or found it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    pub action_id: uuid::Uuid,
    /// `received`, `awaiting_approval`, … or a settled state.
    pub state: String,
}

/// An action's state and, once settled, its receipt.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionView {
    pub action_id: uuid::Uuid,
    pub cell: String,
    pub state: String,
    /// True for succeeded, failed, rejected, needs_human and dead.
    pub settled: bool,
    pub attempts: u32,
    pub reason: Option<String>,
    /// The partner's reference and response digest (succeeded actions).
    pub receipt: Option<Value>,
    pub created_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
}

impl From<inbox::ActionRow> for ActionView {
    fn from(r: inbox::ActionRow) -> Self {
        Self {
            action_id: r.action_id.as_uuid(),
            cell: r.cell,
            state: r.state.as_str().to_owned(),
            settled: r.state.is_settled(),
            attempts: r.attempts,
            reason: r.reason,
            receipt: r.receipt,
            created_at: r.created_at,
            settled_at: r.settled_at,
        }
    }
}

/// Check and name an action from a submission; the refusal is a finished response.
pub(crate) fn new_action(state: &ApiState, s: Submit) -> Result<NewAction, Response> {
    let cell =
        CellName::new(&s.cell).map_err(|e| invalid_field("/cell".into(), format!("cell: {e}")))?;
    match state.cells.check(cell.as_str(), &s.args) {
        Ok(()) => {}
        Err(e @ ArgError::UnknownCell { .. }) => {
            return Err(invalid_field("/cell".into(), e.to_string()))
        }
        Err(ArgError::Invalid { field, message, .. }) => {
            return Err(invalid_field(format!("/args{field}"), message))
        }
    }
    let action = match (s.action_id, &s.intent_scope) {
        (Some(_), Some(_)) => {
            return Err(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give action_id or intent_scope, not both",
            ))
        }
        (Some(id), None) => NewAction::new(ActionId::from(id), cell, s.args),
        (None, Some(scope)) => NewAction::from_intent(scope, cell, s.args),
        (None, None) => return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "action_id or intent_scope is required: a retried request must name the same action",
        )),
    };
    Ok(match s.ordering_key {
        Some(k) => action.with_ordering_key(k),
        None => action,
    })
}

/// Enqueue `action`: (created?, its current state), or the response for a refusal.
pub(crate) async fn submit_action(
    state: &ApiState,
    action: &NewAction,
) -> Result<(bool, Submitted), Response> {
    match enqueue(state.store.pool(), action).await {
        Ok(e) => {
            let row = inbox::get(state.store.pool(), e.action_id).await.ok().flatten();
            let current = row.map(|r| r.state).unwrap_or(e.state);
            Ok((
                e.created,
                Submitted {
                    action_id: e.action_id.as_uuid(),
                    state: current.as_str().to_owned(),
                },
            ))
        }
        Err(EnqueueError::Conflict { action_id }) => Err(problem(
            StatusCode::CONFLICT,
            format!("action {action_id} already exists with other arguments: an action id names one request forever"),
        )),
        Err(EnqueueError::Invalid(m)) => Err(problem(StatusCode::UNPROCESSABLE_ENTITY, m)),
        Err(EnqueueError::Db(e)) => Err(unavailable("enqueue", e)),
    }
}

/// Submit an action. Idempotent on the action id: the same id and arguments answer the
/// same action (201 the first time, 200 after); other arguments are a 409.
#[utoipa::path(post, path = "/v1/actions", tag = "actions", request_body = Submit,
    security(("bearer" = ["submit"])),
    responses(
        (status = 201, description = "Created", body = Submitted),
        (status = 200, description = "Already submitted with these arguments", body = Submitted),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 401, description = "Missing or invalid token", body = Problem),
        (status = 403, description = "Token lacks the submit scope", body = Problem),
        (status = 409, description = "The action id exists with other arguments", body = Problem),
        (status = 413, description = "Body over 64 KiB", body = Problem),
        (status = 415, description = "Not application/json", body = Problem),
        (status = 422, description = "Unknown cell or arguments outside the cell's schema; `field` says which", body = Problem),
        (status = 429, description = "Over the token's rate limit (Retry-After)", body = Problem),
    ))]
pub(crate) async fn submit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<Submit>, JsonRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Submit).await {
        return r;
    }
    let Json(s) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let action = match new_action(&state, s) {
        Ok(a) => a,
        Err(r) => return r,
    };
    // A caller that sends `traceparent` gets the whole path in its own trace.
    let incoming = idem_telemetry::TraceHeaders::from_pairs(
        headers
            .iter()
            .filter_map(|(k, v)| v.to_str().ok().map(|v| (k.as_str(), v))),
    );
    let action = if incoming.is_empty() {
        action
    } else {
        action.with_trace(incoming)
    };
    let span =
        tracing::info_span!("idem.api.submit", cell = %action.cell, action_id = %action.action_id);
    match submit_action(&state, &action).instrument(span).await {
        Ok((created, s)) => {
            let status = if created {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            (status, Json(s)).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ReadQuery {
    /// Seconds to wait for the action to settle (`30` or `30s`, at most 60).
    wait: Option<String>,
}

/// An action's state and receipt; with `?wait=` it long-polls until settled.
#[utoipa::path(get, path = "/v1/actions/{id}", tag = "actions",
    params(("id" = uuid::Uuid, Path, description = "The action id"), ReadQuery),
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "The action (settled or not, when the wait ended)", body = ActionView),
        (status = 400, description = "Id not a UUID or bad wait", body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "No such action", body = Problem),
        (status = 429, body = Problem),
    ))]
pub(crate) async fn read(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<ReadQuery>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Read).await {
        return r;
    }
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return problem(StatusCode::BAD_REQUEST, "action id must be a UUID");
    };
    let id = ActionId::from(id);
    let wait = match q
        .wait
        .as_deref()
        .map(|w| w.trim_end_matches('s').parse::<u64>())
    {
        None => None,
        Some(Ok(s)) => Some(Duration::from_secs(s).min(MAX_WAIT)),
        Some(Err(_)) => return problem(StatusCode::BAD_REQUEST, "wait: seconds, e.g. 30 or 30s"),
    };
    let row = match wait {
        Some(w) if !w.is_zero() => match inbox::await_settled(state.store.pool(), id, w).await {
            Ok(Some(r)) => Ok(Some(r)),
            Ok(None) => inbox::get(state.store.pool(), id).await,
            Err(e) => Err(e),
        },
        _ => inbox::get(state.store.pool(), id).await,
    };
    match row {
        Ok(Some(r)) => Json(ActionView::from(r)).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no action {id}")),
        Err(e) => unavailable("read", e),
    }
}
