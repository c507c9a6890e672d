//! Event endpoints: registering, reading, changing, removing them, and rotating their
//! secrets (which are never stored: see `domain::event_secret`).

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::DbError;
use crate::domain::{Endpoint, SecretRef, Subscription};

/// A row of `event_endpoints`, exactly as stored.
#[derive(sqlx::FromRow)]
pub(super) struct EndpointRow {
    id: Uuid,
    url: String,
    event_types: Vec<String>,
    description: Option<String>,
    enabled: bool,
    secret_salt: Vec<u8>,
    key_id: String,
    previous_salt: Option<Vec<u8>>,
    previous_key_id: Option<String>,
    previous_until: Option<DateTime<Utc>>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<EndpointRow> for Endpoint {
    fn from(row: EndpointRow) -> Self {
        let previous = match (row.previous_salt, row.previous_key_id, row.previous_until) {
            (Some(salt), Some(key_id), Some(until)) => Some((SecretRef { key_id, salt }, until)),
            _ => None,
        };
        Endpoint {
            id: row.id,
            url: row.url,
            subscription: Subscription::stored(&row.event_types),
            description: row.description,
            enabled: row.enabled,
            secret: SecretRef {
                key_id: row.key_id,
                salt: row.secret_salt,
            },
            previous,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// An endpoint about to be registered.
pub struct NewEndpoint<'a> {
    pub url: &'a str,
    pub subscription: &'a Subscription,
    pub description: Option<&'a str>,
    pub enabled: bool,
    pub secret: &'a SecretRef,
}

/// What a PATCH changes; `None` leaves a field as it is.
#[derive(Default)]
pub struct EndpointChange {
    pub url: Option<String>,
    pub subscription: Option<Subscription>,
    /// `Some(None)` removes the description.
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
}

/// Registers an endpoint.
pub async fn create_endpoint(pool: &PgPool, new: &NewEndpoint<'_>) -> Result<Endpoint, DbError> {
    let row: EndpointRow = sqlx::query_as(
        "INSERT INTO event_endpoints (id, url, event_types, description, enabled, secret_salt, key_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *",
    )
    .bind(Uuid::now_v7())
    .bind(new.url)
    .bind(new.subscription.to_list())
    .bind(new.description)
    .bind(new.enabled)
    .bind(&new.secret.salt)
    .bind(&new.secret.key_id)
    .fetch_one(pool)
    .await?;
    Ok(row.into())
}

/// One endpoint, if it exists.
pub async fn get_endpoint(pool: &PgPool, id: Uuid) -> Result<Option<Endpoint>, DbError> {
    let row: Option<EndpointRow> = sqlx::query_as("SELECT * FROM event_endpoints WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(Endpoint::from))
}

/// A page of endpoints, oldest first (there are few), and how many there are.
pub async fn list_endpoints(
    pool: &PgPool,
    page: u32,
    limit: u32,
) -> Result<(Vec<Endpoint>, i64), DbError> {
    let rows: Vec<EndpointRow> =
        sqlx::query_as("SELECT * FROM event_endpoints ORDER BY seq LIMIT $1 OFFSET $2")
            .bind(i64::from(limit))
            .bind(i64::from(page - 1) * i64::from(limit))
            .fetch_all(pool)
            .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM event_endpoints")
        .fetch_one(pool)
        .await?;
    Ok((rows.into_iter().map(Endpoint::from).collect(), total))
}

/// Applies `change`; `None` when there is no such endpoint. Deliveries already made keep
/// going to the endpoint as it is when they are sent (its URL and secret then); a disabled
/// endpoint's pending deliveries wait until it is enabled again.
pub async fn update_endpoint(
    pool: &PgPool,
    id: Uuid,
    change: &EndpointChange,
) -> Result<Option<Endpoint>, DbError> {
    let row: Option<EndpointRow> = sqlx::query_as(
        "UPDATE event_endpoints SET \
             url = COALESCE($2, url), \
             event_types = COALESCE($3, event_types), \
             description = CASE WHEN $4 THEN $5 ELSE description END, \
             enabled = COALESCE($6, enabled), \
             updated_at = now() \
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(change.url.as_deref())
    .bind(change.subscription.as_ref().map(Subscription::to_list))
    .bind(change.description.is_some())
    .bind(change.description.clone().flatten())
    .bind(change.enabled)
    .fetch_optional(pool)
    .await?;
    if change.enabled == Some(true) {
        super::notify(pool, super::EVENTS_CHANNEL).await;
    }
    Ok(row.map(Endpoint::from))
}

/// Removes an endpoint and its deliveries, and leaves a tombstone by which the purge removes
/// the deliveries a transaction running meanwhile still makes for it (see the events
/// migration); the endpoint as it was, or `None`.
pub async fn delete_endpoint(pool: &PgPool, id: Uuid) -> Result<Option<Endpoint>, DbError> {
    let row: Option<EndpointRow> = sqlx::query_as(
        "WITH gone AS (DELETE FROM event_endpoints WHERE id = $1 RETURNING *), \
              buried AS (INSERT INTO event_endpoint_tombstones (id) SELECT id FROM gone \
                         ON CONFLICT (id) DO NOTHING), \
              deliveries AS (DELETE FROM event_deliveries \
                             WHERE endpoint_id = $1 AND EXISTS (SELECT 1 FROM gone)) \
         SELECT * FROM gone",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Endpoint::from))
}

/// Gives the endpoint a new secret; the one it had keeps signing until `keep_until`, or
/// stops at once when that is `None`.
pub async fn rotate_secret(
    pool: &PgPool,
    id: Uuid,
    secret: &SecretRef,
    keep_until: Option<DateTime<Utc>>,
) -> Result<Option<Endpoint>, DbError> {
    let row: Option<EndpointRow> = sqlx::query_as(
        "UPDATE event_endpoints SET \
             previous_salt = CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE secret_salt END, \
             previous_key_id = CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE key_id END, \
             previous_until = $4, \
             secret_salt = $2, key_id = $3, updated_at = now() \
         WHERE id = $1 RETURNING *",
    )
    .bind(id)
    .bind(&secret.salt)
    .bind(&secret.key_id)
    .bind(keep_until)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(Endpoint::from))
}
