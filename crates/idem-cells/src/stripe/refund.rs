//! `stripe.refund`: refund (part of) a PaymentIntent.
//!
//! Failure modes and recovery (partners.md, Stripe, "Refund create"):
//! - lost response / timeout / reset / 5xx / 409 → ambiguous; inside the key window the
//!   worker replays the byte-identical request under the same `Idempotency-Key`.
//! - a replayed 5xx or an `idempotency_error` → reconcile. Refunds are **not searchable**:
//!   the only lookup is `GET /v1/refunds?payment_intent=…` (read-your-writes), matched on
//!   `metadata[idem_action_id]`.
//! - over-refund (`amount_too_large`, `charge_already_refunded`) → failed, definitively:
//!   the money is not there to refund, and retrying cannot change that.
//! - unknown payment intent (404 `resource_missing`), nothing to refund → failed.
//! - 429 → not processed, safe to resend.

use std::time::Duration;

use async_trait::async_trait;
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::profile::{ApprovalPolicy, KeySupport, Lookup, ReplayModel};
use idem_core::{ActionId, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

use super::{classify, StripeApi, METADATA_KEY};
use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

/// The `stripe.refund` cell.
#[derive(Clone, Debug)]
pub struct StripeRefund {
    parts: Parts,
}

/// A refund of a PaymentIntent (POST /v1/refunds); without amount, the whole remainder.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The PaymentIntent to refund (pi_…).
    #[schemars(pattern("^pi_"), length(max = 255))]
    pub payment_intent: String,
    /// Minor units; omit to refund the remainder.
    #[schemars(range(min = 1, max = 99_999_999))]
    pub amount: Option<u64>,
    pub reason: Option<Reason>,
}

/// Why the money goes back (Stripe's three reasons).
#[derive(Debug, Clone, Copy, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Duplicate,
    Fraudulent,
    RequestedByCustomer,
}

impl Reason {
    fn as_str(self) -> &'static str {
        match self {
            Reason::Duplicate => "duplicate",
            Reason::Fraudulent => "fraudulent",
            Reason::RequestedByCustomer => "requested_by_customer",
        }
    }
}

impl CellArgs for Args {
    fn summary(&self) -> Option<String> {
        // The currency is the payment's, which the arguments do not carry: minor units.
        let how_much = match self.amount {
            Some(a) => format!("{a} minor units (the payment's currency) of"),
            None => "all of".into(),
        };
        let why = self
            .reason
            .map(|r| format!(" — reason: {}", r.as_str().replace('_', " ")))
            .unwrap_or_default();
        Some(format!(
            "Refund {how_much} payment {}{why}",
            self.payment_intent
        ))
    }
}

impl StripeRefund {
    pub fn new(base_url: impl Into<String>, secret: impl Into<String>) -> Self {
        let profile = Self::default_profile();
        let api = PartnerClient::bearer(base_url, secret, profile.call_timeout);
        Self {
            parts: Parts::new("stripe.refund", profile, api),
        }
    }

    /// Same key semantics as charges (24 h, frozen replay); a strong list lookup.
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
            strategy: "key + reconcile-after: same-key replay inside the key window; past it, \
                       list the payment intent's refunds (refunds are not searchable) and \
                       match metadata[idem_action_id]; over-refund is a definitive failure"
                .into(),
        }
    }

    fn stripe(&self) -> StripeApi<'_> {
        StripeApi(&self.parts.api)
    }

    fn receipt(refund: &Value) -> Receipt {
        Receipt {
            partner_ref: refund["id"].as_str().unwrap_or_default().to_owned(),
            response_digest: sha256_hex(canonical_json(refund).as_bytes()),
            detail: serde_json::json!({
                "object": "refund",
                "status": refund["status"],
                "amount": refund["amount"],
                "currency": refund["currency"],
                "payment_intent": refund["payment_intent"],
            }),
        }
    }

    fn verdict_for(refund: &Value) -> Verdict {
        match refund["status"].as_str() {
            Some("succeeded") | Some("pending") | Some("requires_action") => {
                Verdict::Happened(Self::receipt(refund))
            }
            Some("failed") | Some("canceled") => Verdict::Failed {
                reason: format!("refund {} is {}", refund["id"], refund["status"]),
            },
            other => Verdict::Unknown {
                reason: format!("refund {} is {other:?}", refund["id"]),
            },
        }
    }
}

#[async_trait]
impl TypedCell for StripeRefund {
    type Args = Args;
    const CARD: Card = crate::card!("refund.md");

    crate::parts!();

    async fn send(&self, action: ActionId, args: &Args, attempt: &Attempt) -> ExecOutcome {
        let mut form: Vec<(&str, String)> = vec![
            ("payment_intent", args.payment_intent.clone()),
            ("metadata[idem_action_id]", action.to_string()),
        ];
        if let Some(a) = args.amount {
            form.push(("amount", a.to_string()));
        }
        if let Some(r) = args.reason {
            form.push(("reason", r.as_str().to_owned()));
        }
        let answer = match self
            .stripe()
            .post_form(
                "/v1/refunds",
                &form,
                attempt.key.as_deref(),
                "stripe.create_refund",
            )
            .await
        {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        classify(&answer, |a| {
            let code = a.body["error"]["code"].as_str();
            match (a.status, code) {
                (200, _) => match Self::verdict_for(&a.body) {
                    Verdict::Happened(r) => Some(ExecOutcome::Succeeded(r)),
                    Verdict::Failed { reason } => Some(ExecOutcome::Failed { reason }),
                    _ => None,
                },
                (400, Some(c @ ("amount_too_large" | "charge_already_refunded"))) => {
                    Some(ExecOutcome::Failed {
                        reason: format!(
                            "over-refund ({c}): {}",
                            a.body["error"]["message"].as_str().unwrap_or("")
                        ),
                    })
                }
                _ => None,
            }
        })
    }

    async fn find(&self, action: ActionId, args: &Args, _: &[Attempt]) -> Verdict {
        let q = vec![("payment_intent".to_owned(), args.payment_intent.clone())];
        let me = action.to_string();
        self.stripe()
            .find_in_list("/v1/refunds", &q, |r| {
                (r["metadata"][METADATA_KEY].as_str() == Some(me.as_str()))
                    .then(|| Self::verdict_for(r))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Cell;
    use serde_json::json;

    #[test]
    fn validation_names_the_field() {
        let c = StripeRefund::new("http://x", "sk_test_k");
        assert!(c.validate(&json!({"payment_intent": "pi_1"})).is_ok());
        assert!(c
            .validate(&json!({"payment_intent": "pi_1", "amount": 5, "reason": "duplicate"}))
            .is_ok());
        for (args, field) in [
            (json!({}), "payment_intent"),
            (json!({"payment_intent": "ch_1"}), "payment_intent"),
            (json!({"payment_intent": "pi_1", "amount": 0}), "amount"),
            (
                json!({"payment_intent": "pi_1", "reason": "bored"}),
                "reason",
            ),
            (json!({"payment_intent": "pi_1", "amont": 1}), "amont"),
        ] {
            let e = c.validate(&args).unwrap_err();
            assert!(e.reason.contains(field), "{e}");
        }
        assert!(!format!("{c:?}").contains("sk_test_k"));
    }
}
