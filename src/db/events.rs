//! The call timeline.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::DbError;
use crate::domain::{CallEvent, EventKind};

#[derive(sqlx::FromRow)]
struct EventRow {
    id: i64,
    call_id: Uuid,
    attempt: Option<i32>,
    kind: EventKind,
    detail: serde_json::Value,
    at: DateTime<Utc>,
}

/// A page of the timeline of one call, oldest first: at most `limit` entries with an id
/// above `after` (from the start when `None`), and whether more follow. `NotFound` when the
/// call does not exist. Its first entry, `CREATED` (id 0), is the call row itself: creating
/// a call writes nothing else, which keeps ingest cheap.
pub async fn list_events(
    pool: &PgPool,
    call_id: Uuid,
    after: Option<i64>,
    limit: i64,
) -> Result<(Vec<CallEvent>, bool), DbError> {
    let created: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT created_at FROM calls WHERE id = $1")
            .bind(call_id)
            .fetch_optional(pool)
            .await?;
    let created = created.ok_or(DbError::NotFound)?;
    let first = after.is_none().then(|| CallEvent {
        id: 0,
        call_id,
        attempt: None,
        kind: EventKind::Created,
        detail: serde_json::json!({}),
        at: created,
    });
    // One more than fits, to tell whether another page follows.
    let wanted = limit - i64::from(first.is_some()) + 1;
    let rows: Vec<EventRow> = sqlx::query_as(include_str!("../../sql/queries/list_events.sql"))
        .bind(call_id)
        .bind(after.unwrap_or(0))
        .bind(wanted)
        .fetch_all(pool)
        .await?;
    let mut events: Vec<CallEvent> = first
        .into_iter()
        .chain(rows.into_iter().map(|row| CallEvent {
            id: row.id,
            call_id: row.call_id,
            attempt: row.attempt,
            kind: row.kind,
            detail: row.detail,
            at: row.at,
        }))
        .collect();
    let more = events.len() as i64 > limit;
    events.truncate(limit as usize);
    Ok((events, more))
}
