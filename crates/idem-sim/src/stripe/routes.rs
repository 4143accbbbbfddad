//! Stripe's routes, as the simulator serves them.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use super::{refunds, Intent, KeyEntry, KeyState, LedgerEntry, RequestLog, StripeSim};
use crate::partner::dropped;
use crate::{Fault, FaultRates};

const CREATE: &str = "/v1/payment_intents";
pub(super) const REFUNDS: &str = "/v1/refunds";

pub(super) fn router(sim: StripeSim) -> Router {
    Router::new()
        .route(CREATE, post(create).get(list))
        .route("/v1/payment_intents/search", get(search))
        .route("/v1/payment_intents/{id}", get(retrieve))
        .route("/v1/payment_intents/{id}/confirm", post(confirm))
        .route("/v1/customers/{id}", get(customer))
        .route(REFUNDS, post(create_refund).get(refunds::list))
        .route("/_sim/ledger", get(ledger))
        .route("/_sim/requests", get(requests))
        .route("/_sim/faults", post(set_faults))
        .route("/_sim/script", post(script))
        .with_state(sim)
}

pub(super) fn error(status: StatusCode, body: Value) -> Response {
    (status, Json(body)).into_response()
}

pub(super) fn stripe_error(
    status: StatusCode,
    kind: &str,
    code: Option<&str>,
    message: &str,
) -> Value {
    let mut e = json!({"type": kind, "message": message});
    if let Some(c) = code {
        e["code"] = json!(c);
    }
    let _ = status;
    json!({ "error": e })
}

pub(super) fn authorized(headers: &HeaderMap) -> bool {
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|k| k.starts_with("sk_test_") && k.len() > 8)
}

pub(super) fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        stripe_error(
            StatusCode::UNAUTHORIZED,
            "invalid_request_error",
            None,
            "Invalid API Key provided",
        ),
    )
}

fn with_headers(mut resp: Response, key: Option<&str>, replayed: bool, n: u64) -> Response {
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("req_sim{n:014}")) {
        h.insert("request-id", v);
    }
    if let Some(k) = key.and_then(|k| HeaderValue::from_str(k).ok()) {
        h.insert("idempotency-key", k);
    }
    if replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

pub(super) fn now_unix() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Like Stripe, the simulator finishes a request it has started even if the client hangs
/// up (a killed worker does not cancel the charge), so the work runs in a task of its own.
async fn create(State(sim): State<StripeSim>, headers: HeaderMap, body: Bytes) -> Response {
    tokio::spawn(detached(sim, Post::PaymentIntent, headers, body))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn create_refund(State(sim): State<StripeSim>, headers: HeaderMap, body: Bytes) -> Response {
    tokio::spawn(detached(sim, Post::Refund, headers, body))
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The POST endpoints behind the idempotency layer.
#[derive(Debug, Clone, Copy)]
enum Post {
    PaymentIntent,
    Refund,
}

impl Post {
    fn path(self) -> &'static str {
        match self {
            Post::PaymentIntent => CREATE,
            Post::Refund => REFUNDS,
        }
    }
}

async fn detached(sim: StripeSim, post: Post, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let (resp, log) = match post {
        Post::PaymentIntent => {
            idempotent(
                &sim,
                CREATE,
                &headers,
                key.as_deref(),
                &body,
                validate_intent,
                |v, key| execute_intent(&sim, v, key),
            )
            .await
        }
        Post::Refund => {
            idempotent(
                &sim,
                REFUNDS,
                &headers,
                key.as_deref(),
                &body,
                |p| refunds::validate(&sim, p),
                |v, key| refunds::execute(&sim, v, key),
            )
            .await
        }
    };
    let mut inner = sim.lock();
    inner.requests.push(RequestLog {
        route: format!("POST {}", post.path()),
        idempotency_key: key.clone(),
        status: log.0,
        fault: log.1,
        replayed: log.2,
        traceparent: headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    });
    let n = inner.requests.len() as u64;
    drop(inner);
    with_headers(resp, key.as_deref(), log.2, n)
}

type Log = (u16, Option<Fault>, bool);

/// A request the endpoint refused before executing anything: answered, never stored under
/// the key (Stripe stores a result only once endpoint execution begins).
pub(super) type Refusal = (StatusCode, Value);

/// Stripe's v1 front end and idempotency layer around one POST endpoint: authentication
/// and rate limiting first (neither stored), then the key store (replay, 409 in flight,
/// 400 on a parameter or endpoint mismatch, pruning after `key_retention`), then the
/// endpoint's `validate` (refusals not stored) and `execute` (stored), with the injected
/// faults at their points.
async fn idempotent<V>(
    sim: &StripeSim,
    endpoint: &'static str,
    headers: &HeaderMap,
    key: Option<&str>,
    body: &[u8],
    validate: impl FnOnce(&HashMap<String, String>) -> Result<V, Refusal>,
    execute: impl FnOnce(V, Option<&str>) -> (u16, Value),
) -> (Response, Log) {
    if !authorized(headers) {
        return (unauthorized(), (401, None, false));
    }
    let config = sim.config_snapshot();
    let fault = {
        let mut inner = sim.lock();
        match inner.script.pop_front() {
            Some(f) => Some(f),
            None => {
                let (route_key, nth) = match key {
                    Some(k) => {
                        let n = inner.seen.entry(k.to_owned()).or_insert(0);
                        *n += 1;
                        (k.to_owned(), *n - 1)
                    }
                    None => {
                        inner.anon += 1;
                        (String::new(), inner.anon)
                    }
                };
                config.faults.pick(config.seed, endpoint, &route_key, nth)
            }
        }
    };
    if fault == Some(Fault::RateLimit) {
        let mut resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            stripe_error(
                StatusCode::TOO_MANY_REQUESTS,
                "invalid_request_error",
                Some("rate_limit"),
                "Too many requests hit the API too quickly.",
            ),
        );
        resp.headers_mut()
            .insert("retry-after", HeaderValue::from_static("1"));
        return (resp, (429, fault, false));
    }
    if fault == Some(Fault::Conflict409) {
        return (in_flight(key.unwrap_or_default()), (409, fault, false));
    }
    let mut params: Vec<(String, String)> = match serde_urlencoded::from_bytes(body) {
        Ok(p) => p,
        Err(e) => {
            let b = stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_invalid"),
                &format!("Invalid form body: {e}"),
            );
            return (error(StatusCode::BAD_REQUEST, b), (400, fault, false));
        }
    };
    params.sort();
    let canonical = serde_urlencoded::to_string(&params).unwrap_or_default();

    if let Some(k) = key {
        let mut inner = sim.lock();
        let expired = inner
            .keys
            .get(k)
            .is_some_and(|e| e.first_used.elapsed() >= config.key_retention);
        if expired {
            inner.keys.remove(k);
        }
        match inner.keys.get(k) {
            Some(e) if e.endpoint != endpoint => {
                let msg = format!("Keys for idempotent requests can only be used for the same endpoint they were first used for ('{}' vs '{}'). Try using a key other than '{k}' if you meant to execute a different request.", e.endpoint, endpoint);
                return (
                    error(
                        StatusCode::BAD_REQUEST,
                        stripe_error(StatusCode::BAD_REQUEST, "idempotency_error", None, &msg),
                    ),
                    (400, fault, false),
                );
            }
            Some(e) if e.params != canonical => {
                let msg = format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{k}' if you meant to execute a different request.");
                return (
                    error(
                        StatusCode::BAD_REQUEST,
                        stripe_error(StatusCode::BAD_REQUEST, "idempotency_error", None, &msg),
                    ),
                    (400, fault, false),
                );
            }
            Some(KeyEntry {
                state: KeyState::InFlight,
                ..
            }) => return (in_flight(k), (409, fault, false)),
            Some(KeyEntry {
                state: KeyState::Done { status, body },
                ..
            }) => {
                let status = *status;
                let resp = (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    Json(body.clone()),
                )
                    .into_response();
                return (resp, (status, fault, true));
            }
            None => {
                inner.keys.insert(
                    k.to_owned(),
                    KeyEntry {
                        endpoint: endpoint.into(),
                        params: canonical.clone(),
                        state: KeyState::InFlight,
                        first_used: Instant::now(),
                    },
                );
            }
        }
    }
    let store = |status: u16, body: &Value| {
        if let Some(k) = key {
            if let Some(e) = sim.lock().keys.get_mut(k) {
                e.state = KeyState::Done {
                    status,
                    body: body.clone(),
                };
            }
        }
    };
    let forget = || {
        if let Some(k) = key {
            sim.lock().keys.remove(k);
        }
    };

    if let Some(Fault::Delay(ms)) = fault {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    let p: HashMap<String, String> = params.iter().cloned().collect();
    let valid = match validate(&p) {
        Ok(v) => v,
        Err((status, b)) => {
            forget();
            return (error(status, b), (status.as_u16(), fault, false));
        }
    };

    if fault == Some(Fault::FailBefore) {
        let b = stripe_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            None,
            "An unknown error occurred (simulated, before any effect).",
        );
        if config.store_fail_before {
            store(500, &b);
        } else {
            forget();
        }
        return (
            error(StatusCode::INTERNAL_SERVER_ERROR, b),
            (500, fault, false),
        );
    }

    let (status, body) = execute(valid, key);
    if fault == Some(Fault::FailAfter) {
        let b = stripe_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "api_error",
            None,
            "An unknown error occurred (simulated, after the effect).",
        );
        store(500, &b);
        return (
            error(StatusCode::INTERNAL_SERVER_ERROR, b),
            (500, fault, false),
        );
    }
    store(status, &body);
    if fault == Some(Fault::DropAfterEffect) {
        return (dropped(), (status, fault, false));
    }
    let resp = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
        Json(body),
    )
        .into_response();
    (resp, (status, fault, false))
}

fn in_flight(key: &str) -> Response {
    let msg = format!("There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): {key}. Please try again later.");
    error(
        StatusCode::CONFLICT,
        stripe_error(
            StatusCode::CONFLICT,
            "idempotency_error",
            Some("idempotency_key_in_use"),
            &msg,
        ),
    )
}

/// Metadata fields of a form body (`metadata[k]=v`).
pub(super) fn metadata_of(p: &HashMap<String, String>) -> serde_json::Map<String, Value> {
    p.iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("metadata[")
                .and_then(|r| r.strip_suffix(']'))
                .map(|mk| (mk.to_owned(), json!(v)))
        })
        .collect()
}

/// `GET /v1/customers/{id}`: the customer's `invoice_settings.default_payment_method`.
async fn customer(
    State(sim): State<StripeSim>,
    headers: HeaderMap,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let known = sim.lock().customers.get(&id).cloned();
    let default = match known {
        Some(d) => d,
        None if id.starts_with("cus_") => Some("pm_card_visa".to_owned()),
        None => {
            return error(
                StatusCode::NOT_FOUND,
                stripe_error(
                    StatusCode::NOT_FOUND,
                    "invalid_request_error",
                    Some("resource_missing"),
                    &format!("No such customer: '{id}'"),
                ),
            )
        }
    };
    Json(json!({"id": id, "object": "customer", "livemode": false,
                "invoice_settings": {"default_payment_method": default}}))
    .into_response()
}

/// A confirmed, succeeded PaymentIntent, as if created through the API without a key.
pub(super) fn seed_intent(sim: &StripeSim, amount: i64, currency: &str) -> String {
    let p: HashMap<String, String> = [
        ("amount".to_owned(), amount.to_string()),
        ("currency".to_owned(), currency.to_owned()),
        ("confirm".to_owned(), "true".to_owned()),
        ("payment_method".to_owned(), "pm_card_visa".to_owned()),
        (
            "automatic_payment_methods[allow_redirects]".to_owned(),
            "never".to_owned(),
        ),
    ]
    .into_iter()
    .collect();
    let v = validate_intent(&p).expect("valid seed parameters");
    let (_, pi) = execute_intent(sim, v, None);
    pi["id"].as_str().unwrap_or_default().to_owned()
}

struct IntentParams {
    p: HashMap<String, String>,
    amount: i64,
    currency: String,
}

fn validate_intent(p: &HashMap<String, String>) -> Result<IntentParams, Refusal> {
    let amount = p
        .get("amount")
        .and_then(|a| a.parse::<i64>().ok())
        .filter(|a| *a > 0);
    let currency = p.get("currency").filter(|c| c.len() == 3).cloned();
    let refuse = |code: &str, message: &str| {
        Err((
            StatusCode::BAD_REQUEST,
            stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some(code),
                message,
            ),
        ))
    };
    if p.get("confirm").is_some_and(|c| c == "true") {
        // Stripe confirms only with a payment method: it does not pick the customer's.
        if p.get("payment_method").is_none_or(|pm| pm.is_empty()) {
            return refuse(
                "payment_intent_unexpected_state",
                "You cannot confirm this PaymentIntent because it's missing a payment method. \
                 To confirm a PaymentIntent, you must provide a payment_method.",
            );
        }
        // Automatic payment methods are on by default and may redirect: confirming needs a
        // return_url, unless redirects are ruled out or the method types are given.
        let no_redirects = p
            .get("automatic_payment_methods[allow_redirects]")
            .is_some_and(|v| v == "never")
            || p.keys().any(|k| k.starts_with("payment_method_types["))
            || p.get("automatic_payment_methods[enabled]")
                .is_some_and(|v| v == "false");
        if !no_redirects && p.get("return_url").is_none_or(|u| u.is_empty()) {
            return refuse(
                "parameter_missing",
                "This PaymentIntent is configured to accept payment methods enabled in your \
                 Dashboard, because automatic_payment_methods is enabled. Some of these payment \
                 methods might redirect your customer off of your page. You must provide a \
                 return_url when confirming a PaymentIntent with automatic_payment_methods \
                 enabled, or set automatic_payment_methods[allow_redirects]=never.",
            );
        }
    }
    match (amount, currency) {
        (Some(amount), Some(currency)) => Ok(IntentParams {
            p: p.clone(),
            amount,
            currency,
        }),
        _ => Err((
            StatusCode::BAD_REQUEST,
            stripe_error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                Some("parameter_missing"),
                "Missing required param: amount or currency.",
            ),
        )),
    }
}

fn execute_intent(sim: &StripeSim, v: IntentParams, key: Option<&str>) -> (u16, Value) {
    let IntentParams {
        p,
        amount,
        currency,
    } = v;
    let metadata = metadata_of(&p);
    let declined = p
        .get("payment_method")
        .is_some_and(|pm| pm == "pm_card_chargeDeclined");
    // Stripe's test cards that need 3-D Secure on every payment.
    let needs_action = p.get("payment_method").is_some_and(|pm| {
        pm == "pm_card_authenticationRequired" || pm == "pm_card_threeDSecure2Required"
    });
    let fail_on_action = p
        .get("error_on_requires_action")
        .is_some_and(|v| v == "true");
    let confirm = p.get("confirm").is_some_and(|c| c == "true");
    let search_lag = sim.config_snapshot().search_lag;
    let mut inner = sim.lock();
    inner.next_id += 1;
    let id = format!("pi_sim{:018}", inner.next_id);
    let created = now_unix();
    let status = match (confirm, declined, needs_action, fail_on_action) {
        (false, ..) => "requires_confirmation",
        (true, true, ..) => "requires_payment_method",
        (true, false, true, true) => "requires_payment_method",
        (true, false, true, false) => "requires_action",
        (true, false, false, _) => "succeeded",
    };
    let pi = json!({
        "id": id, "object": "payment_intent", "amount": amount, "amount_received": if status == "succeeded" { amount } else { 0 },
        "currency": currency, "customer": p.get("customer"), "status": status, "created": created,
        "payment_method": p.get("payment_method"), "description": p.get("description"),
        "metadata": Value::Object(metadata.clone()), "livemode": false,
    });
    inner.intents.push(Intent {
        body: pi.clone(),
        visible_to_search_at: Instant::now() + search_lag,
    });
    if status == "succeeded" {
        inner.ledger.push(LedgerEntry {
            effect: "charge".into(),
            id,
            amount,
            currency,
            idem_action_id: metadata
                .get("idem_action_id")
                .and_then(Value::as_str)
                .map(str::to_owned),
            idempotency_key: key.map(str::to_owned),
            created,
        });
    }
    if confirm && needs_action && fail_on_action && !declined {
        return (
            402,
            json!({"error": {"type": "card_error", "code": "authentication_required", "decline_code": "authentication_required", "message": "Your card was declined. This transaction requires authentication.", "payment_intent": pi}}),
        );
    }
    if declined && confirm {
        (
            402,
            json!({"error": {"type": "card_error", "code": "card_declined", "decline_code": "generic_decline", "message": "Your card was declined.", "payment_intent": pi}}),
        )
    } else {
        (200, pi)
    }
}

pub(super) fn find_intent(sim: &StripeSim, id: &str) -> Option<Value> {
    sim.lock()
        .intents
        .iter()
        .find(|i| i.body["id"] == id)
        .map(|i| i.body.clone())
}

async fn retrieve(
    State(sim): State<StripeSim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let found = find_intent(&sim, &id);
    match found {
        Some(pi) => Json(pi).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            json!({"error": {"type": "invalid_request_error", "code": "resource_missing", "param": "intent", "message": format!("No such payment_intent: '{id}'")}}),
        ),
    }
}

async fn confirm(
    State(sim): State<StripeSim>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let found = find_intent(&sim, &id);
    match found {
        Some(pi) if pi["status"] == "succeeded" => error(
            StatusCode::BAD_REQUEST,
            json!({"error": {"type": "invalid_request_error", "code": "payment_intent_unexpected_state",
                "message": "You cannot confirm this PaymentIntent because it has already succeeded after being previously confirmed.",
                "payment_intent": pi}}),
        ),
        Some(pi) => Json(pi).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            json!({"error": {"type": "invalid_request_error", "code": "resource_missing", "message": format!("No such payment_intent: '{id}'")}}),
        ),
    }
}

/// `GET /v1/payment_intents`: newest first, `customer`, `created[gte|gt|lte|lt]`,
/// `limit` (≤100), `starting_after`. Read-your-writes: no lag.
async fn list(
    State(sim): State<StripeSim>,
    headers: HeaderMap,
    Query(q): Query<Vec<(String, String)>>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let q: HashMap<String, String> = q.into_iter().collect();
    let inner = sim.lock();
    let intents = inner.intents.iter().map(|i| &i.body).filter(|pi| {
        q.get("customer")
            .is_none_or(|c| pi["customer"] == c.as_str())
    });
    list_page(intents, &q, CREATE)
}

/// One page of a Stripe list, newest first: `created[gte|gt|lte|lt]`, `starting_after`,
/// `limit` (default 10, at most 100). `objects` come oldest first, already filtered by the
/// endpoint's own parameters.
pub(super) fn list_page<'a>(
    objects: impl DoubleEndedIterator<Item = &'a Value>,
    q: &HashMap<String, String>,
    url: &str,
) -> Response {
    let num = |k: &str| q.get(k).and_then(|v| v.parse::<i64>().ok());
    let limit = num("limit").unwrap_or(10).clamp(1, 100) as usize;
    let mut all: Vec<&Value> = objects
        .rev()
        .filter(|o| {
            let c = o["created"].as_i64().unwrap_or(0);
            num("created[gte]").is_none_or(|v| c >= v)
                && num("created[gt]").is_none_or(|v| c > v)
                && num("created[lte]").is_none_or(|v| c <= v)
                && num("created[lt]").is_none_or(|v| c < v)
        })
        .collect();
    if let Some(after) = q.get("starting_after") {
        match all.iter().position(|o| o["id"] == after.as_str()) {
            Some(pos) => all = all.split_off(pos + 1),
            None => all.clear(),
        }
    }
    let has_more = all.len() > limit;
    all.truncate(limit);
    Json(json!({"object": "list", "url": url, "has_more": has_more, "data": all})).into_response()
}

/// `GET /v1/payment_intents/search?query=metadata['k']:'v'`, lagging by `search_lag`.
async fn search(
    State(sim): State<StripeSim>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return unauthorized();
    }
    let query = q.get("query").cloned().unwrap_or_default();
    let Some((field, value)) = parse_metadata_query(&query) else {
        return error(
            StatusCode::BAD_REQUEST,
            json!({"error": {"type": "invalid_request_error", "message": format!("Unsupported search query (simulator supports metadata['k']:'v'): {query}")}}),
        );
    };
    let inner = sim.lock();
    let now = Instant::now();
    let data: Vec<&Value> = inner
        .intents
        .iter()
        .filter(|i| i.visible_to_search_at <= now)
        .map(|i| &i.body)
        .filter(|pi| pi["metadata"][&field] == value.as_str())
        .collect();
    Json(json!({"object": "search_result", "url": "/v1/payment_intents/search", "has_more": false, "next_page": null, "data": data})).into_response()
}

fn parse_metadata_query(q: &str) -> Option<(String, String)> {
    let rest = q.trim().strip_prefix("metadata['")?;
    let (field, rest) = rest.split_once("']:'")?;
    let value = rest.strip_suffix('\'')?;
    Some((field.to_owned(), value.to_owned()))
}

async fn ledger(State(sim): State<StripeSim>) -> Json<Value> {
    Json(json!({"effects": sim.ledger()}))
}

async fn requests(State(sim): State<StripeSim>) -> Json<Value> {
    Json(json!({"requests": sim.requests()}))
}

async fn set_faults(State(sim): State<StripeSim>, Json(rates): Json<FaultRates>) -> Json<Value> {
    sim.set_faults(rates);
    Json(json!({"faults": rates}))
}

async fn script(State(sim): State<StripeSim>, Json(faults): Json<Vec<Fault>>) -> Json<Value> {
    let n = faults.len();
    sim.script(faults);
    Json(json!({"scripted": n}))
}

#[cfg(test)]
mod tests {
    use super::parse_metadata_query;

    #[test]
    fn parses_metadata_queries() {
        assert_eq!(
            parse_metadata_query("metadata['idem_action_id']:'abc'"),
            Some(("idem_action_id".into(), "abc".into()))
        );
        assert_eq!(parse_metadata_query("amount>100"), None);
    }
}
