//! The dispatcher against a real local HTTP server playing the provider: each rule of
//! the provider interface (docs/api.md), driven one step at a time.

mod common;

use std::time::Duration;

use common::{
    TestApp,
    provider::{FakeProvider, Reply},
};
use serde_json::{Value, json};

async fn setup() -> (FakeProvider, TestApp) {
    setup_with(|_| {}).await
}

async fn setup_with(
    adjust: impl FnOnce(&mut call_orchestrator::config::Config),
) -> (FakeProvider, TestApp) {
    common::with_provider(Duration::from_millis(300), adjust).await
}

fn id(call: &Value) -> String {
    call["id"].as_str().unwrap().to_owned()
}

/// Waits until the call is due again, then lets the dispatcher take one step.
async fn step_when_due(app: &TestApp, call_id: &str) -> usize {
    let call = app.call(call_id).await;
    let due: chrono::DateTime<chrono::Utc> =
        call["nextAttemptAt"].as_str().unwrap().parse().unwrap();
    let wait = (due - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
    app.dispatcher().await.run_once().await.unwrap()
}

#[tokio::test]
async fn the_dial_request_is_the_one_of_the_spec() {
    let (provider, app) = setup().await;
    let (_, created) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+966501234567", "scriptId": "welcomeFlow", "metadata": {"customerName": "John Doe"}}),
        )
        .await;
    let call_id = id(&created["data"]);
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 1);

    let received = provider.received();
    assert_eq!(received.len(), 1);
    let request = &received[0];
    assert_eq!(request.key, format!("{call_id}:1"));
    assert_eq!(
        request.authorization.as_deref(),
        Some("Bearer test-provider-key")
    );
    assert_eq!(request.body["to"], "+966501234567");
    assert_eq!(request.body["scriptId"], "welcomeFlow");
    assert_eq!(
        request.body["metadata"],
        json!({"customerName": "John Doe"})
    );
    let webhook_url = request.body["webhookUrl"].as_str().unwrap();
    assert!(
        webhook_url.starts_with(&format!("{}/api/v1/callbacks/call-status", app.base)),
        "{webhook_url}"
    );

    let call = app.call(&call_id).await;
    assert_eq!(call["status"], "IN_PROGRESS");
    assert_eq!(call["attempts"], 1);
    assert_eq!(call["externalCallId"], "p-1");
    assert!(call["startedAt"].is_string());
    assert_eq!(call["nextAttemptAt"], Value::Null);
    assert_eq!(
        app.timeline(&call_id).await,
        ["CREATED", "DIALED", "ACCEPTED"]
    );

    // Nothing more to claim: the call is in progress.
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 0);
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_until_attempts_run_out() {
    let (provider, app) = setup().await;
    provider.set_default(Reply::Status(503, "provider down"));
    let call_id = id(&app.create_call("+14155550100").await);

    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 1);
    let call = app.call(&call_id).await;
    assert_eq!(call["status"], "PENDING");
    assert_eq!(call["attempts"], 1);
    assert!(
        call["lastError"].as_str().unwrap().contains("503"),
        "{call}"
    );
    // Not due yet: a step claims nothing.
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 0);

    assert_eq!(step_when_due(&app, &call_id).await, 1);
    assert_eq!(app.call(&call_id).await["attempts"], 2);
    assert_eq!(step_when_due(&app, &call_id).await, 1);
    let call = app.call(&call_id).await;
    assert_eq!(call["status"], "FAILED");
    assert_eq!(call["attempts"], 3);
    assert!(call["completedAt"].is_string());

    let keys: Vec<_> = provider.received().into_iter().map(|r| r.key).collect();
    assert_eq!(keys, [1, 2, 3].map(|a| format!("{call_id}:{a}")));
    // The delays double from RETRY_BASE_DELAY (300 ms), within the jitter.
    let (_, events) = app.get(&format!("/api/v1/calls/{call_id}/events")).await;
    let delays: Vec<u64> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "RETRY_SCHEDULED")
        .map(|e| e["detail"]["delayMs"].as_u64().unwrap())
        .collect();
    assert_eq!(delays.len(), 2);
    assert!((270..=330).contains(&delays[0]), "{delays:?}");
    assert!((540..=660).contains(&delays[1]), "{delays:?}");
    assert_eq!(
        app.timeline(&call_id).await,
        [
            "CREATED",
            "DIALED",
            "DIAL_FAILED",
            "RETRY_SCHEDULED",
            "DIALED",
            "DIAL_FAILED",
            "RETRY_SCHEDULED",
            "DIALED",
            "DIAL_FAILED",
            "FAILED"
        ]
    );
}

#[tokio::test]
async fn other_client_errors_fail_the_call_at_once() {
    let (provider, app) = setup().await;
    provider.script([Reply::Status(422, "{\"error\": \"invalid number\"}")]);
    let call_id = id(&app.create_call("+14155550100").await);
    app.dispatcher().await.run_once().await.unwrap();
    let call = app.call(&call_id).await;
    assert_eq!(call["status"], "FAILED");
    assert_eq!(call["attempts"], 1);
    let error = call["lastError"].as_str().unwrap();
    assert!(
        error.contains("422") && error.contains("invalid number"),
        "{error}"
    );
    assert_eq!(provider.received().len(), 1);
}

#[tokio::test]
async fn rate_limits_are_not_attempts_and_honour_retry_after() {
    let (provider, app) = setup_with(|c| c.max_retry_attempts = 1).await;
    provider.script([Reply::RateLimit(Some(1)), Reply::RateLimit(None)]);
    let call_id = id(&app.create_call("+14155550100").await);

    app.dispatcher().await.run_once().await.unwrap();
    let call = app.call(&call_id).await;
    assert_eq!(call["status"], "PENDING");
    assert_eq!(call["attempts"], 0, "a 429 is not an attempt");
    let due: chrono::DateTime<chrono::Utc> =
        call["nextAttemptAt"].as_str().unwrap().parse().unwrap();
    let updated: chrono::DateTime<chrono::Utc> =
        call["updatedAt"].as_str().unwrap().parse().unwrap();
    let wait = (due - updated).num_milliseconds();
    assert!(
        (900..=1100).contains(&wait),
        "Retry-After: 1 means a second, not {wait} ms"
    );

    // With one attempt allowed, two 429s still leave the call its attempt.
    assert_eq!(step_when_due(&app, &call_id).await, 1);
    assert_eq!(app.call(&call_id).await["status"], "PENDING");
    assert_eq!(step_when_due(&app, &call_id).await, 1);
    let call = app.call(&call_id).await;
    assert_eq!(call["status"], "IN_PROGRESS");
    assert_eq!(call["attempts"], 1);
    let keys: Vec<_> = provider.received().into_iter().map(|r| r.key).collect();
    assert_eq!(
        keys,
        vec![format!("{call_id}:1"); 3],
        "the same attempt each time"
    );
}

#[tokio::test]
async fn an_unknown_outcome_is_sent_again_with_the_same_key() {
    let (provider, app) = setup().await;
    // The first request times out (its outcome unknown to us); the provider then answers.
    provider.script([Reply::Hang(Duration::from_secs(2)), Reply::Accept]);
    let call_id = id(&app.create_call("+14155550100").await);
    app.dispatcher().await.run_once().await.unwrap();

    let received = provider.received();
    assert_eq!(received.len(), 2);
    assert!(received.iter().all(|r| r.key == format!("{call_id}:1")));
    let call = app.call(&call_id).await;
    assert_eq!(call["status"], "IN_PROGRESS");
    assert_eq!(call["attempts"], 1);
    assert_eq!(call["externalCallId"], "p-1");
    assert_eq!(
        provider.with_stats(|s| s.placed.len()),
        1,
        "one person, one call"
    );
}

#[tokio::test]
async fn an_outcome_that_stays_unknown_keeps_the_attempt_open() {
    let (provider, app) = setup_with(|c| c.max_retry_attempts = 2).await;
    provider.set_default(Reply::Hang(Duration::from_secs(2)));
    let call_id = id(&app.create_call("+14155550100").await);
    app.dispatcher().await.run_once().await.unwrap();
    let received = provider.received();
    assert_eq!(
        received.len(),
        3,
        "sent, then sent again twice with the same key"
    );
    assert!(received.iter().all(|r| r.key == format!("{call_id}:1")));
    // Not a failed attempt that a new one follows: the provider may hold the call.
    let call = app.call(&call_id).await;
    assert_eq!(call["status"], "IN_PROGRESS");
    assert_eq!(call["attempts"], 1);
    assert!(
        app.timeline(&call_id)
            .await
            .contains(&"DIAL_UNKNOWN".to_owned())
    );
    let lease_ahead: bool = sqlx::query_scalar(
        "SELECT lease_until > now() + interval '2 seconds' FROM call_attempts WHERE call_id = $1::uuid",
    )
    .bind(&call_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(lease_ahead, "sent again later, not at once");
}

#[tokio::test]
async fn an_unreachable_provider_is_a_failed_attempt() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = format!("http://{}/v1/calls", listener.local_addr().unwrap());
    drop(listener);
    let app = TestApp::spawn_with(|c| {
        c.ai_call_api_url = Some(closed);
        c.provider_timeout = Duration::from_millis(500);
    })
    .await;
    let call_id = id(&app.create_call("+14155550100").await);
    app.dispatcher().await.run_once().await.unwrap();
    let call = app.call(&call_id).await;
    assert_eq!(call["status"], "PENDING");
    assert_eq!(call["attempts"], 1);
    assert!(
        call["lastError"].as_str().unwrap().contains("unreachable"),
        "{call}"
    );
}

#[tokio::test]
async fn the_dial_uses_a_patch_that_landed_before_the_claim() {
    let (provider, app) = setup().await;
    let call_id = id(&app.create_call("+14155550100").await);
    let (status, _) = app
        .patch(
            &format!("/api/v1/calls/{call_id}"),
            json!({"payload": {"scriptId": "patched", "metadata": {"v": 2}}}),
        )
        .await;
    assert!(status.is_success());
    app.dispatcher().await.run_once().await.unwrap();
    let request = &provider.received()[0];
    assert_eq!(request.body["scriptId"], "patched");
    assert_eq!(request.body["metadata"], json!({"v": 2}));
}

#[tokio::test]
async fn a_cancelled_call_is_never_dialed() {
    let (provider, app) = setup().await;
    let call_id = id(&app.create_call("+14155550100").await);
    app.post(&format!("/api/v1/calls/{call_id}/cancel"), json!({}))
        .await;
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 0);
    assert!(provider.received().is_empty());
}

#[tokio::test]
async fn prometheus_metrics_are_exposed() {
    let (_provider, app) = setup().await;
    let call_id = id(&app.create_call("+14155550100").await);
    app.dispatcher().await.run_once().await.unwrap();
    let external = app.call(&call_id).await["externalCallId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.webhook("", json!({"callId": external, "status": "COMPLETED"}))
        .await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = response.text().await.unwrap();
    for needle in [
        "call_orchestrator_calls{status=\"COMPLETED\"}",
        "call_orchestrator_calls{status=\"PENDING\"}",
        "call_orchestrator_concurrency_limit 30",
        "call_orchestrator_provider_requests_total{outcome=\"accepted\"}",
        "call_orchestrator_webhooks_total{outcome=\"applied\"}",
        "call_orchestrator_claim_duration_seconds_bucket",
        "call_orchestrator_dispatch_delay_seconds_bucket",
        "call_orchestrator_write_batches_total{kind=\"create\"}",
        "call_orchestrator_write_batch_items_total{kind=\"accepted\"}",
        "call_orchestrator_write_batches_total{kind=\"webhook\"}",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}
