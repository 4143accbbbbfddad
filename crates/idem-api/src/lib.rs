//! idem's HTTP API (`idem serve`). Every endpoint but `/v1/health` needs a bearer token
//! (`idem tokens create`) with the endpoint's scope: 401 without a valid token, 403 without
//! the scope. Submitting is idempotent on the action id exactly like `enqueue`: the same id
//! and arguments return the same action; other arguments are a 409.
//!
//! Endpoints: submit, read (with long-poll), the cell grid, approvals and needs_human
//! cases with audited decisions (the token's name is the decider), health.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use idem_cells::Registry;
use idem_core::{ActionId, CellName};
use idem_store::decisions::{self, DecisionError, Resolution};
use idem_store::tokens::{self, Scope, TokenInfo};
use idem_store::{enqueue, inbox, EnqueueError, NewAction, Store};
use serde::Deserialize;
use serde_json::{json, Value};

/// Largest request body accepted (bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// Longest `?wait=` honoured.
const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct ApiState {
    pub store: Store,
    pub cells: Arc<Registry>,
}

/// The API's routes.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { Json(json!({"ok": true})) }))
        .route("/v1/actions", post(submit))
        .route("/v1/actions/{id}", get(read))
        .route("/v1/cells", get(cells))
        .route("/v1/approvals", get(approvals))
        .route("/v1/approvals/{id}/{decision}", post(decide))
        .route("/v1/doubts", get(doubts))
        .route("/v1/doubts/{id}/resolve", post(resolve))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

fn problem(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The caller's token, if it grants `scope`; else the 401/403 to answer.
async fn authorize(
    state: &ApiState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<TokenInfo, Response> {
    let Some(secret) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
    else {
        return Err(problem(StatusCode::UNAUTHORIZED, "missing bearer token"));
    };
    match tokens::authenticate(state.store.pool(), secret.trim()).await {
        Ok(Some(t)) if t.allows(scope) => Ok(t),
        Ok(Some(t)) => Err(problem(
            StatusCode::FORBIDDEN,
            format!("token {} lacks the {} scope", t.name, scope.as_str()),
        )),
        Ok(None) => Err(problem(
            StatusCode::UNAUTHORIZED,
            "invalid or revoked token",
        )),
        Err(e) => {
            tracing::error!(error = %e, "token lookup failed");
            Err(problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "store unavailable",
            ))
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Submit {
    cell: String,
    args: Value,
    action_id: Option<uuid::Uuid>,
    intent_scope: Option<String>,
    ordering_key: Option<String>,
}

async fn submit(
    State(state): State<ApiState>,
    headers: HeaderMap,
    body: Result<Json<Submit>, JsonRejection>,
) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Submit).await {
        return r;
    }
    let Json(s) = match body {
        Ok(b) => b,
        Err(e) => return problem(e.status(), format!("bad request body: {}", e.body_text())),
    };
    let cell = match CellName::new(&s.cell) {
        Ok(c) => c,
        Err(e) => return problem(StatusCode::UNPROCESSABLE_ENTITY, format!("cell: {e}")),
    };
    let Some(c) = state.cells.get(cell.as_str()) else {
        let known: Vec<String> = state.cells.iter().map(|c| c.name().to_string()).collect();
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("unknown cell {:?}; known: {}", s.cell, known.join(", ")),
        );
    };
    if let Err(e) = c.validate(&s.args) {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    }
    let action = match (s.action_id, &s.intent_scope) {
        (Some(_), Some(_)) => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "give action_id or intent_scope, not both",
            )
        }
        (Some(id), None) => NewAction::new(ActionId::from(id), cell, s.args),
        (None, Some(scope)) => NewAction::from_intent(scope, cell, s.args),
        (None, None) => return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "action_id or intent_scope is required: a retried request must name the same action",
        ),
    };
    let action = match s.ordering_key {
        Some(k) => action.with_ordering_key(k),
        None => action,
    };
    match enqueue(state.store.pool(), &action).await {
        Ok(e) => {
            // The same response whether this request created the action or found it.
            let row = inbox::get(state.store.pool(), e.action_id).await.ok().flatten();
            let status = if e.created { StatusCode::CREATED } else { StatusCode::OK };
            (status, Json(json!({"action_id": e.action_id, "state": row.map(|r| r.state).unwrap_or(e.state)}))).into_response()
        }
        Err(EnqueueError::Conflict { action_id }) => problem(
            StatusCode::CONFLICT,
            format!("action {action_id} already exists with other arguments: an action id names one request forever"),
        ),
        Err(EnqueueError::Invalid(m)) => problem(StatusCode::UNPROCESSABLE_ENTITY, m),
        Err(EnqueueError::Db(e)) => {
            tracing::error!(error = %e, "enqueue failed");
            problem(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    }
}

#[derive(Debug, Deserialize)]
struct ReadQuery {
    /// Seconds to wait for the action to settle (`30` or `30s`).
    wait: Option<String>,
}

async fn read(
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
        Ok(Some(r)) => Json(json!({
            "action_id": r.action_id, "cell": r.cell, "state": r.state, "settled": r.state.is_settled(),
            "attempts": r.attempts, "reason": r.reason, "receipt": r.receipt,
            "created_at": r.created_at, "settled_at": r.settled_at,
        }))
        .into_response(),
        Ok(None) => problem(StatusCode::NOT_FOUND, format!("no action {id}")),
        Err(e) => {
            tracing::error!(error = %e, "read failed");
            problem(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    }
}

async fn cells(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Read).await {
        return r;
    }
    let grid: Vec<Value> = state
        .cells
        .iter()
        .map(|c| json!({"name": c.name().as_str(), "card": c.card(), "profile": c.profile()}))
        .collect();
    Json(grid).into_response()
}

async fn waiting(state: &ApiState, headers: &HeaderMap, which: idem_core::State) -> Response {
    if let Err(r) = authorize(state, headers, Scope::Approve).await {
        return r;
    }
    match decisions::waiting(state.store.pool(), which, 500).await {
        Ok(items) => Json(items).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "listing failed");
            problem(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    }
}

async fn approvals(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    waiting(&state, &headers, idem_core::State::AwaitingApproval).await
}

async fn doubts(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    waiting(&state, &headers, idem_core::State::NeedsHuman).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Decision {
    /// The fingerprint the approver reviewed (from `GET /v1/approvals`); required.
    fingerprint: String,
    reason: Option<String>,
}

fn decision_error(e: DecisionError) -> Response {
    match e {
        DecisionError::NotFound(_) => problem(StatusCode::NOT_FOUND, e.to_string()),
        DecisionError::WrongState { .. } | DecisionError::FingerprintMismatch { .. } => {
            problem(StatusCode::CONFLICT, e.to_string())
        }
        DecisionError::NoActor => problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        DecisionError::Store(e) => {
            tracing::error!(error = %e, "decision failed");
            problem(StatusCode::SERVICE_UNAVAILABLE, "store unavailable")
        }
    }
}

fn action_id(id: &str) -> Option<ActionId> {
    id.parse::<uuid::Uuid>().ok().map(ActionId::from)
}

async fn decide(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path((id, decision)): Path<(String, String)>,
    body: Result<Json<Decision>, JsonRejection>,
) -> Response {
    let token = match authorize(&state, &headers, Scope::Approve).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(id) = action_id(&id) else {
        return problem(StatusCode::BAD_REQUEST, "action id must be a UUID");
    };
    let Json(d) = match body {
        Ok(b) => b,
        Err(e) => return problem(e.status(), format!("bad request body: {}", e.body_text())),
    };
    let pool = state.store.pool();
    let who = format!("token:{}", token.name);
    let done = match decision.as_str() {
        "approve" => {
            decisions::approve(pool, id, &who, d.reason.as_deref(), Some(&d.fingerprint)).await
        }
        "reject" => {
            decisions::reject(pool, id, &who, d.reason.as_deref(), Some(&d.fingerprint)).await
        }
        other => {
            return problem(
                StatusCode::NOT_FOUND,
                format!("no decision {other:?}: approve or reject"),
            )
        }
    };
    match done {
        Ok(()) => Json(json!({"action_id": id, "decision": decision, "by": who})).into_response(),
        Err(e) => decision_error(e),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "outcome")]
enum Resolve {
    Happened { partner_ref: String, reason: String },
    NotHappened { reason: String },
    Retry { reason: String },
}

async fn resolve(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Resolve>, JsonRejection>,
) -> Response {
    let token = match authorize(&state, &headers, Scope::Approve).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Some(id) = action_id(&id) else {
        return problem(StatusCode::BAD_REQUEST, "action id must be a UUID");
    };
    let Json(r) = match body {
        Ok(b) => b,
        Err(e) => return problem(e.status(), format!("bad request body: {}", e.body_text())),
    };
    let (resolution, reason) = match r {
        Resolve::Happened {
            partner_ref,
            reason,
        } if !partner_ref.trim().is_empty() => (Resolution::Happened { partner_ref }, reason),
        Resolve::Happened { .. } => {
            return problem(StatusCode::UNPROCESSABLE_ENTITY, "partner_ref: required")
        }
        Resolve::NotHappened { reason } => (Resolution::NotHappened, reason),
        Resolve::Retry { reason } => (Resolution::Retry, reason),
    };
    if reason.trim().is_empty() {
        return problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason: say why (the audit trail is the point)",
        );
    }
    let who = format!("token:{}", token.name);
    match decisions::resolve(state.store.pool(), id, &resolution, &who, &reason).await {
        Ok(to) => Json(json!({"action_id": id, "state": to, "by": who})).into_response(),
        Err(e) => decision_error(e),
    }
}
