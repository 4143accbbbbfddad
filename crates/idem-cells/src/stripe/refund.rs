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
use idem_core::{ActionId, CellName, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use serde_json::{json, Value};

use super::{classify, StripeApi, METADATA_KEY};
use crate::cell::{Attempt, Cell, InvalidArgs};

/// The `stripe.refund` cell. Arguments: `payment_intent` (required), `amount` (minor
/// units; default: whatever is left to refund), `reason` (`duplicate`, `fraudulent`,
/// `requested_by_customer`).
#[derive(Clone, Debug)]
pub struct StripeRefund {
    name: CellName,
    profile: CellProfile,
    api: StripeApi,
}

const REASONS: [&str; 3] = ["duplicate", "fraudulent", "requested_by_customer"];

impl StripeRefund {
    pub fn new(base_url: impl Into<String>, secret: impl Into<String>) -> Self {
        let profile = Self::default_profile();
        Self {
            name: CellName::new("stripe.refund").expect("valid"),
            api: StripeApi::new(base_url, secret, profile.call_timeout),
            profile,
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

    pub fn with_profile(mut self, f: impl FnOnce(&mut CellProfile)) -> Self {
        f(&mut self.profile);
        self.api = self.api.with_timeout(self.profile.call_timeout);
        self
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

fn arg_err(reason: impl Into<String>) -> InvalidArgs {
    InvalidArgs {
        cell: "stripe.refund".into(),
        reason: reason.into(),
    }
}

#[async_trait]
impl Cell for StripeRefund {
    fn name(&self) -> &CellName {
        &self.name
    }

    fn profile(&self) -> &CellProfile {
        &self.profile
    }

    fn input_schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "description": "A refund of a PaymentIntent (POST /v1/refunds); without amount, the whole remainder.",
            "properties": {
                "payment_intent": {"type": "string", "pattern": "^pi_", "maxLength": 255, "description": "The PaymentIntent to refund (pi_…)."},
                "amount": {"type": "integer", "minimum": 1, "maximum": 99_999_999, "description": "Minor units; omit to refund the remainder."},
                "reason": {"enum": REASONS}
            },
            "required": ["payment_intent"],
            "additionalProperties": false
        })
    }

    fn validate(&self, args: &Value) -> Result<(), InvalidArgs> {
        let obj = args
            .as_object()
            .ok_or_else(|| arg_err("args must be an object"))?;
        match obj.get("payment_intent").and_then(Value::as_str) {
            Some(pi) if pi.starts_with("pi_") && pi.len() <= 255 => {}
            _ => return Err(arg_err("payment_intent: required PaymentIntent id (pi_…)")),
        }
        if let Some(a) = obj.get("amount") {
            match a.as_i64() {
                Some(a) if a > 0 && a <= 99_999_999 => {}
                _ => {
                    return Err(arg_err(
                        "amount: optional integer in minor units, 1..=99999999",
                    ))
                }
            }
        }
        if let Some(r) = obj.get("reason") {
            if !r.as_str().is_some_and(|r| REASONS.contains(&r)) {
                return Err(arg_err(format!("reason: one of {}", REASONS.join(", "))));
            }
        }
        if let Some(unknown) = obj
            .keys()
            .find(|k| !["payment_intent", "amount", "reason"].contains(&k.as_str()))
        {
            return Err(arg_err(format!("unknown field {unknown:?}")));
        }
        Ok(())
    }

    async fn execute(&self, action: ActionId, args: &Value, attempt: &Attempt) -> ExecOutcome {
        let mut form: Vec<(&str, String)> = vec![
            (
                "payment_intent",
                args["payment_intent"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            ("metadata[idem_action_id]", action.to_string()),
        ];
        if let Some(a) = args["amount"].as_i64() {
            form.push(("amount", a.to_string()));
        }
        if let Some(r) = args["reason"].as_str() {
            form.push(("reason", r.to_owned()));
        }
        let answer = match self
            .api
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

    async fn reconcile(&self, action: ActionId, args: &Value, _: &[Attempt]) -> Verdict {
        let q = vec![(
            "payment_intent".to_owned(),
            args["payment_intent"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        )];
        let me = action.to_string();
        self.api
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
