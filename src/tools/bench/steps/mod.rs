//! The measurements themselves.

use std::{
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::json;
use sqlx::{PgPool, postgres::PgPoolOptions};
use tokio_util::sync::CancellationToken;

use super::{BenchArgs, Figure};

mod claim;
mod ingest;
mod pipeline;
mod scale;
mod soak;

use crate::{
    db,
    tools::{
        pg::PgCluster,
        sim::{OutcomeMix, SimConfig, Simulator},
    },
};
pub use claim::claim;
pub use ingest::{ceiling, ingest};
pub use pipeline::{lifecycle, refill};
pub use scale::scale;
pub use soak::soak;

/// PostgreSQL's own rates, measured first, that the service's figures are read against.
#[derive(Clone, Copy, Debug, Default)]
pub struct Ceiling {
    pub insert_tps: f64,
}

fn figure(name: &str, unit: &'static str, values: Vec<f64>, against: impl Into<String>) -> Figure {
    Figure {
        name: name.into(),
        unit,
        values,
        against: against.into(),
    }
}

/// Settings of the service under test over its defaults (`bench --service-env`).
static SERVICE_ENV: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();

pub fn set_service_env(settings: Vec<(String, String)>) {
    let _ = SERVICE_ENV.set(settings);
}

/// A create body as a client sends it: the example of the API's documentation, `metadata`
/// included.
fn call_body(to: String) -> serde_json::Value {
    json!({"to": to, "scriptId": "welcomeFlow", "metadata": {"customerName": "John Doe"}})
}

/// A fresh database with the service's schema.
async fn fresh_database(
    cluster: &PgCluster,
    name: &str,
    pool_size: u32,
) -> anyhow::Result<(String, PgPool)> {
    let url = cluster.create_database(name).await?;
    let pool = PgPoolOptions::new()
        .max_connections(pool_size)
        .connect(&url)
        .await?;
    db::migrate(&pool).await?;
    Ok((url, pool))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `serve` (or `api`) child of this very binary, stopped with SIGTERM on drop. It runs in
/// the configuration a user runs: the default `RUST_LOG` (`info`, a line per request) and
/// log format, its standard output written to a file as a container runtime's log driver
/// would (deleted with it).
struct Service {
    child: Child,
    port: u16,
    _log: tempfile::NamedTempFile,
}

impl Service {
    async fn start(role: &str, database_url: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let log = tempfile::Builder::new()
            .prefix("call-orchestrator-bench-")
            .suffix(".log")
            .tempfile()?;
        let child = Command::new(std::env::current_exe()?)
            .arg(role)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("WEBHOOK_BASE_URL", format!("http://127.0.0.1:{port}"))
            // Throughput is measured at any hour: the window's own cost is the claim step's.
            .env("CALLING_WINDOW", "off")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .envs(SERVICE_ENV.get().into_iter().flatten().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.reopen()?))
            .stderr(Stdio::from(log.reopen()?))
            .spawn()
            .context("starting the service")?;
        let service = Self {
            child,
            port,
            _log: log,
        };
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client
            .get(service.url("/health"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            anyhow::ensure!(Instant::now() < deadline, "the service did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(service)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Resident memory now and at its peak, in MB.
    fn memory_mb(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map_or(0.0, |kb| kb / 1024.0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// Runs `work` on `tasks` concurrent loops for `seconds`; returns operations per second.
async fn rate<F, Fut>(tasks: u32, seconds: u64, work: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut handles = Vec::new();
    for task in 0..tasks {
        let (work, done) = (work.clone(), done.clone());
        handles.push(tokio::spawn(async move {
            let mut i = u64::from(task) << 40;
            while Instant::now() < deadline {
                work(i).await?;
                i += 1;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for handle in handles {
        handle.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Milliseconds of one GET.
pub(super) async fn timed_get(client: &reqwest::Client, url: &str) -> anyhow::Result<f64> {
    let started = Instant::now();
    let response = client.get(url).send().await?;
    anyhow::ensure!(
        response.status().is_success(),
        "{url} answered {}",
        response.status()
    );
    response.bytes().await?;
    Ok(started.elapsed().as_secs_f64() * 1000.0)
}

fn cpu_seconds() -> f64 {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .map(|u| {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        })
        .unwrap_or(0.0)
}

fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples
        .get(((samples.len().max(1) - 1) as f64 * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}
