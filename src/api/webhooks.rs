//! The provider's webhook route: the progress and the outcome of one attempt, verified and
//! read by the provider's dialect (`provider::CallProvider`), authenticated by the token of
//! the attempt's webhook URL when the dialect does not sign, and applied by group commit.

use std::sync::Arc;

use poem::web::Data;

use poem_openapi::{Object, OpenApi, param::Query, payload::Json};
use uuid::Uuid;

use super::{ApiState, ApiTags, error::ApiError};
use crate::{
    db::{self, DbError},
    domain::{
        WebhookUpdate,
        decide::{WebhookEffect, WebhookOutcome},
    },
    provider::{GenericWebhook, Verification, WebhookError},
};

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

pub struct WebhooksApi;

/// What the provider's signature check found, set by the guard on the webhook route.
#[derive(Clone, Debug)]
pub struct WebhookSignature(pub Verification);

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

fn unreadable(err: WebhookError) -> ApiError {
    match err {
        WebhookError::Body(_) => ApiError::bad_request("INVALID_BODY", err.to_string()),
        WebhookError::Invalid(message) => ApiError::bad_request("INVALID_WEBHOOK", message),
    }
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
        state: Data<&Arc<ApiState>>,
        body: GenericWebhook,
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
                    .is_some_and(|token| state.tokens.verify(id, attempt, token));
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
        // The guard has checked the signature already, by the provider's scheme.
        let (signed, webhook_id) = match request.extensions().get::<WebhookSignature>() {
            Some(WebhookSignature(Verification::Signed { webhook_id })) => {
                (true, webhook_id.clone())
            }
            _ => (false, None),
        };
        let report = state
            .provider
            .read_webhook(&body.0)
            .map_err(unreadable)
            .inspect_err(|_| crate::metrics::webhook("invalid"))?;
        let update = WebhookUpdate {
            provider_call_id: report.provider_call_id,
            status: report.status,
            duration_sec: report.duration_sec,
            reason: report.reason,
            reference,
            authenticated: signed || reference.is_some(),
            webhook_id,
            body: report.body,
        };
        let (provider_call_id, status) = (update.provider_call_id.clone(), update.status);
        let applied = state
            .writers
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
