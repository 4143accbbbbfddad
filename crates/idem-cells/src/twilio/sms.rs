//! `twilio.sms.send`: send one SMS (`POST /2010-04-01/Accounts/{sid}/Messages.json`).
//!
//! Failure modes and recovery (partners.md, Twilio): there is **no REST idempotency key**,
//! and SMS is at-most-once by policy: a message is never resent unless its absence is
//! certain, and a lookup miss is not certainty (a list match is by To/From/day/body, not
//! by an id). So:
//! - 201 → succeeded (receipt: message SID).
//! - 429 / code 20429 → "never processed" [T3]: safe to retry.
//! - 400 codes (21211 invalid To, 21602 no body, 21603 no sender, …), 401, 403, 404 →
//!   failed.
//! - lost response, timeout, 5xx → ambiguous: list Messages by To/From — no `DateSent`
//!   filter, which misses queued and scheduled messages [T7] — every page (`next_page_uri`),
//!   match body and `date_created ≥ t0`; found → succeeded; not
//!   found → wait out the lag bound, then **needs_human** (never an automatic resend).
//! - the action id rides in the StatusCallback URL (`?idem=<action>`), so status
//!   callbacks and people can tie a message to its action.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::profile::{ApprovalPolicy, Lookup, ReplayModel};
use idem_core::{ActionId, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

/// Clock skew allowed between us and Twilio when matching `date_created` against t0.
const SKEW_SECS: i64 = 120;

/// Pages of 1000 read before the lookup gives up for this round (10,000 messages to one
/// number from one sender).
const PAGES: usize = 10;

/// The `twilio.sms.send` cell; the partner client uses HTTP Basic with the account SID
/// and the auth token.
#[derive(Clone, Debug)]
pub struct TwilioSms {
    parts: Parts,
    account_sid: String,
    status_callback: String,
}

/// Send one SMS (POST /Messages.json). Give exactly one of from and messaging_service_sid
/// (checked when the action is submitted).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// E.164 number, e.g. +15551234567.
    #[schemars(pattern("^\\+[0-9]{7,15}$"))]
    pub to: String,
    #[schemars(pattern("^\\+[0-9]{7,15}$"))]
    pub from: Option<String>,
    #[schemars(pattern("^MG.{32}$"))]
    pub messaging_service_sid: Option<String>,
    #[schemars(length(min = 1, max = 1600))]
    pub body: String,
}

impl CellArgs for Args {
    /// "Exactly one of from and messaging_service_sid" stays out of the schema: a
    /// top-level oneOf makes the Anthropic and OpenAI APIs reject the whole tool list.
    fn check(&self) -> Result<(), String> {
        match (&self.from, &self.messaging_service_sid) {
            (Some(_), None) | (None, Some(_)) => Ok(()),
            _ => Err("from (E.164) or messaging_service_sid (MG…, 34 chars): exactly one".into()),
        }
    }

    fn document_rules() -> Option<serde_json::Value> {
        Some(serde_json::json!({"oneOf": [
            {"required": ["from"], "not": {"required": ["messaging_service_sid"]}},
            {"required": ["messaging_service_sid"], "not": {"required": ["from"]}},
        ]}))
    }

    fn summary(&self) -> Option<String> {
        let from = match (&self.from, &self.messaging_service_sid) {
            (Some(f), _) => format!(" from {f}"),
            (None, Some(mg)) => format!(" via messaging service {mg}"),
            (None, None) => String::new(),
        };
        Some(format!(
            "Send SMS to {}{from}: {}",
            self.to,
            crate::summary::quote(&self.body, 160)
        ))
    }
}

impl TwilioSms {
    /// `status_callback` is the URL Twilio posts status changes to; the cell appends
    /// `idem=<action id>`.
    pub fn new(
        base_url: impl Into<String>,
        account_sid: impl Into<String>,
        auth_token: impl Into<String>,
        status_callback: impl Into<String>,
    ) -> Self {
        let profile = Self::default_profile();
        let account_sid = account_sid.into();
        let api = PartnerClient::basic(
            base_url,
            account_sid.clone(),
            auth_token,
            profile.call_timeout,
        );
        Self {
            parts: Parts::new("twilio.sms.send", profile, api),
            account_sid,
            status_callback: status_callback.into(),
        }
    }

    /// No key, a list lookup of undocumented lag (bound 2 min), at-most-once.
    pub fn default_profile() -> CellProfile {
        CellProfile {
            key: None,
            replay: ReplayModel::None,
            lookup: Lookup::Eventual {
                lag_bound: Duration::from_secs(120),
            },
            settle_time: Duration::from_secs(30),
            doubt_horizon: Duration::from_secs(3600),
            call_timeout: Duration::from_secs(15),
            retry: RetryPolicy::default(),
            approval: ApprovalPolicy::Never,
            rate_limit: None,
            strategy: "at-most-once: no key; on doubt list Messages by To/From/DateSent and \
                       match body and time; not found → a person decides, never a resend"
                .into(),
        }
    }

    fn lag_bound(&self) -> Duration {
        match self.parts.profile.lookup {
            Lookup::Eventual { lag_bound } => lag_bound,
            _ => Duration::ZERO,
        }
    }

    fn callback(&self, action: ActionId) -> String {
        let sep = if self.status_callback.contains('?') {
            '&'
        } else {
            '?'
        };
        format!("{}{sep}idem={action}", self.status_callback)
    }

    fn messages_path(&self) -> String {
        format!("/2010-04-01/Accounts/{}/Messages.json", self.account_sid)
    }

    fn receipt(m: &Value) -> Receipt {
        Receipt {
            partner_ref: m["sid"].as_str().unwrap_or_default().to_owned(),
            response_digest: sha256_hex(canonical_json(m).as_bytes()),
            detail: json!({"object": "message", "to": m["to"], "status": m["status"]}),
        }
    }
}

#[async_trait]
impl TypedCell for TwilioSms {
    type Args = Args;
    const CARD: Card = crate::card!("sms.send.md");

    crate::parts!();

    async fn send(&self, action: ActionId, args: &Args, _: &Attempt) -> ExecOutcome {
        let mut form = vec![
            ("To", args.to.clone()),
            ("Body", args.body.clone()),
            ("StatusCallback", self.callback(action)),
        ];
        if let Some(f) = &args.from {
            form.push(("From", f.clone()));
        }
        if let Some(s) = &args.messaging_service_sid {
            form.push(("MessagingServiceSid", s.clone()));
        }
        let req = self.parts.api.post(&self.messages_path()).form(&form);
        let crate::http::Answer { status, body, .. } =
            match crate::http::call(req, "twilio.messages_create").await {
                Ok(a) => a,
                Err(outcome) => return outcome,
            };
        let code = body["code"].as_u64().unwrap_or(0);
        match status {
            200 | 201 => ExecOutcome::Succeeded(Self::receipt(&body)),
            429 => ExecOutcome::NotProcessed {
                reason: format!("429 (code {code}): never processed"),
                retry_after: None,
            },
            400 | 401 | 403 | 404 => ExecOutcome::Failed {
                reason: format!(
                    "{status} code {code}: {}",
                    body["message"].as_str().unwrap_or("")
                ),
            },
            s => ExecOutcome::Ambiguous {
                reason: format!("{s} code {code}"),
                replayed_error: false,
            },
        }
    }

    async fn find(&self, _: ActionId, args: &Args, attempts: &[Attempt]) -> Verdict {
        let t0 = attempts
            .iter()
            .filter_map(|a| a.pre_state["t0"].as_i64())
            .min()
            .unwrap_or(0);
        let first = attempts
            .iter()
            .map(|a| a.started_at)
            .min()
            .unwrap_or_else(Utc::now);
        // No `DateSent` filter: it matches only messages that have a send date, and a
        // queued or scheduled message has none yet [T7]. So every message to this number
        // (from this sender) is read, page after page, matched on body and creation time.
        let mut q = vec![("To", args.to.clone()), ("PageSize", "1000".to_owned())];
        if let Some(f) = &args.from {
            q.push(("From", f.clone()));
        }
        let body_text = args.body.as_str();
        let own = format!("{}?", self.messages_path());
        let mut req = self.parts.api.get(&self.messages_path()).query(&q);
        let mut found = None;
        for page in 0.. {
            if page == PAGES {
                return Verdict::Unknown {
                    reason: format!("more than {PAGES} pages of messages to this number"),
                };
            }
            let body: Value = match crate::http::send_traced(req, "twilio.messages_list").await {
                Ok(r) if r.status().is_success() => r.json().await.unwrap_or(Value::Null),
                Ok(r) => {
                    return Verdict::Unknown {
                        reason: format!("list answered {}", r.status()),
                    }
                }
                Err(e) => {
                    return Verdict::Unknown {
                        reason: format!("list failed: {}", crate::http::without_url(&e)),
                    }
                }
            };
            found = body["messages"].as_array().and_then(|ms| {
                ms.iter()
                    .find(|m| {
                        m["body"].as_str() == Some(body_text)
                            && m["date_created"]
                                .as_str()
                                .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
                                .is_some_and(|d| d.timestamp() >= t0 - SKEW_SECS)
                    })
                    .cloned()
            });
            match body["next_page_uri"].as_str() {
                _ if found.is_some() => break,
                // Only this account's list is followed (the credential goes with it).
                Some(next) if next.starts_with(&own) => req = self.parts.api.get(next),
                Some(next) => {
                    return Verdict::Unknown {
                        reason: format!("next_page_uri outside this account's messages: {next}"),
                    }
                }
                None => break,
            }
        }
        let found = found.as_ref();
        match found {
            Some(m) => Verdict::Happened(Self::receipt(m)),
            None if Utc::now() - first
                < chrono::Duration::from_std(
                    self.lag_bound().max(self.parts.profile.settle_time),
                )
                .unwrap_or(chrono::Duration::MAX) =>
            {
                Verdict::Unknown {
                    reason: "not in the Messages list yet; its lag is undocumented".into(),
                }
            }
            None => Verdict::Unknowable {
                reason: "no matching message after the lag bound; SMS is at-most-once, so a \
                         person decides (resend or not)"
                    .into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Cell;

    #[test]
    fn validation_names_the_field_and_debug_hides_the_token() {
        let c = TwilioSms::new("http://x", "AC1", "auth-secret", "https://h/cb");
        assert!(c
            .validate(&json!({"to": "+15551230001", "from": "+15557654321", "body": "hi"}))
            .is_ok());
        for (args, field) in [
            (json!({"from": "+15557654321", "body": "hi"}), "to"),
            (
                json!({"to": "555", "from": "+15557654321", "body": "hi"}),
                "to",
            ),
            (json!({"to": "+15551230001", "body": "hi"}), "from"),
            (
                json!({"to": "+15551230001", "from": "+15557654321", "body": ""}),
                "body",
            ),
            (
                json!({"to": "+15551230001", "from": "+15557654321", "body": "x", "media": 1}),
                "media",
            ),
        ] {
            assert!(c.validate(&args).unwrap_err().reason.contains(field));
        }
        assert!(!format!("{c:?}").contains("auth-secret"));
        let id = ActionId::random();
        assert_eq!(c.callback(id), format!("https://h/cb?idem={id}"));
    }
}
