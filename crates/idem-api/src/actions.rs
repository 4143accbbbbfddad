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
use idem_store::{inbox, EnqueueError, NewAction};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::Instrument as _;
use utoipa::{IntoParams, ToSchema};

use crate::auth::authorize;
use crate::problem::{bad_body, conflict, invalid_field, problem, unavailable, Problem};
use crate::ApiState;

/// Longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// An action to run. Name it with `intent_scope` + `intent` (the effect you mean, inside a
/// session or conversation: the same pair is the same action, and with other arguments a
/// 409), or with `action_id` (yours, a UUID, reused on retry). `intent_scope` with
/// `id_from_arguments: true` derives the id from the arguments instead: a re-planned call
/// whose arguments differ at all then acts again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// A cell from `GET /v1/cells`, e.g. `stripe.charge` (the served document lists the
    /// cells this server runs).
    #[schema(pattern = r"^[a-z0-9_]+(\.[a-z0-9_]+)+$", max_length = 64)]
    pub cell: String,
    /// The cell's arguments; `GET /v1/cells` gives each cell's JSON Schema.
    #[schema(value_type = Object)]
    pub args: Value,
    pub action_id: Option<uuid::Uuid>,
    /// The scope a named intent lives in: a session, a conversation, a tenant.
    #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$", max_length = 200)]
    pub intent_scope: Option<String>,
    /// The effect this action means, e.g. `invoice-42-payment` (at most 200 characters).
    #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$", max_length = 200)]
    pub intent: Option<String>,
    /// With `intent_scope` and no `intent`: derive the id from the cell and arguments.
    #[serde(default)]
    pub id_from_arguments: bool,
    /// Actions with the same ordering key run one at a time, in order.
    pub ordering_key: Option<String>,
}

/// The action a submission named: the same body whether this request created it or found it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Submitted {
    pub action_id: uuid::Uuid,
    /// `received`, `awaiting_approval`, … or a settled state.
    pub state: String,
    /// The store (PostgreSQL database) that holds the action: `default` with one.
    pub store: String,
}

/// An action's state and, once settled, its receipt.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionView {
    pub action_id: uuid::Uuid,
    /// The store (PostgreSQL database) that holds the action: `default` with one.
    pub store: String,
    pub cell: String,
    pub state: String,
    /// True for succeeded, failed, rejected, needs_human and dead.
    pub settled: bool,
    pub attempts: u32,
    pub reason: Option<String>,
    /// The partner's reference and response digest (succeeded actions).
    pub receipt: Option<Value>,
    pub created_at: DateTime<Utc>,
    /// Who submitted it: `token:NAME` through the API or MCP, `role:NAME` for a SQL caller
    /// that named no one; null for actions from before this was recorded.
    pub submitted_by: Option<String>,
    pub settled_at: Option<DateTime<Utc>>,
}

impl ActionView {
    /// The action `r` as read from store `store`.
    pub fn on(store: &str, r: inbox::ActionRow) -> Self {
        Self {
            action_id: r.action_id.as_uuid(),
            store: store.to_owned(),
            cell: r.cell,
            state: r.state.as_str().to_owned(),
            settled: r.state.is_settled(),
            attempts: r.attempts,
            reason: r.reason,
            receipt: r.receipt,
            created_at: r.created_at,
            submitted_by: r.submitted_by,
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
    let action =
        match (s.action_id, s.intent_scope, s.intent, s.id_from_arguments) {
            (Some(_), Some(_), _, _) | (Some(_), _, Some(_), _) => {
                return Err(invalid_field(
                    "/action_id".into(),
                    "give action_id or intent_scope + intent, not both".into(),
                ))
            }
            (Some(id), None, None, _) => NewAction::new(ActionId::from(id), cell, s.args),
            (None, Some(_), Some(_), true) => {
                return Err(invalid_field(
                    "/id_from_arguments".into(),
                    "id_from_arguments goes with intent_scope alone, not with an intent".into(),
                ))
            }
            (None, Some(scope), Some(intent), false) => {
                for (field, v) in [("intent_scope", &scope), ("intent", &intent)] {
                    idem_core::check_intent_part(field, v)
                        .map_err(|e| invalid_field(format!("/{field}"), e.to_string()))?;
                }
                NewAction::from_intent(scope, intent, cell, s.args)
            }
            (None, Some(scope), None, true) => {
                idem_core::check_intent_part("intent_scope", &scope)
                    .map_err(|e| invalid_field("/intent_scope".into(), e.to_string()))?;
                NewAction::from_arguments(&scope, cell, s.args)
            }
            (None, Some(_), None, false) => {
                return Err(invalid_field(
                    "/intent".into(),
                    "intent is required with intent_scope: name the effect you mean \
                 (\"invoice-42-payment\"), so that a re-planned call with other arguments is a \
                 conflict instead of a second action; or set id_from_arguments: true to derive \
                 the id from the arguments (a changed argument then acts again)"
                        .into(),
                ))
            }
            (None, None, Some(_), _) => {
                return Err(invalid_field(
                    "/intent_scope".into(),
                    "an intent needs its intent_scope (a session, a conversation, a tenant)".into(),
                ))
            }
            (None, None, None, _) => return Err(invalid_field(
                "/intent".into(),
                "intent_scope + intent (or action_id) is required: a retried request must name \
                 the same action"
                    .into(),
            )),
        };
    Ok(match s.ordering_key {
        Some(k) => action.with_ordering_key(k),
        None => action,
    })
}

/// Enqueue `action`: (created?, its current state), or the response for a refusal.
/// `scope` places an action whose id came from its arguments (an intent's own scope
/// places the others).
pub(crate) async fn submit_action(
    state: &ApiState,
    action: &NewAction,
    scope: Option<&str>,
) -> Result<(bool, Submitted), Response> {
    match state.stores.enqueue(action, scope).await {
        Ok((store, e)) => {
            let row = match state.stores.get(store) {
                Some(s) => inbox::get(s.pool(), e.action_id).await.ok().flatten(),
                None => None,
            };
            let current = row.map(|r| r.state).unwrap_or(e.state);
            Ok((
                e.created,
                Submitted {
                    action_id: e.action_id.as_uuid(),
                    state: current.as_str().to_owned(),
                    store: store.to_owned(),
                },
            ))
        }
        Err(EnqueueError::Conflict { action_id }) => Err(conflict(
            action_id.as_uuid(),
            match &action.intent {
                Some(i) => format!(
                    "intent {:?} in scope {:?} already names action {action_id} with other \
                     arguments: the same intent is the same action. Read that action \
                     (GET /v1/actions/{action_id}); if this is a different action, give it \
                     another intent",
                    i.intent, i.scope
                ),
                None => format!(
                    "action {action_id} already exists with other arguments: an action id \
                     names one request forever"
                ),
            },
        )),
        Err(EnqueueError::Invalid { field, message }) => Err(match field {
            Some(f) => invalid_field(f, message),
            None => problem(StatusCode::UNPROCESSABLE_ENTITY, message),
        }),
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
        (status = 403, description = "Token lacks the submit scope, or is bound to a scope prefix this action is outside", body = Problem),
        (status = 409, description = "The action id or named intent exists with other arguments; `action_id` names it", body = Problem),
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
    let token = match authorize(&state, &headers, Scope::Submit).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Json(s) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let scope = s.intent_scope.clone();
    let action = match new_action(&state, s) {
        Ok(a) => a.submitted_by(format!("token:{}", token.name)),
        Err(r) => return r,
    };
    if let Some(prefix) = token.scope_prefix.as_deref() {
        let refusal = match &action.intent {
            Some(i) => token.scope_refusal(&i.scope),
            None => Some(format!(
                "token {} is bound to scopes starting with {prefix:?}: name the action with \
                 intent_scope + intent inside it, not with action_id",
                token.name
            )),
        };
        if let Some(why) = refusal {
            return problem(StatusCode::FORBIDDEN, why);
        }
    }
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
    match submit_action(&state, &action, scope.as_deref())
        .instrument(span)
        .await
    {
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
    #[param(pattern = r"^([0-5]?[0-9]|60)s?$")]
    wait: Option<String>,
}

/// `30` or `30s`, 0 to 60 (exactly the documented pattern `^([0-5]?[0-9]|60)s?$`), as
/// seconds.
fn wait_seconds(w: &str) -> Option<u64> {
    let digits = w.strip_suffix('s').unwrap_or(w);
    if digits.is_empty() || digits.len() > 2 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|s| *s <= 60)
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
    q: Result<Query<ReadQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let token = match authorize(&state, &headers, Scope::Read).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    // A query the server cannot read (`?wait=1s&wait=2s`) is a 400 in the API's problem
    // form, not axum's plain text.
    let Ok(Query(q)) = q.map_err(|e| tracing::debug!(error = %e, "bad query")) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "query: give at most one wait, as seconds (`30` or `30s`, at most 60)",
        );
    };
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return problem(StatusCode::BAD_REQUEST, "action id must be a UUID");
    };
    let id = ActionId::from(id);
    let (store, found) = match state.stores.find(id).await {
        Ok(Some((name, row))) => (name, row),
        Ok(None) => return problem(StatusCode::NOT_FOUND, format!("no action {id}")),
        Err(e) => return unavailable("read", e),
    };
    let pool = state.stores.get(store).expect("find names a store").pool();
    // A token bound to a scope prefix reads only actions named inside it: any other is a
    // 404, as if it did not exist.
    if let Some(prefix) = token.scope_prefix.as_deref() {
        match inbox::intent_scope(pool, id).await {
            Ok(s)
                if s.as_ref()
                    .and_then(Option::as_deref)
                    .is_some_and(|s| s.starts_with(prefix)) => {}
            Ok(_) => return problem(StatusCode::NOT_FOUND, format!("no action {id}")),
            Err(e) => return unavailable("read", e),
        }
    }
    let wait = match q.wait.as_deref().map(wait_seconds) {
        None => None,
        Some(Some(s)) => Some(Duration::from_secs(s).min(MAX_WAIT)),
        Some(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "wait: seconds from 0 to 60, e.g. 30 or 30s",
            )
        }
    };
    let row = match wait {
        Some(w) if !w.is_zero() && !found.state.is_settled() => {
            match inbox::await_settled(pool, id, w).await {
                Ok(Some(r)) => Ok(Some(r)),
                Ok(None) => inbox::get(pool, id).await,
                Err(e) => Err(e),
            }
        }
        _ => Ok(Some(found)),
    };
    match row {
        Ok(Some(r)) => Json(ActionView::on(store, r)).into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no action {id}")),
        Err(e) => unavailable("read", e),
    }
}
