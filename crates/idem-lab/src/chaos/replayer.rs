//! Duplicated and reordered deliveries: a bystander reads every message the relays
//! publish and publishes a fraction of them again, seconds later, behind newer messages of
//! the same partition — what a producer retry or a replayed partition looks like to the
//! workers.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Marks a copy the replayer published, so it does not copy its copies.
const REPLAY_HEADER: &str = "idem-chaos-replay";

/// The replayer's counts.
#[derive(Debug, Default)]
pub(crate) struct Replayed {
    pub seen: AtomicUsize,
    pub published_again: AtomicUsize,
}

/// Read `topic` (`partitions` partitions) from the beginning without a consumer group and
/// publish each message again with probability `rate`, after up to `max_delay`, until
/// `stop`.
pub(crate) fn start(
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    rate: f64,
    max_delay: Duration,
    seed: u64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(Arc<Replayed>, tokio::task::JoinHandle<()>)> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "idem-chaos-replayer")
        .set("enable.auto.commit", "false")
        .set("client.id", "idem-chaos-replayer")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("client.id", "idem-chaos-replayer")
        .set("message.timeout.ms", "60000")
        .create()?;
    let counts = Arc::new(Replayed::default());
    let c = counts.clone();
    let topic = topic.to_owned();
    let task = tokio::spawn(async move {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x5eed_2e71a7);
        loop {
            let msg = tokio::select! {
                _ = stop.changed() => return,
                m = consumer.recv() => m,
            };
            let Ok(msg) = msg else {
                // The broker is down or restarting: librdkafka reconnects by itself.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let mut headers = OwnedHeaders::new();
            let mut is_copy = false;
            if let Some(h) = msg.headers() {
                for header in h.iter() {
                    is_copy |= header.key == REPLAY_HEADER;
                    headers = headers.insert(Header {
                        key: header.key,
                        value: header.value,
                    });
                }
            }
            if is_copy {
                continue;
            }
            c.seen.fetch_add(1, Ordering::Relaxed);
            if !rng.gen_bool(rate.clamp(0.0, 1.0)) {
                continue;
            }
            let headers = headers.insert(Header {
                key: REPLAY_HEADER,
                value: Some("1"),
            });
            let key = msg.key().map(<[u8]>::to_vec);
            let payload = msg.payload().map(<[u8]>::to_vec);
            let partition = msg.partition();
            let delay = max_delay.mul_f64(rng.gen::<f64>());
            let (producer, topic, c) = (producer.clone(), topic.clone(), c.clone());
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let mut record = FutureRecord::<Vec<u8>, Vec<u8>>::to(&topic)
                    .partition(partition)
                    .headers(headers);
                if let Some(k) = key.as_ref() {
                    record = record.key(k);
                }
                if let Some(p) = payload.as_ref() {
                    record = record.payload(p);
                }
                if producer.send(record, Duration::from_secs(60)).await.is_ok() {
                    c.published_again.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    Ok((counts, task))
}

/// The direct-Postgres transport's duplicates: every 100 ms, copy a share `rate` of the rows
/// waiting in the outbox, so the same action is claimed twice, later and out of order.
pub(crate) fn start_outbox(
    store: idem_store::Store,
    rate: f64,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (Arc<Replayed>, tokio::task::JoinHandle<()>) {
    let counts = Arc::new(Replayed::default());
    let c = counts.clone();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.changed() => return,
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            // Errors (PostgreSQL restarting) just skip a round.
            let copied = sqlx::query_as::<_, (i64, i64)>(
                "WITH waiting AS (SELECT count(*) AS n FROM idem.outbox), \
                 copied AS (INSERT INTO idem.outbox (action_id, ordering_key, payload, headers) \
                     SELECT action_id, ordering_key, payload, headers FROM idem.outbox \
                     WHERE random() < $1 RETURNING 1) \
                 SELECT (SELECT n FROM waiting), (SELECT count(*) FROM copied)",
            )
            .bind(rate.clamp(0.0, 1.0))
            .fetch_one(store.pool())
            .await;
            if let Ok((seen, copied)) = copied {
                c.seen.fetch_add(seen as usize, Ordering::Relaxed);
                c.published_again
                    .fetch_add(copied as usize, Ordering::Relaxed);
            }
        }
    });
    (counts, task)
}
