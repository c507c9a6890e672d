//! Creating, reading, patching, cancelling and listing calls.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::DbError;
use crate::domain::{Call, CallPayload, CallStatus, PhoneNumber, ScriptId};

/// A row of `calls`, exactly as stored.
#[derive(sqlx::FromRow)]
pub(crate) struct CallRow {
    id: Uuid,
    #[allow(dead_code)]
    seq: i64,
    to_number: String,
    script_id: String,
    metadata: Value,
    status: CallStatus,
    attempts: i32,
    #[sqlx(rename = "external_call_id")]
    provider_call_id: Option<String>,
    last_error: Option<String>,
    next_attempt_at: Option<DateTime<Utc>>,
    duration_sec: Option<i32>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
}

impl From<CallRow> for Call {
    fn from(row: CallRow) -> Self {
        let metadata = match row.metadata {
            Value::Object(map) => map,
            // The table's CHECK constraint keeps metadata an object.
            _ => Default::default(),
        };
        Call {
            id: row.id,
            payload: CallPayload {
                to: PhoneNumber::from_trusted(row.to_number),
                script_id: ScriptId::from_trusted(row.script_id),
                metadata,
            },
            status: row.status,
            attempts: row.attempts,
            provider_call_id: row.provider_call_id,
            last_error: row.last_error,
            next_attempt_at: row.next_attempt_at,
            duration_sec: row.duration_sec,
            created_at: row.created_at,
            updated_at: row.updated_at,
            started_at: row.started_at,
            completed_at: row.completed_at,
        }
    }
}

/// A validated call about to be stored.
#[derive(Clone, Debug)]
pub struct NewCall {
    pub id: Uuid,
    pub payload: CallPayload,
}

impl NewCall {
    pub fn new(payload: CallPayload) -> Self {
        Self {
            id: Uuid::now_v7(),
            payload,
        }
    }
}

/// What a create with an `Idempotency-Key` came to.
#[derive(Debug)]
pub enum CreateOutcome {
    /// The calls, created now.
    Created(Vec<Call>),
    /// The key was used within 24 hours with the same body: the calls of that request.
    Replayed(Vec<Call>),
}

/// An `Idempotency-Key` as one client sent it with one request.
#[derive(Clone, Copy, Debug)]
pub struct IdempotencyKey<'a> {
    /// Whose key it is: the SHA-256 of the client's API key, or empty without `API_KEYS`.
    pub scope: &'a [u8],
    pub key: &'a str,
    /// Hash of the request it came with (the route and the normalised body).
    pub request_hash: &'a [u8],
}

async fn insert_calls<'e, E>(executor: E, calls: &[NewCall]) -> Result<Vec<Call>, sqlx::Error>
where
    E: sqlx::Executor<'e, Database = Postgres>,
{
    let ids: Vec<Uuid> = calls.iter().map(|c| c.id).collect();
    let numbers: Vec<&str> = calls.iter().map(|c| c.payload.to.as_str()).collect();
    let scripts: Vec<&str> = calls.iter().map(|c| c.payload.script_id.as_str()).collect();
    let metadata: Vec<Value> = calls
        .iter()
        .map(|c| Value::Object(c.payload.metadata.clone()))
        .collect();
    let rows: Vec<CallRow> = sqlx::query_as(include_str!("../../sql/queries/insert_calls.sql"))
        .bind(ids)
        .bind(numbers)
        .bind(scripts)
        .bind(metadata)
        .fetch_all(executor)
        .await?;
    Ok(rows.into_iter().map(Call::from).collect())
}

/// Stores calls in one transaction, in the order given; all or nothing.
pub async fn create_calls(pool: &PgPool, calls: &[NewCall]) -> Result<Vec<Call>, DbError> {
    // One statement is one transaction: a failure leaves nothing behind.
    Ok(insert_calls(pool, calls).await?)
}

/// Stores calls that arrived together in one statement (group commit), in the order
/// given; one result each. Should the shared statement fail, each call is stored on its
/// own, so one call's trouble is never another's.
pub async fn create_each(pool: &PgPool, calls: &[NewCall]) -> Vec<Result<Call, DbError>> {
    super::batch::together_or_each(
        "create",
        calls,
        |calls| async move {
            let mut by_id: std::collections::HashMap<Uuid, Call> = insert_calls(pool, calls)
                .await
                .map_err(DbError::from)?
                .into_iter()
                .map(|call| (call.id, call))
                .collect();
            Ok(calls
                .iter()
                .map(|call| by_id.remove(&call.id).ok_or(DbError::NotFound))
                .collect())
        },
        |call| create_one(pool, call),
    )
    .await
}

async fn create_one(pool: &PgPool, call: &NewCall) -> Result<Call, DbError> {
    let mut created = insert_calls(pool, std::slice::from_ref(call)).await?;
    created.pop().ok_or(DbError::NotFound)
}

/// Stores calls (one, or a batch, all or nothing) under an `Idempotency-Key`, in the same
/// transaction: a repeat within 24 hours with the same request answers the calls the
/// first one stored, another request under the same key is `IdempotencyConflict`. Keys
/// are the client's own (`IdempotencyKey::scope`): one client's key never answers
/// another's calls. Creates without a key go through `create_each` or `create_calls`.
pub async fn create_idempotent(
    pool: &PgPool,
    calls: &[NewCall],
    key: IdempotencyKey<'_>,
) -> Result<CreateOutcome, DbError> {
    let ids: Vec<Uuid> = calls.iter().map(|c| c.id).collect();
    let first = *ids.first().ok_or(DbError::NotFound)?;
    // A key can expire between our failed claim and our look-up; a few rounds settle it.
    for _ in 0..3 {
        let mut tx = pool.begin().await?;
        let created = insert_calls(&mut *tx, calls).await?;
        let claimed: Option<Uuid> =
            sqlx::query_scalar(include_str!("../../sql/queries/claim_idempotency_key.sql"))
                .bind(key.scope)
                .bind(key.key)
                .bind(key.request_hash)
                .bind(first)
                .bind(&ids)
                .fetch_optional(&mut *tx)
                .await?;
        if claimed.is_some() {
            tx.commit().await?;
            return Ok(CreateOutcome::Created(created));
        }
        tx.rollback().await?;
        let existing: Option<(Vec<u8>, Uuid, Option<Vec<Uuid>>)> =
            sqlx::query_as(include_str!("../../sql/queries/find_idempotency_key.sql"))
                .bind(key.scope)
                .bind(key.key)
                .fetch_optional(pool)
                .await?;
        match existing {
            Some((stored, _, _)) if stored != key.request_hash => {
                return Err(DbError::IdempotencyConflict);
            }
            Some((_, call_id, call_ids)) => {
                let ids = call_ids.unwrap_or_else(|| vec![call_id]);
                return get_calls(pool, &ids).await.map(CreateOutcome::Replayed);
            }
            None => continue,
        }
    }
    Err(DbError::Other(sqlx::Error::Protocol(
        "Idempotency-Key kept changing hands".into(),
    )))
}

/// Calls by id, in the order of `ids`; `NotFound` if one is missing.
async fn get_calls(pool: &PgPool, ids: &[Uuid]) -> Result<Vec<Call>, DbError> {
    let rows: Vec<CallRow> =
        sqlx::query_as(include_str!("../../sql/queries/get_calls_in_order.sql"))
            .bind(ids)
            .fetch_all(pool)
            .await?;
    if rows.len() != ids.len() {
        return Err(DbError::NotFound);
    }
    Ok(rows.into_iter().map(Call::from).collect())
}

/// One call by id.
pub async fn get_call(pool: &PgPool, id: Uuid) -> Result<Call, DbError> {
    let row: Option<CallRow> = sqlx::query_as("SELECT * FROM calls WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(Call::from).ok_or(DbError::NotFound)
}

/// Replaces the payload of a `PENDING` call with what `patch` makes of it. The row is
/// locked while the patch is validated, so the dispatcher either claims the call before
/// (and the patch is refused) or after (and dials the patched payload).
pub async fn update_payload<F, E>(
    pool: &PgPool,
    id: Uuid,
    patch: &Value,
    apply: F,
) -> Result<Result<Call, E>, DbError>
where
    F: FnOnce(&CallPayload) -> Result<CallPayload, E>,
{
    let mut tx = pool.begin().await?;
    let row: Option<CallRow> = sqlx::query_as("SELECT * FROM calls WHERE id = $1 FOR UPDATE")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
    let current = Call::from(row.ok_or(DbError::NotFound)?);
    if current.status != CallStatus::Pending {
        return Err(DbError::NotPending(current.status));
    }
    let payload = match apply(&current.payload) {
        Ok(payload) => payload,
        Err(err) => return Ok(Err(err)),
    };
    let row: CallRow = sqlx::query_as(include_str!("../../sql/queries/update_payload.sql"))
        .bind(id)
        .bind(payload.to.as_str())
        .bind(payload.script_id.as_str())
        .bind(Value::Object(payload.metadata))
        .bind(patch)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Ok(row.into()))
}

/// Cancels a `PENDING` call.
pub async fn cancel_call(pool: &PgPool, id: Uuid) -> Result<Call, DbError> {
    let row: Option<CallRow> = sqlx::query_as(include_str!("../../sql/queries/cancel_call.sql"))
        .bind(id)
        .fetch_optional(pool)
        .await?;
    match row {
        Some(row) => Ok(row.into()),
        None => Err(DbError::NotPending(get_call(pool, id).await?.status)),
    }
}

/// Filters and page of `GET /api/v1/calls`.
#[derive(Clone, Debug, Default)]
pub struct CallFilter {
    pub status: Option<CallStatus>,
    pub to: Option<PhoneNumber>,
    /// From 1.
    pub page: u32,
    pub limit: u32,
}

fn push_filter(query: &mut QueryBuilder<'_, Postgres>, filter: &CallFilter) {
    query.push(" WHERE true");
    if let Some(status) = filter.status {
        query.push(" AND status = ").push_bind(status);
    }
    if let Some(to) = &filter.to {
        query
            .push(" AND to_number = ")
            .push_bind(to.as_str().to_owned());
    }
}

/// One page of calls, newest first, and the number of calls matching the filter.
pub async fn list_calls(pool: &PgPool, filter: &CallFilter) -> Result<(Vec<Call>, i64), DbError> {
    let mut query = QueryBuilder::new("SELECT * FROM calls");
    push_filter(&mut query, filter);
    query
        .push(" ORDER BY seq DESC LIMIT ")
        .push_bind(i64::from(filter.limit))
        .push(" OFFSET ")
        .push_bind(i64::from(filter.page.saturating_sub(1)) * i64::from(filter.limit));
    let rows: Vec<CallRow> = query.build_query_as().fetch_all(pool).await?;

    let mut count = QueryBuilder::new("SELECT count(*) FROM calls");
    push_filter(&mut count, filter);
    let total: i64 = count.build_query_scalar().fetch_one(pool).await?;
    Ok((rows.into_iter().map(Call::from).collect(), total))
}

/// The number of calls in each status (statuses with none are absent).
pub async fn count_by_status(pool: &PgPool) -> Result<Vec<(CallStatus, i64)>, DbError> {
    Ok(
        sqlx::query_as("SELECT status, count(*) FROM calls GROUP BY status")
            .fetch_all(pool)
            .await?,
    )
}
