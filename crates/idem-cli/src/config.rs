//! idem's configuration, in layers: the defaults (written here, once, from the libraries'
//! own defaults) ← an `idem.toml` (`--config FILE` or `IDEM_CONFIG`) ← the environment
//! overlay `IDEM__SECTION__KEY` (e.g. `IDEM__WORKER__CONCURRENCY=64`) ← the command-line
//! flags a command has. `idem config` prints the result with secrets redacted.
//!
//! Secrets are not written in the file: a partner names the environment variable that holds
//! its credential (`credential_env`), Kafka properties name theirs (`properties_env`).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use idem_core::profile::{Lookup, RateLimit};
use idem_core::CellProfile;
use serde::{Deserialize, Serialize};

use idem_store::DEFAULT_DATABASE_URL;

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdemConfig {
    pub database: DatabaseSection,
    /// Several PostgreSQL databases (`[[stores]]`, each a `name` and a `url`); the first is
    /// the default (tokens, the placement directory). Empty: the one `[database] url`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stores: Vec<idem_store::StoreSpec>,
    /// Scope prefix → store: `[placement.prefixes] "tenant-7/" = "b"`.
    pub placement: PlacementSection,
    pub worker: WorkerSection,
    pub relay: RelaySection,
    pub kafka: KafkaSection,
    pub partners: PartnersSection,
    /// Profile overrides of one cell (`[profiles."stripe.charge"]`), after its partner's.
    pub profiles: BTreeMap<String, ProfileOverrides>,
    /// Approval rules a worker seeds for cells with no rule in the database yet:
    /// `"stripe.charge" = "amount>=50000"` (`never`, `always`, `ARGUMENT>=THRESHOLD`).
    pub approvals: BTreeMap<String, String>,
    /// Declarative `http.idempotent` cells (TOML files), relative to this file.
    pub cells: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSection {
    /// PostgreSQL URL. `DATABASE_URL` or `--database-url` override it.
    pub url: String,
}

impl Default for DatabaseSection {
    fn default() -> Self {
        Self {
            url: DEFAULT_DATABASE_URL.into(),
        }
    }
}

/// Explicit placements over the default (recorded, hashed) one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PlacementSection {
    /// Scope prefix → store name; the longest matching prefix wins.
    pub prefixes: BTreeMap<String, String>,
}

/// Where a worker takes actions from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// Claim from the outbox directly.
    Postgres,
    /// A Kafka consumer group (the relay drains the outbox).
    Kafka,
}

/// Kafka consumer group protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum GroupProtocol {
    /// KIP-848 (Kafka 4): the broker assigns; members come and go without stopping others.
    Consumer,
    /// Cooperative-sticky, for older brokers and librdkafka's mock cluster.
    Classic,
}

impl From<GroupProtocol> for idem_kafka::GroupProtocol {
    fn from(p: GroupProtocol) -> Self {
        match p {
            GroupProtocol::Consumer => idem_kafka::GroupProtocol::Consumer,
            GroupProtocol::Classic => idem_kafka::GroupProtocol::Classic,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSection {
    /// Name in leases and audit rows (default: `worker-<random>`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Partner calls in flight at once.
    pub concurrency: usize,
    /// Actions claimed or settled per transaction.
    pub batch: u32,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
    /// How long an action waits for approval before it is rejected as expired.
    #[serde(with = "humantime_serde")]
    pub approval_ttl: Duration,
    /// An action still `received` this long after enqueue is started from its inbox row
    /// (its delivery was lost); `0s`: never.
    #[serde(with = "humantime_serde")]
    pub stranded_after: Duration,
    /// How long a lease runs without a heartbeat: a dead worker's actions are in doubt
    /// within about this long. Renewed every third of it while a call runs.
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How long settled actions are kept, if a retention job deletes them: the worker
    /// refuses to start if it is shorter than a cell's key window.
    #[serde(
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub inbox_retention: Option<Duration>,
    pub transport: Transport,
    /// Consumer group (Kafka transport).
    pub group: String,
    pub group_protocol: GroupProtocol,
    /// Static membership (`group.instance.id`) for the classic protocol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Messages each partition lane holds before its partition is paused (Kafka
    /// transport). Memory: up to this many messages per assigned partition; below about a
    /// second of a lane's work, a backlog stalls on librdkafka's resume.
    pub lane_capacity: usize,
    /// Serve this worker's metrics at http://ADDR/metrics (read scope).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<SocketAddr>,
}

impl Default for WorkerSection {
    fn default() -> Self {
        let w = idem_worker::WorkerConfig::default();
        Self {
            id: None,
            concurrency: w.concurrency,
            batch: w.batch,
            poll_interval: w.poll_interval,
            sweep_interval: w.sweep_interval,
            approval_ttl: w.approval_ttl,
            stranded_after: w.stranded_after.unwrap_or_default(),
            lease: w.lease,
            inbox_retention: None,
            transport: Transport::Postgres,
            group: "idem-workers".into(),
            group_protocol: GroupProtocol::Consumer,
            instance_id: None,
            lane_capacity: idem_kafka::DEFAULT_LANE_CAPACITY,
            metrics_listen: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelaySection {
    /// Outbox rows per batch.
    pub batch: i64,
    /// Producer linger.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
}

impl Default for RelaySection {
    fn default() -> Self {
        let r = idem_relay::RelayConfig::default();
        Self {
            batch: r.batch,
            linger: r.linger,
            poll_interval: r.poll_interval,
        }
    }
}

/// Which topic an action goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Routing {
    /// One topic for every action (`topic`).
    Single,
    /// `<topic>.<cell>`.
    PerCell,
    /// `<topic>.<integration>`.
    PerIntegration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaSection {
    /// Bootstrap servers. `KAFKA_BOOTSTRAP` or `--bootstrap` override it.
    pub bootstrap: String,
    pub routing: Routing,
    /// The topic (single) or the topic prefix.
    pub topic: String,
    /// Partitions of topics idem creates.
    pub partitions: i32,
    /// Replication factor of topics idem creates; -1: the broker's default.
    pub replication_factor: i32,
    pub client_id: String,
    /// librdkafka properties passed through as they are (`"security.protocol" = "SASL_SSL"`).
    pub properties: BTreeMap<String, String>,
    /// librdkafka properties read from environment variables (`"sasl.password" =
    /// "KAFKA_SASL_PASSWORD"`), so secrets stay out of the file.
    pub properties_env: BTreeMap<String, String>,
}

impl Default for KafkaSection {
    fn default() -> Self {
        let k = idem_kafka::KafkaConfig::new("127.0.0.1:9092");
        let (routing, topic) = match k.routing {
            idem_kafka::TopicRouting::Single(t) => (Routing::Single, t),
            idem_kafka::TopicRouting::PerCell(t) => (Routing::PerCell, t),
            idem_kafka::TopicRouting::PerIntegration(t) => (Routing::PerIntegration, t),
        };
        Self {
            bootstrap: k.bootstrap,
            routing,
            topic,
            partitions: k.partitions,
            replication_factor: k.replication,
            client_id: k.client_id,
            properties: BTreeMap::new(),
            properties_env: BTreeMap::new(),
        }
    }
}

impl KafkaSection {
    /// The library's settings, with `properties_env` read now. An unset variable is an
    /// error: a SASL password silently missing would fail later and less clearly.
    pub fn to_kafka(&self) -> Result<idem_kafka::KafkaConfig, String> {
        let mut c = idem_kafka::KafkaConfig::new(&self.bootstrap);
        c.routing = match self.routing {
            Routing::Single => idem_kafka::TopicRouting::Single(self.topic.clone()),
            Routing::PerCell => idem_kafka::TopicRouting::PerCell(self.topic.clone()),
            Routing::PerIntegration => idem_kafka::TopicRouting::PerIntegration(self.topic.clone()),
        };
        c.partitions = self.partitions;
        c.replication = self.replication_factor;
        c.client_id = self.client_id.clone();
        for (k, v) in &self.properties {
            c.properties.set(k, v);
        }
        for (k, var) in &self.properties_env {
            let v = std::env::var(var).map_err(|_| {
                format!("kafka.properties_env.{k}: environment variable {var} is not set")
            })?;
            c.properties.set(k, &v);
        }
        Ok(c)
    }
}

/// One partner: where it is, where its credential comes from, and profile overrides for
/// every cell it serves. (Its defaults come from [`PartnersSection`]'s, merged under the
/// file's keys.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partner {
    /// API base URL (the partner itself, or `idem-lab sim <partner>`).
    pub base: String,
    /// Environment variable holding the credential. Unset: the simulator's placeholder.
    pub credential_env: String,
    /// Twilio only: the account SID, and where Twilio posts status callbacks.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_sid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_callback: Option<String>,
    /// Overrides applied to every cell of this partner.
    #[serde(default)]
    pub profile: ProfileOverrides,
}

impl Partner {
    fn new(base: &str, credential_env: &str) -> Self {
        Self {
            base: base.into(),
            credential_env: credential_env.into(),
            account_sid: None,
            status_callback: None,
            profile: ProfileOverrides::default(),
        }
    }

    /// The credential from `credential_env`, if that variable is set.
    pub fn credential(&self) -> Option<String> {
        std::env::var(&self.credential_env)
            .ok()
            .filter(|v| !v.is_empty())
    }
}

/// `[partners.<name>]` for every built-in integration ([`idem_cells::builtin::INTEGRATIONS`]),
/// by name; a name idem does not ship is refused when the file is read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct PartnersSection(BTreeMap<String, Partner>);

impl Default for PartnersSection {
    fn default() -> Self {
        Self(
            idem_cells::builtin::INTEGRATIONS
                .iter()
                .map(|i| {
                    let mut p = Partner::new(i.local_simulator, i.credential_env);
                    if i.partner == "twilio" {
                        p.account_sid = Some(idem_cells::twilio::SIMULATOR_ACCOUNT.into());
                        p.status_callback = Some(idem_cells::twilio::NO_CALLBACK.into());
                    }
                    (i.partner.to_owned(), p)
                })
                .collect(),
        )
    }
}

impl PartnersSection {
    /// The partner named `partner` (`stripe`).
    pub fn get(&self, partner: &str) -> Option<&Partner> {
        self.0.get(partner)
    }

    /// The partner of `cell` (`stripe.charge` → stripe), if idem ships it.
    pub fn of(&self, cell: &str) -> Option<&Partner> {
        self.get(cell.split('.').next()?)
    }

    fn all(&self) -> impl Iterator<Item = (&String, &Partner)> {
        self.0.iter()
    }

    /// Names under `[partners]` that are no built-in integration (a typo would otherwise
    /// leave the real partner at its default).
    fn unknown(&self) -> Option<String> {
        self.0
            .keys()
            .find(|k| {
                idem_cells::builtin::INTEGRATIONS
                    .iter()
                    .all(|i| i.partner != k.as_str())
            })
            .cloned()
    }
}

/// Changes to a cell's profile; what is not set keeps the cell's documented default (its
/// card says where each comes from).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProfileOverrides {
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub call_timeout: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub settle_time: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub doubt_horizon: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub retry_base: Option<Duration>,
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub retry_max: Option<Duration>,
    /// Lag bound of an eventually consistent lookup.
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub lookup_lag_bound: Option<Duration>,
    /// The partner's key retention (the safety margin becomes a tenth of it).
    #[serde(with = "humantime_serde", skip_serializing_if = "Option::is_none")]
    pub key_retention: Option<Duration>,
    /// Requests per second idem holds for the cell; 0 turns the limit off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_per_sec: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rate_limit_burst: Option<u32>,
}

impl ProfileOverrides {
    /// Apply what is set to `p`.
    pub fn apply(&self, p: &mut CellProfile) {
        if let Some(v) = self.call_timeout {
            p.call_timeout = v;
        }
        if let Some(v) = self.settle_time {
            p.settle_time = v;
        }
        if let Some(v) = self.doubt_horizon {
            p.doubt_horizon = v;
        }
        if let Some(v) = self.retry_base {
            p.retry.base = v;
        }
        if let Some(v) = self.retry_max {
            p.retry.max = v;
        }
        if let (Some(v), Lookup::Eventual { lag_bound }) = (self.lookup_lag_bound, &mut p.lookup) {
            *lag_bound = v;
        }
        if let (Some(v), Some(k)) = (self.key_retention, p.key.as_mut()) {
            k.retention = v;
            k.safety_margin = v / 10;
        }
        match self.rate_limit_per_sec {
            Some(0) => p.rate_limit = None,
            Some(n) => {
                let per = p.rate_limit.as_ref().and_then(|r| r.per_argument.clone());
                let mut r = RateLimit::per_second(n);
                r.per_argument = per;
                p.rate_limit = Some(r);
            }
            None => {}
        }
        if let (Some(b), Some(r)) = (self.rate_limit_burst, p.rate_limit.as_mut()) {
            *r = r.clone().with_burst(b);
        }
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("configuration: {0}")]
    Invalid(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Stores(#[from] idem_store::StoresError),
    #[error("configuration: [partners.{0}] is not an integration idem ships (known: {known})", known = idem_cells::builtin::INTEGRATIONS.iter().map(|i| i.partner).collect::<Vec<_>>().join(", "))]
    UnknownPartner(String),
}

/// Defaults ← `file` ← `IDEM__…` environment. Paths in `cells` become relative to the
/// file's directory.
pub fn load(file: Option<&Path>) -> Result<IdemConfig, ConfigError> {
    let mut f = Figment::from(Serialized::defaults(IdemConfig::default()));
    if let Some(path) = file {
        if !path.is_file() {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        f = f.merge(Toml::file(path));
    }
    f = f.merge(Env::prefixed("IDEM__").split("__"));
    let mut c: IdemConfig = f.extract().map_err(Box::new)?;
    if let Some(name) = c.partners.unknown() {
        return Err(ConfigError::UnknownPartner(name));
    }
    if !c.stores.is_empty() || !c.placement.prefixes.is_empty() {
        let specs = c.stores_or_database();
        idem_store::stores::validate(&specs, &c.placement.prefixes)?;
    }
    if let Some(dir) = file.and_then(Path::parent) {
        for p in &mut c.cells {
            if p.is_relative() {
                *p = dir.join(&*p);
            }
        }
    }
    Ok(c)
}

/// Where PostgreSQL is, for any command: the flag or `DATABASE_URL`, else `[database] url`.
#[derive(clap::Args, Debug, Clone)]
pub struct Db {
    /// PostgreSQL URL (default: `[database] url` of the configuration, else the local
    /// server).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url_flag: Option<String>,
}

impl Db {
    /// The stores this command works on: `[[stores]]` from the configuration, else the one
    /// database of `--database-url` / `DATABASE_URL` / `[database] url`. With `[[stores]]`,
    /// a database URL given besides must be the default store's (else which one is meant?).
    pub fn stores(&self) -> Result<(Vec<idem_store::StoreSpec>, BTreeMap<String, String>), String> {
        let c = get();
        if c.stores.is_empty() {
            return Ok((
                vec![idem_store::StoreSpec {
                    name: "default".into(),
                    url: self.database_url(),
                    new_scopes: true,
                }],
                c.placement.prefixes.clone(),
            ));
        }
        if let Some(url) = &self.database_url_flag {
            if *url != c.stores[0].url {
                return Err(format!(
                    "both [[stores]] and a database URL (--database-url or DATABASE_URL: {}) are \
                     given: unset it, or make it the first store's ({})",
                    idem_store::redact_url(url),
                    idem_store::redact_url(&c.stores[0].url)
                ));
            }
        }
        Ok((c.stores.clone(), c.placement.prefixes.clone()))
    }

    pub fn database_url(&self) -> String {
        self.database_url_flag
            .clone()
            .unwrap_or_else(|| get().database.url.clone())
    }
}

static CURRENT: OnceLock<IdemConfig> = OnceLock::new();

/// Load the configuration for this process (once, at start).
pub fn init(file: Option<&Path>) -> Result<&'static IdemConfig, ConfigError> {
    let c = load(file)?;
    Ok(CURRENT.get_or_init(|| c))
}

/// This process's configuration (the defaults if `init` was not called).
pub fn get() -> &'static IdemConfig {
    CURRENT.get_or_init(IdemConfig::default)
}

/// Property names whose values are secrets.
fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["password", "secret", "token", "key"]
        .iter()
        .any(|s| k.contains(s))
}

impl IdemConfig {
    /// `[[stores]]`, or the one `[database] url` as a store named `default`.
    pub fn stores_or_database(&self) -> Vec<idem_store::StoreSpec> {
        if self.stores.is_empty() {
            vec![idem_store::StoreSpec {
                name: "default".into(),
                url: self.database.url.clone(),
                new_scopes: true,
            }]
        } else {
            self.stores.clone()
        }
    }

    /// The same configuration with secrets replaced (database password, secret-looking
    /// Kafka properties); credentials are never in it, only the variables' names.
    pub fn redacted(&self) -> IdemConfig {
        let mut shown = self.clone();
        shown.database.url = idem_store::redact_url(&shown.database.url);
        for st in &mut shown.stores {
            st.url = idem_store::redact_url(&st.url);
        }
        for (k, v) in shown.kafka.properties.iter_mut() {
            if is_secret(k) {
                *v = "<redacted>".into();
            }
        }
        shown
    }

    /// The effective configuration as TOML, with secrets redacted, and a note per partner
    /// saying whether its credential variable is set.
    pub fn render(&self) -> Result<String, toml::ser::Error> {
        let shown = self.redacted();
        let mut out = String::from("# idem's effective configuration (secrets redacted)\n");
        for (name, p) in self.partners.all() {
            let set = if p.credential().is_some() {
                "set"
            } else {
                "not set: the simulator's placeholder is used"
            };
            out.push_str(&format!(
                "# partners.{name}: credential from ${} ({set})\n",
                p.credential_env
            ));
        }
        out.push('\n');
        out.push_str(&toml::to_string_pretty(&shown)?);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_file_parses_and_layers_over_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/idem.toml");
        let c = load(Some(&path)).expect("examples/idem.toml is valid");
        assert_ne!(c, IdemConfig::default());
        assert_eq!(c.worker.batch, IdemConfig::default().worker.batch);
        assert!(c.cells.iter().all(|p| p.is_file()), "{:?}", c.cells);
    }

    #[test]
    fn bad_input_names_the_key() {
        let dir = std::env::temp_dir().join(format!("idem-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("bad.toml");
        std::fs::write(&f, "[worker]\nconcurrency = \"lots\"\n").unwrap();
        let e = load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("concurrency"), "{e}");
        std::fs::write(&f, "[worker]\nconcurency = 3\n").unwrap();
        let e = load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("concurency"), "{e}");
        std::fs::write(&f, "[worker]\npoll_interval = \"soon\"\n").unwrap();
        let e = load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("poll_interval"), "{e}");
        std::fs::write(&f, "[worker]\ntransport = \"carrier-pigeon\"\n").unwrap();
        let e = load(Some(&f)).unwrap_err().to_string();
        assert!(e.contains("transport") && e.contains("postgres"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(
            load(Some(Path::new("/nonexistent/idem.toml"))),
            Err(ConfigError::Missing(_))
        ));
    }

    #[test]
    fn durations_read_as_humans_write_them() {
        let c: IdemConfig = Figment::from(Serialized::defaults(IdemConfig::default()))
            .merge(Toml::string(
                "[worker]\npoll_interval = \"250ms\"\napproval_ttl = \"2h\"\n\
                 [partners.stripe.profile]\ncall_timeout = \"30s\"\nrate_limit_per_sec = 0\n",
            ))
            .extract()
            .unwrap();
        assert_eq!(c.worker.poll_interval, Duration::from_millis(250));
        assert_eq!(c.worker.approval_ttl, Duration::from_secs(7200));
        let mut p = idem_cells::StripeCharge::default_profile();
        c.partners.get("stripe").unwrap().profile.apply(&mut p);
        assert_eq!(p.call_timeout, Duration::from_secs(30));
        assert_eq!(p.rate_limit, None);
    }

    #[test]
    fn rendering_redacts_secrets() {
        let mut c = IdemConfig::default();
        c.database.url = "postgres://idem:hunter2@db:5432/idem".into();
        c.kafka
            .properties
            .insert("sasl.password".into(), "hunter3".into());
        c.kafka
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        let out = c.render().unwrap();
        assert!(
            !out.contains("hunter2") && !out.contains("hunter3"),
            "{out}"
        );
        assert!(
            out.contains("postgres://idem:<redacted>@db:5432/idem"),
            "{out}"
        );
        assert!(out.contains("SASL_SSL"), "{out}");
        assert!(out.contains("STRIPE_SECRET_KEY"), "{out}");
    }
}
