//! Twilio (docs/partners.md, Twilio): Programmable Messaging with the account SID and auth
//! token; no REST idempotency key, a Messages list that can lag.

mod sms;

pub use sms::TwilioSms;

/// The account SID idem's simulator answers to, when none is configured.
pub const SIMULATOR_ACCOUNT: &str = "AC00000000000000000000000000000001";

/// A status callback that goes nowhere, when none is configured.
pub const NO_CALLBACK: &str = "https://hooks.invalid/twilio/status";

/// twilio's cells, for [`crate::builtin`].
pub const INTEGRATION: crate::builtin::Integration = crate::builtin::Integration {
    partner: "twilio",
    local_simulator: "http://127.0.0.1:12115",
    credential_env: "TWILIO_AUTH_TOKEN",
    placeholder: "twilio-idem-simulator",
    cells,
};

fn cells(
    a: &crate::builtin::Access,
    tune: &crate::builtin::Tune<'_>,
) -> Vec<std::sync::Arc<dyn crate::Cell>> {
    use crate::builtin::tuned;
    let sid = a.account.as_deref().unwrap_or(SIMULATOR_ACCOUNT);
    let callback = a.callback.as_deref().unwrap_or(NO_CALLBACK);
    vec![tuned(
        TwilioSms::new(&a.base, sid, &a.credential, callback),
        tune,
    )]
}
