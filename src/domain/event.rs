//! Events for clients: their types, what an endpoint subscribes to, where a delivery stands,
//! and when a failed delivery is tried again.

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// Which key of `EVENT_SECRET_KEY` and which salt make an endpoint's secret (see
/// `event_secret`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretRef {
    pub key_id: String,
    pub salt: Vec<u8>,
}

/// An endpoint a client registered to receive events.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub id: Uuid,
    pub url: String,
    pub subscription: Subscription,
    pub description: Option<String>,
    pub enabled: bool,
    pub secret: SecretRef,
    /// The secret before the last rotation, which signs too until the time given.
    pub previous: Option<(SecretRef, DateTime<Utc>)>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Endpoint {
    /// The secrets that sign a delivery at `now`: the current one, and the previous one
    /// while it is still honoured.
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&SecretRef> {
        let mut secrets = vec![&self.secret];
        if let Some((previous, until)) = &self.previous
            && *until > now
        {
            secrets.push(previous);
        }
        secrets
    }
}

/// What an event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventType {
    CallCompleted,
    CallFailed,
    CallExpired,
    CallCancelled,
    /// A failed attempt that will be retried: the call is `PENDING` again.
    CallAttemptFailed,
    CampaignCompleted,
}

text_column!(EventType);

impl EventType {
    pub const ALL: [EventType; 6] = [
        Self::CallCompleted,
        Self::CallFailed,
        Self::CallExpired,
        Self::CallCancelled,
        Self::CallAttemptFailed,
        Self::CampaignCompleted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::CallCompleted => "call.completed",
            Self::CallFailed => "call.failed",
            Self::CallExpired => "call.expired",
            Self::CallCancelled => "call.cancelled",
            Self::CallAttemptFailed => "call.attempt_failed",
            Self::CampaignCompleted => "campaign.completed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == text)
    }

    /// Whether the event is about a campaign (else about a call).
    pub fn is_campaign(self) -> bool {
        self == Self::CampaignCompleted
    }
}

impl<'r> sqlx::Decode<'r, sqlx::Postgres> for EventType {
    fn decode(value: sqlx::postgres::PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let text = <&str as sqlx::Decode<sqlx::Postgres>>::decode(value)?;
        Self::parse(text).ok_or_else(|| format!("unknown event type {text:?}").into())
    }
}

/// The event types an endpoint receives: `["*"]` for all, else a list of them. Stored as
/// given (sorted, without repeats) so that the triggers' fan-out matches it directly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    All,
    Only(Vec<EventType>),
}

impl Subscription {
    /// The wildcard.
    pub const ALL: &'static str = "*";

    /// Reads a list as sent: non-empty, every entry a known type or `*` alone.
    pub fn parse<S: AsRef<str>>(types: &[S]) -> Result<Self, String> {
        if types.is_empty() {
            return Err(format!(
                "`events` must name at least one event type, or \"*\" for all ({})",
                Self::known()
            ));
        }
        if types.iter().any(|t| t.as_ref() == Self::ALL) {
            if types.len() > 1 {
                return Err("`events`: \"*\" stands alone, it already means every type".into());
            }
            return Ok(Self::All);
        }
        let mut kinds = Vec::new();
        for text in types {
            let text = text.as_ref();
            let kind = EventType::parse(text).ok_or_else(|| {
                let shown: String = text.chars().take(64).collect();
                format!(
                    "`events`: {shown:?} is not an event type ({}, or \"*\")",
                    Self::known()
                )
            })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        kinds.sort_by_key(|k| k.as_str());
        Ok(Self::Only(kinds))
    }

    fn known() -> String {
        EventType::ALL.map(EventType::as_str).join(", ")
    }

    /// The stored form (`event_endpoints.event_types`).
    pub fn to_list(&self) -> Vec<String> {
        match self {
            Self::All => vec![Self::ALL.to_owned()],
            Self::Only(kinds) => kinds.iter().map(|k| k.as_str().to_owned()).collect(),
        }
    }

    /// Reads the stored form; an unknown stored type (written by a newer version) is kept
    /// out rather than failing the read.
    pub fn stored(list: &[String]) -> Self {
        if list.iter().any(|t| t == Self::ALL) {
            return Self::All;
        }
        Self::Only(list.iter().filter_map(|t| EventType::parse(t)).collect())
    }

    pub fn includes(&self, kind: EventType) -> bool {
        match self {
            Self::All => true,
            Self::Only(kinds) => kinds.contains(&kind),
        }
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, sqlx::Type)]
#[sqlx(
    type_name = "event_delivery_status",
    rename_all = "SCREAMING_SNAKE_CASE"
)]
pub enum DeliveryStatus {
    /// Waiting for its first or next try (or being tried now).
    Pending,
    /// An answer in 2xx came.
    Delivered,
    /// Every try of the schedule failed.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "PENDING",
            Self::Delivered => "DELIVERED",
            Self::Failed => "FAILED",
        }
    }
}

/// When a delivery that failed is tried again: after each delay of the schedule in turn
/// (by default about 5 s, 5 min, 30 min, 2 h, 5 h, 10 h and 10 h), each stretched or shrunk
/// by up to a fifth at random so that the deliveries of a burst do not return together;
/// once the schedule is spent, the delivery is `FAILED`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliverySchedule {
    delays: Vec<Duration>,
}

/// How far a delay may stray either way, as a fraction of it.
const JITTER: f64 = 0.2;

impl Default for DeliverySchedule {
    fn default() -> Self {
        Self::parse("5s,5m,30m,2h,5h,10h,10h").expect("the default schedule is valid")
    }
}

impl DeliverySchedule {
    /// Most retries a schedule may hold.
    pub const MAX_RETRIES: usize = 20;
    /// Longest single delay.
    pub const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

    /// Reads `5s,5m,30m,…` (humantime durations, comma-separated; `none` for no retries).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(Self { delays: Vec::new() });
        }
        let mut delays = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            let delay = humantime::parse_duration(part)
                .map_err(|_| format!("{part:?} is not a duration such as 5s or 30m"))?;
            if delay.is_zero() || delay > Self::MAX_DELAY {
                return Err(format!(
                    "{part:?} must be longer than zero and at most 7 days"
                ));
            }
            delays.push(delay);
        }
        if delays.len() > Self::MAX_RETRIES {
            return Err(format!("at most {} retries", Self::MAX_RETRIES));
        }
        Ok(Self { delays })
    }

    /// Tries in all: the first and every retry.
    pub fn tries(&self) -> u32 {
        self.delays.len() as u32 + 1
    }

    /// The wait after try number `tried` (from 1) failed, or `None` when that was the last.
    /// `jitter` is uniform in [0, 1).
    pub fn after(&self, tried: u32, jitter: f64) -> Option<Duration> {
        let base = *self.delays.get(tried.checked_sub(1)? as usize)?;
        let factor = 1.0 - JITTER + 2.0 * JITTER * jitter.clamp(0.0, 1.0);
        Some(base.mul_f64(factor))
    }

    /// The delays as written in configuration.
    pub fn describe(&self) -> String {
        if self.delays.is_empty() {
            return "none".into();
        }
        self.delays
            .iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscriptions_are_checked_and_kept_sorted() {
        assert_eq!(Subscription::parse(&["*"]), Ok(Subscription::All));
        assert!(Subscription::parse::<&str>(&[]).is_err());
        assert!(Subscription::parse(&["*", "call.failed"]).is_err());
        assert!(Subscription::parse(&["call.done"]).is_err());
        let only = Subscription::parse(&["call.failed", "call.completed", "call.failed"]).unwrap();
        assert_eq!(
            only,
            Subscription::Only(vec![EventType::CallCompleted, EventType::CallFailed])
        );
        assert_eq!(only.to_list(), ["call.completed", "call.failed"]);
        assert!(only.includes(EventType::CallFailed));
        assert!(!only.includes(EventType::CallExpired));
        assert_eq!(Subscription::stored(&only.to_list()), only);
        assert_eq!(Subscription::stored(&["*".to_owned()]), Subscription::All);
    }

    #[test]
    fn every_type_reads_back() {
        for kind in EventType::ALL {
            assert_eq!(EventType::parse(kind.as_str()), Some(kind));
        }
    }

    #[test]
    fn the_default_schedule_is_the_documented_one_with_jitter() {
        let schedule = DeliverySchedule::default();
        assert_eq!(schedule.tries(), 8);
        assert_eq!(schedule.describe(), "5s,5m,30m,2h,5h,10h,10h");
        assert_eq!(schedule.after(1, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(schedule.after(2, 0.0), Some(Duration::from_secs(240)));
        assert_eq!(schedule.after(2, 1.0), Some(Duration::from_secs(360)));
        assert_eq!(schedule.after(7, 0.5), Some(Duration::from_secs(36_000)));
        assert_eq!(schedule.after(8, 0.5), None);
        assert_eq!(schedule.after(0, 0.5), None);
    }

    #[test]
    fn schedules_are_checked() {
        assert_eq!(DeliverySchedule::parse("none").unwrap().tries(), 1);
        assert_eq!(DeliverySchedule::parse("100ms, 1s").unwrap().tries(), 3);
        assert!(DeliverySchedule::parse("0s").is_err());
        assert!(DeliverySchedule::parse("soon").is_err());
        assert!(DeliverySchedule::parse("8days").is_err());
        assert!(DeliverySchedule::parse(&vec!["1s"; 21].join(",")).is_err());
    }
}
