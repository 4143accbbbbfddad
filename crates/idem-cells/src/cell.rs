//! The cell contract.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use idem_core::{ActionId, CellName, CellProfile, ExecOutcome, Verdict};

/// The arguments do not fit the cell; the action goes to `dead` with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid arguments for {cell}: {reason}")]
pub struct InvalidArgs {
    pub cell: String,
    pub reason: String,
}

/// One attempt as a cell sees it: written ahead and committed before `execute` runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    pub number: u32,
    pub key: Option<String>,
    pub started_at: DateTime<Utc>,
    /// What the cell recorded before sending (e.g. a start time for list lookups).
    pub pre_state: serde_json::Value,
}

#[async_trait]
pub trait Cell: Send + Sync + std::fmt::Debug + 'static {
    fn name(&self) -> &CellName;

    fn profile(&self) -> &CellProfile;

    /// The JSON Schema (2020-12) of the arguments: what the HTTP API and MCP tools publish
    /// and check first, so a caller learns which field is wrong before anything is stored.
    fn input_schema(&self) -> serde_json::Value;

    /// Check the arguments before anything is written ahead.
    fn validate(&self, args: &serde_json::Value) -> Result<(), InvalidArgs>;

    /// The partner key for a key generation. Every attempt of one generation uses the same
    /// key, so a same-key replay is byte-identical; a new generation gets a fresh key.
    fn key(&self, action: ActionId, generation: u32) -> Option<String> {
        self.profile().key.as_ref().map(|k| {
            let key = format!("idem-{action}-g{generation}");
            key.chars().take(k.max_len).collect()
        })
    }

    /// False for read-only cells (e.g. a price quote): they have no external effect, so
    /// a success leaves nothing in a partner's ledger.
    fn effectful(&self) -> bool {
        true
    }

    /// Where the cell's failure-mode analysis (its card) is, relative to the repository.
    fn card(&self) -> String {
        format!("docs/cells/{}.md", self.name())
    }

    /// The card's Markdown, compiled in (the console shows it to an approver).
    fn card_text(&self) -> Option<&'static str> {
        None
    }

    /// The arguments' schema as the HTTP API's OpenAPI document gives it: the input schema
    /// plus any rule a tool schema leaves out (see `CellArgs::document_rules`).
    fn document_schema(&self) -> serde_json::Value {
        self.input_schema()
    }

    /// What the action will do, in one sentence for the person approving it ("Charge
    /// $600.00 USD to cus_big — Annual plan"); `None` if the cell has none or the
    /// arguments are not valid.
    fn summary(&self, _args: &serde_json::Value) -> Option<String> {
        None
    }

    /// State recorded with the attempt before it is sent, for reconciliation later.
    fn pre_state(&self, now: DateTime<Utc>) -> serde_json::Value {
        serde_json::json!({ "t0": now.timestamp() })
    }

    /// Send the request and classify the answer.
    async fn execute(
        &self,
        action: ActionId,
        args: &serde_json::Value,
        attempt: &Attempt,
    ) -> ExecOutcome;

    /// Ask the partner whether any of `attempts` had its effect.
    async fn reconcile(
        &self,
        action: ActionId,
        args: &serde_json::Value,
        attempts: &[Attempt],
    ) -> Verdict;
}
