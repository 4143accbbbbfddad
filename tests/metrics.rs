//! Metrics against the partner ledgers: the real `idem-lab demo` binary (every cell, partner
//! faults on: lost responses, 5xx before and after the effect, 429s) prints its Prometheus
//! exposition; the counters must agree with what the simulators' ledgers recorded. And the
//! same run exports spans and metrics over OTLP/HTTP to a collector stand-in that keeps
//! the request bodies.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use idem_sim::SimServer;
use idem_testkit::TestDb;
use serde_json::Value;

/// `name{labels}` → value, from Prometheus text.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(k, v)| (k.to_owned(), v.parse().expect("a number")))
        .collect()
}

/// Sum of `name` over series carrying every `label="value"` given.
fn sum(m: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> u64 {
    m.iter()
        .filter(|(k, _)| k.starts_with(&format!("{name}{{")) || k.as_str() == name)
        .filter(|(k, _)| {
            labels
                .iter()
                .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
        })
        .map(|(_, v)| *v as u64)
        .sum()
}

type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

async fn collect(State(r): State<Received>, uri: axum::http::Uri, body: Bytes) -> &'static str {
    r.lock().unwrap().push((uri.path().to_owned(), body));
    ""
}

#[tokio::test]
async fn counters_after_a_faulty_demo_match_the_partner_ledgers() {
    let db = TestDb::new().await;
    let received: Received = Arc::default();
    let collector = SimServer::start(
        Router::new()
            .route("/v1/metrics", post(collect))
            .route("/v1/traces", post(collect))
            .with_state(received.clone()),
        ([127, 0, 0, 1], 0).into(),
    )
    .await
    .unwrap();
    let name = format!("idem_metrics_{}", uuid::Uuid::new_v4().simple());
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_idem-lab"))
        .args([
            "demo",
            "--actions",
            "400",
            "--json",
            "--no-kill",
            "--seed",
            "11",
        ])
        .args(["--database-name", &name])
        .env("DATABASE_URL", &db.url)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.base_url())
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: Value = serde_json::from_str(&stdout).unwrap();
    let m = parse(r["metrics"].as_str().expect("the demo prints its metrics"));
    assert_eq!(r["duplicates"], 0);
    assert_eq!(r["lost"], 0);

    let settled = |cell: &str, outcome: &str| {
        sum(
            &m,
            "idem_actions_settled_total",
            &[("cell", cell), ("outcome", outcome)],
        )
    };
    let mut happened = 0;
    for (cell, c) in r["cells"].as_object().unwrap() {
        let n = |k: &str| c[k].as_u64().unwrap();
        let (ok, human) = (settled(cell, "succeeded"), settled(cell, "needs_human"));
        assert_eq!(ok, n("succeeded"), "{cell}: succeeded");
        assert_eq!(human, n("needs_human"), "{cell}: needs_human");
        assert_eq!(settled(cell, "failed"), n("failed"), "{cell}: failed");
        assert_eq!(settled(cell, "dead"), n("dead"), "{cell}: dead");
        assert_eq!(
            ok + human
                + settled(cell, "failed")
                + settled(cell, "dead")
                + settled(cell, "rejected"),
            n("actions"),
            "{cell}: every action settled once"
        );
        // The ledger: one effect per succeeded action of an effectful cell, plus any a
        // person must still confirm (needs_human), never more.
        let effects = n("effects");
        if cell == "amadeus.price" {
            assert_eq!(effects, 0, "read-only");
        } else {
            assert!(
                ok <= effects && effects <= ok + human,
                "{cell}: {ok} succeeded, {effects} effects, {human} needs_human"
            );
        }
        // Nothing is left in doubt: every entry was resolved.
        let entered = sum(&m, "idem_in_doubt_entered_total", &[("cell", cell)]);
        let resolved = sum(&m, "idem_in_doubt_resolved_total", &[("cell", cell)]);
        assert_eq!(entered, resolved, "{cell}: in_doubt entered = resolved");
        let found = sum(
            &m,
            "idem_reconcile_verdicts_total",
            &[("cell", cell), ("verdict", "happened")],
        );
        assert_eq!(
            found,
            sum(
                &m,
                "idem_in_doubt_resolved_total",
                &[("cell", cell), ("how", "reconciled_happened")]
            )
        );
        happened += found;
    }
    assert!(
        sum(&m, "idem_in_doubt_entered_total", &[]) > 0,
        "the faults put actions in doubt"
    );
    // Duplicates stopped, by layer.
    assert_eq!(
        sum(
            &m,
            "idem_duplicates_suppressed_total",
            &[("layer", "enqueue")]
        ),
        r["enqueue_duplicates_suppressed"].as_u64().unwrap()
    );
    assert_eq!(
        sum(
            &m,
            "idem_duplicates_suppressed_total",
            &[("layer", "reconcile")]
        ),
        happened
    );
    assert!(
        sum(
            &m,
            "idem_duplicates_suppressed_total",
            &[("layer", "partner_replay")]
        ) > 0,
        "lost responses were answered by the partners' idempotency layers"
    );
    // Fleet gauges at the end: nothing waits but the needs_human cases.
    assert_eq!(
        sum(&m, "idem_needs_human_open", &[]),
        r["needs_human"].as_u64().unwrap()
    );
    assert_eq!(sum(&m, "idem_approvals_pending", &[]), 0);
    assert_eq!(sum(&m, "idem_in_doubt_open", &[]), 0);
    assert_eq!(sum(&m, "idem_outbox_depth", &[]), 0);

    // OTLP: the process flushed both signals on exit (protobuf bodies carry the names).
    let got = received.lock().unwrap().clone();
    let has = |path: &str, needle: &str| {
        got.iter()
            .any(|(p, b)| p == path && b.windows(needle.len()).any(|w| w == needle.as_bytes()))
    };
    assert!(
        has("/v1/metrics", "idem.actions.settled"),
        "metrics exported over OTLP"
    );
    assert!(has("/v1/metrics", "idem.duplicates.suppressed"));
    assert!(
        has("/v1/traces", "idem.execute"),
        "spans exported over OTLP"
    );
    assert!(has("/v1/traces", "partner.request"));
    let admin = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
        .execute(&admin)
        .await
        .ok();
}
