//! What every simulator beyond Stripe shares: seeded faults (scripted first, then by rate,
//! as a function of route, key and how often that key was seen), the request log and the
//! effect ledger, behind one lock. Each simulator adds its own routes and state.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Fault, FaultRates};

/// One real effect a simulated partner performed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// What happened (`create`, `update`, `send`, `book`, …).
    pub effect: String,
    /// The partner's id for the object.
    pub id: String,
    /// The idem action the request carried (header, metadata or marker), if any.
    pub idem_action_id: Option<String>,
    pub detail: Value,
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub route: String,
    /// The key the fault pick was made for (idempotency key or the action marker).
    pub key: Option<String>,
    pub status: u16,
    pub fault: Option<Fault>,
    pub replayed: bool,
}

#[derive(Debug, Default)]
struct Core {
    seed: u64,
    faults: FaultRates,
    script: VecDeque<Fault>,
    seen: HashMap<String, u64>,
    anon: u64,
    requests: Vec<Request>,
    ledger: Vec<Effect>,
    /// When each ledger entry was made (for rate checks).
    ledger_at: Vec<std::time::Instant>,
}

/// Faults, requests and ledger of one simulated partner. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PartnerCore {
    core: Arc<Mutex<Core>>,
}

impl PartnerCore {
    pub fn new(seed: u64, faults: FaultRates) -> Self {
        Self {
            core: Arc::new(Mutex::new(Core {
                seed,
                faults,
                ..Core::default()
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves plain data behind; keep serving.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The fault for this request: the next scripted one, else a seeded pick for the
    /// `nth` use of `key` on `route` (anonymous requests count separately).
    pub fn pick(&self, route: &str, key: Option<&str>) -> Option<Fault> {
        let mut c = self.lock();
        if let Some(f) = c.script.pop_front() {
            return Some(f);
        }
        let (k, nth) = match key {
            Some(k) => {
                let n = c.seen.entry(k.to_owned()).or_insert(0);
                *n += 1;
                (k.to_owned(), *n - 1)
            }
            None => {
                c.anon += 1;
                (String::new(), c.anon)
            }
        };
        c.faults.pick(c.seed, route, &k, nth)
    }

    pub fn log(&self, r: Request) {
        self.lock().requests.push(r);
    }

    pub fn record(&self, e: Effect) {
        let mut c = self.lock();
        c.ledger.push(e);
        c.ledger_at.push(std::time::Instant::now());
    }

    pub fn script(&self, faults: impl IntoIterator<Item = Fault>) {
        self.lock().script.extend(faults);
    }

    pub fn set_faults(&self, faults: FaultRates) {
        self.lock().faults = faults;
    }

    pub fn ledger(&self) -> Vec<Effect> {
        self.lock().ledger.clone()
    }

    /// The ledger with the moment each effect was made: what a test of a partner's rate
    /// limit counts.
    pub fn ledger_timed(&self) -> Vec<(Effect, std::time::Instant)> {
        let c = self.lock();
        c.ledger
            .iter()
            .cloned()
            .zip(c.ledger_at.iter().copied())
            .collect()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.lock().requests.clone()
    }

    /// Effects attributed to `action_id`.
    pub fn effects_for(&self, action_id: &str) -> usize {
        self.lock()
            .ledger
            .iter()
            .filter(|e| e.idem_action_id.as_deref() == Some(action_id))
            .count()
    }

    /// Requests on `route` (e.g. `POST /crm/v3/objects/contacts/batch/upsert`).
    pub fn requests_on(&self, route: &str) -> usize {
        self.lock()
            .requests
            .iter()
            .filter(|r| r.route == route)
            .count()
    }
}

impl PartnerCore {
    /// `/_sim/ledger`, `/_sim/requests` (GET) and `/_sim/faults`, `/_sim/script` (POST): the
    /// same control surface as the Stripe simulator's, for tests and the demo in other
    /// processes.
    pub fn control_routes(&self) -> axum::Router {
        use axum::routing::{get, post};
        use axum::Json;
        let (l, r, f, s) = (self.clone(), self.clone(), self.clone(), self.clone());
        axum::Router::new()
            .route(
                "/_sim/ledger",
                get(move || async move { Json(serde_json::json!({"effects": l.ledger()})) }),
            )
            .route(
                "/_sim/requests",
                get(move || async move { Json(serde_json::json!({"requests": r.requests()})) }),
            )
            .route(
                "/_sim/faults",
                post(move |Json(rates): Json<FaultRates>| async move {
                    f.set_faults(rates);
                    Json(serde_json::json!({"faults": rates}))
                }),
            )
            .route(
                "/_sim/script",
                post(move |Json(faults): Json<Vec<Fault>>| async move {
                    let n = faults.len();
                    s.script(faults);
                    Json(serde_json::json!({"scripted": n}))
                }),
            )
    }
}

/// A response whose connection is cut before the body arrives: the client sees a reset.
pub fn dropped() -> axum::response::Response {
    let stream = futures::stream::once(async {
        Err::<axum::body::Bytes, std::io::Error>(std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "simulated lost response",
        ))
    });
    axum::response::Response::new(axum::body::Body::from_stream(stream))
}
