//! What the provider said, applied to calls: the answer to a dial request, and webhooks.
//! Each change is fenced by the attempt it belongs to, so a late or repeated answer can
//! never free a slot twice or move a call that has moved on.

use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{
    DbError,
    dispatch::{CallMove, event, lock, set_provider_call_id, settle},
};
use crate::{
    domain::{CallStatus, RetryDecision},
    provider::DialOutcome,
};

/// Records the provider's answer to attempt `attempt` of `call_id`. `decide` gives the
/// retry decision for a failed attempt (it is called only when one is needed).
pub async fn record_dial_outcome(
    pool: &PgPool,
    call_id: Uuid,
    attempt: i32,
    outcome: &DialOutcome,
    decide: impl FnOnce(Option<std::time::Duration>) -> RetryDecision,
    rate_limit_delay: impl FnOnce(Option<std::time::Duration>) -> std::time::Duration,
) -> Result<(), DbError> {
    if let DialOutcome::Accepted { provider_call_id } = outcome {
        return record_accepted(
            pool,
            &[Accepted {
                call_id,
                attempt,
                provider_call_id: provider_call_id.clone(),
            }],
        )
        .await;
    }
    let mut tx = pool.begin().await?;
    let Some(locked) = lock(&mut tx, call_id, attempt).await? else {
        return Ok(());
    };
    // A webhook got here first and settled the attempt: nothing left to record.
    if locked.attempt_status != "DIALING" {
        return Ok(());
    }
    let live = locked.is_current(attempt) && locked.call_status == CallStatus::InProgress;
    let (outcome, first, call) = match outcome {
        DialOutcome::Accepted { .. } => unreachable!("recorded above"),
        DialOutcome::RateLimited { retry_after } => {
            let delay = rate_limit_delay(*retry_after);
            let reason = "rate limited by the provider (429)";
            (
                ("RATE_LIMITED", Some(reason)),
                ("RATE_LIMITED", json!({"delayMs": delay.as_millis() as u64})),
                // Not an attempt: the same attempt number is dialed again later.
                CallMove::Retry {
                    delay,
                    counts: false,
                },
            )
        }
        DialOutcome::Transient {
            reason,
            retry_after,
        } => (
            ("FAILED", Some(reason.as_str())),
            ("DIAL_FAILED", json!({"reason": reason})),
            if live {
                CallMove::after_failure(reason, decide(*retry_after))
            } else {
                CallMove::Stay
            },
        ),
        DialOutcome::Permanent { reason } => (
            ("FAILED", Some(reason.as_str())),
            ("DIAL_FAILED", json!({"reason": reason})),
            CallMove::Fail { reason },
        ),
    };
    let call = if live { call } else { CallMove::Stay };
    settle(&mut tx, call_id, attempt, &locked, outcome, first, call).await?;
    tx.commit().await?;
    Ok(())
}

/// A provider's 2xx to a dial request, to record.
#[derive(Clone, Debug)]
pub struct Accepted {
    pub call_id: Uuid,
    pub attempt: i32,
    /// The provider's id for the attempt, when it gave one.
    pub provider_call_id: Option<String>,
}

/// Records 2xx answers in one statement: see sql/queries/record_accepted.sql.
pub async fn record_accepted(pool: &PgPool, accepted: &[Accepted]) -> Result<(), DbError> {
    let call_ids: Vec<Uuid> = accepted.iter().map(|a| a.call_id).collect();
    let attempts: Vec<i32> = accepted.iter().map(|a| a.attempt).collect();
    let provider_ids: Vec<Option<&str>> = accepted
        .iter()
        .map(|a| a.provider_call_id.as_deref())
        .collect();
    sqlx::query(include_str!("../../sql/queries/record_accepted.sql"))
        // Planned for each batch, with its real size: a plan cached while the tables were
        // small (a fresh database) would keep scanning call_attempts whole as it grows.
        .persistent(false)
        .bind(call_ids)
        .bind(attempts)
        .bind(provider_ids)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records 2xx answers together (group commit); one result each. Should the shared
/// statement fail (say, a provider handing out one callId twice, which its unique index
/// refuses), each answer is recorded on its own, so only the offending one fails.
pub async fn record_accepted_each(
    pool: &PgPool,
    accepted: &[Accepted],
) -> Vec<Result<(), DbError>> {
    super::batch::together_or_each(
        "accepted",
        accepted,
        |all| async move {
            record_accepted(pool, all).await?;
            Ok(all.iter().map(|_| Ok(())).collect())
        },
        |one| record_accepted(pool, std::slice::from_ref(one)),
    )
    .await
}

/// A provider status, as webhooks report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderStatus {
    Queued,
    Ringing,
    InProgress,
    Completed,
    Failed,
    Busy,
    NoAnswer,
    Voicemail,
}

impl ProviderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "QUEUED",
            Self::Ringing => "RINGING",
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Busy => "BUSY",
            Self::NoAnswer => "NO_ANSWER",
            Self::Voicemail => "VOICEMAIL",
        }
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Ringing | Self::InProgress)
    }
}

/// A webhook, validated.
#[derive(Clone, Debug)]
pub struct WebhookUpdate {
    pub provider_call_id: String,
    pub status: ProviderStatus,
    pub duration_sec: Option<i32>,
    pub reason: Option<String>,
    /// The service's own reference from the webhook URL: the call and attempt it was
    /// dialed for. Lets a webhook that beats the provider's 202 find its attempt.
    pub reference: Option<(Uuid, i32)>,
    /// The body as received, for the timeline.
    pub body: Value,
}

/// What a webhook did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookEffect {
    /// Recorded on the timeline; the call may have moved.
    Applied,
    /// A repeat of a final webhook already applied: nothing changed.
    Duplicate,
}

/// What applying a webhook came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookOutcome {
    pub effect: WebhookEffect,
    /// The retry decision taken for a failed attempt, if one was.
    pub retry: Option<RetryDecision>,
}

/// Applies a webhook to the attempt it names. `NotFound` when no attempt matches.
/// `decide` gives the retry decision after the failure of the given attempt number.
pub async fn apply_webhook(
    pool: &PgPool,
    update: &WebhookUpdate,
    decide: impl Fn(i32) -> RetryDecision,
) -> Result<WebhookOutcome, DbError> {
    let mut tx = pool.begin().await?;
    let applied = apply_in(&mut tx, update, &decide).await?;
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
    decide: impl Fn(i32) -> RetryDecision,
) -> Vec<Result<WebhookOutcome, DbError>> {
    let decide = &decide;
    super::batch::together_or_each(
        "webhook",
        updates,
        |updates| async move {
            let mut tx = pool.begin().await?;
            lock_calls_in_order(&mut tx, updates).await?;
            let mut applied = Vec::with_capacity(updates.len());
            for update in updates {
                let outcome = apply_in(&mut tx, update, decide).await?;
                applied.push(outcome.ok_or(DbError::NotFound));
            }
            tx.commit().await?;
            Ok(applied)
        },
        |update| apply_webhook(pool, update, decide),
    )
    .await
}

/// Locks the calls that `updates` name, in id order, before any of them is applied: the
/// webhooks of one batch name several calls, and a batch that locked them in its arrival
/// order could deadlock with the dispatcher's batch of 2xx answers, which locks its calls
/// in id order too (sql/queries/record_accepted.sql).
async fn lock_calls_in_order(
    tx: &mut Transaction<'_, Postgres>,
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
    sqlx::query(
        // An array, not `IN (…) OR …`, which the planner would answer with a scan of calls.
        "SELECT id FROM calls
         WHERE id = ANY (ARRAY(SELECT call_id FROM call_attempts WHERE provider_call_id = ANY($1)) || $2)
         ORDER BY id
         FOR UPDATE",
    )
    .bind(provider_ids)
    .bind(references)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Applies one webhook inside `tx`; `None` when no attempt matches it, in which case
/// nothing was written. Writes nothing either for a duplicate, so webhooks can share a
/// transaction.
async fn apply_in(
    tx: &mut Transaction<'_, Postgres>,
    update: &WebhookUpdate,
    decide: &impl Fn(i32) -> RetryDecision,
) -> Result<Option<WebhookOutcome>, sqlx::Error> {
    // Found by its id, the attempt's call is locked in the same statement.
    let by_id: Option<(Uuid, i32)> = sqlx::query_as(
        "SELECT c.id, a.attempt FROM call_attempts a JOIN calls c ON c.id = a.call_id
         WHERE a.provider_call_id = $1
         FOR UPDATE OF c",
    )
    .bind(&update.provider_call_id)
    .fetch_optional(&mut **tx)
    .await?;
    let (call_id, attempt) = match (by_id, update.reference) {
        (Some(found), _) => found,
        // Not known by its id (yet): the reference may name an attempt still waiting for
        // the provider's answer, which then learns its id from this webhook.
        (None, Some(reference)) => reference,
        (None, None) => return Ok(None),
    };
    let Some(locked) = lock(tx, call_id, attempt).await? else {
        return Ok(None);
    };
    if matches!(&locked.provider_call_id, Some(known) if *known != update.provider_call_id) {
        return Ok(None);
    }
    let current = locked.is_current(attempt);
    let status = update.status;
    let open = locked.attempt_is_open() || locked.attempt_status == "EXPIRED";
    if status.is_final() && !open && current {
        // The outcome of this attempt is already recorded: a repeat changes nothing.
        return Ok(Some(WebhookOutcome {
            effect: WebhookEffect::Duplicate,
            retry: None,
        }));
    }
    set_provider_call_id(tx, call_id, attempt, &locked, &update.provider_call_id).await?;
    let received = json!({"status": status.as_str(), "body": update.body});
    let applied = Some(WebhookOutcome {
        effect: WebhookEffect::Applied,
        retry: None,
    });
    if !status.is_final() || !open {
        // Progress, or a late final webhook for an earlier attempt: the timeline only.
        event(tx, call_id, attempt, "WEBHOOK_RECEIVED", received).await?;
        if locked.attempt_status == "DIALING" {
            // The provider clearly holds the call: no need to rescue the attempt.
            sqlx::query(
                "UPDATE call_attempts SET status = 'ACCEPTED', accepted_at = now() WHERE id = $1",
            )
            .bind(locked.attempt_id)
            .execute(&mut **tx)
            .await?;
        }
        return Ok(applied);
    }
    let completed = status == ProviderStatus::Completed;
    let reason = match &update.reason {
        Some(reason) => format!("{}: {reason}", status.as_str()),
        None => status.as_str().to_owned(),
    };
    let mut retry = None;
    let call = match (current, locked.call_status, completed) {
        (true, CallStatus::InProgress | CallStatus::Expired, true) => CallMove::Complete {
            duration_sec: update.duration_sec,
        },
        (true, CallStatus::InProgress, false) => {
            let decision = decide(attempt);
            retry = Some(decision);
            CallMove::after_failure(&reason, decision)
        }
        // The real outcome of an expired call: recorded, never retried.
        (true, CallStatus::Expired, false) => CallMove::Fail { reason: &reason },
        _ => CallMove::Stay,
    };
    let outcome = if completed {
        ("COMPLETED", None)
    } else {
        ("FAILED", Some(reason.as_str()))
    };
    settle(
        tx,
        call_id,
        attempt,
        &locked,
        outcome,
        ("WEBHOOK_RECEIVED", received),
        call,
    )
    .await?;
    Ok(Some(WebhookOutcome {
        effect: WebhookEffect::Applied,
        retry,
    }))
}
