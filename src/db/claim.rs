//! Claiming due calls for an attempt each, under the cap: one short transaction, committed
//! before any provider request is sent.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{DbError, calls::CallRow};
use crate::domain::Call;

/// Key of the transaction-scoped advisory lock that serialises claims across replicas.
pub(super) const CLAIM_LOCK: i64 = 0x6361_6c6c_5f6f_7263; // "call_orc"

/// A call claimed for one attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub call: Call,
    /// The attempt number to dial, from 1.
    pub attempt: i32,
    /// The attempt's row: its answer is recorded on this row and no other (a number can be
    /// claimed again as another row after the vendor's concurrency limit refused it).
    pub attempt_id: i64,
    /// When the call fell due, for a fresh claim (not for a rescue).
    pub due_at: Option<DateTime<Utc>>,
    /// When the attempt was claimed: a call placed for it was created after this.
    pub claimed_at: DateTime<Utc>,
    /// For a rescue: the provider's ids of other attempts to the same number (claimed in the
    /// ten minutes before this one), which a look-up must not take for this attempt's.
    pub known_provider_ids: Vec<String>,
    /// How often the attempt was taken over since it was claimed: from 1, the attempt may
    /// have reached the provider already (its dialer died, or its answer was lost), so every
    /// send of it is a resend, and only a clear answer settles it.
    pub rescues: u32,
}

impl Claimed {
    /// Whether the attempt may have reached the provider already.
    pub fn resend(&self) -> bool {
        self.rescues > 0
    }
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    #[sqlx(flatten)]
    call: CallRow,
    due_at: DateTime<Utc>,
    attempt_id: i64,
}

/// Claims up to `max` due calls within the cap; see `sql/queries/claim_calls.sql` for why
/// the count is exact. A claim the one-number-in-progress index refuses is tried again.
pub async fn claim(
    pool: &PgPool,
    cap: u32,
    max: u32,
    lease: Duration,
) -> Result<Vec<Claimed>, DbError> {
    for _ in 0..3 {
        // READ COMMITTED, whatever the server's default: the claim's exactness argument
        // (sql/queries/claim_calls.sql) rests on each statement's snapshot being taken after
        // the lock was granted, which REPEATABLE READ or SERIALIZABLE would break.
        let mut tx = pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CLAIM_LOCK)
            .execute(&mut *tx)
            .await?;
        let rows: Result<Vec<ClaimedRow>, sqlx::Error> =
            sqlx::query_as(include_str!("../../sql/queries/claim_calls.sql"))
                .bind(i64::from(cap))
                .bind(i64::from(max))
                .bind(lease.as_secs_f64())
                .fetch_all(&mut *tx)
                .await;
        match rows {
            Ok(rows) => {
                tx.commit().await?;
                return Ok(rows
                    .into_iter()
                    .map(|row| {
                        let call = Call::from(row.call);
                        Claimed {
                            attempt: call.attempts,
                            attempt_id: row.attempt_id,
                            call,
                            due_at: Some(row.due_at),
                            claimed_at: Utc::now(),
                            known_provider_ids: Vec::new(),
                            rescues: 0,
                        }
                    })
                    .collect());
            }
            Err(err) if is_unique_violation(&err) => {
                tracing::warn!(error = %err, "claim refused by the one-call-per-number index; claiming again");
                tx.rollback().await?;
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(Vec::new())
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

/// When the earliest `PENDING` call falls due, if any is pending.
pub async fn next_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT min(due_at) FROM call_queue WHERE status = 'PENDING'")
            .fetch_one(pool)
            .await?,
    )
}
