//! `amadeus.price`: re-price flight offers. Read-only, so resent freely; nothing to
//! reconcile.

use async_trait::async_trait;
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::profile::{Lookup, ReplayModel};
use idem_core::{ActionId, ExecOutcome, Receipt, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{base_profile, first_error, natural, price, send, FlightOffer};
use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

/// The `amadeus.price` cell.
#[derive(Clone, Debug)]
pub struct AmadeusPrice {
    parts: Parts,
}

/// Confirm the price of flight offers (read-only; no effect).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    #[schemars(length(min = 1, max = 6))]
    pub flight_offers: Vec<FlightOffer>,
}

impl CellArgs for Args {
    fn summary(&self) -> Option<String> {
        Some(format!(
            "Price {} (no booking, no charge)",
            super::describe_offers(&self.flight_offers)
        ))
    }
}

impl AmadeusPrice {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let mut profile = base_profile("read-only: resent freely; no effect to reconcile");
        profile.key = natural("read-only (no effect)");
        profile.replay = ReplayModel::CurrentState;
        profile.lookup = Lookup::Strong;
        let api = PartnerClient::bearer(base_url, token, profile.call_timeout);
        Self {
            parts: Parts::new("amadeus.price", profile, api),
        }
    }
}

#[async_trait]
impl TypedCell for AmadeusPrice {
    type Args = Args;
    const CARD: Card = crate::card!("price.md");
    const EFFECTFUL: bool = false;

    crate::parts!();

    async fn send(&self, _: ActionId, args: &Args, _: &Attempt) -> ExecOutcome {
        let req = price(&self.parts.api, &args.flight_offers);
        let (status, body) = match send(req, "amadeus.price").await {
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

    async fn find(&self, _: ActionId, _: &Args, _: &[Attempt]) -> Verdict {
        // A price request has no effect: "not happened" is the truth, and it may run again.
        Verdict::NotHappened
    }
}
