//! The JSON shapes of the API, as documented in the OpenAPI document.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object, types::MaybeUndefined};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{self, CallStatus, EventKind, schedule::Rules};

mod campaigns;
mod envelopes;
mod events;
mod json;
mod serialized;

pub use campaigns::*;
pub use envelopes::*;
pub use events::*;
pub use json::{BatchItem, Text};
pub use serialized::Serialized;
use serialized::{rfc3339, rfc3339_opt};

/// A call's status. `PENDING` and `IN_PROGRESS` are live, the others final.
#[derive(Enum, serde::Serialize, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Status {
    Pending,
    InProgress,
    Completed,
    Failed,
    Expired,
    Cancelled,
}

impl From<CallStatus> for Status {
    fn from(status: CallStatus) -> Self {
        match status {
            CallStatus::Pending => Status::Pending,
            CallStatus::InProgress => Status::InProgress,
            CallStatus::Completed => Status::Completed,
            CallStatus::Failed => Status::Failed,
            CallStatus::Expired => Status::Expired,
            CallStatus::Cancelled => Status::Cancelled,
        }
    }
}

impl From<Status> for CallStatus {
    fn from(status: Status) -> Self {
        match status {
            Status::Pending => CallStatus::Pending,
            Status::InProgress => CallStatus::InProgress,
            Status::Completed => CallStatus::Completed,
            Status::Failed => CallStatus::Failed,
            Status::Expired => CallStatus::Expired,
            Status::Cancelled => CallStatus::Cancelled,
        }
    }
}

/// What to call and how.
#[derive(Object, serde::Serialize, Clone, Debug)]
#[oai(rename_all = "camelCase", example)]
#[serde(rename_all = "camelCase")]
pub struct Payload {
    /// The number to call, in E.164 (`+` and country code).
    pub to: String,
    /// The provider's script to run.
    pub script_id: String,
    /// Free-form data handed to the script.
    pub metadata: BTreeMap<String, Value>,
}

impl poem_openapi::types::Example for Payload {
    fn example() -> Self {
        Self {
            to: "+966501234567".into(),
            script_id: "welcomeFlow".into(),
            metadata: [("customerName".to_owned(), Value::from("John Doe"))].into(),
        }
    }
}

/// A call and where it stands.
#[derive(Object, serde::Serialize, Clone, Debug)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct Call {
    pub id: Uuid,
    pub payload: Payload,
    pub status: Status,
    /// Dial attempts made so far.
    pub attempts: i32,
    /// The provider's id for the latest attempt (its `callId`).
    #[oai(nullable, rename = "externalCallId")]
    #[serde(rename = "externalCallId")]
    pub provider_call_id: Option<String>,
    /// Why the latest attempt failed, when it did.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// When a `PENDING` call will be dialed at the earliest; null once it is not pending.
    #[oai(nullable)]
    #[serde(serialize_with = "rfc3339_opt")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Length of the completed call, as the provider reported it.
    #[oai(nullable)]
    pub duration_sec: Option<i32>,
    #[serde(serialize_with = "rfc3339")]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339")]
    pub updated_at: DateTime<Utc>,
    /// When the latest attempt was dialed.
    #[oai(nullable)]
    #[serde(serialize_with = "rfc3339_opt")]
    pub started_at: Option<DateTime<Utc>>,
    /// When the call reached its final status.
    #[oai(nullable)]
    #[serde(serialize_with = "rfc3339_opt")]
    pub completed_at: Option<DateTime<Utc>>,
    /// Not dialed before this instant.
    #[oai(nullable)]
    #[serde(serialize_with = "rfc3339_opt")]
    pub not_before: Option<DateTime<Utc>>,
    /// Still `PENDING` at this instant, the call ends `EXPIRED`, never dialed.
    #[oai(nullable)]
    #[serde(serialize_with = "rfc3339_opt")]
    pub not_after: Option<DateTime<Utc>>,
    /// The callee's time zone in force (IANA name): the call's own, else the one its
    /// number's prefix maps to, else `DEFAULT_TIMEZONE`; null when the prefix maps to
    /// several, which `timeZones` lists.
    #[oai(nullable)]
    pub timezone: Option<String>,
    /// Every time zone the calling window must hold in for this call.
    pub time_zones: Vec<String>,
    /// The campaign it belongs to.
    #[oai(nullable)]
    pub campaign_id: Option<Uuid>,
}

impl Call {
    /// The call as the API shows it, its time zones as `rules` find them.
    pub fn of(call: domain::Call, rules: &Rules) -> Self {
        let zones = rules.zones(&call.payload.to, call.timing.timezone);
        let time_zones: Vec<String> = zones.iter().map(|tz| tz.name().to_owned()).collect();
        Self {
            timezone: match time_zones.as_slice() {
                [one] => Some(one.clone()),
                _ => None,
            },
            time_zones,
            campaign_id: call.campaign_id,
            not_before: call.timing.not_before,
            not_after: call.timing.not_after,
            id: call.id,
            payload: Payload {
                to: call.payload.to.as_str().to_owned(),
                script_id: call.payload.script_id.as_str().to_owned(),
                metadata: call.payload.metadata.into_iter().collect(),
            },
            status: call.status.into(),
            attempts: call.attempts,
            provider_call_id: call.provider_call_id,
            last_error: call.last_error,
            next_attempt_at: call.next_attempt_at,
            duration_sec: call.duration_sec,
            created_at: call.created_at,
            updated_at: call.updated_at,
            started_at: call.started_at,
            completed_at: call.completed_at,
        }
    }
}

/// A request for one call.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields, example)]
pub struct CreateCallRequest {
    /// The number to call in E.164; spaces, dashes, dots and parentheses are removed first.
    /// A number without the leading `+` is rejected.
    pub to: Text,
    /// 1 to 128 characters of letters, digits, `_ - . :`; may be left out in a campaign that
    /// has a `scriptId` of its own.
    pub script_id: Option<Text>,
    /// A JSON object of at most 16 KiB handed to the script; `{}` when absent.
    pub metadata: Option<BTreeMap<String, Value>>,
    /// Not dialed before this instant (RFC 3339).
    pub not_before: Option<DateTime<Utc>>,
    /// The deadline (RFC 3339, in the future, after `notBefore`): still `PENDING` then, the
    /// call ends `EXPIRED`, never dialed.
    pub not_after: Option<DateTime<Utc>>,
    /// The callee's IANA time zone (`America/New_York`), when the number's prefix should
    /// not decide it.
    pub timezone: Option<Text>,
    /// The campaign it belongs to: its rules narrow the call's.
    pub campaign_id: Option<Uuid>,
}

impl poem_openapi::types::Example for CreateCallRequest {
    fn example() -> Self {
        let example = Payload::example();
        Self {
            to: Text(example.to),
            script_id: Some(Text(example.script_id)),
            metadata: Some(example.metadata),
            not_before: None,
            not_after: None,
            timezone: None,
            campaign_id: None,
        }
    }
}

/// Up to 1000 calls created in one transaction, in this order.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchCreateRequest {
    pub calls: Vec<BatchItem>,
    /// Leave out the calls to suppressed numbers (listed under `skipped`) instead of
    /// refusing the batch (422 `NUMBER_SUPPRESSED`).
    #[oai(default)]
    pub skip_suppressed: bool,
}

/// A change to a `PENDING` call: its payload, its schedule, or both.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchCallRequest {
    /// Merged into `{"to", "scriptId", "metadata"}` as a JSON Merge Patch (RFC 7396);
    /// `null` removes a key, e.g. `{"metadata": {"note": null}}`. The result is validated
    /// like a new call.
    pub payload: Option<Value>,
    /// The new `notBefore`; `null` clears it.
    pub not_before: MaybeUndefined<DateTime<Utc>>,
    /// The new `notAfter`; `null` clears it.
    pub not_after: MaybeUndefined<DateTime<Utc>>,
    /// The new `timezone`; `null` clears it (the number's prefix decides again).
    pub timezone: MaybeUndefined<Text>,
}

/// The kind of a timeline entry.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Created,
    Updated,
    Cancelled,
    Dialed,
    Accepted,
    DialFailed,
    RateLimited,
    WebhookReceived,
    RetryScheduled,
    Completed,
    Failed,
    Expired,
    Rescued,
    DialUnknown,
    /// A look-up at the provider found where an attempt stands (reconciliation).
    Reconciled,
    /// The schedule moved the call to later (`detail.reason`: `CALLING_WINDOW`,
    /// `NOT_BEFORE`, `DAILY_LIMIT` or `DEADLINE`; `detail.until`).
    Waiting,
}

impl From<EventKind> for EventType {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Created => Self::Created,
            EventKind::Updated => Self::Updated,
            EventKind::Cancelled => Self::Cancelled,
            EventKind::Dialed => Self::Dialed,
            EventKind::Accepted => Self::Accepted,
            EventKind::DialFailed => Self::DialFailed,
            EventKind::RateLimited => Self::RateLimited,
            EventKind::WebhookReceived => Self::WebhookReceived,
            EventKind::RetryScheduled => Self::RetryScheduled,
            EventKind::Completed => Self::Completed,
            EventKind::Failed => Self::Failed,
            EventKind::Expired => Self::Expired,
            EventKind::Rescued => Self::Rescued,
            EventKind::DialUnknown => Self::DialUnknown,
            EventKind::Reconciled => Self::Reconciled,
            EventKind::Waiting => Self::Waiting,
        }
    }
}

/// One entry of a call's timeline.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct Event {
    /// Increasing along the timeline; 0 for the `CREATED` entry.
    pub id: i64,
    #[oai(rename = "type")]
    pub kind: EventType,
    /// The dial attempt it concerns (from 1), when it concerns one.
    #[oai(nullable)]
    pub attempt: Option<i32>,
    /// Facts of the event: the patch applied, the provider's answer, the webhook received…
    pub detail: Value,
    pub at: DateTime<Utc>,
}

impl From<domain::CallEvent> for Event {
    fn from(event: domain::CallEvent) -> Self {
        Self {
            id: event.id,
            kind: event.kind.into(),
            attempt: event.attempt,
            detail: event.detail,
            at: event.at,
        }
    }
}

/// Puts a number on the suppression list, or replaces its suppression.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct PutSuppressionRequest {
    /// Why it must not be called (1 to 500 characters), e.g. `asked not to be called`.
    pub reason: Text,
    /// When the suppression ends (RFC 3339); absent or null: never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// One suppression of a batch.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuppressionItem {
    /// The number, normalised like a call's `to`.
    pub number: Text,
    pub reason: Text,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Up to 1000 suppressions, added or replaced in one transaction.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct SuppressionBatchRequest {
    pub suppressions: Vec<SuppressionItem>,
}
