//! `idem relay`: publish committed outbox rows to Kafka (one leader among all relays).

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use idem_store::Store;

use crate::config::{self, Db};
use crate::kafka::KafkaArgs;
use crate::shutdown_channel;

#[derive(Args, Debug)]
pub struct RelayArgs {
    #[command(flatten)]
    pub db: Db,
    #[command(flatten)]
    pub kafka: KafkaArgs,
    /// Rows per batch (`relay.batch`, default 500).
    #[arg(long)]
    pub batch: Option<i64>,
    /// Producer linger in ms (`relay.linger`, default 1ms).
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// `relay.poll_interval` in ms.
    #[arg(long)]
    pub poll_interval_ms: Option<u64>,
}

pub async fn run(args: RelayArgs) -> Result<()> {
    let (specs, _) = args.db.stores().map_err(anyhow::Error::msg)?;
    let r = &config::get().relay;
    let config = idem_relay::RelayConfig {
        batch: args.batch.unwrap_or(r.batch).max(1),
        linger: args
            .linger_ms
            .map(Duration::from_millis)
            .unwrap_or(r.linger),
        poll_interval: args
            .poll_interval_ms
            .map(Duration::from_millis)
            .unwrap_or(r.poll_interval),
        ..idem_relay::RelayConfig::default()
    };
    let kafka = args.kafka.config()?;
    let shutdown = shutdown_channel();
    // One relay per store, each elected by an advisory lock in its own store and
    // publishing to that store's topics (with several stores, `KafkaConfig::for_store`).
    let mut running = vec![];
    for spec in &specs {
        let store = Store::connect_migrated(&spec.url, 4)
            .await
            .with_context(|| format!("store {:?}", spec.name))?;
        let kafka = if specs.len() > 1 {
            kafka.for_store(&spec.name)
        } else {
            kafka.clone()
        };
        let relay = idem_relay::Relay::new(store, &spec.url, kafka, config.clone())?;
        tracing::info!(store = %spec.name, "relay started; waiting to be elected");
        let rx = shutdown.clone();
        running.push(tokio::spawn(async move { relay.run(rx).await }));
    }
    for r in running {
        r.await??;
    }
    Ok(())
}
