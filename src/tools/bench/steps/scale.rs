//! The read routes with many calls stored, against the same routes with a thousand.

use super::*;

/// The calls of the small database each route is read against.
const SMALL: u64 = 1_000;
/// Campaigns in each database; every tenth call belongs to one of them.
const CAMPAIGNS: usize = 10;
/// Calls stored by one statement of the fill.
const FILL_CHUNK: u64 = 500_000;

/// One database filled as a service that has run for a while holds it (a call a second, so
/// ten million over four months): calls mostly final
/// (85 % completed, 8 % failed, 3 % cancelled, 2 % expired, 2 % pending), each with its
/// `CREATED` timeline entry and the documentation's example payload, a number called about
/// five times, every tenth call in one of ten campaigns; and an `api` on it.
struct Stored {
    service: Service,
    pool: PgPool,
    /// A call from the middle of the table, its number and a campaign.
    call: uuid::Uuid,
    number: String,
    campaign: uuid::Uuid,
    /// The cursor of a page half-way down the list.
    deep_cursor: i64,
}

impl Stored {
    async fn fill(cluster: &PgCluster, name: &str, calls: u64) -> anyhow::Result<Self> {
        let (url, pool) = fresh_database(cluster, name, 2).await?;
        let service = Service::start("api", &url, &[]).await?;
        let client = reqwest::Client::new();
        let mut campaigns = Vec::new();
        for i in 0..CAMPAIGNS {
            let body: serde_json::Value = client
                .post(service.url("/api/v1/campaigns"))
                .json(&json!({"name": format!("campaign {i}"), "scriptId": "welcomeFlow"}))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            campaigns.push(uuid::Uuid::parse_str(
                body["data"]["id"].as_str().context("campaign id")?,
            )?);
        }
        let numbers = (calls / 5).max(1) as i64;
        let mut from = 0;
        while from < calls {
            let to = (from + FILL_CHUNK).min(calls);
            sqlx::query(
                "WITH made AS (
                     INSERT INTO calls (id, to_number, script_id, metadata, status, attempts,
                                        next_attempt_at, started_at, completed_at, created_at,
                                        updated_at, campaign_id)
                     SELECT gen_random_uuid(), '+1' || (2000000000 + g % $3)::text, 'welcomeFlow',
                            '{\"customerName\": \"John Doe\"}', s.status,
                            CASE WHEN s.status = 'PENDING' THEN 0 ELSE 1 END,
                            CASE WHEN s.status = 'PENDING' THEN now() + interval '1 day' END,
                            CASE WHEN s.status NOT IN ('PENDING', 'CANCELLED') THEN at END,
                            CASE WHEN s.status <> 'PENDING' THEN at END,
                            at, at,
                            CASE WHEN g % 10 = 0 THEN ($4::uuid[])[1 + (g / 10) % cardinality($4::uuid[])] END
                     FROM generate_series($1, $2 - 1) g
                     CROSS JOIN LATERAL (SELECT now() - interval '1 second' * ($5 - g) AS at) t
                     CROSS JOIN LATERAL (SELECT CASE
                         WHEN g % 100 < 85 THEN 'COMPLETED'
                         WHEN g % 100 < 93 THEN 'FAILED'
                         WHEN g % 100 < 96 THEN 'CANCELLED'
                         WHEN g % 100 < 98 THEN 'EXPIRED'
                         ELSE 'PENDING' END::call_status AS status) s
                     ORDER BY g
                     RETURNING id, created_at
                 )
                 INSERT INTO call_events (call_id, kind, at) SELECT id, 'CREATED', created_at FROM made",
            )
            .bind(from as i64)
            .bind(to as i64)
            .bind(numbers)
            .bind(&campaigns)
            .bind(calls as i64)
            .execute(&pool)
            .await?;
            from = to;
        }
        // As autovacuum would have, long before a table grows this big.
        for table in ["calls", "call_events", "call_queue"] {
            sqlx::raw_sql(&format!("VACUUM (ANALYZE) {table}"))
                .execute(&pool)
                .await?;
        }
        db::fold_counts(&pool).await?;
        let (call, number, seq): (uuid::Uuid, String, i64) = sqlx::query_as(
            "SELECT id, to_number, seq FROM calls WHERE seq >= (SELECT max(seq) / 2 FROM calls) \
             ORDER BY seq LIMIT 1",
        )
        .fetch_one(&pool)
        .await?;
        Ok(Self {
            service,
            pool,
            call,
            number,
            campaign: campaigns[0],
            deep_cursor: seq,
        })
    }

    /// The read routes, each as a path on this database.
    fn routes(&self) -> Vec<(&'static str, String)> {
        vec![
            ("GET /api/v1/metrics", "/api/v1/metrics".into()),
            ("GET /metrics", "/metrics".into()),
            ("GET /api/v1/calls", "/api/v1/calls".into()),
            (
                "GET /api/v1/calls?status=PENDING",
                "/api/v1/calls?status=PENDING".into(),
            ),
            (
                "GET /api/v1/calls?status=COMPLETED",
                "/api/v1/calls?status=COMPLETED".into(),
            ),
            (
                "GET /api/v1/calls?to=",
                format!("/api/v1/calls?to={}", self.number.replace('+', "%2B")),
            ),
            (
                "GET /api/v1/calls?campaignId=",
                format!("/api/v1/calls?campaignId={}", self.campaign),
            ),
            (
                "GET /api/v1/calls?after= (half-way down)",
                format!("/api/v1/calls?after={}", self.deep_cursor),
            ),
            (
                "GET /api/v1/calls/{id}",
                format!("/api/v1/calls/{}", self.call),
            ),
            (
                "GET /api/v1/calls/{id}/events",
                format!("/api/v1/calls/{}/events", self.call),
            ),
            ("GET /api/v1/campaigns", "/api/v1/campaigns".into()),
            (
                "GET /api/v1/campaigns/{id}",
                format!("/api/v1/campaigns/{}", self.campaign),
            ),
        ]
    }
}

/// Step 6: every read route with `args.scale_calls` calls stored and with 1,000, one request
/// to each in turn (so that the shared machine's moods weigh on both alike),
/// `args.scale_requests` of each a run, over one keep-alive connection per database.
pub async fn scale(cluster: &PgCluster, args: &BenchArgs) -> anyhow::Result<Vec<Figure>> {
    let small = Stored::fill(cluster, "bench_scale_small", SMALL).await?;
    let started = Instant::now();
    let big = Stored::fill(cluster, "bench_scale_big", args.scale_calls).await?;
    let fill_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "bench: scale: {} calls stored in {fill_seconds:.0} s",
        args.scale_calls
    );
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1)
        .build()?;
    let routes: Vec<_> = small.routes().into_iter().zip(big.routes()).collect();
    // name -> (big p50s, big p99s, ratios of p50, ratios of p99), one value per run.
    let mut measured: Vec<(&str, [Vec<f64>; 4])> = routes
        .iter()
        .map(|((name, _), _)| (*name, Default::default()))
        .collect();
    for _ in 0..args.runs {
        for (((_, small_path), (_, big_path)), (_, values)) in routes.iter().zip(&mut measured) {
            let (small_url, big_url) = (small.service.url(small_path), big.service.url(big_path));
            // Warm both (plans, connections) before timing.
            for _ in 0..5 {
                timed_get(&client, &small_url).await?;
                timed_get(&client, &big_url).await?;
            }
            let (mut small_ms, mut big_ms) = (Vec::new(), Vec::new());
            for _ in 0..args.scale_requests {
                small_ms.push(timed_get(&client, &small_url).await?);
                big_ms.push(timed_get(&client, &big_url).await?);
            }
            let (small_p50, small_p99) = (
                percentile(&mut small_ms, 0.5),
                percentile(&mut small_ms, 0.99),
            );
            let (big_p50, big_p99) = (percentile(&mut big_ms, 0.5), percentile(&mut big_ms, 0.99));
            values[0].push(big_p50);
            values[1].push(big_p99);
            values[2].push(big_p50 / small_p50);
            values[3].push(big_p99 / small_p99);
        }
    }
    // Retention on the big table, for `args.seconds`: the older half of the calls (they were
    // made a second apart) deleted with their timelines, a batch at a time, as a worker does.
    let stop = CancellationToken::new();
    let timer = {
        let (stop, seconds) = (stop.clone(), args.seconds);
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            stop.cancel();
        })
    };
    let started = Instant::now();
    let retained =
        crate::worker::retention_round(&big.pool, Duration::from_secs(args.scale_calls / 2), &stop)
            .await?;
    let retention_rate = retained.calls as f64 / started.elapsed().as_secs_f64();
    timer.abort();
    let stored = format_calls(args.scale_calls);
    let mut figures = vec![
        figure(
            &format!("scale: filling {stored} calls (INSERT … SELECT, with their timelines)"),
            "s",
            vec![fill_seconds],
            "the fill itself, not a target",
        ),
        figure(
            &format!(
                "scale: retention, old final calls deleted with their timelines, {stored} stored"
            ),
            "calls/s",
            vec![retention_rate],
            "what it keeps up with: a service placing 100,000 calls a day ends about 1.2 a second",
        ),
    ];
    for (name, [p50s, p99s, ratios50, ratios99]) in measured {
        let ratio = |values: &[f64]| {
            let mut v = values.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        figures.push(figure(
            &format!("scale: {name} p50, {stored} calls"),
            "ms",
            p50s,
            format!(
                "{:.2} × its p50 with 1,000 calls; target ≤ 2 ×",
                ratio(&ratios50)
            ),
        ));
        figures.push(figure(
            &format!("scale: {name} p99, {stored} calls"),
            "ms",
            p99s,
            format!("{:.2} × its p99 with 1,000 calls", ratio(&ratios99)),
        ));
    }
    Ok(figures)
}

/// `10,000,000`, `2,000`.
fn format_calls(calls: u64) -> String {
    let digits = calls.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
