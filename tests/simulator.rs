//! The provider simulator's behaviours, observed over HTTP as the service would see them.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use call_orchestrator::tools::sim::{OutcomeMix, SimConfig, Simulator};
use poem::{EndpointExt, Request, Route, Server, listener::TcpAcceptor, post};
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A webhook receiver: records every body with its headers.
#[derive(Clone, Default)]
struct Inbox(Arc<Mutex<Vec<(Value, poem::http::HeaderMap)>>>);

impl Inbox {
    async fn start() -> (Self, String) {
        let inbox = Self::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let kept = inbox.clone();
        let app = Route::new().at(
            "/hook",
            post(poem::endpoint::make(move |mut req: Request| {
                let kept = kept.clone();
                async move {
                    let headers = req.headers().clone();
                    let body: Value = req.take_body().into_json().await.unwrap_or(Value::Null);
                    kept.0.lock().unwrap().push((body, headers));
                    "ok"
                }
            })),
        );
        tokio::spawn(
            Server::new_with_acceptor(TcpAcceptor::from_tokio(listener).unwrap())
                .run(app.map_to_response()),
        );
        (inbox, url)
    }

    fn statuses(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(b, _)| b["status"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn wait_for(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.0.lock().unwrap().len() < count {
            assert!(Instant::now() < deadline, "only {:?}", self.statuses());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn fast(config: SimConfig) -> SimConfig {
    SimConfig {
        port: 0,
        min_duration: Duration::from_millis(20),
        max_duration: Duration::from_millis(40),
        ..config
    }
}

async fn dial(
    sim: &Simulator,
    key: &str,
    to: &str,
    hook: &str,
) -> (StatusCode, Value, Option<String>) {
    let response = reqwest::Client::new()
        .post(sim.url())
        .bearer_auth("sim-key")
        .header("Idempotency-Key", key)
        .json(&json!({"to": to, "scriptId": "s", "metadata": {}, "webhookUrl": hook}))
        .send()
        .await
        .unwrap();
    let status = response.status();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (
        status,
        response.json().await.unwrap_or(Value::Null),
        retry_after,
    )
}

#[tokio::test]
async fn places_calls_once_per_key_and_plays_them_out() {
    let (inbox, hook) = Inbox::start().await;
    let sim = Simulator::start(fast(SimConfig {
        outcomes: OutcomeMix::all_completed(),
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    let (status, body, _) = dial(&sim, "c1:1", "+14155550100", &hook).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = body["callId"].as_str().unwrap().to_owned();
    let (_, again, _) = dial(&sim, "c1:1", "+14155550100", &hook).await;
    assert_eq!(again["callId"], json!(id), "same key, same call");
    inbox.wait_for(4).await;
    assert_eq!(
        inbox.statuses(),
        ["QUEUED", "RINGING", "IN_PROGRESS", "COMPLETED"]
    );
    let last = inbox.0.lock().unwrap()[3].0.clone();
    assert_eq!(last["callId"], json!(id));
    assert!(last["durationSec"].is_u64() && last["completedAt"].is_string());
    let status = sim.status();
    assert_eq!(
        (status.received, status.placed, status.idempotent_repeats),
        (2, 1, 1)
    );
    assert_eq!(status.peak_active, 1);
    assert_eq!(status.active_now, 0);
    assert_eq!(status.outcomes["COMPLETED"], 1);

    // The status route says the same.
    let route: Value = reqwest::get(format!("http://{}/status", sim.address()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(route["placed"], 1);
    assert_eq!(route["idempotentRepeats"], 1);
}

#[tokio::test]
async fn refuses_bad_keys_and_bad_requests() {
    let sim = Simulator::start(fast(SimConfig::default())).await.unwrap();
    let client = reqwest::Client::new();
    let response = client
        .post(sim.url())
        .bearer_auth("wrong")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client
        .post(sim.url())
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = client
        .post(sim.url())
        .bearer_auth("sim-key")
        .header("Idempotency-Key", "k")
        .json(&json!({"to": "+1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let status = sim.status();
    assert_eq!(
        (status.unauthorized, status.invalid, status.placed),
        (2, 1, 0)
    );
}

#[tokio::test]
async fn injects_errors_and_rate_limits() {
    let sim = Simulator::start(fast(SimConfig {
        error_rate: 1.0,
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    let (status, _, _) = dial(&sim, "k:1", "+14155550100", "http://127.0.0.1:1/x").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let sim = Simulator::start(fast(SimConfig {
        rate_limit_rate: 1.0,
        retry_after: 7,
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    let (status, _, retry_after) = dial(&sim, "k:1", "+14155550100", "http://127.0.0.1:1/x").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(retry_after.as_deref(), Some("7"));
    assert_eq!(sim.status().placed, 0);
}

#[tokio::test]
async fn slow_answers_are_slow() {
    let sim = Simulator::start(fast(SimConfig {
        slow_rate: 1.0,
        slow_delay: Duration::from_millis(400),
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    let started = Instant::now();
    let (status, _, _) = dial(&sim, "k:1", "+14155550100", "http://127.0.0.1:1/x").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(started.elapsed() >= Duration::from_millis(400));
    assert_eq!(sim.status().slow_answers, 1);
}

#[tokio::test]
async fn signs_webhooks_and_follows_the_outcome_mix() {
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let (inbox, hook) = Inbox::start().await;
    let sim = Simulator::start(fast(SimConfig {
        webhook_secret: Some(secret.into()),
        outcomes: "busy=1".parse().unwrap(),
        progress_webhooks: false,
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    dial(&sim, "k:1", "+14155550100", &hook).await;
    inbox.wait_for(1).await;
    let (body, headers) = inbox.0.lock().unwrap()[0].clone();
    assert_eq!(body["status"], "BUSY");
    assert!(body["reason"].is_string());
    let verifier = standardwebhooks::Webhook::new(secret).unwrap();
    assert!(
        verifier
            .verify(body.to_string().as_bytes(), &headers)
            .is_ok()
    );
}

#[tokio::test]
async fn drops_and_duplicates_final_webhooks_on_request() {
    let (inbox, hook) = Inbox::start().await;
    let sim = Simulator::start(fast(SimConfig {
        duplicate_webhook_rate: 1.0,
        progress_webhooks: false,
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    dial(&sim, "k:1", "+14155550100", &hook).await;
    inbox.wait_for(2).await;
    assert_eq!(inbox.statuses()[0], inbox.statuses()[1]);

    let (quiet, hook) = Inbox::start().await;
    let sim = Simulator::start(fast(SimConfig {
        drop_webhook_rate: 1.0,
        progress_webhooks: false,
        ..SimConfig::default()
    }))
    .await
    .unwrap();
    dial(&sim, "k:1", "+14155550100", &hook).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(quiet.statuses().is_empty());
    assert_eq!(sim.status().webhooks_dropped, 1);
    assert_eq!(sim.status().active_now, 0);
}

#[tokio::test]
async fn counts_calls_at_once_overall_and_per_number() {
    let (_inbox, hook) = Inbox::start().await;
    let sim = Simulator::start(SimConfig {
        port: 0,
        min_duration: Duration::from_millis(500),
        max_duration: Duration::from_millis(500),
        progress_webhooks: false,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    dial(&sim, "a:1", "+14155550100", &hook).await;
    dial(&sim, "b:1", "+14155550101", &hook).await;
    dial(&sim, "c:1", "+14155550100", &hook).await;
    let status = sim.status();
    assert_eq!(status.active_now, 3);
    assert_eq!(status.peak_active, 3);
    assert_eq!(
        status.peak_per_number, 2,
        "the simulator must notice a number called twice at once"
    );
}
