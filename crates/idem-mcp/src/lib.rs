//! idem as an MCP server. Each enabled cell is a tool whose input schema is the cell's
//! argument schema plus an optional `intent`; `idem_status` reads an action later.
//!
//! A tool call's action id is derived from the session and the call's intent (or, without
//! an intent, its arguments), so a model that retries or re-plans the same step in the same
//! session names the same action and gets the same receipt instead of a second effect.
//! Sessions: over stdio, one per process (`idem mcp --session` pins it across restarts);
//! over streamable HTTP, the caller's token, narrowed by the `Idem-Session` header when the
//! client sends one (e.g. the agent's conversation id).

pub mod schema;
mod tools;

use std::sync::Arc;
use std::time::Duration;

use idem_cells::Registry;
use idem_store::Store;
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

/// One tool call in `scope` (a cell's tool, or [`STATUS_TOOL`]), answered as MCP answers
/// it: the receipt, or what a model should do next. `wait` bounds how long it waits for
/// the action to settle; `submitter` is recorded with a new action (the caller's token
/// name). HTTP's `POST /v1/tools/{name}` uses it too.
pub async fn call_tool(
    store: &Store,
    cells: &Registry,
    scope: &str,
    submitter: Option<&str>,
    name: &str,
    args: rmcp::model::JsonObject,
    wait: Duration,
) -> Result<rmcp::model::CallToolResult, ErrorData> {
    if name == STATUS_TOOL {
        tools::status(store, args, wait).await
    } else {
        tools::call(store, cells, scope, submitter, name, args, wait).await
    }
}

/// Who called, as the HTTP layer authenticated them (an `http::request::Parts` extension):
/// sessions are scoped to the caller so two tokens never share action ids.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: uuid::Uuid,
    pub name: String,
}

/// Header a client may send to name its session (e.g. the agent's conversation id), so a
/// reconnect keeps the same action ids.
pub const SESSION_HEADER: &str = "idem-session";

/// Why the MCP server stopped.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    #[error("MCP session failed: {0}")]
    Session(String),
}

/// One MCP session's server: the store to enqueue into and the cells it exposes.
#[derive(Debug, Clone)]
pub struct IdemMcp {
    store: Store,
    cells: Arc<Registry>,
    session: String,
    wait: Duration,
    tools: Arc<Vec<Tool>>,
}

impl IdemMcp {
    /// `session` scopes intent-derived ids; `wait` is how long a tool call waits for the
    /// action to settle before answering "in progress".
    pub fn new(
        store: Store,
        cells: Arc<Registry>,
        session: impl Into<String>,
        wait: Duration,
    ) -> Self {
        let tools = Arc::new(tools::list(&cells));
        Self {
            store,
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

    /// The scope intent-derived ids live in. Over HTTP: the caller's token plus the
    /// `Idem-Session` header if sent (MCP 2026-07-28 has no protocol sessions, so the token
    /// is the default session: the same intent under one token is one action). Over stdio:
    /// this server's session.
    fn scope(&self, context: &RequestContext<RoleServer>) -> String {
        let parts = context.extensions.get::<axum::http::request::Parts>();
        match parts.and_then(|p| p.extensions.get::<Caller>()) {
            Some(c) => {
                let session = parts
                    .and_then(|p| p.headers.get(SESSION_HEADER))
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .unwrap_or("-");
                format!("mcp:{}:{session}", c.token_id)
            }
            None => format!("mcp:{}", self.session),
        }
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
        let scope = self.scope(&context);
        let submitter = context
            .extensions
            .get::<axum::http::request::Parts>()
            .and_then(|p| p.extensions.get::<Caller>())
            .map(|c| format!("token:{}", c.name));
        let args = request.arguments.unwrap_or_default();
        let result = call_tool(
            &self.store,
            &self.cells,
            &scope,
            submitter.as_deref(),
            &request.name,
            args,
            self.wait,
        )
        .await?;
        Ok(result.into())
    }
}
