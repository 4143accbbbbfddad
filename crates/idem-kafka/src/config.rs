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
}

impl KafkaConfig {
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            routing: TopicRouting::Single("idem.actions".into()),
            partitions: 6,
            // The broker's default.replication.factor (3 on a three-node cluster).
            replication: -1,
            results_topic: "idem.results".into(),
        }
    }

    /// Base client settings for any idem Kafka client.
    pub fn client(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap)
            .set("client.id", "idem")
            .set("socket.keepalive.enable", "true");
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
