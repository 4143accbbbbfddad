//! Creating idem's topics. Brokers in production do not auto-create topics, so
//! idem creates what it publishes to, idempotently.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::types::RDKafkaErrorCode;

use crate::{KafkaConfig, KafkaError};

/// Create `topics` if they do not exist yet.
pub async fn ensure(config: &KafkaConfig, topics: &[String]) -> Result<(), KafkaError> {
    // Most calls find every topic there already: ask the metadata first (on a blocking
    // thread: librdkafka's metadata call blocks) and create only what is missing; this also
    // suits brokers with a partial admin API.
    let client = config.client();
    let wanted = topics.to_vec();
    let missing: Vec<String> = tokio::task::spawn_blocking(move || {
        let Ok(probe) = client.create::<BaseConsumer>() else {
            return wanted;
        };
        wanted
            .into_iter()
            .filter(|t| {
                !probe
                    .fetch_metadata(Some(t.as_str()), Duration::from_secs(10))
                    .map(|m| {
                        m.topics().iter().any(|mt| {
                            mt.name() == t.as_str()
                                && mt.error().is_none()
                                && !mt.partitions().is_empty()
                        })
                    })
                    .unwrap_or(false)
            })
            .collect()
    })
    .await
    .unwrap_or_else(|_| topics.to_vec());
    if missing.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> =
        config
            .client()
            .create()
            .map_err(|source| KafkaError::Client {
                bootstrap: config.bootstrap.clone(),
                source,
            })?;
    let new: Vec<NewTopic<'_>> = missing
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
