//! The partner simulators the demo and the chaos soak run against. They live in the
//! harness's own process, so their ledgers outlive every worker that is killed.

use std::time::Duration;

use anyhow::Result;
use idem_cells::builtin::Access;
use idem_cells::{DeclarativeCell, Registry};
use idem_core::profile::Lookup;
use idem_core::CellProfile;
use idem_sim::{
    AmadeusSim, FaultRates, GmailConfig, GmailSim, HubSpotSim, IetfConfig, IetfSim, SimServer,
    SlackSim, StripeSim, StripeSimConfig, TwilioSim,
};

/// The declarative cell both harnesses run (`acme.payout`, against `idem-lab sim ietf` semantics).
pub(crate) const EXAMPLE_CELL: &str = include_str!("../../../examples/cells/acme.payout.toml");

/// Partner behaviour the harness sets.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Knobs {
    pub seed: u64,
    pub faults: FaultRates,
    /// How long a new Slack message / Twilio message stays out of history and lists.
    pub history_lag: Duration,
    /// How long a sent Gmail message / IETF-partner object stays out of search.
    pub search_lag: Duration,
    /// Key retention of Stripe and the IETF partner (`None`: their documented 24 h).
    pub key_retention: Option<Duration>,
}

/// Every simulator, each on its own local port.
pub(crate) struct Partners {
    pub stripe: StripeSim,
    pub hubspot: HubSpotSim,
    pub slack: SlackSim,
    pub twilio: TwilioSim,
    pub gmail: GmailSim,
    pub amadeus: AmadeusSim,
    pub ietf: IetfSim,
    servers: Servers,
}

struct Servers {
    stripe: SimServer,
    hubspot: SimServer,
    slack: SimServer,
    twilio: SimServer,
    gmail: SimServer,
    amadeus: SimServer,
    ietf: SimServer,
}

async fn serve(router: axum::Router) -> Result<SimServer> {
    Ok(SimServer::start(router, ([127, 0, 0, 1], 0).into()).await?)
}

impl Partners {
    pub(crate) async fn start(k: Knobs) -> Result<Self> {
        let mut stripe_config = StripeSimConfig {
            seed: k.seed,
            faults: k.faults,
            ..StripeSimConfig::default()
        };
        let mut ietf_config = IetfConfig {
            lookup_lag: k.search_lag,
            ..IetfConfig::default()
        };
        if let Some(r) = k.key_retention {
            stripe_config.key_retention = r;
            ietf_config.key_retention = r;
        }
        let stripe = StripeSim::new(stripe_config);
        let hubspot = HubSpotSim::new(k.seed, k.faults);
        // The portal's unique company property hubspot.company.upsert needs (created once).
        hubspot.add_unique_property("companies", idem_cells::hubspot::COMPANY_UNIQUE_PROPERTY);
        // Slack's one history request a minute (apps outside the Marketplace), run sixty
        // times faster so that a campaign's lookups finish in its minutes; 15 a page as is.
        let slack = SlackSim::new(k.seed, k.faults, k.history_lag)
            .with_history_rate(Duration::from_secs(1));
        let twilio = TwilioSim::new(k.seed, k.faults, k.history_lag);
        let gmail = GmailSim::new(
            k.seed,
            k.faults,
            GmailConfig {
                search_lag: k.search_lag,
                ..GmailConfig::default()
            },
        );
        let amadeus = AmadeusSim::new(k.seed, k.faults);
        let ietf = IetfSim::new(k.seed, k.faults, ietf_config);
        let servers = Servers {
            stripe: serve(stripe.router()).await?,
            hubspot: serve(hubspot.router()).await?,
            slack: serve(slack.router()).await?,
            twilio: serve(twilio.router()).await?,
            gmail: serve(gmail.router()).await?,
            amadeus: serve(amadeus.router()).await?,
            ietf: serve(ietf.router()).await?,
        };
        Ok(Self {
            stripe,
            hubspot,
            slack,
            twilio,
            gmail,
            amadeus,
            ietf,
            servers,
        })
    }

    /// Base URL of the IETF-draft partner (the declarative cell's `ACME_BASE`).
    pub(crate) fn ietf_base(&self) -> String {
        self.servers.ietf.base_url()
    }

    /// Every partner's effects, as (idem action id, partner object id).
    pub(crate) fn ledger(&self) -> Vec<(Option<String>, String)> {
        self.stripe
            .ledger()
            .into_iter()
            .map(|e| (e.idem_action_id, e.id))
            .chain(
                self.hubspot
                    .core
                    .ledger()
                    .into_iter()
                    .chain(self.ietf.core.ledger())
                    .chain(self.slack.core.ledger())
                    .chain(self.twilio.core.ledger())
                    .chain(self.gmail.core.ledger())
                    .chain(self.amadeus.core.ledger())
                    .map(|e| (e.idem_action_id, e.id)),
            )
            .collect()
    }

    /// Every cell, in this process, with `timings` applied and eventual lookups trusted
    /// after `lag_bound`.
    pub(crate) fn registry(
        &self,
        timings: fn(&mut CellProfile),
        lag_bound: Duration,
    ) -> Result<Registry> {
        let s = &self.servers;
        let payout = DeclarativeCell::from_toml(EXAMPLE_CELL)?
            .with_base(s.ietf.base_url())
            .with_token("tok_idem_demo")
            .with_profile(timings);
        let registry = idem_cells::builtin::registry(
            |i| Access {
                base: self.server(i.partner).base_url(),
                credential: i.placeholder.to_owned(),
                ..Access::default()
            },
            &|_, p| {
                timings(p);
                if let Lookup::Eventual { .. } = p.lookup {
                    p.lookup = Lookup::Eventual { lag_bound };
                }
            },
        );
        Ok(registry.with(payout))
    }

    /// The simulator of a built-in integration.
    fn server(&self, partner: &str) -> &SimServer {
        let s = &self.servers;
        match partner {
            "stripe" => &s.stripe,
            "hubspot" => &s.hubspot,
            "slack" => &s.slack,
            "twilio" => &s.twilio,
            "gmail" => &s.gmail,
            "amadeus" => &s.amadeus,
            other => unreachable!("no simulator for {other}: add it to Partners"),
        }
    }

    /// `idem worker` flags that point every built-in cell at these simulators.
    pub(crate) fn worker_flags(&self) -> Vec<String> {
        idem_cells::builtin::INTEGRATIONS
            .iter()
            .flat_map(|i| {
                [
                    format!("--{}-base", i.partner),
                    self.server(i.partner).base_url(),
                ]
            })
            .collect()
    }
}

/// Demo and soak timings: a lost response is noticed in 1 s, retries start at 100 ms.
pub(crate) fn fast_timings(p: &mut CellProfile) {
    p.call_timeout = Duration::from_millis(1000);
    p.settle_time = Duration::from_millis(500);
    p.retry = idem_core::RetryPolicy {
        base: Duration::from_millis(100),
        max: Duration::from_secs(2),
        max_attempts: 8,
        outage_budget: idem_core::backoff::DEFAULT_OUTAGE_BUDGET,
        jitter: 0.5,
    };
}
