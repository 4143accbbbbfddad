//! Which cells this binary runs, and where their partners are.

use std::time::Duration;

use clap::Args;
use idem_cells::builtin::{Access, Integration};
use idem_cells::{Cell, Registry};
use idem_core::profile::ApprovalPolicy;
use idem_core::CellProfile;
use serde::Serialize;

/// Where each partner is and its credential: a flag (or its environment variable) wins over
/// `[partners.<name>]` in the configuration, which holds the defaults (the simulators).
#[derive(Args, Debug, Clone, Default)]
pub struct CellArgs {
    /// Stripe API base (Stripe itself, or `idem-lab sim stripe`).
    #[arg(long, env = "IDEM_STRIPE_BASE")]
    pub stripe_base: Option<String>,
    /// Stripe secret key; sent only in the Authorization header, never logged.
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret: Option<String>,
    /// Override the cell's call timeout (ms); the lease is derived from it.
    #[arg(long)]
    pub stripe_call_timeout_ms: Option<u64>,
    /// Override the cell's settle time (ms).
    #[arg(long)]
    pub stripe_settle_ms: Option<u64>,
    /// Override the key retention the cell assumes (ms).
    #[arg(long)]
    pub stripe_key_retention_ms: Option<u64>,
    /// HubSpot API base (HubSpot itself, or `idem-lab sim hubspot`).
    #[arg(long, env = "IDEM_HUBSPOT_BASE")]
    pub hubspot_base: Option<String>,
    /// HubSpot private-app access token; sent only in the Authorization header.
    #[arg(long, env = "HUBSPOT_ACCESS_TOKEN", hide_env_values = true)]
    pub hubspot_token: Option<String>,
    /// Slack Web API base (Slack itself, or `idem-lab sim slack`).
    #[arg(long, env = "IDEM_SLACK_BASE")]
    pub slack_base: Option<String>,
    /// Slack bot token (xoxb-…); sent only in the Authorization header.
    #[arg(long, env = "SLACK_BOT_TOKEN", hide_env_values = true)]
    pub slack_token: Option<String>,
    /// Twilio API base (Twilio itself, or `idem-lab sim twilio`).
    #[arg(long, env = "IDEM_TWILIO_BASE")]
    pub twilio_base: Option<String>,
    #[arg(long, env = "TWILIO_ACCOUNT_SID")]
    pub twilio_account_sid: Option<String>,
    /// Twilio auth token; sent only in the Authorization header.
    #[arg(long, env = "TWILIO_AUTH_TOKEN", hide_env_values = true)]
    pub twilio_auth_token: Option<String>,
    /// Where Twilio posts status callbacks (the cell appends `idem=<action id>`).
    #[arg(long, env = "IDEM_TWILIO_STATUS_CALLBACK")]
    pub twilio_status_callback: Option<String>,
    /// Gmail API base (Google itself, or `idem-lab sim gmail`).
    #[arg(long, env = "IDEM_GMAIL_BASE")]
    pub gmail_base: Option<String>,
    /// OAuth access token for the sending mailbox; sent only in the Authorization header.
    #[arg(long, env = "GMAIL_ACCESS_TOKEN", hide_env_values = true)]
    pub gmail_token: Option<String>,
    /// Amadeus Self-Service API base (Amadeus itself, or `idem-lab sim amadeus`).
    #[arg(long, env = "IDEM_AMADEUS_BASE")]
    pub amadeus_base: Option<String>,
    /// Amadeus OAuth access token; sent only in the Authorization header.
    #[arg(long, env = "AMADEUS_ACCESS_TOKEN", hide_env_values = true)]
    pub amadeus_token: Option<String>,
    #[command(flatten)]
    pub timings: TimingArgs,
    /// Seed the fleet's approval policy for a cell that has no rule in the database yet:
    /// `CELL=never|always|ARGUMENT>=THRESHOLD` (repeatable), e.g.
    /// `--approval stripe.charge=amount>=50000`. The database's rule always wins; change it
    /// with `idem policy set`.
    #[arg(long = "approval", value_parser = parse_approval)]
    pub approvals: Vec<(String, ApprovalPolicy)>,
    /// A declarative `http.idempotent` cell definition (TOML; repeatable), e.g.
    /// `examples/cells/acme.payout.toml`.
    #[arg(long = "cell-config")]
    pub cell_configs: Vec<std::path::PathBuf>,
}

/// Timing overrides for every cell (test rigs, simulators, soaks, or a deployment's own
/// measurements of its partners); the cell cards give the documented defaults.
#[derive(Args, Debug, Clone, Default)]
pub struct TimingArgs {
    /// Call timeout of every cell (ms); leases are derived from it.
    #[arg(long)]
    pub call_timeout_ms: Option<u64>,
    /// Settle time of every cell (ms): how long after a lost answer a lookup is trusted.
    #[arg(long)]
    pub settle_ms: Option<u64>,
    /// First retry delay of every cell (ms).
    #[arg(long)]
    pub retry_base_ms: Option<u64>,
    /// Longest retry delay of every cell (ms).
    #[arg(long)]
    pub retry_max_ms: Option<u64>,
    /// Lag bound of every cell whose lookup is eventually consistent (ms): how long after
    /// the partner applied a request its lookup may still miss it. A miss is trusted once
    /// the attempt is older than max(settle time, call timeout) + this.
    #[arg(long)]
    pub lookup_lag_bound_ms: Option<u64>,
}

impl TimingArgs {
    /// Apply the overrides that are set to `p`.
    pub fn apply(&self, p: &mut CellProfile) {
        let ms = Duration::from_millis;
        if let Some(v) = self.call_timeout_ms {
            p.call_timeout = ms(v);
        }
        if let Some(v) = self.settle_ms {
            p.settle_time = ms(v);
        }
        if let Some(v) = self.retry_base_ms {
            p.retry.base = ms(v);
        }
        if let Some(v) = self.retry_max_ms {
            p.retry.max = ms(v);
        }
        if let (Some(v), idem_core::profile::Lookup::Eventual { lag_bound }) =
            (self.lookup_lag_bound_ms, &mut p.lookup)
        {
            *lag_bound = ms(v);
        }
    }
}

fn parse_approval(s: &str) -> Result<(String, ApprovalPolicy), String> {
    let (cell, policy) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: use CELL=POLICY, e.g. stripe.charge=amount>=50000"))?;
    Ok((cell.trim().to_owned(), ApprovalPolicy::parse(policy)?))
}

impl CellArgs {
    /// The `--stripe-*` overrides, applied to both Stripe cells.
    fn stripe_profile(&self, p: &mut CellProfile) {
        if let Some(ms) = self.stripe_call_timeout_ms {
            p.call_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = self.stripe_settle_ms {
            p.settle_time = Duration::from_millis(ms);
        }
        if let (Some(ms), Some(k)) = (self.stripe_key_retention_ms, p.key.as_mut()) {
            k.retention = Duration::from_millis(ms);
            k.safety_margin = k.retention / 10;
        }
    }

    /// The configuration's overrides of `cell` (its partner's, then its own), the timing
    /// flags, then its approval rule (the configuration's, then a flag's).
    fn overrides(&self, cell: &str, p: &mut CellProfile) {
        let cfg = crate::config::get();
        if let Some(partner) = cfg.partners.of(cell) {
            partner.profile.apply(p);
        }
        if let Some(o) = cfg.profiles.get(cell) {
            o.apply(p);
        }
        self.timings.apply(p);
        if let Some(policy) = self
            .approval_rules()
            .into_iter()
            .rev()
            .find(|(c, _)| c == cell)
        {
            p.approval = policy.1;
        }
    }

    /// The configuration's `[approvals]`, then `--approval` flags (later wins).
    fn approval_rules(&self) -> Vec<(String, ApprovalPolicy)> {
        let mut rules: Vec<(String, ApprovalPolicy)> = crate::config::get()
            .approvals
            .iter()
            .filter_map(|(c, r)| ApprovalPolicy::parse(r).ok().map(|r| (c.clone(), r)))
            .collect();
        rules.extend(self.approvals.iter().cloned());
        rules
    }

    /// The `--<partner>-base` flag and credential flag (or their environment variables).
    fn flags(&self, partner: &str) -> (&Option<String>, &Option<String>) {
        match partner {
            "stripe" => (&self.stripe_base, &self.stripe_secret),
            "hubspot" => (&self.hubspot_base, &self.hubspot_token),
            "slack" => (&self.slack_base, &self.slack_token),
            "twilio" => (&self.twilio_base, &self.twilio_auth_token),
            "gmail" => (&self.gmail_base, &self.gmail_token),
            "amadeus" => (&self.amadeus_base, &self.amadeus_token),
            _ => (&None, &None),
        }
    }

    /// Where an integration's partner is and its credential: flag, else configuration,
    /// else the simulator's placeholder.
    fn access(&self, i: &Integration) -> Access {
        let cfg = crate::config::get();
        let partner = cfg.partners.get(i.partner);
        let (base, credential) = self.flags(i.partner);
        let mut access = Access {
            base: base
                .clone()
                .or_else(|| partner.map(|p| p.base.clone()))
                .unwrap_or_default(),
            credential: credential
                .clone()
                .or_else(|| partner.and_then(|p| p.credential()))
                .unwrap_or_else(|| i.placeholder.to_owned()),
            account: partner.and_then(|p| p.account_sid.clone()),
            callback: partner.and_then(|p| p.status_callback.clone()),
        };
        if i.partner == "twilio" {
            access.account = self.twilio_account_sid.clone().or(access.account);
            access.callback = self.twilio_status_callback.clone().or(access.callback);
        }
        access
    }

    /// Every cell: the built-in ones and those defined in `--cell-config` files.
    pub fn registry(&self) -> Result<Registry, String> {
        let cfg = crate::config::get();
        for (cell, rule) in &cfg.approvals {
            ApprovalPolicy::parse(rule).map_err(|e| format!("[approvals] {cell:?}: {e}"))?;
        }
        let mut r = self.builtin();
        for path in cfg.cells.iter().chain(&self.cell_configs) {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--cell-config {}: {e}", path.display()))?;
            let cell = idem_cells::DeclarativeCell::from_toml(&text)
                .map_err(|e| format!("--cell-config {}: {e}", path.display()))?;
            let name = cell.name().to_string();
            if r.get(&name).is_some() {
                return Err(format!(
                    "--cell-config {}: cell {name} is defined twice",
                    path.display()
                ));
            }
            r = r.with(cell.with_profile(|p| self.overrides(&name, p)));
        }
        Ok(r)
    }

    fn builtin(&self) -> Registry {
        idem_cells::builtin::registry(|i| self.access(i), &|cell, p| {
            self.overrides(cell, p);
            if cell.starts_with("stripe.") {
                self.stripe_profile(p);
            }
        })
    }

    /// Refuse policies for cells this binary does not run (a typo would silently approve).
    pub fn check(&self, r: &Registry) -> Result<(), String> {
        for (cell, _) in &self.approval_rules() {
            if r.get(cell).is_none() {
                return Err(format!(
                    "--approval or [approvals] names {cell:?}, which is not a cell here ({})",
                    names(r)
                ));
            }
        }
        Ok(())
    }
}

/// One row of `idem cells`.
#[derive(Debug, Serialize)]
pub struct CellInfo {
    pub name: String,
    /// Where the cell's failure-mode analysis lives.
    pub card: String,
    pub profile: CellProfile,
}

/// Every cell this binary runs, with its profile.
pub fn grid(r: &Registry) -> Vec<CellInfo> {
    r.iter()
        .map(|c| CellInfo {
            name: c.name().to_string(),
            card: c.card(),
            profile: c.profile().clone(),
        })
        .collect()
}

/// A duration as hours, or days when long.
fn span(d: Duration) -> String {
    let h = d.as_secs() / 3600;
    if h >= 72 {
        format!("{} d", h / 24)
    } else if h > 0 {
        format!("{h} h")
    } else {
        format!("{} s", d.as_secs())
    }
}

/// The grid as a table: the three questions and the strategy.
pub fn table(cells: &[CellInfo]) -> String {
    use idem_core::profile::{ApprovalPolicy, Lookup};
    let mut out = format!(
        "{:<16} {:<44} {:<18} {:<26} strategy\n",
        "cell", "key?", "lookup?", "human?"
    );
    for c in cells {
        let p = &c.profile;
        let key = match &p.key {
            Some(k) => format!(
                "{} ({}, replay {})",
                k.field,
                span(k.retention),
                span(k.replay_window())
            ),
            None => "none".into(),
        };
        let lookup = match &p.lookup {
            Lookup::None => "none".to_owned(),
            Lookup::Strong => "strong".to_owned(),
            Lookup::Eventual { lag_bound } => format!("eventual (≤{} s)", lag_bound.as_secs()),
        };
        let human = match (&p.lookup, &p.approval) {
            (_, ApprovalPolicy::Always) => "approval always".to_owned(),
            (
                _,
                ApprovalPolicy::Above {
                    argument,
                    threshold,
                },
            ) => {
                format!("approval {argument} ≥ {threshold}")
            }
            (Lookup::None, _) if p.key.is_none() => "on any ambiguity".to_owned(),
            _ => format!("past {} in doubt", span(p.doubt_horizon)),
        };
        out.push_str(&format!(
            "{:<16} {:<44} {:<18} {:<26} {}\n",
            c.name, key, lookup, human, p.strategy
        ));
    }
    out
}

pub fn names(r: &Registry) -> String {
    r.iter()
        .map(|c| c.name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cell_has_a_card_answering_the_three_questions() {
        let grid = grid(&CellArgs::default().registry().unwrap());
        assert!(grid.len() >= 2);
        for c in &grid {
            let path = format!("{}/../../{}", env!("CARGO_MANIFEST_DIR"), c.card);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: no card at {path}: {e}", c.name));
            for q in ["key?", "lookup?", "human?", "## Failure modes", "Sources"] {
                assert!(text.contains(q), "{}: card lacks {q:?}", c.name);
            }
        }
        let t = table(&grid);
        assert!(t.contains("stripe.refund") && t.contains("strong"), "{t}");
    }
}
