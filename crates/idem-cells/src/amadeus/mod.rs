//! Amadeus Self-Service cells (partners.md §2 "Amadeus"): `amadeus.price` (read-only,
//! retried freely), `amadeus.book` (the worst cell: no key, no lookup — every ambiguity
//! goes to a person, never a blind retry) and `amadeus.cancel` (DELETE; a 404 after an
//! earlier attempt of ours means done).

use std::time::Duration;

use idem_core::profile::{ApprovalPolicy, KeySupport, Lookup, RateLimit, ReplayModel};
use idem_core::{CellProfile, ExecOutcome, RetryPolicy};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::http::PartnerClient;

mod book;
mod cancel;
mod price;

pub use book::AmadeusBook;
pub use cancel::AmadeusCancel;
pub use price::AmadeusPrice;

/// A response: status and JSON body, or the outcome when none came back.
pub(super) async fn send(
    rb: reqwest::RequestBuilder,
    op: &'static str,
) -> Result<(u16, Value), ExecOutcome> {
    crate::http::call(rb, op).await.map(|a| (a.status, a.body))
}

pub(super) fn first_error(body: &Value) -> (u64, String) {
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
pub(super) fn price(api: &PartnerClient, offers: &[FlightOffer]) -> reqwest::RequestBuilder {
    api.post("/v1/shopping/flight-offers/pricing")
        .header("X-HTTP-Method-Override", "GET")
        .header("content-type", "application/vnd.amadeus+json")
        .body(
            json!({"data": {"type": "flight-offers-pricing", "flightOffers": offers}}).to_string(),
        )
}

/// A key that is never a partner key: the request is safe to resend as it is (a read, or
/// a DELETE), so rule (c) always allows it.
pub(super) fn natural(field: &str) -> Option<KeySupport> {
    Some(KeySupport {
        field: field.into(),
        max_len: 255,
        retention: Duration::from_secs(10 * 365 * 24 * 3600),
        safety_margin: Duration::from_secs(24 * 3600),
    })
}

pub(super) fn base_profile(strategy: &str) -> CellProfile {
    CellProfile {
        key: None,
        replay: ReplayModel::None,
        lookup: Lookup::None,
        settle_time: Duration::from_secs(30),
        doubt_horizon: Duration::from_secs(3600),
        call_timeout: Duration::from_secs(30),
        retry: RetryPolicy::default(),
        approval: ApprovalPolicy::Never,
        rate_limit: Some(RateLimit::per_second(10)),
        strategy: strategy.into(),
    }
}

/// One offer as flight-offers search returned it: an id and the rest, passed through as it
/// came.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct FlightOffer {
    pub id: String,
    #[serde(flatten)]
    pub rest: serde_json::Map<String, Value>,
}

/// "flight LHR→JFK (BA117), departing 2026-12-20T10:00:00, 512.40 EUR" for each offer, from
/// what flight-offers search returns (first to last segment of each itinerary).
pub(crate) fn describe_offers(offers: &[FlightOffer]) -> String {
    let one = |o: &FlightOffer| -> String {
        let mut parts = vec![];
        for it in o
            .rest
            .get("itineraries")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let segs = it.get("segments").and_then(Value::as_array);
            let (Some(first), Some(last)) =
                (segs.and_then(|s| s.first()), segs.and_then(|s| s.last()))
            else {
                continue;
            };
            let at = |s: &Value, end: &str, field: &str| {
                s.pointer(&format!("/{end}/{field}"))
                    .and_then(Value::as_str)
                    .unwrap_or("?")
                    .to_owned()
            };
            let flights: Vec<String> = segs
                .into_iter()
                .flatten()
                .map(|s| {
                    format!(
                        "{}{}",
                        s["carrierCode"].as_str().unwrap_or(""),
                        s["number"].as_str().unwrap_or("")
                    )
                })
                .collect();
            parts.push(format!(
                "{}→{} ({}), departing {}",
                at(first, "departure", "iataCode"),
                at(last, "arrival", "iataCode"),
                flights.join(", "),
                at(first, "departure", "at")
            ));
        }
        let price = o
            .rest
            .get("price")
            .and_then(|p| {
                let total = p.get("grandTotal").or_else(|| p.get("total"))?.as_str()?;
                Some(format!(", {total} {}", p.get("currency")?.as_str()?))
            })
            .unwrap_or_default();
        if parts.is_empty() {
            format!("flight offer {}{price}", o.id)
        } else {
            format!("flight {}{price}", parts.join("; return "))
        }
    };
    offers.iter().map(one).collect::<Vec<_>>().join(" and ")
}

/// amadeus's cells, for [`crate::builtin`].
pub const INTEGRATION: crate::builtin::Integration = crate::builtin::Integration {
    partner: "amadeus",
    local_simulator: "http://127.0.0.1:12117",
    credential_env: "AMADEUS_ACCESS_TOKEN",
    placeholder: "amadeus-idem-simulator",
    cells,
};

fn cells(
    a: &crate::builtin::Access,
    tune: &crate::builtin::Tune<'_>,
) -> Vec<std::sync::Arc<dyn crate::Cell>> {
    use crate::builtin::tuned;
    vec![
        tuned(AmadeusPrice::new(&a.base, &a.credential), tune),
        tuned(AmadeusBook::new(&a.base, &a.credential), tune),
        tuned(AmadeusCancel::new(&a.base, &a.credential), tune),
    ]
}
