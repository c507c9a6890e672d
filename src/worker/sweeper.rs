//! The sweeper: expires calls whose final webhook never came, rescues attempts abandoned by
//! a replica that died while dialing, sends again the attempts whose answer was lost,
//! reconciles (looks up at the provider) calls whose end has not arrived, and forgets old
//! Idempotency-Keys and webhook receipts. Every replica runs one; `SKIP LOCKED` and leases
//! keep them from doing the same work twice.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use futures_util::StreamExt as _;

use super::Worker;
use crate::{
    db::{self, DbError},
    domain::{ProviderStatus, ReportSource, WebhookUpdate, decide::Retry},
    provider::LookUp,
};

/// Look-ups at the provider a sweep makes at once.
const CONCURRENT_LOOK_UPS: usize = 8;

/// What one sweep did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SweepReport {
    pub expired: usize,
    pub rescued: usize,
    /// Calls looked up at the provider.
    pub reconciled: usize,
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
        // Look-ups first: a call about to expire is looked up once more, so that only a
        // call still unknown at the vendor after CALL_TIMEOUT expires.
        let reconciled = self.reconcile().await?;
        let expired = db::expire_overdue(&worker.pool, worker.settings.call_timeout).await?;
        for id in &expired {
            tracing::warn!(call_id = %id, "call expired: no final webhook within CALL_TIMEOUT");
        }
        crate::metrics::expired(expired.len());
        let late = db::expire_deadlines(&worker.pool).await?;
        for id in &late {
            tracing::info!(call_id = %id, "call expired: its notAfter passed before it was dialed");
        }
        crate::metrics::claim_held(std::iter::empty(), late.len(), 0);
        // The campaigns' share never holds back the rescues below.
        if let Err(err) = self.campaigns().await {
            tracing::warn!(error = %err, "the campaigns' sweep failed; trying again at the next one");
        }
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
            reconciled,
        })
    }

    /// The campaigns' share of a sweep: the calls of campaigns that ended expire, those of
    /// cancelled ones left by their cancel are cancelled, statuses the triggers could not
    /// see right are mended.
    async fn campaigns(&self) -> Result<(), DbError> {
        let pool = &self.worker.pool;
        let ended = db::end_campaign_calls(pool).await?;
        if ended > 0 {
            tracing::info!(calls = ended, "calls expired: their campaign ended");
        }
        let cancelled = db::cancel_campaign_calls(pool, None).await?;
        if cancelled > 0 {
            tracing::info!(calls = cancelled, "calls cancelled with their campaign");
        }
        db::settle_campaigns(pool).await?;
        db::forget_turns(pool).await?;
        Ok(())
    }

    /// Looks up at the provider the calls whose end has not arrived for `RECONCILE_AFTER`,
    /// and applies what it says exactly as its webhook would have been applied (recorded
    /// `RECONCILED` on the timeline). Only for a provider with a look-up.
    async fn reconcile(&self) -> Result<usize, DbError> {
        let worker = &self.worker;
        if !worker.provider.has_look_up() {
            return Ok(0);
        }
        let settings = &worker.settings;
        let due = db::take_reconcilable(
            &worker.pool,
            settings.reconcile_after,
            settings.call_timeout,
            100,
        )
        .await?;
        let count = due.len();
        futures_util::stream::iter(due)
            .for_each_concurrent(CONCURRENT_LOOK_UPS, |due| async move {
                self.reconcile_one(due).await;
            })
            .await;
        Ok(count)
    }

    #[tracing::instrument(skip_all, fields(call_id = %due.call_id, attempt = due.attempt))]
    async fn reconcile_one(&self, due: db::Reconcilable) {
        let worker = &self.worker;
        let report = match worker.provider.look_up(&due.provider_call_id).await {
            LookUp::Found(report) => report,
            LookUp::NotFound => {
                crate::metrics::reconciled("not_found");
                tracing::warn!(provider_call_id = %due.provider_call_id, "reconciliation: the provider does not know the call");
                return;
            }
            LookUp::Failed(reason) => {
                crate::metrics::reconciled("failed");
                tracing::warn!(
                    ?reason,
                    "reconciliation: the look-up failed; trying again later"
                );
                return;
            }
            LookUp::Unsupported => return,
        };
        let ended = report.status.is_final();
        crate::metrics::reconciled(if ended { "ended" } else { "running" });
        if !ended && report.status != ProviderStatus::InProgress {
            // Queued or ringing after RECONCILE_AFTER: nothing worth a timeline entry.
            return;
        }
        let update = WebhookUpdate {
            provider_call_id: due.provider_call_id.clone(),
            status: report.status,
            duration_sec: report.duration_sec,
            reason: report.reason,
            reference: Some((due.call_id, due.attempt)),
            authenticated: true,
            webhook_id: None,
            body: report.body,
            source: ReportSource::LookUp,
        };
        let (policy, rules) = (worker.settings.policy, worker.settings.rules);
        let applied = db::apply_webhook(&worker.pool, &update, || Retry {
            policy,
            jitter: fastrand::f64(),
            rules,
        })
        .await;
        match applied {
            Ok(outcome) => {
                if let Some(decision) = outcome.retry {
                    crate::metrics::retry_decided(decision);
                }
                if ended {
                    tracing::info!(status = report.status.as_str(), ?outcome.effect, "reconciled: the provider says the call ended");
                }
            }
            Err(err) => tracing::warn!(error = %err, "recording a reconciliation failed"),
        }
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
