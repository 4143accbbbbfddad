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

/// A partner's answer, read in full: status, `Retry-After` (seconds), whether it says it is
/// a replay (`Idempotent-Replayed: true`), and the JSON body (`null` if not JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<Duration>,
    pub replayed: bool,
    pub body: serde_json::Value,
}

/// Send an effect request and read the whole answer. `Err` is the outcome when no
/// readable answer came back: refused connections never left (not processed); anything
/// else — timeout, reset, a body cut off — may have had its effect (ambiguous).
pub async fn call(
    request: reqwest::RequestBuilder,
    operation: &'static str,
) -> Result<Answer, idem_core::ExecOutcome> {
    use idem_core::ExecOutcome;
    let resp = match send_traced(request, operation).await {
        Ok(r) => r,
        Err(e) if e.is_connect() => {
            return Err(ExecOutcome::NotProcessed {
                reason: "connection refused: the request never left".into(),
                retry_after: None,
            })
        }
        Err(e) => {
            return Err(ExecOutcome::Ambiguous {
                reason: without_url(&e),
                replayed_error: false,
            })
        }
    };
    let status = resp.status().as_u16();
    let replayed = resp
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v.as_bytes() == b"true");
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .map(Duration::from_secs);
    match resp.bytes().await {
        Ok(b) => Ok(Answer {
            status,
            retry_after,
            replayed,
            body: serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null),
        }),
        Err(e) => Err(ExecOutcome::Ambiguous {
            reason: format!("response lost: {}", without_url(&e)),
            replayed_error: false,
        }),
    }
}

/// reqwest errors print the URL; keep messages short and free of anything sensitive.
pub fn without_url(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    };
    format!("{kind} error")
}
