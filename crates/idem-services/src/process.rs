//! Running the services' tools, and the watchdog that stops a service when the process
//! that started it dies without stopping it (statics are never dropped; a test binary may
//! be SIGKILLed by its runner).

use std::path::Path;
use std::process::{Command, Stdio};

use crate::{io, Result, ServiceError};

/// Whether this process runs as root (initdb and postgres refuse to).
pub(crate) fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Run `exe args`, as the `postgres` user when `as_postgres`; an error carries its output.
pub(crate) fn run(exe: &Path, args: &[&str], as_postgres: bool) -> Result<()> {
    let mut cmd = if as_postgres {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    let out = cmd
        .args(args)
        .current_dir("/")
        .stdin(Stdio::null())
        .output()
        .map_err(io(format!("run {}", exe.display())))?;
    if out.status.success() {
        return Ok(());
    }
    Err(ServiceError::Tool {
        tool: format!("{} {}", exe.display(), args.join(" ")),
        status: out.status.to_string(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    })
}

/// Start a shell that runs `on_death` once this process is gone. It polls once a second
/// and is never waited for: it ends with the process or right after it.
pub(crate) fn watchdog(on_death: &str) {
    let script = format!(
        "while kill -0 {} 2>/dev/null; do sleep 1; done; {on_death}",
        std::process::id()
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
