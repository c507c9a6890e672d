//! The dispatcher (claim, dial, record) and the sweeper (expire, rescue), safe to run in
//! every replica at once: they coordinate through the database alone.

mod deliverer;
mod dial;
mod dispatcher;
mod retention;
mod send_event;
mod sweeper;

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio_util::task::TaskTracker;

pub use deliverer::{Deliverer, EventSettings};
pub use dispatcher::Dispatcher;
pub use retention::{RETENTION_BATCH, keep_counts_folded, keep_retention, retention_round};
pub use send_event::TRY_OUTCOMES as EVENT_TRY_OUTCOMES;
pub use sweeper::{SweepReport, Sweeper, keep_queue_lean};

use crate::{
    config::Config,
    db::{self, Claimed},
    domain::{RetryPolicy, WebhookTokens, schedule::Rules},
    provider::{CallProvider, RESENDS},
};

/// The wake-ups of one process's dispatcher and delivery worker, from one LISTEN
/// connection: PostgreSQL wakes every listening backend for every notification, whatever
/// its channel, so a second connection would be woken by every commit that frees a slot.
pub struct Wakeups {
    /// `call_orchestrator_wakeup`: calls to claim, slots freed.
    pub calls: Arc<tokio::sync::Notify>,
    /// `call_orchestrator_events`: deliveries made.
    pub events: Arc<tokio::sync::Notify>,
}

impl Wakeups {
    /// Starts listening on the current Tokio runtime, until `shutdown`.
    pub fn spawn(pool: PgPool, shutdown: tokio_util::sync::CancellationToken) -> Self {
        let wakeups = Self {
            calls: Arc::default(),
            events: Arc::default(),
        };
        let channels = vec![
            (db::WAKEUP_CHANNEL, wakeups.calls.clone()),
            (db::EVENTS_CHANNEL, wakeups.events.clone()),
        ];
        tokio::spawn(dispatcher::listen(pool, channels, shutdown).run());
        wakeups
    }
}

/// How long an idle loop sleeps when the next piece of work falls due at `due`: until then
/// (and a few milliseconds, so that it is due when the loop wakes), at most `poll`. Work due
/// already, that the loop could not take, waits for a wake-up or the poll; so does a
/// loop that could not ask.
fn until_due<E>(due: Result<Option<chrono::DateTime<chrono::Utc>>, E>, poll: Duration) -> Duration {
    match due {
        Ok(Some(due)) => {
            let until = (due - chrono::Utc::now()).to_std().unwrap_or_default();
            if until.is_zero() {
                poll
            } else {
                until.min(poll) + Duration::from_millis(5)
            }
        }
        _ => poll,
    }
}

/// What the dispatcher and the sweeper need to know.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    pub max_concurrent_calls: u32,
    pub policy: RetryPolicy,
    /// The calling window, time zones and daily limit, enforced at each claim.
    pub rules: Rules,
    pub call_timeout: Duration,
    pub provider_timeout: Duration,
    /// `RECONCILE_AFTER`: when a call whose end has not arrived is looked up.
    pub reconcile_after: Duration,
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
            policy: config.retry_policy(),
            rules: config.schedule_rules(),
            call_timeout: config.call_timeout,
            provider_timeout: config.provider_timeout,
            reconcile_after: config.reconcile_after,
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
}

/// Shared handles of the worker processes.
#[derive(Clone)]
pub struct Worker {
    pub pool: PgPool,
    pub provider: Arc<dyn CallProvider>,
    pub settings: Arc<WorkerSettings>,
    /// Records the provider's 2xx answers that arrive together in one statement.
    pub accepts: db::AcceptBatcher,
    /// The dials in flight, whoever claimed them (the dispatcher, or the sweeper's rescue):
    /// a stopping replica waits for all of them.
    pub dials: TaskTracker,
}

impl Worker {
    /// The handles; `accepts` is started by `app` (see `app::worker`).
    pub fn new(
        pool: PgPool,
        provider: Arc<dyn CallProvider>,
        settings: WorkerSettings,
        accepts: db::AcceptBatcher,
    ) -> Self {
        Self {
            pool,
            provider,
            settings: Arc::new(settings),
            accepts,
            dials: TaskTracker::new(),
        }
    }

    /// The webhook URL for one attempt: the provider's webhook route under
    /// `WEBHOOK_BASE_URL`, with the service's own reference to the attempt and the token
    /// that proves a webhook comes from whoever was handed the URL.
    pub fn webhook_url(&self, claimed: &Claimed) -> String {
        let (id, attempt) = (claimed.call.id, claimed.attempt);
        format!(
            "{}{}?ref={id}.{attempt}&token={}",
            self.settings.webhook_base_url.trim_end_matches('/'),
            self.provider.webhook_path(),
            self.settings.tokens.token(id, attempt)
        )
    }

    /// The dial path: sends a claimed attempt and records the answer, as a task of
    /// [`Worker::dials`]. The dispatcher's claims and the sweeper's rescues both go here.
    pub fn spawn_dial(&self, claimed: Claimed) -> tokio::task::JoinHandle<()> {
        let worker = self.clone();
        self.dials
            .spawn(async move { dial::dial_and_record(&worker, claimed).await })
    }
}
