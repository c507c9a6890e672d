//! What keeps reads cheap and tables at a steady size however many calls pile up: the
//! changes of the kept counts folded every second, and with `RETENTION_PERIOD`, old final
//! calls and events deleted in bounded batches.

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db::{self, Retained};

/// How often the counts' changes are folded: a read of the counts sums what was appended
/// since, a second of changes at most.
pub const FOLD_INTERVAL: Duration = Duration::from_secs(1);

/// Changes folded after which the changes' tables are vacuumed: every read of the counts
/// scans them, dead rows included, and autovacuum, waking once a minute, would let a
/// minute of them pile up (tens of thousands under load).
const VACUUM_AFTER_FOLDED: usize = 5_000;

/// Folds the counts' changes every [`FOLD_INTERVAL`] until `shutdown`, and vacuums the
/// changes' tables once [`VACUUM_AFTER_FOLDED`] changes were folded. Every replica does;
/// two folds at once never count a change twice, and a table another replica is vacuuming
/// is skipped.
pub async fn keep_counts_folded(pool: PgPool, shutdown: CancellationToken) {
    // Only the tables' owner may vacuum them (as for call_queue); autovacuum does otherwise.
    let may_vacuum = db::owns_queue(&pool).await.unwrap_or(false);
    let mut folded_since_vacuum = 0;
    loop {
        match db::fold_counts(&pool).await {
            Ok(folded) => folded_since_vacuum += folded,
            Err(err) => tracing::debug!(error = %err, "folding the counts failed; trying again"),
        }
        if may_vacuum && folded_since_vacuum >= VACUUM_AFTER_FOLDED {
            folded_since_vacuum = 0;
            if let Err(err) = db::vacuum_count_changes(&pool).await {
                tracing::debug!(error = %err, "vacuuming the counts' changes failed");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(FOLD_INTERVAL) => {}
        }
    }
}

/// Rows one retention batch deletes, of calls and of events: one short transaction.
pub const RETENTION_BATCH: i64 = 1000;
/// Pause between two rounds of retention; a round goes on while its batches come full.
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
/// Pause between two batches of a round, so that a backlog never holds a connection and the
/// table's locks without a break.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// One round of retention: batches until one comes short, another replica's batch is under
/// way, or `shutdown`. Returns what this replica deleted.
pub async fn retention_round(
    pool: &PgPool,
    period: Duration,
    shutdown: &CancellationToken,
) -> Result<Retained, db::DbError> {
    let mut done = Retained::default();
    let Ok(period) = chrono::Duration::from_std(period) else {
        return Ok(done);
    };
    while !shutdown.is_cancelled() {
        let before = chrono::Utc::now() - period;
        let Some(batch) = db::delete_old(pool, before, RETENTION_BATCH).await? else {
            break;
        };
        crate::metrics::retention_deleted(batch);
        done.calls += batch.calls;
        done.events += batch.events;
        if batch.calls < RETENTION_BATCH as u64 && batch.events < RETENTION_BATCH as u64 {
            break;
        }
        tokio::time::sleep(BATCH_PAUSE).await;
    }
    Ok(done)
}

/// Runs a round of retention at start and then every minute, until `shutdown`.
pub async fn keep_retention(pool: PgPool, period: Duration, shutdown: CancellationToken) {
    tracing::info!(
        retention_period = %humantime::format_duration(period),
        "retention on: older final calls are deleted with their attempts, timeline and events"
    );
    loop {
        match retention_round(&pool, period, &shutdown).await {
            Ok(done) if done != Retained::default() => tracing::info!(
                calls = done.calls,
                events = done.events,
                "retention: deleted what is older than RETENTION_PERIOD"
            ),
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "retention failed; trying again later"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RETENTION_INTERVAL) => {}
        }
    }
}
