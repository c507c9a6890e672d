//! `call_queue`, the dispatcher's small table of open calls: the triggers on `calls` keep it
//! equal to the open calls through every kind of change, and the workers' upkeep vacuums it
//! once dead rows pile up.

mod common;

use std::time::{Duration, Instant};

use call_orchestrator::db;
use common::{TestApp, provider::Reply};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sqlx::PgPool;

type QueueRow = (
    i64,
    uuid::Uuid,
    String,
    String,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// The queue holds exactly the PENDING and IN_PROGRESS calls, with their number, status
/// and due time.
async fn assert_queue_mirrors_calls(pool: &PgPool, when: &str) {
    let queue: Vec<QueueRow> = sqlx::query_as(
        "SELECT seq, call_id, to_number, status::text, due_at FROM call_queue ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let open: Vec<QueueRow> = sqlx::query_as(
        "SELECT seq, id, to_number, status::text, next_attempt_at FROM calls
         WHERE status IN ('PENDING', 'IN_PROGRESS') ORDER BY seq",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(queue, open, "call_queue differs from the open calls {when}");
}

fn id(call: &Value) -> String {
    call["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_queue_follows_every_change_of_the_calls() {
    let (provider, app) =
        common::with_provider(Duration::from_secs(60), |c| c.max_concurrent_calls = 1).await;
    let pool = &app.pool;
    assert_queue_mirrors_calls(pool, "at the start").await;

    let a = app.create_call("+14155550100").await;
    let (status, body) = app
        .post(
            "/api/v1/calls/batch",
            json!({"calls": [
                {"to": "+14155550101", "scriptId": "s"},
                {"to": "+14155550102", "scriptId": "s"},
                {"to": "+14155550103", "scriptId": "s"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let batch: Vec<Value> = body["data"].as_array().unwrap().clone();
    let (b, c, d) = (&batch[0], &batch[1], &batch[2]);
    assert_queue_mirrors_calls(pool, "after the creates").await;

    let (status, body) = app
        .patch(
            &format!("/api/v1/calls/{}", id(b)),
            json!({"payload": {"to": "+14155550199"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_queue_mirrors_calls(pool, "after a PATCH of the number").await;

    let (status, body) = app
        .post(&format!("/api/v1/calls/{}/cancel", id(c)), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_queue_mirrors_calls(pool, "after a cancel").await;

    // One call at a time, oldest first: a is accepted and completed; then b fails (and
    // waits for its retry) and d is rate limited (and waits too).
    provider.script([Reply::Accept]);
    app.dispatcher().await.run_once().await.unwrap();
    assert_eq!(app.call(&id(&a)).await["status"], "IN_PROGRESS");
    assert_queue_mirrors_calls(pool, "after a claim").await;
    let external = app.call(&id(&a)).await["externalCallId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = app
        .webhook("", json!({"callId": external, "status": "COMPLETED"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_queue_mirrors_calls(pool, "after the final webhook").await;

    provider.script([Reply::Status(503, "{}")]);
    provider.set_default(Reply::RateLimit(Some(60)));
    app.dispatcher().await.run_once().await.unwrap();
    app.dispatcher().await.run_once().await.unwrap();
    assert_eq!(app.call(&id(b)).await["status"], "PENDING");
    assert_eq!(app.call(&id(b)).await["attempts"], 1);
    assert_eq!(app.call(&id(d)).await["status"], "PENDING");
    assert_eq!(app.call(&id(d)).await["attempts"], 0);
    assert_queue_mirrors_calls(pool, "after a retry and a 429").await;

    let e = app.create_call("+14155550104").await;
    provider.script([Reply::Accept]);
    app.dispatcher().await.run_once().await.unwrap();
    assert_eq!(app.call(&id(&e)).await["status"], "IN_PROGRESS");
    let expired = db::expire_overdue(pool, Duration::ZERO).await.unwrap();
    assert_eq!(expired.len(), 1);
    assert_queue_mirrors_calls(pool, "after an expiry").await;

    // An operator's own statements.
    sqlx::query(
        "UPDATE calls SET status = 'CANCELLED', next_attempt_at = NULL, completed_at = now()
         WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&id(d)).unwrap())
    .execute(pool)
    .await
    .unwrap();
    assert_queue_mirrors_calls(pool, "after an operator's UPDATE").await;
    sqlx::query("DELETE FROM calls WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&id(b)).unwrap())
        .execute(pool)
        .await
        .unwrap();
    assert_queue_mirrors_calls(pool, "after a DELETE").await;
    app.create_call("+14155550105").await;
    sqlx::query("TRUNCATE calls CASCADE")
        .execute(pool)
        .await
        .unwrap();
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM call_queue")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(left, 0, "TRUNCATE calls empties the queue");
}

async fn vacuumed(pool: &PgPool) -> bool {
    sqlx::query_scalar::<_, Option<chrono::DateTime<chrono::Utc>>>(
        "SELECT last_vacuum FROM pg_stat_user_tables WHERE relname = 'call_queue'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
    .is_some()
}

#[tokio::test]
async fn the_upkeep_vacuums_the_queue_once_dead_rows_pile_up() {
    let app = TestApp::spawn().await;
    let pool = &app.pool;
    without_autovacuum(pool).await;
    assert_eq!(
        db::queue_upkeep(pool).await.unwrap(),
        db::QueueUpkeep::default(),
        "nothing to do yet"
    );
    assert!(!vacuumed(pool).await);

    churn(&app).await;

    // The statistics reach pg_stat_user_tables within a second or so of each transaction.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !db::queue_upkeep(pool).await.unwrap().vacuumed {
        assert!(
            Instant::now() < deadline,
            "the upkeep never vacuumed the churned queue"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(vacuumed(pool).await);
}

#[tokio::test]
async fn one_worker_at_a_time_looks_after_the_queue() {
    let app = TestApp::spawn().await;
    let pool = &app.pool;
    without_autovacuum(pool).await;
    churn(&app).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(
        "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'call_queue'",
    )
    .fetch_one(pool)
    .await
    .unwrap()
        < 1000
    {
        assert!(
            Instant::now() < deadline,
            "the churn's dead rows never showed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Another replica's worker is vacuuming it.
    let mut other = pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(db::QUEUE_UPKEEP_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    assert_eq!(
        db::queue_upkeep(pool).await.unwrap(),
        db::QueueUpkeep::default(),
        "the upkeep leaves the queue to the worker already at it"
    );
    assert!(!vacuumed(pool).await);

    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(db::QUEUE_UPKEEP_LOCK)
        .execute(&mut *other)
        .await
        .unwrap();
    drop(other);
    // On a pool of one connection, so that the pool cannot open another in its place.
    let one = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&app.db_url)
        .await
        .unwrap();
    assert!(db::queue_upkeep(&one).await.unwrap().vacuumed);
    assert!(vacuumed(pool).await);
    // Done, it lets go of the lock and hands its connection back to the pool (not closed).
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = ($1 & 4294967295)::oid",
    )
    .bind(db::QUEUE_UPKEEP_LOCK)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(held, 0, "the upkeep let go of its lock");
    assert_eq!(one.size(), 1, "the upkeep's connection is back in the pool");
}

/// Keeps autovacuum (its threshold on call_queue is 1,000 dead rows) from vacuuming the
/// queue in a test's stead, or holding it when the test's upkeep comes.
async fn without_autovacuum(pool: &PgPool) {
    sqlx::query("ALTER TABLE call_queue SET (autovacuum_enabled = off)")
        .execute(pool)
        .await
        .unwrap();
}

/// 1,500 calls through the queue: each leaves dead rows behind (claimed, then ended).
async fn churn(app: &TestApp) {
    let pool = &app.pool;
    let calls: Vec<Value> = (0..1500)
        .map(|i| json!({"to": format!("+1415556{i:04}"), "scriptId": "s"}))
        .collect();
    for chunk in calls.chunks(500) {
        let (status, body) = app
            .post("/api/v1/calls/batch", json!({"calls": chunk}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let claimed = db::claim(
        pool,
        10_000,
        1500,
        Duration::from_secs(60),
        &call_orchestrator::domain::schedule::Rules::OFF,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1500);
    sqlx::query(
        "UPDATE calls SET status = 'COMPLETED', completed_at = now() WHERE status = 'IN_PROGRESS'",
    )
    .execute(pool)
    .await
    .unwrap();
    assert_queue_mirrors_calls(pool, "after the churn").await;
}

#[tokio::test]
async fn the_migration_fills_the_queue_from_the_calls_already_there() {
    let app = TestApp::spawn().await;
    sqlx::query("CREATE DATABASE before_the_queue")
        .execute(&app.pool)
        .await
        .unwrap();
    let options = (*app.pool.connect_options())
        .clone()
        .database("before_the_queue");
    let pool = PgPool::connect_with(options).await.unwrap();
    for earlier in [
        include_str!("../migrations/20261123000001_schema.sql"),
        include_str!("../migrations/20261124000001_operator_views.sql"),
    ] {
        sqlx::raw_sql(earlier).execute(&pool).await.unwrap();
    }
    sqlx::raw_sql(
        "INSERT INTO calls (id, to_number, script_id, status, attempts, next_attempt_at, started_at, completed_at)
         VALUES (gen_random_uuid(), '+14155550100', 's', 'PENDING', 0, now(), NULL, NULL),
                (gen_random_uuid(), '+14155550101', 's', 'PENDING', 1, now() + interval '1 hour', now(), NULL),
                (gen_random_uuid(), '+14155550102', 's', 'IN_PROGRESS', 1, NULL, now(), NULL),
                (gen_random_uuid(), '+14155550103', 's', 'COMPLETED', 1, NULL, now(), now()),
                (gen_random_uuid(), '+14155550104', 's', 'CANCELLED', 0, NULL, NULL, now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::raw_sql(include_str!("../migrations/20261124000002_call_queue.sql"))
        .execute(&pool)
        .await
        .unwrap();
    let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM call_queue")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 3);
    assert_queue_mirrors_calls(&pool, "after the migration").await;
}

#[tokio::test]
async fn only_a_user_that_may_vacuum_the_queue_looks_after_it() {
    let app = TestApp::spawn().await;
    assert!(db::owns_queue(&app.pool).await.unwrap());
    sqlx::query("CREATE ROLE visitor LOGIN")
        .execute(&app.pool)
        .await
        .unwrap();
    let options = (*app.pool.connect_options()).clone().username("visitor");
    let visitor = PgPool::connect_with(options).await.unwrap();
    assert!(!db::owns_queue(&visitor).await.unwrap());
    // The upkeep gives up at once instead of asking for a refused VACUUM every second.
    let upkeep = call_orchestrator::worker::keep_queue_lean(
        visitor,
        tokio_util::sync::CancellationToken::new(),
    );
    tokio::time::timeout(Duration::from_secs(30), upkeep)
        .await
        .expect("the upkeep of a user that may not vacuum the queue returns");
}

#[tokio::test]
async fn calls_held_by_a_patch_or_cancel_do_not_keep_the_claim_from_later_ones() {
    let app = TestApp::spawn().await;
    let mut calls = Vec::new();
    for i in 0..3 {
        calls.push(app.create_call(&format!("+1415555010{i}")).await);
    }
    let mut ids: Vec<(i64, uuid::Uuid)> = sqlx::query_as("SELECT seq, id FROM calls ORDER BY seq")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(ids.len(), calls.len());
    let last = ids.pop().unwrap().1;
    // The two oldest are locked, as a PATCH or a cancel would hold them.
    let mut holder = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM calls WHERE id = ANY($1) FOR UPDATE")
        .bind(ids.iter().map(|(_, id)| *id).collect::<Vec<_>>())
        .execute(&mut *holder)
        .await
        .unwrap();
    let claimed = db::claim(
        &app.pool,
        1,
        1,
        Duration::from_secs(60),
        &call_orchestrator::domain::schedule::Rules::OFF,
    )
    .await
    .unwrap();
    assert_eq!(
        claimed.iter().map(|c| c.call.id).collect::<Vec<_>>(),
        [last],
        "the one slot goes to the first call nobody holds"
    );
    holder.rollback().await.unwrap();
}

#[tokio::test]
async fn a_writer_with_another_search_path_still_keeps_the_queue() {
    let app = TestApp::spawn().await;
    let call = app.create_call("+14155550100").await;
    let mut conn = app.pool.acquire().await.unwrap();
    let schema: String = sqlx::query_scalar("SELECT current_schema()")
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    sqlx::query("SET search_path = pg_catalog")
        .execute(&mut *conn)
        .await
        .unwrap();
    sqlx::query(&format!(
        "UPDATE {schema}.calls SET status = 'CANCELLED', next_attempt_at = NULL, completed_at = now()
         WHERE id = $1"
    ))
    .bind(uuid::Uuid::parse_str(&id(&call)).unwrap())
    .execute(&mut *conn)
    .await
    .unwrap();
    sqlx::query("RESET search_path")
        .execute(&mut *conn)
        .await
        .unwrap();
    drop(conn);
    assert_queue_mirrors_calls(&app.pool, "after a write under another search_path").await;
}
