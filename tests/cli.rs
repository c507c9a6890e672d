//! The binary as an operator runs it: configuration errors, migrations, start and stop.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

mod common;

use common::{binary as command, free_port};

fn assert_config_error(command: &mut Command, variable: &str) {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    let lines: Vec<_> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one clear line, not {stderr}");
    assert!(lines[0].contains(variable), "{stderr}");
}

#[test]
fn bad_configuration_is_one_line_and_exit_status_2() {
    for (variable, value) in [
        ("PORT", "seventy"),
        ("PORT", "70000"),
        ("DB_PORT", "-1"),
        ("MAX_CONCURRENT_CALLS", "0"),
        ("MAX_CONCURRENT_CALLS", "many"),
        ("MAX_RETRY_ATTEMPTS", "0"),
        ("RETRY_BASE_DELAY", "soon"),
        ("RETRY_MAX_DELAY", "1ms"),
        ("CALL_TIMEOUT", "0s"),
        ("PROVIDER_TIMEOUT", "10"),
        ("LOG_FORMAT", "xml"),
        ("DATABASE_URL", "mysql://x"),
        ("HOST", "example.com"),
        ("AI_CALL_API_URL", "not a url"),
        ("WEBHOOK_BASE_URL", "ftp://example.com"),
        ("WEBHOOK_SECRET", "whsec_%%%"),
        ("API_KEYS", " , "),
        ("RUST_LOG", "[[["),
        ("AI_CALL_API_KEY", " "),
        ("AI_CALL_PROVIDER", "twillio"),
        ("AI_CALL_FROM_NUMBER", "5550100"),
        ("TWILIO_TWIML_URL", "twiml"),
        ("RECONCILE_AFTER", "0s"),
        ("RETENTION_PERIOD", "12h"),
        ("RETENTION_PERIOD", "forever"),
        ("RETENTION_PERIOD", "1000years"),
    ] {
        assert_config_error(command(&["migrate"]).env(variable, value), variable);
    }
}

#[test]
fn serve_and_worker_need_the_provider_settings() {
    for command_name in ["serve", "worker"] {
        assert_config_error(&mut command(&[command_name]), "AI_CALL_API_URL");
        assert_config_error(
            command(&[command_name])
                .env("AI_CALL_API_URL", "http://127.0.0.1:4000/v1/calls")
                .env("AI_CALL_API_KEY", "k"),
            "WEBHOOK_BASE_URL",
        );
    }
}

#[test]
fn each_vendor_needs_its_own_settings() {
    let base = |provider: &str| {
        let mut command = command(&["worker"]);
        command
            .env("AI_CALL_PROVIDER", provider)
            .env("AI_CALL_API_KEY", "k")
            .env("WEBHOOK_BASE_URL", "https://calls.example.com");
        command
    };
    // The vendor's public API is the default AI_CALL_API_URL; its own settings are not.
    assert_config_error(&mut base("twilio"), "TWILIO_ACCOUNT_SID");
    assert_config_error(
        base("twilio").env("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef"),
        "TWILIO_TWIML_URL",
    );
    assert_config_error(
        base("twilio")
            .env("TWILIO_ACCOUNT_SID", "AC0123456789abcdef0123456789abcdef")
            .env("TWILIO_TWIML_URL", "https://flows.example.com/twiml"),
        "AI_CALL_FROM_NUMBER",
    );
    assert_config_error(
        base("twilio").env("TWILIO_ACCOUNT_SID", "SK0123"),
        "TWILIO_ACCOUNT_SID",
    );
    assert_config_error(&mut base("retell"), "AI_CALL_FROM_NUMBER");
    // An `api` replica verifies Twilio's and Retell's signatures with the key (Twilio's
    // over the public URL): without them it could not tell a forgery.
    assert_config_error(
        command(&["api"]).env("AI_CALL_PROVIDER", "retell"),
        "AI_CALL_API_KEY",
    );
    assert_config_error(
        command(&["api"])
            .env("AI_CALL_PROVIDER", "twilio")
            .env("AI_CALL_API_KEY", "token"),
        "WEBHOOK_BASE_URL",
    );
    assert_config_error(&mut base("vapi"), "AI_CALL_PHONE_NUMBER_ID");
    // Bland needs nothing more, and takes its vendor's secret as it stands (no whsec_);
    // a caller ID in the environment keeps its `+` (figment alone reads it as a number).
    // (It goes on to wait for its database, which is not there: stopped after a while.)
    let mut child = base("bland")
        .env("WEBHOOK_SECRET", "bland-signing-secret")
        .env("AI_CALL_FROM_NUMBER", "+15550000000")
        .env(
            "DATABASE_URL",
            format!("postgres://nobody@127.0.0.1:{}/none", free_port()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let exited = child.try_wait().unwrap();
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(exited.is_none_or(|s| s.code() != Some(2)), "{stderr}");
    assert!(!stderr.contains("configuration error"), "{stderr}");
}

#[test]
fn healthcheck_fails_without_a_service() {
    let port = free_port();
    let output = command(&["healthcheck", "--url", &format!("http://127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
}

#[tokio::test]
async fn configuration_file_is_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("config.toml");
    std::fs::write(&file, "max_concurrent_calls = 0\n").unwrap();
    assert_config_error(
        &mut command(&["--config", file.to_str().unwrap(), "migrate"]),
        "MAX_CONCURRENT_CALLS",
    );
    std::fs::write(&file, "max_concurent_calls = 5\n").unwrap();
    assert_config_error(
        &mut command(&["--config", file.to_str().unwrap(), "migrate"]),
        "max_concurent_calls",
    );
    // The environment wins over the file, and the file over the defaults.
    let database = common::pg::empty_database().await;
    std::fs::write(
        &file,
        format!(
            "max_concurrent_calls = 0\ndatabase_url = \"{}\"\n",
            &database
        ),
    )
    .unwrap();
    let output = command(&["--config", file.to_str().unwrap(), "migrate"])
        .env("MAX_CONCURRENT_CALLS", "5")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let missing = dir.path().join("missing.toml");
    let output = command(&["--config", missing.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["api", "--help"],
        &["migrate", "--help"],
        &["openapi", "--help"],
    ] {
        let output = command(args).output().unwrap();
        assert!(output.status.success(), "{args:?}");
        assert!(!output.stdout.is_empty());
    }
}

#[tokio::test]
async fn migrations_are_safe_when_replicas_start_at_once() {
    let url = common::pg::empty_database().await;
    let children: Vec<_> = (0..4)
        .map(|_| {
            command(&["migrate"])
                .env("DATABASE_URL", &url)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let applied: i64 = sqlx::query_scalar("SELECT count(*) FROM _sqlx_migrations")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        applied as usize,
        call_orchestrator::db::MIGRATOR.iter().count()
    );
}

#[tokio::test]
async fn api_serves_and_stops_cleanly_on_sigterm() {
    let database = common::pg::empty_database().await;
    let port = free_port();
    let mut child = command(&["api"])
        .env("DATABASE_URL", &database)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let health = client
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await;
        if health.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        assert!(Instant::now() < deadline, "the API did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The container health check agrees.
    let check = command(&["healthcheck"])
        .env("PORT", port.to_string())
        .output()
        .unwrap();
    assert!(check.status.success());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the API did not stop on SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status}");
}

#[tokio::test]
async fn json_logs_name_the_call_and_log_dir_keeps_files() {
    let database = common::pg::empty_database().await;
    let logs = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = command(&["api"])
        .env("DATABASE_URL", &database)
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("LOG_FORMAT", "json")
        .env("LOG_DIR", logs.path())
        .env("API_KEYS", "topsecret-key")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        let response = client
            .post(format!("http://127.0.0.1:{port}/api/v1/calls"))
            .bearer_auth("topsecret-key")
            .json(&serde_json::json!({"to": "+14155550100", "scriptId": "s"}))
            .send()
            .await;
        if let Ok(response) = response {
            let body: serde_json::Value = response.json().await.unwrap();
            break body["data"]["id"].as_str().unwrap().to_owned();
        }
        assert!(Instant::now() < deadline, "the API did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // A webhook URL's token (in its query) must not reach the logs either: whoever reads
    // them could send that attempt's webhooks.
    let webhook = client
        .post(format!(
            "http://127.0.0.1:{port}/api/v1/callbacks/call-status?ref={id}.1&token=tokenNotForLogs"
        ))
        .json(&serde_json::json!({"callId": "p-1", "status": "COMPLETED"}))
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), reqwest::StatusCode::UNAUTHORIZED);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|_| panic!("not JSON: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["call_id"] == id.as_str() && l["message"] == "call created"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("topsecret-key"),
        "a secret reached the logs"
    );
    assert!(
        !stdout.contains("tokenNotForLogs"),
        "a webhook token reached the logs: {stdout}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["span"]["path"] == "/api/v1/callbacks/call-status"
                && l["message"] == "response"),
        "every request is logged, by its path: {stdout}"
    );
    let files: Vec<String> = std::fs::read_dir(logs.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        files.iter().any(|f| f.starts_with("combined.log")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.starts_with("error.log")),
        "{files:?}"
    );
    let combined = files
        .iter()
        .find(|f| f.starts_with("combined.log"))
        .unwrap();
    let text = std::fs::read_to_string(logs.path().join(combined)).unwrap();
    assert!(text.contains(&id), "{text}");
    // Readable by the service's user and group only.
    use std::os::unix::fs::PermissionsExt as _;
    for file in &files {
        let mode = std::fs::metadata(logs.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640, "{file}: {mode:o}");
    }
    // The webhook verification in force is said at start.
    assert!(
        stdout.contains("token of each attempt's webhook URL"),
        "the start does not say how webhooks are verified: {stdout}"
    );
}
