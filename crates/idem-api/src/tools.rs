//! The MCP tools over plain HTTP, for the agent-framework adapters (LangGraph, the OpenAI
//! Agents SDK, the Vercel AI SDK): the same tool list, the same calls and the same answers
//! written for a model, with the scope given by the caller (the run or thread), so the
//! wording lives in one place for every language.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use idem_store::tokens::Scope;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::authorize;
use crate::problem::{bad_body, invalid_field, problem, Problem};
use crate::ApiState;

/// Longest wait a call may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);

/// One tool, as a model API wants it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolView {
    /// `stripe_charge`, …, `idem_status`.
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments in the dialect model APIs accept (OpenAI strict mode:
    /// every property required, optional ones nullable), with the required `intent`.
    pub input_schema: Value,
    /// The cell behind the tool (none for `idem_status`).
    pub cell: Option<String>,
    /// False for tools without an external effect.
    pub effectful: bool,
}

/// A tool call. `scope` is where intents are unique (the agent run, thread or
/// conversation): the same scope and `intent` is the same action on every surface.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    /// Required (for `idem_status` too, which ignores it): not blank, at most 200
    /// characters. Optional in Rust only to answer a missing one with a 422 naming it.
    #[schema(required = true, nullable = false, value_type = String, pattern = r"^[^\u0000]*\S[^\u0000]*$", max_length = 200)]
    pub scope: Option<String>,
    /// The tool's arguments as the model gave them, `intent` included.
    #[schema(value_type = Object)]
    pub arguments: serde_json::Map<String, Value>,
    /// Seconds to wait for the action to settle before answering "in progress" (at most
    /// 60; the server's default if absent).
    #[schema(value_type = Option<u64>, minimum = 0, maximum = 60)]
    pub wait_seconds: Option<serde_json::Number>,
}

/// A tool call's answer: what MCP's `tools/call` would have answered.
#[derive(Debug, Serialize, ToSchema)]
pub struct ToolAnswer {
    /// True when the action did not happen or the call was refused (conflict, bad
    /// arguments): the model should not treat it as done.
    pub is_error: bool,
    /// `state`, `receipt`, `reason`, `next` (what to do, in words for a model), or
    /// `error` + `message` (+ `field`, `action_id`) for a refusal.
    #[schema(value_type = Object)]
    pub result: Value,
}

/// Every cell as a tool, and `idem_status`.
#[utoipa::path(get, path = "/v1/tools", tag = "tools", operation_id = "list_tools",
    security(("bearer" = ["submit"])),
    responses(
        (status = 200, body = [ToolView]),
        (status = 401, body = Problem), (status = 403, body = Problem), (status = 429, body = Problem),
    ))]
pub(crate) async fn list(State(state): State<ApiState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&state, &headers, Scope::Submit).await {
        return r;
    }
    let views: Vec<ToolView> = idem_mcp::tool_list(&state.cells)
        .into_iter()
        .map(|t| {
            let cell = state
                .cells
                .iter()
                .find(|c| idem_mcp::tool_name(c.name().as_str()) == t.name)
                .map(|c| c.name().as_str().to_owned());
            ToolView {
                effectful: t
                    .annotations
                    .as_ref()
                    .and_then(|a| a.destructive_hint)
                    .unwrap_or(false),
                name: t.name.into_owned(),
                description: t.description.map(|d| d.into_owned()).unwrap_or_default(),
                input_schema: Value::Object(t.input_schema.as_ref().clone()),
                cell,
            }
        })
        .collect();
    Json(views).into_response()
}

/// Call a tool: enqueue the action its intent names (or read one, for `idem_status`) and
/// wait for it. A refusal the model should read (a conflict, bad arguments) is a 200 with
/// `is_error: true`, as in MCP; the request itself being wrong is a 4xx.
#[utoipa::path(post, path = "/v1/tools/{name}", tag = "tools", request_body = ToolCall,
    params(("name" = String, Path, description = "A tool from `GET /v1/tools`")),
    security(("bearer" = ["submit"])),
    responses(
        (status = 200, description = "The tool's answer", body = ToolAnswer),
        (status = 400, description = "Malformed JSON", body = Problem),
        (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "No such tool", body = Problem),
        (status = 413, description = "Body over 64 KiB", body = Problem),
        (status = 415, description = "Not application/json", body = Problem),
        (status = 422, description = "Missing or invalid scope", body = Problem),
        (status = 429, body = Problem),
        (status = 503, description = "Store unavailable: retry the same call", body = Problem),
    ))]
pub(crate) async fn call(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Result<Json<ToolCall>, JsonRejection>,
) -> Response {
    let token = match authorize(&state, &headers, Scope::Submit).await {
        Ok(t) => t,
        Err(r) => return r,
    };
    let Json(c) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(e),
    };
    let is_status = name == idem_mcp::STATUS_TOOL;
    if !is_status
        && !state
            .cells
            .iter()
            .any(|cell| idem_mcp::tool_name(cell.name().as_str()) == name)
    {
        return problem(
            StatusCode::NOT_FOUND,
            format!("no tool {name:?}; GET /v1/tools lists them"),
        );
    }
    let scope = match c.scope {
        Some(s) => match idem_core::check_intent_part("scope", &s) {
            Ok(()) => match token.scope_refusal(&s) {
                Some(why) if !is_status => return problem(StatusCode::FORBIDDEN, why),
                _ => s,
            },
            Err(e) => return invalid_field("/scope".into(), e.to_string()),
        },
        None => {
            return invalid_field(
                "/scope".into(),
                "scope is required: the run, thread or conversation the tool call belongs to"
                    .into(),
            )
        }
    };
    // A whole number of seconds, 0 to 60 (`5.0` is one too, as JSON Schema counts it).
    let wait = match c.wait_seconds.map(|n| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && (0.0..=60.0).contains(f))
    }) {
        Some(None) => {
            return invalid_field(
                "/wait_seconds".into(),
                "wait_seconds: a whole number of seconds from 0 to 60".into(),
            )
        }
        Some(Some(f)) => Some(f as u64),
        None => None,
    };
    let wait = wait
        .map(Duration::from_secs)
        .unwrap_or(state.tool_wait)
        .min(MAX_WAIT);
    let submitter = format!("token:{}", token.name);
    let call = idem_mcp::ToolCall {
        scope: &scope,
        legacy_scopes: &[],
        submitter: Some(&submitter),
        bound: token.scope_prefix.as_deref(),
        wait,
    };
    match idem_mcp::call_tool(&state.stores, &state.cells, call, &name, c.arguments).await {
        Ok(r) => Json(ToolAnswer {
            is_error: r.is_error.unwrap_or(false),
            result: r.structured_content.unwrap_or(Value::Null),
        })
        .into_response(),
        Err(e) => problem(StatusCode::SERVICE_UNAVAILABLE, e.message.into_owned()),
    }
}
