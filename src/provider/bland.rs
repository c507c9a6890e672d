//! Bland AI (`AI_CALL_PROVIDER=bland`).
//!
//! A dial is `POST {url}/v1/calls` with `phone_number`, `pathway_id` (the call's
//! `scriptId`), `request_data` (its metadata), `metadata` (with the attempt's reference),
//! `webhook` (the webhook URL, with its reference and token) and `from` when
//! `AI_CALL_FROM_NUMBER` is set; the key goes in `authorization` as it stands. Bland posts
//! the call's object to the webhook when it ends (and, with `webhook_events`, small progress
//! messages before), signed, when the organisation has a signing secret, by
//! `X-Webhook-Signature`: hex HMAC-SHA256 of the raw body.

use chrono::{DateTime, SecondsFormat, Utc};
use poem::http::HeaderMap;
use serde_json::{Value, json};

use super::{
    DialRequest, ProviderReport, Verification, WebhookError,
    signature::{same_hex, sha256_hex},
    vendor::{
        Answered, Dialect, Http, calls_in, checked_id, header, json_body, metadata_with_reference,
        reason, reference_in, seconds, segment, signed_if, text,
    },
};
use crate::{
    config::{Config, Secret},
    domain::ProviderStatus,
};

pub const WEBHOOK_PATH: &str = "/api/v1/callbacks/bland";
pub const API_URL: &str = "https://api.bland.ai";

/// The Bland dialect.
pub struct Bland {
    from: Option<String>,
    /// `WEBHOOK_SECRET`: Bland's signing secret (several during a rotation); none: the
    /// webhook URL's token is the proof.
    secrets: Vec<Secret>,
}

impl Bland {
    pub fn from_config(config: &Config) -> Self {
        Self {
            from: super::vendor::from_number(config),
            secrets: config.webhook_secret_list(),
        }
    }
}

/// Where a call stands, from Bland's `status`, `queue_status`, `completed` and
/// `answered_by`.
fn standing(call: &Value) -> ProviderStatus {
    use ProviderStatus as P;
    let status = text(call, "status");
    let queue = text(call, "queue_status").unwrap_or_default();
    let answered_by = text(call, "answered_by");
    let error = text(call, "error_message").unwrap_or_default();
    let completed = call.get("completed").and_then(Value::as_bool) == Some(true);
    if status == Some("busy") || error.contains("busy") {
        return P::Busy;
    }
    if status == Some("no-answer") || answered_by == Some("no-answer") {
        return P::NoAnswer;
    }
    if matches!(status, Some("failed" | "canceled"))
        || (queue.ends_with("_error") && queue != "complete_error")
    {
        return P::Failed;
    }
    if status == Some("completed") || completed || queue.starts_with("complete") {
        if answered_by == Some("voicemail") {
            return P::Voicemail;
        }
        return P::Completed;
    }
    match queue {
        "started" => P::InProgress,
        "allocated" => P::Ringing,
        _ => P::Queued,
    }
}

fn read(call: &Value) -> Result<ProviderReport, WebhookError> {
    let id = checked_id(text(call, "call_id").or(text(call, "c_id")))?;
    let status = standing(call);
    // `corrected_duration` is in seconds (as a string); `call_length` in minutes.
    let duration_sec = text(call, "corrected_duration")
        .and_then(|d| d.trim().parse::<f64>().ok())
        .or_else(|| call.get("corrected_duration").and_then(Value::as_f64))
        .or_else(|| {
            call.get("call_length")
                .and_then(Value::as_f64)
                .map(|minutes| minutes * 60.0)
        })
        .and_then(seconds)
        .filter(|_| status.is_final());
    let why = (status.is_final() && status != ProviderStatus::Completed).then(|| {
        let detail = text(call, "error_message")
            .or(text(call, "answered_by"))
            .or(text(call, "status"))
            .unwrap_or("(no reason)");
        format!("bland: {}", reason(detail))
    });
    let echo = json!({
        "call_id": id,
        "status": text(call, "status"),
        "queue_status": text(call, "queue_status"),
        "completed": call.get("completed"),
        "answered_by": text(call, "answered_by"),
        "call_length": call.get("call_length"),
        "error_message": text(call, "error_message").map(reason),
    });
    Ok(ProviderReport {
        provider_call_id: id,
        status,
        duration_sec,
        reason: why,
        reference: reference_in(call.get("metadata")),
        body: echo,
    })
}

impl Dialect for Bland {
    const NAME: &'static str = "bland";
    const WEBHOOK_PATH: &'static str = WEBHOOK_PATH;
    const LIST_LIMIT: usize = 100;

    fn dial(&self, http: &Http, request: &DialRequest) -> reqwest::RequestBuilder {
        let mut body = json!({
            "phone_number": request.to,
            "pathway_id": request.script_id,
            "request_data": request.metadata,
            "metadata": metadata_with_reference(request),
            "webhook": request.webhook_url,
        });
        if let Some(from) = &self.from {
            body["from"] = from.clone().into();
        }
        http.client
            .post(http.url("/v1/calls"))
            .header("authorization", http.key.expose())
            .json(&body)
    }

    fn answer(&self, answer: &Value) -> Answered {
        match text(answer, "status") {
            // Bland words some refusals in a 200.
            Some(status) if status != "success" => Answered::Refused(answer.to_string()),
            _ => Answered::Accepted(text(answer, "call_id").map(str::to_owned)),
        }
    }

    fn is_rate_limit(&self, status: reqwest::StatusCode, text: &str) -> bool {
        // A blacklisted number is answered 429 too, and waiting will not help it.
        status == reqwest::StatusCode::TOO_MANY_REQUESTS && !text.contains("blacklisted")
    }

    fn verify(
        &self,
        _http: &Http,
        _public_url: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Verification {
        if self.secrets.is_empty() {
            return Verification::Unsigned;
        }
        let Some(given) = header(headers, "x-webhook-signature") else {
            return Verification::Refused;
        };
        signed_if(
            self.secrets
                .iter()
                .any(|secret| same_hex(&sha256_hex(secret.expose().as_bytes(), &[body]), given)),
        )
    }

    fn proof(&self) -> &'static str {
        if self.secrets.is_empty() {
            "the token of each attempt's webhook URL (set WEBHOOK_SECRET to Bland's signing secret to check signatures too)"
        } else {
            "signed by Bland (X-Webhook-Signature, keyed with WEBHOOK_SECRET)"
        }
    }

    fn read_webhook(&self, body: &[u8]) -> Result<ProviderReport, WebhookError> {
        let body = json_body(body)?;
        if !body.is_object() {
            return Err(WebhookError::Body("expected a JSON object".into()));
        }
        // A progress message of `webhook_events`: `{message, call_id, category, log_level}`.
        if body.get("category").is_some() && body.get("queue_status").is_none() {
            let id = checked_id(text(&body, "call_id"))?;
            return Ok(ProviderReport {
                provider_call_id: id.clone(),
                status: ProviderStatus::InProgress,
                duration_sec: None,
                reason: None,
                reference: None,
                body: json!({
                    "call_id": id,
                    "category": text(&body, "category").map(reason),
                    "message": text(&body, "message").map(reason),
                }),
            });
        }
        // Bland posts the call's object when the call is over: one that reads as not over
        // (a status this service does not know yet) is a failure, not progress for ever.
        let mut report = read(&body)?;
        if !report.status.is_final() {
            report.reason = Some(format!(
                "bland: the post-call body tells no end we know ({})",
                reason(text(&body, "status").unwrap_or("no status"))
            ));
            report.status = ProviderStatus::Failed;
        }
        Ok(report)
    }

    fn look_up(&self, http: &Http, provider_call_id: &str) -> reqwest::RequestBuilder {
        http.client
            .get(http.url(&format!("/v1/calls/{}", segment(provider_call_id))))
            .header("authorization", http.key.expose())
    }

    fn read_call(&self, call: &Value) -> Option<ProviderReport> {
        if text(call, "status") == Some("error") {
            return None;
        }
        read(call).ok()
    }

    fn list(
        &self,
        http: &Http,
        request: &DialRequest,
        since: DateTime<Utc>,
    ) -> reqwest::RequestBuilder {
        http.client
            .get(http.url("/v1/calls"))
            .header("authorization", http.key.expose())
            .query(&[
                ("to_number", request.to.as_str()),
                (
                    "start_date",
                    &since.to_rfc3339_opts(SecondsFormat::Secs, true),
                ),
                ("ascending", "false"),
                ("limit", "100"),
            ])
    }

    fn listed<'v>(&self, answer: &'v Value) -> Vec<&'v Value> {
        calls_in(answer, "calls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn post_call_bodies_follow_the_mapping() {
        use ProviderStatus as P;
        for (call, expected) in [
            (
                json!({"status": "completed", "completed": true, "answered_by": "human"}),
                P::Completed,
            ),
            (
                json!({"status": "completed", "completed": true, "answered_by": "unknown"}),
                P::Completed,
            ),
            (
                json!({"status": "completed", "completed": true, "answered_by": "voicemail"}),
                P::Voicemail,
            ),
            (json!({"status": "busy", "completed": true}), P::Busy),
            (
                json!({"status": "failed", "error_message": "Call failed. The number you dialed is busy. Please try again later."}),
                P::Busy,
            ),
            (
                json!({"status": "no-answer", "completed": true}),
                P::NoAnswer,
            ),
            (
                json!({"completed": true, "answered_by": "no-answer"}),
                P::NoAnswer,
            ),
            (
                json!({"status": "failed", "error_message": "Call failed."}),
                P::Failed,
            ),
            (json!({"status": "canceled"}), P::Failed),
            (json!({"queue_status": "queue_error"}), P::Failed),
            (
                json!({"queue_status": "complete", "completed": true}),
                P::Completed,
            ),
            (json!({"queue_status": "completed"}), P::Completed),
            (
                json!({"queue_status": "started", "completed": false}),
                P::InProgress,
            ),
            (
                json!({"queue_status": "queued", "completed": false}),
                P::Queued,
            ),
        ] {
            assert_eq!(standing(&call), expected, "{call}");
        }
    }

    #[test]
    fn a_post_call_body_always_ends_the_attempt() {
        let bland = Bland {
            from: None,
            secrets: Vec::new(),
        };
        let report = bland
            .read_webhook(br#"{"call_id": "c-1", "status": "vanished"}"#)
            .unwrap();
        assert_eq!(report.status, ProviderStatus::Failed);
        let progress = bland
            .read_webhook(br#"{"call_id": "c-1", "category": "call", "message": "Call connected"}"#)
            .unwrap();
        assert_eq!(progress.status, ProviderStatus::InProgress);
    }

    #[test]
    fn durations_are_seconds() {
        let call =
            json!({"call_id": "c-1", "status": "completed", "completed": true, "call_length": 1.5});
        assert_eq!(read(&call).unwrap().duration_sec, Some(90));
        let call = json!({"call_id": "c-1", "status": "completed", "corrected_duration": "11", "call_length": 0.18});
        assert_eq!(read(&call).unwrap().duration_sec, Some(11));
    }
}
