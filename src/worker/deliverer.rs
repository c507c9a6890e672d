//! The delivery worker: wakes on LISTEN/NOTIFY (or its poll), claims due deliveries in one
//! short transaction, sends each outside any transaction, and records how each try went by
//! group commit. It runs beside the dispatcher in every worker replica and shares nothing
//! with it but the pool: a slow or dead endpoint holds at most its own few slots
//! (`EVENT_MAX_IN_FLIGHT_PER_ENDPOINT`), never a dial, a webhook or another endpoint.

use std::{collections::HashMap, sync::Arc, time::Duration};

use chrono::{SecondsFormat, Utc};
use poem_openapi::types::ToJSON as _;
use sqlx::PgPool;
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    dispatcher::listen,
    send_event::{self, Outgoing, Sent},
};
use crate::{
    config::Config,
    db::{self, ClaimedDelivery, DbError, Subject, TryOutcome, TryResult},
    domain::{DeliverySchedule, EventKeys, schedule::Rules},
};

/// Most deliveries claimed in one transaction.
const CLAIM_BATCH: u32 = 100;
/// Shortest time between two claims.
const MIN_CLAIM_GAP: Duration = Duration::from_millis(2);
/// Rows deleted per statement by the purge, and how often it runs.
const PURGE_BATCH: i64 = 1000;
const PURGE_INTERVAL: Duration = Duration::from_secs(60);
/// Longest wait a `Retry-After` may ask for beyond the schedule's.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What the delivery worker needs to know.
#[derive(Clone, Debug)]
pub struct EventSettings {
    pub keys: EventKeys,
    pub allow_private: bool,
    pub timeout: Duration,
    pub schedule: DeliverySchedule,
    pub per_endpoint: u32,
    pub max_in_flight: u32,
    /// The time zones a call shows (its body is the call as the API shows it).
    pub rules: Rules,
    /// The safety-net poll; wake-ups normally come by LISTEN/NOTIFY.
    pub poll_interval: Duration,
    /// How long delivered deliveries are kept.
    pub retention: Duration,
}

impl EventSettings {
    pub fn from_config(config: &Config) -> Self {
        Self {
            keys: config.event_keys(),
            allow_private: config.event_allow_private_urls,
            timeout: config.event_timeout,
            schedule: config.delivery_schedule(),
            per_endpoint: config.event_max_in_flight_per_endpoint,
            max_in_flight: config.event_max_in_flight,
            rules: config.schedule_rules(),
            poll_interval: Duration::from_secs(2),
            retention: config.event_delivery_retention,
        }
    }

    /// How long a worker owns a delivery it claimed: the request's time limit and as much
    /// again, and more, to record the answer. A worker that dies leaves it due again after
    /// this; should a recording outlast it, the delivery is sent twice with one `webhook-id`.
    pub fn lease(&self) -> Duration {
        self.timeout * 2 + Duration::from_secs(5)
    }
}

type TryBatcher = db::Batcher<TryResult, Result<(), DbError>>;

/// The delivery worker of one replica.
pub struct Deliverer {
    pool: PgPool,
    settings: Arc<EventSettings>,
    client: reqwest::Client,
    tries: TryBatcher,
}

/// A claimed delivery, ready to send.
struct Job {
    delivery: ClaimedDelivery,
    /// The body, or why it could not be made.
    body: Result<String, String>,
}

impl Deliverer {
    /// The worker; starts its group commit on the current Tokio runtime.
    pub fn new(pool: PgPool, settings: EventSettings) -> Self {
        let client = send_event::client(
            settings.timeout,
            settings.allow_private,
            settings.per_endpoint as usize,
        );
        let tries = {
            let pool = pool.clone();
            db::Batcher::start("delivery", 2, 256, move |results: Vec<TryResult>| {
                let pool = pool.clone();
                async move { db::record_tries(&pool, &results).await }
            })
        };
        Self {
            pool,
            settings: Arc::new(settings),
            client,
            tries,
        }
    }

    /// Runs until `shutdown`; then stops claiming and lets the tries in flight finish (up
    /// to their time limit) and be recorded.
    pub async fn run(self, shutdown: CancellationToken) {
        let wake = Arc::new(Notify::new());
        let listener = tokio::spawn(
            listen(
                self.pool.clone(),
                vec![(db::EVENTS_CHANNEL, wake.clone())],
                shutdown.clone(),
            )
            .run(),
        );
        self.run_woken(shutdown, wake).await;
        listener.abort();
    }

    /// [`Deliverer::run`], woken by `wake`, which a listener of the process's (see
    /// [`super::Wakeups`]) notifies.
    pub async fn run_woken(self, shutdown: CancellationToken, wake: Arc<Notify>) {
        let this = Arc::new(self);
        let purge = tokio::spawn(purge_delivered(
            this.pool.clone(),
            this.settings.retention,
            shutdown.clone(),
        ));
        // Each try answers its endpoint's id, so that the tries in flight to each endpoint
        // are known here too.
        let mut sends: JoinSet<Uuid> = JoinSet::new();
        let mut in_flight: HashMap<Uuid, u32> = HashMap::new();
        let per_endpoint = this.settings.per_endpoint;
        let mut claim_now = true;
        let mut wait = this.settings.poll_interval;
        let mut last_claim = tokio::time::Instant::now() - MIN_CLAIM_GAP;
        loop {
            if claim_now {
                // A burst of wake-ups (every commit of a final call sends one) costs one claim.
                tokio::time::sleep_until(last_claim + MIN_CLAIM_GAP).await;
                last_claim = tokio::time::Instant::now();
                // Claims until a claim takes fewer than it asked for: then what is due is
                // taken, or waits for room at its endpoint (a try ending there, or a
                // wake-up, claims again).
                let mut took_any = false;
                loop {
                    let room = this.settings.max_in_flight as usize - sends.len();
                    if room == 0 {
                        took_any = true;
                        break;
                    }
                    let asked = room.min(CLAIM_BATCH as usize);
                    match this.claim(asked as u32).await {
                        Ok(jobs) if jobs.is_empty() => break,
                        Ok(jobs) => {
                            took_any = true;
                            let short = jobs.len() < asked;
                            for job in jobs {
                                let endpoint = job.delivery.endpoint.id;
                                *in_flight.entry(endpoint).or_default() += 1;
                                let this = this.clone();
                                sends.spawn(async move {
                                    this.try_one(job).await;
                                    endpoint
                                });
                            }
                            if short {
                                break;
                            }
                        }
                        Err(err) => {
                            tracing::warn!(error = %err, "claiming deliveries failed; retrying shortly");
                            break;
                        }
                    }
                }
                // Only an idle worker needs the timer of the next retry.
                wait = if took_any {
                    this.settings.poll_interval
                } else {
                    this.idle_wait().await
                };
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = wake.notified() => claim_now = true,
                Some(done) = sends.join_next(), if !sends.is_empty() => {
                    let endpoint = done.unwrap_or_default();
                    let left = in_flight.get_mut(&endpoint).map(|n| {
                        *n -= 1;
                        *n
                    });
                    if left == Some(0) {
                        in_flight.remove(&endpoint);
                    }
                    // Claim again once the endpoint has room for a batch rather than one try
                    // at a time (what is due for it waits at most the other half of its tries).
                    claim_now = left.unwrap_or(0) <= per_endpoint / 2;
                }
                _ = tokio::time::sleep(wait) => claim_now = true,
            }
        }
        if !sends.is_empty() {
            tracing::info!(
                in_flight = sends.len(),
                "finishing the event deliveries in flight"
            );
        }
        let drain = this.settings.timeout + Duration::from_secs(5);
        if tokio::time::timeout(drain, async { while sends.join_next().await.is_some() {} })
            .await
            .is_err()
        {
            tracing::warn!(
                "event deliveries still unfinished at shutdown; they are sent again when their lease ends"
            );
        }
        purge.abort();
    }

    /// Until the next delivery falls due, at most the poll. One due already, that the claim
    /// could not take (its endpoint's tries are all in flight), waits for one of them to end.
    async fn idle_wait(&self) -> Duration {
        super::until_due(
            db::next_delivery_due(&self.pool).await,
            self.settings.poll_interval,
        )
    }

    /// Claims up to `limit` deliveries and renders their bodies.
    async fn claim(&self, limit: u32) -> Result<Vec<Job>, DbError> {
        let s = &self.settings;
        let claimed = db::claim_deliveries(&self.pool, s.per_endpoint, limit, s.lease()).await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut events: Vec<(Uuid, crate::domain::EventType)> =
            claimed.iter().map(|c| (c.event_id, c.event_type)).collect();
        events.sort_by_key(|(id, _)| *id);
        events.dedup_by_key(|(id, _)| *id);
        let subjects = db::subjects_of(&self.pool, &events).await?;
        Ok(claimed
            .into_iter()
            .map(|delivery| {
                let body = subjects
                    .iter()
                    .find(|(event, _)| *event == delivery.event_id)
                    .map(|(_, subject)| self.body(&delivery, subject))
                    .ok_or_else(|| {
                        "the event's record of its call or campaign cannot be read".to_owned()
                    });
                Job { delivery, body }
            })
            .collect())
    }

    /// `{"type", "timestamp", "data"}`: the call or campaign as the API shows it.
    fn body(&self, delivery: &ClaimedDelivery, subject: &Subject) -> String {
        let data = match subject {
            Subject::Call(call) => {
                crate::api::models::Call::of(call.clone(), &self.settings.rules).to_json()
            }
            Subject::Campaign(campaign) => {
                crate::api::models::Campaign::of(campaign.clone()).to_json()
            }
        };
        serde_json::json!({
            "type": delivery.event_type.as_str(),
            "timestamp": delivery.occurred_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "data": data,
        })
        .to_string()
    }

    /// Sends one try and records how it went.
    async fn try_one(&self, job: Job) {
        let d = &job.delivery;
        let now = Utc::now();
        let signers: Result<Vec<_>, String> = d
            .endpoint
            .signing_secrets(now)
            .into_iter()
            .enumerate()
            .filter_map(
                |(i, r)| match self.settings.keys.secret(&r.key_id, &r.salt) {
                    Ok(secret) => Some(Ok(secret.signer())),
                    // The previous secret only adds a signature; the current one is required.
                    Err(_) if i > 0 => None,
                    Err(err) => Some(Err(err.to_string())),
                },
            )
            .collect();
        let started = std::time::Instant::now();
        let sent = match (&job.body, &signers) {
            (Err(why), _) | (_, Err(why)) => Sent::Unsigned(why.clone()),
            (Ok(body), Ok(signers)) => {
                let id = d.event_id.to_string();
                let out = Outgoing {
                    url: &d.endpoint.url,
                    id: &id,
                    body,
                    signers,
                    now,
                };
                send_event::send(&self.client, self.settings.allow_private, out).await
            }
        };
        crate::metrics::event_try(sent.label(), started.elapsed());
        let outcome = match &sent {
            Sent::Delivered(_) => {
                let latency = (Utc::now() - d.occurred_at).to_std().unwrap_or_default();
                crate::metrics::event_delivered(latency);
                TryOutcome::Delivered
            }
            other => match self
                .settings
                .schedule
                .after(d.attempt as u32, fastrand::f64())
            {
                Some(delay) => {
                    let asked = match other {
                        Sent::Rejected(_, Some(secs)) => {
                            Duration::from_secs(*secs).min(MAX_RETRY_AFTER)
                        }
                        _ => Duration::ZERO,
                    };
                    let delay = delay.max(asked);
                    TryOutcome::RetryAt(
                        Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default(),
                    )
                }
                None => {
                    crate::metrics::event_failed();
                    TryOutcome::Failed
                }
            },
        };
        if !matches!(outcome, TryOutcome::Delivered) {
            tracing::info!(
                delivery_id = %d.id,
                endpoint_id = %d.endpoint.id,
                event = d.event_type.as_str(),
                attempt = d.attempt,
                error = sent.error().as_deref().unwrap_or_default(),
                "event delivery failed"
            );
        }
        let result = TryResult {
            delivery_id: d.id,
            attempt: d.attempt,
            status_code: sent.status_code(),
            error: sent.error(),
            outcome,
        };
        let key = d.endpoint.id.as_u64_pair().0;
        match self.tries.submit(key, result).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, delivery_id = %d.id, "recording a delivery try failed; it is tried again when its lease ends")
            }
            Err(err) => {
                tracing::warn!(error = %err, delivery_id = %d.id, "recording a delivery try was lost; it is tried again when its lease ends")
            }
        }
    }
}

/// Deletes delivered deliveries (and events no delivery waits for) older than `retention`,
/// a bounded batch per statement, every minute until `shutdown`. Every replica runs one;
/// `SKIP LOCKED` keeps them out of each other's way.
async fn purge_delivered(pool: PgPool, retention: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(PURGE_INTERVAL) => {}
        }
        let before = Utc::now() - chrono::Duration::from_std(retention).unwrap_or_default();
        for _ in 0..20 {
            match db::purge_delivered(&pool, before, PURGE_BATCH).await {
                Ok((deliveries, events)) => {
                    if deliveries + events > 0 {
                        tracing::debug!(deliveries, events, "old deliveries purged");
                    }
                    if deliveries < PURGE_BATCH as u64 && events < PURGE_BATCH as u64 {
                        break;
                    }
                }
                Err(err) => {
                    tracing::warn!(error = %err, "purging old deliveries failed");
                    break;
                }
            }
        }
    }
}
