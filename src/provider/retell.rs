//! Retell AI (`AI_CALL_PROVIDER=retell`).
//!
//! A dial is `POST {url}/v2/create-phone-call` with `from_number`, `to_number`,
//! `override_agent_id` (the call's `scriptId`), `metadata` (the call's, with the attempt's
//! reference) and `retell_llm_dynamic_variables` (the metadata's top-level values as
//! strings), with a bearer key. Retell sends its webhooks (`{event, call}`) to the URL set
//! on the agent or the account, signed by `X-Retell-Signature: v={ms},d={hex}`: HMAC-SHA256,
//! keyed with the API key, of the raw body followed by the timestamp, within 5 minutes.

use std::time::Duration;

use chrono::{DateTime, Utc};
use poem::http::HeaderMap;
use serde_json::{Map, Value, json};

use super::{
    DialRequest, ProviderReport, Verification, WebhookError,
    signature::{fresh, same, sha256_hex},
    vendor::{
        Answered, Dialect, Http, calls_in, checked_id, header, json_body, metadata_with_reference,
        reason, reference_in, seconds, segment, signed_if, text,
    },
};
use crate::{config::Config, domain::ProviderStatus};

pub const WEBHOOK_PATH: &str = "/api/v1/callbacks/retell";
pub const API_URL: &str = "https://api.retellai.com";

/// Retell's tolerance for the age of a signature.
const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The Retell dialect.
pub struct Retell {
    from: String,
}

impl Retell {
    pub fn from_config(config: &Config) -> Self {
        Self {
            from: super::vendor::from_number(config).unwrap_or_default(),
        }
    }
}

/// Where a call ended, from its `disconnection_reason` (and `call_status` for a reason
/// Retell may add later).
fn ended(reason: Option<&str>, call_status: Option<&str>) -> ProviderStatus {
    use ProviderStatus as P;
    match reason {
        Some("dial_no_answer") => P::NoAnswer,
        Some("dial_busy" | "user_declined") => P::Busy,
        Some("voicemail_reached") => P::Voicemail,
        Some("concurrency_limit_reached" | "no_concurrency_fallback") => P::Throttled,
        Some(
            "dial_failed"
            | "invalid_destination"
            | "telephony_provider_permission_denied"
            | "telephony_provider_unavailable"
            | "sip_routing_error"
            | "marked_as_spam"
            | "no_valid_payment"
            | "scam_detected"
            | "registered_call_timeout",
        ) => P::Failed,
        Some(error) if error.starts_with("error") => P::Failed,
        Some(
            "user_hangup"
            | "agent_hangup"
            | "call_transfer"
            | "ivr_reached"
            | "inactivity"
            | "max_duration_reached"
            | "transfer_bridged"
            | "transfer_cancelled"
            | "manual_stopped"
            | "call_take_over",
        ) => P::Completed,
        // A reason this service does not know yet: the call's status tells.
        _ => match call_status {
            Some("ended") => P::Completed,
            _ => P::Failed,
        },
    }
}

/// A call object in the service's words; `event` is the webhook's, `None` for a look-up.
fn read(call: &Value, event: Option<&str>) -> Result<ProviderReport, WebhookError> {
    let id = checked_id(text(call, "call_id"))?;
    let call_status = text(call, "call_status");
    let disconnection = text(call, "disconnection_reason");
    let status = match (event, call_status) {
        (Some("call_ended" | "call_analyzed"), _)
        | (None, Some("ended" | "not_connected" | "error")) => ended(disconnection, call_status),
        (None, Some("registered")) => ProviderStatus::Queued,
        // A status Retell may add later: the call is not over.
        (None, _) => ProviderStatus::InProgress,
        // call_started, transcript_updated, transfer_*: progress.
        (Some(_), _) => ProviderStatus::InProgress,
    };
    let duration_sec = call
        .get("duration_ms")
        .and_then(Value::as_f64)
        .and_then(|ms| seconds(ms / 1000.0))
        .filter(|_| status.is_final());
    let why = (status.is_final() && status != ProviderStatus::Completed)
        .then(|| format!("retell: {}", reason(disconnection.unwrap_or("(no reason)"))));
    let mut echo =
        json!({"call_id": id, "call_status": call_status, "disconnection_reason": disconnection});
    if let Some(event) = event {
        echo["event"] = reason(event).into();
    }
    Ok(ProviderReport {
        provider_call_id: id,
        status,
        duration_sec,
        reason: why,
        reference: reference_in(call.get("metadata")),
        body: echo,
    })
}

/// The metadata's top-level values as strings, as Retell's dynamic variables must be.
fn dynamic_variables(metadata: &Map<String, Value>) -> Map<String, Value> {
    metadata
        .iter()
        .filter(|(key, _)| key.as_str() != super::REFERENCE_KEY)
        .map(|(key, value)| {
            let text = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            (key.clone(), Value::String(text))
        })
        .collect()
}

impl Dialect for Retell {
    const NAME: &'static str = "retell";
    const WEBHOOK_PATH: &'static str = WEBHOOK_PATH;
    const LIST_LIMIT: usize = 100;

    fn dial(&self, http: &Http, request: &DialRequest) -> reqwest::RequestBuilder {
        let body = json!({
            "from_number": self.from,
            "to_number": request.to,
            "override_agent_id": request.script_id,
            "metadata": metadata_with_reference(request),
            "retell_llm_dynamic_variables": dynamic_variables(&request.metadata),
        });
        http.client
            .post(http.url("/v2/create-phone-call"))
            .bearer_auth(http.key.expose())
            .json(&body)
    }

    fn answer(&self, answer: &Value) -> Answered {
        Answered::Accepted(text(answer, "call_id").map(str::to_owned))
    }

    fn verify(
        &self,
        http: &Http,
        _public_url: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Verification {
        // An empty key would let anyone sign: nothing is taken then.
        let Some(given) =
            header(headers, "x-retell-signature").filter(|_| !http.key.expose().is_empty())
        else {
            return Verification::Refused;
        };
        let Some((timestamp, digest)) = given
            .trim()
            .strip_prefix("v=")
            .and_then(|rest| rest.split_once(",d="))
        else {
            return Verification::Refused;
        };
        if timestamp.is_empty()
            || !timestamp.bytes().all(|b| b.is_ascii_digit())
            || !fresh(timestamp, TOLERANCE)
        {
            return Verification::Refused;
        }
        let expected = sha256_hex(http.key.expose().as_bytes(), &[body, timestamp.as_bytes()]);
        signed_if(same(&expected, digest))
    }

    fn proof(&self) -> &'static str {
        "signed by Retell (X-Retell-Signature, keyed with the API key)"
    }

    fn read_webhook(&self, body: &[u8]) -> Result<ProviderReport, WebhookError> {
        let body = json_body(body)?;
        let event =
            text(&body, "event").ok_or_else(|| WebhookError::Body("`event` is missing".into()))?;
        let call = body
            .get("call")
            .filter(|call| call.is_object())
            .ok_or_else(|| WebhookError::Body("`call` is missing".into()))?;
        read(call, Some(event))
    }

    fn look_up(&self, http: &Http, provider_call_id: &str) -> reqwest::RequestBuilder {
        http.client
            .get(http.url(&format!("/v2/get-call/{}", segment(provider_call_id))))
            .bearer_auth(http.key.expose())
    }

    fn not_found(&self, status: reqwest::StatusCode) -> bool {
        // Retell answers an unknown call 422 ("Cannot find requested asset").
        status == reqwest::StatusCode::NOT_FOUND
            || status == reqwest::StatusCode::UNPROCESSABLE_ENTITY
    }

    fn read_call(&self, call: &Value) -> Option<ProviderReport> {
        read(call, None).ok()
    }

    fn list(
        &self,
        http: &Http,
        request: &DialRequest,
        _since: DateTime<Utc>,
    ) -> reqwest::RequestBuilder {
        // By number only: a call not yet connected has no start_timestamp, and the
        // reference is matched here, in the metadata each item carries.
        http.client
            .post(http.url("/v3/list-calls"))
            .bearer_auth(http.key.expose())
            .json(&json!({
                "filter_criteria": {
                    "to_number": {"type": "string", "op": "eq", "value": request.to},
                },
                "sort_order": "descending",
                "limit": 100,
            }))
    }

    fn listed<'v>(&self, answer: &'v Value) -> Vec<&'v Value> {
        calls_in(answer, "items")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Retell SDKs' own test vector (tests/test_webhook_auth.py).
    #[test]
    fn signs_as_the_retell_sdk_does() {
        assert_eq!(
            sha256_hex(
                b"test-api-key",
                &[br#"{"event":"call_ended"}"#, b"1700000000000"]
            ),
            "07024cabe7dd8f6d1c6e4a8324ca92c812e6ad4a7ee506c04f7e462e3321823e"
        );
    }

    #[test]
    fn disconnection_reasons_follow_the_mapping() {
        use ProviderStatus as P;
        for (reason, expected) in [
            ("dial_no_answer", P::NoAnswer),
            ("dial_busy", P::Busy),
            ("user_declined", P::Busy),
            ("voicemail_reached", P::Voicemail),
            ("dial_failed", P::Failed),
            ("invalid_destination", P::Failed),
            ("error_llm_websocket_open", P::Failed),
            ("error_unknown", P::Failed),
            ("concurrency_limit_reached", P::Throttled),
            ("no_concurrency_fallback", P::Throttled),
            ("telephony_provider_permission_denied", P::Failed),
            ("telephony_provider_unavailable", P::Failed),
            ("sip_routing_error", P::Failed),
            ("marked_as_spam", P::Failed),
            ("no_valid_payment", P::Failed),
            ("scam_detected", P::Failed),
            ("registered_call_timeout", P::Failed),
            ("user_hangup", P::Completed),
            ("agent_hangup", P::Completed),
            ("call_transfer", P::Completed),
            ("ivr_reached", P::Completed),
            ("inactivity", P::Completed),
            ("max_duration_reached", P::Completed),
        ] {
            assert_eq!(ended(Some(reason), Some("ended")), expected, "{reason}");
        }
        assert_eq!(ended(Some("brand_new"), Some("ended")), P::Completed);
        assert_eq!(ended(Some("brand_new"), Some("error")), P::Failed);
    }

    #[test]
    fn webhooks_and_look_ups_are_read() {
        let call = json!({
            "call_id": "abc123", "call_status": "ended", "disconnection_reason": "user_hangup",
            "duration_ms": 61_400,
            "metadata": {"call_orchestrator_ref": "550e8400-e29b-41d4-a716-446655440000.2"},
        });
        let report = read(&call, Some("call_ended")).unwrap();
        assert_eq!(report.status, ProviderStatus::Completed);
        assert_eq!(report.duration_sec, Some(61));
        assert_eq!(
            report.reference,
            Some(("550e8400-e29b-41d4-a716-446655440000".parse().unwrap(), 2))
        );
        assert_eq!(
            read(&call, Some("call_started")).unwrap().status,
            ProviderStatus::InProgress
        );
        let ongoing = json!({"call_id": "abc123", "call_status": "ongoing"});
        assert_eq!(
            read(&ongoing, None).unwrap().status,
            ProviderStatus::InProgress
        );
        assert!(read(&json!({"call_status": "ended"}), None).is_err());
        assert_eq!(
            dynamic_variables(
                &serde_json::from_value(json!({"a": 1, "b": "x", "c": {"d": true}})).unwrap()
            ),
            serde_json::from_value::<Map<String, Value>>(
                json!({"a": "1", "b": "x", "c": "{\"d\":true}"})
            )
            .unwrap()
        );
    }
}
