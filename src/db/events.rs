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
    kind: String,
    detail: serde_json::Value,
    at: DateTime<Utc>,
}

/// The timeline of one call, oldest first; `NotFound` when the call does not exist. Its
/// first entry, `CREATED` (id 0), is the call row itself: creating a call writes nothing
/// else, which keeps ingest cheap.
pub async fn list_events(pool: &PgPool, call_id: Uuid) -> Result<Vec<CallEvent>, DbError> {
    let created: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT created_at FROM calls WHERE id = $1")
            .bind(call_id)
            .fetch_optional(pool)
            .await?;
    let created = created.ok_or(DbError::NotFound)?;
    let rows: Vec<EventRow> =
        sqlx::query_as("SELECT * FROM call_events WHERE call_id = $1 ORDER BY id")
            .bind(call_id)
            .fetch_all(pool)
            .await?;
    let first = CallEvent {
        id: 0,
        call_id,
        attempt: None,
        kind: EventKind::Created,
        detail: serde_json::json!({}),
        at: created,
    };
    std::iter::once(Ok(first))
        .chain(rows.into_iter().map(|row| {
            let kind = EventKind::parse(&row.kind).ok_or_else(|| {
                sqlx::Error::Decode(format!("unknown event kind {}", row.kind).into())
            })?;
            Ok(CallEvent {
                id: row.id,
                call_id: row.call_id,
                attempt: row.attempt,
                kind,
                detail: row.detail,
                at: row.at,
            })
        }))
        .collect()
}
