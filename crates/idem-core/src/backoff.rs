//! Retry delays. They are computed here and stored as due times in the inbox, so a retry
//! survives any restart; nothing sleeps in memory waiting for one.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Exponential backoff with jitter and a bound on partner requests per action.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Delay before the 2nd attempt.
    #[serde(with = "crate::profile::millis")]
    pub base: Duration,
    /// Upper bound of any one delay.
    #[serde(with = "crate::profile::millis")]
    pub max: Duration,
    /// Same-key replays of a request in doubt before idem stops replaying (it reconciles
    /// or asks a person then).
    pub max_attempts: u32,
    /// How long a partner that refuses connections or answers 5xx-before-effect (a
    /// request proven not processed) is retried, counted from the first attempt: an
    /// outage is not a failure. Past it the action ends `failed`, and a person can send it
    /// again (`idem resolve --retry`).
    #[serde(with = "crate::profile::millis", default = "default_outage_budget")]
    pub outage_budget: Duration,
    /// Fraction of the delay that is randomised, in [0, 1].
    pub jitter: f64,
}

/// Six hours: a partner's outage, not a bad request.
pub const DEFAULT_OUTAGE_BUDGET: Duration = Duration::from_secs(6 * 3600);

fn default_outage_budget() -> Duration {
    DEFAULT_OUTAGE_BUDGET
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            max: Duration::from_secs(60),
            max_attempts: 8,
            outage_budget: DEFAULT_OUTAGE_BUDGET,
            jitter: 0.5,
        }
    }
}

impl RetryPolicy {
    /// Delay after `attempt` (1-based) failed. `sample` is a uniform random number in [0, 1),
    /// passed in so that this stays pure and testable.
    pub fn delay(&self, attempt: u32, sample: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        let raw = self.base.saturating_mul(1u32 << exp.min(20)).min(self.max);
        let jitter = self.jitter.clamp(0.0, 1.0);
        let sample = sample.clamp(0.0, 1.0);
        raw.mul_f64(1.0 - jitter + jitter * sample)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_and_is_capped() {
        let p = RetryPolicy {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            max_attempts: 10,
            outage_budget: DEFAULT_OUTAGE_BUDGET,
            jitter: 0.0,
        };
        assert_eq!(p.delay(1, 0.3), Duration::from_millis(100));
        assert_eq!(p.delay(2, 0.3), Duration::from_millis(200));
        assert_eq!(p.delay(4, 0.3), Duration::from_millis(800));
        assert_eq!(p.delay(5, 0.3), Duration::from_secs(1));
        assert_eq!(p.delay(500, 0.3), Duration::from_secs(1));
    }

    #[test]
    fn jitter_stays_within_bounds() {
        let p = RetryPolicy {
            jitter: 0.5,
            ..RetryPolicy::default()
        };
        for i in 0..100 {
            let d = p.delay(3, i as f64 / 100.0);
            assert!(
                d >= Duration::from_millis(400) && d <= Duration::from_millis(800),
                "{d:?}"
            );
        }
    }
}
