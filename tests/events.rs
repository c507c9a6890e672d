//! Events for clients, against PostgreSQL and a real local HTTP server as the client's
//! endpoint: the endpoint routes, every event type from its transition, subscriptions,
//! Standard Webhooks signatures (checked with the crate and with the Python library),
//! retries and their spacing, resend, rotation, refused URLs, and a dead endpoint beside a
//! live one.

mod common;

use std::time::{Duration, Instant};

use call_orchestrator::{
    config::{Config, Secret},
    worker::{Deliverer, EventSettings},
};
use common::{
    TestApp, assert_error,
    provider::FakeProvider,
    receiver::{Answer, Got, Receiver},
    webhook_query,
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const KEY: &str = "test-event-secret-key-0123456789abcdef";

fn events_config(c: &mut Config) {
    c.event_secret_key = Some(Secret::new(KEY));
    c.event_allow_private_urls = true;
    c.event_retry_delays = "300ms,600ms".into();
    c.event_timeout = Duration::from_secs(2);
}

/// The service with events configured, a fake provider, and a delivery worker running
/// until the returned token is cancelled (or the test ends).
async fn setup_with(
    adjust: impl FnOnce(&mut Config),
) -> (FakeProvider, TestApp, CancellationToken) {
    let (provider, app) = common::with_provider(Duration::from_millis(100), |c| {
        events_config(c);
        adjust(c);
    })
    .await;
    let token = deliverer(&app);
    (provider, app, token)
}

async fn setup() -> (FakeProvider, TestApp, CancellationToken) {
    setup_with(|_| {}).await
}

/// Starts a delivery worker for `app`, as a replica's.
fn deliverer(app: &TestApp) -> CancellationToken {
    let token = CancellationToken::new();
    let worker = Deliverer::new(app.pool.clone(), EventSettings::from_config(&app.config));
    tokio::spawn(worker.run(token.clone()));
    token
}

/// Registers an endpoint; returns (id, secret).
async fn register(app: &TestApp, url: &str, events: Value) -> (String, String) {
    let (status, body) = app
        .post(
            "/api/v1/event-endpoints",
            json!({"url": url, "events": events}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["data"]["id"].as_str().unwrap().to_owned(),
        body["data"]["secret"].as_str().unwrap().to_owned(),
    )
}

/// Ends a dialed call by its webhook with `status`.
async fn end_call(app: &TestApp, external: &str, status: &str) {
    let query = webhook_query(&app.pool, external).await;
    let (code, body) = app
        .webhook(
            &query,
            json!({"callId": external, "status": status, "durationSec": 7}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
}

/// Creates a call and cancels it (a `call.cancelled` event); returns its id.
async fn cancelled(app: &TestApp, to: &str) -> String {
    let id = app.create_call(to).await["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(&format!("/api/v1/calls/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    id
}

async fn deliveries(app: &TestApp, endpoint: &str) -> Vec<Value> {
    let (status, body) = app
        .get(&format!(
            "/api/v1/event-endpoints/{endpoint}/deliveries?limit=100"
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["data"].as_array().unwrap().clone()
}

/// Waits until the deliveries of `endpoint` satisfy `done`; returns them.
async fn deliveries_when(
    app: &TestApp,
    endpoint: &str,
    done: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = deliveries(app, endpoint).await;
        if done(&list) {
            return list;
        }
        assert!(
            Instant::now() < deadline,
            "deliveries did not come to it: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every delivery of `endpoint`, `n` of them, is in `status`.
async fn settled(app: &TestApp, endpoint: &str, n: usize, status: &str) -> Vec<Value> {
    deliveries_when(app, endpoint, |list| {
        list.len() == n && list.iter().all(|d| d["status"] == status)
    })
    .await
}

#[tokio::test]
async fn endpoint_routes_and_their_errors() {
    let (_provider, app, _worker) = setup().await;
    let (status, body) = app
        .post(
            "/api/v1/event-endpoints",
            json!({"url": "http://127.0.0.1:9/hook", "events": ["call.failed", "call.completed"], "description": "CRM"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let data = &body["data"];
    let id = data["id"].as_str().unwrap().to_owned();
    assert!(data["secret"].as_str().unwrap().starts_with("whsec_"));
    assert_eq!(data["events"], json!(["call.completed", "call.failed"]));
    assert_eq!(data["enabled"], true);
    assert_eq!(data["description"], "CRM");

    // The secret is shown on create only, and is not in the database.
    let (status, got) = app.get(&format!("/api/v1/event-endpoints/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(got["data"].get("secret").is_none(), "{got}");
    let stored: String = sqlx::query_scalar("SELECT row_to_json(p)::text FROM event_endpoints p")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let secret = data["secret"].as_str().unwrap();
    assert!(
        !stored.contains(secret.trim_start_matches("whsec_")),
        "{stored}"
    );

    let (status, list) = app.get("/api/v1/event-endpoints").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["pagination"]["total"], 1);
    assert_eq!(list["data"][0]["id"], id.as_str());

    let (status, patched) = app
        .patch(
            &format!("/api/v1/event-endpoints/{id}"),
            json!({"events": ["*"], "enabled": false, "description": null}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{patched}");
    assert_eq!(patched["data"]["events"], json!(["*"]));
    assert_eq!(patched["data"]["enabled"], false);
    assert_eq!(patched["data"]["description"], Value::Null);

    for (body, field) in [
        (json!({"color": "red"}), "color"),
        (json!({"events": []}), "events"),
        (json!({"events": ["call.done"]}), "events"),
        (json!({"events": "call.failed"}), "events"),
        (json!({"url": "ftp://example.com/"}), "url"),
        (json!({"enabled": "yes"}), "enabled"),
        (json!({"description": "x".repeat(501)}), "description"),
    ] {
        let (status, answer) = app
            .patch(&format!("/api/v1/event-endpoints/{id}"), body)
            .await;
        let message = assert_error(status, &answer, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert!(answer["error"]["details"][0]["field"] == field, "{message}");
    }
    let (status, answer) = app
        .patch(&format!("/api/v1/event-endpoints/{id}"), json!({}))
        .await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");

    for body in [
        json!({"url": "http://127.0.0.1:9/", "events": []}),
        json!({"url": "http://127.0.0.1:9/", "events": ["*", "call.failed"]}),
        json!({"url": "", "events": ["*"]}),
        json!({"url": "http://127.0.0.1:9/", "events": ["*"], "extra": 1}),
        json!({"events": ["*"]}),
    ] {
        let (status, answer) = app.post("/api/v1/event-endpoints", body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
    }
    let (status, answer) = app.get("/api/v1/event-endpoints/not-a-uuid").await;
    assert_error(status, &answer, StatusCode::BAD_REQUEST, "INVALID_ID");
    let unknown = uuid::Uuid::new_v4();
    for (status, answer) in [
        app.get(&format!("/api/v1/event-endpoints/{unknown}")).await,
        app.get(&format!("/api/v1/event-endpoints/{unknown}/deliveries"))
            .await,
        app.post(
            &format!("/api/v1/event-endpoints/{unknown}/rotate-secret"),
            json!({}),
        )
        .await,
    ] {
        assert_error(status, &answer, StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND");
    }
    let (status, answer) = app
        .post(
            &format!("/api/v1/event-deliveries/{unknown}/retry"),
            json!({}),
        )
        .await;
    assert_error(status, &answer, StatusCode::NOT_FOUND, "DELIVERY_NOT_FOUND");
    let (status, answer) = app
        .post(
            &format!("/api/v1/event-endpoints/{id}/rotate-secret?keepPrevious=forever"),
            json!({}),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_PARAMETER",
    );
    let (status, answer) = app
        .get(&format!(
            "/api/v1/event-endpoints/{id}/deliveries?status=LOST"
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    let (status, _) = app
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/event-endpoints/{id}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, answer) = app.get(&format!("/api/v1/event-endpoints/{id}")).await;
    assert_error(status, &answer, StatusCode::NOT_FOUND, "ENDPOINT_NOT_FOUND");

    // Without EVENT_SECRET_KEY nothing can be signed, so nothing is registered.
    let bare = TestApp::spawn_with(|c| c.event_allow_private_urls = true).await;
    let (status, answer) = bare
        .post(
            "/api/v1/event-endpoints",
            json!({"url": "http://127.0.0.1:9/", "events": ["*"]}),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::CONFLICT,
        "EVENTS_NOT_CONFIGURED",
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM event_endpoints")
        .fetch_one(&bare.pool)
        .await
        .unwrap();
    assert_eq!(count, 0);
}

/// Checks a delivery: signed with `secret`, its body the event as documented.
fn check(got: &Got, secret: &str, kind: &str) -> Value {
    assert!(got.verifies_with(secret), "bad signature: {got:?}");
    let body = got.json();
    assert_eq!(body["type"], kind, "{body}");
    assert!(body["timestamp"].is_string());
    assert_eq!(body.as_object().unwrap().len(), 3, "{body}");
    body["data"].clone()
}

#[tokio::test]
async fn every_event_type_comes_from_its_transition() {
    let (_provider, app, _worker) = setup_with(|c| c.max_retry_attempts = 2).await;
    let receiver = Receiver::start().await;
    let (endpoint, secret) = register(&app, &receiver.url, json!(["*"])).await;

    // call.completed, as the API shows the call.
    let (done, external) = app.dialed("+14155550100").await;
    end_call(&app, &external, "COMPLETED").await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    let data = check(&got[0], &secret, "call.completed");
    assert_eq!(data, app.call(&done).await);
    assert_eq!(
        got[0].id.len(),
        36,
        "webhook-id is the event's id: {:?}",
        got[0].id
    );

    // call.attempt_failed (to be retried), then call.failed.
    let (failing, external) = app.dialed("+14155550101").await;
    end_call(&app, &external, "FAILED").await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let data = check(&got[1], &secret, "call.attempt_failed");
    assert_eq!(data["id"], failing.as_str());
    assert_eq!(data["status"], "PENDING");
    tokio::time::sleep(Duration::from_millis(150)).await;
    app.dispatcher().await.run_once().await.unwrap();
    let external = app.call(&failing).await["externalCallId"]
        .as_str()
        .unwrap()
        .to_owned();
    end_call(&app, &external, "FAILED").await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    let data = check(&got[2], &secret, "call.failed");
    assert_eq!(data, app.call(&failing).await);

    // call.cancelled, by the API.
    let gone = cancelled(&app, "+14155550102").await;
    let got = receiver.wait_for(4, Duration::from_secs(10)).await;
    assert_eq!(
        check(&got[3], &secret, "call.cancelled")["id"],
        gone.as_str()
    );

    // call.expired, by an operator's UPDATE: whoever writes, the event is recorded.
    let expired = app.create_call("+14155550103").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlx::query(
        "UPDATE calls SET status = 'EXPIRED', next_attempt_at = NULL, completed_at = now() WHERE id = $1",
    )
    .bind(uuid::Uuid::parse_str(&expired).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    let got = receiver.wait_for(5, Duration::from_secs(10)).await;
    let data = check(&got[4], &secret, "call.expired");
    assert_eq!(data, app.call(&expired).await);

    // campaign.completed, when its last call ends.
    let (status, campaign) = app
        .post(
            "/api/v1/campaigns",
            json!({"name": "events", "scriptId": "welcomeFlow"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{campaign}");
    let campaign_id = campaign["data"]["id"].as_str().unwrap().to_owned();
    let (status, body) = app
        .post(
            &format!("/api/v1/campaigns/{campaign_id}/calls"),
            json!({"calls": [{"to": "+14155550104"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let call = body["data"][0]["id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post(&format!("/api/v1/calls/{call}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK);
    let got = receiver.wait_for(7, Duration::from_secs(10)).await;
    let kinds: Vec<String> = got[5..].iter().map(Got::event_type).collect();
    assert!(kinds.contains(&"call.cancelled".to_owned()), "{kinds:?}");
    let campaign_event = got[5..]
        .iter()
        .find(|g| g.event_type() == "campaign.completed")
        .expect("campaign.completed");
    let data = check(campaign_event, &secret, "campaign.completed");
    assert_eq!(data["id"], campaign_id.as_str());
    assert_eq!(data["status"], "COMPLETED");
    assert_eq!(data["counts"]["CANCELLED"], 1, "{data}");

    // Every delivery is listed as delivered, once each, and nothing was sent twice.
    let list = settled(&app, &endpoint, 7, "DELIVERED").await;
    assert!(
        list.iter()
            .all(|d| d["attempts"] == 1 && d["lastStatusCode"] == 200),
        "{list:?}"
    );
    assert_eq!(
        list.last().unwrap()["eventType"],
        "call.completed",
        "newest first"
    );
    assert_eq!(receiver.got().len(), 7);
    // The recorder is the process's, shared with the other tests: names, not figures.
    let metrics = app.metrics_text().await;
    for series in [
        "call_orchestrator_event_deliveries_total{outcome=\"delivered\"}",
        "call_orchestrator_event_delivery_tries_total{outcome=\"rejected\"}",
        "call_orchestrator_event_deliveries_pending 0",
        "call_orchestrator_event_delivery_latency_seconds_count",
    ] {
        assert!(metrics.contains(series), "{series}: {metrics}");
    }
}

#[tokio::test]
async fn the_outbox_commits_with_the_change_or_not_at_all() {
    let (_provider, app, _worker) = setup().await;
    let receiver = Receiver::start().await;
    register(&app, &receiver.url, json!(["*"])).await;
    let id = uuid::Uuid::parse_str(
        app.create_call("+14155550100").await["id"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let cancel = "UPDATE calls SET status = 'CANCELLED', next_attempt_at = NULL, completed_at = now() WHERE id = $1";
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query(cancel)
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    let inside: i64 = sqlx::query_scalar("SELECT count(*) FROM client_events")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(
        inside, 1,
        "the event is written by the change's own transaction"
    );
    tx.rollback().await.unwrap();
    let (events, deliveries): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM client_events), (SELECT count(*) FROM event_deliveries)",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((events, deliveries), (0, 0), "rolled back with the change");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.got().is_empty());
    // Changes that are not final transitions record nothing.
    sqlx::query("UPDATE calls SET metadata = '{\"a\": 1}' WHERE id = $1")
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query(cancel)
        .bind(id)
        .execute(&app.pool)
        .await
        .unwrap();
    receiver.wait_for(1, Duration::from_secs(10)).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM client_events")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(events, 1);
}

#[tokio::test]
async fn subscriptions_choose_the_events_and_disabled_endpoints_get_none() {
    let (_provider, app, _worker) = setup().await;
    let (failures, completions, off) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    register(
        &app,
        &failures.url,
        json!(["call.failed", "call.cancelled"]),
    )
    .await;
    register(&app, &completions.url, json!(["call.completed"])).await;
    let (disabled, _) = register(&app, &off.url, json!(["*"])).await;
    let (status, _) = app
        .patch(
            &format!("/api/v1/event-endpoints/{disabled}"),
            json!({"enabled": false}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let (_, external) = app.dialed("+14155550100").await;
    end_call(&app, &external, "COMPLETED").await;
    cancelled(&app, "+14155550101").await;

    let got = completions.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].event_type(), "call.completed");
    let got = failures.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(got[0].event_type(), "call.cancelled");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(completions.got().len(), 1);
    assert_eq!(failures.got().len(), 1);
    assert!(off.got().is_empty(), "a disabled endpoint gets nothing");
    assert!(deliveries(&app, &disabled).await.is_empty());
}

#[tokio::test]
async fn failed_tries_are_retried_on_schedule_with_one_webhook_id_then_fail_and_resend() {
    let (_provider, app, _worker) = setup().await;
    let receiver = Receiver::start().await;
    let (endpoint, secret) = register(&app, &receiver.url, json!(["call.cancelled"])).await;
    receiver.script([Answer::Status(500), Answer::Status(503)]);
    cancelled(&app, "+14155550100").await;
    let got = receiver.wait_for(3, Duration::from_secs(10)).await;
    assert!(
        got.iter().all(|g| g.id == got[0].id),
        "one webhook-id for every try"
    );
    assert!(
        got.iter().all(|g| g.body == got[0].body),
        "one body for every try"
    );
    assert!(got.iter().all(|g| g.verifies_with(&secret)));
    // 300 ms and 600 ms, each within a fifth either way.
    let first = got[1].at - got[0].at;
    let second = got[2].at - got[1].at;
    assert!(first >= Duration::from_millis(240), "{first:?}");
    assert!(second >= Duration::from_millis(480), "{second:?}");
    let list = settled(&app, &endpoint, 1, "DELIVERED").await;
    assert_eq!(list[0]["attempts"], 3);
    assert_eq!(list[0]["lastStatusCode"], 200);

    // A schedule spent: FAILED, with the last answer; then sent again on demand.
    receiver.set_default(Answer::Status(500));
    cancelled(&app, "+14155550101").await;
    let failed =
        deliveries_when(&app, &endpoint, |list| list[0]["status"] == "FAILED").await[0].clone();
    assert_eq!(failed["attempts"], 3);
    assert_eq!(failed["lastStatusCode"], 500);
    assert_eq!(failed["lastError"], "answered 500");
    assert_eq!(failed["nextAttemptAt"], Value::Null);
    let tries = receiver.got().len();
    assert_eq!(tries, 6);
    receiver.set_default(Answer::Status(204));
    let (status, body) = app
        .post(
            &format!(
                "/api/v1/event-deliveries/{}/retry",
                failed["id"].as_str().unwrap()
            ),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "PENDING");
    let got = receiver.wait_for(7, Duration::from_secs(10)).await;
    assert_eq!(got[6].id, got[5].id, "a resend keeps its webhook-id");
    let list = settled(&app, &endpoint, 2, "DELIVERED").await;
    assert_eq!(list[0]["lastStatusCode"], 204);

    // A Retry-After longer than the schedule's delay is honoured.
    receiver.script([Answer::RetryAfter(429, 2)]);
    cancelled(&app, "+14155550102").await;
    let got = receiver.wait_for(9, Duration::from_secs(10)).await;
    assert!(
        got[8].at - got[7].at >= Duration::from_millis(1900),
        "{:?}",
        got[8].at - got[7].at
    );
}

#[tokio::test]
async fn rotation_signs_with_both_secrets_for_a_while() {
    let (_provider, app, _worker) = setup().await;
    let receiver = Receiver::start().await;
    let (endpoint, old) = register(&app, &receiver.url, json!(["call.cancelled"])).await;
    let (status, body) = app
        .post(
            &format!("/api/v1/event-endpoints/{endpoint}/rotate-secret"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let new = body["data"]["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(body["data"]["previousSecretExpiresAt"].is_string());
    cancelled(&app, "+14155550100").await;
    let got = receiver.wait_for(1, Duration::from_secs(10)).await;
    assert_eq!(
        got[0].signature.split(' ').count(),
        2,
        "{}",
        got[0].signature
    );
    assert!(got[0].verifies_with(&new) && got[0].verifies_with(&old));

    // A secret that leaked ends at once.
    let (status, body) = app
        .post(
            &format!("/api/v1/event-endpoints/{endpoint}/rotate-secret?keepPrevious=0s"),
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let newest = body["data"]["secret"].as_str().unwrap().to_owned();
    assert_eq!(body["data"]["previousSecretExpiresAt"], Value::Null);
    cancelled(&app, "+14155550101").await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    assert!(got[1].verifies_with(&newest));
    assert!(!got[1].verifies_with(&new) && !got[1].verifies_with(&old));
}

#[tokio::test]
async fn urls_that_reach_private_networks_are_refused_at_registration_and_at_send_time() {
    let (_provider, app, _worker) = setup_with(|c| c.event_allow_private_urls = false).await;
    for url in [
        "http://hooks.example.com/events",
        "https://127.0.0.1/events",
        "https://localhost/events",
        "https://[::1]/events",
        "https://10.0.0.7/events",
        "https://192.168.1.1/events",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::ffff:127.0.0.1]/",
        "https://0x7f000001/",
        "https://user:password@hooks.example.com/",
        "file:///etc/passwd",
    ] {
        let (status, body) = app
            .post(
                "/api/v1/event-endpoints",
                json!({"url": url, "events": ["*"]}),
            )
            .await;
        let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
        assert!(message.contains("url"), "{url}: {message}");
    }
    // Registered while allowed (or a name that resolved elsewhere then): refused when sent,
    // and nothing reaches the server.
    let receiver = Receiver::start().await;
    let port = receiver.addr.rsplit(':').next().unwrap();
    let (endpoint, _) = {
        let open = TestApp::spawn_with(|c| {
            c.database_url = app.config.database_url.clone();
            events_config(c);
        })
        .await;
        register(
            &open,
            &format!("https://localhost:{port}/events"),
            json!(["*"]),
        )
        .await
    };
    cancelled(&app, "+14155550100").await;
    let refused = deliveries_when(&app, &endpoint, |list| {
        list.first()
            .is_some_and(|d| d["attempts"].as_i64() >= Some(1) && d["lastError"].is_string())
    })
    .await[0]
        .clone();
    let error = refused["lastError"].as_str().unwrap();
    assert!(error.starts_with("refused:"), "{error}");
    assert!(error.contains("loopback or private"), "{error}");
    assert!(receiver.got().is_empty());
}

#[tokio::test]
async fn a_redirect_is_a_failed_try_and_is_not_followed() {
    let (_provider, app, _worker) = setup().await;
    let (moved, elsewhere) = (Receiver::start().await, Receiver::start().await);
    moved.set_default(Answer::Redirect(elsewhere.url.clone()));
    let (endpoint, _) = register(&app, &moved.url, json!(["call.cancelled"])).await;
    cancelled(&app, "+14155550100").await;
    // Every try answered 307: each a failed try, the schedule spent, and the place the
    // redirect pointed to never hears of it.
    let list = settled(&app, &endpoint, 1, "FAILED").await;
    assert_eq!(list[0]["attempts"], 3);
    assert_eq!(list[0]["lastStatusCode"], 307);
    assert_eq!(
        list[0]["lastError"],
        "answered 307, a redirect, which is not followed"
    );
    assert_eq!(moved.got().len(), 3);
    assert!(elsewhere.got().is_empty(), "the redirect was followed");
}

#[tokio::test]
async fn a_dead_endpoint_never_holds_back_a_live_one() {
    let (_provider, app, _worker) = setup_with(|c| {
        c.event_max_in_flight_per_endpoint = 2;
        c.event_timeout = Duration::from_secs(10);
    })
    .await;
    let (dead, live) = (Receiver::start().await, Receiver::start().await);
    dead.set_default(Answer::Hang(Duration::from_secs(30)));
    register(&app, &dead.url, json!(["*"])).await;
    register(&app, &live.url, json!(["*"])).await;
    let calls: Vec<Value> = (0..20)
        .map(|i| json!({"to": format!("+1415555{:04}", 100 + i), "scriptId": "s"}))
        .collect();
    let (status, body) = app
        .post("/api/v1/calls/batch", json!({"calls": calls}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    sqlx::query(
        "UPDATE calls SET status = 'CANCELLED', next_attempt_at = NULL, completed_at = now()",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    // All 20 reach the live endpoint while the dead one still holds its first two tries,
    // which hang for the whole 10 s time limit.
    live.wait_for(20, Duration::from_secs(8)).await;
    assert_eq!(dead.got().len(), 2, "at most two in flight to one endpoint");
    assert_eq!(dead.peak_in_flight(), 2);
    // And the dialing goes on meanwhile.
    let (_, external) = app.dialed("+14155550999").await;
    assert!(!external.is_empty());
}

#[tokio::test]
async fn purging_keeps_what_is_pending_or_failed() {
    let (_provider, app, worker) = setup().await;
    let receiver = Receiver::start().await;
    let (endpoint, _) = register(&app, &receiver.url, json!(["call.cancelled"])).await;
    cancelled(&app, "+14155550100").await;
    cancelled(&app, "+14155550101").await;
    settled(&app, &endpoint, 2, "DELIVERED").await;
    worker.cancel();
    // A third event left pending, and an event no endpoint takes.
    cancelled(&app, "+14155550102").await;
    let expired = app.create_call("+14155550103").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    sqlx::query("UPDATE calls SET status = 'EXPIRED', next_attempt_at = NULL, completed_at = now() WHERE id = $1")
        .bind(uuid::Uuid::parse_str(&expired).unwrap())
        .execute(&app.pool)
        .await
        .unwrap();
    let counts = async || -> (i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM event_deliveries), (SELECT count(*) FROM client_events)",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap()
    };
    assert_eq!(counts().await, (3, 4));
    // Nothing is old enough yet.
    let past = chrono::Utc::now() - chrono::Duration::hours(1);
    assert_eq!(
        call_orchestrator::db::purge_delivered(&app.pool, past, 1000)
            .await
            .unwrap(),
        (0, 0)
    );
    let future = chrono::Utc::now() + chrono::Duration::seconds(5);
    let purged = call_orchestrator::db::purge_delivered(&app.pool, future, 1000)
        .await
        .unwrap();
    assert_eq!(
        purged,
        (2, 3),
        "the delivered two, their events, and the event nobody took"
    );
    assert_eq!(counts().await, (1, 1));
    sqlx::query("UPDATE event_deliveries SET status = 'FAILED', next_attempt_at = NULL")
        .execute(&app.pool)
        .await
        .unwrap();
    let purged = call_orchestrator::db::purge_delivered(&app.pool, future, 1000)
        .await
        .unwrap();
    assert_eq!(purged, (0, 0), "a failed delivery is kept for its resend");
    assert_eq!(deliveries(&app, &endpoint).await.len(), 1);

    // Removing the endpoint removes its deliveries; one that a transaction running at that
    // moment still made for it goes at the next purge, by the endpoint's tombstone.
    let (status, _) = app
        .request(
            reqwest::Method::DELETE,
            &format!("/api/v1/event-endpoints/{endpoint}"),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts().await.0, 0);
    sqlx::query(
        "INSERT INTO event_deliveries (event_id, endpoint_id, next_attempt_at) \
         SELECT id, $1, now() FROM client_events LIMIT 1",
    )
    .bind(uuid::Uuid::parse_str(&endpoint).unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    call_orchestrator::db::purge_delivered(&app.pool, past, 1000)
        .await
        .unwrap();
    assert_eq!(
        counts().await.0,
        0,
        "the late delivery went with its endpoint"
    );
}

#[tokio::test]
async fn the_standard_webhooks_python_library_verifies_every_delivery() {
    if std::env::var_os("SKIP_GENERATED_CLIENTS").is_some() {
        return;
    }
    let (_provider, app, _worker) = setup().await;
    let receiver = Receiver::start().await;
    let (_, secret) = register(&app, &receiver.url, json!(["*"])).await;
    let (_, external) = app.dialed("+14155550100").await;
    end_call(&app, &external, "COMPLETED").await;
    cancelled(&app, "+14155550101").await;
    let got = receiver.wait_for(2, Duration::from_secs(10)).await;
    let input = json!({
        "secret": secret,
        "deliveries": got.iter().map(|g| json!({
            "headers": {"webhook-id": g.id, "webhook-timestamp": g.timestamp, "webhook-signature": g.signature},
            "body": g.body,
        })).collect::<Vec<_>>(),
    });
    let out = common::python(
        r#"
import json, sys
from standardwebhooks.webhooks import Webhook
data = json.load(sys.stdin)
hook = Webhook(data["secret"])
types = []
for d in data["deliveries"]:
    types.append(hook.verify(d["body"], d["headers"])["type"])
try:
    bad = dict(data["deliveries"][0]["headers"], **{"webhook-id": "forged"})
    hook.verify(data["deliveries"][0]["body"], bad)
    forged = "accepted"
except Exception:
    forged = "refused"
print(json.dumps({"types": types, "forged": forged}))
"#,
        &input,
    );
    assert_eq!(out["types"], json!(["call.completed", "call.cancelled"]));
    assert_eq!(out["forged"], "refused");
}
