//! The cell kit. A built-in cell writes four things: its argument type, its card, how it
//! sends and how it looks for an earlier effect. The kit derives the rest: the input
//! schema and the validation both come from the one argument type (so the HTTP API, the
//! MCP tools and the worker cannot disagree), `name`/`profile`/`with_profile`, and the
//! [`Cell`] implementation the worker runs.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use idem_core::{ActionId, CellName, CellProfile, ExecOutcome, Verdict};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::cell::{Attempt, Cell, InvalidArgs};
use crate::http::PartnerClient;

/// A cell's arguments: one Rust type whose JSON Schema (derived, `#[serde(deny_unknown_fields)]`
/// for `additionalProperties: false`, `#[schemars(pattern(..), length(..), range(..))]` for
/// the limits) is what callers see and what the worker enforces.
pub trait CellArgs: DeserializeOwned + schemars::JsonSchema + Send + Sync + 'static {
    /// Rules the published schema leaves out because a model API would refuse the whole
    /// tool list over them (a top-level `oneOf`, e.g. "exactly one of from and
    /// messaging_service_sid"). Word the error "field: what is wrong".
    fn check(&self) -> Result<(), String> {
        Ok(())
    }

    /// JSON Schema keywords AND-ed to the arguments' schema in the OpenAPI document only,
    /// for a rule [`CellArgs::check`] enforces that a model API would refuse in a tool's
    /// schema (twilio's "exactly one of from / messaging_service_sid" as a `oneOf`).
    fn document_rules() -> Option<serde_json::Value> {
        None
    }

    /// What the action will do, in one sentence for a person approving it; money in major
    /// units ([`crate::summary::money`]). `None`: the console shows the arguments only.
    fn summary(&self) -> Option<String> {
        None
    }
}

/// A cell's card (its failure-mode analysis in Markdown), kept next to its code and
/// compiled in so the console can show it without a checkout. Made by [`card!`](crate::card).
#[derive(Debug, Clone, Copy)]
pub struct Card {
    /// The source file that declared the card (`file!()`); the card sits beside it.
    pub source: &'static str,
    pub file: &'static str,
    pub text: &'static str,
}

impl Card {
    /// The card's path relative to the repository (beside the cell's source file).
    pub fn path(&self) -> String {
        match self.source.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{}", self.file),
            None => self.file.to_owned(),
        }
    }
}

/// The card in `$file`, beside the source file that names it.
#[macro_export]
macro_rules! card {
    ($file:literal) => {
        $crate::kit::Card {
            source: file!(),
            file: $file,
            text: include_str!($file),
        }
    };
}

/// `parts()` and `parts_mut()` for a cell whose [`Parts`] are its field `parts`.
#[macro_export]
macro_rules! parts {
    () => {
        fn parts(&self) -> &$crate::kit::Parts {
            &self.parts
        }

        fn parts_mut(&mut self) -> &mut $crate::kit::Parts {
            &mut self.parts
        }
    };
}

/// What every built-in cell holds: its name, its profile and its partner.
#[derive(Debug, Clone)]
pub struct Parts {
    pub name: CellName,
    pub profile: CellProfile,
    pub api: PartnerClient,
}

impl Parts {
    /// `api` gets the profile's call timeout.
    pub fn new(name: &'static str, profile: CellProfile, api: PartnerClient) -> Self {
        Self {
            name: CellName::new(name).expect("a built-in cell's name is valid"),
            api: api.with_timeout(profile.call_timeout),
            profile,
        }
    }
}

/// A cell written with the kit; [`Cell`] comes with it.
#[async_trait]
pub trait TypedCell: Send + Sync + std::fmt::Debug + 'static {
    type Args: CellArgs;

    /// The card, `card!("post.md")`.
    const CARD: Card;

    /// False for read-only cells (a price quote): no effect, nothing in a partner's ledger.
    const EFFECTFUL: bool = true;

    /// The cell's name, profile and partner client; [`parts!`](crate::parts) writes both.
    fn parts(&self) -> &Parts;

    fn parts_mut(&mut self) -> &mut Parts;

    /// State recorded with the attempt before it is sent, for reconciliation later.
    fn pre_state(&self, now: DateTime<Utc>) -> Value {
        serde_json::json!({ "t0": now.timestamp() })
    }

    /// Send the request and classify the answer.
    async fn send(&self, action: ActionId, args: &Self::Args, attempt: &Attempt) -> ExecOutcome;

    /// Ask the partner whether any of `attempts` had its effect.
    async fn find(&self, action: ActionId, args: &Self::Args, attempts: &[Attempt]) -> Verdict;

    /// The cell under other timings (configuration, tests); the partner client follows
    /// the call timeout.
    fn with_profile(mut self, f: impl FnOnce(&mut CellProfile)) -> Self
    where
        Self: Sized,
    {
        let parts = self.parts_mut();
        f(&mut parts.profile);
        parts.api = parts.api.clone().with_timeout(parts.profile.call_timeout);
        self
    }
}

#[async_trait]
impl<T: TypedCell> Cell for T {
    fn name(&self) -> &CellName {
        &self.parts().name
    }

    fn profile(&self) -> &CellProfile {
        &self.parts().profile
    }

    fn input_schema(&self) -> Value {
        schema_of::<T::Args>()
    }

    fn validate(&self, args: &Value) -> Result<(), InvalidArgs> {
        parse::<T::Args>(self.name(), args).map(drop)
    }

    fn effectful(&self) -> bool {
        T::EFFECTFUL
    }

    fn card(&self) -> String {
        T::CARD.path()
    }

    fn card_text(&self) -> Option<&'static str> {
        Some(T::CARD.text)
    }

    fn summary(&self, args: &Value) -> Option<String> {
        parse::<T::Args>(self.name(), args).ok()?.summary()
    }

    fn document_schema(&self) -> Value {
        let mut s = schema_of::<T::Args>();
        if let Some(rules) = T::Args::document_rules() {
            s["allOf"] = serde_json::json!([rules]);
        }
        s
    }

    fn pre_state(&self, now: DateTime<Utc>) -> Value {
        TypedCell::pre_state(self, now)
    }

    async fn execute(&self, action: ActionId, args: &Value, attempt: &Attempt) -> ExecOutcome {
        match parse::<T::Args>(self.name(), args) {
            Ok(a) => self.send(action, &a, attempt).await,
            // Unreachable after the worker's check; never a request built from a guess.
            Err(e) => ExecOutcome::Failed {
                reason: e.to_string(),
            },
        }
    }

    async fn reconcile(&self, action: ActionId, args: &Value, attempts: &[Attempt]) -> Verdict {
        match parse::<T::Args>(self.name(), args) {
            Ok(a) => self.find(action, &a, attempts).await,
            Err(e) => Verdict::Unknown {
                reason: e.to_string(),
            },
        }
    }
}

/// The published input schema of `A`: JSON Schema 2020-12, subschemas inlined (tool
/// lists stay self-contained), no `$schema`/`title` at the top, optional fields without
/// `null` (absent means absent), descriptions unwrapped, and no integer `format`s (`uint64` is not JSON Schema's
/// and OpenAI's strict mode refuses it; the range says the same).
pub fn schema_of<A: schemars::JsonSchema>() -> Value {
    let mut v = schemars::generate::SchemaSettings::draft2020_12()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator()
        .into_root_schema_for::<A>()
        .to_value();
    if let Some(o) = v.as_object_mut() {
        o.remove("title");
    }
    tidy(&mut v);
    v
}

fn tidy(node: &mut Value) {
    let Some(o) = node.as_object_mut() else {
        if let Some(items) = node.as_array_mut() {
            items.iter_mut().for_each(tidy);
        }
        return;
    };
    if o.get("type").and_then(Value::as_str) == Some("integer") {
        o.remove("format");
    }
    if let Some(Value::Array(types)) = o.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let t = types.remove(0);
            o.insert("type".into(), t);
            if o["type"] == "integer" {
                o.remove("format");
            }
        }
    }
    if let Some(Value::Array(options)) = o.get_mut("enum") {
        options.retain(|v| !v.is_null());
    }
    // Doc comments wrap at 92 columns; a description is one paragraph.
    if let Some(Value::String(d)) = o.get_mut("description") {
        *d = d
            .split("\n\n")
            .map(|p| p.split('\n').collect::<Vec<_>>().join(" "))
            .collect::<Vec<_>>()
            .join("\n\n");
    }
    o.values_mut().for_each(tidy);
}

/// The compiled schema of `A`, compiled once per type.
fn validator<A: schemars::JsonSchema + 'static>() -> Result<Arc<jsonschema::Validator>, String> {
    type Cache = RwLock<HashMap<TypeId, Result<Arc<jsonschema::Validator>, String>>>;
    static CACHE: OnceLock<Cache> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(v) = cache.read().expect("not poisoned").get(&TypeId::of::<A>()) {
        return v.clone();
    }
    let compiled = jsonschema::validator_for(&schema_of::<A>())
        .map(Arc::new)
        .map_err(|e| format!("the cell's input schema does not compile: {e}"));
    cache
        .write()
        .expect("not poisoned")
        .insert(TypeId::of::<A>(), compiled.clone());
    compiled
}

/// `args` as `A`: the schema first (its error names the field), then serde, then
/// [`CellArgs::check`].
pub fn parse<A: CellArgs>(cell: &CellName, args: &Value) -> Result<A, InvalidArgs> {
    let err = |reason: String| InvalidArgs {
        cell: cell.to_string(),
        reason,
    };
    let v = validator::<A>().map_err(err)?;
    if let Some(e) = v.iter_errors(args).next() {
        let at = e.instance_path().to_string();
        let field = at.trim_start_matches('/').replace('/', ".");
        return Err(err(if field.is_empty() {
            e.to_string()
        } else {
            format!("{field}: {e}")
        }));
    }
    let a: A =
        serde_json::from_value(whole_numbers(args.clone())).map_err(|e| err(e.to_string()))?;
    a.check().map_err(err)?;
    Ok(a)
}

/// `5.0` as `5`: JSON Schema counts a number with a zero fraction as an integer, so the
/// schema accepts it, and serde's integer fields must too.
fn whole_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f >= 0.0 && f < u64::MAX as f64 => Value::from(f as u64),
            Some(f) if f.fract() == 0.0 && f < 0.0 && f >= i64::MIN as f64 => Value::from(f as i64),
            _ => Value::Number(n),
        },
        Value::Array(a) => Value::Array(a.into_iter().map(whole_numbers).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, whole_numbers(v))).collect())
        }
        v => v,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_whole_float_is_an_integer_as_json_schema_says() {
        assert_eq!(
            whole_numbers(json!({"a": [5.0, -2.0, 1.5, 7]})),
            json!({"a": [5, -2, 1.5, 7]})
        );
    }

    /// Arguments of a made-up cell.
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Demo {
        /// In minor units.
        #[schemars(range(min = 1))]
        amount: u64,
        #[schemars(pattern("^[a-z]{3}$"))]
        currency: String,
        note: Option<String>,
    }

    impl CellArgs for Demo {
        fn check(&self) -> Result<(), String> {
            match self.note.as_deref() {
                Some("forbidden") => Err("note: not that one".into()),
                _ => Ok(()),
            }
        }
    }

    #[test]
    fn the_schema_is_the_one_the_validation_runs() {
        let s = schema_of::<Demo>();
        assert_eq!(s["additionalProperties"], false);
        assert_eq!(s["required"], json!(["amount", "currency"]));
        assert_eq!(
            s["properties"]["amount"],
            json!({"type": "integer", "minimum": 1, "description": "In minor units."})
        );
        assert_eq!(s["properties"]["note"]["type"], "string");
        assert!(s.get("$schema").is_none() && s.get("title").is_none());
        let cell = CellName::new("demo.cell").unwrap();
        let ok = |a| parse::<Demo>(&cell, &a).map(drop).map_err(|e| e.reason);
        assert_eq!(ok(json!({"amount": 5, "currency": "usd"})), Ok(()));
        for (args, field) in [
            (json!({"amount": 0, "currency": "usd"}), "amount: "),
            (json!({"amount": 5, "currency": "USD"}), "currency: "),
            (
                json!({"amount": 5, "currency": "usd", "note": null}),
                "note: ",
            ),
            (json!({"amount": 5, "currency": "usd", "x": 1}), "'x'"),
            (
                json!({"amount": 5, "currency": "usd", "note": "forbidden"}),
                "note: not that one",
            ),
        ] {
            let reason = ok(args.clone()).unwrap_err();
            assert!(reason.contains(field), "{args}: {reason}");
        }
    }
}
