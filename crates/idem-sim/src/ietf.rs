//! A generic partner that follows the IETF Idempotency-Key header draft
//! (draft-ietf-httpapi-idempotency-key-header): the route behind the declarative
//! `http.idempotent` cell's tests and demo.
//!
//! `POST /v1/{resource}` with a JSON body requires an `Idempotency-Key` header. First use
//! of a key runs the request and stores the response; the same key with the same payload
//! replays it; the same key with another payload is `422 Unprocessable Content`; the same
//! key while the first request is still running is `409 Conflict`; a missing key is `400`.
//! Errors are RFC 9457 problem documents. Keys expire after `key_retention`.
//! `GET /v1/{resource}?idempotency_key=K` lists the objects created under a key, visible
//! after `lookup_lag`. The ledger attributes each created object to the idem action whose
//! key (`idem-<action>-g<generation>`) made it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::partner::{dropped, Effect, PartnerCore, Request};
use crate::{Fault, FaultRates};

const ROUTE: &str = "POST /v1/{resource}";

#[derive(Debug, Clone)]
enum Stored {
    InFlight,
    Done(u16, Value),
}

#[derive(Debug, Clone)]
struct Entry {
    fingerprint: [u8; 32],
    stored: Stored,
    first_used: Instant,
}

#[derive(Debug, Clone)]
struct Object {
    resource: String,
    body: Value,
    visible_at: Instant,
}

#[derive(Debug, Default)]
struct Store {
    keys: HashMap<String, Entry>,
    objects: Vec<Object>,
    next_id: u64,
}

/// Knobs; undocumented behaviour defaults to the worse case.
#[derive(Debug, Clone, Copy)]
pub struct IetfConfig {
    pub key_retention: Duration,
    pub lookup_lag: Duration,
}

impl Default for IetfConfig {
    fn default() -> Self {
        Self {
            key_retention: Duration::from_secs(24 * 3600),
            lookup_lag: Duration::ZERO,
        }
    }
}

/// The simulator: its partner core and its key store and objects.
#[derive(Debug, Clone)]
pub struct IetfSim {
    pub core: PartnerCore,
    config: Arc<Mutex<IetfConfig>>,
    store: Arc<Mutex<Store>>,
}

impl IetfSim {
    pub fn new(seed: u64, faults: FaultRates, config: IetfConfig) -> Self {
        Self {
            core: PartnerCore::new(seed, faults),
            config: Arc::new(Mutex::new(config)),
            store: Arc::new(Mutex::new(Store::default())),
        }
    }

    fn store(&self) -> MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn update_config(&self, f: impl FnOnce(&mut IetfConfig)) {
        f(&mut self.config.lock().unwrap_or_else(|p| p.into_inner()));
    }

    fn config(&self) -> IetfConfig {
        *self.config.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/{resource}", post(create).get(list))
            .with_state(self.clone())
            .merge(self.core.control_routes())
    }

    /// Effects made under any key generation of `action_id`.
    pub fn effects_for(&self, action_id: &str) -> usize {
        self.core.effects_for(action_id)
    }

    pub fn create_requests(&self) -> usize {
        self.core.requests_on(ROUTE)
    }
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    let mut r = (
        status,
        Json(
            json!({"type": "https://idem.invalid/problems/idempotency", "title": title,
            "status": status.as_u16(), "detail": detail}),
        ),
    )
        .into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/problem+json"),
    );
    r
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.is_empty())
}

/// `idem-<uuid>-g<n>` → the action id.
fn action_of(key: &str) -> Option<String> {
    let rest = key.strip_prefix("idem-")?;
    let (id, _) = rest.rsplit_once("-g")?;
    Some(id.to_owned())
}

async fn create(
    State(sim): State<IetfSim>,
    Path(resource): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::spawn(async move {
        let key = match headers
            .get("idempotency-key")
            .map(|v| sf_string(v.as_bytes()))
        {
            None => None,
            Some(Ok(k)) => Some(k),
            Some(Err(raw)) => {
                sim.core.log(Request {
                    route: ROUTE.into(),
                    key: None,
                    status: 400,
                    fault: None,
                    replayed: false,
                });
                return problem(
                    StatusCode::BAD_REQUEST,
                    "Idempotency-Key is malformed",
                    &format!(
                        "The Idempotency-Key header must be an RFC 8941 Structured Header \
                         String, such as \"8e03978e-40d5-43e8-bc93-6894a57f9324\"; got {raw}"
                    ),
                );
            }
        };
        let (resp, status, fault, replayed) =
            create_inner(&sim, &resource, &headers, key.as_deref(), &body).await;
        sim.core.log(Request {
            route: ROUTE.into(),
            key,
            status,
            fault,
            replayed,
        });
        resp
    })
    .await
    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The key of an `Idempotency-Key` header: the draft (§2) makes it an Item Structured
/// Header whose value is a String (RFC 8941 §3.3.3); anything else is refused, with what
/// was sent.
fn sf_string(raw: &[u8]) -> Result<String, String> {
    match sfv::Parser::new(raw).parse::<sfv::Item>() {
        Ok(sfv::Item {
            bare_item: sfv::BareItem::String(s),
            ..
        }) => Ok(s.as_str().to_owned()),
        Ok(_) => Err(format!("{:?} (not a String)", String::from_utf8_lossy(raw))),
        Err(e) => Err(format!("{:?} ({e})", String::from_utf8_lossy(raw))),
    }
}

async fn create_inner(
    sim: &IetfSim,
    resource: &str,
    headers: &HeaderMap,
    key: Option<&str>,
    body: &[u8],
) -> (Response, u16, Option<Fault>, bool) {
    if !authorized(headers) {
        return (
            problem(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "a bearer token is required",
            ),
            401,
            None,
            false,
        );
    }
    let Some(key) = key else {
        return (
            problem(
                StatusCode::BAD_REQUEST,
                "Idempotency-Key is missing",
                "This operation is idempotent and it requires correct usage of Idempotency Key.",
            ),
            400,
            None,
            false,
        );
    };
    let fault = sim.core.pick(ROUTE, Some(key));
    match fault {
        Some(Fault::RateLimit) => {
            let mut r = problem(
                StatusCode::TOO_MANY_REQUESTS,
                "Too Many Requests",
                "rate limited before processing",
            );
            r.headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
            return (r, 429, fault, false);
        }
        Some(Fault::Conflict409) => {
            return (
                problem(
                    StatusCode::CONFLICT,
                    "A request is outstanding for this Idempotency-Key",
                    "retry later",
                ),
                409,
                fault,
                false,
            )
        }
        _ => {}
    }
    let parsed: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return (
                problem(
                    StatusCode::BAD_REQUEST,
                    "Invalid body",
                    "a JSON object is required",
                ),
                400,
                fault,
                false,
            )
        }
    };
    let fingerprint: [u8; 32] = Sha256::digest(body).into();
    let config = sim.config();
    {
        let mut st = sim.store();
        if st
            .keys
            .get(key)
            .is_some_and(|e| e.first_used.elapsed() >= config.key_retention)
        {
            st.keys.remove(key);
        }
        match st.keys.get(key) {
            Some(e) if e.fingerprint != fingerprint => {
                return (
                    problem(StatusCode::UNPROCESSABLE_ENTITY, "Idempotency-Key is already used", "This operation is idempotent and it requires correct usage of Idempotency Key. Idempotency Key MUST not be reused across different payloads of this operation."),
                    422,
                    fault,
                    false,
                )
            }
            Some(Entry { stored: Stored::InFlight, .. }) => {
                return (problem(StatusCode::CONFLICT, "A request is outstanding for this Idempotency-Key", "retry later"), 409, fault, false)
            }
            Some(Entry { stored: Stored::Done(status, body), .. }) => {
                let r = (StatusCode::from_u16(*status).unwrap_or(StatusCode::OK), Json(body.clone())).into_response();
                return (r, *status, fault, true);
            }
            None => {
                st.keys.insert(
                    key.to_owned(),
                    Entry { fingerprint, stored: Stored::InFlight, first_used: Instant::now() },
                );
            }
        }
    }
    let store = |status: u16, b: &Value| {
        if let Some(e) = sim.store().keys.get_mut(key) {
            e.stored = Stored::Done(status, b.clone());
        }
    };
    if let Some(Fault::Delay(ms)) = fault {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if fault == Some(Fault::FailBefore) {
        let b = json!({"title": "Internal Server Error", "status": 500, "detail": "simulated, before any effect"});
        store(500, &b);
        return (
            (StatusCode::INTERNAL_SERVER_ERROR, Json(b)).into_response(),
            500,
            fault,
            false,
        );
    }
    let object = {
        let mut st = sim.store();
        st.next_id += 1;
        let mut o = parsed;
        o["id"] = json!(format!("obj_{:012}", st.next_id));
        o["idempotency_key"] = json!(key);
        o["created"] = json!(chrono::Utc::now().timestamp());
        st.objects.push(Object {
            resource: resource.to_owned(),
            body: o.clone(),
            visible_at: Instant::now() + config.lookup_lag,
        });
        o
    };
    sim.core.record(Effect {
        effect: format!("create {resource}"),
        id: object["id"].as_str().unwrap_or_default().to_owned(),
        idem_action_id: action_of(key),
        detail: object.clone(),
    });
    if fault == Some(Fault::FailAfter) {
        let b = json!({"title": "Internal Server Error", "status": 500, "detail": "simulated, after the effect"});
        store(500, &b);
        return (
            (StatusCode::INTERNAL_SERVER_ERROR, Json(b)).into_response(),
            500,
            fault,
            false,
        );
    }
    store(201, &object);
    if fault == Some(Fault::DropAfterEffect) {
        return (dropped(), 201, fault, false);
    }
    (
        (StatusCode::CREATED, Json(object)).into_response(),
        201,
        fault,
        false,
    )
}

async fn list(
    State(sim): State<IetfSim>,
    Path(resource): Path<String>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "a bearer token is required",
        );
    }
    let now = Instant::now();
    let st = sim.store();
    let data: Vec<&Value> = st
        .objects
        .iter()
        .filter(|o| o.resource == resource && o.visible_at <= now)
        .map(|o| &o.body)
        .filter(|o| {
            q.get("idempotency_key")
                .is_none_or(|k| o["idempotency_key"] == k.as_str())
        })
        .collect();
    Json(json!({"data": data})).into_response()
}

#[cfg(test)]
mod tests {
    use super::action_of;

    #[test]
    fn keys_name_their_action() {
        assert_eq!(action_of("idem-5b0b-1-g3").as_deref(), Some("5b0b-1"));
        assert_eq!(action_of("other"), None);
    }
}
