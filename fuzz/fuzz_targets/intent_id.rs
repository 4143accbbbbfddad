//! Named intents and argument-derived ids: checking never panics, ids are deterministic
//! UUIDv8/v5 with the RFC variant, and an argument-derived id does not change when the
//! arguments pass through canonical JSON (a relay or a client re-serialising them).
#![no_main]

use idem_core::canonical::canonical_json;
use idem_core::{check_intent_part, ActionId, CellName};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // scope, intent and (optionally) JSON arguments, separated by 0x1e.
    let mut parts = text.splitn(3, '\u{1e}');
    let scope = parts.next().unwrap_or_default();
    let intent = parts.next().unwrap_or_default();
    let args = parts.next();

    let ok = check_intent_part("intent_scope", scope).is_ok()
        && check_intent_part("intent", intent).is_ok();
    let id = ActionId::from_intent(scope, intent);
    assert_eq!(id, ActionId::from_intent(scope, intent));
    assert_eq!(id.as_uuid().get_version_num(), 8);
    assert_eq!(id.as_uuid().get_variant(), uuid::Variant::RFC4122);
    if ok {
        assert!(!scope.contains('\0') && !intent.contains('\0'));
        // With no NUL in either part, moving the boundary changes the id.
        if let Some(c) = intent.chars().next() {
            let (moved_scope, moved_intent) = (format!("{scope}{c}"), &intent[c.len_utf8()..]);
            if !moved_intent.is_empty() {
                assert_ne!(id, ActionId::from_intent(&moved_scope, moved_intent));
            }
        }
    }

    if let Some(Ok(value)) = args.map(serde_json::from_str::<serde_json::Value>) {
        let cell = CellName::new("acme.payout").expect("a valid cell name");
        let id = ActionId::from_arguments(scope, &cell, &value);
        let reparsed: serde_json::Value =
            serde_json::from_str(&canonical_json(&value)).expect("canonical JSON is JSON");
        assert_eq!(id, ActionId::from_arguments(scope, &cell, &reparsed));
        assert_eq!(id.as_uuid().get_version_num(), 5);
    }
});
