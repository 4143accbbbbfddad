//! Apache Kafka from Maven Central, started here: `scripts/kafka-classpath.sh` resolves
//! `services/kafka/pom.xml` once into a cached classpath; each node is a combined
//! broker+controller (`kafka.Kafka`, KRaft) with a generated `server.properties`, its
//! storage formatted with `kafka.tools.StorageTool`, on free ports of 127.0.0.1.
//!
//! One node for tests and the demo; three for the fault campaign and failover tests
//! (replication factor 3, `min.insync.replicas=2`), where a node can be SIGKILLed and
//! started again on its own log directory.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::process::watchdog;
use crate::{free_port, io, Result, ServiceError};

/// The line a node logs once it is a registered, unfenced broker.
const STARTED: &str = "Kafka Server started";

/// How the cluster is set up.
#[derive(Debug, Clone)]
pub struct KafkaOptions {
    pub nodes: usize,
    /// Each node's JVM heap (`-Xmx`).
    pub heap: String,
    /// Extra broker settings, written after idem's (so they win).
    pub properties: Vec<(String, String)>,
    /// How long a node may take to come up.
    pub start_timeout: Duration,
}

impl KafkaOptions {
    pub fn nodes(nodes: usize) -> Self {
        Self {
            nodes: nodes.max(1),
            heap: "768m".into(),
            properties: vec![],
            start_timeout: Duration::from_secs(120),
        }
    }
}

/// One combined broker+controller.
#[derive(Debug)]
struct Node {
    id: usize,
    port: u16,
    controller_port: u16,
    dir: PathBuf,
    process: Mutex<Option<Child>>,
}

impl Node {
    fn log(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }
    fn pid_file(&self) -> PathBuf {
        self.dir.join("pid")
    }
}

/// A running cluster; every node is killed and its files removed when dropped.
#[derive(Debug)]
pub struct KafkaCluster {
    dir: PathBuf,
    version: String,
    java: PathBuf,
    classpath: String,
    options: KafkaOptions,
    nodes: Vec<Node>,
}

impl KafkaCluster {
    /// Resolve the broker (once per machine), format every node's storage and start them;
    /// returns when every node logged that it serves.
    pub fn start(dir: &Path, options: &KafkaOptions) -> Result<Self> {
        let classpath = classpath()?;
        let version = version_of(&classpath).unwrap_or_else(|| "unknown".into());
        let java = java()?;
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        let mut nodes = vec![];
        for id in 1..=options.nodes {
            let node_dir = dir.join(format!("node-{id}"));
            std::fs::create_dir_all(&node_dir)
                .map_err(io(format!("create {}", node_dir.display())))?;
            nodes.push(Node {
                id,
                port: free_port()?,
                controller_port: free_port()?,
                dir: node_dir,
                process: Mutex::new(None),
            });
        }
        let cluster = Self {
            dir: dir.to_path_buf(),
            version,
            java,
            classpath,
            options: options.clone(),
            nodes,
        };
        cluster.write_configs()?;
        let cluster_id = cluster_id();
        // Formatting starts a JVM per node: in parallel.
        std::thread::scope(|s| {
            let runs: Vec<_> = cluster
                .nodes
                .iter()
                .map(|n| s.spawn(|| cluster.format(n, &cluster_id)))
                .collect();
            runs.into_iter()
                .map(|r| r.join().unwrap_or_else(|_| Err(missing("format panicked"))))
                .collect::<Result<Vec<()>>>()
        })?;
        let marks: Vec<u64> = cluster
            .nodes
            .iter()
            .map(|n| cluster.spawn(n))
            .collect::<Result<_>>()?;
        let pid_files: Vec<String> = cluster
            .nodes
            .iter()
            .map(|n| format!("'{}'", n.pid_file().display()))
            .collect();
        watchdog(&format!(
            "for f in {}; do kill -9 $(cat \"$f\" 2>/dev/null) 2>/dev/null; done",
            pid_files.join(" ")
        ));
        for (n, mark) in cluster.nodes.iter().zip(marks) {
            cluster.wait_started(n, mark)?;
        }
        Ok(cluster)
    }

    /// `host:port,…` of every node's client listener.
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// For reports: `apache-kafka 4.4.0, 3 nodes`.
    pub fn describe(&self) -> String {
        let n = self.nodes.len();
        format!(
            "apache-kafka {}, {n} node{}",
            self.version,
            if n == 1 { "" } else { "s" }
        )
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Node ids (1-based, as in `node.id` and Kafka's metadata).
    pub fn node_ids(&self) -> Vec<usize> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    /// The node whose client listener is `127.0.0.1:port`.
    pub fn node_with_port(&self, port: u16) -> Option<usize> {
        self.nodes.iter().find(|n| n.port == port).map(|n| n.id)
    }

    /// SIGKILL node `id` (no controlled shutdown: a crash).
    pub fn kill(&self, id: usize) -> Result<()> {
        let node = self.node(id)?;
        let child = node.process.lock().map_err(|_| missing("poisoned"))?.take();
        if let Some(mut c) = child {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(node.pid_file());
        Ok(())
    }

    /// Start node `id` again on its own log directory and ports; returns once it serves.
    pub fn restart(&self, id: usize) -> Result<()> {
        let node = self.node(id)?;
        let mark = self.spawn(node)?;
        self.wait_started(node, mark)
    }

    /// Whether node `id` has a live process.
    pub fn is_running(&self, id: usize) -> bool {
        self.node(id)
            .ok()
            .and_then(|n| {
                let mut p = n.process.lock().ok()?;
                let c = p.as_mut()?;
                Some(matches!(c.try_wait(), Ok(None)))
            })
            .unwrap_or(false)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn node(&self, id: usize) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| missing(format!("no Kafka node {id}")))
    }

    fn write_configs(&self) -> Result<()> {
        let n = self.nodes.len();
        let min_isr = if n >= 3 { 2 } else { 1 };
        let voters: Vec<String> = self
            .nodes
            .iter()
            .map(|v| format!("{}@127.0.0.1:{}", v.id, v.controller_port))
            .collect();
        for node in &self.nodes {
            let mut props: Vec<(String, String)> = [
                ("process.roles", "broker,controller".to_owned()),
                ("node.id", node.id.to_string()),
                ("controller.quorum.voters", voters.join(",")),
                (
                    "listeners",
                    format!(
                        "PLAINTEXT://127.0.0.1:{},CONTROLLER://127.0.0.1:{}",
                        node.port, node.controller_port
                    ),
                ),
                (
                    "advertised.listeners",
                    format!("PLAINTEXT://127.0.0.1:{}", node.port),
                ),
                ("controller.listener.names", "CONTROLLER".into()),
                ("inter.broker.listener.name", "PLAINTEXT".into()),
                (
                    "listener.security.protocol.map",
                    "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT".into(),
                ),
                ("log.dirs", node.dir.join("data").to_string_lossy().into()),
                // idem creates the topics it uses, as it must on a production cluster.
                ("auto.create.topics.enable", "false".into()),
                ("num.partitions", "6".into()),
                ("default.replication.factor", n.to_string()),
                ("min.insync.replicas", min_isr.to_string()),
                ("offsets.topic.replication.factor", n.to_string()),
                ("offsets.topic.num.partitions", "12".into()),
                ("transaction.state.log.replication.factor", n.to_string()),
                ("transaction.state.log.min.isr", min_isr.to_string()),
                ("transaction.state.log.num.partitions", "6".into()),
                (
                    "share.coordinator.state.topic.replication.factor",
                    n.to_string(),
                ),
                ("share.coordinator.state.topic.min.isr", min_isr.to_string()),
                ("group.initial.rebalance.delay.ms", "0".into()),
                ("unclean.leader.election.enable", "false".into()),
                // KIP-848 groups: notice a dead member in seconds, not 45 s (a worker
                // killed mid-batch holds its partitions until then).
                ("group.consumer.min.session.timeout.ms", "6000".into()),
                ("group.consumer.session.timeout.ms", "6000".into()),
                ("group.consumer.min.heartbeat.interval.ms", "500".into()),
                ("group.consumer.heartbeat.interval.ms", "1000".into()),
                // A crashed broker is fenced by the controller after this long; until
                // then its partitions have no leader and acks=all waits for it in the ISR
                // (measured: the campaign's broker crash stalled every cell ~10 s at the
                // 9 s default). 3 s with a heartbeat every 500 ms.
                ("broker.session.timeout.ms", "3000".into()),
                ("broker.heartbeat.interval.ms", "500".into()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            props.extend(self.options.properties.iter().cloned());
            let text: String = props.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
            write(&node.dir.join("server.properties"), &text)?;
            write(&node.dir.join("log4j2.properties"), LOG4J)?;
        }
        Ok(())
    }

    fn jvm(&self, node: &Node, heap: &str) -> Command {
        let mut c = Command::new(&self.java);
        c.arg(format!("-Xmx{heap}"))
            .args([
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
            ])
            .arg(format!(
                "-Dlog4j2.configurationFile={}",
                node.dir.join("log4j2.properties").display()
            ))
            .arg("-cp")
            .arg(&self.classpath)
            .current_dir(&node.dir)
            .stdin(Stdio::null());
        c
    }

    fn format(&self, node: &Node, cluster_id: &str) -> Result<()> {
        let props = node.dir.join("server.properties");
        let out = self
            .jvm(node, "256m")
            .args(["kafka.tools.StorageTool", "format", "-t", cluster_id, "-c"])
            .arg(&props)
            .output()
            .map_err(io("run Kafka's storage tool"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(ServiceError::Tool {
            tool: format!("kafka.tools.StorageTool format (node {})", node.id),
            status: out.status.to_string(),
            output: format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        })
    }

    /// Start the node's JVM; returns the log's length before it, where to look for the
    /// start line.
    fn spawn(&self, node: &Node) -> Result<u64> {
        let mut slot = node.process.lock().map_err(|_| missing("poisoned"))?;
        if slot
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
        {
            return Err(missing(format!(
                "Kafka node {} is already running",
                node.id
            )));
        }
        let log_path = node.log();
        let mark = std::fs::metadata(&log_path).map(|m| m.len()).unwrap_or(0);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(format!("open {}", log_path.display())))?;
        let err = log.try_clone().map_err(io("clone the log handle"))?;
        let child = self
            .jvm(node, &self.options.heap)
            .arg("kafka.Kafka")
            .arg(node.dir.join("server.properties"))
            .stdout(log)
            .stderr(err)
            .spawn()
            .map_err(io(format!("start {}", self.java.display())))?;
        write(&node.pid_file(), &child.id().to_string())?;
        *slot = Some(child);
        Ok(mark)
    }

    fn wait_started(&self, node: &Node, mark: u64) -> Result<()> {
        let deadline = Instant::now() + self.options.start_timeout;
        loop {
            if log_since(&node.log(), mark).contains(STARTED) {
                return Ok(());
            }
            let exited = node
                .process
                .lock()
                .ok()
                .and_then(|mut p| p.as_mut().and_then(|c| c.try_wait().ok().flatten()));
            if let Some(status) = exited {
                return Err(ServiceError::Tool {
                    tool: format!("Kafka node {}", node.id),
                    status: status.to_string(),
                    output: tail(&log_since(&node.log(), mark), 3000),
                });
            }
            if Instant::now() > deadline {
                return Err(ServiceError::Timeout {
                    what: format!("Kafka node {}", node.id),
                    secs: self.options.start_timeout.as_secs(),
                    log: node.log(),
                });
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for n in &self.nodes {
            let _ = self.kill(n.id);
        }
        if std::env::var_os("IDEM_KEEP_SERVICES").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

const LOG4J: &str = "\
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
logger.state.name = state.change.logger
logger.state.level = WARN
logger.cleaner.name = kafka.log.LogCleaner
logger.cleaner.level = WARN
";

fn missing(what: impl Into<String>) -> ServiceError {
    ServiceError::Missing(what.into())
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(io(format!("write {}", path.display())))
}

fn log_since(path: &Path, mark: u64) -> String {
    use std::io::Seek;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    if f.seek(std::io::SeekFrom::Start(mark)).is_err() {
        return String::new();
    }
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s
}

fn tail(s: &str, n: usize) -> String {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len())
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(s.len());
    s[start..].to_owned()
}

/// A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's `Uuid`).
/// Like Kafka's `Uuid.randomUuid`, never one that starts with `-`: the storage tool would
/// read it as an option (it failed 1 run in 64 before).
fn cluster_id() -> String {
    use base64::Engine;
    loop {
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(uuid::Uuid::new_v4().as_bytes());
        if !id.starts_with('-') {
            return id;
        }
    }
}

/// `scripts/kafka-classpath.sh` of the checkout this was built from, else of the checkout
/// the process runs in (a target directory shared between checkouts keeps the first one's
/// compiled-in path).
fn classpath_script() -> PathBuf {
    const SCRIPT: &str = "scripts/kafka-classpath.sh";
    let built = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(SCRIPT);
    if built.is_file() {
        return built;
    }
    std::env::current_dir()
        .ok()
        .and_then(|d| d.ancestors().map(|a| a.join(SCRIPT)).find(|p| p.is_file()))
        .unwrap_or(built)
}

/// The broker's classpath: `IDEM_KAFKA_CLASSPATH` (a classpath, e.g. `/opt/kafka/libs/*`)
/// if set, else what `scripts/kafka-classpath.sh` resolved from `services/kafka/pom.xml`.
pub fn classpath() -> Result<String> {
    if let Some(cp) = std::env::var("IDEM_KAFKA_CLASSPATH")
        .ok()
        .filter(|c| !c.is_empty())
    {
        return Ok(cp);
    }
    let script = std::env::var_os("IDEM_KAFKA_CLASSPATH_SCRIPT")
        .map(PathBuf::from)
        .unwrap_or_else(classpath_script);
    if !script.is_file() {
        return Err(missing(format!(
            "Apache Kafka: {} is not there (this binary was built from another checkout); \
             set KAFKA_BOOTSTRAP to a running broker, or IDEM_KAFKA_CLASSPATH to a Kafka \
             classpath such as /opt/kafka/libs/*",
            script.display()
        )));
    }
    let out = Command::new("bash")
        .arg(&script)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(io(format!("run {}", script.display())))?;
    if !out.status.success() {
        return Err(ServiceError::Tool {
            tool: script.display().to_string(),
            status: out.status.to_string(),
            output: "resolving Apache Kafka from Maven Central failed (see above); or set \
                     KAFKA_BOOTSTRAP to a running broker"
                .into(),
        });
    }
    let file = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    std::fs::read_to_string(&file)
        .map(|s| s.trim().to_owned())
        .map_err(io(format!("read the cached Kafka classpath {file}")))
}

/// The Kafka version in the classpath's `kafka_2.13-X.jar`.
fn version_of(classpath: &str) -> Option<String> {
    classpath.split(':').find_map(|p| {
        let name = Path::new(p).file_name()?.to_str()?;
        let v = name.strip_prefix("kafka_2.13-")?.strip_suffix(".jar")?;
        Some(v.to_owned())
    })
}

/// `JAVA_HOME/bin/java`, else `java` on PATH.
fn java() -> Result<PathBuf> {
    if let Some(home) = std::env::var_os("JAVA_HOME") {
        let j = PathBuf::from(home).join("bin/java");
        if j.is_file() {
            return Ok(j);
        }
    }
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .map(|d| d.join("java"))
        .find(|j| j.is_file());
    found.ok_or_else(|| {
        missing("Apache Kafka needs Java 17 or newer (java on PATH or JAVA_HOME); or set KAFKA_BOOTSTRAP")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_comes_from_the_broker_jar() {
        let cp = "/m2/org/apache/kafka/kafka-clients-4.4.0.jar:/m2/kafka_2.13-4.4.0.jar:/m2/x.jar";
        assert_eq!(version_of(cp).as_deref(), Some("4.4.0"));
        assert_eq!(version_of("/a/b.jar"), None);
    }

    #[test]
    fn cluster_ids_are_kafka_uuids() {
        let id = cluster_id();
        assert_eq!(id.len(), 22, "{id}");
        assert!(id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_ne!(id, cluster_id());
        // One in 64 random ids would start with '-'; a thousand draw none.
        assert!((0..1000).all(|_| !cluster_id().starts_with('-')));
    }
}
