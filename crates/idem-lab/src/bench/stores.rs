//! `idem-lab bench stores`: enqueue over 1, 2 and 3 stores (databases on one server, so
//! the figure is idem's cost per store, not more hardware), and what routing adds to an
//! enqueue: the same named intents written straight to their home store, without the
//! placement lookup, in the same run.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Result;
use clap::Args;
use idem_core::CellName;
use idem_store::{enqueue, NewAction, Store, Stores};

use super::cpu::MachineCpu;
use super::Figure;

#[derive(Args, Debug)]
pub struct StoresBenchArgs {
    /// PostgreSQL server; the benchmark (re)creates databases `idem_bench_store_N` there.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Store counts to measure, e.g. `1,2,3`.
    #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
    stores: Vec<usize>,
    /// Named intents enqueued per round.
    #[arg(long, default_value_t = 6_000)]
    actions: usize,
    /// Concurrent enqueuers.
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Actions per scope (a conversation's actions share its scope; 1 = every action in a
    /// new scope, the worst case for the placement directory).
    #[arg(long, default_value_t = 4)]
    per_scope: usize,
    /// Rounds of each, interleaved in rotated order; the median counts.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
}

/// How an action reaches its store.
#[derive(Debug, Clone, Copy)]
enum Path {
    /// `Stores::enqueue`: the placement (rule, cache, directory) then the enqueue.
    Routed,
    /// `enqueue` on the store rendezvous hashing names: what routing costs is the difference.
    Direct,
}

struct Round {
    took: Duration,
    cpu: Option<Duration>,
}

async fn round(stores: &Stores, path: Path, run: &str, a: &StoresBenchArgs) -> Result<Round> {
    let cell = CellName::new("stripe.charge").expect("valid");
    let per_task = a.actions.div_ceil(a.concurrency);
    let cpu = MachineCpu::now();
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for task in 0..a.concurrency {
        let (stores, cell, run, per_scope) = (
            stores.clone(),
            cell.clone(),
            run.to_owned(),
            a.per_scope.max(1),
        );
        set.spawn(async move {
            for i in 0..per_task {
                let scope = format!("bench-{run}-{task}-{}", i / per_scope);
                let args =
                    serde_json::json!({"amount": 4200, "currency": "usd", "customer": "cus_bench"});
                let action =
                    NewAction::from_intent(&scope, format!("charge {i}"), cell.clone(), args);
                match path {
                    Path::Routed => {
                        stores.enqueue(&action, None).await?;
                    }
                    Path::Direct => {
                        let home: &Store = stores
                            .iter()
                            .nth(stores.hashed(&format!("scope:{scope}")))
                            .expect("a store")
                            .1;
                        enqueue(home.pool(), &action).await?;
                    }
                }
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(Round {
        took: t.elapsed(),
        cpu: cpu.and_then(|c| c.since()).map(|(busy, _)| busy),
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn stores_bench(a: StoresBenchArgs) -> Result<Vec<Figure>> {
    let pg = crate::services::Postgres::given_or_started(a.database_url.clone(), "idem-lab bench")
        .await?;
    let most = a.stores.iter().copied().max().unwrap_or(1).max(2);
    let mut all = vec![];
    for i in 0..most {
        let url = crate::demo::fresh_database(pg.url(), &format!("idem_bench_store_{i}")).await?;
        let store = Store::connect(&url, (a.concurrency + 2) as u32).await?;
        store.migrate().await?;
        all.push((format!("s{i}"), store));
    }
    let over = |n: usize| Stores::from_stores(all[..n].to_vec(), &BTreeMap::new());
    let n_actions = (a.actions.div_ceil(a.concurrency) * a.concurrency) as f64;
    // Warm every path (connections, prepared statements).
    for &n in &a.stores {
        round(&over(n)?, Path::Routed, &format!("warm{n}"), &a).await?;
    }
    round(&over(2)?, Path::Direct, "warmd", &a).await?;

    let mut rate: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let mut cpu: BTreeMap<usize, Vec<f64>> = BTreeMap::new();
    let (mut routed, mut direct) = (vec![], vec![]);
    // Each round runs every configuration once, in an order rotated by one per round, so
    // that no configuration always runs first or last (tables grow, caches warm).
    let mut jobs: Vec<Option<usize>> = a.stores.iter().map(|&n| Some(n)).collect();
    jobs.push(None); // the direct path, over 2 stores
    for r in 0..a.rounds.max(1) {
        let k = r % jobs.len();
        for job in jobs[k..].iter().chain(&jobs[..k]) {
            match *job {
                Some(n) => {
                    // A fresh Stores each time: its placement cache starts empty, as a new
                    // process's does.
                    let x = round(&over(n)?, Path::Routed, &format!("r{r}n{n}"), &a).await?;
                    rate.entry(n)
                        .or_default()
                        .push(n_actions / x.took.as_secs_f64());
                    if let Some(c) = x.cpu {
                        cpu.entry(n)
                            .or_default()
                            .push(c.as_secs_f64() * 1000.0 / n_actions);
                    }
                    if n == 2 {
                        routed.push(n_actions / x.took.as_secs_f64());
                    }
                }
                None => {
                    let d = round(&over(2)?, Path::Direct, &format!("r{r}d"), &a).await?;
                    direct.push(n_actions / d.took.as_secs_f64());
                }
            }
        }
    }
    if routed.is_empty() {
        anyhow::bail!("--stores must include 2 (the routing figure compares over 2 stores)");
    }
    let mut figures = vec![];
    let one_rate = rate.get(&1).map(|v| median(v.clone()));
    let one_cpu = cpu.get(&1).map(|v| median(v.clone()));
    for (&n, v) in &rate {
        let name = format!(
            "enqueue over {n} store(s), {} actions per scope, {} enqueuers",
            a.per_scope, a.concurrency
        );
        let value = median(v.clone());
        figures.push(match one_rate {
            Some(b) if n != 1 => {
                Figure::versus(name, value, "actions/s", "the same over 1 store".into(), b)
            }
            _ => Figure::alone(name, value, "actions/s"),
        });
        if let Some(c) = cpu.get(&n) {
            let name = format!("machine CPU per enqueued action over {n} store(s)");
            let value = median(c.clone());
            figures.push(match one_cpu {
                Some(b) if n != 1 => {
                    Figure::versus(name, value, "ms", "the same over 1 store".into(), b)
                }
                _ => Figure::alone(name, value, "ms"),
            });
        }
    }
    figures.push(Figure::versus(
        format!(
            "enqueue routed by scope over 2 stores (placement recorded at each scope's first use), {} actions per scope",
            a.per_scope
        ),
        median(routed),
        "actions/s",
        "the same intents enqueued straight to their hashed store, no placement".into(),
        median(direct),
    ));
    Ok(figures)
}
