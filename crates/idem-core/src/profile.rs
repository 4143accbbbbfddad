//! A cell's profile: the three questions of design.md answered as data (key? lookup?
//! human?), plus the timings the planner needs. Profiles are data so that `idem cells` can
//! print them and the planner can be tested against any of them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::RetryPolicy;

/// How the partner takes a client idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeySupport {
    /// Header or body field that carries the key (e.g. `Idempotency-Key`).
    pub field: String,
    pub max_len: usize,
    /// How long the partner keeps a key after its first use.
    #[serde(with = "millis")]
    pub retention: Duration,
    /// Replays stop this long before the retention ends, for clock skew and pruning jitter.
    #[serde(with = "millis")]
    pub safety_margin: Duration,
}

impl KeySupport {
    /// The part of the retention window in which a same-key replay is allowed (rule c).
    pub fn replay_window(&self) -> Duration {
        self.retention.saturating_sub(self.safety_margin)
    }
}

/// What the partner sends back when a key is reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayModel {
    /// The stored status and body of the first request, errors included (Stripe).
    FrozenResponse,
    /// The current state of the object the first request made (PayPal).
    CurrentState,
    /// No key: nothing is replayed.
    None,
}

/// Whether and how the partner can be asked if an effect happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Lookup {
    /// No way to ask: an unknown outcome can only be settled by a person.
    None,
    /// Read-your-writes lookup (e.g. Stripe list by `created`).
    Strong,
    /// Eventually consistent (e.g. Stripe search): a miss means nothing until `lag_bound`.
    Eventual {
        #[serde(with = "millis")]
        lag_bound: Duration,
    },
}

/// When a cell wants a person to approve before anything is sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ApprovalPolicy {
    Never,
    Always,
    /// Above a threshold on one integer argument (e.g. `amount` in minor units).
    Above {
        argument: String,
        threshold: i64,
    },
}

/// Everything the planner needs to know about one cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CellProfile {
    pub key: Option<KeySupport>,
    pub replay: ReplayModel,
    pub lookup: Lookup,
    /// A "not happened" verdict is trusted only for attempts started at least this long ago:
    /// a request may still be running at the partner after our client gave up on it.
    #[serde(with = "millis")]
    pub settle_time: Duration,
    /// An action in doubt for longer than this goes to `needs_human`.
    #[serde(with = "millis")]
    pub doubt_horizon: Duration,
    /// Client timeout of one partner request. The worker's lease is longer than this.
    #[serde(with = "millis")]
    pub call_timeout: Duration,
    pub retry: RetryPolicy,
    pub approval: ApprovalPolicy,
    /// Partner-imposed rate limit, requests per second, if documented.
    pub rate_limit_per_sec: Option<u32>,
    /// One line for `idem cells`: the cell's strategy.
    pub strategy: String,
}

impl CellProfile {
    /// How long a "not happened" answer must wait before it can be trusted.
    pub fn trust_after(&self) -> Duration {
        match &self.lookup {
            Lookup::Eventual { lag_bound } => self.settle_time.max(*lag_bound),
            _ => self.settle_time,
        }
    }

    /// The lease a worker holds while one request is in flight.
    pub fn lease(&self) -> Duration {
        self.call_timeout * 2 + Duration::from_secs(1)
    }
}

/// Durations as integer milliseconds in JSON.
pub(crate) mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}
