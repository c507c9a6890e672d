//! Webhooks exactly as docs/api.md says: statuses and their effects, only the named attempt
//! affected, repeats and late arrivals harmless, early arrivals applied, signatures, and
//! the API keys that guard the rest of the API.

mod common;

use std::time::Duration;

use common::{
    TestApp, assert_error,
    provider::{FakeProvider, Reply},
};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn setup_with(
    adjust: impl FnOnce(&mut call_orchestrator::config::Config),
) -> (FakeProvider, TestApp) {
    common::with_provider(Duration::from_millis(200), adjust).await
}

async fn setup() -> (FakeProvider, TestApp) {
    setup_with(|_| {}).await
}

#[tokio::test]
async fn completed_completes_the_call_and_a_repeat_changes_nothing() {
    let (_provider, app) = setup().await;
    let (id, external) = app.dialed("+14155550100").await;
    let (status, body) = app
        .webhook("", json!({"callId": external, "status": "COMPLETED", "durationSec": 42, "completedAt": "2025-07-25T10:05:00Z"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"success": true, "data": {"duplicate": false}}));
    let call = app.call(&id).await;
    assert_eq!(call["status"], "COMPLETED");
    assert_eq!(call["durationSec"], 42);
    assert!(call["completedAt"].is_string());

    let timeline = app.timeline(&id).await;
    let (status, body) = app
        .webhook(
            "",
            json!({"callId": external, "status": "COMPLETED", "durationSec": 42}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["duplicate"], true);
    assert_eq!(app.call(&id).await, call);
    assert_eq!(app.timeline(&id).await, timeline);
}

#[tokio::test]
async fn progress_statuses_only_reach_the_timeline() {
    let (_provider, app) = setup().await;
    let (id, external) = app.dialed("+14155550100").await;
    let before = app.call(&id).await;
    for status in ["QUEUED", "RINGING", "IN_PROGRESS"] {
        let (code, body) = app
            .webhook("", json!({"callId": external, "status": status}))
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    let after = app.call(&id).await;
    assert_eq!(after["status"], "IN_PROGRESS");
    assert_eq!(after["attempts"], before["attempts"]);
    assert_eq!(
        app.timeline(&id).await,
        [
            "CREATED",
            "DIALED",
            "ACCEPTED",
            "WEBHOOK_RECEIVED",
            "WEBHOOK_RECEIVED",
            "WEBHOOK_RECEIVED"
        ]
    );
}

#[tokio::test]
async fn failures_retry_while_attempts_remain_then_fail() {
    let (provider, app) = setup().await;
    let (id, first) = app.dialed("+14155550100").await;
    for (status, attempt) in [("BUSY", 1), ("NO_ANSWER", 2)] {
        let (code, _) = app.webhook("", json!({"callId": if attempt == 1 { first.clone() } else { app.call(&id).await["externalCallId"].as_str().unwrap().to_owned() }, "status": status})).await;
        assert_eq!(code, StatusCode::OK);
        let call = app.call(&id).await;
        assert_eq!(call["status"], "PENDING", "after {status}");
        assert_eq!(call["lastError"], status);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 1);
    }
    let third = app.call(&id).await["externalCallId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (code, _) = app
        .webhook(
            "",
            json!({"callId": third, "status": "VOICEMAIL", "reason": "left a message"}),
        )
        .await;
    assert_eq!(code, StatusCode::OK);
    let call = app.call(&id).await;
    assert_eq!(call["status"], "FAILED");
    assert_eq!(call["attempts"], 3);
    assert_eq!(call["lastError"], "VOICEMAIL: left a message");
    assert_eq!(provider.with_stats(|s| s.placed.len()), 3);
}

#[tokio::test]
async fn a_late_webhook_for_an_earlier_attempt_changes_only_the_timeline() {
    let (_provider, app) = setup().await;
    let (id, first) = app.dialed("+14155550100").await;
    app.webhook("", json!({"callId": first, "status": "FAILED"}))
        .await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    app.dispatcher().await.run_once().await.unwrap();
    let current = app.call(&id).await;
    assert_eq!(current["attempts"], 2);
    assert_ne!(current["externalCallId"], json!(first));

    // The first attempt's provider changes its mind: too late to matter.
    let (code, body) = app
        .webhook("", json!({"callId": first, "status": "COMPLETED"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let after = app.call(&id).await;
    assert_eq!(after["status"], "IN_PROGRESS");
    assert_eq!(after["attempts"], 2);
    let (_, events) = app.get(&format!("/api/v1/calls/{id}/events")).await;
    let last = events["data"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["type"], "WEBHOOK_RECEIVED");
    assert_eq!(last["attempt"], 1);
}

#[tokio::test]
async fn a_webhook_that_beats_the_providers_answer_is_applied() {
    let (provider, app) = setup_with(|c| c.provider_timeout = Duration::from_secs(5)).await;
    provider.script([Reply::AcceptAfter(Duration::from_millis(800))]);
    let id = app.create_call("+14155550100").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let dispatcher = app.dispatcher().await;
    let step = tokio::spawn(async move { dispatcher.run_once().await.unwrap() });
    // The provider has the request and has placed the call, but not yet answered.
    let request = loop {
        if let Some(r) = provider.received().into_iter().next() {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let url = request.body["webhookUrl"].as_str().unwrap();
    let query = &url[url.find('?').unwrap()..];
    let (code, body) = app
        .webhook(
            query,
            json!({"callId": request.call_id.unwrap(), "status": "COMPLETED", "durationSec": 5}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(app.call(&id).await["status"], "COMPLETED");
    step.await.unwrap();
    let call = app.call(&id).await;
    assert_eq!(
        call["status"], "COMPLETED",
        "the 202 arriving later changes nothing"
    );
    assert_eq!(call["externalCallId"], "p-1");
    assert_eq!(call["durationSec"], 5);
}

#[tokio::test]
async fn unknown_ids_and_malformed_bodies_are_refused() {
    let (_provider, app) = setup().await;
    let (id, external) = app.dialed("+14155550100").await;
    let (code, body) = app
        .webhook("", json!({"callId": "nobody", "status": "COMPLETED"}))
        .await;
    assert_error(code, &body, StatusCode::NOT_FOUND, "UNKNOWN_CALL_ID");
    // A reference to a real attempt does not let another provider id take it over.
    let (code, body) = app
        .webhook(
            &format!("?ref={id}.1"),
            json!({"callId": "someone-else", "status": "COMPLETED"}),
        )
        .await;
    assert_error(code, &body, StatusCode::CONFLICT, "WEBHOOK_MISMATCH");
    let bad: Vec<(Value, &str)> = vec![
        (
            json!({"callId": external, "status": "EXPLODED"}),
            "INVALID_BODY",
        ),
        (json!({"callId": external}), "INVALID_BODY"),
        (json!({"status": "COMPLETED"}), "INVALID_BODY"),
        (
            json!({"callId": "", "status": "COMPLETED"}),
            "INVALID_WEBHOOK",
        ),
        (
            json!({"callId": external, "status": "COMPLETED", "durationSec": -1}),
            "INVALID_WEBHOOK",
        ),
        (
            json!({"callId": external, "status": "COMPLETED", "durationSec": "long"}),
            "INVALID_BODY",
        ),
        (
            json!({"callId": external, "status": "COMPLETED", "completedAt": "yesterday"}),
            "INVALID_WEBHOOK",
        ),
        (json!([]), "INVALID_BODY"),
    ];
    for (body, code) in bad {
        let (status, answer) = app.webhook("", body.clone()).await;
        assert_error(status, &answer, StatusCode::BAD_REQUEST, code);
    }
    let (status, answer) = app
        .webhook(
            "?ref=garbage",
            json!({"callId": external, "status": "COMPLETED"}),
        )
        .await;
    assert_error(
        status,
        &answer,
        StatusCode::BAD_REQUEST,
        "INVALID_PARAMETER",
    );
    assert_eq!(
        app.call(&id).await["status"],
        "IN_PROGRESS",
        "nothing changed"
    );
}

#[tokio::test]
async fn expiry_and_the_real_outcome_arriving_after_it() {
    let (provider, app) = setup_with(|c| c.call_timeout = Duration::from_millis(300)).await;
    let (completed, completed_ext) = app.dialed("+14155550100").await;
    let second = app.create_call("+14155550111").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    app.dispatcher().await.run_once().await.unwrap();
    let second_ext = app.call(&second).await["externalCallId"]
        .as_str()
        .unwrap()
        .to_owned();

    tokio::time::sleep(Duration::from_millis(400)).await;
    let report = app.sweeper().await.run_once().await.unwrap();
    assert_eq!(report.expired, 2);
    for id in [&completed, &second] {
        let call = app.call(id).await;
        assert_eq!(call["status"], "EXPIRED");
        assert!(call["completedAt"].is_string());
    }
    let (_, metrics) = app.get("/api/v1/metrics").await;
    assert_eq!(
        metrics["concurrency"]["inProgress"], 0,
        "expiry frees the slots"
    );

    // The real outcomes arrive late: recorded, and a failure is not retried.
    app.webhook(
        "",
        json!({"callId": completed_ext, "status": "COMPLETED", "durationSec": 9}),
    )
    .await;
    app.webhook("", json!({"callId": second_ext, "status": "BUSY"}))
        .await;
    let call = app.call(&completed).await;
    assert_eq!(
        (call["status"].clone(), call["durationSec"].clone()),
        (json!("COMPLETED"), json!(9))
    );
    let call = app.call(&second).await;
    assert_eq!(call["status"], "FAILED");
    assert_eq!(call["attempts"], 1);
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 0);
    assert_eq!(provider.with_stats(|s| s.placed.len()), 2);
    // And their repeats change nothing.
    let (_, body) = app
        .webhook("", json!({"callId": second_ext, "status": "COMPLETED"}))
        .await;
    assert_eq!(body["data"]["duplicate"], true);
    assert_eq!(app.call(&second).await["status"], "FAILED");
}

#[tokio::test]
async fn an_abandoned_attempt_is_rescued_with_the_same_key() {
    let (provider, app) = setup().await;
    let id = app.create_call("+14155550100").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // A replica claims the call and dies before the provider's answer is recorded: here,
    // it got as far as sending the request, which the provider placed.
    let claimed = call_orchestrator::db::claim(
        &app.pool,
        30,
        10,
        Duration::from_secs(60),
        &call_orchestrator::domain::schedule::Rules::OFF,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1);
    let first = provider.received().len();
    reqwest::Client::new()
        .post(&provider.url)
        .header("Idempotency-Key", format!("{id}:1"))
        .json(&json!({"to": "+14155550100", "scriptId": "welcomeFlow", "metadata": {}, "webhookUrl": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(first + 1, provider.received().len());

    // Its lease has not run out: nobody touches it.
    assert_eq!(app.sweeper().await.run_once().await.unwrap().rescued, 0);
    sqlx::query("UPDATE call_attempts SET lease_until = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    let report = app.sweeper().await.run_once().await.unwrap();
    assert_eq!(report.rescued, 1);
    let call = app.call(&id).await;
    assert_eq!(call["status"], "IN_PROGRESS");
    assert_eq!(call["attempts"], 1);
    assert_eq!(call["externalCallId"], "p-1");
    assert_eq!(
        provider.with_stats(|s| (s.placed.len(), s.repeats)),
        (1, 1),
        "resent, not redialed"
    );
    assert!(app.timeline(&id).await.contains(&"RESCUED".to_owned()));
    // Rescued once is enough.
    assert_eq!(app.sweeper().await.run_once().await.unwrap().rescued, 0);
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OLD_SECRET: &str = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";

fn signature(secret: &str, id: &str, timestamp: i64, body: &str) -> String {
    standardwebhooks::Webhook::new(secret)
        .unwrap()
        .sign(id, timestamp, body.as_bytes())
        .unwrap()
}

#[tokio::test]
async fn signed_webhooks_are_verified() {
    let (_provider, app) = setup_with(|c| {
        c.webhook_secret = Some(call_orchestrator::config::Secret::new(SECRET));
    })
    .await;
    let (id, external) = app.dialed("+14155550100").await;
    let body = json!({"callId": external, "status": "COMPLETED"}).to_string();
    let now = chrono::Utc::now().timestamp();
    let send = |headers: Vec<(&'static str, String)>, body: String| {
        let mut request = app
            .client
            .post(app.url("/api/v1/callbacks/call-status"))
            .header("content-type", "application/json")
            .body(body);
        for (name, value) in headers {
            request = request.header(name, value);
        }
        async move { common::read(request.send().await.unwrap()).await }
    };
    let good = signature(SECRET, "msg_1", now, &body);
    let refused = [
        vec![],
        vec![
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", now.to_string()),
        ],
        vec![
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", now.to_string()),
            (
                "webhook-signature",
                signature(OLD_SECRET, "msg_1", now, &body),
            ),
        ],
        // Signed for another id: the signature covers it.
        vec![
            ("webhook-id", "msg_2".into()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", good.clone()),
        ],
        // More than five minutes old.
        vec![
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", (now - 301).to_string()),
            (
                "webhook-signature",
                signature(SECRET, "msg_1", now - 301, &body),
            ),
        ],
        vec![
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", "soon".into()),
            ("webhook-signature", good.clone()),
        ],
    ];
    for headers in refused {
        let (status, answer) = send(headers, body.clone()).await;
        assert_error(
            status,
            &answer,
            StatusCode::UNAUTHORIZED,
            "INVALID_SIGNATURE",
        );
    }
    // The body is covered too.
    let tampered = json!({"callId": external, "status": "FAILED"}).to_string();
    let (status, _) = send(
        vec![
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", good.clone()),
        ],
        tampered,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.call(&id).await["status"],
        "IN_PROGRESS",
        "nothing changed"
    );

    // A provider rotating its secret signs with both; one valid signature is enough.
    let both = format!("{} {}", signature(OLD_SECRET, "msg_1", now, &body), good);
    let (status, answer) = send(
        vec![
            ("webhook-id", "msg_1".into()),
            ("webhook-timestamp", now.to_string()),
            ("webhook-signature", both),
        ],
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(app.call(&id).await["status"], "COMPLETED");
}

#[tokio::test]
async fn the_service_can_accept_two_secrets_while_rotating() {
    let (_provider, app) = setup_with(|c| {
        c.webhook_secret = Some(call_orchestrator::config::Secret::new(format!(
            "{SECRET},{OLD_SECRET}"
        )));
    })
    .await;
    let (id, external) = app.dialed("+14155550100").await;
    let body = json!({"callId": external, "status": "RINGING"}).to_string();
    let now = chrono::Utc::now().timestamp();
    for (secret, msg) in [(SECRET, "msg_new"), (OLD_SECRET, "msg_old")] {
        let response = app
            .client
            .post(app.url("/api/v1/callbacks/call-status"))
            .header("content-type", "application/json")
            .header("webhook-id", msg)
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", signature(secret, msg, now, &body))
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(app.timeline(&id).await.len(), 5);
}

#[tokio::test]
async fn api_keys_guard_every_route_but_the_webhook() {
    let (_provider, app) = setup_with(|c| {
        c.api_keys = Some(call_orchestrator::config::Secret::new("key-one, key-two"));
    })
    .await;
    let create = json!({"to": "+14155550100", "scriptId": "s"});
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("key-one"),
        Some("Basic a2V5LW9uZQ=="),
        Some("Bearer "),
    ] {
        let mut request = app.client.post(app.url("/api/v1/calls")).json(&create);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        let (status, body) = common::read(request.send().await.unwrap()).await;
        assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    for path in [
        "/api/v1/calls",
        "/api/v1/metrics",
        "/api/v1/calls/550e8400-e29b-41d4-a716-446655440000",
    ] {
        let (status, _) = app.get(path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    assert_eq!(app.row_counts().await.0, 0);
    for key in ["key-one", "key-two"] {
        let response = app
            .client
            .post(app.url("/api/v1/calls"))
            .bearer_auth(key)
            .json(&create)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    // Not guarded: the provider's webhook, health, the document.
    let (status, _) = app
        .webhook("", json!({"callId": "nobody", "status": "COMPLETED"}))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    for path in ["/health", "/openapi.json", "/openapi.yaml"] {
        let (status, _) = app.get(path).await;
        assert_eq!(status, StatusCode::OK, "{path}");
    }
}
