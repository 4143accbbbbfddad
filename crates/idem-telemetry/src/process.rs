//! What idem's binaries (`idem`, `idem-lab`) start and end with: logs to stderr, OTLP
//! traces and metrics when configured, a runtime; and the signal that stops a long-running
//! command.

use std::future::Future;
use std::sync::Arc;

use crate::metrics::{Metrics, MetricsError};

/// Run `main` on a multi-threaded runtime with telemetry for `service` (`idem-worker`, …):
/// logs follow `RUST_LOG` (else `default_filter`); exported spans are idem's info-level
/// spans whatever the log level. OTLP exporters use a blocking HTTP client, so they are
/// built before the runtime and shut down after it.
pub fn run<F, Fut, E>(service: &str, default_filter: &str, main: F) -> Result<(), E>
where
    F: FnOnce(Arc<Metrics>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: From<MetricsError> + From<std::io::Error>,
{
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;
    let tracer = crate::metrics::otlp_tracer(service)?;
    let metrics = Arc::new(Metrics::install(service)?);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| default_filter.into());
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter);
    let otel = tracer.as_ref().map(|provider| {
        crate::layer(provider).with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    tracing_subscriber::registry().with(fmt).with(otel).init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(main(metrics.clone()));
    if let Some(provider) = tracer {
        if let Err(e) = provider.shutdown() {
            eprintln!("trace export shutdown: {e}");
        }
    }
    if let Ok(m) = Arc::try_unwrap(metrics) {
        m.shutdown();
    }
    result
}

/// SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("install SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
