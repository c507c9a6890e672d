//! PostgreSQL's own ceiling, and ingest through the API against it.

use super::*;

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
                    .json(&call_body(format!("+1415{:07}", i % 10_000_000)))
                    .send()
                    .await?;
                anyhow::ensure!(
                    response.status().is_success(),
                    "create answered {}",
                    response.status()
                );
                l.lock()
                    .expect("latencies")
                    .push(started.elapsed().as_secs_f64() * 1000.0);
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
                        .map(|k| call_body(format!("+1416{:07}", (stream * 10 + b) * 1000 + k)))
                        .collect();
                    let response = c.post(&e).json(&json!({"calls": calls})).send().await?;
                    anyhow::ensure!(
                        response.status().is_success(),
                        "batch answered {}",
                        response.status()
                    );
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
