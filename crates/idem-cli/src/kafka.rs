//! The Kafka flags `worker` and `relay` share, over the `[kafka]` section.

use anyhow::Result;
use clap::Args;

use crate::config;

/// Where Kafka is and which topics idem uses: flags over the `[kafka]` section.
#[derive(Args, Debug, Clone)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers (`kafka.bootstrap`, default 127.0.0.1:9092).
    #[arg(long = "bootstrap", env = "KAFKA_BOOTSTRAP")]
    pub bootstrap: Option<String>,
    /// Topic routing: one topic for every action, or `per-cell` / `per-integration` with
    /// --topic as the prefix.
    #[arg(long, value_enum)]
    pub routing: Option<config::Routing>,
    /// The topic (single) or topic prefix (`kafka.topic`, default idem.actions).
    #[arg(long)]
    pub topic: Option<String>,
    /// Partitions of topics idem creates (`kafka.partitions`, default 6).
    #[arg(long)]
    pub partitions: Option<i32>,
}

impl KafkaArgs {
    pub fn config(&self) -> Result<idem_kafka::KafkaConfig> {
        let mut k = config::get().kafka.clone();
        if let Some(b) = &self.bootstrap {
            k.bootstrap = b.clone();
        }
        if let Some(r) = self.routing {
            k.routing = r;
        }
        if let Some(t) = &self.topic {
            k.topic = t.clone();
        }
        if let Some(p) = self.partitions {
            k.partitions = p;
        }
        k.to_kafka().map_err(anyhow::Error::msg)
    }
}
