//! `/api/v1/calls`: create, batch, read, patch, cancel, list, timeline, and the counts.

use std::sync::Arc;

use poem::web::Data;

use chrono::Utc;
use poem_openapi::{
    ApiResponse, OpenApi,
    param::{Header, Path, Query},
    payload::Json,
    types::MaybeUndefined,
};
use uuid::Uuid;

use super::{
    ApiState, ApiTags,
    error::ApiError,
    idempotency::{AsSent, checked_key, create_under_key},
    models::{
        BatchCreateRequest, Call, CallEnvelope, CallPage, CallsEnvelope, Concurrency,
        CreateCallRequest, CursorPagination, EventPage, MetricsEnvelope, PatchCallRequest,
        Serialized, SkippedCall, Status, StatusCounts,
    },
    requests::{
        list_pagination, open_campaign, page_or_cursor, parse_batch, parse_request, parse_timing,
        plus_decoded_as_space, together,
    },
};
use crate::{
    db::{self, CallFilter, CreateOutcome},
    domain::{CallPayload, CallStatus, FieldError, PhoneNumber, merge_patch},
};

/// Timeline entries per page, unless asked otherwise, and at most.
const DEFAULT_EVENTS_LIMIT: i64 = 100;
const MAX_EVENTS_LIMIT: i64 = 1000;

/// Most calls one batch may hold.
pub const MAX_BATCH: usize = 1000;
/// Largest page of `GET /api/v1/calls`.
pub const MAX_LIMIT: i64 = 100;

#[derive(ApiResponse)]
pub enum CreatedCall {
    /// The call was created, `PENDING`; or, for a repeated `Idempotency-Key` with the same
    /// body, the call the first request created (then `Idempotent-Replayed: true`).
    #[oai(status = 201)]
    Created(
        Serialized<CallEnvelope>,
        #[oai(header = "Idempotent-Replayed")] Option<String>,
    ),
}

#[derive(ApiResponse)]
pub enum CreatedCalls {
    /// Every call of the batch was created, in the order sent; or, for a repeated
    /// `Idempotency-Key` with the same body, the calls the first request created (then
    /// `Idempotent-Replayed: true`).
    #[oai(status = 201)]
    Created(
        Serialized<CallsEnvelope>,
        #[oai(header = "Idempotent-Replayed")] Option<String>,
    ),
}

pub struct CallsApi;

/// A batch item left out because its number is suppressed.
fn skipped_call(index: usize, call: &db::NewCall) -> SkippedCall {
    SkippedCall {
        index: index as u32,
        to: call.payload.to.as_str().to_owned(),
        code: "NUMBER_SUPPRESSED".into(),
    }
}

#[OpenApi(prefix_path = "/api/v1", tag = "ApiTags::Calls")]
impl CallsApi {
    /// Create a call
    ///
    /// Stores the call as `PENDING`; the dispatcher dials it when its turn comes. With an
    /// `Idempotency-Key`, a repeat of the same key and body within 24 hours answers the
    /// first call again instead of creating another; the same key with another body is 409.
    /// Keys are scoped by API key: one client's key never answers another's call.
    #[oai(path = "/calls", method = "post", operation_id = "createCall")]
    async fn create(
        &self,
        state: Data<&Arc<ApiState>>,
        body: Json<CreateCallRequest>,
        /// Any string of 1 to 255 visible ASCII characters that names this request.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        request: &poem::Request,
    ) -> Result<CreatedCall, ApiError> {
        let key = checked_key(&idempotency_key, request)?;
        let campaign = match body.0.campaign_id {
            Some(id) => Some((id, open_campaign(&state.pool, id, key.is_some()).await?)),
            None => None,
        };
        let call = parse_request(
            body.0,
            &state.rules,
            campaign.as_ref().map(|(id, c)| (*id, c)),
        )
        .map_err(ApiError::validation)?;
        let id = call.id;
        let outcome = match key {
            Some(key) => {
                let calls = std::slice::from_ref(&call);
                let sent = AsSent {
                    route: "call",
                    calls,
                    skip_suppressed: false,
                };
                create_under_key(state.0, request, sent, calls, key).await
            }
            // A campaign's call is stored holding its campaign against a cancel.
            None if call.campaign_id.is_some() => db::create_calls(&state.pool, &[call])
                .await
                .map(CreateOutcome::Created),
            // Creates that arrive together are stored together (group commit).
            None => match state.writers.creates.submit(fastrand::u64(..), call).await {
                Ok(created) => created.map(|call| CreateOutcome::Created(vec![call])),
                Err(lost) => return Err(ApiError::internal(&lost)),
            },
        }
        .map_err(|err| match err {
            db::DbError::Campaign(refusal) => ApiError::campaign(refusal, "take calls"),
            err => ApiError::from_db(err, id),
        })?;
        let (mut calls, replayed) = match outcome {
            CreateOutcome::Created(calls) => {
                state.writers.wakeup.wake();
                (calls, None)
            }
            CreateOutcome::Replayed(calls) => (calls, Some("true".to_owned())),
        };
        let call = calls
            .pop()
            .ok_or_else(|| ApiError::from_db(db::DbError::NotFound, id))?;
        if replayed.is_none() {
            tracing::info!(call_id = %call.id, "call created");
        }
        Ok(CreatedCall::Created(
            Serialized(CallEnvelope::new(Call::of(call, &state.rules))),
            replayed,
        ))
    }

    /// Create up to 1000 calls at once
    ///
    /// All or nothing, in one transaction: when any item is invalid, the answer is 400 with
    /// each bad item named by its index (from 0) and no call is created. The calls count as
    /// created in their order in the batch, which is the order they are dialed in. An
    /// `Idempotency-Key` works as on a single create, for the whole batch: a client whose
    /// connection dropped can send the batch again and gets the calls stored the first time.
    #[oai(
        path = "/calls/batch",
        method = "post",
        operation_id = "createCallsBatch"
    )]
    async fn batch(
        &self,
        state: Data<&Arc<ApiState>>,
        body: Json<BatchCreateRequest>,
        /// Any string of 1 to 255 visible ASCII characters that names this request.
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        request: &poem::Request,
    ) -> Result<CreatedCalls, ApiError> {
        let key = checked_key(&idempotency_key, request)?;
        let as_sent =
            parse_batch(&state.pool, body.0.calls, &state.rules, None, key.is_some()).await?;
        create_batch(
            state.0,
            request,
            key,
            as_sent,
            body.0.skip_suppressed,
            "batch",
        )
        .await
    }

    /// Get a call
    #[oai(path = "/calls/:id", method = "get", operation_id = "getCall")]
    async fn get(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
    ) -> Result<Serialized<CallEnvelope>, ApiError> {
        let call = db::get_call(&state.pool, id.0)
            .await
            .map_err(|err| ApiError::from_db(err, id.0))?;
        Ok(Serialized(CallEnvelope::new(Call::of(call, &state.rules))))
    }

    /// Change a pending call
    ///
    /// Applies a JSON Merge Patch (RFC 7396) to the call's payload and validates the result
    /// like a new call. Only a `PENDING` call can be changed (409 `CALL_NOT_PENDING`
    /// otherwise); a patch racing the dispatcher either lands before the call is dialed, and
    /// the dial uses it, or gets 409.
    #[oai(path = "/calls/:id", method = "patch", operation_id = "updateCall")]
    async fn patch(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
        body: Json<PatchCallRequest>,
    ) -> Result<Serialized<CallEnvelope>, ApiError> {
        let body = body.0;
        if let Some(payload) = &body.payload
            && !payload.is_object()
        {
            return Err(ApiError::validation(vec![FieldError::new(
                "payload",
                "`payload` must be a JSON object (a merge patch of to, scriptId, metadata)",
            )]));
        }
        if body.payload.is_none()
            && body.not_before.is_undefined()
            && body.not_after.is_undefined()
            && body.timezone.is_undefined()
        {
            return Err(ApiError::validation(vec![FieldError::new(
                "payload",
                "nothing to change: send `payload`, `notBefore`, `notAfter` or `timezone`",
            )]));
        }
        // What the timeline records of the change: the payload's merge patch as `patch`,
        // and each schedule field sent beside it.
        let patch = body.payload.clone().unwrap_or(serde_json::Value::Null);
        let mut record = serde_json::Map::new();
        let shown = |change: &MaybeUndefined<chrono::DateTime<Utc>>| match change {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(serde_json::Value::Null),
            MaybeUndefined::Value(at) => Some(at.to_rfc3339().into()),
        };
        let zone = match &body.timezone {
            MaybeUndefined::Undefined => None,
            MaybeUndefined::Null => Some(serde_json::Value::Null),
            MaybeUndefined::Value(name) => Some(name.0.clone().into()),
        };
        for (key, value) in [
            ("notBefore", shown(&body.not_before)),
            ("notAfter", shown(&body.not_after)),
            ("timezone", zone),
        ] {
            if let Some(value) = value {
                record.insert(key.into(), value);
            }
        }
        let record = serde_json::Value::Object(record);
        let result = db::update_call(
            &state.pool,
            id.0,
            (&patch, &record),
            &state.rules,
            |current, campaign| {
                let payload = match &body.payload {
                    Some(patch) => {
                        let mut merged = current.payload.to_json();
                        merge_patch(&mut merged, patch);
                        CallPayload::from_json(&merged)
                    }
                    None => Ok(current.payload.clone()),
                };
                let pick = |change: &MaybeUndefined<chrono::DateTime<Utc>>, now| match change {
                    MaybeUndefined::Undefined => now,
                    MaybeUndefined::Null => None,
                    MaybeUndefined::Value(at) => Some(*at),
                };
                let timezone = match &body.timezone {
                    MaybeUndefined::Undefined => {
                        current.timing.timezone.map(|tz| tz.name().to_owned())
                    }
                    MaybeUndefined::Null => None,
                    MaybeUndefined::Value(name) => Some(name.0.clone()),
                };
                let timing = parse_timing(
                    pick(&body.not_before, current.timing.not_before),
                    pick(&body.not_after, current.timing.not_after),
                    timezone.as_deref(),
                    matches!(body.not_after, MaybeUndefined::Value(_)),
                );
                together(payload, timing, &state.rules, campaign)
            },
        )
        .await
        .map_err(|err| ApiError::from_db(err, id.0))?;
        let call = result.map_err(ApiError::validation)?;
        tracing::info!(call_id = %call.id, "call updated");
        Ok(Serialized(CallEnvelope::new(Call::of(call, &state.rules))))
    }

    /// Cancel a pending call
    ///
    /// A `PENDING` call becomes `CANCELLED` and is never dialed; any other status is 409.
    #[oai(
        path = "/calls/:id/cancel",
        method = "post",
        operation_id = "cancelCall"
    )]
    async fn cancel(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
    ) -> Result<Serialized<CallEnvelope>, ApiError> {
        let call = db::cancel_call(&state.pool, id.0)
            .await
            .map_err(|err| ApiError::from_db(err, id.0))?;
        tracing::info!(call_id = %call.id, "call cancelled");
        Ok(Serialized(CallEnvelope::new(Call::of(call, &state.rules))))
    }

    /// List calls
    ///
    /// Newest first, optionally filtered by status, number and campaign. A page by number
    /// (`page`) says how many calls match (`total`, from the counts the database keeps); for
    /// deep pages, follow `pagination.nextCursor` with `after` instead, which costs the same
    /// on every page and stays consistent while calls are created. Out-of-range `page` or
    /// `limit` is 400, not clamped.
    #[oai(path = "/calls", method = "get", operation_id = "listCalls")]
    #[allow(
        clippy::too_many_arguments,
        reason = "one argument per query parameter"
    )]
    async fn list(
        &self,
        state: Data<&Arc<ApiState>>,
        /// Only calls in this status.
        status: Query<Option<Status>>,
        /// Only calls to this number (normalised like `to` on create).
        to: Query<Option<String>>,
        /// Only the calls of this campaign.
        #[oai(name = "campaignId")]
        campaign_id: Query<Option<Uuid>>,
        /// Page number, from 1 (default 1).
        page: Query<Option<i64>>,
        /// The `pagination.nextCursor` of the previous page, instead of `page`.
        after: Query<Option<String>>,
        /// Calls per page, 1 to 100 (default 10).
        limit: Query<Option<i64>>,
    ) -> Result<Serialized<CallPage>, ApiError> {
        let (page, limit) = page_or_cursor(page.0, after.0.as_deref(), limit.0)?;
        let to = match to.0.as_deref().map(plus_decoded_as_space) {
            Some(raw) => Some(PhoneNumber::parse(&raw).map_err(|err| {
                ApiError::bad_request("INVALID_PARAMETER", format!("`to` {err}"))
            })?),
            None => None,
        };
        let filter = CallFilter {
            status: status.0.map(CallStatus::from),
            to,
            campaign_id: campaign_id.0,
            page,
            limit,
        };
        let listed = db::list_calls(&state.pool, &filter).await?;
        Ok(Serialized(CallPage {
            success: true,
            data: listed
                .items
                .into_iter()
                .map(|call| Call::of(call, &state.rules))
                .collect(),
            pagination: list_pagination(filter.page, filter.limit, listed.total, listed.next),
        }))
    }

    /// A call's timeline
    ///
    /// Everything that happened to the call, oldest first: created, updated, each attempt
    /// dialed and the provider's answer, each webhook received, retries scheduled, expiry,
    /// cancellation. A page at a time: `limit` entries (default 100, at most 1000), and the
    /// next page from `after` = the previous page's `pagination.nextCursor` (null on the
    /// last page).
    #[oai(
        path = "/calls/:id/events",
        method = "get",
        operation_id = "listCallEvents"
    )]
    async fn events(
        &self,
        state: Data<&Arc<ApiState>>,
        id: Path<Uuid>,
        /// Entries per page, 1 to 1000 (default 100).
        limit: Query<Option<i64>>,
        /// The `pagination.nextCursor` of the previous page.
        after: Query<Option<String>>,
    ) -> Result<Json<EventPage>, ApiError> {
        let limit = limit.0.unwrap_or(DEFAULT_EVENTS_LIMIT);
        if !(1..=MAX_EVENTS_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                "INVALID_PARAMETER",
                format!("`limit` must be between 1 and {MAX_EVENTS_LIMIT}; it is {limit}"),
            ));
        }
        let after = match after.0.as_deref() {
            None => None,
            Some(raw) => Some(raw.parse::<i64>().ok().filter(|a| *a >= 0).ok_or_else(|| {
                ApiError::bad_request(
                    "INVALID_PARAMETER",
                    "`after` must be the `nextCursor` of an earlier page",
                )
            })?),
        };
        let (events, more) = db::list_events(&state.pool, id.0, after, limit)
            .await
            .map_err(|err| ApiError::from_db(err, id.0))?;
        let next_cursor = more
            .then(|| events.last().map(|e| e.id.to_string()))
            .flatten();
        Ok(Json(EventPage {
            success: true,
            data: events.into_iter().map(Into::into).collect(),
            pagination: CursorPagination {
                limit: limit as u32,
                next_cursor,
            },
        }))
    }

    /// Calls by status
    ///
    /// The number of calls in each status and in all, and the slots in use against the cap.
    #[oai(
        path = "/metrics",
        method = "get",
        operation_id = "getMetrics",
        tag = "ApiTags::Operations"
    )]
    async fn metrics(
        &self,
        state: Data<&Arc<ApiState>>,
    ) -> Result<Json<MetricsEnvelope>, ApiError> {
        let counts = db::count_by_status(&state.pool).await?;
        let data = StatusCounts::of(&counts);
        let in_progress = data.in_progress;
        Ok(Json(MetricsEnvelope {
            success: true,
            data,
            timestamp: Utc::now(),
            concurrency: Concurrency {
                limit: state.max_concurrent_calls,
                in_progress,
            },
        }))
    }
}

/// Stores the calls of a batch (`POST /api/v1/calls/batch`, or a campaign's calls): all or
/// nothing, or without the suppressed ones with `skip_suppressed`; under an
/// `Idempotency-Key` when one came.
pub(super) async fn create_batch(
    state: &Arc<ApiState>,
    request: &poem::Request,
    key: Option<&str>,
    as_sent: Vec<db::NewCall>,
    skip_suppressed: bool,
    route: &'static str,
) -> Result<CreatedCalls, ApiError> {
    // With skipSuppressed, the calls to suppressed numbers are left out first, so that the
    // rest go through the same paths (Idempotency-Key included) as any batch; one whose
    // suppression lands meanwhile is left out by the insert itself.
    let mut skipped = Vec::new();
    let mut indexes: Vec<usize> = (0..as_sent.len()).collect();
    let mut calls = as_sent.clone();
    if skip_suppressed {
        let numbers: Vec<&str> = as_sent.iter().map(|c| c.payload.to.as_str()).collect();
        let suppressed = db::suppressed_among(&state.pool, &numbers).await?;
        if !suppressed.is_empty() {
            (calls, indexes) = (Vec::with_capacity(as_sent.len()), Vec::new());
            for (index, call) in as_sent.iter().enumerate() {
                if suppressed.contains(call.payload.to.as_str()) {
                    skipped.push(skipped_call(index, call));
                } else {
                    calls.push(call.clone());
                    indexes.push(index);
                }
            }
        }
    }
    let in_request = |index: usize| indexes.get(index).copied().unwrap_or(index);
    let refused = |mut err: db::DbError| {
        if let db::DbError::Suppressed(list) = &mut err {
            for item in list.iter_mut() {
                item.index = in_request(item.index);
            }
            return ApiError::suppressed(list, true);
        }
        if let db::DbError::Campaign(refusal) = err {
            return ApiError::campaign(refusal, "take calls");
        }
        err.into()
    };
    let (created, replayed) = match key {
        Some(key) => {
            let sent = AsSent {
                route,
                calls: &as_sent,
                skip_suppressed,
            };
            match create_under_key(state, request, sent, &calls, key).await {
                Ok(CreateOutcome::Created(created)) => (created, None),
                Ok(CreateOutcome::Replayed(created)) => (created, Some("true".to_owned())),
                Err(db::DbError::IdempotencyConflict) => {
                    return Err(ApiError::from_db(
                        db::DbError::IdempotencyConflict,
                        Uuid::nil(),
                    ));
                }
                Err(err) => return Err(refused(err)),
            }
        }
        None if calls.is_empty() => (Vec::new(), None),
        None => {
            let (created, left_out) =
                db::create_calls_skipping(&state.pool, &calls, skip_suppressed)
                    .await
                    .map_err(refused)?;
            for late in left_out {
                let index = in_request(late.index);
                skipped.push(skipped_call(index, &as_sent[index]));
            }
            skipped.sort_by_key(|s| s.index);
            (created, None)
        }
    };
    if replayed.is_none() && !created.is_empty() {
        state.writers.wakeup.wake();
        tracing::info!(
            count = created.len(),
            skipped = skipped.len(),
            "batch created"
        );
    }
    Ok(CreatedCalls::Created(
        Serialized(CallsEnvelope {
            success: true,
            data: created
                .into_iter()
                .map(|call| Call::of(call, &state.rules))
                .collect(),
            skipped,
        }),
        replayed,
    ))
}
