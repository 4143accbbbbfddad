//! Trace context: one trace id from the agent's enqueuing span to the partner call, through
//! the outbox, the relay, Kafka (Apache Kafka, from KAFKA_BOOTSTRAP or started by the test kit) and
//! the worker, and on through a replay the sweeper starts after a lost response. Spans are
//! read back from an in-memory OpenTelemetry exporter; the partner side from the
//! `traceparent` each request carried into the Stripe simulator.
//!
//! Its own test binary: it installs a process-wide subscriber.

use idem_cells::TypedCell as _;
use std::collections::HashMap;
use std::time::Duration;

use idem_cells::{Registry, StripeCharge};
use idem_core::{ActionId, CellName, RetryPolicy};
use idem_kafka::{KafkaConfig, KafkaTransport, TopicRouting, TransportConfig};
use idem_relay::{Relay, RelayConfig};
use idem_sim::{Fault, StripeSimConfig};
use idem_store::{enqueue, inbox, NewAction};
use idem_testkit::{kafka_bootstrap, StripeFixture, TestDb, TEST_SECRET};
use idem_worker::{TraceHeaders, Worker, WorkerConfig};
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

#[tokio::test]
async fn one_trace_from_the_enqueuing_span_to_the_partner_call() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    tracing::subscriber::set_global_default(
        tracing_subscriber::registry().with(idem_telemetry::layer(&provider)),
    )
    .expect("first subscriber in this process");

    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    // The first create request commits its effect and loses the response: that action is
    // replayed by the sweeper, long after its outbox row and Kafka message are gone.
    stripe.sim.script([Fault::DropAfterEffect]);
    let topic = format!("idem.trace.{}", uuid::Uuid::new_v4().simple());
    let mut k = KafkaConfig::new(kafka_bootstrap());
    k.routing = TopicRouting::Single(topic.clone());
    k.partitions = 3;

    // The agent's turn: one span, three actions enqueued inside it.
    let cell = CellName::new("stripe.charge").unwrap();
    let turn = tracing::info_span!("agent.turn");
    let root = TraceHeaders::of(&turn);
    let trace_id = root.trace_id().expect("the turn span is recorded");
    let mut ids = vec![];
    for i in 0..3 {
        let a = NewAction::new(
            ActionId::random(),
            cell.clone(),
            json!({"amount": 700 + i, "currency": "eur"}),
        );
        tracing::Instrument::instrument(enqueue(db.store.pool(), &a), turn.clone())
            .await
            .unwrap();
        ids.push(a.action_id);
    }
    drop(turn);
    for id in &ids {
        let row = inbox::get(db.store.pool(), *id).await.unwrap().unwrap();
        assert_eq!(
            row.trace.trace_id().as_deref(),
            Some(trace_id.as_str()),
            "stored on the action"
        );
    }

    Relay::new(db.store.clone(), &db.url, k.clone(), RelayConfig::default())
        .unwrap()
        .drain_once()
        .await
        .unwrap();

    let cells = Registry::new().with(
        StripeCharge::new(stripe.base_url(), TEST_SECRET).with_profile(|p| {
            p.call_timeout = Duration::from_millis(1000);
            p.settle_time = Duration::from_millis(100);
            p.retry = RetryPolicy {
                base: Duration::from_millis(50),
                max: Duration::from_millis(200),
                max_attempts: 8,
                outage_budget: idem_core::backoff::DEFAULT_OUTAGE_BUDGET,
                jitter: 0.0,
            };
        }),
    );
    let w = Worker::new(
        db.store.clone(),
        cells,
        WorkerConfig {
            claim_outbox: false,
            ..idem_testkit::harness::worker_config("trace-worker")
        },
    );
    let transport = KafkaTransport::new(
        w.clone(),
        k.clone(),
        TransportConfig::new(format!("g.{topic}"), vec![topic.clone()]),
    );
    let (stop, rx) = tokio::sync::watch::channel(false);
    let consuming = tokio::spawn(async move { transport.run(rx).await });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        w.sweep_once().await.unwrap();
        let mut open = 0;
        for id in &ids {
            let row = inbox::get(db.store.pool(), *id).await.unwrap().unwrap();
            if !row.state.is_settled() {
                open += 1;
            }
        }
        if open == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{open} actions never settled"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    consuming.await.unwrap().unwrap();

    // The partner side: every request (first attempts and the replay) carried our trace.
    for id in &ids {
        assert_eq!(
            stripe.sim.effects_for(&id.to_string()),
            1,
            "exactly one charge"
        );
    }
    let requests = stripe.sim.requests();
    assert_eq!(
        requests.len(),
        4,
        "three first attempts and one replay: {requests:?}"
    );
    for r in &requests {
        let tp = r
            .traceparent
            .as_deref()
            .expect("request carried a traceparent");
        let h = TraceHeaders::from_pairs([("traceparent", tp)]);
        assert_eq!(h.trace_id().as_deref(), Some(trace_id.as_str()), "{r:?}");
    }

    // idem's side: the chain agent.turn → idem.enqueue → idem.relay.publish → idem.execute
    // → partner.request, all on the one trace id; the replay's idem.execute continues from
    // the enqueuing span stored on the action.
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let by_id: HashMap<SpanId, &SpanData> = spans
        .iter()
        .map(|s| (s.span_context.span_id(), s))
        .collect();
    let named = |name: &str| {
        spans
            .iter()
            .filter(move |s| s.name == name)
            .collect::<Vec<_>>()
    };
    for s in &spans {
        if [
            "idem.enqueue",
            "idem.relay.publish",
            "idem.execute",
            "partner.request",
        ]
        .contains(&s.name.as_ref())
        {
            assert_eq!(
                s.span_context.trace_id().to_string(),
                trace_id,
                "{} off the trace",
                s.name
            );
        }
    }
    let parent_name = |s: &SpanData| by_id.get(&s.parent_span_id).map(|p| p.name.to_string());
    assert_eq!(named("idem.enqueue").len(), 3);
    for s in named("idem.enqueue") {
        assert_eq!(parent_name(s).as_deref(), Some("agent.turn"));
    }
    assert_eq!(named("idem.relay.publish").len(), 3);
    for s in named("idem.relay.publish") {
        assert_eq!(parent_name(s).as_deref(), Some("idem.enqueue"));
    }
    let executes = named("idem.execute");
    assert_eq!(executes.len(), 4, "one execute span per partner request");
    let from_relay = executes
        .iter()
        .filter(|s| parent_name(s).as_deref() == Some("idem.relay.publish"))
        .count();
    let from_store = executes
        .iter()
        .filter(|s| parent_name(s).as_deref() == Some("idem.enqueue"))
        .count();
    assert_eq!(
        (from_relay, from_store),
        (3, 1),
        "first attempts follow Kafka, the replay the stored context"
    );
    let calls = named("partner.request");
    assert_eq!(calls.len(), 4);
    for s in &calls {
        assert_eq!(parent_name(s).as_deref(), Some("idem.execute"));
        assert_eq!(
            attr(s, "partner.operation").as_deref(),
            Some("stripe.create_payment_intent")
        );
    }
    // And the partner saw exactly those client spans as parents.
    let call_ids: Vec<String> = calls
        .iter()
        .map(|s| s.span_context.span_id().to_string())
        .collect();
    for r in &requests {
        let tp = r.traceparent.as_deref().unwrap();
        let parent = tp.split('-').nth(2).unwrap();
        assert!(
            call_ids.iter().any(|c| c == parent),
            "partner's parent span {parent} is a partner.request span"
        );
    }
}
