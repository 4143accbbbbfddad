//! The shared vectors in `testdata/intent_ids.json`: every implementation of the id
//! derivations (this crate, SQL's `idem.intent_id`, the clients) must give these ids.

use idem_core::{ActionId, CellName};
use serde_json::Value;

fn vectors() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/intent_ids.json"
    );
    let text = std::fs::read_to_string(path).expect("read testdata/intent_ids.json");
    serde_json::from_str(&text).expect("testdata/intent_ids.json is JSON")
}

fn list<'a>(v: &'a Value, kind: &str) -> &'a Vec<Value> {
    let l = v[kind]["vectors"].as_array().expect("vectors");
    assert!(l.len() >= 5, "{kind}: too few vectors");
    l
}

#[test]
fn intent_ids_match_the_vectors() {
    let v = vectors();
    for t in list(&v, "intent_ids") {
        let (scope, intent) = (t["scope"].as_str().unwrap(), t["intent"].as_str().unwrap());
        let got = ActionId::from_intent(scope, intent).to_string();
        assert_eq!(got, t["id"].as_str().unwrap(), "{}", t["note"]);
    }
}

#[test]
fn argument_ids_match_the_vectors() {
    let v = vectors();
    let mut wrong = vec![];
    for t in list(&v, "argument_ids") {
        let cell = CellName::new(t["cell"].as_str().unwrap()).unwrap();
        let got = ActionId::from_arguments(t["scope"].as_str().unwrap(), &cell, &t["args"]);
        if got.to_string() != t["id"].as_str().unwrap() {
            wrong.push(format!("{}: expected {}, got {got}", t["note"], t["id"]));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// The vectors say what they claim: key order gives the same id, another amount another.
#[test]
fn the_vectors_mean_what_their_notes_say() {
    let v = vectors();
    let a = list(&v, "argument_ids");
    assert_eq!(a[0]["id"], a[1]["id"]);
    assert_ne!(a[0]["id"], a[2]["id"]);
    let i = list(&v, "intent_ids");
    let ids: std::collections::HashSet<&str> =
        i.iter().map(|t| t["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), i.len(), "intent vectors must all differ");
}
