//! Action identifiers and cell names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::canonical::canonical_json;

/// Namespace for argument-derived action ids (UUIDv5). Fixed forever: changing it would
/// give a re-planned action a new id and so a second effect.
pub const INTENT_NAMESPACE: Uuid = Uuid::from_u128(0x6964_656d_2d69_6e74_656e_742d_7631_0001);

/// The domain prefix hashed before a named intent (see `docs/intents.md`).
pub const INTENT_ID_DOMAIN: &str = "idem.intent.v1";

/// Longest scope or intent accepted, in characters: they name an action, they are not a
/// payload.
pub const MAX_INTENT_CHARS: usize = 200;

/// The identity of one action, and so of at most one external effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionId(pub Uuid);

/// Why a scope or intent cannot name an action.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidIntent {
    /// `intent_scope` or `intent`.
    pub field: &'static str,
    pub problem: &'static str,
}

/// Check a scope or intent: non-empty, at most [`MAX_INTENT_CHARS`], no NUL (PostgreSQL
/// text cannot hold one, and NUL separates the hashed parts).
pub fn check_intent_part(field: &'static str, s: &str) -> Result<(), InvalidIntent> {
    let problem = if s.trim().is_empty() {
        "must not be empty"
    } else if s.chars().count() > MAX_INTENT_CHARS {
        "at most 200 characters"
    } else if s.contains('\0') {
        "must not contain NUL (U+0000)"
    } else {
        return Ok(());
    };
    Err(InvalidIntent { field, problem })
}

impl ActionId {
    /// A fresh random id, for callers that track their own retries.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id of a named intent: `intent` (the effect the agent means, "invoice-42-payment")
    /// inside `scope` (a session, a conversation, a tenant). The same (scope, intent) names
    /// one action on every surface, whatever the arguments: the same pair with other
    /// arguments is a conflict, never a second action.
    ///
    /// UUIDv8 (RFC 9562) whose 122 free bits are the first bytes of
    /// SHA-256(`idem.intent.v1` 0x00 scope 0x00 intent), strings as UTF-8; the SQL function
    /// `idem.intent_id(scope, intent)` computes the same. `testdata/intent_ids.json` holds
    /// vectors every implementation checks.
    pub fn from_intent(scope: &str, intent: &str) -> Self {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(INTENT_ID_DOMAIN.as_bytes());
        h.update([0]);
        h.update(scope.as_bytes());
        h.update([0]);
        h.update(intent.as_bytes());
        let digest = h.finalize();
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }

    /// An id derived from the arguments: the same (scope, cell, arguments) always gives the
    /// same id. **Risk:** a re-planned call whose arguments differ at all (another amount, a
    /// reworded description) gets a new id and so a second effect; name the intent
    /// ([`ActionId::from_intent`]) instead wherever the caller can.
    ///
    /// UUIDv5 in [`INTENT_NAMESPACE`] of `scope` LF `cell` LF canonical JSON of `args`.
    pub fn from_arguments(scope: &str, cell: &CellName, args: &serde_json::Value) -> Self {
        let name = format!("{scope}\n{}\n{}", cell.as_str(), canonical_json(args));
        Self(Uuid::new_v5(&INTENT_NAMESPACE, name.as_bytes()))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl fmt::Display for ActionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for ActionId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl From<Uuid> for ActionId {
    fn from(u: Uuid) -> Self {
        Self(u)
    }
}

/// An (integration, operation) pair such as `stripe.charge`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CellName(String);

/// A cell name must be `integration.operation` in lower-case ASCII.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cell name {0:?}: expected `integration.operation` of [a-z0-9_] parts, at most 64 chars")]
pub struct InvalidCellName(pub String);

impl CellName {
    pub fn new(s: impl Into<String>) -> Result<Self, InvalidCellName> {
        let s = s.into();
        let parts_ok = s.split('.').count() >= 2
            && s.split('.').all(|p| {
                !p.is_empty()
                    && p.bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
        if parts_ok && s.len() <= 64 {
            Ok(Self(s))
        } else {
            Err(InvalidCellName(s))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for CellName {
    type Error = InvalidCellName;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl From<CellName> for String {
    fn from(c: CellName) -> Self {
        c.0
    }
}

impl fmt::Display for CellName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for CellName {
    type Err = InvalidCellName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn argument_id_ignores_key_order_but_not_values() {
        let cell = CellName::new("stripe.charge").unwrap();
        let a = ActionId::from_arguments("s1", &cell, &json!({"amount": 500, "currency": "usd"}));
        let b = ActionId::from_arguments("s1", &cell, &json!({"currency": "usd", "amount": 500}));
        let c = ActionId::from_arguments("s1", &cell, &json!({"currency": "usd", "amount": 501}));
        let d = ActionId::from_arguments("s2", &cell, &json!({"currency": "usd", "amount": 500}));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a.0.get_version_num(), 5);
    }

    #[test]
    fn intent_ids_are_v8_and_separate_scope_from_intent() {
        let a = ActionId::from_intent("session-1", "invoice-42-payment");
        assert_eq!(a.0.get_version_num(), 8);
        assert_eq!(a.0.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(a, ActionId::from_intent("session-1", "invoice-42-payment"));
        assert_ne!(a, ActionId::from_intent("session-2", "invoice-42-payment"));
        // The NUL separator keeps ("ab", "c") and ("a", "bc") apart.
        assert_ne!(
            ActionId::from_intent("ab", "c"),
            ActionId::from_intent("a", "bc")
        );
    }

    #[test]
    fn intent_parts_are_checked() {
        assert!(check_intent_part("intent", "pay invoice 42").is_ok());
        assert!(check_intent_part("intent", " ").is_err());
        assert!(check_intent_part("intent", "a\0b").is_err());
        assert!(check_intent_part("intent_scope", &"x".repeat(201)).is_err());
        assert!(check_intent_part("intent_scope", &"é".repeat(200)).is_ok());
    }

    #[test]
    fn cell_names_are_validated() {
        assert!(CellName::new("stripe.charge").is_ok());
        assert!(CellName::new("twilio.sms.send").is_ok());
        assert!(CellName::new("stripe").is_err());
        assert!(CellName::new("Stripe.charge").is_err());
        assert!(CellName::new("stripe..charge").is_err());
        assert!(CellName::new("stripe.charge; drop").is_err());
    }
}
