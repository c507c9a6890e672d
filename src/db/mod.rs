//! PostgreSQL access: one small documented function per query; rows become domain types here.

mod batch;
mod calls;
mod campaigns;
mod claim;
mod deliveries;
mod dial;
mod event_endpoints;
mod events;
mod settle;
mod suppressions;
mod sweeps;
mod upkeep;
mod webhooks;

use std::time::Duration;

use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

use crate::domain::{WebhookUpdate, decide::WebhookOutcome};

pub use batch::{BatchLost, Batcher, key_of};
pub use calls::{
    CallFilter, CreateOutcome, IdempotencyKey, ListPage, NewCall, Page, Suppressed, cancel_call,
    count_by_status, create_calls, create_calls_skipping, create_each, create_idempotent,
    fold_counts, get_call, list_calls, update_call, vacuum_count_changes,
};
pub use campaigns::{
    CANCEL_BATCH, CampaignAction, CampaignForCalls, CampaignRefusal, act_on_campaign,
    campaign_for_calls, cancel_campaign_calls, create_campaign, end_campaign_calls, forget_turns,
    get_campaign, list_campaigns, settle_campaigns, update_campaign,
};
pub use claim::{Claimed, claim, next_due};
pub use deliveries::{
    ClaimedDelivery, Delivery, Subject, TryOutcome, TryResult, claim_deliveries, list_deliveries,
    next_delivery_due, pending_deliveries, purge_delivered, record_tries, retry_delivery,
    subjects_of,
};
pub use dial::{Accepted, record_accepted_each, record_dial_outcome};
pub use event_endpoints::{
    EndpointChange, NewEndpoint, create_endpoint, delete_endpoint, get_endpoint, list_endpoints,
    rotate_secret, update_endpoint,
};
pub use events::list_events;
pub use suppressions::{
    NewSuppression, Suppression, delete_suppression, get_suppression, list_suppressions,
    put_suppressions, suppressed_among,
};
pub use sweeps::{
    Reconcilable, expire_deadlines, expire_overdue, take_abandoned, take_reconcilable,
};
pub use upkeep::{
    QUEUE_UPKEEP_LOCK, QueueUpkeep, RETENTION_LOCK, Retained, delete_old, owns_queue,
    purge_idempotency_keys, purge_webhook_receipts, queue_upkeep,
};
pub use webhooks::{apply_webhook, apply_webhooks};

/// Dial answers recorded by group commit; see `record_accepted_each`.
pub type AcceptBatcher = Batcher<Accepted, Result<(), DbError>>;

/// Creates without an Idempotency-Key, stored by group commit; see `create_each`.
pub type CreateBatcher = Batcher<NewCall, Result<crate::domain::Call, DbError>>;

/// Webhooks applied by group commit; see `apply_webhooks`.
pub type WebhookBatcher = Batcher<WebhookUpdate, Result<WebhookOutcome, DbError>>;

/// The channel the dispatchers LISTEN on; see the triggers in the migrations.
pub const WAKEUP_CHANNEL: &str = "call_orchestrator_wakeup";

/// The channel the delivery workers LISTEN on; see the events migration.
pub const EVENTS_CHANNEL: &str = "call_orchestrator_events";

/// Wakes every replica's dispatcher at once (a campaign resumed or changed); a notification
/// lost is caught by their poll.
pub(crate) async fn notify_dispatchers(pool: &PgPool) {
    notify(pool, WAKEUP_CHANNEL).await;
}

/// Sends a wake-up on `channel`; a notification lost is caught by the listeners' poll.
pub(crate) async fn notify(pool: &PgPool, channel: &str) {
    if let Err(err) = sqlx::query("SELECT pg_notify($1, '')")
        .bind(channel)
        .execute(pool)
        .await
    {
        tracing::debug!(error = %err, channel, "wake-up not sent; the listeners' poll will catch up");
    }
}

/// Wakes the dispatchers after new calls were committed. A transaction that NOTIFYs takes
/// a global lock at commit, which would serialise every create; so the API notifies after
/// its commit instead, from one background task per process that coalesces a burst of
/// creates into one notification. A wake-up lost to a crash between the two is caught by
/// the dispatchers' poll: notifications are hints.
#[derive(Clone)]
pub struct Wakeup {
    pending: std::sync::Arc<tokio::sync::Notify>,
}

impl Wakeup {
    /// Starts the notifying task on the current Tokio runtime.
    pub fn spawn(pool: PgPool) -> Self {
        let pending = std::sync::Arc::new(tokio::sync::Notify::new());
        let waiting = pending.clone();
        tokio::spawn(async move {
            loop {
                waiting.notified().await;
                if let Err(err) = sqlx::query("SELECT pg_notify($1, '')")
                    .bind(WAKEUP_CHANNEL)
                    .execute(&pool)
                    .await
                {
                    tracing::debug!(error = %err, "wake-up not sent; the dispatchers' poll will catch up");
                }
            }
        });
        Self { pending }
    }

    /// Asks for a notification (sent soon, once for any number of asks meanwhile).
    pub fn wake(&self) {
        self.pending.notify_one();
    }
}

/// Database errors the callers tell apart; everything else is `Other` and becomes a 500.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("call not found")]
    NotFound,
    #[error("call is {}, not PENDING", .0.as_str())]
    NotPending(crate::domain::CallStatus),
    #[error("the Idempotency-Key was already used with another request body")]
    IdempotencyConflict,
    /// Calls to suppressed numbers, left out of a create.
    #[error("the number is suppressed")]
    Suppressed(Vec<calls::Suppressed>),
    /// An unknown campaign, or one that cannot take the change from its status.
    #[error("the campaign refused the change: {0:?}")]
    Campaign(CampaignRefusal),
    #[error(transparent)]
    Other(#[from] sqlx::Error),
}

impl DbError {
    /// The database is out of reach: see [`is_unavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, DbError::Other(err) if is_unavailable(err))
    }

    /// A provider id (`callId`) that another attempt has already: the unique index on
    /// `call_attempts.provider_call_id` refused it.
    pub fn is_duplicate_provider_call_id(&self) -> bool {
        matches!(self, DbError::Other(sqlx::Error::Database(db))
            if db.constraint() == Some("call_attempts_provider_call_id_key"))
    }

    /// An error that says the database is out of reach (a 503 for the API).
    pub fn unavailable() -> Self {
        DbError::Other(sqlx::Error::PoolTimedOut)
    }
}

/// The database is out of reach (down, restarting, shutting down, the pool exhausted):
/// nothing to do with what was asked of it. The one classification behind every 503, every
/// "retry shortly" of the workers, and the wait for a database that is still starting.
pub fn is_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        // Class 08: connection exception; 57P0x: the server is shutting down or starting.
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P")),
        _ => false,
    }
}

/// The key of the webhook tokens (see `domain::WebhookTokens`), made by a migration and
/// shared by every replica through the database.
pub async fn webhook_token_key(pool: &PgPool) -> Result<Vec<u8>, DbError> {
    Ok(
        sqlx::query_scalar("SELECT value FROM service_secrets WHERE name = 'webhook_token'")
            .fetch_one(pool)
            .await?,
    )
}

/// The migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Connections are made lazily and re-made after the database comes back.
pub fn connect_lazy(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options.application_name("call-orchestrator")))
}

/// Applies pending migrations. Safe when several replicas start at once: sqlx holds a
/// PostgreSQL advisory lock for the duration, so one applies them and the others wait.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// True when the database answers a trivial query within `timeout`.
pub async fn ping(pool: &PgPool, timeout: Duration) -> bool {
    matches!(
        tokio::time::timeout(timeout, sqlx::query("SELECT 1").execute(pool)).await,
        Ok(Ok(_))
    )
}
