//! `idem relay`: publish committed outbox rows to Kafka (one leader among all relays).

use std::time::Duration;

use anyhow::Result;
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
    if specs.len() > 1 {
        anyhow::bail!(
            "a relay over several [[stores]] is not built yet: run one relay per store \
             (--database-url of each, without the [[stores]] configuration) or the postgres \
             worker transport"
        );
    }
    let store = Store::connect_migrated(&specs[0].url, 4).await?;
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
    let relay = idem_relay::Relay::new(store, &specs[0].url, args.kafka.config()?, config)?;
    tracing::info!("relay started; waiting to be elected");
    relay.run(shutdown_channel()).await?;
    Ok(())
}
