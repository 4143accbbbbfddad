//! idem's HTTP API (`idem serve`). Every endpoint but `/v1/health` and `/openapi.json`
//! needs a bearer token (`idem tokens create`) with the endpoint's scope: 401 without a
//! valid token, 403 without the scope, 429 over the token's rate limit. Submitting is
//! idempotent on the action id exactly like `enqueue`: the same id and arguments return the
//! same action; other arguments are a 409. Arguments are checked against the cell's JSON
//! Schema first, so a 422 names the field.
//!
//! The OpenAPI document is generated from the handlers (`utoipa`), which register their
//! routes through the same macro, so the document cannot list a route the router lacks.

// Helpers return a finished refusal as their error: built once per request, never stored.
#![allow(clippy::result_large_err)]

mod actions;
pub mod auth;
mod cells;
mod console;
mod console_replay;
mod dead_letters;
mod decisions;
mod explorer;
pub mod mcp;
pub mod metrics;
mod policy;
mod problem;
mod tools;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use idem_cells::Registry;
use idem_store::{Store, Stores};
use serde_json::json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use actions::{ActionView, Submit, Submitted};
pub use auth::RateLimit;
pub use cells::CellView;
pub use decisions::{Decided, Decision, Resend, Resolve};
pub use policy::{PolicyView, SetPolicy};
pub use problem::Problem;
pub use tools::{ToolAnswer, ToolCall, ToolView};

/// Largest request body accepted (bytes).
pub const MAX_BODY: usize = 64 * 1024;

/// What the handlers share.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The default store: tokens, policy, the console's fleet views.
    pub store: Store,
    /// Every store; actions are submitted to and read from their home store.
    pub stores: Stores,
    pub cells: Arc<Registry>,
    limiter: auth::Limiter,
    /// Host names (or host:port) `/mcp` accepts besides loopback.
    public_hosts: Vec<String>,
    /// How long an MCP tool call waits for its action to settle.
    tool_wait: std::time::Duration,
    /// The process's metrics, served at `/metrics` when present.
    metrics: Option<Arc<idem_telemetry::metrics::Metrics>>,
}

impl ApiState {
    /// State with the default per-token rate limit.
    pub fn new(store: Store, cells: Arc<Registry>) -> Self {
        Self::with_rate_limit(store, cells, RateLimit::default())
    }

    pub fn with_rate_limit(store: Store, cells: Arc<Registry>, limit: RateLimit) -> Self {
        Self {
            stores: Stores::single(store.clone()),
            store,
            cells,
            limiter: auth::Limiter::new(limit),
            public_hosts: Vec::new(),
            tool_wait: mcp::TOOL_WAIT,
            metrics: None,
        }
    }

    /// Submit to and read from these stores (the default one keeps tokens and policy).
    pub fn with_stores(mut self, stores: Stores) -> Self {
        self.store = stores.default_store().clone();
        self.stores = stores;
        self
    }

    /// Serve these metrics at `/metrics`.
    pub fn with_metrics(mut self, metrics: Arc<idem_telemetry::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// How long an MCP tool call waits for its action before answering "in progress".
    pub fn with_tool_wait(mut self, wait: std::time::Duration) -> Self {
        self.tool_wait = wait;
        self
    }

    /// Accept these Host names on `/mcp` besides loopback (a deployment's public names).
    pub fn with_public_hosts(mut self, hosts: impl IntoIterator<Item = String>) -> Self {
        self.public_hosts.extend(hosts);
        self
    }
}

/// The store that holds action `id`; the default store's when none does, so
/// the decision or read there answers "not found" as it does with one store.
pub(crate) async fn pool_of(
    state: &ApiState,
    id: idem_core::ActionId,
) -> Result<Store, axum::response::Response> {
    match state.stores.locate(id).await {
        Ok(Some((_, s))) => Ok(s.clone()),
        Ok(None) => Ok(state.store.clone()),
        Err(e) => Err(problem::unavailable("finding the action's store", e)),
    }
}

/// The header naming the stores a listing could not read (the rest are listed).
pub const UNAVAILABLE_STORES: &str = "idem-unavailable-stores";

/// Mark a listing that lacks some stores' items: the header names them.
pub(crate) fn partial(
    mut r: axum::response::Response,
    unavailable: &[String],
) -> axum::response::Response {
    if !unavailable.is_empty() {
        let names: Vec<&str> = unavailable
            .iter()
            .map(|u| u.split(':').next().unwrap_or(u))
            .collect();
        if let Ok(v) = axum::http::HeaderValue::from_str(&names.join(",")) {
            r.headers_mut().insert(UNAVAILABLE_STORES, v);
        }
    }
    r
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "idem",
        description = "The exactly-once layer under AI agents: submit actions, read receipts, decide approvals and doubts."
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "actions", description = "Submit actions and read receipts"),
        (name = "cells", description = "The cell grid"),
        (name = "tools", description = "The cells as model tools (the MCP tools over HTTP), for agent-framework adapters"),
        (name = "decisions", description = "Approvals, needs_human cases, sending again and dead letters"),
        (name = "operations", description = "Metrics for operators"),
    )
)]
struct ApiDoc;

/// Declares the `bearer` scheme the paths refer to.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `idem tokens create`; scopes submit, read, approve",
                    ))
                    .build(),
            ),
        );
    }
}

/// Health check (no token).
#[utoipa::path(get, path = "/v1/health", tag = "actions",
    responses((status = 200, description = "Serving", body = Object)))]
async fn health() -> Json<serde_json::Value> {
    Json(json!({"ok": true}))
}

/// The documented routes and their OpenAPI document, built together.
fn api() -> (Router<ApiState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health))
        .routes(routes!(actions::submit))
        .routes(routes!(actions::read))
        .routes(routes!(cells::cells))
        .routes(routes!(tools::list))
        .routes(routes!(tools::call))
        .routes(routes!(decisions::approvals))
        .routes(routes!(decisions::approve))
        .routes(routes!(decisions::reject))
        .routes(routes!(decisions::doubts))
        .routes(routes!(decisions::resolve))
        .routes(routes!(decisions::resend))
        .routes(routes!(dead_letters::list))
        .routes(routes!(dead_letters::replay))
        .routes(routes!(policy::list))
        .routes(routes!(policy::set))
        .routes(routes!(metrics::metrics))
        .split_for_parts()
}

/// The OpenAPI document of [`router`]'s API (what `/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    let mut doc = api().1;
    link_submissions(&mut doc);
    doc
}

/// OpenAPI links from a submission's answer to what can be done with the action it names
/// (read it, approve or reject it, resolve or resend it), and from the dead-letter listing
/// to a replay, so a client generator or a stateful tester follows real ids instead of
/// guessing them.
fn link_submissions(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::link::Link;
    use utoipa::openapi::RefOr;
    let follows = [
        (
            "ReadAction",
            "read",
            "Read the action this submission named",
        ),
        (
            "ApproveAction",
            "approve",
            "Approve it, if a policy holds it for a person",
        ),
        (
            "RejectAction",
            "reject",
            "Reject it, if a policy holds it for a person",
        ),
        (
            "ResolveAction",
            "resolve",
            "Resolve it, once it needs a person's decision",
        ),
        (
            "ResendAction",
            "resend",
            "Send it again, after it failed or was rejected",
        ),
    ];
    // The newest dead letter of a listing can be replayed.
    if let Some(RefOr::T(response)) = doc
        .paths
        .paths
        .get_mut("/v1/dead-letters")
        .and_then(|p| p.get.as_mut())
        .and_then(|op| op.responses.responses.get_mut("200"))
    {
        let link = Link::builder()
            .operation_id("replay_dead_letter")
            .parameter("id", "$response.body#/0/id")
            .description("Replay the newest dead letter listed")
            .build();
        response
            .links
            .insert("ReplayDeadLetter".to_owned(), RefOr::T(link));
    }
    let Some(submit) = doc
        .paths
        .paths
        .get_mut("/v1/actions")
        .and_then(|p| p.post.as_mut())
    else {
        return;
    };
    for status in ["200", "201"] {
        if let Some(RefOr::T(response)) = submit.responses.responses.get_mut(status) {
            for (name, operation, description) in follows {
                let link = Link::builder()
                    .operation_id(operation)
                    .parameter("id", "$response.body#/action_id")
                    .description(description)
                    .build();
                response.links.insert(name.to_owned(), RefOr::T(link));
            }
        }
    }
}

/// The document as this server serves it: the cells it runs and their tools listed as
/// the only values of `cell` (body and path) and of a tool's `name`, so a client (or a
/// schema-driven tester) knows which names exist instead of learning it from a 422.
pub fn served_document(
    doc: utoipa::openapi::OpenApi,
    cells: &idem_cells::Registry,
) -> serde_json::Value {
    let mut doc = serde_json::to_value(doc).unwrap_or_default();
    let names: Vec<serde_json::Value> = cells.iter().map(|c| c.name().as_str().into()).collect();
    let tools: Vec<serde_json::Value> = idem_mcp::tool_list(cells)
        .into_iter()
        .map(|t| t.name.into_owned().into())
        .collect();
    // A submission is one of the cells with that cell's arguments: one branch per cell.
    if let Some(submit) = doc.pointer("/components/schemas/Submit").cloned() {
        let branches: Vec<serde_json::Value> = cells
            .iter()
            .map(|c| {
                let mut b = submit.clone();
                b["properties"]["cell"] = serde_json::json!({
                    "type": "string", "const": c.name().as_str(),
                    "description": submit["properties"]["cell"]["description"],
                });
                b["properties"]["args"] = c.document_schema();
                b["title"] = format!("Submit {}", c.name()).into();
                b["oneOf"] = naming_rules();
                b
            })
            .collect();
        if !branches.is_empty() {
            doc["components"]["schemas"]["Submit"] = serde_json::json!({ "oneOf": branches });
        }
    }
    // Each way to resolve a case takes exactly its own fields (`partner_ref` only with
    // `happened`), as the server's deserialiser does.
    for v in doc
        .pointer_mut("/components/schemas/Resolve/oneOf")
        .and_then(|v| v.as_array_mut())
        .into_iter()
        .flatten()
    {
        v["additionalProperties"] = false.into();
    }
    let mut name_param = |path: &str, param: &str, values: &[serde_json::Value]| {
        let Some(ops) = doc.pointer_mut(&format!("/paths/{}", path.replace('/', "~1"))) else {
            return;
        };
        for op in ops.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            for p in op["parameters"].as_array_mut().into_iter().flatten() {
                if p["name"] == param && p["in"] == "path" {
                    p["schema"]["enum"] = values.to_vec().into();
                }
            }
        }
    };
    name_param("/v1/policy/{cell}", "cell", &names);
    name_param("/v1/tools/{name}", "name", &tools);
    doc
}

/// How a submission names its action, as the server checks it: an `action_id` alone; or
/// `intent_scope` with an `intent`; or `intent_scope` with `id_from_arguments: true`.
/// (A field sent as `null` counts as absent.)
fn naming_rules() -> serde_json::Value {
    use serde_json::json;
    let given = |f: &str| json!({"required": [f], "properties": {f: {"type": "string"}}});
    let from_args = json!({"required": ["id_from_arguments"], "properties": {"id_from_arguments": {"const": true}}});
    json!([
        {"allOf": [given("action_id"), {"not": given("intent_scope")}, {"not": given("intent")}]},
        {"allOf": [{"not": given("action_id")}, given("intent_scope"), given("intent"), {"not": from_args}]},
        {"allOf": [{"not": given("action_id")}, given("intent_scope"), {"not": given("intent")}, from_args]},
    ])
}

/// The API's routes, plus `/openapi.json` and the MCP endpoint `/mcp`.
pub fn router(state: ApiState) -> Router {
    let (routes, mut doc) = api();
    link_submissions(&mut doc);
    let doc = Arc::new(served_document(doc, &state.cells));
    let mcp = mcp::routes(&state);
    routes
        .merge(console::routes())
        .merge(explorer::routes())
        .merge(console_replay::routes())
        .route(
            "/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { Json(doc.as_ref().clone()) }
            }),
        )
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
        .merge(mcp)
}
