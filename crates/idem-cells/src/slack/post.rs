//! `slack.post`: post a message to a channel (`chat.postMessage`).
//!
//! Failure modes and recovery (partners.md, Slack): there is **no idempotency key**. The
//! post carries `metadata {event_type: "idem", event_payload: {idem_action_id}}`, so the
//! cell can ask afterwards: `conversations.history?channel&oldest=t0&include_all_metadata`
//! and look for its action id (query-then-act). An app outside the Marketplace gets one
//! history request a minute and 15 messages a page, so the lookup reads only the window the
//! post can be in — from the first attempt's start to the last one's end, each side widened
//! by the clock-skew allowance — and a 429 is "cannot tell yet", asked again later.
//! - `ok:true` → succeeded (receipt: channel and `ts`).
//! - lost response, timeout, 5xx, `internal_error`/`fatal_error`/`request_timeout`/
//!   `service_unavailable` ("possibly some aspect succeeded") → ambiguous; never resent
//!   blindly: the history decides, and a miss counts only after the lag bound.
//! - 429 `ratelimited`, or HTTP 200 `ok:false, error: rate_limited` (chat.postMessage's own
//!   "posted too many messages") → not processed; retry after `Retry-After`.
//! - other `ok:false` errors (`channel_not_found`, `not_in_channel`, `is_archived`,
//!   `msg_too_long`, `no_text`, `invalid_auth`, …) → failed.

use std::time::Duration;

use async_trait::async_trait;
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::profile::{ApprovalPolicy, Lookup, RateLimit, ReplayModel};
use idem_core::{ActionId, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

/// Slack errors that mean "the post may or may not have happened".
const AMBIGUOUS: [&str; 4] = [
    "internal_error",
    "fatal_error",
    "request_timeout",
    "service_unavailable",
];

/// Slack for clock skew between us and Slack when reading history from `t0`.
const SKEW_SECS: i64 = 120;

/// Messages per history page: the most Slack gives an app outside the Marketplace.
const PAGE: usize = 15;

/// The `slack.post` cell.
#[derive(Clone, Debug)]
pub struct SlackPost {
    parts: Parts,
}

/// Post one message to a channel (chat.postMessage).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Channel id, e.g. C0123ABCD.
    #[schemars(pattern("^[A-Z0-9]{2,}$"))]
    pub channel: String,
    #[schemars(length(min = 1, max = 40_000))]
    pub text: String,
}

impl CellArgs for Args {
    fn summary(&self) -> Option<String> {
        Some(format!(
            "Post to Slack channel {}: {}",
            self.channel,
            crate::summary::quote(&self.text, 200)
        ))
    }
}

impl SlackPost {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let profile = Self::default_profile();
        let api = PartnerClient::bearer(base_url, token, profile.call_timeout);
        Self {
            parts: Parts::new("slack.post", profile, api),
        }
    }

    /// No key; an eventually consistent lookup (history lag is undocumented: 30 s bound).
    pub fn default_profile() -> CellProfile {
        CellProfile {
            key: None,
            replay: ReplayModel::None,
            lookup: Lookup::Eventual {
                lag_bound: Duration::from_secs(30),
            },
            settle_time: Duration::from_secs(30),
            doubt_horizon: Duration::from_secs(3600),
            call_timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            approval: ApprovalPolicy::Never,
            rate_limit: Some(RateLimit::per_second(1).per("channel")),
            strategy: "query-then-act: post with metadata carrying the action id; on doubt \
                       read conversations.history with metadata; post again only after a \
                       trusted miss"
                .into(),
        }
    }

    fn receipt(channel: &str, message: &Value) -> Receipt {
        Receipt {
            partner_ref: format!("{channel}/{}", message["ts"].as_str().unwrap_or_default()),
            response_digest: sha256_hex(canonical_json(message).as_bytes()),
            detail: json!({"object": "message", "channel": channel, "ts": message["ts"]}),
        }
    }
}

#[async_trait]
impl TypedCell for SlackPost {
    type Args = Args;
    const CARD: Card = crate::card!("post.md");

    crate::parts!();

    async fn send(&self, action: ActionId, args: &Args, _: &Attempt) -> ExecOutcome {
        let body = json!({
            "channel": args.channel,
            "text": args.text,
            "metadata": {"event_type": "idem", "event_payload": {"idem_action_id": action.to_string()}},
        });
        let req = self.parts.api.post("/api/chat.postMessage").json(&body);
        let crate::http::Answer {
            status,
            retry_after,
            body,
            ..
        } = match crate::http::call(req, "slack.chat_post_message").await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        let error = body["error"].as_str().unwrap_or("");
        match (status, body["ok"].as_bool()) {
            (200, Some(true)) => {
                ExecOutcome::Succeeded(Self::receipt(&args.channel, &body["message"]))
            }
            (429, _) => ExecOutcome::NotProcessed {
                reason: "429 ratelimited".into(),
                retry_after,
            },
            // chat.postMessage's own rate limit: "has posted too many messages" — not posted.
            (200, Some(false)) if error == "rate_limited" => ExecOutcome::NotProcessed {
                reason: "rate_limited: not posted".into(),
                retry_after,
            },
            (200, Some(false)) if AMBIGUOUS.contains(&error) => ExecOutcome::Ambiguous {
                reason: format!("{error}: possibly posted"),
                replayed_error: false,
            },
            (200, Some(false)) => ExecOutcome::Failed {
                reason: format!("slack error {error}"),
            },
            (s, _) => ExecOutcome::Ambiguous {
                reason: format!("HTTP {s}"),
                replayed_error: false,
            },
        }
    }

    async fn find(&self, action: ActionId, args: &Args, attempts: &[Attempt]) -> Verdict {
        let channel = args.channel.as_str();
        let starts: Vec<i64> = attempts
            .iter()
            .filter_map(|a| a.pre_state["t0"].as_i64())
            .collect();
        let (Some(&first), Some(&last)) = (starts.iter().min(), starts.iter().max()) else {
            return Verdict::Unknown {
                reason: "no attempt recorded when it started".into(),
            };
        };
        // A post the client gave up on lands within the call's timeout of its start.
        let end = last + self.parts.profile.call_timeout.as_secs() as i64 + 1;
        let me = action.to_string();
        let mut cursor = String::new();
        for _page in 0..50 {
            let mut q = vec![
                ("channel", channel.to_owned()),
                ("oldest", (first - SKEW_SECS).max(0).to_string()),
                ("latest", (end + SKEW_SECS).to_string()),
                ("inclusive", "true".to_owned()),
                ("include_all_metadata", "true".to_owned()),
                ("limit", PAGE.to_string()),
            ];
            if !cursor.is_empty() {
                q.push(("cursor", cursor.clone()));
            }
            let req = self.parts.api.get("/api/conversations.history").query(&q);
            let body: Value =
                match crate::http::send_traced(req, "slack.conversations_history").await {
                    Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
                    Ok(r) if r.status().as_u16() == 429 => {
                        return Verdict::Unknown {
                            reason: format!(
                                "history rate-limited (Retry-After {} s; 1 request a minute \
                                 outside the Marketplace): asked again later",
                                r.headers()
                                    .get("retry-after")
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("?")
                            ),
                        }
                    }
                    Ok(r) => {
                        return Verdict::Unknown {
                            reason: format!("history answered {}", r.status()),
                        }
                    }
                    Err(e) => {
                        return Verdict::Unknown {
                            reason: format!("history failed: {}", crate::http::without_url(&e)),
                        }
                    }
                };
            if body["ok"].as_bool() != Some(true) {
                return Verdict::Unknown {
                    reason: format!("history error {}", body["error"]),
                };
            }
            let messages = body["messages"].as_array().cloned().unwrap_or_default();
            if let Some(m) = messages.iter().find(|m| {
                m["metadata"]["event_type"] == "idem"
                    && m["metadata"]["event_payload"]["idem_action_id"].as_str()
                        == Some(me.as_str())
            }) {
                return Verdict::Happened(Self::receipt(channel, m));
            }
            cursor = body["response_metadata"]["next_cursor"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            if body["has_more"].as_bool() != Some(true) || cursor.is_empty() {
                return Verdict::NotHappened;
            }
        }
        Verdict::Unknown {
            reason: "too many pages of history".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Cell;

    #[test]
    fn validation_names_the_field_and_debug_hides_the_token() {
        let c = SlackPost::new("http://x", "xoxb-secret");
        assert!(c
            .validate(&json!({"channel": "C0123", "text": "hi"}))
            .is_ok());
        for (args, field) in [
            (json!({"text": "hi"}), "channel"),
            (json!({"channel": "#general", "text": "hi"}), "channel"),
            (json!({"channel": "C1", "text": ""}), "text"),
            (
                json!({"channel": "C1", "text": "hi", "blocks": []}),
                "blocks",
            ),
        ] {
            assert!(c.validate(&args).unwrap_err().reason.contains(field));
        }
        assert!(!format!("{c:?}").contains("xoxb-secret"));
        assert_eq!(c.key(ActionId::random(), 0), None, "no key: Slack has none");
    }
}
