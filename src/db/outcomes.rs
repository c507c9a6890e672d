//! What the provider said, applied to calls: the answer to a dial request, and webhooks.
//! Each change is fenced by the attempt it belongs to, so a late or repeated answer can
//! never free a slot twice or move a call that has moved on.

use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{
    DbError,
    dispatch::{CallMove, SettledBy, event, lock, set_provider_call_id, settle},
};
use crate::{
    domain::{CallStatus, RetryDecision},
    provider::DialOutcome,
};

/// How many 429s in a row one attempt may get before it counts as a failed attempt: each
/// leaves an attempt row and a timeline entry, and a provider answering 429 for ever must
/// not grow them without bound.
pub const MAX_RATE_LIMITED: i64 = 20;

/// Records the provider's answer to attempt `attempt` of `call_id`. `decide` gives the
/// retry decision for a failed attempt (it is called only when one is needed);
/// `rate_limit_delay` the wait after the given number of 429s in a row (from 1) and the
/// provider's `Retry-After`. An unknown outcome carries its own wait before the resend.
pub async fn record_dial_outcome(
    pool: &PgPool,
    call_id: Uuid,
    attempt: i32,
    outcome: &DialOutcome,
    decide: impl FnOnce(Option<std::time::Duration>) -> RetryDecision,
    rate_limit_delay: impl FnOnce(u32, Option<std::time::Duration>) -> std::time::Duration,
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
        DialOutcome::Unknown { reason, resend_in } => {
            // The provider may hold the call: the attempt stays open (and its slot taken)
            // until an answer, a webhook or CALL_TIMEOUT settles it, and is sent again with
            // the same Idempotency-Key once its lease runs out.
            sqlx::query(
                "UPDATE call_attempts SET lease_until = now() + make_interval(secs => $2)
                 WHERE id = $1",
            )
            .bind(locked.attempt_id)
            .bind(resend_in.as_secs_f64())
            .execute(&mut *tx)
            .await?;
            event(
                &mut tx,
                call_id,
                attempt,
                "DIAL_UNKNOWN",
                json!({"reason": reason, "resendInMs": resend_in.as_millis() as u64}),
            )
            .await?;
            tx.commit().await?;
            return Ok(());
        }
        DialOutcome::RateLimited { retry_after } => {
            let before: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM call_attempts
                 WHERE call_id = $1 AND attempt = $2 AND status = 'RATE_LIMITED'",
            )
            .bind(call_id)
            .bind(attempt)
            .fetch_one(&mut *tx)
            .await?;
            if before + 1 >= MAX_RATE_LIMITED {
                let reason =
                    format!("rate limited by the provider (429) {MAX_RATE_LIMITED} times in a row");
                let call = if live {
                    CallMove::after_failure(&reason, decide(*retry_after))
                } else {
                    CallMove::Stay
                };
                settle(
                    &mut tx,
                    call_id,
                    attempt,
                    &locked,
                    ("FAILED", Some(&reason)),
                    ("DIAL_FAILED", json!({"reason": reason})),
                    call,
                    SettledBy::Dial,
                )
                .await?;
                tx.commit().await?;
                return Ok(());
            }
            let delay = rate_limit_delay(before as u32 + 1, *retry_after);
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
    settle(
        &mut tx,
        call_id,
        attempt,
        &locked,
        outcome,
        first,
        call,
        SettledBy::Dial,
    )
    .await?;
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
    /// The service's own reference from the webhook URL, only once its token was verified:
    /// the call and attempt it was dialed for. The webhook then touches that attempt only,
    /// and lets a webhook that beats the provider's 202 find its attempt.
    pub reference: Option<(Uuid, i32)>,
    /// The sender proved it is the provider: by a valid signature (`WEBHOOK_SECRET`) or
    /// by the token of the attempt in the URL. An unproven webhook changes nothing.
    pub authenticated: bool,
    /// The `webhook-id` of a signed webhook: a replay of it is a duplicate.
    pub webhook_id: Option<String>,
    /// The body as received, for the timeline.
    pub body: Value,
}

/// What a webhook did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WebhookEffect {
    /// Recorded on the timeline; the call may have moved.
    Applied,
    /// A repeat of a final webhook already applied, a replayed `webhook-id`, or progress
    /// past the timeline's share per attempt: nothing changed.
    Duplicate,
    /// It names a known attempt but proves nothing (no signature, no token): nothing changed.
    Unauthenticated,
    /// Its `callId` belongs to another attempt than the one its URL names, or the attempt
    /// it names knows the provider by another id: nothing changed.
    Mismatch,
}

/// What applying a webhook came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WebhookOutcome {
    pub effect: WebhookEffect,
    /// The retry decision taken for a failed attempt, if one was.
    pub retry: Option<RetryDecision>,
}

impl WebhookOutcome {
    fn only(effect: WebhookEffect) -> Option<Self> {
        Some(Self {
            effect,
            retry: None,
        })
    }
}

/// Progress webhooks (`QUEUED`, `RINGING`, `IN_PROGRESS`) kept on the timeline per attempt;
/// later ones are answered as duplicates, so a chatty provider cannot grow a timeline.
pub const MAX_PROGRESS_PER_ATTEMPT: i64 = 20;

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
/// nothing was written. Writes nothing either when it changes nothing (a duplicate, a
/// refusal), so webhooks can share a transaction.
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
    let (call_id, attempt) = match (update.reference, by_id) {
        // The URL names one attempt, the callId another.
        (Some(reference), Some(found)) if reference != found => {
            return Ok(WebhookOutcome::only(WebhookEffect::Mismatch));
        }
        // The verified reference names the attempt, which may not know its id yet (the
        // webhook beat the provider's 202).
        (Some(reference), _) => reference,
        (None, Some(_)) if !update.authenticated => {
            return Ok(WebhookOutcome::only(WebhookEffect::Unauthenticated));
        }
        (None, Some(found)) => found,
        (None, None) => return Ok(None),
    };
    let Some(locked) = lock(tx, call_id, attempt).await? else {
        return Ok(None);
    };
    // Never rebinds an attempt to another provider id.
    if matches!(&locked.provider_call_id, Some(known) if *known != update.provider_call_id) {
        return Ok(WebhookOutcome::only(WebhookEffect::Mismatch));
    }
    let status = update.status;
    if let Some(webhook_id) = &update.webhook_id {
        // Taken under the call's lock, so a replay racing its original waits for it and
        // then finds the id taken.
        let fresh = sqlx::query(
            "INSERT INTO webhook_receipts (webhook_id) VALUES ($1) ON CONFLICT DO NOTHING",
        )
        .bind(webhook_id)
        .execute(&mut **tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            return Ok(WebhookOutcome::only(WebhookEffect::Duplicate));
        }
    }
    let received = json!({"status": status.as_str(), "body": update.body});
    if status.is_final() && locked.final_webhook {
        if locked.is_current(attempt) {
            // The outcome of this attempt is already recorded: a repeat changes nothing.
            return Ok(WebhookOutcome::only(WebhookEffect::Duplicate));
        }
        // A late word on an earlier attempt, settled already: the timeline only.
        event(tx, call_id, attempt, "WEBHOOK_RECEIVED", received).await?;
        return Ok(WebhookOutcome::only(WebhookEffect::Applied));
    }
    if !status.is_final() {
        let recorded: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM call_events
             WHERE call_id = $1 AND attempt = $2 AND kind = 'WEBHOOK_RECEIVED'",
        )
        .bind(call_id)
        .bind(attempt)
        .fetch_one(&mut **tx)
        .await?;
        if recorded >= MAX_PROGRESS_PER_ATTEMPT {
            return Ok(WebhookOutcome::only(WebhookEffect::Duplicate));
        }
        set_provider_call_id(tx, call_id, attempt, &locked, &update.provider_call_id).await?;
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
        return Ok(WebhookOutcome::only(WebhookEffect::Applied));
    }
    set_provider_call_id(tx, call_id, attempt, &locked, &update.provider_call_id).await?;
    let completed = status == ProviderStatus::Completed;
    let reason = match &update.reason {
        Some(reason) => format!("{}: {reason}", status.as_str()),
        None => status.as_str().to_owned(),
    };
    let mut retry = None;
    let call = if !locked.is_current(attempt) {
        // A late final webhook for an earlier attempt: recorded, the call has moved on.
        CallMove::Stay
    } else {
        match (locked.call_status, locked.attempt_is_open(), completed) {
            (CallStatus::InProgress, true, true) => CallMove::Complete {
                duration_sec: update.duration_sec,
            },
            (CallStatus::InProgress, true, false) => {
                let decision = decide(attempt);
                retry = Some(decision);
                CallMove::after_failure(&reason, decision)
            }
            // The real outcome of an attempt that expired, or that the dial path settled
            // without knowing it (a lost answer, a 409 to a resend): a call that did take
            // place completes the call, whatever the dial path made of it meanwhile.
            (CallStatus::Expired | CallStatus::Failed | CallStatus::Pending, false, true) => {
                CallMove::Complete {
                    duration_sec: update.duration_sec,
                }
            }
            // The real failure of an expired call: recorded, never retried.
            (CallStatus::Expired, false, false) => CallMove::Fail { reason: &reason },
            _ => CallMove::Stay,
        }
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
        SettledBy::FinalWebhook,
    )
    .await?;
    Ok(Some(WebhookOutcome {
        effect: WebhookEffect::Applied,
        retry,
    }))
}
