//! One dial attempt of a call: its statuses, and the state a decision about it reads.

use super::CallStatus;

/// Where a dial attempt stands (`call_attempts.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, sqlx::Encode, sqlx::Decode)]
#[sqlx(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AttemptStatus {
    /// Claimed; the request to the provider may be under way. The claiming replica owns it
    /// until its lease runs out; then the sweeper takes it over and sends it again.
    Dialing,
    /// The provider answered 2xx (or a progress webhook said it holds the call).
    Accepted,
    Completed,
    Failed,
    /// A 429: not an attempt; the same attempt number is dialed again later.
    RateLimited,
    /// No final webhook came within `CALL_TIMEOUT`.
    Expired,
}

impl AttemptStatus {
    /// The name in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dialing => "DIALING",
            Self::Accepted => "ACCEPTED",
            Self::Completed => "COMPLETED",
            Self::Failed => "FAILED",
            Self::RateLimited => "RATE_LIMITED",
            Self::Expired => "EXPIRED",
        }
    }

    /// The provider may hold the call: its outcome is still to come.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Dialing | Self::Accepted)
    }
}

/// A call and one of its attempts, as they stand under their row locks: everything a
/// decision about the attempt reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AttemptState {
    pub call_status: CallStatus,
    /// The call's current attempt number.
    pub call_attempts: i32,
    /// This attempt's number.
    pub attempt: i32,
    pub status: AttemptStatus,
    /// The provider's id for the attempt, once known.
    pub provider_call_id: Option<String>,
    /// A final webhook was applied to the attempt already.
    pub final_webhook: bool,
}

impl AttemptState {
    /// The attempt is the call's latest one.
    pub fn is_current(&self) -> bool {
        self.call_attempts == self.attempt
    }

    /// The attempt is the call's latest one and holds the call's slot: its outcome moves
    /// the call.
    pub fn is_live(&self) -> bool {
        self.is_current() && self.call_status == CallStatus::InProgress
    }
}

super::text_column!(AttemptStatus);
