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
    /// Partner requests (first attempt, retries and replays) before idem stops sending.
    pub max_attempts: u32,
    /// Fraction of the delay that is randomised, in [0, 1].
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            max: Duration::from_secs(60),
            max_attempts: 8,
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
