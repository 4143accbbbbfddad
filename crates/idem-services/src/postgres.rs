//! A PostgreSQL cluster of our own: Debian's server binaries (installed with apt-get when
//! missing), `initdb` into a directory of ours with trust auth, started on a free port of
//! 127.0.0.1. Debian's packaged cluster (password auth on TCP, port 5432) is never used.
//! A primary can have a streaming standby of its own ([`LocalPostgres::start_standby`]),
//! synchronous when the primary names it, to be promoted when the primary is killed.

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
    /// Commit only once this standby (its `application_name`) has the WAL:
    /// `synchronous_standby_names` with `synchronous_commit = on`. `None` for a lone server.
    pub synchronous_standby: Option<String>,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        Self {
            fast_unsafe: false,
            max_connections: 200,
            install_if_missing: true,
            synchronous_standby: None,
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
        // A PATH entry may hold links to a few of the tools (initdb, pg_ctl): the directory
        // they point into has the rest (pg_basebackup, postgres).
        let real = std::fs::canonicalize(d.join("initdb")).ok();
        return Some(
            real.and_then(|r| r.parent().map(Path::to_path_buf))
                .unwrap_or(d),
        );
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
        let pg = Self::prepare(data, options)?;
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
        pg.watch();
        Ok(pg)
    }

    /// A streaming standby of `primary` in `data` (`pg_basebackup` of the running primary,
    /// `standby.signal`, `primary_conninfo` naming it `application_name`), started on a
    /// port of its own: a hot standby, read-only until [`promote`](Self::promote).
    pub fn start_standby(
        primary: &LocalPostgres,
        data: &Path,
        application_name: &str,
    ) -> Result<Self> {
        let options = PostgresOptions {
            synchronous_standby: None,
            ..primary.options.clone()
        };
        let pg = Self::prepare(data, &options)?;
        let (data_arg, port) = (
            pg.data.to_string_lossy().into_owned(),
            primary.port.to_string(),
        );
        pg.tool(
            "pg_basebackup",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port,
                "-U",
                "postgres",
                "-D",
                &data_arg,
                "-X",
                "stream",
                "--no-sync",
            ],
        )?;
        let conf = format!(
            "\nprimary_conninfo = 'host=127.0.0.1 port={port} user=postgres application_name={application_name}'\n"
        );
        let auto = pg.data.join("postgresql.auto.conf");
        let mut text =
            std::fs::read_to_string(&auto).map_err(io(format!("read {}", auto.display())))?;
        text.push_str(&conf);
        std::fs::write(&auto, text).map_err(io(format!("write {}", auto.display())))?;
        let signal = pg.data.join("standby.signal");
        std::fs::write(&signal, "").map_err(io(format!("write {}", signal.display())))?;
        if pg.as_postgres {
            run(
                Path::new("chown"),
                &["-R", "postgres:postgres", &data_arg],
                false,
            )?;
        }
        pg.start_server()?;
        pg.watch();
        Ok(pg)
    }

    /// `pg_ctl promote`: this standby becomes a primary (waits until it accepts writes).
    pub fn promote(&self) -> Result<()> {
        let data = self.data.to_string_lossy();
        self.tool("pg_ctl", &["-D", &data, "-w", "-t", "60", "promote"])
    }

    /// SIGKILL the postmaster, as a machine that dies would: no shutdown, clients cut
    /// off. Its children exit when they notice; the data directory keeps what was flushed.
    pub fn kill(&self) -> Result<()> {
        let pid_file = self.data.join("postmaster.pid");
        let text = std::fs::read_to_string(&pid_file)
            .map_err(io(format!("read {}", pid_file.display())))?;
        let pid = text.lines().next().unwrap_or_default().trim().to_owned();
        run(Path::new("kill"), &["-KILL", &pid], false)?;
        // The backends notice the postmaster is gone and exit; wait until none listens.
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Whether this server answers on its port.
    pub fn is_up(&self) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok()
    }

    fn watch(&self) {
        watchdog(&format!(
            "kill -QUIT $(head -n 1 '{}/postmaster.pid' 2>/dev/null) 2>/dev/null",
            self.data.display()
        ));
    }

    /// Server binaries found (installed if allowed), the data directory made and owned.
    fn prepare(data: &Path, options: &PostgresOptions) -> Result<Self> {
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
            run(
                Path::new("chmod"),
                &["0700", &pg.data.to_string_lossy()],
                false,
            )?;
        }
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
        if let Some(name) = &self.options.synchronous_standby {
            opts.push_str(&format!(
                " -c synchronous_standby_names={name} -c synchronous_commit=on"
            ));
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
