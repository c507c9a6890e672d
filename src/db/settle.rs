//! Writing decisions about attempts (`domain::decide`): locking a call and one of its
//! attempts, then applying the effect decided on. Nothing here decides; every change is
//! fenced by the attempt it belongs to, so a late or repeated answer can never free a slot
//! twice or move a call that has moved on.

use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::domain::{
    AttemptState, AttemptStatus, CallStatus, CallTiming, CampaignRules, PhoneNumber,
    decide::{Decision, Effect, Entry, Retry, Settlement},
    schedule::Rules,
};

pub(crate) type Tx<'a> = Transaction<'a, Postgres>;

/// A call and one of its attempts, locked for the transaction.
pub(crate) struct Locked {
    /// The attempt's row.
    pub attempt_id: i64,
    pub state: AttemptState,
    /// The call's number and schedule, where a retry must land.
    pub number: PhoneNumber,
    pub timing: CallTiming,
    /// What its campaign adds to its schedule and retries.
    pub campaign: Option<CampaignRules>,
    /// Its campaign was cancelled: a retry cancels the call instead (it would never be
    /// dialed).
    pub campaign_cancelled: bool,
}

impl Locked {
    /// The retry settings as they apply to this call: the global ones, narrowed by its
    /// campaign's.
    pub fn retry(&self, retry: Retry) -> Retry {
        match &self.campaign {
            Some(campaign) => Retry {
                policy: campaign.retry_policy(retry.policy),
                ..retry
            },
            None => retry,
        }
    }
}

/// The row of `sql/queries/lock_call.sql`.
#[derive(sqlx::FromRow)]
struct LockedCall {
    status: CallStatus,
    attempts: i32,
    to_number: String,
    timezone: Option<String>,
    not_before: Option<DateTime<Utc>>,
    not_after: Option<DateTime<Utc>>,
    campaign_id: Option<Uuid>,
    window_hours: Option<String>,
    window_days: Option<String>,
    start_at: Option<DateTime<Utc>>,
    end_at: Option<DateTime<Utc>>,
    retry: Option<serde_json::Value>,
    campaign_cancelled: Option<bool>,
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
    let call: Option<LockedCall> = sqlx::query_as(include_str!("../../sql/queries/lock_call.sql"))
        .bind(call_id)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(call) = call else {
        return Ok(None);
    };
    let (call_status, call_attempts) = (call.status, call.attempts);
    let campaign_cancelled = call.campaign_cancelled.unwrap_or(false);
    let number = PhoneNumber::from_trusted(call.to_number);
    let timing = CallTiming::stored(call.not_before, call.not_after, call.timezone.as_deref());
    let campaign = call.campaign_id.map(|_| {
        CampaignRules::stored(
            call.window_hours.as_deref(),
            call.window_days.as_deref(),
            call.start_at,
            call.end_at,
            call.retry.as_ref(),
        )
    });
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
            number,
            timing,
            campaign,
            campaign_cancelled,
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

/// Writes `decision` about the locked attempt of `call_id`; a retry lands inside the call's
/// calling window as `rules` draw it.
pub(crate) async fn apply(
    tx: &mut Tx<'_>,
    call_id: Uuid,
    locked: &Locked,
    decision: &Decision,
    rules: &Rules,
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
        Effect::Settle(settlement) => settle(tx, call_id, locked, settlement, rules).await?,
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
    rules: &Rules,
) -> Result<(), sqlx::Error> {
    use crate::domain::decide::CallMove;
    let attempt = locked.state.attempt;
    let (delay, uncounted, duration) = match &settlement.call {
        CallMove::Retry { delay, counts } => (delay.as_secs_f64(), i32::from(!counts), None),
        CallMove::Complete { duration_sec } => (0.0, 0, *duration_sec),
        CallMove::Stay | CallMove::Fail { .. } => (0.0, 0, None),
    };
    // A backoff that ends outside the call's window (or before its notBefore) is moved to
    // the opening; the claim checks again when it falls due.
    let moved = match &settlement.call {
        CallMove::Retry { delay, .. } => {
            let due = Utc::now() + chrono::Duration::from_std(*delay).unwrap_or_default();
            let timing = locked
                .timing
                .within(&locked.number, locked.campaign.as_ref());
            match rules.schedule(&timing, due) {
                (at, Some(why)) if at > due => Some((at, why.as_str())),
                _ => None,
            }
        }
        _ => None,
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
        .bind(moved.map(|(at, _)| at))
        .bind(moved.map(|(_, why)| why))
        .execute(&mut **tx)
        .await?;
    if locked.campaign_cancelled && matches!(settlement.call, CallMove::Retry { .. }) {
        // Back to PENDING in a cancelled campaign: cancelled with it at once, as its cancel
        // did to its other pending calls (the claim never serves a cancelled campaign).
        sqlx::query(include_str!("../../sql/queries/cancel_campaign_call.sql"))
            .bind(call_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
