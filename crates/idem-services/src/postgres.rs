//! A PostgreSQL cluster of our own: Debian's server binaries (installed with apt-get when
//! missing), `initdb` into a directory of ours with trust auth, started on a free port of
//! 127.0.0.1. Debian's packaged cluster (password auth on TCP, port 5432) is never used.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::process::{is_root, run, watchdog};
use crate::{free_port, io, Result, ServiceError};

/// How the cluster is set up.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Trade durability for speed (`fsync`, `synchronous_commit` and `full_page_writes`
    /// off): for test suites, never for benchmarks. A crash of the server process alone
    /// (`pg_ctl stop -m immediate`) still loses nothing the OS has been handed.
    pub fast_unsafe: bool,
    pub max_connections: u32,
    /// Install Debian's `postgresql` package when no server binaries are found.
    pub install_if_missing: bool,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            fast_unsafe: false,
            max_connections: 200,
            install_if_missing: true,
        }
    }
}

/// A running cluster; stopped (immediately) when dropped.
#[derive(Debug)]
pub struct LocalPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    options: PostgresOptions,
    /// initdb and postgres refuse to run as root: run them as `postgres` then.
    as_postgres: bool,
}

/// Where `initdb` and `pg_ctl` are: `PG_BIN`, PATH, then the newest
/// `/usr/lib/postgresql/*/bin` (Debian keeps them off PATH).
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        return d.join("initdb").is_file().then_some(d);
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(d) = on_path
        .into_iter()
        .find(|d| d.join("initdb").is_file() && d.join("pg_ctl").is_file())
    {
        return Some(d);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, b)| b)
}

/// `apt-get install postgresql` (as root, or through `sudo -n`).
fn install() -> Result<()> {
    eprintln!("idem-services: no PostgreSQL server binaries found; installing Debian's postgresql package");
    let sudo: &[&str] = if is_root() { &[] } else { &["sudo", "-n"] };
    for args in [
        &["apt-get", "update", "-q"][..],
        &["apt-get", "install", "-y", "-q", "postgresql"][..],
    ] {
        let argv: Vec<&str> = sudo.iter().chain(args).copied().collect();
        let status = Command::new(argv[0])
            .args(&argv[1..])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .map_err(io(format!("run {}", argv.join(" "))))?;
        if !status.success() {
            return Err(ServiceError::Missing(format!(
                "`{}` failed ({status}): install PostgreSQL's server (Debian: postgresql) or set DATABASE_URL",
                argv.join(" ")
            )));
        }
    }
    Ok(())
}

impl LocalPostgres {
    /// initdb into `data` and start the server on a free port of 127.0.0.1.
    pub fn start(data: &Path, options: &PostgresOptions) -> Result<Self> {
        let bin = match bin_dir() {
            Some(b) => b,
            None if options.install_if_missing => {
                install()?;
                bin_dir().ok_or_else(|| {
                    ServiceError::Missing(
                        "installed postgresql but found no initdb under /usr/lib/postgresql".into(),
                    )
                })?
            }
            None => {
                return Err(ServiceError::Missing(
                    "no PostgreSQL server binaries (initdb) on PATH, in PG_BIN or under \
                     /usr/lib/postgresql: install PostgreSQL or set DATABASE_URL"
                        .into(),
                ))
            }
        };
        std::fs::create_dir_all(data).map_err(io(format!("create {}", data.display())))?;
        let pg = Self {
            bin,
            data: data.to_path_buf(),
            port: free_port()?,
            options: options.clone(),
            as_postgres: is_root(),
        };
        if pg.as_postgres {
            run(
                Path::new("chown"),
                &["-R", "postgres:postgres", &pg.data.to_string_lossy()],
                false,
            )?;
        }
        let data_arg = pg.data.to_string_lossy().into_owned();
        pg.tool(
            "initdb",
            &[
                "-D",
                &data_arg,
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        pg.start_server()?;
        watchdog(&format!(
            "kill -QUIT $(head -n 1 '{}/postmaster.pid' 2>/dev/null) 2>/dev/null",
            pg.data.display()
        ));
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust auth: no password).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Crash the server (`pg_ctl stop -m immediate`: no checkpoint, recovery from WAL on
    /// start), stay down for `downtime`, start it again on the same port.
    pub fn crash_and_restart(&self, downtime: Duration) -> Result<()> {
        self.stop_server()?;
        std::thread::sleep(downtime);
        self.start_server()
    }

    fn start_server(&self) -> Result<()> {
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections={}",
            self.port,
            self.data.display(),
            self.options.max_connections
        );
        if self.options.fast_unsafe {
            opts.push_str(" -c fsync=off -c synchronous_commit=off -c full_page_writes=off");
        }
        let log = self.data.join("server.log");
        let (data, log_arg) = (self.data.to_string_lossy(), log.to_string_lossy());
        self.tool(
            "pg_ctl",
            &[
                "-D", &data, "-o", &opts, "-l", &log_arg, "-w", "-t", "60", "start",
            ],
        )
        .map_err(|e| match e {
            // pg_ctl only says "examine the log": say what the log says.
            ServiceError::Tool {
                tool,
                status,
                output,
            } => ServiceError::Tool {
                tool,
                status,
                output: format!(
                    "{output}\n{}: {}",
                    log.display(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                ),
            },
            e => e,
        })
    }

    fn stop_server(&self) -> Result<()> {
        let data = self.data.to_string_lossy();
        self.tool("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "stop"])
    }

    fn tool(&self, name: &str, args: &[&str]) -> Result<()> {
        run(&self.bin.join(name), args, self.as_postgres)
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        let _ = self.stop_server();
    }
}
