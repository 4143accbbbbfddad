//! The fleet's approval policy over HTTP: read it (read scope), change a cell's rule
//! (approve scope; audited with the token's name and the reason).

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use idem_core::profile::ApprovalPolicy;
use idem_core::CellName;
use idem_store::policy;
use idem_store::tokens::Scope;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::auth::authorize;
use crate::problem::{bad_body, invalid_field, unavailable, Problem};
use crate::ApiState;

/// A cell's rule as stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct PolicyView {
    pub cell: String,
    /// `never`, `always` or `ARGUMENT>=THRESHOLD`.
    pub rule: String,
    pub changed_by: String,
    pub reason: String,
    pub changed_at: chrono::DateTime<chrono::Utc>,
}

impl From<policy::Policy> for PolicyView {
    fn from(p: policy::Policy) -> Self {
        Self {
            cell: p.cell,
            rule: p.rule,
            changed_by: p.changed_by,
            reason: p.reason,
            changed_at: p.changed_at,
        }
    }
}

/// A new rule for one cell.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetPolicy {
    /// `never`, `always` or `ARGUMENT>=THRESHOLD` (e.g. `amount>=50000`, minor units).
    #[schema(pattern = r"^ *(never|always|[A-Za-z0-9_]+ *>= *-?[0-9]{1,18}) *$")]
    pub rule: String,
    /// Why (recorded in the audit; not blank).
    #[schema(pattern = r"^[^\u0000]*\S[^\u0000]*$")]
    pub reason: String,
}

/// Every cell's approval rule (a cell without one is never held).
#[utoipa::path(get, path = "/v1/policy", tag = "decisions", operation_id = "list_policy",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Every rule", body = [PolicyView]),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem),
    ))]
pub(crate) async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Read).await {
        return r;
    }
    match policy::list(state.store.pool()).await {
        Ok(rules) => {
            Json(rules.into_iter().map(PolicyView::from).collect::<Vec<_>>()).into_response()
        }
        Err(e) => unavailable("policy list", e),
    }
}

/// Set a cell's approval rule for the whole fleet; every worker holds by it at once.
#[utoipa::path(put, path = "/v1/policy/{cell}", tag = "decisions", request_body = SetPolicy,
    params(("cell" = String, Path, description = "A cell, e.g. stripe.charge")),
    security(("bearer" = ["approve"])),
    responses(
        (status = 200, description = "The rule now in force", body = PolicyView),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 415, description = "Not application/json", body = Problem),
        (status = 422, description = "Unknown cell, bad rule or empty reason; `field` says which", body = Problem),
        (status = 429, body = Problem),
    ))]
pub(crate) async fn set(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(cell): Path<String>,
    body: Result<Json<SetPolicy>, JsonRejection>,
) -> Response {
    let token = match authorize(&state, &headers, Scope::Approve).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let cell = match CellName::new(&cell) {
        Ok(c) if state.cells.get(c.as_str()).is_some() => c,
        _ => return invalid_field("/cell".into(), format!("unknown cell {cell:?}")),
    };
    let rule = match ApprovalPolicy::parse(&body.rule) {
        Ok(r) => r,
        Err(e) => return invalid_field("/rule".into(), e),
    };
    if body.reason.trim().is_empty() || body.reason.contains('\0') {
        return invalid_field("/reason".into(), "reason: say why (no NUL)".into());
    }
    let by = format!("human:api:{}", token.name);
    // The rule is enforced by each store's own database (IDM04): every store gets it. A
    // store that fails is named; setting the same rule again finishes the job.
    for (name, store) in state.stores.iter() {
        if let Err(e) = policy::set(store.pool(), cell.as_str(), &rule, &by, &body.reason).await {
            return unavailable(&format!("policy set on store {name:?}"), e);
        }
    }
    match policy::list(state.store.pool()).await {
        Ok(rules) => match rules.into_iter().find(|p| p.cell == cell.as_str()) {
            Some(p) => Json(PolicyView::from(p)).into_response(),
            None => unavailable("policy set", "the rule vanished"),
        },
        Err(e) => unavailable("policy list", e),
    }
}
