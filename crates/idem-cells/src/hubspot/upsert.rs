//! `hubspot.upsert`: create or update a CRM object by a unique property
//! (`POST /crm/v3/objects/{type}/batch/upsert` with one input).
//!
//! Failure modes and recovery (partners.md, HubSpot): the upsert is **naturally
//! idempotent** — the unique property value is a key that never expires, and sending the
//! identical payload again changes nothing (HubSpot answers `new: false`). So:
//! - lost response, timeout, 5xx, 409 → ambiguous; the worker resends the identical
//!   request (rule (c): same natural key, same request fingerprint).
//! - 429 → rejected by the rate limiter, never processed: retry.
//! - 400 validation, 401/403 → failed, no write.
//! - reconcile (only needed if replays are exhausted): read the object by the unique
//!   property; our properties present → happened; absent → not happened; present with
//!   other values → unknown (another writer; a person decides).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::profile::{ApprovalPolicy, KeySupport, Lookup, ReplayModel};
use idem_core::{ActionId, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

/// The `hubspot.upsert` cell.
#[derive(Clone, Debug)]
pub struct HubSpotUpsert {
    parts: Parts,
}

/// Create or update one CRM object by a unique property (batch upsert of one).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// contacts (default), companies, …
    #[schemars(pattern("^[a-z0-9_]+$"))]
    pub object_type: Option<String>,
    /// The unique property (default email).
    #[schemars(pattern("^[a-z0-9_]+$"))]
    pub id_property: Option<String>,
    /// The unique property's value.
    #[schemars(length(min = 1, max = 255))]
    pub id: String,
    /// The properties to set: strings, numbers or booleans.
    pub properties: BTreeMap<String, Scalar>,
}

/// A CRM property value.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    Text(String),
    Number(serde_json::Number),
    Flag(bool),
}

impl Scalar {
    /// As HubSpot takes and returns every property value: a string (`42`, `true`).
    pub fn as_hubspot(&self) -> String {
        match self {
            Scalar::Text(s) => s.clone(),
            Scalar::Number(n) => n.to_string(),
            Scalar::Flag(b) => b.to_string(),
        }
    }
}

/// The properties as the API types them: strings.
fn as_strings(properties: &BTreeMap<String, Scalar>) -> BTreeMap<&str, String> {
    properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_hubspot()))
        .collect()
}

impl CellArgs for Args {
    fn summary(&self) -> Option<String> {
        let props: Vec<&str> = self.properties.keys().map(String::as_str).collect();
        Some(format!(
            "Create or update the HubSpot {} whose {} is {}, setting {}",
            match self.object_type() {
                "companies" => "company",
                t => t.strip_suffix('s').unwrap_or(t),
            },
            self.id_property(),
            self.id,
            if props.is_empty() {
                "nothing".into()
            } else {
                props.join(", ")
            }
        ))
    }
}

impl Args {
    pub(super) fn object_type(&self) -> &str {
        self.object_type.as_deref().unwrap_or("contacts")
    }

    pub(super) fn id_property(&self) -> &str {
        self.id_property.as_deref().unwrap_or("email")
    }
}

impl HubSpotUpsert {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let profile = Self::default_profile();
        let api = PartnerClient::bearer(base_url, token, profile.call_timeout);
        Self {
            parts: Parts::new("hubspot.upsert", profile, api),
        }
    }

    /// The unique property is a key HubSpot never forgets: replays are always allowed.
    pub fn default_profile() -> CellProfile {
        CellProfile {
            key: Some(KeySupport {
                field: "idProperty (natural)".into(),
                max_len: 255,
                retention: Duration::from_secs(10 * 365 * 24 * 3600),
                safety_margin: Duration::from_secs(24 * 3600),
            }),
            replay: ReplayModel::CurrentState,
            lookup: Lookup::Strong,
            settle_time: Duration::from_secs(10),
            doubt_horizon: Duration::from_secs(24 * 3600),
            call_timeout: Duration::from_secs(20),
            retry: RetryPolicy::default(),
            approval: ApprovalPolicy::Never,
            rate_limit: Some(idem_core::profile::RateLimit::per_second(10)),
            strategy: "natural idempotency: upsert by a unique property; the identical payload \
                       is resent freely; read by the property to reconcile"
                .into(),
        }
    }
}

fn receipt(object: &Value, new: Option<bool>) -> Receipt {
    Receipt {
        partner_ref: object["id"].as_str().unwrap_or_default().to_owned(),
        response_digest: sha256_hex(canonical_json(&object["properties"]).as_bytes()),
        detail: json!({"object": "crm_object", "new": new}),
    }
}

#[async_trait]
impl TypedCell for HubSpotUpsert {
    type Args = Args;
    const CARD: Card = crate::card!("upsert.md");

    crate::parts!();

    async fn send(&self, action: ActionId, args: &Args, _: &Attempt) -> ExecOutcome {
        upsert(&self.parts.api, action, args).await
    }

    async fn find(&self, _: ActionId, args: &Args, _: &[Attempt]) -> Verdict {
        read(&self.parts.api, args).await
    }
}

/// Upsert one object (the batch endpoint with one input).
pub(super) async fn upsert(api: &PartnerClient, action: ActionId, args: &Args) -> ExecOutcome {
    let body = json!({"inputs": [{
        "idProperty": args.id_property(),
        "id": args.id,
        "properties": as_strings(&args.properties),
        "objectWriteTraceId": action.to_string(),
    }]});
    let path = format!("/crm/v3/objects/{}/batch/upsert", args.object_type());
    let req = api.post(&path).json(&body);
    let crate::http::Answer { status, body, .. } =
        match crate::http::call(req, "hubspot.batch_upsert").await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
    match status {
        200 | 201 => match body["results"].as_array().and_then(|r| r.first()) {
            Some(o) => ExecOutcome::Succeeded(receipt(o, o["new"].as_bool())),
            None => ExecOutcome::Ambiguous {
                reason: "upsert answered without results".into(),
                replayed_error: false,
            },
        },
        429 => ExecOutcome::NotProcessed {
            reason: "429 rate limited: rejected before processing".into(),
            retry_after: None,
        },
        409 => ExecOutcome::Ambiguous {
            reason: "409 concurrent write".into(),
            replayed_error: false,
        },
        s if s >= 500 => ExecOutcome::Ambiguous {
            reason: format!("{s} {}", body["category"].as_str().unwrap_or("error")),
            replayed_error: false,
        },
        s => ExecOutcome::Failed {
            reason: format!(
                "{s} {}: {}",
                body["category"].as_str().unwrap_or("error"),
                body["message"].as_str().unwrap_or("")
            ),
        },
    }
}

/// Read the object by its unique property: ours if it carries our properties.
pub(super) async fn read(api: &PartnerClient, args: &Args) -> Verdict {
    let path = format!("/crm/v3/objects/{}/{}", args.object_type(), args.id);
    // Only default properties come back unless named; every value comes back a string.
    let names: Vec<&str> = args.properties.keys().map(String::as_str).collect();
    let req = api.get(&path).query(&[
        ("idProperty", args.id_property()),
        ("properties", &names.join(",")),
    ]);
    let resp = match crate::http::send_traced(req, "hubspot.read").await {
        Ok(r) => r,
        Err(e) => {
            return Verdict::Unknown {
                reason: format!("lookup failed: {}", crate::http::without_url(&e)),
            }
        }
    };
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    match status {
        404 => Verdict::NotHappened,
        200 => {
            let theirs = |k: &str| body["properties"].get(k).and_then(Value::as_str);
            if as_strings(&args.properties)
                .iter()
                .all(|(k, v)| theirs(k) == Some(v.as_str()))
            {
                Verdict::Happened(receipt(&body, None))
            } else {
                Verdict::Unknown {
                    reason: "the object exists with other values (another writer?)".into(),
                }
            }
        }
        s => Verdict::Unknown {
            reason: format!("lookup answered {s}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::Cell;

    #[test]
    fn validation_names_the_field_and_debug_hides_the_token() {
        let c = HubSpotUpsert::new("http://x", "pat-secret");
        assert!(c
            .validate(&json!({"id": "a@b.c", "properties": {"firstname": "Ada"}}))
            .is_ok());
        for (args, field) in [
            (json!({"properties": {}}), "id"),
            (json!({"id": "a@b.c"}), "properties"),
            (
                json!({"id": "a@b.c", "properties": {"x": [1]}}),
                "properties.x",
            ),
            (
                json!({"id": "a@b.c", "properties": {}, "object_type": "Contacts!"}),
                "object_type",
            ),
            (
                json!({"id": "a@b.c", "properties": {}, "extra": 1}),
                "extra",
            ),
        ] {
            let e = c.validate(&args).unwrap_err();
            assert!(e.reason.contains(field), "{e}");
        }
        assert!(!format!("{c:?}").contains("pat-secret"));
    }
}
