//! Creating idem's topics. Brokers in production (and tansu) do not auto-create topics, so
//! idem creates what it publishes to, idempotently.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaConfig, KafkaError};

/// Create `topics` if they do not exist yet.
pub async fn ensure(config: &KafkaConfig, topics: &[String]) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        config
            .client()
            .create()
            .map_err(|source| KafkaError::Client {
                bootstrap: config.bootstrap.clone(),
                source,
            })?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                t,
                config.partitions,
                TopicReplication::Fixed(config.replication),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &opts)
        .await
        .map_err(|source| KafkaError::Client {
            bootstrap: config.bootstrap.clone(),
            source,
        })?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    bootstrap: config.bootstrap.clone(),
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}
