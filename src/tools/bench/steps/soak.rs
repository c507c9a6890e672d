//! A soak: one `serve` replica under steady load for a long while, watched for growth.

use super::*;

/// One look at the replica and its database.
struct Sample {
    minute: f64,
    /// Dead tuples of every table, biggest first: (table, dead, live).
    dead: Vec<(String, i64, i64)>,
    rss_mb: f64,
    /// p50 of each read route, ms.
    reads: Vec<(&'static str, f64)>,
}

const READS: [(&str, &str); 4] = [
    ("GET /api/v1/metrics", "/api/v1/metrics"),
    ("GET /metrics", "/metrics"),
    ("GET /api/v1/calls", "/api/v1/calls"),
    (
        "GET /api/v1/calls?status=COMPLETED",
        "/api/v1/calls?status=COMPLETED",
    ),
];

async fn sample(
    pool: &PgPool,
    service: &Service,
    client: &reqwest::Client,
    minute: f64,
) -> anyhow::Result<Sample> {
    let dead: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT relname::text, n_dead_tup, n_live_tup FROM pg_stat_user_tables \
         ORDER BY n_dead_tup DESC, relname",
    )
    .fetch_all(pool)
    .await?;
    let mut reads = Vec::new();
    for (name, path) in READS {
        let mut ms = Vec::new();
        for _ in 0..20 {
            ms.push(timed_get(client, &service.url(path)).await?);
        }
        reads.push((name, percentile(&mut ms, 0.5)));
    }
    Ok(Sample {
        minute,
        dead,
        rss_mb: service.memory_mb().0,
        reads,
    })
}

/// Step 7: `serve` under a steady `args.soak_rate` creates a second (single POSTs with the
/// documentation's payload) for `args.soak_minutes`, against the simulator (a mix of
/// outcomes, so retries too, calls lasting up to 2 s; cap 1000, so that calls never queue for
/// a slot and the table grows only by the calls created) and one event endpoint taking every
/// event: every minute, the dead tuples of every table, the replica's memory and the read
/// routes' p50; reported at the start (after the first minute) and at the end. Flat is
/// the target.
pub async fn soak(cluster: &PgCluster, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let (url, pool) = fresh_database(cluster, "bench_soak", 2).await?;
    let sim = Simulator::start(SimConfig {
        port: 0,
        api_key: "bench-key".into(),
        min_duration: Duration::ZERO,
        max_duration: Duration::from_secs(2),
        outcomes: OutcomeMix::default(),
        ..SimConfig::default()
    })
    .await?;
    let service = Service::start(
        "serve",
        &url,
        &[
            ("AI_CALL_API_URL", sim.url()),
            ("AI_CALL_API_KEY", "bench-key".into()),
            ("MAX_CONCURRENT_CALLS", "1000".into()),
            ("RETRY_BASE_DELAY", "2s".into()),
            ("EVENT_SECRET_KEY", super::pipeline::BENCH_EVENT_KEY.into()),
            ("EVENT_ALLOW_PRIVATE_URLS", "true".into()),
        ],
    )
    .await?;
    let client = reqwest::Client::new();
    let sink = super::pipeline::EventSink::default();
    let endpoint = sink.start().await?;
    client
        .post(service.url("/api/v1/event-endpoints"))
        .json(&json!({"url": endpoint, "events": ["*"]}))
        .send()
        .await?
        .error_for_status()?;

    // The load: creates paced to the rate, four at a time.
    let stop = CancellationToken::new();
    let created = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    let per_task = Duration::from_secs_f64(4.0 / f64::from(args.soak_rate));
    for task in 0..4u64 {
        let (client, url, stop, created) = (
            client.clone(),
            service.url("/api/v1/calls"),
            stop.clone(),
            created.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(per_task);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut i = task << 32;
            while !stop.is_cancelled() {
                tick.tick().await;
                let response = client
                    .post(&url)
                    .json(&call_body(format!(
                        "+1{:010}",
                        2_000_000_000 + i % 1_000_000
                    )))
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "create answered {}",
                    response.status()
                );
                created.fetch_add(1, Ordering::Relaxed);
                i += 4;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }

    let started = Instant::now();
    let mut samples = Vec::new();
    for minute in 1..=args.soak_minutes {
        tokio::time::sleep_until((started + Duration::from_secs(60 * minute)).into()).await;
        let at = sample(&pool, &service, &client, minute as f64).await?;
        let (table, dead, live) = at.dead.first().cloned().unwrap_or_default();
        eprintln!(
            "bench: soak minute {minute}: {} calls created, {:.0} MB RSS, most dead tuples {table} {dead} (of {live} live), reads p50 {}",
            created.load(Ordering::Relaxed),
            at.rss_mb,
            at.reads
                .iter()
                .map(|(name, ms)| format!("{name} {ms:.2} ms"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        samples.push(at);
    }
    stop.cancel();
    for task in load {
        task.await??;
    }
    let rate = created.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64();
    let (first, last) = (
        samples.first().context("a soak of at least a minute")?,
        samples.last().context("a soak of at least a minute")?,
    );
    let minutes = format!("minute {:.0} → minute {:.0}", first.minute, last.minute);
    let dead_of = |s: &Sample| s.dead.iter().map(|(_, dead, _)| *dead as f64).sum::<f64>();
    let worst = |s: &Sample| {
        s.dead
            .first()
            .map(|(t, d, l)| format!("{t}: {d} dead of {l} live"))
            .unwrap_or_default()
    };
    let mut figures = vec![
        figure(
            &format!("soak: creates over {} min", args.soak_minutes),
            "calls/s",
            vec![rate],
            format!("the load asked {} calls/s", args.soak_rate),
        ),
        figure(
            "soak: dead tuples, every table, at the start",
            "rows",
            vec![dead_of(first)],
            worst(first),
        ),
        figure(
            "soak: dead tuples, every table, at the end",
            "rows",
            vec![dead_of(last)],
            format!("{}; flat is the target", worst(last)),
        ),
        figure(
            "soak: serve replica memory, start",
            "MB RSS",
            vec![first.rss_mb],
            minutes.clone(),
        ),
        figure(
            "soak: serve replica memory, end",
            "MB RSS",
            vec![last.rss_mb],
            "flat is the target",
        ),
    ];
    for ((name, start), (_, end)) in first.reads.iter().zip(&last.reads) {
        figures.push(figure(
            &format!("soak: {name} p50, start"),
            "ms",
            vec![*start],
            "",
        ));
        figures.push(figure(
            &format!("soak: {name} p50, end"),
            "ms",
            vec![*end],
            format!(
                "{:.2} × the start; flat is the target",
                end / start.max(1e-9)
            ),
        ));
    }
    drop(service);
    sim.stop();
    Ok(figures)
}
