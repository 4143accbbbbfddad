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
use idem_core::{ActionId, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{classify, StripeApi, CREATED_SKEW_SECS};
use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

pub use super::METADATA_KEY;

/// How `reconcile` looks for the effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReconcileVia {
    /// `GET /v1/payment_intents?created[gte]=…` (read-your-writes).
    List,
    /// `GET /v1/payment_intents/search?query=metadata[...]` (indexing lag).
    Search,
}

/// The `stripe.charge` cell.
#[derive(Clone, Debug)]
pub struct StripeCharge {
    parts: Parts,
    via: ReconcileVia,
    /// A test-mode key (`sk_test_…`, `rk_test_…`): Stripe's test payment methods exist.
    test_mode: bool,
}

/// A PaymentIntent created and confirmed at once (POST /v1/payment_intents, confirm=true).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// Amount in the currency's minor unit (cents).
    #[schemars(range(min = 1, max = 99_999_999))]
    pub amount: u64,
    /// Three-letter lower-case ISO currency code.
    #[schemars(pattern("^[a-z]{3}$"))]
    pub currency: String,
    /// Stripe customer id (cus_…). Without `payment_method`, the customer's default
    /// (`invoice_settings.default_payment_method`) is charged.
    pub customer: Option<String>,
    /// Stripe PaymentMethod id (pm_…). Without it: the customer's default; with neither,
    /// Stripe's test card `pm_card_visa` under a test-mode key, and no charge under a
    /// live one.
    pub payment_method: Option<String>,
    pub description: Option<String>,
}

impl CellArgs for Args {
    fn summary(&self) -> Option<String> {
        let who = match (&self.customer, &self.payment_method) {
            (Some(c), _) => format!(" to {c}"),
            (None, Some(pm)) => format!(" to payment method {pm}"),
            (None, None) => String::new(),
        };
        let what = self
            .description
            .as_deref()
            .map(|d| format!(" — {d}"))
            .unwrap_or_default();
        Some(format!(
            "Charge {}{who}{what}",
            crate::summary::money(self.amount, &self.currency)
        ))
    }
}

impl StripeCharge {
    /// A cell talking to `base_url` (Stripe or idem's simulator) with an API secret key.
    /// The secret is sent in the `Authorization` header only and never logged.
    pub fn new(base_url: impl Into<String>, secret: impl Into<String>) -> Self {
        let profile = Self::default_profile();
        let secret = secret.into();
        let test_mode = secret.starts_with("sk_test_") || secret.starts_with("rk_test_");
        let api = PartnerClient::bearer(base_url, secret, profile.call_timeout);
        Self {
            parts: Parts::new("stripe.charge", profile, api),
            via: ReconcileVia::List,
            test_mode,
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
            rate_limit: Some(idem_core::profile::RateLimit::per_second(100)),
            strategy: "key + reconcile-after: same-key replay inside the key window; past it or \
                       after a replayed error, list PaymentIntents by created[gte] and match \
                       metadata[idem_action_id]"
                .into(),
        }
    }

    /// Reconcile through Search: misses are trusted only after `lag_bound`.
    pub fn reconcile_via_search(mut self, lag_bound: Duration) -> Self {
        self.via = ReconcileVia::Search;
        self.parts.profile.lookup = Lookup::Eventual { lag_bound };
        self
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

    fn stripe(&self) -> StripeApi<'_> {
        StripeApi(&self.parts.api)
    }

    /// The customer's default payment method (`GET /v1/customers/{id}`,
    /// `invoice_settings.default_payment_method`, an id or an expanded object). Read-only,
    /// so any failure here is "not sent": a 404 or no default fails the action, anything
    /// else is retried. Read at each attempt: should the default change between attempts,
    /// Stripe refuses the key with other parameters and the lookup decides.
    async fn default_payment_method(&self, customer: &str) -> Result<String, ExecOutcome> {
        let path = format!(
            "/v1/customers/{}",
            percent_encoding::utf8_percent_encode(customer, percent_encoding::NON_ALPHANUMERIC)
        );
        let req = self.parts.api.get(&path);
        let resp = crate::http::send_traced(req, "stripe.retrieve_customer")
            .await
            .map_err(|e| ExecOutcome::NotProcessed {
                reason: format!("customer lookup failed: {}", crate::http::without_url(&e)),
                retry_after: None,
            })?;
        let status = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        match status {
            200 => {
                let pm = &body["invoice_settings"]["default_payment_method"];
                match pm.as_str().or(pm["id"].as_str()) {
                    Some(pm) => Ok(pm.to_owned()),
                    None => Err(ExecOutcome::Failed {
                        reason: format!(
                            "customer {customer} has no default payment method \
                             (invoice_settings.default_payment_method): give payment_method"
                        ),
                    }),
                }
            }
            404 => Err(ExecOutcome::Failed {
                reason: format!("no such customer: {customer}"),
            }),
            400 | 401 | 403 => Err(ExecOutcome::Failed {
                reason: format!(
                    "customer lookup answered {status}: {}",
                    body["error"]["message"].as_str().unwrap_or("")
                ),
            }),
            s => Err(ExecOutcome::NotProcessed {
                reason: format!("customer lookup answered {s}"),
                retry_after: None,
            }),
        }
    }

    async fn find_by_list(&self, action: ActionId, args: &Args, t0: i64) -> Verdict {
        let mut q: Vec<(String, String)> =
            vec![("created[gte]".into(), (t0 - CREATED_SKEW_SECS).to_string())];
        if let Some(c) = &args.customer {
            q.push(("customer".into(), c.clone()));
        }
        let me = action.to_string();
        self.stripe()
            .find_in_list("/v1/payment_intents", &q, |pi| {
                (pi["metadata"][METADATA_KEY].as_str() == Some(me.as_str()))
                    .then(|| Self::verdict_for(pi))
            })
            .await
    }

    async fn find_by_search(&self, action: ActionId) -> Verdict {
        let q = vec![(
            "query".to_owned(),
            format!("metadata['{METADATA_KEY}']:'{action}'"),
        )];
        match self
            .stripe()
            .get_json("/v1/payment_intents/search", &q)
            .await
        {
            Ok(v) => match v["data"].as_array().and_then(|d| d.first()) {
                Some(pi) => Self::verdict_for(pi),
                None => Verdict::NotHappened,
            },
            Err(reason) => Verdict::Unknown { reason },
        }
    }
}

#[async_trait]
impl TypedCell for StripeCharge {
    type Args = Args;
    const CARD: Card = crate::card!("charge.md");

    crate::parts!();

    async fn send(&self, action: ActionId, args: &Args, attempt: &Attempt) -> ExecOutcome {
        let payment_method = match (&args.payment_method, &args.customer) {
            (Some(pm), _) => pm.clone(),
            (None, Some(customer)) => match self.default_payment_method(customer).await {
                Ok(pm) => pm,
                Err(outcome) => return outcome,
            },
            // Stripe's documented test card: it exists only in test mode.
            (None, None) if self.test_mode => "pm_card_visa".into(),
            (None, None) => {
                return ExecOutcome::Failed {
                    reason: "no payment_method and no customer: with a live key there is \
                             nothing to charge"
                        .into(),
                }
            }
        };
        let mut form: Vec<(&str, String)> = vec![
            ("amount", args.amount.to_string()),
            ("currency", args.currency.clone()),
            ("confirm", "true".into()),
            ("payment_method", payment_method),
            // Off-session, no customer to redirect: a payment that needs one (3-D Secure)
            // fails at once instead of waiting in `requires_action`, and no redirect-based
            // method is offered, so no `return_url` is needed.
            ("error_on_requires_action", "true".into()),
            ("automatic_payment_methods[enabled]", "true".into()),
            ("automatic_payment_methods[allow_redirects]", "never".into()),
            ("metadata[idem_action_id]", action.to_string()),
        ];
        for (field, v) in [
            ("customer", &args.customer),
            ("description", &args.description),
        ] {
            if let Some(v) = v {
                form.push((field, v.clone()));
            }
        }
        let answer = match self
            .stripe()
            .post_form(
                "/v1/payment_intents",
                &form,
                attempt.key.as_deref(),
                "stripe.create_payment_intent",
            )
            .await
        {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        classify(&answer, |a| {
            let body = &a.body;
            let err = &body["error"];
            match a.status {
                200 => Some(match body["status"].as_str() {
                    Some("succeeded") => ExecOutcome::Succeeded(Self::receipt(body)),
                    Some("requires_payment_method") | Some("canceled") => ExecOutcome::Failed {
                        reason: format!("payment intent {}", body["status"]),
                    },
                    other => ExecOutcome::Ambiguous {
                        reason: format!("payment intent status {other:?}"),
                        replayed_error: false,
                    },
                }),
                400 if err["code"] == "payment_intent_unexpected_state"
                    && err["payment_intent"]["status"] == "succeeded" =>
                {
                    Some(ExecOutcome::Succeeded(Self::receipt(
                        &err["payment_intent"],
                    )))
                }
                402 => Some(ExecOutcome::Failed {
                    reason: format!(
                        "card_error: {}",
                        err["decline_code"]
                            .as_str()
                            .or(err["code"].as_str())
                            .unwrap_or("declined")
                    ),
                }),
                _ => None,
            }
        })
    }

    async fn find(&self, action: ActionId, args: &Args, attempts: &[Attempt]) -> Verdict {
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
    use crate::cell::Cell;
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
