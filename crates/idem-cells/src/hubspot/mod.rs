//! HubSpot (docs/partners.md, HubSpot): the CRM v3 API with a private-app token; upserts
//! by a unique property are naturally idempotent.

mod company;
mod upsert;

pub use company::{HubSpotCompanyUpsert, COMPANY_UNIQUE_PROPERTY};
pub use upsert::{HubSpotUpsert, Scalar};

/// hubspot's cells, for [`crate::builtin`].
pub const INTEGRATION: crate::builtin::Integration = crate::builtin::Integration {
    partner: "hubspot",
    local_simulator: "http://127.0.0.1:12112",
    credential_env: "HUBSPOT_ACCESS_TOKEN",
    placeholder: "pat-idem-simulator",
    cells,
};

fn cells(
    a: &crate::builtin::Access,
    tune: &crate::builtin::Tune<'_>,
) -> Vec<std::sync::Arc<dyn crate::Cell>> {
    use crate::builtin::tuned;
    vec![
        tuned(HubSpotUpsert::new(&a.base, &a.credential), tune),
        tuned(HubSpotCompanyUpsert::new(&a.base, &a.credential), tune),
    ]
}
