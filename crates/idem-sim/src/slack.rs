//! A Slack Web API simulator (partners.md §2 "Slack chat.postMessage"): `chat.postMessage`
//! with message metadata, and `conversations.history` with `include_all_metadata`. Slack
//! has no idempotency key; errors are HTTP 200 `{"ok":false,"error":…}`, rate limits 429
//! `ratelimited` with `Retry-After`, and `internal_error`/`fatal_error` mean "possibly some
//! aspect succeeded" [SL3] — the simulator's `fail_after` posts and then answers that.
//!
//! Since 2025 an app outside the Slack Marketplace gets `conversations.history` at 1
//! request a minute and `limit` at most 15 [SL6]; the simulator holds every caller to that
//! by default (`with_history_rate` shortens the minute for tests, never the 15), answering
//! the next request inside the window HTTP 429 `ratelimited` with `Retry-After`. A
//! `RateLimit` fault on a post alternates between the two documented answers: HTTP 429
//! `ratelimited` and HTTP 200 `{"ok":false,"error":"rate_limited"}` [SL7] — neither posted.
//!
//! Guessed (n/d), worse case by default: history visibility lag (`history_lag`), and a
//! `fail_before` answered as HTTP 503 with no post.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::partner::{dropped, Effect, PartnerCore, Request};
use crate::{Fault, FaultRates};

const POST: &str = "POST /api/chat.postMessage";
const HISTORY: &str = "GET /api/conversations.history";

#[derive(Debug, Clone)]
struct Message {
    channel: String,
    body: Value,
    visible_at: Instant,
}

#[derive(Debug, Default)]
struct Workspace {
    messages: Vec<Message>,
    seq: u64,
    /// Rate-limit faults answered so far (they alternate between the two answers).
    rate_limited: u64,
    /// When the last `conversations.history` request was let through.
    last_history: Option<Instant>,
}

/// The largest `limit` `conversations.history` honours for an app outside the Marketplace.
pub const HISTORY_LIMIT_MAX: usize = 15;

/// The simulator: partner core, channels' messages, and the history lag knob.
#[derive(Debug, Clone)]
pub struct SlackSim {
    pub core: PartnerCore,
    workspace: Arc<Mutex<Workspace>>,
    history_lag: Arc<Mutex<Duration>>,
    /// One `conversations.history` request per this long (Slack: a minute).
    history_every: Duration,
}

impl SlackSim {
    pub fn new(seed: u64, faults: FaultRates, history_lag: Duration) -> Self {
        Self {
            core: PartnerCore::new(seed, faults),
            workspace: Arc::new(Mutex::new(Workspace::default())),
            history_lag: Arc::new(Mutex::new(history_lag)),
            history_every: Duration::from_secs(60),
        }
    }

    /// Let one history request through per `every` instead of per minute (tests run the
    /// minute faster; the limit of 15 and the 429 stay).
    pub fn with_history_rate(mut self, every: Duration) -> Self {
        self.history_every = every;
        self
    }

    /// History requests answered so far (429s included).
    pub fn history_requests(&self) -> usize {
        self.core.requests_on(HISTORY)
    }

    fn ws(&self) -> MutexGuard<'_, Workspace> {
        self.workspace.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_history_lag(&self, lag: Duration) {
        *self.history_lag.lock().unwrap_or_else(|p| p.into_inner()) = lag;
    }

    fn lag(&self) -> Duration {
        *self.history_lag.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/api/chat.postMessage", post(post_message))
            .route("/api/conversations.history", get(history))
            .with_state(self.clone())
            .merge(self.core.control_routes())
    }

    pub fn post_requests(&self) -> usize {
        self.core.requests_on(POST)
    }
}

fn slack_error(error: &str) -> Response {
    Json(json!({"ok": false, "error": error})).into_response()
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.starts_with("xoxb-"))
}

async fn post_message(State(sim): State<SlackSim>, headers: HeaderMap, body: Bytes) -> Response {
    // A post the client gave up on still lands.
    tokio::spawn(async move {
        let (resp, status, fault, key) = post_inner(&sim, &headers, &body).await;
        sim.core.log(Request {
            route: POST.into(),
            key,
            status,
            fault,
            replayed: false,
        });
        resp
    })
    .await
    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn post_inner(
    sim: &SlackSim,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, u16, Option<Fault>, Option<String>) {
    if !authorized(headers) {
        return (slack_error("not_authed"), 200, None, None);
    }
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return (slack_error("invalid_json"), 200, None, None);
    };
    let channel = v["channel"].as_str().unwrap_or_default().to_owned();
    let action = v["metadata"]["event_payload"]["idem_action_id"]
        .as_str()
        .map(str::to_owned);
    let fault = sim.core.pick(POST, action.as_deref());
    match fault {
        Some(Fault::RateLimit)
            if {
                let mut ws = sim.ws();
                ws.rate_limited += 1;
                ws.rate_limited.is_multiple_of(2)
            } =>
        {
            return (slack_error("rate_limited"), 200, fault, action);
        }
        Some(Fault::RateLimit) => {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response();
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return (r, 429, fault, action);
        }
        Some(Fault::FailBefore) | Some(Fault::Conflict409) => {
            return (
                (StatusCode::SERVICE_UNAVAILABLE, "upstream unavailable").into_response(),
                503,
                fault,
                action,
            )
        }
        Some(Fault::Delay(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    if !channel.starts_with('C') {
        return (slack_error("channel_not_found"), 200, fault, action);
    }
    let text = v["text"].as_str().unwrap_or_default();
    if text.is_empty() {
        return (slack_error("no_text"), 200, fault, action);
    }
    if text.chars().count() > 40_000 {
        return (slack_error("msg_too_long"), 200, fault, action);
    }
    let message = {
        let mut ws = sim.ws();
        ws.seq += 1;
        let now = chrono::Utc::now();
        let ts = format!("{}.{:06}", now.timestamp(), ws.seq % 1_000_000);
        let mut m = json!({"type": "message", "user": "U0IDEMBOT", "text": text, "ts": ts});
        if v["metadata"].is_object() {
            m["metadata"] = v["metadata"].clone();
        }
        let lag = sim.lag();
        ws.messages.push(Message {
            channel: channel.clone(),
            body: m.clone(),
            visible_at: Instant::now() + lag,
        });
        m
    };
    sim.core.record(Effect {
        effect: "post".into(),
        // A message is named by its channel and timestamp.
        id: format!("{channel}/{}", message["ts"].as_str().unwrap_or_default()),
        idem_action_id: action.clone(),
        detail: message.clone(),
    });
    match fault {
        Some(Fault::FailAfter) => (slack_error("internal_error"), 200, fault, action),
        Some(Fault::DropAfterEffect) => (dropped(), 200, fault, action),
        _ => {
            let r = Json(
                json!({"ok": true, "channel": channel, "ts": message["ts"], "message": message}),
            )
            .into_response();
            (r, 200, fault, action)
        }
    }
}

/// `conversations.history?channel=&oldest=&include_all_metadata=&limit=&cursor=`, newest
/// first, metadata only with `include_all_metadata=true`.
async fn history(
    State(sim): State<SlackSim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let (r, status) = history_inner(&sim, &headers, &q);
    sim.core.log(Request {
        route: HISTORY.into(),
        key: None,
        status,
        fault: None,
        replayed: false,
    });
    r
}

fn history_inner(
    sim: &SlackSim,
    headers: &HeaderMap,
    q: &HashMap<String, String>,
) -> (Response, u16) {
    if !authorized(headers) {
        return (slack_error("not_authed"), 200);
    }
    {
        let mut ws = sim.ws();
        let now = Instant::now();
        if let Some(wait) = ws
            .last_history
            .map(|t| sim.history_every.saturating_sub(now - t))
            .filter(|w| !w.is_zero())
        {
            let mut r = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"ok": false, "error": "ratelimited"})),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&wait.as_secs().max(1).to_string()) {
                r.headers_mut().insert("retry-after", v);
            }
            return (r, 429);
        }
        ws.last_history = Some(now);
    }
    let Some(channel) = q.get("channel") else {
        return (slack_error("channel_not_found"), 200);
    };
    let oldest: f64 = q.get("oldest").and_then(|o| o.parse().ok()).unwrap_or(0.0);
    let latest: f64 = q
        .get("latest")
        .and_then(|o| o.parse().ok())
        .unwrap_or(f64::MAX);
    // Asked for more, an app outside the Marketplace still gets 15 a page.
    let limit: usize = q
        .get("limit")
        .and_then(|l| l.parse().ok())
        .unwrap_or(HISTORY_LIMIT_MAX)
        .clamp(1, HISTORY_LIMIT_MAX);
    let offset: usize = q.get("cursor").and_then(|c| c.parse().ok()).unwrap_or(0);
    let with_meta = q.get("include_all_metadata").is_some_and(|v| v == "true");
    let now = Instant::now();
    let ws = sim.ws();
    let all: Vec<Value> = ws
        .messages
        .iter()
        .rev()
        .filter(|m| &m.channel == channel && m.visible_at <= now)
        .filter(|m| {
            let ts = m.body["ts"]
                .as_str()
                .and_then(|t| t.parse::<f64>().ok())
                .unwrap_or(0.0);
            ts >= oldest && ts <= latest
        })
        .map(|m| {
            let mut b = m.body.clone();
            if !with_meta {
                if let Some(o) = b.as_object_mut() {
                    o.remove("metadata");
                }
            }
            b
        })
        .collect();
    let page: Vec<Value> = all.iter().skip(offset).take(limit).cloned().collect();
    let more = all.len() > offset + limit;
    let r = Json(json!({
        "ok": true, "messages": page, "has_more": more,
        "response_metadata": {"next_cursor": if more { (offset + limit).to_string() } else { String::new() }},
    }))
    .into_response();
    (r, 200)
}
