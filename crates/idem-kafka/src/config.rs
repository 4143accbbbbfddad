//! Where actions go on Kafka.

use rdkafka::ClientConfig;

/// Which topic an action is published to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicRouting {
    /// Every action on one topic.
    Single(String),
    /// `<prefix>.<cell>` (e.g. `idem.actions.stripe.charge`).
    PerCell(String),
    /// `<prefix>.<integration>` (e.g. `idem.actions.stripe`).
    PerIntegration(String),
}

impl TopicRouting {
    pub fn topic_for(&self, cell: &str) -> String {
        match self {
            TopicRouting::Single(t) => t.clone(),
            TopicRouting::PerCell(p) => format!("{p}.{cell}"),
            TopicRouting::PerIntegration(p) => {
                format!("{p}.{}", cell.split('.').next().unwrap_or(cell))
            }
        }
    }
}

/// librdkafka properties passed through to every client (SASL, TLS, timeouts), set last so
/// they win. `Debug` hides the values of secret-looking keys.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Properties(std::collections::BTreeMap<String, String>);

impl Properties {
    pub fn set(&mut self, key: &str, value: &str) {
        self.0.insert(key.to_owned(), value.to_owned());
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl std::fmt::Debug for Properties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secret = |k: &str| {
            let k = k.to_ascii_lowercase();
            ["password", "secret", "token", "key"]
                .iter()
                .any(|s| k.contains(s))
        };
        f.debug_map()
            .entries(
                self.0
                    .iter()
                    .map(|(k, v)| (k, if secret(k) { "<redacted>" } else { v.as_str() })),
            )
            .finish()
    }
}

/// Connection and topic settings shared by the relay and the workers.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    pub bootstrap: String,
    pub routing: TopicRouting,
    /// Partitions of topics idem creates.
    pub partitions: i32,
    pub replication: i32,
    /// Topic for receipts of settled actions, keyed by action id.
    pub results_topic: String,
    /// `client.id` of every client (brokers log and quota by it).
    pub client_id: String,
    /// Passed through to librdkafka after idem's own settings.
    pub properties: Properties,
    /// The store these topics belong to ([`Self::for_store`]): the relay names it in every
    /// message's `idem-store` header and a consumer refuses a message naming another.
    pub store: Option<String>,
}

impl KafkaConfig {
    /// The topics of one store of several: every topic name gains `.{store}` after its
    /// prefix (`idem.actions` → `idem.actions.b`, `idem.results` → `idem.results.b`), so a
    /// message's topic names its home store and each store's relay and consumer group
    /// never meet another store's actions.
    pub fn for_store(&self, store: &str) -> Self {
        let mut k = self.clone();
        k.routing = match &self.routing {
            TopicRouting::Single(t) => TopicRouting::Single(format!("{t}.{store}")),
            TopicRouting::PerCell(p) => TopicRouting::PerCell(format!("{p}.{store}")),
            TopicRouting::PerIntegration(p) => TopicRouting::PerIntegration(format!("{p}.{store}")),
        };
        k.results_topic = format!("{}.{store}", self.results_topic);
        k.store = Some(store.to_owned());
        k
    }

    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            routing: TopicRouting::Single("idem.actions".into()),
            partitions: 6,
            // The broker's default.replication.factor (3 on a three-node cluster).
            replication: -1,
            results_topic: "idem.results".into(),
            client_id: "idem".into(),
            properties: Properties::default(),
            store: None,
        }
    }

    /// Base client settings for any idem Kafka client, then the passed-through properties.
    /// (Producer and consumer settings idem sets later, e.g. `acks`, still win: they are
    /// what the guarantee rests on.)
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", &self.client_id)
            .set("socket.keepalive.enable", "true");
        for (k, v) in self.properties.iter() {
            c.set(k, v);
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_pass_through_and_hide_secrets() {
        let mut k = KafkaConfig::new("b:9092");
        k.properties.set("security.protocol", "SASL_SSL");
        k.properties.set("sasl.password", "hunter2");
        let c = k.client();
        assert_eq!(c.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(c.get("sasl.password"), Some("hunter2"));
        let shown = format!("{k:?}");
        assert!(
            !shown.contains("hunter2") && shown.contains("SASL_SSL"),
            "{shown}"
        );
    }

    #[test]
    fn routes_by_cell_and_integration() {
        assert_eq!(
            TopicRouting::Single("a".into()).topic_for("stripe.charge"),
            "a"
        );
        assert_eq!(
            TopicRouting::PerCell("idem".into()).topic_for("stripe.charge"),
            "idem.stripe.charge"
        );
        assert_eq!(
            TopicRouting::PerIntegration("idem".into()).topic_for("stripe.charge"),
            "idem.stripe"
        );
    }
}
