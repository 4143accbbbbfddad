//! `GET /metrics`: the Prometheus exposition of this process's counters and the fleet
//! gauges, refreshed from PostgreSQL on every scrape. Needs a token with the read scope
//! (Prometheus sends it with `authorization: {credentials: …}`).

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use idem_store::tokens::Scope;

use crate::auth::authorize;
use crate::problem::{problem, unavailable, Problem};
use crate::ApiState;

/// Read the fleet figures, summed over every store, into the gauges.
pub async fn refresh(state: &ApiState) -> Result<(), idem_store::StoreError> {
    // Summed over the stores that answer; one store down leaves the others' gauges fresh.
    match state.stores.fleet().await {
        (Some(fleet), down) => {
            if !down.is_empty() {
                tracing::warn!(stores = %down.join("; "), "fleet gauges lack stores that did not answer");
            }
            idem_telemetry::metrics::observe_fleet(fleet);
            Ok(())
        }
        (None, down) => Err(idem_store::StoreError::Unavailable(down.join("; "))),
    }
}

/// Counters of this process and fleet gauges, Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations",
    security(("bearer" = ["read"])),
    responses(
        (status = 200, description = "Prometheus text exposition (version 0.0.4)", content_type = "text/plain", body = String),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "This server was started without metrics", body = Problem),
        (status = 429, body = Problem),
    ))]
pub(crate) async fn metrics(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Read).await {
        return r;
    }
    let Some(m) = state.metrics.clone() else {
        return problem(
            StatusCode::NOT_FOUND,
            "metrics are not enabled on this server",
        );
    };
    if let Err(e) = refresh(&state).await {
        return unavailable("metrics refresh", e);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        m.render(),
    )
        .into_response()
}

/// Only `/metrics` (for worker and relay processes that serve nothing else).
pub fn routes(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}
