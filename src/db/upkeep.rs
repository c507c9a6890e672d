//! Upkeep of the queue: keeping `call_queue` lean and its statistics true, and forgetting
//! Idempotency-Keys and webhook receipts once they can no longer matter.

use sqlx::{Executor as _, PgPool, Postgres};

use super::{DbError, claim::CLAIM_LOCK};

/// Key of the session advisory lock held by whichever worker is vacuuming or analyzing
/// `call_queue` (see [`queue_upkeep`]).
pub const QUEUE_UPKEEP_LOCK: i64 = CLAIM_LOCK + 1;
// The statistics query splits the key into pg_locks' two oid halves.
const _: () = assert!(QUEUE_UPKEEP_LOCK >= 0);

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
    let counts: Option<(i64, i64, i64, bool)> =
        sqlx::query_as(include_str!("../../sql/queries/queue_stats.sql"))
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
    Ok(
        sqlx::query_scalar(include_str!("../../sql/queries/owns_queue.sql"))
            .fetch_one(pool)
            .await?,
    )
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

/// Key of the transaction advisory lock of a retention batch: one replica at a time.
pub const RETENTION_LOCK: i64 = CLAIM_LOCK + 2;

/// What one batch of retention deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retained {
    /// Final calls deleted, with their attempts, timeline and Idempotency-Keys.
    pub calls: u64,
    /// Client events deleted, with their deliveries.
    pub events: u64,
}

/// One batch of retention (`RETENTION_PERIOD`): up to `batch` final calls completed before
/// `before`, and up to `batch` client events that occurred before it (none with a delivery
/// still pending), in one transaction. `None` when another replica's batch is under way:
/// one at a time, so that two never contend for the same rows.
pub async fn delete_old(
    pool: &PgPool,
    before: chrono::DateTime<chrono::Utc>,
    batch: i64,
) -> Result<Option<Retained>, DbError> {
    let mut tx = pool.begin().await?;
    let ours: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(RETENTION_LOCK)
        .fetch_one(&mut *tx)
        .await?;
    if !ours {
        return Ok(None);
    }
    let calls: i64 = sqlx::query_scalar(include_str!("../../sql/queries/delete_old_calls.sql"))
        .bind(before)
        .bind(batch)
        .fetch_one(&mut *tx)
        .await?;
    let events: i64 = sqlx::query_scalar(include_str!("../../sql/queries/delete_old_events.sql"))
        .bind(before)
        .bind(batch)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Some(Retained {
        calls: calls as u64,
        events: events as u64,
    }))
}
