//! The queue: claiming calls, recording what the provider answered, and the sweeper's
//! expiry and rescue. Every writer that touches a call and its attempt locks the call row
//! first and the attempt row second, so they never deadlock one another.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{Executor as _, PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{
    DbError,
    calls::{CallRow, DbStatus},
};
use crate::domain::{Call, CallStatus, RetryDecision};

/// Key of the transaction-scoped advisory lock that serialises claims across replicas.
const CLAIM_LOCK: i64 = 0x6361_6c6c_5f6f_7263; // "call_orc"

/// Key of the session advisory lock held by whichever worker is vacuuming or analyzing
/// `call_queue` (see [`queue_upkeep`]).
pub const QUEUE_UPKEEP_LOCK: i64 = CLAIM_LOCK + 1;
// The statistics query splits the key into pg_locks' two oid halves.
const _: () = assert!(QUEUE_UPKEEP_LOCK >= 0);

/// A call claimed for one attempt.
#[derive(Clone, Debug)]
pub struct Claimed {
    pub call: Call,
    /// The attempt number to dial, from 1.
    pub attempt: i32,
    /// When the call fell due, for a fresh claim (not for a rescue).
    pub due_at: Option<DateTime<Utc>>,
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
                            call,
                            due_at: Some(row.due_at),
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
pub async fn next_due(pool: &PgPool) -> Result<Option<chrono::DateTime<chrono::Utc>>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT min(due_at) FROM call_queue WHERE status = 'PENDING'")
            .fetch_one(pool)
            .await?,
    )
}

/// What `queue_upkeep` did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueUpkeep {
    pub vacuumed: bool,
    pub analyzed: bool,
}

/// Keeps `call_queue` lean and its statistics true, which autovacuum, waking once a minute,
/// cannot do for a table that goes from empty to a million rows and back in minutes:
/// - vacuums it once dead rows have piled up (at least 1,000, and at least 2 % of its live
///   rows), so the claim never walks far over the dead index entries that every claim and
///   every ended call leave behind. Cheap: the table holds open calls only.
/// - analyzes it once a tenth of it changed, so the planner keeps walking the queue in
///   order instead of sorting all of it, which it would do believing the table tiny.
///
/// Every replica's workers call it every second; one at a time does the work (the others
/// find [`QUEUE_UPKEEP_LOCK`] taken and leave it), so no VACUUM waits for another, and
/// `SKIP_LOCKED` passes over the table while autovacuum holds it, rather than queueing
/// behind it.
pub async fn queue_upkeep(pool: &PgPool) -> Result<QueueUpkeep, DbError> {
    // Also whether a worker is at it already, to spare a connection in that case.
    let counts: Option<(i64, i64, i64, bool)> = sqlx::query_as(
        "SELECT n_dead_tup, n_live_tup, n_mod_since_analyze,
                EXISTS (SELECT 1 FROM pg_locks
                        WHERE locktype = 'advisory'
                          AND database = (SELECT oid FROM pg_database
                                          WHERE datname = current_database())
                          AND classid = ($1 >> 32)::oid AND objid = ($1 & 4294967295)::oid
                          AND objsubid = 1)
         FROM pg_stat_user_tables s
         WHERE relid = 'call_queue'::regclass",
    )
    .bind(QUEUE_UPKEEP_LOCK)
    .fetch_optional(pool)
    .await?;
    let (dead, live, modified, busy) = counts.unwrap_or_default();
    let wanted = QueueUpkeep {
        vacuumed: dead >= (live / 50).max(1000),
        analyzed: modified >= (live / 10).max(500),
    };
    if wanted == QueueUpkeep::default() || busy {
        return Ok(QueueUpkeep::default());
    }
    // Wrapped before the lock is asked for: were this future dropped while the answer is on
    // its way, the lock may be granted all the same.
    let mut session = LockedSession(Some(pool.acquire().await?));
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(QUEUE_UPKEEP_LOCK)
        .fetch_one(&mut *session.conn())
        .await?;
    if !locked {
        session.unlock().await?;
        return Ok(QueueUpkeep::default());
    }
    if wanted.vacuumed {
        // INDEX_CLEANUP ON: the dead index entries are the point, and VACUUM would
        // otherwise leave them when few heap pages hold dead rows.
        session
            .conn()
            .execute(sqlx::raw_sql(
                "VACUUM (INDEX_CLEANUP ON, SKIP_LOCKED) call_queue",
            ))
            .await?;
    }
    if wanted.analyzed {
        session
            .conn()
            .execute(sqlx::raw_sql("ANALYZE (SKIP_LOCKED) call_queue"))
            .await?;
    }
    session.unlock().await?;
    Ok(wanted)
}

/// A pooled connection whose session may hold advisory locks. It goes back to the pool only
/// once they are all released; dropped before that (an error, a cancelled future), it is
/// closed instead, and the locks end with its session, so none can stay behind on a pooled
/// connection and keep every replica from the queue.
struct LockedSession(Option<sqlx::pool::PoolConnection<Postgres>>);

impl LockedSession {
    fn conn(&mut self) -> &mut sqlx::PgConnection {
        self.0
            .as_mut()
            .expect("a session is used only until it is unlocked")
    }

    /// Releases every session-level advisory lock (a lock taken twice is held twice) and
    /// hands the connection back to the pool.
    async fn unlock(mut self) -> Result<(), DbError> {
        sqlx::query("SELECT pg_advisory_unlock_all()")
            .execute(&mut *self.conn())
            .await?;
        self.0.take();
        Ok(())
    }
}

impl Drop for LockedSession {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take() {
            conn.close_on_drop();
        }
    }
}

/// Whether the connected user may vacuum `call_queue` (owns it, or is a superuser).
pub async fn owns_queue(pool: &PgPool) -> Result<bool, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT pg_has_role(current_user, relowner, 'USAGE')
                OR (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)
         FROM pg_class WHERE oid = 'call_queue'::regclass",
    )
    .fetch_one(pool)
    .await?)
}

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

/// Forgets Idempotency-Keys older than 24 hours.
pub async fn purge_idempotency_keys(pool: &PgPool) -> Result<u64, DbError> {
    Ok(
        sqlx::query("DELETE FROM idempotency_keys WHERE created_at < now() - interval '24 hours'")
            .execute(pool)
            .await?
            .rows_affected(),
    )
}

/// Forgets the `webhook-id`s of signed webhooks older than their signature's tolerance
/// (5 minutes) with a margin: a replay that old fails its signature check anyway.
pub async fn purge_webhook_receipts(pool: &PgPool) -> Result<u64, DbError> {
    Ok(sqlx::query(
        "DELETE FROM webhook_receipts WHERE received_at < now() - interval '10 minutes'",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// The state of a call and of one of its attempts, locked for the transaction.
pub(crate) struct Locked {
    pub call_status: CallStatus,
    /// The call's current attempt number.
    pub call_attempts: i32,
    pub attempt_id: i64,
    pub attempt_status: String,
    pub provider_call_id: Option<String>,
    /// A final webhook was applied to the attempt already.
    pub final_webhook: bool,
}

impl Locked {
    /// The attempt is the call's latest one.
    pub fn is_current(&self, attempt: i32) -> bool {
        self.call_attempts == attempt
    }

    pub fn attempt_is_open(&self) -> bool {
        matches!(self.attempt_status.as_str(), "DIALING" | "ACCEPTED")
    }
}

/// Locks a call, then one of its (non-rate-limited) attempts.
pub(crate) async fn lock(
    tx: &mut Transaction<'_, Postgres>,
    call_id: Uuid,
    attempt: i32,
) -> Result<Option<Locked>, sqlx::Error> {
    let call: Option<(DbStatus, i32)> =
        sqlx::query_as("SELECT status, attempts FROM calls WHERE id = $1 FOR UPDATE")
            .bind(call_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((status, attempts)) = call else {
        return Ok(None);
    };
    let row: Option<(i64, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT id, status, provider_call_id, final_webhook_at IS NOT NULL FROM call_attempts
         WHERE call_id = $1 AND attempt = $2 AND status <> 'RATE_LIMITED'
         FOR UPDATE",
    )
    .bind(call_id)
    .bind(attempt)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(
        |(attempt_id, attempt_status, provider_call_id, final_webhook)| Locked {
            call_status: status.into(),
            call_attempts: attempts,
            attempt_id,
            attempt_status,
            provider_call_id,
            final_webhook,
        },
    ))
}

pub(crate) async fn event(
    tx: &mut Transaction<'_, Postgres>,
    call_id: Uuid,
    attempt: i32,
    kind: &str,
    detail: Value,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO call_events (call_id, attempt, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(call_id)
        .bind(attempt)
        .bind(kind)
        .bind(detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Records the provider's id for an attempt that has none yet.
pub(crate) async fn set_provider_call_id(
    tx: &mut Transaction<'_, Postgres>,
    call_id: Uuid,
    attempt: i32,
    locked: &Locked,
    provider_call_id: &str,
) -> Result<(), sqlx::Error> {
    if locked.provider_call_id.is_some() {
        return Ok(());
    }
    sqlx::query("UPDATE call_attempts SET provider_call_id = $2 WHERE id = $1")
        .bind(locked.attempt_id)
        .bind(provider_call_id)
        .execute(&mut **tx)
        .await?;
    if locked.is_current(attempt) {
        sqlx::query(
            "UPDATE calls SET external_call_id = $2, updated_at = now()
             WHERE id = $1 AND external_call_id IS NULL",
        )
        .bind(call_id)
        .bind(provider_call_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// What becomes of the call when one of its attempts is settled.
#[derive(Clone, Debug)]
pub(crate) enum CallMove<'a> {
    /// It is not the call's current attempt (or the call has moved on): the call stays.
    Stay,
    Complete {
        duration_sec: Option<i32>,
    },
    Fail {
        reason: &'a str,
    },
    /// Back to `PENDING` (the attempt's error becomes the call's `lastError`); `counts` is
    /// false for a 429, which is not an attempt.
    Retry {
        delay: std::time::Duration,
        counts: bool,
    },
}

impl CallMove<'_> {
    /// A failed attempt's move, from the retry decision.
    pub fn after_failure(reason: &str, decision: RetryDecision) -> CallMove<'_> {
        match decision {
            RetryDecision::RetryAfter(delay) => CallMove::Retry {
                delay,
                counts: true,
            },
            RetryDecision::GiveUp => CallMove::Fail { reason },
        }
    }
}

/// Who settles an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SettledBy {
    /// The answer to the dial request.
    Dial,
    /// A final webhook: its repeats are duplicates from now on.
    FinalWebhook,
}

/// Settles an attempt (`COMPLETED`, `FAILED`, `RATE_LIMITED`) and moves its call, in one
/// statement (`sql/queries/settle_attempt.sql`); `first` is the timeline entry that says
/// why. The caller holds the call's and the attempt's row locks.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn settle(
    tx: &mut Transaction<'_, Postgres>,
    call_id: Uuid,
    attempt: i32,
    locked: &Locked,
    outcome: (&str, Option<&str>),
    first: (&str, Value),
    call: CallMove<'_>,
    by: SettledBy,
) -> Result<(), sqlx::Error> {
    // The call's new status, the delay before a retry, and the timeline entry that says so.
    let mut status = None;
    let mut delay = 0.0;
    let mut uncounted = 0;
    let mut second: (Option<&str>, Option<Value>) = (None, None);
    let mut duration = None;
    match &call {
        CallMove::Stay => {}
        CallMove::Complete { duration_sec } => {
            status = Some(DbStatus::Completed);
            duration = *duration_sec;
            second = (
                Some("COMPLETED"),
                Some(json!({"durationSec": duration_sec})),
            );
        }
        CallMove::Fail { reason } => {
            status = Some(DbStatus::Failed);
            second = (Some("FAILED"), Some(json!({"reason": reason})));
        }
        CallMove::Retry {
            delay: wait,
            counts,
        } => {
            status = Some(DbStatus::Pending);
            delay = wait.as_secs_f64();
            uncounted = i32::from(!counts);
            if *counts {
                second = (
                    Some("RETRY_SCHEDULED"),
                    Some(json!({"nextAttempt": attempt + 1, "delayMs": wait.as_millis() as u64})),
                );
            }
        }
    }
    let (second_kind, second_detail) = second;
    sqlx::query(include_str!("../../sql/queries/settle_attempt.sql"))
        .bind(call_id)
        .bind(attempt)
        .bind(locked.attempt_id)
        .bind(outcome.0)
        .bind(outcome.1)
        .bind(first.0)
        .bind(first.1)
        .bind(status)
        .bind(delay)
        .bind(duration)
        .bind(uncounted)
        .bind(second_kind)
        .bind(second_detail)
        .bind(by == SettledBy::FinalWebhook)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
