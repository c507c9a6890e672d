//! `demo` and `provider-sim` as a person runs them.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};

mod common;

use common::{binary as command, free_port, wait_ok};

#[test]
fn the_demo_runs_a_campaign_to_the_end_and_leaves_nothing_behind() {
    let output = command(&[
        "demo",
        "--port",
        "0",
        "--calls",
        "60",
        "--numbers",
        "20",
        "--cap",
        "5",
        "--min-duration",
        "50ms",
        "--max-duration",
        "200ms",
    ])
    .output()
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("60 calls to 20 numbers, cap 5"), "{stdout}");
    assert!(stdout.contains("cap 5 held"), "{stdout}");
    assert!(stdout.contains("one call per number held"), "{stdout}");
    assert!(!stdout.contains("BROKEN"), "{stdout}");
    assert!(stdout.contains("slot refill latency"), "{stdout}");
    // Every call ended.
    let ended: u64 = stdout
        .lines()
        .filter(|l| {
            ["COMPLETED", "FAILED", "EXPIRED"]
                .iter()
                .any(|s| l.trim_start().starts_with(s))
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum();
    assert_eq!(ended, 60, "{stdout}");
    // One call in twenty goes to a number where it is night: it waits for its window and
    // expires at its deadline, never dialed, at whatever hour the demo runs.
    let count = |label: &str| {
        stdout
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| {
                l[l.find(label).unwrap() + label.len()..]
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .unwrap_or_else(|| panic!("no `{label}` in {stdout}"))
    };
    assert_eq!(count("waited for their window"), 3, "{stdout}");
    assert_eq!(count("expired at their deadline"), 3, "{stdout}");
    assert_eq!(count("waited for their notBefore"), 3, "{stdout}");
    // The private cluster's folder is gone, and with it the server.
    let folder = stderr
        .lines()
        .find_map(|l| {
            l.split(" in ")
                .nth(1)
                .filter(|_| l.starts_with("PostgreSQL"))
        })
        .expect("the demo names its data folder");
    assert!(
        !std::path::Path::new(folder.trim()).exists(),
        "{folder} left behind"
    );
}

#[test]
fn the_demo_runs_through_each_vendor_dialect() {
    for provider in ["twilio", "retell", "vapi", "bland"] {
        let output = command(&[
            "demo",
            "--provider",
            provider,
            "--port",
            "0",
            "--calls",
            "20",
            "--numbers",
            "10",
            "--cap",
            "4",
            "--min-duration",
            "50ms",
            "--max-duration",
            "150ms",
        ])
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{provider}: {stdout}\n{stderr}");
        assert!(
            stderr.contains(&format!("Provider simulator ({provider})")),
            "{stderr}"
        );
        assert!(stdout.contains("cap 4 held"), "{provider}: {stdout}");
        assert!(
            stdout.contains("one call per number held"),
            "{provider}: {stdout}"
        );
        assert!(
            stdout.contains("no attempt dialed twice"),
            "{provider}: {stdout}"
        );
    }
}

#[test]
fn without_postgresql_the_demo_says_what_to_install() {
    let output = command(&["demo", "--port", "0"])
        .env("PG_BIN_DIR", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
    assert!(stderr.contains("brew install postgresql@16"), "{stderr}");
}

#[test]
fn provider_sim_refuses_bad_settings() {
    let output = command(&[
        "provider-sim",
        "--min-duration",
        "5s",
        "--max-duration",
        "1s",
    ])
    .output()
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = command(&["provider-sim", "--outcomes", "hungup=1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn provider_sim_drives_serve() {
    let database = common::pg::empty_database().await;
    let (sim_port, api_port) = (free_port(), free_port());
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let mut sim = command(&["provider-sim"])
        .env("SIM_PORT", sim_port.to_string())
        .env("SIM_API_KEY", "k")
        .env("SIM_WEBHOOK_SECRET", secret)
        .env("SIM_MIN_DURATION", "20ms")
        .env("SIM_MAX_DURATION", "100ms")
        .env("SIM_ERROR_RATE", "0.1")
        .env("SIM_RATE_LIMIT_RATE", "0.1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut serve = command(&["serve"])
        .env("DATABASE_URL", &database)
        .env("HOST", "127.0.0.1")
        .env("PORT", api_port.to_string())
        .env(
            "AI_CALL_API_URL",
            format!("http://127.0.0.1:{sim_port}/v1/calls"),
        )
        .env("AI_CALL_API_KEY", "k")
        .env("WEBHOOK_BASE_URL", format!("http://127.0.0.1:{api_port}"))
        .env("WEBHOOK_SECRET", secret)
        .env("MAX_CONCURRENT_CALLS", "4")
        .env("RETRY_BASE_DELAY", "100ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_ok(
        &format!("http://127.0.0.1:{sim_port}/health"),
        Duration::from_secs(30),
    )
    .await;
    wait_ok(
        &format!("http://127.0.0.1:{api_port}/health"),
        Duration::from_secs(30),
    )
    .await;
    let calls: Vec<Value> = (0..40)
        .map(|i| json!({"to": format!("+1415555{:04}", i % 10), "scriptId": "s"}))
        .collect();
    let client = reqwest::Client::new();
    let response = client
        .post(format!("http://127.0.0.1:{api_port}/api/v1/calls/batch"))
        .json(&json!({"calls": calls}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let metrics: Value = client
            .get(format!("http://127.0.0.1:{api_port}/api/v1/metrics"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if metrics["data"]["PENDING"] == 0 && metrics["data"]["IN_PROGRESS"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "calls still open: {metrics}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status: Value = client
        .get(format!("http://127.0.0.1:{sim_port}/status"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(status["peakActive"].as_u64().unwrap() <= 4, "{status}");
    assert_eq!(status["peakPerNumber"], 1, "{status}");
    assert_eq!(
        status["webhookFailures"], 0,
        "signed webhooks all accepted: {status}"
    );
    assert!(status["placed"].as_u64().unwrap() >= 40);
    for child in [&mut serve, &mut sim] {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
    }
    assert!(serve.wait().unwrap().success());
    assert!(sim.wait().unwrap().success());
}
