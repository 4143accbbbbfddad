//! The cell grid: what each cell is, how it behaves under failure, and its argument schema.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use idem_store::tokens::Scope;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::authorize;
use crate::problem::Problem;
use crate::ApiState;

/// One cell.
#[derive(Debug, Serialize, ToSchema)]
pub struct CellView {
    /// `integration.operation`, e.g. `stripe.charge`.
    pub name: String,
    /// Where the cell's failure-mode analysis is (repository path).
    pub card: String,
    /// Key, lookup, timings, approval policy: the three questions answered.
    pub profile: Value,
    /// JSON Schema of the arguments.
    pub input_schema: Value,
    /// False for read-only cells (no external effect).
    pub effectful: bool,
}

/// The cells this server accepts, with profiles and argument schemas.
#[utoipa::path(get, path = "/v1/cells", tag = "cells",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, body = [CellView]),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem),
    ))]
pub(crate) async fn cells(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Read).await {
        return r;
    }
    let grid: Vec<CellView> = state
        .cells
        .iter()
        .map(|c| CellView {
            name: c.name().as_str().to_owned(),
            card: c.card(),
            profile: serde_json::to_value(c.profile()).unwrap_or(Value::Null),
            input_schema: c.input_schema(),
            effectful: c.effectful(),
        })
        .collect();
    Json(grid).into_response()
}
