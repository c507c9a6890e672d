//! A campaign: calls that share a purpose and its rules. What it adds to the global rules is
//! only ever narrower: its own cap beside the global one, a calling window that must be open
//! as well as `CALLING_WINDOW`, a start and an end, and a retry policy within the global one.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use uuid::Uuid;

use super::{
    CallStatus, FailedOutcome, FieldError, RetryPolicy, ScriptId,
    schedule::{CallingWindow, Days, Hours},
};

/// A campaign's settings, valid: what `POST /api/v1/campaigns` sets and `PATCH` changes.
#[derive(Clone, Debug, PartialEq)]
pub struct CampaignSettings {
    pub name: String,
    /// The script of its calls that name none.
    pub script_id: Option<ScriptId>,
    /// Its own cap on calls in progress, beside the global one.
    pub max_concurrent_calls: Option<u32>,
    /// 0 to 9, higher first.
    pub priority: u8,
    pub rules: CampaignRules,
    pub metadata: Map<String, Value>,
}

/// The priority of a campaign that names none, and of the calls of no campaign.
pub const DEFAULT_PRIORITY: u8 = 5;

/// A campaign as clients see it.
#[derive(Clone, Debug, PartialEq)]
pub struct Campaign {
    pub id: Uuid,
    pub settings: CampaignSettings,
    pub status: CampaignStatus,
    /// Its calls by status (statuses with none are absent).
    pub counts: Vec<(CallStatus, i64)>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// Where a campaign stands. `COMPLETED` is kept by the database: every call of it is final
/// (it becomes `ACTIVE` again when calls are added).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, sqlx::Type)]
#[sqlx(type_name = "campaign_status", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CampaignStatus {
    Active,
    Paused,
    Cancelled,
    Completed,
}

impl CampaignStatus {
    pub const ALL: [CampaignStatus; 4] =
        [Self::Active, Self::Paused, Self::Cancelled, Self::Completed];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "ACTIVE",
            Self::Paused => "PAUSED",
            Self::Cancelled => "CANCELLED",
            Self::Completed => "COMPLETED",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether its settings may still change and calls be added (not `CANCELLED`).
    pub fn is_open(self) -> bool {
        self != Self::Cancelled
    }
}

/// What a campaign does to the retries of its calls: fewer attempts, fewer outcomes
/// retried, its own delays.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CampaignRetry {
    /// At most `MAX_RETRY_ATTEMPTS` whatever this says.
    pub max_attempts: Option<u32>,
    /// Retried only if `RETRY_OUTCOMES` retries them too; `None`: as `RETRY_OUTCOMES`.
    pub outcomes: Option<Vec<FailedOutcome>>,
    /// Base delay per outcome (doubling per attempt, capped by `RETRY_MAX_DELAY`).
    pub delays: Vec<(FailedOutcome, Duration)>,
}

/// The longest base delay a campaign may set.
const MAX_DELAY: Duration = Duration::from_secs(7 * 24 * 3600);

impl CampaignRetry {
    /// The global policy, narrowed by this one.
    pub fn narrow(&self, global: RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self
                .max_attempts
                .map_or(global.max_attempts, |n| n.min(global.max_attempts)),
            outcomes: global
                .outcomes
                .narrowed(self.outcomes.as_deref(), &self.delays),
            ..global
        }
    }

    /// `{"maxAttempts"?, "outcomes"?, "delays"? {"BUSY": "10m", …}}`, every problem named.
    pub fn parse(value: &Value) -> Result<Self, Vec<FieldError>> {
        let mut errors = Vec::new();
        let Some(object) = value.as_object() else {
            return Err(vec![FieldError::new(
                "retry",
                "`retry` must be an object: {\"maxAttempts\", \"outcomes\", \"delays\"}",
            )]);
        };
        let mut retry = Self::default();
        for (key, value) in object {
            match (key.as_str(), value) {
                (_, Value::Null) => {}
                ("maxAttempts", Value::Number(n))
                    if n.as_u64().is_some_and(|n| (1..=100).contains(&n)) =>
                {
                    retry.max_attempts = n.as_u64().map(|n| n as u32);
                }
                ("maxAttempts", _) => errors.push(FieldError::new(
                    "retry.maxAttempts",
                    "`retry.maxAttempts` must be a whole number from 1 to 100 (at most \
                     MAX_RETRY_ATTEMPTS apply)",
                )),
                ("outcomes", Value::Array(items)) => {
                    let mut outcomes = Vec::new();
                    for item in items {
                        match item.as_str().and_then(FailedOutcome::parse) {
                            Some(outcome) if !outcomes.contains(&outcome) => outcomes.push(outcome),
                            Some(_) => {}
                            None => errors.push(FieldError::new(
                                "retry.outcomes",
                                format!(
                                    "`retry.outcomes` holds {item}, which is not one of \
                                     FAILED, BUSY, NO_ANSWER, VOICEMAIL"
                                ),
                            )),
                        }
                    }
                    retry.outcomes = Some(outcomes);
                }
                ("outcomes", _) => errors.push(FieldError::new(
                    "retry.outcomes",
                    "`retry.outcomes` must be a list of FAILED, BUSY, NO_ANSWER, VOICEMAIL",
                )),
                ("delays", Value::Object(delays)) => {
                    for (name, delay) in delays {
                        let Some(outcome) = FailedOutcome::parse(name) else {
                            errors.push(FieldError::new(
                                "retry.delays",
                                format!(
                                    "`retry.delays` names `{name}`, which is not one of \
                                     FAILED, BUSY, NO_ANSWER, VOICEMAIL"
                                ),
                            ));
                            continue;
                        };
                        match delay.as_str().map(humantime::parse_duration) {
                            Some(Ok(d)) if d >= Duration::from_secs(1) && d <= MAX_DELAY => {
                                retry.delays.push((outcome, d));
                            }
                            _ => errors.push(FieldError::new(
                                format!("retry.delays.{name}"),
                                format!(
                                    "`retry.delays.{name}` must be a duration from 1s to 7d, \
                                     such as \"10m\""
                                ),
                            )),
                        }
                    }
                }
                ("delays", _) => errors.push(FieldError::new(
                    "retry.delays",
                    "`retry.delays` must be an object of durations by outcome, e.g. \
                     {\"BUSY\": \"10m\"}",
                )),
                (other, _) => errors.push(FieldError::new(
                    "retry",
                    format!("`retry` has no field `{other}` (maxAttempts, outcomes, delays)"),
                )),
            }
        }
        if errors.is_empty() {
            Ok(retry)
        } else {
            Err(errors)
        }
    }

    /// As the API shows it (and the database stores it).
    pub fn to_json(&self) -> Value {
        let mut out = Map::new();
        if let Some(n) = self.max_attempts {
            out.insert("maxAttempts".into(), n.into());
        }
        if let Some(outcomes) = &self.outcomes {
            out.insert(
                "outcomes".into(),
                outcomes
                    .iter()
                    .map(|o| o.as_str())
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        if !self.delays.is_empty() {
            let delays: Map<String, Value> = self
                .delays
                .iter()
                .map(|(o, d)| {
                    (
                        o.as_str().to_owned(),
                        humantime::format_duration(*d).to_string().into(),
                    )
                })
                .collect();
            out.insert("delays".into(), Value::Object(delays));
        }
        Value::Object(out)
    }
}

/// A campaign's calling window as the API shows it: `{"start": "09:00", "end": "18:00",
/// "days": ["mon", …]}`.
pub fn parse_window(value: &Value) -> Result<CallingWindow, Vec<FieldError>> {
    let bad = |message: String| vec![FieldError::new("callingWindow", message)];
    let Some(object) = value.as_object() else {
        return Err(bad(
            "`callingWindow` must be an object: {\"start\": \"09:00\", \"end\": \"18:00\", \
             \"days\": [\"mon\", …]}"
                .into(),
        ));
    };
    if let Some(other) = object
        .keys()
        .find(|k| !matches!(k.as_str(), "start" | "end" | "days"))
    {
        return Err(bad(format!(
            "`callingWindow` has no field `{other}` (start, end, days)"
        )));
    }
    let (Some(start), Some(end)) = (
        object.get("start").and_then(Value::as_str),
        object.get("end").and_then(Value::as_str),
    ) else {
        return Err(bad(
            "`callingWindow` needs `start` and `end`, as HH:MM (24-hour clock)".into(),
        ));
    };
    let hours = Hours::parse(&format!("{start}-{end}"))
        .map_err(|e| bad(format!("`callingWindow`: {e}")))?;
    let days = match object.get("days") {
        None | Some(Value::Null) => Days::ALL,
        Some(Value::Array(items)) => {
            let names: Option<Vec<&str>> = items.iter().map(Value::as_str).collect();
            let names =
                names
                    .filter(|n| !n.is_empty() && n.iter().all(|d| d.len() == 3))
                    .ok_or_else(|| {
                        bad("`callingWindow.days` must be a list of days: mon, tue, wed, thu, fri, \
                         sat, sun"
                        .into())
                    })?;
            Days::parse(&names.join(",")).map_err(|e| bad(format!("`callingWindow.days`: {e}")))?
        }
        Some(_) => {
            return Err(bad(
                "`callingWindow.days` must be a list of days: mon, tue, wed, thu, fri, sat, sun"
                    .into(),
            ));
        }
    };
    Ok(CallingWindow::new(Some(hours), days))
}

/// A campaign's calling window as the API shows it.
pub fn window_json(window: &CallingWindow) -> Value {
    match window.hours {
        Some(hours) => {
            let text = hours.to_string();
            let (start, end) = text.split_once('-').unwrap_or((&text, ""));
            json!({"start": start, "end": end, "days": window.days.names()})
        }
        None => Value::Null,
    }
}

/// What a campaign adds to the schedule and retries of its calls.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CampaignRules {
    pub window: Option<CallingWindow>,
    pub start_at: Option<DateTime<Utc>>,
    pub end_at: Option<DateTime<Utc>>,
    pub retry: Option<CampaignRetry>,
}

impl CampaignRules {
    /// As the database stores them (which only ever stores parsed values).
    pub fn stored(
        window_hours: Option<&str>,
        window_days: Option<&str>,
        start_at: Option<DateTime<Utc>>,
        end_at: Option<DateTime<Utc>>,
        retry: Option<&Value>,
    ) -> Self {
        let window = window_hours
            .and_then(|h| Hours::parse(h).ok())
            .map(|hours| {
                CallingWindow::new(
                    Some(hours),
                    window_days
                        .and_then(|d| Days::parse(d).ok())
                        .unwrap_or(Days::ALL),
                )
            });
        Self {
            window,
            start_at,
            end_at,
            retry: retry.and_then(|r| CampaignRetry::parse(r).ok()),
        }
    }

    /// The global retry policy as it applies to this campaign's calls.
    pub fn retry_policy(&self, global: RetryPolicy) -> RetryPolicy {
        match &self.retry {
            Some(retry) => retry.narrow(global),
            None => global,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PerOutcome;

    const GLOBAL: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_secs(30),
        max_delay: Duration::from_secs(1800),
        outcomes: PerOutcome::EVERY,
    };

    #[test]
    fn a_campaign_retries_only_within_the_global_policy() {
        use FailedOutcome::*;
        let retry = CampaignRetry::parse(&json!({
            "maxAttempts": 5, "outcomes": ["BUSY", "NO_ANSWER"], "delays": {"BUSY": "10m"}
        }))
        .unwrap();
        let narrowed = retry.narrow(GLOBAL);
        assert_eq!(
            narrowed.max_attempts, 3,
            "never more than MAX_RETRY_ATTEMPTS"
        );
        assert!(narrowed.outcomes.retries(Busy) && narrowed.outcomes.retries(NoAnswer));
        assert!(!narrowed.outcomes.retries(Failed) && !narrowed.outcomes.retries(Voicemail));
        assert_eq!(
            narrowed.outcomes.base_delay(Busy),
            Some(Duration::from_secs(600))
        );
        let global = RetryPolicy {
            outcomes: PerOutcome::new(&[Failed], &[]),
            ..GLOBAL
        };
        let narrowed = retry.narrow(global);
        assert!(
            !narrowed.outcomes.retries(Busy),
            "an outcome the global policy does not retry stays unretried"
        );
        let fewer = CampaignRetry::parse(&json!({"maxAttempts": 1})).unwrap();
        assert_eq!(fewer.narrow(GLOBAL).max_attempts, 1);
        assert_eq!(
            CampaignRetry::parse(&fewer.to_json()).unwrap(),
            fewer,
            "the shown form reads back"
        );
        assert_eq!(CampaignRetry::parse(&retry.to_json()).unwrap(), retry);
    }

    #[test]
    fn bad_retries_and_windows_are_named() {
        for bad in [
            json!({"maxAttempts": 0}),
            json!({"maxAttempts": "3"}),
            json!({"outcomes": ["HUNG_UP"]}),
            json!({"delays": {"BUSY": "soon"}}),
            json!({"delays": {"BUSY": "0s"}}),
            json!({"delays": {"LATER": "1m"}}),
            json!({"tries": 3}),
            json!([1]),
        ] {
            assert!(CampaignRetry::parse(&bad).is_err(), "{bad}");
        }
        for bad in [
            json!({"start": "09:00"}),
            json!({"start": "9", "end": "18:00"}),
            json!({"start": "09:00", "end": "18:00", "days": ["monday"]}),
            json!({"start": "09:00", "end": "18:00", "days": []}),
            json!({"start": "09:00", "end": "18:00", "days": "mon"}),
            json!({"start": "09:00", "end": "18:00", "hours": 3}),
            json!("09:00-18:00"),
        ] {
            assert!(parse_window(&bad).is_err(), "{bad}");
        }
        let window =
            parse_window(&json!({"start": "09:00", "end": "18:00", "days": ["mon", "fri"]}))
                .unwrap();
        assert_eq!(
            window_json(&window),
            json!({"start": "09:00", "end": "18:00", "days": ["mon", "fri"]})
        );
        assert_eq!(parse_window(&window_json(&window)).unwrap(), window);
    }
}
