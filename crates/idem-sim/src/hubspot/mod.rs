//! A HubSpot CRM simulator (partners.md §2 "Salesforce / HubSpot"): batch upsert of objects
//! by a unique property (`POST /crm/v3/objects/{type}/batch/upsert`, `results[].new`) and
//! read by that property (`GET /crm/v3/objects/{type}/{id}?idProperty=`). Upsert is
//! naturally idempotent: the same payload again changes nothing, so the ledger records a
//! `create`, or an `update` only when a property value actually changed.
//!
//! As the CRM v3 specs publish it [HS3]: an upsert's `idProperty` must be a property with
//! unique values (`hasUniqueValue`) — `email` and `hs_object_id` for contacts,
//! `hs_object_id` for companies (not `domain`), and any the portal created unique
//! ([`HubSpotSim::add_unique_property`]); others are a 400. Property values are strings
//! (`additionalProperties: {type: string}`); a number or boolean is a 400. A read returns
//! the object type's default properties only, unless `properties=a,b` names others, and
//! every value as a string.
//!
//! Guessed (n/d in partners.md), worse case by default: a 409 is answered without running
//! anything but the client cannot know that; a 5xx may come after the write (`fail_after`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use crate::partner::{dropped, Effect, PartnerCore, Request};
use crate::{Fault, FaultRates};

const UPSERT: &str = "POST /crm/v3/objects/{type}/batch/upsert";

#[derive(Debug, Clone)]
struct Record {
    id: String,
    object_type: String,
    properties: Map<String, Value>,
    created_at: String,
    updated_at: String,
}

#[derive(Debug, Default)]
struct Objects {
    records: Vec<Record>,
    next_id: u64,
    /// Unique properties the portal created, by object type.
    unique: HashMap<String, Vec<String>>,
}

/// Properties HubSpot defines with unique values, by object type.
fn built_in_unique(object_type: &str, property: &str) -> bool {
    property == "hs_object_id" || (object_type == "contacts" && property == "email")
}

/// What a read returns when `properties=` names nothing.
fn default_properties(object_type: &str) -> &'static [&'static str] {
    match object_type {
        "contacts" => &[
            "createdate",
            "email",
            "firstname",
            "lastname",
            "lastmodifieddate",
            "hs_object_id",
        ],
        "companies" => &[
            "createdate",
            "domain",
            "name",
            "hs_lastmodifieddate",
            "hs_object_id",
        ],
        _ => &["hs_createdate", "hs_lastmodifieddate", "hs_object_id"],
    }
}

/// The simulator: its partner core (faults, requests, ledger) and the CRM's objects.
#[derive(Debug, Clone)]
pub struct HubSpotSim {
    pub core: PartnerCore,
    objects: Arc<Mutex<Objects>>,
}

impl HubSpotSim {
    pub fn new(seed: u64, faults: FaultRates) -> Self {
        Self {
            core: PartnerCore::new(seed, faults),
            objects: Arc::new(Mutex::new(Objects::default())),
        }
    }

    fn objects(&self) -> MutexGuard<'_, Objects> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/crm/v3/objects/{object_type}/batch/upsert", post(upsert))
            .route("/crm/v3/objects/{object_type}/{id}", get(read))
            .with_state(self.clone())
            .merge(self.core.control_routes())
    }

    /// A property the portal created with unique values (what an admin does in HubSpot's
    /// settings before `idProperty` may name it).
    pub fn add_unique_property(&self, object_type: &str, property: &str) {
        self.objects()
            .unique
            .entry(object_type.to_owned())
            .or_default()
            .push(property.to_owned());
    }

    /// Requests on the upsert route.
    pub fn upsert_requests(&self) -> usize {
        self.core.requests_on(UPSERT)
    }
}

fn hub_error(status: StatusCode, category: &str, message: &str) -> Response {
    (
        status,
        Json(json!({
            "status": "error", "message": message, "category": category,
            "correlationId": uuid::Uuid::new_v4().to_string(),
        })),
    )
        .into_response()
}

fn authorized(h: &HeaderMap) -> bool {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| t.starts_with("pat-") && t.len() > 4)
}

struct Input {
    id_property: String,
    id: String,
    properties: Map<String, Value>,
    trace: Option<String>,
}

fn parse(body: &[u8]) -> Result<Vec<Input>, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("Invalid input JSON on line 1: {e}"))?;
    let inputs = v["inputs"].as_array().ok_or("inputs: required array")?;
    if inputs.is_empty() || inputs.len() > 100 {
        return Err("inputs: between 1 and 100 items".into());
    }
    inputs
        .iter()
        .map(|i| {
            let id_property = i["idProperty"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or("idProperty: required")?;
            let id = i["id"]
                .as_str()
                .filter(|s| !s.is_empty())
                .ok_or("id: required")?;
            let properties = i["properties"]
                .as_object()
                .ok_or("properties: required object")?;
            if let Some((k, v)) = properties.iter().find(|(_, v)| !v.is_string()) {
                return Err(format!(
                    "Property values must be strings: properties.{k} is {v}"
                ));
            }
            Ok(Input {
                id_property: id_property.to_owned(),
                id: id.to_owned(),
                properties: properties.clone(),
                trace: i["objectWriteTraceId"].as_str().map(str::to_owned),
            })
        })
        .collect()
}

/// Like HubSpot, a started upsert finishes even if the client hangs up.
async fn upsert(
    State(sim): State<HubSpotSim>,
    Path(object_type): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    tokio::spawn(async move {
        let (resp, status, fault, key) = upsert_inner(&sim, &object_type, &headers, &body).await;
        sim.core.log(Request {
            route: UPSERT.into(),
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

async fn upsert_inner(
    sim: &HubSpotSim,
    object_type: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> (Response, u16, Option<Fault>, Option<String>) {
    if !authorized(headers) {
        let r = hub_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found.",
        );
        return (r, 401, None, None);
    }
    let inputs = match parse(body) {
        Ok(i) => i,
        Err(m) => {
            return (
                hub_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &m),
                400,
                None,
                None,
            )
        }
    };
    {
        let objs = sim.objects();
        let created = |p: &str| {
            objs.unique
                .get(object_type)
                .is_some_and(|u| u.iter().any(|x| x == p))
        };
        if let Some(i) = inputs
            .iter()
            .find(|i| !built_in_unique(object_type, &i.id_property) && !created(&i.id_property))
        {
            let m = format!(
                "Property \"{}\" is not a unique identifier for {object_type}: idProperty must \
                 name a property with hasUniqueValue=true",
                i.id_property
            );
            return (
                hub_error(StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &m),
                400,
                None,
                None,
            );
        }
    }
    let key = inputs[0]
        .trace
        .clone()
        .or_else(|| Some(inputs[0].id.clone()));
    let fault = sim.core.pick(UPSERT, key.as_deref());
    match fault {
        Some(Fault::RateLimit) => {
            let r = (
                StatusCode::TOO_MANY_REQUESTS,
                Json(json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                    "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING",
                    "correlationId": uuid::Uuid::new_v4().to_string()})),
            )
                .into_response();
            return (r, 429, fault, key);
        }
        Some(Fault::Conflict409) => {
            return (
                hub_error(
                    StatusCode::CONFLICT,
                    "CONFLICT",
                    "A concurrent write to this object is in progress.",
                ),
                409,
                fault,
                key,
            )
        }
        Some(Fault::FailBefore) => {
            return (
                hub_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    "internal error (simulated, before any write)",
                ),
                500,
                fault,
                key,
            )
        }
        Some(Fault::Delay(ms)) => tokio::time::sleep(Duration::from_millis(ms)).await,
        _ => {}
    }
    let now = chrono::Utc::now().to_rfc3339();
    let mut results = vec![];
    {
        let mut objs = sim.objects();
        for input in inputs {
            let found = objs.records.iter_mut().find(|r| {
                r.object_type == object_type
                    && r.properties.get(&input.id_property).and_then(Value::as_str)
                        == Some(input.id.as_str())
            });
            let (record, effect) = match found {
                Some(r) => {
                    let changed = input
                        .properties
                        .iter()
                        .any(|(k, v)| r.properties.get(k) != Some(v));
                    for (k, v) in &input.properties {
                        r.properties.insert(k.clone(), v.clone());
                    }
                    if changed {
                        r.updated_at = now.clone();
                    }
                    (r.clone(), changed.then_some("update"))
                }
                None => {
                    objs.next_id += 1;
                    let mut properties = input.properties.clone();
                    properties.insert(input.id_property.clone(), json!(input.id));
                    let r = Record {
                        id: (1000 + objs.next_id).to_string(),
                        object_type: object_type.to_owned(),
                        properties,
                        created_at: now.clone(),
                        updated_at: now.clone(),
                    };
                    objs.records.push(r.clone());
                    (r, Some("create"))
                }
            };
            if let Some(e) = effect {
                sim.core.record(Effect {
                    effect: e.into(),
                    id: record.id.clone(),
                    idem_action_id: input.trace.clone(),
                    detail: Value::Object(record.properties.clone()),
                });
            }
            let mut out = object_json(&record);
            out["new"] = json!(effect == Some("create"));
            results.push(out);
        }
    }
    match fault {
        Some(Fault::FailAfter) => (
            hub_error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "internal error (simulated, after the write)",
            ),
            500,
            fault,
            key,
        ),
        Some(Fault::DropAfterEffect) => (dropped(), 200, fault, key),
        _ => {
            let r = Json(json!({"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": chrono::Utc::now().to_rfc3339()})).into_response();
            (r, 200, fault, key)
        }
    }
}

fn object_json(r: &Record) -> Value {
    json!({"id": r.id, "properties": r.properties, "createdAt": r.created_at, "updatedAt": r.updated_at, "archived": false})
}

/// An object as a read returns it: the named properties (or the defaults), as strings.
fn read_json(r: &Record, asked: Option<&str>) -> Value {
    let names: Vec<&str> = match asked {
        Some(list) => list
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect(),
        None => default_properties(&r.object_type).to_vec(),
    };
    let mut props = Map::new();
    for n in names {
        let v = match n {
            "hs_object_id" => Some(json!(r.id)),
            _ => r.properties.get(n).cloned(),
        };
        if let Some(v) = v {
            props.insert(n.to_owned(), v);
        }
    }
    json!({"id": r.id, "properties": props, "createdAt": r.created_at, "updatedAt": r.updated_at, "archived": false})
}

/// `GET /crm/v3/objects/{type}/{id}?idProperty=…` (read-your-writes).
async fn read(
    State(sim): State<HubSpotSim>,
    Path((object_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if !authorized(&headers) {
        return hub_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_AUTHENTICATION",
            "Authentication credentials not found.",
        );
    }
    let objs = sim.objects();
    let found = objs.records.iter().find(|r| {
        r.object_type == object_type
            && match q.get("idProperty") {
                Some(p) => r.properties.get(p).and_then(Value::as_str) == Some(id.as_str()),
                None => r.id == id,
            }
    });
    match found {
        Some(r) => Json(read_json(r, q.get("properties").map(String::as_str))).into_response(),
        None => hub_error(
            StatusCode::NOT_FOUND,
            "OBJECT_NOT_FOUND",
            "Object not found.  objectId are usually numeric.",
        ),
    }
}
