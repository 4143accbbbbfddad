//! The cell conformance suite (idem_testkit::conformance) for every cell idem ships, each
//! against its own simulator, on real PostgreSQL. One test per (cell, scenario), so a
//! failure names both.

use idem_testkit::conformance as c;
use idem_testkit::subjects::{
    AmadeusCell, AmadeusSubject, DeclarativeSubject, GmailSubject, HubSpotSubject, SlackSubject,
    StripeChargeSubject, StripeRefundSubject, TwilioSubject,
};

/// `suite!(cell, subject)` or `suite!(cell, subject, not_applicable: [scenario, …])`: a
/// scenario listed as not applicable must find itself so (after checking the profile's
/// claim); every other must run.
macro_rules! suite {
    ($cell:ident, $subject:expr) => {
        suite!($cell, $subject, not_applicable: []);
    };
    ($cell:ident, $subject:expr, not_applicable: [$($na:ident),*]) => {
        mod $cell {
            use super::*;

            #[tokio::test]
            async fn happy_path() {
                c::expect(c::happy_path(&$subject).await, "happy_path", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn lost_response_after_effect() {
                c::expect(c::lost_response_after_effect(&$subject).await, "lost_response_after_effect", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn server_error_before_effect() {
                c::expect(c::server_error_before_effect(&$subject).await, "server_error_before_effect", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn rate_limited() {
                c::expect(c::rate_limited(&$subject).await, "rate_limited", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn server_error_after_effect() {
                c::expect(c::server_error_after_effect(&$subject).await, "server_error_after_effect", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn duplicate_delivery() {
                c::expect(c::duplicate_delivery(&$subject).await, "duplicate_delivery", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn two_workers_at_once() {
                c::expect(c::two_workers_at_once(&$subject).await, "two_workers_at_once", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn worker_killed_mid_call() {
                c::expect(c::worker_killed_mid_call(&$subject).await, "worker_killed_mid_call", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn lookup_lag() {
                c::expect(c::lookup_lag(&$subject).await, "lookup_lag", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn key_expiry() {
                c::expect(c::key_expiry(&$subject).await, "key_expiry", &[$(stringify!($na)),*]);
            }
            #[tokio::test]
            async fn malformed_arguments() {
                c::expect(c::malformed_arguments(&$subject).await, "malformed_arguments", &[$(stringify!($na)),*]);
            }
        }
    };
}

suite!(stripe_charge, StripeChargeSubject::start().await, not_applicable: [lookup_lag]);
suite!(
    stripe_charge_via_search,
    StripeChargeSubject::start_with_search().await
);
suite!(stripe_refund, StripeRefundSubject::start().await, not_applicable: [lookup_lag]);
suite!(hubspot_upsert, HubSpotSubject::start().await, not_applicable: [lookup_lag, key_expiry]);
suite!(
    hubspot_company_upsert,
    HubSpotSubject::company().await,
    not_applicable: [lookup_lag, key_expiry]
);
suite!(
    http_idempotent_acme_payout,
    DeclarativeSubject::start().await,
    not_applicable: [lookup_lag]
);
suite!(slack_post, SlackSubject::start().await, not_applicable: [key_expiry]);
suite!(twilio_sms_send, TwilioSubject::start().await, not_applicable: [key_expiry]);
suite!(gmail_send, GmailSubject::start().await, not_applicable: [key_expiry]);
suite!(
    amadeus_price,
    AmadeusSubject::start(AmadeusCell::Price).await,
    not_applicable: [lookup_lag, key_expiry]
);
suite!(
    amadeus_book,
    AmadeusSubject::start(AmadeusCell::Book).await,
    not_applicable: [lookup_lag, key_expiry]
);
suite!(
    amadeus_cancel,
    AmadeusSubject::start(AmadeusCell::Cancel).await,
    not_applicable: [lookup_lag, key_expiry]
);
