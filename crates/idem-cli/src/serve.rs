//! `idem serve`: the HTTP API (submit actions, read receipts, the approver console, /mcp,
//! /metrics), bearer tokens with scopes.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use idem_telemetry::metrics::Metrics;

use crate::config::Db;
use crate::{cells, connect_stores};

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: Db,
    #[command(flatten)]
    pub cells: cells::CellArgs,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Requests per second each token may make (429 with Retry-After beyond it).
    #[arg(long, default_value_t = idem_api::RateLimit::default().per_second)]
    pub rate_limit: NonZeroU32,
    /// Requests a token may make at once before the per-second rate applies.
    #[arg(long, default_value_t = idem_api::RateLimit::default().burst)]
    pub rate_burst: NonZeroU32,
    /// A Host name (or host:port) /mcp accepts besides loopback; repeat for several.
    #[arg(long = "public-host")]
    pub public_hosts: Vec<String>,
}

pub async fn run(args: ServeArgs, metrics: Arc<Metrics>) -> Result<()> {
    let ServeArgs {
        db,
        cells,
        listen,
        rate_limit,
        rate_burst,
        public_hosts,
    } = args;
    let stores = connect_stores(&db, 8).await?;
    let registry = cells.registry().map_err(anyhow::Error::msg)?;
    let state = idem_api::ApiState::with_rate_limit(
        stores.default_store().clone(),
        Arc::new(registry),
        idem_api::RateLimit {
            per_second: rate_limit,
            burst: rate_burst,
        },
    )
    .with_stores(stores)
    .with_public_hosts(public_hosts)
    .with_metrics(metrics);
    // Keep the fleet gauges fresh for OTLP export (a scrape refreshes them too).
    let refresher = state.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = idem_api::metrics::refresh(&refresher).await {
                tracing::warn!(error = %e, "fleet gauges not refreshed");
            }
            tokio::time::sleep(std::time::Duration::from_secs(10)).await;
        }
    });
    let app = idem_api::router(state);
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    eprintln!("idem API on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(idem_telemetry::process::shutdown_signal())
        .await?;
    Ok(())
}
