//! A Twilio Programmable Messaging simulator (partners.md §2 "Twilio Messages create"):
//! `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (form: `To`, `From` or
//! `MessagingServiceSid`, `Body`, `StatusCallback`) → 201 `queued`, and the Messages list
//! with `To`, `From`, `DateSent`, `DateSent<`, `DateSent>` (day granularity, GMT) and
//! `PageSize`, paged by `next_page_uri` (`Page`, `PageToken`). No REST idempotency key
//! exists. 429 carries code 20429 ("never processed").
//!
//! As at Twilio [T7]: a message is `queued` with `date_sent: null` until it leaves the
//! queue (`queued_for`, default 60 s — a long code sends 1 message a second, so a burst
//! waits), and the `DateSent` filters match only messages that have a send date, so a
//! queued or scheduled message is in the unfiltered list but in no `DateSent` one. The
//! list is sorted by send date, newest first; where unsent messages fall is not
//! documented, so they come last (the worse case for a reader that stops early).
//! The ledger attributes each message to the action named by `idem=` in its
//! StatusCallback URL.
//!
//! Guessed (n/d), worse case by default: list visibility lag (`list_lag`), and a 5xx can
//! follow a created message (`fail_after`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::partner::{dropped, Effect, PartnerCore, Request};
use crate::{Fault, FaultRates};

const CREATE: &str = "POST /2010-04-01/Accounts/{sid}/Messages.json";

#[derive(Debug, Clone)]
struct Sms {
    account: String,
    body: Value,
    /// When it leaves the queue (its `date_sent`).
    sent: DateTime<Utc>,
    visible_at: Instant,
}

#[derive(Debug, Default)]
struct Messages {
    all: Vec<Sms>,
    seq: u64,
}

/// The simulator: partner core, messages, and the list lag knob.
#[derive(Debug, Clone)]
pub struct TwilioSim {
    pub core: PartnerCore,
    messages: Arc<Mutex<Messages>>,
    list_lag: Arc<Mutex<Duration>>,
    queued_for: Arc<Mutex<Duration>>,
}

fn twilio_error(status: StatusCode, code: u32, message: &str) -> Response {
    (
        status,
        Json(json!({"code": code, "message": message,
            "more_info": format!("https://www.twilio.com/docs/errors/{code}"), "status": status.as_u16()})),
    )
        .into_response()
}

fn e164(s: &str) -> bool {
    s.len() >= 8
        && s.len() <= 16
        && s.starts_with('+')
        && s[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Basic auth whose user is the path's account SID.
fn authorized(h: &HeaderMap, account: &str) -> bool {
    use base64::Engine;
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|s| {
            s.split_once(':')
                .map(|(u, p)| u == account && !p.is_empty())
        })
        .unwrap_or(false)
}

fn rfc2822(t: DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S +0000").to_string()
}

impl TwilioSim {
    pub fn new(seed: u64, faults: FaultRates, list_lag: Duration) -> Self {
        Self {
            core: PartnerCore::new(seed, faults),
            messages: Arc::new(Mutex::new(Messages::default())),
            list_lag: Arc::new(Mutex::new(list_lag)),
            queued_for: Arc::new(Mutex::new(Duration::from_secs(60))),
        }
    }

    /// How long a new message stays `queued` (no `date_sent`) before it is sent.
    pub fn set_queued_for(&self, d: Duration) {
        *self.queued_for.lock().unwrap_or_else(|p| p.into_inner()) = d;
    }

    fn queue_time(&self) -> Duration {
        *self.queued_for.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn msgs(&self) -> MutexGuard<'_, Messages> {
        self.messages.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn set_list_lag(&self, lag: Duration) {
        *self.list_lag.lock().unwrap_or_else(|p| p.into_inner()) = lag;
    }

    fn lag(&self) -> Duration {
        *self.list_lag.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route(
                "/2010-04-01/Accounts/{account}/Messages.json",
                post(create).get(list),
            )
            .with_state(self.clone())
            .merge(self.core.control_routes())
    }

    pub fn create_requests(&self) -> usize {
        self.core.requests_on(CREATE)
    }
}

/// The `idem` parameter of a StatusCallback URL.
fn idem_of(callback: &str) -> Option<String> {
    let (_, query) = callback.split_once('?')?;
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("idem="))
        .map(str::to_owned)
}

async fn create(
    State(sim): State<TwilioSim>,
    Path(account): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::spawn(async move {
        let (resp, status, fault, key) = create_inner(&sim, &account, &headers, &body).await;
        sim.core.log(Request {
            route: CREATE.into(),
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

async fn create_inner(
    sim: &TwilioSim,
    account: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, u16, Option<Fault>, Option<String>) {
    if !authorized(headers, account) {
        return (
            twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"),
            401,
            None,
            None,
        );
    }
    let p: HashMap<String, String> = serde_urlencoded::from_bytes(body).unwrap_or_default();
    let action = p.get("StatusCallback").and_then(|c| idem_of(c));
    let fault = sim.core.pick(CREATE, action.as_deref());
    match fault {
        Some(Fault::RateLimit) => {
            return (
                twilio_error(StatusCode::TOO_MANY_REQUESTS, 20429, "Too Many Requests"),
                429,
                fault,
                action,
            )
        }
        Some(Fault::FailBefore) | Some(Fault::Conflict409) => {
            return (
                twilio_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    20500,
                    "Internal Server Error",
                ),
                500,
                fault,
                action,
            )
        }
        Some(Fault::Delay(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    let to = p.get("To").cloned().unwrap_or_default();
    if !e164(&to) {
        let m = format!("The 'To' number {to} is not a valid phone number.");
        return (
            twilio_error(StatusCode::BAD_REQUEST, 21211, &m),
            400,
            fault,
            action,
        );
    }
    let from = p.get("From").cloned();
    let service = p.get("MessagingServiceSid").cloned();
    if from.is_none() && service.is_none() {
        return (
            twilio_error(
                StatusCode::BAD_REQUEST,
                21603,
                "A 'From' or 'MessagingServiceSid' parameter is required to send a message",
            ),
            400,
            fault,
            action,
        );
    }
    let text = p.get("Body").cloned().unwrap_or_default();
    if text.is_empty() {
        return (
            twilio_error(StatusCode::BAD_REQUEST, 21602, "Message body is required."),
            400,
            fault,
            action,
        );
    }
    let now = Utc::now();
    let message = {
        let mut m = sim.msgs();
        m.seq += 1;
        let sid = format!("SM{:032x}", m.seq);
        let msg = json!({
            "sid": sid, "account_sid": account, "status": "queued", "to": to,
            "from": from, "messaging_service_sid": service, "body": text,
            "num_segments": "1", "direction": "outbound-api",
            "date_created": rfc2822(now), "date_updated": rfc2822(now), "date_sent": null,
            "price": null, "error_code": null,
            "uri": format!("/2010-04-01/Accounts/{account}/Messages/{sid}.json"),
        });
        let lag = sim.lag();
        m.all.push(Sms {
            account: account.to_owned(),
            body: msg.clone(),
            sent: now + chrono::Duration::from_std(sim.queue_time()).unwrap_or_default(),
            visible_at: Instant::now() + lag,
        });
        msg
    };
    sim.core.record(Effect {
        effect: "sms".into(),
        id: message["sid"].as_str().unwrap_or_default().to_owned(),
        idem_action_id: action.clone(),
        detail: message.clone(),
    });
    match fault {
        Some(Fault::FailAfter) => (
            twilio_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                20500,
                "Internal Server Error",
            ),
            500,
            fault,
            action,
        ),
        Some(Fault::DropAfterEffect) => (dropped(), 201, fault, action),
        _ => (
            (StatusCode::CREATED, Json(message)).into_response(),
            201,
            fault,
            action,
        ),
    }
}

/// Messages sent newest first, then the unsent; `DateSent`, `DateSent<`, `DateSent>` are
/// GMT days (inclusive) and match only sent messages; `PageSize` up to 1000, then
/// `next_page_uri`.
async fn list(
    State(sim): State<TwilioSim>,
    Path(account): Path<String>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if !authorized(&headers, &account) {
        return twilio_error(StatusCode::UNAUTHORIZED, 20003, "Authenticate");
    }
    let pairs = q.clone();
    let q: HashMap<String, String> = q.into_iter().collect();
    let day = |k: &str| {
        q.get(k)
            .and_then(|d| chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").ok())
    };
    let dated = ["DateSent", "DateSent>", "DateSent<"]
        .iter()
        .any(|k| q.contains_key(*k));
    let size: usize = q
        .get("PageSize")
        .and_then(|s| s.parse().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let page_no: usize = q.get("Page").and_then(|p| p.parse().ok()).unwrap_or(0);
    let now = Instant::now();
    let wall = Utc::now();
    let m = sim.msgs();
    let mut all: Vec<&Sms> = m
        .all
        .iter()
        .filter(|s| s.account == account && s.visible_at <= now)
        .filter(|s| q.get("To").is_none_or(|t| s.body["to"] == t.as_str()))
        .filter(|s| q.get("From").is_none_or(|f| s.body["from"] == f.as_str()))
        .filter(|s| {
            if !dated {
                return true;
            }
            // A queued message has no send date: no DateSent filter matches it.
            if s.sent > wall {
                return false;
            }
            let d = s.sent.date_naive();
            day("DateSent").is_none_or(|x| d == x)
                && day("DateSent>").is_none_or(|x| d >= x)
                && day("DateSent<").is_none_or(|x| d <= x)
        })
        .collect();
    all.sort_by_key(|s| (s.sent > wall, std::cmp::Reverse(s.sent)));
    let page: Vec<Value> = all
        .iter()
        .skip(page_no * size)
        .take(size)
        .map(|s| {
            let mut b = s.body.clone();
            if s.sent <= wall {
                b["status"] = json!("sent");
                b["date_sent"] = json!(rfc2822(s.sent));
            }
            b
        })
        .collect();
    let next = (all.len() > (page_no + 1) * size).then(|| {
        let mut kept: Vec<(String, String)> = pairs
            .iter()
            .filter(|(k, _)| k != "Page" && k != "PageToken")
            .cloned()
            .collect();
        kept.push(("Page".into(), (page_no + 1).to_string()));
        kept.push(("PageToken".into(), format!("PA{}", (page_no + 1) * size)));
        format!(
            "/2010-04-01/Accounts/{account}/Messages.json?{}",
            serde_urlencoded::to_string(&kept).unwrap_or_default()
        )
    });
    Json(json!({"messages": page, "page": page_no, "page_size": size, "next_page_uri": next}))
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::idem_of;

    #[test]
    fn the_callback_names_the_action() {
        assert_eq!(idem_of("https://h/cb?x=1&idem=abc").as_deref(), Some("abc"));
        assert_eq!(idem_of("https://h/cb"), None);
    }
}
