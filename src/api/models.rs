//! The JSON shapes of the API, as documented in the OpenAPI document.

use std::{borrow::Cow, collections::BTreeMap};

use chrono::{DateTime, Utc};
use poem_openapi::{
    Enum, Object,
    registry::{MetaSchemaRef, Registry},
    types::{ParseFromJSON, ParseResult, ToJSON, Type},
};
use serde_json::Value;
use uuid::Uuid;

use crate::domain::{self, CallStatus, EventKind};

/// A JSON string and nothing else: poem-openapi's `String` also takes a number or a
/// boolean and stores its text (`"scriptId": 42` as `"42"`), which hides a client's bug.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Text(pub String);

impl Type for Text {
    const IS_REQUIRED: bool = true;
    type RawValueType = String;
    type RawElementValueType = String;

    fn name() -> Cow<'static, str> {
        String::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        String::schema_ref()
    }

    fn as_raw_value(&self) -> Option<&String> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a String> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for Text {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        match value {
            Some(Value::String(text)) => Ok(Self(text)),
            other => Err(poem_openapi::types::ParseError::expected_type(
                other.unwrap_or_default(),
            )),
        }
    }
}

impl ToJSON for Text {
    fn to_json(&self) -> Option<Value> {
        Some(Value::String(self.0.clone()))
    }
}

/// A call's status. `PENDING` and `IN_PROGRESS` are live, the others final.
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
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
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", example)]
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
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct Call {
    pub id: Uuid,
    pub payload: Payload,
    pub status: Status,
    /// Dial attempts made so far.
    pub attempts: i32,
    /// The provider's id for the latest attempt.
    #[oai(nullable)]
    pub external_call_id: Option<String>,
    /// Why the latest attempt failed, when it did.
    #[oai(nullable)]
    pub last_error: Option<String>,
    /// When a `PENDING` call will be dialed at the earliest; null once it is not pending.
    #[oai(nullable)]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// Length of the completed call, as the provider reported it.
    #[oai(nullable)]
    pub duration_sec: Option<i32>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the latest attempt was dialed.
    #[oai(nullable)]
    pub started_at: Option<DateTime<Utc>>,
    /// When the call reached its final status.
    #[oai(nullable)]
    pub completed_at: Option<DateTime<Utc>>,
}

impl From<domain::Call> for Call {
    fn from(call: domain::Call) -> Self {
        Self {
            id: call.id,
            payload: Payload {
                to: call.payload.to.as_str().to_owned(),
                script_id: call.payload.script_id.as_str().to_owned(),
                metadata: call.payload.metadata.into_iter().collect(),
            },
            status: call.status.into(),
            attempts: call.attempts,
            external_call_id: call.external_call_id,
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
    /// 1 to 128 characters of letters, digits, `_ - . :`.
    pub script_id: Text,
    /// A JSON object of at most 16 KiB handed to the script; `{}` when absent.
    pub metadata: Option<BTreeMap<String, Value>>,
}

impl poem_openapi::types::Example for CreateCallRequest {
    fn example() -> Self {
        let example = Payload::example();
        Self {
            to: Text(example.to),
            script_id: Text(example.script_id),
            metadata: Some(example.metadata),
        }
    }
}

/// One item of a batch: a [`CreateCallRequest`] that is checked item by item, so that a bad
/// item is reported by its index instead of failing the whole body.
#[derive(Clone, Debug)]
pub struct BatchItem(pub Value);

impl Type for BatchItem {
    const IS_REQUIRED: bool = true;
    type RawValueType = Value;
    type RawElementValueType = Value;

    fn name() -> Cow<'static, str> {
        CreateCallRequest::name()
    }

    fn schema_ref() -> MetaSchemaRef {
        CreateCallRequest::schema_ref()
    }

    fn register(registry: &mut Registry) {
        CreateCallRequest::register(registry);
    }

    fn as_raw_value(&self) -> Option<&Value> {
        Some(&self.0)
    }

    fn raw_element_iter<'a>(&'a self) -> Box<dyn Iterator<Item = &'a Value> + 'a> {
        Box::new(self.as_raw_value().into_iter())
    }
}

impl ParseFromJSON for BatchItem {
    fn parse_from_json(value: Option<Value>) -> ParseResult<Self> {
        Ok(Self(value.unwrap_or_default()))
    }
}

impl ToJSON for BatchItem {
    fn to_json(&self) -> Option<Value> {
        Some(self.0.clone())
    }
}

/// Up to 1000 calls created in one transaction, in this order.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct BatchCreateRequest {
    pub calls: Vec<BatchItem>,
}

/// A JSON Merge Patch (RFC 7396) applied to the call's payload.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct PatchCallRequest {
    /// Merged into `{"to", "scriptId", "metadata"}`; `null` removes a key, e.g.
    /// `{"metadata": {"note": null}}`. The result is validated like a new call.
    pub payload: Value,
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

/// Where a page sits in the whole list.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct Pagination {
    pub page: u32,
    pub limit: u32,
    pub total: i64,
    pub total_pages: i64,
}

/// Calls in each status.
#[derive(Object, Clone, Debug, Default)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub struct StatusCounts {
    pub pending: i64,
    pub in_progress: i64,
    pub completed: i64,
    pub failed: i64,
    pub expired: i64,
    pub cancelled: i64,
    #[oai(rename = "total")]
    pub total: i64,
}

/// Slots in use against the cap.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct Concurrency {
    /// `MAX_CONCURRENT_CALLS`.
    pub limit: u32,
    /// Calls `IN_PROGRESS` now, across all replicas.
    pub in_progress: i64,
}

/// One field or item that was refused, and why.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct ErrorDetail {
    /// For batch requests, the index of the item (from 0).
    #[oai(nullable)]
    pub index: Option<u32>,
    /// The field, such as `to` or `metadata`.
    #[oai(nullable)]
    pub field: Option<String>,
    pub message: String,
}

/// What went wrong.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct ErrorInfo {
    /// A stable code to match on, such as `VALIDATION_ERROR` or `CALL_NOT_PENDING`.
    pub code: String,
    /// What is wrong, for a person.
    pub message: String,
    /// Each refused field or batch item, when there are several.
    pub details: Vec<ErrorDetail>,
}

/// Every failure: `success` is false.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct ErrorEnvelope {
    pub success: bool,
    pub error: ErrorInfo,
}

macro_rules! envelope {
    ($(#[$doc:meta])* $name:ident, $data:ty) => {
        $(#[$doc])*
        #[derive(Object, Clone, Debug)]
        #[oai(rename_all = "camelCase")]
        pub struct $name {
            /// Always true.
            pub success: bool,
            pub data: $data,
        }

        impl $name {
            pub fn new(data: $data) -> Self {
                Self { success: true, data }
            }
        }
    };
}

envelope!(
    /// One call.
    CallEnvelope,
    Call
);
envelope!(
    /// The calls of a batch, in the order sent.
    CallsEnvelope,
    Vec<Call>
);
/// Where the next page starts.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct CursorPagination {
    pub limit: u32,
    /// Pass as `after` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
}

/// A page of a call's timeline, oldest first.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct EventPage {
    pub success: bool,
    pub data: Vec<Event>,
    pub pagination: CursorPagination,
}

/// One page of calls, newest first.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct CallPage {
    pub success: bool,
    pub data: Vec<Call>,
    pub pagination: Pagination,
}

/// Counts of calls by status, and the slots in use.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct MetricsEnvelope {
    pub success: bool,
    pub data: StatusCounts,
    pub timestamp: DateTime<Utc>,
    pub concurrency: Concurrency,
}

/// Health of this process and its database.
#[derive(Object, Clone, Debug)]
pub struct Health {
    /// `ok`, or `unavailable` when the database does not answer.
    pub status: String,
}
