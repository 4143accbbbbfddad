//! Which cells this binary runs, and where their partners are.

use std::time::Duration;

use clap::Args;
use idem_cells::{Registry, StripeCharge};

#[derive(Args, Debug, Clone)]
pub struct CellArgs {
    /// Stripe API base (Stripe itself, or `idem sim stripe`).
    #[arg(
        long,
        env = "IDEM_STRIPE_BASE",
        default_value = "http://127.0.0.1:12111"
    )]
    pub stripe_base: String,
    /// Stripe secret key; sent only in the Authorization header, never logged.
    #[arg(
        long,
        env = "STRIPE_SECRET_KEY",
        default_value = "sk_test_idem_simulator",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub stripe_secret: String,
    /// Override the cell's call timeout (ms); the lease is derived from it.
    #[arg(long)]
    pub stripe_call_timeout_ms: Option<u64>,
    /// Override the cell's settle time (ms).
    #[arg(long)]
    pub stripe_settle_ms: Option<u64>,
    /// Override the key retention the cell assumes (ms).
    #[arg(long)]
    pub stripe_key_retention_ms: Option<u64>,
}

impl Default for CellArgs {
    fn default() -> Self {
        Self {
            stripe_base: "http://127.0.0.1:12111".into(),
            stripe_secret: "sk_test_idem_simulator".into(),
            stripe_call_timeout_ms: None,
            stripe_settle_ms: None,
            stripe_key_retention_ms: None,
        }
    }
}

impl CellArgs {
    pub fn registry(&self) -> Registry {
        let stripe = StripeCharge::new(&self.stripe_base, &self.stripe_secret).with_profile(|p| {
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
        });
        Registry::new().with(stripe)
    }
}

pub fn names(r: &Registry) -> String {
    r.iter()
        .map(|c| c.name().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
