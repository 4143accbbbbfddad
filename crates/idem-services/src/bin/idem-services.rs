//! `idem-services up`: start the services idem's test suite needs (a PostgreSQL cluster of
//! its own, Apache Kafka), write where they are to an env file, and keep them until the
//! parent process ends. `scripts/test.sh` uses it so that every test binary shares one
//! PostgreSQL and one broker.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use idem_services::{KafkaCluster, KafkaOptions, LocalPostgres, PostgresOptions};

#[derive(Parser, Debug)]
#[command(
    name = "idem-services",
    about = "Local PostgreSQL and Apache Kafka for idem's tests"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Start the services and keep them until --parent exits.
    Up {
        /// Start PostgreSQL (skipped when DATABASE_URL is set).
        #[arg(long)]
        postgres: bool,
        /// Start Apache Kafka with this many nodes (0: none; skipped when KAFKA_BOOTSTRAP is set).
        #[arg(long, default_value_t = 0)]
        kafka_nodes: usize,
        /// Durable PostgreSQL settings (default: fsync off, for test speed).
        #[arg(long)]
        durable: bool,
        /// Where to write `export NAME=value` lines once everything is up.
        #[arg(long)]
        env_file: PathBuf,
        /// Stop the services once this process is gone.
        #[arg(long)]
        parent: u32,
    },
}

fn main() {
    let Cli {
        command:
            Cmd::Up {
                postgres,
                kafka_nodes,
                durable,
                env_file,
                parent,
            },
    } = Cli::parse();
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty());
    let dir = idem_services::run_dir("services").unwrap_or_else(|e| fail(&e));
    // Killed instead of seeing the parent go, this process drops nothing: the watchdogs
    // stop the servers and this one removes their files.
    idem_services::remove_when_process_exits(&dir);
    let mut env = vec![];
    let pg = (postgres && !set("DATABASE_URL")).then(|| {
        let opts = PostgresOptions {
            fast_unsafe: !durable,
            ..PostgresOptions::default()
        };
        let pg = LocalPostgres::start(&dir.join("pg"), &opts).unwrap_or_else(|e| fail(&e));
        eprintln!(
            "idem-services: PostgreSQL at {} (data {})",
            pg.url(),
            pg.data_dir().display()
        );
        env.push(("DATABASE_URL", pg.url()));
        pg
    });
    let kafka = (kafka_nodes > 0 && !set("KAFKA_BOOTSTRAP")).then(|| {
        let k = KafkaCluster::start(&dir.join("kafka"), &KafkaOptions::nodes(kafka_nodes))
            .unwrap_or_else(|e| fail(&e));
        eprintln!(
            "idem-services: {} at {} (logs {})",
            k.describe(),
            k.bootstrap(),
            k.dir().display()
        );
        env.push(("KAFKA_BOOTSTRAP", k.bootstrap()));
        env.push(("IDEM_KAFKA_BROKER", k.describe()));
        k
    });
    let text: String = env
        .iter()
        .map(|(k, v)| format!("export {k}='{v}'\n"))
        .collect();
    let tmp = env_file.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::rename(&tmp, &env_file))
        .unwrap_or_else(|e| fail(&format!("write {}: {e}", env_file.display())));
    let proc_dir = PathBuf::from(format!("/proc/{parent}"));
    while proc_dir.exists() {
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(kafka);
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}

fn fail(e: &dyn std::fmt::Display) -> ! {
    eprintln!("idem-services: {e}");
    std::process::exit(1);
}
