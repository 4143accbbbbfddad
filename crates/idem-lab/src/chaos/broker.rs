//! The soak's Kafka cluster and its crashes: Apache Kafka of the soak's own (three nodes by
//! default; a crash SIGKILLs one node, the leader of a partition in use or the group's
//! coordinator, and starts it again on its own log directory), a cluster the user gives
//! with a restart command, or librdkafka's mock cluster served over TCP from this process
//! (all brokers taken down and brought back: connections cut, log kept).
//!
//! The mock cluster stays for one use: a quick soak with no JVM (`--broker mock`); its
//! restart is an outage, not a process crash, so it proves less than the default.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;

use crate::services::Kafka;

/// Which broker a soak runs against.
pub enum Broker {
    /// Apache Kafka: the soak's own (nodes crashed and restarted) or the user's (restarted
    /// by `restart_cmd`, if any).
    Kafka {
        kafka: Kafka,
        restart_cmd: Option<String>,
        /// The actions topic and the workers' group: whose leader and coordinator to crash.
        topic: String,
        group: String,
        crashes: AtomicUsize,
    },
    /// librdkafka's mock cluster, on a thread of this process.
    Mock(MockBroker),
}

impl Broker {
    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Kafka { kafka, .. } => kafka.bootstrap().to_owned(),
            Broker::Mock(m) => m.bootstrap.clone(),
        }
    }

    /// For the report: `apache-kafka 4.4.0, 3 nodes`.
    pub fn describe(&self) -> String {
        match self {
            Broker::Kafka { kafka, .. } => kafka.broker().to_owned(),
            Broker::Mock(_) => "librdkafka mock cluster, 3 brokers".into(),
        }
    }

    /// Crash the broker (or take it down) for `downtime` and bring it back (blocking);
    /// says what it did.
    pub fn restart(&self, downtime: Duration) -> Result<String> {
        match self {
            Broker::Kafka {
                kafka,
                restart_cmd,
                topic,
                group,
                crashes,
            } => {
                if let Some(cluster) = kafka.own() {
                    // Alternate: the leader of a partition in use, then the coordinator.
                    let n = crashes.fetch_add(1, Ordering::Relaxed);
                    let (node, why) = victim(kafka.bootstrap(), topic, group, n % 2 == 1)?;
                    let id = cluster
                        .node_with_port(node.1)
                        .with_context(|| format!("no node of ours listens on {}", node.0))?;
                    cluster.kill(id)?;
                    std::thread::sleep(downtime);
                    cluster.restart(id)?;
                    return Ok(format!(
                        "SIGKILL node {id} ({why}), down {downtime:?}, restarted"
                    ));
                }
                match restart_cmd {
                    Some(c) => super::shell(c).map(|()| format!("ran {c:?}")),
                    None => bail!("no restart command for the given broker"),
                }
            }
            Broker::Mock(m) => {
                m.command(Command::Down)?;
                std::thread::sleep(downtime);
                m.command(Command::Up)?;
                Ok(format!(
                    "mock cluster: every broker down {downtime:?} (connections cut, log kept), back"
                ))
            }
        }
    }
}

/// The broker (`host:port`, port) leading partition 0 of `topic`, or coordinating `group`
/// (the leader of its `__consumer_offsets` partition), and why it was chosen.
fn victim(
    bootstrap: &str,
    topic: &str,
    group: &str,
    coordinator: bool,
) -> Result<((String, u16), String)> {
    let client: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("a metadata client")?;
    let md = client
        .fetch_metadata(None, Duration::from_secs(10))
        .context("cluster metadata")?;
    let (t, p, why) = if coordinator {
        let offsets = md
            .topics()
            .iter()
            .find(|t| t.name() == "__consumer_offsets")
            .context("no __consumer_offsets topic yet")?;
        let p = coordinator_partition(group, offsets.partitions().len() as i32);
        (
            "__consumer_offsets",
            p,
            format!("coordinator of group {group}"),
        )
    } else {
        (topic, 0, format!("leader of {topic} partition 0"))
    };
    let leader = md
        .topics()
        .iter()
        .find(|x| x.name() == t)
        .and_then(|x| x.partitions().iter().find(|x| x.id() == p))
        .map(|x| x.leader())
        .with_context(|| format!("no leader for {t} partition {p}"))?;
    let b = md
        .brokers()
        .iter()
        .find(|b| b.id() == leader)
        .with_context(|| format!("broker {leader} not in the metadata"))?;
    Ok(((format!("{}:{}", b.host(), b.port()), b.port() as u16), why))
}

/// The `__consumer_offsets` partition that holds `group`: Kafka's
/// `Utils.abs(group.hashCode()) % partitions`, with Java's `String.hashCode`.
fn coordinator_partition(group: &str, partitions: i32) -> i32 {
    let h = group
        .encode_utf16()
        .fold(0i32, |h, c| h.wrapping_mul(31).wrapping_add(i32::from(c)));
    (h & 0x7fff_ffff) % partitions.max(1)
}

enum Command {
    Down,
    Up,
}

/// A command and where its result goes.
type Request = (Command, mpsc::Sender<Result<()>>);

/// librdkafka's mock cluster on a thread of its own (its handle is not `Send`); other
/// processes reach its brokers over TCP at `bootstrap`. Dropped: the thread ends and the
/// cluster with it.
pub struct MockBroker {
    pub bootstrap: String,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl MockBroker {
    /// `brokers` brokers, with `topics` created with `partitions` partitions each. The mock
    /// cluster has no CreateTopics (an admin request for one waits for a controller that
    /// never comes), so every topic idem publishes to, the results topic included, must be
    /// there for idem to find in the metadata.
    pub fn start(brokers: i32, topics: &[&str], partitions: i32) -> Result<Self> {
        let (ready_tx, ready_rx) = mpsc::channel::<Result<String>>();
        let (tx, rx) = mpsc::channel::<Request>();
        let topics: Vec<String> = topics.iter().map(|t| t.to_string()).collect();
        let thread = std::thread::Builder::new()
            .name("mock-kafka".into())
            .spawn(move || {
                let cluster = match MockCluster::new(brokers) {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!("mock cluster: {e}")));
                        return;
                    }
                };
                for topic in &topics {
                    if let Err(e) = cluster.create_topic(topic, partitions, brokers.min(3)) {
                        let _ = ready_tx.send(Err(anyhow!("mock cluster topic {topic}: {e}")));
                        return;
                    }
                }
                let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
                // Until the harness drops its sender.
                while let Ok((cmd, reply)) = rx.recv() {
                    let r = match cmd {
                        Command::Down => cluster.broker_down(-1),
                        Command::Up => cluster.broker_up(-1),
                    };
                    let _ = reply.send(r.map_err(|e| anyhow!("mock cluster: {e}")));
                }
            })
            .context("start the mock cluster's thread")?;
        let bootstrap = ready_rx
            .recv()
            .context("the mock cluster's thread ended")??;
        Ok(MockBroker {
            bootstrap,
            tx: Mutex::new(Some(tx)),
            thread: Some(thread),
        })
    }

    fn command(&self, cmd: Command) -> Result<()> {
        let (reply_tx, reply_rx) = mpsc::channel();
        self.tx
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .as_ref()
            .context("mock cluster stopped")?
            .send((cmd, reply_tx))
            .map_err(|_| anyhow!("the mock cluster's thread ended"))?;
        reply_rx
            .recv()
            .map_err(|_| anyhow!("the mock cluster's thread ended"))?
    }
}

impl Drop for MockBroker {
    fn drop(&mut self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::ClientConfig;

    use super::{coordinator_partition, Command, MockBroker};

    /// Java's `"idem-chaos".hashCode()` is -249127882; `& 0x7fffffff` makes it 1898355766,
    /// which is 16 modulo 50 (and `"".hashCode()` is 0).
    #[test]
    fn coordinator_partition_follows_kafka() {
        assert_eq!(coordinator_partition("idem-chaos", 50), 16);
        assert_eq!(coordinator_partition("", 12), 0);
    }

    fn client(bootstrap: &str) -> BaseConsumer {
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .create()
            .expect("client")
    }

    /// The topics are there before anyone asks (idem must not need CreateTopics), and the
    /// restart really takes the brokers away: a new client gets no metadata while they are
    /// down and does once they are back.
    #[test]
    fn mock_cluster_has_the_topics_and_goes_down_and_up() {
        let m = MockBroker::start(3, &["idem.chaos.t", "idem.results"], 4).expect("start");
        let md = client(&m.bootstrap)
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("metadata");
        for t in ["idem.chaos.t", "idem.results"] {
            let topic = md.topics().iter().find(|x| x.name() == t).expect(t);
            assert_eq!(topic.partitions().len(), 4, "{t}");
        }
        m.command(Command::Down).expect("down");
        let c = client(&m.bootstrap);
        assert!(
            c.fetch_metadata(None, Duration::from_secs(2)).is_err(),
            "metadata from a cluster that is down"
        );
        m.command(Command::Up).expect("up");
        c.fetch_metadata(None, Duration::from_secs(15))
            .expect("metadata once the brokers are back");
    }
}
