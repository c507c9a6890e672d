//! Writing decisions about attempts (`domain::decide`): locking a call and one of its
//! attempts, then applying the effect decided on. Nothing here decides; every change is
//! fenced by the attempt it belongs to, so a late or repeated answer can never free a slot
//! twice or move a call that has moved on.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use crate::domain::{
    AttemptState, AttemptStatus, CallStatus,
    decide::{Decision, Effect, Entry, Settlement},
};

pub(crate) type Tx<'a> = Transaction<'a, Postgres>;

/// A call and one of its attempts, locked for the transaction.
pub(crate) struct Locked {
    /// The attempt's row.
    pub attempt_id: i64,
    pub state: AttemptState,
}

/// Which attempt of a call to lock.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Which {
    /// By number: the attempt's row that is not a rate-limited one (webhooks).
    Number(i32),
    /// By row (the dial path, which knows the row it claimed).
    Row(i64),
}

/// Locks a call, then one of its attempts; `None` when either is missing.
pub(crate) async fn lock(
    tx: &mut Tx<'_>,
    call_id: Uuid,
    which: Which,
) -> Result<Option<Locked>, sqlx::Error> {
    let call: Option<(CallStatus, i32)> =
        sqlx::query_as(include_str!("../../sql/queries/lock_call.sql"))
            .bind(call_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((call_status, call_attempts)) = call else {
        return Ok(None);
    };
    let row: Option<(i64, AttemptStatus, Option<String>, bool, i32)> = match which {
        Which::Number(attempt) => {
            sqlx::query_as(include_str!("../../sql/queries/lock_attempt.sql"))
                .bind(call_id)
                .bind(attempt)
                .fetch_optional(&mut **tx)
                .await?
        }
        Which::Row(id) => {
            sqlx::query_as(include_str!("../../sql/queries/lock_attempt_row.sql"))
                .bind(call_id)
                .bind(id)
                .fetch_optional(&mut **tx)
                .await?
        }
    };
    Ok(row.map(
        |(attempt_id, status, provider_call_id, final_webhook, attempt)| Locked {
            attempt_id,
            state: AttemptState {
                call_status,
                call_attempts,
                attempt,
                status,
                provider_call_id,
                final_webhook,
            },
        },
    ))
}

/// Writes `decision` about the locked attempt of `call_id`.
pub(crate) async fn apply(
    tx: &mut Tx<'_>,
    call_id: Uuid,
    locked: &Locked,
    decision: &Decision,
) -> Result<(), sqlx::Error> {
    let attempt = locked.state.attempt;
    if let Some(provider_call_id) = &decision.bind_provider_call_id {
        sqlx::query(include_str!("../../sql/queries/bind_provider_call_id.sql"))
            .bind(locked.attempt_id)
            .bind(provider_call_id)
            .bind(call_id)
            .bind(locked.state.is_current())
            .execute(&mut **tx)
            .await?;
    }
    match &decision.effect {
        Effect::Unchanged(_) => {}
        Effect::Timeline(entry) => event(tx, call_id, attempt, entry).await?,
        Effect::Progress { entry, accept } => {
            event(tx, call_id, attempt, entry).await?;
            if *accept {
                sqlx::query(include_str!("../../sql/queries/accept_attempt.sql"))
                    .bind(locked.attempt_id)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Effect::KeepOpen { resend_in, entry } => {
            sqlx::query(include_str!("../../sql/queries/keep_attempt_open.sql"))
                .bind(locked.attempt_id)
                .bind(resend_in.as_secs_f64())
                .execute(&mut **tx)
                .await?;
            event(tx, call_id, attempt, entry).await?;
        }
        Effect::Settle(settlement) => settle(tx, call_id, locked, settlement).await?,
    }
    Ok(())
}

pub(crate) async fn event(
    tx: &mut Tx<'_>,
    call_id: Uuid,
    attempt: i32,
    entry: &Entry,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO call_events (call_id, attempt, kind, detail) VALUES ($1, $2, $3, $4)")
        .bind(call_id)
        .bind(attempt)
        .bind(entry.kind)
        .bind(&entry.detail)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Settles an attempt and moves its call, in one statement (`sql/queries/settle_attempt.sql`),
/// with the timeline entries that say why and what became of the call.
async fn settle(
    tx: &mut Tx<'_>,
    call_id: Uuid,
    locked: &Locked,
    settlement: &Settlement,
) -> Result<(), sqlx::Error> {
    use crate::domain::decide::CallMove;
    let attempt = locked.state.attempt;
    let (delay, uncounted, duration) = match &settlement.call {
        CallMove::Retry { delay, counts } => (delay.as_secs_f64(), i32::from(!counts), None),
        CallMove::Complete { duration_sec } => (0.0, 0, *duration_sec),
        CallMove::Stay | CallMove::Fail { .. } => (0.0, 0, None),
    };
    let then = settlement.call.entry(attempt);
    sqlx::query(include_str!("../../sql/queries/settle_attempt.sql"))
        .bind(call_id)
        .bind(attempt)
        .bind(locked.attempt_id)
        .bind(settlement.outcome)
        .bind(settlement.error.as_deref())
        .bind(settlement.entry.kind)
        .bind(&settlement.entry.detail)
        .bind(settlement.call.status())
        .bind(delay)
        .bind(duration)
        .bind(uncounted)
        .bind(then.as_ref().map(|e| e.kind))
        .bind(then.as_ref().map(|e| &e.detail))
        .bind(settlement.final_webhook)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
