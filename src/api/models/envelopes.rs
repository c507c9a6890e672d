//! The envelopes around every answer, pagination, counts and errors.

use chrono::{DateTime, Utc};
use poem_openapi::Object;

use super::{Call, Event};

/// Where a page sits in the whole list.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct Pagination {
    pub page: u32,
    pub limit: u32,
    pub total: i64,
    pub total_pages: i64,
}

/// Where a page of calls or campaigns sits. A page by number (`page`) has `page`, `total`
/// and `totalPages`; a page after a cursor (`after`) has only `limit` and `nextCursor`, and
/// costs the same however deep it is.
#[derive(Object, serde::Serialize, Clone, Debug)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct ListPagination {
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub page: Option<u32>,
    pub limit: u32,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<i64>,
    #[oai(skip_serializing_if_is_none)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_pages: Option<i64>,
    /// Pass as `after` for the next page; null on the last page.
    #[oai(nullable)]
    pub next_cursor: Option<String>,
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

impl StatusCounts {
    /// From counts by status (statuses with none may be absent).
    pub fn of(counts: &[(crate::domain::CallStatus, i64)]) -> Self {
        use crate::domain::CallStatus;
        let mut data = Self::default();
        for &(status, n) in counts {
            let slot = match status {
                CallStatus::Pending => &mut data.pending,
                CallStatus::InProgress => &mut data.in_progress,
                CallStatus::Completed => &mut data.completed,
                CallStatus::Failed => &mut data.failed,
                CallStatus::Expired => &mut data.expired,
                CallStatus::Cancelled => &mut data.cancelled,
            };
            *slot += n;
            data.total += n;
        }
        data
    }
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

/// One call.
#[derive(Object, serde::Serialize, Clone, Debug)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct CallEnvelope {
    /// Always true.
    pub success: bool,
    pub data: Call,
}

impl CallEnvelope {
    pub fn new(data: Call) -> Self {
        Self {
            success: true,
            data,
        }
    }
}
/// The calls of a batch, in the order sent.
#[derive(Object, serde::Serialize, Clone, Debug)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct CallsEnvelope {
    /// Always true.
    pub success: bool,
    pub data: Vec<Call>,
    /// The items left out because their number is suppressed (with `skipSuppressed`).
    pub skipped: Vec<SkippedCall>,
}

/// A batch item left out: its number is on the suppression list.
#[derive(Object, serde::Serialize, Clone, Debug)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct SkippedCall {
    /// Its index in the batch, from 0.
    pub index: u32,
    pub to: String,
    /// Why: `NUMBER_SUPPRESSED`.
    pub code: String,
}

/// A number on the suppression (do-not-call) list.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct Suppression {
    /// E.164.
    pub number: String,
    pub reason: String,
    /// When the suppression ends; null: never.
    #[oai(nullable)]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

envelope!(
    /// One suppression.
    SuppressionEnvelope,
    Suppression
);
envelope!(
    /// The suppressions of a batch, in the order sent.
    SuppressionsEnvelope,
    Vec<Suppression>
);

/// A page of suppressions, newest first.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct SuppressionPage {
    /// Always true.
    pub success: bool,
    pub data: Vec<Suppression>,
    pub pagination: Pagination,
}
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
#[derive(Object, serde::Serialize, Clone, Debug)]
#[oai(rename_all = "camelCase")]
#[serde(rename_all = "camelCase")]
pub struct CallPage {
    pub success: bool,
    pub data: Vec<Call>,
    pub pagination: ListPagination,
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
