//! One error type for every route, rendered as the failure envelope, and the catch-all that
//! gives the same envelope to the errors raised before a handler runs (bad JSON, bad
//! parameters, unknown routes, oversized bodies).

use poem::{IntoResponse, Response, http::StatusCode};
use poem_openapi::{ApiResponse, payload::Json};

use super::models::{ErrorDetail, ErrorEnvelope, ErrorInfo};
use crate::{db::DbError, domain::FieldError};

/// A failure answered to the client. Only `Internal` is the service's fault; its body says
/// nothing about the cause, which goes to the log instead.
#[derive(ApiResponse, Debug)]
pub enum ApiError {
    /// The request is malformed or invalid; nothing was written.
    #[oai(status = 400)]
    BadRequest(Json<ErrorEnvelope>),
    /// `API_KEYS` is set and the request does not carry one of them; or a webhook that
    /// proves nothing of its origin.
    #[oai(status = 401)]
    Unauthorized(Json<ErrorEnvelope>),
    /// No such call.
    #[oai(status = 404)]
    NotFound(Json<ErrorEnvelope>),
    /// The call is not in a state that allows this, or the Idempotency-Key was used with
    /// another body.
    #[oai(status = 409)]
    Conflict(Json<ErrorEnvelope>),
    /// The request is well formed but the service will not act on it: the number is on the
    /// suppression (do-not-call) list.
    #[oai(status = 422)]
    Unprocessable(Json<ErrorEnvelope>),
    /// The request body is larger than the route accepts.
    #[oai(status = 413)]
    PayloadTooLarge(Json<ErrorEnvelope>),
    /// The body is not `application/json`.
    #[oai(status = 415)]
    UnsupportedMediaType(Json<ErrorEnvelope>),
    /// Something failed on the service's side; the request may be retried.
    #[oai(status = 500)]
    Internal(Json<ErrorEnvelope>),
    /// The database is unreachable; the request may be retried.
    #[oai(status = 503)]
    Unavailable(Json<ErrorEnvelope>),
}

pub fn envelope(
    code: &str,
    message: impl Into<String>,
    details: Vec<ErrorDetail>,
) -> Json<ErrorEnvelope> {
    Json(ErrorEnvelope {
        success: false,
        error: ErrorInfo {
            code: code.to_owned(),
            message: message.into(),
            details,
        },
    })
}

impl ApiError {
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::BadRequest(envelope(code, message, Vec::new()))
    }

    /// Field problems of one request body.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let message = errors
            .iter()
            .map(|e| e.message.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        let details = errors
            .into_iter()
            .map(|e| ErrorDetail {
                index: None,
                field: Some(e.field),
                message: e.message,
            })
            .collect();
        Self::BadRequest(envelope("VALIDATION_ERROR", message, details))
    }

    pub fn not_found(id: uuid::Uuid) -> Self {
        Self::NotFound(envelope(
            "CALL_NOT_FOUND",
            format!("no call has the id {id}"),
            Vec::new(),
        ))
    }

    pub fn unauthorized(code: &str, message: impl Into<String>) -> Self {
        Self::Unauthorized(envelope(code, message, Vec::new()))
    }

    pub fn conflict(code: &str, message: impl Into<String>) -> Self {
        Self::Conflict(envelope(code, message, Vec::new()))
    }

    /// Logs the cause and answers an opaque 500 (or 503 when the database is out of reach).
    pub fn internal(err: &dyn std::error::Error) -> Self {
        tracing::error!(error = %err, "request failed");
        Self::Internal(envelope(
            "INTERNAL_ERROR",
            "the service failed to handle the request; try again later",
            Vec::new(),
        ))
    }

    /// Maps a database error on a call to its answer.
    pub fn from_db(err: DbError, id: uuid::Uuid) -> Self {
        match err {
            DbError::NotFound => Self::not_found(id),
            DbError::NotPending(status) => Self::conflict(
                "CALL_NOT_PENDING",
                format!(
                    "call {id} is {}; only PENDING calls can be changed",
                    status.as_str()
                ),
            ),
            DbError::IdempotencyConflict => Self::conflict(
                "IDEMPOTENCY_KEY_REUSED",
                "this Idempotency-Key was used within 24 hours with a different request body",
            ),
            DbError::Suppressed(calls) => Self::suppressed(&calls, false),
            DbError::Campaign(refusal) => Self::campaign(refusal, "take this change"),
            DbError::Other(err) => Self::from_sqlx(err),
        }
    }

    /// A campaign that is unknown (404 `CAMPAIGN_NOT_FOUND`) or cannot `what` from its status
    /// (409: `CAMPAIGN_CANCELLED`, `CAMPAIGN_COMPLETED`, or `CAMPAIGN_NOT_ACTIVE` /
    /// `CAMPAIGN_NOT_PAUSED`).
    pub fn campaign(refusal: crate::db::CampaignRefusal, what: &str) -> Self {
        use crate::{db::CampaignRefusal, domain::CampaignStatus};
        match refusal {
            CampaignRefusal::NotFound(id) => Self::NotFound(envelope(
                "CAMPAIGN_NOT_FOUND",
                format!("no campaign has the id {id}"),
                Vec::new(),
            )),
            CampaignRefusal::Status(id, status) => Self::conflict(
                match status {
                    CampaignStatus::Cancelled => "CAMPAIGN_CANCELLED",
                    CampaignStatus::Completed => "CAMPAIGN_COMPLETED",
                    CampaignStatus::Active => "CAMPAIGN_NOT_PAUSED",
                    CampaignStatus::Paused => "CAMPAIGN_NOT_ACTIVE",
                },
                format!(
                    "campaign {id} is {}: it cannot {what} from there",
                    status.as_str()
                ),
            ),
        }
    }

    /// 422 `NUMBER_SUPPRESSED`: calls to numbers on the suppression list, by index in a batch.
    pub fn suppressed(calls: &[crate::db::Suppressed], batch: bool) -> Self {
        let details: Vec<ErrorDetail> = calls
            .iter()
            .map(|call| ErrorDetail {
                index: batch.then_some(call.index as u32),
                field: Some("to".into()),
                message: format!("`to` {} is on the suppression list", call.number),
            })
            .collect();
        let message = if batch {
            format!(
                "{} of the calls are to suppressed numbers (items {}); nothing was created. \
                 Send `\"skipSuppressed\": true` to leave them out instead",
                calls.len(),
                calls
                    .iter()
                    .map(|c| c.index.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            "`to` is on the suppression list: it is never called while suppressed".to_owned()
        };
        Self::Unprocessable(envelope("NUMBER_SUPPRESSED", message, details))
    }

    pub fn from_sqlx(err: sqlx::Error) -> Self {
        if crate::db::is_unavailable(&err) {
            tracing::error!(error = %err, "database unreachable");
            return Self::Unavailable(envelope(
                "DATABASE_UNAVAILABLE",
                "the database is unreachable; try again later",
                Vec::new(),
            ));
        }
        Self::internal(&err)
    }
}

impl From<DbError> for ApiError {
    fn from(err: DbError) -> Self {
        match err {
            DbError::Other(err) => Self::from_sqlx(err),
            // Callers that know the id use `from_db`; these never reach here without one.
            other => Self::internal(&other),
        }
    }
}

/// Renders every error that did not come out of a handler as the failure envelope.
pub async fn render(err: poem::Error) -> Response {
    if err.is_from_response() {
        return err.into_response();
    }
    let status = err.status();
    let (code, message) = classify(&err, status);
    if status.is_server_error() {
        tracing::error!(error = %err, %status, "request failed");
    }
    let mut response = envelope(code, message, Vec::new()).into_response();
    response.set_status(status);
    response
}

fn classify(err: &poem::Error, status: StatusCode) -> (&'static str, String) {
    use poem_openapi::error::{
        ContentTypeError, ParseParamError, ParsePathError, ParseRequestPayloadError,
    };
    if let Some(e) = err.downcast_ref::<ParseRequestPayloadError>() {
        return (
            "INVALID_BODY",
            format!("the request body is not valid: {}", e.reason),
        );
    }
    if let Some(e) = err.downcast_ref::<ParseParamError>() {
        return (
            "INVALID_PARAMETER",
            format!("parameter `{}` is not valid: {}", e.name, e.reason),
        );
    }
    if err.is::<ParsePathError>() {
        // The path parameters that can fail to parse are the ids of calls and campaigns.
        return ("INVALID_ID", "the id in the path is not a UUID".to_owned());
    }
    if let Some(e) = err.downcast_ref::<ContentTypeError>() {
        let message = match e {
            ContentTypeError::ExpectContentType => {
                "send the body as JSON with `Content-Type: application/json`".to_owned()
            }
            ContentTypeError::NotSupported { content_type } => {
                format!("content type `{content_type}` is not supported; send `application/json`")
            }
        };
        return ("UNSUPPORTED_MEDIA_TYPE", message);
    }
    match status {
        StatusCode::NOT_FOUND => ("NOT_FOUND", "no such route".to_owned()),
        StatusCode::METHOD_NOT_ALLOWED => (
            "METHOD_NOT_ALLOWED",
            "this route does not accept that method".to_owned(),
        ),
        StatusCode::PAYLOAD_TOO_LARGE => (
            "PAYLOAD_TOO_LARGE",
            "the request body is larger than this route accepts".to_owned(),
        ),
        StatusCode::UNAUTHORIZED => (
            "UNAUTHORIZED",
            "send `Authorization: Bearer <key>` with one of the service's API keys".to_owned(),
        ),
        s if s.is_server_error() => (
            "INTERNAL_ERROR",
            "the service failed to handle the request; try again later".to_owned(),
        ),
        _ => ("BAD_REQUEST", err.to_string()),
    }
}
