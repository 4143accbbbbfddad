//! `bench.noop`: a cell with no partner, for measuring idem's own overhead.

use std::time::Duration;

use async_trait::async_trait;
use idem_core::profile::{ApprovalPolicy, KeySupport, Lookup, ReplayModel};
use idem_core::{ActionId, CellName, CellProfile, ExecOutcome, Receipt, RetryPolicy, Verdict};

use crate::cell::{Attempt, Cell, InvalidArgs};

/// Succeeds at once with a receipt naming the action; reconcile always finds it.
#[derive(Debug, Clone)]
pub struct Noop {
    name: CellName,
    profile: CellProfile,
}

impl Default for Noop {
    fn default() -> Self {
        Self {
            name: CellName::new("bench.noop").expect("valid"),
            profile: CellProfile {
                key: Some(KeySupport {
                    field: "none".into(),
                    max_len: 255,
                    retention: Duration::from_secs(3600),
                    safety_margin: Duration::from_secs(60),
                }),
                replay: ReplayModel::FrozenResponse,
                lookup: Lookup::Strong,
                settle_time: Duration::from_secs(1),
                doubt_horizon: Duration::from_secs(3600),
                call_timeout: Duration::from_secs(5),
                retry: RetryPolicy::default(),
                approval: ApprovalPolicy::Never,
                rate_limit: None,
                strategy: "benchmark cell: no partner".into(),
            },
        }
    }
}

#[async_trait]
impl Cell for Noop {
    fn name(&self) -> &CellName {
        &self.name
    }

    fn profile(&self) -> &CellProfile {
        &self.profile
    }

    fn input_schema(&self) -> serde_json::Value {
        serde_json::json!({"type": "object", "description": "Does nothing (benchmarks)."})
    }

    fn validate(&self, args: &serde_json::Value) -> Result<(), InvalidArgs> {
        if args.is_object() {
            Ok(())
        } else {
            Err(InvalidArgs {
                cell: "bench.noop".into(),
                reason: "args must be an object".into(),
            })
        }
    }

    async fn execute(&self, action: ActionId, _: &serde_json::Value, _: &Attempt) -> ExecOutcome {
        ExecOutcome::Succeeded(Receipt {
            partner_ref: action.to_string(),
            response_digest: String::new(),
            detail: serde_json::Value::Null,
        })
    }

    async fn reconcile(&self, action: ActionId, _: &serde_json::Value, _: &[Attempt]) -> Verdict {
        Verdict::Happened(Receipt {
            partner_ref: action.to_string(),
            response_digest: String::new(),
            detail: serde_json::Value::Null,
        })
    }
}
