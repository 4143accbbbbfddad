//! Action identifiers and cell names.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::canonical::canonical_json;

/// Namespace for intent-derived action ids (UUIDv5). Fixed forever: changing it would give
/// a re-planned action a new id and so a second effect.
pub const INTENT_NAMESPACE: Uuid = Uuid::from_u128(0x6964_656d_2d69_6e74_656e_742d_7631_0001);

/// The identity of one action, and so of at most one external effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ActionId(pub Uuid);

impl ActionId {
    /// A fresh random id, for callers that track their own retries.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }

    /// The id of an intent: the same (scope, cell, arguments) always gives the same id, so a
    /// turn that re-plans the same charge in the same scope (an agent session, a task) gets
    /// the same action back instead of a second one.
    pub fn from_intent(scope: &str, cell: &CellName, args: &serde_json::Value) -> Self {
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
    fn intent_id_ignores_key_order_but_not_values() {
        let cell = CellName::new("stripe.charge").unwrap();
        let a = ActionId::from_intent("s1", &cell, &json!({"amount": 500, "currency": "usd"}));
        let b = ActionId::from_intent("s1", &cell, &json!({"currency": "usd", "amount": 500}));
        let c = ActionId::from_intent("s1", &cell, &json!({"currency": "usd", "amount": 501}));
        let d = ActionId::from_intent("s2", &cell, &json!({"currency": "usd", "amount": 500}));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_eq!(a.0.get_version_num(), 5);
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
