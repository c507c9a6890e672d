//! Recording the provider's answer to a dial request: 2xx answers in batches, fenced in SQL
//! (`sql/queries/record_accepted.sql`); every other answer as `domain::decide` decides.

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    DbError,
    settle::{Which, apply, lock},
};
use crate::domain::{
    DialOutcome, RetryDecision,
    decide::{Retry, decide_dial},
};

/// Records the provider's answer to the attempt of `call_id` whose row is `attempt_id`;
/// the retry decision it took for a failed attempt, if it took one.
pub async fn record_dial_outcome(
    pool: &PgPool,
    call_id: Uuid,
    attempt_id: i64,
    outcome: &DialOutcome,
    retry: Retry,
) -> Result<Option<RetryDecision>, DbError> {
    if let DialOutcome::Accepted { provider_call_id } = outcome {
        record_accepted(
            pool,
            &[Accepted {
                call_id,
                attempt_id,
                provider_call_id: provider_call_id.clone(),
            }],
        )
        .await?;
        return Ok(None);
    }
    let mut tx = pool.begin().await?;
    let Some(locked) = lock(&mut tx, call_id, Which::Row(attempt_id)).await? else {
        return Ok(None);
    };
    let retry = locked.retry(retry);
    let attempt = locked.state.attempt;
    let rate_limited_before: i64 = match outcome {
        DialOutcome::RateLimited { .. } => {
            sqlx::query_scalar(include_str!("../../sql/queries/count_rate_limited.sql"))
                .bind(call_id)
                .bind(attempt)
                .fetch_one(&mut *tx)
                .await?
        }
        _ => 0,
    };
    let decision = decide_dial(
        &locked.state,
        outcome,
        u32::try_from(rate_limited_before).unwrap_or(u32::MAX),
        retry,
    );
    apply(&mut tx, call_id, &locked, &decision, &retry.rules).await?;
    tx.commit().await?;
    Ok(decision.retry)
}

/// A provider's 2xx to a dial request, to record.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub call_id: Uuid,
    /// The attempt's row (see `Claimed::attempt_id`).
    pub attempt_id: i64,
    /// The provider's id for the attempt, when it gave one.
    pub provider_call_id: Option<String>,
}

/// Records 2xx answers in one statement: see sql/queries/record_accepted.sql.
pub async fn record_accepted(pool: &PgPool, accepted: &[Accepted]) -> Result<(), DbError> {
    let call_ids: Vec<Uuid> = accepted.iter().map(|a| a.call_id).collect();
    let attempts: Vec<i64> = accepted.iter().map(|a| a.attempt_id).collect();
    let provider_ids: Vec<Option<&str>> = accepted
        .iter()
        .map(|a| a.provider_call_id.as_deref())
        .collect();
    sqlx::query(include_str!("../../sql/queries/record_accepted.sql"))
        // Planned for each batch, with its real size: a plan cached while the tables were
        // small (a fresh database) would keep scanning call_attempts whole as it grows.
        .persistent(false)
        .bind(call_ids)
        .bind(attempts)
        .bind(provider_ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records 2xx answers together (group commit); one result each. Should the shared
/// statement fail (say, a provider handing out one callId twice, which its unique index
/// refuses), each answer is recorded on its own, so only the offending one fails.
pub async fn record_accepted_each(
    pool: &PgPool,
    accepted: &[Accepted],
) -> Vec<Result<(), DbError>> {
    super::batch::together_or_each(
        "accepted",
        accepted,
        |all| async move {
            record_accepted(pool, all).await?;
            Ok(all.iter().map(|_| Ok(())).collect())
        },
        |one| record_accepted(pool, std::slice::from_ref(one)),
    )
    .await
}
