//! The suppression (do-not-call) list.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::DbError;
use crate::domain::PhoneNumber;

/// A number that must not be called, while in force (no `expires_at`, or one ahead).
#[derive(Clone, Debug, PartialEq, sqlx::FromRow)]
pub struct Suppression {
    pub number: String,
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One suppression to add or replace.
#[derive(Clone, Debug)]
pub struct NewSuppression {
    pub number: PhoneNumber,
    pub reason: String,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Adds or replaces suppressions in one statement, in the order given; `true` beside each
/// one that is new. The numbers must be distinct.
pub async fn put_suppressions(
    pool: &PgPool,
    items: &[NewSuppression],
) -> Result<Vec<(Suppression, bool)>, DbError> {
    let numbers: Vec<&str> = items.iter().map(|i| i.number.as_str()).collect();
    let reasons: Vec<&str> = items.iter().map(|i| i.reason.as_str()).collect();
    let expiries: Vec<Option<DateTime<Utc>>> = items.iter().map(|i| i.expires_at).collect();
    #[derive(sqlx::FromRow)]
    struct Row {
        #[sqlx(flatten)]
        suppression: Suppression,
        created: bool,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "WITH input AS (
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[])
                 WITH ORDINALITY AS t (number, reason, expires_at, ord)
         ),
         put AS (
             INSERT INTO suppressions AS s (number, reason, expires_at)
             SELECT number, reason, expires_at FROM input ORDER BY ord
             ON CONFLICT (number) DO UPDATE
             SET reason = excluded.reason, expires_at = excluded.expires_at, updated_at = now()
             RETURNING s.*, (xmax = 0) AS created
         )
         SELECT put.* FROM put JOIN input USING (number) ORDER BY input.ord",
    )
    .bind(numbers)
    .bind(reasons)
    .bind(expiries)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| (r.suppression, r.created))
        .collect())
}

pub async fn get_suppression(pool: &PgPool, number: &PhoneNumber) -> Result<Suppression, DbError> {
    sqlx::query_as("SELECT * FROM suppressions WHERE number = $1")
        .bind(number.as_str())
        .fetch_optional(pool)
        .await?
        .ok_or(DbError::NotFound)
}

/// Removes a suppression; `NotFound` when the number had none.
pub async fn delete_suppression(
    pool: &PgPool,
    number: &PhoneNumber,
) -> Result<Suppression, DbError> {
    sqlx::query_as("DELETE FROM suppressions WHERE number = $1 RETURNING *")
        .bind(number.as_str())
        .fetch_optional(pool)
        .await?
        .ok_or(DbError::NotFound)
}

/// A page of suppressions, newest first, and how many there are.
pub async fn list_suppressions(
    pool: &PgPool,
    page: u32,
    limit: u32,
) -> Result<(Vec<Suppression>, i64), DbError> {
    let rows: Vec<Suppression> = sqlx::query_as(
        "SELECT * FROM suppressions ORDER BY created_at DESC, number LIMIT $1 OFFSET $2",
    )
    .bind(i64::from(limit))
    .bind((i64::from(page) - 1) * i64::from(limit))
    .fetch_all(pool)
    .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM suppressions")
        .fetch_one(pool)
        .await?;
    Ok((rows, total))
}

/// Which of `numbers` are suppressed now (on a pool, or inside a transaction).
pub async fn suppressed_among<'e, E>(
    executor: E,
    numbers: &[&str],
) -> Result<HashSet<String>, DbError>
where
    E: sqlx::Executor<'e, Database = sqlx::Postgres>,
{
    let found: Vec<String> = sqlx::query_scalar(
        "SELECT number FROM suppressions
         WHERE number = ANY ($1) AND (expires_at IS NULL OR expires_at > now())",
    )
    .bind(numbers)
    .fetch_all(executor)
    .await?;
    Ok(found.into_iter().collect())
}
