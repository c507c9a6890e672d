//! Group commit: creates without an Idempotency-Key, the provider's 2xx answers and webhooks
//! that arrive together are written together, in one transaction. Each caller still gets
//! exactly its own answer, the result is what writing them one by one would give, and one
//! item the database refuses never takes the others down with it.

mod common;

use std::{collections::HashSet, time::Duration};

use call_orchestrator::{
    db::{self, Accepted, DbError, NewCall},
    domain::{
        CallPayload, PerOutcome, PhoneNumber, ProviderStatus, ReportSource, RetryDecision,
        RetryPolicy, ScriptId, WebhookUpdate,
        decide::{Retry, WebhookEffect},
    },
};
use common::TestApp;
use reqwest::StatusCode;
use serde_json::json;
use uuid::Uuid;

/// A retry policy of `max_attempts` with a constant delay of `seconds`.
fn retry(max_attempts: u32, seconds: u64) -> Retry {
    let delay = Duration::from_secs(seconds);
    Retry {
        policy: RetryPolicy {
            max_attempts,
            base_delay: delay,
            max_delay: delay,
            outcomes: PerOutcome::EVERY,
        },
        jitter: 0.5,
        rules: call_orchestrator::domain::schedule::Rules::OFF,
    }
}

/// Transactions that wrote the rows `query` selects (their `xmin`).
async fn writers(app: &TestApp, query: &str) -> usize {
    let xmins: Vec<String> = sqlx::query_scalar(&format!("SELECT xmin::text FROM ({query}) q"))
        .fetch_all(&app.pool)
        .await
        .unwrap();
    xmins.into_iter().collect::<HashSet<_>>().len()
}

#[tokio::test]
async fn concurrent_creates_are_stored_together_and_each_gets_its_own_call() {
    let app = TestApp::spawn().await;
    let requests = (0..64).map(|i| {
        let app = &app;
        async move {
            let to = format!("+1415555{i:04}");
            let (status, body) = app
                .post(
                    "/api/v1/calls",
                    json!({"to": to, "scriptId": "welcomeFlow", "metadata": {"n": i}}),
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            assert_eq!(body["data"]["payload"]["to"], to);
            assert_eq!(body["data"]["payload"]["metadata"], json!({"n": i}));
            let stored = app.call(body["data"]["id"].as_str().unwrap()).await;
            assert_eq!(stored, body["data"]);
        }
    });
    futures_util::future::join_all(requests).await;
    assert_eq!(app.row_counts().await.0, 64);
    let transactions = writers(&app, "SELECT xmin FROM calls").await;
    assert!(
        transactions < 64,
        "64 concurrent creates took {transactions} transactions: none were grouped"
    );
}

fn new_call(to: &str) -> NewCall {
    NewCall::new(CallPayload {
        to: PhoneNumber::from_trusted(to.into()),
        script_id: ScriptId::from_trusted("welcomeFlow".into()),
        metadata: Default::default(),
    })
}

#[tokio::test]
async fn a_create_the_database_refuses_fails_alone() {
    let app = TestApp::spawn().await;
    // The number bypasses the API's validation; the table's CHECK refuses it.
    let calls = [
        new_call("+14155550100"),
        new_call("not a number"),
        new_call("+14155550101"),
    ];
    let results = db::create_each(&app.pool, &calls).await;
    assert_eq!(results.len(), 3);
    assert_eq!(results[0].as_ref().unwrap().id, calls[0].id);
    assert!(matches!(results[1], Err(DbError::Other(_))));
    assert_eq!(results[2].as_ref().unwrap().id, calls[2].id);
    assert_eq!(app.row_counts().await.0, 2);
}

/// `count` calls claimed by hand: DIALING attempts no provider has answered yet.
async fn claimed(app: &TestApp, count: usize) -> Vec<Uuid> {
    let calls: Vec<NewCall> = (0..count)
        .map(|i| new_call(&format!("+1415556{i:04}")))
        .collect();
    db::create_calls(&app.pool, &calls).await.unwrap();
    let claimed = db::claim(
        &app.pool,
        1000,
        count as u32,
        Duration::from_secs(60),
        &call_orchestrator::domain::schedule::Rules::OFF,
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), count);
    claimed.into_iter().map(|c| c.call.id).collect()
}

/// The row of attempt 1 of each call.
async fn first_attempts(app: &TestApp, ids: &[Uuid]) -> Vec<i64> {
    let mut rows = Vec::new();
    for id in ids {
        rows.push(
            sqlx::query_scalar("SELECT id FROM call_attempts WHERE call_id = $1 AND attempt = 1")
                .bind(id)
                .fetch_one(&app.pool)
                .await
                .unwrap(),
        );
    }
    rows
}

/// The provider's 2xx for attempt 1 of each call, with the callIds `prov-0`, `prov-1`, ….
async fn answers(app: &TestApp, ids: &[Uuid]) -> Vec<Accepted> {
    let rows = first_attempts(app, ids).await;
    ids.iter()
        .zip(rows)
        .enumerate()
        .map(|(i, (id, attempt_id))| Accepted {
            call_id: *id,
            attempt_id,
            provider_call_id: Some(format!("prov-{i}")),
        })
        .collect()
}

#[tokio::test]
async fn dial_answers_are_recorded_together_and_a_repeated_provider_id_fails_alone() {
    let app = TestApp::spawn().await;
    let ids = claimed(&app, 12).await;
    let answers = answers(&app, &ids[..10]).await;
    let results = db::record_accepted_each(&app.pool, &answers).await;
    assert!(results.iter().all(Result::is_ok));
    for (i, id) in ids[..10].iter().enumerate() {
        let call = app.call(&id.to_string()).await;
        assert_eq!(call["externalCallId"], format!("prov-{i}"));
        assert_eq!(
            app.timeline(&id.to_string()).await,
            ["CREATED", "DIALED", "ACCEPTED"]
        );
    }
    assert_eq!(
        writers(
            &app,
            "SELECT xmin FROM call_attempts WHERE status = 'ACCEPTED'"
        )
        .await,
        1
    );

    // A provider that hands one callId to two calls: the unique index refuses the second,
    // and only the second.
    let rows = first_attempts(&app, &ids[10..12]).await;
    let twice = [(ids[10], rows[0]), (ids[11], rows[1])].map(|(id, attempt_id)| Accepted {
        call_id: id,
        attempt_id,
        provider_call_id: Some("same".into()),
    });
    let results = db::record_accepted_each(&app.pool, &twice).await;
    assert!(results[0].is_ok());
    assert!(results[1].is_err());
    assert_eq!(
        app.call(&ids[10].to_string()).await["externalCallId"],
        "same"
    );
    assert!(app.call(&ids[11].to_string()).await["externalCallId"].is_null());
    assert_eq!(
        app.timeline(&ids[11].to_string()).await,
        ["CREATED", "DIALED"]
    );
}

fn webhook(provider_call_id: &str, status: ProviderStatus) -> WebhookUpdate {
    WebhookUpdate {
        provider_call_id: provider_call_id.into(),
        status,
        duration_sec: Some(30),
        reason: None,
        reference: None,
        authenticated: true,
        webhook_id: None,
        body: json!({"callId": provider_call_id, "status": status.as_str()}),
        source: ReportSource::Webhook,
    }
}

#[tokio::test]
async fn webhooks_applied_together_come_to_what_one_by_one_would() {
    let app = TestApp::spawn().await;
    let ids = claimed(&app, 3).await;
    let answers = answers(&app, &ids[..2]).await;
    db::record_accepted_each(&app.pool, &answers).await;
    // The third call's 2xx never came: its webhook finds it by the reference alone.
    let mut early = webhook("prov-early", ProviderStatus::Completed);
    early.reference = Some((ids[2], 1));
    let batch = [
        webhook("prov-0", ProviderStatus::Ringing),
        webhook("prov-0", ProviderStatus::Completed),
        webhook("prov-0", ProviderStatus::Completed),
        webhook("nobody", ProviderStatus::Completed),
        webhook("prov-1", ProviderStatus::Busy),
        early,
    ];
    // Always a retry after 60 s (no jitter at 0.5).
    let results = db::apply_webhooks(&app.pool, &batch, || retry(100, 60)).await;
    let effects: Vec<_> = results
        .iter()
        .map(|r| match r {
            Ok(outcome) => Ok(outcome.effect),
            Err(DbError::NotFound) => Err("not found"),
            Err(err) => panic!("{err}"),
        })
        .collect();
    assert_eq!(
        effects,
        [
            Ok(WebhookEffect::Applied),
            Ok(WebhookEffect::Applied),
            Ok(WebhookEffect::Duplicate),
            Err("not found"),
            Ok(WebhookEffect::Applied),
            Ok(WebhookEffect::Applied),
        ]
    );
    assert_eq!(
        results[4].as_ref().unwrap().retry,
        Some(RetryDecision::RetryAfter(Duration::from_secs(60)))
    );

    let first = app.call(&ids[0].to_string()).await;
    assert_eq!(first["status"], "COMPLETED");
    assert_eq!(
        app.timeline(&ids[0].to_string()).await,
        [
            "CREATED",
            "DIALED",
            "ACCEPTED",
            "WEBHOOK_RECEIVED",
            "WEBHOOK_RECEIVED",
            "COMPLETED"
        ]
    );
    let second = app.call(&ids[1].to_string()).await;
    assert_eq!(second["status"], "PENDING");
    assert_eq!(second["attempts"], 1);
    let third = app.call(&ids[2].to_string()).await;
    assert_eq!(third["status"], "COMPLETED");
    assert_eq!(third["externalCallId"], "prov-early");
    // One transaction wrote every webhook's timeline entries.
    assert_eq!(
        writers(
            &app,
            "SELECT xmin FROM call_events WHERE kind IN ('WEBHOOK_RECEIVED', 'COMPLETED', 'RETRY_SCHEDULED')"
        )
        .await,
        1
    );
}

#[tokio::test]
async fn concurrent_webhooks_and_their_repeats_settle_each_call_once() {
    let app = TestApp::spawn().await;
    let ids = claimed(&app, 40).await;
    let answers = answers(&app, &ids).await;
    db::record_accepted_each(&app.pool, &answers).await;
    let sends = (0..80).map(|n| {
        let app = &app;
        async move {
            let (status, body) = app
                .webhook(
                    "",
                    json!({"callId": format!("prov-{}", n % 40), "status": "COMPLETED", "durationSec": 5}),
                )
                .await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["data"]["duplicate"].as_bool().unwrap()
        }
    });
    let duplicates = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .filter(|d| *d)
        .count();
    assert_eq!(duplicates, 40, "one of each pair is the repeat");
    for id in &ids {
        let call = app.call(&id.to_string()).await;
        assert_eq!(call["status"], "COMPLETED");
        let timeline = app.timeline(&id.to_string()).await;
        assert_eq!(timeline.iter().filter(|k| *k == "COMPLETED").count(), 1);
    }
    let transactions = writers(
        &app,
        "SELECT xmin FROM call_events WHERE kind = 'COMPLETED'",
    )
    .await;
    assert!(
        transactions < 40,
        "40 concurrent webhooks took {transactions} transactions: none were grouped"
    );
}

#[tokio::test]
async fn a_batch_of_webhooks_and_a_batch_of_answers_over_the_same_calls_never_deadlock() {
    let app = TestApp::spawn().await;
    // A deadlock would hang both batches for a minute instead of costing one a second.
    sqlx::query("ALTER SYSTEM SET deadlock_timeout = '60s'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("SELECT pg_reload_conf()")
        .execute(&app.pool)
        .await
        .unwrap();
    let mut ids = claimed(&app, 20).await;
    ids.sort();
    let answers = answers(&app, &ids).await;
    // The webhooks come in the opposite order; each finds its call by the reference, as
    // an early one does.
    let webhooks: Vec<WebhookUpdate> = ids
        .iter()
        .enumerate()
        .rev()
        .map(|(i, id)| {
            let mut update = webhook(&format!("prov-{i}"), ProviderStatus::Completed);
            update.reference = Some((*id, 1));
            update
        })
        .collect();

    // Hold the middle call, so the answers lock the lower half and wait for it.
    let mut blocker = app.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM calls WHERE id = $1 FOR UPDATE")
        .bind(ids[10])
        .execute(&mut *blocker)
        .await
        .unwrap();
    let pool = app.pool.clone();
    let answering = tokio::spawn(async move { db::record_accepted_each(&pool, &answers).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pool = app.pool.clone();
    let applying = tokio::spawn(async move {
        // Never a retry.
        db::apply_webhooks(&pool, &webhooks, || retry(1, 60)).await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.commit().await.unwrap();

    let both = async { (answering.await.unwrap(), applying.await.unwrap()) };
    let (answered, applied) = tokio::time::timeout(Duration::from_secs(30), both)
        .await
        .expect("the two batches deadlocked");
    assert!(answered.iter().all(Result::is_ok));
    assert!(applied.iter().all(Result::is_ok));
    for id in &ids {
        assert_eq!(app.call(&id.to_string()).await["status"], "COMPLETED");
    }
}

#[tokio::test]
async fn a_late_answer_to_a_throttled_attempt_never_touches_its_redial() {
    // The vendor ends attempt 1 for its concurrency limit (not an attempt): the call is
    // claimed again, as attempt 1 once more but another row. The first dial's answer,
    // arriving only now, is recorded on its own row and leaves the redial alone.
    let app = TestApp::spawn().await;
    let ids = claimed(&app, 1).await;
    let first = first_attempts(&app, &ids).await[0];
    let mut throttled = webhook("vendor-throttled", ProviderStatus::Throttled);
    throttled.reference = Some((ids[0], 1));
    let outcome = db::apply_webhook(&app.pool, &throttled, || retry(3, 1))
        .await
        .unwrap();
    assert_eq!(outcome.effect, WebhookEffect::Applied);
    sqlx::query("UPDATE calls SET next_attempt_at = now() WHERE id = $1")
        .bind(ids[0])
        .execute(&app.pool)
        .await
        .unwrap();
    let redial = db::claim(
        &app.pool,
        10,
        10,
        Duration::from_secs(60),
        &call_orchestrator::domain::schedule::Rules::OFF,
    )
    .await
    .unwrap();
    assert_eq!(redial.len(), 1);
    assert_eq!(redial[0].attempt, 1);
    assert_ne!(redial[0].attempt_id, first);
    let failed = call_orchestrator::domain::DialOutcome::Transient {
        reason: "the first dial's late 502".into(),
        retry_after: None,
    };
    db::record_dial_outcome(&app.pool, ids[0], first, &failed, retry(3, 1))
        .await
        .unwrap();
    let accepted = Accepted {
        call_id: ids[0],
        attempt_id: first,
        provider_call_id: Some("vendor-late".into()),
    };
    assert!(
        db::record_accepted_each(&app.pool, &[accepted])
            .await
            .iter()
            .all(Result::is_ok)
    );
    let (status, provider_id): (String, Option<String>) =
        sqlx::query_as("SELECT status, provider_call_id FROM call_attempts WHERE id = $1")
            .bind(redial[0].attempt_id)
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!((status.as_str(), provider_id), ("DIALING", None));
    assert_eq!(app.call(&ids[0].to_string()).await["status"], "IN_PROGRESS");
}
