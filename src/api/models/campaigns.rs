//! The JSON shapes of campaigns.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object, types::ParseFromJSON};
use serde_json::Value;
use uuid::Uuid;

use super::{BatchItem, ListPagination, StatusCounts, Text};
use crate::domain::{self, CampaignStatus, campaign::window_json};

/// Where a campaign stands: `ACTIVE` (its calls are dialed), `PAUSED` (none is, until
/// resumed), `CANCELLED` (none ever again), `COMPLETED` (it has calls and every one is
/// final; `ACTIVE` again when calls are added).
#[derive(Enum, Clone, Copy, Debug, PartialEq, Eq)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CampaignStatusName {
    Active,
    Paused,
    Cancelled,
    Completed,
}

impl From<CampaignStatus> for CampaignStatusName {
    fn from(status: CampaignStatus) -> Self {
        match status {
            CampaignStatus::Active => Self::Active,
            CampaignStatus::Paused => Self::Paused,
            CampaignStatus::Cancelled => Self::Cancelled,
            CampaignStatus::Completed => Self::Completed,
        }
    }
}

impl From<CampaignStatusName> for CampaignStatus {
    fn from(status: CampaignStatusName) -> Self {
        match status {
            CampaignStatusName::Active => Self::Active,
            CampaignStatusName::Paused => Self::Paused,
            CampaignStatusName::Cancelled => Self::Cancelled,
            CampaignStatusName::Completed => Self::Completed,
        }
    }
}

/// The hours and days, in the callee's local time, in which a campaign's calls may be
/// dialed; it only narrows `CALLING_WINDOW` and `CALLING_DAYS` (both must be open).
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallingWindow {
    /// `HH:MM`, 24-hour clock.
    pub start: Text,
    /// `HH:MM` (`24:00` ends at midnight); before `start`, the window runs overnight.
    pub end: Text,
    /// `mon` … `sun`; absent: every day.
    pub days: Option<Vec<Text>>,
}

/// A campaign's retries, within the global ones: at most `MAX_RETRY_ATTEMPTS` attempts, only
/// outcomes `RETRY_OUTCOMES` retries too.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CampaignRetry {
    /// Dial attempts per call, the first included (1 to 100; at most `MAX_RETRY_ATTEMPTS`).
    #[oai(skip_serializing_if_is_none)]
    pub max_attempts: Option<i64>,
    /// The outcomes retried: `FAILED`, `BUSY`, `NO_ANSWER`, `VOICEMAIL`.
    #[oai(skip_serializing_if_is_none)]
    pub outcomes: Option<Vec<Text>>,
    /// Base delay of a retry after each outcome (`{"BUSY": "10m"}`), doubling per attempt.
    #[oai(skip_serializing_if_is_none)]
    pub delays: Option<BTreeMap<String, Text>>,
}

/// A new campaign: its name and the rules its calls share.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateCampaignRequest {
    /// 1 to 200 characters.
    pub name: Text,
    /// The script of its calls that name none.
    pub script_id: Option<Text>,
    /// Most of its calls `IN_PROGRESS` at once, across all replicas (1 to 100000); absent:
    /// only the global cap.
    pub max_concurrent_calls: Option<i64>,
    /// 0 to 9, higher first (default 5, like calls of no campaign).
    pub priority: Option<i64>,
    pub calling_window: Option<CallingWindow>,
    /// None of its calls is dialed before this instant.
    pub start_at: Option<DateTime<Utc>>,
    /// At this instant its `PENDING` calls end `EXPIRED`, never dialed.
    pub end_at: Option<DateTime<Utc>>,
    pub retry: Option<CampaignRetry>,
    /// A JSON object of at most 16 KiB, for the client's own use.
    pub metadata: Option<BTreeMap<String, Value>>,
}

/// A campaign, its rules and its calls by status.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct Campaign {
    pub id: Uuid,
    pub name: String,
    #[oai(nullable)]
    pub script_id: Option<String>,
    #[oai(nullable)]
    pub max_concurrent_calls: Option<u32>,
    pub priority: u8,
    #[oai(nullable)]
    pub calling_window: Option<CallingWindow>,
    #[oai(nullable)]
    pub start_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub end_at: Option<DateTime<Utc>>,
    #[oai(nullable)]
    pub retry: Option<CampaignRetry>,
    pub metadata: BTreeMap<String, Value>,
    pub status: CampaignStatusName,
    /// Its calls in each status, and `total`, kept by the database.
    pub counts: StatusCounts,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Campaign {
    pub fn of(campaign: domain::Campaign) -> Self {
        let s = campaign.settings;
        // Shown in the form the domain writes them (and the database stores the retries in),
        // read into the documented shapes.
        let window = s
            .rules
            .window
            .as_ref()
            .and_then(|w| CallingWindow::parse_from_json(Some(window_json(w))).ok());
        let retry = s
            .rules
            .retry
            .as_ref()
            .and_then(|r| CampaignRetry::parse_from_json(Some(r.to_json())).ok());
        Self {
            id: campaign.id,
            name: s.name,
            script_id: s.script_id.map(|id| id.as_str().to_owned()),
            max_concurrent_calls: s.max_concurrent_calls,
            priority: s.priority,
            calling_window: window,
            start_at: s.rules.start_at,
            end_at: s.rules.end_at,
            retry,
            metadata: s.metadata.into_iter().collect(),
            status: campaign.status.into(),
            counts: StatusCounts::of(&campaign.counts),
            created_at: campaign.created_at,
            updated_at: campaign.updated_at,
        }
    }
}

/// One campaign.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct CampaignEnvelope {
    /// Always true.
    pub success: bool,
    pub data: Campaign,
}

/// A page of campaigns, newest first.
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase")]
pub struct CampaignPage {
    /// Always true.
    pub success: bool,
    pub data: Vec<Campaign>,
    pub pagination: ListPagination,
}

/// Up to 1000 calls added to a campaign in one transaction, in this order; each a create
/// body without `campaignId` (it may omit `scriptId` when the campaign has one).
#[derive(Object, Clone, Debug)]
#[oai(rename_all = "camelCase", deny_unknown_fields)]
pub struct CampaignCallsRequest {
    pub calls: Vec<BatchItem>,
    /// Leave out the calls to suppressed numbers (listed under `skipped`) instead of
    /// refusing the request (422 `NUMBER_SUPPRESSED`).
    #[oai(default)]
    pub skip_suppressed: bool,
}
