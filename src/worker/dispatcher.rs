//! The dispatcher: wakes on LISTEN/NOTIFY (or, as a safety net, on a timer), claims due
//! calls in one short transaction, and dials each outside any transaction.

use std::{sync::Arc, time::Duration};

use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::Worker;
use crate::db::{self, DbError, WAKEUP_CHANNEL};

/// Most calls claimed in one transaction.
const CLAIM_BATCH: u32 = 100;

pub struct Dispatcher {
    worker: Worker,
}

impl Dispatcher {
    pub fn new(worker: Worker) -> Self {
        Self { worker }
    }

    /// Claims everything claimable now and dials it, waiting for every dial to be recorded.
    /// Returns how many attempts were dialed. For tests and tools that drive the queue
    /// step by step.
    pub async fn run_once(&self) -> Result<usize, DbError> {
        let mut dials = Vec::new();
        loop {
            let claimed = self.claim().await?;
            if claimed.is_empty() {
                break;
            }
            dials.extend(claimed.into_iter().map(|one| self.worker.spawn_dial(one)));
        }
        let dialed = dials.len();
        futures_util::future::join_all(dials).await;
        Ok(dialed)
    }

    async fn claim(&self) -> Result<Vec<db::Claimed>, DbError> {
        let settings = &self.worker.settings;
        let started = std::time::Instant::now();
        let claimed = db::claim(
            &self.worker.pool,
            settings.max_concurrent_calls,
            CLAIM_BATCH.min(settings.max_concurrent_calls),
            settings.lease(),
            &settings.rules,
        )
        .await?;
        crate::metrics::claimed(started.elapsed(), claimed.len());
        let now = chrono::Utc::now();
        for one in &claimed {
            if let Some(due) = one.due_at {
                crate::metrics::dispatch_delay((now - due).to_std().unwrap_or_default());
            }
        }
        if !claimed.is_empty() {
            tracing::debug!(count = claimed.len(), elapsed = ?started.elapsed(), "claimed");
        }
        Ok(claimed)
    }

    /// Runs until `shutdown`; then stops claiming, lets the provider requests it started
    /// finish and be recorded, and returns.
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listening = listen(
            self.worker.pool.clone(),
            vec![(WAKEUP_CHANNEL, wake.clone())],
            shutdown.clone(),
        );
        // The listener wakes us once it is listening, so a notification sent before then
        // is still followed by a claim.
        let listener = tokio::spawn(listening.run());
        self.run_woken(shutdown, wake).await;
        listener.abort();
    }

    /// [`Dispatcher::run`], woken by `wake`, which a listener of the process's (see
    /// [`super::Wakeups`]) notifies.
    pub async fn run_woken(self, shutdown: CancellationToken, wake: Arc<Notify>) {
        let mut woken_at: Option<std::time::Instant> = None;
        loop {
            // Claim until nothing more can be claimed (queue empty, cap full, numbers busy).
            loop {
                match self.claim().await {
                    Ok(claimed) if claimed.is_empty() => break,
                    Ok(claimed) => {
                        if let Some(woken) = woken_at.take() {
                            crate::metrics::refill(woken.elapsed());
                        }
                        for one in claimed {
                            self.worker.spawn_dial(one);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "claim failed; retrying shortly");
                        break;
                    }
                }
            }
            let wait = self.idle_wait().await;
            woken_at = None;
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => woken_at = Some(std::time::Instant::now()),
                _ = tokio::time::sleep(wait) => {}
            }
        }
        // Every dial of this replica, the sweeper's rescues included.
        let dials = &self.worker.dials;
        dials.close();
        if !dials.is_empty() {
            tracing::info!(
                in_flight = dials.len(),
                "finishing the provider requests in flight"
            );
        }
        let drain = self.worker.settings.lease();
        if tokio::time::timeout(drain, dials.wait()).await.is_err() {
            tracing::error!(
                "provider requests still unfinished at shutdown; the sweeper will resend them"
            );
        }
    }

    /// How long to sleep when there is nothing to claim: until the next retry falls due,
    /// at most the poll interval (the safety net under LISTEN/NOTIFY).
    async fn idle_wait(&self) -> Duration {
        // Due already but not claimable (cap full, number busy): a slot freeing up will
        // notify us; until then, only the poll.
        super::until_due(
            db::next_due(&self.worker.pool).await,
            self.worker.settings.poll_interval,
        )
    }
}

pub(super) struct Listening {
    pool: sqlx::PgPool,
    channels: Vec<(&'static str, Arc<Notify>)>,
    shutdown: CancellationToken,
}

/// LISTENs on each channel, on one connection, and wakes its `Notify` for each of its
/// notifications (see [`Listening::run`]).
pub(super) fn listen(
    pool: sqlx::PgPool,
    channels: Vec<(&'static str, Arc<Notify>)>,
    shutdown: CancellationToken,
) -> Listening {
    Listening {
        pool,
        channels,
        shutdown,
    }
}

impl Listening {
    /// Forwards notifications to `wake`, which coalesces them: a burst of a thousand
    /// inserts costs one claim round, not a thousand. A lost connection is re-made; since
    /// notifications sent meanwhile are lost, a reconnection counts as a wake-up too.
    pub(super) async fn run(self) {
        loop {
            let mut listener = match self.connect().await {
                Some(listener) => listener,
                None => return,
            };
            loop {
                let received = tokio::select! {
                    _ = self.shutdown.cancelled() => return,
                    received = listener.try_recv() => received,
                };
                match received {
                    Ok(Some(notification)) => {
                        for (channel, wake) in &self.channels {
                            if notification.channel() == *channel {
                                wake.notify_one();
                            }
                        }
                    }
                    Ok(None) => {
                        tracing::warn!("LISTEN connection lost; reconnecting");
                        self.wake_all();
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "LISTEN failed; reconnecting");
                        self.wake_all();
                        break;
                    }
                }
            }
        }
    }

    fn wake_all(&self) {
        for (_, wake) in &self.channels {
            wake.notify_one();
        }
    }

    async fn connect(&self) -> Option<PgListener> {
        let mut pause = Duration::from_millis(200);
        loop {
            let attempt = async {
                let mut listener = PgListener::connect_with(&self.pool).await?;
                let channels: Vec<&str> = self.channels.iter().map(|(c, _)| *c).collect();
                listener.listen_all(channels).await?;
                Ok::<_, sqlx::Error>(listener)
            };
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                result = attempt => match result {
                    Ok(listener) => {
                        // Anything that happened while we were not listening is caught by a claim.
                        self.wake_all();
                        return Some(listener);
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot LISTEN yet; retrying"),
                },
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(5));
        }
    }
}
