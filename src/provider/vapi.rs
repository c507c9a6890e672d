//! Vapi (`AI_CALL_PROVIDER=vapi`).
//!
//! A dial is `POST {url}/call` with `phoneNumberId` (`AI_CALL_PHONE_NUMBER_ID`),
//! `customer.number`, `assistantId` (the call's `scriptId`),
//! `assistantOverrides.variableValues` (its metadata) and `assistantOverrides.server.url`
//! (the webhook URL, with its reference and token) and `assistantOverrides.metadata` (the
//! call's metadata with the attempt's reference), with a bearer key. Vapi sends its server messages (`{message: {type, call,
//! …}}`) there; with `WEBHOOK_SECRET` set, each must carry `X-Vapi-Secret` equal to it, or
//! `x-signature`: hex HMAC-SHA256, keyed with it, of `{x-timestamp}.{body}`.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use poem::http::HeaderMap;
use serde_json::{Value, json};

use super::{
    DialRequest, ProviderReport, Verification, WebhookError,
    signature::{fresh, same, same_hex, sha256_hex},
    vendor::{
        Answered, Dialect, Http, calls_in, checked_id, header, json_body, metadata_with_reference,
        reason, reference_in, seconds, segment, signed_if, text,
    },
};
use crate::{
    config::{Config, Secret},
    domain::ProviderStatus,
};

pub const WEBHOOK_PATH: &str = "/api/v1/callbacks/vapi";
pub const API_URL: &str = "https://api.vapi.ai";

/// The age a signed message may have.
const TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// The Vapi dialect.
pub struct Vapi {
    phone_number_id: String,
    /// `WEBHOOK_SECRET`: Vapi's server secret (several during a rotation); none: the
    /// webhook URL's token is the proof.
    secrets: Vec<Secret>,
}

impl Vapi {
    pub fn from_config(config: &Config) -> Self {
        Self {
            phone_number_id: config.ai_call_phone_number_id.clone().unwrap_or_default(),
            secrets: config.webhook_secret_list(),
        }
    }

    /// The call's server: the webhook URL and, with `WEBHOOK_SECRET`, the header Vapi sends
    /// it with (`X-Vapi-Secret`, the first secret during a rotation).
    fn server(&self, url: &str) -> Value {
        match self.secrets.first() {
            Some(secret) => json!({"url": url, "headers": {"X-Vapi-Secret": secret.expose()}}),
            None => json!({"url": url}),
        }
    }
}

/// Where a call ended, from its `endedReason`. Vapi has hundreds of reasons and adds more;
/// one this service does not know is a failure.
fn ended(reason: Option<&str>) -> ProviderStatus {
    use ProviderStatus as P;
    let Some(reason) = reason else {
        return P::Failed;
    };
    match reason {
        "assistant-ended-call"
        | "assistant-ended-call-after-message-spoken"
        | "assistant-ended-call-with-hangup-task"
        | "assistant-forwarded-call"
        | "assistant-said-end-call-phrase"
        | "call.ending.hook-executed-say"
        | "call.ending.hook-executed-transfer"
        | "call.in-progress.sip-completed-call"
        | "call.in-progress.twilio-completed-call"
        | "customer-ended-call"
        | "customer-ended-call-after-warm-transfer-attempt"
        | "customer-ended-call-before-warm-transfer"
        | "customer-ended-call-during-transfer"
        | "exceeded-max-duration"
        | "silence-timed-out"
        | "vonage-completed" => P::Completed,
        "customer-did-not-answer"
        | "call.in-progress.error-providerfault-outbound-sip-408-request-timeout"
        | "call.in-progress.error-providerfault-outbound-sip-480-temporarily-unavailable" => {
            P::NoAnswer
        }
        "customer-busy" => P::Busy,
        "voicemail" => P::Voicemail,
        // The organisation's concurrency limit, or the number's daily limit: the call was
        // not placed (`call.start.*`), so it is not an attempt. (Vapi's own worker trouble,
        // `worker-shutdown` and `…-worker-not-available`, may come after the person was
        // connected: a failure, counted.)
        "call.start.error-subscription-concurrency-limit-reached"
        | "call.start.error-vapi-number-outbound-daily-limit" => P::Throttled,
        _ => P::Failed,
    }
}

/// A progress `status` as Vapi words it.
fn progress(status: Option<&str>) -> ProviderStatus {
    match status {
        Some("queued" | "scheduled") => ProviderStatus::Queued,
        Some("ringing") => ProviderStatus::Ringing,
        _ => ProviderStatus::InProgress,
    }
}

fn report(
    call: &Value,
    status: ProviderStatus,
    ended_reason: Option<&str>,
    duration: Option<f64>,
    kind: &str,
) -> Result<ProviderReport, WebhookError> {
    let id = checked_id(text(call, "id"))?;
    let duration = duration.or_else(|| {
        let started = DateTime::parse_from_rfc3339(text(call, "startedAt")?).ok()?;
        let ended = DateTime::parse_from_rfc3339(text(call, "endedAt")?).ok()?;
        Some((ended - started).num_milliseconds() as f64 / 1000.0)
    });
    let why = (status.is_final() && status != ProviderStatus::Completed)
        .then(|| format!("vapi: {}", reason(ended_reason.unwrap_or("(no reason)"))));
    Ok(ProviderReport {
        provider_call_id: id.clone(),
        status,
        duration_sec: duration.and_then(seconds).filter(|_| status.is_final()),
        reason: why,
        reference: reference_in(call.pointer("/assistantOverrides/metadata")),
        body: json!({"id": id, "type": reason(kind), "status": text(call, "status"), "endedReason": ended_reason.map(reason)}),
    })
}

impl Dialect for Vapi {
    const NAME: &'static str = "vapi";
    const WEBHOOK_PATH: &'static str = WEBHOOK_PATH;
    const LIST_LIMIT: usize = 1000;

    fn dial(&self, http: &Http, request: &DialRequest) -> reqwest::RequestBuilder {
        let body = json!({
            "phoneNumberId": self.phone_number_id,
            "customer": {"number": request.to},
            "assistantId": request.script_id,
            // Vapi's call has no top-level metadata (it refuses unknown fields): the
            // reference goes in the overrides, which every webhook and look-up echo.
            "assistantOverrides": {
                "variableValues": request.metadata,
                "metadata": metadata_with_reference(request),
                "server": self.server(&request.webhook_url),
            },
        });
        http.client
            .post(http.url("/call"))
            .bearer_auth(http.key.expose())
            .json(&body)
    }

    fn answer(&self, answer: &Value) -> Answered {
        // A call held back by the concurrency limit (`subscriptionLimits.concurrencyBlocked`)
        // exists all the same: Vapi either places it once a slot frees or ends it with its
        // concurrency reason, which the webhook or a look-up then reads as not an attempt.
        // Taken as accepted, so that its id is bound and its end lands on this attempt.
        Answered::Accepted(text(answer, "id").map(str::to_owned))
    }

    fn is_rate_limit(&self, status: reqwest::StatusCode, text: &str) -> bool {
        status == reqwest::StatusCode::TOO_MANY_REQUESTS
            || (status.is_client_error() && text.to_ascii_lowercase().contains("concurrency"))
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
        if let Some(given) = header(headers, "x-vapi-secret") {
            return signed_if(
                self.secrets
                    .iter()
                    .any(|secret| same(secret.expose(), given)),
            );
        }
        let (Some(given), Some(timestamp)) = (
            header(headers, "x-signature"),
            header(headers, "x-timestamp"),
        ) else {
            return Verification::Refused;
        };
        if !fresh(timestamp, TOLERANCE) {
            return Verification::Refused;
        }
        let given = given.trim();
        let given = given.strip_prefix("sha256=").unwrap_or(given);
        let valid = self.secrets.iter().any(|secret| {
            let expected = sha256_hex(
                secret.expose().as_bytes(),
                &[timestamp.trim().as_bytes(), b".", body],
            );
            same_hex(&expected, given)
        });
        signed_if(valid)
    }

    fn proof(&self) -> &'static str {
        if self.secrets.is_empty() {
            "the token of each attempt's webhook URL (set WEBHOOK_SECRET to Vapi's server secret to check it too)"
        } else {
            "Vapi's server secret (X-Vapi-Secret, or x-signature keyed with WEBHOOK_SECRET)"
        }
    }

    fn read_webhook(&self, body: &[u8]) -> Result<ProviderReport, WebhookError> {
        let body = json_body(body)?;
        let message = body
            .get("message")
            .filter(|m| m.is_object())
            .ok_or_else(|| WebhookError::Body("`message` is missing".into()))?;
        let kind = text(message, "type")
            .ok_or_else(|| WebhookError::Body("`message.type` is missing".into()))?;
        let call = message
            .get("call")
            .filter(|c| c.is_object())
            .ok_or_else(|| WebhookError::Body("`message.call` is missing".into()))?;
        match kind {
            "end-of-call-report" => {
                let ended_reason = text(message, "endedReason").or(text(call, "endedReason"));
                let duration = message
                    .get("durationSeconds")
                    .and_then(Value::as_f64)
                    .or_else(|| {
                        message
                            .get("durationMs")
                            .and_then(Value::as_f64)
                            .map(|ms| ms / 1000.0)
                    });
                report(call, ended(ended_reason), ended_reason, duration, kind)
            }
            "status-update" => {
                let status = text(message, "status");
                if status == Some("ended") {
                    // The end comes with its report; `ended` here is progress.
                    return report(call, ProviderStatus::InProgress, None, None, kind);
                }
                report(call, progress(status), None, None, kind)
            }
            // Transcripts, speech and conversation updates, …: progress on the timeline.
            _ => report(call, ProviderStatus::InProgress, None, None, kind),
        }
    }

    fn look_up(&self, http: &Http, provider_call_id: &str) -> reqwest::RequestBuilder {
        http.client
            .get(http.url(&format!("/call/{}", segment(provider_call_id))))
            .bearer_auth(http.key.expose())
    }

    fn read_call(&self, call: &Value) -> Option<ProviderReport> {
        let status =
            text(call, "status").filter(|s| !matches!(*s, "not-found" | "deletion-failed"))?;
        if status == "ended" {
            let ended_reason = text(call, "endedReason");
            report(call, ended(ended_reason), ended_reason, None, "call").ok()
        } else {
            report(call, progress(Some(status)), None, None, "call").ok()
        }
    }

    fn list(
        &self,
        http: &Http,
        request: &DialRequest,
        since: DateTime<Utc>,
    ) -> reqwest::RequestBuilder {
        http.client
            .get(http.url("/call"))
            .bearer_auth(http.key.expose())
            .query(&[
                ("phoneNumberId", self.phone_number_id.as_str()),
                ("assistantId", request.script_id.as_str()),
                (
                    "createdAtGe",
                    &since.to_rfc3339_opts(SecondsFormat::Millis, true),
                ),
                ("limit", "1000"),
            ])
    }

    fn listed<'v>(&self, answer: &'v Value) -> Vec<&'v Value> {
        calls_in(answer, "results")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_reasons_follow_the_mapping() {
        use ProviderStatus as P;
        for (reason, expected) in [
            ("customer-did-not-answer", P::NoAnswer),
            ("customer-busy", P::Busy),
            ("voicemail", P::Voicemail),
            ("customer-ended-call", P::Completed),
            ("assistant-ended-call", P::Completed),
            ("silence-timed-out", P::Completed),
            ("exceeded-max-duration", P::Completed),
            ("pipeline-error-openai-llm-failed", P::Failed),
            ("twilio-failed-to-connect-call", P::Failed),
            ("call.start.error-get-assistant", P::Failed),
            (
                "call.in-progress.error-providerfault-outbound-sip-480-temporarily-unavailable",
                P::NoAnswer,
            ),
            (
                "call.start.error-subscription-concurrency-limit-reached",
                P::Throttled,
            ),
            ("worker-shutdown", P::Failed),
            (
                "call.in-progress.error-vapifault-worker-not-available",
                P::Failed,
            ),
            ("a-reason-from-next-year", P::Failed),
        ] {
            assert_eq!(ended(Some(reason)), expected, "{reason}");
        }
    }
}
