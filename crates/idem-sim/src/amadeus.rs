//! An Amadeus Self-Service simulator (partners.md §2 "Amadeus"): Flight Offers Price
//! (`POST /v1/shopping/flight-offers/pricing` with `X-HTTP-Method-Override: GET`),
//! Flight Create Orders (`POST /v1/booking/flight-orders`) and Flight Order Management
//! (`GET|DELETE /v1/booking/flight-orders/{id}`). There is no idempotency key and no way to
//! find an order except by the id in the create response.
//!
//! Offers whose id is `SOLDOUT` fail with 34651 SEGMENT SELL FAILURE; a booking whose
//! `price.grandTotal` differs from the current price fails with 37200 PRICE DISCREPANCY.
//! `fail_before` is 500 code 141 with no order; `fail_after` creates the order (a PNR)
//! and then answers 500 code 141 — the case partners.md warns about. The ledger attributes
//! orders to the action named in their `IDEM <action>` remark, cancellations to the
//! `X-Idem-Action-Id` request header.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::partner::{dropped, Effect, PartnerCore, Request};
use crate::{Fault, FaultRates};

const PRICE: &str = "POST /v1/shopping/flight-offers/pricing";
const BOOK: &str = "POST /v1/booking/flight-orders";
const CANCEL: &str = "DELETE /v1/booking/flight-orders/{id}";

#[derive(Debug, Default)]
struct Orders {
    orders: Vec<(String, Value, bool)>, // (id, order, cancelled)
    seq: u64,
}

#[derive(Debug, Clone)]
pub struct AmadeusSim {
    pub core: PartnerCore,
    orders: Arc<Mutex<Orders>>,
}

fn amadeus(status: StatusCode, body: Value) -> Response {
    let mut r = (status, Json(body)).into_response();
    r.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/vnd.amadeus+json"),
    );
    r
}

fn error(status: StatusCode, code: u32, title: &str, detail: Option<&str>) -> Response {
    let mut e = json!({"status": status.as_u16(), "code": code, "title": title});
    if let Some(d) = detail {
        e["detail"] = json!(d);
    }
    amadeus(status, json!({"errors": [e]}))
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| !t.is_empty())
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        38190,
        "Invalid access token",
        None,
    )
}

/// The current price of an offer: a function of its id.
fn price_of(offer: &Value) -> String {
    let id = offer["id"].as_str().unwrap_or("1");
    let cents: u64 = id.bytes().map(u64::from).sum::<u64>() * 137 % 90_000 + 10_000;
    format!("{}.{:02}", cents / 100, cents % 100)
}

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        1797,
        "NOT FOUND",
        Some("no response found for this query parameter"),
    )
}

impl AmadeusSim {
    pub fn new(seed: u64, faults: FaultRates) -> Self {
        Self {
            core: PartnerCore::new(seed, faults),
            orders: Arc::new(Mutex::new(Orders::default())),
        }
    }

    fn orders(&self) -> MutexGuard<'_, Orders> {
        self.orders.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/shopping/flight-offers/pricing", post(price))
            .route("/v1/booking/flight-orders", post(book))
            .route("/v1/booking/flight-orders/{id}", get(read).delete(cancel))
            .with_state(self.clone())
            .merge(self.core.control_routes())
    }

    /// An order made outside any action (one to cancel in tests); no ledger entry.
    pub fn seed_order(&self) -> String {
        let mut o = self.orders();
        o.seq += 1;
        // As Amadeus mints them: base64, URL-encoded in the JSON (`%2F`, `%3D`).
        let id = format!("eJzTd9f3MjJ{:08}%2FAAt8Ans%3D", o.seq);
        o.orders
            .push((id.clone(), json!({"type": "flight-order", "id": id}), false));
        id
    }

    pub fn requests_on(&self, route: &str) -> usize {
        self.core.requests_on(route)
    }

    pub fn book_requests(&self) -> usize {
        self.core.requests_on(BOOK)
    }

    pub fn cancel_requests(&self) -> usize {
        self.core.requests_on(CANCEL)
    }

    pub fn price_requests(&self) -> usize {
        self.core.requests_on(PRICE)
    }
}

/// Runs `f` detached (a started request finishes when the client hangs up) and logs it.
async fn logged<F>(sim: AmadeusSim, route: &'static str, key: Option<String>, f: F) -> Response
where
    F: std::future::Future<Output = (Response, u16, Option<Fault>)> + Send + 'static,
{
    tokio::spawn(async move {
        let (resp, status, fault) = f.await;
        sim.core.log(Request {
            route: route.into(),
            key,
            status,
            fault,
            replayed: false,
        });
        resp
    })
    .await
    .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn price(State(sim): State<AmadeusSim>, h: HeaderMap, body: Bytes) -> Response {
    let s = sim.clone();
    logged(sim, PRICE, None, async move {
        if !authorized(&h) {
            return (unauthorized(), 401, None);
        }
        if h.get("x-http-method-override")
            .and_then(|v| v.to_str().ok())
            != Some("GET")
        {
            return (
                error(
                    StatusCode::BAD_REQUEST,
                    477,
                    "INVALID FORMAT",
                    Some("X-HTTP-Method-Override: GET is required"),
                ),
                400,
                None,
            );
        }
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let Some(offers) = v["data"]["flightOffers"]
            .as_array()
            .filter(|o| !o.is_empty())
        else {
            return (
                error(
                    StatusCode::BAD_REQUEST,
                    477,
                    "INVALID FORMAT",
                    Some("data.flightOffers is required"),
                ),
                400,
                None,
            );
        };
        let fault = s.core.pick(PRICE, None);
        match fault {
            Some(Fault::RateLimit) => {
                return (
                    error(
                        StatusCode::TOO_MANY_REQUESTS,
                        38194,
                        "Too many requests",
                        None,
                    ),
                    429,
                    fault,
                )
            }
            Some(Fault::FailBefore) | Some(Fault::FailAfter) | Some(Fault::Conflict409) => {
                return (
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        141,
                        "SYSTEM ERROR HAS OCCURRED",
                        None,
                    ),
                    500,
                    fault,
                )
            }
            Some(Fault::Delay(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
            _ => {}
        }
        let priced: Vec<Value> = offers
            .iter()
            .map(|o| {
                let mut o = o.clone();
                o["price"] =
                    json!({"currency": "EUR", "total": price_of(&o), "grandTotal": price_of(&o)});
                o
            })
            .collect();
        let resp = amadeus(
            StatusCode::OK,
            json!({"data": {"type": "flight-offers-pricing", "flightOffers": priced}}),
        );
        if fault == Some(Fault::DropAfterEffect) {
            return (dropped(), 200, fault);
        }
        (resp, 200, fault)
    })
    .await
}

async fn book(State(sim): State<AmadeusSim>, h: HeaderMap, body: Bytes) -> Response {
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let action = v["data"]["remarks"]["general"]
        .as_array()
        .into_iter()
        .flatten()
        .find_map(|r| {
            r["text"]
                .as_str()
                .and_then(|t| t.strip_prefix("IDEM "))
                .map(str::to_owned)
        });
    let s = sim.clone();
    let a = action.clone();
    logged(sim, BOOK, action, async move {
        if !authorized(&h) {
            return (unauthorized(), 401, None);
        }
        let fault = s.core.pick(BOOK, a.as_deref());
        match fault {
            Some(Fault::RateLimit) => return (error(StatusCode::TOO_MANY_REQUESTS, 38194, "Too many requests", None), 429, fault),
            Some(Fault::FailBefore) | Some(Fault::Conflict409) => {
                return (error(StatusCode::INTERNAL_SERVER_ERROR, 141, "SYSTEM ERROR HAS OCCURRED", None), 500, fault)
            }
            Some(Fault::Delay(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
            _ => {}
        }
        let data = &v["data"];
        let (Some(offers), Some(travelers)) = (data["flightOffers"].as_array(), data["travelers"].as_array()) else {
            return (error(StatusCode::BAD_REQUEST, 477, "INVALID FORMAT", Some("flightOffers and travelers are required")), 400, fault);
        };
        if offers.is_empty() || offers.len() > 6 || travelers.is_empty() || travelers.len() > 18 {
            return (error(StatusCode::BAD_REQUEST, 477, "INVALID FORMAT", Some("1..6 flightOffers and 1..18 travelers")), 400, fault);
        }
        if offers.iter().any(|o| o["id"] == "SOLDOUT") {
            return (error(StatusCode::BAD_REQUEST, 34651, "SEGMENT SELL FAILURE", Some("Could not sell segment 1")), 400, fault);
        }
        if let Some(o) = offers.iter().find(|o| o["price"]["grandTotal"].as_str() != Some(price_of(o).as_str())) {
            let d = format!("offer {} is now {}", o["id"], price_of(o));
            return (error(StatusCode::BAD_REQUEST, 37200, "PRICE DISCREPANCY", Some(&d)), 400, fault);
        }
        let order = {
            let mut os = s.orders();
            os.seq += 1;
            let id = format!("eJzTd9f3MjIz{:08}%2FMEAAt8Ans%3D", os.seq);
            let pnr: String = format!("{:06X}", 0x2A0000 + os.seq).chars().take(6).collect();
            let order = json!({
                "type": "flight-order", "id": id, "queuingOfficeId": "NCE4D31SB",
                "associatedRecords": [{"reference": pnr, "creationDateTime": chrono::Utc::now().to_rfc3339(),
                    "originSystemCode": "1A", "flightOfferId": offers[0]["id"]}],
                "flightOffers": offers, "travelers": travelers,
                "remarks": data["remarks"], "ticketingAgreement": data["ticketingAgreement"],
            });
            os.orders.push((id, order.clone(), false));
            order
        };
        s.core.record(Effect {
            effect: "book".into(),
            id: order["id"].as_str().unwrap_or_default().to_owned(),
            idem_action_id: a.clone(),
            detail: json!({"pnr": order["associatedRecords"][0]["reference"]}),
        });
        match fault {
            Some(Fault::FailAfter) => (error(StatusCode::INTERNAL_SERVER_ERROR, 141, "SYSTEM ERROR HAS OCCURRED", None), 500, fault),
            Some(Fault::DropAfterEffect) => (dropped(), 201, fault),
            _ => (amadeus(StatusCode::CREATED, json!({"data": order, "dictionaries": {}})), 201, fault),
        }
    })
    .await
}

/// Whether the order whose id is `stored` (URL-encoded, as returned) is the one a request
/// path names (`decoded`: the router has decoded it once, as Amadeus's server does).
fn same_order(stored: &str, decoded: &str) -> bool {
    percent_encoding::percent_decode_str(stored).decode_utf8_lossy() == decoded
}

async fn read(State(sim): State<AmadeusSim>, h: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&h) {
        return unauthorized();
    }
    let os = sim.orders();
    match os
        .orders
        .iter()
        .find(|(i, _, cancelled)| same_order(i, &id) && !cancelled)
    {
        Some((_, o, _)) => amadeus(StatusCode::OK, json!({"data": o})),
        None => not_found(),
    }
}

async fn cancel(State(sim): State<AmadeusSim>, h: HeaderMap, Path(id): Path<String>) -> Response {
    let action = h
        .get("x-idem-action-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let s = sim.clone();
    let a = action.clone();
    logged(sim, CANCEL, action, async move {
        if !authorized(&h) {
            return (unauthorized(), 401, None);
        }
        let fault = s.core.pick(CANCEL, a.as_deref());
        match fault {
            Some(Fault::RateLimit) => {
                return (
                    error(
                        StatusCode::TOO_MANY_REQUESTS,
                        38194,
                        "Too many requests",
                        None,
                    ),
                    429,
                    fault,
                )
            }
            Some(Fault::FailBefore) | Some(Fault::Conflict409) => {
                return (
                    error(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        141,
                        "SYSTEM ERROR HAS OCCURRED",
                        None,
                    ),
                    500,
                    fault,
                )
            }
            Some(Fault::Delay(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
            _ => {}
        }
        let done = {
            let mut os = s.orders();
            match os
                .orders
                .iter_mut()
                .find(|(i, _, cancelled)| same_order(i, &id) && !*cancelled)
            {
                Some(o) => {
                    o.2 = true;
                    Some(o.0.clone())
                }
                None => None,
            }
        };
        // The ledger names the order by its id as Amadeus returned it (URL-encoded).
        let Some(order) = done else {
            return (not_found(), 404, fault);
        };
        s.core.record(Effect {
            effect: "cancel".into(),
            id: order,
            idem_action_id: a.clone(),
            detail: Value::Null,
        });
        match fault {
            Some(Fault::FailAfter) => (
                error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    141,
                    "SYSTEM ERROR HAS OCCURRED",
                    None,
                ),
                500,
                fault,
            ),
            Some(Fault::DropAfterEffect) => (dropped(), 204, fault),
            _ => (StatusCode::NO_CONTENT.into_response(), 204, fault),
        }
    })
    .await
}

/// The price the simulator quotes for an offer id (tests build bookings with it).
pub fn quoted_price(offer_id: &str) -> String {
    price_of(&json!({"id": offer_id}))
}
