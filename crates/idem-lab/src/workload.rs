//! The agents' workload of the demo and the chaos soak: action `i` of a mix over every
//! cell, with the arguments an agent would send.

use anyhow::Result;
use idem_core::CellName;
use rand::Rng;

use crate::partners::Partners;

/// Cell and arguments of action `i`. Refunds and cancellations need an object the partner
/// already holds, so this seeds one in its simulator first.
pub(crate) fn action(
    i: usize,
    rng: &mut impl Rng,
    partners: &Partners,
) -> Result<(CellName, serde_json::Value)> {
    let offers = serde_json::json!([{"id": format!("OFFER{i}")}]);
    let (cell, args) = if i % 40 == 5 {
        // A flight booking: no key, no lookup; any doubt goes to a person.
        (
            "amadeus.book",
            serde_json::json!({
                "flight_offers": offers,
                "travelers": [{"id": "1", "name": {"firstName": "ADA", "lastName": "LOVELACE"}}],
            }),
        )
    } else if i % 40 == 15 {
        (
            "amadeus.price",
            serde_json::json!({"flight_offers": offers}),
        )
    } else if i % 40 == 25 {
        let order = partners.amadeus.seed_order();
        ("amadeus.cancel", serde_json::json!({"order_id": order}))
    } else if i.is_multiple_of(10) {
        // A receipt by email: never resent automatically.
        (
            "gmail.send",
            serde_json::json!({
                "to": format!("customer{i}@demo.example"),
                "subject": format!("Receipt for order {i}"),
                "text": "Thank you for your order.",
            }),
        )
    } else if i % 10 == 6 {
        // A one-time code by SMS: at most once, a person decides what is unprovable.
        (
            "twilio.sms.send",
            serde_json::json!({
                "to": format!("+1555{:07}", i % 10_000_000),
                "from": "+15550000000",
                "body": format!("Your code is {}", 100_000 + i),
            }),
        )
    } else if i % 10 == 1 {
        // A notification to one of 100 channels: Slack has no key (the history decides
        // doubts) and allows about one post a second per channel, which the worker holds.
        (
            "slack.post",
            serde_json::json!({"channel": format!("C0DEMO{:02}", (i / 10) % 100), "text": format!("order {i} charged")}),
        )
    } else if i % 10 == 2 {
        // A payout through the declarative http.idempotent cell.
        (
            "acme.payout",
            serde_json::json!({
                "amount": rng.gen_range(100..100_000),
                "currency": "eur",
                "destination": format!("acct_demo{:03}", i % 100),
            }),
        )
    } else if i % 5 == 3 {
        // A CRM upsert: naturally idempotent by the contact's email.
        (
            "hubspot.upsert",
            serde_json::json!({
                "id": format!("customer{i}@demo.example"),
                "properties": {"firstname": format!("Customer {i}"), "lifecyclestage": "customer"},
            }),
        )
    } else if i % 10 == 4 {
        // A refund of a charge made earlier (outside idem); 5% ask for more than is left,
        // which Stripe refuses: a definitive failure.
        let charged = rng.gen_range(1_000..100_000);
        let pi = partners.stripe.create_succeeded_intent(charged, "usd");
        let amount = if rng.gen_bool(0.05) {
            charged + 1
        } else {
            charged / 2
        };
        (
            "stripe.refund",
            serde_json::json!({"payment_intent": pi, "amount": amount, "reason": "requested_by_customer"}),
        )
    } else {
        let declined = rng.gen_bool(0.03);
        (
            "stripe.charge",
            serde_json::json!({
                "amount": rng.gen_range(100..100_000),
                "currency": "usd",
                "customer": format!("cus_demo{:03}", i % 100),
                "description": format!("demo order {i}"),
                "payment_method": if declined { "pm_card_chargeDeclined" } else { "pm_card_visa" },
            }),
        )
    };
    Ok((CellName::new(cell)?, args))
}
