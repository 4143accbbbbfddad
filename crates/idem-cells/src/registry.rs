//! The cells a worker can run, by name.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::Cell;

/// Why arguments were refused before anything was stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error("unknown cell {cell:?}; known: {known}")]
    UnknownCell { cell: String, known: String },
    /// `field` is a JSON pointer into the arguments (`/amount`; empty for the whole object).
    #[error("{cell}: {}{message}", if field.is_empty() { String::new() } else { format!("{field}: ") })]
    Invalid {
        cell: String,
        field: String,
        message: String,
    },
}

/// A cell with its compiled argument schema (or why the schema did not compile: a bug in
/// the cell, reported on every check rather than by a panic).
#[derive(Debug, Clone)]
struct Entry {
    cell: Arc<dyn Cell>,
    schema: Result<Arc<jsonschema::Validator>, String>,
}

impl Entry {
    fn new(cell: Arc<dyn Cell>) -> Self {
        let schema = jsonschema::validator_for(&cell.input_schema())
            .map(Arc::new)
            .map_err(|e| format!("the cell's input schema does not compile: {e}"));
        Self { cell, schema }
    }
}

/// Cells by name. An action for a cell that is not here goes to `dead`.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    cells: BTreeMap<String, Entry>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(self, cell: impl Cell) -> Self {
        self.with_arc(Arc::new(cell))
    }

    /// Add a cell already behind an `Arc` (shared with other registries or tests).
    pub fn with_arc(mut self, cell: Arc<dyn Cell>) -> Self {
        self.cells
            .insert(cell.name().as_str().to_owned(), Entry::new(cell));
        self
    }

    pub fn get(&self, name: &str) -> Option<&Arc<dyn Cell>> {
        self.cells.get(name).map(|e| &e.cell)
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Cell>> {
        self.cells.values().map(|e| &e.cell)
    }

    /// Check `args` for `cell`: its JSON Schema first (the error names the field), then the
    /// cell's own `validate` (which the worker runs again before any attempt).
    pub fn check(&self, cell: &str, args: &serde_json::Value) -> Result<(), ArgError> {
        let Some(entry) = self.cells.get(cell) else {
            return Err(ArgError::UnknownCell {
                cell: cell.to_owned(),
                known: self.cells.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let invalid = |field: String, message: String| ArgError::Invalid {
            cell: cell.to_owned(),
            field,
            message,
        };
        let validator = entry
            .schema
            .as_ref()
            .map_err(|e| invalid(String::new(), e.clone()))?;
        if let Some(e) = validator.iter_errors(args).next() {
            return Err(invalid(e.instance_path().to_string(), e.to_string()));
        }
        entry.cell.validate(args).map_err(|e| {
            // Cells word their reasons "field: what is wrong"; lift the field out.
            match e.reason.split_once(": ") {
                Some((f, _)) if is_field(f) => {
                    invalid(format!("/{}", f.replace('.', "/")), e.reason)
                }
                _ => invalid(String::new(), e.reason),
            }
        })
    }
}

fn is_field(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn registry() -> Registry {
        Registry::new()
            .with(crate::StripeCharge::new("http://127.0.0.1:9", "sk_test"))
            .with(crate::TwilioSms::new(
                "http://127.0.0.1:9",
                "AC1",
                "tok",
                "http://127.0.0.1:9/cb",
            ))
    }

    #[test]
    fn schema_errors_name_the_field() {
        let r = registry();
        assert!(r
            .check("stripe.charge", &json!({"amount": 5, "currency": "usd"}))
            .is_ok());
        let field = |args| match r.check("stripe.charge", &args) {
            Err(ArgError::Invalid { field, message, .. }) => (field, message),
            other => panic!("expected Invalid, got {other:?}"),
        };
        let (f, m) = field(json!({"amount": "5", "currency": "usd"}));
        assert_eq!(f, "/amount");
        assert!(m.contains("integer"), "{m}");
        let (f, _) = field(json!({"amount": 0, "currency": "usd"}));
        assert_eq!(f, "/amount");
        let (f, m) = field(json!({"amount": 5}));
        assert_eq!(f, "");
        assert!(m.contains("currency"), "{m}");
        let (_, m) = field(json!({"amount": 5, "currency": "usd", "colour": "red"}));
        assert!(m.contains("colour"), "{m}");
    }

    #[test]
    fn unknown_cell_lists_the_known_ones() {
        let e = registry().check("stripe.chrage", &json!({})).unwrap_err();
        assert!(
            e.to_string().contains("stripe.charge, twilio.sms.send"),
            "{e}"
        );
    }

    #[test]
    fn schema_and_validate_agree_on_both_senders() {
        let r = registry();
        let ok = json!({"to": "+15551234567", "from": "+15557654321", "body": "hi"});
        assert!(r.check("twilio.sms.send", &ok).is_ok());
        let both = json!({"to": "+15551234567", "from": "+15557654321",
                          "messaging_service_sid": format!("MG{}", "0".repeat(32)), "body": "hi"});
        assert!(r.check("twilio.sms.send", &both).is_err());
    }
}
