//! A call, its statuses and the transitions between them.

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::CallPayload;

/// Where a call stands. `PENDING` and `IN_PROGRESS` are live; the rest are final. One type
/// from the database's `call_status` enum to the API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(type_name = "call_status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallStatus {
    /// Waiting for its turn or for its next attempt.
    Pending,
    /// Dialed; the provider holds it and a slot is taken.
    InProgress,
    Completed,
    Failed,
    Expired,
    Cancelled,
}

impl CallStatus {
    pub const ALL: [CallStatus; 6] = [
        Self::Pending,
        Self::InProgress,
        Self::Completed,
        Self::Failed,
        Self::Expired,
        Self::Cancelled,
    ];

    /// The name used in the API and in the database enum.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::InProgress => "IN_PROGRESS",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Expired => "EXPIRED",
            Self::Cancelled => "CANCELLED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    pub fn is_final(self) -> bool {
        !matches!(self, Self::Pending | Self::InProgress)
    }

    /// The transitions the service ever makes. A final status changes only to record what
    /// really happened, when the provider's word comes late: an `EXPIRED` call learns its
    /// real outcome, and a call whose current attempt the dial path settled without knowing
    /// it (a `PENDING` call waiting for its retry, or a `FAILED` one) completes when the
    /// provider reports that the call took place (see `decide::decide_webhook`).
    pub fn can_become(self, next: CallStatus) -> bool {
        use CallStatus::*;
        matches!(
            (self, next),
            (Pending, InProgress | Cancelled | Completed)
                | (InProgress, Pending | Completed | Failed | Expired)
                | (Expired, Completed | Failed)
                | (Failed, Completed)
        )
    }
}

/// A call as clients see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    pub id: Uuid,
    pub payload: CallPayload,
    pub status: CallStatus,
    /// Dial attempts made so far (the next is `attempts + 1`).
    pub attempts: i32,
    /// The provider's id for the latest attempt.
    pub provider_call_id: Option<String>,
    pub last_error: Option<String>,
    /// When a `PENDING` call becomes due; `None` once it is not pending.
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub duration_sec: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    /// When it may be dialed, and in which time zone its callee lives.
    pub timing: CallTiming,
    /// The campaign it belongs to, if any.
    pub campaign_id: Option<Uuid>,
}

/// A call's own scheduling fields, as the client set them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CallTiming {
    /// Not dialed before this instant.
    pub not_before: Option<DateTime<Utc>>,
    /// Still `PENDING` at this instant: `EXPIRED`, never dialed.
    pub not_after: Option<DateTime<Utc>>,
    /// The callee's time zone, when the client named one.
    pub timezone: Option<chrono_tz::Tz>,
}

impl CallTiming {
    /// As the database stores it: only names the time zone database knows are stored.
    pub fn stored(
        not_before: Option<DateTime<Utc>>,
        not_after: Option<DateTime<Utc>>,
        timezone: Option<&str>,
    ) -> Self {
        Self {
            not_before,
            not_after,
            timezone: timezone.and_then(|tz| tz.parse().ok()),
        }
    }

    /// What the schedule's rules read of a call to `number` of no campaign.
    pub fn of<'a>(&self, number: &'a super::PhoneNumber) -> super::schedule::Timing<'a> {
        self.within(number, None)
    }

    /// What the schedule's rules read of a call to `number`, narrowed by its campaign's
    /// window, start and end.
    pub fn within<'a>(
        &self,
        number: &'a super::PhoneNumber,
        campaign: Option<&super::CampaignRules>,
    ) -> super::schedule::Timing<'a> {
        let start = campaign.and_then(|c| c.start_at);
        super::schedule::Timing {
            number,
            timezone: self.timezone,
            not_before: match (self.not_before, start) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            not_after: self.not_after,
            window: campaign.and_then(|c| c.window),
            ends_at: campaign.and_then(|c| c.end_at),
        }
    }
}

/// What happened to a call, one entry of its timeline (`call_events.kind`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::Encode, sqlx::Decode)]
#[sqlx(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventKind {
    /// Accepted by the API.
    Created,
    /// Its payload was changed by `PATCH`.
    Updated,
    /// Cancelled by a client while pending.
    Cancelled,
    /// An attempt was sent to the provider.
    Dialed,
    /// The provider accepted an attempt.
    Accepted,
    /// The provider refused an attempt or could not be reached.
    DialFailed,
    /// The provider asked to slow down; the call waits without using an attempt.
    RateLimited,
    /// A webhook about one of the call's attempts arrived.
    WebhookReceived,
    /// A failed attempt will be followed by another.
    RetryScheduled,
    /// The call ended well.
    Completed,
    /// The call ended without success, attempts exhausted or refused for good.
    Failed,
    /// No final webhook came within `CALL_TIMEOUT`.
    Expired,
    /// An attempt abandoned by a stopped replica was taken over.
    Rescued,
    /// The provider's answer to an attempt was lost; it stays open and is sent again.
    DialUnknown,
    /// A look-up at the provider found where an attempt stands (reconciliation).
    Reconciled,
    /// The schedule moved the call to later: its window, its `notBefore`, its number's
    /// daily limit.
    Waiting,
}

impl EventKind {
    pub const ALL: [EventKind; 16] = [
        Self::Created,
        Self::Updated,
        Self::Cancelled,
        Self::Dialed,
        Self::Accepted,
        Self::DialFailed,
        Self::RateLimited,
        Self::WebhookReceived,
        Self::RetryScheduled,
        Self::Completed,
        Self::Failed,
        Self::Expired,
        Self::Rescued,
        Self::DialUnknown,
        Self::Reconciled,
        Self::Waiting,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Created => "CREATED",
            Self::Updated => "UPDATED",
            Self::Cancelled => "CANCELLED",
            Self::Dialed => "DIALED",
            Self::Accepted => "ACCEPTED",
            Self::DialFailed => "DIAL_FAILED",
            Self::RateLimited => "RATE_LIMITED",
            Self::WebhookReceived => "WEBHOOK_RECEIVED",
            Self::RetryScheduled => "RETRY_SCHEDULED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::Expired => "EXPIRED",
            Self::Rescued => "RESCUED",
            Self::DialUnknown => "DIAL_UNKNOWN",
            Self::Reconciled => "RECONCILED",
            Self::Waiting => "WAITING",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

super::text_column!(EventKind);

/// One entry of a call's timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct CallEvent {
    pub id: i64,
    pub call_id: Uuid,
    /// The attempt it concerns, when it concerns one.
    pub attempt: Option<i32>,
    pub kind: EventKind,
    /// Free-form facts: the provider's answer, a webhook body, the retry time…
    pub detail: Value,
    pub at: DateTime<Utc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for status in CallStatus::ALL {
            assert_eq!(CallStatus::parse(status.as_str()), Some(status));
        }
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(CallStatus::parse("pending"), None);
    }

    #[test]
    fn final_statuses_move_only_to_the_real_outcome() {
        use CallStatus::*;
        for from in [Completed, Cancelled] {
            for to in CallStatus::ALL {
                assert!(!from.can_become(to), "{from:?} -> {to:?}");
            }
        }
        assert!(Expired.can_become(Completed));
        assert!(Expired.can_become(Failed));
        assert!(!Expired.can_become(Pending));
        assert!(Failed.can_become(Completed));
        assert!(!Failed.can_become(Pending));
    }

    #[test]
    fn only_pending_calls_are_claimed_or_cancelled() {
        use CallStatus::*;
        assert!(Pending.can_become(InProgress));
        assert!(Pending.can_become(Cancelled));
        assert!(!InProgress.can_become(Cancelled));
        assert!(!Pending.can_become(Failed));
        assert!(InProgress.can_become(Pending));
    }

    #[test]
    fn live_and_final() {
        assert!(!CallStatus::Pending.is_final());
        assert!(!CallStatus::InProgress.is_final());
        assert!(CallStatus::Expired.is_final());
    }
}
