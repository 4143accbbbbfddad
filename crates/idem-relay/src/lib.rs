//! The outbox relay: publishes committed outbox rows to Kafka and deletes them only after
//! Kafka acknowledged them.
//!
//! **Several relays**: leader election, not concurrent draining. Each relay tries a
//! session-level Postgres advisory lock; the holder relays, the others stand by and take
//! over when its session ends (crash, kill, network loss). With one leader, rows are
//! produced in outbox order through an idempotent producer, so per-ordering-key order is
//! the enqueue commit order. Two cases publish a row again: a leader killed after the
//! Kafka ack and before the delete, and a produce failure part-way through a batch (only
//! the acknowledged prefix is deleted). Both are duplicates, absorbed by the inbox; a
//! duplicate can appear after later messages of the same key, but never reorders the first
//! delivery of each action.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use idem_kafka::{headers, KafkaConfig, KafkaError};
use idem_store::{outbox, Store};
use idem_telemetry::TraceHeaders;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;

/// The advisory lock key that elects the relay leader ("idem.relay").
pub const LEADER_LOCK: i64 = 0x6964_656d_7265_6c61;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// How the relay batches.
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// Rows read and produced per round.
    pub batch: i64,
    /// librdkafka `linger.ms`: how long the producer waits to fill a request.
    pub linger: Duration,
    /// Poll the outbox this often without a NOTIFY; standbys retry the lock this often.
    pub poll_interval: Duration,
    /// Test hook: sleep this long between the Kafka ack and the delete, so a test can
    /// kill the process in exactly that window. `IDEM_RELAY_PAUSE_AFTER_ACK_MS`.
    pub pause_after_ack: Option<Duration>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            batch: 500,
            // The relay hands over a whole batch at once, so batching does not need to
            // wait; 1 ms keeps a trickle from paying librdkafka's default 5 ms per hop.
            linger: Duration::from_millis(1),
            poll_interval: Duration::from_millis(500),
            pause_after_ack: std::env::var("IDEM_RELAY_PAUSE_AFTER_ACK_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        }
    }
}

/// A row on its way to Kafka.
struct Outgoing<'a> {
    seq: i64,
    topic: &'a str,
    key: &'a str,
    payload: &'a Vec<u8>,
    headers: OwnedHeaders,
}

/// Headers every idem message carries.
fn base_headers(action_id: &str) -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: headers::ACTION_ID,
            value: Some(action_id),
        })
        .insert(Header {
            key: headers::CONTENT_TYPE,
            value: Some(headers::JSON),
        })
        .insert(Header {
            key: headers::SCHEMA_VERSION,
            value: Some("1"),
        })
}

/// One relay process.
pub struct Relay {
    store: Store,
    database_url: String,
    kafka: KafkaConfig,
    config: RelayConfig,
    producer: FutureProducer,
    topics: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("kafka", &self.kafka)
            .field("config", &self.config)
            .finish()
    }
}

impl Relay {
    pub fn new(
        store: Store,
        database_url: &str,
        kafka: KafkaConfig,
        config: RelayConfig,
    ) -> Result<Self, RelayError> {
        let producer: FutureProducer = kafka
            .client()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger.as_millis().to_string())
            .set("message.timeout.ms", "30000")
            .create()
            .map_err(|source| KafkaError::Client {
                bootstrap: kafka.bootstrap.clone(),
                source,
            })?;
        Ok(Self {
            store,
            database_url: database_url.to_owned(),
            kafka,
            config,
            producer,
            topics: Mutex::new(HashSet::new()),
        })
    }

    /// Run until `shutdown`: stand by until elected, then relay until leadership or the
    /// process ends.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), RelayError> {
        while !*shutdown.borrow() {
            let mut lock = match PgConnection::connect(&self.database_url).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "relay cannot reach PostgreSQL; retrying");
                    self.wait(&mut shutdown).await;
                    continue;
                }
            };
            if !outbox::try_lead(&mut lock, LEADER_LOCK).await? {
                drop(lock);
                self.wait(&mut shutdown).await;
                continue;
            }
            tracing::info!("relay elected leader");
            if let Err(e) = self.lead(&mut lock, &mut shutdown).await {
                tracing::warn!(error = %e, "relay lost leadership or failed; standing by");
                tokio::time::sleep(self.config.poll_interval).await;
            }
        }
        Ok(())
    }

    async fn wait(&self, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            _ = shutdown.changed() => {}
            _ = tokio::time::sleep(self.config.poll_interval) => {}
        }
    }

    async fn lead(
        &self,
        lock: &mut PgConnection,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), RelayError> {
        let mut listener = PgListener::connect_with(self.store.pool()).await?;
        listener.listen_all(["idem_outbox", "idem_settled"]).await?;
        // From now on settled actions queue their receipts for the results topic.
        outbox::publish_results(self.store.pool()).await?;
        let mut rechecks = outbox::Rechecks::default();
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            // Still the leader? The lock lives as long as this session.
            outbox::still_leading(lock).await?;
            // Actions and receipts are independent streams (other tables, other topics):
            // publish both at once, so a receipt round never delays the next action.
            let (n, r) = tokio::try_join!(self.drain_once(), self.drain_results_once())?;
            if n as i64 >= self.config.batch || r as i64 >= self.config.batch {
                continue;
            }
            let poll = tokio::time::Instant::now() + self.config.poll_interval;
            let wake = rechecks.wake(poll);
            tokio::select! {
                _ = shutdown.changed() => {}
                _ = listener.recv() => rechecks.notified(),
                _ = tokio::time::sleep_until(wake) => rechecks.fired(),
            }
        }
    }

    /// Publish one batch in outbox order; delete the acknowledged prefix. Returns the number
    /// of rows deleted.
    pub async fn drain_once(&self) -> Result<usize, RelayError> {
        let rows = outbox::oldest(self.store.pool(), self.config.batch).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let cells: Vec<String> = rows
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.payload)
                    .ok()
                    .and_then(|v| v["cell"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| "invalid.payload".into())
            })
            .collect();
        let topics: Vec<String> = cells
            .iter()
            .map(|c| self.kafka.routing.topic_for(c))
            .collect();
        self.ensure_topics(&topics).await?;
        // One publish span per traced row, child of the enqueuing span; its context is what
        // the message carries, so the worker's span is a child of the relay hop. Kept open
        // until the acks are in.
        let spans: Vec<Option<(tracing::Span, TraceHeaders)>> = rows
            .iter()
            .zip(&topics)
            .map(|(row, topic)| {
                let action_id = row.action_id;
                let parent = TraceHeaders::from_json(&row.headers);
                if parent.is_empty() {
                    return None;
                }
                let span = tracing::info_span!(
                    "idem.relay.publish",
                    action_id = %action_id,
                    messaging.destination = %topic,
                    otel.kind = "producer"
                );
                parent.adopt_into(&span);
                let own = TraceHeaders::of(&span);
                Some((span, if own.is_empty() { parent } else { own }))
            })
            .collect();
        let out: Vec<Outgoing<'_>> = rows
            .iter()
            .zip(cells.iter().zip(&topics))
            .zip(&spans)
            .map(|((row, (cell, topic)), span)| {
                let mut h = base_headers(&row.action_id.to_string()).insert(Header {
                    key: headers::CELL,
                    value: Some(cell.as_str()),
                });
                if let Some(store) = &self.kafka.store {
                    h = h.insert(Header {
                        key: headers::STORE,
                        value: Some(store.as_str()),
                    });
                }
                if let Some((_, trace)) = span {
                    for (name, value) in trace.iter() {
                        h = h.insert(Header {
                            key: name,
                            value: Some(value),
                        });
                    }
                }
                Outgoing {
                    seq: row.seq,
                    topic,
                    key: row.ordering_key.as_str(),
                    payload: &row.payload,
                    headers: h,
                }
            })
            .collect();
        let acked = self.publish(out).await;
        drop(spans);
        if let Some(pause) = self.config.pause_after_ack {
            tracing::warn!(
                ?pause,
                "test hook: pausing between Kafka ack and outbox delete"
            );
            tokio::time::sleep(pause).await;
        }
        outbox::delete(self.store.pool(), &acked).await?;
        Ok(acked.len())
    }

    /// Publish queued receipts to the results topic, keyed by action id, then delete them.
    pub async fn drain_results_once(&self) -> Result<usize, RelayError> {
        let rows = outbox::oldest_results(self.store.pool(), self.config.batch).await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let topic = self.kafka.results_topic.clone();
        self.ensure_topics(std::slice::from_ref(&topic)).await?;
        let keys: Vec<String> = rows.iter().map(|r| r.action_id.to_string()).collect();
        let out: Vec<Outgoing<'_>> = rows
            .iter()
            .zip(&keys)
            .map(|(row, key)| Outgoing {
                seq: row.seq,
                topic: &topic,
                key,
                payload: &row.payload,
                headers: base_headers(key),
            })
            .collect();
        let acked = self.publish(out).await;
        outbox::delete_results(self.store.pool(), &acked).await?;
        Ok(acked.len())
    }

    /// Enqueue `out` in order (`send_result` enqueues synchronously, so the idempotent
    /// producer keeps per-partition order), await the acks, and return the sequence numbers
    /// of the acknowledged prefix. Anything after the first failure waits for the next round.
    async fn publish(&self, out: Vec<Outgoing<'_>>) -> Vec<i64> {
        let mut pending = Vec::with_capacity(out.len());
        for o in out {
            let record = FutureRecord::to(o.topic)
                .key(o.key)
                .payload(o.payload.as_slice())
                .headers(o.headers);
            match self.producer.send_result(record) {
                Ok(f) => pending.push((o.seq, f)),
                Err((e, _)) => {
                    tracing::warn!(error = %e, "producer queue refused a message; the rest waits for the next round");
                    break;
                }
            }
        }
        let mut acked = Vec::with_capacity(pending.len());
        for (seq, f) in pending {
            match f.await {
                Ok(Ok(_)) => acked.push(seq),
                Ok(Err((e, _))) => {
                    tracing::warn!(error = %e, seq, "Kafka did not acknowledge; republishing from here next round");
                    break;
                }
                Err(_) => break,
            }
        }
        acked
    }

    async fn ensure_topics(&self, topics: &[String]) -> Result<(), RelayError> {
        let missing: Vec<String> = {
            let known = self.topics.lock().unwrap_or_else(|p| p.into_inner());
            let mut m: Vec<String> = topics
                .iter()
                .filter(|t| !known.contains(*t))
                .cloned()
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if missing.is_empty() {
            return Ok(());
        }
        idem_kafka::topics::ensure(&self.kafka, &missing).await?;
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(missing);
        Ok(())
    }
}
