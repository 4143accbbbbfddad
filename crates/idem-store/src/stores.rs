//! Several stores: a deployment's actions spread over PostgreSQL databases, each action on
//! one **home** store that every surface finds again, so dedup holds as it does on one.
//!
//! The home of an action is decided once, from its **placement key** — `scope:<scope>` for
//! an action named inside a scope, `id:<uuid>` for one named by the caller's id — and then
//! never moves:
//!
//! 1. a placement rule (`[placement.prefixes]`, scope prefix → store; the longest prefix
//!    wins) places every scope under it, without asking anyone: a tenant pinned to its own
//!    database, or an application that enqueues over SQL into its own;
//! 2. otherwise the **directory** (`idem.placements`, in the default store — the first
//!    listed) records where each key went at first use: a key already recorded goes there;
//! 3. a new key goes where rendezvous hashing of its key over the store names sends it, and
//!    that is recorded — unless the default store already holds the action or named intents
//!    in the scope from before there were several stores, in which case it stays there.
//!
//! The directory's primary key decides races: two processes placing one new key (even
//! with different store lists, during a rollout that adds a store) both get the first
//! record. So adding a store never makes one (scope, intent) into two actions: scopes
//! already placed stay, new ones spread over the new list. A recorded key is cached in
//! the process for good (a placement never changes), so only a scope's first action pays
//! the directory round trip. A process whose list lacks the store a key was placed on
//! refuses the request, naming that store, rather than guess; so a store is added in two
//! rollouts: first listed everywhere with `new_scopes = false` (known, never chosen), then
//! opened. Placement rules are not recorded: changing a rule's store for
//! scopes that already have actions would move them, and is refused by nothing but this
//! sentence — add rules for new prefixes only.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use idem_core::ActionId;
use sha2::{Digest, Sha256};

use crate::{enqueue, inbox, EnqueueError, Enqueued, NewAction, Store, StoreError};

/// Keys cached per process before the cache is emptied (each entry is a scope's length
/// plus a few words; 100k scopes is a few MB).
const CACHE_MAX: usize = 100_000;

/// Where the rendezvous hash starts, so that the placement function is versioned.
const PLACE_DOMAIN: &str = "idem.place.v1";

/// One `[[stores]]` entry: a name people and messages use, and its URL (hosts of a
/// primary with standbys, libpq-style, allowed).
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSpec {
    pub name: String,
    pub url: String,
    /// Whether new scopes may be placed here (default true). A store being added is first
    /// listed with `new_scopes = false` on every process — known, so a scope another
    /// process placed there is found — and opened once the whole fleet lists it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub new_scopes: bool,
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

impl std::fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSpec")
            .field("name", &self.name)
            .field("url", &crate::redact_url(&self.url))
            .field("new_scopes", &self.new_scopes)
            .finish()
    }
}

/// Why a set of stores cannot be used, naming the store or rule at fault.
#[derive(Debug, thiserror::Error)]
pub enum StoresError {
    #[error("stores: {0}")]
    Config(String),
    #[error("store {name:?}: {source}")]
    Store {
        name: String,
        #[source]
        source: StoreError,
    },
}

/// The stores of a deployment; cheap to clone.
#[derive(Debug, Clone)]
pub struct Stores(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    stores: Vec<(String, Store)>,
    /// Per store: whether hashing may place new scopes there.
    open: Vec<bool>,
    /// Longest prefix first.
    prefixes: Vec<(String, usize)>,
    cache: Mutex<HashMap<String, usize>>,
}

/// Check names, URLs and rules before connecting to anything.
pub fn validate(
    specs: &[StoreSpec],
    prefixes: &BTreeMap<String, String>,
) -> Result<(), StoresError> {
    let bad = |m: String| Err(StoresError::Config(m));
    if specs.is_empty() {
        return bad("no store is configured".into());
    }
    let mut names: HashMap<&str, usize> = HashMap::new();
    let mut servers: HashMap<String, &str> = HashMap::new();
    for (i, s) in specs.iter().enumerate() {
        let ok = !s.name.is_empty()
            && s.name.len() <= 63
            && s.name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !ok {
            return bad(format!(
                "store name {:?}: 1 to 63 of a-z, 0-9, '-' and '_'",
                s.name
            ));
        }
        if names.insert(&s.name, i).is_some() {
            return bad(format!("two stores are named {:?}", s.name));
        }
        let hosts = crate::failover::hosts(&s.url).map_err(|source| StoresError::Store {
            name: s.name.clone(),
            source,
        })?;
        for h in hosts {
            let db = h.options.get_database().unwrap_or("postgres").to_owned();
            let at = format!("{}/{db}", h.label);
            if let Some(other) = servers.insert(at.clone(), &s.name) {
                return bad(format!(
                    "stores {other:?} and {:?} are one database ({at}): each store needs its own",
                    s.name
                ));
            }
        }
    }
    if !specs.iter().any(|s| s.new_scopes) {
        return bad(
            "every store has new_scopes = false: new scopes would have nowhere to go".into(),
        );
    }
    for (prefix, store) in prefixes {
        if prefix.is_empty() {
            return bad("a placement prefix is empty (it would match every scope)".into());
        }
        if !names.contains_key(store.as_str()) {
            return bad(format!(
                "placement {prefix:?} = {store:?}: no store is named {store:?} (stores: {})",
                specs
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(())
}

impl Stores {
    /// One store, named `default`: today's setup, with no directory and no routing cost.
    pub fn single(store: Store) -> Self {
        Self::from_stores(vec![("default".into(), store)], &BTreeMap::new())
            .expect("one store and no rules is valid")
    }

    /// Stores already connected, in order (the first is the default), with placement rules.
    pub fn from_stores(
        stores: Vec<(String, Store)>,
        prefixes: &BTreeMap<String, String>,
    ) -> Result<Self, StoresError> {
        let index = |name: &str| stores.iter().position(|(n, _)| n == name);
        let mut rules = vec![];
        for (p, s) in prefixes {
            let i = index(s).ok_or_else(|| {
                StoresError::Config(format!("placement {p:?} = {s:?}: no store is named {s:?}"))
            })?;
            rules.push((p.clone(), i));
        }
        rules.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        if stores.is_empty() {
            return Err(StoresError::Config("no store is configured".into()));
        }
        Ok(Self(Arc::new(Inner {
            open: vec![true; stores.len()],
            stores,
            prefixes: rules,
            cache: Mutex::new(HashMap::new()),
        })))
    }

    /// The same stores, with `names` closed to new scopes (see [`StoreSpec::new_scopes`]).
    pub fn closed_to_new_scopes(self, names: &[&str]) -> Result<Self, StoresError> {
        let inner = Arc::try_unwrap(self.0).unwrap_or_else(|shared| Inner {
            stores: shared.stores.clone(),
            open: shared.open.clone(),
            prefixes: shared.prefixes.clone(),
            cache: Mutex::new(HashMap::new()),
        });
        let mut open = inner.open;
        for n in names {
            let i = inner
                .stores
                .iter()
                .position(|(m, _)| m == n)
                .ok_or_else(|| StoresError::Config(format!("no store is named {n:?}")))?;
            open[i] = false;
        }
        if !open.iter().any(|o| *o) {
            return Err(StoresError::Config(
                "every store is closed to new scopes: new scopes would have nowhere to go".into(),
            ));
        }
        Ok(Self(Arc::new(Inner { open, ..inner })))
    }

    /// Connect to every store at once (and check each is migrated, if asked); the first
    /// that fails is named in the error.
    pub async fn connect(
        specs: &[StoreSpec],
        prefixes: &BTreeMap<String, String>,
        max_connections: u32,
        migrated: bool,
    ) -> Result<Self, StoresError> {
        validate(specs, prefixes)?;
        let mut tasks = vec![];
        for s in specs {
            let (name, url) = (s.name.clone(), s.url.clone());
            tasks.push(tokio::spawn(async move {
                let store = if migrated {
                    Store::connect_migrated(&url, max_connections).await
                } else {
                    Store::connect(&url, max_connections).await
                };
                store
                    .map(|st| (name.clone(), st))
                    .map_err(|source| StoresError::Store { name, source })
            }));
        }
        let mut stores = vec![];
        for t in tasks {
            stores.push(
                t.await
                    .map_err(|e| StoresError::Config(format!("connect task: {e}")))??,
            );
        }
        let closed: Vec<&str> = specs
            .iter()
            .filter(|s| !s.new_scopes)
            .map(|s| s.name.as_str())
            .collect();
        Self::from_stores(stores, prefixes)?.closed_to_new_scopes(&closed)
    }

    /// The default store: the directory of placements, and where tokens and the fleet live.
    pub fn default_store(&self) -> &Store {
        &self.0.stores[0].1
    }

    /// Every store with its name, the default first.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Store)> {
        self.0.stores.iter().map(|(n, s)| (n.as_str(), s))
    }

    pub fn len(&self) -> usize {
        self.0.stores.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.stores.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&Store> {
        self.iter().find(|(n, _)| *n == name).map(|(_, s)| s)
    }

    /// The store an action placed by `scope` (or, without one, by its id) lives on.
    pub async fn home(
        &self,
        scope: Option<&str>,
        id: ActionId,
    ) -> Result<(&str, &Store), StoreError> {
        let i = self.home_index(scope, id).await?;
        let (n, s) = &self.0.stores[i];
        Ok((n.as_str(), s))
    }

    /// Enqueue on the action's home store (placed by its intent's scope, else `scope`,
    /// else its id); the store's name comes back with the answer.
    pub async fn enqueue(
        &self,
        action: &NewAction,
        scope: Option<&str>,
    ) -> Result<(&str, Enqueued), EnqueueError> {
        let scope = action.intent.as_ref().map(|i| i.scope.as_str()).or(scope);
        let (name, store) = self
            .home(scope, action.action_id)
            .await
            .map_err(|e| match e {
                StoreError::Db(e) => EnqueueError::Db(e),
                other => EnqueueError::Db(sqlx::Error::Protocol(other.to_string())),
            })?;
        Ok((name, enqueue(store.pool(), action).await?))
    }

    /// The action with this id, from whichever store holds it (all are asked at once). A
    /// store that cannot answer is an error only when no other store has the action.
    pub async fn find(&self, id: ActionId) -> Result<Option<(&str, inbox::ActionRow)>, StoreError> {
        if self.len() == 1 {
            let (n, s) = &self.0.stores[0];
            return Ok(inbox::get(s.pool(), id).await?.map(|r| (n.as_str(), r)));
        }
        let mut tasks = vec![];
        for (_, s) in &self.0.stores {
            let pool = s.pool().clone();
            tasks.push(tokio::spawn(async move { inbox::get(&pool, id).await }));
        }
        let mut down = vec![];
        for (i, t) in tasks.into_iter().enumerate() {
            let name = self.0.stores[i].0.as_str();
            match t.await {
                Ok(Ok(Some(row))) => return Ok(Some((name, row))),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => down.push(format!("{name}: {e}")),
                Err(e) => down.push(format!("{name}: {e}")),
            }
        }
        if down.is_empty() {
            Ok(None)
        } else {
            Err(StoreError::Unavailable(format!(
                "action {id} is on no store that answered; unreachable: {}",
                down.join("; ")
            )))
        }
    }

    /// Where rendezvous hashing over the names of the stores open to new scopes sends `key`.
    pub fn hashed(&self, key: &str) -> usize {
        let open: Vec<usize> = (0..self.len()).filter(|&i| self.0.open[i]).collect();
        let names: Vec<&str> = open.iter().map(|&i| self.0.stores[i].0.as_str()).collect();
        open[rendezvous(&names, key)]
    }

    /// Whether hashing may place new scopes on store `name`.
    pub fn is_open(&self, name: &str) -> bool {
        self.0
            .stores
            .iter()
            .position(|(n, _)| n == name)
            .is_some_and(|i| self.0.open[i])
    }

    async fn home_index(&self, scope: Option<&str>, id: ActionId) -> Result<usize, StoreError> {
        if self.len() == 1 {
            return Ok(0);
        }
        if let Some(s) = scope {
            if let Some((_, i)) = self
                .0
                .prefixes
                .iter()
                .find(|(p, _)| s.starts_with(p.as_str()))
            {
                return Ok(*i);
            }
        }
        let key = match scope {
            Some(s) => format!("scope:{s}"),
            None => format!("id:{id}"),
        };
        if let Some(i) = self.cached(&key) {
            return Ok(i);
        }
        let hashed = &self.0.stores[self.hashed(&key)].0;
        let default = &self.0.stores[0].0;
        // One statement on the directory: the recorded store, else record this one (the
        // default where it already holds the action or the scope's named intents).
        const PLACE: &str = "\
            WITH found AS (SELECT store FROM idem.placements WHERE key = $1), \
            ins AS ( \
              INSERT INTO idem.placements (key, store) \
              SELECT $1, CASE WHEN EXISTS (SELECT 1 FROM idem.actions WHERE action_id = $2) \
                                OR ($3::text IS NOT NULL AND EXISTS ( \
                                     SELECT 1 FROM idem.actions \
                                      WHERE intent_scope = $3 AND intent IS NOT NULL)) \
                              THEN $5 ELSE $4 END \
               WHERE NOT EXISTS (SELECT 1 FROM found) \
              ON CONFLICT (key) DO NOTHING RETURNING store) \
            SELECT store FROM found UNION ALL SELECT store FROM ins";
        let directory = self.default_store().pool();
        for _ in 0..3 {
            let row: Option<(String,)> = sqlx::query_as(PLACE)
                .bind(&key)
                .bind(id.as_uuid())
                .bind(scope)
                .bind(hashed)
                .bind(default)
                .fetch_optional(directory)
                .await?;
            // No row: another process recorded the key after this statement's snapshot.
            let Some((store,)) = row else { continue };
            let Some(i) = self.0.stores.iter().position(|(n, _)| *n == store) else {
                return Err(StoreError::Config(format!(
                    "the directory places {key:?} on store {store:?}, which this process's \
                     [[stores]] does not list: add it (a store is never removed while it \
                     holds actions)"
                )));
            };
            self.remember(key, i);
            return Ok(i);
        }
        Err(StoreError::Unavailable(format!(
            "could not record the placement of {key:?} in the directory"
        )))
    }

    fn cached(&self, key: &str) -> Option<usize> {
        self.0.cache.lock().ok()?.get(key).copied()
    }

    fn remember(&self, key: String, i: usize) {
        if let Ok(mut c) = self.0.cache.lock() {
            if c.len() >= CACHE_MAX {
                c.clear();
            }
            c.insert(key, i);
        }
    }
}

/// Rendezvous (highest random weight) hashing of `key` over store names: stable for a given
/// list, and a store added to it takes only the keys it wins.
pub fn rendezvous(names: &[&str], key: &str) -> usize {
    let score = |name: &str| {
        let mut h = Sha256::new();
        h.update(PLACE_DOMAIN.as_bytes());
        h.update([0]);
        h.update(name.as_bytes());
        h.update([0]);
        h.update(key.as_bytes());
        let d = h.finalize();
        u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
    };
    (0..names.len())
        .max_by_key(|&i| (score(names[i]), std::cmp::Reverse(i)))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_keys_and_a_new_store_takes_only_the_keys_it_wins() {
        let three = ["a", "b", "c"];
        let four = ["a", "b", "c", "d"];
        let mut counts = [0usize; 4];
        for k in 0..3000 {
            let key = format!("scope:conversation-{k}");
            let before = rendezvous(&three, &key);
            let after = rendezvous(&four, &key);
            assert_eq!(before, rendezvous(&three, &key), "stable");
            assert!(
                after == before || after == 3,
                "{key} moved from {before} to {after}"
            );
            counts[after] += 1;
        }
        for c in counts {
            assert!((600..900).contains(&c), "uneven: {counts:?}");
        }
    }

    fn spec(name: &str, url: &str) -> StoreSpec {
        StoreSpec {
            name: name.into(),
            url: url.into(),
            new_scopes: true,
        }
    }

    #[test]
    fn bad_store_lists_are_refused_naming_the_fault() {
        let rules = BTreeMap::new();
        let e = validate(
            &[
                spec("a", "postgres://u@h:5432/x"),
                spec("b", "postgres://u:pw@h:5432/x"),
            ],
            &rules,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("\"a\" and \"b\" are one database (h:5432/x)"),
            "{e}"
        );
        assert!(!e.contains("pw"), "{e}");
        let e = validate(
            &[spec("a", "postgres://h/x"), spec("a", "postgres://h/y")],
            &rules,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("two stores are named"), "{e}");
        let e = validate(&[spec("A b", "postgres://h/x")], &rules)
            .unwrap_err()
            .to_string();
        assert!(e.contains("store name"), "{e}");
        let rules = BTreeMap::from([("tenant-7/".to_owned(), "c".to_owned())]);
        let e = validate(
            &[spec("a", "postgres://h/x"), spec("b", "postgres://h/y")],
            &rules,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no store is named \"c\" (stores: a, b)"), "{e}");
        assert!(validate(
            &[spec("a", "postgres://h/x"), spec("b", "postgres://h/y")],
            &BTreeMap::new()
        )
        .is_ok());
    }

    #[test]
    fn a_url_is_never_shown_with_its_password() {
        let s = format!("{:?}", spec("a", "postgres://idem:hunter2@h/x"));
        assert!(!s.contains("hunter2"), "{s}");
    }
}
