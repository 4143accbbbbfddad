//! People's decisions: approvals and needs_human cases, each audited with the deciding
//! token's name.

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use idem_core::ActionId;
use idem_store::decisions::{self, DecisionError, Resolution};
use idem_store::tokens::Scope;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::authorize;
use crate::problem::{bad_body, problem, unavailable, Problem};
use crate::ApiState;

/// How many waiting actions one listing returns (oldest first).
const PAGE: i64 = 500;

pub(crate) async fn waiting(
    state: &ApiState,
    headers: &HeaderMap,
    which: idem_core::State,
) -> Response {
    if let Err(r) = authorize(state, headers, Scope::Approve).await {
        return r;
    }
    let mut g = state
        .stores
        .gather(move |pool| async move { decisions::waiting(&pool, which, PAGE).await })
        .await;
    if g.all_down() {
        return unavailable("listing", g.unavailable.join("; "));
    }
    g.items.sort_by_key(|p| p.item.row.updated_at);
    g.items.truncate(PAGE as usize);
    crate::partial(Json(g.items).into_response(), &g.unavailable)
}

/// Actions awaiting approval, oldest first: arguments, state and the `fingerprint` an
/// approval must quote.
#[utoipa::path(get, path = "/v1/approvals", tag = "decisions",
    security(("bearer" = ["approve"])),
    responses(
        (status = 200, description = "Action rows with `fingerprint`", body = [Object]),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem),
    ))]
pub(crate) async fn approvals(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    waiting(&state, &headers, idem_core::State::AwaitingApproval).await
}

/// Actions in needs_human: idem could not tell whether the partner acted; a person decides.
#[utoipa::path(get, path = "/v1/doubts", tag = "decisions",
    security(("bearer" = ["approve"])),
    responses(
        (status = 200, description = "Action rows with `fingerprint` and `reason`", body = [Object]),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem),
    ))]
pub(crate) async fn doubts(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    waiting(&state, &headers, idem_core::State::NeedsHuman).await
}

/// An approver's decision, bound to what they reviewed.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    /// The fingerprint shown by `GET /v1/approvals`: the decision applies only to exactly
    /// those arguments.
    pub fingerprint: String,
    pub reason: Option<String>,
}

/// What was decided and by whom.
#[derive(Debug, Serialize, ToSchema)]
pub struct Decided {
    pub action_id: uuid::Uuid,
    /// `approve`, `reject`, or the state a resolution moved the action to.
    pub decision: String,
    /// `token:<name>`.
    pub by: String,
}

pub(crate) fn decision_error(e: DecisionError) -> Response {
    match e {
        DecisionError::NotFound(_) => problem(StatusCode::NOT_FOUND, e.to_string()),
        DecisionError::WrongState { .. }
        | DecisionError::FingerprintMismatch { .. }
        | DecisionError::NoLookup { .. } => problem(StatusCode::CONFLICT, e.to_string()),
        DecisionError::NoActor => problem(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
        DecisionError::Store(e) => unavailable("decision", e),
    }
}

fn action_id(id: &str) -> Result<ActionId, Response> {
    id.parse::<uuid::Uuid>()
        .map(ActionId::from)
        .map_err(|_| problem(StatusCode::BAD_REQUEST, "action id must be a UUID"))
}

/// Approve or reject on behalf of the caller's token (shared by the API and the console).
pub(crate) async fn record_decision(
    state: &ApiState,
    who: &str,
    id: ActionId,
    approve: bool,
    d: &Decision,
) -> Result<(), Response> {
    let home = crate::pool_of(state, id).await?;
    let pool = home.pool();
    let done = if approve {
        decisions::approve(pool, id, who, d.reason.as_deref(), Some(&d.fingerprint)).await
    } else {
        decisions::reject(pool, id, who, d.reason.as_deref(), Some(&d.fingerprint)).await
    };
    done.map_err(decision_error)
}

/// What every decision endpoint checks first: the approver's token, the id, the body.
async fn decision_request<T>(
    state: &ApiState,
    headers: &HeaderMap,
    id: &str,
    body: Result<Json<T>, JsonRejection>,
) -> Result<(String, ActionId, T), Response> {
    let token = authorize(state, headers, Scope::Approve).await?;
    let id = action_id(id)?;
    let Json(body) = body.map_err(bad_body)?;
    Ok((format!("token:{}", token.name), id, body))
}

async fn decide(
    state: ApiState,
    headers: HeaderMap,
    id: String,
    approve: bool,
    body: Result<Json<Decision>, JsonRejection>,
) -> Response {
    let (who, id, d) = match decision_request(&state, &headers, &id, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match record_decision(&state, &who, id, approve, &d).await {
        Ok(()) => Json(Decided {
            action_id: id.as_uuid(),
            decision: if approve { "approve" } else { "reject" }.into(),
            by: who,
        })
        .into_response(),
        Err(r) => r,
    }
}

/// Approve an action awaiting approval; a worker then starts it.
#[utoipa::path(post, path = "/v1/approvals/{id}/approve", tag = "decisions",
    params(("id" = uuid::Uuid, Path)), request_body = Decision,
    security(("bearer" = ["approve"])),
    responses(
        (status = 200, body = Decided),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "Not awaiting approval, or the fingerprint does not match", body = Problem),
        (status = 413, description = "Body over 64 KiB", body = Problem),
        (status = 415, description = "Not application/json", body = Problem),
        (status = 422, description = "Missing fingerprint, or a field the body does not have", body = Problem),
        (status = 429, body = Problem),
    ))]
pub(crate) async fn approve(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Decision>, JsonRejection>,
) -> Response {
    decide(state, headers, id, true, body).await
}

/// Reject an action awaiting approval: it settles as `rejected` and never runs.
#[utoipa::path(post, path = "/v1/approvals/{id}/reject", tag = "decisions",
    params(("id" = uuid::Uuid, Path)), request_body = Decision,
    security(("bearer" = ["approve"])),
    responses(
        (status = 200, body = Decided),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 413, description = "Body over 64 KiB", body = Problem),
        (status = 415, description = "Not application/json", body = Problem),
        (status = 422, description = "Missing fingerprint, or a field the body does not have", body = Problem),
        (status = 429, body = Problem),
    ))]
pub(crate) async fn reject(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Decision>, JsonRejection>,
) -> Response {
    decide(state, headers, id, false, body).await
}

/// A person's answer to a needs_human case.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields, rename_all = "snake_case", tag = "outcome")]
pub enum Resolve {
    /// The partner did act: settle as succeeded with the partner's reference.
    Happened {
        #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
        partner_ref: String,
        #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
        reason: String,
    },
    /// The partner did not act: settle as failed.
    NotHappened {
        #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
        reason: String,
    },
    /// Send again under a new key generation (the person vouches that no effect happened).
    Retry {
        #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
        reason: String,
    },
    /// Ask the partner again before deciding (a lagging lookup may find the effect now):
    /// back to in_doubt and reconciled at once; it returns to needs_human, with what was
    /// checked and when, if the partner still cannot tell. Cells without a lookup refuse it.
    Recheck {
        #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
        reason: String,
    },
}

/// Resolve a needs_human case; the decision is recorded with the token's name and reason.
#[utoipa::path(post, path = "/v1/doubts/{id}/resolve", tag = "decisions",
    params(("id" = uuid::Uuid, Path)), request_body = Resolve,
    security(("bearer" = ["approve"])),
    responses(
        (status = 200, body = Decided),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "Not in needs_human, or a recheck for a cell with no lookup", body = Problem),
        (status = 413, description = "Body over 64 KiB", body = Problem),
        (status = 415, description = "Not application/json", body = Problem),
        (status = 422, description = "Missing reason or partner_ref, or a field the outcome does not have", body = Problem),
        (status = 429, body = Problem),
    ))]
pub(crate) async fn resolve(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Resolve>, JsonRejection>,
) -> Response {
    let (who, id, r) = match decision_request(&state, &headers, &id, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match resolve_case(&state, &who, id, r).await {
        Ok(to) => Json(Decided {
            action_id: id.as_uuid(),
            decision: to,
            by: who,
        })
        .into_response(),
        Err(r) => r,
    }
}

/// Record a resolution (shared by the API and the console); returns the new state.
pub(crate) async fn resolve_case(
    state: &ApiState,
    who: &str,
    id: ActionId,
    r: Resolve,
) -> Result<String, Response> {
    let (resolution, reason) = match r {
        Resolve::Happened {
            partner_ref,
            reason,
        } if !partner_ref.trim().is_empty() => (Resolution::Happened { partner_ref }, reason),
        Resolve::Happened { .. } => {
            return Err(problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "partner_ref: required",
            ))
        }
        Resolve::NotHappened { reason } => (Resolution::NotHappened, reason),
        Resolve::Retry { reason } => (Resolution::Retry, reason),
        Resolve::Recheck { reason } => {
            let reason = required_reason(reason)?;
            return recheck_case(state, who, id, &reason).await;
        }
    };
    let reason = required_reason(reason)?;
    match decisions::resolve(
        crate::pool_of(state, id).await?.pool(),
        id,
        &resolution,
        who,
        &reason,
    )
    .await
    {
        Ok(to) => Ok(to.as_str().to_owned()),
        Err(e) => Err(decision_error(e)),
    }
}

pub(crate) fn required_reason(reason: String) -> Result<String, Response> {
    if reason.trim().is_empty() {
        return Err(problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reason: say why (the audit trail is the point)",
        ));
    }
    Ok(reason)
}

/// Send a needs_human case back to the partner's lookup; refused for a cell without one.
async fn recheck_case(
    state: &ApiState,
    who: &str,
    id: ActionId,
    reason: &str,
) -> Result<String, Response> {
    match decisions::recheck(crate::pool_of(state, id).await?.pool(), id, who, reason).await {
        Ok(()) => Ok(idem_core::State::InDoubt.as_str().to_owned()),
        Err(e) => Err(decision_error(e)),
    }
}

/// Why a failed action is sent again.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resend {
    /// Why (recorded in the audit; not blank).
    #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    pub reason: String,
}

/// Send a `failed` or `dead` action again. A failed action had no effect (the partner refused
/// it, or it was not processed for longer than the cell's outage budget), so it goes out
/// under a fresh partner key with a fresh outage budget. A dead action (an unknown cell,
/// arguments its cell refused) never had an attempt: it goes back to `received` and is
/// delivered again, once what killed it is fixed. The action id, and so the agent's intent,
/// stay the same.
#[utoipa::path(post, path = "/v1/actions/{id}/resend", tag = "decisions",
    params(("id" = uuid::Uuid, Path)), request_body = Resend,
    security(("bearer" = ["approve"])),
    responses(
        (status = 200, body = Decided),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "Neither failed nor dead", body = Problem),
        (status = 413, description = "Body over 64 KiB", body = Problem),
        (status = 415, description = "Not application/json", body = Problem),
        (status = 422, description = "Missing reason", body = Problem),
        (status = 429, body = Problem),
    ))]
pub(crate) async fn resend(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<Resend>, JsonRejection>,
) -> Response {
    let (who, id, r) = match decision_request(&state, &headers, &id, body).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    match resend_action(&state, &who, id, r.reason).await {
        Ok(to) => Json(Decided {
            action_id: id.as_uuid(),
            decision: to,
            by: who,
        })
        .into_response(),
        Err(r) => r,
    }
}

/// Record a resend (shared by the API and the console); returns the new state.
pub(crate) async fn resend_action(
    state: &ApiState,
    who: &str,
    id: ActionId,
    reason: String,
) -> Result<String, Response> {
    let reason = required_reason(reason)?;
    match decisions::send_again(crate::pool_of(state, id).await?.pool(), id, who, &reason).await {
        Ok(to) => Ok(to.as_str().to_owned()),
        Err(e) => Err(decision_error(e)),
    }
}
