//! `amadeus.book`: create a flight order. The worst cell: no key and no lookup, so every
//! ambiguity goes to a person, never a blind retry.

use async_trait::async_trait;
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::{ActionId, ExecOutcome, Receipt, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{base_profile, first_error, price, send, FlightOffer};
use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

/// The `amadeus.book` cell.
#[derive(Clone, Debug)]
pub struct AmadeusBook {
    parts: Parts,
}

/// Book flight offers for travelers (re-priced first).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    #[schemars(length(min = 1, max = 6))]
    pub flight_offers: Vec<FlightOffer>,
    /// Traveler objects as Amadeus takes them.
    #[schemars(length(min = 1, max = 18))]
    pub travelers: Vec<Map<String, Value>>,
    /// The DELAY_TO_CANCEL safety net: unticketed orders cancel after this many days
    /// (default 3).
    #[schemars(range(min = 1, max = 30))]
    pub ticketing_delay_days: Option<u8>,
    /// Contact objects as Amadeus takes them.
    pub contacts: Option<Vec<Map<String, Value>>>,
}

impl CellArgs for Args {
    fn summary(&self) -> Option<String> {
        let n = self.travelers.len();
        Some(format!(
            "Book {} for {n} traveller{}",
            super::describe_offers(&self.flight_offers),
            if n == 1 { "" } else { "s" }
        ))
    }
}

impl AmadeusBook {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let profile = base_profile(
            "human-in-loop: re-price, then book once with an IDEM remark and DELAY_TO_CANCEL; \
             no key and no lookup, so any ambiguity goes to a person, never a blind retry",
        );
        let api = PartnerClient::bearer(base_url, token, profile.call_timeout);
        Self {
            parts: Parts::new("amadeus.book", profile, api),
        }
    }
}

#[async_trait]
impl TypedCell for AmadeusBook {
    type Args = Args;
    const CARD: Card = crate::card!("book.md");

    crate::parts!();

    async fn send(&self, action: ActionId, args: &Args, _: &Attempt) -> ExecOutcome {
        // Re-price first (read-only): a definitive pricing failure means no booking at all.
        let req = price(&self.parts.api, &args.flight_offers);
        let (status, priced) = match send(req, "amadeus.price").await {
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
        let days = args.ticketing_delay_days.unwrap_or(3);
        let mut data = json!({
            "type": "flight-order",
            "flightOffers": priced["data"]["flightOffers"],
            "travelers": args.travelers,
            "remarks": {"general": [{"subType": "GENERAL_MISCELLANEOUS", "text": format!("IDEM {action}")}]},
            "ticketingAgreement": {"option": "DELAY_TO_CANCEL", "delay": format!("{days}D")},
        });
        if let Some(contacts) = &args.contacts {
            data["contacts"] = json!(contacts);
        }
        let req = self
            .parts
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

    async fn find(&self, _: ActionId, _: &Args, _: &[Attempt]) -> Verdict {
        Verdict::Unknowable {
            reason: "Amadeus has no key and no lookup except by the order id the lost answer \
                     carried: check the queue/PNR (remark IDEM <action id>)"
                .into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Cell;
    use idem_core::profile::Lookup;

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
        let c = super::super::AmadeusCancel::new("http://x", "t");
        assert!(c.validate(&json!({"order_id": "eJzT/../x"})).is_err());
        assert!(c.validate(&json!({"order_id": "eJzTd9f3"})).is_ok());
        assert_eq!(b.profile().lookup, Lookup::None);
        assert!(b.profile().key.is_none());
    }
}
