//! What the provider says about an attempt, in the service's own words whatever the
//! vendor: the answer to a dial request, and a webhook.

use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

/// What became of a dial request; decides what happens to the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DialOutcome {
    /// 2xx: the provider holds the call. Its id for the attempt, when it gave a usable one
    /// (webhooks are matched by the reference in their URL too).
    Accepted { provider_call_id: Option<String> },
    /// 429: not an attempt; dial again later.
    RateLimited { retry_after: Option<Duration> },
    /// Refused connection or 5xx to the first send: the attempt failed; retried while
    /// attempts remain.
    Transient {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Any other 4xx: the call has failed for good.
    Permanent { reason: String },
    /// The request may have placed the call, and no send settled it (timeout, cut
    /// connection, or a 5xx, 409, 425 or 429 to a resend): the attempt stays open and is
    /// sent again, with the same `Idempotency-Key`, after `resend_in`. Never a failed
    /// attempt, so a person is never dialed twice because an answer was lost.
    Unknown { reason: String, resend_in: Duration },
}

impl DialOutcome {
    /// A short name for metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::RateLimited { .. } => "rate_limited",
            Self::Transient { .. } => "transient",
            Self::Permanent { .. } => "permanent",
            Self::Unknown { .. } => "unknown",
        }
    }
}

/// A call's status as a webhook reports it, whatever the vendor's own vocabulary.
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
    /// The vendor did not place the call for its own concurrency limit: not an attempt,
    /// the call waits like after a 429.
    Throttled,
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
            Self::Throttled => "THROTTLED",
        }
    }

    /// The outcome of a call that did not complete, which `RETRY_OUTCOMES` may retry.
    pub fn failed_outcome(self) -> Option<super::FailedOutcome> {
        use super::FailedOutcome;
        match self {
            Self::Failed => Some(FailedOutcome::Failed),
            Self::Busy => Some(FailedOutcome::Busy),
            Self::NoAnswer => Some(FailedOutcome::NoAnswer),
            Self::Voicemail => Some(FailedOutcome::Voicemail),
            _ => None,
        }
    }

    /// The end of the attempt (the rest is progress, recorded on the timeline only).
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Ringing | Self::InProgress)
    }
}

/// A webhook, parsed and checked, with what proves where it came from.
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
    /// Where the report comes from: the provider's webhook, or a look-up of ours.
    pub source: ReportSource,
}

/// Where a report of the provider's comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportSource {
    /// The provider's webhook.
    Webhook,
    /// A look-up at the provider (reconciliation): recorded as `RECONCILED`.
    LookUp,
}
