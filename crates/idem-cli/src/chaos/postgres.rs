//! A PostgreSQL cluster of the soak's own (initdb into the run directory, a free port), so
//! the soak can crash and restart it without touching anyone else's database.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// The running cluster; stopped (immediately) on drop.
pub(crate) struct OwnPostgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    /// initdb and postgres refuse to run as root: run them as `postgres` then.
    as_postgres: bool,
}

/// Where `initdb` and `pg_ctl` are: PATH, then the newest `/usr/lib/postgresql/*/bin`.
fn bin_dir() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    if let Some(d) = on_path.into_iter().find(|d| d.join("initdb").is_file()) {
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

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

impl OwnPostgres {
    /// initdb into `dir/pg` and start the server on a free local port.
    pub(crate) fn start(dir: &Path) -> Result<Self> {
        let bin = bin_dir().context(
            "no PostgreSQL server binaries (initdb) on PATH or under /usr/lib/postgresql: \
             install PostgreSQL, or give --database-url with --postgres-restart-cmd",
        )?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let data = dir.join("pg");
        std::fs::create_dir_all(&data)?;
        let pg = Self {
            bin,
            data,
            port,
            as_postgres: is_root(),
        };
        if pg.as_postgres {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&pg.data)
                .status()?
                .success();
            if !ok {
                bail!("cannot hand {} to the postgres user", pg.data.display());
            }
        }
        pg.run(
            "initdb",
            &[
                "-D",
                &pg.data.to_string_lossy(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        pg.pg_ctl_start()?;
        Ok(pg)
    }

    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Crash the server (`pg_ctl stop -m immediate`: no checkpoint, recovery from WAL on
    /// start), stay down for `downtime`, start it again.
    pub(crate) fn crash_and_restart(&self, downtime: Duration) -> Result<()> {
        self.pg_ctl_stop()?;
        std::thread::sleep(downtime);
        self.pg_ctl_start()
    }

    fn pg_ctl_start(&self) -> Result<()> {
        let opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
            self.port,
            self.data.display()
        );
        let log = self.data.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-o",
                &opts,
                "-l",
                &log.to_string_lossy(),
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
    }

    fn pg_ctl_stop(&self) -> Result<()> {
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        )
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<()> {
        let exe = self.bin.join(tool);
        let mut cmd = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&exe);
            c
        } else {
            Command::new(&exe)
        };
        let out = cmd
            .args(args)
            .current_dir("/")
            .output()
            .with_context(|| format!("run {}", exe.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} {} failed: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for OwnPostgres {
    fn drop(&mut self) {
        let _ = self.pg_ctl_stop();
    }
}
