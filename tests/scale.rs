//! Scale over time: the counts the database keeps (right whoever writes `calls`), cursor
//! pagination, and retention (`RETENTION_PERIOD`).

mod common;

use std::{collections::HashSet, time::Duration};

use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use call_orchestrator::{db, worker};
use common::{TestApp, assert_error};

/// Calls in each status as a scan of `calls` counts them, with `total`.
async fn scanned(pool: &PgPool) -> Value {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status::text, count(*) FROM calls GROUP BY status")
            .fetch_all(pool)
            .await
            .unwrap();
    let mut counts = json!({
        "PENDING": 0, "IN_PROGRESS": 0, "COMPLETED": 0, "FAILED": 0, "EXPIRED": 0,
        "CANCELLED": 0, "total": 0
    });
    let mut total = 0;
    for (status, calls) in rows {
        counts[status] = json!(calls);
        total += calls;
    }
    counts["total"] = json!(total);
    counts
}

/// `GET /api/v1/metrics`'s counts, which read the kept counts.
async fn kept(app: &TestApp) -> Value {
    let (status, body) = app.get("/api/v1/metrics").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

/// The counts as kept and as scanned, before and after the changes are folded.
async fn assert_counts_right(app: &TestApp, when: &str) {
    let expected = scanned(&app.pool).await;
    assert_eq!(kept(app).await, expected, "{when}, before the fold");
    db::fold_counts(&app.pool).await.unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM call_count_changes")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "{when}: the fold takes every change");
    assert_eq!(kept(app).await, expected, "{when}, after the fold");
}

async fn total_of(app: &TestApp, query: &str) -> i64 {
    let (status, body) = app.get(&format!("/api/v1/calls?{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["pagination"]["total"].as_i64().unwrap()
}

async fn scanned_total(pool: &PgPool, filter: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM calls WHERE {filter}"))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn counts_stay_right_whoever_writes_the_calls() {
    let app = TestApp::spawn().await;
    assert_counts_right(&app, "no calls").await;
    for i in 0..5 {
        app.create_call(&format!("+1415555{i:04}")).await;
    }
    assert_counts_right(&app, "calls created through the API").await;

    // A bulk load, straight into the table.
    sqlx::query(
        "INSERT INTO calls (id, to_number, script_id, next_attempt_at) \
         SELECT gen_random_uuid(), '+1415666' || lpad(i::text, 4, '0'), 'bulk', now() \
         FROM generate_series(1, 1000) i",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_counts_right(&app, "a bulk INSERT").await;

    // An operator's UPDATE, moving calls between statuses, and one that changes none.
    sqlx::query(
        "UPDATE calls SET status = 'CANCELLED', next_attempt_at = NULL, completed_at = now() \
         WHERE script_id = 'bulk' AND to_number < '+14156660301'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE calls SET metadata = '{\"touched\": true}' WHERE script_id = 'bulk'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_counts_right(&app, "an operator's UPDATE").await;

    // A delete, of calls of two statuses.
    sqlx::query(
        "DELETE FROM calls WHERE script_id = 'bulk' \
         AND (to_number < '+14156660101' OR to_number > '+14156660950')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    assert_counts_right(&app, "a DELETE").await;

    // A transaction that rolls back leaves the counts as they were.
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("UPDATE calls SET status = 'CANCELLED', next_attempt_at = NULL, completed_at = now() WHERE status = 'PENDING'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_counts_right(&app, "a rolled-back UPDATE").await;

    // The list's totals come from the same counts, for each filter.
    assert_eq!(
        total_of(&app, "").await,
        scanned_total(&app.pool, "true").await
    );
    assert_eq!(
        total_of(&app, "status=CANCELLED").await,
        scanned_total(&app.pool, "status = 'CANCELLED'").await
    );
    assert_eq!(
        total_of(&app, "status=PENDING&to=%2B14155550003").await,
        1,
        "a number's calls are counted from its index"
    );

    // TRUNCATE empties the counts too.
    sqlx::query("TRUNCATE calls CASCADE")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_counts_right(&app, "a TRUNCATE").await;
    assert_eq!(total_of(&app, "").await, 0);
}

#[tokio::test]
async fn a_campaigns_totals_come_from_its_kept_counts() {
    let app = TestApp::spawn().await;
    let (status, campaign) = app
        .post(
            "/api/v1/campaigns",
            json!({"name": "spring", "scriptId": "spring"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{campaign}");
    let id = campaign["data"]["id"].as_str().unwrap().to_owned();
    let calls: Vec<Value> = (0..30)
        .map(|i| json!({"to": format!("+1415777{i:04}")}))
        .collect();
    let (status, body) = app
        .post(
            &format!("/api/v1/campaigns/{id}/calls"),
            json!({ "calls": calls }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    app.create_call("+14155550100").await;
    sqlx::query(
        "UPDATE calls SET status = 'CANCELLED', next_attempt_at = NULL, completed_at = now() \
         WHERE campaign_id = $1 AND to_number < '+14157770010'",
    )
    .bind(uuid::Uuid::parse_str(&id).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    for fold in [false, true] {
        if fold {
            db::fold_counts(&app.pool).await.unwrap();
        }
        assert_eq!(total_of(&app, &format!("campaignId={id}")).await, 30);
        assert_eq!(
            total_of(&app, &format!("campaignId={id}&status=CANCELLED")).await,
            10
        );
        assert_eq!(
            total_of(&app, &format!("campaignId={id}&status=PENDING")).await,
            20
        );
        assert_eq!(total_of(&app, "").await, 31);
    }
}

/// Every page after `after` until the last; the ids in the order served.
async fn walk(app: &TestApp, path: &str, limit: u32) -> (Vec<String>, usize) {
    let (mut ids, mut pages, mut after) = (Vec::new(), 0, None::<String>);
    loop {
        let glue = if path.contains('?') { '&' } else { '?' };
        let query = match &after {
            None => format!("{path}{glue}limit={limit}"),
            Some(cursor) => format!("{path}{glue}limit={limit}&after={cursor}"),
        };
        let (status, body) = app.get(&query).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let page = body["data"].as_array().unwrap();
        assert!(page.len() <= limit as usize);
        ids.extend(page.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        pages += 1;
        let pagination = &body["pagination"];
        if after.is_some() {
            assert!(
                pagination.get("total").is_none() && pagination.get("page").is_none(),
                "a page after a cursor computes no total: {pagination}"
            );
        } else {
            assert!(pagination["total"].is_i64(), "{pagination}");
        }
        match pagination["nextCursor"].as_str() {
            Some(cursor) => after = Some(cursor.to_owned()),
            None => return (ids, pages),
        }
    }
}

#[tokio::test]
async fn cursor_pages_are_disjoint_and_complete_while_calls_are_created() {
    let app = TestApp::spawn().await;
    let calls: Vec<Value> = (0..60)
        .map(|i| json!({"to": format!("+1415888{i:04}"), "scriptId": "s"}))
        .collect();
    let (status, body) = app
        .post("/api/v1/calls/batch", json!({ "calls": calls }))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let before: Vec<String> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();

    // Calls keep arriving while the pages are walked.
    let stop = CancellationToken::new();
    let creating = tokio::spawn({
        let (client, base, stop) = (app.client.clone(), app.base.clone(), stop.clone());
        async move {
            let mut made = 0;
            while !stop.is_cancelled() {
                let response = client
                    .post(format!("{base}/api/v1/calls"))
                    .json(&json!({"to": format!("+1415999{made:04}"), "scriptId": "s"}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::CREATED);
                made += 1;
            }
            made
        }
    });
    let (seen, pages) = walk(&app, "/api/v1/calls", 7).await;
    stop.cancel();
    let made = creating.await.unwrap();

    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "no call on two pages");
    for id in &before {
        assert!(unique.contains(id), "{id} was on no page");
    }
    // Newest first: the batch's calls, served in the reverse of their order in the batch.
    let served: Vec<&String> = seen.iter().filter(|id| before.contains(id)).collect();
    let reversed: Vec<&String> = before.iter().rev().collect();
    assert_eq!(served, reversed);
    assert!(pages >= 9, "{pages} pages of 7 for 60 calls and more");
    assert!(made > 0);

    // The same by status and by campaign filter, with nothing created meanwhile.
    let (pending, _) = walk(&app, "/api/v1/calls?status=PENDING", 25).await;
    let total = scanned_total(&app.pool, "status = 'PENDING'").await;
    assert_eq!(pending.len() as i64, total);
}

#[tokio::test]
async fn a_page_by_number_carries_a_cursor_and_campaigns_page_by_cursor_too() {
    let app = TestApp::spawn().await;
    for i in 0..3 {
        app.create_call(&format!("+1415444{i:04}")).await;
        let (status, body) = app
            .post(
                "/api/v1/campaigns",
                json!({"name": format!("c{i}"), "scriptId": "s"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (_, first) = app.get("/api/v1/calls?limit=2").await;
    let pagination = &first["pagination"];
    assert_eq!(pagination["page"], 1);
    assert_eq!(pagination["total"], 3);
    assert_eq!(pagination["totalPages"], 2);
    let cursor = pagination["nextCursor"].as_str().unwrap();
    let (_, second) = app
        .get(&format!("/api/v1/calls?limit=2&after={cursor}"))
        .await;
    assert_eq!(second["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        second["pagination"],
        json!({"limit": 2, "nextCursor": null})
    );
    let (_, last) = app.get("/api/v1/calls?limit=2&page=2").await;
    assert_eq!(last["data"], second["data"], "page 2 and the cursor agree");
    assert_eq!(last["pagination"]["nextCursor"], Value::Null);

    let (campaigns, pages) = walk(&app, "/api/v1/campaigns", 2).await;
    assert_eq!((campaigns.len(), pages), (3, 2));
    let (_, names) = app.get("/api/v1/campaigns?limit=3").await;
    let names: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c2", "c1", "c0"]);
}

#[tokio::test]
async fn a_bad_cursor_is_400() {
    let app = TestApp::spawn().await;
    for path in ["/api/v1/calls", "/api/v1/campaigns"] {
        for query in [
            "after=abc",
            "after=0",
            "after=-5",
            "after=",
            "after=99999999999999999999999",
            "after=1.5",
            "after=10&page=1",
        ] {
            let (status, body) = app.get(&format!("{path}?{query}")).await;
            let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_PARAMETER");
            assert!(message.contains("after"), "{path}?{query}: {message}");
        }
    }
}

/// Final calls completed `age` ago, straight into the table, each with an attempt, a
/// timeline entry and an event; returns their ids.
async fn final_calls(pool: &PgPool, count: i64, age: &str, prefix: &str) -> Vec<uuid::Uuid> {
    let ids: Vec<uuid::Uuid> = sqlx::query_scalar(
        "INSERT INTO calls (id, to_number, script_id, status, attempts, started_at, completed_at) \
         SELECT gen_random_uuid(), $3 || lpad(i::text, 5, '0'), 'old', 'COMPLETED', 1, \
                now() - $2::interval, now() - $2::interval \
         FROM generate_series(1, $1) i RETURNING id",
    )
    .bind(count)
    .bind(age)
    .bind(prefix)
    .fetch_all(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO call_attempts (call_id, attempt, status, lease_until, ended_at) \
         SELECT id, 1, 'COMPLETED', now(), now() FROM unnest($1::uuid[]) id",
    )
    .bind(&ids)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO call_events (call_id, kind, at) \
         SELECT id, 'COMPLETED', now() - $2::interval FROM unnest($1::uuid[]) id",
    )
    .bind(&ids)
    .bind(age)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO client_events (id, type, call_id, occurred_at, snapshot) \
         SELECT gen_random_uuid(), 'call.completed', id, now() - $2::interval, '{}' \
         FROM unnest($1::uuid[]) id",
    )
    .bind(&ids)
    .bind(age)
    .execute(pool)
    .await
    .unwrap();
    ids
}

async fn count(pool: &PgPool, sql: &str, ids: &[uuid::Uuid]) -> i64 {
    sqlx::query_scalar(sql)
        .bind(ids)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn retention_deletes_exactly_what_is_old_enough_while_calls_are_dialed() {
    let (_provider, app) = common::with_provider(Duration::from_millis(50), |c| {
        c.max_concurrent_calls = 5;
    })
    .await;
    let old = final_calls(
        &app.pool,
        2 * worker::RETENTION_BATCH + 300,
        "2 days",
        "+1415",
    )
    .await;
    let young = final_calls(&app.pool, 50, "23 hours", "+1416").await;
    // An old call under an Idempotency-Key, and old events: one delivered, one whose
    // delivery is still pending (kept: retention never breaks at-least-once).
    let (status, keyed) = common::read(
        app.client
            .post(app.url("/api/v1/calls"))
            .header("Idempotency-Key", "retained-key")
            .json(&json!({"to": "+14155550199", "scriptId": "s"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{keyed}");
    let keyed: uuid::Uuid = keyed["data"]["id"].as_str().unwrap().parse().unwrap();
    sqlx::query(
        "UPDATE calls SET status = 'CANCELLED', next_attempt_at = NULL, \
         completed_at = now() - interval '3 days' WHERE id = $1",
    )
    .bind(keyed)
    .execute(&app.pool)
    .await
    .unwrap();
    // Its event (of that UPDATE) occurred when it ended.
    sqlx::query(
        "UPDATE client_events SET occurred_at = now() - interval '3 days' WHERE call_id = $1",
    )
    .bind(keyed)
    .execute(&app.pool)
    .await
    .unwrap();
    let pending_event: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO client_events (id, type, call_id, occurred_at, snapshot) \
         VALUES (gen_random_uuid(), 'call.completed', $1, now() - interval '2 days', '{}') \
         RETURNING id",
    )
    .bind(old[0])
    .fetch_one(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO event_deliveries (event_id, endpoint_id, status, next_attempt_at) \
         VALUES ($1, gen_random_uuid(), 'PENDING', now() + interval '1 hour')",
    )
    .bind(pending_event)
    .execute(&app.pool)
    .await
    .unwrap();
    // Open calls created long ago (retention is by completedAt alone), being dialed.
    let mut open = Vec::new();
    for i in 0..40 {
        let call = app.create_call(&format!("+1417555{i:04}")).await;
        open.push(call["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap());
    }
    sqlx::query("UPDATE calls SET created_at = now() - interval '5 days' WHERE id = ANY ($1)")
        .bind(&open)
        .execute(&app.pool)
        .await
        .unwrap();
    // A late webhook holds one old call: retention skips it rather than wait.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE")
        .bind(old[1])
        .execute(&mut *holder)
        .await
        .unwrap();

    let dispatcher = app.dispatcher().await;
    let stop = CancellationToken::new();
    let dialing = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut claimed = 0;
            while !stop.is_cancelled() {
                claimed += dispatcher.run_once().await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            claimed
        }
    });
    let period = Duration::from_secs(24 * 3600);
    let done = tokio::time::timeout(
        Duration::from_secs(60),
        worker::retention_round(&app.pool, period, &CancellationToken::new()),
    )
    .await
    .expect("a held call is skipped, not waited for")
    .unwrap();
    stop.cancel();
    let claimed = dialing.await.unwrap();
    assert!(claimed >= 5, "the dispatcher dialed meanwhile ({claimed})");
    assert_eq!(
        done.calls,
        old.len() as u64,
        "every old call but the held one, and the keyed one"
    );
    holder.rollback().await.unwrap();
    let again = worker::retention_round(&app.pool, period, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(again.calls, 1, "the held call, once let go");

    let all_old: Vec<uuid::Uuid> = old.iter().copied().chain([keyed]).collect();
    for (table, sql) in [
        ("calls", "SELECT count(*) FROM calls WHERE id = ANY ($1)"),
        (
            "attempts",
            "SELECT count(*) FROM call_attempts WHERE call_id = ANY ($1)",
        ),
        (
            "timeline",
            "SELECT count(*) FROM call_events WHERE call_id = ANY ($1)",
        ),
        (
            "keys",
            "SELECT count(*) FROM idempotency_keys WHERE call_id = ANY ($1)",
        ),
    ] {
        assert_eq!(
            count(&app.pool, sql, &all_old).await,
            0,
            "old {table} deleted"
        );
    }
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM client_events WHERE call_id = ANY ($1)",
            &all_old
        )
        .await,
        1,
        "old events deleted but the one still being delivered"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM client_events WHERE id = ANY ($1)",
            &[pending_event]
        )
        .await,
        1
    );
    let kept: Vec<uuid::Uuid> = young.iter().chain(&open).copied().collect();
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM calls WHERE id = ANY ($1)",
            &kept
        )
        .await,
        kept.len() as i64,
        "young final calls and open calls kept"
    );
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM call_attempts WHERE call_id = ANY ($1)",
            &young
        )
        .await,
        young.len() as i64
    );
    assert_counts_right(&app, "after retention").await;
    let text = app.metrics_text().await;
    let deleted: f64 = text
        .lines()
        .find_map(|line| {
            line.strip_prefix("call_orchestrator_retention_deleted_total{what=\"calls\"} ")
        })
        .expect("retention counted in /metrics")
        .parse()
        .unwrap();
    assert!(deleted >= all_old.len() as f64, "{deleted}");

    // Nothing is left that is old enough.
    let last = worker::retention_round(&app.pool, period, &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(last, db::Retained::default());
}

#[tokio::test]
async fn the_fold_vacuums_the_changes_it_leaves_dead() {
    let app = TestApp::spawn().await;
    // Six thousand statements' worth of changes, as a busy minute leaves them.
    sqlx::query(
        "INSERT INTO call_count_changes (status, delta) \
         SELECT 'PENDING', 0 FROM generate_series(1, 6000)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let vacuumed = || async {
        sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
            "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'call_count_changes'",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(vacuumed().await, None);
    let stop = CancellationToken::new();
    let folding = tokio::spawn(worker::keep_counts_folded(app.pool.clone(), stop.clone()));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while vacuumed().await.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the changes' table was never vacuumed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.cancel();
    folding.await.unwrap();
    assert_counts_right(&app, "after the fold and its vacuum").await;
}

#[tokio::test]
async fn retention_runs_in_one_replica_at_a_time() {
    let app = TestApp::spawn().await;
    let old = final_calls(&app.pool, 10, "2 days", "+1418").await;
    let before = chrono::Utc::now() - chrono::Duration::days(1);
    // Another replica's batch is under way (it holds the batch's lock): this one leaves it.
    let mut other = app.pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(db::RETENTION_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(db::delete_old(&app.pool, before, 100).await.unwrap(), None);
    assert_eq!(
        count(
            &app.pool,
            "SELECT count(*) FROM calls WHERE id = ANY ($1)",
            &old
        )
        .await,
        10
    );
    other.rollback().await.unwrap();
    let done = db::delete_old(&app.pool, before, 100)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(done.calls, 10);
}
