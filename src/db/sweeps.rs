//! The sweeper's statements: expiring calls whose final webhook never came, and taking
//! over attempts whose dialer's lease ran out.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use super::{Claimed, DbError};

/// Expires calls in progress for longer than `timeout`; returns their ids.
pub async fn expire_overdue(pool: &PgPool, timeout: Duration) -> Result<Vec<Uuid>, DbError> {
    Ok(
        sqlx::query_scalar(include_str!("../../sql/queries/expire_overdue.sql"))
            .bind(timeout.as_secs_f64())
            .bind(1000_i64)
            .fetch_all(pool)
            .await?,
    )
}

/// Expires `PENDING` calls whose `notAfter` has passed; returns their ids.
pub async fn expire_deadlines(pool: &PgPool) -> Result<Vec<Uuid>, DbError> {
    Ok(
        sqlx::query_scalar(include_str!("../../sql/queries/expire_deadlines.sql"))
            .bind(1000_i64)
            .fetch_all(pool)
            .await?,
    )
}

/// Takes over attempts whose dialer's lease ran out; returns them, ready to send again.
pub async fn take_abandoned(pool: &PgPool, lease: Duration) -> Result<Vec<Claimed>, DbError> {
    let taken: Vec<(i64, Uuid, i32, i32, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        include_str!("../../sql/queries/take_abandoned_attempts.sql"),
    )
    .bind(lease.as_secs_f64())
    .bind(100_i64)
    .fetch_all(pool)
    .await?;
    let mut claimed = Vec::with_capacity(taken.len());
    for (attempt_id, call_id, attempt, rescues, claimed_at) in taken {
        let call = super::get_call(pool, call_id).await?;
        let known_provider_ids: Vec<String> =
            sqlx::query_scalar(include_str!("../../sql/queries/known_provider_ids.sql"))
                .bind(call.payload.to.as_str())
                .bind(claimed_at - chrono::Duration::minutes(10))
                .bind(call_id)
                .fetch_all(pool)
                .await?;
        claimed.push(Claimed {
            call,
            attempt,
            attempt_id,
            due_at: None,
            claimed_at,
            known_provider_ids,
            rescues: rescues.max(1) as u32,
        });
    }
    Ok(claimed)
}

/// An attempt due for a look-up at the provider (see `take_reconcilable`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reconcilable {
    pub call_id: Uuid,
    pub attempt: i32,
    pub provider_call_id: String,
}

/// Takes the attempts the provider holds whose end has not arrived for `after`
/// (`RECONCILE_AFTER`), or whose call is overdue (`timeout`, `CALL_TIMEOUT`: looked up once
/// more before it expires), at most `max`, marking them looked up now.
pub async fn take_reconcilable(
    pool: &PgPool,
    after: Duration,
    timeout: Duration,
    max: i64,
) -> Result<Vec<Reconcilable>, DbError> {
    let rows: Vec<(Uuid, i32, String)> =
        sqlx::query_as(include_str!("../../sql/queries/take_reconcilable.sql"))
            .bind(after.as_secs_f64())
            .bind(max)
            .bind(timeout.as_secs_f64())
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(call_id, attempt, provider_call_id)| Reconcilable {
            call_id,
            attempt,
            provider_call_id,
        })
        .collect())
}
