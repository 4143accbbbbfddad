//! Tool schemas the model APIs accept. A cell's input schema is written for validation; a
//! model API wants a narrower dialect: no composition at the top level (Anthropic and
//! OpenAI reject a tool list with one), and in OpenAI's strict mode every property
//! required (optional ones nullable), `additionalProperties: false` on every object, and
//! no length keywords. [`for_model`] rewrites a cell's schema into that dialect; on a call,
//! [`strip_nulls`] turns the nulls a strict model sends for "absent" back into absence, so
//! the cell's own validation sees what it always saw. [`strict_violations`] restates the
//! published rules, for the test that holds every listed tool to them.

use serde_json::{json, Map, Value};

/// Keywords OpenAI's strict mode does not accept anywhere in a schema.
const UNSUPPORTED: &[&str] = &[
    "allOf",
    "oneOf",
    "not",
    "if",
    "then",
    "else",
    "dependentRequired",
    "dependentSchemas",
    "patternProperties",
    "propertyNames",
    "unevaluatedProperties",
    "minProperties",
    "maxProperties",
    "unevaluatedItems",
    "contains",
    "minContains",
    "maxContains",
    "uniqueItems",
    "minLength",
    "maxLength",
];

/// Composition a model API refuses at a tool schema's top level.
const NOT_AT_TOP: &[&str] = &[
    "oneOf", "anyOf", "allOf", "not", "enum", "if", "then", "else",
];

/// `format` values strict mode accepts.
const FORMATS: &[&str] = &[
    "date-time",
    "time",
    "date",
    "duration",
    "email",
    "hostname",
    "ipv4",
    "ipv6",
    "uuid",
];

/// The schema to show a model: optional properties become required and nullable, objects
/// with properties forbid others, length limits move into the description (the cell still
/// enforces them). Map-style and free-form objects are left as they are: strict mode
/// cannot express them, and [`strict_violations`] says so.
pub fn for_model(schema: &Value) -> Value {
    let mut s = schema.clone();
    rewrite(&mut s);
    s
}

fn rewrite(node: &mut Value) {
    let Some(obj) = node.as_object_mut() else {
        return;
    };
    let mut limits = vec![];
    if let Some(n) = obj.remove("minLength") {
        limits.push(format!("at least {n} characters"));
    }
    if let Some(n) = obj.remove("maxLength") {
        limits.push(format!("at most {n} characters"));
    }
    if !limits.is_empty() {
        let d = obj.get("description").and_then(Value::as_str).unwrap_or("");
        let sep = if d.is_empty() { "" } else { " " };
        obj.insert(
            "description".into(),
            json!(format!("{d}{sep}({}).", limits.join(", "))),
        );
    }
    let required: Vec<String> = obj
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if let Some(Value::Object(props)) = obj.get_mut("properties") {
        let keys: Vec<String> = props.keys().cloned().collect();
        for (k, p) in props.iter_mut() {
            rewrite(p);
            if !required.contains(k) {
                nullable(p);
            }
        }
        obj.insert("required".into(), json!(keys));
        obj.entry("additionalProperties").or_insert(json!(false));
    }
    if let Some(items) = obj.get_mut("items") {
        rewrite(items);
    }
    if let Some(Value::Array(alts)) = obj.get_mut("anyOf") {
        alts.iter_mut().for_each(rewrite);
    }
}

/// Let `p` also be null (strict mode's way of saying "optional").
fn nullable(p: &mut Value) {
    let Some(o) = p.as_object_mut() else {
        return;
    };
    match o.get_mut("type") {
        Some(Value::String(t)) if t != "null" => {
            let t = t.clone();
            o.insert("type".into(), json!([t, "null"]));
        }
        Some(Value::Array(ts)) if !ts.contains(&json!("null")) => ts.push(json!("null")),
        Some(_) => {}
        None => {
            let inner = Value::Object(std::mem::take(o));
            o.insert("anyOf".into(), json!([inner, {"type": "null"}]));
            return;
        }
    }
    if let Some(Value::Array(e)) = o.get_mut("enum") {
        if !e.contains(&Value::Null) {
            e.push(Value::Null);
        }
    }
}

/// Remove the nulls a model sent for optional properties the cell's own `schema` does not
/// let be null, at every depth the schema describes.
pub fn strip_nulls(schema: &Value, args: &mut Value) {
    let (Some(s), Some(a)) = (schema.as_object(), args.as_object_mut()) else {
        if let (Some(items), Some(arr)) = (schema.get("items"), args.as_array_mut()) {
            arr.iter_mut().for_each(|x| strip_nulls(items, x));
        }
        return;
    };
    let required = |k: &str| {
        s.get("required")
            .and_then(Value::as_array)
            .is_some_and(|r| r.iter().any(|x| x == k))
    };
    let props = s.get("properties").and_then(Value::as_object);
    let empty = Map::new();
    let props = props.unwrap_or(&empty);
    a.retain(|k, v| {
        !(v.is_null() && !required(k) && props.get(k).is_some_and(|p| !accepts_null(p)))
    });
    for (k, v) in a.iter_mut() {
        if let Some(p) = props.get(k) {
            strip_nulls(p, v);
        }
    }
}

fn accepts_null(p: &Value) -> bool {
    match p.get("type") {
        Some(Value::String(t)) => t == "null",
        Some(Value::Array(ts)) => ts.contains(&json!("null")),
        _ => p
            .get("anyOf")
            .and_then(Value::as_array)
            .is_some_and(|alts| alts.iter().any(accepts_null)),
    }
}

/// Where `schema` breaks the published rules for tool schemas: composition at the top
/// level (Anthropic and OpenAI), and OpenAI's strict-mode subset. Empty: it passes.
pub fn strict_violations(schema: &Value) -> Vec<String> {
    let mut out = vec![];
    if schema.get("type") != Some(&json!("object")) {
        out.push("the top level must be an object".into());
    }
    for k in NOT_AT_TOP {
        if schema.get(*k).is_some() {
            out.push(format!("`{k}` at the top level"));
        }
    }
    check(schema, "", 0, &mut out);
    out
}

fn check(node: &Value, at: &str, depth: usize, out: &mut Vec<String>) {
    let Some(o) = node.as_object() else {
        return;
    };
    if depth > 10 {
        out.push(format!("{at}: nested deeper than 10 levels"));
    }
    for k in UNSUPPORTED {
        if o.contains_key(*k) {
            out.push(format!("{at}: `{k}` is not supported"));
        }
    }
    if let Some(f) = o.get("format").and_then(Value::as_str) {
        if !FORMATS.contains(&f) {
            out.push(format!("{at}: format `{f}` is not supported"));
        }
    }
    let is_object = match o.get("type") {
        Some(Value::String(t)) => t == "object",
        Some(Value::Array(ts)) => ts.contains(&json!("object")),
        _ => false,
    };
    if is_object {
        match o.get("properties").and_then(Value::as_object) {
            None => out.push(format!("{at}: an object without `properties` (free-form)")),
            Some(props) => {
                let required: Vec<&str> = o
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                for (k, p) in props {
                    if !required.contains(&k.as_str()) {
                        out.push(format!("{at}/{k}: not in `required`"));
                    }
                    check(p, &format!("{at}/{k}"), depth + 1, out);
                }
            }
        }
        match o.get("additionalProperties") {
            Some(Value::Bool(false)) => {}
            Some(Value::Object(_)) => out.push(format!(
                "{at}: map-style `additionalProperties` (arbitrary keys)"
            )),
            _ => out.push(format!("{at}: `additionalProperties` must be false")),
        }
    }
    if let Some(items) = o.get("items") {
        check(items, &format!("{at}/items"), depth + 1, out);
    }
    if let Some(alts) = o.get("anyOf").and_then(Value::as_array) {
        for (i, a) in alts.iter().enumerate() {
            check(a, &format!("{at}/anyOf/{i}"), depth + 1, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn charge() -> Value {
        json!({
            "type": "object",
            "properties": {
                "amount": {"type": "integer", "minimum": 1},
                "description": {"type": "string", "maxLength": 500},
                "metadata": {"type": "object", "properties": {"order": {"type": "string"}}}
            },
            "required": ["amount"],
            "additionalProperties": false
        })
    }

    #[test]
    fn optional_becomes_required_and_nullable_and_passes_strict() {
        assert!(!strict_violations(&charge()).is_empty());
        let m = for_model(&charge());
        assert_eq!(strict_violations(&m), Vec::<String>::new(), "{m}");
        assert_eq!(m["required"], json!(["amount", "description", "metadata"]));
        assert_eq!(
            m["properties"]["description"]["type"],
            json!(["string", "null"])
        );
        assert!(m["properties"]["description"]["description"]
            .as_str()
            .unwrap()
            .contains("at most 500 characters"));
        assert_eq!(m["properties"]["metadata"]["additionalProperties"], false);
    }

    #[test]
    fn nulls_for_optional_properties_are_removed_and_others_kept() {
        let mut a = json!({"amount": 5, "description": null, "metadata": {"order": null}});
        strip_nulls(&charge(), &mut a);
        assert_eq!(a, json!({"amount": 5, "metadata": {}}));
        // A null where the cell requires a value stays, so the cell's validation refuses it.
        let mut a = json!({"amount": null});
        strip_nulls(&charge(), &mut a);
        assert_eq!(a, json!({"amount": null}));
    }

    #[test]
    fn the_rules_catch_what_model_apis_reject() {
        let top = json!({"type": "object", "properties": {}, "required": [], "additionalProperties": false,
                         "oneOf": [{"required": ["a"]}]});
        assert!(strict_violations(&top)
            .iter()
            .any(|v| v.contains("`oneOf` at the top level")));
        let map = json!({"type": "object", "properties": {"p": {"type": "object", "additionalProperties": {"type": "string"}}},
                         "required": ["p"], "additionalProperties": false});
        assert!(strict_violations(&map)
            .iter()
            .any(|v| v.contains("map-style")));
        let bare = json!({"type": "object", "properties": {"o": {"type": "object"}}, "required": ["o"],
                          "additionalProperties": false});
        assert!(strict_violations(&bare)
            .iter()
            .any(|v| v.contains("free-form")));
    }
}
