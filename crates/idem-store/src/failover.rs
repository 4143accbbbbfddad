//! A store on a primary with standbys: its URL lists every host, libpq-style
//! (`postgres://idem@pg-a:5432,pg-b:5432/idem?target_session_attrs=read-write`), and the
//! pool follows whichever of them accepts writes.
//!
//! idem never promotes a standby: that is the HA manager's job (Patroni, RDS, CloudNativePG,
//! or `pg_ctl promote`). It notices the promotion — a watcher asks the pool's server
//! `pg_is_in_recovery()` every [`WATCH_EVERY`], and on an error or a `true` tries every host
//! — re-points the pool at the new primary and logs a line naming it. New connections to a
//! server in recovery are refused, so no write ever goes to a standby. What the old primary
//! acknowledged survives only if a synchronous standby had it (`synchronous_commit = on`
//! with `synchronous_standby_names`): idem relies on that, as every PostgreSQL client does.
//! An attempt written ahead there is in the promoted standby too; the worker that wrote it
//! cannot settle it on a dead server, so its lease ends and the sweep reconciles it as in
//! doubt, never calling the partner blind.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgPool};

use crate::StoreError;

/// How often the pool's server is asked whether it is still the primary.
pub const WATCH_EVERY: Duration = Duration::from_millis(500);

/// How long one host gets to answer when the primary is looked for.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One host of a store's URL: how to connect to it, and its name in logs.
#[derive(Debug, Clone)]
pub struct Host {
    pub label: String,
    pub options: PgConnectOptions,
}

/// The hosts a URL names, in order: one for a plain URL, several for `host1,host2`.
/// `target_session_attrs`, if given, must be `read-write` (idem writes to every store).
pub fn hosts(url: &str) -> Result<Vec<Host>, StoreError> {
    let bad = |why: String| StoreError::Config(why);
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("a PostgreSQL URL starts with postgres://".into()))?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let (userinfo, host_list) = match authority.rfind('@') {
        Some(at) => (&authority[..=at], &authority[at + 1..]),
        None => ("", authority),
    };
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    let mut kept = vec![];
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("target_session_attrs", "read-write")) => {}
            Some(("target_session_attrs", other)) => {
                return Err(bad(format!(
                    "target_session_attrs={other}: idem writes to every store, so only \
                     read-write is accepted"
                )))
            }
            _ => kept.push(pair),
        }
    }
    let query = if kept.is_empty() {
        String::new()
    } else {
        format!("?{}", kept.join("&"))
    };
    let mut out = vec![];
    for host in host_list.split(',') {
        if host.is_empty() && host_list.contains(',') {
            return Err(bad(format!("an empty host in {host_list:?}")));
        }
        let one = format!("{scheme}://{userinfo}{host}{path}{query}");
        let options: PgConnectOptions = one
            .parse()
            .map_err(|e: sqlx::Error| bad(format!("host {host:?}: {e}")))?;
        let label = format!("{}:{}", options.get_host(), options.get_port());
        if out.iter().any(|h: &Host| h.label == label) {
            return Err(bad(format!("host {label} is listed twice")));
        }
        out.push(Host { label, options });
    }
    Ok(out)
}

/// Whether the server behind `conn` is a standby (in recovery, refusing writes).
pub(crate) async fn in_recovery(conn: &mut sqlx::PgConnection) -> Result<bool, sqlx::Error> {
    let (r,): (bool,) = sqlx::query_as("SELECT pg_is_in_recovery()")
        .fetch_one(conn)
        .await?;
    Ok(r)
}

/// The first host that answers and accepts writes, or why none did.
pub(crate) async fn find_primary(hosts: &[Host]) -> Result<&Host, String> {
    let mut why = vec![];
    for h in hosts {
        let probe = async {
            let mut c = h.options.connect().await?;
            let standby = in_recovery(&mut c).await;
            let _ = c.close().await;
            standby
        };
        match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(false)) => return Ok(h),
            Ok(Ok(true)) => why.push(format!("{}: a standby (in recovery)", h.label)),
            Ok(Err(e)) => why.push(format!("{}: {e}", h.label)),
            Err(_) => why.push(format!("{}: no answer within {PROBE_TIMEOUT:?}", h.label)),
        }
    }
    Err(why.join("; "))
}

/// The host the pool connects to now, shared with the watcher.
pub(crate) type Current = Arc<Mutex<String>>;

/// Aborts the watcher when the last handle on the store is dropped.
#[derive(Debug)]
pub(crate) struct Watch(tokio::task::JoinHandle<()>);

impl Drop for Watch {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Follow promotions: while the pool's server answers as a primary, nothing happens; when
/// it fails or turns standby, look for the primary among `hosts` and re-point the pool.
pub(crate) fn watch(pool: PgPool, hosts: Vec<Host>, current: Current) -> Watch {
    Watch(tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let healthy = tokio::time::timeout(PROBE_TIMEOUT, async {
                let mut c = pool.acquire().await?;
                in_recovery(&mut c).await
            })
            .await;
            if matches!(healthy, Ok(Ok(false))) {
                continue;
            }
            let was = current.lock().map(|c| c.clone()).unwrap_or_default();
            match find_primary(&hosts).await {
                Ok(h) if h.label != was => {
                    pool.set_connect_options(h.options.clone());
                    if let Ok(mut c) = current.lock() {
                        c.clone_from(&h.label);
                    }
                    tracing::warn!(primary = %h.label, was = %was, "PostgreSQL primary changed: idem now writes to {}", h.label);
                }
                Ok(_) => {}
                Err(why) => {
                    tracing::warn!(was = %was, "no PostgreSQL primary answers yet: {why}");
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_libpq_host_list_is_one_host_each_with_the_rest_of_the_url() {
        let h = hosts(
            "postgres://idem:pw@pg-a:5432,pg-b:5433/idem?target_session_attrs=read-write&sslmode=disable",
        )
        .unwrap();
        let labels: Vec<_> = h.iter().map(|h| h.label.as_str()).collect();
        assert_eq!(labels, ["pg-a:5432", "pg-b:5433"]);
        assert_eq!(h[1].options.get_database(), Some("idem"));
        assert_eq!(h[1].options.get_username(), "idem");
        let one = hosts("postgres://postgres@127.0.0.1:5432/postgres").unwrap();
        assert_eq!(one.len(), 1);
    }

    #[test]
    fn a_read_only_target_and_a_repeated_host_are_refused() {
        let e = hosts("postgres://a,b/db?target_session_attrs=read-only").unwrap_err();
        assert!(e.to_string().contains("read-write"), "{e}");
        let e = hosts("postgres://h:1,h:1/db").unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = hosts("postgres://h:1,,h:2/db").unwrap_err();
        assert!(e.to_string().contains("empty host"), "{e}");
    }
}
