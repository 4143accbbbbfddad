//! `idem mcp`: each cell an MCP tool, over stdin/stdout (one session per process) or, with
//! `--listen`, streamable HTTP at /mcp behind bearer tokens.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::config::Db;
use crate::{cells, connect_stores};

#[derive(Args, Debug)]
pub struct McpArgs {
    #[command(flatten)]
    pub db: Db,
    #[command(flatten)]
    pub cells: cells::CellArgs,
    /// The session intents are scoped to (e.g. the agent's conversation id), the same
    /// string HTTP's `intent_scope` takes; a new random one per process if not given. Over
    /// --listen each request names its own (`?session=` or `Idem-Session`).
    #[arg(long, conflicts_with = "listen")]
    pub session: Option<String>,
    /// Seconds a tool call waits for its action to settle before answering "in progress".
    #[arg(long, default_value_t = 20)]
    pub wait_secs: u64,
    /// Serve streamable HTTP on this address instead of stdio.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
}

pub async fn run(args: McpArgs) -> Result<()> {
    let McpArgs {
        db,
        cells,
        session,
        wait_secs,
        listen,
    } = args;
    let stores = connect_stores(&db, 8).await?;
    let registry = Arc::new(cells.registry().map_err(anyhow::Error::msg)?);
    match listen {
        None => {
            let session = session.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
            idem_mcp::IdemMcp::new(stores, registry, session, Duration::from_secs(wait_secs))
                .serve_stdio()
                .await?;
        }
        Some(addr) => {
            let state = idem_api::ApiState::new(stores.default_store().clone(), registry)
                .with_stores(stores)
                .with_tool_wait(Duration::from_secs(wait_secs));
            let app = idem_api::mcp::routes(&state);
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr}"))?;
            eprintln!("idem MCP on http://{}/mcp", listener.local_addr()?);
            axum::serve(listener, app)
                .with_graceful_shutdown(idem_telemetry::process::shutdown_signal())
                .await?;
        }
    }
    Ok(())
}
