//! The Kafka path over real PostgreSQL and Apache Kafka (from KAFKA_BOOTSTRAP or started by
//! the test kit): relay, consumer-group worker transport, redelivery, poison messages, a
//! relay killed between the Kafka ack and the outbox delete, a broker node SIGKILLed in a
//! three-node cluster of the test's own. Effects are counted in the Stripe simulator's
//! ledger.

use idem_cells::TypedCell as _;
use std::time::Duration;

use idem_cells::{Registry, StripeCharge};
use idem_core::{ActionId, CellName, RetryPolicy, State};
use idem_kafka::{KafkaConfig, KafkaTransport, TopicRouting, TransportConfig};
use idem_relay::{Relay, RelayConfig};
use idem_sim::StripeSimConfig;
use idem_store::{enqueue, inbox, NewAction, Store};
use idem_testkit::harness::{spawn_idem, wait_settled, worker_config, ChildGuard};
use idem_testkit::{kafka_bootstrap, StripeFixture, TestDb, TEST_SECRET};
use idem_worker::{Worker, WorkerConfig};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use serde_json::json;

fn kafka(topic: &str) -> KafkaConfig {
    let mut c = KafkaConfig::new(kafka_bootstrap());
    c.routing = TopicRouting::Single(topic.into());
    c.partitions = 3;
    c
}

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

fn cells(base: &str) -> Registry {
    Registry::new().with(StripeCharge::new(base, TEST_SECRET).with_profile(|p| {
        p.call_timeout = Duration::from_millis(1000);
        p.settle_time = Duration::from_millis(300);
        p.retry = RetryPolicy {
            base: Duration::from_millis(50),
            max: Duration::from_millis(400),
            max_attempts: 8,
            outage_budget: idem_core::backoff::DEFAULT_OUTAGE_BUDGET,
            jitter: 0.0,
        };
    }))
}

fn worker(store: &Store, base: &str) -> Worker {
    Worker::new(
        store.clone(),
        cells(base),
        WorkerConfig {
            claim_outbox: false,
            ..worker_config("kafka-worker")
        },
    )
}

async fn enqueue_n(store: &Store, n: usize, key: Option<&str>) -> Vec<ActionId> {
    let cell = CellName::new("stripe.charge").unwrap();
    let mut ids = vec![];
    for i in 0..n {
        let mut a = NewAction::new(
            ActionId::random(),
            cell.clone(),
            json!({"amount": 100 + i as i64, "currency": "usd"}),
        );
        if let Some(k) = key {
            a = a.with_ordering_key(k);
        }
        enqueue(store.pool(), &a).await.unwrap();
        ids.push(a.action_id);
    }
    ids
}

/// Run a Kafka worker transport on `topic`, as a new group, until `ids` have settled; then
/// stop it.
async fn consume_until_settled(
    db: &TestDb,
    base: &str,
    k: KafkaConfig,
    topic: &str,
    ids: &[ActionId],
) {
    let config = TransportConfig::new(unique("group"), vec![topic.to_owned()]);
    consume_with(worker(&db.store, base), k, config, db, ids).await;
}

/// Run `worker` on a Kafka transport with `config` until `ids` have settled; then stop it.
async fn consume_with(
    worker: Worker,
    k: KafkaConfig,
    config: TransportConfig,
    db: &TestDb,
    ids: &[ActionId],
) {
    let transport = KafkaTransport::new(worker, k, config);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { transport.run(rx).await });
    wait_settled(&db.store, ids, Duration::from_secs(60)).await;
    tx.send(true).unwrap();
    running.await.unwrap().unwrap();
}

fn relay(db: &TestDb, k: &KafkaConfig) -> Relay {
    Relay::new(
        db.store.clone(),
        &db.url,
        k.clone(),
        RelayConfig {
            pause_after_ack: None,
            ..RelayConfig::default()
        },
    )
    .unwrap()
}

async fn outbox_len(store: &Store) -> i64 {
    sqlx::query_as::<_, (i64,)>("SELECT count(*) FROM idem.outbox")
        .fetch_one(store.pool())
        .await
        .unwrap()
        .0
}

/// Read every message currently on `topic` (a fresh group from the beginning).
async fn read_all(topic: &str, expect: usize) -> Vec<rdkafka::message::OwnedMessage> {
    let c: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .set("group.id", unique("reader"))
        // The topic may be created after we subscribe: notice it quickly.
        .set("topic.metadata.refresh.interval.ms", "500")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    c.subscribe(&[topic]).unwrap();
    let mut out = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while out.len() < expect {
        match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(Ok(m)) => out.push(m.detach()),
            // The topic may not exist yet (the relay creates it): keep reading until the deadline.
            Ok(Err(e)) => {
                eprintln!("consume: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => panic!("only {} of {expect} messages on {topic}", out.len()),
        }
    }
    out
}

#[tokio::test]
async fn relay_publishes_in_commit_order_with_headers_and_deletes_after_ack() {
    let db = TestDb::new().await;
    let topic = unique("idem.test");
    let k = kafka(&topic);
    let a = enqueue_n(&db.store, 5, Some("session-a")).await;
    let b = enqueue_n(&db.store, 5, Some("session-b")).await;
    let r = relay(&db, &k);
    assert_eq!(r.drain_once().await.unwrap(), 10);
    assert_eq!(outbox_len(&db.store).await, 0);
    let msgs = read_all(&topic, 10).await;
    for (key, ids) in [("session-a", &a), ("session-b", &b)] {
        let mut of_key: Vec<_> = msgs
            .iter()
            .filter(|m| m.key() == Some(key.as_bytes()))
            .collect();
        of_key.sort_by_key(|m| m.offset());
        let partitions: std::collections::HashSet<_> =
            of_key.iter().map(|m| m.partition()).collect();
        assert_eq!(partitions.len(), 1, "one key, one partition");
        let got: Vec<String> = of_key
            .iter()
            .map(|m| {
                let h = m.headers().unwrap();
                let id = h
                    .iter()
                    .find(|h| h.key == "idem-action-id")
                    .and_then(|h| h.value)
                    .unwrap();
                assert!(h
                    .iter()
                    .any(|h| h.key == "idem-cell" && h.value == Some(b"stripe.charge".as_slice())));
                assert!(h
                    .iter()
                    .any(|h| h.key == "idem-schema-version" && h.value == Some(b"1".as_slice())));
                String::from_utf8(id.to_vec()).unwrap()
            })
            .collect();
        let want: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
        assert_eq!(got, want, "per-key order is enqueue order");
    }
}

#[tokio::test]
async fn kafka_worker_settles_every_action_and_absorbs_redelivery() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let topic = unique("idem.test");
    let k = kafka(&topic);
    let ids = enqueue_n(&db.store, 12, None).await;
    relay(&db, &k).drain_once().await.unwrap();
    let w = worker(&db.store, &stripe.base_url());
    let group = unique("group");
    let transport = KafkaTransport::new(
        w.clone(),
        k.clone(),
        TransportConfig::new(&group, vec![topic.clone()]),
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { transport.run(rx).await });
    wait_settled(&db.store, &ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1);
        assert_eq!(
            inbox::get(db.store.pool(), *id)
                .await
                .unwrap()
                .unwrap()
                .state,
            State::Succeeded
        );
    }
    // Redeliver one settled action's message: no partner call, and the group moves past it.
    let first = read_all(&topic, 1).await.remove(0);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    let rdkafka::producer::future_producer::Delivery {
        partition, offset, ..
    } = producer
        .send(
            FutureRecord::to(&topic)
                .key(first.key().unwrap())
                .payload(first.payload().unwrap())
                .partition(first.partition()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let requests = stripe.sim.requests().len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c: StreamConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_bootstrap())
            .set("group.id", &group)
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition(&topic, partition);
        let committed = c.committed_offsets(tpl, Duration::from_secs(5)).unwrap();
        let at = committed
            .find_partition(&topic, partition)
            .map(|p| p.offset());
        if at == Some(rdkafka::Offset::Offset(offset + 1)) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "offset never moved past the redelivered message: {at:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        stripe.sim.requests().len(),
        requests,
        "redelivery made no partner call"
    );
    assert_eq!(stripe.sim.ledger().len(), 12);
    tx.send(true).unwrap();
    running.await.unwrap().unwrap();
}

#[tokio::test]
async fn settled_receipts_are_published_to_the_results_topic() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let mut k = kafka(&unique("idem.test"));
    k.results_topic = unique("idem.results");
    sqlx::query("UPDATE idem.settings SET publish_results = true")
        .execute(db.store.pool())
        .await
        .unwrap();
    let ids = enqueue_n(&db.store, 3, None).await;
    let r = relay(&db, &k);
    r.drain_once().await.unwrap();
    let w = worker(&db.store, &stripe.base_url());
    let transport = KafkaTransport::new(
        w,
        k.clone(),
        TransportConfig::new(
            unique("group"),
            vec![match &k.routing {
                TopicRouting::Single(t) => t.clone(),
                _ => unreachable!(),
            }],
        ),
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { transport.run(rx).await });
    wait_settled(&db.store, &ids, Duration::from_secs(60)).await;
    tx.send(true).unwrap();
    running.await.unwrap().unwrap();
    assert_eq!(r.drain_results_once().await.unwrap(), 3);
    let msgs = read_all(&k.results_topic, 3).await;
    for id in &ids {
        let m = msgs
            .iter()
            .find(|m| m.key() == Some(id.to_string().as_bytes()))
            .expect("a result keyed by action id");
        let v: serde_json::Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(v["state"], "succeeded");
        let row = inbox::get(db.store.pool(), *id).await.unwrap().unwrap();
        assert_eq!(
            v["receipt"],
            row.receipt.unwrap(),
            "the topic carries the stored receipt"
        );
    }
}

#[tokio::test]
async fn poison_message_goes_dead_and_the_partition_moves_on() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let topic = unique("idem.test");
    let k = kafka(&topic);
    idem_kafka::topics::ensure(&k, std::slice::from_ref(&topic))
        .await
        .unwrap();
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka_bootstrap())
        .create()
        .unwrap();
    let rdkafka::producer::future_producer::Delivery {
        partition: p,
        offset: poison_offset,
        ..
    } = producer
        .send(
            FutureRecord::to(&topic)
                .key("k")
                .payload(b"\x00garbage".as_slice())
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .key("k")
                .payload(br#"{"v":9,"action_id":"x"}"#.as_slice())
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    // A valid action after them, on the same partition.
    let ids = enqueue_n(&db.store, 1, Some("k")).await;
    let payload: (Vec<u8>,) = sqlx::query_as("SELECT payload FROM idem.outbox")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    producer
        .send(
            FutureRecord::to(&topic)
                .key("k")
                .payload(payload.0.as_slice())
                .partition(0),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    consume_until_settled(&db, &stripe.base_url(), k, &topic, &ids).await;
    let dead: Vec<(Vec<u8>, String, serde_json::Value)> =
        sqlx::query_as("SELECT raw, reason, source FROM idem.dead_letters ORDER BY id")
            .fetch_all(db.store.pool())
            .await
            .unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].0, b"\x00garbage");
    assert_eq!(dead[0].2["topic"], topic.as_str());
    assert_eq!(dead[0].2["partition"], p);
    assert_eq!(dead[0].2["offset"], poison_offset);
    assert!(
        dead[1].1.contains("unknown envelope version 9"),
        "{}",
        dead[1].1
    );
    assert_eq!(stripe.sim.effects_for(&ids[0].to_string()), 1);
}

#[tokio::test]
async fn relay_killed_between_ack_and_delete_republishes_and_the_inbox_absorbs_it() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let topic = unique("idem.test");
    let k = kafka(&topic);
    let spawn_relay = |pause: Option<u64>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_idem"));
        cmd.args([
            "relay",
            "--topic",
            &topic,
            "--partitions",
            "3",
            "--poll-interval-ms",
            "100",
        ])
        .env("DATABASE_URL", &db.url)
        .env("KAFKA_BOOTSTRAP", kafka_bootstrap())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
        if let Some(ms) = pause {
            cmd.env("IDEM_RELAY_PAUSE_AFTER_ACK_MS", ms.to_string());
        }
        cmd.spawn().expect("spawn idem relay")
    };
    let ids = enqueue_n(&db.store, 1, None).await;
    let mut doomed = spawn_relay(Some(60_000));
    // The message is on Kafka (acknowledged) but the row is still in the outbox.
    read_all(&topic, 1).await;
    assert_eq!(outbox_len(&db.store).await, 1);
    doomed.kill().unwrap(); // SIGKILL
    doomed.wait().unwrap();
    let mut second = spawn_relay(None);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while outbox_len(&db.store).await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "second relay never drained"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let msgs = read_all(&topic, 2).await;
    assert_eq!(msgs.len(), 2, "published twice");
    let transport = KafkaTransport::new(
        worker(&db.store, &stripe.base_url()),
        k,
        TransportConfig::new(unique("group"), vec![topic.clone()]),
    );
    let (tx, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { transport.run(rx).await });
    wait_settled(&db.store, &ids, Duration::from_secs(60)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.send(true).unwrap();
    running.await.unwrap().unwrap();
    let _ = second.kill();
    let _ = second.wait();
    assert_eq!(stripe.sim.effects_for(&ids[0].to_string()), 1);
    assert_eq!(
        stripe.sim.requests().len(),
        1,
        "the duplicate made no partner call"
    );
}

#[tokio::test]
async fn demo_through_relay_and_kafka_reports_no_duplicates_and_nothing_lost() {
    let db = TestDb::new().await;
    let out = tokio::process::Command::new(idem_testkit::harness::lab_binary(env!(
        "CARGO_BIN_EXE_idem"
    )))
    .args([
        "demo",
        "--transport",
        "kafka",
        "--actions",
        "200",
        "--json",
        "--database-name",
        "idem_demo_kafka",
        "--seed",
        "11",
    ])
    .env("DATABASE_URL", &db.url)
    .env("KAFKA_BOOTSTRAP", kafka_bootstrap())
    .output()
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "demo failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("demo --json prints JSON");
    assert_eq!(v["transport"], "kafka");
    assert_eq!(v["actions"], 200);
    assert_eq!(v["duplicates"], 0);
    assert_eq!(v["lost"], 0);
    assert!(v["effects"].as_u64().unwrap() > 150);
}

#[tokio::test]
async fn per_key_processing_order_is_enqueue_commit_order() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let topic = unique("idem.test");
    let k = kafka(&topic);
    // Interleave three sessions' actions, each committed in its own transaction.
    let cell = CellName::new("stripe.charge").unwrap();
    let mut expected: std::collections::HashMap<String, Vec<ActionId>> = Default::default();
    for i in 0..30 {
        let key = format!("session-{}", i % 3);
        let a = NewAction::new(
            ActionId::random(),
            cell.clone(),
            json!({"amount": 100 + i, "currency": "usd"}),
        )
        .with_ordering_key(key.clone());
        enqueue(db.store.pool(), &a).await.unwrap();
        expected.entry(key).or_default().push(a.action_id);
    }
    relay(&db, &k).drain_once().await.unwrap();
    let all: Vec<ActionId> = expected.values().flatten().copied().collect();
    consume_until_settled(&db, &stripe.base_url(), k, &topic, &all).await;
    // Processing order: the order in which attempts were written ahead (audit ids).
    let started: Vec<(uuid::Uuid, String)> = sqlx::query_as(
        "SELECT t.action_id, a.ordering_key FROM idem.transitions t JOIN idem.actions a USING (action_id) \
         WHERE t.event = 'start' ORDER BY t.id",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    for (key, ids) in &expected {
        let got: Vec<ActionId> = started
            .iter()
            .filter(|(_, k)| k == key)
            .map(|(id, _)| ActionId(*id))
            .collect();
        assert_eq!(&got, ids, "processing order of {key}");
    }
    assert_eq!(stripe.sim.ledger().len(), 30);
}

/// Stripe calls held 5 ms each: slower than the lanes' horizon (`Combiner::window`), so a
/// lane with one call at a time writes one message ahead per transaction.
fn held_calls() -> StripeSimConfig {
    StripeSimConfig {
        faults: idem_sim::FaultRates {
            delay: 1.0,
            delay_ms: 5,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// One partition, one call at a time, calls too slow to write more than one message ahead.
async fn consume_one_at_a_time(
    db: &TestDb,
    base: &str,
    k: KafkaConfig,
    topic: &str,
    ids: &[ActionId],
) {
    let mut config = TransportConfig::new(unique("group"), vec![topic.to_owned()]);
    config.per_partition_batch = 1;
    consume_with(worker(&db.store, base), k, config, db, ids).await;
}

/// A partition lane with its next message already fetched settles the last one and writes
/// the next ahead in one transaction (the settle first): the finished attempt of one
/// action and the started attempt of the next carry the same transaction id, and every
/// action is charged once, in order.
#[tokio::test]
async fn a_lane_settles_the_last_message_and_starts_the_next_in_one_commit() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(held_calls()).await;
    let topic = unique("idem.test");
    let mut k = kafka(&topic);
    k.partitions = 1;
    let ids = enqueue_n(&db.store, 12, Some("one-session")).await;
    relay(&db, &k).drain_once().await.unwrap();
    consume_one_at_a_time(&db, &stripe.base_url(), k, &topic, &ids).await;
    // A transition's time is now() of the transaction that made it: the settle of one
    // action and the start of the next carry the same time when they shared a commit.
    let rows: Vec<(uuid::Uuid, String, String)> = sqlx::query_as(
        "SELECT action_id, to_state, at::text FROM idem.transitions \
         WHERE (from_state = 'received' AND to_state = 'executing') \
            OR (from_state = 'executing' AND to_state = 'succeeded') ORDER BY id",
    )
    .fetch_all(db.store.pool())
    .await
    .unwrap();
    let at = |id: &ActionId, to: &str| {
        let found: Vec<_> = rows
            .iter()
            .filter(|(a, t, _)| *a == id.as_uuid() && t == to)
            .map(|(_, _, at)| at.clone())
            .collect();
        assert_eq!(found.len(), 1, "{id} {to}: {rows:?}");
        found[0].clone()
    };
    let starts: Vec<ActionId> = rows
        .iter()
        .filter(|(_, t, _)| t == "executing")
        .map(|(id, _, _)| ActionId(*id))
        .collect();
    assert_eq!(starts, ids, "started one at a time, in enqueue order");
    let shared = ids
        .windows(2)
        .filter(|w| at(&w[0], "succeeded") == at(&w[1], "executing"))
        .count();
    // Every next message was in hand (the topic was full before the worker started),
    // bar the first few while the reader fills the lane.
    assert!(
        shared >= 6,
        "{shared} of 11 settles shared the next start's commit"
    );
    for id in &ids {
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1);
    }
}

/// The shared transaction fails after a call: the database refuses the third attempt's
/// write-ahead, in the transaction that also settles the second action. Both roll back, the
/// lane hands both over again, and the second action is settled without a second call:
/// every action charged once, every one succeeded.
#[tokio::test]
async fn a_failed_settle_and_start_is_retried_without_a_second_call() {
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(held_calls()).await;
    let topic = unique("idem.test");
    let mut k = kafka(&topic);
    k.partitions = 1;
    let ids = enqueue_n(&db.store, 6, Some("one-session")).await;
    relay(&db, &k).drain_once().await.unwrap();
    // A sequence is not rolled back: the third attempt insert fails, its retry does not.
    for sql in [
        "CREATE SEQUENCE public.fault_inserts",
        "CREATE FUNCTION public.fail_third_attempt() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN IF nextval('public.fault_inserts') = 3 THEN \
           RAISE EXCEPTION 'injected: the third write-ahead fails'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER fail_third_attempt BEFORE INSERT ON idem.attempts \
         FOR EACH ROW EXECUTE FUNCTION public.fail_third_attempt()",
    ] {
        sqlx::query(sql).execute(db.store.pool()).await.unwrap();
    }
    consume_one_at_a_time(&db, &stripe.base_url(), k, &topic, &ids).await;
    let (inserts,): (i64,) = sqlx::query_as("SELECT last_value FROM public.fault_inserts")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(inserts, 7, "six write-aheads and the one refused");
    for id in &ids {
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1, "{id}");
        let row = inbox::get(db.store.pool(), *id).await.unwrap().unwrap();
        assert_eq!(row.state, State::Succeeded, "{id}");
        assert_eq!(row.attempts, 1, "{id}: one attempt");
    }
    assert_eq!(stripe.sim.ledger().len(), 6);
}

/// With fast calls a lane that makes one call at a time writes several messages ahead in
/// one transaction (`Combiner::window`) and then calls them one after another in offset
/// order: never two calls at once on the partition, every key's actions (here each its
/// own) called in enqueue order, and one charge per action.
#[tokio::test]
async fn strict_order_lanes_write_fast_calls_ahead_together_and_call_them_one_at_a_time() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};
    use tower::ServiceExt as _;

    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let topic = unique("idem.test");
    let mut k = kafka(&topic);
    k.partitions = 1;
    let ids = enqueue_n(&db.store, 150, None).await;
    relay(&db, &k).drain_once().await.unwrap();
    let now = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let order = Arc::new(Mutex::new(Vec::<ActionId>::new()));
    let recording = {
        let (now, most, order) = (now.clone(), most.clone(), order.clone());
        tower::layer::layer_fn(move |inner: idem_worker::partner::PartnerService| {
            let (now, most, order) = (now.clone(), most.clone(), order.clone());
            tower::service_fn(move |call: idem_worker::partner::PartnerCall| {
                let (inner, now, most, order) =
                    (inner.clone(), now.clone(), most.clone(), order.clone());
                async move {
                    most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
                    order.lock().unwrap().push(call.action);
                    let answer = inner.oneshot(call).await;
                    now.fetch_sub(1, Ordering::SeqCst);
                    answer
                }
            })
        })
    };
    let w = Worker::builder(db.store.clone(), cells(&stripe.base_url()))
        .config(WorkerConfig {
            claim_outbox: false,
            ..worker_config("kafka-worker")
        })
        .partner_layer(recording)
        .build();
    let mut config = TransportConfig::new(unique("group"), vec![topic.clone()]);
    config.per_partition_batch = 1;
    consume_with(w, k, config, &db, &ids).await;

    assert_eq!(
        most.load(Ordering::SeqCst),
        1,
        "two calls at once on one partition"
    );
    assert_eq!(
        *order.lock().unwrap(),
        ids,
        "calls in offset (enqueue) order, each once"
    );
    // A transaction's attempts share its now().
    let (largest,): (i64,) = sqlx::query_as(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM idem.attempts GROUP BY at) c",
    )
    .fetch_one(db.store.pool())
    .await
    .unwrap();
    assert!(largest > 1, "every message was written ahead alone");
    for id in &ids {
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1, "{id}");
    }
    assert_eq!(stripe.sim.ledger().len(), ids.len());
}

/// One partition's lane busy with slow partner calls (one message at a time, room for one
/// more) must not hold back the others: the reader pauses that partition alone and keeps
/// handing the other partitions' messages to their lanes.
#[tokio::test]
async fn a_partition_with_slow_calls_does_not_hold_back_the_others() {
    let db = TestDb::new().await;
    // Every Stripe call is held 0.7 s (under the cell's 1 s timeout); the no-op cell
    // answers at once.
    let stripe = StripeFixture::start(StripeSimConfig {
        faults: idem_sim::FaultRates {
            delay: 1.0,
            delay_ms: 700,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let topic = unique("idem.test");
    let k = kafka(&topic);
    let slow = enqueue_n(&db.store, 4, Some("slow-session")).await;
    let noop = CellName::new("bench.noop").unwrap();
    let mut fast = vec![];
    for i in 0..30 {
        let a = NewAction::new(ActionId::random(), noop.clone(), json!({ "n": i }))
            .with_ordering_key(format!("fast-{i}"));
        enqueue(db.store.pool(), &a).await.unwrap();
        fast.push(a.action_id);
    }
    relay(&db, &k).drain_once().await.unwrap();
    // Where each action landed: the slow session's partition, and the fast actions elsewhere.
    let messages = read_all(&topic, 34).await;
    let partition_of = |id: ActionId| {
        messages
            .iter()
            .find(|m| {
                serde_json::from_slice::<serde_json::Value>(m.payload().unwrap()).unwrap()
                    ["action_id"]
                    == json!(id.to_string())
            })
            .map(|m| m.partition())
            .unwrap()
    };
    let slow_partition = partition_of(slow[0]);
    let elsewhere: Vec<ActionId> = fast
        .iter()
        .copied()
        .filter(|id| partition_of(*id) != slow_partition)
        .collect();
    assert!(
        elsewhere.len() >= 5,
        "only {} of 30 fast actions on other partitions than the slow one",
        elsewhere.len()
    );
    let cells = cells(&stripe.base_url()).with(idem_cells::noop::Noop::default());
    let worker = Worker::new(
        db.store.clone(),
        cells,
        WorkerConfig {
            claim_outbox: false,
            ..worker_config("kafka-worker")
        },
    );
    let mut config = TransportConfig::new(unique("group"), vec![topic.clone()]);
    config.per_partition_batch = 1;
    config.lane_capacity = 1;
    let transport = KafkaTransport::new(worker, k, config);
    let (tx, rx) = tokio::sync::watch::channel(false);
    let running = tokio::spawn(async move { transport.run(rx).await });
    let all: Vec<ActionId> = slow.iter().chain(&fast).copied().collect();
    wait_settled(&db.store, &all, Duration::from_secs(60)).await;
    tx.send(true).unwrap();
    running.await.unwrap().unwrap();
    // The slow lane takes four 0.7 s calls in series; every fast action on another
    // partition settled before the slow session's last one did.
    let settled_at = |ids: Vec<uuid::Uuid>| {
        let pool = db.store.pool().clone();
        async move {
            sqlx::query_as::<_, (f64,)>(
                "SELECT extract(epoch FROM settled_at)::float8 FROM idem.actions \
                 WHERE action_id = ANY($1) AND state = 'succeeded' ORDER BY settled_at",
            )
            .bind(ids)
            .fetch_all(&pool)
            .await
            .unwrap()
            .into_iter()
            .map(|(t,)| t)
            .collect::<Vec<_>>()
        }
    };
    let slow_done = settled_at(slow.iter().map(|a| a.0).collect()).await;
    let fast_done = settled_at(elsewhere.iter().map(|a| a.0).collect()).await;
    assert_eq!(slow_done.len(), 4, "every slow action succeeded");
    assert_eq!(
        fast_done.len(),
        elsewhere.len(),
        "every fast action succeeded"
    );
    let last_fast = *fast_done.last().unwrap();
    let last_slow = *slow_done.last().unwrap();
    assert!(
        last_fast < last_slow,
        "the other partitions waited for the slow one: the last fast action settled {:.2} s after the slow session's last",
        last_fast - last_slow
    );
    assert_eq!(stripe.sim.ledger().len(), 4, "one charge per slow action");
}

/// A three-node cluster of the test's own (so that crashing a node leaves the other tests
/// alone), replication factor 3 and min.insync.replicas=2: with one node SIGKILLed the
/// others take over its partitions, and it comes back on its own log directory.
#[tokio::test]
async fn broker_node_crash_mid_run_loses_nothing_and_doubles_nothing() {
    let dir = idem_services::run_dir("kafka-crash-test").unwrap();
    let broker = {
        let d = dir.join("kafka");
        tokio::task::spawn_blocking(move || {
            idem_services::KafkaCluster::start(&d, &idem_services::KafkaOptions::nodes(3))
        })
        .await
        .unwrap()
        .expect("start a three-node Apache Kafka")
    };
    let broker = std::sync::Arc::new(broker);
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig::default()).await;
    let topic = unique("idem.test");
    let mut k = KafkaConfig::new(broker.bootstrap());
    k.routing = TopicRouting::Single(topic.clone());
    k.partitions = 3;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let relay = Relay::new(
        db.store.clone(),
        &db.url,
        k.clone(),
        RelayConfig {
            poll_interval: Duration::from_millis(100),
            pause_after_ack: None,
            ..RelayConfig::default()
        },
    )
    .unwrap();
    let relay_rx = rx.clone();
    let relaying = tokio::spawn(async move { relay.run(relay_rx).await });
    let w = worker(&db.store, &stripe.base_url());
    let transport = KafkaTransport::new(
        w.clone(),
        k,
        TransportConfig::new(unique("group"), vec![topic.clone()]),
    );
    let sweep_rx = rx.clone();
    let sweeping = tokio::spawn(async move { w.run(sweep_rx).await });
    let consuming = tokio::spawn(async move { transport.run(rx).await });

    let first = enqueue_n(&db.store, 20, None).await;
    wait_settled(&db.store, &first, Duration::from_secs(60)).await;
    // SIGKILL a node, keep enqueueing while it is down, start it again on its log dir.
    broker.kill(1).unwrap();
    assert!(!broker.is_running(1));
    let second = enqueue_n(&db.store, 20, None).await;
    wait_settled(&db.store, &second, Duration::from_secs(90)).await;
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.restart(1))
        .await
        .unwrap()
        .expect("restart node 1");
    let third = enqueue_n(&db.store, 20, None).await;
    let all: Vec<ActionId> = first.iter().chain(&second).chain(&third).copied().collect();
    wait_settled(&db.store, &all, Duration::from_secs(120)).await;
    tx.send(true).unwrap();
    for h in [relaying] {
        h.await.unwrap().unwrap();
    }
    consuming.await.unwrap().unwrap();
    sweeping.await.unwrap().unwrap();
    for id in &all {
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1, "action {id}");
        assert_eq!(
            inbox::get(db.store.pool(), *id)
                .await
                .unwrap()
                .unwrap()
                .state,
            State::Succeeded
        );
    }
    assert_eq!(stripe.sim.ledger().len(), 60);
    drop(broker);
    let _ = std::fs::remove_dir_all(&dir);
}

fn kafka_worker_process(
    db_url: &str,
    stripe: &str,
    bootstrap: &str,
    topic: &str,
    group: &str,
    id: &str,
) -> ChildGuard {
    spawn_idem(
        env!("CARGO_BIN_EXE_idem"),
        &[
            "worker",
            "--transport",
            "kafka",
            "--id",
            id,
            "--group",
            group,
            "--topic",
            topic,
            "--partitions",
            "6",
            "--poll-interval-ms",
            "50",
            "--sweep-interval-ms",
            "100",
            "--stripe-call-timeout-ms",
            "1000",
            "--stripe-settle-ms",
            "300",
        ],
        &[
            ("DATABASE_URL", db_url),
            ("KAFKA_BOOTSTRAP", bootstrap),
            ("IDEM_STRIPE_BASE", stripe),
            ("STRIPE_SECRET_KEY", TEST_SECRET),
        ],
    )
}

/// Three worker processes in one group on Apache Kafka; one SIGKILLed mid-batch, its
/// partitions handed to the survivors by the group coordinator.
#[tokio::test]
async fn three_worker_processes_one_killed_mid_batch_every_action_once() {
    let bootstrap = kafka_bootstrap();
    let db = TestDb::new().await;
    // A slow partner, so the killed worker has calls in flight.
    let stripe = StripeFixture::start(StripeSimConfig {
        faults: idem_sim::FaultRates {
            delay: 1.0,
            delay_ms: 120,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let topic = unique("idem.test");
    let group = unique("group");
    let mut k = KafkaConfig::new(bootstrap.clone());
    k.routing = TopicRouting::Single(topic.clone());
    k.partitions = 6;
    idem_kafka::topics::ensure(&k, std::slice::from_ref(&topic))
        .await
        .expect("create the topic");
    let cell = CellName::new("stripe.charge").unwrap();
    let mut ids = vec![];
    for i in 0..90 {
        let a = NewAction::new(
            ActionId::random(),
            cell.clone(),
            json!({"amount": 100 + i, "currency": "usd"}),
        )
        .with_ordering_key(format!("session-{i}"));
        enqueue(db.store.pool(), &a).await.unwrap();
        ids.push(a.action_id);
    }
    let mut workers: Vec<ChildGuard> = ["w1", "w2", "w3"]
        .iter()
        .map(|id| kafka_worker_process(&db.url, &stripe.base_url(), &bootstrap, &topic, &group, id))
        .collect();
    relay(&db, &k).drain_once().await.unwrap();
    // Kill one worker once work is under way.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (settled,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'succeeded'")
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        if settled >= 15 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "workers never got going"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut victim = workers.remove(0);
    victim.kill(); // SIGKILL, mid-batch
    wait_settled(&db.store, &ids, Duration::from_secs(120)).await;
    for id in &ids {
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1, "action {id}");
        assert_eq!(
            inbox::get(db.store.pool(), *id)
                .await
                .unwrap()
                .unwrap()
                .state,
            State::Succeeded
        );
    }
    assert_eq!(stripe.sim.ledger().len(), 90);
    drop(workers);
}

/// A group handoff on Apache Kafka: the first member leaves on SIGTERM.
#[tokio::test]
async fn sigterm_finishes_in_flight_work_and_hands_the_rest_to_the_group() {
    let bootstrap = kafka_bootstrap();
    let db = TestDb::new().await;
    let stripe = StripeFixture::start(StripeSimConfig {
        faults: idem_sim::FaultRates {
            delay: 1.0,
            delay_ms: 200,
            ..Default::default()
        },
        ..Default::default()
    })
    .await;
    let topic = unique("idem.test");
    let group = unique("group");
    let mut k = KafkaConfig::new(bootstrap.clone());
    k.routing = TopicRouting::Single(topic.clone());
    k.partitions = 2;
    idem_kafka::topics::ensure(&k, std::slice::from_ref(&topic))
        .await
        .expect("create the topic");
    let ids = enqueue_n(&db.store, 20, Some("one-session")).await;
    relay(&db, &k).drain_once().await.unwrap();
    let mut first = kafka_worker_process(
        &db.url,
        &stripe.base_url(),
        &bootstrap,
        &topic,
        &group,
        "first",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'executing'")
                .fetch_one(db.store.pool())
                .await
                .unwrap();
        if n > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "first worker never started a call"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = std::process::Command::new("kill")
        .args(["-TERM", &first.0.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || {
        let s = first.0.wait();
        (first, s)
    });
    let (_first, exit) = tokio::time::timeout(Duration::from_secs(30), exit)
        .await
        .expect("worker stops within 30 s")
        .unwrap();
    assert!(exit.unwrap().success(), "graceful exit");
    // Nothing was left mid-call: every started action settled before the exit.
    let (executing,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'executing'")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert_eq!(executing, 0);
    let (done,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM idem.actions WHERE state = 'succeeded'")
            .fetch_one(db.store.pool())
            .await
            .unwrap();
    assert!(done < 20, "the rest was handed back, not drained");
    let _second = kafka_worker_process(
        &db.url,
        &stripe.base_url(),
        &bootstrap,
        &topic,
        &group,
        "second",
    );
    wait_settled(&db.store, &ids, Duration::from_secs(90)).await;
    for id in &ids {
        assert_eq!(stripe.sim.effects_for(&id.to_string()), 1);
    }
    assert_eq!(
        stripe.sim.requests().len(),
        20,
        "no action was called twice"
    );
}
