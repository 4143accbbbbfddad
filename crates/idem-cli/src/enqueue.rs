//! `idem enqueue`: one action in its own transaction, validated against its cell first.

use anyhow::{bail, Context, Result};
use clap::Args;
use idem_core::{ActionId, CellName};
use idem_store::NewAction;

use crate::config::Db;
use crate::{cells, connect_stores, exit};

#[derive(Args, Debug)]
pub struct EnqueueArgs {
    #[command(flatten)]
    pub db: Db,
    /// Cell, e.g. stripe.charge.
    #[arg(long)]
    pub cell: CellName,
    /// Arguments as a JSON object.
    #[arg(long)]
    pub args: String,
    /// Action id (reuse it on retry). Without it, the id comes from --intent-scope and
    /// --intent.
    #[arg(long, conflicts_with = "intent_scope")]
    pub id: Option<ActionId>,
    /// The scope a named intent lives in (a session, a conversation, a tenant).
    #[arg(long, requires = "intent_or_arguments")]
    pub intent_scope: Option<String>,
    /// The effect this action means ("invoice-42-payment"): the same scope and intent is
    /// the same action, and with other arguments a conflict (exit code 3).
    #[arg(long, group = "intent_or_arguments")]
    pub intent: Option<String>,
    /// Derive the id from (scope, cell, arguments) instead of a named intent. Risk: a
    /// re-planned call with other arguments gets a second action.
    #[arg(long, group = "intent_or_arguments", requires = "intent_scope")]
    pub id_from_arguments: bool,
    #[arg(long)]
    pub ordering_key: Option<String>,
    /// Declarative cell definitions to validate against (as given to the workers).
    #[arg(long = "cell-config")]
    pub cell_configs: Vec<std::path::PathBuf>,
}

pub async fn run(a: EnqueueArgs) -> Result<()> {
    let stores = connect_stores(&a.db, 4).await?;
    let args: serde_json::Value = serde_json::from_str(&a.args).context("--args must be JSON")?;
    let registry = cells::CellArgs {
        cell_configs: a.cell_configs.clone(),
        ..cells::CellArgs::default()
    }
    .registry()
    .map_err(anyhow::Error::msg)?;
    let Some(cell) = registry.get(a.cell.as_str()) else {
        bail!(
            "unknown cell {}; known: {}",
            a.cell,
            cells::names(&registry)
        );
    };
    cell.validate(&args)?;
    let scope = a.intent_scope.clone();
    let mut action = match (a.id, a.intent_scope, a.intent) {
        (Some(id), _, _) => NewAction::new(id, a.cell, args),
        (None, Some(scope), Some(intent)) => NewAction::from_intent(scope, intent, a.cell, args),
        (None, Some(scope), None) => NewAction::from_arguments(&scope, a.cell, args),
        (None, None, _) => {
            bail!("give --id (reused on retry) or --intent-scope with --intent")
        }
    };
    if let Some(k) = a.ordering_key {
        action = action.with_ordering_key(k);
    }
    match stores.enqueue(&action, scope.as_deref()).await {
        Ok((store, done)) => {
            let mut out = serde_json::to_value(&done)?;
            out["store"] = store.into();
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Err(e @ idem_store::EnqueueError::Conflict { .. }) => {
            eprintln!("idem enqueue: {e}");
            std::process::exit(exit::CONFLICT);
        }
        Err(idem_store::EnqueueError::Invalid { field, message }) => {
            eprintln!(
                "idem enqueue: {}{message}",
                field.map(|f| format!("{f}: ")).unwrap_or_default()
            );
            std::process::exit(exit::INVALID);
        }
        Err(e) => return Err(e.into()),
    }
    Ok(())
}
