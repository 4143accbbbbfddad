//! `idem status`: an action, its receipt and its attempts as JSON; with `--wait`, an exit
//! code that says how it ended.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use idem_core::ActionId;

use crate::config::Db;
use crate::{connect_stores, exit};

#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub db: Db,
    pub action_id: ActionId,
    /// Wait up to this many seconds for the action to settle first. With a wait the
    /// exit code says how it ended: 0 succeeded, 2 not settled in time (or waiting for
    /// approval), 5 failed, rejected or dead, 6 needs_human; 7 no such action.
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
}

pub async fn run(args: StatusArgs) -> Result<()> {
    let StatusArgs {
        db,
        action_id,
        wait,
    } = args;
    let stores = connect_stores(&db, 4).await?;
    let Some((name, found)) = stores.find(action_id).await? else {
        eprintln!("idem status: no action {action_id}");
        std::process::exit(exit::NOT_FOUND);
    };
    let store = stores.get(name).expect("a store find named").clone();
    let row = if wait > 0 {
        match idem_store::await_settled(store.pool(), action_id, Duration::from_secs(wait)).await? {
            Some(r) => r,
            // await_settled gives None when the wait ended first: read it as it stands.
            None => idem_store::inbox::get(store.pool(), action_id)
                .await?
                .unwrap_or(found),
        }
    } else {
        found
    };
    let attempts = idem_store::attempts::load(store.pool(), &[action_id.as_uuid()]).await?;
    let state = row.state;
    let out = serde_json::json!({
        "store": name,
        "action": row,
        "attempts": attempts.get(&action_id).cloned().unwrap_or_default(),
    });
    println!("{}", serde_json::to_string_pretty(&out)?);
    if wait > 0 {
        let code = exit::for_state(state);
        if code != 0 {
            std::process::exit(code);
        }
    }
    Ok(())
}
