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

use std::time::Duration;

use async_trait::async_trait;
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::profile::{ApprovalPolicy, KeySupport, Lookup, ReplayModel};
use idem_core::{ActionId, CellName, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use serde_json::{json, Value};

use crate::cell::{Attempt, Cell, InvalidArgs};
use crate::http::PartnerClient;

/// The `hubspot.upsert` cell. Arguments: `object_type` (default `contacts`),
/// `id_property` (default `email`), `id` (the unique value), `properties` (object of
/// scalars).
#[derive(Clone, Debug)]
pub struct HubSpotUpsert {
    name: CellName,
    profile: CellProfile,
    api: PartnerClient,
}

fn arg_err(reason: impl Into<String>) -> InvalidArgs {
    InvalidArgs {
        cell: "hubspot.upsert".into(),
        reason: reason.into(),
    }
}

fn object_type(args: &Value) -> &str {
    args["object_type"].as_str().unwrap_or("contacts")
}

fn id_property(args: &Value) -> &str {
    args["id_property"].as_str().unwrap_or("email")
}

impl HubSpotUpsert {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let profile = Self::default_profile();
        Self {
            name: CellName::new("hubspot.upsert").expect("valid"),
            api: PartnerClient::bearer(base_url, token, profile.call_timeout),
            profile,
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

    pub fn with_profile(mut self, f: impl FnOnce(&mut CellProfile)) -> Self {
        f(&mut self.profile);
        self.api = self.api.with_timeout(self.profile.call_timeout);
        self
    }

    fn receipt(object: &Value, new: Option<bool>) -> Receipt {
        Receipt {
            partner_ref: object["id"].as_str().unwrap_or_default().to_owned(),
            response_digest: sha256_hex(canonical_json(&object["properties"]).as_bytes()),
            detail: json!({"object": "crm_object", "new": new}),
        }
    }
}

#[async_trait]
impl Cell for HubSpotUpsert {
    fn name(&self) -> &CellName {
        &self.name
    }

    fn profile(&self) -> &CellProfile {
        &self.profile
    }

    fn input_schema(&self) -> serde_json::Value {
        json!({
            "type": "object",
            "description": "Create or update one CRM object by a unique property (batch upsert of one).",
            "properties": {
                "object_type": {"type": "string", "pattern": "^[a-z0-9_]+$", "description": "contacts (default), companies, …"},
                "id_property": {"type": "string", "pattern": "^[a-z0-9_]+$", "description": "The unique property (default email)."},
                "id": {"type": "string", "minLength": 1, "maxLength": 255, "description": "The unique property's value."},
                "properties": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}}
            },
            "required": ["id", "properties"],
            "additionalProperties": false
        })
    }

    fn validate(&self, args: &Value) -> Result<(), InvalidArgs> {
        let obj = args
            .as_object()
            .ok_or_else(|| arg_err("args must be an object"))?;
        let ident = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        };
        if let Some(t) = obj.get("object_type") {
            if !t.as_str().is_some_and(ident) {
                return Err(arg_err(
                    "object_type: [a-z0-9_]+ (e.g. contacts, companies)",
                ));
            }
        }
        if let Some(p) = obj.get("id_property") {
            if !p.as_str().is_some_and(ident) {
                return Err(arg_err(
                    "id_property: [a-z0-9_]+ (a unique property, e.g. email)",
                ));
            }
        }
        match obj.get("id").and_then(Value::as_str) {
            Some(id) if !id.is_empty() && id.len() <= 255 => {}
            _ => return Err(arg_err("id: required string, the unique property's value")),
        }
        let props = obj
            .get("properties")
            .and_then(Value::as_object)
            .ok_or_else(|| arg_err("properties: required object"))?;
        if let Some((k, _)) = props
            .iter()
            .find(|(_, v)| !(v.is_string() || v.is_number() || v.is_boolean()))
        {
            return Err(arg_err(format!(
                "properties.{k}: must be a string, number or boolean"
            )));
        }
        if let Some(unknown) = obj
            .keys()
            .find(|k| !["object_type", "id_property", "id", "properties"].contains(&k.as_str()))
        {
            return Err(arg_err(format!("unknown field {unknown:?}")));
        }
        Ok(())
    }

    async fn execute(&self, action: ActionId, args: &Value, _: &Attempt) -> ExecOutcome {
        let body = json!({"inputs": [{
            "idProperty": id_property(args),
            "id": args["id"],
            "properties": args["properties"],
            "objectWriteTraceId": action.to_string(),
        }]});
        let path = format!("/crm/v3/objects/{}/batch/upsert", object_type(args));
        let req = self.api.post(&path).json(&body);
        let crate::http::Answer { status, body, .. } =
            match crate::http::call(req, "hubspot.batch_upsert").await {
                Ok(a) => a,
                Err(outcome) => return outcome,
            };
        match status {
            200 | 201 => match body["results"].as_array().and_then(|r| r.first()) {
                Some(o) => ExecOutcome::Succeeded(Self::receipt(o, o["new"].as_bool())),
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

    async fn reconcile(&self, _: ActionId, args: &Value, _: &[Attempt]) -> Verdict {
        let path = format!(
            "/crm/v3/objects/{}/{}",
            object_type(args),
            args["id"].as_str().unwrap_or_default()
        );
        let req = self
            .api
            .get(&path)
            .query(&[("idProperty", id_property(args))]);
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
                let ours = args["properties"].as_object().cloned().unwrap_or_default();
                if ours
                    .iter()
                    .all(|(k, v)| body["properties"].get(k) == Some(v))
                {
                    Verdict::Happened(Self::receipt(&body, None))
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
