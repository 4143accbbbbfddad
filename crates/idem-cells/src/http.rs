//! Shared HTTP plumbing for cells.

use std::time::Duration;

/// A client with the cell's call timeout. No redirects: a partner redirect on a money
/// movement is a surprise, not something to follow blindly.
pub fn client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(5)))
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(64)
        .build()
        .expect("static client configuration is valid")
}

/// Send `request` inside a client span (a child of the worker's `idem.execute` span) and
/// carry that span's W3C trace context to the partner, so the partner's logs and idem's
/// trace meet on one trace id.
pub async fn send_traced(
    request: reqwest::RequestBuilder,
    name: &'static str,
) -> reqwest::Result<reqwest::Response> {
    let span = tracing::info_span!(
        "partner.request",
        partner.operation = name,
        otel.kind = "client"
    );
    let mut request = request;
    for (k, v) in idem_telemetry::TraceHeaders::of(&span).iter() {
        request = request.header(k, v);
    }
    tracing::Instrument::instrument(request.send(), span).await
}
