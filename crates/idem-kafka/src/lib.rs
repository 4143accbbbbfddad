//! idem's Kafka plumbing: where actions are published (topic routing), creating the
//! topics, the headers every message carries, and the consumer-group worker transport.

pub mod config;
pub mod consumer;
pub mod headers;
pub mod topics;

pub use config::{KafkaConfig, TopicRouting};
pub use consumer::{GroupProtocol, KafkaTransport, TransportConfig, DEFAULT_LANE_CAPACITY};

/// Kafka errors, with the broker named so that "is it running?" is answered at once.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("Kafka at {bootstrap}: {source}")]
    Client {
        bootstrap: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("creating topic {topic} on {bootstrap}: {reason}")]
    Topic {
        bootstrap: String,
        topic: String,
        reason: String,
    },
    #[error(transparent)]
    Worker(#[from] idem_worker::WorkerError),
}
