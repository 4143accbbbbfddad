//! Starting a local tansu broker (sqlite storage) for tests and the demo, when no broker
//! is configured. Production uses a real Kafka cluster.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A tansu broker this process started; killed on drop.
#[derive(Debug)]
pub struct Tansu {
    pub bootstrap: String,
    pub dir: PathBuf,
    child: Child,
}

impl Tansu {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where `tansu` is: PATH, then `~/.cargo/bin`.
pub fn find() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo/bin"));
    }
    dirs.into_iter()
        .map(|d| d.join("tansu"))
        .find(|p| p.is_file())
}

/// Start tansu on a free local port with its sqlite file in a fresh temporary directory,
/// and wait until it accepts connections.
pub fn start() -> Result<Tansu, String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let dir = std::env::temp_dir().join(format!("idem-tansu-{}-{port}", std::process::id()));
    start_in(&dir, port)
}

/// Start tansu on `port` with its sqlite file in `dir` (reusing what an earlier broker left
/// there: a restart), and wait until it accepts connections.
pub fn start_in(dir: &std::path::Path, port: u16) -> Result<Tansu, String> {
    let bin = find()
        .ok_or("tansu is not on PATH (cargo install tansu --locked --features dynostore,libsql)")?;
    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tansu.log"))
        .map_err(|e| e.to_string())?;
    let child = Command::new(bin)
        // tansu resolves a sqlite URL's path against its working directory.
        .current_dir(dir)
        .args(["broker", "--storage-engine", "sqlite://tansu.db"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| e.to_string())?)
        .stderr(log)
        .spawn()
        .map_err(|e| format!("spawn tansu: {e}"))?;
    let tansu = Tansu {
        bootstrap: format!("127.0.0.1:{port}"),
        dir: dir.to_path_buf(),
        child,
    };
    for _ in 0..300 {
        if std::net::TcpStream::connect(&tansu.bootstrap).is_ok() {
            return Ok(tansu);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!(
        "tansu did not listen on {} within 30 s; see {}",
        tansu.bootstrap,
        tansu.dir.join("tansu.log").display()
    ))
}

/// The broker to use: `given` if there is one, else a tansu started here (kept alive by the
/// returned handle). The error says what to configure or install.
pub async fn given_or_started(given: Option<String>) -> Result<(String, Option<Tansu>), String> {
    if let Some(b) = given {
        return Ok((b, None));
    }
    let t = tokio::task::spawn_blocking(start)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| {
            format!(
                "no Kafka broker: give --bootstrap or KAFKA_BOOTSTRAP, or put tansu on PATH ({e})"
            )
        })?;
    Ok((t.bootstrap.clone(), Some(t)))
}
