//! apalis + apalis-postgres (Rust) running the peer workload of `idem-lab bench peers`:
//! N no-op tasks pushed up front, then one worker processes them with the given
//! concurrency until all are done; prints one JSON object with the time processing took.
//! At-least-once: a task whose worker died is re-enqueued when its lease is orphaned;
//! nothing is written ahead of the call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use apalis::prelude::*;
use apalis_postgres::{Config, PgPool, PostgresStorage};
use futures::stream::{self, StreamExt};
use tokio::sync::Notify;

/// The versions pinned in Cargo.toml.
const VERSION: &str = "1.0.0 (apalis-postgres 1.0.0)";

struct Done {
    count: AtomicU64,
    want: u64,
    all: Notify,
}

async fn noop(_n: u64, done: Data<Arc<Done>>) -> Result<(), BoxDynError> {
    if done.count.fetch_add(1, Ordering::SeqCst) + 1 == done.want {
        done.all.notify_one();
    }
    Ok(())
}

/// The machine's busy CPU time in USER_HZ ticks (user + nice + system + irq + softirq),
/// from /proc/stat; 0 where it is missing.
fn busy_ticks() -> u64 {
    let Ok(stat) = std::fs::read_to_string("/proc/stat") else {
        return 0;
    };
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    [0, 1, 2, 5, 6].iter().filter_map(|&i| fields.get(i)).sum()
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

#[tokio::main]
async fn main() -> Result<(), BoxDynError> {
    let url = arg("-database-url")
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .ok_or("-database-url or DATABASE_URL")?;
    let jobs: u64 = arg("-jobs").unwrap_or_else(|| "20000".into()).parse()?;
    let workers: usize = arg("-workers").unwrap_or_else(|| "32".into()).parse()?;

    let pool = PgPool::connect(&url).await?;
    PostgresStorage::setup(&pool).await?;
    // One fetch fills every slot; an empty fetch parks until a task finishes.
    let config = Config::default().queue("idem-peer").batch_size(workers);
    let mut backend = PostgresStorage::new(&pool).with_config(config);
    let mut tasks = stream::iter(0..jobs).map(Task::new);
    backend.push_all(&mut tasks).await?;

    let done = Arc::new(Done {
        count: AtomicU64::new(0),
        want: jobs,
        all: Notify::new(),
    });
    let cpu0 = busy_ticks();
    let started = Instant::now();
    let worker = WorkerBuilder::new("idem-peer")
        .backend(backend)
        .data(done.clone())
        .concurrency(workers)
        .build(noop);
    let running = tokio::spawn(worker.run());
    if jobs > 0 {
        done.all.notified().await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_seconds = (busy_ticks() - cpu0) as f64 / 100.0;
    running.abort();
    println!(
        "{}",
        serde_json::json!({
            "peer": "apalis",
            "version": VERSION,
            "jobs": jobs,
            "seconds": seconds,
            "cpu_seconds": cpu_seconds,
            "semantics": "at-least-once",
            "config": format!("concurrency {workers}, batch_size {workers}, tasks kept (status Done)"),
        })
    );
    Ok(())
}
