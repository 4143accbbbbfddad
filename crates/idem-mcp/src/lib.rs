//! idem as an MCP server. Each enabled cell is a tool whose input schema is the cell's
//! argument schema plus an optional `intent`; `idem_status` reads an action later.
//!
//! A tool call's action id is derived from the session and the call's intent, exactly as
//! HTTP, SQL and the clients derive it from (scope, intent): the session *is* the scope,
//! byte for byte, so an intent enqueued by an app's backend and retried by a model through
//! MCP names one action. Sessions: over stdio, `idem mcp --session` (a random one per
//! process without it); over streamable HTTP, `/mcp?session=` (percent-encoded UTF-8) or
//! the `Idem-Session` header (UTF-8 as sent). Isolation between tokens is explicit: a token
//! bound to a scope prefix is refused outside it (`idem tokens create --scope-prefix`).

pub mod schema;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use idem_cells::Registry;
use idem_store::Stores;
use rmcp::model::{
    CallToolRequestParams, CallToolResponse, Implementation, ListToolsResult,
    PaginatedRequestParams, ServerCapabilities, ServerConfig, Tool,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{ErrorData, ServerHandler, ServiceExt};

pub use tools::{tool_name, STATUS_TOOL};

/// Every cell as a tool, and [`STATUS_TOOL`]: the list MCP clients get, also served as
/// `GET /v1/tools` for the framework adapters, so there is one list.
pub fn tool_list(cells: &Registry) -> Vec<Tool> {
    tools::list(cells)
}

/// One tool call (a cell's tool, or [`STATUS_TOOL`]), answered as MCP answers it: the
/// receipt, or what a model should do next. HTTP's `POST /v1/tools/{name}` uses it too.
#[derive(Debug, Clone, Copy)]
pub struct ToolCall<'a> {
    /// The scope the intent lives in, exactly as HTTP and SQL take it.
    pub scope: &'a str,
    /// Scopes from before the scope was the session (`mcp:…`): an intent found there is
    /// that action, so an upgrade never turns a retried call into a second effect.
    pub legacy_scopes: &'a [String],
    /// Recorded with a new action (the caller's token name).
    pub submitter: Option<&'a str>,
    /// The caller's token's scope prefix: `idem_status` reads only actions named inside it.
    pub bound: Option<&'a str>,
    /// How long it waits for the action to settle.
    pub wait: Duration,
}

pub async fn call_tool(
    stores: &Stores,
    cells: &Registry,
    call: ToolCall<'_>,
    name: &str,
    args: rmcp::model::JsonObject,
) -> Result<rmcp::model::CallToolResult, ErrorData> {
    if name == STATUS_TOOL {
        tools::status(stores, args, call).await
    } else {
        tools::call(stores, cells, call, name, args).await
    }
}

/// Who called, as the HTTP layer authenticated them (an `http::request::Parts` extension).
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: uuid::Uuid,
    pub name: String,
    /// The token's scope prefix, if it is bound to one: sessions outside it are refused.
    pub scope_prefix: Option<String>,
}

/// Header a client may send to name its session (e.g. the agent's conversation id): the
/// scope its intents live in, as UTF-8 exactly as sent. `?session=` on the URL does the
/// same, percent-encoded, for scopes a header cannot carry (surrounding spaces, control
/// characters, and non-ASCII where a client sends headers as Latin-1).
pub const SESSION_HEADER: &str = "idem-session";

/// The `/mcp` query parameter that names the session.
pub const SESSION_QUERY: &str = "session";

/// Why the MCP server stopped.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("MCP session failed: {0}")]
    Session(String),
}

/// One MCP session's server: the stores to enqueue into and the cells it exposes.
#[derive(Debug, Clone)]
pub struct IdemMcp {
    stores: Stores,
    cells: Arc<Registry>,
    session: String,
    wait: Duration,
    tools: Arc<Vec<Tool>>,
}

impl IdemMcp {
    /// `session` is the scope of a stdio session's intents (over HTTP each request names
    /// its own); `wait` is how long a tool call waits for the action to settle before
    /// answering "in progress".
    pub fn new(
        stores: Stores,
        cells: Arc<Registry>,
        session: impl Into<String>,
        wait: Duration,
    ) -> Self {
        let tools = Arc::new(tools::list(&cells));
        Self {
            stores,
            cells,
            session: session.into(),
            wait,
            tools,
        }
    }

    /// Serve this session over stdin/stdout until the client disconnects.
    pub async fn serve_stdio(self) -> Result<(), McpError> {
        let running = self
            .serve(rmcp::transport::stdio())
            .await
            .map_err(|e| McpError::Session(e.to_string()))?;
        running
            .waiting()
            .await
            .map_err(|e| McpError::Session(e.to_string()))?;
        Ok(())
    }

    /// The scope a call's intents live in, and the scopes older versions used for it.
    /// Over HTTP: the session the request names (`?session=` or `Idem-Session`), inside
    /// the caller's scope prefix if the token has one. Over stdio: this server's session.
    fn scope(&self, context: &RequestContext<RoleServer>) -> Result<Session, Refusal> {
        let parts = context.extensions.get::<axum::http::request::Parts>();
        let Some((parts, caller)) = parts.and_then(|p| Some((p, p.extensions.get::<Caller>()?)))
        else {
            return Ok(Session {
                legacy: vec![format!("mcp:{}", self.session)],
                scope: self.session.clone(),
                caller: None,
            });
        };
        let scope = http_session(parts)?;
        if let Err(e) = idem_core::check_intent_part("session", &scope) {
            return Err(Refusal::new("invalid_session", e.to_string()));
        }
        if let Some(p) = caller.scope_prefix.as_deref() {
            if !scope.starts_with(p) {
                return Err(Refusal::new(
                    "scope_outside_token",
                    format!(
                        "token {} is bound to scopes starting with {p:?}; the session {scope:?} \
                         is outside it",
                        caller.name
                    ),
                ));
            }
        }
        // Before 0.1's scope fix the HTTP scope was `mcp:{token id}:{session, trimmed}`.
        let old = parts
            .headers
            .get(SESSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .unwrap_or("-");
        Ok(Session {
            legacy: vec![format!("mcp:{}:{old}", caller.token_id)],
            scope,
            caller: Some(caller.clone()),
        })
    }
}

/// The scope a call runs in, who called, and the older scopes to look in first.
struct Session {
    scope: String,
    legacy: Vec<String>,
    caller: Option<Caller>,
}

/// A call refused before it reached a cell, as a tool error the client shows.
struct Refusal {
    kind: &'static str,
    message: String,
}

impl Refusal {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
}

/// The session an HTTP request names: `?session=` (percent-encoded UTF-8) or the
/// `Idem-Session` header (UTF-8, as sent); both must agree; one is required.
fn http_session(parts: &axum::http::request::Parts) -> Result<String, Refusal> {
    let from_query = match parts.uri.query() {
        None => None,
        Some(q) => {
            let pairs: Vec<(String, String)> = serde_urlencoded::from_str(q).map_err(|_| {
                Refusal::new(
                    "invalid_session",
                    "the /mcp query is not valid percent-encoded UTF-8",
                )
            })?;
            let mut named = pairs.into_iter().filter(|(k, _)| k == SESSION_QUERY);
            let first = named.next().map(|(_, v)| v);
            if named.next().is_some() {
                return Err(Refusal::new(
                    "invalid_session",
                    "give ?session= once: it names the scope every intent lives in",
                ));
            }
            first
        }
    };
    let from_header = match parts.headers.get(SESSION_HEADER) {
        None => None,
        Some(v) => Some(
            std::str::from_utf8(v.as_bytes())
                .map(str::to_owned)
                .map_err(|_| {
                    Refusal::new(
                        "invalid_session",
                        "the Idem-Session header is not UTF-8; send the session as ?session= \
                 (percent-encoded) instead",
                    )
                })?,
        ),
    };
    match (from_query, from_header) {
        (Some(q), Some(h)) if q != h => Err(Refusal::new(
            "invalid_session",
            format!("?session={q:?} and Idem-Session {h:?} disagree: send one"),
        )),
        (Some(s), _) | (None, Some(s)) => Ok(s),
        (None, None) => Err(Refusal::new(
            "no_session",
            "no session: the MCP client must name the scope its intents live in (the \
             conversation or run), as /mcp?session=… or the Idem-Session header; the same \
             (scope, intent) is one action on every surface",
        )),
    }
}

impl ServerHandler for IdemMcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("idem", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "Each tool performs one external action at most once. Give every distinct action \
                 its own `intent` (a short stable name such as \"refund order 1234\"); calling a tool \
                 again with the same intent returns the same action and receipt instead of acting \
                 twice. If a result says awaiting_approval or needs_human, do not retry under a new \
                 intent: call idem_status later with the action_id.",
            )
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult::with_all_items(self.tools.as_ref().clone()))
    }

    fn get_tool(&self, name: &str) -> Option<Tool> {
        self.tools.iter().find(|t| t.name == name).cloned()
    }

    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResponse, ErrorData> {
        let args = request.arguments.unwrap_or_default();
        let session = match self.scope(&context) {
            Ok(s) => s,
            // idem_status reads by id and needs no session.
            Err(r) if request.name != STATUS_TOOL => {
                return Ok(tools::refused(r.kind, r.message, serde_json::json!({})).into())
            }
            Err(_) => Session {
                scope: String::new(),
                legacy: vec![],
                caller: context
                    .extensions
                    .get::<axum::http::request::Parts>()
                    .and_then(|p| p.extensions.get::<Caller>())
                    .cloned(),
            },
        };
        let submitter = session.caller.as_ref().map(|c| format!("token:{}", c.name));
        let call = ToolCall {
            scope: &session.scope,
            legacy_scopes: &session.legacy,
            submitter: submitter.as_deref(),
            bound: session
                .caller
                .as_ref()
                .and_then(|c| c.scope_prefix.as_deref()),
            wait: self.wait,
        };
        let result = call_tool(&self.stores, &self.cells, call, &request.name, args).await?;
        Ok(result.into())
    }
}
