//! Campaigns against PostgreSQL and a local provider: the routes and their errors, counts
//! kept by the database, pause, resume and cancel racing the dispatchers, each campaign's
//! cap under several dispatchers (invariant 10), priority, round-robin fairness, and the
//! narrowing of the calling window, start, end and retries.

mod common;

use std::time::{Duration, Instant};

use call_orchestrator::config::Config;
use chrono::{DateTime, Timelike, Utc};
use common::{
    TestApp, assert_error,
    provider::{AutoEnd, FakeProvider},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn campaign(app: &TestApp, body: Value) -> Value {
    let (status, created) = app.post("/api/v1/campaigns", body).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["data"].clone()
}

/// Adds `n` calls to `id`, numbers from `first`, each tagged with the campaign's `group`
/// (which the fake provider counts by).
async fn add_calls(app: &TestApp, id: &str, group: &str, first: u32, n: u32) -> Vec<Value> {
    let calls: Vec<Value> = (first..first + n)
        .map(|i| json!({"to": format!("+1415{i:07}"), "metadata": {"group": group, "i": i}}))
        .collect();
    let (status, body) = app
        .post(
            &format!("/api/v1/campaigns/{id}/calls"),
            json!({"calls": calls}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["data"].as_array().unwrap().clone()
}

async fn get_campaign(app: &TestApp, id: &str) -> Value {
    let (status, body) = app.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].clone()
}

async fn act(app: &TestApp, id: &str, action: &str) -> (StatusCode, Value) {
    app.post(&format!("/api/v1/campaigns/{id}/{action}"), json!({}))
        .await
}

/// Dispatchers (and a sweeper) running until the returned token is cancelled.
async fn run_workers(
    app: &TestApp,
    dispatchers: usize,
) -> (CancellationToken, Vec<tokio::task::JoinHandle<()>>) {
    let shutdown = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..dispatchers {
        let dispatcher = app.dispatcher().await;
        tasks.push(tokio::spawn(dispatcher.run(shutdown.clone())));
    }
    let sweeper = app.sweeper().await;
    tasks.push(tokio::spawn(sweeper.run(shutdown.clone())));
    (shutdown, tasks)
}

async fn stop(shutdown: CancellationToken, tasks: Vec<tokio::task::JoinHandle<()>>) {
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
}

fn auto_end(min_ms: u64, max_ms: u64, success_rate: f64) -> Option<AutoEnd> {
    Some(AutoEnd {
        min: Duration::from_millis(min_ms),
        max: Duration::from_millis(max_ms),
        success_rate,
    })
}

async fn app_with(provider: &FakeProvider, adjust: impl FnOnce(&mut Config)) -> TestApp {
    let url = provider.url.clone();
    TestApp::spawn_with(|c| {
        c.ai_call_api_url = Some(url);
        c.retry_base_delay = Duration::from_millis(30);
        c.provider_timeout = Duration::from_secs(5);
        adjust(c);
    })
    .await
}

/// The `group` of each attempt claimed, in the order the claims took them (attempts are
/// numbered as claimed; the provider may receive concurrent dials in another order).
async fn claimed_groups(app: &TestApp) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT c.metadata->>'group' FROM call_attempts a JOIN calls c ON c.id = a.call_id \
         ORDER BY a.id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_campaign_is_created_read_listed_and_changed() {
    let app = TestApp::spawn().await;
    let created = campaign(
        &app,
        json!({
            "name": "  Clinic reminders ",
            "scriptId": "reminder",
            "maxConcurrentCalls": 3,
            "priority": 7,
            "callingWindow": {"start": "09:00", "end": "18:00", "days": ["mon", "tue"]},
            "retry": {"maxAttempts": 2, "outcomes": ["BUSY"], "delays": {"BUSY": "10m"}},
            "metadata": {"clinic": "north"}
        }),
    )
    .await;
    assert_eq!(created["name"], "Clinic reminders");
    assert_eq!(created["status"], "ACTIVE");
    assert_eq!(created["priority"], 7);
    assert_eq!(created["maxConcurrentCalls"], 3);
    assert_eq!(
        created["callingWindow"],
        json!({"start": "09:00", "end": "18:00", "days": ["mon", "tue"]})
    );
    assert_eq!(
        created["retry"],
        json!({"maxAttempts": 2, "outcomes": ["BUSY"], "delays": {"BUSY": "10m"}})
    );
    assert_eq!(created["counts"]["total"], 0);
    let id = created["id"].as_str().unwrap();
    assert_eq!(get_campaign(&app, id).await, created);

    let plain = campaign(&app, json!({"name": "plain"})).await;
    assert_eq!(plain["priority"], 5);
    assert_eq!(plain["maxConcurrentCalls"], Value::Null);
    assert_eq!(plain["callingWindow"], Value::Null);

    // Newest first; by status; paginated.
    let (status, list) = app.get("/api/v1/campaigns?limit=1").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["data"][0]["id"], plain["id"]);
    assert_eq!(list["pagination"]["total"], 2);
    assert_eq!(list["pagination"]["totalPages"], 2);
    act(&app, plain["id"].as_str().unwrap(), "pause").await;
    let (_, paused) = app.get("/api/v1/campaigns?status=PAUSED").await;
    assert_eq!(paused["data"].as_array().unwrap().len(), 1);
    assert_eq!(paused["data"][0]["id"], plain["id"]);

    // A merge patch of the settings: nulls remove, the rest is validated like a create.
    let (status, patched) = app
        .patch(
            &format!("/api/v1/campaigns/{id}"),
            json!({"priority": 2, "maxConcurrentCalls": null, "metadata": {"wave": 2}, "retry": {"delays": null}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    let patched = &patched["data"];
    assert_eq!(patched["priority"], 2);
    assert_eq!(patched["maxConcurrentCalls"], Value::Null);
    assert_eq!(patched["metadata"], json!({"clinic": "north", "wave": 2}));
    assert_eq!(
        patched["retry"],
        json!({"maxAttempts": 2, "outcomes": ["BUSY"]})
    );
    assert_eq!(patched["name"], "Clinic reminders");
    for (body, field) in [
        (json!({"priority": 10}), "priority"),
        (json!({"name": ""}), "name"),
        (json!({"status": "PAUSED"}), "status"),
        (json!({"callingWindow": {"start": "9"}}), "callingWindow"),
    ] {
        let (status, answer) = app.patch(&format!("/api/v1/campaigns/{id}"), body).await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert_eq!(answer["error"]["details"][0]["field"], field, "{answer}");
    }
    let (status, answer) = app
        .patch(&format!("/api/v1/campaigns/{id}"), json!([]))
        .await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert_eq!(
        get_campaign(&app, id).await["priority"],
        2,
        "refused patches change nothing"
    );

    // Unknown, malformed.
    let unknown = uuid::Uuid::now_v7();
    let (status, body) = app.get(&format!("/api/v1/campaigns/{unknown}")).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "CAMPAIGN_NOT_FOUND");
    let (status, body) = app.get("/api/v1/campaigns/not-a-uuid").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app
        .patch(
            &format!("/api/v1/campaigns/{unknown}"),
            json!({"priority": 1}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "CAMPAIGN_NOT_FOUND");
    let (status, body) = act(&app, &unknown.to_string(), "pause").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "CAMPAIGN_NOT_FOUND");
    let (status, body) = app.get("/api/v1/campaigns?status=DONE").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = app.get("/api/v1/campaigns?limit=101").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_PARAMETER");
}

#[tokio::test]
async fn bad_campaigns_are_refused_and_nothing_is_written() {
    let app = TestApp::spawn_with(|c| c.calling_window = "08:00-21:00".into()).await;
    let later = (Utc::now() + chrono::Duration::hours(2)).to_rfc3339();
    let sooner = (Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let past = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    for (body, field) in [
        (json!({}), None),
        (json!({"name": ""}), Some("name")),
        (json!({"name": "x".repeat(201)}), Some("name")),
        (json!({"name": 5}), None),
        (json!({"name": "n", "priority": 10}), Some("priority")),
        (json!({"name": "n", "priority": -1}), Some("priority")),
        (
            json!({"name": "n", "maxConcurrentCalls": 0}),
            Some("maxConcurrentCalls"),
        ),
        (json!({"name": "n", "scriptId": "bad id"}), Some("scriptId")),
        (
            json!({"name": "n", "callingWindow": {"start": "07:00", "end": "12:00"}}),
            Some("callingWindow"),
        ),
        (
            json!({"name": "n", "callingWindow": {"start": "09:00", "end": "25:00"}}),
            Some("callingWindow"),
        ),
        (
            json!({"name": "n", "callingWindow": {"start": "09:00", "end": "12:00", "days": ["someday"]}}),
            Some("callingWindow"),
        ),
        (json!({"name": "n", "endAt": past}), Some("endAt")),
        (
            json!({"name": "n", "startAt": later, "endAt": sooner}),
            Some("endAt"),
        ),
        (
            json!({"name": "n", "startAt": "9999-01-01T00:00:00Z"}),
            Some("startAt"),
        ),
        (
            json!({"name": "n", "retry": {"maxAttempts": 0}}),
            Some("retry.maxAttempts"),
        ),
        (
            json!({"name": "n", "retry": {"outcomes": ["HUNG_UP"]}}),
            Some("retry.outcomes"),
        ),
        (
            json!({"name": "n", "retry": {"delays": {"BUSY": "later"}}}),
            Some("retry.delays.BUSY"),
        ),
        (
            json!({"name": "n", "metadata": {"big": "x".repeat(17 * 1024)}}),
            Some("metadata"),
        ),
        (json!({"name": "n", "color": "red"}), None),
    ] {
        let (status, answer) = app.post("/api/v1/campaigns", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {answer}");
        if let Some(field) = field {
            assert_eq!(
                answer["error"]["details"][0]["field"], field,
                "{body} -> {answer}"
            );
        }
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM campaigns")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(stored, 0);
    // Within the service's window: accepted.
    campaign(
        &app,
        json!({"name": "n", "callingWindow": {"start": "09:00", "end": "17:00", "days": ["sat"]}}),
    )
    .await;
}

#[tokio::test]
async fn calls_join_a_campaign_on_create_or_by_its_route() {
    let app = TestApp::spawn().await;
    let scripted = campaign(&app, json!({"name": "scripted", "scriptId": "survey"})).await;
    let bare = campaign(&app, json!({"name": "bare"})).await;
    let (s_id, b_id) = (
        scripted["id"].as_str().unwrap(),
        bare["id"].as_str().unwrap(),
    );

    // A call of a campaign with a script may leave its own out.
    let (status, call) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+14155550100", "campaignId": s_id}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{call}");
    assert_eq!(call["data"]["campaignId"], s_id);
    assert_eq!(call["data"]["payload"]["scriptId"], "survey");
    // Its own wins; without either it is refused.
    let (_, own) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+14155550101", "scriptId": "mine", "campaignId": s_id}),
        )
        .await;
    assert_eq!(own["data"]["payload"]["scriptId"], "mine");
    let (status, body) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+14155550102", "campaignId": b_id}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let (status, body) = app
        .post("/api/v1/calls", json!({"to": "+14155550102"}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let unknown = uuid::Uuid::now_v7();
    let (status, body) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+14155550102", "scriptId": "s", "campaignId": unknown}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "CAMPAIGN_NOT_FOUND");

    // The campaign's route: all or nothing, items without campaignId.
    let added = add_calls(&app, s_id, "s", 0, 3).await;
    assert!(
        added
            .iter()
            .all(|c| c["campaignId"] == s_id && c["payload"]["scriptId"] == "survey")
    );
    let (status, body) = app
        .post(
            &format!("/api/v1/campaigns/{s_id}/calls"),
            json!({"calls": [{"to": "+14155550200"}, {"to": "+14155550201", "campaignId": b_id}, {"to": "555"}]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let indexes: Vec<u64> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2]);
    let (status, body) = app
        .post(
            &format!("/api/v1/campaigns/{unknown}/calls"),
            json!({"calls": [{"to": "+14155550200", "scriptId": "s"}]}),
        )
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "CAMPAIGN_NOT_FOUND");
    // A batch naming a campaign per item.
    let (status, body) = app
        .post(
            "/api/v1/calls/batch",
            json!({"calls": [{"to": "+14155550300", "campaignId": s_id}, {"to": "+14155550301", "scriptId": "x", "campaignId": b_id}, {"to": "+14155550302", "scriptId": "x"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"][1]["campaignId"], b_id);
    assert_eq!(body["data"][2]["campaignId"], Value::Null);

    // The list filter, and the counts.
    let (_, page) = app
        .get(&format!("/api/v1/calls?campaignId={s_id}&limit=100"))
        .await;
    assert_eq!(page["pagination"]["total"], 6);
    assert!(
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["campaignId"] == s_id)
    );
    let counts = &get_campaign(&app, s_id).await["counts"];
    assert_eq!(counts["PENDING"], 6);
    assert_eq!(counts["total"], 6);
    let (status, _) = app.get("/api/v1/calls?campaignId=nope").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Cancelled: no calls may be added, by either route; nothing is written.
    let (status, cancelled) = act(&app, b_id, "cancel").await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["data"]["status"], "CANCELLED");
    assert_eq!(
        cancelled["data"]["counts"]["CANCELLED"], 1,
        "its pending call cancelled"
    );
    let before = app.row_counts().await;
    let (status, body) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+14155550400", "scriptId": "s", "campaignId": b_id}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CAMPAIGN_CANCELLED");
    let (status, body) = app
        .post(
            &format!("/api/v1/campaigns/{b_id}/calls"),
            json!({"calls": [{"to": "+14155550401", "scriptId": "s"}]}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CAMPAIGN_CANCELLED");
    let (status, body) = app
        .post("/api/v1/calls/batch", json!({"calls": [{"to": "+14155550402", "scriptId": "s"}, {"to": "+14155550403", "scriptId": "s", "campaignId": b_id}]}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CAMPAIGN_CANCELLED");
    assert_eq!(app.row_counts().await, before, "nothing may be written");
    let (status, body) = app
        .patch(&format!("/api/v1/campaigns/{b_id}"), json!({"priority": 1}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CAMPAIGN_CANCELLED");
}

#[tokio::test]
async fn a_keyed_request_repeated_after_its_campaign_was_cancelled_answers_its_calls() {
    let app = TestApp::spawn().await;
    let id = campaign(&app, json!({"name": "c", "scriptId": "s"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let send = async |key: &str, to: &str| {
        let response = app
            .client
            .post(app.url(&format!("/api/v1/campaigns/{id}/calls")))
            .header("Idempotency-Key", key)
            .json(&json!({"calls": [{"to": to}]}))
            .send()
            .await
            .unwrap();
        common::read(response).await
    };
    let (status, first) = send("k-1", "+14155550100").await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    act(&app, &id, "cancel").await;
    let (status, again) = send("k-1", "+14155550100").await;
    assert_eq!(status, StatusCode::CREATED, "{again}");
    assert_eq!(again["data"][0]["id"], first["data"][0]["id"]);
    let (status, body) = send("k-2", "+14155550101").await;
    assert_error(status, &body, StatusCode::CONFLICT, "CAMPAIGN_CANCELLED");
}

#[tokio::test]
async fn pause_resume_and_cancel_move_only_from_where_they_may() {
    let app = TestApp::spawn().await;
    let id = campaign(&app, json!({"name": "c", "scriptId": "s"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = act(&app, &id, "resume").await;
    assert_error(status, &body, StatusCode::CONFLICT, "CAMPAIGN_NOT_PAUSED");
    let (status, body) = act(&app, &id, "pause").await;
    assert_eq!(
        (status, body["data"]["status"].clone()),
        (StatusCode::OK, json!("PAUSED"))
    );
    let (status, body) = act(&app, &id, "pause").await;
    assert_error(status, &body, StatusCode::CONFLICT, "CAMPAIGN_NOT_ACTIVE");
    let (status, body) = act(&app, &id, "resume").await;
    assert_eq!(
        (status, body["data"]["status"].clone()),
        (StatusCode::OK, json!("ACTIVE"))
    );
    let (status, body) = act(&app, &id, "cancel").await;
    assert_eq!(
        (status, body["data"]["status"].clone()),
        (StatusCode::OK, json!("CANCELLED"))
    );
    for action in ["pause", "resume", "cancel"] {
        let (status, body) = act(&app, &id, action).await;
        assert_error(status, &body, StatusCode::CONFLICT, "CAMPAIGN_CANCELLED");
    }
}

#[tokio::test]
async fn counts_are_kept_by_the_database_whoever_writes() {
    let provider = FakeProvider::start().await;
    let app = app_with(&provider, |_| {}).await;
    let id = campaign(&app, json!({"name": "c", "scriptId": "s"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let calls = add_calls(&app, &id, "c", 0, 5).await;
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 5);
    let counts = get_campaign(&app, &id).await["counts"].clone();
    assert_eq!(
        (counts["IN_PROGRESS"].clone(), counts["total"].clone()),
        (json!(5), json!(5))
    );

    // An operator's UPDATE and DELETE, and a bulk INSERT, straight in SQL.
    sqlx::query("UPDATE calls SET status = 'COMPLETED', completed_at = now(), next_attempt_at = NULL WHERE id = $1::uuid")
        .bind(calls[0]["id"].as_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM call_events WHERE call_id = $1::uuid")
        .bind(calls[1]["id"].as_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM call_attempts WHERE call_id = $1::uuid")
        .bind(calls[1]["id"].as_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM calls WHERE id = $1::uuid")
        .bind(calls[1]["id"].as_str().unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO calls (id, to_number, script_id, campaign_id, next_attempt_at) \
         SELECT gen_random_uuid(), '+1415' || lpad(g::text, 7, '0'), 's', $1::uuid, now() + interval '1 hour' \
         FROM generate_series(100, 149) g",
    )
    .bind(&id)
    .execute(&app.pool)
    .await
    .unwrap();
    let expect = |counts: &Value| {
        assert_eq!(counts["COMPLETED"], 1, "{counts}");
        assert_eq!(counts["IN_PROGRESS"], 3, "{counts}");
        assert_eq!(counts["PENDING"], 50, "{counts}");
        assert_eq!(counts["total"], 54, "{counts}");
    };
    expect(&get_campaign(&app, &id).await["counts"]);
    // Folded (every second by each worker): the same counts, from the folded table now.
    call_orchestrator::db::fold_counts(&app.pool).await.unwrap();
    let unfolded: i64 = sqlx::query_scalar("SELECT count(*) FROM campaign_count_changes")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(unfolded, 0);
    expect(&get_campaign(&app, &id).await["counts"]);
    let (_, list) = app.get("/api/v1/campaigns").await;
    expect(&list["data"][0]["counts"]);
}

#[tokio::test]
async fn a_campaign_completes_when_its_last_call_ends_and_reopens_with_more() {
    let provider = FakeProvider::start().await;
    let app = app_with(&provider, |_| {}).await;
    let id = campaign(&app, json!({"name": "c", "scriptId": "s"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    add_calls(&app, &id, "c", 0, 2).await;
    app.dispatcher().await.run_once().await.unwrap();
    let received = provider.received();
    for (i, r) in received.iter().enumerate() {
        let (status, _) = app
            .webhook(
                &common::webhook_query(&app.pool, r.call_id.as_deref().unwrap()).await,
                json!({"callId": r.call_id, "status": "COMPLETED", "durationSec": 5}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        let expected = if i == 0 { "ACTIVE" } else { "COMPLETED" };
        assert_eq!(get_campaign(&app, &id).await["status"], expected);
    }
    let (status, body) = app
        .patch(&format!("/api/v1/campaigns/{id}"), json!({"priority": 1}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CAMPAIGN_COMPLETED");
    add_calls(&app, &id, "c", 10, 1).await;
    assert_eq!(get_campaign(&app, &id).await["status"], "ACTIVE");

    // The sweeper mends what two transactions ending the last calls at once cannot see.
    sqlx::query("UPDATE campaigns SET status = 'COMPLETED' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    app.sweeper().await.run_once().await.unwrap();
    assert_eq!(get_campaign(&app, &id).await["status"], "ACTIVE");
    sqlx::query("UPDATE calls SET status = 'CANCELLED', completed_at = now(), next_attempt_at = NULL WHERE campaign_id = $1::uuid AND status = 'PENDING'")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(get_campaign(&app, &id).await["status"], "COMPLETED");
    sqlx::query("UPDATE campaigns SET status = 'ACTIVE' WHERE id = $1::uuid")
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
    app.sweeper().await.run_once().await.unwrap();
    assert_eq!(get_campaign(&app, &id).await["status"], "COMPLETED");
}

/// Invariant 10: each campaign's cap holds exactly under several dispatchers claiming at
/// once, beside the global cap and loose calls, as the provider itself counts.
#[tokio::test]
async fn each_campaigns_cap_holds_under_several_dispatchers() {
    const CAP: u32 = 10;
    let provider = FakeProvider::start_with(auto_end(5, 60, 0.7)).await;
    let app = app_with(&provider, |c| c.max_concurrent_calls = CAP).await;
    let a = campaign(
        &app,
        json!({"name": "a", "scriptId": "s", "maxConcurrentCalls": 2}),
    )
    .await;
    let b = campaign(
        &app,
        json!({"name": "b", "scriptId": "s", "maxConcurrentCalls": 3}),
    )
    .await;
    add_calls(&app, a["id"].as_str().unwrap(), "a", 0, 60).await;
    add_calls(&app, b["id"].as_str().unwrap(), "b", 100, 60).await;
    let loose: Vec<Value> = (200..260)
        .map(|i| json!({"to": format!("+1415{i:07}"), "scriptId": "s", "metadata": {"group": "loose"}}))
        .collect();
    app.post("/api/v1/calls/batch", json!({"calls": loose}))
        .await;

    let (shutdown, tasks) = run_workers(&app, 3).await;
    wait_for("every call to end", Duration::from_secs(180), async || {
        let (_, metrics) = app.get("/api/v1/metrics").await;
        metrics["data"]["PENDING"] == 0 && metrics["data"]["IN_PROGRESS"] == 0
    })
    .await;
    stop(shutdown, tasks).await;
    let (peak, per_group, per_number) =
        provider.with_stats(|s| (s.peak_active, s.peak_per_group.clone(), s.peak_per_number));
    assert!(peak <= CAP as usize, "global peak {peak}");
    assert_eq!(per_number, 1);
    assert_eq!(
        per_group["a"], 2,
        "campaign a's cap (2) reached, never passed: {per_group:?}"
    );
    assert_eq!(
        per_group["b"], 3,
        "campaign b's cap (3) reached, never passed: {per_group:?}"
    );
    assert!(
        per_group["loose"] >= 3,
        "loose calls used the rest: {per_group:?}"
    );
    let sweeper = app.sweeper().await;
    for c in [&a, &b] {
        let id = c["id"].as_str().unwrap();
        wait_for(
            "the campaign to complete",
            Duration::from_secs(10),
            async || {
                sweeper.run_once().await.unwrap();
                get_campaign(&app, id).await["status"] == "COMPLETED"
            },
        )
        .await;
    }
}

/// Priority first: every due call of a higher-priority campaign is dialed before one of a
/// lower; loose calls count as priority 5.
#[tokio::test]
async fn higher_priority_campaigns_are_dialed_first() {
    let provider = FakeProvider::start().await;
    let app = app_with(&provider, |c| c.max_concurrent_calls = 4).await;
    let low = campaign(&app, json!({"name": "low", "scriptId": "s", "priority": 1})).await;
    add_calls(&app, low["id"].as_str().unwrap(), "low", 0, 6).await;
    let loose: Vec<Value> = (100..106)
        .map(|i| json!({"to": format!("+1415{i:07}"), "scriptId": "s", "metadata": {"group": "loose"}}))
        .collect();
    app.post("/api/v1/calls/batch", json!({"calls": loose}))
        .await;
    let high = campaign(
        &app,
        json!({"name": "high", "scriptId": "s", "priority": 9}),
    )
    .await;
    add_calls(&app, high["id"].as_str().unwrap(), "high", 200, 6).await;

    // Four slots, freed by hand one claim after another.
    let dispatcher = app.dispatcher().await;
    let mut order = Vec::new();
    for _ in 0..5 {
        dispatcher.run_once().await.unwrap();
        let received = provider.received();
        for r in &received[order.len()..] {
            order.push(r.body["metadata"]["group"].as_str().unwrap().to_owned());
            let query = common::webhook_query(&app.pool, r.call_id.as_deref().unwrap()).await;
            app.webhook(&query, json!({"callId": r.call_id, "status": "COMPLETED"}))
                .await;
        }
    }
    assert_eq!(order.len(), 18, "{order:?}");
    let order = claimed_groups(&app).await;
    let rank = |g: &str| match g {
        "high" => 0,
        "loose" => 1,
        _ => 2,
    };
    assert!(
        order.windows(2).all(|w| rank(&w[0]) <= rank(&w[1])),
        "dialed by priority: {order:?}"
    );
}

/// A higher-priority campaign whose only due call is to a number in progress does not take
/// the free slots from the calls behind it.
#[tokio::test]
async fn a_busy_number_in_a_higher_priority_campaign_blocks_nobody() {
    let provider = FakeProvider::start().await;
    let app = app_with(&provider, |c| c.max_concurrent_calls = 4).await;
    let busy = app.create_call("+14155550100").await;
    let dispatcher = app.dispatcher().await;
    assert_eq!(dispatcher.run_once().await.unwrap(), 1);
    let high = campaign(
        &app,
        json!({"name": "high", "scriptId": "s", "priority": 9}),
    )
    .await;
    let (status, _) = app
        .post(
            &format!("/api/v1/campaigns/{}/calls", high["id"].as_str().unwrap()),
            json!({"calls": [{"to": "+14155550100"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let loose: Vec<Value> = (1..4)
        .map(|i| json!({"to": format!("+1415555020{i}"), "scriptId": "s"}))
        .collect();
    app.post("/api/v1/calls/batch", json!({"calls": loose}))
        .await;
    assert_eq!(
        dispatcher.run_once().await.unwrap(),
        3,
        "the loose calls take the three free slots"
    );
    assert_eq!(
        app.call(busy["id"].as_str().unwrap()).await["status"],
        "IN_PROGRESS"
    );
}

/// Round-robin: a campaign of ten created after one of many is served within its share,
/// not after the big one drains.
#[tokio::test]
async fn a_small_campaign_is_not_starved_by_a_big_one() {
    let provider = FakeProvider::start_with(auto_end(5, 30, 1.0)).await;
    let app = app_with(&provider, |c| c.max_concurrent_calls = 4).await;
    let big = campaign(&app, json!({"name": "big", "scriptId": "s"})).await;
    for chunk in 0..3 {
        add_calls(&app, big["id"].as_str().unwrap(), "big", chunk * 1000, 1000).await;
    }
    let small = campaign(&app, json!({"name": "small", "scriptId": "s"})).await;
    add_calls(&app, small["id"].as_str().unwrap(), "small", 9000, 10).await;

    let (shutdown, tasks) = run_workers(&app, 2).await;
    wait_for(
        "the small campaign to finish",
        Duration::from_secs(60),
        async || get_campaign(&app, small["id"].as_str().unwrap()).await["status"] == "COMPLETED",
    )
    .await;
    stop(shutdown, tasks).await;
    let groups = claimed_groups(&app).await;
    let last_small = groups.iter().rposition(|g| g == "small").unwrap();
    // Two lanes of one priority share the slots: the small one's ten calls go within about
    // twenty dials (a few more for the claims already under way).
    assert!(
        last_small < 30,
        "the small campaign's last call was dial {last_small}: {:?}",
        &groups[..last_small.min(60)]
    );
    assert!(
        groups[..last_small].iter().filter(|g| *g == "big").count() >= 5,
        "the big campaign kept its share too"
    );
}

/// Pause, resume and cancel racing dispatchers: once pause answers, no call of the
/// campaign is claimed; resume carries on; cancel ends every pending call and none is
/// dialed after it.
#[tokio::test]
async fn pause_resume_and_cancel_hold_on_every_dispatcher_at_once() {
    let provider = FakeProvider::start_with(auto_end(20, 80, 1.0)).await;
    let app = app_with(&provider, |c| c.max_concurrent_calls = 6).await;
    let c = campaign(&app, json!({"name": "c", "scriptId": "s"})).await;
    let id = c["id"].as_str().unwrap().to_owned();
    add_calls(&app, &id, "c", 0, 300).await;
    let (shutdown, tasks) = run_workers(&app, 3).await;

    // Attempts of the campaign claimed so far: once a pause or cancel has answered, no
    // claim on any dispatcher adds one (a claim under way when it came has committed).
    let claimed = async || -> i64 {
        sqlx::query_scalar(
            "SELECT count(*) FROM call_attempts a JOIN calls c ON c.id = a.call_id \
             WHERE c.campaign_id = $1::uuid",
        )
        .bind(&id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    wait_for(
        "some calls to be dialed",
        Duration::from_secs(30),
        async || provider.received().len() >= 20,
    )
    .await;
    let (status, paused) = act(&app, &id, "pause").await;
    assert_eq!(status, StatusCode::OK, "{paused}");
    let at_pause = claimed().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        claimed().await,
        at_pause,
        "claimed after the pause answered"
    );
    let pending = get_campaign(&app, &id).await["counts"]["PENDING"]
        .as_i64()
        .unwrap();
    assert!(pending > 0);

    let (status, _) = act(&app, &id, "resume").await;
    assert_eq!(status, StatusCode::OK);
    let dialed = provider.received().len();
    wait_for("dialing to go on", Duration::from_secs(30), async || {
        provider.received().len() >= dialed + 20
    })
    .await;
    let (status, cancelled) = act(&app, &id, "cancel").await;
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    let at_cancel = claimed().await;
    assert_eq!(cancelled["data"]["counts"]["PENDING"], 0, "{cancelled}");
    assert!(cancelled["data"]["counts"]["CANCELLED"].as_i64().unwrap() > 0);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        claimed().await,
        at_cancel,
        "claimed after the cancel answered"
    );
    wait_for(
        "the calls in progress to end",
        Duration::from_secs(30),
        async || get_campaign(&app, &id).await["counts"]["IN_PROGRESS"] == json!(0),
    )
    .await;
    stop(shutdown, tasks).await;
    let counts = get_campaign(&app, &id).await["counts"].clone();
    assert_eq!(
        counts["COMPLETED"].as_i64().unwrap() + counts["CANCELLED"].as_i64().unwrap(),
        300,
        "{counts}"
    );
    let entry: Value = sqlx::query_scalar(
        "SELECT detail FROM call_events e JOIN calls c ON c.id = e.call_id \
         WHERE c.campaign_id = $1::uuid AND e.kind = 'CANCELLED' LIMIT 1",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(entry["by"], "campaign");
}

/// The window opening `from_now` hours from now, for `hours`, in UTC.
fn window_from_now(from_now: i64, hours: i64) -> (String, String) {
    let start = Utc::now() + chrono::Duration::hours(from_now);
    let end = start + chrono::Duration::hours(hours);
    (
        format!("{:02}:{:02}", start.hour(), start.minute()),
        format!("{:02}:{:02}", end.hour(), end.minute()),
    )
}

#[tokio::test]
async fn a_campaigns_window_start_and_end_narrow_the_global_ones() {
    let provider = FakeProvider::start().await;
    let app = app_with(&provider, |c| c.default_timezone = "UTC".into()).await;
    // +800: no country's prefix, so DEFAULT_TIMEZONE (UTC) is the callee's.
    let numbers = |n: u32, from: u32| -> Vec<Value> {
        (from..from + n)
            .map(|i| json!({"to": format!("+800{i:08}"), "scriptId": "s"}))
            .collect()
    };
    let (start, end) = window_from_now(3, 2);
    let closed = campaign(
        &app,
        json!({"name": "night", "callingWindow": {"start": start, "end": end}}),
    )
    .await;
    let (start, end) = window_from_now(-1, 2);
    let open = campaign(
        &app,
        json!({"name": "day", "callingWindow": {"start": start, "end": end}}),
    )
    .await;
    let later = campaign(
        &app,
        json!({"name": "later", "startAt": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339()}),
    )
    .await;
    let ending = campaign(
        &app,
        json!({"name": "ending", "endAt": (Utc::now() + chrono::Duration::milliseconds(1500)).to_rfc3339()}),
    )
    .await;
    let mut ids = Vec::new();
    for (c, from) in [(&closed, 0), (&open, 100), (&later, 200), (&ending, 300)] {
        let id = c["id"].as_str().unwrap().to_owned();
        let (status, body) = app
            .post(
                &format!("/api/v1/campaigns/{id}/calls"),
                json!({"calls": numbers(2, from)}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.push((id, body["data"].clone()));
    }
    // Outside the campaign's window (the service's is off): it waits for the opening.
    let night = &ids[0].1[0];
    let due: DateTime<Utc> = night["nextAttemptAt"].as_str().unwrap().parse().unwrap();
    assert!(due > Utc::now() + chrono::Duration::minutes(170), "{night}");
    // Before its start: due at the start.
    let early = &ids[2].1[0];
    let due: DateTime<Utc> = early["nextAttemptAt"].as_str().unwrap().parse().unwrap();
    assert!(due > Utc::now() + chrono::Duration::minutes(55), "{early}");

    // Due now anyway (an operator moved them), the claim still holds them back.
    sqlx::query(
        "UPDATE calls SET next_attempt_at = now() WHERE campaign_id = $1::uuid OR id = $2::uuid",
    )
    .bind(&ids[0].0)
    .bind(ids[2].1[0]["id"].as_str().unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let dispatcher = app.dispatcher().await;
    dispatcher.run_once().await.unwrap();
    let dialed: Vec<String> = provider
        .received()
        .iter()
        .map(|r| r.body["to"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        dialed.len(),
        2,
        "only the open campaign's calls: {dialed:?}"
    );
    assert!(
        dialed.iter().all(|to| to.starts_with("+8000000010")),
        "{dialed:?}"
    );
    let night = app.call(ids[0].1[0]["id"].as_str().unwrap()).await;
    assert_eq!(night["status"], "PENDING");
    assert!(
        night["nextAttemptAt"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap()
            > Utc::now() + chrono::Duration::minutes(170)
    );
    // The ended campaign's calls expired, never dialed, saying why.
    app.sweeper().await.run_once().await.unwrap();
    for call in ids[3].1.as_array().unwrap() {
        let call = app.call(call["id"].as_str().unwrap()).await;
        assert_eq!(call["status"], "EXPIRED", "{call}");
        assert!(
            call["lastError"]
                .as_str()
                .unwrap()
                .starts_with("campaign ended"),
            "{call}"
        );
    }
    // The unstarted one's calls are still pending; its start brought forward, the one
    // still waiting for the old start falls due now and is dialed.
    let early = app.call(ids[2].1[1]["id"].as_str().unwrap()).await;
    assert_eq!(early["status"], "PENDING");
    let (status, body) = app
        .patch(
            &format!("/api/v1/campaigns/{}", ids[2].0),
            json!({"startAt": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let early = app.call(ids[2].1[1]["id"].as_str().unwrap()).await;
    let due: DateTime<Utc> = early["nextAttemptAt"].as_str().unwrap().parse().unwrap();
    assert!(due <= Utc::now(), "{early}");
    dispatcher.run_once().await.unwrap();
    assert_eq!(
        app.call(ids[2].1[1]["id"].as_str().unwrap()).await["status"],
        "IN_PROGRESS"
    );
}

#[tokio::test]
async fn a_campaigns_retries_narrow_the_global_ones() {
    let provider = FakeProvider::start().await;
    let app = app_with(&provider, |c| c.max_retry_attempts = 3).await;
    let once = campaign(
        &app,
        json!({"name": "once", "scriptId": "s", "retry": {"maxAttempts": 1}}),
    )
    .await;
    let busy_only = campaign(
        &app,
        json!({"name": "busy", "scriptId": "s", "retry": {"outcomes": ["BUSY"], "delays": {"BUSY": "1s"}}}),
    )
    .await;
    let a = add_calls(&app, once["id"].as_str().unwrap(), "once", 0, 1).await;
    let b = add_calls(&app, busy_only["id"].as_str().unwrap(), "busy", 10, 2).await;
    app.dispatcher().await.run_once().await.unwrap();
    let received = provider.received();
    assert_eq!(received.len(), 3);
    let by_number = |to: &str| {
        received
            .iter()
            .find(|r| r.body["to"] == to)
            .and_then(|r| r.call_id.clone())
            .unwrap()
    };
    for (call, status) in [(&a[0], "BUSY"), (&b[0], "NO_ANSWER"), (&b[1], "BUSY")] {
        let provider_id = by_number(call["payload"]["to"].as_str().unwrap());
        let query = common::webhook_query(&app.pool, &provider_id).await;
        let (code, _) = app
            .webhook(&query, json!({"callId": provider_id, "status": status}))
            .await;
        assert_eq!(code, StatusCode::OK);
    }
    let status = |c: &Value| c["status"].as_str().unwrap().to_owned();
    assert_eq!(
        status(&app.call(a[0]["id"].as_str().unwrap()).await),
        "FAILED",
        "one attempt only"
    );
    assert_eq!(
        status(&app.call(b[0]["id"].as_str().unwrap()).await),
        "FAILED",
        "NO_ANSWER not retried"
    );
    let retried = app.call(b[1]["id"].as_str().unwrap()).await;
    assert_eq!(status(&retried), "PENDING", "BUSY retried");
    let due: DateTime<Utc> = retried["nextAttemptAt"].as_str().unwrap().parse().unwrap();
    let wait = due - Utc::now();
    assert!(
        wait >= chrono::Duration::milliseconds(700) && wait <= chrono::Duration::milliseconds(1200),
        "the campaign's own delay (1s, not the global 30ms): {wait}"
    );
}

#[tokio::test]
async fn a_call_of_a_cancelled_campaign_is_not_retried() {
    let provider = FakeProvider::start().await;
    let app = app_with(&provider, |_| {}).await;
    let id = campaign(&app, json!({"name": "c", "scriptId": "s"})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let calls = add_calls(&app, &id, "c", 0, 1).await;
    app.dispatcher().await.run_once().await.unwrap();
    let (status, _) = act(&app, &id, "cancel").await;
    assert_eq!(status, StatusCode::OK);
    // Its call in progress runs to its end; a BUSY that would have been retried ends it.
    let provider_id = provider.received()[0].call_id.clone().unwrap();
    let query = common::webhook_query(&app.pool, &provider_id).await;
    let (code, _) = app
        .webhook(&query, json!({"callId": provider_id, "status": "BUSY"}))
        .await;
    assert_eq!(code, StatusCode::OK);
    let call = app.call(calls[0]["id"].as_str().unwrap()).await;
    assert_eq!(call["status"], "CANCELLED", "{call}");
    assert_eq!(call["lastError"], "campaign cancelled");
    let counts = get_campaign(&app, &id).await["counts"].clone();
    assert_eq!(
        (counts["CANCELLED"].clone(), counts["total"].clone()),
        (json!(1), json!(1))
    );
}
