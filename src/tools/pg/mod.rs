//! A private, throwaway PostgreSQL cluster started from the server binaries on the machine.
//!
//! Each test binary starts one (a database per test on it), and `demo` runs
//! on one when no database is configured. PostgreSQL refuses to run as root: as root, the
//! cluster's files belong to the unprivileged `postgres` user and `initdb` and `postgres`
//! run as that user. `initdb` runs once per PostgreSQL version into a template that each
//! new cluster copies, which makes a cluster cost a copy and a start.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::{Gid, Pid, Uid, chown},
};

mod setup;

pub use setup::find_bin_dir;
use setup::{die_with_parent, free_port, give_to, run_as, template, unprivileged_owner};

/// Why a cluster could not be started.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    #[error(
        "PostgreSQL server binaries (initdb, postgres) were not found on PATH or in the usual \
         install folders; install them with `apt-get install postgresql` (Debian, Ubuntu) or \
         `brew install postgresql@16` (macOS)"
    )]
    NotInstalled,
    #[error(
        "running as root, but there is no unprivileged `postgres` user to run PostgreSQL as \
         (PostgreSQL refuses to run as root); create one with `useradd --system postgres`"
    )]
    NoUnprivilegedUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PgError {
    let what = what.into();
    move |source| PgError::Io { what, source }
}

/// How the cluster trades safety for speed.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClusterOptions {
    /// Keep `fsync` and synchronous commit on (benchmarks); off by default, since the data
    /// is thrown away with the cluster.
    pub durable: bool,
}

/// Where a cluster keeps its files.
enum Folder {
    /// Deleted with the cluster.
    Temporary(tempfile::TempDir),
    /// Kept for the next run.
    Kept(PathBuf),
}

impl Folder {
    fn path(&self) -> &Path {
        match self {
            Folder::Temporary(dir) => dir.path(),
            Folder::Kept(path) => path,
        }
    }
}

/// A running cluster; stopped on drop, and deleted with it unless it lives in a folder of
/// the caller's ([`PgCluster::start_in`]).
pub struct PgCluster {
    root: Folder,
    bin_dir: PathBuf,
    owner: Option<(Uid, Gid)>,
    port: u16,
    options: ClusterOptions,
    child: Option<Child>,
}

impl PgCluster {
    /// Starts a fresh cluster on a free loopback port and waits until it accepts connections.
    pub async fn start(options: ClusterOptions) -> Result<Self, PgError> {
        let root = tempfile::Builder::new()
            .prefix("call-orchestrator-pg-")
            .tempdir()
            .map_err(io("creating the cluster folder"))?;
        Self::start_at(Folder::Temporary(root), options).await
    }

    /// Starts the cluster kept in `dir`, creating it there on first use; the folder (and
    /// its data) outlives the cluster, for the next run to reuse.
    pub async fn start_in(dir: &Path, options: ClusterOptions) -> Result<Self, PgError> {
        fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        let dir = dir
            .canonicalize()
            .map_err(io(format!("opening {}", dir.display())))?;
        Self::start_at(Folder::Kept(dir), options).await
    }

    /// True when `dir` already holds a cluster that [`PgCluster::start_in`] would reuse.
    pub fn exists_in(dir: &Path) -> bool {
        dir.join("data").join("PG_VERSION").is_file()
    }

    async fn start_at(root: Folder, options: ClusterOptions) -> Result<Self, PgError> {
        let bin_dir = find_bin_dir().ok_or(PgError::NotInstalled)?;
        let owner = unprivileged_owner()?;
        give_to(root.path(), owner)?;
        if !Self::exists_in(root.path()) {
            let template = template(&bin_dir, owner)?;
            let status = Command::new("cp")
                .arg("-a")
                .arg(template.join("data"))
                .arg(root.path().join("data"))
                .status()
                .map_err(io("copying the template cluster"))?;
            if !status.success() {
                return Err(PgError::Failed(format!(
                    "copying the template cluster failed ({status})"
                )));
            }
        }
        let mut cluster = Self {
            root,
            bin_dir,
            owner,
            port: 0,
            options,
            child: None,
        };
        cluster.start_server().await?;
        Ok(cluster)
    }

    /// The loopback port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder holding the data folder and the server's log.
    pub fn folder(&self) -> &Path {
        self.root.path()
    }

    /// The data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// A URL for `database` as the superuser `postgres` (trust authentication on loopback).
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database and returns its URL.
    pub async fn create_database(&self, name: &str) -> Result<String, PgError> {
        use sqlx::Connection as _;
        let mut conn = sqlx::PgConnection::connect(&self.url("postgres"))
            .await
            .map_err(|e| PgError::Failed(format!("connecting to the cluster: {e}")))?;
        sqlx::query(&format!(
            "CREATE DATABASE \"{}\"",
            name.replace('"', "\"\"")
        ))
        .execute(&mut conn)
        .await
        .map_err(|e| PgError::Failed(format!("creating database {name}: {e}")))?;
        Ok(self.url(name))
    }

    /// Stops the server (fast shutdown: sessions are cut, data is kept).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop_child(&mut child, Signal::SIGINT, Duration::from_secs(20));
        }
    }

    /// Starts the server again on the same port after [`PgCluster::stop`].
    pub async fn restart(&mut self) -> Result<(), PgError> {
        self.stop();
        self.start_server().await
    }

    async fn start_server(&mut self) -> Result<(), PgError> {
        let mut last_error = String::new();
        // A port found free can be taken before the server binds it; try a few.
        for _ in 0..5 {
            if self.port == 0 || !last_error.is_empty() {
                self.port = free_port()?;
            }
            let mut child = self.spawn_server()?;
            match self.wait_ready(&mut child).await {
                Ok(()) => {
                    self.child = Some(child);
                    return Ok(());
                }
                Err(err) => {
                    stop_child(&mut child, Signal::SIGQUIT, Duration::from_secs(5));
                    last_error = err;
                }
            }
        }
        Err(PgError::Failed(format!(
            "PostgreSQL did not start: {last_error}"
        )))
    }

    fn spawn_server(&self) -> Result<Child, PgError> {
        let log = fs::File::create(self.root.path().join("postgres.log"))
            .map_err(io("creating postgres.log"))?;
        if let Some((uid, gid)) = self.owner {
            chown(&self.root.path().join("postgres.log"), Some(uid), Some(gid))
                .map_err(|e| PgError::Failed(format!("chown postgres.log: {e}")))?;
        }
        let mut command = Command::new(self.bin_dir.join("postgres"));
        command
            .arg("-D")
            .arg(self.data_dir())
            .args(["-p", &self.port.to_string(), "-h", "127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "max_connections=300"])
            .args(["-c", "listen_addresses=127.0.0.1"]);
        if !self.options.durable {
            command.args([
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ]);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(io("postgres.log"))?)
            .stderr(log);
        run_as(&mut command, self.owner);
        die_with_parent(&mut command);
        command.spawn().map_err(io("starting postgres"))
    }

    async fn wait_ready(&self, child: &mut Child) -> Result<(), String> {
        use sqlx::Connection as _;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("postgres exited ({status}): {}", self.log_tail()));
            }
            if let Ok(conn) = sqlx::PgConnection::connect(&self.url("postgres")).await {
                let _ = conn.close().await;
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("not ready within a minute: {}", self.log_tail()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn log_tail(&self) -> String {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(self.root.path().join("postgres.log")) {
            let _ = file.read_to_string(&mut text);
        }
        let lines: Vec<&str> = text.lines().rev().take(5).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let signal = match self.root {
                // The data goes with the folder: no need for a clean shutdown.
                Folder::Temporary(_) => Signal::SIGQUIT,
                Folder::Kept(_) => Signal::SIGINT,
            };
            stop_child(&mut child, signal, Duration::from_secs(20));
        }
    }
}

fn stop_child(child: &mut Child, signal: Signal, grace: Duration) {
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
