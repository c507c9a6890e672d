//! Applying webhooks to the attempts they are about, one at a time or in one transaction
//! (group commit), as `domain::decide` decides.

use sqlx::PgPool;
use uuid::Uuid;

use super::{
    DbError,
    settle::{Tx, Which, apply, lock},
};
use crate::domain::{
    ProviderStatus, WebhookUpdate,
    decide::{Retry, WebhookOutcome, decide_webhook, route_webhook},
};

/// Applies a webhook to the attempt it names. `NotFound` when no attempt matches.
/// `retry` gives the retry policy for a failed attempt, and the jitter.
pub async fn apply_webhook(
    pool: &PgPool,
    update: &WebhookUpdate,
    retry: impl Fn() -> Retry,
) -> Result<WebhookOutcome, DbError> {
    let mut tx = pool.begin().await?;
    let applied = apply_in(&mut tx, update, retry()).await?;
    tx.commit().await?;
    applied.ok_or(DbError::NotFound)
}

/// Applies webhooks in one transaction (group commit), in the order given; one result
/// each, as `apply_webhook` would give it. Should the shared transaction fail (a lock
/// timeout, a deadlock with another replica, the database going away), each webhook is
/// applied again on its own, so one webhook's trouble is never another's.
pub async fn apply_webhooks(
    pool: &PgPool,
    updates: &[WebhookUpdate],
    retry: impl Fn() -> Retry,
) -> Vec<Result<WebhookOutcome, DbError>> {
    let retry = &retry;
    super::batch::together_or_each(
        "webhook",
        updates,
        |updates| async move {
            let mut tx = pool.begin().await?;
            lock_calls_in_order(&mut tx, updates).await?;
            let mut applied = Vec::with_capacity(updates.len());
            for update in updates {
                let outcome = apply_in(&mut tx, update, retry()).await?;
                applied.push(outcome.ok_or(DbError::NotFound));
            }
            tx.commit().await?;
            Ok(applied)
        },
        |update| apply_webhook(pool, update, retry),
    )
    .await
}

/// Locks the calls that `updates` name, in id order, before any of them is applied: see
/// sql/queries/lock_webhook_calls.sql.
async fn lock_calls_in_order(
    tx: &mut Tx<'_>,
    updates: &[WebhookUpdate],
) -> Result<(), sqlx::Error> {
    let provider_ids: Vec<&str> = updates
        .iter()
        .map(|u| u.provider_call_id.as_str())
        .collect();
    let references: Vec<Uuid> = updates
        .iter()
        .filter_map(|u| u.reference.map(|(call_id, _)| call_id))
        .collect();
    sqlx::query(include_str!("../../sql/queries/lock_webhook_calls.sql"))
        .bind(provider_ids)
        .bind(references)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Applies one webhook inside `tx`; `None` when no attempt matches it, in which case
/// nothing was written. Writes nothing either when it changes nothing (a duplicate, a
/// refusal), so webhooks can share a transaction.
async fn apply_in(
    tx: &mut Tx<'_>,
    update: &WebhookUpdate,
    retry: Retry,
) -> Result<Option<WebhookOutcome>, sqlx::Error> {
    let by_id: Option<(Uuid, i32, bool)> = sqlx::query_as(include_str!(
        "../../sql/queries/find_attempt_by_provider_id.sql"
    ))
    .bind(&update.provider_call_id)
    .fetch_optional(&mut **tx)
    .await?;
    if matches!(by_id, Some((_, _, true))) {
        // The vendor's word on an attempt it did not place (its concurrency limit), which
        // was settled already: the same attempt number has been dialed again since.
        return Ok(Some(WebhookOutcome::unchanged(
            crate::domain::decide::Unchanged::Duplicate,
        )));
    }
    let by_id = by_id.map(|(call_id, attempt, _)| (call_id, attempt));
    let (call_id, attempt) = match route_webhook(update, by_id) {
        Ok(found) => found,
        Err(Some(refused)) => return Ok(Some(WebhookOutcome::unchanged(refused))),
        Err(None) => return Ok(None),
    };
    let Some(locked) = lock(tx, call_id, Which::Number(attempt)).await? else {
        return Ok(None);
    };
    let retry = locked.retry(retry);
    let progress_recorded: i64 = if update.status.is_final() {
        0
    } else {
        sqlx::query_scalar(include_str!(
            "../../sql/queries/count_progress_webhooks.sql"
        ))
        .bind(call_id)
        .bind(attempt)
        .fetch_one(&mut **tx)
        .await?
    };
    let rate_limited_before: i64 = if update.status == ProviderStatus::Throttled {
        sqlx::query_scalar(include_str!("../../sql/queries/count_rate_limited.sql"))
            .bind(call_id)
            .bind(attempt)
            .fetch_one(&mut **tx)
            .await?
    } else {
        0
    };
    let decision = decide_webhook(
        &locked.state,
        update,
        u32::try_from(progress_recorded).unwrap_or(u32::MAX),
        u32::try_from(rate_limited_before).unwrap_or(u32::MAX),
        retry,
    );
    let outcome = WebhookOutcome::of(&decision);
    if outcome.changes() {
        if let Some(webhook_id) = &update.webhook_id {
            // Taken under the call's lock, so a replay racing its original waits for it
            // and then finds the id taken.
            let fresh = sqlx::query(
                "INSERT INTO webhook_receipts (webhook_id) VALUES ($1) ON CONFLICT DO NOTHING",
            )
            .bind(webhook_id)
            .execute(&mut **tx)
            .await?
            .rows_affected()
                == 1;
            if !fresh {
                return Ok(Some(WebhookOutcome::unchanged(
                    crate::domain::decide::Unchanged::Duplicate,
                )));
            }
        }
        apply(tx, call_id, &locked, &decision, &retry.rules).await?;
    }
    Ok(Some(outcome))
}
