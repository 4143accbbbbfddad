//! Slack (docs/partners.md, Slack): the Web API with a bot token; no idempotency key, an
//! eventually consistent history to look in.

mod post;

pub use post::SlackPost;

/// slack's cells, for [`crate::builtin`].
pub const INTEGRATION: crate::builtin::Integration = crate::builtin::Integration {
    partner: "slack",
    local_simulator: "http://127.0.0.1:12114",
    credential_env: "SLACK_BOT_TOKEN",
    placeholder: "xoxb-idem-simulator",
    cells,
};

fn cells(
    a: &crate::builtin::Access,
    tune: &crate::builtin::Tune<'_>,
) -> Vec<std::sync::Arc<dyn crate::Cell>> {
    use crate::builtin::tuned;
    vec![tuned(SlackPost::new(&a.base, &a.credential), tune)]
}
