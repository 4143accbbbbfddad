//! The soak's Kafka-protocol broker and its one restart: a tansu process of the soak's own
//! (killed with SIGKILL and started again on the same sqlite file), librdkafka's mock
//! cluster served over TCP from this process (all brokers taken down and brought back:
//! connections cut, log kept), or a broker the user gives with a restart command.
//!
//! The mock cluster exists because tansu 0.6 wedged in long soaks (group sessions timed
//! out, idempotent producers got no id); it speaks the same protocol to the same relay and
//! worker processes, but its restart is an outage, not a process crash.

use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use idem_kafka::tansu::{self, Tansu};
use rdkafka::mocking::MockCluster;

/// Which broker a soak runs against.
pub enum Broker {
    /// A tansu process of the soak's own, its files in `dir`.
    Tansu {
        dir: std::path::PathBuf,
        port: u16,
        process: Mutex<Option<Tansu>>,
    },
    /// librdkafka's mock cluster, on a thread of this process.
    Mock(MockBroker),
    /// The user's broker; restarted by a shell command, or not at all.
    Given {
        bootstrap: String,
        restart_cmd: Option<String>,
    },
}

impl Broker {
    pub fn start_tansu(dir: std::path::PathBuf) -> Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let t = tansu::start_in(&dir, port).map_err(anyhow::Error::msg)?;
        Ok(Broker::Tansu {
            dir,
            port,
            process: Mutex::new(Some(t)),
        })
    }

    pub fn bootstrap(&self) -> String {
        match self {
            Broker::Tansu { port, .. } => format!("127.0.0.1:{port}"),
            Broker::Mock(m) => m.bootstrap.clone(),
            Broker::Given { bootstrap, .. } => bootstrap.clone(),
        }
    }

    /// What a restart does, for the event log.
    pub fn restart_kind(&self) -> &'static str {
        match self {
            Broker::Tansu { .. } => "SIGKILL tansu",
            Broker::Mock(_) => "mock cluster: every broker down (connections cut, log kept)",
            Broker::Given { .. } => "restart command",
        }
    }

    /// Take the broker down for `downtime` and bring it back (blocking).
    pub fn restart(&self, downtime: Duration) -> Result<()> {
        match self {
            Broker::Tansu { dir, port, process } => {
                let old = process.lock().map_err(|_| anyhow!("poisoned"))?.take();
                drop(old); // SIGKILL
                std::thread::sleep(downtime);
                let t = tansu::start_in(dir, *port).map_err(anyhow::Error::msg)?;
                *process.lock().map_err(|_| anyhow!("poisoned"))? = Some(t);
                Ok(())
            }
            Broker::Mock(m) => {
                m.command(Command::Down)?;
                std::thread::sleep(downtime);
                m.command(Command::Up)
            }
            Broker::Given {
                restart_cmd: Some(c),
                ..
            } => super::shell(c),
            Broker::Given { .. } => bail!("no restart command for the given broker"),
        }
    }
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

    use super::{Command, MockBroker};

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
