//! `idem-lab bench` without a subcommand: every benchmark, each in a process of its own (the
//! same binary), one JSON array of figures; optionally the BENCHMARKS.md table.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;

#[derive(Args, Debug)]
pub struct SuiteArgs {
    /// Print the figures as one JSON array (what `idem-lab bench` prints anyway; accepted so
    /// that `idem-lab bench --json` reads as it does).
    #[arg(long)]
    pub json: bool,
    /// Also write the figures as a Markdown table, with the machine they ran on.
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// PostgreSQL server for every benchmark; without it the suite starts one of its own.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Kafka bootstrap; without it the suite starts a one-node Apache Kafka of its own that
    /// every Kafka benchmark shares (each on fresh topics).
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub bootstrap: Option<String>,
    /// Also run `idem-lab bench inbox-scale --rows N` (10,000,000 takes tens of minutes).
    #[arg(long)]
    pub inbox_rows: Option<u64>,
}

/// The benchmarks, as `idem-lab bench` arguments.
const RUNS: &[&[&str]] = &[
    &["enqueue"],
    &["relay"],
    &["kafka-worker"],
    &["kafka-worker", "--per-partition-batch", "32"],
    &["kafka-path"],
    &["pg-worker"],
    &["peers"],
    &["latency", "--transport", "postgres"],
    &["latency", "--transport", "kafka", "--rates", "50,200"],
    &["scaling"],
    &["recovery"],
];

pub async fn suite(args: SuiteArgs) -> Result<Vec<serde_json::Value>> {
    let exe = std::env::current_exe().context("where is the idem binary")?;
    let pg =
        crate::services::Postgres::given_or_started(args.database_url.clone(), "idem-lab bench")
            .await?;
    let kafka = crate::services::Kafka::given_or_started(args.bootstrap.clone(), 1, None).await?;
    let mut figures = vec![];
    let mut failed = vec![];
    let inbox = args
        .inbox_rows
        .map(|n| vec!["inbox-scale".to_owned(), "--rows".to_owned(), n.to_string()]);
    let runs = RUNS
        .iter()
        .map(|r| r.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .chain(inbox);
    for run in runs {
        eprintln!("idem-lab bench {}", run.join(" "));
        let mut cmd = tokio::process::Command::new(&exe);
        cmd.arg("bench").args(&run);
        cmd.env("DATABASE_URL", pg.url())
            .env("KAFKA_BOOTSTRAP", kafka.bootstrap())
            .env("IDEM_KAFKA_BROKER", kafka.broker());
        let out = cmd.stderr(std::process::Stdio::inherit()).output().await?;
        if !out.status.success() {
            // Keep the other figures; fail at the end.
            failed.push(format!("idem-lab bench {} ({})", run.join(" "), out.status));
            continue;
        }
        let got: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout)
            .with_context(|| format!("idem-lab bench {} printed no JSON array", run.join(" ")))?;
        for mut f in got {
            f["command"] = format!("idem-lab bench {}", run.join(" ")).into();
            figures.push(f);
        }
    }
    if let Some(path) = &args.markdown {
        // The table is new; the notes people wrote under it (from its first `## ` heading
        // on) are kept.
        let notes = std::fs::read_to_string(path)
            .ok()
            .and_then(|old| old.find("\n## ").map(|at| old[at..].to_owned()))
            .unwrap_or_default();
        std::fs::write(path, markdown(&figures, kafka.broker()) + &notes)
            .with_context(|| format!("write {}", path.display()))?;
    }
    if !failed.is_empty() {
        println!("{}", serde_json::to_string_pretty(&figures)?);
        bail!("failed: {}", failed.join("; "));
    }
    Ok(figures)
}

fn first_line(path: &str, prefix: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()?.lines().find_map(|l| {
        l.starts_with(prefix)
            .then(|| l.split_once(':').map(|(_, v)| v.trim().to_owned()))
            .flatten()
    })
}

/// The machine: CPU model and count, memory, kernel.
fn machine() -> String {
    let cpu = first_line("/proc/cpuinfo", "model name").unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = first_line("/proc/meminfo", "MemTotal").unwrap_or_default();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "{cores} cores ({cpu}), {mem} memory, Linux {}",
        kernel.trim()
    )
}

fn num(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(x) if x >= 100.0 => format!("{x:.0}"),
        Some(x) if x >= 1.0 => format!("{x:.1}"),
        Some(x) => format!("{x:.3}"),
        None => "—".into(),
    }
}

fn markdown(figures: &[serde_json::Value], broker: &str) -> String {
    let mut s = String::from("# Benchmarks\n\n");
    let _ = writeln!(
        s,
        "Produced by `cargo run --release --bin idem-lab -- bench --json --markdown BENCHMARKS.md` \
         (each row's own command is in the last column; every ratio is against a baseline \
         measured in the same run, because these machines are noisy).\n\nMachine: {}.\n\
         PostgreSQL and the Kafka broker ({broker}) ran on the same machine.\n",
        machine()
    );
    s.push_str("| figure | value | unit | baseline | baseline value | ratio | command |\n");
    s.push_str("|---|---|---|---|---|---|---|\n");
    for f in figures {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | `{}` |",
            f["name"].as_str().unwrap_or(""),
            num(&f["value"]),
            f["unit"].as_str().unwrap_or(""),
            f["baseline"].as_str().unwrap_or("—"),
            num(&f["baseline_value"]),
            num(&f["ratio"]),
            f["command"].as_str().unwrap_or(""),
        );
    }
    s
}
