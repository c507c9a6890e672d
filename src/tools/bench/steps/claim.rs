//! The claim, on a deep queue and right after a million calls of churn.

use super::*;
use crate::domain::schedule::Rules;

/// Milliseconds of one real claim of 10 calls (the claimed calls then completed, untimed).
async fn timed_claim(pool: &PgPool, rules: &Rules) -> anyhow::Result<f64> {
    let started = Instant::now();
    let claimed = db::claim(pool, 1_000_000, 10, Duration::from_secs(60), rules).await?;
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
    async fn timed_claim(&mut self, rules: &Rules) -> anyhow::Result<f64> {
        let ms = timed_claim(&self.pool, rules).await?;
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
    (runs, count): (u32, u32),
    rules: &Rules,
    reference: &mut Vec<f64>,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let (mut medians, mut ratios) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let (mut shallow_ms, mut deep_ms) = (Vec::new(), Vec::new());
        for _ in 0..count {
            shallow_ms.push(shallow.timed_claim(rules).await?);
            deep_ms.push(timed_claim(deep, rules).await?);
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
/// Their callees live in UTC (the windowed claim's window is open there).
async fn add_calls(pool: &PgPool, count: u32, offset: u64, finished: bool) -> anyhow::Result<()> {
    let mut done = 0;
    while done < count {
        let n = (count - done).min(100_000);
        let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
        sqlx::query(
            "INSERT INTO calls (id, to_number, script_id, timezone, status, attempts, next_attempt_at, started_at, completed_at)
             SELECT new.id, '+1' || (2000000000 + $1 + new.g)::text, 'bench', 'UTC',
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

/// Adds `count` PENDING calls to distinct numbers whose callees live at UTC+12, waiting for
/// their window as the service stores such calls (due at its opening, `waiting_for` set).
async fn add_waiting_calls(pool: &PgPool, count: u32, offset: u64) -> anyhow::Result<()> {
    let mut done = 0;
    while done < count {
        let n = (count - done).min(100_000);
        let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
        sqlx::query(
            "INSERT INTO calls (id, to_number, script_id, timezone, next_attempt_at, waiting_for)
             SELECT new.id, '+1' || (2000000000 + $1 + new.g)::text, 'bench', 'Etc/GMT-12',
                    now() + interval '12 hours', 'CALLING_WINDOW'
             FROM unnest($2::uuid[]) WITH ORDINALITY AS new (id, g)
             ORDER BY new.g",
        )
        .bind((offset + u64::from(done)) as i64)
        .bind(&ids)
        .execute(pool)
        .await?;
        done += n;
    }
    Ok(())
}

/// Fills `campaigns` campaigns with `per_campaign` PENDING calls each (plus `extra` more in
/// the campaigns the claim serves): a third paused (their calls due), a third with a
/// calling window of their own that is closed now (their calls waiting for its opening, as
/// the service stores them), a third active and open. Returns how many calls it made.
async fn add_campaigns(
    pool: &PgPool,
    campaigns: u32,
    per_campaign: u32,
    extra: u32,
    offset: u64,
) -> anyhow::Result<u64> {
    use chrono::Timelike;
    let opens = chrono::Utc::now() + chrono::Duration::hours(6);
    let closed_window = format!("{:02}:00-{:02}:00", opens.hour(), (opens.hour() + 2) % 24);
    let open_count = campaigns.div_ceil(3);
    let mut made = 0u64;
    for k in 0..campaigns {
        let id = uuid::Uuid::now_v7();
        let (status, window) = match k % 3 {
            0 => ("ACTIVE", None),
            1 => ("PAUSED", None),
            _ => ("ACTIVE", Some(closed_window.as_str())),
        };
        sqlx::query(
            "INSERT INTO campaigns (id, name, status, window_hours, max_concurrent_calls)              VALUES ($1, $2, $3::campaign_status, $4, 50)",
        )
        .bind(id)
        .bind(format!("bench {k}"))
        .bind(status)
        .bind(window)
        .execute(pool)
        .await?;
        let count = per_campaign
            + if k % 3 == 0 {
                extra.div_ceil(open_count)
            } else {
                0
            };
        let mut done = 0;
        while done < count {
            let n = (count - done).min(100_000);
            let ids: Vec<uuid::Uuid> = (0..n).map(|_| uuid::Uuid::now_v7()).collect();
            sqlx::query(
                "INSERT INTO calls (id, to_number, script_id, timezone, next_attempt_at, waiting_for, campaign_id)
                 SELECT new.id, '+1' || (2000000000 + $1 + new.g)::text, 'bench', 'UTC',
                        CASE WHEN $4 THEN $5 ELSE now() END,
                        CASE WHEN $4 THEN 'CALLING_WINDOW' END, $3
                 FROM unnest($2::uuid[]) WITH ORDINALITY AS new (id, g)
                 ORDER BY new.g",
            )
            .bind((offset + made) as i64)
            .bind(&ids)
            .bind(id)
            .bind(window.is_some())
            .bind(opens.with_minute(0).unwrap_or(opens))
            .execute(pool)
            .await?;
            done += n;
            made += u64::from(n);
        }
    }
    Ok(made)
}

/// A calling window open now in UTC (for three hours, from an hour ago), closed at UTC+12.
fn window_open_in_utc() -> Rules {
    use crate::domain::schedule::{CallingWindow, Days, Hours};
    use chrono::Timelike;
    let start = chrono::Utc::now() - chrono::Duration::hours(1);
    let end = start + chrono::Duration::hours(3);
    let hours = Hours::parse(&format!(
        "{:02}:{:02}-{:02}:{:02}",
        start.hour(),
        start.minute(),
        end.hour(),
        end.minute()
    ))
    .expect("a valid window");
    Rules {
        window: CallingWindow::new(Some(hours), Days::ALL),
        ..Rules::OFF
    }
}

/// Step 5: the claim with a shallow queue, a deep one, one with half its calls outside their
/// calling window, one shared by a hundred campaigns, and after a million calls of churn.
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
    let (deep, mut deep_ratios) = claim_runs(
        &mut shallow,
        &pool,
        (args.runs, claims),
        &Rules::OFF,
        &mut reference,
    )
    .await?;
    // Half the queue outside its window, and the older half at that: the claim walks the
    // queue in due order, so the waiting calls are never read. The window is enforced (and
    // the callee's zone worked out) for every call the claim takes, in both queues.
    eprintln!("bench: filling {rows} PENDING rows, half of them outside their window…");
    let (_url, windowed) = fresh_database(cluster, "bench_claim_windowed", 4).await?;
    let windowed_upkeep = tokio::spawn(crate::worker::keep_queue_lean(
        windowed.clone(),
        upkeep.clone(),
    ));
    add_waiting_calls(&windowed, rows / 2, 40_000_000).await?;
    add_calls(&windowed, rows / 2 + measured, 50_000_000, false).await?;
    sqlx::query("ANALYZE calls").execute(&windowed).await?;
    let rules = window_open_in_utc();
    let mut windowed_reference = Vec::new();
    let (half_out, mut half_out_ratios) = claim_runs(
        &mut shallow,
        &windowed,
        (args.runs, claims),
        &rules,
        &mut windowed_reference,
    )
    .await?;
    reference.extend(windowed_reference);
    // A hundred campaigns share the queue: a third paused (their lanes are never read), a
    // third outside their own window (their calls wait for its opening), a third served
    // round-robin under their caps.
    eprintln!("bench: filling 100 campaigns with {rows} PENDING calls…");
    let (_url, campaigned) = fresh_database(cluster, "bench_claim_campaigns", 4).await?;
    let campaigned_upkeep = tokio::spawn(crate::worker::keep_queue_lean(
        campaigned.clone(),
        upkeep.clone(),
    ));
    add_campaigns(&campaigned, 100, rows / 100, measured, 60_000_000).await?;
    sqlx::query("ANALYZE").execute(&campaigned).await?;
    let mut campaigns_reference = Vec::new();
    let (campaigns, mut campaigns_ratios) = claim_runs(
        &mut shallow,
        &campaigned,
        (args.runs, claims),
        &Rules::OFF,
        &mut campaigns_reference,
    )
    .await?;
    reference.extend(campaigns_reference);
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
            &crate::domain::schedule::Rules::OFF,
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
    let (after, mut after_ratios) = claim_runs(
        &mut shallow,
        &pool,
        (args.runs, claims),
        &Rules::OFF,
        &mut reference,
    )
    .await?;
    upkeep.cancel();
    for task in upkeep_tasks {
        task.await?;
    }
    windowed_upkeep.await?;
    campaigned_upkeep.await?;
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
    let half_out_against = against(&mut half_out_ratios);
    let campaigns_against = against(&mut campaigns_ratios);
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
            &format!("claim of 10 calls, {rows} PENDING, half outside their window"),
            "ms",
            half_out,
            half_out_against,
        ),
        figure(
            &format!(
                "claim of 10 calls, 100 campaigns, {rows} PENDING, a third paused, a third outside their window"
            ),
            "ms",
            campaigns,
            campaigns_against,
        ),
        figure(
            &format!("claim of 10 calls, right after {rows} calls of churn"),
            "ms",
            after,
            after_against,
        ),
    ])
}
