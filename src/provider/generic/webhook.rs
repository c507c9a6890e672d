//! The generic provider's webhook: `{"callId", "status", "durationSec"?, "completedAt"?,
//! "reason"?}`, read from the exact bytes received (which its signature covers) and
//! documented in the OpenAPI document as this schema.

use chrono::DateTime;
use poem_openapi::{Enum, Object, types::ParseFromJSON as _};

use crate::{
    api::models::Text,
    domain::{ProviderStatus, is_provider_call_id},
    provider::{ProviderReport, WebhookError},
};

/// A call's status as the provider reports it.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum WebhookStatus {
    Queued,
    Ringing,
    InProgress,
    Completed,
    Failed,
    Busy,
    NoAnswer,
    Voicemail,
}

impl From<WebhookStatus> for ProviderStatus {
    fn from(status: WebhookStatus) -> Self {
        match status {
            WebhookStatus::Queued => Self::Queued,
            WebhookStatus::Ringing => Self::Ringing,
            WebhookStatus::InProgress => Self::InProgress,
            WebhookStatus::Completed => Self::Completed,
            WebhookStatus::Failed => Self::Failed,
            WebhookStatus::Busy => Self::Busy,
            WebhookStatus::NoAnswer => Self::NoAnswer,
            WebhookStatus::Voicemail => Self::Voicemail,
        }
    }
}

/// What the provider reports about one attempt.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct WebhookPayload {
    /// The provider's id of the attempt, as it answered the dial request: 1 to 255
    /// letters, digits and `_ - . : ~ + / = @`.
    pub call_id: Text,
    pub status: WebhookStatus,
    /// Length of the call in seconds, for `COMPLETED`.
    #[oai(nullable)]
    pub duration_sec: Option<i64>,
    /// When the call ended (RFC 3339).
    #[oai(nullable)]
    pub completed_at: Option<Text>,
    /// Why the call did not complete, for the failures.
    #[oai(nullable)]
    pub reason: Option<Text>,
}

const MAX_REASON_LEN: usize = 2000;
const MAX_DURATION_SEC: i64 = 7 * 24 * 3600;

fn invalid(message: impl Into<String>) -> WebhookError {
    WebhookError::Invalid(message.into())
}

/// Reads and checks a webhook body.
pub(super) fn read(body: &[u8]) -> Result<ProviderReport, WebhookError> {
    let value = if body.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(body).map_err(|err| WebhookError::Body(err.to_string()))?
    };
    let body = WebhookPayload::parse_from_json(Some(value))
        .map_err(|err| WebhookError::Body(err.into_message()))?;
    let call_id = body.call_id.0;
    if !is_provider_call_id(&call_id) {
        return Err(invalid(
            "`callId` must hold 1 to 255 letters, digits and `_ - . : ~ + / = @`",
        ));
    }
    let duration_sec = match body.duration_sec {
        Some(d) if !(0..=MAX_DURATION_SEC).contains(&d) => {
            return Err(invalid(format!(
                "`durationSec` must be between 0 and {MAX_DURATION_SEC}"
            )));
        }
        Some(d) => Some(d as i32),
        None => None,
    };
    let completed_at = body.completed_at.map(|at| at.0);
    if let Some(at) = &completed_at {
        DateTime::parse_from_rfc3339(at).map_err(|_| {
            invalid("`completedAt` must be an RFC 3339 time, e.g. 2025-07-25T10:00:00Z")
        })?;
    }
    let reason = body.reason.as_ref().map(|r| {
        r.0.chars()
            .filter(|c| *c != '\0')
            .take(MAX_REASON_LEN)
            .collect::<String>()
    });
    let status = ProviderStatus::from(body.status);
    let mut echo = serde_json::json!({"callId": call_id, "status": status.as_str()});
    if let Some(d) = duration_sec {
        echo["durationSec"] = d.into();
    }
    if let Some(at) = completed_at {
        echo["completedAt"] = at.into();
    }
    if let Some(r) = &reason {
        echo["reason"] = r.clone().into();
    }
    Ok(ProviderReport {
        provider_call_id: call_id,
        status,
        duration_sec,
        reason,
        reference: None,
        body: echo,
    })
}
