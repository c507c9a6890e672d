//! `call-orchestrator import` against a running service.

mod common;

use common::TestApp;
use serde_json::json;

const CSV: &str = "\
to,scriptId,metadata.customerName,metadata.plan
+1 (415) 555-0100,welcomeFlow,Ada Lovelace,gold
4155550101,welcomeFlow,No Plus,
+14155550102,bad script,Bad Script,silver
+14155550103,renewal,\"Grace, Hopper\",
";

/// Runs the binary off the test's runtime, which serves the API meanwhile.
async fn import(app: &TestApp, file: &std::path::Path, extra: &[&str]) -> (i32, String, String) {
    let mut command = common::binary(&["import"]);
    command.arg(file).args(["--url", &app.base]).args(extra);
    let output = tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_dry_run_checks_every_row_and_sends_nothing() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("campaign.csv");
    std::fs::write(&file, CSV).unwrap();
    let (code, stdout, stderr) = import(&app, &file, &["--dry-run"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("line 3: `to` must start with +"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 4: `scriptId` may hold only"),
        "{stdout}"
    );
    assert!(
        stdout.contains("dry run: 4 rows, 2 valid, 2 rejected; nothing was sent"),
        "{stdout}"
    );
    assert_eq!(app.row_counts().await.0, 0);
}

#[tokio::test]
async fn valid_rows_are_created_in_file_order() {
    let app = TestApp::spawn_with(|c| {
        c.api_keys = Some(call_orchestrator::config::Secret::new("secret-key"));
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("campaign.csv");
    std::fs::write(&file, CSV).unwrap();

    let (code, stdout, stderr) = import(&app, &file, &[]).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains("401"),
        "without the key the service refuses: {stderr}"
    );
    // The per-row report is printed all the same: what was refused, and what was created.
    assert!(
        stdout.contains("line 3: `to` must start with +")
            && stdout.contains("4 rows: 0 calls created, 2 rejected"),
        "{stdout}"
    );

    let (code, stdout, _) = import(
        &app,
        &file,
        &["--api-key", "secret-key", "--batch-size", "1"],
    )
    .await;
    assert_eq!(code, 1, "two rows were rejected");
    assert!(
        stdout.contains("4 rows: 2 calls created, 2 rejected"),
        "{stdout}"
    );
    let calls: Vec<(String, String, serde_json::Value)> =
        sqlx::query_as("SELECT to_number, script_id, metadata FROM calls ORDER BY seq")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        calls,
        [
            (
                "+14155550100".into(),
                "welcomeFlow".into(),
                json!({"customerName": "Ada Lovelace", "plan": "gold"})
            ),
            (
                "+14155550103".into(),
                "renewal".into(),
                json!({"customerName": "Grace, Hopper"})
            ),
        ]
    );

    let clean = dir.path().join("clean.csv");
    std::fs::write(&clean, "to,scriptId\n+14155550199,s\n").unwrap();
    let (code, stdout, _) = import(&app, &clean, &["--api-key", "secret-key"]).await;
    assert_eq!(code, 0, "{stdout}");
    // The same file again (say, after an answer was lost): each batch carries the same
    // Idempotency-Key, so nothing is stored twice.
    let before = app.row_counts().await.0;
    let (code, stdout, _) = import(&app, &clean, &["--api-key", "secret-key"]).await;
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(app.row_counts().await.0, before);
}

#[tokio::test]
async fn unusable_files_are_refused_up_front() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    for (name, content, complaint) in [
        (
            "no-to.csv",
            "number,scriptId\n+14155550100,s\n",
            "`to` column",
        ),
        (
            "odd.csv",
            "to,scriptId,extra\n+14155550100,s,x\n",
            "column `extra`",
        ),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, content).unwrap();
        let (code, _, stderr) = import(&app, &file, &[]).await;
        assert_eq!(code, 1);
        assert!(stderr.contains(complaint), "{stderr}");
    }
    let (code, _, stderr) = import(&app, &dir.path().join("missing.csv"), &[]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("cannot read"), "{stderr}");
    assert_eq!(app.row_counts().await.0, 0);
}

/// A busy service (503 `OVERLOADED`, its requests in flight all taken) is not a refusal:
/// the batch is sent again after the `Retry-After`, with the same key, and goes through.
#[tokio::test]
async fn a_busy_service_is_waited_for_not_taken_for_a_refusal() {
    let app = TestApp::spawn_with(|c| {
        c.http_max_in_flight = 1;
        c.http_read_timeout = std::time::Duration::from_secs(3);
    })
    .await;
    // A request whose body never comes holds the one slot until the read timeout.
    let slow = app.hold_request("/api/v1/calls");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while app.get("/health").await.0 != reqwest::StatusCode::SERVICE_UNAVAILABLE {
        assert!(
            std::time::Instant::now() < deadline,
            "the slot was never taken"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("campaign.csv");
    std::fs::write(&file, "to,scriptId\n+14155550100,welcomeFlow\n").unwrap();
    let (code, stdout, stderr) = import(&app, &file, &[]).await;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(
        format!("{stdout}{stderr}").contains("the service is busy (503)"),
        "{stdout}{stderr}"
    );
    assert_eq!(app.row_counts().await.0, 1);
    drop(slow);
}

#[tokio::test]
async fn a_suppression_list_is_imported_and_its_bad_rows_named() {
    let app = TestApp::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("do-not-call.csv");
    std::fs::write(
        &file,
        "number,reason,expiresAt\n\
         +1 (415) 555-0100,asked not to be called,\n\
         +14155550101,complaint,2030-01-01T00:00:00Z\n\
         4155550102,no plus,\n\
         +14155550100,again,\n\
         +14155550103,,\n",
    )
    .unwrap();
    let (code, stdout, stderr) = import(&app, &file, &["--suppressions"]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("line 4: `number` must start with +"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 5: `number` is the number of line 2 too"),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 6: `reason` must not be empty"),
        "{stdout}"
    );
    assert!(
        stdout.contains("5 rows: 2 suppressions written, 3 rejected"),
        "{stdout}"
    );
    let (status, body) = app
        .post(
            "/api/v1/calls",
            json!({"to": "+14155550101", "scriptId": "s"}),
        )
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    // A campaign with a suppressed number: that row is left out and named, the rest created.
    let campaign = dir.path().join("campaign.csv");
    std::fs::write(
        &campaign,
        "to,scriptId\n+14155550109,s\n+14155550101,s\n+14155550108,s\n",
    )
    .unwrap();
    let (code, stdout, stderr) = import(&app, &campaign, &[]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("line 3: `to` +14155550101 is on the suppression list"),
        "{stdout}"
    );
    assert!(
        stdout.contains("3 rows: 2 calls created, 1 rejected"),
        "{stdout}"
    );
    // A schedule per row.
    let scheduled = dir.path().join("scheduled.csv");
    std::fs::write(
        &scheduled,
        "to,scriptId,notBefore,notAfter,timezone\n\
         +14155550107,s,2090-01-01T15:00:00Z,,America/Los_Angeles\n\
         +14155550106,s,soon,,\n",
    )
    .unwrap();
    let (code, stdout, stderr) = import(&app, &scheduled, &[]).await;
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stdout.contains("line 3: `notBefore` `soon` is not an RFC 3339 instant"),
        "{stdout}"
    );
    assert!(
        stdout.contains("2 rows: 1 calls created, 1 rejected"),
        "{stdout}"
    );
    let (_, page) = app.get("/api/v1/calls?to=%2B14155550107").await;
    assert_eq!(page["data"][0]["timezone"], "America/Los_Angeles", "{page}");
    assert!(
        page["data"][0]["notBefore"]
            .as_str()
            .unwrap()
            .starts_with("2090-01-01T15:00:00")
    );
    let (_, one) = app.get("/api/v1/suppressions/%2B14155550101").await;
    assert_eq!(
        one["data"]["expiresAt"]
            .as_str()
            .unwrap()
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap(),
        "2030-01-01T00:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    );
}

#[tokio::test]
async fn rows_go_to_a_campaign_with_its_script() {
    let app = TestApp::spawn().await;
    let (_, created) = app
        .post(
            "/api/v1/campaigns",
            json!({"name": "renewals", "scriptId": "renewal", "maxConcurrentCalls": 2}),
        )
        .await;
    let id = created["data"]["id"].as_str().unwrap().to_owned();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("campaign.csv");
    std::fs::write(
        &file,
        "to,scriptId,metadata.name\n+14155550100,,Ada\n+14155550101,own,Grace\n555,,Bad\n",
    )
    .unwrap();
    let (code, stdout, stderr) = import(&app, &file, &["--campaign", &id]).await;
    assert_eq!(code, 1, "one row rejected: {stdout}{stderr}");
    assert!(
        stdout.contains("3 rows: 2 calls created, 1 rejected"),
        "{stdout}{stderr}"
    );
    let (_, page) = app
        .get(&format!("/api/v1/calls?campaignId={id}&limit=10"))
        .await;
    let mut scripts: Vec<String> = page["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["payload"]["scriptId"].as_str().unwrap().to_owned())
        .collect();
    scripts.sort();
    assert_eq!(scripts, ["own", "renewal"]);
    // Sent again: the same calls, not twice (the batch's key names the campaign).
    let (_, stdout, _) = import(&app, &file, &["--campaign", &id]).await;
    assert!(stdout.contains("2 calls created"), "{stdout}");
    let (_, campaign) = app.get(&format!("/api/v1/campaigns/{id}")).await;
    assert_eq!(campaign["data"]["counts"]["total"], 2);

    // A campaign without a script needs the column; an unknown or cancelled one is refused
    // before anything is sent.
    let (_, bare) = app.post("/api/v1/campaigns", json!({"name": "bare"})).await;
    let bare = bare["data"]["id"].as_str().unwrap().to_owned();
    let only_to = dir.path().join("numbers.csv");
    std::fs::write(&only_to, "to\n+14155550200\n").unwrap();
    let (code, _, stderr) = import(&app, &only_to, &["--campaign", &bare]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("no `scriptId` column"), "{stderr}");
    let unknown = uuid::Uuid::now_v7().to_string();
    let (code, _, stderr) = import(&app, &file, &["--campaign", &unknown]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("no campaign has the id"), "{stderr}");
    app.post(&format!("/api/v1/campaigns/{bare}/cancel"), json!({}))
        .await;
    let (code, _, stderr) = import(&app, &file, &["--campaign", &bare]).await;
    assert_eq!(code, 1);
    assert!(stderr.contains("CANCELLED"), "{stderr}");
}
