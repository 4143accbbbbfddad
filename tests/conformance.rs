//! The cell conformance suite (idem_testkit::conformance) for every cell idem ships, each
//! against its own simulator, on real PostgreSQL. One test per (cell, scenario), so a
//! failure names both.

use idem_testkit::conformance as c;
use idem_testkit::subjects::{
    AmadeusCell, AmadeusSubject, DeclarativeSubject, GmailSubject, HubSpotSubject, SlackSubject,
    StripeChargeSubject, StripeRefundSubject, TwilioSubject,
};

macro_rules! suite {
    ($cell:ident, $subject:expr) => {
        mod $cell {
            use super::*;

            #[tokio::test]
            async fn happy_path() {
                c::happy_path(&$subject).await;
            }
            #[tokio::test]
            async fn lost_response_after_effect() {
                c::lost_response_after_effect(&$subject).await;
            }
            #[tokio::test]
            async fn server_error_before_effect() {
                c::server_error_before_effect(&$subject).await;
            }
            #[tokio::test]
            async fn server_error_after_effect() {
                c::server_error_after_effect(&$subject).await;
            }
            #[tokio::test]
            async fn duplicate_delivery() {
                c::duplicate_delivery(&$subject).await;
            }
            #[tokio::test]
            async fn two_workers_at_once() {
                c::two_workers_at_once(&$subject).await;
            }
            #[tokio::test]
            async fn worker_killed_mid_call() {
                c::worker_killed_mid_call(&$subject).await;
            }
            #[tokio::test]
            async fn lookup_lag() {
                c::lookup_lag(&$subject).await;
            }
            #[tokio::test]
            async fn key_expiry() {
                c::key_expiry(&$subject).await;
            }
            #[tokio::test]
            async fn malformed_arguments() {
                c::malformed_arguments(&$subject).await;
            }
        }
    };
}

suite!(stripe_charge, StripeChargeSubject::start().await);
suite!(
    stripe_charge_via_search,
    StripeChargeSubject::start_with_search().await
);
suite!(stripe_refund, StripeRefundSubject::start().await);
suite!(hubspot_upsert, HubSpotSubject::start().await);
suite!(hubspot_company_upsert, HubSpotSubject::company().await);
suite!(
    http_idempotent_acme_payout,
    DeclarativeSubject::start().await
);
suite!(slack_post, SlackSubject::start().await);
suite!(twilio_sms_send, TwilioSubject::start().await);
suite!(gmail_send, GmailSubject::start().await);
suite!(
    amadeus_price,
    AmadeusSubject::start(AmadeusCell::Price).await
);
suite!(amadeus_book, AmadeusSubject::start(AmadeusCell::Book).await);
suite!(
    amadeus_cancel,
    AmadeusSubject::start(AmadeusCell::Cancel).await
);
