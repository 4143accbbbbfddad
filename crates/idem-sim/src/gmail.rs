//! A Gmail API simulator (partners.md §2 "Gmail users.messages.send"): `messages.send`
//! (raw RFC 2822, base64url), `users.getProfile` (historyId), `users.history.list`
//! (`messagesAdded`, `labelId=SENT`, 404 on a too-old `startHistoryId`), `messages.get`
//! (`format=metadata`), and `messages.list?q=rfc822msgid:` with a search-index lag. Gmail
//! has no idempotency key.
//!
//! As documented [G6]: `messages.get?format=metadata&metadataHeaders=A&metadataHeaders=B`
//! returns only the headers asked for (all of them without `metadataHeaders`);
//! `history.list` pages (`maxResults`, default 100, at most 500; `nextPageToken`); reads
//! need `gmail.readonly`, `gmail.modify` or `mail.google.com` — a token with
//! `gmail.send` alone (here: one containing `.send-only`) sends but gets 403
//! `insufficientPermissions` on every read.
//!
//! Guessed (n/d), worse case by default: Gmail **replaces** a client-set Message-ID
//! (`keep_message_id = false`; custom `X-Idem-Key` headers survive), search lags
//! (`search_lag`), history ids expire after `history_retention`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use serde_json::{json, Value};

use crate::partner::{dropped, Effect, PartnerCore, Request};
use crate::{Fault, FaultRates};

const SEND: &str = "POST /gmail/v1/users/{user}/messages/send";

/// Knobs for behaviour Google does not document.
#[derive(Debug, Clone, Copy)]
pub struct GmailConfig {
    pub keep_message_id: bool,
    pub search_lag: Duration,
    pub history_retention: Duration,
}

impl Default for GmailConfig {
    fn default() -> Self {
        Self {
            keep_message_id: false,
            search_lag: Duration::from_secs(0),
            history_retention: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone)]
struct Sent {
    id: String,
    history_id: u64,
    headers: Vec<(String, String)>,
    at: Instant,
}

#[derive(Debug, Default)]
struct Mailbox {
    sent: Vec<Sent>,
    history_id: u64,
    seq: u64,
}

#[derive(Debug, Clone)]
pub struct GmailSim {
    pub core: PartnerCore,
    config: Arc<Mutex<GmailConfig>>,
    mailbox: Arc<Mutex<Mailbox>>,
}

fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    (
        status,
        Json(
            json!({"error": {"code": status.as_u16(), "message": message,
            "errors": [{"domain": "global", "reason": reason, "message": message}]}}),
        ),
    )
        .into_response()
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.starts_with("ya29."))
}

/// A read's check: authenticated, and a scope that may read (not `gmail.send` alone).
fn read_refused(h: &HeaderMap) -> Option<Response> {
    if !authorized(h) {
        return Some(google_error(
            StatusCode::UNAUTHORIZED,
            "authError",
            "Invalid Credentials",
        ));
    }
    let send_only = h
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.contains(".send-only"));
    send_only.then(|| {
        google_error(
            StatusCode::FORBIDDEN,
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
        )
    })
}

/// Header lines of an RFC 2822 message (unfolded), up to the blank line.
fn parse_headers(raw: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = vec![];
    for line in raw.split("\r\n").flat_map(|l| l.split('\n')) {
        if line.is_empty() {
            break;
        }
        if line.starts_with(' ') || line.starts_with('\t') {
            if let Some(last) = out.last_mut() {
                last.1.push(' ');
                last.1.push_str(line.trim());
            }
            continue;
        }
        if let Some((k, v)) = line.split_once(':') {
            out.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    out
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl GmailSim {
    pub fn new(seed: u64, faults: FaultRates, config: GmailConfig) -> Self {
        Self {
            core: PartnerCore::new(seed, faults),
            config: Arc::new(Mutex::new(config)),
            mailbox: Arc::new(Mutex::new(Mailbox {
                history_id: 1000,
                ..Mailbox::default()
            })),
        }
    }

    fn mb(&self) -> MutexGuard<'_, Mailbox> {
        self.mailbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> GmailConfig {
        *self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update_config(&self, f: impl FnOnce(&mut GmailConfig)) {
        f(&mut self.config.lock().unwrap_or_else(|p| p.into_inner()));
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/gmail/v1/users/{user}/messages/send", post(send))
            .route("/upload/gmail/v1/users/{user}/messages/send", post(send))
            .route("/gmail/v1/users/{user}/profile", get(profile))
            .route("/gmail/v1/users/{user}/history", get(history))
            .route("/gmail/v1/users/{user}/messages", get(list))
            .route("/gmail/v1/users/{user}/messages/{id}", get(message))
            .with_state(self.clone())
            .merge(self.core.control_routes())
    }

    pub fn send_requests(&self) -> usize {
        self.core.requests_on(SEND)
    }
}

async fn send(State(sim): State<GmailSim>, headers: HeaderMap, body: Bytes) -> Response {
    tokio::spawn(async move {
        let (resp, status, fault, key) = send_inner(&sim, &headers, &body).await;
        sim.core.log(Request {
            route: SEND.into(),
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

async fn send_inner(
    sim: &GmailSim,
    h: &HeaderMap,
    body: &[u8],
) -> (Response, u16, Option<Fault>, Option<String>) {
    if !authorized(h) {
        return (
            google_error(StatusCode::UNAUTHORIZED, "authError", "Invalid Credentials"),
            401,
            None,
            None,
        );
    }
    let raw = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["raw"].as_str().map(str::to_owned))
        .and_then(|r| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(r.trim_end_matches('='))
                .ok()
        })
        .and_then(|b| String::from_utf8(b).ok());
    let Some(raw) = raw else {
        return (
            google_error(
                StatusCode::BAD_REQUEST,
                "badRequest",
                "Invalid value for ByteString",
            ),
            400,
            None,
            None,
        );
    };
    let mut headers = parse_headers(&raw);
    let key = header(&headers, "X-Idem-Key").map(str::to_owned);
    let fault = sim.core.pick(SEND, key.as_deref());
    match fault {
        Some(Fault::RateLimit) => {
            return (
                google_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rateLimitExceeded",
                    "Rate Limit Exceeded",
                ),
                429,
                fault,
                key,
            )
        }
        Some(Fault::FailBefore) | Some(Fault::Conflict409) => {
            return (
                google_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "backendError",
                    "Backend Error",
                ),
                503,
                fault,
                key,
            )
        }
        Some(Fault::Delay(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    if header(&headers, "To").is_none_or(|t| !t.contains('@')) {
        return (
            google_error(
                StatusCode::BAD_REQUEST,
                "invalidArgument",
                "Invalid To header",
            ),
            400,
            fault,
            key,
        );
    }
    let config = sim.config();
    let (id, thread) = {
        let mut mb = sim.mb();
        mb.seq += 1;
        mb.history_id += 7;
        let id = format!("18c{:013x}", mb.seq);
        if !config.keep_message_id {
            headers.retain(|(k, _)| !k.eq_ignore_ascii_case("Message-ID"));
            headers.push(("Message-ID".into(), format!("<CAGmail{id}@mail.gmail.com>")));
        }
        let hid = mb.history_id;
        mb.sent.push(Sent {
            id: id.clone(),
            history_id: hid,
            headers: headers.clone(),
            at: Instant::now(),
        });
        (id.clone(), id)
    };
    sim.core.record(Effect {
        effect: "send".into(),
        id: id.clone(),
        idem_action_id: key.clone(),
        detail: json!({"to": header(&headers, "To"), "subject": header(&headers, "Subject")}),
    });
    match fault {
        Some(Fault::FailAfter) => (
            google_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "backendError",
                "Backend Error",
            ),
            500,
            fault,
            key,
        ),
        Some(Fault::DropAfterEffect) => (dropped(), 200, fault, key),
        _ => (
            Json(json!({"id": id, "threadId": thread, "labelIds": ["SENT"]})).into_response(),
            200,
            fault,
            key,
        ),
    }
}

async fn profile(State(sim): State<GmailSim>, h: HeaderMap, Path(user): Path<String>) -> Response {
    if let Some(r) = read_refused(&h) {
        return r;
    }
    let mb = sim.mb();
    Json(json!({"emailAddress": if user == "me" { "agent@idem.invalid".to_owned() } else { user },
        "messagesTotal": mb.sent.len(), "threadsTotal": mb.sent.len(), "historyId": mb.history_id.to_string()}))
    .into_response()
}

async fn history(
    State(sim): State<GmailSim>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = read_refused(&h) {
        return r;
    }
    let Some(start) = q.get("startHistoryId").and_then(|s| s.parse::<u64>().ok()) else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "invalidArgument",
            "startHistoryId is required",
        );
    };
    let retention = sim.config().history_retention;
    let mb = sim.mb();
    // Records after `start` that the mailbox no longer keeps make `start` too old.
    if mb
        .sent
        .iter()
        .any(|s| s.history_id > start && s.at.elapsed() >= retention)
    {
        return google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            "Requested entity was not found.",
        );
    }
    let size: usize = q
        .get("maxResults")
        .and_then(|m| m.parse().ok())
        .unwrap_or(100)
        .clamp(1, 500);
    let offset: usize = q.get("pageToken").and_then(|t| t.parse().ok()).unwrap_or(0);
    let all: Vec<Value> = mb
        .sent
        .iter()
        .filter(|s| s.history_id > start)
        .map(|s| {
            json!({"id": s.history_id.to_string(),
            "messagesAdded": [{"message": {"id": s.id, "threadId": s.id, "labelIds": ["SENT"]}}]})
        })
        .collect();
    let page: Vec<Value> = all.iter().skip(offset).take(size).cloned().collect();
    let mut body = json!({"history": page, "historyId": mb.history_id.to_string()});
    if all.len() > offset + size {
        body["nextPageToken"] = json!((offset + size).to_string());
    }
    Json(body).into_response()
}

async fn message(
    State(sim): State<GmailSim>,
    h: HeaderMap,
    Path((_, id)): Path<(String, String)>,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if let Some(r) = read_refused(&h) {
        return r;
    }
    // With format=metadata and metadataHeaders, only the headers asked for come back.
    let metadata = q
        .iter()
        .any(|(k, v)| k == "format" && v.eq_ignore_ascii_case("metadata"));
    let asked: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "metadataHeaders")
        .map(|(_, v)| v.as_str())
        .collect();
    let mb = sim.mb();
    match mb.sent.iter().find(|s| s.id == id) {
        Some(s) => Json(json!({"id": s.id, "threadId": s.id, "labelIds": ["SENT"], "historyId": s.history_id.to_string(),
            "payload": {"headers": s.headers.iter()
                .filter(|(k, _)| !metadata || asked.is_empty() || asked.iter().any(|a| a.eq_ignore_ascii_case(k)))
                .map(|(k, v)| json!({"name": k, "value": v})).collect::<Vec<_>>()}}))
        .into_response(),
        None => google_error(StatusCode::NOT_FOUND, "notFound", "Requested entity was not found."),
    }
}

/// `messages.list?q=rfc822msgid:<id>` (the only query form simulated), lagging.
async fn list(
    State(sim): State<GmailSim>,
    h: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = read_refused(&h) {
        return r;
    }
    let query = q.get("q").cloned().unwrap_or_default();
    let Some(want) = query.strip_prefix("rfc822msgid:") else {
        return google_error(
            StatusCode::BAD_REQUEST,
            "invalidArgument",
            "simulator supports q=rfc822msgid: only",
        );
    };
    let want = want.trim().trim_start_matches('<').trim_end_matches('>');
    let lag = sim.config().search_lag;
    let mb = sim.mb();
    let found: Vec<Value> = mb
        .sent
        .iter()
        .filter(|s| s.at.elapsed() >= lag)
        .filter(|s| {
            header(&s.headers, "Message-ID")
                .is_some_and(|m| m.trim_start_matches('<').trim_end_matches('>') == want)
        })
        .map(|s| json!({"id": s.id, "threadId": s.id}))
        .collect();
    Json(json!({"messages": found, "resultSizeEstimate": found.len()})).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_unfold() {
        let h = parse_headers(
            "To: a@b.c\r\nSubject: long\r\n  line\r\nX-Idem-Key: k1\r\n\r\nbody: not a header",
        );
        assert_eq!(header(&h, "subject"), Some("long line"));
        assert_eq!(header(&h, "x-idem-key"), Some("k1"));
        assert_eq!(header(&h, "body"), None);
    }
}
