//! The MCP endpoint (`/mcp`, streamable HTTP): the same cells as tools, behind the same
//! bearer tokens (submit scope) and rate limits as the rest of the API.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use idem_mcp::{Caller, IdemMcp};
use idem_store::tokens::Scope;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use tower_http::limit::RequestBodyLimitLayer;

use crate::auth::authorize;
use crate::ApiState;

/// Default wait of a tool call for its action to settle before answering "in progress".
pub const TOOL_WAIT: Duration = Duration::from_secs(20);

async fn require_submit(State(state): State<ApiState>, mut req: Request, next: Next) -> Response {
    match authorize(&state, req.headers(), Scope::Submit).await {
        Ok(t) => {
            req.extensions_mut().insert(Caller {
                token_id: t.id,
                name: t.name,
                scope_prefix: t.scope_prefix,
            });
            next.run(req).await
        }
        Err(r) => r,
    }
}

/// A session's DELETE ends it: answer 204 No Content, as MCP clients expect (the Python
/// SDK logs "Session termination failed: 202" on the transport's 202 Accepted).
async fn deleted_is_no_content(req: Request, next: Next) -> Response {
    let delete = req.method() == axum::http::Method::DELETE;
    let mut res = next.run(req).await;
    if delete && res.status() == axum::http::StatusCode::ACCEPTED {
        *res.status_mut() = axum::http::StatusCode::NO_CONTENT;
        *res.body_mut() = axum::body::Body::empty();
    }
    res
}

/// `/mcp`, authenticated. `hosts` are the Host values accepted besides loopback (DNS
/// rebinding protection: a public deployment lists its own names).
pub fn routes(state: &ApiState) -> Router {
    let (stores, cells, wait) = (state.stores.clone(), state.cells.clone(), state.tool_wait);
    let mut config = StreamableHttpServerConfig::default();
    config
        .allowed_hosts
        .extend(state.public_hosts.iter().cloned());
    let service = StreamableHttpService::new(
        move || Ok(IdemMcp::new(stores.clone(), cells.clone(), "http", wait)),
        Arc::new(LocalSessionManager::default()),
        config,
    );
    Router::new()
        .nest_service("/mcp", service)
        // The MCP service reads bodies itself, past axum's DefaultBodyLimit: the same
        // 64 KiB cap as every other route (413), checked before the body is read.
        .layer(RequestBodyLimitLayer::new(crate::MAX_BODY))
        .layer(middleware::from_fn(deleted_is_no_content))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            require_submit,
        ))
}
