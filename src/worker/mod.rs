//! The dispatcher (claim, dial, record) and the sweeper (expire, rescue), safe to run in
//! every replica at once: they coordinate through the database alone.

mod dispatcher;
mod sweeper;

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;

pub use dispatcher::Dispatcher;
pub use sweeper::{SweepReport, Sweeper, keep_queue_lean};

use crate::{
    config::Config,
    db::{self, Claimed},
    domain::{RetryDecision, RetryPolicy, WebhookTokens},
    provider::{DialOutcome, DialRequest, HttpProvider, RESENDS},
};

/// The path of the webhook route, appended to `WEBHOOK_BASE_URL`.
pub const WEBHOOK_PATH: &str = "/api/v1/callbacks/call-status";

/// What the dispatcher and the sweeper need to know.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub max_concurrent_calls: u32,
    pub policy: RetryPolicy,
    pub call_timeout: Duration,
    pub provider_timeout: Duration,
    pub webhook_base_url: String,
    /// The safety-net poll; wake-ups normally come by LISTEN/NOTIFY.
    pub poll_interval: Duration,
    /// Makes the token of each attempt's webhook URL.
    pub tokens: WebhookTokens,
}

impl WorkerSettings {
    pub fn from_config(config: &Config, tokens: WebhookTokens) -> Self {
        Self {
            max_concurrent_calls: config.max_concurrent_calls,
            policy: RetryPolicy {
                max_attempts: config.max_retry_attempts,
                base_delay: config.retry_base_delay,
                max_delay: config.retry_max_delay,
            },
            call_timeout: config.call_timeout,
            provider_timeout: config.provider_timeout,
            webhook_base_url: config.webhook_base_url.clone().unwrap_or_default(),
            poll_interval: Duration::from_secs(2),
            tokens,
        }
    }

    /// How long a replica owns an attempt it is dialing: every send with its time limit,
    /// the pauses between them, and room to record the answer. Should a slow recording
    /// outlast it, the rescuer's resend carries the same Idempotency-Key and both records
    /// are fenced by the attempt, so the overlap is harmless.
    pub fn lease(&self) -> Duration {
        self.provider_timeout * (RESENDS + 1) + Duration::from_secs(5)
    }

    /// The webhook URL for one attempt, with the service's own reference to it and the
    /// token that proves a webhook comes from whoever was handed the URL.
    pub fn webhook_url(&self, claimed: &Claimed) -> String {
        let (id, attempt) = (claimed.call.id, claimed.attempt);
        format!(
            "{}{WEBHOOK_PATH}?ref={id}.{attempt}&token={}",
            self.webhook_base_url.trim_end_matches('/'),
            self.tokens.token(id, attempt)
        )
    }
}

/// Dials a claimed attempt and records the answer; shared by the dispatcher and the
/// sweeper's rescue.
#[tracing::instrument(skip_all, fields(call_id = %claimed.call.id, attempt = claimed.attempt))]
pub(crate) async fn dial_and_record(worker: &Worker, claimed: Claimed) {
    let (pool, provider, settings) = (&worker.pool, &worker.provider, &*worker.settings);
    let request = DialRequest {
        call_id: claimed.call.id,
        attempt: claimed.attempt,
        to: claimed.call.payload.to.as_str().to_owned(),
        script_id: claimed.call.payload.script_id.as_str().to_owned(),
        metadata: claimed.call.payload.metadata.clone(),
        webhook_url: settings.webhook_url(&claimed),
        resend: claimed.resend(),
    };
    let started = std::time::Instant::now();
    let mut outcome = provider.dial(&request, claimed.rescues).await;
    crate::metrics::provider_request(outcome.label(), started.elapsed());
    match &outcome {
        DialOutcome::Accepted { provider_call_id } => {
            tracing::info!(
                provider_call_id = provider_call_id.as_deref().unwrap_or(""),
                "dialed"
            )
        }
        DialOutcome::RateLimited { retry_after } => {
            tracing::warn!(?retry_after, "provider rate limit; the call waits")
        }
        // The provider's words, escaped (`?`): they may hold anything, newlines included.
        DialOutcome::Transient { reason, .. } => tracing::warn!(?reason, "dial failed"),
        DialOutcome::Permanent { reason } => tracing::warn!(?reason, "dial refused for good"),
        DialOutcome::Unknown { reason, resend_in } => tracing::warn!(
            ?reason,
            ?resend_in,
            "dial outcome unknown; the attempt stays open and is sent again"
        ),
    }
    // The database may be restarting: keep trying within the lease. Should it stay out of
    // reach, the attempt remains DIALING, and once the lease runs out the sweeper of some
    // replica sends it again with the same Idempotency-Key and records that answer.
    let deadline = tokio::time::Instant::now() + settings.lease() / 2;
    let mut pause = Duration::from_millis(100);
    // The retry decision taken by the recording that succeeded, counted once it has.
    let decided: std::sync::Mutex<Option<RetryDecision>> = Default::default();
    loop {
        let result = match &outcome {
            // The hot path: answers that arrive together are recorded in one statement.
            DialOutcome::Accepted { provider_call_id } => {
                let accepted = db::Accepted {
                    call_id: claimed.call.id,
                    attempt: claimed.attempt,
                    provider_call_id: provider_call_id.clone(),
                };
                let key = claimed.call.id.as_u64_pair().1;
                match worker.accepts.submit(key, accepted).await {
                    Ok(result) => result.map_err(anyhow::Error::from),
                    Err(lost) => Err(lost.into()),
                }
            }
            _ => db::record_dial_outcome(
                pool,
                claimed.call.id,
                claimed.attempt,
                &outcome,
                |hint| {
                    let decision = settings.policy.after_failure(
                        claimed.attempt as u32,
                        hint,
                        fastrand::f64(),
                    );
                    *decided.lock().unwrap() = Some(decision);
                    decision
                },
                |times, hint| {
                    settings
                        .policy
                        .after_rate_limit(times, hint, fastrand::f64())
                },
            )
            .await
            .map_err(anyhow::Error::from),
        };
        match result {
            Ok(()) => {
                if let Some(decision) = decided.lock().unwrap().take() {
                    crate::metrics::retry_decided(decision);
                }
                return;
            }
            Err(err)
                if err
                    .downcast_ref::<db::DbError>()
                    .is_some_and(db::DbError::is_duplicate_provider_call_id) =>
            {
                // The provider gave this attempt an id it had given another: its webhooks
                // could not tell the two apart. A provider error, settled as a failed
                // attempt, rather than an answer recorded for ever in vain.
                let DialOutcome::Accepted { provider_call_id } = &outcome else {
                    unreachable!("only a 2xx records a provider id")
                };
                let reason = format!(
                    "the provider answered with callId {:?}, which it had given another attempt",
                    provider_call_id.as_deref().unwrap_or_default()
                );
                tracing::error!(?reason, "provider error");
                outcome = DialOutcome::Transient {
                    reason,
                    retry_after: None,
                };
                decided.lock().unwrap().take();
            }
            Err(err) if tokio::time::Instant::now() < deadline => {
                tracing::warn!(error = %err, "recording the dial outcome failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Err(err) => {
                tracing::error!(error = %err, "could not record the dial outcome; the sweeper will resend it");
                return;
            }
        }
    }
}

/// Shared handles of the worker processes.
#[derive(Clone)]
pub struct Worker {
    pub pool: PgPool,
    pub provider: HttpProvider,
    pub settings: Arc<WorkerSettings>,
    /// Records the provider's 2xx answers that arrive together in one statement.
    pub accepts: db::AcceptBatcher,
}

impl Worker {
    /// Starts the worker's write batching on the current Tokio runtime.
    pub fn new(pool: PgPool, provider: HttpProvider, settings: WorkerSettings) -> Self {
        let batch_pool = pool.clone();
        let accepts = db::Batcher::start("accepted", 2, 256, move |accepted: Vec<db::Accepted>| {
            let pool = batch_pool.clone();
            async move { db::record_accepted_each(&pool, &accepted).await }
        });
        Self {
            pool,
            provider,
            settings: Arc::new(settings),
            accepts,
        }
    }
}
