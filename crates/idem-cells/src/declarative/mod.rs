//! `http.idempotent`: a cell defined in configuration (TOML), not code, for any API that
//! follows the IETF Idempotency-Key header draft. The file names the method, a URL
//! template, the key header and its retention, the argument fields, the status classes
//! and, optionally, a lookup URL and match rule. See `examples/cells/acme.payout.toml`.
//!
//! Failure modes are the draft's: a lost answer, timeout or 5xx is ambiguous and replayed
//! under the same key inside the key window; `409` (request outstanding) is ambiguous; the
//! `key_mismatch` class (`422`) and replayed errors go to the lookup; `not_processed`
//! classes (`429`) retry; `failure` classes fail. Without a lookup, a doubt the key window
//! cannot settle goes to a person.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use idem_core::canonical::{canonical_json, sha256_hex};
use idem_core::profile::{ApprovalPolicy, KeySupport, Lookup, ReplayModel};
use idem_core::{ActionId, CellName, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::cell::{Attempt, Cell, InvalidArgs};

/// The card every declarative cell shares (the kind, not the instance).
const CARD: crate::kit::Card = crate::card!("http.idempotent.md");

/// A configuration file that cannot become a cell.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cell config: {0}")]
    Parse(#[from] toml::de::Error),
    #[error("cell config {name}: {reason}")]
    Invalid { name: String, reason: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    name: String,
    #[serde(default = "post")]
    method: String,
    url: String,
    base: String,
    /// An environment variable that, when set, replaces `base` (one file, many deployments).
    base_env: Option<String>,
    token_env: Option<String>,
    #[serde(default = "idempotency_key")]
    key_header: String,
    /// How the key is written in its header: `sf-string` (the draft's: an RFC 8941 String,
    /// `"…"`) or `token` (bare, for partners that predate the draft, such as Stripe).
    #[serde(default)]
    key_format: KeyFormat,
    #[serde(default = "max_len")]
    key_max_len: usize,
    key_retention_secs: u64,
    key_margin_secs: u64,
    #[serde(default = "ten_s")]
    call_timeout_ms: u64,
    #[serde(default = "thirty_s")]
    settle_time_ms: u64,
    approval: Option<String>,
    #[serde(default = "id")]
    ref_field: String,
    #[serde(default)]
    args: ArgsSpec,
    lookup: Option<LookupSpec>,
    #[serde(default)]
    status: StatusSpec,
}

/// The key header's syntax.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum KeyFormat {
    /// `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"` (the draft, §2).
    #[default]
    SfString,
    /// `Idempotency-Key: 8e03978e-40d5-43e8-bc93-6894a57f9324`.
    Token,
}

fn post() -> String {
    "POST".into()
}
fn idempotency_key() -> String {
    "Idempotency-Key".into()
}
fn max_len() -> usize {
    255
}
fn ten_s() -> u64 {
    10_000
}
fn thirty_s() -> u64 {
    30_000
}
fn id() -> String {
    "id".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ArgsSpec {
    #[serde(default)]
    required: BTreeMap<String, ArgType>,
    #[serde(default)]
    optional: BTreeMap<String, ArgType>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum ArgType {
    String,
    Integer,
    Number,
    Boolean,
    Object,
    Array,
}

impl ArgType {
    fn json_type(self) -> &'static str {
        match self {
            ArgType::String => "string",
            ArgType::Integer => "integer",
            ArgType::Number => "number",
            ArgType::Boolean => "boolean",
            ArgType::Object => "object",
            ArgType::Array => "array",
        }
    }

    fn accepts(self, v: &Value) -> bool {
        match self {
            ArgType::String => v.is_string(),
            ArgType::Integer => v.is_i64() || v.is_u64(),
            ArgType::Number => v.is_number(),
            ArgType::Boolean => v.is_boolean(),
            ArgType::Object => v.is_object(),
            ArgType::Array => v.is_array(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupSpec {
    url: String,
    /// Dotted path to the array of candidates in the lookup's JSON.
    list: String,
    /// Dotted path, in each candidate, to the value that identifies ours.
    match_field: String,
    match_value: String,
    #[serde(default)]
    lag_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusSpec {
    #[serde(default = "success")]
    success: Vec<String>,
    #[serde(default = "failure")]
    failure: Vec<String>,
    #[serde(default = "not_processed")]
    not_processed: Vec<String>,
    #[serde(default = "key_mismatch")]
    key_mismatch: Vec<String>,
}

fn success() -> Vec<String> {
    vec!["2xx".into()]
}
fn failure() -> Vec<String> {
    ["400", "401", "403", "404"].map(String::from).to_vec()
}
fn not_processed() -> Vec<String> {
    vec!["429".into()]
}
fn key_mismatch() -> Vec<String> {
    vec!["422".into()]
}

impl Default for StatusSpec {
    fn default() -> Self {
        Self {
            success: success(),
            failure: failure(),
            not_processed: not_processed(),
            key_mismatch: key_mismatch(),
        }
    }
}

/// `2xx`-style class or an exact code.
fn in_class(classes: &[String], status: u16) -> bool {
    classes.iter().any(|c| match c.strip_suffix("xx") {
        Some(d) => d.parse::<u16>().is_ok_and(|d| status / 100 == d),
        None => c.parse::<u16>().is_ok_and(|c| c == status),
    })
}

fn valid_class(c: &str) -> bool {
    match c.strip_suffix("xx") {
        Some(d) => d.len() == 1 && d.parse::<u16>().is_ok_and(|d| (1..=5).contains(&d)),
        None => c.len() == 3 && c.parse::<u16>().is_ok_and(|c| (100..=599).contains(&c)),
    }
}

/// A dotted path into JSON (`data`, `metadata.idem_key`).
fn at<'a>(v: &'a Value, path: &str) -> &'a Value {
    path.split('.')
        .filter(|p| !p.is_empty())
        .fold(v, |v, p| &v[p])
}

/// A cell built from configuration.
#[derive(Clone)]
pub struct DeclarativeCell {
    name: CellName,
    profile: CellProfile,
    config: Config,
    token: Option<String>,
    http: reqwest::Client,
}

/// Redacts the token.
impl std::fmt::Debug for DeclarativeCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeclarativeCell")
            .field("name", &self.name)
            .field("url", &self.config.url)
            .field("base", &self.config.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl DeclarativeCell {
    /// Parse and check a TOML cell definition. The token is read from the environment
    /// variable the file names.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut config: Config = toml::from_str(text)?;
        if let Some(base) = config
            .base_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok())
            .filter(|b| !b.is_empty())
        {
            config.base = base;
        }
        config.base = config.base.trim_end_matches('/').to_owned();
        let invalid = |reason: String| ConfigError::Invalid {
            name: config.name.clone(),
            reason,
        };
        let name = CellName::new(&config.name).map_err(|e| invalid(e.to_string()))?;
        if !["POST", "PUT", "PATCH", "DELETE"].contains(&config.method.as_str()) {
            return Err(invalid(format!(
                "method {:?}: an effect needs POST, PUT, PATCH or DELETE",
                config.method
            )));
        }
        if !config.url.starts_with("{base}") && !config.url.starts_with("http") {
            return Err(invalid("url must start with {base} or http(s)://".into()));
        }
        if config.key_margin_secs == 0 || config.key_margin_secs >= config.key_retention_secs {
            return Err(invalid(
                "key_margin_secs must be above zero and below key_retention_secs".into(),
            ));
        }
        let s = &config.status;
        for c in s
            .success
            .iter()
            .chain(&s.failure)
            .chain(&s.not_processed)
            .chain(&s.key_mismatch)
        {
            if !valid_class(c) {
                return Err(invalid(format!("status class {c:?}: use e.g. 2xx or 429")));
            }
        }
        let approval = match &config.approval {
            Some(a) => ApprovalPolicy::parse(a).map_err(invalid)?,
            None => ApprovalPolicy::Never,
        };
        let lookup = match &config.lookup {
            None => Lookup::None,
            Some(l) if l.lag_secs == 0 => Lookup::Strong,
            Some(l) => Lookup::Eventual {
                lag_bound: Duration::from_secs(l.lag_secs),
            },
        };
        let profile = CellProfile {
            key: Some(KeySupport {
                field: config.key_header.clone(),
                max_len: config.key_max_len,
                retention: Duration::from_secs(config.key_retention_secs),
                safety_margin: Duration::from_secs(config.key_margin_secs),
            }),
            replay: ReplayModel::FrozenResponse,
            lookup,
            settle_time: Duration::from_millis(config.settle_time_ms),
            doubt_horizon: Duration::from_secs(config.key_retention_secs.max(3600) * 3),
            call_timeout: Duration::from_millis(config.call_timeout_ms),
            retry: RetryPolicy::default(),
            approval,
            rate_limit: None,
            strategy: format!(
                "declarative (IETF Idempotency-Key draft): {} under {}; same-key replay inside \
                 the key window{}",
                config.method,
                config.key_header,
                if config.lookup.is_some() {
                    ", then the configured lookup"
                } else {
                    "; no lookup: past it a person decides"
                }
            ),
        };
        let token = config
            .token_env
            .as_ref()
            .and_then(|v| std::env::var(v).ok());
        Ok(Self {
            name,
            http: crate::http::client(profile.call_timeout),
            profile,
            config,
            token,
        })
    }

    /// Point the cell at another base URL (a simulator, a staging host).
    pub fn with_base(mut self, base: impl Into<String>) -> Self {
        self.config.base = base.into().trim_end_matches('/').to_owned();
        self
    }

    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn with_profile(mut self, f: impl FnOnce(&mut CellProfile)) -> Self {
        f(&mut self.profile);
        self.http = crate::http::client(self.profile.call_timeout);
        self
    }

    /// Fill a template. `url` percent-encodes the `{args.NAME}` values (they go into a URL);
    /// without it they stay as they are (a lookup's `match_value` compares them with the
    /// partner's JSON).
    fn render(
        &self,
        template: &str,
        action: ActionId,
        key: Option<&str>,
        args: &Value,
        url: bool,
    ) -> String {
        let mut out = template
            .replace("{base}", &self.config.base)
            .replace("{action_id}", &action.to_string())
            .replace("{key}", key.unwrap_or_default());
        while let Some(start) = out.find("{args.") {
            let Some(len) = out[start..].find('}') else {
                break;
            };
            let field = &out[start + 6..start + len];
            let value = match &args[field] {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                v => v.to_string(),
            };
            let filled = if url {
                value
                    .bytes()
                    .map(|b| match b {
                        b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                            (b as char).to_string()
                        }
                        _ => format!("%{b:02X}"),
                    })
                    .collect()
            } else {
                value
            };
            out.replace_range(start..start + len + 1, &filled);
        }
        out
    }

    fn authed(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    fn receipt(&self, body: &Value) -> Receipt {
        Receipt {
            partner_ref: match at(body, &self.config.ref_field) {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                v => v.to_string(),
            },
            response_digest: sha256_hex(canonical_json(body).as_bytes()),
            detail: serde_json::json!({"cell": self.name.as_str()}),
        }
    }
}

fn arg_err(cell: &str, reason: impl Into<String>) -> InvalidArgs {
    InvalidArgs {
        cell: cell.into(),
        reason: reason.into(),
    }
}

#[async_trait]
impl Cell for DeclarativeCell {
    fn name(&self) -> &CellName {
        &self.name
    }

    fn profile(&self) -> &CellProfile {
        &self.profile
    }

    fn card(&self) -> String {
        CARD.path()
    }

    fn card_text(&self) -> Option<&'static str> {
        Some(CARD.text)
    }

    fn input_schema(&self) -> Value {
        let spec = &self.config.args;
        let properties: serde_json::Map<String, Value> = spec
            .required
            .iter()
            .chain(&spec.optional)
            .map(|(k, ty)| (k.clone(), json!({"type": ty.json_type()})))
            .collect();
        json!({
            "type": "object",
            "description": format!("{} {} (declarative cell, Idempotency-Key)", self.config.method, self.config.url),
            "properties": properties,
            "required": spec.required.keys().collect::<Vec<_>>(),
            "additionalProperties": false
        })
    }

    fn validate(&self, args: &Value) -> Result<(), InvalidArgs> {
        let cell = self.name.as_str();
        let obj = args
            .as_object()
            .ok_or_else(|| arg_err(cell, "args must be an object"))?;
        let spec = &self.config.args;
        for (field, ty) in &spec.required {
            match obj.get(field) {
                Some(v) if ty.accepts(v) => {}
                Some(_) => return Err(arg_err(cell, format!("{field}: must be {ty:?}"))),
                None => return Err(arg_err(cell, format!("{field}: required ({ty:?})"))),
            }
        }
        for (field, v) in obj {
            if spec.required.contains_key(field) {
                continue;
            }
            match spec.optional.get(field) {
                Some(ty) if ty.accepts(v) => {}
                Some(ty) => return Err(arg_err(cell, format!("{field}: must be {ty:?}"))),
                None => return Err(arg_err(cell, format!("unknown field {field:?}"))),
            }
        }
        Ok(())
    }

    async fn execute(&self, action: ActionId, args: &Value, attempt: &Attempt) -> ExecOutcome {
        let url = self.render(&self.config.url, action, attempt.key.as_deref(), args, true);
        let method = reqwest::Method::from_bytes(self.config.method.as_bytes())
            .unwrap_or(reqwest::Method::POST);
        let mut req = self.authed(self.http.request(method, url)).json(args);
        if let Some(key) = &attempt.key {
            let value = match self.config.key_format {
                KeyFormat::Token => key.clone(),
                // idem's keys are printable ASCII, so every one is a valid sf-string.
                KeyFormat::SfString => match sfv::StringRef::from_str(key) {
                    Ok(k) => sfv::ItemSerializer::new().bare_item(k).finish(),
                    Err(e) => {
                        return ExecOutcome::Failed {
                            reason: format!("the key cannot be an RFC 8941 String: {e}"),
                        }
                    }
                },
            };
            req = req.header(self.config.key_header.as_str(), value);
        }
        let crate::http::Answer {
            status,
            retry_after,
            body,
            ..
        } = match crate::http::call(req, "http.idempotent").await {
            Ok(a) => a,
            Err(outcome) => return outcome,
        };
        let s = &self.config.status;
        let detail = || {
            body["detail"]
                .as_str()
                .or(body["title"].as_str())
                .or(body["message"].as_str())
                .unwrap_or("")
                .to_owned()
        };
        if in_class(&s.success, status) {
            ExecOutcome::Succeeded(self.receipt(&body))
        } else if in_class(&s.not_processed, status) {
            ExecOutcome::NotProcessed {
                reason: format!("{status}: not processed"),
                retry_after,
            }
        } else if in_class(&s.key_mismatch, status) {
            ExecOutcome::Ambiguous {
                reason: format!("{status} key mismatch: {}", detail()),
                replayed_error: true,
            }
        } else if in_class(&s.failure, status) {
            ExecOutcome::Failed {
                reason: format!("{status}: {}", detail()),
            }
        } else {
            // The draft has no replay marker: a 5xx on a resend may be the stored answer of
            // the first request, and resending again would only fetch it again. From the
            // second attempt on, let the lookup decide.
            ExecOutcome::Ambiguous {
                reason: format!("{status}: {}", detail()),
                replayed_error: status >= 500 && attempt.number > 1,
            }
        }
    }

    async fn reconcile(&self, action: ActionId, args: &Value, attempts: &[Attempt]) -> Verdict {
        let Some(l) = &self.config.lookup else {
            return Verdict::Unknowable {
                reason: format!("{} has no lookup configured", self.name),
            };
        };
        let mut keys: Vec<Option<&str>> = attempts.iter().map(|a| a.key.as_deref()).collect();
        keys.dedup();
        for key in keys {
            let url = self.render(&l.url, action, key, args, true);
            let want = self.render(&l.match_value, action, key, args, false);
            let req = self.authed(self.http.get(url));
            let resp = match crate::http::send_traced(req, "http.idempotent.lookup").await {
                Ok(r) => r,
                Err(e) => {
                    return Verdict::Unknown {
                        reason: format!("lookup failed: {}", crate::http::without_url(&e)),
                    }
                }
            };
            if !resp.status().is_success() {
                return Verdict::Unknown {
                    reason: format!("lookup answered {}", resp.status()),
                };
            }
            let body: Value = match resp.json().await {
                Ok(v) => v,
                Err(_) => {
                    return Verdict::Unknown {
                        reason: "lookup body is not JSON".into(),
                    }
                }
            };
            if let Some(found) = at(&body, &l.list).as_array().and_then(|a| {
                a.iter()
                    .find(|o| at(o, &l.match_field).as_str() == Some(want.as_str()))
            }) {
                return Verdict::Happened(self.receipt(found));
            }
        }
        Verdict::NotHappened
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const EXAMPLE: &str = include_str!("../../../../examples/cells/acme.payout.toml");

    #[test]
    fn the_example_config_loads() {
        let c = DeclarativeCell::from_toml(EXAMPLE).unwrap();
        assert_eq!(c.name().as_str(), "acme.payout");
        assert_eq!(c.profile().lookup, Lookup::Strong);
        assert!(matches!(c.profile().approval, ApprovalPolicy::Above { .. }));
        assert!(c.profile().window_check(None).is_ok());
        assert!(c
            .validate(&json!({"amount": 5, "currency": "eur", "destination": "acct_1"}))
            .is_ok());
        for (args, field) in [
            (json!({"currency": "eur", "destination": "a"}), "amount"),
            (
                json!({"amount": "5", "currency": "eur", "destination": "a"}),
                "amount",
            ),
            (
                json!({"amount": 5, "currency": "eur", "destination": "a", "memo": 1}),
                "memo",
            ),
            (
                json!({"amount": 5, "currency": "eur", "destination": "a", "x": 1}),
                "x",
            ),
        ] {
            assert!(c.validate(&args).unwrap_err().reason.contains(field));
        }
    }

    #[test]
    fn bad_configs_are_refused_with_a_reason() {
        for (edit, want) in [
            (
                EXAMPLE.replace("method = \"POST\"", "method = \"GET\""),
                "method",
            ),
            (
                EXAMPLE.replace("key_margin_secs = 3600", "key_margin_secs = 0"),
                "margin",
            ),
            (
                EXAMPLE.replace("success = [\"2xx\"]", "success = [\"2x\"]"),
                "status class",
            ),
            (
                EXAMPLE.replace("approval = \"amount>=500000\"", "approval = \"lots\""),
                "approval",
            ),
            (format!("{EXAMPLE}\nsurprise = 1\n"), "surprise"),
        ] {
            let e = DeclarativeCell::from_toml(&edit).unwrap_err().to_string();
            assert!(e.contains(want), "{want}: {e}");
        }
    }

    #[test]
    fn templates_and_classes() {
        let c = DeclarativeCell::from_toml(EXAMPLE)
            .unwrap()
            .with_base("http://h");
        let id = ActionId::random();
        let url = c.render(
            "{base}/x/{args.destination}?k={key}&a={action_id}",
            id,
            Some("idem-1-g0"),
            &json!({"destination": "a b/c"}),
            true,
        );
        assert_eq!(url, format!("http://h/x/a%20b%2Fc?k=idem-1-g0&a={id}"));
        // A lookup's match_value is compared with the partner's JSON: not encoded.
        let want = c.render(
            "{args.destination}",
            id,
            None,
            &json!({"destination": "a b/c"}),
            false,
        );
        assert_eq!(want, "a b/c");
        assert!(in_class(&["2xx".into()], 201));
        assert!(!in_class(&["2xx".into()], 301));
        assert!(in_class(&["429".into()], 429));
        assert!(!format!("{:?}", c.with_token("tok_secret")).contains("tok_secret"));
    }
}
