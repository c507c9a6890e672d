//! `POST /api/v1/callbacks/call-status`: the provider reports how an attempt went.

use std::sync::Arc;

use chrono::DateTime;
use poem_openapi::{Enum, Object, OpenApi, param::Query, payload::Json};
use uuid::Uuid;

use super::{ApiState, ApiTags, error::ApiError, models::Text};
use crate::db::{self, DbError, ProviderStatus, WebhookEffect, WebhookOutcome, WebhookUpdate};

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

/// The webhook was taken.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct WebhookAck {
    /// True when it repeated a final webhook already applied, and changed nothing.
    pub duplicate: bool,
}

/// `{"success": true, "data": {"duplicate": …}}`.
#[derive(Object, Clone, Debug)]
pub struct WebhookAckEnvelope {
    pub success: bool,
    pub data: WebhookAck,
}

pub struct WebhooksApi {
    pub state: Arc<ApiState>,
}

const MAX_REASON_LEN: usize = 2000;
const MAX_DURATION_SEC: i64 = 7 * 24 * 3600;

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("INVALID_WEBHOOK", message)
}

/// `{call id}.{attempt}`, as the dispatcher writes it into the webhook URL.
fn parse_reference(raw: Option<&str>) -> Result<Option<(Uuid, i32)>, ApiError> {
    raw.map(parse_one_reference).transpose()
}

fn parse_one_reference(raw: &str) -> Result<(Uuid, i32), ApiError> {
    let bad = || {
        ApiError::bad_request(
            "INVALID_PARAMETER",
            "`ref` is not a call reference of this service",
        )
    };
    let (id, attempt) = raw.split_once('.').ok_or_else(bad)?;
    let id = Uuid::parse_str(id).map_err(|_| bad())?;
    let attempt: i32 = attempt.parse().map_err(|_| bad())?;
    if attempt < 1 {
        return Err(bad());
    }
    Ok((id, attempt))
}

/// What proves a webhook's origin, found before its body is read.
struct Proof {
    /// The verified reference of the URL, if it carried one.
    reference: Option<(Uuid, i32)>,
    /// Signed (`WEBHOOK_SECRET`) or carrying a valid token.
    authenticated: bool,
    /// The signed webhook's `webhook-id`.
    webhook_id: Option<String>,
}

fn validate(body: WebhookPayload, proof: Proof) -> Result<WebhookUpdate, ApiError> {
    let call_id = body.call_id.0;
    if !crate::domain::is_provider_call_id(&call_id) {
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
    let mut echo = serde_json::json!({"callId": call_id, "status": ProviderStatus::from(body.status).as_str()});
    if let Some(d) = duration_sec {
        echo["durationSec"] = d.into();
    }
    if let Some(at) = completed_at {
        echo["completedAt"] = at.into();
    }
    if let Some(r) = &reason {
        echo["reason"] = r.clone().into();
    }
    Ok(WebhookUpdate {
        provider_call_id: call_id,
        status: body.status.into(),
        duration_sec,
        reason,
        reference: proof.reference,
        authenticated: proof.authenticated,
        webhook_id: proof.webhook_id,
        body: echo,
    })
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Provider webhook: call status
    ///
    /// The provider reports the progress and the outcome of one attempt. `QUEUED`,
    /// `RINGING` and `IN_PROGRESS` are recorded on the timeline; `COMPLETED` completes the
    /// call; `FAILED`, `BUSY`, `NO_ANSWER` and `VOICEMAIL` fail the attempt (retried with
    /// backoff while attempts remain). Only the attempt named by `callId` is affected; a
    /// repeat of a final webhook is answered 200 and changes nothing.
    ///
    /// Who may send it: with `WEBHOOK_SECRET` set, the request must carry a valid Standard
    /// Webhooks signature (`webhook-id`, `webhook-timestamp`, `webhook-signature`), else
    /// 401; an exact replay of a `webhook-id` is a duplicate. Without it, the URL the
    /// service handed to the provider for the attempt carries `ref` and `token`, and a
    /// webhook naming a known `callId` without the token of its attempt is 401. Not behind
    /// `API_KEYS`.
    #[oai(
        path = "/callbacks/call-status",
        method = "post",
        operation_id = "callStatusWebhook"
    )]
    async fn call_status(
        &self,
        body: Json<WebhookPayload>,
        /// The service's own reference to the attempt, part of the webhook URL it handed
        /// to the provider.
        #[oai(name = "ref")]
        reference: Query<Option<String>>,
        /// The attempt's token, beside `ref` in the webhook URL.
        token: Query<Option<String>>,
        request: &poem::Request,
    ) -> Result<Json<WebhookAckEnvelope>, ApiError> {
        let reference = parse_reference(reference.0.as_deref())
            .inspect_err(|_| crate::metrics::webhook("invalid"))?;
        let reference = match reference {
            Some((id, attempt)) => {
                let valid = token
                    .0
                    .as_deref()
                    .is_some_and(|token| self.state.tokens.verify(id, attempt, token));
                if !valid {
                    crate::metrics::webhook("bad_token");
                    return Err(ApiError::unauthorized(
                        "INVALID_WEBHOOK_TOKEN",
                        "the webhook URL's `token` is missing or is not the token of its `ref`",
                    ));
                }
                Some((id, attempt))
            }
            None => None,
        };
        // The guard has verified the signature already when a secret is set.
        let signed = !self.state.webhook_verifiers.is_empty();
        let proof = Proof {
            reference,
            authenticated: signed || reference.is_some(),
            webhook_id: signed
                .then(|| request.headers().get("webhook-id"))
                .flatten()
                .and_then(|v| v.to_str().ok())
                .filter(|id| !id.is_empty() && id.len() <= 255)
                .map(str::to_owned),
        };
        let update = validate(body.0, proof).inspect_err(|_| crate::metrics::webhook("invalid"))?;
        let (provider_call_id, status) = (update.provider_call_id.clone(), update.status);
        let applied = self
            .state
            .webhooks
            .submit(db::key_of(&provider_call_id), update)
            .await
            .map_err(|lost| {
                crate::metrics::webhook("error");
                ApiError::internal(&lost)
            })?;
        if let Ok(WebhookOutcome {
            retry: Some(decision),
            ..
        }) = &applied
        {
            crate::metrics::retry_decided(*decision);
        }
        let effect = applied.map(|outcome| outcome.effect);
        crate::metrics::webhook(match &effect {
            Ok(WebhookEffect::Applied) => "applied",
            Ok(WebhookEffect::Duplicate) => "duplicate",
            Ok(WebhookEffect::Unauthenticated) => "unauthenticated",
            Ok(WebhookEffect::Mismatch) => "mismatch",
            Err(DbError::NotFound) => "unknown_call",
            Err(_) => "error",
        });
        match effect {
            Ok(WebhookEffect::Unauthenticated) => {
                tracing::warn!(%provider_call_id, "webhook refused: neither signed nor carrying its token");
                Err(ApiError::unauthorized(
                    "WEBHOOK_NOT_AUTHENTICATED",
                    "this webhook proves nothing of its origin: it must come to the URL the \
                     service handed to the provider, with its `ref` and `token`",
                ))
            }
            Ok(WebhookEffect::Mismatch) => Err(ApiError::conflict(
                "WEBHOOK_MISMATCH",
                "the `callId` belongs to another attempt than the one this webhook URL names",
            )),
            Ok(effect) => {
                tracing::info!(%provider_call_id, status = status.as_str(), ?effect, "webhook");
                Ok(Json(WebhookAckEnvelope {
                    success: true,
                    data: WebhookAck {
                        duplicate: effect == WebhookEffect::Duplicate,
                    },
                }))
            }
            Err(DbError::NotFound) => Err(ApiError::NotFound(super::error::envelope(
                "UNKNOWN_CALL_ID",
                format!("no attempt of any call has the provider id `{provider_call_id}`"),
                Vec::new(),
            ))),
            Err(err) => Err(err.into()),
        }
    }
}
