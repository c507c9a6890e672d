//! What a webhook does: which attempt it is about, and what it does to that attempt and
//! its call.

use serde_json::json;
use uuid::Uuid;

use super::{
    CallMove, Decision, Effect, Entry, MAX_PROGRESS_PER_ATTEMPT, MAX_RATE_LIMITED, Retry,
    Settlement, Unchanged,
};
use crate::domain::{
    AttemptState, AttemptStatus, CallStatus, EventKind, ProviderStatus, ReportSource,
    RetryDecision, WebhookUpdate,
};

/// What a webhook did, as its answer tells the provider.
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
    pub fn unchanged(why: Unchanged) -> Self {
        Self {
            effect: match why {
                Unchanged::Settled | Unchanged::Duplicate => WebhookEffect::Duplicate,
                Unchanged::Unauthenticated => WebhookEffect::Unauthenticated,
                Unchanged::Mismatch => WebhookEffect::Mismatch,
            },
            retry: None,
        }
    }

    pub fn of(decision: &Decision) -> Self {
        match decision.effect {
            Effect::Unchanged(why) => Self::unchanged(why),
            _ => Self {
                effect: WebhookEffect::Applied,
                retry: decision.retry,
            },
        }
    }

    /// Whether it writes anything.
    pub fn changes(&self) -> bool {
        self.effect == WebhookEffect::Applied
    }
}

/// Which attempt a webhook is about, from the verified reference of its URL and the
/// attempt that has its `callId` (if any); `Err(None)` when it is about no known attempt.
pub fn route_webhook(
    update: &WebhookUpdate,
    by_provider_call_id: Option<(Uuid, i32)>,
) -> Result<(Uuid, i32), Option<Unchanged>> {
    match (update.reference, by_provider_call_id) {
        // The URL names one attempt, the callId another.
        (Some(reference), Some(found)) if reference != found => Err(Some(Unchanged::Mismatch)),
        // The verified reference names the attempt, which may not know its id yet (the
        // webhook beat the provider's 202).
        (Some(reference), _) => Ok(reference),
        (None, Some(_)) if !update.authenticated => Err(Some(Unchanged::Unauthenticated)),
        (None, Some(found)) => Ok(found),
        (None, None) => Err(None),
    }
}

/// A webhook applied to the attempt it is about. `progress_recorded`: the progress
/// webhooks already on the attempt's timeline (read for progress webhooks only);
/// `rate_limited_before`: the call's attempts refused for a rate or concurrency limit in a
/// row (read for `THROTTLED` only).
pub fn decide_webhook(
    state: &AttemptState,
    update: &WebhookUpdate,
    progress_recorded: u32,
    rate_limited_before: u32,
    retry: Retry,
) -> Decision {
    // Never rebinds an attempt to another provider id.
    if matches!(&state.provider_call_id, Some(known) if *known != update.provider_call_id) {
        return Decision::unchanged(Unchanged::Mismatch);
    }
    let status = update.status;
    let bind = state
        .provider_call_id
        .is_none()
        .then(|| update.provider_call_id.clone());
    let received = Entry::new(
        match update.source {
            ReportSource::Webhook => EventKind::WebhookReceived,
            ReportSource::LookUp => EventKind::Reconciled,
        },
        json!({"status": status.as_str(), "body": update.body}),
    );
    if status.is_final() && state.final_webhook {
        if state.is_current() {
            // The outcome of this attempt is already recorded: a repeat changes nothing.
            return Decision::unchanged(Unchanged::Duplicate);
        }
        // A late word on an earlier attempt, settled already: the timeline only.
        return Decision::only(Effect::Timeline(received));
    }
    if !status.is_final() {
        if progress_recorded >= MAX_PROGRESS_PER_ATTEMPT {
            return Decision::unchanged(Unchanged::Duplicate);
        }
        return Decision {
            effect: Effect::Progress {
                entry: received,
                accept: state.status == AttemptStatus::Dialing,
            },
            bind_provider_call_id: bind,
            retry: None,
        };
    }
    if status == ProviderStatus::Throttled {
        return throttled(state, received, bind, rate_limited_before, retry);
    }
    // A voicemail that `RETRY_OUTCOMES` does not retry ends the call as a completed one.
    let completed = status == ProviderStatus::Completed
        || (status == ProviderStatus::Voicemail
            && !retry
                .policy
                .outcomes
                .retries(crate::domain::FailedOutcome::Voicemail));
    let reason = match &update.reason {
        Some(reason) => format!("{}: {reason}", status.as_str()),
        None => status.as_str().to_owned(),
    };
    let mut decided = None;
    let call = if !state.is_current() {
        // A late final webhook for an earlier attempt: recorded, the call has moved on.
        CallMove::Stay
    } else {
        match (state.call_status, state.status.is_open(), completed) {
            (CallStatus::InProgress, true, true) => CallMove::Complete {
                duration_sec: update.duration_sec,
            },
            (CallStatus::InProgress, true, false) => {
                let decision = match status.failed_outcome() {
                    Some(outcome) => {
                        retry
                            .policy
                            .after_outcome(outcome, state.attempt as u32, retry.jitter)
                    }
                    None => retry
                        .policy
                        .after_failure(state.attempt as u32, None, retry.jitter),
                };
                decided = Some(decision);
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
            (CallStatus::Expired, false, false) => CallMove::Fail {
                reason: reason.clone(),
            },
            _ => CallMove::Stay,
        }
    };
    Decision {
        effect: Effect::Settle(Settlement {
            outcome: if completed {
                AttemptStatus::Completed
            } else {
                AttemptStatus::Failed
            },
            error: (!completed).then_some(reason),
            entry: received,
            call,
            final_webhook: true,
        }),
        bind_provider_call_id: bind,
        retry: decided,
    }
}

/// The vendor ended the attempt without placing it, for its own concurrency limit: like a
/// 429, not an attempt; the call waits and dials the same attempt number again (after
/// [`MAX_RATE_LIMITED`] in a row, it counts as a failed attempt). Only for the call's
/// live attempt; a late word on an earlier one is recorded only.
fn throttled(
    state: &AttemptState,
    received: Entry,
    bind: Option<String>,
    rate_limited_before: u32,
    retry: Retry,
) -> Decision {
    let live = state.is_live() && state.status.is_open();
    if !live {
        return Decision {
            effect: Effect::Timeline(received),
            bind_provider_call_id: bind,
            retry: None,
        };
    }
    let reason = "the provider's concurrency limit was reached; the call was not placed";
    if rate_limited_before + 1 >= MAX_RATE_LIMITED {
        let reason = format!("{reason} ({MAX_RATE_LIMITED} times in a row)");
        let decision = retry
            .policy
            .after_failure(state.attempt as u32, None, retry.jitter);
        return Decision {
            effect: Effect::Settle(Settlement {
                outcome: AttemptStatus::Failed,
                error: Some(reason.clone()),
                entry: received,
                call: CallMove::after_failure(&reason, decision),
                final_webhook: true,
            }),
            bind_provider_call_id: bind,
            retry: Some(decision),
        };
    }
    let delay = retry
        .policy
        .after_rate_limit(rate_limited_before + 1, None, retry.jitter);
    Decision {
        effect: Effect::Settle(Settlement {
            outcome: AttemptStatus::RateLimited,
            error: Some(reason.to_owned()),
            entry: received,
            call: CallMove::Retry {
                delay,
                counts: false,
            },
            final_webhook: true,
        }),
        bind_provider_call_id: bind,
        retry: None,
    }
}
