//! What the answer to a dial request does to its attempt and call.

use std::time::Duration;

use serde_json::json;

use super::{CallMove, Decision, Effect, Entry, MAX_RATE_LIMITED, Retry, Settlement, Unchanged};
use crate::domain::{AttemptState, AttemptStatus, DialOutcome, EventKind};

/// The provider's answer to a dial request, other than a 2xx (which
/// `sql/queries/record_accepted.sql` records in batches, fenced in SQL), applied to the
/// attempt. `rate_limited_before`: the 429s this attempt got before this answer.
pub fn decide_dial(
    state: &AttemptState,
    outcome: &DialOutcome,
    rate_limited_before: u32,
    retry: Retry,
) -> Decision {
    // A webhook got here first and settled the attempt: nothing left to record.
    if state.status != AttemptStatus::Dialing {
        return Decision::unchanged(Unchanged::Settled);
    }
    let live = state.is_live();
    let mut decided = None;
    let mut after_failure = |reason: &str, hint: Option<Duration>| {
        if !live {
            return CallMove::Stay;
        }
        let decision = retry
            .policy
            .after_failure(state.attempt as u32, hint, retry.jitter);
        decided = Some(decision);
        CallMove::after_failure(reason, decision)
    };
    let failed = |reason: &str, call: CallMove| Settlement {
        outcome: AttemptStatus::Failed,
        error: Some(reason.to_owned()),
        entry: Entry::new(EventKind::DialFailed, json!({"reason": reason})),
        call,
        final_webhook: false,
    };
    let settlement = match outcome {
        DialOutcome::Accepted { .. } => return Decision::unchanged(Unchanged::Settled),
        DialOutcome::Unknown { reason, resend_in } => {
            // The provider may hold the call: the attempt stays open (and its slot taken)
            // until an answer, a webhook or CALL_TIMEOUT settles it, and is sent again with
            // the same Idempotency-Key once its lease runs out.
            return Decision::only(Effect::KeepOpen {
                resend_in: *resend_in,
                entry: Entry::new(
                    EventKind::DialUnknown,
                    json!({"reason": reason, "resendInMs": resend_in.as_millis() as u64}),
                ),
            });
        }
        DialOutcome::RateLimited { retry_after } if rate_limited_before + 1 >= MAX_RATE_LIMITED => {
            let reason =
                format!("rate limited by the provider (429) {MAX_RATE_LIMITED} times in a row");
            let call = after_failure(&reason, *retry_after);
            failed(&reason, call)
        }
        DialOutcome::RateLimited { retry_after } => {
            let delay =
                retry
                    .policy
                    .after_rate_limit(rate_limited_before + 1, *retry_after, retry.jitter);
            Settlement {
                outcome: AttemptStatus::RateLimited,
                error: Some("rate limited by the provider (429)".to_owned()),
                entry: Entry::new(
                    EventKind::RateLimited,
                    json!({"delayMs": delay.as_millis() as u64}),
                ),
                // Not an attempt: the same attempt number is dialed again later.
                call: if live {
                    CallMove::Retry {
                        delay,
                        counts: false,
                    }
                } else {
                    CallMove::Stay
                },
                final_webhook: false,
            }
        }
        DialOutcome::Transient {
            reason,
            retry_after,
        } => {
            let call = after_failure(reason, *retry_after);
            failed(reason, call)
        }
        DialOutcome::Permanent { reason } => failed(
            reason,
            if live {
                CallMove::Fail {
                    reason: reason.clone(),
                }
            } else {
                CallMove::Stay
            },
        ),
    };
    Decision {
        effect: Effect::Settle(settlement),
        bind_provider_call_id: None,
        retry: decided,
    }
}
