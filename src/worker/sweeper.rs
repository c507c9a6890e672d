//! The sweeper: expires calls whose final webhook never came, rescues attempts abandoned by
//! a replica that died while dialing, sends again the attempts whose answer was lost, and
//! forgets old Idempotency-Keys and webhook receipts. Every replica runs
//! one; `SKIP LOCKED` and leases keep them from doing the same work twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::db::{self, DbError};

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub rescued: usize,
}

pub struct Sweeper {
    worker: Worker,
}

impl Sweeper {
    pub fn new(worker: Worker) -> Self {
        Self { worker }
    }

    /// One sweep: expire, then rescue: the abandoned attempts are taken over (a new lease,
    /// a `RESCUED` entry) and handed to the dial path the dispatcher's claims take, and
    /// the sweep waits for their dials before it returns.
    pub async fn run_once(&self) -> Result<SweepReport, DbError> {
        let worker = &self.worker;
        let expired = db::expire_overdue(&worker.pool, worker.settings.call_timeout).await?;
        for id in &expired {
            tracing::warn!(call_id = %id, "call expired: no final webhook within CALL_TIMEOUT");
        }
        crate::metrics::expired(expired.len());
        let abandoned = db::take_abandoned(&worker.pool, worker.settings.lease()).await?;
        let rescued = abandoned.len();
        crate::metrics::rescued(rescued);
        let dials = abandoned.into_iter().map(|claimed| {
            tracing::warn!(call_id = %claimed.call.id, attempt = claimed.attempt, "rescuing an abandoned attempt");
            worker.spawn_dial(claimed)
        });
        futures_util::future::join_all(dials).await;
        Ok(SweepReport {
            expired: expired.len(),
            rescued,
        })
    }

    /// Sweeps every so often until `shutdown`; a sweep under way is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let interval = (self.worker.settings.call_timeout / 10)
            .clamp(Duration::from_millis(200), Duration::from_secs(5));
        let mut last_purge = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            if let Err(err) = self.run_once().await {
                tracing::warn!(error = %err, "sweep failed; retrying at the next one");
            }
            if last_purge.elapsed() > Duration::from_secs(600) {
                last_purge = tokio::time::Instant::now();
                match db::purge_idempotency_keys(&self.worker.pool).await {
                    Ok(n) if n > 0 => tracing::info!(purged = n, "old Idempotency-Keys forgotten"),
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "purging Idempotency-Keys failed"),
                }
                if let Err(err) = db::purge_webhook_receipts(&self.worker.pool).await {
                    tracing::warn!(error = %err, "purging webhook receipts failed");
                }
            }
        }
    }
}

/// How often the workers look at `call_queue`'s dead rows (see `db::queue_upkeep`).
const QUEUE_UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Keeps `call_queue` lean and its statistics true until `shutdown` (`db::queue_upkeep`).
pub async fn keep_queue_lean(pool: sqlx::PgPool, shutdown: CancellationToken) {
    // Only the table's owner may vacuum it; anyone else would only fill the server's log
    // with a warning a second. Autovacuum still looks after it then, once a minute.
    match db::owns_queue(&pool).await {
        Ok(false) => {
            tracing::warn!(
                "the database user does not own call_queue: leaving its upkeep to autovacuum"
            );
            return;
        }
        Ok(true) => {}
        Err(err) => tracing::debug!(error = %err, "could not check who owns call_queue"),
    }
    loop {
        match db::queue_upkeep(&pool).await {
            Ok(done) if done != db::QueueUpkeep::default() => {
                tracing::debug!(?done, "call_queue upkeep")
            }
            Ok(_) => {}
            Err(err) => tracing::debug!(error = %err, "call_queue upkeep failed; trying again"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(QUEUE_UPKEEP_INTERVAL) => {}
        }
    }
}
