//! The CI-sized fault campaign: the real `idem-lab chaos` binary with its defaults (2,000
//! actions at 40/s, a relay or worker SIGKILLed every 4 s, one PostgreSQL crash, one broker
//! crash). It starts its own PostgreSQL cluster (initdb, so it can crash it) and its own
//! three-node Apache Kafka (so it can SIGKILL a node), real `idem relay` and `idem worker`
//! processes, and the partner simulators; the checker's figures come back as JSON.

use std::process::Command;

#[test]
fn chaos_soak_loses_nothing_and_duplicates_nothing() {
    let actions = 2000;
    let out = Command::new(env!("CARGO_BIN_EXE_idem-lab"))
        .args([
            "chaos",
            "--json",
            "--actions",
            &actions.to_string(),
            "--rate",
            "40",
            "--kill-every-ms",
            "4000",
            "--timeout-secs",
            "600",
        ])
        // The soak owns its services (it restarts them): not the suite's shared ones.
        .env_remove("DATABASE_URL")
        .env_remove("KAFKA_BOOTSTRAP")
        .output()
        .expect("run idem-lab chaos");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!(
            "idem-lab chaos printed no JSON ({e}); exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            out.status
        )
    });
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("no {k} in {r}"));
    let context = format!("{}\n{stderr}", serde_json::to_string_pretty(&r).unwrap());

    // The guarantee.
    assert_eq!(n("duplicates"), 0, "{context}");
    assert_eq!(n("lost"), 0, "{context}");
    assert_eq!(n("unsettled"), 0, "{context}");
    assert_eq!(n("actions"), actions, "{context}");
    assert_eq!(n("dead_letters"), 0, "{context}");
    assert!(out.status.success(), "exit {:?}\n{context}", out.status);

    // The faults really happened.
    let fleet = &r["fleet"];
    let killed =
        fleet["relays_killed"].as_u64().unwrap() + fleet["workers_killed"].as_u64().unwrap();
    assert!(killed >= 5, "only {killed} processes killed\n{context}");
    assert!(fleet["workers_killed"].as_u64().unwrap() >= 1, "{context}");
    assert_eq!(n("postgres_restarts"), 1, "{context}");
    assert_eq!(n("broker_restarts"), 1, "{context}");
    let broker = r["broker"].as_str().unwrap_or("");
    assert!(
        broker.starts_with("apache-kafka 4.") && broker.ends_with("3 nodes"),
        "broker {broker:?}\n{context}"
    );
    assert!(n("deliveries_published_again") > 0, "{context}");

    // Every cell ran, effects were made, and doubts were resolved by replay or lookup.
    let cells = r["cells"].as_object().unwrap();
    assert_eq!(cells.len(), 10, "{context}");
    let mut resolved = 0;
    for (name, c) in cells {
        assert!(c["actions"].as_u64().unwrap() > 0, "{name}\n{context}");
        resolved += c["in_doubt_resolved_by_reconcile"].as_u64().unwrap()
            + c["in_doubt_resolved_by_replay"].as_u64().unwrap();
    }
    assert!(resolved > 0, "{context}");
    assert!(n("effects") > actions / 2, "{context}");
    // Each needs_human action says why.
    let reasons = r["needs_human_reasons"].as_array().unwrap();
    assert_eq!(reasons.len() as u64, n("needs_human"), "{context}");
    for h in reasons {
        assert!(!h["reason"].as_str().unwrap_or("").is_empty(), "{h}");
    }
}
