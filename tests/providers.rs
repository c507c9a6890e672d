//! The vendor dialects (`AI_CALL_PROVIDER` twilio, retell, vapi, bland) against the
//! simulator playing each vendor over real HTTP: the dial's shape field by field, every
//! outcome of the mapping, progress on the timeline only, each signature accepted when
//! right and refused when missing, wrong, from another key or stale, a dial whose answer
//! is lost never placed twice, reconciliation of a lost end, the vendor's concurrency
//! limit, and the cap and the one-call-per-number rule under every dialect.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use call_orchestrator::{
    config::Secret,
    tools::sim::{Dialect, Faults, SimConfig, Stage, TWILIO_ACCOUNT_SID},
};
use common::{
    TestApp,
    vendor::{KEY, SECRET, Vendor, one_call, start},
};
use hmac::{Hmac, KeyInit, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const VENDORS: [Dialect; 4] = [
    Dialect::Twilio,
    Dialect::Retell,
    Dialect::Vapi,
    Dialect::Bland,
];

fn header<'d>(dial: &'d call_orchestrator::tools::sim::RecordedDial, name: &str) -> &'d str {
    dial.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_default()
}

#[tokio::test]
async fn each_dial_has_the_vendors_shape_field_by_field() {
    for dialect in VENDORS {
        let vendor = start(dialect, |s| s.progress_webhooks = false, |_| {}).await;
        let id = vendor
            .create(
                "+1 (415) 555-0100",
                json!({"customerName": "John Doe", "visits": 3}),
            )
            .await;
        vendor.dialed(&id).await;
        let dials = vendor.sim.dials();
        assert_eq!(dials.len(), 1, "{}", dialect.name());
        let dial = &dials[0];
        let reference = format!("{id}.1");
        match dialect {
            Dialect::Twilio => {
                assert_eq!(
                    dial.path,
                    format!("/2010-04-01/Accounts/{TWILIO_ACCOUNT_SID}/Calls.json")
                );
                let basic = base64::engine::general_purpose::STANDARD
                    .encode(format!("{TWILIO_ACCOUNT_SID}:{KEY}"));
                assert_eq!(header(dial, "authorization"), format!("Basic {basic}"));
                assert!(
                    header(dial, "content-type").starts_with("application/x-www-form-urlencoded")
                );
                let form: Vec<(String, String)> = form_urlencoded::parse(dial.body.as_bytes())
                    .into_owned()
                    .collect();
                let get = |name: &str| -> Vec<&str> {
                    form.iter()
                        .filter(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                        .collect()
                };
                assert_eq!(get("To"), ["+14155550100"]);
                assert_eq!(get("From"), ["+15550000000"]);
                assert_eq!(
                    get("Url"),
                    [
                        format!(
                            "https://twiml.example/flow?lang=en&scriptId=welcomeFlow&ref={id}.1"
                        )
                        .as_str()
                    ]
                );
                let callback = get("StatusCallback")[0];
                assert!(
                    callback.starts_with(&format!(
                        "{}/api/v1/callbacks/twilio?ref={reference}&token=",
                        vendor.app.base
                    )),
                    "{callback}"
                );
                assert_eq!(
                    get("StatusCallbackEvent"),
                    ["initiated", "ringing", "answered", "completed"]
                );
                assert_eq!(get("StatusCallbackMethod"), ["POST"]);
                assert_eq!(get("MachineDetection"), ["Enable"]);
            }
            Dialect::Retell => {
                assert_eq!(dial.path, "/v2/create-phone-call");
                assert_eq!(header(dial, "authorization"), format!("Bearer {KEY}"));
                let body: Value = serde_json::from_str(&dial.body).unwrap();
                assert_eq!(
                    body,
                    json!({
                        "from_number": "+15550000000",
                        "to_number": "+14155550100",
                        "override_agent_id": "welcomeFlow",
                        "metadata": {"customerName": "John Doe", "visits": 3, "call_orchestrator_ref": reference},
                        "retell_llm_dynamic_variables": {"customerName": "John Doe", "visits": "3"},
                    })
                );
            }
            Dialect::Vapi => {
                assert_eq!(dial.path, "/call");
                assert_eq!(header(dial, "authorization"), format!("Bearer {KEY}"));
                let body: Value = serde_json::from_str(&dial.body).unwrap();
                let server = body["assistantOverrides"]["server"]["url"]
                    .as_str()
                    .unwrap();
                assert!(
                    server.starts_with(&format!(
                        "{}/api/v1/callbacks/vapi?ref={reference}&token=",
                        vendor.app.base
                    )),
                    "{server}"
                );
                assert_eq!(
                    body,
                    json!({
                        "phoneNumberId": "pn-1",
                        "customer": {"number": "+14155550100"},
                        "assistantId": "welcomeFlow",
                        "assistantOverrides": {
                            "variableValues": {"customerName": "John Doe", "visits": 3},
                            "metadata": {"customerName": "John Doe", "visits": 3, "call_orchestrator_ref": reference},
                            "server": {"url": server, "headers": {"X-Vapi-Secret": SECRET}},
                        },
                    })
                );
            }
            Dialect::Bland => {
                assert_eq!(dial.path, "/v1/calls");
                assert_eq!(header(dial, "authorization"), KEY);
                let body: Value = serde_json::from_str(&dial.body).unwrap();
                let webhook = body["webhook"].as_str().unwrap();
                assert!(
                    webhook.starts_with(&format!(
                        "{}/api/v1/callbacks/bland?ref={reference}&token=",
                        vendor.app.base
                    )),
                    "{webhook}"
                );
                assert_eq!(
                    body,
                    json!({
                        "phone_number": "+14155550100",
                        "from": "+15550000000",
                        "pathway_id": "welcomeFlow",
                        "request_data": {"customerName": "John Doe", "visits": 3},
                        "metadata": {"customerName": "John Doe", "visits": 3, "call_orchestrator_ref": reference},
                        "webhook": webhook,
                    })
                );
            }
            Dialect::Generic => unreachable!(),
        }
        // No vendor is sent an Idempotency-Key it would ignore.
        assert_eq!(header(dial, "idempotency-key"), "", "{}", dialect.name());
    }
}

/// The vendor's word for each outcome, as `lastError` carries it.
fn vendor_word(dialect: Dialect, outcome: &str) -> &'static str {
    match (dialect, outcome) {
        (Dialect::Twilio, "BUSY") => "twilio: busy",
        (Dialect::Twilio, "NO_ANSWER") => "twilio: no-answer",
        (Dialect::Twilio, "VOICEMAIL") => "answered by machine_start",
        (Dialect::Twilio, _) => "twilio: failed",
        (Dialect::Retell, "BUSY") => "retell: dial_busy",
        (Dialect::Retell, "NO_ANSWER") => "retell: dial_no_answer",
        (Dialect::Retell, "VOICEMAIL") => "retell: voicemail_reached",
        (Dialect::Retell, _) => "retell: dial_failed",
        (Dialect::Vapi, "BUSY") => "vapi: customer-busy",
        (Dialect::Vapi, "NO_ANSWER") => "vapi: customer-did-not-answer",
        (Dialect::Vapi, "VOICEMAIL") => "vapi: voicemail",
        (Dialect::Vapi, _) => "vapi: twilio-failed-to-connect-call",
        (Dialect::Bland, "BUSY") => "bland:",
        (Dialect::Bland, "NO_ANSWER") => "bland: no-answer",
        (Dialect::Bland, "VOICEMAIL") => "bland: voicemail",
        (Dialect::Bland, _) => "bland: Call failed.",
        (Dialect::Generic, _) => unreachable!(),
    }
}

#[tokio::test]
async fn every_outcome_of_each_vendor_ends_its_call_as_the_mapping_says() {
    for dialect in VENDORS {
        let vendor = start(
            dialect,
            |s| {
                s.outcomes = "completed=1,busy=1,no-answer=1,voicemail=1,failed=1"
                    .parse()
                    .unwrap()
            },
            |c| {
                c.max_retry_attempts = 1;
                c.max_concurrent_calls = 4;
            },
        )
        .await;
        let mut ids = Vec::new();
        for n in 0..25 {
            ids.push(
                vendor
                    .create(&format!("+1415555{:04}", n % 10), json!({"n": n}))
                    .await,
            );
        }
        let calls = vendor.finals(&ids, Duration::from_secs(60)).await;
        let mut seen = std::collections::BTreeSet::new();
        for call in &calls {
            let external = call["externalCallId"].as_str().expect("the vendor's id");
            let Some(Stage::Ended {
                outcome,
                duration_sec,
            }) = vendor.sim.call(external).map(|c| c.stage)
            else {
                panic!(
                    "{}: the simulator has no ended call {external}",
                    dialect.name()
                );
            };
            seen.insert(outcome);
            let what = format!("{}: {outcome}: {call}", dialect.name());
            if outcome == "COMPLETED" {
                assert_eq!(call["status"], "COMPLETED", "{what}");
                assert_eq!(call["durationSec"], duration_sec, "{what}");
            } else {
                assert_eq!(call["status"], "FAILED", "{what}");
                // `lastError` is "{the outcome the service read}: {the vendor's words}".
                let error = call["lastError"].as_str().unwrap_or_default();
                assert!(error.starts_with(&format!("{outcome}: ")), "{what}");
                assert!(error.contains(vendor_word(dialect, outcome)), "{what}");
            }
        }
        assert_eq!(seen.len(), 5, "{}: only {seen:?}", dialect.name());
        // Progress is on the timeline only, and every call kept to the rules.
        let events = vendor.events(&ids[0]).await;
        let received: Vec<&str> = events
            .iter()
            .filter(|e| e["type"] == "WEBHOOK_RECEIVED")
            .map(|e| e["detail"]["status"].as_str().unwrap())
            .collect();
        assert!(received.len() >= 2, "{}: {events:?}", dialect.name());
        assert!(
            received[..received.len() - 1]
                .iter()
                .all(|s| matches!(*s, "QUEUED" | "RINGING" | "IN_PROGRESS")),
            "{}: {received:?}",
            dialect.name()
        );
        let status = vendor.sim.status();
        assert!(status.peak_active <= 4, "{}: {status:?}", dialect.name());
        assert_eq!(status.peak_per_number, 1, "{}: {status:?}", dialect.name());
        assert_eq!(
            status.duplicate_placements,
            0,
            "{}: {status:?}",
            dialect.name()
        );
        assert_eq!(status.placed, 25, "{}: {status:?}", dialect.name());
    }
}

#[tokio::test]
async fn a_dial_whose_answer_is_lost_is_looked_up_never_sent_again() {
    for dialect in VENDORS {
        // Every answer comes after the service gave up waiting, and no webhook ever comes:
        // only the look-ups can tell what became of the call.
        let vendor = start(
            dialect,
            |s| {
                s.slow_rate = 1.0;
                s.slow_delay = Duration::from_millis(1500);
                s.drop_webhook_rate = 1.0;
                s.progress_webhooks = false;
            },
            |c| {
                c.provider_timeout = Duration::from_millis(300);
                c.reconcile_after = Duration::from_millis(300);
            },
        )
        .await;
        let id = vendor.create("+14155550100", json!({})).await;
        let calls = vendor
            .finals(std::slice::from_ref(&id), Duration::from_secs(30))
            .await;
        let status = vendor.sim.status();
        let what = format!("{}: {status:?} {:?}", dialect.name(), calls[0]);
        assert_eq!(status.received, 1, "the dial was sent again: {what}");
        assert_eq!(status.placed, 1, "{what}");
        assert_eq!(status.duplicate_placements, 0, "{what}");
        assert_eq!(calls[0]["status"], "COMPLETED", "{what}");
        let events = vendor.events(&id).await;
        assert!(
            events.iter().any(|e| e["type"] == "DIAL_UNKNOWN"),
            "{what}: {events:?}"
        );
        assert!(
            events.iter().any(|e| e["type"] == "RECONCILED"),
            "{what}: {events:?}"
        );
    }
}

#[tokio::test]
async fn a_lost_dial_the_vendor_never_placed_is_a_failed_attempt_after_its_look_ups() {
    // The first dial is swallowed: never placed, never answered. The look-ups find nothing
    // (three rescues, more than half a minute), so the attempt failed and the next one
    // places the call, once.
    let vendor = start(
        Dialect::Bland,
        |s| s.lose_dial_rate = 1.0,
        |c| {
            c.provider_timeout = Duration::from_millis(300);
            c.call_timeout = Duration::from_secs(120);
        },
    )
    .await;
    let id = vendor.create("+14155550100", json!({})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while vendor.sim.status().dials_lost == 0 {
        assert!(Instant::now() < deadline, "{:?}", vendor.sim.status());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    vendor.sim.set_faults(Faults {
        lose_dial_rate: 0.0,
        ..SimConfig::default().faults()
    });
    let calls = vendor
        .finals(std::slice::from_ref(&id), Duration::from_secs(90))
        .await;
    let status = vendor.sim.status();
    assert_eq!(calls[0]["status"], "COMPLETED", "{} {status:?}", calls[0]);
    assert_eq!(calls[0]["attempts"], 2, "{}", calls[0]);
    assert_eq!((status.received, status.placed), (2, 1), "{status:?}");
    let events = vendor.events(&id).await;
    let failed = events
        .iter()
        .find(|e| e["type"] == "DIAL_FAILED")
        .expect("the first attempt failed");
    assert!(
        failed["detail"]["reason"]
            .as_str()
            .unwrap()
            .contains("it was not placed"),
        "{failed}"
    );
}

#[tokio::test]
async fn a_gateway_error_to_a_vendors_dial_is_looked_up_not_redialed() {
    // A 502 may come from a gateway in front of a vendor that placed the call: the attempt
    // stays open for its look-ups, and nothing is sent again.
    use std::sync::atomic::{AtomicUsize, Ordering};
    let posts = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = posts.clone();
    let app = poem::Route::new().at(
        "/v1/calls",
        poem::post(poem::endpoint::make(move |_req| {
            let counted = counted.clone();
            async move {
                counted.fetch_add(1, Ordering::SeqCst);
                poem::Response::builder()
                    .status(poem::http::StatusCode::BAD_GATEWAY)
                    .body("upstream hiccup")
            }
        }))
        .get(poem::endpoint::make_sync(|_| {
            poem::web::Json(json!({"calls": [], "count": 0}))
        })),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        poem::Server::new_with_acceptor(poem::listener::TcpAcceptor::from_tokio(listener).unwrap())
            .run(app),
    );
    let app = TestApp::spawn_with(|c| {
        c.ai_call_provider = "bland".into();
        c.ai_call_api_url = Some(url);
        c.retry_base_delay = Duration::from_millis(50);
    })
    .await;
    let workers = CancellationToken::new();
    tokio::spawn(app.dispatcher().await.run(workers.clone()));
    let id = app.create_call("+14155550100").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let call = app.call(&id).await;
    assert_eq!(call["status"], "IN_PROGRESS", "{call}");
    assert_eq!(call["attempts"], 1, "{call}");
    assert_eq!(posts.load(Ordering::SeqCst), 1);
    let kinds = app.timeline(&id).await;
    assert!(kinds.contains(&"DIAL_UNKNOWN".to_owned()), "{kinds:?}");
    assert!(!kinds.contains(&"RETRY_SCHEDULED".to_owned()), "{kinds:?}");
    workers.cancel();
}

#[tokio::test]
async fn reconciliation_turns_a_lost_end_into_the_right_final_status() {
    for dialect in VENDORS {
        let vendor = start(
            dialect,
            |s| {
                s.drop_webhook_rate = 1.0;
                s.outcomes = "completed=1,busy=1".parse().unwrap();
            },
            |c| {
                c.reconcile_after = Duration::from_millis(400);
                c.max_retry_attempts = 1;
            },
        )
        .await;
        let mut ids = Vec::new();
        for n in 0..6 {
            ids.push(vendor.create(&format!("+1415555010{n}"), json!({})).await);
        }
        let calls = vendor.finals(&ids, Duration::from_secs(30)).await;
        for (id, call) in ids.iter().zip(&calls) {
            let external = call["externalCallId"].as_str().unwrap();
            let Some(Stage::Ended { outcome, .. }) = vendor.sim.call(external).map(|c| c.stage)
            else {
                panic!("not ended at the vendor: {call}");
            };
            let expected = if outcome == "COMPLETED" {
                "COMPLETED"
            } else {
                "FAILED"
            };
            assert_eq!(call["status"], expected, "{}: {call}", dialect.name());
            let events = vendor.events(id).await;
            let reconciled = events.iter().find(|e| e["type"] == "RECONCILED");
            assert!(reconciled.is_some(), "{}: {events:?}", dialect.name());
        }
        let metrics = vendor.app.metrics_text().await;
        let ended = metrics
            .lines()
            .find(|l| l.starts_with("call_orchestrator_reconciliations_total{outcome=\"ended\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or_default();
        assert!(ended >= 6.0, "{}: {metrics}", dialect.name());
    }
}

#[tokio::test]
async fn a_call_is_looked_up_once_more_before_it_may_expire() {
    // RECONCILE_AFTER longer than CALL_TIMEOUT: only the look-up made before expiring can
    // tell that the call ended, and it does.
    let vendor = start(
        Dialect::Retell,
        |s| s.drop_webhook_rate = 1.0,
        |c| {
            c.reconcile_after = Duration::from_secs(3600);
            c.call_timeout = Duration::from_secs(3);
        },
    )
    .await;
    let id = vendor.create("+14155550100", json!({})).await;
    let calls = vendor
        .finals(std::slice::from_ref(&id), Duration::from_secs(30))
        .await;
    assert_eq!(calls[0]["status"], "COMPLETED", "{}", calls[0]);
    let events = vendor.events(&id).await;
    assert!(
        events.iter().any(|e| e["type"] == "RECONCILED"),
        "{events:?}"
    );
    assert!(!events.iter().any(|e| e["type"] == "EXPIRED"), "{events:?}");
}

#[tokio::test]
async fn the_vendors_concurrency_limit_is_not_an_attempt() {
    for dialect in VENDORS {
        // The vendor takes one call at a time; the service's cap is three.
        let vendor = start(
            dialect,
            |s| s.vendor_concurrency = 1,
            |c| {
                c.max_concurrent_calls = 3;
                c.max_retry_attempts = 1;
            },
        )
        .await;
        let mut ids = Vec::new();
        for n in 0..4 {
            ids.push(vendor.create(&format!("+1415555020{n}"), json!({})).await);
        }
        let calls = vendor.finals(&ids, Duration::from_secs(60)).await;
        let status = vendor.sim.status();
        for call in &calls {
            // One attempt allowed, and yet every call completed: the refusals did not count.
            assert_eq!(
                call["status"],
                "COMPLETED",
                "{}: {call} {status:?}",
                dialect.name()
            );
            assert_eq!(call["attempts"], 1, "{}: {call}", dialect.name());
        }
        // Twilio and Bland refuse the dial (429); Retell and Vapi take it and end it with
        // their concurrency reason.
        let bit = match dialect {
            Dialect::Retell | Dialect::Vapi => status.throttled,
            _ => status.rate_limited,
        };
        assert!(
            bit > 0,
            "{}: the limit never bit: {status:?}",
            dialect.name()
        );
        assert_eq!(status.peak_active, 1, "{}: {status:?}", dialect.name());
    }
}

#[tokio::test]
async fn only_the_configured_vendors_route_takes_webhooks() {
    // With API_KEYS set too: the webhook routes are not behind them, so the routes of the
    // other dialects say they are not configured rather than ask for a key.
    let vendor = start(
        Dialect::Bland,
        |_| {},
        |c| c.api_keys = Some(Secret::new("a-client-key")),
    )
    .await;
    for path in [
        "/api/v1/callbacks/call-status",
        "/api/v1/callbacks/twilio",
        "/api/v1/callbacks/retell",
        "/api/v1/callbacks/vapi",
    ] {
        let response = vendor
            .app
            .client
            .post(vendor.app.url(path))
            .header("content-type", if path.ends_with("twilio") { "application/x-www-form-urlencoded" } else { "application/json" })
            .body(if path.ends_with("twilio") { "CallSid=CA1&CallStatus=completed".to_owned() } else { json!({"callId": "x", "status": "COMPLETED", "event": "call_ended", "call": {}, "message": {}}).to_string() })
            .send()
            .await
            .unwrap();
        let (status, body) = common::read(response).await;
        common::assert_error(
            status,
            &body,
            StatusCode::NOT_FOUND,
            "PROVIDER_NOT_CONFIGURED",
        );
    }
}

// Signatures, by a test's own hand (the vendors' SDKs check the same in vendor_sdks.rs).

fn hmac_hex(key: &str, parts: &[&[u8]]) -> String {
    let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(key.as_bytes()).unwrap();
    for part in parts {
        mac.update(part);
    }
    hex::encode(mac.finalize().into_bytes())
}

fn twilio_signature(token: &str, url: &str, body: &str) -> String {
    let mut params: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect();
    params.sort();
    let mut mac = <Hmac<sha1::Sha1> as KeyInit>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    for (k, v) in &params {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The body with one more field: a form parameter or a JSON key.
fn tampered(body: &str) -> String {
    match body.strip_suffix('}') {
        Some(json) => format!(r#"{json},"tampered":1}}"#),
        None => format!("{body}&Tampered=1"),
    }
}

/// The webhook URL the service handed the vendor for the attempt (its path and query).
async fn handed_out(vendor: &Vendor, id: &str) -> String {
    let query = common::attempt_query(&vendor.app.pool, id.parse().unwrap(), 1).await;
    format!("{}{query}", vendor.dialect.webhook_path())
}

/// A final webhook in the vendor's shape for `external`, and headers that sign it with
/// `key` (`age` old); `None` as the key: unsigned.
fn signed_webhook(
    dialect: Dialect,
    url: &str,
    external: &str,
    key: Option<&str>,
    age: Duration,
) -> (&'static str, String, Vec<(&'static str, String)>) {
    let now_ms = chrono::Utc::now().timestamp_millis() - age.as_millis() as i64;
    let (content_type, body) = match dialect {
        Dialect::Twilio => (
            "application/x-www-form-urlencoded",
            format!("CallSid={external}&CallStatus=completed&CallDuration=42&AnsweredBy=human&AccountSid={TWILIO_ACCOUNT_SID}"),
        ),
        Dialect::Retell => (
            "application/json",
            json!({"event": "call_ended", "call": {"call_id": external, "call_status": "ended", "disconnection_reason": "user_hangup", "duration_ms": 42000}}).to_string(),
        ),
        Dialect::Vapi => (
            "application/json",
            json!({"message": {"type": "end-of-call-report", "endedReason": "customer-ended-call", "durationSeconds": 42, "call": {"id": external, "status": "ended"}}}).to_string(),
        ),
        Dialect::Bland => (
            "application/json",
            json!({"call_id": external, "status": "completed", "completed": true, "answered_by": "human", "call_length": 0.7, "queue_status": "complete"}).to_string(),
        ),
        Dialect::Generic => unreachable!(),
    };
    let headers = match (dialect, key) {
        (_, None) => Vec::new(),
        (Dialect::Twilio, Some(key)) => {
            vec![("x-twilio-signature", twilio_signature(key, url, &body))]
        }
        (Dialect::Retell, Some(key)) => {
            let ts = now_ms.to_string();
            vec![(
                "x-retell-signature",
                format!(
                    "v={ts},d={}",
                    hmac_hex(key, &[body.as_bytes(), ts.as_bytes()])
                ),
            )]
        }
        (Dialect::Vapi, Some(key)) => {
            // Unix seconds here; the simulator sends milliseconds.
            let ts = (now_ms / 1000).to_string();
            vec![
                ("x-timestamp", ts.clone()),
                (
                    "x-signature",
                    hmac_hex(key, &[ts.as_bytes(), b".", body.as_bytes()]),
                ),
            ]
        }
        (Dialect::Bland, Some(key)) => {
            vec![("x-webhook-signature", hmac_hex(key, &[body.as_bytes()]))]
        }
        (Dialect::Generic, _) => unreachable!(),
    };
    (content_type, body, headers)
}

#[tokio::test]
async fn each_vendors_signature_is_accepted_when_right_and_refused_otherwise() {
    for dialect in VENDORS {
        let (vendor, id, external) = one_call(dialect).await;
        let path = handed_out(&vendor, &id).await;
        let url = vendor.app.url(&path);
        let right_key = match dialect {
            Dialect::Vapi | Dialect::Bland => SECRET,
            _ => KEY,
        };
        let send =
            |(content_type, body, headers): (&'static str, String, Vec<(&'static str, String)>),
             to: String| {
                let mut request = vendor
                    .app
                    .client
                    .post(to)
                    .header("content-type", content_type)
                    .body(body);
                for (name, value) in headers {
                    request = request.header(name, value);
                }
                async move { common::read(request.send().await.unwrap()).await }
            };
        let fresh = Duration::ZERO;
        let stale = Duration::from_secs(10 * 60);
        let mut refusals = vec![
            (
                "unsigned",
                signed_webhook(dialect, &url, &external, None, fresh),
            ),
            (
                "another key",
                signed_webhook(dialect, &url, &external, Some("not-the-key"), fresh),
            ),
        ];
        let (content_type, body, headers) =
            signed_webhook(dialect, &url, &external, Some(right_key), fresh);
        refusals.push((
            "a changed body",
            (content_type, tampered(&body), headers.clone()),
        ));
        if matches!(dialect, Dialect::Retell | Dialect::Vapi) {
            refusals.push((
                "stale",
                signed_webhook(dialect, &url, &external, Some(right_key), stale),
            ));
        }
        for (what, webhook) in refusals {
            let (status, body) = send(webhook, url.clone()).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{}: {what}: {body}",
                dialect.name()
            );
            assert_eq!(
                body["error"]["code"],
                "INVALID_SIGNATURE",
                "{}: {what}",
                dialect.name()
            );
            assert_eq!(
                vendor.app.call(&id).await["status"],
                "IN_PROGRESS",
                "{}: {what}",
                dialect.name()
            );
        }
        if dialect == Dialect::Twilio {
            // Signed over another URL (the query left out).
            let webhook = signed_webhook(
                dialect,
                &vendor.app.url(dialect.webhook_path()),
                &external,
                Some(KEY),
                fresh,
            );
            let (status, _) = send(webhook, url.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
        }
        let right = if dialect == Dialect::Vapi {
            // Vapi's other scheme: the secret itself, in the header the dial asked for.
            let (content_type, body, _) = signed_webhook(dialect, &url, &external, None, fresh);
            let wrong = vec![("x-vapi-secret", "not-the-secret".to_owned())];
            let (status, _) = send((content_type, body.clone(), wrong), url.clone()).await;
            assert_eq!(status, StatusCode::UNAUTHORIZED);
            (
                content_type,
                body,
                vec![("x-vapi-secret", SECRET.to_owned())],
            )
        } else {
            signed_webhook(dialect, &url, &external, Some(right_key), fresh)
        };
        let (status, body) = send(right, url.clone()).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", dialect.name());
        let call = vendor.app.call(&id).await;
        assert_eq!(call["status"], "COMPLETED", "{}: {call}", dialect.name());
        assert_eq!(call["durationSec"], 42, "{}: {call}", dialect.name());
    }
}

#[tokio::test]
async fn without_a_secret_vapi_and_bland_webhooks_need_their_urls_token() {
    for dialect in [Dialect::Vapi, Dialect::Bland] {
        let vendor = start(
            dialect,
            |s| {
                s.webhook_secret = None;
                s.progress_webhooks = false;
                s.drop_webhook_rate = 1.0;
                s.min_duration = Duration::from_secs(600);
                s.max_duration = Duration::from_secs(600);
            },
            |c| c.webhook_secret = None,
        )
        .await;
        let id = vendor.create("+14155550100", json!({})).await;
        let external = vendor.dialed(&id).await;
        let path = handed_out(&vendor, &id).await;
        let post = |to: String| {
            let (content_type, body, _) =
                signed_webhook(dialect, &to, &external, None, Duration::ZERO);
            let request = vendor
                .app
                .client
                .post(to)
                .header("content-type", content_type)
                .body(body);
            async move { common::read(request.send().await.unwrap()).await }
        };
        let (status, body) = post(vendor.app.url(dialect.webhook_path())).await;
        common::assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "WEBHOOK_NOT_AUTHENTICATED",
        );
        let (status, body) = post(
            vendor
                .app
                .url(&format!("{}?ref={id}.1&token=AAAA", dialect.webhook_path())),
        )
        .await;
        common::assert_error(
            status,
            &body,
            StatusCode::UNAUTHORIZED,
            "INVALID_WEBHOOK_TOKEN",
        );
        assert_eq!(vendor.app.call(&id).await["status"], "IN_PROGRESS");
        let (status, body) = post(vendor.app.url(&path)).await;
        assert_eq!(status, StatusCode::OK, "{}: {body}", dialect.name());
        assert_eq!(vendor.app.call(&id).await["status"], "COMPLETED");
    }
}

#[tokio::test]
async fn a_signed_webhook_that_beats_the_vendors_answer_finds_its_attempt_by_the_echoed_reference()
{
    // Retell's webhooks come to the agent's URL, with no reference of ours in it: the
    // signed body's metadata carries it, so a call_ended that arrives before the dial's
    // answer is applied, not lost.
    let vendor = start(
        Dialect::Retell,
        |s| {
            s.slow_rate = 1.0;
            s.slow_delay = Duration::from_millis(1200);
        },
        |_| {},
    )
    .await;
    let id = vendor.create("+14155550100", json!({})).await;
    let calls = vendor
        .finals(std::slice::from_ref(&id), Duration::from_secs(20))
        .await;
    assert_eq!(calls[0]["status"], "COMPLETED", "{}", calls[0]);
    let status = vendor.sim.status();
    assert_eq!((status.received, status.placed), (1, 1), "{status:?}");
}
