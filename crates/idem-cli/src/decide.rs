//! `idem approvals …`, `idem needs-human` and `idem resolve`: the human side of the loop.
//! Every decision names who made it (`--as`, or IDEM_ACTOR) and is recorded in
//! `idem.decisions` and in the action's transition audit.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use idem_core::{ActionId, State};
use idem_store::decisions::{self, Resolution};
use idem_store::{Gathered, Placed, Store};

pub use crate::config::Db;

#[derive(Subcommand, Debug)]
pub enum ApprovalsCommand {
    /// Actions awaiting approval, oldest first, with the fingerprint an approval binds to.
    List {
        #[command(flatten)]
        db: Db,
        #[arg(long)]
        json: bool,
    },
    /// Approve: a worker then sends the request.
    Approve(Decide),
    /// Reject: the action ends `rejected`; nothing is sent.
    Reject(Decide),
}

#[derive(Args, Debug)]
pub struct Decide {
    #[command(flatten)]
    db: Db,
    action_id: ActionId,
    /// Who decides (recorded with the decision).
    #[arg(long = "as", env = "IDEM_ACTOR")]
    actor: String,
    #[arg(long)]
    reason: Option<String>,
    /// The fingerprint you reviewed (from `approvals list`); refused if the action's differs.
    #[arg(long)]
    fingerprint: Option<String>,
}

#[derive(Args, Debug)]
#[command(group(clap::ArgGroup::new("outcome").required(true).args(["recheck", "happened", "not_happened", "retry"])))]
pub struct ResolveArgs {
    #[command(flatten)]
    db: Db,
    action_id: ActionId,
    /// Ask the partner again first (a lookup that lagged may find the effect now): back to
    /// in_doubt; it returns here, saying what was checked, if the partner still cannot tell.
    #[arg(long)]
    recheck: bool,
    /// The effect happened; give the partner's reference (e.g. the PaymentIntent id).
    #[arg(long, value_name = "PARTNER_REF")]
    happened: Option<String>,
    /// It did not happen and must not be tried again.
    #[arg(long)]
    not_happened: bool,
    /// It did not happen: send it again (under a new key generation).
    #[arg(long)]
    retry: bool,
    #[arg(long = "as", env = "IDEM_ACTOR")]
    actor: String,
    /// Why (required: the audit trail is the point).
    #[arg(long)]
    reason: String,
}

/// The default store: tokens live there.
async fn connect(db: &Db) -> Result<Store> {
    crate::connect(db).await
}

/// The store that holds `id` (the default one when none does, so the decision there
/// answers "no such action").
async fn home(db: &Db, id: ActionId) -> Result<Store> {
    let stores = crate::connect_stores(db, 2).await?;
    Ok(match stores.locate(id).await? {
        Some((_, s)) => s.clone(),
        None => stores.default_store().clone(),
    })
}

/// Warn, on stderr, about stores a listing could not read; fail when none answered.
fn partial<T>(g: &Gathered<T>) -> Result<()> {
    if g.all_down() {
        bail!("no store answered: {}", g.unavailable.join("; "));
    }
    for u in &g.unavailable {
        eprintln!("warning: not listed, the store did not answer: {u}");
    }
    Ok(())
}

/// Awaiting approval or needs_human on every store, oldest first.
async fn waiting(db: &Db, which: State) -> Result<Vec<Placed<decisions::Waiting>>> {
    let stores = crate::connect_stores(db, 2).await?;
    let mut g = stores
        .gather(move |pool| async move { decisions::waiting(&pool, which, 500).await })
        .await;
    partial(&g)?;
    g.items.sort_by_key(|p| p.item.row.updated_at);
    Ok(g.items)
}

fn print_waiting(items: &[Placed<decisions::Waiting>], json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(items)?);
        return Ok(());
    }
    if items.is_empty() {
        println!("nothing waiting");
    }
    for Placed { store, item: w } in items {
        println!(
            "{}  {}  on {store}  since {}  fingerprint {}\n    args: {}\n    reason: {}",
            w.row.action_id,
            w.row.cell,
            w.row.updated_at.format("%Y-%m-%d %H:%M:%S"),
            w.fingerprint,
            w.row.args,
            w.row.reason.as_deref().unwrap_or("-")
        );
    }
    Ok(())
}

pub async fn approvals(cmd: ApprovalsCommand) -> Result<()> {
    match cmd {
        ApprovalsCommand::List { db, json } => {
            print_waiting(&waiting(&db, State::AwaitingApproval).await?, json)
        }
        ApprovalsCommand::Approve(d) => {
            let store = home(&d.db, d.action_id).await?;
            decisions::approve(
                store.pool(),
                d.action_id,
                &d.actor,
                d.reason.as_deref(),
                d.fingerprint.as_deref(),
            )
            .await?;
            println!("approved {}; a worker will send it", d.action_id);
            Ok(())
        }
        ApprovalsCommand::Reject(d) => {
            let store = home(&d.db, d.action_id).await?;
            decisions::reject(
                store.pool(),
                d.action_id,
                &d.actor,
                d.reason.as_deref(),
                d.fingerprint.as_deref(),
            )
            .await?;
            println!("rejected {}", d.action_id);
            Ok(())
        }
    }
}

pub async fn needs_human(db: Db, json: bool) -> Result<()> {
    print_waiting(&waiting(&db, State::NeedsHuman).await?, json)
}

pub async fn resolve(a: ResolveArgs) -> Result<()> {
    if a.reason.trim().is_empty() {
        bail!("--reason must say why");
    }
    if a.recheck {
        let store = home(&a.db, a.action_id).await?;
        decisions::recheck(store.pool(), a.action_id, &a.actor, &a.reason).await?;
        println!(
            "{} is in_doubt again; a worker asks the partner now (`idem status {} --wait 60s`)",
            a.action_id, a.action_id
        );
        return Ok(());
    }
    let resolution = match (a.happened, a.not_happened, a.retry) {
        (Some(partner_ref), false, false) if !partner_ref.trim().is_empty() => {
            Resolution::Happened { partner_ref }
        }
        (None, true, false) => Resolution::NotHappened,
        (None, false, true) => Resolution::Retry,
        _ => {
            bail!("give exactly one of --recheck, --happened PARTNER_REF, --not-happened, --retry")
        }
    };
    let store = home(&a.db, a.action_id).await?;
    let to =
        decisions::resolve(store.pool(), a.action_id, &resolution, &a.actor, &a.reason).await?;
    println!("{} is now {to}", a.action_id);
    Ok(())
}

#[derive(Args, Debug)]
pub struct ResendArgs {
    #[command(flatten)]
    db: Db,
    /// A `failed` or `dead` action.
    action_id: ActionId,
    #[arg(long = "as", env = "IDEM_ACTOR")]
    actor: String,
    /// Why it is right to send it again (required: the audit trail is the point).
    #[arg(long)]
    reason: String,
}

pub async fn resend(a: ResendArgs) -> Result<()> {
    if a.reason.trim().is_empty() {
        bail!("--reason must say why");
    }
    let store = home(&a.db, a.action_id).await?;
    match decisions::send_again(store.pool(), a.action_id, &a.actor, &a.reason).await? {
        State::Received => println!(
            "{} is received again (it was dead, never attempted); a worker takes it now",
            a.action_id
        ),
        _ => println!(
            "{} is retry_scheduled under a fresh partner key; a worker sends it now",
            a.action_id
        ),
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum DeadLettersCommand {
    /// The newest dead letters: id, reason, source, whether replayed, the bytes.
    List {
        #[command(flatten)]
        db: Db,
        #[arg(long, default_value_t = 20)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Put a dead letter's bytes back into the outbox, once, after what made it dead was
    /// fixed; refused while they still cannot be read or name an existing action.
    Replay {
        #[command(flatten)]
        db: Db,
        id: i64,
        /// The store the letter is on (ids are per store; `list` shows it). Default: the
        /// default store.
        #[arg(long)]
        store: Option<String>,
        #[arg(long = "as", env = "IDEM_ACTOR")]
        actor: String,
        /// What was fixed (required: the audit trail is the point).
        #[arg(long)]
        reason: String,
    },
}

pub async fn dead_letters(c: DeadLettersCommand) -> Result<()> {
    match c {
        DeadLettersCommand::List { db, limit, json } => {
            let stores = crate::connect_stores(&db, 2).await?;
            let mut g =
                stores
                    .gather(move |pool| async move {
                        idem_store::explore::dead_letters(&pool, limit).await
                    })
                    .await;
            partial(&g)?;
            g.items.sort_by_key(|p| std::cmp::Reverse(p.item.at));
            g.items.truncate(limit.max(1) as usize);
            if json {
                println!("{}", serde_json::to_string_pretty(&g.items)?);
                return Ok(());
            }
            for Placed { store, item: l } in g.items {
                println!(
                    "{}\t{store}\t{}\t{}\t{}\t{}\n\t{}",
                    l.id,
                    l.at.format("%Y-%m-%d %H:%M:%S"),
                    l.reason,
                    l.source,
                    match (&l.replayed_at, &l.replayed_by) {
                        (Some(at), Some(by)) => format!("replayed by {by} at {at}"),
                        _ => "not replayed".into(),
                    },
                    match std::str::from_utf8(&l.raw) {
                        Ok(text) => text.to_owned(),
                        Err(_) => format!("(not UTF-8, hex) {}", hex::encode(&l.raw)),
                    }
                );
            }
        }
        DeadLettersCommand::Replay {
            db,
            id,
            store,
            actor,
            reason,
        } => {
            if reason.trim().is_empty() {
                bail!("--reason must say what was fixed");
            }
            let stores = crate::connect_stores(&db, 2).await?;
            let store = match store.as_deref() {
                None => stores.default_store().clone(),
                Some(name) => match stores.get(name) {
                    Some(s) => s.clone(),
                    None => bail!(
                        "--store {name:?}: no such store (these are: {})",
                        stores.iter().map(|(n, _)| n).collect::<Vec<_>>().join(", ")
                    ),
                },
            };
            let action = idem_store::replay::dead_letter(store.pool(), id, &actor, &reason).await?;
            println!("dead letter {id} replayed: action {action} is delivered again");
        }
    }
    Ok(())
}

#[derive(Subcommand, Debug)]
pub enum TokensCommand {
    /// Create an API token; its secret is printed once and never stored.
    Create {
        #[command(flatten)]
        db: Db,
        #[arg(long)]
        name: String,
        /// submit, read or approve (repeatable).
        #[arg(long = "scope", required = true)]
        scopes: Vec<idem_store::tokens::Scope>,
        /// Bind the token to intent scopes starting with this (e.g. `tenant-7/`): it
        /// submits only there and reads only actions named there, on every surface.
        #[arg(long)]
        scope_prefix: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        db: Db,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id.
    Revoke {
        #[command(flatten)]
        db: Db,
        id: uuid::Uuid,
    },
}

pub async fn tokens(cmd: TokensCommand) -> Result<()> {
    use idem_store::tokens;
    match cmd {
        TokensCommand::Create {
            db,
            name,
            scopes,
            scope_prefix,
        } => {
            let store = connect(&db).await?;
            let (info, secret) =
                tokens::create_bound(store.pool(), &name, &scopes, scope_prefix.as_deref()).await?;
            eprintln!(
                "token {} ({}) created; the secret below is shown once",
                info.id, info.name
            );
            println!("{secret}");
        }
        TokensCommand::List { db, json } => {
            let store = connect(&db).await?;
            let all = tokens::list(store.pool()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&all)?);
            } else {
                for t in all {
                    let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                    println!(
                        "{}  {:<20} {:<22} {:<8} {}",
                        t.id,
                        t.name,
                        scopes.join(","),
                        if t.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "live"
                        },
                        t.scope_prefix
                            .as_deref()
                            .map(|p| format!("scopes {p:?}…"))
                            .unwrap_or_else(|| "any scope".into())
                    );
                }
            }
        }
        TokensCommand::Revoke { db, id } => {
            let store = connect(&db).await?;
            if !tokens::revoke(store.pool(), id).await? {
                bail!("no live token {id}");
            }
            println!("revoked {id}");
        }
    }
    Ok(())
}
