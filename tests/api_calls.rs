//! Each route of the calls API, on the happy path and its own failures.

mod common;

use common::{TestApp, assert_error};
use reqwest::StatusCode;
use serde_json::{Value, json};

#[tokio::test]
async fn create_then_read_a_call() {
    let app = TestApp::spawn().await;
    let (status, body) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+1 (415) 555-0100", "scriptId": "welcomeFlow",
                   "metadata": {"customerName": "John Doe"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["success"], json!(true));
    let call = &body["data"];
    assert_eq!(
        call["payload"],
        json!({"to": "+14155550100", "scriptId": "welcomeFlow", "metadata": {"customerName": "John Doe"}})
    );
    assert_eq!(call["status"], "PENDING");
    assert_eq!(call["attempts"], 0);
    for null in [
        "externalCallId",
        "lastError",
        "durationSec",
        "startedAt",
        "completedAt",
    ] {
        assert_eq!(call[null], Value::Null, "{null}");
    }
    for time in ["nextAttemptAt", "createdAt", "updatedAt"] {
        assert!(
            call[time].as_str().is_some_and(|t| t.len() >= 20),
            "{time}: {call}"
        );
    }

    let id = call["id"].as_str().unwrap();
    let (status, got) = app.get(&format!("/api/v1/calls/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["data"], *call);
}

#[tokio::test]
async fn metadata_defaults_to_an_empty_object() {
    let app = TestApp::spawn().await;
    let call = app.create_call("+966501234567").await;
    assert_eq!(call["payload"]["metadata"], json!({}));
}

#[tokio::test]
async fn unknown_call_is_404_and_a_bad_id_400() {
    let app = TestApp::spawn().await;
    let unknown = "550e8400-e29b-41d4-a716-446655440000";
    for path in [
        format!("/api/v1/calls/{unknown}"),
        format!("/api/v1/calls/{unknown}/events"),
    ] {
        let (status, body) = app.get(&path).await;
        assert_error(status, &body, StatusCode::NOT_FOUND, "CALL_NOT_FOUND");
    }
    let (status, body) = app
        .post(&format!("/api/v1/calls/{unknown}/cancel"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "CALL_NOT_FOUND");
    let (status, body) = app
        .patch(&format!("/api/v1/calls/{unknown}"), json!({"payload": {}}))
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "CALL_NOT_FOUND");
    for bad in ["not-a-uuid", "550e8400", "'%20OR%201=1"] {
        let (status, body) = app.get(&format!("/api/v1/calls/{bad}")).await;
        assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_ID");
    }
}

#[tokio::test]
async fn patch_merges_into_the_payload_and_revalidates() {
    let app = TestApp::spawn().await;
    let (_, created) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+14155550100", "scriptId": "a", "metadata": {"keep": 1, "drop": 2, "nested": {"x": 1}}}),
        )
        .await;
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/calls/{id}");

    let (status, body) = app
        .patch(
            &path,
            json!({"payload": {"to": "+44 20 7946 0958", "metadata": {"drop": null, "nested": {"y": 2}}}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["data"]["payload"],
        json!({"to": "+442079460958", "scriptId": "a", "metadata": {"keep": 1, "nested": {"x": 1, "y": 2}}})
    );

    // An invalid result is refused and changes nothing.
    let (status, body) = app
        .patch(&path, json!({"payload": {"to": "0044 20"}}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let (status, body) = app
        .patch(&path, json!({"payload": {"scriptId": null}}))
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let (status, body) = app.patch(&path, json!({"payload": {"extra": 1}})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    let (_, now) = app.get(&path).await;
    assert_eq!(now["data"]["payload"]["to"], "+442079460958");

    let (_, events) = app.get(&format!("{path}/events")).await;
    let kinds: Vec<_> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(kinds, [json!("CREATED"), json!("UPDATED")]);
}

#[tokio::test]
async fn only_pending_calls_can_be_patched_or_cancelled() {
    let app = TestApp::spawn().await;
    let call = app.create_call("+14155550100").await;
    let id = call["id"].as_str().unwrap();

    let (status, body) = app
        .post(&format!("/api/v1/calls/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["data"]["status"], "CANCELLED");
    assert!(body["data"]["completedAt"].is_string());
    assert_eq!(body["data"]["nextAttemptAt"], Value::Null);

    let (status, body) = app
        .post(&format!("/api/v1/calls/{id}/cancel"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CALL_NOT_PENDING");
    let (status, body) = app
        .patch(
            &format!("/api/v1/calls/{id}"),
            json!({"payload": {"scriptId": "b"}}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CALL_NOT_PENDING");

    // Likewise for a call the dispatcher holds.
    let other = app.create_call("+14155550101").await;
    let other_id = other["id"].as_str().unwrap();
    sqlx::query(
        "UPDATE calls SET status = 'IN_PROGRESS', attempts = 1, started_at = now(),
         next_attempt_at = NULL WHERE id = $1::uuid",
    )
    .bind(other_id)
    .execute(&app.pool)
    .await
    .unwrap();
    let (status, body) = app
        .post(&format!("/api/v1/calls/{other_id}/cancel"), json!({}))
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CALL_NOT_PENDING");
    let (status, body) = app
        .patch(
            &format!("/api/v1/calls/{other_id}"),
            json!({"payload": {"scriptId": "b"}}),
        )
        .await;
    assert_error(status, &body, StatusCode::CONFLICT, "CALL_NOT_PENDING");

    let (_, events) = app.get(&format!("/api/v1/calls/{id}/events")).await;
    let kinds: Vec<_> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].clone())
        .collect();
    assert_eq!(kinds, [json!("CREATED"), json!("CANCELLED")]);
}

#[tokio::test]
async fn a_patch_waits_for_a_claim_and_then_is_refused() {
    // The dispatcher claims inside a transaction holding the row lock; a PATCH arriving
    // meanwhile must not slip its change under a call that is being dialed.
    let app = TestApp::spawn().await;
    let call = app.create_call("+14155550100").await;
    let id = call["id"].as_str().unwrap().to_owned();
    let mut claim = app.pool.begin().await.unwrap();
    sqlx::query("SELECT id FROM calls WHERE id = $1::uuid FOR UPDATE")
        .bind(&id)
        .execute(&mut *claim)
        .await
        .unwrap();
    let patch = tokio::spawn({
        let client = app.client.clone();
        let url = app.url(&format!("/api/v1/calls/{id}"));
        async move {
            common::read(
                client
                    .patch(url)
                    .json(&json!({"payload": {"scriptId": "late"}}))
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        !patch.is_finished(),
        "the patch must wait for the claim's lock"
    );
    sqlx::query(
        "UPDATE calls SET status = 'IN_PROGRESS', attempts = 1, started_at = now(),
         next_attempt_at = NULL WHERE id = $1::uuid",
    )
    .bind(&id)
    .execute(&mut *claim)
    .await
    .unwrap();
    claim.commit().await.unwrap();
    let (status, body) = patch.await.unwrap();
    assert_error(status, &body, StatusCode::CONFLICT, "CALL_NOT_PENDING");
    let (_, now) = app.get(&format!("/api/v1/calls/{id}")).await;
    assert_eq!(now["data"]["payload"]["scriptId"], "welcomeFlow");
}

#[tokio::test]
async fn list_is_newest_first_filtered_and_paginated() {
    let app = TestApp::spawn().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let call = app.create_call(&format!("+1415555010{}", i % 2)).await;
        ids.push(call["id"].as_str().unwrap().to_owned());
    }
    app.post(&format!("/api/v1/calls/{}/cancel", ids[4]), json!({}))
        .await;

    let (status, body) = app.get("/api/v1/calls").await;
    assert_eq!(status, StatusCode::OK);
    let listed: Vec<_> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    assert_eq!(
        body["pagination"],
        json!({"page": 1, "limit": 10, "total": 5, "totalPages": 1, "nextCursor": null})
    );

    let (_, body) = app.get("/api/v1/calls?limit=2&page=2").await;
    let listed: Vec<_> = body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, [ids[2].clone(), ids[1].clone()]);
    let mut pagination = body["pagination"].clone();
    let cursor = pagination["nextCursor"].take();
    assert!(cursor.is_string(), "a page with more after it: {cursor}");
    assert_eq!(
        pagination,
        json!({"page": 2, "limit": 2, "total": 5, "totalPages": 3, "nextCursor": null})
    );

    let (_, body) = app.get("/api/v1/calls?page=9").await;
    assert_eq!(body["data"], json!([]));

    let (_, body) = app.get("/api/v1/calls?status=CANCELLED").await;
    assert_eq!(body["pagination"]["total"], 1);
    assert_eq!(body["data"][0]["id"], json!(ids[4]));

    // `to` is normalised like on create.
    let (_, body) = app.get("/api/v1/calls?to=%2B1%20415-555-0101").await;
    assert_eq!(body["pagination"]["total"], 2);
    let (_, body) = app
        .get("/api/v1/calls?to=%2B14155550100&status=PENDING")
        .await;
    assert_eq!(body["pagination"]["total"], 2);
}

#[tokio::test]
async fn metrics_count_calls_by_status() {
    let app = TestApp::spawn_with(|c| c.max_concurrent_calls = 7).await;
    let a = app.create_call("+14155550100").await;
    app.create_call("+14155550101").await;
    app.post(
        &format!("/api/v1/calls/{}/cancel", a["id"].as_str().unwrap()),
        json!({}),
    )
    .await;
    let (status, body) = app.get("/api/v1/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    assert_eq!(
        body["data"],
        json!({"PENDING": 1, "IN_PROGRESS": 0, "COMPLETED": 0, "FAILED": 0, "EXPIRED": 0, "CANCELLED": 1, "total": 2})
    );
    assert_eq!(body["concurrency"], json!({"limit": 7, "inProgress": 0}));
    assert!(body["timestamp"].is_string());
}

#[tokio::test]
async fn batch_creates_all_in_order_or_nothing() {
    let app = TestApp::spawn().await;
    let calls: Vec<Value> = (0..50)
        .map(|i| json!({"to": format!("+1415555{:04}", i), "scriptId": "batch", "metadata": {"row": i}}))
        .collect();
    let (status, body) = app
        .post("/api/v1/calls/batch", json!({"calls": calls}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let created = body["data"].as_array().unwrap();
    assert_eq!(created.len(), 50);
    for (i, call) in created.iter().enumerate() {
        assert_eq!(call["payload"]["metadata"]["row"], i);
    }
    // Batch order is creation order: the list (newest first) shows it reversed.
    let (_, page) = app.get("/api/v1/calls?limit=3").await;
    let rows: Vec<_> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["payload"]["metadata"]["row"].clone())
        .collect();
    assert_eq!(rows, [json!(49), json!(48), json!(47)]);

    let before = app.row_counts().await;
    let (status, body) = app
        .post(
            "/api/v1/calls/batch",
            json!({"calls": [
                {"to": "+14155550100", "scriptId": "ok"},
                {"to": "4155550100", "scriptId": "ok"},
                {"to": "+14155550100", "scriptId": "bad id"},
                {"to": 5, "scriptId": "ok"},
                "not an object",
                {"to": "+14155550100", "scriptId": "ok", "unknown": true}
            ]}),
        )
        .await;
    let message = assert_error(status, &body, StatusCode::BAD_REQUEST, "VALIDATION_ERROR");
    assert!(message.contains("5 of 6"), "{message}");
    let indexes: Vec<_> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [1, 2, 3, 4, 5]);
    assert_eq!(body["error"]["details"][0]["field"], "to");
    assert_eq!(app.row_counts().await, before, "nothing may be written");
}

#[tokio::test]
async fn batch_size_is_bounded() {
    let app = TestApp::spawn().await;
    let (status, body) = app.post("/api/v1/calls/batch", json!({"calls": []})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_BATCH_SIZE");
    let one = json!({"to": "+14155550100", "scriptId": "s"});
    let (status, body) = app
        .post(
            "/api/v1/calls/batch",
            json!({"calls": vec![one.clone(); 1001]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "INVALID_BATCH_SIZE");
    let (status, body) = app
        .post("/api/v1/calls/batch", json!({"calls": vec![one; 1000]}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 1000);
}

#[tokio::test]
async fn idempotency_key_replays_the_first_call() {
    let app = TestApp::spawn().await;
    let body = json!({"to": "+14155550100", "scriptId": "s", "metadata": {"a": 1}});
    let send = |body: Value, key: &'static str| {
        let request = app
            .client
            .post(app.url("/api/v1/calls"))
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let first = send(body.clone(), "order-42").await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let (_, first) = common::read(first).await;

    // The same body written differently (spacing in the number) is the same request.
    let again = send(
        json!({"to": "+1 415 555 0100", "scriptId": "s", "metadata": {"a": 1}}),
        "order-42",
    )
    .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let (_, again) = common::read(again).await;
    assert_eq!(again["data"]["id"], first["data"]["id"]);

    let (status, conflict) = common::read(
        send(
            json!({"to": "+14155550100", "scriptId": "other"}),
            "order-42",
        )
        .await,
    )
    .await;
    assert_error(
        status,
        &conflict,
        StatusCode::CONFLICT,
        "IDEMPOTENCY_KEY_REUSED",
    );

    // Another key is another call.
    let (status, other) = common::read(send(body.clone(), "order-43").await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(other["data"]["id"], first["data"]["id"]);
    assert_eq!(app.row_counts().await.0, 2);

    // After 24 hours the key is free again.
    sqlx::query("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
        .execute(&app.pool)
        .await
        .unwrap();
    let (status, later) = common::read(send(body, "order-42").await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(later["data"]["id"], first["data"]["id"]);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_create_one_call() {
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let request = app
            .client
            .post(app.url("/api/v1/calls"))
            .header("Idempotency-Key", "same")
            .json(&json!({"to": "+14155550100", "scriptId": "s"}));
        tasks.push(tokio::spawn(async move {
            common::read(request.send().await.unwrap()).await
        }));
    }
    let mut ids = std::collections::HashSet::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        ids.insert(body["data"]["id"].as_str().unwrap().to_owned());
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(app.row_counts().await, (1, 0, 1));
}

#[tokio::test]
async fn health_follows_the_database() {
    let mut app = TestApp::spawn_on_private_cluster(|_| {}).await;
    let (status, body) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"status": "ok"}));

    app.private_cluster().stop();
    let (status, body) = app.get("/health").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["status"], "unavailable");
    // A request that needs the database is a clean 503 too, not a hang or a panic.
    let (status, body) = app.get("/api/v1/metrics").await;
    assert_error(
        status,
        &body,
        StatusCode::SERVICE_UNAVAILABLE,
        "DATABASE_UNAVAILABLE",
    );

    app.private_cluster().restart().await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (status, _) = app.get("/health").await;
        if status == StatusCode::OK {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "health did not recover"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    app.create_call("+14155550100").await;
    app.stop().await;
}
