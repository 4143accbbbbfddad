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

/// How a partner authenticates us. The secret goes in the `Authorization` header only.
#[derive(Clone)]
enum Auth {
    Bearer(String),
    Basic { user: String, password: String },
}

/// Where and how to reach one partner, shared by every cell: the base URL (no trailing
/// slash), the credential (kept out of `Debug`, logs and traces) and an HTTP client with
/// the cell's call timeout.
#[derive(Clone)]
pub struct PartnerClient {
    base: String,
    auth: Auth,
    http: reqwest::Client,
}

impl std::fmt::Debug for PartnerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let user = match &self.auth {
            Auth::Bearer(_) => None,
            Auth::Basic { user, .. } => Some(user.as_str()),
        };
        f.debug_struct("PartnerClient")
            .field("base", &self.base)
            .field("user", &user)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl PartnerClient {
    /// A partner that takes `Authorization: Bearer <token>`.
    pub fn bearer(base: impl Into<String>, token: impl Into<String>, timeout: Duration) -> Self {
        Self::with_auth(base.into(), Auth::Bearer(token.into()), timeout)
    }

    /// A partner that takes HTTP Basic (`user:password`), e.g. Twilio's account SID and
    /// auth token.
    pub fn basic(
        base: impl Into<String>,
        user: impl Into<String>,
        password: impl Into<String>,
        timeout: Duration,
    ) -> Self {
        let auth = Auth::Basic {
            user: user.into(),
            password: password.into(),
        };
        Self::with_auth(base.into(), auth, timeout)
    }

    fn with_auth(base: String, auth: Auth, timeout: Duration) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            auth,
            http: client(timeout),
        }
    }

    /// The same partner under another call timeout (a profile override).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.http = client(timeout);
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// A request to `base + path` carrying the credential.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Auth::Bearer(t) => rb.bearer_auth(t),
            Auth::Basic { user, password } => rb.basic_auth(user, Some(password)),
        }
    }

    pub fn get(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::GET, path)
    }

    pub fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::POST, path)
    }

    pub fn delete(&self, path: &str) -> reqwest::RequestBuilder {
        self.request(reqwest::Method::DELETE, path)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_secret_and_the_base_loses_its_slash() {
        let c = PartnerClient::basic("http://x/", "AC1", "hunter2", Duration::from_secs(1));
        let shown = format!("{c:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("AC1"),
            "{shown}"
        );
        assert_eq!(c.base(), "http://x");
        let b = PartnerClient::bearer("http://y", "xoxb-secret", Duration::from_secs(1));
        assert!(!format!("{b:?}").contains("xoxb-secret"));
    }
}
