//! `idem-lab bench peers`: the same workload — N no-op jobs inserted up front, then
//! processed with the same number in flight — through idem's direct-Postgres worker and
//! through peer job queues, on the same PostgreSQL server, in interleaved rounds (median of
//! each). Peers are built from their registries into a project-local place outside the
//! product's workspace (`~/.cache/idem-peers`, or `IDEM_PEERS_DIR`): River (Go) from the
//! Go module proxy, apalis + apalis-postgres (Rust) from crates.io, and procrastinate and
//! DBOS (Python) from PyPI into venvs there, their sources in `crates/idem-lab/peers/<name>`.
//! DBOS runs fewer jobs than the others (its rate is ~200/s here: 20,000 would take
//! minutes a round); every figure is a rate, so the ratios compare.
//!
//! The peers are at-least-once queues: they keep no partner key, write nothing ahead of the
//! call and reconcile nothing, so the ratio says what exactly-once costs here, not a like
//! for like.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use idem_store::Store;
use serde::Deserialize;

use super::{rate, Figure};

#[derive(Args, Debug)]
pub struct PeersArgs {
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// No-op jobs (actions) each system processes per round.
    #[arg(long, default_value_t = 20_000)]
    actions: i64,
    /// Jobs in flight at once, for every system.
    #[arg(long, default_value_t = 32)]
    in_flight: usize,
    /// Interleaved rounds; each figure is the median.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Peers to run beside idem.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "river,apalis,procrastinate,dbos"
    )]
    peers: Vec<Peer>,
}

/// A peer job queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// River (github.com/riverqueue/river), Go.
    River,
    /// apalis + apalis-postgres, Rust.
    Apalis,
    /// procrastinate, Python.
    Procrastinate,
    /// DBOS Transact (durable workflows), Python.
    Dbos,
}

impl Peer {
    fn name(self) -> &'static str {
        match self {
            Peer::River => "river",
            Peer::Apalis => "apalis",
            Peer::Procrastinate => "procrastinate",
            Peer::Dbos => "dbos",
        }
    }

    /// Jobs this peer runs when asked for `jobs`.
    fn jobs(self, jobs: i64) -> i64 {
        match self {
            Peer::Dbos => jobs.min(2_000),
            _ => jobs,
        }
    }
}

/// What a peer's program prints: one JSON object.
#[derive(Debug, Deserialize)]
struct PeerRun {
    version: String,
    seconds: f64,
    /// The machine's busy CPU time while the jobs ran (from /proc/stat; absent off Linux).
    #[serde(default)]
    cpu_seconds: Option<f64>,
    semantics: String,
    /// The peer's settings that bear on throughput.
    config: String,
}

fn peers_dir() -> PathBuf {
    std::env::var_os("IDEM_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
                .join(".cache/idem-peers")
        })
}

/// How to run a built peer: a program and the arguments before the workload's.
#[derive(Debug)]
struct Runnable {
    program: PathBuf,
    args: Vec<PathBuf>,
}

/// Build `peer` if its build is missing or older than its source; how to run it.
async fn build(peer: Peer) -> Result<Runnable> {
    let dir = peers_dir();
    std::fs::create_dir_all(&dir)?;
    let source = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("peers")
        .join(peer.name());
    let newer = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let fresh = |built: &Path, sources: &[&str]| {
        let source_time = sources.iter().filter_map(|f| newer(&source.join(f))).max();
        built.exists() && newer(built) >= source_time
    };
    let done = |status: std::process::ExitStatus| {
        if status.success() {
            Ok(())
        } else {
            Err(anyhow::anyhow!(
                "building the {} peer failed: {status}",
                peer.name()
            ))
        }
    };
    match peer {
        Peer::River => {
            let bin = dir.join("river-peer");
            if !fresh(&bin, &["main.go", "go.mod", "go.sum"]) {
                eprintln!("building the river peer into {}", bin.display());
                done(
                    tokio::process::Command::new("go")
                        .args(["build", "-mod=readonly", "-o"])
                        .arg(&bin)
                        .arg(".")
                        .current_dir(&source)
                        .status()
                        .await
                        .context("running `go build` for the River peer (is Go installed?)")?,
                )?;
            }
            Ok(Runnable {
                program: bin,
                args: vec![],
            })
        }
        Peer::Apalis => {
            let target = dir.join("apalis-target");
            let bin = target.join("release/idem-apalis-peer");
            if !fresh(&bin, &["src/main.rs", "Cargo.toml", "Cargo.lock"]) {
                eprintln!("building the apalis peer into {}", target.display());
                done(
                    tokio::process::Command::new("cargo")
                        .args(["build", "--release", "--locked"])
                        // Its own target directory, never idem's.
                        .env("CARGO_TARGET_DIR", &target)
                        .current_dir(&source)
                        .status()
                        .await
                        .context("running `cargo build` for the apalis peer")?,
                )?;
            }
            Ok(Runnable {
                program: bin,
                args: vec![],
            })
        }
        Peer::Procrastinate | Peer::Dbos => {
            let venv = dir.join(format!("{}-venv", peer.name()));
            let python = venv.join("bin/python");
            let marker = venv.join("installed");
            if !fresh(&marker, &["requirements.txt"]) {
                eprintln!(
                    "installing the {} peer into {}",
                    peer.name(),
                    venv.display()
                );
                done(
                    tokio::process::Command::new("python3")
                        .args(["-m", "venv"])
                        .arg(&venv)
                        .status()
                        .await
                        .with_context(|| {
                            format!(
                                "creating the {} peer's venv (is python3 there?)",
                                peer.name()
                            )
                        })?,
                )?;
                done(
                    tokio::process::Command::new(&python)
                        .args(["-m", "pip", "install", "-q", "-r"])
                        .arg(source.join("requirements.txt"))
                        .status()
                        .await?,
                )?;
                std::fs::write(&marker, b"")?;
            }
            Ok(Runnable {
                program: python,
                args: vec![source.join("peer.py")],
            })
        }
    }
}

async fn run_peer(peer: &Runnable, url: &str, actions: i64, in_flight: usize) -> Result<PeerRun> {
    let bin = &peer.program;
    let out = tokio::process::Command::new(bin)
        .args(&peer.args)
        .args(["-database-url", url])
        .args(["-jobs", &actions.to_string()])
        .args(["-workers", &in_flight.to_string()])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "{} printed no result: {}",
            bin.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub async fn peers(args: PeersArgs) -> Result<Vec<Figure>> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let mut bins = vec![];
    for &peer in &args.peers {
        bins.push((peer, build(peer).await?));
    }
    let mut idem_rates = vec![];
    let mut peer_rates: Vec<Vec<f64>> = vec![vec![]; bins.len()];
    let mut idem_cpu = vec![];
    let mut peer_cpu: Vec<Vec<f64>> = vec![vec![]; bins.len()];
    let mut versions = vec![String::new(); bins.len()];
    let mut semantics = vec![String::new(); bins.len()];
    let mut configs = vec![String::new(); bins.len()];
    for round in 1..=args.rounds {
        let url = crate::demo::fresh_database(pg.url(), "idem_bench_peers").await?;
        let store = Store::connect(&url, 16).await?;
        store.migrate().await?;
        let run = super::pg_worker::idem_noop_run(&store, args.actions, 64, args.in_flight).await?;
        store.pool().close().await;
        idem_rates.push(rate(args.actions, run.elapsed));
        if let Some(ms) = run.cpu_ms_per(args.actions) {
            idem_cpu.push(ms);
        }
        eprintln!(
            "round {round}: idem {:.0}/s, {:.3} ms CPU/action",
            rate(args.actions, run.elapsed),
            run.cpu_ms_per(args.actions).unwrap_or(f64::NAN)
        );
        for (i, (peer, bin)) in bins.iter().enumerate() {
            let url = crate::demo::fresh_database(pg.url(), &format!("idem_bench_{}", peer.name()))
                .await?;
            // sqlx's own URL parameters mean nothing to the peers' drivers.
            let plain = format!("{}?sslmode=disable", url.split('?').next().unwrap_or(&url));
            let jobs = peer.jobs(args.actions);
            let r = run_peer(bin, &plain, jobs, args.in_flight).await?;
            let per_second = rate(jobs, Duration::from_secs_f64(r.seconds));
            let cpu_ms = r.cpu_seconds.map(|c| c * 1000.0 / jobs.max(1) as f64);
            eprintln!(
                "round {round}: {} {per_second:.0}/s, {:.3} ms CPU/job",
                peer.name(),
                cpu_ms.unwrap_or(f64::NAN)
            );
            peer_rates[i].push(per_second);
            if let Some(ms) = cpu_ms {
                peer_cpu[i].push(ms);
            }
            versions[i] = r.version;
            semantics[i] = r.semantics;
            configs[i] = r.config;
        }
    }
    let idem = median(idem_rates);
    let mut figures = vec![Figure::alone(
        format!(
            "peers: idem direct-Postgres worker, exactly-once, no-op, {} actions, {} in flight (median of {})",
            args.actions, args.in_flight, args.rounds
        ),
        idem,
        "actions/s",
    )];
    for (i, (peer, _)) in bins.iter().enumerate() {
        figures.push(Figure::versus(
            format!(
                "peers: idem vs {}, the same workload and server (idem actions/s; ratio idem / peer)",
                peer.name()
            ),
            idem,
            "actions/s",
            format!(
                "{} {} ({}; {}), {} jobs, median of {}",
                peer.name(),
                versions[i],
                semantics[i],
                configs[i],
                peer.jobs(args.actions),
                args.rounds
            ),
            median(peer_rates[i].clone()),
        ));
        if !idem_cpu.is_empty() && !peer_cpu[i].is_empty() {
            figures.push(Figure::versus(
                format!(
                    "peers: CPU per action, machine-wide, idem vs {} (ms; ratio idem / peer, lower is cheaper)",
                    peer.name()
                ),
                median(idem_cpu.clone()),
                "ms/action",
                format!("{} CPU per job, the same runs", peer.name()),
                median(peer_cpu[i].clone()),
            ));
        }
    }
    Ok(figures)
}
