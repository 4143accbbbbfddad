//! Gmail (docs/partners.md, Gmail): users.messages.send with an OAuth token; no key, a
//! history and a search that can lag.

mod send;

pub use send::GmailSend;

/// gmail's cells, for [`crate::builtin`].
pub const INTEGRATION: crate::builtin::Integration = crate::builtin::Integration {
    partner: "gmail",
    local_simulator: "http://127.0.0.1:12116",
    credential_env: "GMAIL_ACCESS_TOKEN",
    placeholder: "ya29.idem-simulator",
    cells,
};

fn cells(
    a: &crate::builtin::Access,
    tune: &crate::builtin::Tune<'_>,
) -> Vec<std::sync::Arc<dyn crate::Cell>> {
    use crate::builtin::tuned;
    vec![tuned(GmailSend::new(&a.base, &a.credential), tune)]
}
