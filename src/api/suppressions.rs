//! `/api/v1/suppressions`: the do-not-call list. A number on it is never dialed while its
//! suppression is in force: creating a call to it is 422 `NUMBER_SUPPRESSED`, and a call
//! queued before is cancelled at its turn (`db::claim`).

use std::{collections::HashMap, sync::Arc};

use poem::web::Data;
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Path, Query},
    payload::Json,
};

use super::{
    ApiState, ApiTags, MAX_BATCH,
    error::{ApiError, envelope},
    models::{
        ErrorDetail, PutSuppressionRequest, Suppression, SuppressionBatchRequest,
        SuppressionEnvelope, SuppressionPage, SuppressionsEnvelope,
    },
    requests::{instant, invalid_items, page_and_limit, pagination, plus_decoded_as_space},
};
use crate::{
    db::{self, DbError, NewSuppression},
    domain::{FieldError, PhoneNumber},
};

/// Longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 500;

#[derive(ApiResponse)]
pub enum PutAnswer {
    /// The number was not suppressed; it is now.
    #[oai(status = 201)]
    Created(Json<SuppressionEnvelope>),
    /// The number's suppression was replaced.
    #[oai(status = 200)]
    Replaced(Json<SuppressionEnvelope>),
}

pub struct SuppressionsApi;

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Suppressions")]
impl SuppressionsApi {
    /// Suppress a number
    ///
    /// Puts the number on the do-not-call list, or replaces its suppression (201 new, 200
    /// replaced). Until `expiresAt` (or for ever without it), no call to it is created or
    /// dialed: calls already queued to it end `CANCELLED` at their turn.
    #[oai(
        path = "/suppressions/:number",
        method = "put",
        operation_id = "putSuppression"
    )]
    async fn put(
        &self,
        state: Data<&Arc<ApiState>>,
        /// The number, E.164 (`%2B` for the `+`); normalised like a call's `to`.
        number: Path<String>,
        body: Json<PutSuppressionRequest>,
    ) -> Result<PutAnswer, ApiError> {
        let number = path_number(&number.0)?;
        let reason =
            check_reason(&body.0.reason.0, "reason").map_err(|e| ApiError::validation(vec![e]))?;
        let expires_at = body
            .0
            .expires_at
            .map(|at| instant(at, "expiresAt"))
            .transpose()
            .map_err(|e| ApiError::validation(vec![e]))?;
        let item = NewSuppression {
            number,
            reason,
            expires_at,
        };
        let mut put = db::put_suppressions(&state.pool, std::slice::from_ref(&item)).await?;
        let (suppression, created) = put.pop().ok_or_else(|| ApiError::from(DbError::NotFound))?;
        tracing::info!(number = %suppression.number, created, "number suppressed");
        let answer = Json(SuppressionEnvelope::new(shown(suppression)));
        Ok(if created {
            PutAnswer::Created(answer)
        } else {
            PutAnswer::Replaced(answer)
        })
    }

    /// Get a number's suppression
    #[oai(
        path = "/suppressions/:number",
        method = "get",
        operation_id = "getSuppression"
    )]
    async fn get(
        &self,
        state: Data<&Arc<ApiState>>,
        /// The number, E.164 (`%2B` for the `+`).
        number: Path<String>,
    ) -> Result<Json<SuppressionEnvelope>, ApiError> {
        let number = path_number(&number.0)?;
        let found = db::get_suppression(&state.pool, &number)
            .await
            .map_err(|err| not_found(err, &number))?;
        Ok(Json(SuppressionEnvelope::new(shown(found))))
    }

    /// Lift a number's suppression
    #[oai(
        path = "/suppressions/:number",
        method = "delete",
        operation_id = "deleteSuppression"
    )]
    async fn delete(
        &self,
        state: Data<&Arc<ApiState>>,
        /// The number, E.164 (`%2B` for the `+`).
        number: Path<String>,
    ) -> Result<Json<SuppressionEnvelope>, ApiError> {
        let number = path_number(&number.0)?;
        let removed = db::delete_suppression(&state.pool, &number)
            .await
            .map_err(|err| not_found(err, &number))?;
        tracing::info!(number = %removed.number, "suppression lifted");
        Ok(Json(SuppressionEnvelope::new(shown(removed))))
    }

    /// List suppressions
    ///
    /// Newest first, expired ones included (their `expiresAt` is past).
    #[oai(
        path = "/suppressions",
        method = "get",
        operation_id = "listSuppressions"
    )]
    async fn list(
        &self,
        state: Data<&Arc<ApiState>>,
        /// Page number, from 1 (default 1).
        page: Query<Option<i64>>,
        /// Suppressions per page, 1 to 100 (default 10).
        limit: Query<Option<i64>>,
    ) -> Result<Json<SuppressionPage>, ApiError> {
        let (page, limit) = page_and_limit(page.0, limit.0)?;
        let (rows, total) = db::list_suppressions(&state.pool, page, limit).await?;
        Ok(Json(SuppressionPage {
            success: true,
            data: rows.into_iter().map(shown).collect(),
            pagination: pagination(page, limit, total),
        }))
    }

    /// Suppress up to 1000 numbers at once
    ///
    /// All or nothing, in one transaction: when any item is invalid (or names a number
    /// another item names too), the answer is 400 naming each bad item by its index, and
    /// nothing is written.
    #[oai(
        path = "/suppressions/batch",
        method = "post",
        operation_id = "putSuppressionsBatch"
    )]
    async fn batch(
        &self,
        state: Data<&Arc<ApiState>>,
        body: Json<SuppressionBatchRequest>,
    ) -> Result<Json<SuppressionsEnvelope>, ApiError> {
        let items = body.0.suppressions;
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(ApiError::bad_request(
                "INVALID_BATCH_SIZE",
                format!(
                    "`suppressions` must hold 1 to {MAX_BATCH} items; it holds {}",
                    items.len()
                ),
            ));
        }
        let total = items.len();
        let mut parsed = Vec::with_capacity(total);
        let mut details = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (index, item) in items.into_iter().enumerate() {
            let mut problems = Vec::new();
            let number = match PhoneNumber::parse(&item.number.0) {
                Ok(number) => {
                    if let Some(first) = seen.insert(number.as_str().to_owned(), index) {
                        problems.push(FieldError::new(
                            "number",
                            format!("`number` is the number of item {first} too"),
                        ));
                    }
                    Some(number)
                }
                Err(err) => {
                    problems.push(FieldError::new("number", format!("`number` {err}")));
                    None
                }
            };
            let reason = check_reason(&item.reason.0, "reason")
                .map_err(|e| problems.push(e))
                .ok();
            let expires_at = item
                .expires_at
                .map(|at| instant(at, "expiresAt"))
                .transpose()
                .map_err(|e| problems.push(e))
                .ok()
                .flatten();
            match (number, reason) {
                (Some(number), Some(reason)) if problems.is_empty() => {
                    parsed.push(NewSuppression {
                        number,
                        reason,
                        expires_at,
                    })
                }
                _ => details.extend(problems.into_iter().map(|e| ErrorDetail {
                    index: Some(index as u32),
                    field: Some(e.field),
                    message: e.message,
                })),
            }
        }
        if !details.is_empty() {
            return Err(invalid_items(
                details,
                total,
                "suppressions",
                "nothing was written",
            ));
        }
        let put = db::put_suppressions(&state.pool, &parsed).await?;
        tracing::info!(count = put.len(), "numbers suppressed");
        Ok(Json(SuppressionsEnvelope::new(
            put.into_iter().map(|(s, _)| shown(s)).collect(),
        )))
    }
}

fn shown(s: db::Suppression) -> Suppression {
    Suppression {
        number: s.number,
        reason: s.reason,
        expires_at: s.expires_at,
        created_at: s.created_at,
        updated_at: s.updated_at,
    }
}

/// The number in a path: `%2B` or a literal `+`, or a space where a client encoded the `+`
/// the way a query string would.
fn path_number(raw: &str) -> Result<PhoneNumber, ApiError> {
    PhoneNumber::parse(&plus_decoded_as_space(raw)).map_err(|err| {
        ApiError::bad_request("INVALID_NUMBER", format!("the number in the path {err}"))
    })
}

fn not_found(err: DbError, number: &PhoneNumber) -> ApiError {
    match err {
        DbError::NotFound => ApiError::NotFound(envelope(
            "SUPPRESSION_NOT_FOUND",
            format!("{} is not suppressed", number.as_str()),
            Vec::new(),
        )),
        other => other.into(),
    }
}

/// 1 to 500 characters, no control characters (they would reach logs and pages as they
/// stand), surrounding blanks trimmed.
pub fn check_reason(raw: &str, field: &str) -> Result<String, FieldError> {
    let reason = raw.trim();
    if reason.is_empty() {
        return Err(FieldError::new(
            field,
            format!("`{field}` must not be empty"),
        ));
    }
    if reason.chars().count() > MAX_REASON_CHARS {
        return Err(FieldError::new(
            field,
            format!("`{field}` must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    if reason.chars().any(char::is_control) {
        return Err(FieldError::new(
            field,
            format!("`{field}` must not hold control characters"),
        ));
    }
    Ok(reason.to_owned())
}
