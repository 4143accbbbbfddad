//! The soak's relay and worker processes: real `idem relay` and `idem worker` processes,
//! killed with SIGKILL at random and restarted, as a process supervisor would.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;
use serde::Serialize;
use tokio::process::{Child, Command};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Relay,
    Worker,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Relay => "relay",
            Role::Worker => "worker",
        }
    }
}

/// How to start each role.
pub(crate) struct Spec {
    pub exe: PathBuf,
    pub dir: PathBuf,
    pub relay_args: Vec<String>,
    pub worker_args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// How long a killed or exited process stays down before it is started again.
    pub restart_after: Duration,
}

struct Member {
    role: Role,
    slot: usize,
    generation: usize,
    child: Option<Child>,
    /// When a process that is down is started again.
    restart_at: Option<Instant>,
}

/// What happened to the fleet.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct FleetStats {
    pub relays: usize,
    pub workers: usize,
    pub relays_killed: usize,
    pub workers_killed: usize,
    /// Processes that exited on their own (a crash or an error exit), restarted as well.
    pub relay_exits: usize,
    pub worker_exits: usize,
    pub exit_statuses: Vec<String>,
    pub starts: usize,
}

pub(crate) struct Fleet {
    spec: Spec,
    members: Vec<Member>,
    pub stats: FleetStats,
}

impl Fleet {
    pub(crate) fn start(spec: Spec, relays: usize, workers: usize) -> Result<Self> {
        let members = (0..relays)
            .map(|slot| (Role::Relay, slot))
            .chain((0..workers).map(|slot| (Role::Worker, slot)))
            .map(|(role, slot)| Member {
                role,
                slot,
                generation: 0,
                child: None,
                restart_at: Some(Instant::now()),
            })
            .collect();
        let mut fleet = Self {
            spec,
            members,
            stats: FleetStats {
                relays,
                workers,
                ..FleetStats::default()
            },
        };
        fleet.tick()?;
        Ok(fleet)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let (role, slot, generation) = {
            let m = &self.members[i];
            (m.role, m.slot, m.generation)
        };
        let log_path = self.spec.dir.join(format!("{}-{slot}.log", role.name()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("open {}", log_path.display()))?;
        let mut cmd = Command::new(&self.spec.exe);
        match role {
            Role::Relay => cmd.arg("relay").args(&self.spec.relay_args),
            Role::Worker => cmd
                .arg("worker")
                .args(&self.spec.worker_args)
                .args(["--id", &format!("chaos-worker-{slot}.{generation}")])
                .args(["--instance-id", &format!("chaos-worker-{slot}")]),
        };
        // Only what the spec says: not the harness's own DATABASE_URL, broker or exporter.
        for var in [
            "DATABASE_URL",
            "KAFKA_BOOTSTRAP",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ] {
            cmd.env_remove(var);
        }
        let child = cmd
            .envs(self.spec.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {} {}", self.spec.exe.display(), role.name()))?;
        let m = &mut self.members[i];
        m.child = Some(child);
        m.restart_at = None;
        m.generation += 1;
        self.stats.starts += 1;
        Ok(())
    }

    /// Reap processes that exited on their own and start those whose downtime is over.
    pub(crate) fn tick(&mut self) -> Result<()> {
        let restart_after = self.spec.restart_after;
        for i in 0..self.members.len() {
            let m = &mut self.members[i];
            if let Some(child) = m.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    m.child = None;
                    m.restart_at = Some(Instant::now() + restart_after);
                    match m.role {
                        Role::Relay => self.stats.relay_exits += 1,
                        Role::Worker => self.stats.worker_exits += 1,
                    }
                    self.stats.exit_statuses.push(format!(
                        "{}-{}: {status}",
                        m.role.name(),
                        m.slot
                    ));
                }
            }
            if m.child.is_none() && m.restart_at.is_some_and(|t| Instant::now() >= t) {
                self.spawn(i)?;
            }
        }
        Ok(())
    }

    /// SIGKILL one running process of `role` (any role: `None`), chosen at random; it is
    /// started again after the downtime. Returns what was killed.
    pub(crate) async fn kill_random(
        &mut self,
        rng: &mut impl Rng,
        role: Option<Role>,
    ) -> Option<String> {
        let live: Vec<usize> = (0..self.members.len())
            .filter(|&i| self.members[i].child.is_some())
            .filter(|&i| role.is_none_or(|r| self.members[i].role == r))
            .collect();
        if live.is_empty() {
            return None;
        }
        let i = live[rng.gen_range(0..live.len())];
        let m = &mut self.members[i];
        let mut child = m.child.take()?;
        let _ = child.kill().await; // SIGKILL, then reaped
        m.restart_at = Some(Instant::now() + self.spec.restart_after);
        match m.role {
            Role::Relay => self.stats.relays_killed += 1,
            Role::Worker => self.stats.workers_killed += 1,
        }
        Some(format!("{}-{}", m.role.name(), m.slot))
    }

    /// SIGTERM every process (they finish in-flight work) and wait up to `grace`.
    pub(crate) async fn stop(mut self, grace: Duration) {
        for m in &self.members {
            if let Some(pid) = m.child.as_ref().and_then(|c| c.id()) {
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            }
        }
        let deadline = Instant::now() + grace;
        for m in &mut self.members {
            if let Some(child) = m.child.as_mut() {
                let left = deadline.saturating_duration_since(Instant::now());
                if tokio::time::timeout(left, child.wait()).await.is_err() {
                    let _ = child.kill().await;
                }
            }
        }
    }
}
