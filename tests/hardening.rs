//! What an attacker and an unreliable provider could do to the service, each reproduced
//! against the real server and a real local provider: forged webhooks, lost answers
//! followed by refusals, 429 storms, a provider handing out one id twice, other clients'
//! Idempotency-Keys, slow and oversized requests, and a provider that redirects or floods.

mod common;

use std::{
    io::{Read, Write},
    time::{Duration, Instant},
};

use call_orchestrator::config::Secret;
use common::{
    TestApp, assert_error, attempt_query,
    provider::{FakeProvider, Reply},
};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

async fn setup_with(
    adjust: impl FnOnce(&mut call_orchestrator::config::Config),
) -> (FakeProvider, TestApp) {
    common::with_provider(Duration::from_millis(100), adjust).await
}

/// Creates a call to `to` and returns its id.
async fn create(app: &TestApp, to: &str) -> String {
    app.create_call(to).await["id"].as_str().unwrap().to_owned()
}

fn count(timeline: &[String], kind: &str) -> usize {
    timeline.iter().filter(|k| *k == kind).count()
}

#[tokio::test]
async fn without_a_secret_only_the_token_of_the_attempt_moves_it() {
    let (provider, app) = setup_with(|_| {}).await;
    let (id, external) = app.dialed("+14155550100").await;
    let uuid: Uuid = id.parse().unwrap();
    // The callId alone, as anyone who guesses sequential ids could send it.
    for status in ["BUSY", "COMPLETED", "RINGING"] {
        let (code, body) = app
            .webhook_raw("", json!({"callId": external, "status": status}))
            .await;
        assert_error(
            code,
            &body,
            StatusCode::UNAUTHORIZED,
            "WEBHOOK_NOT_AUTHENTICATED",
        );
    }
    // A reference without its token, with another attempt's, or with a made-up one.
    let other_attempt = common::tokens(&app.pool).await.token(uuid, 2);
    for query in [
        format!("?ref={id}.1"),
        format!("?ref={id}.1&token={other_attempt}"),
        format!("?ref={id}.1&token=AAAAAAAAAAAAAAAAAAAAAA"),
        format!("?ref={id}.1&token="),
    ] {
        let (code, body) = app
            .webhook_raw(&query, json!({"callId": external, "status": "COMPLETED"}))
            .await;
        assert_error(
            code,
            &body,
            StatusCode::UNAUTHORIZED,
            "INVALID_WEBHOOK_TOKEN",
        );
    }
    // An unknown callId is still a 404.
    let (code, body) = app
        .webhook_raw("", json!({"callId": "sim-999", "status": "BUSY"}))
        .await;
    assert_error(code, &body, StatusCode::NOT_FOUND, "UNKNOWN_CALL_ID");
    let call = app.call(&id).await;
    assert_eq!(call["status"], "IN_PROGRESS", "nothing moved");
    assert_eq!(count(&app.timeline(&id).await, "WEBHOOK_RECEIVED"), 0);
    // The provider, posting to the URL it was handed, is heard.
    let url = provider.received()[0].body["webhookUrl"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(url.contains("&token="), "{url}");
    let (code, body) = app
        .webhook_raw(
            &url[url.find('?').unwrap()..],
            json!({"callId": external, "status": "COMPLETED"}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(app.call(&id).await["status"], "COMPLETED");
    assert_eq!(provider.received().len(), 1, "dialed once");
}

#[tokio::test]
async fn a_reference_never_binds_a_forged_id_nor_crosses_to_another_attempt() {
    let (provider, app) = setup_with(|c| c.provider_timeout = Duration::from_secs(5)).await;
    provider.script([Reply::AcceptAfter(Duration::from_millis(800))]);
    let id = create(&app, "+14155550100").await;
    let dispatcher = app.dispatcher().await;
    let step = tokio::spawn(async move { dispatcher.run_once().await.unwrap() });
    while provider.received().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Before the provider's 202, a forger tries to bind its own id to the attempt.
    let (code, body) = app
        .webhook_raw(
            &format!("?ref={id}.1"),
            json!({"callId": "fake-1", "status": "RINGING"}),
        )
        .await;
    assert_error(
        code,
        &body,
        StatusCode::UNAUTHORIZED,
        "INVALID_WEBHOOK_TOKEN",
    );
    step.await.unwrap();
    let external = app.call(&id).await["externalCallId"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(external, "p-1", "the provider's own id, not the forger's");
    // The attempt's own token does not carry another call's callId.
    let (other, other_external) = app.dialed("+14155550101").await;
    let query = attempt_query(&app.pool, id.parse().unwrap(), 1).await;
    let (code, body) = app
        .webhook_raw(
            &query,
            json!({"callId": other_external, "status": "COMPLETED"}),
        )
        .await;
    assert_error(code, &body, StatusCode::CONFLICT, "WEBHOOK_MISMATCH");
    assert_eq!(app.call(&other).await["status"], "IN_PROGRESS");
    assert_eq!(app.call(&id).await["status"], "IN_PROGRESS");
    // The real final webhook is applied.
    let (code, body) = app
        .webhook(&query, json!({"callId": external, "status": "COMPLETED"}))
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(app.call(&id).await["status"], "COMPLETED");
}

#[tokio::test]
async fn an_answer_lost_then_refused_never_dials_the_person_again() {
    let (provider, app) = setup_with(|_| {}).await;
    // The first send times out (the provider may have placed the call); the resends are
    // answered 503, then 409 and 425 ("that key is still in flight").
    provider.script([
        Reply::Hang(Duration::from_secs(2)),
        Reply::Status(503, "busy"),
        Reply::Status(503, "busy"),
    ]);
    let id = create(&app, "+14155550100").await;
    app.dispatcher().await.run_once().await.unwrap();
    let call = app.call(&id).await;
    assert_eq!(call["status"], "IN_PROGRESS", "{call}");
    assert_eq!(call["attempts"], 1);
    let timeline = app.timeline(&id).await;
    assert_eq!(count(&timeline, "DIAL_UNKNOWN"), 1, "{timeline:?}");
    assert_eq!(count(&timeline, "DIAL_FAILED"), 0, "{timeline:?}");
    assert_eq!(count(&timeline, "RETRY_SCHEDULED"), 0, "{timeline:?}");
    // Later, the sweeper sends it again, with the same key.
    provider.script([
        Reply::Status(409, "in flight"),
        Reply::Status(425, "too early"),
        Reply::RateLimit(Some(0)),
    ]);
    sqlx::query("UPDATE call_attempts SET lease_until = now() - interval '1 second'")
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(app.sweeper().await.run_once().await.unwrap().rescued, 1);
    assert_eq!(app.call(&id).await["status"], "IN_PROGRESS");
    let keys: Vec<String> = provider.received().into_iter().map(|r| r.key).collect();
    assert_eq!(keys.len(), 6, "{keys:?}");
    assert!(keys.iter().all(|k| *k == format!("{id}:1")), "{keys:?}");
    // Its real outcome still comes, and is recorded.
    let query = attempt_query(&app.pool, id.parse().unwrap(), 1).await;
    let (code, body) = app
        .webhook(
            &query,
            json!({"callId": "p-9", "status": "COMPLETED", "durationSec": 30}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    let call = app.call(&id).await;
    assert_eq!(call["status"], "COMPLETED", "{call}");
    assert_eq!(call["externalCallId"], "p-9");
    // A clear answer to a resend settles the attempt: here a 2xx.
    let second = create(&app, "+14155550101").await;
    provider.script([Reply::Hang(Duration::from_secs(2)), Reply::Accept]);
    app.dispatcher().await.run_once().await.unwrap();
    assert!(app.call(&second).await["externalCallId"].is_string());
}

#[tokio::test]
async fn a_final_webhook_after_the_dial_path_settled_records_the_real_outcome() {
    let (provider, app) = setup_with(|c| c.retry_base_delay = Duration::from_secs(60)).await;
    // A 5xx to the first send: a failed attempt, retried later...
    provider.script([Reply::Status(503, "down")]);
    let id = create(&app, "+14155550100").await;
    app.dispatcher().await.run_once().await.unwrap();
    assert_eq!(app.call(&id).await["status"], "PENDING");
    // ...but the provider had placed the call after all, and says how it ended.
    let query = attempt_query(&app.pool, id.parse().unwrap(), 1).await;
    let (code, body) = app
        .webhook(
            &query,
            json!({"callId": "p-late", "status": "COMPLETED", "durationSec": 7}),
        )
        .await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["duplicate"], false);
    let call = app.call(&id).await;
    assert_eq!(call["status"], "COMPLETED", "{call}");
    assert_eq!(call["durationSec"], 7);
    assert!(call["nextAttemptAt"].is_null());
    // Its repeat is a duplicate, and the person is not dialed again.
    let (_, body) = app
        .webhook(&query, json!({"callId": "p-late", "status": "COMPLETED"}))
        .await;
    assert_eq!(body["data"]["duplicate"], true);
    assert_eq!(app.dispatcher().await.run_once().await.unwrap(), 0);
    assert_eq!(provider.received().len(), 1);
}

#[tokio::test]
async fn a_429_storm_is_met_with_longer_and_longer_waits_and_a_bound() {
    let (provider, app) = setup_with(|_| {}).await;
    provider.set_default(Reply::RateLimit(Some(0)));
    let id = create(&app, "+14155550100").await;
    let dispatcher = app.dispatcher().await;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        dispatcher.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Never sooner than 1 s, then 2 s: at most 3 requests in 3 s (it was 162).
    let sent = provider.received().len();
    assert!((2..=3).contains(&sent), "{sent} requests in 3 s");
    // Each wait longer than the one before.
    let (_, body) = app.get(&format!("/api/v1/calls/{id}/events")).await;
    let delays: Vec<u64> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "RATE_LIMITED")
        .map(|e| e["detail"]["delayMs"].as_u64().unwrap())
        .collect();
    assert!(delays[0] >= 1000, "{delays:?}");
    assert!(delays.windows(2).all(|w| w[1] > w[0]), "{delays:?}");
    // However long it goes on, one attempt is requeued a bounded number of times.
    for _ in 0..40 {
        sqlx::query(
            "UPDATE calls SET next_attempt_at = now() WHERE id = $1::uuid AND status = 'PENDING'",
        )
        .bind(&id)
        .execute(&app.pool)
        .await
        .unwrap();
        dispatcher.run_once().await.unwrap();
    }
    let limited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM call_attempts WHERE call_id = $1::uuid AND attempt = 1 AND status = 'RATE_LIMITED'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(limited, 19);
    let failed: String = sqlx::query_scalar(
        "SELECT error FROM call_attempts WHERE call_id = $1::uuid AND attempt = 1 AND status = 'FAILED'",
    )
    .bind(&id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(failed.contains("20 times"), "{failed}");
    let call = app.call(&id).await;
    assert!(call["attempts"].as_i64().unwrap() >= 2, "{call}");
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_attempts WHERE call_id = $1::uuid")
            .bind(&id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    // At most 20 rows for each of the MAX_RETRY_ATTEMPTS (3) attempts.
    assert!(rows <= 60, "{rows} attempt rows");
}

#[tokio::test]
async fn a_provider_that_gives_one_id_twice_fails_the_second_attempt_instead_of_holding_it() {
    let (provider, app) = setup_with(|c| c.retry_base_delay = Duration::from_secs(60)).await;
    provider.script([Reply::AcceptAs("dup"), Reply::AcceptAs("dup")]);
    let first = create(&app, "+14155550100").await;
    let second = create(&app, "+14155550101").await;
    app.dispatcher().await.run_once().await.unwrap();
    let calls = [app.call(&first).await, app.call(&second).await];
    let holder: Vec<&Value> = calls
        .iter()
        .filter(|c| c["externalCallId"] == "dup")
        .collect();
    assert_eq!(holder.len(), 1, "{calls:?}");
    let other = calls.iter().find(|c| c["externalCallId"] != "dup").unwrap();
    assert_eq!(other["status"], "PENDING", "{other}");
    assert!(
        other["lastError"]
            .as_str()
            .unwrap()
            .contains("which it had given another attempt"),
        "{other}"
    );
    let dialing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM call_attempts WHERE status = 'DIALING'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(dialing, 0, "no attempt left for the rescuer");
}

async fn post_with(
    app: &TestApp,
    path: &str,
    api_key: &str,
    idempotency_key: &str,
    body: Value,
) -> (StatusCode, Value, bool) {
    let response = app
        .client
        .post(app.url(path))
        .bearer_auth(api_key)
        .header("Idempotency-Key", idempotency_key)
        .json(&body)
        .send()
        .await
        .unwrap();
    let replayed = response.headers().get("idempotent-replayed").is_some();
    let (status, body) = common::read(response).await;
    (status, body, replayed)
}

#[tokio::test]
async fn idempotency_keys_are_each_clients_own_and_cover_batches() {
    let app = TestApp::spawn_with(|c| c.api_keys = Some(Secret::new("k1,k2"))).await;
    let call = json!({"to": "+14155550100", "scriptId": "s", "metadata": {"secret": "of k1"}});
    let (status, first, _) = post_with(&app, "/api/v1/calls", "k1", "order-1", call.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    let (status, theirs, replayed) =
        post_with(&app, "/api/v1/calls", "k2", "order-1", call.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!replayed, "another client's key never answers this one");
    assert_ne!(theirs["data"]["id"], first["data"]["id"]);
    let (_, again, replayed) = post_with(&app, "/api/v1/calls", "k1", "order-1", call).await;
    assert!(replayed);
    assert_eq!(again["data"]["id"], first["data"]["id"]);

    let batch = json!({"calls": [
        {"to": "+14155550101", "scriptId": "s"},
        {"to": "+14155550102", "scriptId": "s"},
    ]});
    let (status, stored, replayed) =
        post_with(&app, "/api/v1/calls/batch", "k1", "batch-1", batch.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{stored}");
    assert!(!replayed);
    let (calls, _, _) = app.row_counts().await;
    // The client lost the answer and sends the batch again: the same calls, none added.
    let (status, again, replayed) =
        post_with(&app, "/api/v1/calls/batch", "k1", "batch-1", batch.clone()).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(replayed);
    assert_eq!(again["data"], stored["data"]);
    assert_eq!(app.row_counts().await.0, calls);
    // The same key with other calls, or on the other route, is refused.
    let other = json!({"calls": [{"to": "+14155550103", "scriptId": "s"}]});
    let (status, body, _) = post_with(&app, "/api/v1/calls/batch", "k1", "batch-1", other).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "IDEMPOTENCY_KEY_REUSED",
    );
    let single = json!({"to": "+14155550101", "scriptId": "s"});
    let (status, body, _) = post_with(&app, "/api/v1/calls", "k1", "batch-1", single).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "IDEMPOTENCY_KEY_REUSED",
    );
    // Another client may use the same key for a batch of its own.
    let (status, _, replayed) =
        post_with(&app, "/api/v1/calls/batch", "k2", "batch-1", batch).await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(!replayed);
    assert_eq!(app.row_counts().await.0, calls + 2);
}

fn address(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Sends `head` (and `body`) on a new connection and returns what comes back within
/// `wait`: the answer, or "" if the connection closed or nothing came.
fn raw_exchange(app: &TestApp, head: &str, body: &[u8], wait: Duration) -> String {
    let mut stream = std::net::TcpStream::connect(address(app)).unwrap();
    stream.set_read_timeout(Some(wait)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut answer = vec![0; 4096];
    let n = stream.read(&mut answer).unwrap_or(0);
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn a_client_is_authenticated_before_its_body_is_read_and_slow_ones_are_cut_off() {
    let app = TestApp::spawn_with(|c| {
        c.api_keys = Some(Secret::new("k1"));
        c.http_read_timeout = Duration::from_millis(500);
    })
    .await;
    let app = std::sync::Arc::new(app);
    let run = |head: String, body: Vec<u8>, wait: Duration| {
        let app = app.clone();
        tokio::task::spawn_blocking(move || raw_exchange(&app, &head, &body, wait))
    };
    // 15 MB announced, none sent, no key: refused at once, nothing read.
    let started = Instant::now();
    let answer = run(
        "POST /api/v1/calls/batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: 15000000\r\n\r\n"
            .into(),
        Vec::new(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(3));
    // Half a header, then nothing: the connection is closed.
    let started = Instant::now();
    let answer = run(
        "GET /health HTTP/1.1\r\nHost: x\r\n".into(),
        Vec::new(),
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert!(!answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "held for {:?}",
        started.elapsed()
    );
    // A body that never finishes: 408 with the envelope.
    let answer = run(
        "POST /api/v1/calls HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: Bearer k1\r\nContent-Length: 100\r\n\r\n"
            .into(),
        b"{\"to\": ".to_vec(),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    assert_eq!(app.row_counts().await.0, 0);
}

/// The provider's webhooks are not counted with the clients' requests, and not turned away
/// by `HTTP_MAX_IN_FLIGHT`: a burst of calls ending at once never turns a client away (a
/// campaign's batch, say), and a busy client never turns a webhook away, which a provider
/// might never send again. Only the connection bound holds them back.
#[tokio::test]
async fn webhooks_are_bounded_apart_from_client_requests() {
    let app = TestApp::spawn_with(|c| {
        c.http_max_in_flight = 1;
        c.http_read_timeout = Duration::from_secs(5);
    })
    .await;
    // A client's request holds the clients' one slot: webhooks still get through.
    let client = app.hold_request("/api/v1/calls");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.get("/api/v1/metrics").await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let (status, body) = app
        .webhook_raw("", json!({"callId": "nobody", "status": "COMPLETED"}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "UNKNOWN_CALL_ID");
    drop(client);
    // Webhooks in flight, more than HTTP_MAX_IN_FLIGHT: another still gets through, and so
    // do the clients.
    let webhooks = [
        app.hold_request("/api/v1/callbacks/call-status"),
        app.hold_request("/api/v1/callbacks/call-status"),
    ];
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = app
        .webhook_raw("", json!({"callId": "nobody", "status": "COMPLETED"}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "UNKNOWN_CALL_ID");
    let deadline = Instant::now() + Duration::from_secs(10);
    while app.get("/api/v1/metrics").await.0 != StatusCode::OK {
        assert!(
            Instant::now() < deadline,
            "the clients' slot did not come back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(webhooks);
}

#[tokio::test]
async fn connections_and_requests_in_flight_are_bounded() {
    let app = TestApp::spawn_with(|c| {
        c.http_max_in_flight = 1;
        c.http_max_connections = 2;
        c.http_read_timeout = Duration::from_secs(5);
    })
    .await;
    // One request in flight, its body still coming: the next is told to come back.
    let slow = app.hold_request("/api/v1/calls");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let response = app
        .client
        .get(app.url("/api/v1/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["retry-after"], "1");
    let (_, body) = common::read(response).await;
    assert_eq!(body["error"]["code"], "OVERLOADED");
    drop(slow);
    // A second connection that sends nothing takes the last slot: a third client waits.
    let _idle = std::net::TcpStream::connect(address(&app)).unwrap();
    let _idle2 = std::net::TcpStream::connect(address(&app)).unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let quick = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    assert!(quick.get(app.url("/health")).send().await.is_err());
    drop((_idle, _idle2));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !quick
        .get(app.url("/health"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        assert!(Instant::now() < deadline, "the slots never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn metrics_can_ask_for_a_key_or_move_to_a_port_of_their_own() {
    let app = TestApp::spawn_with(|c| {
        c.api_keys = Some(Secret::new("k1"));
        c.metrics_require_api_key = true;
    })
    .await;
    let (status, body) = app.get("/metrics").await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let text = app
        .client
        .get(app.url("/metrics"))
        .bearer_auth("k1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // Every series from the start, at 0 until its first event.
    for series in [
        "call_orchestrator_attempts_rescued_total",
        "call_orchestrator_calls_expired_total",
        "call_orchestrator_webhooks_total{outcome=\"error\"}",
        "call_orchestrator_failed_attempts_total{outcome=\"attempts_exhausted\"}",
    ] {
        assert!(text.contains(series), "{series} missing from:\n{text}");
    }
    // The health check stays open.
    assert_eq!(app.get("/health").await.0, StatusCode::OK);

    let port = common::free_port();
    let app = TestApp::spawn_with(|c| c.metrics_port = Some(port)).await;
    let (status, body) = app.get("/metrics").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "NOT_FOUND");
    common::wait_ok(
        &format!("http://127.0.0.1:{port}/metrics"),
        Duration::from_secs(10),
    )
    .await;
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("call_orchestrator_calls{status=\"PENDING\"}"),
        "{text}"
    );

    // Its own port asks for the key too when told to.
    let port = common::free_port();
    let app = TestApp::spawn_with(|c| {
        c.metrics_port = Some(port);
        c.api_keys = Some(Secret::new("k1"));
        c.metrics_require_api_key = true;
    })
    .await;
    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        if let Ok(response) = app.client.get(&url).send().await {
            break response;
        }
        assert!(Instant::now() < deadline, "{url} did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (status, body) = common::read(refused).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let allowed = app.client.get(&url).bearer_auth("k1").send().await.unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
}

#[tokio::test]
async fn progress_is_bounded_the_timeline_pages_and_ids_are_plain() {
    let (_provider, app) = setup_with(|_| {}).await;
    let (id, external) = app.dialed("+14155550100").await;
    for _ in 0..30 {
        let (code, body) = app
            .webhook(
                "",
                json!({"callId": external, "status": "RINGING", "reason": "r".repeat(2000)}),
            )
            .await;
        assert_eq!(code, StatusCode::OK, "{body}");
    }
    let (_, all) = app
        .get(&format!("/api/v1/calls/{id}/events?limit=1000"))
        .await;
    let all = all["data"].as_array().unwrap().clone();
    let progress = all
        .iter()
        .filter(|e| e["type"] == "WEBHOOK_RECEIVED")
        .count();
    assert_eq!(progress, 20);
    // Page by page: disjoint, complete, in order.
    let mut paged = Vec::new();
    let mut query = format!("/api/v1/calls/{id}/events?limit=7");
    loop {
        let (status, page) = app.get(&query).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let data = page["data"].as_array().unwrap();
        assert!(data.len() <= 7);
        paged.extend(data.iter().cloned());
        match page["pagination"]["nextCursor"].as_str() {
            Some(cursor) => query = format!("/api/v1/calls/{id}/events?limit=7&after={cursor}"),
            None => break,
        }
    }
    assert_eq!(paged, all);
    for bad in ["limit=0", "limit=1001", "after=abc", "after=-1"] {
        let (status, body) = app.get(&format!("/api/v1/calls/{id}/events?{bad}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_PARAMETER");
    }
    // A callId that would forge a log line is refused.
    let (code, body) = app
        .webhook_raw(
            "",
            json!({"callId": "p-1\n2026-12-01T00:00:00Z  INFO forged \u{1b}[31m", "status": "COMPLETED"}),
        )
        .await;
    assert_error(code, &body, StatusCode::BAD_REQUEST, "INVALID_WEBHOOK");
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

#[tokio::test]
async fn a_replayed_signed_webhook_changes_nothing() {
    let (_provider, app) = setup_with(|c| c.webhook_secret = Some(Secret::new(SECRET))).await;
    let (id, external) = app.dialed("+14155550100").await;
    let body = json!({"callId": external, "status": "RINGING"}).to_string();
    let now = chrono::Utc::now().timestamp();
    let signature = standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .sign("msg_replayed", now, body.as_bytes())
        .unwrap();
    let send = || {
        app.client
            .post(app.url("/api/v1/callbacks/call-status"))
            .header("content-type", "application/json")
            .header("webhook-id", "msg_replayed")
            .header("webhook-timestamp", now.to_string())
            .header("webhook-signature", &signature)
            .body(body.clone())
            .send()
    };
    let (status, first) = common::read(send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["data"]["duplicate"], false);
    let (status, again) = common::read(send().await.unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again["data"]["duplicate"], true);
    assert_eq!(count(&app.timeline(&id).await, "WEBHOOK_RECEIVED"), 1);
}

#[tokio::test]
async fn query_strings_and_headers_are_read_as_clients_write_them() {
    let app = TestApp::spawn_with(|c| c.api_keys = Some(Secret::new("k1"))).await;
    let created = app
        .client
        .post(app.url("/api/v1/calls"))
        .header("authorization", "bearer k1")
        .json(&json!({"to": "+14155550100", "scriptId": "s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        created.status(),
        StatusCode::CREATED,
        "the scheme is case-insensitive"
    );
    // `+` unencoded in a query decodes as a space; it is read as the `+` it was.
    let (status, page) = common::read(
        app.client
            .get(app.url("/api/v1/calls?to=+14155550100"))
            .header("authorization", "BEARER k1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["pagination"]["total"], 1);
    // A very long query: 414 with the envelope.
    let long = format!("/api/v1/calls?to={}", "1".repeat(20_000));
    let (status, body) = common::read(
        app.client
            .get(app.url(&long))
            .bearer_auth("k1")
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_error(status, &body, StatusCode::URI_TOO_LONG, "URI_TOO_LONG");
}

#[tokio::test]
async fn a_provider_that_redirects_or_floods_is_not_followed() {
    let (provider, app) = setup_with(|_| {}).await;
    let elsewhere = FakeProvider::start().await;
    provider.script([Reply::Redirect(elsewhere.url.clone())]);
    let id = create(&app, "+14155550100").await;
    app.dispatcher().await.run_once().await.unwrap();
    assert!(
        elsewhere.received().is_empty(),
        "the call's data went elsewhere"
    );
    let call = app.call(&id).await;
    assert_eq!(call["status"], "FAILED", "{call}");
    assert!(
        call["lastError"].as_str().unwrap().contains("307"),
        "{call}"
    );
    // An answer of a megabyte is not read; the attempt's outcome is unknown, never placed twice.
    provider.script([
        Reply::Huge(1 << 20),
        Reply::Huge(1 << 20),
        Reply::Huge(1 << 20),
    ]);
    let id = create(&app, "+14155550101").await;
    app.dispatcher().await.run_once().await.unwrap();
    assert_eq!(app.call(&id).await["status"], "IN_PROGRESS");
    let (_, events) = app.get(&format!("/api/v1/calls/{id}/events")).await;
    let unknown = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["type"] == "DIAL_UNKNOWN")
        .cloned()
        .unwrap_or_default();
    assert!(
        unknown["detail"]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("larger than")),
        "{events}"
    );
}
