//! Deliveries of events to endpoints: claimed by the delivery workers of every replica with
//! `SKIP LOCKED` under a lease, their tries recorded by group commit, listed, sent again on
//! demand, and purged once delivered long enough ago.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::{DbError, event_endpoints::EndpointRow};
use crate::domain::{Call, Campaign, DeliveryStatus, Endpoint, EventType};

/// A delivery a worker holds: the event to send and the endpoint to send it to, as they
/// were when it was claimed.
pub struct ClaimedDelivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub event_type: EventType,
    pub occurred_at: DateTime<Utc>,
    /// This try's number, from 1.
    pub attempt: i32,
    pub endpoint: Endpoint,
}

#[derive(sqlx::FromRow)]
struct ClaimedRow {
    delivery_id: Uuid,
    event_id: Uuid,
    event_type: EventType,
    occurred_at: DateTime<Utc>,
    attempt: i32,
    #[sqlx(flatten)]
    endpoint: EndpointRow,
}

/// Claims due deliveries of enabled endpoints: at most `per_endpoint` in flight per endpoint
/// across every replica (each endpoint's row is locked while its room is counted, so two
/// claims never both fill it), at most `limit` in all, each leased for `lease`. A delivery
/// whose worker dies falls due again when its lease ends.
pub async fn claim_deliveries(
    pool: &PgPool,
    per_endpoint: u32,
    limit: u32,
    lease: Duration,
) -> Result<Vec<ClaimedDelivery>, DbError> {
    let rows: Vec<ClaimedRow> =
        sqlx::query_as(include_str!("../../sql/queries/claim_deliveries.sql"))
            .bind(i64::from(per_endpoint))
            .bind(i64::from(limit))
            .bind(lease.as_secs_f64())
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|r| ClaimedDelivery {
            id: r.delivery_id,
            event_id: r.event_id,
            event_type: r.event_type,
            occurred_at: r.occurred_at,
            attempt: r.attempt,
            endpoint: r.endpoint.into(),
        })
        .collect())
}

/// What an event reports, as the API shows it.
pub enum Subject {
    Call(Call),
    Campaign(Campaign),
}

/// The subjects of `events` (by event id) as their snapshots hold them.
pub async fn subjects_of(
    pool: &PgPool,
    events: &[(Uuid, EventType)],
) -> Result<Vec<(Uuid, Subject)>, DbError> {
    let (campaigns, calls): (Vec<_>, Vec<_>) = events.iter().partition(|(_, t)| t.is_campaign());
    let mut subjects = Vec::with_capacity(events.len());
    if !calls.is_empty() {
        let ids: Vec<Uuid> = calls.iter().map(|(id, _)| *id).collect();
        for (event, call) in super::calls::calls_of_events(pool, &ids).await? {
            subjects.push((event, Subject::Call(call)));
        }
    }
    if !campaigns.is_empty() {
        let ids: Vec<Uuid> = campaigns.iter().map(|(id, _)| *id).collect();
        for (event, campaign) in super::campaigns::campaigns_of_events(pool, &ids).await? {
            subjects.push((event, Subject::Campaign(campaign)));
        }
    }
    Ok(subjects)
}

/// How one try of a delivery ended.
#[derive(Clone, Debug)]
pub struct TryResult {
    pub delivery_id: Uuid,
    /// The try's number, as claimed: a result for a try that is no longer the delivery's
    /// latest (its lease ran out and another worker took it, or it was sent again on
    /// demand) changes nothing unless it delivered.
    pub attempt: i32,
    pub status_code: Option<u16>,
    /// What went wrong, for a try that did not deliver.
    pub error: Option<String>,
    /// `Some`: delivered. Else when to try again, or `None` when the schedule is spent.
    pub outcome: TryOutcome,
}

#[derive(Clone, Copy, Debug)]
pub enum TryOutcome {
    Delivered,
    RetryAt(DateTime<Utc>),
    Failed,
}

/// Records the results of many tries in one statement (group commit); one result each.
pub async fn record_tries(pool: &PgPool, results: &[TryResult]) -> Vec<Result<(), DbError>> {
    let mut ids = Vec::with_capacity(results.len());
    let mut attempts = Vec::with_capacity(results.len());
    let mut statuses = Vec::with_capacity(results.len());
    let mut due = Vec::with_capacity(results.len());
    let mut codes = Vec::with_capacity(results.len());
    let mut errors = Vec::with_capacity(results.len());
    for r in results {
        ids.push(r.delivery_id);
        attempts.push(r.attempt);
        let (status, at) = match r.outcome {
            TryOutcome::Delivered => (DeliveryStatus::Delivered, None),
            TryOutcome::RetryAt(at) => (DeliveryStatus::Pending, Some(at)),
            TryOutcome::Failed => (DeliveryStatus::Failed, None),
        };
        statuses.push(status.as_str());
        due.push(at);
        codes.push(r.status_code.map(i32::from));
        errors.push(r.error.clone());
    }
    let done = sqlx::query(include_str!("../../sql/queries/record_delivery_tries.sql"))
        .bind(&ids)
        .bind(&attempts)
        .bind(&statuses)
        .bind(&due)
        .bind(&codes)
        .bind(&errors)
        .execute(pool)
        .await;
    match done {
        Ok(_) => results.iter().map(|_| Ok(())).collect(),
        // One error, one copy per result: sqlx errors do not clone.
        Err(err) if super::is_unavailable(&err) => results
            .iter()
            .map(|_| Err(DbError::unavailable()))
            .collect(),
        Err(err) => results
            .iter()
            .map(|_| Err(DbError::Other(sqlx::Error::Protocol(err.to_string()))))
            .collect(),
    }
}

/// A delivery as the list route shows it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct Delivery {
    pub id: Uuid,
    pub event_id: Uuid,
    pub endpoint_id: Uuid,
    pub event_type: EventType,
    pub call_id: Option<Uuid>,
    pub campaign_id: Option<Uuid>,
    pub status: DeliveryStatus,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub last_attempt_at: Option<DateTime<Utc>>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub occurred_at: DateTime<Utc>,
}

const DELIVERY_COLUMNS: &str = "d.id, d.event_id, d.endpoint_id, e.type AS event_type, e.call_id, \
     e.campaign_id, d.status, d.attempts, d.last_status_code, d.last_error, d.last_attempt_at, \
     CASE WHEN d.status = 'PENDING' THEN greatest(d.next_attempt_at, now()) END AS next_attempt_at, \
     d.delivered_at, d.created_at, e.occurred_at";

/// A page of an endpoint's deliveries, newest first, optionally of one status, and how many
/// there are.
pub async fn list_deliveries(
    pool: &PgPool,
    endpoint_id: Uuid,
    status: Option<DeliveryStatus>,
    page: u32,
    limit: u32,
) -> Result<(Vec<Delivery>, i64), DbError> {
    let rows: Vec<Delivery> = sqlx::query_as(&format!(
        "SELECT {DELIVERY_COLUMNS} FROM event_deliveries d JOIN client_events e ON e.id = d.event_id \
         WHERE d.endpoint_id = $1 AND ($2::event_delivery_status IS NULL OR d.status = $2) \
         ORDER BY d.seq DESC LIMIT $3 OFFSET $4"
    ))
    .bind(endpoint_id)
    .bind(status)
    .bind(i64::from(limit))
    .bind(i64::from(page - 1) * i64::from(limit))
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM event_deliveries \
         WHERE endpoint_id = $1 AND ($2::event_delivery_status IS NULL OR status = $2)",
    )
    .bind(endpoint_id)
    .bind(status)
    .fetch_one(pool)
    .await?;
    Ok((rows, total))
}

/// Sends a delivery again now, whatever its status, with the schedule started afresh (it
/// keeps its `webhook-id`); `None` when there is no such delivery.
pub async fn retry_delivery(pool: &PgPool, id: Uuid) -> Result<Option<Delivery>, DbError> {
    let row: Option<Delivery> = sqlx::query_as(&format!(
        "WITH moved AS ( \
             UPDATE event_deliveries SET status = 'PENDING', attempts = 0, next_attempt_at = now(), \
                 leased_until = NULL, delivered_at = NULL \
             WHERE id = $1 RETURNING * \
         ) \
         SELECT {DELIVERY_COLUMNS} FROM moved d JOIN client_events e ON e.id = d.event_id"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    if row.is_some() {
        super::notify(pool, super::EVENTS_CHANNEL).await;
    }
    Ok(row)
}

/// When the next delivery of an enabled endpoint falls due, for the workers' timer.
pub async fn next_delivery_due(pool: &PgPool) -> Result<Option<DateTime<Utc>>, DbError> {
    Ok(sqlx::query_scalar(
        "SELECT min(d.next_attempt_at) FROM event_endpoints p \
         CROSS JOIN LATERAL (SELECT next_attempt_at FROM event_deliveries d \
             WHERE d.endpoint_id = p.id AND d.status = 'PENDING' \
             ORDER BY next_attempt_at LIMIT 1) d \
         WHERE p.enabled",
    )
    .fetch_one(pool)
    .await?)
}

/// Deliveries `PENDING` (the backlog), for the metrics.
pub async fn pending_deliveries(pool: &PgPool) -> Result<i64, DbError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM event_deliveries WHERE status = 'PENDING'")
            .fetch_one(pool)
            .await?,
    )
}

/// Deletes at most `batch` deliveries delivered before `before`, then at most `batch`
/// events older than `before` that no delivery waits for; returns how many of each. Also
/// deletes the deliveries of removed endpoints (their tombstones, kept an hour).
pub async fn purge_delivered(
    pool: &PgPool,
    before: DateTime<Utc>,
    batch: i64,
) -> Result<(u64, u64), DbError> {
    sqlx::query(
        "DELETE FROM event_deliveries WHERE id IN ( \
             SELECT d.id FROM event_endpoint_tombstones t \
             JOIN event_deliveries d ON d.endpoint_id = t.id LIMIT $1)",
    )
    .bind(batch)
    .execute(pool)
    .await?;
    sqlx::query(
        "DELETE FROM event_endpoint_tombstones WHERE deleted_at < now() - interval '1 hour'",
    )
    .execute(pool)
    .await?;
    let deliveries = sqlx::query(
        "DELETE FROM event_deliveries WHERE id IN ( \
             SELECT id FROM event_deliveries WHERE status = 'DELIVERED' AND delivered_at < $1 \
             ORDER BY delivered_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(before)
    .bind(batch)
    .execute(pool)
    .await?
    .rows_affected();
    let events = sqlx::query(
        "DELETE FROM client_events WHERE id IN ( \
             SELECT e.id FROM client_events e WHERE e.occurred_at < $1 \
               AND NOT EXISTS (SELECT 1 FROM event_deliveries d WHERE d.event_id = e.id) \
             ORDER BY e.occurred_at LIMIT $2 FOR UPDATE SKIP LOCKED)",
    )
    .bind(before)
    .bind(batch)
    .execute(pool)
    .await?
    .rows_affected();
    Ok((deliveries, events))
}
