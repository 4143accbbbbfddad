//! `idem purge`: retention of settled actions, in small batches that never block workers;
//! refuses a retention shorter than a cell's key window.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::config::Db;
use crate::{cells, connect_stores};

#[derive(Args, Debug)]
pub struct PurgeArgs {
    #[command(flatten)]
    pub db: Db,
    /// The cells whose key windows and doubt horizons the retention must cover.
    #[command(flatten)]
    pub cells: cells::CellArgs,
    /// Keep settled actions this long (hours).
    #[arg(long)]
    pub older_than_hours: u64,
    /// Actions per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch: i64,
    /// Stop after this many batches (run again later to go on).
    #[arg(long)]
    pub max_batches: Option<u64>,
    /// Pause between batches (ms), so the purge leaves the workers the machine.
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
}

pub async fn run(args: PurgeArgs) -> Result<()> {
    let retention = Duration::from_secs(args.older_than_hours.saturating_mul(3600));
    let registry = args.cells.registry().map_err(anyhow::Error::msg)?;
    for cell in registry.iter() {
        if let Err(why) = cell.profile().window_check(Some(retention)) {
            bail!("refusing to purge: cell {}: {why}", cell.name());
        }
    }
    // Every store keeps its own inbox: each is purged in turn.
    let stores = connect_stores(&args.db, 4).await?;
    for (name, store) in stores.iter() {
        let purged = idem_store::retention::purge_settled(
            store.pool(),
            retention,
            args.batch.max(1),
            args.max_batches,
            Duration::from_millis(args.pause_ms),
        )
        .await?;
        let on = if stores.len() > 1 {
            format!(" on store {name}")
        } else {
            String::new()
        };
        println!(
            "{} settled actions purged in {} batches{on}",
            purged.actions, purged.batches
        );
    }
    Ok(())
}
