//! Stripe cells (partners.md §2, "Stripe") and the client plumbing they share: the API
//! secret (sent in `Authorization` only, redacted from Debug), form POSTs under an
//! `Idempotency-Key`, the v1 response classification, and paged list lookups.

pub mod charge;
pub mod refund;

pub use charge::StripeCharge;
pub use refund::StripeRefund;

use idem_core::{ExecOutcome, Verdict};
use serde_json::Value;

/// Metadata key that marks an object with the action that made it (≤40 chars).
pub const METADATA_KEY: &str = "idem_action_id";

/// Slack for clock skew between us and Stripe when listing by creation time.
pub(crate) const CREATED_SKEW_SECS: i64 = 300;

/// Stripe's calls over the cell's partner client (bearer secret, timeout).
#[derive(Clone, Copy, Debug)]
pub(crate) struct StripeApi<'a>(pub &'a crate::http::PartnerClient);

/// A POST's answer, before the cell reads the success body.
pub(crate) use crate::http::Answer;

impl StripeApi<'_> {
    /// POST a form under `key`. `Err` is the outcome when no readable answer came back.
    pub async fn post_form(
        &self,
        path: &str,
        form: &[(&str, String)],
        key: Option<&str>,
        operation: &'static str,
    ) -> Result<Answer, ExecOutcome> {
        let mut req = self.0.post(path).form(form);
        if let Some(key) = key {
            req = req.header("Idempotency-Key", key);
        }
        crate::http::call(req, operation).await
    }

    /// GET JSON; `Err` is a reason for an `Unknown` verdict.
    pub async fn get_json(&self, path: &str, query: &[(String, String)]) -> Result<Value, String> {
        let req = self.0.get(path).query(query);
        let resp = crate::http::send_traced(req, "stripe.lookup")
            .await
            .map_err(|e| format!("lookup failed: {}", without_url(&e)))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("lookup body: {}", without_url(&e)))?;
        if !status.is_success() {
            return Err(format!("lookup answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("lookup JSON: {e}"))
    }

    /// Page through a list endpoint (newest first) until `find` recognises an object:
    /// `Some(verdict)` for it, `NotHappened` when the list ends without it.
    pub async fn find_in_list(
        &self,
        path: &str,
        filter: &[(String, String)],
        find: impl Fn(&Value) -> Option<Verdict>,
    ) -> Verdict {
        let mut starting_after: Option<String> = None;
        for _page in 0..100 {
            let mut q = filter.to_vec();
            q.push(("limit".into(), "100".into()));
            if let Some(s) = &starting_after {
                q.push(("starting_after".into(), s.clone()));
            }
            let page = match self.get_json(path, &q).await {
                Ok(v) => v,
                Err(reason) => return Verdict::Unknown { reason },
            };
            let data = page["data"].as_array().cloned().unwrap_or_default();
            if let Some(v) = data.iter().find_map(&find) {
                return v;
            }
            if page["has_more"].as_bool() != Some(true) || data.is_empty() {
                return Verdict::NotHappened;
            }
            starting_after = data
                .last()
                .and_then(|o| o["id"].as_str())
                .map(str::to_owned);
        }
        Verdict::Unknown {
            reason: format!("too many pages of {path}"),
        }
    }
}

/// The classification every Stripe v1 POST shares (partners.md): an `idempotency_error`
/// means replay is useless; 409 the first request is in flight; 429 was never processed;
/// 5xx is unknown (and useless to replay when it was itself a replay); other 4xx failed.
/// `special` answers first for the endpoint's own cases (success bodies, known 400 codes).
pub(crate) fn classify(
    a: &Answer,
    special: impl FnOnce(&Answer) -> Option<ExecOutcome>,
) -> ExecOutcome {
    if let Some(o) = special(a) {
        return o;
    }
    let err = &a.body["error"];
    match a.status {
        400 if err["type"] == "idempotency_error" => ExecOutcome::Ambiguous {
            reason: format!("idempotency_error: {}", err["message"]),
            replayed_error: true,
        },
        409 => ExecOutcome::Ambiguous {
            reason: "409: the first request with this key is still in flight".into(),
            replayed_error: false,
        },
        429 => ExecOutcome::NotProcessed {
            reason: "429 rate limited (not stored by the idempotency layer)".into(),
            retry_after: a.retry_after,
        },
        s if s >= 500 => ExecOutcome::Ambiguous {
            reason: format!("{s} {}", err["type"].as_str().unwrap_or("api_error")),
            replayed_error: a.replayed,
        },
        s if (200..300).contains(&s) => ExecOutcome::Ambiguous {
            reason: format!("{s} with an unrecognised body"),
            replayed_error: false,
        },
        s => ExecOutcome::Failed {
            reason: format!(
                "{s} {}: {}",
                err["type"].as_str().unwrap_or("error"),
                err["message"].as_str().unwrap_or("")
            ),
        },
    }
}

pub(crate) use crate::http::without_url;

/// stripe's cells, for [`crate::builtin`].
pub const INTEGRATION: crate::builtin::Integration = crate::builtin::Integration {
    partner: "stripe",
    local_simulator: "http://127.0.0.1:12111",
    credential_env: "STRIPE_SECRET_KEY",
    placeholder: "sk_test_idem_simulator",
    cells,
};

fn cells(
    a: &crate::builtin::Access,
    tune: &crate::builtin::Tune<'_>,
) -> Vec<std::sync::Arc<dyn crate::Cell>> {
    use crate::builtin::tuned;
    vec![
        tuned(StripeCharge::new(&a.base, &a.credential), tune),
        tuned(StripeRefund::new(&a.base, &a.credential), tune),
    ]
}
