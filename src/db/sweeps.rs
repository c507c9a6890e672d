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

/// Takes over attempts whose dialer's lease ran out; returns them, ready to send again.
pub async fn take_abandoned(pool: &PgPool, lease: Duration) -> Result<Vec<Claimed>, DbError> {
    let taken: Vec<(Uuid, i32, i32)> = sqlx::query_as(include_str!(
        "../../sql/queries/take_abandoned_attempts.sql"
    ))
    .bind(lease.as_secs_f64())
    .bind(100_i64)
    .fetch_all(pool)
    .await?;
    let mut claimed = Vec::with_capacity(taken.len());
    for (call_id, attempt, rescues) in taken {
        claimed.push(Claimed {
            call: super::get_call(pool, call_id).await?,
            attempt,
            due_at: None,
            rescues: rescues.max(1) as u32,
        });
    }
    Ok(claimed)
}
