//! `amadeus.cancel`: delete a flight order. DELETE is naturally idempotent; a 404 after an
//! earlier attempt of ours means done.

use async_trait::async_trait;
use idem_core::canonical::sha256_hex;
use idem_core::profile::{Lookup, ReplayModel};
use idem_core::{ActionId, ExecOutcome, Receipt, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::json;

use super::{base_profile, first_error, natural, send};
use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

/// The `amadeus.cancel` cell.
#[derive(Clone, Debug)]
pub struct AmadeusCancel {
    parts: Parts,
}

/// Cancel a flight order.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The flight order's id as Amadeus returned it (URL-encoded base64, e.g.
    /// `eJzTd9f3s4gKC%2FMEAAt8Ans%3D`), or the same id decoded.
    #[schemars(pattern("^([A-Za-z0-9_=+/-]|%[0-9A-Fa-f]{2}){1,256}$"))]
    pub order_id: String,
}

impl CellArgs for Args {
    fn summary(&self) -> Option<String> {
        Some(format!("Cancel flight order {}", self.order_id))
    }
}

/// What a path segment keeps unescaped (RFC 3986 unreserved).
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

impl Args {
    /// The order's URL: Amadeus ids are base64 (`/`, `+`, `=`), returned URL-encoded; the
    /// id is decoded once and encoded as one path segment, so both spellings reach the
    /// same order and a `/` never splits the path.
    fn path(&self) -> String {
        let id = percent_encoding::percent_decode_str(&self.order_id).decode_utf8_lossy();
        format!(
            "/v1/booking/flight-orders/{}",
            percent_encoding::utf8_percent_encode(&id, SEGMENT)
        )
    }
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
        let api = PartnerClient::bearer(base_url, token, profile.call_timeout);
        Self {
            parts: Parts::new("amadeus.cancel", profile, api),
        }
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
impl TypedCell for AmadeusCancel {
    type Args = Args;
    const CARD: Card = crate::card!("cancel.md");

    crate::parts!();

    async fn send(&self, action: ActionId, args: &Args, attempt: &Attempt) -> ExecOutcome {
        let req = self
            .parts
            .api
            .delete(&args.path())
            .header("X-Idem-Action-Id", action.to_string());
        let (status, body) = match send(req, "amadeus.flight_order_delete").await {
            Ok(r) => r,
            Err(o) => return o,
        };
        match status {
            200 | 204 => ExecOutcome::Succeeded(Self::receipt(&args.order_id)),
            404 if attempt.number > 1 => ExecOutcome::Succeeded(Self::receipt(&args.order_id)),
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

    async fn find(&self, _: ActionId, args: &Args, _: &[Attempt]) -> Verdict {
        let req = self.parts.api.get(&args.path());
        match send(req, "amadeus.flight_order_get").await {
            Ok((404, _)) => Verdict::Happened(Self::receipt(&args.order_id)),
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
