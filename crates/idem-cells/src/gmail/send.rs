//! `gmail.send`: send one email (`POST /gmail/v1/users/me/messages/send`, raw RFC 2822).
//!
//! Failure modes and recovery (partners.md, Gmail): there is **no key**. Before sending,
//! the cell sets `Message-ID: <idem-<action>@<domain>>` and a custom `X-Idem-Key` header
//! (whether Gmail keeps a client Message-ID is undocumented; the custom header survives),
//! and it records the mailbox `historyId`: in the written-ahead pre-state when it knows
//! one, and freshly from `users.getProfile` just before the send.
//! - 200 → succeeded (receipt: message id).
//! - 429 and 403 rate/quota reasons → not processed; retry.
//! - other 4xx → failed.
//! - lost response, timeout, 5xx ("accepted-but-5xx") → ambiguous: read
//!   `history.list?startHistoryId&historyTypes=messageAdded&labelId=SENT` and the added
//!   messages' headers; then `messages.list?q=rfc822msgid:` (index lag); found →
//!   succeeded. Not found within the lag bound → look again; past it → **needs_human**,
//!   never an automatic resend (an email cannot be unsent).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine;
use chrono::{DateTime, Utc};
use idem_core::canonical::sha256_hex;
use idem_core::profile::{ApprovalPolicy, Lookup, ReplayModel};
use idem_core::{ActionId, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

/// The `gmail.send` cell.
#[derive(Clone, Debug)]
pub struct GmailSend {
    parts: Parts,
    domain: String,
    /// The newest mailbox historyId seen (0: none yet); lower bounds later sends.
    watermark: Arc<AtomicU64>,
    /// The first historyId this process saw: a start for history reads when an attempt's
    /// pre-state has none.
    first_seen: Arc<AtomicU64>,
}

/// Send one plain-text email from the authorised mailbox (users.messages.send).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// One address; no line breaks (a header cannot smuggle in another header).
    #[schemars(pattern("^[^\\r\\n]*@[^\\r\\n]*$"), length(max = 320))]
    pub to: String,
    /// One line.
    #[schemars(pattern("^[^\\r\\n]*$"), length(max = 998))]
    pub subject: String,
    pub text: String,
}

impl CellArgs for Args {
    fn summary(&self) -> Option<String> {
        Some(format!(
            "Send email to {}, subject {}: {}",
            self.to,
            crate::summary::quote(&self.subject, 120),
            crate::summary::quote(&self.text, 160)
        ))
    }
}

/// Rate and quota reasons Google documents as "slow down" [G4].
const NOT_PROCESSED: [&str; 4] = [
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "dailyLimitExceeded",
    "quotaExceeded",
];

impl GmailSend {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let profile = Self::default_profile();
        let api = PartnerClient::bearer(base_url, token, profile.call_timeout);
        Self {
            parts: Parts::new("gmail.send", profile, api),
            domain: "idem.invalid".into(),
            watermark: Arc::new(AtomicU64::new(0)),
            first_seen: Arc::new(AtomicU64::new(0)),
        }
    }

    /// No key; history (read-your-writes) and a lagging search; a person past 10 min.
    pub fn default_profile() -> CellProfile {
        CellProfile {
            key: None,
            replay: ReplayModel::None,
            lookup: Lookup::Eventual {
                lag_bound: Duration::from_secs(600),
            },
            settle_time: Duration::from_secs(60),
            doubt_horizon: Duration::from_secs(3600),
            call_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            approval: ApprovalPolicy::Never,
            rate_limit: None,
            strategy: "pre-set Message-ID and X-Idem-Key, record historyId; on doubt read \
                       history (SENT) then search rfc822msgid; not found in the window → a \
                       person, never an automatic resend"
                .into(),
        }
    }

    fn message_id(&self, action: ActionId) -> String {
        format!("idem-{action}@{}", self.domain)
    }

    fn raw(&self, action: ActionId, args: &Args) -> String {
        let subject = args.subject.as_str();
        let subject = if subject.is_ascii() {
            subject.to_owned()
        } else {
            format!(
                "=?UTF-8?B?{}?=",
                base64::engine::general_purpose::STANDARD.encode(subject)
            )
        };
        let mime = format!(
            "To: {}\r\nSubject: {subject}\r\nMessage-ID: <{}>\r\nX-Idem-Key: {action}\r\n\
             MIME-Version: 1.0\r\nContent-Type: text/plain; charset=\"UTF-8\"\r\n\
             Content-Transfer-Encoding: base64\r\n\r\n{}",
            args.to,
            self.message_id(action),
            base64::engine::general_purpose::STANDARD.encode(&args.text)
        );
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(mime)
    }

    async fn get(&self, path: &str, query: &[(&str, String)]) -> Result<(u16, Value), String> {
        let req = self
            .parts
            .api
            .get(&format!("/gmail/v1/users/me{path}"))
            .query(query);
        let resp = crate::http::send_traced(req, "gmail.read")
            .await
            .map_err(|e| format!("gmail read failed: {}", crate::http::without_url(&e)))?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    /// Remember a historyId seen now.
    fn observe(&self, h: u64) {
        self.watermark.fetch_max(h, Ordering::Relaxed);
        let _ = self
            .first_seen
            .compare_exchange(0, h, Ordering::Relaxed, Ordering::Relaxed);
    }

    fn receipt(id: &str) -> Receipt {
        Receipt {
            partner_ref: id.to_owned(),
            response_digest: sha256_hex(id.as_bytes()),
            detail: json!({"object": "message", "labelIds": ["SENT"]}),
        }
    }

    /// Ours, by the headers Gmail returned.
    fn is_ours(&self, action: ActionId, headers: &Value) -> bool {
        let want_key = action.to_string();
        let want_id = format!("<{}>", self.message_id(action));
        headers.as_array().is_some_and(|hs| {
            hs.iter().any(|h| {
                let name = h["name"].as_str().unwrap_or_default();
                let value = h["value"].as_str().unwrap_or_default();
                (name.eq_ignore_ascii_case("X-Idem-Key") && value == want_key)
                    || (name.eq_ignore_ascii_case("Message-ID") && value == want_id)
            })
        })
    }

    async fn find_in_history(
        &self,
        action: ActionId,
        start: u64,
    ) -> Result<Option<String>, String> {
        let mut ids: Vec<String> = vec![];
        let mut token: Option<String> = None;
        for page in 0.. {
            if page == HISTORY_PAGES {
                return Err(format!("more than {HISTORY_PAGES} pages of SENT history"));
            }
            let mut q = vec![
                ("startHistoryId", start.to_string()),
                ("historyTypes", "messageAdded".into()),
                ("labelId", "SENT".into()),
                ("maxResults", "500".into()),
            ];
            if let Some(t) = &token {
                q.push(("pageToken", t.clone()));
            }
            let (status, body) = self.get("/history", &q).await?;
            if status == 404 {
                return Err("startHistoryId too old".into());
            }
            if status == 403 {
                return Err(scope_error(&body));
            }
            if status != 200 {
                return Err(format!("history answered {status}"));
            }
            ids.extend(
                body["history"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|h| h["messagesAdded"].as_array().cloned().unwrap_or_default())
                    .filter_map(|m| m["message"]["id"].as_str().map(str::to_owned)),
            );
            match body["nextPageToken"].as_str() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => break,
            }
        }
        for id in ids {
            // With format=metadata Gmail returns only the headers named here: both the
            // Message-ID (which Gmail may rewrite) and X-Idem-Key (which it keeps).
            let (status, m) = self
                .get(
                    &format!("/messages/{id}"),
                    &[
                        ("format", "metadata".into()),
                        ("metadataHeaders", "Message-ID".into()),
                        ("metadataHeaders", "X-Idem-Key".into()),
                    ],
                )
                .await?;
            if status == 403 {
                return Err(scope_error(&m));
            }
            if status == 200 && self.is_ours(action, &m["payload"]["headers"]) {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }
}

/// Pages of 500 history records read before a lookup gives up for this round.
const HISTORY_PAGES: usize = 20;

/// What a 403 on a read means: usually a token that may send but not read.
fn scope_error(body: &Value) -> String {
    let reason = body["error"]["errors"][0]["reason"].as_str().unwrap_or("");
    if reason == "insufficientPermissions" {
        NO_READ_SCOPE.to_owned()
    } else {
        format!("read answered 403 {reason}")
    }
}

/// The words for a token without a read scope (matched to stop waiting: it will not pass).
const NO_READ_SCOPE: &str = "the token may send but not read (403 insufficientPermissions): \
     lookups need the gmail.readonly or gmail.modify scope besides gmail.send";

#[async_trait]
impl TypedCell for GmailSend {
    type Args = Args;
    const CARD: Card = crate::card!("send.md");

    crate::parts!();

    fn pre_state(&self, now: DateTime<Utc>) -> Value {
        match self.watermark.load(Ordering::Relaxed) {
            0 => json!({ "t0": now.timestamp() }),
            h => json!({ "t0": now.timestamp(), "history_id": h }),
        }
    }

    async fn send(&self, action: ActionId, args: &Args, _: &Attempt) -> ExecOutcome {
        // The mailbox's historyId just before the send: a start for history reads.
        if let Ok((200, p)) = self.get("/profile", &[]).await {
            if let Some(h) = p["historyId"].as_str().and_then(|h| h.parse().ok()) {
                self.observe(h);
            }
        }
        let req = self
            .parts
            .api
            .post("/gmail/v1/users/me/messages/send")
            .json(&json!({"raw": self.raw(action, args)}));
        let crate::http::Answer { status, body, .. } =
            match crate::http::call(req, "gmail.messages_send").await {
                Ok(a) => a,
                Err(outcome) => return outcome,
            };
        let reason = body["error"]["errors"][0]["reason"].as_str().unwrap_or("");
        match status {
            200 => match body["id"].as_str() {
                Some(id) => ExecOutcome::Succeeded(Self::receipt(id)),
                None => ExecOutcome::Ambiguous {
                    reason: "200 without a message id".into(),
                    replayed_error: false,
                },
            },
            429 => ExecOutcome::NotProcessed {
                reason: "429 rate limited".into(),
                retry_after: None,
            },
            403 if NOT_PROCESSED.contains(&reason) => ExecOutcome::NotProcessed {
                reason: format!("403 {reason}"),
                retry_after: None,
            },
            s if s >= 500 => ExecOutcome::Ambiguous {
                reason: format!("{s} {reason}: possibly accepted"),
                replayed_error: false,
            },
            s => ExecOutcome::Failed {
                reason: format!(
                    "{s} {reason}: {}",
                    body["error"]["message"].as_str().unwrap_or("")
                ),
            },
        }
    }

    async fn find(&self, action: ActionId, _: &Args, attempts: &[Attempt]) -> Verdict {
        let start = attempts
            .iter()
            .filter_map(|a| a.pre_state["history_id"].as_u64())
            .chain(Some(self.first_seen.load(Ordering::Relaxed)).filter(|h| *h > 0))
            .min();
        let mut notes = vec![];
        if let Some(start) = start {
            match self.find_in_history(action, start).await {
                Ok(Some(id)) => return Verdict::Happened(Self::receipt(&id)),
                Ok(None) => notes.push("not in the SENT history".to_owned()),
                Err(e) => notes.push(e),
            }
        } else {
            notes.push("no historyId recorded".into());
        }
        match self
            .get(
                "/messages",
                &[("q", format!("rfc822msgid:<{}>", self.message_id(action)))],
            )
            .await
        {
            Ok((200, b)) => {
                if let Some(id) = b["messages"][0]["id"].as_str() {
                    return Verdict::Happened(Self::receipt(id));
                }
                notes.push("not found by rfc822msgid".into());
            }
            Ok((403, b)) => notes.push(scope_error(&b)),
            Ok((s, _)) => notes.push(format!("search answered {s}")),
            Err(e) => notes.push(e),
        }
        // Without a read scope no lookup can ever answer: say so now, not after the bound.
        if notes.iter().any(|n| n.as_str() == NO_READ_SCOPE) {
            return Verdict::Unknowable {
                reason: format!(
                    "{NO_READ_SCOPE}. Look in the mailbox's Sent folder for Message-ID <{}> \
                     before deciding; an email is never resent automatically",
                    self.message_id(action)
                ),
            };
        }
        let first = attempts
            .iter()
            .map(|a| a.started_at)
            .min()
            .unwrap_or_else(Utc::now);
        let profile = &self.parts.profile;
        let bound = match profile.lookup {
            Lookup::Eventual { lag_bound } => lag_bound.max(profile.settle_time),
            _ => profile.settle_time,
        };
        if Utc::now() - first < chrono::Duration::from_std(bound).unwrap_or(chrono::Duration::MAX) {
            Verdict::Unknown {
                reason: format!("{}; looking again within the lag bound", notes.join("; ")),
            }
        } else {
            Verdict::Unknowable {
                reason: format!(
                    "checked at {}: {}. Absence is not proof: Gmail's history and search can lag \
                     behind a message that was sent. Look in the mailbox's Sent folder for \
                     Message-ID <{}> before deciding; an email is never resent automatically",
                    Utc::now().format("%Y-%m-%d %H:%M:%S UTC"),
                    notes.join("; "),
                    self.message_id(action)
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Cell;

    #[test]
    fn validation_refuses_header_injection_and_hides_the_token() {
        let c = GmailSend::new("http://x", "ya29.secret");
        assert!(c
            .validate(&json!({"to": "a@b.c", "subject": "hi", "text": "body"}))
            .is_ok());
        for (args, field) in [
            (json!({"subject": "hi", "text": "b"}), "to"),
            (
                json!({"to": "a@b.c\r\nBcc: x@y.z", "subject": "hi", "text": "b"}),
                "to",
            ),
            (
                json!({"to": "a@b.c", "subject": "hi\nBcc: x@y.z", "text": "b"}),
                "subject",
            ),
            (json!({"to": "a@b.c", "subject": "hi"}), "text"),
            (
                json!({"to": "a@b.c", "subject": "hi", "text": "b", "bcc": "x"}),
                "bcc",
            ),
        ] {
            assert!(c.validate(&args).unwrap_err().reason.contains(field));
        }
        assert!(!format!("{c:?}").contains("ya29.secret"));
    }

    #[test]
    fn the_raw_message_carries_our_ids() {
        let c = GmailSend::new("http://x", "ya29.t");
        let id = ActionId::random();
        let args = Args {
            to: "a@b.c".into(),
            subject: "Grüße".into(),
            text: "x".into(),
        };
        let raw = c.raw(id, &args);
        let mime = String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(raw)
                .unwrap(),
        )
        .unwrap();
        assert!(mime.contains(&format!("Message-ID: <idem-{id}@idem.invalid>")));
        assert!(mime.contains(&format!("X-Idem-Key: {id}")));
        assert!(mime.contains("Subject: =?UTF-8?B?"));
    }
}
