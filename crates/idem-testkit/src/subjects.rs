//! The conformance subjects for idem's own cells: each cell with its simulator.

use idem_cells::hubspot::HubSpotCompanyUpsert;
use idem_cells::TypedCell as _;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use idem_cells::{
    AmadeusBook, AmadeusCancel, AmadeusPrice, Cell, DeclarativeCell, GmailSend, HubSpotUpsert,
    SlackPost, StripeCharge, StripeRefund, TwilioSms,
};
use idem_core::{ActionId, CellProfile};
use idem_sim::{
    AmadeusSim, Fault, FaultRates, GmailConfig, GmailSim, HubSpotSim, IetfConfig, IetfSim,
    SimServer, SlackSim, StripeSimConfig, TwilioSim,
};
use serde_json::{json, Value};

use crate::conformance::Subject;
use crate::{StripeFixture, TEST_SECRET};

fn stripe_requests(f: &StripeFixture, route: &str) -> usize {
    f.sim.requests().iter().filter(|r| r.route == route).count()
}

/// `stripe.charge`, reconciling by list (no lag) or, with `search`, by Search.
#[derive(Debug)]
pub struct StripeChargeSubject {
    pub stripe: StripeFixture,
    search: bool,
}

impl StripeChargeSubject {
    pub async fn start() -> Self {
        Self {
            stripe: StripeFixture::start(StripeSimConfig::default()).await,
            search: false,
        }
    }

    /// Reconciling through Search, whose index lags (bound: 2 s).
    pub async fn start_with_search() -> Self {
        Self {
            stripe: StripeFixture::start(StripeSimConfig::default()).await,
            search: true,
        }
    }
}

#[async_trait]
impl Subject for StripeChargeSubject {
    fn cell(&self, profile: &dyn Fn(&mut CellProfile)) -> Arc<dyn Cell> {
        let c = StripeCharge::new(self.stripe.base_url(), TEST_SECRET);
        let c = if self.search {
            c.reconcile_via_search(Duration::from_secs(2))
        } else {
            c
        };
        Arc::new(c.with_profile(profile))
    }

    async fn args(&self, n: usize) -> Value {
        json!({"amount": 1000 + n as i64, "currency": "usd", "customer": "cus_conformance"})
    }

    fn malformed(&self) -> Vec<Value> {
        vec![
            json!({"currency": "usd"}),
            json!({"amount": -5, "currency": "usd"}),
            json!({"amount": 5, "currency": "US Dollars"}),
            json!({"amount": 5, "currency": "usd", "amont": 5}),
        ]
    }

    fn effects_for(&self, action: ActionId) -> usize {
        self.stripe.sim.effects_for(&action.to_string())
    }

    fn effect_requests(&self) -> usize {
        stripe_requests(&self.stripe, "POST /v1/payment_intents")
    }

    fn script(&self, faults: Vec<Fault>) {
        self.stripe.sim.script(faults);
    }

    fn set_lookup_lag(&self, lag: Duration) -> bool {
        self.stripe.sim.update_config(|c| c.search_lag = lag);
        self.search
    }

    fn set_key_retention(&self, retention: Duration) -> bool {
        self.stripe
            .sim
            .update_config(|c| c.key_retention = retention);
        true
    }

    fn may_need_human(&self) -> bool {
        false
    }
}

/// `stripe.refund` against charges made in the simulator beforehand.
#[derive(Debug)]
pub struct StripeRefundSubject {
    pub stripe: StripeFixture,
}

impl StripeRefundSubject {
    pub async fn start() -> Self {
        Self {
            stripe: StripeFixture::start(StripeSimConfig::default()).await,
        }
    }
}

#[async_trait]
impl Subject for StripeRefundSubject {
    fn cell(&self, profile: &dyn Fn(&mut CellProfile)) -> Arc<dyn Cell> {
        Arc::new(StripeRefund::new(self.stripe.base_url(), TEST_SECRET).with_profile(profile))
    }

    async fn args(&self, n: usize) -> Value {
        let pi = self.stripe.sim.create_succeeded_intent(5000, "usd");
        json!({"payment_intent": pi, "amount": 1000 + n as i64, "reason": "requested_by_customer"})
    }

    fn malformed(&self) -> Vec<Value> {
        vec![
            json!({}),
            json!({"payment_intent": "ch_123"}),
            json!({"payment_intent": "pi_123", "amount": 0}),
            json!({"payment_intent": "pi_123", "reason": "bored"}),
        ]
    }

    fn effects_for(&self, action: ActionId) -> usize {
        self.stripe.sim.effects_for(&action.to_string())
    }

    fn effect_requests(&self) -> usize {
        stripe_requests(&self.stripe, "POST /v1/refunds")
    }

    fn script(&self, faults: Vec<Fault>) {
        self.stripe.sim.script(faults);
    }

    fn set_lookup_lag(&self, _: Duration) -> bool {
        // Refunds are listed, never searched: the list reads its writes.
        false
    }

    fn set_key_retention(&self, retention: Duration) -> bool {
        self.stripe
            .sim
            .update_config(|c| c.key_retention = retention);
        true
    }

    fn may_need_human(&self) -> bool {
        false
    }
}

/// `hubspot.upsert` (or, from [`HubSpotSubject::company`], `hubspot.company.upsert`)
/// against the HubSpot simulator.
#[derive(Debug)]
pub struct HubSpotSubject {
    pub sim: HubSpotSim,
    pub server: SimServer,
    company: bool,
}

/// The access token the HubSpot simulator accepts in tests.
pub const HUBSPOT_TEST_TOKEN: &str = "pat-idem-testkit";

impl HubSpotSubject {
    pub async fn start() -> Self {
        let sim = HubSpotSim::new(1, FaultRates::default());
        // What a portal's admin does once for hubspot.company.upsert.
        sim.add_unique_property("companies", idem_cells::hubspot::COMPANY_UNIQUE_PROPERTY);
        let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
            .await
            .expect("bind a local port for the simulator");
        Self {
            sim,
            server,
            company: false,
        }
    }

    /// The subject for `hubspot.company.upsert`.
    pub async fn company() -> Self {
        Self {
            company: true,
            ..Self::start().await
        }
    }
}

#[async_trait]
impl Subject for HubSpotSubject {
    fn cell(&self, profile: &dyn Fn(&mut CellProfile)) -> Arc<dyn Cell> {
        let base = self.server.base_url();
        if self.company {
            Arc::new(HubSpotCompanyUpsert::new(base, HUBSPOT_TEST_TOKEN).with_profile(profile))
        } else {
            Arc::new(HubSpotUpsert::new(base, HUBSPOT_TEST_TOKEN).with_profile(profile))
        }
    }

    async fn args(&self, n: usize) -> Value {
        let unique = uuid::Uuid::new_v4().simple();
        if self.company {
            return json!({
                "domain": format!("agent{n}-{unique}.example.com"),
                "properties": {"name": format!("Agent {n} Ltd"), "industry": "COMPUTER_SOFTWARE", "size": n},
            });
        }
        json!({
            "id": format!("agent{n}-{unique}@example.com"),
            "properties": {"firstname": "Ada", "lifecyclestage": "lead", "score": n},
        })
    }

    fn malformed(&self) -> Vec<Value> {
        if self.company {
            return vec![
                json!({"properties": {"name": "Acme"}}),
                json!({"domain": "acme.example"}),
                json!({"domain": "Acme Corp", "properties": {}}),
                json!({"domain": "acme.example", "properties": {"tags": ["x"]}}),
                json!({"domain": "acme.example", "properties": {}, "object_type": "deals"}),
            ];
        }
        vec![
            json!({"properties": {"firstname": "Ada"}}),
            json!({"id": "a@example.com"}),
            json!({"id": "a@example.com", "properties": {"tags": ["x"]}}),
            json!({"id": "a@example.com", "properties": {}, "object_type": "../deals"}),
        ]
    }

    fn effects_for(&self, action: ActionId) -> usize {
        self.sim.core.effects_for(&action.to_string())
    }

    fn effect_requests(&self) -> usize {
        self.sim.upsert_requests()
    }

    fn script(&self, faults: Vec<Fault>) {
        self.sim.core.script(faults);
    }

    fn set_lookup_lag(&self, _: Duration) -> bool {
        // Reads by unique property see every write at once.
        false
    }

    fn set_key_retention(&self, _: Duration) -> bool {
        // A natural key never expires at the partner.
        false
    }

    fn may_need_human(&self) -> bool {
        false
    }
}

/// The declarative `http.idempotent` cell defined by `examples/cells/acme.payout.toml`,
/// against the generic IETF Idempotency-Key simulator.
#[derive(Debug)]
pub struct DeclarativeSubject {
    pub sim: IetfSim,
    pub server: SimServer,
}

/// The example configuration the subject (and the demo) loads.
pub const EXAMPLE_CELL_CONFIG: &str = include_str!("../../../examples/cells/acme.payout.toml");

impl DeclarativeSubject {
    pub async fn start() -> Self {
        let sim = IetfSim::new(1, FaultRates::default(), IetfConfig::default());
        let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
            .await
            .expect("bind a local port for the simulator");
        Self { sim, server }
    }
}

#[async_trait]
impl Subject for DeclarativeSubject {
    fn cell(&self, profile: &dyn Fn(&mut CellProfile)) -> Arc<dyn Cell> {
        Arc::new(
            DeclarativeCell::from_toml(EXAMPLE_CELL_CONFIG)
                .expect("the example config is valid")
                .with_base(self.server.base_url())
                .with_token("tok_idem_testkit")
                .with_profile(profile),
        )
    }

    async fn args(&self, n: usize) -> Value {
        json!({"amount": 1000 + n as i64, "currency": "eur", "destination": "acct_conformance"})
    }

    fn malformed(&self) -> Vec<Value> {
        vec![
            json!({"currency": "eur", "destination": "acct_1"}),
            json!({"amount": "1000", "currency": "eur", "destination": "acct_1"}),
            json!({"amount": 1000, "currency": "eur", "destination": "acct_1", "memo": 5}),
            json!({"amount": 1000, "currency": "eur", "destination": "acct_1", "extra": true}),
        ]
    }

    fn effects_for(&self, action: ActionId) -> usize {
        self.sim.effects_for(&action.to_string())
    }

    fn effect_requests(&self) -> usize {
        self.sim.create_requests()
    }

    fn script(&self, faults: Vec<Fault>) {
        self.sim.core.script(faults);
    }

    fn set_lookup_lag(&self, _: Duration) -> bool {
        // The example declares a read-your-writes lookup (lag_secs = 0); lagging the
        // simulator would test a configuration error, not the cell.
        false
    }

    fn set_key_retention(&self, retention: Duration) -> bool {
        self.sim.update_config(|c| c.key_retention = retention);
        true
    }

    fn may_need_human(&self) -> bool {
        false
    }
}

/// `slack.post` against the Slack simulator (history lag bound 2 s in the profile).
#[derive(Debug)]
pub struct SlackSubject {
    pub sim: SlackSim,
    pub server: SimServer,
}

impl SlackSubject {
    pub async fn start() -> Self {
        // Slack's one history request a minute, run sixty times faster; 15 a page as is.
        let sim = SlackSim::new(1, FaultRates::default(), Duration::ZERO)
            .with_history_rate(Duration::from_secs(1));
        let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
            .await
            .expect("bind a local port for the simulator");
        Self { sim, server }
    }
}

#[async_trait]
impl Subject for SlackSubject {
    fn cell(&self, profile: &dyn Fn(&mut CellProfile)) -> Arc<dyn Cell> {
        Arc::new(
            SlackPost::new(self.server.base_url(), "xoxb-idem-testkit").with_profile(|p| {
                p.lookup = idem_core::profile::Lookup::Eventual {
                    lag_bound: Duration::from_secs(2),
                };
                profile(p);
            }),
        )
    }

    async fn args(&self, n: usize) -> Value {
        json!({"channel": "C0CONFORM", "text": format!("deploy {n} finished")})
    }

    fn malformed(&self) -> Vec<Value> {
        vec![
            json!({"text": "hi"}),
            json!({"channel": "#general", "text": "hi"}),
            json!({"channel": "C0CONFORM", "text": ""}),
            json!({"channel": "C0CONFORM", "text": "hi", "as_user": true}),
        ]
    }

    fn effects_for(&self, action: ActionId) -> usize {
        self.sim.core.effects_for(&action.to_string())
    }

    fn effect_requests(&self) -> usize {
        self.sim.post_requests()
    }

    fn script(&self, faults: Vec<Fault>) {
        self.sim.core.script(faults);
    }

    fn set_lookup_lag(&self, lag: Duration) -> bool {
        self.sim.set_history_lag(lag);
        true
    }

    fn set_key_retention(&self, _: Duration) -> bool {
        false
    }

    fn may_need_human(&self) -> bool {
        false
    }
}

/// `twilio.sms.send` against the Twilio simulator (list lag bound 2 s in the profile).
#[derive(Debug)]
pub struct TwilioSubject {
    pub sim: TwilioSim,
    pub server: SimServer,
}

/// The account the Twilio subject and demo use.
pub const TWILIO_TEST_ACCOUNT: &str = "AC00000000000000000000000000000001";

impl TwilioSubject {
    pub async fn start() -> Self {
        let sim = TwilioSim::new(1, FaultRates::default(), Duration::ZERO);
        let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
            .await
            .expect("bind a local port for the simulator");
        Self { sim, server }
    }
}

#[async_trait]
impl Subject for TwilioSubject {
    fn cell(&self, profile: &dyn Fn(&mut CellProfile)) -> Arc<dyn Cell> {
        Arc::new(
            TwilioSms::new(
                self.server.base_url(),
                TWILIO_TEST_ACCOUNT,
                "twilio-test-token",
                "https://hooks.example/twilio/status",
            )
            .with_profile(|p| {
                p.lookup = idem_core::profile::Lookup::Eventual {
                    lag_bound: Duration::from_secs(2),
                };
                profile(p);
            }),
        )
    }

    async fn args(&self, n: usize) -> Value {
        json!({
            "to": format!("+1555{:07}", n + 1000 * (uuid::Uuid::new_v4().as_u128() % 9000) as usize),
            "from": "+15550000000",
            "body": format!("Your code is {}", 100_000 + n),
        })
    }

    fn malformed(&self) -> Vec<Value> {
        vec![
            json!({"from": "+15550000000", "body": "hi"}),
            json!({"to": "5551234", "from": "+15550000000", "body": "hi"}),
            json!({"to": "+15551234567", "body": "hi"}),
            json!({"to": "+15551234567", "from": "+15550000000", "body": ""}),
        ]
    }

    fn effects_for(&self, action: ActionId) -> usize {
        self.sim.core.effects_for(&action.to_string())
    }

    fn effect_requests(&self) -> usize {
        self.sim.create_requests()
    }

    fn script(&self, faults: Vec<Fault>) {
        self.sim.core.script(faults);
    }

    fn set_lookup_lag(&self, lag: Duration) -> bool {
        self.sim.set_list_lag(lag);
        true
    }

    fn set_key_retention(&self, _: Duration) -> bool {
        false
    }

    fn may_need_human(&self) -> bool {
        // At-most-once: a message that cannot be found is a person's call.
        true
    }
}

/// `gmail.send` against the Gmail simulator (worse-case knobs: Gmail replaces client
/// Message-IDs; search lag bound 2 s in the profile).
#[derive(Debug)]
pub struct GmailSubject {
    pub sim: GmailSim,
    pub server: SimServer,
}

impl GmailSubject {
    pub async fn start() -> Self {
        let sim = GmailSim::new(1, FaultRates::default(), GmailConfig::default());
        let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
            .await
            .expect("bind a local port for the simulator");
        Self { sim, server }
    }
}

#[async_trait]
impl Subject for GmailSubject {
    fn cell(&self, profile: &dyn Fn(&mut CellProfile)) -> Arc<dyn Cell> {
        Arc::new(
            GmailSend::new(self.server.base_url(), "ya29.idem-testkit").with_profile(|p| {
                p.lookup = idem_core::profile::Lookup::Eventual {
                    lag_bound: Duration::from_secs(2),
                };
                profile(p);
            }),
        )
    }

    async fn args(&self, n: usize) -> Value {
        json!({"to": format!("customer{n}@example.com"), "subject": "Your receipt", "text": format!("Order {n} is paid.")})
    }

    fn malformed(&self) -> Vec<Value> {
        vec![
            json!({"subject": "hi", "text": "b"}),
            json!({"to": "a@example.com\r\nBcc: all@example.com", "subject": "hi", "text": "b"}),
            json!({"to": "a@example.com", "subject": "hi"}),
            json!({"to": "a@example.com", "subject": "hi", "text": "b", "attachments": []}),
        ]
    }

    fn effects_for(&self, action: ActionId) -> usize {
        self.sim.core.effects_for(&action.to_string())
    }

    fn effect_requests(&self) -> usize {
        self.sim.send_requests()
    }

    fn script(&self, faults: Vec<Fault>) {
        self.sim.core.script(faults);
    }

    fn set_lookup_lag(&self, lag: Duration) -> bool {
        self.sim.update_config(|c| c.search_lag = lag);
        true
    }

    fn set_key_retention(&self, _: Duration) -> bool {
        false
    }

    fn may_need_human(&self) -> bool {
        // An email that cannot be found is never resent automatically.
        true
    }
}

/// An Amadeus simulator on a local port, shared by the three Amadeus subjects.
#[derive(Debug)]
pub struct AmadeusFixture {
    pub sim: AmadeusSim,
    pub server: SimServer,
}

impl AmadeusFixture {
    pub async fn start() -> Self {
        let sim = AmadeusSim::new(1, FaultRates::default());
        let server = SimServer::start(sim.router(), ([127, 0, 0, 1], 0).into())
            .await
            .expect("bind a local port for the simulator");
        Self { sim, server }
    }
}

/// Which Amadeus cell a subject tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AmadeusCell {
    Price,
    Book,
    Cancel,
}

/// `amadeus.price`, `amadeus.book` or `amadeus.cancel` against the Amadeus simulator.
#[derive(Debug)]
pub struct AmadeusSubject {
    pub amadeus: AmadeusFixture,
    which: AmadeusCell,
}

impl AmadeusSubject {
    pub async fn start(which: AmadeusCell) -> Self {
        Self {
            amadeus: AmadeusFixture::start().await,
            which,
        }
    }
}

#[async_trait]
impl Subject for AmadeusSubject {
    fn cell(&self, profile: &dyn Fn(&mut CellProfile)) -> Arc<dyn Cell> {
        let base = self.amadeus.server.base_url();
        let token = "amadeus-testkit-token";
        match self.which {
            AmadeusCell::Price => Arc::new(AmadeusPrice::new(base, token).with_profile(profile)),
            AmadeusCell::Book => Arc::new(AmadeusBook::new(base, token).with_profile(profile)),
            AmadeusCell::Cancel => Arc::new(AmadeusCancel::new(base, token).with_profile(profile)),
        }
    }

    async fn args(&self, n: usize) -> Value {
        let offers = json!([{"id": format!("OFFER{n}"), "itineraries": [{"segments": [{"from": "NCE", "to": "JFK"}]}]}]);
        match self.which {
            AmadeusCell::Price => json!({"flight_offers": offers}),
            AmadeusCell::Book => json!({
                "flight_offers": offers,
                "travelers": [{"id": "1", "name": {"firstName": "ADA", "lastName": "LOVELACE"}}],
                "ticketing_delay_days": 2,
            }),
            AmadeusCell::Cancel => json!({"order_id": self.amadeus.sim.seed_order()}),
        }
    }

    fn malformed(&self) -> Vec<Value> {
        match self.which {
            AmadeusCell::Price => vec![
                json!({}),
                json!({"flight_offers": []}),
                json!({"flight_offers": [{"no_id": 1}]}),
            ],
            AmadeusCell::Book => vec![
                json!({"travelers": [{"id": "1"}]}),
                json!({"flight_offers": [{"id": "1"}], "travelers": []}),
                json!({"flight_offers": [{"id": "1"}], "travelers": [{"id": "1"}], "ticketing_delay_days": 90}),
            ],
            AmadeusCell::Cancel => vec![
                json!({}),
                json!({"order_id": "../../etc"}),
                json!({"order_id": "x", "force": true}),
            ],
        }
    }

    fn effects_for(&self, action: ActionId) -> usize {
        self.amadeus.sim.core.effects_for(&action.to_string())
    }

    fn effect_requests(&self) -> usize {
        match self.which {
            AmadeusCell::Price => self.amadeus.sim.price_requests(),
            AmadeusCell::Book => self.amadeus.sim.book_requests(),
            AmadeusCell::Cancel => self.amadeus.sim.cancel_requests(),
        }
    }

    fn script(&self, faults: Vec<Fault>) {
        if self.which == AmadeusCell::Book {
            // The booking re-prices first; let the fault hit the booking itself.
            let mut all = vec![];
            for f in faults {
                all.extend([None, Some(f)]);
            }
            // A `None` slot cannot be scripted; script only when there is a fault, and put
            // the pricing request's slot first as a harmless short delay.
            let script: Vec<Fault> = all
                .into_iter()
                .map(|f| f.unwrap_or(Fault::Delay(1)))
                .collect();
            self.amadeus.sim.core.script(script);
        } else {
            self.amadeus.sim.core.script(faults);
        }
    }

    fn set_lookup_lag(&self, _: Duration) -> bool {
        // GET by id reads its writes; book and price have no lookup at all.
        false
    }

    fn set_key_retention(&self, _: Duration) -> bool {
        false
    }

    fn may_need_human(&self) -> bool {
        // Booking: no key, no lookup: every ambiguity is a person's call (its card).
        self.which == AmadeusCell::Book
    }

    fn effectful(&self) -> bool {
        self.which != AmadeusCell::Price
    }
}
