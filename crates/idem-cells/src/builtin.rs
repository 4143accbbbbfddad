//! The built-in integrations: the one list that the operator binary, the demo, the tests
//! and the card index build from. Adding a cell to an integration touches its folder only
//! (its file and the line in the folder's `cells`); a new integration adds its folder and
//! one line here.

use std::sync::Arc;

use idem_core::CellProfile;

use crate::kit::TypedCell;
use crate::{Cell, Registry};

/// Where one partner is and how idem authenticates to it.
#[derive(Clone, Default)]
pub struct Access {
    pub base: String,
    /// The secret (API key, token, auth token); never in `Debug`.
    pub credential: String,
    /// An account identifier sent beside the secret (Twilio's account SID).
    pub account: Option<String>,
    /// Where the partner calls back (Twilio's status callback).
    pub callback: Option<String>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("base", &self.base)
            .field("credential", &"<redacted>")
            .field("account", &self.account)
            .field("callback", &self.callback)
            .finish()
    }
}

/// Changes a deployment makes to a cell's profile, by cell name (configuration, flags,
/// test timings).
pub type Tune<'a> = dyn Fn(&str, &mut CellProfile) + 'a;

/// One integration: a partner and the cells idem runs against it.
#[derive(Debug, Clone, Copy)]
pub struct Integration {
    /// The partner's name, the first part of its cells' names (`stripe` in `stripe.charge`).
    pub partner: &'static str,
    /// The environment variable a deployment keeps the secret in.
    pub credential_env: &'static str,
    /// A credential idem's simulator accepts, used when none is configured.
    pub placeholder: &'static str,
    /// Where `idem-lab sim <partner>` listens by default: the base when none is configured.
    pub local_simulator: &'static str,
    /// The cells, built against `access` and tuned.
    pub cells: fn(&Access, &Tune<'_>) -> Vec<Arc<dyn Cell>>,
}

/// Every built-in integration.
pub const INTEGRATIONS: &[Integration] = &[
    crate::stripe::INTEGRATION,
    crate::hubspot::INTEGRATION,
    crate::slack::INTEGRATION,
    crate::twilio::INTEGRATION,
    crate::gmail::INTEGRATION,
    crate::amadeus::INTEGRATION,
];

/// The integration whose cells include `cell` (`stripe.charge` → stripe).
pub fn integration_of(cell: &str) -> Option<&'static Integration> {
    let partner = cell.split('.').next()?;
    INTEGRATIONS.iter().find(|i| i.partner == partner)
}

/// A registry of every built-in cell; `access` says where each partner is.
pub fn registry(access: impl Fn(&Integration) -> Access, tune: &Tune<'_>) -> Registry {
    INTEGRATIONS
        .iter()
        .flat_map(|i| (i.cells)(&access(i), tune))
        .fold(Registry::new(), Registry::with_arc)
}

/// `cell` with `tune` applied to its profile, ready for a registry.
pub fn tuned<C: TypedCell>(cell: C, tune: &Tune<'_>) -> Arc<dyn Cell> {
    let name = cell.parts().name.to_string();
    Arc::new(cell.with_profile(|p| tune(&name, p)))
}

/// An example action for a built-in cell and the sentence the approver console shows for
/// it: the cells' own test and the console's browser test read the same list.
#[derive(Debug, Clone)]
pub struct HeldExample {
    pub cell: &'static str,
    pub args: serde_json::Value,
    pub sentence: &'static str,
}

/// One example for every built-in cell with an effect (one a policy can hold).
pub fn held_examples() -> Vec<HeldExample> {
    use serde_json::json;
    let offer = json!({"id": "1", "price": {"grandTotal": "512.40", "currency": "EUR"},
        "itineraries": [{"segments": [
            {"departure": {"iataCode": "LHR", "at": "2026-12-20T10:00:00"}, "arrival": {"iataCode": "DUB"}, "carrierCode": "EI", "number": "155"},
            {"departure": {"iataCode": "DUB"}, "arrival": {"iataCode": "JFK"}, "carrierCode": "EI", "number": "105"}]}]});
    let example = |cell, args, sentence| HeldExample {
        cell,
        args,
        sentence,
    };
    vec![
        example("stripe.charge", json!({"amount": 60000, "currency": "usd", "customer": "cus_big", "description": "Annual plan, ACME Corp"}),
            "Charge $600.00 USD to cus_big — Annual plan, ACME Corp"),
        example("stripe.refund", json!({"payment_intent": "pi_123", "reason": "requested_by_customer"}),
            "Refund all of payment pi_123 — reason: requested by customer"),
        example("twilio.sms.send", json!({"to": "+15005550006", "from": "+15005550001", "body": "Your code is 1234"}),
            "Send SMS to +15005550006 from +15005550001: “Your code is 1234”"),
        example("slack.post", json!({"channel": "C0123", "text": "deploy done"}),
            "Post to Slack channel C0123: “deploy done”"),
        example("gmail.send", json!({"to": "ana@example.com", "subject": "Invoice", "text": "Attached."}),
            "Send email to ana@example.com, subject “Invoice”: “Attached.”"),
        example("hubspot.upsert", json!({"id": "ana@example.com", "properties": {"firstname": "Ana"}}),
            "Create or update the HubSpot contact whose email is ana@example.com, setting firstname"),
        example("hubspot.company.upsert", json!({"domain": "acme.com", "properties": {"name": "ACME"}}),
            "Create or update the HubSpot company whose domain is acme.com, setting name"),
        example("amadeus.book", json!({"flight_offers": [offer], "travelers": [{"id": "1"}, {"id": "2"}]}),
            "Book flight LHR→JFK (EI155, EI105), departing 2026-12-20T10:00:00, 512.40 EUR for 2 travellers"),
        example("amadeus.cancel", json!({"order_id": "eJzTd9f3NjIJdzUCAAtXAmE="}),
            "Cancel flight order eJzTd9f3NjIJdzUCAAtXAmE="),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every built-in cell, pointed at a closed port: for what needs no partner.
    fn offline() -> Registry {
        registry(
            |i| Access {
                base: "http://127.0.0.1:9".into(),
                credential: i.placeholder.into(),
                ..Access::default()
            },
            &|_, _| {},
        )
    }

    /// What the approver console shows first, for every built-in cell an approval rule
    /// can hold: one sentence, money in major units with its currency.
    #[test]
    fn every_builtin_cell_says_what_it_will_do() {
        let r = offline();
        let examples = held_examples();
        for cell in r.iter().filter(|c| c.effectful()) {
            assert!(
                examples.iter().any(|e| e.cell == cell.name().as_str()),
                "{} has no example sentence",
                cell.name()
            );
        }
        for e in examples {
            let c = r
                .get(e.cell)
                .unwrap_or_else(|| panic!("{} is built in", e.cell));
            assert_eq!(
                c.summary(&e.args).as_deref(),
                Some(e.sentence),
                "{}",
                e.cell
            );
        }
        // Invalid arguments get no sentence (the console falls back to the arguments).
        let c = r.get("stripe.charge").unwrap();
        assert_eq!(c.summary(&serde_json::json!({"amount": "lots"})), None);
    }

    #[test]
    fn every_builtin_cell_has_a_card_answering_the_three_questions() {
        let r = offline();
        assert!(r.get("stripe.charge").is_some() && r.get("hubspot.company.upsert").is_some());
        let index =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/cells.md"))
                .expect("docs/cells.md");
        for c in r.iter() {
            let text = c
                .card_text()
                .expect("a built-in cell has its card compiled in");
            for q in ["key?", "lookup?", "human?", "## Failure modes", "Sources"] {
                assert!(text.contains(q), "{}: card lacks {q:?}", c.name());
            }
            let on_disk = format!("{}/../../{}", env!("CARGO_MANIFEST_DIR"), c.card());
            assert!(
                std::path::Path::new(&on_disk).is_file(),
                "{}: card path {} is not a file",
                c.name(),
                c.card()
            );
            assert_eq!(
                integration_of(c.name().as_str()).map(|i| i.partner),
                c.name().as_str().split('.').next()
            );
            assert!(
                index.contains(&format!("](../{})", c.card())),
                "docs/cells.md does not link {}'s card {}",
                c.name(),
                c.card()
            );
        }
    }
}
