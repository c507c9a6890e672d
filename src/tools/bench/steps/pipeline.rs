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
        .map(|i| call_body(format!("+1{prefix:03}{i:07}")))
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

/// A client's event endpoint for the bench: answers 200 at once and keeps, for each
/// delivery, how long after the change it reports it arrived.
#[derive(Clone, Default)]
pub(super) struct EventSink {
    latencies_ms: Arc<std::sync::Mutex<Vec<f64>>>,
}

impl EventSink {
    pub(super) async fn start(&self) -> anyhow::Result<String> {
        use poem::{EndpointExt as _, Request, Server, listener::TcpAcceptor, post};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}/events", listener.local_addr()?);
        let sink = self.clone();
        let endpoint = poem::Route::new().at(
            "/events",
            post(poem::endpoint::make(move |mut req: Request| {
                let sink = sink.clone();
                async move {
                    let body = req.take_body().into_vec().await.unwrap_or_default();
                    let at = serde_json::from_slice::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["timestamp"].as_str().map(str::to_owned))
                        .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok());
                    if let Some(at) = at {
                        let ms = (chrono::Utc::now() - at.to_utc())
                            .num_microseconds()
                            .unwrap_or(0);
                        sink.latencies_ms.lock().unwrap().push(ms as f64 / 1000.0);
                    }
                    "ok"
                }
            })),
        );
        let acceptor = TcpAcceptor::from_tokio(listener)?;
        tokio::spawn(Server::new_with_acceptor(acceptor).run(endpoint.map_to_response()));
        Ok(url)
    }

    fn received(&self) -> usize {
        self.latencies_ms.lock().unwrap().len()
    }
}

/// One lifecycle run: its calls/s, the replica's memory idle and at its peak, and with
/// `events`, how long after the last call ended the last event arrived and the events'
/// latency p50 and p99 (ms).
struct LifecycleRun {
    rate: f64,
    idle_mb: f64,
    peak_mb: f64,
    events: Option<(f64, f64, f64)>,
}

pub(super) const BENCH_EVENT_KEY: &str = "bench-event-secret-key-0123456789abcdef";

async fn lifecycle_run(
    cluster: &PgCluster,
    database: &str,
    args: &BenchArgs,
    prefix: u32,
    events: bool,
) -> anyhow::Result<LifecycleRun> {
    let (url, pool) = fresh_database(cluster, database, 2).await?;
    let sim = Simulator::start(instant_simulator()).await?;
    let mut env = vec![
        ("AI_CALL_API_URL", sim.url()),
        ("AI_CALL_API_KEY", "bench-key".into()),
        ("MAX_CONCURRENT_CALLS", "1000".into()),
        ("DB_MAX_CONNECTIONS", args.clients.max(10).to_string()),
    ];
    if events {
        env.push(("EVENT_SECRET_KEY", BENCH_EVENT_KEY.into()));
        env.push(("EVENT_ALLOW_PRIVATE_URLS", "true".into()));
    }
    let service = Service::start("serve", &url, &env).await?;
    let client = reqwest::Client::new();
    let sink = EventSink::default();
    if events {
        let endpoint = sink.start().await?;
        let answer = client
            .post(service.url("/api/v1/event-endpoints"))
            .json(&json!({"url": endpoint, "events": ["call.completed"]}))
            .send()
            .await?;
        anyhow::ensure!(
            answer.status().is_success(),
            "registering the endpoint: {}",
            answer.text().await?
        );
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_mb = service.memory_mb().0;
    let started = Instant::now();
    submit(&client, &service, args.lifecycle_calls, prefix).await?;
    wait_all_final(&pool, args.lifecycle_calls, Duration::from_secs(1800)).await?;
    let rate = f64::from(args.lifecycle_calls) / started.elapsed().as_secs_f64();
    let events = if events {
        let ended = Instant::now();
        let deadline = ended + Duration::from_secs(600);
        while sink.received() < args.lifecycle_calls as usize {
            anyhow::ensure!(
                Instant::now() < deadline,
                "only {} of {} events arrived",
                sink.received(),
                args.lifecycle_calls
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let lag = ended.elapsed().as_secs_f64();
        let mut latencies = sink.latencies_ms.lock().unwrap().clone();
        Some((
            lag,
            percentile(&mut latencies, 0.5),
            percentile(&mut latencies, 0.99),
        ))
    } else {
        None
    };
    let peak_mb = service.memory_mb().1;
    drop(service);
    sim.stop();
    Ok(LifecycleRun {
        rate,
        idle_mb,
        peak_mb,
        events,
    })
}

/// Step 4, lifecycle throughput at cap 1000 with an instant provider, without and with
/// one event endpoint that takes every `call.completed` (in turns: plain first in even
/// runs, with events first in odd ones); and step 6, memory of the plain replica.
pub async fn lifecycle(cluster: &PgCluster, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (mut rates, mut idle, mut peak) = (Vec::new(), Vec::new(), Vec::new());
    let (mut event_rates, mut lags, mut p50, mut p99) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..args.runs {
        let order = if run % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for events in order {
            let name = format!(
                "bench_lifecycle_{run}{}",
                if events { "_events" } else { "" }
            );
            let prefix = 300 + run * 2 + u32::from(events);
            let measured = lifecycle_run(cluster, &name, args, prefix, events).await?;
            match measured.events {
                None => {
                    eprintln!(
                        "bench: lifecycle run {}: {:.0} calls/s",
                        run + 1,
                        measured.rate
                    );
                    rates.push(measured.rate);
                    idle.push(measured.idle_mb);
                    peak.push(measured.peak_mb);
                }
                Some((lag, fifty, ninety_nine)) => {
                    eprintln!(
                        "bench: lifecycle run {} with events: {:.0} calls/s, last event {lag:.2} s after the last call",
                        run + 1,
                        measured.rate
                    );
                    event_rates.push(measured.rate);
                    lags.push(lag);
                    p50.push(fifty);
                    p99.push(ninety_nine);
                }
            }
        }
    }
    let plain = {
        let mut sorted = rates.clone();
        percentile(&mut sorted, 0.5)
    };
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
            "lifecycle with events: completed calls, each call.completed to one endpoint",
            "calls/s",
            event_rates,
            format!("target ≥ 0.9 × without ({:.0})", plain * 0.9),
        ),
        figure(
            "events: last one delivered, after the last call ended",
            "s",
            lags,
            "keeping up: ≈ 0",
        ),
        figure("events: change to delivery, p50", "ms", p50, ""),
        figure("events: change to delivery, p99", "ms", p99, ""),
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
