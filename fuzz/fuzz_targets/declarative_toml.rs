//! A declarative cell's TOML, as an operator writes it: parsing never panics, and a cell
//! that loads publishes an object schema and checks arguments against it without panicking.
#![no_main]

use idem_cells::declarative::DeclarativeCell;
use idem_cells::Cell;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(cell) = DeclarativeCell::from_toml(text) else {
        return;
    };
    let schema = cell.input_schema();
    assert!(
        schema.is_object(),
        "{}: schema must be an object",
        cell.name()
    );
    let _ = cell.validate(&serde_json::json!({}));
    let _ = cell.validate(&serde_json::json!({"amount": 1, "currency": "usd", "destination": "d"}));
    let _ = cell.summary(&serde_json::json!({"amount": 1}));
    let _ = cell.key(idem_core::ActionId::from_intent("fuzz", "toml"), 0);
});
