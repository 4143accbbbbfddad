//! `idem policy list|set|history`: the fleet's approval policy in PostgreSQL. A change
//! holds for every worker at once (they read it in the transaction that starts an action)
//! and is audited with who and why.

use anyhow::{Context as _, Result};
use clap::Subcommand;
use idem_core::profile::ApprovalPolicy;
use idem_store::{policy, Store};

use crate::decide::Db;

#[derive(Subcommand, Debug)]
pub enum PolicyCommand {
    /// Every cell's rule (cells without one are never held).
    List {
        #[command(flatten)]
        db: Db,
        #[arg(long)]
        json: bool,
    },
    /// Set a cell's rule: `never`, `always` or `ARGUMENT>=THRESHOLD` (e.g. amount>=50000,
    /// in the argument's own units: minor units for money).
    Set {
        #[command(flatten)]
        db: Db,
        cell: idem_core::CellName,
        #[arg(value_parser = ApprovalPolicy::parse)]
        rule: ApprovalPolicy,
        /// Who changes it (recorded).
        #[arg(long = "as", env = "IDEM_ACTOR")]
        actor: String,
        /// Why (required: the audit trail is the point).
        #[arg(long)]
        reason: String,
    },
    /// The latest changes, newest first.
    History {
        #[command(flatten)]
        db: Db,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
}

pub async fn run(cmd: PolicyCommand) -> Result<()> {
    match cmd {
        PolicyCommand::List { db, json } => {
            let store = Store::connect_migrated(&db.database_url(), 2).await?;
            let rules = policy::list(store.pool()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&rules)?);
            } else if rules.is_empty() {
                println!("no approval rules: no cell is held for a person");
            } else {
                for p in rules {
                    println!(
                        "{:<20} {:<20} set by {} at {}: {}",
                        p.cell, p.rule, p.changed_by, p.changed_at, p.reason
                    );
                }
            }
        }
        PolicyCommand::Set {
            db,
            cell,
            rule,
            actor,
            reason,
        } => {
            // Each store's database enforces its own copy of the rule: set it on every one.
            let stores = crate::connect_stores(&db, 2).await?;
            for (name, store) in stores.iter() {
                let old = policy::set(
                    store.pool(),
                    cell.as_str(),
                    &rule,
                    &format!("human:cli:{actor}"),
                    &reason,
                )
                .await
                .with_context(|| {
                    format!("policy set on store {name:?} (run it again to finish)")
                })?;
                let old = old
                    .filter(|o| !o.is_empty())
                    .unwrap_or_else(|| "none".into());
                if stores.len() == 1 {
                    println!("{cell}: {old} → {}", describe(&rule));
                } else {
                    println!("{cell} on store {name}: {old} → {}", describe(&rule));
                }
            }
        }
        PolicyCommand::History { db, limit, json } => {
            let store = Store::connect_migrated(&db.database_url(), 2).await?;
            let changes = policy::history(store.pool(), limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&changes)?);
            } else {
                for c in changes {
                    println!(
                        "{} {:<20} {} → {} by {}: {}",
                        c.changed_at,
                        c.cell,
                        c.old_rule.as_deref().unwrap_or("none"),
                        c.new_rule,
                        c.changed_by,
                        c.reason
                    );
                }
            }
        }
    }
    Ok(())
}

fn describe(rule: &ApprovalPolicy) -> String {
    match rule {
        ApprovalPolicy::Never => "never".into(),
        ApprovalPolicy::Always => "always".into(),
        ApprovalPolicy::Above {
            argument,
            threshold,
        } => format!("{argument}>={threshold}"),
    }
}
