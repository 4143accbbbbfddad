//! Reading across several stores: the lists people work from (approvals, cases, the
//! explorer, the fleet's counts) ask every store at once and say which store each item
//! came from; a store that cannot answer is named, and the others are still listed — one
//! store down holds back only its own actions, on the console as in the workers.

use std::future::Future;

use idem_core::ActionId;
use idem_telemetry::metrics::Fleet;
use sqlx::PgPool;

use crate::{Store, StoreError, Stores};

/// An item read from one store, with that store's name (what a person sees).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Placed<T> {
    pub store: String,
    #[serde(flatten)]
    pub item: T,
}

/// What the stores answered to one listing.
#[derive(Debug)]
pub struct Gathered<T> {
    pub items: Vec<Placed<T>>,
    /// `name: error` for each store that could not answer.
    pub unavailable: Vec<String>,
    answered: usize,
}

impl<T> Gathered<T> {
    /// No store answered: there is nothing to show, only the reasons.
    pub fn all_down(&self) -> bool {
        self.answered == 0
    }
}

impl Stores {
    /// Run `read` on every store at once and tag what each returns with the store's name,
    /// in the stores' order (the default first); the caller sorts.
    pub async fn gather<T, F, Fut>(&self, read: F) -> Gathered<T>
    where
        F: Fn(PgPool) -> Fut,
        Fut: Future<Output = Result<Vec<T>, StoreError>> + Send + 'static,
        T: Send + 'static,
    {
        let tasks: Vec<_> = self
            .iter()
            .map(|(name, s)| (name.to_owned(), tokio::spawn(read(s.pool().clone()))))
            .collect();
        let mut out = Gathered {
            items: vec![],
            unavailable: vec![],
            answered: 0,
        };
        for (store, task) in tasks {
            match task.await {
                Ok(Ok(items)) => {
                    out.answered += 1;
                    out.items.extend(items.into_iter().map(|item| Placed {
                        store: store.clone(),
                        item,
                    }))
                }
                Ok(Err(e)) => out.unavailable.push(format!("{store}: {e}")),
                Err(e) => out.unavailable.push(format!("{store}: {e}")),
            }
        }
        out
    }

    /// The store that holds action `id` (all are asked at once), with its name.
    pub async fn locate(&self, id: ActionId) -> Result<Option<(&str, &Store)>, StoreError> {
        Ok(self
            .find(id)
            .await?
            .and_then(|(name, _)| self.iter().find(|(n, _)| *n == name)))
    }

    /// The fleet's counts summed over every store that answers (the oldest outbox row
    /// across them gives the lag); `None` when none answers.
    pub async fn fleet(&self) -> (Option<Fleet>, Vec<String>) {
        let g = self
            .gather(|pool| async move { Ok(vec![crate::stats::fleet(&pool).await?]) })
            .await;
        if g.answered == 0 {
            return (None, g.unavailable);
        }
        let mut sum = Fleet::default();
        for Placed { item: f, .. } in g.items {
            for (cell, state, n) in f.actions {
                match sum
                    .actions
                    .iter_mut()
                    .find(|(c, s, _)| *c == cell && *s == state)
                {
                    Some((_, _, m)) => *m += n,
                    None => sum.actions.push((cell, state, n)),
                }
            }
            sum.outbox_depth += f.outbox_depth;
            sum.outbox_lag_seconds = sum.outbox_lag_seconds.max(f.outbox_lag_seconds);
        }
        sum.actions.sort();
        (Some(sum), g.unavailable)
    }
}
