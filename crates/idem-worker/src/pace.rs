//! How far work may run ahead of the calls: a direct-transport claim beyond the free call
//! slots, a Kafka partition lane beyond the message it is calling (see `combine`).
//!
//! With calls that take microseconds (a no-op cell, a fast internal API) a claim capped at
//! the free call slots is at most `concurrency` actions, and the claim's round trips,
//! commit and statement set-up were paid for every 24–32 (`bench pg-worker`, 32 calls at
//! once). Claims of up to two slots' worth, queued behind the slots, with room for the next
//! while the last settles (`UNSETTLED_PER_CALL` in `runtime`): 7,710 → 10,198 actions/s,
//! CPU 0.147 → 0.124 ms per action, medians of 5; with room for a second claim while one
//! commits ([`AHEAD_SLOTS`]), 12,359 → 13,188 (medians of 4). With slow calls a queued
//! action only waits, leased, while another worker could have had it. So claims queue only
//! what the calls will take within [`HORIZON`]: with mean call time `m` and `c` slots, a
//! queue of `c × HORIZON / m` drains in about `HORIZON`. Queued actions are written ahead
//! and their leases are renewed like those of calls in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// The longest a queued action should wait for a call slot.
pub(crate) const HORIZON: Duration = Duration::from_millis(3);

/// Claimed-ahead actions, at most, per call slot: with 32 slots and claims of 64, one claim
/// under way and room for a second of the same size (`CLAIMS_AT_ONCE` in `runtime`). At one
/// slot's worth a second claim never found room.
pub(crate) const AHEAD_SLOTS: usize = 3;

/// A running mean of how long calls take (exponential, weight 1/8; racy updates are fine).
#[derive(Debug, Default)]
pub(crate) struct CallPace {
    /// Mean call time in microseconds; 0 until a call has ended.
    mean_us: AtomicU64,
}

impl CallPace {
    pub(crate) fn observe(&self, took: Duration) {
        let x = (took.as_micros() as u64).max(1);
        let old = self.mean_us.load(Ordering::Relaxed);
        let new = if old == 0 { x } else { old - old / 8 + x / 8 };
        self.mean_us.store(new.max(1), Ordering::Relaxed);
    }

    /// How many actions claims may take beyond the free call slots: none until a call has
    /// been timed, at most [`AHEAD_SLOTS`] × `slots`.
    pub(crate) fn ahead(&self, slots: usize) -> usize {
        self.within_horizon(slots).min(AHEAD_SLOTS * slots)
    }

    /// How many calls `slots` running at once get through in [`HORIZON`] at the mean call
    /// time: none until a call has been timed, none for calls slower than the horizon.
    pub(crate) fn within_horizon(&self, slots: usize) -> usize {
        let mean = self.mean_us.load(Ordering::Relaxed);
        if mean == 0 {
            return 0;
        }
        let drained = (slots as u128 * HORIZON.as_micros()) / u128::from(mean);
        drained.min(usize::MAX as u128) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_calls_queue_a_claims_worth_and_slow_calls_almost_none() {
        let pace = CallPace::default();
        assert_eq!(
            pace.ahead(32),
            0,
            "nothing is queued before a call was timed"
        );
        for _ in 0..64 {
            pace.observe(Duration::from_micros(50));
        }
        assert_eq!(
            pace.ahead(32),
            96,
            "no-op calls: three slots' worth more, no further"
        );
        for _ in 0..64 {
            pace.observe(Duration::from_millis(20));
        }
        // 32 slots drain 4 queued 20 ms calls in 2.5 ms, a fifth would wait past 3 ms.
        assert_eq!(pace.ahead(32), 4);
        for _ in 0..64 {
            pace.observe(Duration::from_millis(300));
        }
        assert_eq!(pace.ahead(32), 0, "slow calls claim only free slots");
        assert_eq!(pace.within_horizon(1), 0, "one slot: not one 300 ms call");
        for _ in 0..200 {
            pace.observe(Duration::from_micros(100));
        }
        let n = pace.within_horizon(1);
        assert!(
            (27..=31).contains(&n),
            "one slot: ~30 calls of 100 µs, not {n}"
        );
    }
}
