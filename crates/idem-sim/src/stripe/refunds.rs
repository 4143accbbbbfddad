//! `POST /v1/refunds` and `GET /v1/refunds` (partners.md, Stripe: refunds are listable by
//! `payment_intent` with no lag, and not searchable). A refund beyond the unrefunded amount
//! is refused with `amount_too_large` (or `charge_already_refunded` when nothing is left);
//! that check runs atomically with the effect, so its 400 is a result of execution and is
//! stored under the key like any other (the worse case for a client that hoped to retry).

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{json, Value};

use super::routes::{
    authorized, find_intent, list_page, metadata_of, now_unix, stripe_error, unauthorized, Refusal,
    REFUNDS,
};
use super::{LedgerEntry, StripeSim};

pub(super) struct RefundParams {
    payment_intent: String,
    amount: Option<i64>,
    reason: Option<String>,
    metadata: serde_json::Map<String, Value>,
}

fn bad(code: &str, message: String) -> Refusal {
    (
        StatusCode::BAD_REQUEST,
        stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some(code),
            &message,
        ),
    )
}

/// Shape checks and the payment intent's existence: refusals here are not stored.
pub(super) fn validate(
    sim: &StripeSim,
    p: &HashMap<String, String>,
) -> Result<RefundParams, Refusal> {
    let Some(pi) = p.get("payment_intent").or(p.get("charge")) else {
        return Err(bad(
            "parameter_missing",
            "Must provide either `payment_intent` or `charge`.".into(),
        ));
    };
    let amount = match p.get("amount") {
        None => None,
        Some(a) => match a.parse::<i64>() {
            Ok(a) if a > 0 => Some(a),
            _ => {
                return Err(bad(
                    "parameter_invalid_integer",
                    format!("Invalid positive integer: amount={a}"),
                ))
            }
        },
    };
    if let Some(r) = p.get("reason") {
        if !["duplicate", "fraudulent", "requested_by_customer"].contains(&r.as_str()) {
            return Err(bad(
                "parameter_invalid_string",
                format!("Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer (got {r})"),
            ));
        }
    }
    match find_intent(sim, pi) {
        Some(intent) if intent["status"] == "succeeded" => {}
        Some(_) => {
            return Err(bad(
                "charge_not_refundable",
                format!("This PaymentIntent ({pi}) does not have a successful charge to refund."),
            ))
        }
        None => {
            return Err((
                StatusCode::NOT_FOUND,
                json!({"error": {"type": "invalid_request_error", "code": "resource_missing", "param": "payment_intent", "message": format!("No such payment_intent: '{pi}'")}}),
            ))
        }
    }
    Ok(RefundParams {
        payment_intent: pi.clone(),
        amount,
        reason: p.get("reason").cloned(),
        metadata: metadata_of(p),
    })
}

/// The refund itself, atomic with the over-refund check.
pub(super) fn execute(sim: &StripeSim, v: RefundParams, key: Option<&str>) -> (u16, Value) {
    let Some(pi) = find_intent(sim, &v.payment_intent) else {
        return (
            404,
            json!({"error": {"type": "invalid_request_error", "code": "resource_missing"}}),
        );
    };
    let charged = pi["amount_received"].as_i64().unwrap_or(0);
    let currency = pi["currency"].as_str().unwrap_or("usd").to_owned();
    let mut inner = sim.lock();
    let refunded: i64 = inner
        .refunds
        .iter()
        .filter(|r| r["payment_intent"] == v.payment_intent.as_str() && r["status"] == "succeeded")
        .filter_map(|r| r["amount"].as_i64())
        .sum();
    let left = charged - refunded;
    let amount = v.amount.unwrap_or(left);
    if left <= 0 {
        let b = stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("charge_already_refunded"),
            &format!("Charge for {} has already been refunded.", v.payment_intent),
        );
        return (400, b);
    }
    if amount > left {
        let b = stripe_error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            Some("amount_too_large"),
            &format!(
                "Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"
            ),
        );
        return (400, b);
    }
    inner.next_id += 1;
    let id = format!("re_sim{:018}", inner.next_id);
    let created = now_unix();
    let refund = json!({
        "id": id, "object": "refund", "amount": amount, "currency": currency,
        "payment_intent": v.payment_intent, "status": "succeeded", "created": created,
        "reason": v.reason, "metadata": Value::Object(v.metadata.clone()),
    });
    inner.refunds.push(refund.clone());
    inner.ledger.push(LedgerEntry {
        effect: "refund".into(),
        id,
        amount,
        currency,
        idem_action_id: v
            .metadata
            .get("idem_action_id")
            .and_then(Value::as_str)
            .map(str::to_owned),
        idempotency_key: key.map(str::to_owned),
        created,
    });
    (200, refund)
}

/// `GET /v1/refunds?payment_intent=&created[gte|gt|lte|lt]=&limit=&starting_after=`,
/// newest first, read-your-writes.
pub(super) async fn list(
    State(sim): State<StripeSim>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let q: HashMap<String, String> = q.into_iter().collect();
    let inner = sim.lock();
    let refunds = inner.refunds.iter().filter(|r| {
        q.get("payment_intent")
            .or(q.get("charge"))
            .is_none_or(|pi| r["payment_intent"] == pi.as_str())
    });
    list_page(refunds, &q, REFUNDS)
}
