//! Canonical JSON is what intent ids and request fingerprints hash: it must parse back to
//! the same value and be a fixed point, or one action could get two ids.
#![no_main]

use idem_core::canonical::canonical_json;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let text = canonical_json(&value);
    let parsed: serde_json::Value = serde_json::from_str(&text).expect("canonical JSON is JSON");
    assert_eq!(
        parsed, value,
        "canonical JSON parses back to the same value"
    );
    assert_eq!(
        canonical_json(&parsed),
        text,
        "canonical JSON is a fixed point"
    );
});
