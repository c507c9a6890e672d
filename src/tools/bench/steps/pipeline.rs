//! Calls through the whole pipeline against an instant provider: refill after a freed slot, and the lifecycle of a call.

use super::*;

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
        // The webhooks of a thousand calls ending at once can fill the service's requests in
        // flight (HTTP_MAX_IN_FLIGHT): a 503 asks the client to send again, as it does here.
        let mut busy = 0;
        let response = loop {
            busy += 1;
            let response = client
                .post(service.url("/api/v1/calls/batch"))
                .json(&json!({"calls": chunk}))
                .send()
                .await?;
            match crate::tools::busy_wait(&response) {
                Some(wait) if busy < 300 => tokio::time::sleep(wait).await,
                _ => break response,
            }
        };
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            anyhow::bail!("batch answered {status}: {body}");
        }
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
