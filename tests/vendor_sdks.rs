//! The vendors' own code agrees with ours: twilio-python's `RequestValidator` and the Retell
//! SDK's `webhook_auth` sign webhooks that the service accepts, and verify the signatures
//! the simulator makes. Needs the test virtualenv (tests/clients/requirements.txt); skipped
//! only when asked by name: SKIP_GENERATED_CLIENTS=1.

mod common;

use call_orchestrator::tools::sim::{Dialect, TWILIO_ACCOUNT_SID};
use common::vendor::{KEY, one_call};
use reqwest::StatusCode;
use serde_json::json;

const TWILIO: &str = r#"
import json, sys
from twilio.request_validator import RequestValidator
case = json.load(sys.stdin)
validator = RequestValidator(case["token"])
params = dict(case["params"])
print(json.dumps({
    "signature": validator.compute_signature(case["url"], params),
    "theirs_valid": validator.validate(case["url"], params, case["ours"]),
}))
"#;

const RETELL: &str = r#"
import json, sys
from retell.lib import webhook_auth
case = json.load(sys.stdin)
print(json.dumps({
    "signature": webhook_auth.symmetric["sign"](case["body"], case["key"]),
    "theirs_valid": webhook_auth.verify(case["body"], case["key"], case["ours"]),
    "stale_valid": webhook_auth.verify(case["body"], case["key"], case["stale"]),
}))
"#;

fn skipped() -> bool {
    let skip = std::env::var_os("SKIP_GENERATED_CLIENTS").is_some_and(|v| v == "1");
    if skip {
        eprintln!("skipped, as SKIP_GENERATED_CLIENTS=1 asks");
    }
    skip
}

#[tokio::test]
async fn twilios_request_validator_and_the_service_agree() {
    if skipped() {
        return;
    }
    let (vendor, id, external) = one_call(Dialect::Twilio).await;
    let app = &vendor.app;
    let query = common::attempt_query(&app.pool, id.parse().unwrap(), 1).await;
    let url = app.url(&format!("/api/v1/callbacks/twilio{query}"));
    let params = [
        ("AccountSid", TWILIO_ACCOUNT_SID),
        ("CallSid", external.as_str()),
        ("CallStatus", "completed"),
        ("CallDuration", "42"),
        ("AnsweredBy", "human"),
        ("Caller", "+15550000000"),
        ("Called", "+14155550100"),
    ];
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(params)
        .finish();
    let ours = Dialect::Twilio
        .sign(KEY, None, &url, body.as_bytes())
        .into_iter()
        .find(|(name, _)| *name == "x-twilio-signature")
        .unwrap()
        .1;
    let answer = common::python(
        TWILIO,
        &json!({"token": KEY, "url": url, "params": params, "ours": ours}),
    );
    assert_eq!(
        answer["theirs_valid"], true,
        "twilio-python refuses the simulator's signature"
    );
    let theirs = answer["signature"].as_str().unwrap();
    let send = |signature: String| {
        app.client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("x-twilio-signature", signature)
            .body(body.clone())
            .send()
    };
    // Twilio's signature over another key is refused; its own is taken.
    let other = Dialect::Twilio
        .sign("another-token", None, &url, body.as_bytes())
        .into_iter()
        .find(|(name, _)| *name == "x-twilio-signature")
        .unwrap()
        .1;
    let (status, _) = common::read(send(other).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, answer) = common::read(send(theirs.to_owned()).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let call = app.call(&id).await;
    assert_eq!(call["status"], "COMPLETED", "{call}");
    assert_eq!(call["durationSec"], 42);
}

#[tokio::test]
async fn retells_sdk_and_the_service_agree() {
    if skipped() {
        return;
    }
    let (vendor, id, external) = one_call(Dialect::Retell).await;
    let app = &vendor.app;
    let url = app.url("/api/v1/callbacks/retell");
    let body = json!({
        "event": "call_ended",
        "call": {
            "call_id": external,
            "call_status": "ended",
            "disconnection_reason": "agent_hangup",
            "duration_ms": 42_000,
            "metadata": {"call_orchestrator_ref": format!("{id}.1")},
        },
    })
    .to_string();
    let ours = Dialect::Retell.sign(KEY, None, &url, body.as_bytes())[0]
        .1
        .clone();
    let old = chrono::Utc::now().timestamp_millis() - 6 * 60 * 1000;
    let stale = {
        use hmac::{Hmac, KeyInit, Mac};
        let mut mac = <Hmac<sha2::Sha256> as KeyInit>::new_from_slice(KEY.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        mac.update(old.to_string().as_bytes());
        format!("v={old},d={}", hex::encode(mac.finalize().into_bytes()))
    };
    let answer = common::python(
        RETELL,
        &json!({"key": KEY, "body": body, "ours": ours, "stale": stale}),
    );
    assert_eq!(
        answer["theirs_valid"], true,
        "the Retell SDK refuses the simulator's signature"
    );
    assert_eq!(
        answer["stale_valid"], false,
        "the Retell SDK takes a stale one"
    );
    let send = |signature: &str| {
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .header("x-retell-signature", signature)
            .body(body.clone())
            .send()
    };
    // As the SDK refuses the stale signature, so does the service.
    let (status, _) = common::read(send(&stale).await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, answer) =
        common::read(send(answer["signature"].as_str().unwrap()).await.unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let call = app.call(&id).await;
    assert_eq!(call["status"], "COMPLETED", "{call}");
    assert_eq!(call["durationSec"], 42);
}
