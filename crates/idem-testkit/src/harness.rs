//! What idem's tests share instead of copying: a worker under test timings, waiting for an
//! action's state, and `idem` processes that die with the test.

use std::process::Command;
use std::time::Duration;

use idem_core::{ActionId, State};
use idem_store::{inbox, Store};
use idem_worker::{Worker, WorkerConfig};

/// Worker settings for tests: polls and sweeps every 50 ms, 8 calls at once, batches of
/// 16, claims from the outbox (the direct Postgres transport); approvals last an hour;
/// leases 10 s with heartbeats (a cell with a shorter call timeout keeps its own).
pub fn worker_config(id: &str) -> WorkerConfig {
    WorkerConfig {
        id: id.into(),
        concurrency: 8,
        batch: 16,
        poll_interval: Duration::from_millis(50),
        sweep_interval: Duration::from_millis(50),
        claim_outbox: true,
        approval_ttl: Duration::from_secs(3600),
        stranded_after: None,
        lease: Duration::from_secs(10),
        ..WorkerConfig::default()
    }
}

/// A worker on `store` running `cells` with [`worker_config`].
pub fn worker(store: &Store, cells: idem_cells::Registry, id: &str) -> Worker {
    Worker::new(store.clone(), cells, worker_config(id))
}

/// Poll `id` until `done` holds for its row (every 50 ms), and return the row; panic with
/// the last state after `limit`.
pub async fn wait_until(
    store: &Store,
    id: ActionId,
    limit: Duration,
    done: impl Fn(&inbox::ActionRow) -> bool,
) -> inbox::ActionRow {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let row = inbox::get(store.pool(), id)
            .await
            .expect("read the action")
            .unwrap_or_else(|| panic!("action {id} is not in the inbox"));
        if done(&row) {
            return row;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "action {id} still {:?} after {limit:?}",
            row.state
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until `id` is in `state`.
pub async fn wait_for(
    store: &Store,
    id: ActionId,
    state: State,
    limit: Duration,
) -> inbox::ActionRow {
    wait_until(store, id, limit, |r| r.state == state).await
}

/// Wait until every one of `ids` is settled (a final state).
pub async fn wait_settled(store: &Store, ids: &[ActionId], limit: Duration) {
    for id in ids {
        wait_until(store, *id, limit, |r| r.state.is_settled()).await;
    }
}

/// A child process killed (SIGKILL) and reaped when the guard is dropped, so a failing
/// test leaves no worker behind.
#[derive(Debug)]
pub struct ChildGuard(pub std::process::Child);

impl ChildGuard {
    /// Start `cmd`.
    pub fn spawn(cmd: &mut Command) -> Self {
        Self(cmd.spawn().expect("spawn the child process"))
    }

    /// `kill -9` now and reap it (a crash, as the fault tests mean it).
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `idem-lab` binary beside `idem_bin` (a test's `env!("CARGO_BIN_EXE_idem")`). It is
/// another package's binary, so cargo names it to that package's tests only; a workspace
/// build (`cargo test --workspace`, `scripts/test.sh`) puts both in one directory.
pub fn lab_binary(idem_bin: &str) -> std::path::PathBuf {
    let lab = std::path::Path::new(idem_bin)
        .with_file_name(format!("idem-lab{}", std::env::consts::EXE_SUFFIX));
    assert!(
        lab.is_file(),
        "{} is not there: build the lab too (cargo build --bin idem-lab) or test the workspace",
        lab.display()
    );
    lab
}

/// `idem ARGS` from `bin` (a test's `env!("CARGO_BIN_EXE_idem")`), quiet unless it fails,
/// as a guarded child.
pub fn spawn_idem(bin: &str, args: &[&str], env: &[(&str, &str)]) -> ChildGuard {
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null());
    ChildGuard::spawn(&mut cmd)
}
