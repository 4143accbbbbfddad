//! A Stripe simulator (partners.md §2 "Stripe"): PaymentIntent create+confirm, retrieve,
//! list, search with indexing lag, Refund create and list, and the v1 Idempotency-Key store with its real
//! semantics: frozen replay (500s included) with `Idempotent-Replayed: true`, 400
//! `idempotency_error` on a parameter or endpoint mismatch, 409 while the first request is
//! in flight, 429 and 401 not stored, keys pruned after a retention window.

mod refunds;
mod routes;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Fault;
use crate::FaultRates;

/// Knobs. Undocumented behaviour defaults to the worse case.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct StripeSimConfig {
    pub seed: u64,
    /// How long a key is kept after first use (Stripe: at least 24 h).
    #[serde(with = "secs_f64")]
    pub key_retention: Duration,
    /// How long a new PaymentIntent stays invisible to Search (usually < 1 min).
    #[serde(with = "secs_f64")]
    pub search_lag: Duration,
    /// Store a 500 raised before the effect under the key (the worse case: replay then
    /// returns that 500 forever and only reconciliation can tell).
    pub store_fail_before: bool,
    pub faults: FaultRates,
}

impl Default for StripeSimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            key_retention: Duration::from_secs(24 * 3600),
            search_lag: Duration::from_secs(0),
            store_fail_before: true,
            faults: FaultRates::default(),
        }
    }
}

mod secs_f64 {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        f64::deserialize(d).map(|s| Duration::from_secs_f64(s.max(0.0)))
    }
}

/// One real effect the simulated Stripe performed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LedgerEntry {
    pub effect: String,
    pub id: String,
    pub amount: i64,
    pub currency: String,
    pub idem_action_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub created: i64,
}

/// One request as the simulator saw it (for "how many calls did the partner get").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestLog {
    pub route: String,
    pub idempotency_key: Option<String>,
    pub status: u16,
    pub fault: Option<Fault>,
    pub replayed: bool,
    /// The W3C `traceparent` the request carried, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

#[derive(Debug, Clone)]
enum KeyState {
    InFlight,
    Done { status: u16, body: Value },
}

#[derive(Debug, Clone)]
struct KeyEntry {
    endpoint: String,
    params: String,
    state: KeyState,
    first_used: Instant,
}

#[derive(Debug, Clone)]
struct Intent {
    body: Value,
    visible_to_search_at: Instant,
}

#[derive(Debug, Default)]
struct Inner {
    intents: Vec<Intent>,
    refunds: Vec<Value>,
    keys: HashMap<String, KeyEntry>,
    seen: HashMap<String, u64>,
    ledger: Vec<LedgerEntry>,
    requests: Vec<RequestLog>,
    script: std::collections::VecDeque<Fault>,
    next_id: u64,
    anon: u64,
    /// Customers told to the simulator, with their default payment method (or none).
    customers: HashMap<String, Option<String>>,
}

/// The simulator's state, shared by its routes and by in-process tests.
#[derive(Debug, Clone)]
pub struct StripeSim {
    config: Arc<Mutex<StripeSimConfig>>,
    inner: Arc<Mutex<Inner>>,
}

impl StripeSim {
    pub fn new(config: StripeSimConfig) -> Self {
        Self {
            config: Arc::new(Mutex::new(config)),
            inner: Arc::new(Mutex::new(Inner::default())),
        }
    }

    /// The axum router: Stripe's routes plus `/_sim/*` for the ledger and fault control.
    pub fn router(&self) -> Router {
        routes::router(self.clone())
    }

    /// Every effect so far.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        self.lock().ledger.clone()
    }

    /// Effects carrying the given action id in their metadata.
    pub fn effects_for(&self, action_id: &str) -> usize {
        self.lock()
            .ledger
            .iter()
            .filter(|e| e.idem_action_id.as_deref() == Some(action_id))
            .count()
    }

    /// A succeeded PaymentIntent made outside any action (a charge to refund in tests).
    /// Its ledger entry carries no action id.
    pub fn create_succeeded_intent(&self, amount: i64, currency: &str) -> String {
        routes::seed_intent(self, amount, currency)
    }

    /// A customer with this default payment method (`None`: a customer without one).
    /// A `cus_…` id never told to the simulator is a test-mode customer whose default is
    /// `pm_card_visa`, so that tests name customers without creating them.
    pub fn add_customer(&self, id: &str, default_payment_method: Option<&str>) {
        self.lock()
            .customers
            .insert(id.to_owned(), default_payment_method.map(str::to_owned));
    }

    pub fn requests(&self) -> Vec<RequestLog> {
        self.lock().requests.clone()
    }

    /// Faults for the next create requests, in order, before the random rates apply.
    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().script.extend(faults);
    }

    pub fn set_faults(&self, rates: FaultRates) {
        self.config().faults = rates;
    }

    pub fn update_config(&self, f: impl FnOnce(&mut StripeSimConfig)) {
        f(&mut self.config());
    }

    pub fn config_snapshot(&self) -> StripeSimConfig {
        self.config().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn config(&self) -> std::sync::MutexGuard<'_, StripeSimConfig> {
        self.config.lock().unwrap_or_else(|p| p.into_inner())
    }
}
