//! Lawful calling against PostgreSQL and a local provider: the calling window in the
//! callee's time zone, `notBefore` and `notAfter`, the suppression list, the daily limit
//! per number, and the retry policy per outcome (invariant 9). Every window here is set
//! relative to the hour the test runs at, so the tests hold at any hour.

mod common;

use std::time::Duration;

use call_orchestrator::config::Config;
use chrono::{DateTime, Timelike, Utc};
use common::{TestApp, assert_error, provider::FakeProvider};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A window of `hours` starting `from_now` hours from now, in UTC (`HH:MM-HH:MM`).
fn window_from_now(from_now: i64, hours: i64) -> String {
    let start = Utc::now() + chrono::Duration::hours(from_now);
    let end = start + chrono::Duration::hours(hours);
    format!(
        "{:02}:{:02}-{:02}:{:02}",
        start.hour(),
        start.minute(),
        end.hour(),
        end.minute()
    )
}

/// The window is closed now (it opens in three hours) for a callee in UTC.
fn closed(c: &mut Config) {
    c.calling_window = window_from_now(3, 2);
    c.default_timezone = "UTC".into();
}

/// The window is open now (for an hour either way) for a callee in UTC.
fn open(c: &mut Config) {
    c.calling_window = window_from_now(-1, 2);
    c.default_timezone = "UTC".into();
}

async fn setup(adjust: impl FnOnce(&mut Config)) -> (FakeProvider, TestApp) {
    common::with_provider(Duration::from_millis(300), adjust).await
}

fn at(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

async fn create(app: &TestApp, body: Value) -> Value {
    let (status, created) = app.post("/api/v1/calls", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["data"].clone()
}

/// The timeline's entries of one kind (their `detail`).
async fn entries(app: &TestApp, id: &str, kind: &str) -> Vec<Value> {
    let (_, body) = app.get(&format!("/api/v1/calls/{id}/events")).await;
    body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["detail"].clone())
        .collect()
}

/// A worker whose configuration differs from the API's (another replica, or one started
/// after a setting changed).
async fn replica(
    app: &TestApp,
    adjust: impl FnOnce(&mut Config),
) -> call_orchestrator::worker::Worker {
    let mut config = app.config.clone();
    adjust(&mut config);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(5)
        .connect(&app.db_url)
        .await
        .unwrap();
    call_orchestrator::app::worker(&config, pool).await.unwrap()
}

async fn worker_with(
    app: &TestApp,
    adjust: impl FnOnce(&mut Config),
) -> call_orchestrator::worker::Dispatcher {
    call_orchestrator::worker::Dispatcher::new(replica(app, adjust).await)
}

#[tokio::test]
async fn a_call_created_outside_its_window_waits_for_the_opening() {
    let (provider, app) = setup(closed).await;
    // +800 is no country's prefix: DEFAULT_TIMEZONE (UTC) decides.
    let call = create(&app, json!({"to": "+80012345678", "scriptId": "s"})).await;
    assert_eq!(call["timezone"], "UTC");
    assert_eq!(call["timeZones"], json!(["UTC"]));
    let due = at(&call["nextAttemptAt"]);
    let wait = due - Utc::now();
    assert!(
        wait > chrono::Duration::minutes(170) && wait <= chrono::Duration::minutes(181),
        "due in {wait}"
    );
    assert_eq!(
        due.minute(),
        (Utc::now() + chrono::Duration::hours(3)).minute()
    );
    let id = call["id"].as_str().unwrap();
    let waiting = entries(&app, id, "WAITING").await;
    assert_eq!(waiting.len(), 1);
    assert_eq!(waiting[0]["reason"], "CALLING_WINDOW");

    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 0);
    assert!(provider.received().is_empty());
    // The operator's query says why.
    let why: String = sqlx::query_scalar("SELECT waiting_for FROM calls WHERE id = $1::uuid")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(why, "CALLING_WINDOW");
}

#[tokio::test]
async fn the_claim_enforces_the_window_in_force_at_claim_time() {
    // Queued by an API replica that still had the window off; claimed by one that has it.
    let (provider, app) = setup(|_| {}).await;
    let call = create(&app, json!({"to": "+80012345678", "scriptId": "s"})).await;
    let id = call["id"].as_str().unwrap().to_owned();
    let strict = worker_with(&app, closed).await;
    assert_eq!(strict.run_once().await.unwrap(), 0);
    assert!(provider.received().is_empty());
    let call = app.call(&id).await;
    assert_eq!(call["status"], "PENDING");
    assert!(at(&call["nextAttemptAt"]) > Utc::now() + chrono::Duration::minutes(170));
    assert_eq!(
        entries(&app, &id, "WAITING").await[0]["reason"],
        "CALLING_WINDOW"
    );

    // Once the window is open (here: the setting changed again) and the call due, it goes.
    sqlx::query("UPDATE calls SET next_attempt_at = now() WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    let lenient = worker_with(&app, open).await;
    assert_eq!(lenient.run_once().await.unwrap(), 1);
    assert_eq!(provider.received().len(), 1);
}

#[tokio::test]
async fn the_callees_own_time_zone_decides() {
    // Open now in UTC; twelve hours away is outside it.
    let (provider, app) = setup(open).await;
    let here = create(
        &app,
        json!({"to": "+80012345678", "scriptId": "s", "timezone": "UTC"}),
    )
    .await;
    let away = create(
        &app,
        json!({"to": "+80012345679", "scriptId": "s", "timezone": "Etc/GMT-12"}),
    )
    .await;
    assert_eq!(away["timezone"], "Etc/GMT-12");
    assert!(at(&away["nextAttemptAt"]) > Utc::now() + chrono::Duration::hours(1));
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 1);
    let dialed: Vec<String> = provider
        .received()
        .iter()
        .map(|r| r.body["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(dialed, [here["payload"]["to"].as_str().unwrap()]);

    // A number's prefix gives its zones when the call names none.
    let riyadh = create(&app, json!({"to": "+966501234567", "scriptId": "s"})).await;
    assert_eq!(riyadh["timeZones"], json!(["Asia/Riyadh"]));
    // A +1 number with no known area code spans Guam to Newfoundland, whose windows of two
    // hours never meet: refused, asking for the callee's time zone.
    let (status, body) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+19995550100", "scriptId": "s"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(body["error"]["details"][0]["field"], "timezone", "{body}");
    let told = create(
        &app,
        json!({"to": "+19995550100", "scriptId": "s", "timezone": "America/Chicago"}),
    )
    .await;
    assert_eq!(told["timeZones"], json!(["America/Chicago"]));
    // With the window off, its many zones are shown as they are.
    let off = TestApp::spawn().await;
    let (_, anywhere) = off
        .post(
            "/api/v1/calls",
            json!({"to": "+19995550100", "scriptId": "s"}),
        )
        .await;
    assert!(anywhere["data"]["timezone"].is_null());
    assert!(anywhere["data"]["timeZones"].as_array().unwrap().len() > 30);
}

#[tokio::test]
async fn not_before_and_a_patch_that_clears_it() {
    let (provider, app) = setup(|_| {}).await;
    let later = Utc::now() + chrono::Duration::hours(1);
    let call = create(
        &app,
        json!({"to": "+14155550100", "scriptId": "s", "notBefore": later.to_rfc3339()}),
    )
    .await;
    let id = call["id"].as_str().unwrap().to_owned();
    assert_eq!(at(&call["notBefore"]).timestamp(), later.timestamp());
    assert_eq!(at(&call["nextAttemptAt"]).timestamp(), later.timestamp());
    assert_eq!(
        entries(&app, &id, "WAITING").await[0]["reason"],
        "NOT_BEFORE"
    );
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 0);
    assert!(provider.received().is_empty());

    let (status, patched) = app
        .patch(&format!("/api/v1/calls/{id}"), json!({"notBefore": null}))
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert!(patched["data"]["notBefore"].is_null());
    assert!(at(&patched["data"]["nextAttemptAt"]) <= Utc::now());
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 1);
}

#[tokio::test]
async fn a_call_past_its_deadline_expires_undialed() {
    let (provider, app) = setup(closed).await;
    let deadline = Utc::now() + chrono::Duration::milliseconds(1500);
    let call = create(
        &app,
        json!({"to": "+80012345678", "scriptId": "s", "notAfter": deadline.to_rfc3339()}),
    )
    .await;
    let id = call["id"].as_str().unwrap().to_owned();
    // Its window opens after its deadline: it falls due at the deadline.
    assert_eq!(
        at(&call["nextAttemptAt"]).timestamp_millis(),
        deadline.timestamp_millis()
    );
    tokio::time::sleep(Duration::from_millis(1700)).await;
    // The claim, which may reach it first, expires it rather than dialing it.
    let lenient = worker_with(&app, |c| c.calling_window = "off".into()).await;
    assert_eq!(lenient.run_once().await.unwrap(), 0);
    assert!(provider.received().is_empty());
    let call = app.call(&id).await;
    assert_eq!(call["status"], "EXPIRED");
    assert!(
        call["lastError"]
            .as_str()
            .unwrap()
            .starts_with("deadline passed"),
        "{call}"
    );

    // The sweeper expires one that waits elsewhere in the queue (here: for its notBefore).
    let soon = Utc::now() + chrono::Duration::milliseconds(800);
    let waiting = create(
        &app,
        json!({"to": "+80012345678", "scriptId": "s",
               "notBefore": (Utc::now() + chrono::Duration::hours(5)).to_rfc3339(),
               "notAfter": (Utc::now() + chrono::Duration::hours(6)).to_rfc3339()}),
    )
    .await;
    let wid = waiting["id"].as_str().unwrap().to_owned();
    sqlx::query("UPDATE calls SET not_before = NULL, not_after = $2 WHERE id = $1::uuid")
        .bind(&wid)
        .bind(soon)
        .execute(&app.pool)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    app.sweeper().await.run_once().await.unwrap();
    assert_eq!(app.call(&wid).await["status"], "EXPIRED");
    assert_eq!(entries(&app, &wid, "EXPIRED").await.len(), 1);

    // Bad deadlines are refused, and nothing is written.
    let before = app.row_counts().await;
    for body in [
        json!({"to": "+80012345678", "scriptId": "s", "notAfter": "2001-01-01T00:00:00Z"}),
        json!({"to": "+80012345678", "scriptId": "s",
               "notBefore": (Utc::now() + chrono::Duration::hours(2)).to_rfc3339(),
               "notAfter": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}),
        json!({"to": "+80012345678", "scriptId": "s", "timezone": "Mars/Olympus"}),
        json!({"to": "+80012345678", "scriptId": "s", "timezone": "../../etc/passwd"}),
        json!({"to": "+80012345678", "scriptId": "s", "notBefore": "tomorrow"}),
        // Years chrono reads but no schedule means (and the calendar cannot take).
        json!({"to": "+80012345678", "scriptId": "s", "timezone": "UTC", "notBefore": "+262142-12-31T23:00:00Z"}),
        json!({"to": "+80012345678", "scriptId": "s", "notBefore": "-200000-01-01T00:00:00Z"}),
        json!({"to": "+80012345678", "scriptId": "s", "notAfter": "+262142-12-31T23:00:00Z"}),
        // The same instant to the microsecond, which is all the database keeps.
        json!({"to": "+80012345678", "scriptId": "s",
               "notBefore": "2099-01-01T00:00:00.0000001Z", "notAfter": "2099-01-01T00:00:00.0000009Z"}),
    ] {
        let (status, answer) = app.post("/api/v1/calls", body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    }
    assert_eq!(app.row_counts().await, before);
}

#[tokio::test]
async fn suppressed_numbers_are_never_called() {
    let (provider, app) = setup(|_| {}).await;
    // Queued before the suppression: cancelled at its turn.
    let queued = create(&app, json!({"to": "+14155550100", "scriptId": "s"})).await;
    let (status, put) = app
        .request(
            Method::PUT,
            "/api/v1/suppressions/+1%20(415)%20555-0100",
            Some(json!({"reason": "asked not to be called"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{put}");
    assert_eq!(put["data"]["number"], "+14155550100");
    let (status, _) = app
        .request(
            Method::PUT,
            "/api/v1/suppressions/%2B14155550100",
            Some(json!({"reason": "asked not to be called, twice"})),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 0);
    assert!(provider.received().is_empty());
    let id = queued["id"].as_str().unwrap();
    let cancelled = app.call(id).await;
    assert_eq!(cancelled["status"], "CANCELLED");
    assert_eq!(
        cancelled["lastError"],
        "suppressed: asked not to be called, twice"
    );
    assert_eq!(entries(&app, id, "CANCELLED").await.len(), 1);

    // Creating a call to it is refused, alone or in a batch, and nothing is written.
    let before = app.row_counts().await;
    let (status, body) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+1 415 555 0100", "scriptId": "s"}),
        )
        .await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "NUMBER_SUPPRESSED",
    );
    let batch = json!({"calls": [
        {"to": "+14155550101", "scriptId": "s"},
        {"to": "+14155550100", "scriptId": "s"},
    ]});
    let (status, body) = app.post("/api/v1/calls/batch", batch.clone()).await;
    assert_error(
        status,
        &body,
        StatusCode::UNPROCESSABLE_ENTITY,
        "NUMBER_SUPPRESSED",
    );
    assert_eq!(body["error"]["details"][0]["index"], 1);
    assert_eq!(app.row_counts().await, before);

    // skipSuppressed leaves it out and says so.
    let mut skipping = batch;
    skipping["skipSuppressed"] = json!(true);
    let (status, body) = app.post("/api/v1/calls/batch", skipping).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 1);
    assert_eq!(
        body["skipped"],
        json!([{"index": 1, "to": "+14155550100", "code": "NUMBER_SUPPRESSED"}])
    );

    // Read, list, lift; then the number may be called again.
    let (status, one) = app.get("/api/v1/suppressions/%2B14155550100").await;
    assert_eq!(status, StatusCode::OK, "{one}");
    let (status, list) = app.get("/api/v1/suppressions?limit=5").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["pagination"]["total"], 1);
    let (status, _) = app
        .request(Method::DELETE, "/api/v1/suppressions/%2B14155550100", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = app
        .request(Method::DELETE, "/api/v1/suppressions/%2B14155550100", None)
        .await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "SUPPRESSION_NOT_FOUND",
    );
    create(&app, json!({"to": "+14155550100", "scriptId": "s"})).await;

    // An expired suppression is not in force.
    let (status, _) = app
        .request(
            Method::PUT,
            "/api/v1/suppressions/%2B14155550199",
            Some(json!({"reason": "until last year", "expiresAt": "2001-01-01T00:00:00Z"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    create(&app, json!({"to": "+14155550199", "scriptId": "s"})).await;
}

#[tokio::test]
async fn suppression_routes_refuse_bad_input_and_write_nothing() {
    let app = TestApp::spawn().await;
    for (path, body) in [
        (
            "/api/v1/suppressions/14155550100",
            json!({"reason": "no plus"}),
        ),
        ("/api/v1/suppressions/%2B14155550100", json!({"reason": ""})),
        (
            "/api/v1/suppressions/%2B14155550100",
            json!({"reason": "x".repeat(501)}),
        ),
        (
            "/api/v1/suppressions/%2B14155550100",
            json!({"reason": "bell\u{7}"}),
        ),
        (
            "/api/v1/suppressions/%2B14155550100",
            json!({"reason": "nul\u{0}"}),
        ),
        ("/api/v1/suppressions/%2B14155550100", json!({"reason": 5})),
        (
            "/api/v1/suppressions/%2B14155550100",
            json!({"reason": "ok", "extra": 1}),
        ),
        (
            "/api/v1/suppressions/%2B14155550100",
            json!({"reason": "ok", "expiresAt": "soon"}),
        ),
    ] {
        let (status, answer) = app.request(Method::PUT, path, Some(body.clone())).await;
        assert!(status.is_client_error(), "{path} {body}: {status} {answer}");
    }
    let (status, body) = app
        .post(
            "/api/v1/suppressions/batch",
            json!({"suppressions": [
                {"number": "+14155550100", "reason": "a"},
                {"number": "+1 415 555 0100", "reason": "b"},
                {"number": "not a number", "reason": "c"},
            ]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let indexes: Vec<i64> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["index"].as_i64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2]);
    let (status, body) = app
        .post("/api/v1/suppressions/batch", json!({"suppressions": []}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_BATCH_SIZE");
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
    let (status, body) = app
        .post(
            "/api/v1/suppressions/batch",
            json!({"suppressions": [
                {"number": "+14155550100", "reason": "a"},
                {"number": "+14155550101", "reason": "b", "expiresAt": "2030-01-01T00:00:00Z"},
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        at(&body["data"][1]["expiresAt"]),
        "2030-01-01T00:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    for expires in ["-200000-01-01T00:00:00Z", "+262142-12-31T23:00:00Z"] {
        let (status, body) = app
            .request(
                Method::PUT,
                "/api/v1/suppressions/%2B14155550102",
                Some(json!({"reason": "r", "expiresAt": expires})),
            )
            .await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    }
    let (status, body) = app.get("/api/v1/suppressions?limit=0").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_PARAMETER");
    let (status, body) = app.get("/api/v1/suppressions/%2B19999999999").await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "SUPPRESSION_NOT_FOUND",
    );
}

#[tokio::test]
async fn the_daily_limit_per_number_holds_across_calls() {
    let (provider, app) = setup(|c| c.max_attempts_per_number_per_day = 1).await;
    let first = create(&app, json!({"to": "+14155550100", "scriptId": "s"})).await;
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 1);
    let external = app.call(first["id"].as_str().unwrap()).await["externalCallId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.webhook("", json!({"callId": external, "status": "COMPLETED"}))
        .await;

    let second = create(&app, json!({"to": "+14155550100", "scriptId": "s"})).await;
    let other = create(&app, json!({"to": "+14155550101", "scriptId": "s"})).await;
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 1);
    assert_eq!(provider.received().len(), 2);
    assert_eq!(
        app.call(other["id"].as_str().unwrap()).await["status"],
        "IN_PROGRESS"
    );
    let id = second["id"].as_str().unwrap();
    let waiting = app.call(id).await;
    assert_eq!(waiting["status"], "PENDING");
    let due = at(&waiting["nextAttemptAt"]);
    assert!(due > Utc::now() + chrono::Duration::hours(23), "{due}");
    assert_eq!(
        entries(&app, id, "WAITING").await[0]["reason"],
        "DAILY_LIMIT"
    );
}

#[tokio::test]
async fn several_replicas_never_dial_outside_the_window() {
    let (provider, app) = setup(open).await;
    let mut inside = Vec::new();
    let mut calls = Vec::new();
    for i in 0..40 {
        let to = format!("+8001234{i:04}");
        // Half of them live twelve hours away, where the window is closed now.
        let timezone = if i % 2 == 0 { "UTC" } else { "Etc/GMT-12" };
        if i % 2 == 0 {
            inside.push(to.clone());
        }
        calls.push(json!({"to": to, "scriptId": "s", "timezone": timezone}));
    }
    // Queued with the window off, so that every call is due and the claims decide.
    let lenient_api =
        TestApp::spawn_with(|c| c.database_url = app.config.database_url.clone()).await;
    let (status, body) = lenient_api
        .post("/api/v1/calls/batch", json!({"calls": calls}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let replicas = futures_util::future::join_all((0..3).map(|_| worker_with(&app, open))).await;
    let dialed: usize = futures_util::future::join_all(replicas.iter().map(|d| d.run_once()))
        .await
        .into_iter()
        .map(Result::unwrap)
        .sum();
    let mut to: Vec<String> = provider
        .received()
        .iter()
        .map(|r| r.body["to"].as_str().unwrap().to_owned())
        .collect();
    to.sort();
    inside.sort();
    assert_eq!(dialed, 20);
    assert_eq!(to, inside);
    let waiting: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM calls WHERE status = 'PENDING' AND waiting_for = 'CALLING_WINDOW'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(waiting, 20);
}

#[tokio::test]
async fn outcomes_left_out_of_retry_outcomes_end_the_call() {
    let (_provider, app) = setup(|c| {
        c.retry_outcomes = "BUSY".into();
        c.retry_delay_busy = Some(Duration::from_secs(600));
    })
    .await;
    for (status, expected) in [
        ("FAILED", "FAILED"),
        ("VOICEMAIL", "COMPLETED"),
        ("NO_ANSWER", "FAILED"),
    ] {
        let (id, external) = app.dialed("+14155550100").await;
        app.webhook("", json!({"callId": external, "status": status}))
            .await;
        assert_eq!(app.call(&id).await["status"], expected, "{status}");
    }
    let (id, external) = app.dialed("+14155550100").await;
    app.webhook("", json!({"callId": external, "status": "BUSY"}))
        .await;
    let call = app.call(&id).await;
    assert_eq!(call["status"], "PENDING");
    let wait = at(&call["nextAttemptAt"]) - Utc::now();
    assert!(wait > chrono::Duration::seconds(500), "{wait}");
}

#[tokio::test]
async fn a_retry_that_would_land_after_the_window_closes_waits_for_the_next_opening() {
    // Open now for another hour; the backoff is two hours.
    let (_provider, app) = setup(|c| {
        open(c);
        c.retry_base_delay = Duration::from_secs(2 * 3600);
        c.retry_max_delay = Duration::from_secs(3 * 3600);
    })
    .await;
    let (id, external) = app.dialed("+80012345678").await;
    app.webhook("", json!({"callId": external, "status": "BUSY"}))
        .await;
    let call = app.call(&id).await;
    assert_eq!(call["status"], "PENDING");
    let due = at(&call["nextAttemptAt"]);
    // The next opening is tomorrow's, an hour before this hour.
    let wait = due - Utc::now();
    assert!(
        wait > chrono::Duration::hours(22) && wait < chrono::Duration::hours(24),
        "due in {wait}"
    );
    let why: String = sqlx::query_scalar("SELECT waiting_for FROM calls WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(why, "CALLING_WINDOW");
}

#[tokio::test]
async fn a_resend_that_may_place_the_call_waits_for_the_window() {
    // The answer to the dial is lost; by the time the attempt is sent again, the callee's
    // window has closed: the resend is held, not sent.
    let (provider, app) = setup(|_| {}).await;
    provider.set_default(common::provider::Reply::Hang(Duration::from_secs(2)));
    let call = create(&app, json!({"to": "+80012345678", "scriptId": "s"})).await;
    let id = call["id"].as_str().unwrap().to_owned();
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 1);
    let sent = provider.received().len();
    assert!(sent >= 1);
    sqlx::query("UPDATE call_attempts SET lease_until = now() WHERE call_id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    let night = call_orchestrator::worker::Sweeper::new(replica(&app, closed).await);
    night.run_once().await.unwrap();
    assert_eq!(
        provider.received().len(),
        sent,
        "a resend went out at night"
    );
    let (_, events) = app.get(&format!("/api/v1/calls/{id}/events")).await;
    let held = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "DIAL_UNKNOWN")
        .any(|e| {
            e["detail"]
                .to_string()
                .contains("outside the callee's calling window")
        });
    assert!(held, "{events}");
    assert_eq!(app.call(&id).await["status"], "IN_PROGRESS");

    // Daytime again, but the number was suppressed meanwhile: still held.
    let (status, _) = app
        .request(
            Method::PUT,
            "/api/v1/suppressions/%2B80012345678",
            Some(json!({"reason": "asked not to be called"})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    sqlx::query("UPDATE call_attempts SET lease_until = now() WHERE call_id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    let day = call_orchestrator::worker::Sweeper::new(replica(&app, open).await);
    day.run_once().await.unwrap();
    assert_eq!(
        provider.received().len(),
        sent,
        "a resend went out to a suppressed number"
    );
    let (_, events) = app.get(&format!("/api/v1/calls/{id}/events")).await;
    assert!(
        events.to_string().contains("its number is suppressed"),
        "{events}"
    );
}

#[tokio::test]
async fn a_patch_that_leaves_the_schedule_alone_keeps_the_calls_place() {
    let (_provider, app) = setup(|_| {}).await;
    let call = create(&app, json!({"to": "+14155550100", "scriptId": "s"})).await;
    let id = call["id"].as_str().unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, patched) = app
        .patch(
            &format!("/api/v1/calls/{id}"),
            json!({"payload": {"metadata": {"note": "x"}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["data"]["nextAttemptAt"], call["nextAttemptAt"]);
    let (status, body) = app.patch(&format!("/api/v1/calls/{id}"), json!({})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let (status, body) = app
        .patch(
            &format!("/api/v1/calls/{id}"),
            json!({"timezone": "Nowhere/Else"}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    // The timeline keeps the payload's patch as `patch`, and the schedule fields beside it.
    let (status, _) = app
        .patch(
            &format!("/api/v1/calls/{id}"),
            json!({"timezone": "Europe/Paris"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = app
        .patch(
            &format!("/api/v1/calls/{id}"),
            json!({"payload": {"metadata": {"note": null}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let updates = entries(&app, id, "UPDATED").await;
    assert_eq!(updates[0], json!({"patch": {"metadata": {"note": "x"}}}));
    assert_eq!(updates[1], json!({"timezone": "Europe/Paris"}));
    assert_eq!(updates[2], json!({"patch": {"metadata": {"note": null}}}));
}

#[tokio::test]
async fn an_idempotency_key_names_the_schedule_too() {
    let app = TestApp::spawn().await;
    let send = |not_before: DateTime<Utc>| {
        app.client
            .post(app.url("/api/v1/calls"))
            .header("Idempotency-Key", "schedule")
            .json(&json!({"to": "+14155550100", "scriptId": "s", "notBefore": not_before.to_rfc3339()}))
            .send()
    };
    let first = Utc::now() + chrono::Duration::hours(1);
    let (status, _) = common::read(send(first).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _) = common::read(send(first).await.unwrap()).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, body) =
        common::read(send(first + chrono::Duration::hours(1)).await.unwrap()).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "IDEMPOTENCY_KEY_REUSED",
    );
}

#[tokio::test]
async fn a_repeat_answers_the_first_request_whatever_the_suppression_list_became() {
    let app = TestApp::spawn().await;
    let post = |path: &'static str, key: &'static str, body: Value| {
        let request = app
            .client
            .post(app.url(path))
            .header("Idempotency-Key", key)
            .json(&body);
        async move { common::read(request.send().await.unwrap()).await }
    };
    let suppress = |number: &'static str| {
        app.request(
            Method::PUT,
            number,
            Some(json!({"reason": "asked not to be called"})),
        )
    };
    let single = json!({"to": "+14155550100", "scriptId": "s"});
    let (status, first) = post("/api/v1/calls", "single", single.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    suppress("/api/v1/suppressions/%2B14155550100").await;
    let (status, again) = post("/api/v1/calls", "single", single).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["data"]["id"], first["data"]["id"]);

    let batch = json!({"skipSuppressed": true, "calls": [
        {"to": "+14155550100", "scriptId": "s"},
        {"to": "+14155550101", "scriptId": "s"},
        {"to": "+14155550102", "scriptId": "s"},
    ]});
    let (status, first) = post("/api/v1/calls/batch", "batch", batch.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["data"].as_array().unwrap().len(), 2);
    assert_eq!(first["skipped"][0]["index"], 0);
    suppress("/api/v1/suppressions/%2B14155550101").await;
    suppress("/api/v1/suppressions/%2B14155550102").await;
    let (status, again) = post("/api/v1/calls/batch", "batch", batch).await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["data"], first["data"]);
}
