//! Amadeus Self-Service cells (partners.md §2 "Amadeus"): `amadeus.price` (read-only,
//! retried freely), `amadeus.book` (the worst cell: no key, no lookup — every ambiguity
//! goes to a person, never a blind retry) and `amadeus.cancel` (DELETE; a 404 after an
//! earlier attempt of ours means done).

use std::time::Duration;

use async_trait::async_trait;
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::profile::{ApprovalPolicy, KeySupport, Lookup, ReplayModel};
use idem_core::{ActionId, CellName, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use serde_json::{json, Value};

use crate::cell::{Attempt, Cell, InvalidArgs};
use crate::http::PartnerClient;

/// A response: status and JSON body, or the outcome when none came back.
async fn send(rb: reqwest::RequestBuilder, op: &'static str) -> Result<(u16, Value), ExecOutcome> {
    crate::http::call(rb, op).await.map(|a| (a.status, a.body))
}

fn first_error(body: &Value) -> (u64, String) {
    let e = &body["errors"][0];
    (
        e["code"].as_u64().unwrap_or(0),
        format!(
            "{} {}",
            e["title"].as_str().unwrap_or(""),
            e["detail"].as_str().unwrap_or("")
        )
        .trim()
        .to_owned(),
    )
}

/// Re-price `offers` (a read: a POST with `X-HTTP-Method-Override: GET`).
fn price(api: &PartnerClient, offers: &Value) -> reqwest::RequestBuilder {
    api.post("/v1/shopping/flight-offers/pricing")
        .header("X-HTTP-Method-Override", "GET")
        .header("content-type", "application/vnd.amadeus+json")
        .body(
            json!({"data": {"type": "flight-offers-pricing", "flightOffers": offers}}).to_string(),
        )
}

/// A key that is never a partner key: the request is safe to resend as it is (a read, or
/// a DELETE), so rule (c) always allows it.
fn natural(field: &str) -> Option<KeySupport> {
    Some(KeySupport {
        field: field.into(),
        max_len: 255,
        retention: Duration::from_secs(10 * 365 * 24 * 3600),
        safety_margin: Duration::from_secs(24 * 3600),
    })
}

fn base_profile(strategy: &str) -> CellProfile {
    CellProfile {
        key: None,
        replay: ReplayModel::None,
        lookup: Lookup::None,
        settle_time: Duration::from_secs(30),
        doubt_horizon: Duration::from_secs(3600),
        call_timeout: Duration::from_secs(30),
        retry: RetryPolicy::default(),
        approval: ApprovalPolicy::Never,
        rate_limit: Some(idem_core::profile::RateLimit::per_second(10)),
        strategy: strategy.into(),
    }
}

fn arg_err(cell: &str, reason: impl Into<String>) -> InvalidArgs {
    InvalidArgs {
        cell: cell.into(),
        reason: reason.into(),
    }
}

/// The JSON Schema of `flight_offers` (offers as returned by flight-offers search).
fn offers_schema() -> Value {
    json!({"type": "array", "minItems": 1, "maxItems": 6,
           "items": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string"}}}})
}

fn check_offers(cell: &str, v: Option<&Value>) -> Result<(), InvalidArgs> {
    match v.and_then(Value::as_array) {
        Some(o) if !o.is_empty() && o.len() <= 6 && o.iter().all(|o| o["id"].is_string()) => Ok(()),
        _ => Err(arg_err(
            cell,
            "flight_offers: 1..=6 offer objects, each with an id",
        )),
    }
}

fn only(
    cell: &str,
    obj: &serde_json::Map<String, Value>,
    allowed: &[&str],
) -> Result<(), InvalidArgs> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(arg_err(cell, format!("unknown field {k:?}"))),
        None => Ok(()),
    }
}

/// `amadeus.price`: re-price flight offers (read-only). Arguments: `flight_offers`.
#[derive(Clone, Debug)]
pub struct AmadeusPrice {
    name: CellName,
    profile: CellProfile,
    api: PartnerClient,
}

impl AmadeusPrice {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let mut profile = base_profile("read-only: resent freely; no effect to reconcile");
        profile.key = natural("read-only (no effect)");
        profile.replay = ReplayModel::CurrentState;
        profile.lookup = Lookup::Strong;
        Self {
            name: CellName::new("amadeus.price").expect("valid"),
            api: PartnerClient::bearer(base_url, token, profile.call_timeout),
            profile,
        }
    }

    pub fn with_profile(mut self, f: impl FnOnce(&mut CellProfile)) -> Self {
        f(&mut self.profile);
        self.api = self.api.clone().with_timeout(self.profile.call_timeout);
        self
    }
}

#[async_trait]
impl Cell for AmadeusPrice {
    fn name(&self) -> &CellName {
        &self.name
    }
    fn profile(&self) -> &CellProfile {
        &self.profile
    }
    fn effectful(&self) -> bool {
        false
    }
    fn input_schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "description": "Confirm the price of flight offers (read-only; no effect).",
            "properties": {"flight_offers": offers_schema()},
            "required": ["flight_offers"],
            "additionalProperties": false
        })
    }

    fn validate(&self, args: &Value) -> Result<(), InvalidArgs> {
        let obj = args
            .as_object()
            .ok_or_else(|| arg_err("amadeus.price", "args must be an object"))?;
        check_offers("amadeus.price", obj.get("flight_offers"))?;
        only("amadeus.price", obj, &["flight_offers"])
    }
    async fn execute(&self, _: ActionId, args: &Value, _: &Attempt) -> ExecOutcome {
        let (status, body) =
            match send(price(&self.api, &args["flight_offers"]), "amadeus.price").await {
                Ok(r) => r,
                Err(o) => return o,
            };
        match status {
            200 => ExecOutcome::Succeeded(Receipt {
                partner_ref: body["data"]["flightOffers"][0]["price"]["grandTotal"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                response_digest: sha256_hex(canonical_json(&body["data"]).as_bytes()),
                detail: json!({"object": "flight-offers-pricing"}),
            }),
            429 => ExecOutcome::NotProcessed {
                reason: "429 too many requests".into(),
                retry_after: None,
            },
            s if s >= 500 => ExecOutcome::Ambiguous {
                reason: format!("{s} {}", first_error(&body).1),
                replayed_error: false,
            },
            s => ExecOutcome::Failed {
                reason: format!("{s} {:?}", first_error(&body)),
            },
        }
    }
    async fn reconcile(&self, _: ActionId, _: &Value, _: &[Attempt]) -> Verdict {
        // A price request has no effect: "not happened" is the truth, and it may run again.
        Verdict::NotHappened
    }
}

/// `amadeus.book`: create a flight order. Arguments: `flight_offers`, `travelers`,
/// optional `ticketing_delay_days` (DELAY_TO_CANCEL safety net, default 3), `contacts`.
#[derive(Clone, Debug)]
pub struct AmadeusBook {
    name: CellName,
    profile: CellProfile,
    api: PartnerClient,
}

impl AmadeusBook {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let profile = base_profile(
            "human-in-loop: re-price, then book once with an IDEM remark and DELAY_TO_CANCEL; \
             no key and no lookup, so any ambiguity goes to a person, never a blind retry",
        );
        Self {
            name: CellName::new("amadeus.book").expect("valid"),
            api: PartnerClient::bearer(base_url, token, profile.call_timeout),
            profile,
        }
    }

    pub fn with_profile(mut self, f: impl FnOnce(&mut CellProfile)) -> Self {
        f(&mut self.profile);
        self.api = self.api.clone().with_timeout(self.profile.call_timeout);
        self
    }
}

#[async_trait]
impl Cell for AmadeusBook {
    fn name(&self) -> &CellName {
        &self.name
    }
    fn profile(&self) -> &CellProfile {
        &self.profile
    }
    fn input_schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "description": "Book flight offers for travelers (re-priced first).",
            "properties": {
                "flight_offers": offers_schema(),
                "travelers": {"type": "array", "minItems": 1, "maxItems": 18, "items": {"type": "object"}},
                "ticketing_delay_days": {"type": "integer", "minimum": 1, "maximum": 30},
                "contacts": {}
            },
            "required": ["flight_offers", "travelers"],
            "additionalProperties": false
        })
    }

    fn validate(&self, args: &Value) -> Result<(), InvalidArgs> {
        let cell = "amadeus.book";
        let obj = args
            .as_object()
            .ok_or_else(|| arg_err(cell, "args must be an object"))?;
        check_offers(cell, obj.get("flight_offers"))?;
        match obj.get("travelers").and_then(Value::as_array) {
            Some(t) if !t.is_empty() && t.len() <= 18 && t.iter().all(Value::is_object) => {}
            _ => return Err(arg_err(cell, "travelers: 1..=18 traveler objects")),
        }
        if let Some(d) = obj.get("ticketing_delay_days") {
            if !d.as_u64().is_some_and(|d| (1..=30).contains(&d)) {
                return Err(arg_err(cell, "ticketing_delay_days: 1..=30"));
            }
        }
        only(
            cell,
            obj,
            &[
                "flight_offers",
                "travelers",
                "ticketing_delay_days",
                "contacts",
            ],
        )
    }
    async fn execute(&self, action: ActionId, args: &Value, _: &Attempt) -> ExecOutcome {
        // Re-price first (read-only): a definitive pricing failure means no booking at all.
        let (status, priced) =
            match send(price(&self.api, &args["flight_offers"]), "amadeus.price").await {
                Ok(r) => r,
                Err(ExecOutcome::Ambiguous { reason, .. }) => {
                    return ExecOutcome::NotProcessed {
                        reason: format!("re-pricing failed before booking: {reason}"),
                        retry_after: None,
                    }
                }
                Err(o) => return o,
            };
        match status {
            200 => {}
            400 => {
                return ExecOutcome::Failed {
                    reason: format!("re-pricing refused: {:?}", first_error(&priced)),
                }
            }
            s => {
                return ExecOutcome::NotProcessed {
                    reason: format!("re-pricing answered {s}; nothing booked"),
                    retry_after: None,
                }
            }
        }
        let days = args["ticketing_delay_days"].as_u64().unwrap_or(3);
        let mut data = json!({
            "type": "flight-order",
            "flightOffers": priced["data"]["flightOffers"],
            "travelers": args["travelers"],
            "remarks": {"general": [{"subType": "GENERAL_MISCELLANEOUS", "text": format!("IDEM {action}")}]},
            "ticketingAgreement": {"option": "DELAY_TO_CANCEL", "delay": format!("{days}D")},
        });
        if args["contacts"].is_array() {
            data["contacts"] = args["contacts"].clone();
        }
        let req = self
            .api
            .post("/v1/booking/flight-orders")
            .header("content-type", "application/vnd.amadeus+json")
            .body(json!({"data": data}).to_string());
        let (status, body) = match send(req, "amadeus.flight_order_create").await {
            Ok(r) => r,
            Err(o) => return o,
        };
        match status {
            200 | 201 => ExecOutcome::Succeeded(Receipt {
                partner_ref: body["data"]["id"].as_str().unwrap_or_default().to_owned(),
                response_digest: sha256_hex(canonical_json(&body["data"]).as_bytes()),
                detail: json!({"object": "flight-order", "pnr": body["data"]["associatedRecords"][0]["reference"]}),
            }),
            429 => ExecOutcome::NotProcessed {
                reason: "429 too many requests".into(),
                retry_after: None,
            },
            400 | 401 | 403 | 404 => {
                let (code, text) = first_error(&body);
                ExecOutcome::Failed {
                    reason: format!("{status} code {code}: {text}"),
                }
            }
            s => {
                let (code, text) = first_error(&body);
                ExecOutcome::Ambiguous {
                    reason: format!("{s} code {code} {text}: a PNR may exist"),
                    replayed_error: false,
                }
            }
        }
    }
    async fn reconcile(&self, _: ActionId, _: &Value, _: &[Attempt]) -> Verdict {
        Verdict::Unknowable {
            reason: "Amadeus has no key and no lookup except by the order id the lost answer \
                     carried: check the queue/PNR (remark IDEM <action id>)"
                .into(),
        }
    }
}

/// `amadeus.cancel`: delete a flight order. Arguments: `order_id`.
#[derive(Clone, Debug)]
pub struct AmadeusCancel {
    name: CellName,
    profile: CellProfile,
    api: PartnerClient,
}

impl AmadeusCancel {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let mut profile = base_profile(
            "DELETE is naturally idempotent: resent freely; a 404 after an earlier attempt \
             of ours means done; GET by id reconciles",
        );
        profile.key = natural("DELETE (naturally idempotent)");
        profile.replay = ReplayModel::CurrentState;
        profile.lookup = Lookup::Strong;
        Self {
            name: CellName::new("amadeus.cancel").expect("valid"),
            api: PartnerClient::bearer(base_url, token, profile.call_timeout),
            profile,
        }
    }

    pub fn with_profile(mut self, f: impl FnOnce(&mut CellProfile)) -> Self {
        f(&mut self.profile);
        self.api = self.api.clone().with_timeout(self.profile.call_timeout);
        self
    }

    fn path(args: &Value) -> String {
        format!(
            "/v1/booking/flight-orders/{}",
            args["order_id"].as_str().unwrap_or_default()
        )
    }

    fn receipt(id: &str) -> Receipt {
        Receipt {
            partner_ref: id.to_owned(),
            response_digest: sha256_hex(format!("cancelled {id}").as_bytes()),
            detail: json!({"object": "flight-order", "status": "cancelled"}),
        }
    }
}

#[async_trait]
impl Cell for AmadeusCancel {
    fn name(&self) -> &CellName {
        &self.name
    }
    fn profile(&self) -> &CellProfile {
        &self.profile
    }
    fn input_schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "description": "Cancel a flight order.",
            "properties": {
                "order_id": {"type": "string", "pattern": "^[A-Za-z0-9_=-]{1,128}$"}
            },
            "required": ["order_id"],
            "additionalProperties": false
        })
    }

    fn validate(&self, args: &Value) -> Result<(), InvalidArgs> {
        let cell = "amadeus.cancel";
        let obj = args
            .as_object()
            .ok_or_else(|| arg_err(cell, "args must be an object"))?;
        match obj.get("order_id").and_then(Value::as_str) {
            Some(id)
                if !id.is_empty()
                    && id.len() <= 128
                    && id.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='
                    }) => {}
            _ => return Err(arg_err(cell, "order_id: required flight order id")),
        }
        only(cell, obj, &["order_id"])
    }
    async fn execute(&self, action: ActionId, args: &Value, attempt: &Attempt) -> ExecOutcome {
        let req = self
            .api
            .delete(&Self::path(args))
            .header("X-Idem-Action-Id", action.to_string());
        let (status, body) = match send(req, "amadeus.flight_order_delete").await {
            Ok(r) => r,
            Err(o) => return o,
        };
        let id = args["order_id"].as_str().unwrap_or_default();
        match status {
            200 | 204 => ExecOutcome::Succeeded(Self::receipt(id)),
            404 if attempt.number > 1 => ExecOutcome::Succeeded(Self::receipt(id)),
            429 => ExecOutcome::NotProcessed {
                reason: "429 too many requests".into(),
                retry_after: None,
            },
            s if s >= 500 => ExecOutcome::Ambiguous {
                reason: format!("{s} {}", first_error(&body).1),
                replayed_error: false,
            },
            s => ExecOutcome::Failed {
                reason: format!("{s} {:?}", first_error(&body)),
            },
        }
    }
    async fn reconcile(&self, _: ActionId, args: &Value, _: &[Attempt]) -> Verdict {
        let req = self.api.get(&Self::path(args));
        match send(req, "amadeus.flight_order_get").await {
            Ok((404, _)) => {
                Verdict::Happened(Self::receipt(args["order_id"].as_str().unwrap_or_default()))
            }
            Ok((200, _)) => Verdict::NotHappened,
            Ok((s, _)) => Verdict::Unknown {
                reason: format!("GET answered {s}"),
            },
            Err(_) => Verdict::Unknown {
                reason: "GET failed".into(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_and_redaction() {
        let b = AmadeusBook::new("http://x", "amadeus-secret");
        let ok = json!({"flight_offers": [{"id": "1"}], "travelers": [{"id": "1"}]});
        assert!(b.validate(&ok).is_ok());
        assert!(b
            .validate(&json!({"flight_offers": [], "travelers": [{}]}))
            .unwrap_err()
            .reason
            .contains("flight_offers"));
        assert!(b
            .validate(&json!({"flight_offers": [{"id": "1"}]}))
            .unwrap_err()
            .reason
            .contains("travelers"));
        assert!(!format!("{b:?}").contains("amadeus-secret"));
        let c = AmadeusCancel::new("http://x", "t");
        assert!(c.validate(&json!({"order_id": "eJzT/../x"})).is_err());
        assert!(c.validate(&json!({"order_id": "eJzTd9f3"})).is_ok());
        assert_eq!(b.profile().lookup, Lookup::None);
        assert!(b.profile().key.is_none());
    }
}
