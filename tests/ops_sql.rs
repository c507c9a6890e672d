//! The operator's queries in `sql/ops/`, each run through psql against a populated database.

mod common;

use std::{process::Command, time::Duration};

use common::{TestApp, provider::FakeProvider};
use serde_json::{Value, json};

fn psql(app: &TestApp, file: &str, vars: &[(&str, &str)]) -> String {
    let bin = call_orchestrator::tools::pg::find_bin_dir()
        .map(|dir| dir.join("psql"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "psql".into());
    let mut command = Command::new(bin);
    command
        .arg(&app.db_url)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-f"])
        .arg(format!("{}/sql/ops/{file}", env!("CARGO_MANIFEST_DIR")));
    for (name, value) in vars {
        command.arg("-v").arg(format!("{name}={value}"));
    }
    let output = command.output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{file}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn id(call: &Value) -> String {
    call["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn every_operator_query_runs_and_explains_the_queue() {
    let provider = FakeProvider::start().await;
    let url = provider.url.clone();
    let app = TestApp::spawn_with(|c| {
        c.ai_call_api_url = Some(url);
        c.max_concurrent_calls = 2;
        c.retry_base_delay = Duration::from_secs(600);
    })
    .await;
    // Two calls in progress (the cap), one of them to a number with another call queued.
    let busy_a = id(&app.create_call("+14155550001").await);
    let busy_b = id(&app.create_call("+14155550002").await);
    app.dispatcher().await.run_once().await.unwrap();
    let same_number = id(&app.create_call("+14155550001").await);
    let capped = id(&app.create_call("+14155550003").await);
    // One that failed once and waits out its backoff; one completed.
    let external_b = app.call(&busy_b).await["externalCallId"]
        .as_str()
        .unwrap()
        .to_owned();
    app.webhook("", json!({"callId": external_b, "status": "BUSY"}))
        .await;
    let (_, _) = app.get("/health").await;
    let done = id(&app.create_call("+14155550009").await);
    sqlx::query(
        "UPDATE calls SET status = 'COMPLETED', completed_at = now(), next_attempt_at = NULL WHERE id = $1::uuid",
    )
    .bind(&done)
    .execute(&app.pool)
    .await
    .unwrap();
    // Fill the freed slot again so that the cap is full.
    let third = id(&app.create_call("+14155550004").await);
    sqlx::query(
        "UPDATE calls SET status = 'IN_PROGRESS', attempts = 1, started_at = now(), next_attempt_at = NULL WHERE id = $1::uuid",
    )
    .bind(&third)
    .execute(&app.pool)
    .await
    .unwrap();

    let depth = psql(&app, "queue_depth.sql", &[]);
    assert!(
        depth.contains("PENDING") && depth.contains("IN_PROGRESS") && depth.contains("COMPLETED"),
        "{depth}"
    );
    let in_flight = psql(&app, "in_flight.sql", &[]);
    assert!(
        in_flight.contains(&busy_a) && in_flight.contains("ACCEPTED"),
        "{in_flight}"
    );
    let due = psql(&app, "due_next.sql", &[]);
    assert!(due.contains(&same_number) && due.contains(&capped), "{due}");
    let throughput = psql(&app, "throughput.sql", &[]);
    assert!(throughput.contains("(1 row)"), "{throughput}");
    let upkeep = psql(&app, "queue_upkeep.sql", &[]);
    assert!(
        upkeep.contains("open_calls") && upkeep.contains("(1 row)"),
        "{upkeep}"
    );

    // Drift, made by hand (as a write that skips the triggers would): an open call missing
    // from call_queue, and a row left there for a call that has ended.
    assert!(psql(&app, "queue_drift.sql", &[]).contains("(0 rows)"));
    sqlx::query(
        "DELETE FROM call_queue WHERE call_id =
             (SELECT id FROM calls WHERE status = 'PENDING' ORDER BY seq LIMIT 1)",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO call_queue (call_id, seq, to_number, status, due_at)
         SELECT id, seq, to_number, 'PENDING', now() FROM calls WHERE status = 'COMPLETED' LIMIT 1",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let drift = psql(&app, "queue_drift.sql", &[]);
    assert!(
        drift.contains("missing from call_queue")
            && drift.contains("stale in call_queue")
            && drift.contains("(2 rows)"),
        "{drift}"
    );
    let mended = psql(&app, "queue_drift.sql", &[("mend", "1")]);
    assert!(mended.contains("(0 rows)"), "{mended}");

    // The kept counts: none off, then one made off by hand, then mended.
    assert!(psql(&app, "count_drift.sql", &[]).contains("(0 rows)"));
    sqlx::query("INSERT INTO call_count_changes (status, delta) VALUES ('FAILED', 7)")
        .execute(&app.pool)
        .await
        .unwrap();
    let drift = psql(&app, "count_drift.sql", &[]);
    assert!(
        drift.contains("all calls") && drift.contains("FAILED") && drift.contains("(1 row)"),
        "{drift}"
    );
    let mended = psql(&app, "count_drift.sql", &[("mend", "1")]);
    assert!(mended.contains("(0 rows)"), "{mended}");

    let why = |call: &str| psql(&app, "why_waiting.sql", &[("call_id", call), ("cap", "2")]);
    assert!(why(&busy_b).contains("backoff: due in"), "{}", why(&busy_b));
    assert!(
        why(&same_number).contains("number busy"),
        "{}",
        why(&same_number)
    );
    assert!(
        why(&capped).contains("cap full: 2 of 2"),
        "{}",
        why(&capped)
    );
    assert!(why(&busy_a).contains("not waiting: IN_PROGRESS"));
    let roomy = psql(
        &app,
        "why_waiting.sql",
        &[("call_id", &capped), ("cap", "30")],
    );
    assert!(roomy.contains("claimable now"), "{roomy}");

    // Campaigns: progress, and what each waits for; a paused campaign's call says so.
    let (_, paused) = app
        .post(
            "/api/v1/campaigns",
            json!({"name": "spring survey", "scriptId": "s", "maxConcurrentCalls": 1}),
        )
        .await;
    let campaign = paused["data"]["id"].as_str().unwrap().to_owned();
    let (_, added) = app
        .post(
            &format!("/api/v1/campaigns/{campaign}/calls"),
            json!({"calls": [{"to": "+14155550020"}, {"to": "+14155550021"}]}),
        )
        .await;
    let held = id(&added["data"][0]);
    app.post(&format!("/api/v1/campaigns/{campaign}/pause"), json!({}))
        .await;
    let progress = psql(&app, "campaign_progress.sql", &[]);
    assert!(
        progress.contains("spring survey") && progress.contains("PAUSED"),
        "{progress}"
    );
    let waiting = psql(&app, "campaign_waiting.sql", &[]);
    assert!(waiting.contains("paused: none of its calls"), "{waiting}");
    let why_held = psql(
        &app,
        "why_waiting.sql",
        &[("call_id", &held), ("cap", "30")],
    );
    assert!(
        why_held.contains("campaign paused (spring survey)"),
        "{why_held}"
    );

    // An event endpoint that refuses: its delivery waits for a retry, with the last answer.
    sqlx::query(
        "INSERT INTO event_endpoints (id, url, event_types, secret_salt, key_id) \
         VALUES (gen_random_uuid(), 'https://hooks.example.com/events', '{*}', \
                 decode(repeat('00', 32), 'hex'), 'k')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let cancelled = id(&app.create_call("+14155550030").await);
    app.post(&format!("/api/v1/calls/{cancelled}/cancel"), json!({}))
        .await;
    sqlx::query(
        "UPDATE event_deliveries SET attempts = 1, last_status_code = 503, \
         last_error = 'answered 503', last_attempt_at = now(), next_attempt_at = now() + interval '5 minutes'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let deliveries = psql(&app, "event_deliveries.sql", &[]);
    assert!(
        deliveries.contains("https://hooks.example.com/events")
            && deliveries.contains("503 answered 503"),
        "{deliveries}"
    );

    let history = psql(&app, "retry_history.sql", &[("call_id", &busy_b)]);
    assert!(
        history.contains("FAILED") && history.contains("RETRY_SCHEDULED"),
        "{history}"
    );
}
