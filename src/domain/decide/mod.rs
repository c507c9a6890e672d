//! What an answer of the provider does to an attempt and its call: pure functions of the
//! attempt's state and the answer, returning an [`Effect`] that `db` writes and does not
//! question (the shape of River's rescuer: decide in code, apply in one statement).

use std::time::Duration;

use serde_json::{Value, json};

use super::{AttemptStatus, CallStatus, EventKind, RetryDecision, RetryPolicy};

/// How many 429s in a row one attempt may get before it counts as a failed attempt: each
/// leaves an attempt row and a timeline entry, and a provider answering 429 for ever must
/// not grow them without bound.
pub const MAX_RATE_LIMITED: u32 = 20;

/// Progress webhooks (`QUEUED`, `RINGING`, `IN_PROGRESS`) kept on the timeline per attempt;
/// later ones are answered as duplicates, so a chatty provider cannot grow a timeline.
pub const MAX_PROGRESS_PER_ATTEMPT: u32 = 20;

/// What the retry policy needs beyond the attempt: the policy and a uniform random number
/// in `[0, 1)` for its jitter (passed in, so decisions stay pure).
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    pub policy: RetryPolicy,
    pub jitter: f64,
    /// The calling window a retry must land in: one whose backoff ends outside it falls due
    /// at its next opening instead.
    pub rules: super::schedule::Rules,
}

/// One timeline entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub kind: EventKind,
    pub detail: Value,
}

impl Entry {
    pub(crate) fn new(kind: EventKind, detail: Value) -> Self {
        Self { kind, detail }
    }
}

/// Why nothing is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unchanged {
    /// The attempt was settled already (a webhook beat the dial's answer, say).
    Settled,
    /// A repeat of a final webhook, a replayed `webhook-id`, or progress past the
    /// timeline's share per attempt.
    Duplicate,
    /// Names a known attempt but proves nothing (no signature, no token).
    Unauthenticated,
    /// Its `callId` belongs to another attempt than the one its URL names, or the attempt
    /// knows the provider by another id.
    Mismatch,
}

/// What becomes of the call when one of its attempts is settled.
#[derive(Clone, Debug, PartialEq)]
pub enum CallMove {
    /// Not the call's live attempt (or the call has moved on): the call stays.
    Stay,
    Complete {
        duration_sec: Option<i32>,
    },
    Fail {
        reason: String,
    },
    /// Back to `PENDING` after `delay` (the attempt's error becomes the call's `lastError`);
    /// `counts` is false for a 429, which is not an attempt.
    Retry {
        delay: Duration,
        counts: bool,
    },
}

impl CallMove {
    /// A failed attempt's move, from the retry decision.
    pub(crate) fn after_failure(reason: &str, decision: RetryDecision) -> Self {
        match decision {
            RetryDecision::RetryAfter(delay) => Self::Retry {
                delay,
                counts: true,
            },
            RetryDecision::GiveUp => Self::Fail {
                reason: reason.to_owned(),
            },
        }
    }

    /// The call's new status; `None` when it stays.
    pub fn status(&self) -> Option<CallStatus> {
        match self {
            Self::Stay => None,
            Self::Complete { .. } => Some(CallStatus::Completed),
            Self::Fail { .. } => Some(CallStatus::Failed),
            Self::Retry { .. } => Some(CallStatus::Pending),
        }
    }

    /// The timeline entry that says what became of the call after `attempt`, if any.
    pub fn entry(&self, attempt: i32) -> Option<Entry> {
        match self {
            Self::Stay | Self::Retry { counts: false, .. } => None,
            Self::Complete { duration_sec } => Some(Entry::new(
                EventKind::Completed,
                json!({"durationSec": duration_sec}),
            )),
            Self::Fail { reason } => Some(Entry::new(EventKind::Failed, json!({"reason": reason}))),
            Self::Retry { delay, .. } => Some(Entry::new(
                EventKind::RetryScheduled,
                json!({"nextAttempt": attempt + 1, "delayMs": delay.as_millis() as u64}),
            )),
        }
    }
}

/// Settling an attempt: its outcome, why, and what becomes of its call.
#[derive(Clone, Debug, PartialEq)]
pub struct Settlement {
    /// `COMPLETED`, `FAILED` or `RATE_LIMITED`.
    pub outcome: AttemptStatus,
    pub error: Option<String>,
    /// The entry that says why (the webhook, the dial's failure, the 429).
    pub entry: Entry,
    pub call: CallMove,
    /// Settled by a final webhook: its repeats are duplicates from now on.
    pub final_webhook: bool,
}

/// What to write.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Unchanged(Unchanged),
    /// A timeline entry only (a late word on an attempt settled already).
    Timeline(Entry),
    /// A progress webhook: recorded; a `DIALING` attempt becomes `ACCEPTED` (the provider
    /// clearly holds the call, so it needs no rescue).
    Progress {
        entry: Entry,
        accept: bool,
    },
    /// The dial's outcome is unknown: the attempt stays open, its lease set so that it is
    /// sent again after `resend_in`.
    KeepOpen {
        resend_in: Duration,
        entry: Entry,
    },
    Settle(Settlement),
}

/// A decision: the effect, the provider id to record for an attempt that has none yet,
/// and the retry decision taken for a failed attempt (for the metrics).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub effect: Effect,
    pub bind_provider_call_id: Option<String>,
    pub retry: Option<RetryDecision>,
}

impl Decision {
    pub(crate) fn only(effect: Effect) -> Self {
        Self {
            effect,
            bind_provider_call_id: None,
            retry: None,
        }
    }

    pub(crate) fn unchanged(why: Unchanged) -> Self {
        Self::only(Effect::Unchanged(why))
    }
}

mod dial;
mod webhook;

pub use dial::decide_dial;
pub use webhook::{WebhookEffect, WebhookOutcome, decide_webhook, route_webhook};

#[cfg(test)]
mod tests;
