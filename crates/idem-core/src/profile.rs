//! A cell's profile: the three questions of design.md answered as data (key? lookup?
//! human?), plus the timings the planner needs. Profiles are data so that `idem cells` can
//! print them and the planner can be tested against any of them.

use std::num::NonZeroU32;
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

/// A partner's request rate: `per_sec` steady, `burst` at once, counted over the whole cell
/// or per value of one argument (Slack limits posts per channel, not per workspace).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateLimit {
    pub per_sec: NonZeroU32,
    pub burst: NonZeroU32,
    /// Count per value of this top-level argument (e.g. `channel`); `None`: the whole cell.
    #[serde(default)]
    pub per_argument: Option<String>,
}

impl RateLimit {
    /// `per_sec` requests a second, no burst beyond one second's worth, over the whole cell.
    pub fn per_second(per_sec: u32) -> Self {
        let n = NonZeroU32::new(per_sec.max(1)).expect("at least 1");
        Self {
            per_sec: n,
            burst: n,
            per_argument: None,
        }
    }

    /// The same rate counted per value of `argument`.
    pub fn per(mut self, argument: &str) -> Self {
        self.per_argument = Some(argument.to_owned());
        self
    }

    /// Allow `burst` requests at once.
    pub fn with_burst(mut self, burst: u32) -> Self {
        self.burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
        self
    }
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
    /// The partner's documented rate for this cell's effect requests, if it has one. The
    /// worker holds it before a request leaves (see `idem_worker::partner`).
    #[serde(default)]
    pub rate_limit: Option<RateLimit>,
    /// One line for `idem cells`: the cell's strategy.
    pub strategy: String,
}

impl CellProfile {
    /// How long after an attempt started a "not happened" answer can be trusted: the
    /// request may reach the partner until the settle time or the call timeout, whichever
    /// is later (the client keeps sending until it times out), and an eventually
    /// consistent lookup shows an effect only up to its lag bound after that.
    ///
    /// (It was `max(settle, lag bound)`: the chaos soak found 4 duplicate Slack posts in
    /// 10,000 with a 500 ms settle time, a 1 s call timeout and a 1 s lag bound — requests
    /// that reached the partner late on an overloaded machine were looked up too early.)
    pub fn trust_after(&self) -> Duration {
        use crate::guard::mutation::{active, Mutation};
        if active(Mutation::TrustIgnoresCallTimeout) {
            return match &self.lookup {
                Lookup::Eventual { lag_bound } => self.settle_time.max(*lag_bound),
                _ => self.settle_time,
            };
        }
        let applied_by = self.settle_time.max(self.call_timeout);
        match &self.lookup {
            Lookup::Eventual { lag_bound } => applied_by + *lag_bound,
            _ => applied_by,
        }
    }

    /// The lease a worker holds while one request is in flight.
    pub fn lease(&self) -> Duration {
        self.call_timeout * 2 + Duration::from_secs(1)
    }

    /// The window safety check a worker runs before it starts: a same-key replay must stay
    /// inside the partner's key window minus a real margin, a lost call must be noticed
    /// (lease) well inside that window, and the inbox must remember an action at least as
    /// long as the partner remembers its key and idem keeps trying to resolve it — else a
    /// late duplicate delivery would find no inbox row and send again.
    pub fn window_check(&self, inbox_retention: Option<Duration>) -> Result<(), String> {
        let Some(k) = &self.key else {
            if let Some(r) = inbox_retention {
                if r < self.doubt_horizon {
                    return Err(format!(
                        "inbox retention {r:?} is shorter than the doubt horizon {:?}",
                        self.doubt_horizon
                    ));
                }
            }
            return Ok(());
        };
        if k.safety_margin.is_zero() || k.safety_margin >= k.retention {
            return Err(format!(
                "key safety margin {:?} must be above zero and below the key retention {:?}",
                k.safety_margin, k.retention
            ));
        }
        if self.lease() >= k.replay_window() {
            return Err(format!(
                "a lost call is noticed after the lease ({:?}), which is not inside the replay \
                 window ({:?} = retention {:?} - margin {:?}): replays would never be allowed",
                self.lease(),
                k.replay_window(),
                k.retention,
                k.safety_margin
            ));
        }
        if let Some(r) = inbox_retention {
            let need = k.retention.max(self.doubt_horizon);
            if r < need {
                return Err(format!(
                    "inbox retention {r:?} must cover the partner's key retention {:?} and the \
                     doubt horizon {:?}: a duplicate delivered later would be sent again",
                    k.retention, self.doubt_horizon
                ));
            }
        }
        Ok(())
    }
}

impl ApprovalPolicy {
    /// `never`, `always`, or `ARGUMENT>=THRESHOLD` (e.g. `amount>=50000`).
    pub fn parse(s: &str) -> Result<Self, String> {
        match s.trim() {
            "never" => Ok(Self::Never),
            "always" => Ok(Self::Always),
            other => {
                let (arg, n) = other.split_once(">=").ok_or_else(|| {
                    format!("approval policy {other:?}: use never, always or ARGUMENT>=THRESHOLD")
                })?;
                let arg = arg.trim();
                if arg.is_empty() || !arg.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                    return Err(format!(
                        "approval policy {other:?}: bad argument name {arg:?}"
                    ));
                }
                let threshold = n
                    .trim()
                    .parse::<i64>()
                    .map_err(|e| format!("approval policy {other:?}: threshold: {e}"))?;
                Ok(Self::Above {
                    argument: arg.to_owned(),
                    threshold,
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyed() -> CellProfile {
        CellProfile {
            key: Some(KeySupport {
                field: "Idempotency-Key".into(),
                max_len: 255,
                retention: Duration::from_secs(24 * 3600),
                safety_margin: Duration::from_secs(3600),
            }),
            replay: ReplayModel::FrozenResponse,
            lookup: Lookup::Strong,
            settle_time: Duration::from_secs(120),
            doubt_horizon: Duration::from_secs(3 * 24 * 3600),
            call_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            approval: ApprovalPolicy::Never,
            rate_limit: None,
            strategy: String::new(),
        }
    }

    #[test]
    fn window_check_refuses_unsafe_settings() {
        let p = keyed();
        assert!(p.window_check(None).is_ok());
        assert!(p
            .window_check(Some(Duration::from_secs(7 * 24 * 3600)))
            .is_ok());
        let e = p.window_check(Some(Duration::from_secs(3600))).unwrap_err();
        assert!(e.contains("inbox retention"), "{e}");
        let mut no_margin = keyed();
        no_margin.key.as_mut().unwrap().safety_margin = Duration::ZERO;
        assert!(no_margin.window_check(None).unwrap_err().contains("margin"));
        let mut slow = keyed();
        slow.call_timeout = Duration::from_secs(12 * 3600);
        assert!(slow.window_check(None).unwrap_err().contains("lease"));
        let mut keyless = keyed();
        keyless.key = None;
        assert!(keyless.window_check(Some(Duration::from_secs(60))).is_err());
    }

    #[test]
    fn approval_policies_parse() {
        assert_eq!(
            ApprovalPolicy::parse("never").unwrap(),
            ApprovalPolicy::Never
        );
        assert_eq!(
            ApprovalPolicy::parse("always").unwrap(),
            ApprovalPolicy::Always
        );
        assert_eq!(
            ApprovalPolicy::parse("amount>=50000").unwrap(),
            ApprovalPolicy::Above {
                argument: "amount".into(),
                threshold: 50_000
            }
        );
        assert!(ApprovalPolicy::parse("amount>50000").is_err());
        assert!(ApprovalPolicy::parse("a;b>=1").is_err());
        assert!(ApprovalPolicy::parse("amount>=lots").is_err());
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
