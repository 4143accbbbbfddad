//! Fault injection, deterministic from a seed: the fault for a request is a function of
//! (seed, route, idempotency key, how many times that key was seen), not of arrival
//! order, so a concurrent run injects the same faults into the same actions every time.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// One injected fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fault {
    /// Commit the effect, store the response, then cut the connection.
    DropAfterEffect,
    /// Answer 500 before any effect.
    FailBefore,
    /// Commit the effect, then answer 500 (and store the 500 for the key).
    FailAfter,
    /// Answer 429 before the idempotency layer (not stored).
    RateLimit,
    /// Answer 409 "another in-progress request" without running anything (not stored), as
    /// when a retry overtakes the first request.
    Conflict409,
    /// Hold the request (and its key, in flight) for this many milliseconds first.
    Delay(u64),
}

/// Probabilities of each fault per request, in [0, 1].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct FaultRates {
    pub drop_after_effect: f64,
    pub fail_before: f64,
    pub fail_after: f64,
    pub rate_limit: f64,
    pub conflict_409: f64,
    /// Probability of a delay, and its length in milliseconds.
    pub delay: f64,
    pub delay_ms: u64,
}

impl FaultRates {
    /// The fault for the `nth` request (0-based) carrying `key` on `route`, if any.
    pub fn pick(&self, seed: u64, route: &str, key: &str, nth: u64) -> Option<Fault> {
        let u = uniform(seed, route, key, nth);
        let mut edge = 0.0;
        for (p, f) in [
            (self.drop_after_effect, Fault::DropAfterEffect),
            (self.fail_before, Fault::FailBefore),
            (self.fail_after, Fault::FailAfter),
            (self.rate_limit, Fault::RateLimit),
            (self.conflict_409, Fault::Conflict409),
            (self.delay, Fault::Delay(self.delay_ms)),
        ] {
            edge += p;
            if u < edge {
                return Some(f);
            }
        }
        None
    }
}

fn uniform(seed: u64, route: &str, key: &str, nth: u64) -> f64 {
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    h.update(route.as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.update(nth.to_le_bytes());
    let d = h.finalize();
    let x = u64::from_le_bytes(d[..8].try_into().expect("8 bytes"));
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_respected_and_deterministic() {
        let r = FaultRates {
            drop_after_effect: 0.1,
            fail_before: 0.05,
            ..FaultRates::default()
        };
        let picks: Vec<_> = (0..20_000)
            .map(|i| r.pick(7, "c", &format!("k{i}"), 0))
            .collect();
        let drops = picks
            .iter()
            .filter(|p| **p == Some(Fault::DropAfterEffect))
            .count();
        let fails = picks
            .iter()
            .filter(|p| **p == Some(Fault::FailBefore))
            .count();
        assert!((1_800..2_200).contains(&drops), "{drops}");
        assert!((800..1_200).contains(&fails), "{fails}");
        assert_eq!(r.pick(7, "c", "k1", 0), picks[1]);
        assert!(FaultRates::default().pick(7, "c", "k", 0).is_none());
    }
}
