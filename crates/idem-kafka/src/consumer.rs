//! The Kafka worker transport: a consumer group whose messages go through the same
//! receive → write-ahead → call → settle path as the direct transport.
//!
//! - **Offsets** are stored (for auto-commit) only after a message's action is settled or
//!   durably in the inbox with its attempt written ahead; a crash before that redelivers
//!   the message, and the inbox absorbs the duplicate.
//! - **Order**: one lane (task) per partition calls its messages in offset order, up to
//!   `per_partition_batch` at once and never two of one key at once, so per-key order
//!   holds at any batch size (1 = strictly one call at a time per partition); partitions
//!   run in parallel. With fast calls a lane writes several messages ahead in one
//!   transaction and then calls them in that order ([`Combiner::window`]).
//! - **Backpressure per partition**: each lane holds at most `lane_capacity` messages
//!   (default 2,048: a pause is expensive, see [`DEFAULT_LANE_CAPACITY`]).
//!   When one is full, the reader keeps what it read for that lane in order, pauses that
//!   partition alone and goes on reading the others; it resumes the partition once the lane
//!   has taken what was kept. A reader that waited on a full lane instead stalled every
//!   partition behind one busy or slow one (measured: 6 lanes, one-at-a-time, ran at the
//!   speed of ~1 because a fetch hands over one partition's backlog after another).
//! - **Rebalances** need no bookkeeping for correctness: an action in flight when its
//!   partition moves is already in the inbox (leased), the new owner sees its message as a
//!   duplicate, and the sweeper finishes it if this worker dies. Offsets stored for a
//!   partition this member no longer owns are rejected by the broker and re-read.
//! - **Poison** (undecodable, unknown schema version) goes to `idem.dead_letters` with the
//!   raw bytes and Kafka coordinates; the partition moves on.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

use idem_core::ExecOutcome;
use idem_telemetry::TraceHeaders;
use idem_worker::steps::Started;
use idem_worker::{Combiner, Delivery, Worker};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::{Offset, TopicPartitionList};
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use crate::{headers, KafkaConfig, KafkaError};

/// A lane's room, in messages. A paused partition must be rare and cheap: librdkafka drops
/// what it had fetched for a partition at `pause` and fetches again only at its broker
/// thread's next pass after `resume`, up to a second later (measured: the next message came
/// 6–9 ms or ~970 ms after `resume`, on whole-second ticks). With room for 64, a backlog
/// paused every lane every other batch and the worker ran at 1,462 actions/s on a
/// 40,000-message topic (`idem-lab bench kafka-worker --per-partition-batch 32 --actions
/// 40000`) against 7,326 on 5,000; with 2,048 a lane still has about a second of work in
/// hand when its partition resumes: 11,468/s (512: 6,588; 8,192: 10,828; never pausing:
/// 12,196). Memory: up to this many messages per assigned partition.
pub const DEFAULT_LANE_CAPACITY: usize = 2048;

/// Settings of the consumer-group transport.
#[derive(Debug, Clone)]
pub struct TransportConfig {
    pub group: String,
    pub topics: Vec<String>,
    /// Calls a partition lane makes at once (never two of one key); 1 calls one message
    /// at a time in offset order.
    pub per_partition_batch: usize,
    /// Messages a partition lane holds before its partition is paused (see
    /// [`DEFAULT_LANE_CAPACITY`]).
    pub lane_capacity: usize,
    /// librdkafka `fetch.wait.max.ms`: how long the broker may hold a fetch waiting for
    /// data. Kafka answers as soon as one byte is there; tansu 0.6 holds the fetch for the
    /// whole wait, so the default (librdkafka's 500 ms) added ~400 ms to every action's
    /// latency there. 50 ms costs a few idle fetches a second.
    pub fetch_wait_max: Duration,
    /// Which consumer group protocol to speak.
    pub protocol: GroupProtocol,
    /// Static membership (`group.instance.id`, classic protocol): a worker restarted under
    /// the same instance id gets its partitions back without a rebalance. Must be unique
    /// per live worker (e.g. a supervisor's slot, a pod name).
    pub instance_id: Option<String>,
}

/// The consumer group protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupProtocol {
    /// KIP-848 (`group.protocol=consumer`, Kafka 4): the broker assigns partitions and a
    /// member joining or leaving never stops the others; timeouts are the broker's
    /// (`group.consumer.session.timeout.ms`, `group.consumer.heartbeat.interval.ms`).
    Consumer,
    /// The classic protocol with cooperative-sticky assignment, for brokers without
    /// KIP-848 (before Kafka 4, librdkafka's mock cluster).
    Classic,
}

impl std::str::FromStr for GroupProtocol {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "consumer" => Ok(Self::Consumer),
            "classic" => Ok(Self::Classic),
            other => Err(format!("group protocol {other:?}: consumer or classic")),
        }
    }
}

impl TransportConfig {
    pub fn new(group: impl Into<String>, topics: Vec<String>) -> Self {
        Self {
            group: group.into(),
            topics,
            // Under a backlog one delivery transaction carries many actions (measured:
            // `idem-lab bench latency --transport kafka`, p99 at 200/s); idle, a batch is one.
            per_partition_batch: 32,
            lane_capacity: DEFAULT_LANE_CAPACITY,
            fetch_wait_max: Duration::from_millis(50),
            protocol: GroupProtocol::Consumer,
            instance_id: None,
        }
    }
}

/// Consumes actions from Kafka into a [`Worker`].
#[derive(Debug)]
pub struct KafkaTransport {
    worker: Worker,
    kafka: KafkaConfig,
    config: TransportConfig,
}

impl KafkaTransport {
    pub fn new(worker: Worker, kafka: KafkaConfig, config: TransportConfig) -> Self {
        Self {
            worker,
            kafka,
            config,
        }
    }

    fn consumer(&self) -> Result<StreamConsumer<LagContext>, KafkaError> {
        let mut c = self.kafka.client();
        c.set("group.id", &self.config.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "200")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        match self.config.protocol {
            GroupProtocol::Consumer => {
                c.set("group.protocol", "consumer");
                if let Some(id) = &self.config.instance_id {
                    c.set("group.instance.id", id);
                }
            }
            GroupProtocol::Classic => {
                // Incremental (cooperative) rebalancing: a member joining or leaving moves
                // only the partitions that change hands. With the eager `range` strategy
                // every membership change stopped the whole group.
                c.set("group.protocol", "classic")
                    .set("session.timeout.ms", "10000")
                    .set("heartbeat.interval.ms", "1000")
                    .set("partition.assignment.strategy", "cooperative-sticky");
                if let Some(id) = &self.config.instance_id {
                    c.set("group.instance.id", id);
                }
            }
        }
        c.set("topic.metadata.refresh.interval.ms", "5000")
            .set(
                "fetch.wait.max.ms",
                self.config.fetch_wait_max.as_millis().to_string(),
            )
            // librdkafka's statistics carry the consumer lag per partition.
            .set("statistics.interval.ms", "5000")
            .create_with_context(LagContext)
            .map_err(|source| KafkaError::Client {
                bootstrap: self.kafka.bootstrap.clone(),
                source,
            })
    }

    /// Consume until `shutdown`; then let every lane finish the batch in hand, store and
    /// commit offsets, and leave the group. A consumer that librdkafka declares fatally
    /// failed (e.g. `UnreleasedInstanceId`: a restarted static member whose crashed
    /// predecessor the broker has not timed out yet) is unusable, so it is replaced by a
    /// new one after its lanes finish, instead of being polled forever.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) -> Result<(), KafkaError> {
        crate::topics::ensure(&self.kafka, &self.config.topics).await?;
        self.worker.register_with_fleet().await?;
        let mut pause = Duration::from_millis(500);
        loop {
            match self.session(&mut shutdown).await? {
                Ended::Shutdown => return Ok(()),
                Ended::Fatal(e) => {
                    tracing::error!(error = %e, ?pause, "the Kafka consumer failed fatally; starting a new one");
                    tokio::select! {
                        _ = shutdown.changed() => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    pause = (pause * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// One consumer's life: subscribe, hand messages to the lanes, end at shutdown or at a
    /// fatal error.
    async fn session(&self, shutdown: &mut watch::Receiver<bool>) -> Result<Ended, KafkaError> {
        let consumer = Arc::new(self.consumer()?);
        let topics: Vec<&str> = self.config.topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&topics)
            .map_err(|source| KafkaError::Client {
                bootstrap: self.kafka.bootstrap.clone(),
                source,
            })?;
        let mut lanes: HashMap<(String, i32), LaneSlot> = HashMap::new();
        let mut tasks = JoinSet::new();
        // The lanes share write-ahead and settle transactions (each still waits for its own).
        let combiner = Combiner::new(self.worker.clone());
        // While a lane holds back messages, look every few ms whether it has room again.
        let mut handover = tokio::time::interval(Duration::from_millis(2));
        handover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let ended = loop {
            let holding = lanes.values().any(LaneSlot::holding);
            let msg = tokio::select! {
                _ = shutdown.changed() => break Ended::Shutdown,
                m = consumer.recv() => m,
                _ = handover.tick(), if holding => {
                    for ((topic, partition), slot) in lanes.iter_mut() {
                        slot.hand_over(&consumer, topic, *partition);
                    }
                    continue;
                }
            };
            let msg = match msg {
                Ok(m) => m.detach(),
                Err(e @ rdkafka::error::KafkaError::MessageConsumptionFatal(_)) => {
                    break Ended::Fatal(e.to_string());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Kafka consume error; continuing");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let (topic, partition) = (msg.topic().to_owned(), msg.partition());
            let slot = lanes.entry((topic.clone(), partition)).or_insert_with(|| {
                let (tx, rx) = mpsc::channel(self.config.lane_capacity.max(1));
                let combiner = combiner.clone();
                let consumer = consumer.clone();
                let batch = self.config.per_partition_batch.max(1);
                tasks.spawn(lane(
                    combiner,
                    consumer,
                    rx,
                    batch,
                    self.kafka.store.clone(),
                    shutdown.clone(),
                ));
                LaneSlot::new(tx)
            });
            slot.push(msg, &consumer, &topic, partition);
        };
        drop(lanes);
        while tasks.join_next().await.is_some() {}
        if ended == Ended::Shutdown {
            if let Err(e) = consumer.commit_consumer_state(CommitMode::Sync) {
                tracing::debug!(error = %e, "final commit (nothing stored is fine)");
            }
            consumer.unsubscribe();
        }
        Ok(ended)
    }
}

/// A partition lane as the reader sees it: its channel, and what it read while the lane
/// was full.
struct LaneSlot {
    tx: mpsc::Sender<OwnedMessage>,
    /// Messages read while the lane was full, in offset order.
    kept: VecDeque<OwnedMessage>,
    /// The partition is paused at the consumer until `kept` is handed over.
    paused: bool,
}

impl LaneSlot {
    fn new(tx: mpsc::Sender<OwnedMessage>) -> Self {
        Self {
            tx,
            kept: VecDeque::new(),
            paused: false,
        }
    }

    fn holding(&self) -> bool {
        self.paused || !self.kept.is_empty()
    }

    /// Give `msg` to the lane, or keep it (after what is kept already, so order holds) and
    /// pause its partition. Messages the consumer had fetched before the pause may still
    /// arrive; they are kept the same way. On resume the consumer fetches from the offset
    /// after the last message it handed out, so nothing is skipped.
    fn push(
        &mut self,
        msg: OwnedMessage,
        consumer: &StreamConsumer<LagContext>,
        topic: &str,
        partition: i32,
    ) {
        let msg = if self.kept.is_empty() {
            match self.tx.try_send(msg) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Full(m)) => m,
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!("a partition lane stopped; its messages will be redelivered");
                    return;
                }
            }
        } else {
            msg
        };
        self.kept.push_back(msg);
        if !self.paused {
            self.paused = true;
            if let Err(e) = consumer.pause(&one_partition(topic, partition)) {
                tracing::debug!(error = %e, topic, partition, "pausing a full lane's partition");
            }
        }
    }

    /// Move kept messages into the lane while it has room; resume the partition when none
    /// is left.
    fn hand_over(&mut self, consumer: &StreamConsumer<LagContext>, topic: &str, partition: i32) {
        while let Some(m) = self.kept.pop_front() {
            match self.tx.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => {
                    self.kept.push_front(m);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!("a partition lane stopped; its messages will be redelivered");
                    self.kept.clear();
                }
            }
        }
        if self.paused {
            self.paused = false;
            if let Err(e) = consumer.resume(&one_partition(topic, partition)) {
                // Revoked meanwhile: the next owner reads from the committed offset.
                tracing::debug!(error = %e, topic, partition, "resuming a lane's partition");
            }
        }
    }
}

fn one_partition(topic: &str, partition: i32) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    tpl
}

/// Why a consumer session ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    Shutdown,
    /// librdkafka's fatal error: the consumer cannot be used again.
    Fatal(String),
}

/// One partition's messages, in order. On shutdown it finishes the window in hand and
/// hands the rest back (their offsets are not stored, so the next owner reads them).
///
/// A window is what is waiting, up to [`Combiner::window`]: the batch, and with fast calls
/// what they get through in a few ms more. Its messages are written ahead in one
/// transaction and called in offset order, `batch` at most at once and never two of one
/// key at once ([`Combiner::execute_in_order`]). When a window's calls have returned and
/// the next messages are already waiting, its settle and the next window's write-ahead
/// share one transaction (the settle first); otherwise it settles alone. The window's
/// offset is stored once its settle has committed.
async fn lane(
    combiner: Combiner,
    consumer: Arc<StreamConsumer<LagContext>>,
    mut rx: mpsc::Receiver<OwnedMessage>,
    batch: usize,
    store: Option<String>,
    shutdown: watch::Receiver<bool>,
) {
    // A message that would open a round beyond the window waits for the next one.
    let mut carried: Option<OwnedMessage> = None;
    // The last window: its outcomes, not yet settled, and its last message.
    let mut unsettled: Option<(Vec<(Started, ExecOutcome)>, OwnedMessage)> = None;
    loop {
        let first = match carried.take() {
            Some(m) => Some(m),
            // Something to settle: take the next message only if it is already here.
            None if unsettled.is_some() => rx.try_recv().ok(),
            None => rx.recv().await,
        };
        let stopping = *shutdown.borrow();
        let first = match first {
            Some(m) if !stopping => m,
            // Nothing waiting yet (or stopping, or the partition went): settle what is
            // in hand, then wait for the next message (or stop).
            _ => {
                if let Some((items, last)) = unsettled.take() {
                    settle(&combiner, items).await;
                    store_offset(&consumer, &last);
                    if !stopping {
                        continue;
                    }
                }
                break;
            }
        };
        // Only what is already waiting (a window never waits to fill), in the rounds the
        // calls will go out in: offset order, at most `batch` a round, never two of one
        // key in a round.
        let window = combiner.window(batch);
        let mut msgs = Vec::with_capacity(window.deliveries);
        let (mut rounds, mut round) = (0, HashSet::new());
        let mut next = Some(first);
        while let Some(m) = next.take() {
            let key = m.key().map(<[u8]>::to_vec);
            if rounds == 0 || round.len() == batch || round.contains(&key) {
                if rounds == window.rounds {
                    carried = Some(m);
                    break;
                }
                rounds += 1;
                round.clear();
            }
            round.insert(key);
            msgs.push(m);
            if msgs.len() < window.deliveries {
                next = rx.try_recv().ok();
            }
        }
        let deliveries: Vec<Delivery> = msgs
            .iter()
            .map(|m| Delivery {
                payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
                source: serde_json::json!({
                    "transport": "kafka",
                    "topic": m.topic(),
                    "partition": m.partition(),
                    "offset": m.offset(),
                }),
                trace: trace_of(m),
                misrouted: misrouted(m, store.as_deref()),
            })
            .collect();
        let (items, settled_last) = match unsettled.take() {
            Some((items, last)) => (items, Some(last)),
            None => (vec![], None),
        };
        let mut delay = Duration::from_millis(100);
        let started = loop {
            match combiner
                .settle_and_start(items.clone(), deliveries.clone())
                .await
            {
                Ok((started, report)) => {
                    tracing::debug!(?report, "delivered");
                    break started;
                }
                Err(e) => {
                    // Nothing is acknowledged: retry the same settle and batch (the inbox
                    // makes the retry safe) until the database answers again.
                    tracing::warn!(error = %e, "delivery failed; retrying the batch");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
        if let Some(last) = settled_last {
            store_offset(&consumer, &last);
        }
        let last = msgs.pop().expect("non-empty batch");
        if started.is_empty() {
            // Nothing to call (duplicates, held for approval, …): done with this batch.
            store_offset(&consumer, &last);
        } else {
            unsettled = Some((combiner.execute_in_order(started, batch).await, last));
        }
    }
}

/// Settle a lane's last outcomes, retrying until the database answers (the actions keep
/// their leases meanwhile; a worker that dies here leaves them to the sweep).
async fn settle(combiner: &Combiner, items: Vec<(Started, ExecOutcome)>) {
    let mut delay = Duration::from_millis(100);
    while let Err(e) = combiner.settle(items.clone()).await {
        tracing::warn!(error = %e, "settle failed; retrying");
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Store the offset after `last` (for auto-commit): everything up to it is settled.
fn store_offset(consumer: &StreamConsumer<LagContext>, last: &OwnedMessage) {
    let mut tpl = TopicPartitionList::new();
    if tpl
        .add_partition_offset(
            last.topic(),
            last.partition(),
            Offset::Offset(last.offset() + 1),
        )
        .is_ok()
    {
        if let Err(e) = consumer.store_offsets(&tpl) {
            tracing::debug!(error = %e, "offset not stored (partition moved?); it will be re-read");
        }
    }
}

/// Why a message is not for this consumer group's store: its `idem-store` header names
/// another (topics shared by mistake between stores). A message without the header (a
/// relay of one store, or from before the header) is taken as the topic's.
fn misrouted(m: &OwnedMessage, ours: Option<&str>) -> Option<String> {
    let theirs = m
        .headers()?
        .iter()
        .find(|h| h.key == headers::STORE)?
        .value?;
    let theirs = String::from_utf8_lossy(theirs);
    match ours {
        Some(ours) if ours == theirs => None,
        Some(ours) => Some(format!(
            "the message is for store {theirs:?}, consumed by store {ours:?}'s group: not taken, \
             so no action is made on the wrong store (are two stores' topics the same?)"
        )),
        None => Some(format!(
            "the message is for store {theirs:?}, consumed by a worker without [[stores]]: not taken"
        )),
    }
}

/// The W3C trace headers a message carries (set by the relay).
fn trace_of(m: &OwnedMessage) -> TraceHeaders {
    match m.headers() {
        Some(h) => TraceHeaders::from_pairs(h.iter().filter_map(|h| {
            h.value
                .and_then(|v| std::str::from_utf8(v).ok())
                .map(|v| (h.key, v))
        })),
        None => TraceHeaders::default(),
    }
}

/// Reports librdkafka's per-partition consumer lag (messages behind the high watermark)
/// to the `idem.kafka.consumer_lag` gauge.
#[derive(Debug, Clone, Copy)]
pub struct LagContext;

impl rdkafka::ClientContext for LagContext {
    fn stats(&self, statistics: rdkafka::Statistics) {
        let lags = statistics
            .topics
            .iter()
            .flat_map(|(topic, t)| {
                t.partitions
                    .iter()
                    .filter(|(p, part)| **p >= 0 && part.consumer_lag >= 0)
                    .map(move |(p, part)| (topic.clone(), *p, part.consumer_lag))
            })
            .collect();
        idem_telemetry::metrics::observe_consumer_lag(lags);
    }
}

impl rdkafka::consumer::ConsumerContext for LagContext {}
