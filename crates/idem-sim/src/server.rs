//! Serving a simulator on a local port.

use std::net::SocketAddr;

use tokio::task::JoinHandle;

/// A running simulator: its base URL and the task serving it (aborted on drop).
#[derive(Debug)]
pub struct SimServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SimServer {
    /// Serve `router` on `addr` (port 0 picks a free one).
    pub async fn start(router: axum::Router, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, router).await {
                tracing::error!(error = %e, "simulator stopped");
            }
        });
        Ok(Self { addr, task })
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
