//! `stripe.charge`: create and confirm a PaymentIntent.
//!
//! Failure modes and recovery (partners.md, Stripe):
//! - lost response / timeout / reset / 5xx → ambiguous. Inside the key window the worker
//!   resends the byte-identical request under the same `Idempotency-Key`; Stripe replays the
//!   stored outcome (`Idempotent-Replayed: true`).
//! - a replayed 5xx or an `idempotency_error` → replay is useless; reconcile.
//! - past the key window (keys may be pruned after 24 h) → never replay; reconcile by
//!   listing PaymentIntents `created[gte]` the attempt (no lag) and matching
//!   `metadata[idem_action_id]`. Search (lagging up to 1 h) only when configured, and its
//!   misses are trusted only after the lag bound.
//! - 409 → the first request is still in flight: ambiguous, back off, replay the same key.
//! - 429 → rate limited before the idempotency layer: not processed, safe to resend.
//! - 402 card_error, other 4xx → failed: no effect.
//! - 400 `payment_intent_unexpected_state` on an already-succeeded intent → succeeded.

use std::time::Duration;

use async_trait::async_trait;
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::profile::{ApprovalPolicy, KeySupport, Lookup, ReplayModel};
use idem_core::{ActionId, CellName, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use serde_json::Value;

use crate::cell::{Attempt, Cell, InvalidArgs};

/// Metadata key that marks a PaymentIntent with the action that made it (≤40 chars).
pub const METADATA_KEY: &str = "idem_action_id";

/// Slack for clock skew between us and Stripe when listing by creation time.
const CREATED_SKEW_SECS: i64 = 300;

/// How `reconcile` looks for the effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileVia {
    /// `GET /v1/payment_intents?created[gte]=…` (read-your-writes).
    List,
    /// `GET /v1/payment_intents/search?query=metadata[...]` (indexing lag).
    Search,
}

/// The `stripe.charge` cell.
#[derive(Clone)]
pub struct StripeCharge {
    name: CellName,
    profile: CellProfile,
    base_url: String,
    secret: String,
    via: ReconcileVia,
    http: reqwest::Client,
}

/// Redacts the API secret: a worker's Debug output may reach logs.
impl std::fmt::Debug for StripeCharge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeCharge")
            .field("base_url", &self.base_url)
            .field("secret", &"<redacted>")
            .field("via", &self.via)
            .field("profile", &self.profile)
            .finish()
    }
}

impl StripeCharge {
    /// A cell talking to `base_url` (Stripe or idem's simulator) with an API secret key.
    /// The secret is sent in the `Authorization` header only and never logged.
    pub fn new(base_url: impl Into<String>, secret: impl Into<String>) -> Self {
        let profile = Self::default_profile();
        Self {
            name: CellName::new("stripe.charge").expect("valid"),
            http: crate::http::client(profile.call_timeout),
            profile,
            base_url: base_url.into().trim_end_matches('/').to_owned(),
            secret: secret.into(),
            via: ReconcileVia::List,
        }
    }

    /// Stripe's documented semantics: 255-char keys kept at least 24 h, frozen replay, a
    /// list lookup without lag.
    pub fn default_profile() -> CellProfile {
        CellProfile {
            key: Some(KeySupport {
                field: "Idempotency-Key".into(),
                max_len: 255,
                retention: Duration::from_secs(24 * 3600),
                safety_margin: Duration::from_secs(3600),
            }),
            replay: ReplayModel::FrozenResponse,
            lookup: Lookup::Strong,
            settle_time: Duration::from_secs(120),
            doubt_horizon: Duration::from_secs(3 * 24 * 3600),
            call_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            approval: ApprovalPolicy::Never,
            rate_limit_per_sec: Some(100),
            strategy: "key + reconcile-after: same-key replay inside the key window; past it or \
                       after a replayed error, list PaymentIntents by created[gte] and match \
                       metadata[idem_action_id]"
                .into(),
        }
    }

    /// Replace the profile's timings (tests, the demo, a deployment's own measurements).
    pub fn with_profile(mut self, f: impl FnOnce(&mut CellProfile)) -> Self {
        f(&mut self.profile);
        self.http = crate::http::client(self.profile.call_timeout);
        self
    }

    /// Reconcile through Search: misses are trusted only after `lag_bound`.
    pub fn reconcile_via_search(mut self, lag_bound: Duration) -> Self {
        self.via = ReconcileVia::Search;
        self.profile.lookup = Lookup::Eventual { lag_bound };
        self
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        rb.bearer_auth(&self.secret)
    }

    fn receipt(pi: &Value) -> Receipt {
        Receipt {
            partner_ref: pi["id"].as_str().unwrap_or_default().to_owned(),
            response_digest: sha256_hex(canonical_json(pi).as_bytes()),
            detail: serde_json::json!({
                "object": "payment_intent",
                "status": pi["status"],
                "amount": pi["amount"],
                "currency": pi["currency"],
            }),
        }
    }

    /// Classify a PaymentIntent found by a lookup.
    fn verdict_for(pi: &Value) -> Verdict {
        match pi["status"].as_str() {
            Some("succeeded") => Verdict::Happened(Self::receipt(pi)),
            Some("requires_payment_method") | Some("canceled") => Verdict::Failed {
                reason: format!("payment intent {} is {}", pi["id"], pi["status"]),
            },
            other => Verdict::Unknown {
                reason: format!("payment intent {} is {:?}", pi["id"], other),
            },
        }
    }

    async fn find_by_list(&self, action: ActionId, args: &Value, t0: i64) -> Verdict {
        let mut starting_after: Option<String> = None;
        for _page in 0..100 {
            let mut q: Vec<(String, String)> = vec![
                ("created[gte]".into(), (t0 - CREATED_SKEW_SECS).to_string()),
                ("limit".into(), "100".into()),
            ];
            if let Some(c) = args["customer"].as_str() {
                q.push(("customer".into(), c.to_owned()));
            }
            if let Some(s) = &starting_after {
                q.push(("starting_after".into(), s.clone()));
            }
            let url = format!("{}/v1/payment_intents", self.base_url);
            let page = match self.get_json(&url, &q).await {
                Ok(v) => v,
                Err(reason) => return Verdict::Unknown { reason },
            };
            let data = page["data"].as_array().cloned().unwrap_or_default();
            if let Some(pi) = data
                .iter()
                .find(|pi| pi["metadata"][METADATA_KEY].as_str() == Some(&action.to_string()))
            {
                return Self::verdict_for(pi);
            }
            if page["has_more"].as_bool() != Some(true) || data.is_empty() {
                return Verdict::NotHappened;
            }
            starting_after = data
                .last()
                .and_then(|pi| pi["id"].as_str())
                .map(str::to_owned);
        }
        Verdict::Unknown {
            reason: "too many pages of payment intents".into(),
        }
    }

    async fn find_by_search(&self, action: ActionId) -> Verdict {
        let url = format!("{}/v1/payment_intents/search", self.base_url);
        let q = vec![(
            "query".to_owned(),
            format!("metadata['{METADATA_KEY}']:'{action}'"),
        )];
        match self.get_json(&url, &q).await {
            Ok(v) => match v["data"].as_array().and_then(|d| d.first()) {
                Some(pi) => Self::verdict_for(pi),
                None => Verdict::NotHappened,
            },
            Err(reason) => Verdict::Unknown { reason },
        }
    }

    async fn get_json(&self, url: &str, query: &[(String, String)]) -> Result<Value, String> {
        let resp =
            crate::http::send_traced(self.auth(self.http.get(url).query(query)), "stripe.lookup")
                .await
                .map_err(|e| format!("lookup failed: {}", without_url(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("lookup body: {}", without_url(&e)))?;
        if !status.is_success() {
            return Err(format!("lookup answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("lookup JSON: {e}"))
    }
}

/// reqwest errors print the URL; ours carry no secrets in URLs, but keep messages short.
fn without_url(e: &reqwest::Error) -> String {
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

fn arg_err(reason: impl Into<String>) -> InvalidArgs {
    InvalidArgs {
        cell: "stripe.charge".into(),
        reason: reason.into(),
    }
}

#[async_trait]
impl Cell for StripeCharge {
    fn name(&self) -> &CellName {
        &self.name
    }

    fn profile(&self) -> &CellProfile {
        &self.profile
    }

    fn validate(&self, args: &Value) -> Result<(), InvalidArgs> {
        let obj = args
            .as_object()
            .ok_or_else(|| arg_err("args must be an object"))?;
        match obj.get("amount").and_then(Value::as_i64) {
            Some(a) if a > 0 && a <= 99_999_999 => {}
            Some(a) => {
                return Err(arg_err(format!(
                    "amount {a} out of range 1..=99999999 (minor units)"
                )))
            }
            None => return Err(arg_err("amount: required integer in minor units")),
        }
        match obj.get("currency").and_then(Value::as_str) {
            Some(c) if c.len() == 3 && c.bytes().all(|b| b.is_ascii_lowercase()) => {}
            _ => {
                return Err(arg_err(
                    "currency: required three-letter lower-case ISO code",
                ))
            }
        }
        for field in ["customer", "payment_method", "description"] {
            if let Some(v) = obj.get(field) {
                if !v.is_string() {
                    return Err(arg_err(format!("{field}: must be a string")));
                }
            }
        }
        if let Some(unknown) = obj.keys().find(|k| {
            ![
                "amount",
                "currency",
                "customer",
                "payment_method",
                "description",
            ]
            .contains(&k.as_str())
        }) {
            return Err(arg_err(format!("unknown field {unknown:?}")));
        }
        Ok(())
    }

    async fn execute(&self, action: ActionId, args: &Value, attempt: &Attempt) -> ExecOutcome {
        let mut form: Vec<(&str, String)> = vec![
            (
                "amount",
                args["amount"].as_i64().unwrap_or_default().to_string(),
            ),
            (
                "currency",
                args["currency"].as_str().unwrap_or_default().to_owned(),
            ),
            ("confirm", "true".into()),
            (
                "payment_method",
                args["payment_method"]
                    .as_str()
                    .unwrap_or("pm_card_visa")
                    .to_owned(),
            ),
            ("metadata[idem_action_id]", action.to_string()),
        ];
        for field in ["customer", "description"] {
            if let Some(v) = args[field].as_str() {
                form.push((field, v.to_owned()));
            }
        }
        let mut req = self
            .auth(
                self.http
                    .post(format!("{}/v1/payment_intents", self.base_url)),
            )
            .form(&form);
        if let Some(key) = &attempt.key {
            req = req.header("Idempotency-Key", key);
        }
        let resp = match crate::http::send_traced(req, "stripe.create_payment_intent").await {
            Ok(r) => r,
            Err(e) if e.is_connect() => {
                return ExecOutcome::NotProcessed {
                    reason: "connection refused: the request never left".into(),
                    retry_after: None,
                }
            }
            Err(e) => {
                return ExecOutcome::Ambiguous {
                    reason: without_url(&e),
                    replayed_error: false,
                }
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
        let body: Value = match resp.bytes().await {
            Ok(b) => serde_json::from_slice(&b).unwrap_or(Value::Null),
            Err(e) => {
                return ExecOutcome::Ambiguous {
                    reason: format!("response lost: {}", without_url(&e)),
                    replayed_error: false,
                }
            }
        };
        let err = &body["error"];
        match status {
            200 => match body["status"].as_str() {
                Some("succeeded") => ExecOutcome::Succeeded(Self::receipt(&body)),
                Some("requires_payment_method") | Some("canceled") => ExecOutcome::Failed {
                    reason: format!("payment intent {}", body["status"]),
                },
                other => ExecOutcome::Ambiguous {
                    reason: format!("payment intent status {other:?}"),
                    replayed_error: false,
                },
            },
            400 if err["type"] == "idempotency_error" => ExecOutcome::Ambiguous {
                reason: format!("idempotency_error: {}", err["message"]),
                replayed_error: true,
            },
            400 if err["code"] == "payment_intent_unexpected_state"
                && err["payment_intent"]["status"] == "succeeded" =>
            {
                ExecOutcome::Succeeded(Self::receipt(&err["payment_intent"]))
            }
            402 => ExecOutcome::Failed {
                reason: format!(
                    "card_error: {}",
                    err["decline_code"]
                        .as_str()
                        .or(err["code"].as_str())
                        .unwrap_or("declined")
                ),
            },
            409 => ExecOutcome::Ambiguous {
                reason: "409: the first request with this key is still in flight".into(),
                replayed_error: false,
            },
            429 => ExecOutcome::NotProcessed {
                reason: "429 rate limited (not stored by the idempotency layer)".into(),
                retry_after,
            },
            s if s >= 500 => ExecOutcome::Ambiguous {
                reason: format!("{s} {}", err["type"].as_str().unwrap_or("api_error")),
                replayed_error: replayed,
            },
            s => ExecOutcome::Failed {
                reason: format!(
                    "{s} {}: {}",
                    err["type"].as_str().unwrap_or("error"),
                    err["message"].as_str().unwrap_or("")
                ),
            },
        }
    }

    async fn reconcile(&self, action: ActionId, args: &Value, attempts: &[Attempt]) -> Verdict {
        match self.via {
            ReconcileVia::Search => self.find_by_search(action).await,
            ReconcileVia::List => {
                let t0 = attempts
                    .iter()
                    .filter_map(|a| a.pre_state["t0"].as_i64())
                    .min()
                    .or_else(|| attempts.iter().map(|a| a.started_at.timestamp()).min())
                    .unwrap_or(0);
                self.find_by_list(action, args, t0).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn debug_output_never_shows_the_secret() {
        let c = StripeCharge::new("http://x", "sk_test_supersecret");
        assert!(!format!("{c:?}").contains("supersecret"));
    }

    #[test]
    fn validation_names_the_field() {
        let c = StripeCharge::new("http://x", "sk_test_k");
        assert!(c.validate(&json!({"amount": 5, "currency": "usd"})).is_ok());
        let e = c.validate(&json!({"currency": "usd"})).unwrap_err();
        assert!(e.reason.contains("amount"), "{e}");
        let e = c
            .validate(&json!({"amount": 5, "currency": "USD"}))
            .unwrap_err();
        assert!(e.reason.contains("currency"), "{e}");
        let e = c
            .validate(&json!({"amount": 5, "currency": "usd", "amont": 1}))
            .unwrap_err();
        assert!(e.reason.contains("amont"), "{e}");
        assert!(c
            .validate(&json!({"amount": -1, "currency": "usd"}))
            .is_err());
    }

    #[test]
    fn keys_are_stable_per_generation_and_fit_stripe() {
        let c = StripeCharge::new("http://x", "sk_test_k");
        let id = ActionId::random();
        assert_eq!(c.key(id, 0), c.key(id, 0));
        assert_ne!(c.key(id, 0), c.key(id, 1));
        assert!(c.key(id, 0).unwrap().len() <= 255);
    }
}
