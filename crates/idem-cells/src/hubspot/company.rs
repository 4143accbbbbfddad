//! `hubspot.company.upsert`: create or update a company by its domain. The proof that a cell
//! is its folder: typed arguments, the shared upsert and read of `upsert.rs`, a card.

use std::collections::BTreeMap;

use async_trait::async_trait;
use idem_core::{ActionId, ExecOutcome, Verdict};
use schemars::JsonSchema;
use serde::Deserialize;

use super::upsert::{read, upsert, HubSpotUpsert, Scalar};
use crate::cell::Attempt;
use crate::http::PartnerClient;
use crate::kit::{Card, CellArgs, Parts, TypedCell};

/// The property `hubspot.company.upsert` upserts by, unless configured otherwise: a
/// single-line text property with unique values the portal must create once (Settings →
/// Properties → Company → "Require unique values"). HubSpot's own `domain` is not unique,
/// and a batch upsert refuses an `idProperty` without `hasUniqueValue`.
pub const COMPANY_UNIQUE_PROPERTY: &str = "idem_company_domain";

/// The `hubspot.company.upsert` cell.
#[derive(Clone, Debug)]
pub struct HubSpotCompanyUpsert {
    parts: Parts,
    unique_property: String,
}

/// Create or update one company by its domain (companies batch upsert of one).
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Args {
    /// The company's domain, lower case (example.com): HubSpot's unique key for companies.
    #[schemars(pattern("^[a-z0-9-]+(\\.[a-z0-9-]+)+$"), length(max = 253))]
    pub domain: String,
    /// The properties to set: strings, numbers or booleans (name, industry, …).
    pub properties: BTreeMap<String, Scalar>,
}

impl CellArgs for Args {
    fn summary(&self) -> Option<String> {
        // Said as a person knows it: by domain (the unique property only mirrors it).
        super::upsert::Args {
            object_type: Some("companies".into()),
            id_property: Some("domain".into()),
            id: self.domain.clone(),
            properties: self.properties.clone(),
        }
        .summary()
    }
}

impl Args {
    /// The same request `hubspot.upsert` sends for a company: upserted by the unique
    /// property holding the domain, with `domain` itself set too.
    fn upsert(&self, unique_property: &str) -> super::upsert::Args {
        let mut properties = self.properties.clone();
        properties.insert("domain".into(), Scalar::Text(self.domain.clone()));
        super::upsert::Args {
            object_type: Some("companies".into()),
            id_property: Some(unique_property.to_owned()),
            id: self.domain.clone(),
            properties,
        }
    }
}

impl HubSpotCompanyUpsert {
    pub fn new(base_url: impl Into<String>, token: impl Into<String>) -> Self {
        let mut profile = HubSpotUpsert::default_profile();
        profile.strategy = "natural idempotency: upsert the company by domain; the identical \
                            payload is resent freely; read by domain to reconcile"
            .into();
        let api = PartnerClient::bearer(base_url, token, profile.call_timeout);
        Self {
            parts: Parts::new("hubspot.company.upsert", profile, api),
            unique_property: COMPANY_UNIQUE_PROPERTY.into(),
        }
    }

    /// Upsert by another unique company property the portal has.
    pub fn with_unique_property(mut self, name: impl Into<String>) -> Self {
        self.unique_property = name.into();
        self
    }
}

#[async_trait]
impl TypedCell for HubSpotCompanyUpsert {
    type Args = Args;
    const CARD: Card = crate::card!("company.upsert.md");

    crate::parts!();

    async fn send(&self, action: ActionId, args: &Args, _: &Attempt) -> ExecOutcome {
        upsert(&self.parts.api, action, &args.upsert(&self.unique_property)).await
    }

    async fn find(&self, _: ActionId, args: &Args, _: &[Attempt]) -> Verdict {
        read(&self.parts.api, &args.upsert(&self.unique_property)).await
    }
}
