//! What always holds (docs/invariants.md), each with a test that fails if it breaks.

mod common;

use std::{
    collections::HashMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    TestApp, binary, free_port,
    provider::{AutoEnd, FakeProvider, Reply},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

async fn wait_for(what: &str, timeout: Duration, mut done: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Invariant 1, at the level of the claim: replicas claiming at the same instant, each on
/// its own connection, admit exactly the cap.
#[tokio::test]
async fn simultaneous_claims_never_exceed_the_cap() {
    let app = TestApp::spawn().await;
    let calls: Vec<Value> = (0..60)
        .map(|i| json!({"to": format!("+1415555{i:04}"), "scriptId": "s"}))
        .collect();
    app.post("/api/v1/calls/batch", json!({"calls": calls}))
        .await;
    for round in 0..5 {
        let mut claims = Vec::new();
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(8));
        for _ in 0..8 {
            let pool = sqlx::PgPool::connect(&app.db_url).await.unwrap();
            let start = start.clone();
            claims.push(tokio::spawn(async move {
                start.wait().await;
                call_orchestrator::db::claim(
                    &pool,
                    7,
                    5,
                    Duration::from_secs(60),
                    &call_orchestrator::domain::schedule::Rules::OFF,
                )
                .await
                .unwrap()
                .len()
            }));
        }
        let mut total = 0;
        for claim in claims {
            total += claim.await.unwrap();
        }
        let in_progress: i64 =
            sqlx::query_scalar("SELECT count(*) FROM calls WHERE status = 'IN_PROGRESS'")
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(in_progress, 7, "round {round}: claimed {total}");
        // Free the slots for the next round.
        sqlx::query(
            "UPDATE calls SET status = 'COMPLETED', completed_at = now() WHERE status = 'IN_PROGRESS'",
        )
        .execute(&app.pool)
        .await
        .unwrap();
    }
}

/// Invariants 1 to 4 under load: several dispatchers, each with its own pool, place
/// hundreds of calls over fewer numbers through a provider that counts what it sees.
#[tokio::test]
async fn replicas_keep_the_cap_and_one_call_per_number() {
    const CAP: u32 = 6;
    let provider = FakeProvider::start_with(Some(AutoEnd {
        min: Duration::from_millis(5),
        max: Duration::from_millis(40),
        success_rate: 0.7,
    }))
    .await;
    let url = provider.url.clone();
    let app = TestApp::spawn_with(|c| {
        c.ai_call_api_url = Some(url);
        c.max_concurrent_calls = CAP;
        c.retry_base_delay = Duration::from_millis(30);
        c.provider_timeout = Duration::from_secs(5);
    })
    .await;
    let calls: Vec<Value> = (0..300)
        .map(|i| json!({"to": format!("+1415555{:04}", i % 40), "scriptId": "load", "metadata": {"i": i}}))
        .collect();
    let (status, _) = app
        .post("/api/v1/calls/batch", json!({"calls": calls}))
        .await;
    assert!(status.is_success());

    let shutdown = CancellationToken::new();
    let mut dispatchers = Vec::new();
    for _ in 0..3 {
        let dispatcher = app.dispatcher().await;
        dispatchers.push(tokio::spawn(dispatcher.run(shutdown.clone())));
    }
    wait_for("every call to end", Duration::from_secs(180), async || {
        let (_, metrics) = app.get("/api/v1/metrics").await;
        metrics["data"]["PENDING"] == 0 && metrics["data"]["IN_PROGRESS"] == 0
    })
    .await;
    shutdown.cancel();
    for dispatcher in dispatchers {
        dispatcher.await.unwrap();
    }

    let (peak, per_number, placed) =
        provider.with_stats(|s| (s.peak_active, s.peak_per_number, s.placed.clone()));
    assert!(
        peak <= CAP as usize,
        "the provider saw {peak} calls at once, cap {CAP}"
    );
    assert!(
        peak >= 2,
        "the test should exercise concurrency (peak {peak})"
    );
    assert_eq!(per_number, 1, "two calls at once to one number");

    let rows: Vec<(uuid::Uuid, String, i32)> =
        sqlx::query_as("SELECT id, status::text, attempts FROM calls")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 300);
    let mut keys_per_call: HashMap<String, Vec<String>> = HashMap::new();
    for key in placed.keys() {
        let (call, attempt) = key.split_once(':').unwrap();
        keys_per_call
            .entry(call.to_owned())
            .or_default()
            .push(attempt.to_owned());
    }
    for (id, status, attempts) in rows {
        assert!(
            status == "COMPLETED" || status == "FAILED",
            "{id} ended {status}"
        );
        assert!((1..=3).contains(&attempts), "{id}: {attempts} attempts");
        let mut dialed = keys_per_call.remove(&id.to_string()).unwrap_or_default();
        dialed.sort();
        let expected: Vec<String> = (1..=attempts).map(|a| a.to_string()).collect();
        assert_eq!(dialed, expected, "{id}: each attempt dialed exactly once");
        if status == "FAILED" {
            assert_eq!(attempts, 3, "{id} failed before its attempts ran out");
        }
    }
    assert!(keys_per_call.is_empty());
}

/// Invariant 5: oldest first, and a busy number never stalls the calls behind it.
#[tokio::test]
async fn oldest_first_and_busy_numbers_are_skipped() {
    let (provider, app) = common::with_provider(Duration::from_secs(30), |c| {
        c.max_concurrent_calls = 2;
    })
    .await;
    let numbers = [
        "+14155550001",
        "+14155550001",
        "+14155550001",
        "+14155550002",
        "+14155550003",
    ];
    let calls: Vec<Value> = numbers
        .iter()
        .map(|n| json!({"to": n, "scriptId": "s"}))
        .collect();
    let (_, created) = app
        .post("/api/v1/calls/batch", json!({"calls": calls}))
        .await;
    let ids: Vec<String> = created["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();

    app.dispatcher().await.run_once().await.unwrap();
    let dialed: Vec<String> = provider
        .received()
        .iter()
        .map(|r| r.key.split(':').next().unwrap().to_owned())
        .collect();
    // The oldest call, then the oldest to another number: not the second call to a busy number.
    assert_eq!(dialed, [ids[0].clone(), ids[3].clone()]);

    // Free the first number's slot: its next call is older than the last one.
    let external = app.call(&ids[0]).await["externalCallId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.webhook("", json!({"callId": external, "status": "COMPLETED"}))
        .await;
    app.dispatcher().await.run_once().await.unwrap();
    let dialed: Vec<String> = provider
        .received()
        .iter()
        .map(|r| r.key.split(':').next().unwrap().to_owned())
        .collect();
    assert_eq!(dialed, [ids[0].clone(), ids[3].clone(), ids[1].clone()]);
}

/// Invariant 6: a freed slot is refilled by LISTEN/NOTIFY, not by the poll.
#[tokio::test]
async fn a_freed_slot_is_refilled_by_notification() {
    let (provider, app) = common::with_provider(Duration::from_secs(30), |c| {
        c.max_concurrent_calls = 1;
    })
    .await;
    let mut worker = app.worker().await;
    // A poll so slow that only a notification can explain a prompt refill.
    let mut settings = (*worker.settings).clone();
    settings.poll_interval = Duration::from_secs(3600);
    worker.settings = std::sync::Arc::new(settings);
    let shutdown = CancellationToken::new();
    let running =
        tokio::spawn(call_orchestrator::worker::Dispatcher::new(worker).run(shutdown.clone()));

    // A new call wakes the dispatcher too.
    app.create_call("+14155550001").await;
    wait_for("the first dial", Duration::from_secs(20), async || {
        provider.received().len() == 1
    })
    .await;
    app.create_call("+14155550002").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(provider.received().len(), 1, "the cap of 1 holds");

    let started = Instant::now();
    app.webhook("", json!({"callId": "p-1", "status": "COMPLETED"}))
        .await;
    wait_for("the refill", Duration::from_secs(20), async || {
        provider.received().len() == 2
    })
    .await;
    eprintln!(
        "slot refilled {:?} after the final webhook",
        started.elapsed()
    );
    shutdown.cancel();
    running.await.unwrap();
}

/// `serve` on `port`, against the cluster and the fake provider.
fn serve_command(
    database: &str,
    provider: &FakeProvider,
    port: u16,
    provider_timeout: &str,
) -> Command {
    let mut command = binary(&["serve"]);
    command
        .env("DATABASE_URL", database)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("AI_CALL_API_URL", &provider.url)
        .env("AI_CALL_API_KEY", "k")
        .env("WEBHOOK_BASE_URL", format!("http://127.0.0.1:{port}"))
        .env("PROVIDER_TIMEOUT", provider_timeout)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    command
}

fn serve(database: &str, provider: &FakeProvider, port: u16) -> std::process::Child {
    serve_command(database, provider, port, "10s")
        .spawn()
        .unwrap()
}

fn signal(child: &std::process::Child, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
}

async fn create_call(port: u16) -> String {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let response = client
            .post(format!("http://127.0.0.1:{port}/api/v1/calls"))
            .json(&json!({"to": "+14155550100", "scriptId": "s"}))
            .send()
            .await;
        if let Ok(response) = response {
            let body: Value = response.json().await.unwrap();
            return body["data"]["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Invariant 7: on SIGTERM a replica stops claiming, finishes the provider requests it
/// started (and records their answers), and exits; a second signal exits at once.
#[tokio::test]
async fn sigterm_drains_the_requests_in_flight() {
    let database = common::pg::empty_database().await;
    let provider = FakeProvider::start().await;
    provider.script([Reply::AcceptAfter(Duration::from_millis(1500))]);
    let port = free_port();
    let mut child = serve(&database, &provider, port);
    let id = create_call(port).await;
    wait_for("the dial", Duration::from_secs(20), async || {
        !provider.received().is_empty()
    })
    .await;
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");

    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    let (call_status, external): (String, Option<String>) =
        sqlx::query_as("SELECT status::text, external_call_id FROM calls WHERE id = $1::uuid")
            .bind(&id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(call_status, "IN_PROGRESS");
    assert_eq!(
        external.as_deref(),
        Some("p-1"),
        "the provider's answer was recorded before exit"
    );
    let attempt: String = sqlx::query_scalar("SELECT status FROM call_attempts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(attempt, "ACCEPTED", "nothing left DIALING for a rescue");
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let database = common::pg::empty_database().await;
    let provider = FakeProvider::start().await;
    provider.script([Reply::AcceptAfter(Duration::from_secs(8))]);
    let port = free_port();
    let mut child = serve(&database, &provider, port);
    create_call(port).await;
    wait_for("the dial", Duration::from_secs(20), async || {
        !provider.received().is_empty()
    })
    .await;
    signal(&child, nix::sys::signal::Signal::SIGTERM);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal waits for the dial"
    );
    signal(&child, nix::sys::signal::Signal::SIGINT);
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(130));
}

/// Invariant 3: a replica killed with SIGKILL while the provider holds its dial request
/// loses nothing: another replica rescues the attempt with the same Idempotency-Key once
/// its lease runs out, and the call ends normally.
#[tokio::test]
async fn a_replica_killed_mid_dial_loses_nothing() {
    let database = common::pg::empty_database().await;
    let provider = FakeProvider::start().await;
    provider.script([Reply::AcceptAfter(Duration::from_secs(2))]);
    let port = free_port();
    let mut first = serve_command(&database, &provider, port, "1s")
        .spawn()
        .unwrap();
    let id = create_call(port).await;
    wait_for("the dial", Duration::from_secs(20), async || {
        !provider.received().is_empty()
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();

    // A second replica, on another port; the lease of the dead one's attempt runs out.
    let second_port = free_port();
    let mut second = serve_command(&database, &provider, second_port, "1s")
        .spawn()
        .unwrap();
    wait_for("the rescue", Duration::from_secs(60), async || {
        provider.with_stats(|s| s.repeats) >= 1
    })
    .await;
    let pool = sqlx::PgPool::connect(&database).await.unwrap();
    wait_for(
        "the rescue to be recorded",
        Duration::from_secs(20),
        async || {
            let external: Option<String> =
                sqlx::query_scalar("SELECT external_call_id FROM calls WHERE id = $1::uuid")
                    .bind(&id)
                    .fetch_one(&pool)
                    .await
                    .unwrap();
            external.is_some()
        },
    )
    .await;
    let query = common::webhook_query(&pool, "p-1").await;
    provider
        .send_webhook(
            &format!("http://127.0.0.1:{second_port}/api/v1/callbacks/call-status{query}"),
            &json!({"callId": "p-1", "status": "COMPLETED"}),
        )
        .await;
    let status: String = sqlx::query_scalar("SELECT status::text FROM calls WHERE id = $1::uuid")
        .bind(&id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "COMPLETED");
    assert_eq!(
        provider.with_stats(|s| s.placed.len()),
        1,
        "one person, one call"
    );
    signal(&second, nix::sys::signal::Signal::SIGTERM);
    tokio::task::spawn_blocking(move || second.wait().unwrap())
        .await
        .unwrap();
}

/// Invariant 3 again: PostgreSQL restarting in the middle of a campaign loses no call.
#[tokio::test]
async fn a_postgres_restart_loses_nothing() {
    let provider = FakeProvider::start_with(Some(AutoEnd {
        min: Duration::from_millis(20),
        max: Duration::from_millis(200),
        success_rate: 1.0,
    }))
    .await;
    let url = provider.url.clone();
    let mut app = TestApp::spawn_on_private_cluster(|c| {
        c.ai_call_api_url = Some(url);
        c.max_concurrent_calls = 5;
        c.retry_base_delay = Duration::from_millis(50);
    })
    .await;
    let calls: Vec<Value> = (0..60)
        .map(|i| json!({"to": format!("+1415555{i:04}"), "scriptId": "s"}))
        .collect();
    app.post("/api/v1/calls/batch", json!({"calls": calls}))
        .await;
    let shutdown = CancellationToken::new();
    let worker = app.worker().await;
    let dispatcher = tokio::spawn(
        call_orchestrator::worker::Dispatcher::new(worker.clone()).run(shutdown.clone()),
    );
    let sweeper =
        tokio::spawn(call_orchestrator::worker::Sweeper::new(worker).run(shutdown.clone()));
    wait_for("dialing to start", Duration::from_secs(20), async || {
        provider.received().len() >= 10
    })
    .await;
    app.private_cluster().restart().await.unwrap();
    wait_for("every call to end", Duration::from_secs(120), async || {
        let (status, metrics) = app.get("/api/v1/metrics").await;
        status.is_success() && metrics["data"]["COMPLETED"] == 60
    })
    .await;
    shutdown.cancel();
    dispatcher.await.unwrap();
    sweeper.await.unwrap();
    let (peak, per_number) = provider.with_stats(|s| (s.peak_active, s.peak_per_number));
    assert!(
        peak <= 5 && per_number == 1,
        "peak {peak}, per number {per_number}"
    );
    app.stop().await;
}
