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
use crate::{
    db,
    tools::{
        pg::PgCluster,
        sim::{OutcomeMix, SimConfig, Simulator},
    },
};

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

/// A `serve` (or `api`) child of this very binary, stopped with SIGTERM on drop.
struct Service {
    child: Child,
    port: u16,
}

impl Service {
    async fn start(role: &str, database_url: &str, env: &[(&str, String)]) -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new(std::env::current_exe()?)
            .arg(role)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", database_url)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("WEBHOOK_BASE_URL", format!("http://127.0.0.1:{port}"))
            .env("RUST_LOG", "error")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting the service")?;
        let service = Self { child, port };
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

/// 1. What PostgreSQL itself does on this machine, with the same pool size.
pub async fn ceiling(
    cluster: &PgCluster,
    args: &BenchArgs,
) -> anyhow::Result<(Ceiling, Vec<Figure>)> {
    let url = cluster.create_database("bench_ceiling").await?;
    let pool = PgPoolOptions::new()
        .max_connections(args.clients)
        .connect(&url)
        .await?;
    sqlx::raw_sql(
        "CREATE TABLE raw_insert (id uuid PRIMARY KEY, to_number text NOT NULL, metadata jsonb NOT NULL,
                                  created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE raw_update (id int PRIMARY KEY, n int NOT NULL);
         INSERT INTO raw_update SELECT g, 0 FROM generate_series(1, 10000) g;
         CREATE TABLE raw_queue (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, state char NOT NULL DEFAULT 'p');
         CREATE INDEX raw_queue_pending ON raw_queue (id) WHERE state = 'p';",
    )
    .execute(&pool)
    .await?;
    let (mut inserts, mut updates, mut claims) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let p = pool.clone();
        inserts.push(
            rate(args.clients, args.seconds, move |_| {
                let p = p.clone();
                async move {
                    sqlx::query(
                        "INSERT INTO raw_insert (id, to_number, metadata) VALUES ($1, $2, $3)",
                    )
                    .bind(uuid::Uuid::now_v7())
                    .bind("+14155550100")
                    .bind(json!({"customerName": "John Doe"}))
                    .execute(&p)
                    .await?;
                    Ok(())
                }
            })
            .await?,
        );
        let p = pool.clone();
        updates.push(
            rate(args.clients, args.seconds, move |i| {
                let p = p.clone();
                async move {
                    sqlx::query("UPDATE raw_update SET n = n + 1 WHERE id = $1")
                        .bind((i % 10_000) as i32 + 1)
                        .execute(&p)
                        .await?;
                    Ok(())
                }
            })
            .await?,
        );
        sqlx::query("INSERT INTO raw_queue (state) SELECT 'p' FROM generate_series(1, 200000)")
            .execute(&pool)
            .await?;
        let p = pool.clone();
        claims.push(
            rate(args.clients, args.seconds, move |_| {
                let p = p.clone();
                async move {
                    sqlx::query(
                        "WITH next AS (SELECT id FROM raw_queue WHERE state = 'p' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
                         UPDATE raw_queue q SET state = 'c' FROM next WHERE q.id = next.id",
                    )
                    .execute(&p)
                    .await?;
                    Ok(())
                }
            })
            .await?,
        );
    }
    let insert = figure(
        "ceiling: single-row INSERT transactions",
        "tx/s",
        inserts,
        "PostgreSQL itself",
    );
    let found = Ceiling {
        insert_tps: insert.median(),
    };
    Ok((
        found,
        vec![
            insert,
            figure(
                "ceiling: UPDATE-by-key transactions",
                "tx/s",
                updates,
                "PostgreSQL itself",
            ),
            figure(
                "ceiling: bare SKIP LOCKED claim (1 row)",
                "claims/s",
                claims,
                "PostgreSQL itself",
            ),
        ],
    ))
}

/// 2. Ingest through the API: single calls at a fixed concurrency, and the batch route.
pub async fn ingest(
    cluster: &PgCluster,
    args: &BenchArgs,
    ceiling: &Ceiling,
) -> anyhow::Result<Vec<Figure>> {
    let (url, _pool) = fresh_database(cluster, "bench_ingest", 2).await?;
    let service = Service::start(
        "api",
        &url,
        &[("DB_MAX_CONNECTIONS", args.clients.to_string())],
    )
    .await?;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency as usize)
        .build()?;
    let endpoint = service.url("/api/v1/calls");
    let (mut rates, mut p50s, mut p99s, mut cpus, mut batches) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..args.runs {
        let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, e, l) = (client.clone(), endpoint.clone(), latencies.clone());
        let cpu_before = cpu_seconds();
        let wall = Instant::now();
        let rps = rate(args.concurrency, args.seconds, move |i| {
            let (c, e, l) = (c.clone(), e.clone(), l.clone());
            async move {
                let started = Instant::now();
                let response = c
                    .post(&e)
                    .json(&json!({"to": format!("+1415{:07}", i % 10_000_000), "scriptId": "bench", "metadata": {"i": i}}))
                    .send()
                    .await?;
                anyhow::ensure!(response.status().is_success(), "create answered {}", response.status());
                l.lock().expect("latencies").push(started.elapsed().as_secs_f64() * 1000.0);
                Ok(())
            }
        })
        .await?;
        cpus.push((cpu_seconds() - cpu_before) / wall.elapsed().as_secs_f64() * 100.0);
        rates.push(rps);
        let mut samples = std::mem::take(&mut *latencies.lock().expect("latencies"));
        p50s.push(percentile(&mut samples, 0.50));
        p99s.push(percentile(&mut samples, 0.99));

        // The batch route: 20 batches of 1000, two at a time.
        let started = Instant::now();
        let mut sends = Vec::new();
        for stream in 0..2u64 {
            let (c, e) = (client.clone(), service.url("/api/v1/calls/batch"));
            sends.push(tokio::spawn(async move {
                for b in 0..10u64 {
                    let calls: Vec<_> = (0..1000u64)
                        .map(|k| json!({"to": format!("+1416{:07}", (stream * 10 + b) * 1000 + k), "scriptId": "bench"}))
                        .collect();
                    let response = c.post(&e).json(&json!({"calls": calls})).send().await?;
                    anyhow::ensure!(response.status().is_success(), "batch answered {}", response.status());
                }
                Ok::<_, anyhow::Error>(())
            }));
        }
        for send in sends {
            send.await??;
        }
        batches.push(20_000.0 / started.elapsed().as_secs_f64());
    }
    let share = |values: &[f64]| {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] / ceiling.insert_tps.max(1.0) * 100.0
    };
    let against = if ceiling.insert_tps > 0.0 {
        format!(
            "{:.0} % of raw INSERT ({:.0} tx/s); target ≥ 60 %",
            share(&rates),
            ceiling.insert_tps
        )
    } else {
        "target ≥ 60 % of raw INSERT (run with the ceiling)".into()
    };
    Ok(vec![
        figure(
            &format!(
                "ingest: POST /api/v1/calls, {} concurrent",
                args.concurrency
            ),
            "req/s",
            rates,
            against,
        ),
        figure("ingest: POST /api/v1/calls latency p50", "ms", p50s, ""),
        figure("ingest: POST /api/v1/calls latency p99", "ms", p99s, ""),
        figure(
            "ingest: load generator CPU",
            "% of a core",
            cpus,
            "not the bottleneck while well under 100 %",
        ),
        figure(
            "ingest: batch route (1000 per request)",
            "calls/s",
            batches,
            "target ≥ 60,000",
        ),
    ])
}

fn instant_simulator() -> SimConfig {
    SimConfig {
        port: 0,
        api_key: "bench-key".into(),
        min_duration: Duration::ZERO,
        max_duration: Duration::ZERO,
        outcomes: OutcomeMix::all_completed(),
        progress_webhooks: false,
        ..SimConfig::default()
    }
}

async fn submit(
    client: &reqwest::Client,
    service: &Service,
    calls: u32,
    prefix: u32,
) -> anyhow::Result<()> {
    let all: Vec<_> = (0..calls)
        .map(|i| json!({"to": format!("+1{prefix:03}{i:07}"), "scriptId": "bench"}))
        .collect();
    for chunk in all.chunks(1000) {
        let response = client
            .post(service.url("/api/v1/calls/batch"))
            .json(&json!({"calls": chunk}))
            .send()
            .await?;
        anyhow::ensure!(
            response.status().is_success(),
            "batch answered {}",
            response.status()
        );
    }
    Ok(())
}

async fn wait_all_final(pool: &PgPool, total: u32, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let open: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM calls WHERE status IN ('PENDING', 'IN_PROGRESS')",
        )
        .fetch_one(pool)
        .await?;
        let all: i64 = sqlx::query_scalar("SELECT count(*) FROM calls")
            .fetch_one(pool)
            .await?;
        if open == 0 && all >= i64::from(total) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "{open} calls still open");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A fresh database, an instant simulator and a `serve` replica dialing it with `cap`.
async fn instant_pipeline(
    cluster: &PgCluster,
    database: &str,
    cap: u32,
    pool_size: u32,
) -> anyhow::Result<(PgPool, Simulator, Service)> {
    let (url, pool) = fresh_database(cluster, database, 2).await?;
    let sim = Simulator::start(instant_simulator()).await?;
    let service = Service::start(
        "serve",
        &url,
        &[
            ("AI_CALL_API_URL", sim.url()),
            ("AI_CALL_API_KEY", "bench-key".into()),
            ("MAX_CONCURRENT_CALLS", cap.to_string()),
            ("DB_MAX_CONNECTIONS", pool_size.to_string()),
        ],
    )
    .await?;
    Ok((pool, sim, service))
}

/// 3. Slot refill latency at cap 1, measured by the simulator.
pub async fn refill(cluster: &PgCluster, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (mut p50, mut p95, mut p99) = (Vec::new(), Vec::new(), Vec::new());
    let (mut sent_p50, mut sent_p99) = (Vec::new(), Vec::new());
    for run in 0..args.runs {
        let (pool, sim, service) =
            instant_pipeline(cluster, &format!("bench_refill_{run}"), 1, 10).await?;
        submit(
            &reqwest::Client::new(),
            &service,
            args.refill_calls,
            200 + run,
        )
        .await?;
        wait_all_final(&pool, args.refill_calls, Duration::from_secs(600)).await?;
        let status = sim.status();
        let latency = status.refill_latency_ms;
        p50.push(latency.p50);
        p95.push(latency.p95);
        p99.push(latency.p99);
        sent_p50.push(status.refill_from_send_ms.p50);
        sent_p99.push(status.refill_from_send_ms.p99);
        drop(service);
        sim.stop();
    }
    let calls = args.refill_calls;
    Ok(vec![
        figure(
            &format!("refill latency p50 (cap 1, {calls} calls)"),
            "ms",
            p50,
            "target ≤ 3 ms",
        ),
        figure("refill latency p95", "ms", p95, ""),
        figure("refill latency p99", "ms", p99, "target ≤ 10 ms"),
        figure(
            "refill from the final webhook's send, p50",
            "ms",
            sent_p50,
            "the service's handling of the webhook included",
        ),
        figure(
            "refill from the final webhook's send, p99",
            "ms",
            sent_p99,
            "",
        ),
    ])
}

/// 4. Lifecycle throughput at cap 1000 with an instant provider; 6. memory of that replica.
pub async fn lifecycle(cluster: &PgCluster, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (mut rates, mut idle, mut peak) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let (pool, sim, service) = instant_pipeline(
            cluster,
            &format!("bench_lifecycle_{run}"),
            1000,
            args.clients.max(10),
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        idle.push(service.memory_mb().0);
        let started = Instant::now();
        submit(
            &reqwest::Client::new(),
            &service,
            args.lifecycle_calls,
            300 + run,
        )
        .await?;
        wait_all_final(&pool, args.lifecycle_calls, Duration::from_secs(1800)).await?;
        let rate = f64::from(args.lifecycle_calls) / started.elapsed().as_secs_f64();
        eprintln!("bench: lifecycle run {}: {rate:.0} calls/s", run + 1);
        rates.push(rate);
        peak.push(service.memory_mb().1);
        drop(service);
        sim.stop();
    }
    Ok(vec![
        figure(
            &format!(
                "lifecycle: completed calls (cap 1000, {} calls)",
                args.lifecycle_calls
            ),
            "calls/s",
            rates,
            "target ≥ 2,000",
        ),
        figure(
            "memory: one serve replica, idle",
            "MB RSS",
            idle,
            "target ≤ 50",
        ),
        figure(
            "memory: one serve replica, peak under lifecycle",
            "MB RSS",
            peak,
            "target ≤ 150",
        ),
    ])
}

/// Milliseconds of one real claim of 10 calls (the claimed calls then completed, untimed).
async fn timed_claim(pool: &PgPool) -> anyhow::Result<f64> {
    let started = Instant::now();
    let claimed = db::claim(pool, 1_000_000, 10, Duration::from_secs(60)).await?;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    anyhow::ensure!(claimed.len() == 10, "the claim ran out of calls");
    let ids: Vec<uuid::Uuid> = claimed.iter().map(|c| c.call.id).collect();
    end_calls(pool, &ids).await?;
    Ok(ms)
}

/// The reference of the claim figures: a queue kept 1,000 calls deep.
struct ShallowQueue {
    pool: PgPool,
    added: u64,
}

impl ShallowQueue {
    const DEPTH: u32 = 1_000;

    async fn new(cluster: &PgCluster) -> anyhow::Result<Self> {
        let (_url, pool) = fresh_database(cluster, "bench_claim_reference", 2).await?;
        add_calls(&pool, Self::DEPTH, 0, false).await?;
        Ok(Self {
            pool,
            added: u64::from(Self::DEPTH),
        })
    }

    /// One claim of 10, then 10 new calls, so the queue stays as deep.
    async fn timed_claim(&mut self) -> anyhow::Result<f64> {
        let ms = timed_claim(&self.pool).await?;
        add_calls(&self.pool, 10, self.added, false).await?;
        self.added += 10;
        Ok(ms)
    }
}

/// Claims of 10 on the shallow queue and on `deep`, `count` of each a run, taken in turns, so
/// that the machine speeding up or slowing down (it is shared) weighs on both alike. Each
/// run's median on the shallow queue goes to `reference`; returns each run's median on `deep`
/// and its ratio to the shallow one of the same run.
async fn claim_runs(
    shallow: &mut ShallowQueue,
    deep: &PgPool,
    runs: u32,
    count: u32,
    reference: &mut Vec<f64>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut medians, mut ratios) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (mut shallow_ms, mut deep_ms) = (Vec::new(), Vec::new());
        for _ in 0..count {
            shallow_ms.push(shallow.timed_claim().await?);
            deep_ms.push(timed_claim(deep).await?);
        }
        let (shallow_ms, deep_ms) = (
            percentile(&mut shallow_ms, 0.5),
            percentile(&mut deep_ms, 0.5),
        );
        reference.push(shallow_ms);
        medians.push(deep_ms);
        ratios.push(deep_ms / shallow_ms);
    }
    Ok((medians, ratios))
}

/// Completes claimed calls and their attempts, as their final webhooks would.
async fn end_calls(pool: &PgPool, ids: &[uuid::Uuid]) -> anyhow::Result<()> {
    sqlx::query("UPDATE calls SET status = 'COMPLETED', completed_at = now() WHERE id = ANY($1)")
        .bind(ids)
        .execute(pool)
        .await?;
    sqlx::query(
        "UPDATE call_attempts SET status = 'COMPLETED', ended_at = now()
         WHERE call_id = ANY($1) AND status = 'DIALING'",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// Adds `count` calls to distinct numbers, PENDING and due or `finished`, with ids made the
/// way the service makes them (time-ordered UUIDv7), so the indexes grow as they do in use.
async fn add_calls(pool: &PgPool, count: u32, offset: u64, finished: bool) -> anyhow::Result<()> {
    let mut done = 0;
    while done < count {
        let n = (count - done).min(100_000);
        let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
        sqlx::query(
            "INSERT INTO calls (id, to_number, script_id, status, attempts, next_attempt_at, started_at, completed_at)
             SELECT new.id, '+1' || (2000000000 + $1 + new.g)::text, 'bench',
                    CASE WHEN $3 THEN 'COMPLETED'::call_status ELSE 'PENDING'::call_status END,
                    CASE WHEN $3 THEN 1 ELSE 0 END,
                    CASE WHEN $3 THEN NULL ELSE now() END,
                    CASE WHEN $3 THEN now() END,
                    CASE WHEN $3 THEN now() END
             FROM unnest($2::uuid[]) WITH ORDINALITY AS new (id, g)
             ORDER BY new.g",
        )
        .bind((offset + u64::from(done)) as i64)
        .bind(&ids)
        .bind(finished)
        .execute(pool)
        .await?;
        done += n;
    }
    Ok(())
}

/// 5. The claim with a shallow queue, a deep one, and after a million calls of churn.
///
/// Each deep figure is measured in turns with the shallow one and read against it run by run.
pub async fn claim(cluster: &PgCluster, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (_url, pool) = fresh_database(cluster, "bench_claim", 4).await?;
    let mut shallow = ShallowQueue::new(cluster).await?;
    // As in every worker, all along: call_queue is vacuumed whenever dead rows pile up, and
    // analyzed as it grows and shrinks.
    let upkeep = CancellationToken::new();
    let upkeep_tasks = [&pool, &shallow.pool]
        .map(|pool| tokio::spawn(crate::worker::keep_queue_lean(pool.clone(), upkeep.clone())));
    let rows = args.claim_rows;
    let claims = 200;
    // What the measurements themselves claim, on top of the depth they measure.
    let measured = claims * 10 * args.runs;
    eprintln!("bench: filling {rows} PENDING and {rows} final rows…");
    add_calls(&pool, rows + measured, 10_000_000, false).await?;
    add_calls(&pool, rows, 20_000_000, true).await?;
    sqlx::query("ANALYZE calls").execute(&pool).await?;
    let mut reference = Vec::new();
    let (deep, mut deep_ratios) =
        claim_runs(&mut shallow, &pool, args.runs, claims, &mut reference).await?;
    eprintln!("bench: {rows} calls of churn through the claim…");
    add_calls(&pool, rows + measured, 30_000_000, false).await?;
    let churn_started = Instant::now();
    let mut churned = 0;
    while churned < rows {
        let claimed = db::claim(
            &pool,
            u32::MAX,
            (rows - churned).min(2_000),
            Duration::from_secs(60),
        )
        .await?;
        anyhow::ensure!(!claimed.is_empty(), "the churn ran out of calls to claim");
        let ids: Vec<uuid::Uuid> = claimed.iter().map(|c| c.call.id).collect();
        end_calls(&pool, &ids).await?;
        churned += claimed.len() as u32;
    }
    eprintln!(
        "bench: churn done in {:.0} s ({:.0} calls/s)",
        churn_started.elapsed().as_secs_f64(),
        f64::from(rows) / churn_started.elapsed().as_secs_f64()
    );
    let (after, mut after_ratios) =
        claim_runs(&mut shallow, &pool, args.runs, claims, &mut reference).await?;
    upkeep.cancel();
    for task in upkeep_tasks {
        task.await?;
    }
    let against = |ratios: &mut Vec<f64>| {
        ratios.sort_by(f64::total_cmp);
        format!(
            "{:.2} × the shallow claim measured in turns with it ({:.2}–{:.2} × over the runs); target ≤ 1.5 ×",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1],
        )
    };
    let (deep_against, after_against) = (against(&mut deep_ratios), against(&mut after_ratios));
    Ok(vec![
        figure(
            "claim of 10 calls, 1,000 PENDING",
            "ms",
            reference,
            "the reference, measured in turns with each figure below (so over twice the runs)",
        ),
        figure(
            &format!("claim of 10 calls, {rows} PENDING + {rows} final"),
            "ms",
            deep,
            deep_against,
        ),
        figure(
            &format!("claim of 10 calls, right after {rows} calls of churn"),
            "ms",
            after,
            after_against,
        ),
    ])
}
