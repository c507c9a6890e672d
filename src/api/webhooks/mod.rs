//! The provider's webhook routes, one per dialect: the progress and the outcome of one
//! attempt, verified and read by the provider's dialect (`provider::CallProvider`),
//! authenticated by the token of the attempt's webhook URL when the dialect does not sign,
//! and applied by group commit. Only the route of the configured `AI_CALL_PROVIDER` takes
//! webhooks; the others answer 404.

mod documented;
mod raw;

use std::sync::Arc;

use poem::web::Data;

use poem_openapi::{
    Object, OpenApi,
    param::Query,
    payload::{Form, Json},
};
use uuid::Uuid;

use super::{ApiState, ApiTags, error::ApiError};
use crate::{
    db::{self, DbError},
    domain::{
        ReportSource, WebhookUpdate,
        decide::{WebhookEffect, WebhookOutcome},
    },
    provider::{Verification, WebhookError, WebhookPayload},
};
use documented::{BlandWebhook, RetellWebhook, TwilioStatusCallback, VapiWebhook};
use raw::RawWebhook;

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
    raw.map(|raw| {
        crate::provider::parse_reference(raw).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_PARAMETER",
                "`ref` is not a call reference of this service",
            )
        })
    })
    .transpose()
}

fn unreadable(err: WebhookError) -> ApiError {
    match err {
        WebhookError::Body(_) => ApiError::bad_request("INVALID_BODY", err.to_string()),
        WebhookError::Invalid(message) => ApiError::bad_request("INVALID_WEBHOOK", message),
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Webhooks")]
impl WebhooksApi {
    /// Provider webhook: call status (generic)
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
    /// `API_KEYS`. Taken only with `AI_CALL_PROVIDER=generic`, else 404.
    #[oai(
        path = "/callbacks/call-status",
        method = "post",
        operation_id = "callStatusWebhook"
    )]
    async fn call_status(
        &self,
        state: Data<&Arc<ApiState>>,
        body: RawWebhook<Json<WebhookPayload>>,
        /// The service's own reference to the attempt, part of the webhook URL it handed
        /// to the provider.
        #[oai(name = "ref")]
        reference: Query<Option<String>>,
        /// The attempt's token, beside `ref` in the webhook URL.
        token: Query<Option<String>>,
        request: &poem::Request,
    ) -> Result<Json<WebhookAckEnvelope>, ApiError> {
        receive(
            &state,
            "generic",
            &body.bytes,
            reference.0,
            token.0,
            request,
        )
        .await
    }

    /// Provider webhook: Twilio status callback
    ///
    /// Twilio's status callbacks (`StatusCallback` of each dial, form-encoded), signed by
    /// `X-Twilio-Signature` with the account's auth token over this URL as Twilio
    /// requested it (`WEBHOOK_BASE_URL`, this path and its query) and the sorted form
    /// parameters; a missing or wrong signature is 401. `initiated`, `ringing` and
    /// `in-progress` are progress; `completed` completes the call (`VOICEMAIL` when
    /// `AnsweredBy` says a machine answered); `busy`, `no-answer`, `failed` and `canceled`
    /// fail the attempt. Taken only with `AI_CALL_PROVIDER=twilio`, else 404.
    #[oai(
        path = "/callbacks/twilio",
        method = "post",
        operation_id = "twilioWebhook"
    )]
    async fn twilio(
        &self,
        state: Data<&Arc<ApiState>>,
        body: RawWebhook<Form<TwilioStatusCallback>>,
        /// The service's own reference to the attempt.
        #[oai(name = "ref")]
        reference: Query<Option<String>>,
        /// The attempt's token, beside `ref`.
        token: Query<Option<String>>,
        request: &poem::Request,
    ) -> Result<Json<WebhookAckEnvelope>, ApiError> {
        receive(&state, "twilio", &body.bytes, reference.0, token.0, request).await
    }

    /// Provider webhook: Retell
    ///
    /// Retell's webhooks (`{event, call}`), signed by `X-Retell-Signature` with the API key
    /// and at most 5 minutes old, else 401. `call_started` is progress; `call_ended` (and
    /// `call_analyzed`) end the attempt as its `disconnection_reason` says. Set this URL as
    /// the agent's (or the account's) webhook URL. Taken only with
    /// `AI_CALL_PROVIDER=retell`, else 404.
    #[oai(
        path = "/callbacks/retell",
        method = "post",
        operation_id = "retellWebhook"
    )]
    async fn retell(
        &self,
        state: Data<&Arc<ApiState>>,
        body: RawWebhook<Json<RetellWebhook>>,
        request: &poem::Request,
    ) -> Result<Json<WebhookAckEnvelope>, ApiError> {
        receive(&state, "retell", &body.bytes, None, None, request).await
    }

    /// Provider webhook: Vapi
    ///
    /// Vapi's server messages (`{message: {type, call, …}}`): `status-update` is progress,
    /// `end-of-call-report` ends the attempt as its `endedReason` says. With
    /// `WEBHOOK_SECRET` set (Vapi's server secret), each must carry `X-Vapi-Secret` equal to
    /// it or an `x-signature` HMAC over `{x-timestamp}.{body}`, else 401; without it, the
    /// URL's `ref` and `token`. Taken only with `AI_CALL_PROVIDER=vapi`, else 404.
    #[oai(
        path = "/callbacks/vapi",
        method = "post",
        operation_id = "vapiWebhook"
    )]
    async fn vapi(
        &self,
        state: Data<&Arc<ApiState>>,
        body: RawWebhook<Json<VapiWebhook>>,
        /// The service's own reference to the attempt.
        #[oai(name = "ref")]
        reference: Query<Option<String>>,
        /// The attempt's token, beside `ref`.
        token: Query<Option<String>>,
        request: &poem::Request,
    ) -> Result<Json<WebhookAckEnvelope>, ApiError> {
        receive(&state, "vapi", &body.bytes, reference.0, token.0, request).await
    }

    /// Provider webhook: Bland
    ///
    /// Bland's post-call webhook (the call's object; progress messages of
    /// `webhook_events` are recorded on the timeline). With `WEBHOOK_SECRET` set (Bland's
    /// signing secret), each must carry `X-Webhook-Signature`, hex HMAC-SHA256 of the body,
    /// else 401; without it, the URL's `ref` and `token`. Taken only with
    /// `AI_CALL_PROVIDER=bland`, else 404.
    #[oai(
        path = "/callbacks/bland",
        method = "post",
        operation_id = "blandWebhook"
    )]
    async fn bland(
        &self,
        state: Data<&Arc<ApiState>>,
        body: RawWebhook<Json<BlandWebhook>>,
        /// The service's own reference to the attempt.
        #[oai(name = "ref")]
        reference: Query<Option<String>>,
        /// The attempt's token, beside `ref`.
        token: Query<Option<String>>,
        request: &poem::Request,
    ) -> Result<Json<WebhookAckEnvelope>, ApiError> {
        receive(&state, "bland", &body.bytes, reference.0, token.0, request).await
    }
}

/// One webhook, whichever the dialect: verified already by the guard (by the provider's
/// scheme), its URL's token checked, read by the dialect, and applied by group commit.
async fn receive(
    state: &ApiState,
    dialect: &'static str,
    body: &[u8],
    reference: Option<String>,
    token: Option<String>,
    request: &poem::Request,
) -> Result<Json<WebhookAckEnvelope>, ApiError> {
    if state.provider.name() != dialect {
        return Err(ApiError::NotFound(super::error::envelope(
            "PROVIDER_NOT_CONFIGURED",
            format!(
                "this service speaks AI_CALL_PROVIDER={}; its webhooks go to {}",
                state.provider.name(),
                state.provider.webhook_path()
            ),
            Vec::new(),
        )));
    }
    let reference = parse_reference(reference.as_deref())
        .inspect_err(|_| crate::metrics::webhook("invalid"))?;
    let reference = match reference {
        Some((id, attempt)) => {
            let valid = token
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
        Some(WebhookSignature(Verification::Signed { webhook_id })) => (true, webhook_id.clone()),
        _ => (false, None),
    };
    let report = state
        .provider
        .read_webhook(body)
        .map_err(unreadable)
        .inspect_err(|_| crate::metrics::webhook("invalid"))?;
    // A signed body's own reference (the dial's metadata, echoed) is the vendor's word.
    let reference = reference.or(report.reference.filter(|_| signed));
    let update = WebhookUpdate {
        provider_call_id: report.provider_call_id,
        status: report.status,
        duration_sec: report.duration_sec,
        reason: report.reason,
        reference,
        authenticated: signed || reference.is_some(),
        webhook_id,
        body: report.body,
        source: ReportSource::Webhook,
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
