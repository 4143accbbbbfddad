//! Leases kept alive while calls run. A lease has to outlast the call it covers, but a
//! lease as long as the slowest call (call timeout × 2 + 1 s: 61 s for Stripe) also means a
//! dead worker's actions wait that long before anyone looks at them. Instead each attempt
//! starts with a short lease ([`crate::WorkerConfig::lease`]) and a task renews the leases
//! of this process's calls in flight every third of it, in one statement; when the process
//! dies the renewals stop and its actions are in doubt within one lease.
//!
//! A lease that runs out under a live call (the database unreachable for a whole lease)
//! is safe, as a hung worker always was: the sweeper moves the action to `in_doubt`, where
//! a same-key replay or a lookup trusted only after the cell's settle time decides, and the
//! late outcome's compare-and-set fails.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use idem_core::ActionId;
use idem_store::Store;

/// The calls this process has in flight (an action can be called twice at once only by
/// a replay racing its first call, hence the count).
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    calls: Mutex<HashMap<ActionId, u32>>,
    beating: AtomicBool,
}

/// One call's place in [`InFlight`], given up when the call ends (or its task is dropped).
#[derive(Debug)]
pub(crate) struct Registration {
    set: Arc<InFlight>,
    id: ActionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut calls = self.set.calls.lock().expect("in-flight set poisoned");
        if let Some(n) = calls.get_mut(&self.id) {
            *n -= 1;
            if *n == 0 {
                calls.remove(&self.id);
            }
        }
    }
}

impl InFlight {
    pub(crate) fn enter(self: &Arc<Self>, id: ActionId) -> Registration {
        *self
            .calls
            .lock()
            .expect("in-flight set poisoned")
            .entry(id)
            .or_default() += 1;
        Registration {
            set: self.clone(),
            id,
        }
    }

    fn ids(&self) -> Vec<uuid::Uuid> {
        self.calls
            .lock()
            .expect("in-flight set poisoned")
            .keys()
            .map(|id| id.as_uuid())
            .collect()
    }

    /// Start the renewing task once per process (it ends when the worker is dropped).
    pub(crate) fn keep_alive(self: &Arc<Self>, store: &Store, owner: &str, lease: Duration) {
        if self.beating.swap(true, Ordering::AcqRel) {
            return;
        }
        let weak = Arc::downgrade(self);
        let store = store.clone();
        let owner = owner.to_owned();
        tokio::spawn(beat(weak, store, owner, lease));
    }
}

async fn beat(set: Weak<InFlight>, store: Store, owner: String, lease: Duration) {
    let every = (lease / 3).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(set) = set.upgrade() else { return };
        let ids = set.ids();
        drop(set);
        if ids.is_empty() {
            continue;
        }
        let until = chrono::Utc::now() + chrono::Duration::from_std(lease).unwrap_or_default();
        if let Err(e) = idem_store::inbox::renew_leases(store.pool(), &owner, &ids, until).await {
            tracing::warn!(error = %e, calls = ids.len(), "lease heartbeat failed; retrying");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_leaves_the_set_when_it_ends_and_a_racing_replay_keeps_it() {
        let set = Arc::new(InFlight::default());
        let id = ActionId(uuid::Uuid::new_v4());
        let first = set.enter(id);
        let replay = set.enter(id);
        assert_eq!(set.ids().len(), 1);
        drop(first);
        assert_eq!(set.ids(), vec![id.as_uuid()]);
        drop(replay);
        assert!(set.ids().is_empty());
    }
}
