//! When a call may be dialed, lawfully: its own `notBefore` and `notAfter`, the calling
//! window in its callee's time zones, the do-not-call list, and the daily limit per number.
//! Pure functions of the call and `now`: the claim asks [`Rules::admit`] about every call it
//! is about to dial, whatever was decided when the call was queued, so a setting changed
//! since still holds; creates, patches and retries ask [`Rules::schedule`] when a call
//! should fall due.

mod window;
pub mod zones;

use std::borrow::Cow;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;

pub use window::{CallingWindow, Days, Hours, next_common_opening};

use super::PhoneNumber;

/// The window searched for, at most, when a call's zones share no opening (its next look).
const NO_OPENING_RETRY: Duration = Duration::hours(24);
/// The span of `MAX_ATTEMPTS_PER_NUMBER_PER_DAY`.
pub const DAY: Duration = Duration::hours(24);

/// The compliance settings in force.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rules {
    pub window: CallingWindow,
    /// The callee's zone when neither the call nor its number tells one.
    pub default_zone: Tz,
    /// Dial attempts to one number within any 24 hours; 0 is no limit.
    pub max_attempts_per_number_per_day: u32,
}

impl Rules {
    /// No window, no limit (tests and tools that are not about them).
    pub const OFF: Rules = Rules {
        window: CallingWindow::OFF,
        default_zone: Tz::UTC,
        max_attempts_per_number_per_day: 0,
    };

    /// The zones the window must hold in for a call to `number`: its own `timezone` if it
    /// has one, else its prefix's (libphonenumber), else `DEFAULT_TIMEZONE`.
    pub fn zones(&self, number: &PhoneNumber, timezone: Option<Tz>) -> Cow<'static, [Tz]> {
        if let Some(tz) = timezone {
            return Cow::Owned(vec![tz]);
        }
        match zones::for_number(number) {
            [] => Cow::Owned(vec![self.default_zone]),
            found => Cow::Borrowed(found),
        }
    }

    /// When a call that could go at `due` should fall due, and why it waits beyond `due`:
    /// not before its `notBefore`, and at its window's next opening. Past its `notAfter`, the
    /// deadline itself (the call then ends `EXPIRED`, never dialed).
    pub fn schedule(&self, call: &Timing<'_>, due: DateTime<Utc>) -> (DateTime<Utc>, Option<Wait>) {
        let (mut at, mut why) = (due, None);
        if let Some(not_before) = call.not_before
            && not_before > at
        {
            (at, why) = (not_before, Some(Wait::NotBefore));
        }
        let zones = self.zones(call.number, call.timezone);
        let opening = match call.window {
            Some(campaign) => next_common_opening(&[self.window, campaign], &zones, at),
            None => self.window.next_opening(&zones, at),
        };
        match opening {
            Some(opening) if opening > at => (at, why) = (opening, Some(Wait::Window)),
            Some(_) => {}
            None => {
                (at, why) = (
                    at.checked_add_signed(NO_OPENING_RETRY).unwrap_or(at),
                    Some(Wait::Window),
                )
            }
        }
        match call.deadline() {
            Some(deadline) if at > deadline => (deadline, Some(Wait::Deadline)),
            _ => (at, why),
        }
    }

    /// What the claim does with a due call at `now`: dial it, or not, and why.
    pub fn admit(&self, call: &Candidate<'_>, now: DateTime<Utc>) -> Verdict {
        if let Some(end) = call.timing.ends_at
            && end <= now
        {
            return Verdict::Expire(format!(
                "campaign ended: its endAt {} came before the call could be dialed",
                end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        if let Some(deadline) = call.timing.not_after
            && deadline <= now
        {
            return Verdict::Expire(format!(
                "deadline passed: notAfter {} came before it could be dialed",
                deadline.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ));
        }
        if let Some(reason) = call.suppressed {
            return Verdict::Cancel(format!("suppressed: {reason}"));
        }
        let (mut at, mut why) = self.schedule(&call.timing, now);
        let limit = self.max_attempts_per_number_per_day as usize;
        if limit > 0 && call.recent_dials.len() >= limit {
            // The day's count falls below the limit when the oldest attempt that keeps it
            // there is 24 hours old (`recent_dials` is oldest first, all within a day).
            let freed = call.recent_dials[call.recent_dials.len() - limit] + DAY;
            if freed > at {
                (at, why) = self.schedule(&call.timing, freed);
                why = Some(match why {
                    Some(Wait::Deadline) => Wait::Deadline,
                    _ => Wait::DailyLimit,
                });
            }
        }
        match why {
            Some(why) if at > now => Verdict::Wait { until: at, why },
            _ => Verdict::Dial,
        }
    }
}

/// A call's scheduling fields: its own, narrowed by its campaign's.
#[derive(Clone, Copy, Debug)]
pub struct Timing<'a> {
    pub number: &'a PhoneNumber,
    pub timezone: Option<Tz>,
    /// Its own `notBefore`, or its campaign's `startAt` when that is later.
    pub not_before: Option<DateTime<Utc>>,
    pub not_after: Option<DateTime<Utc>>,
    /// Its campaign's calling window, which must be open as well as `CALLING_WINDOW`.
    pub window: Option<CallingWindow>,
    /// Its campaign's `endAt`: still `PENDING` then, it expires, never dialed.
    pub ends_at: Option<DateTime<Utc>>,
}

impl<'a> Timing<'a> {
    /// A call to `number` with no schedule of its own and no campaign.
    pub fn of(number: &'a PhoneNumber) -> Self {
        Self {
            number,
            timezone: None,
            not_before: None,
            not_after: None,
            window: None,
            ends_at: None,
        }
    }

    /// Whichever comes first of its `notAfter` and its campaign's end.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        match (self.not_after, self.ends_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// A due call as the claim sees it.
#[derive(Clone, Copy, Debug)]
pub struct Candidate<'a> {
    pub timing: Timing<'a>,
    /// The reason of the suppression in force for its number, if one is.
    pub suppressed: Option<&'a str>,
    /// When its number was dialed within the last 24 hours (attempts of every call), oldest
    /// first; read only when a daily limit is set.
    pub recent_dials: &'a [DateTime<Utc>],
}

/// Why a `PENDING` call waits beyond its due time (`calls.waiting_for`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    NotBefore,
    /// Outside its calling window in one of its callee's zones.
    Window,
    /// Its number had `MAX_ATTEMPTS_PER_NUMBER_PER_DAY` attempts in the last 24 hours.
    DailyLimit,
    /// Its window opens only after its `notAfter`: it falls due at the deadline and expires.
    Deadline,
}

impl Wait {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotBefore => "NOT_BEFORE",
            Self::Window => "CALLING_WINDOW",
            Self::DailyLimit => "DAILY_LIMIT",
            Self::Deadline => "DEADLINE",
        }
    }
}

/// The claim's verdict on a due call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Dial,
    /// Not now: it falls due again at `until`.
    Wait {
        until: DateTime<Utc>,
        why: Wait,
    },
    /// Its `notAfter` passed: `EXPIRED`, never dialed, with this `lastError`.
    Expire(String),
    /// Its number is suppressed: `CANCELLED`, with this `lastError`.
    Cancel(String),
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America::New_York, Europe::London};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn rules(limit: u32) -> Rules {
        Rules {
            window: CallingWindow::new(Some(Hours::parse("08:00-21:00").unwrap()), Days::ALL),
            default_zone: London,
            max_attempts_per_number_per_day: limit,
        }
    }

    fn number(text: &str) -> PhoneNumber {
        PhoneNumber::parse(text).unwrap()
    }

    #[test]
    fn zones_come_from_the_call_then_the_number_then_the_default() {
        let r = rules(0);
        assert_eq!(&*r.zones(&number("+12015550123"), None), [New_York]);
        assert_eq!(&*r.zones(&number("+12015550123"), Some(London)), [London]);
        assert_eq!(&*r.zones(&number("+80012345678"), None), [London]);
    }

    #[test]
    fn a_call_created_at_night_waits_for_the_morning() {
        let r = rules(0);
        let to = number("+12015550123");
        let timing = Timing::of(&to);
        // 03:00 in New York.
        let night = utc("2026-01-14T08:00:00Z");
        assert_eq!(
            r.schedule(&timing, night),
            (utc("2026-01-14T13:00:00Z"), Some(Wait::Window))
        );
        let noon = utc("2026-01-14T17:00:00Z");
        assert_eq!(r.schedule(&timing, noon), (noon, None));
    }

    #[test]
    fn not_before_then_window_then_deadline() {
        let r = rules(0);
        let to = number("+442071234567");
        let mut timing = Timing {
            not_before: Some(utc("2026-01-14T10:00:00Z")),
            ..Timing::of(&to)
        };
        let now = utc("2026-01-14T09:00:00Z");
        assert_eq!(
            r.schedule(&timing, now),
            (utc("2026-01-14T10:00:00Z"), Some(Wait::NotBefore))
        );
        timing.not_before = Some(utc("2026-01-14T22:00:00Z"));
        assert_eq!(
            r.schedule(&timing, now),
            (utc("2026-01-15T08:00:00Z"), Some(Wait::Window))
        );
        timing.not_after = Some(utc("2026-01-15T06:00:00Z"));
        assert_eq!(
            r.schedule(&timing, now),
            (utc("2026-01-15T06:00:00Z"), Some(Wait::Deadline))
        );
    }

    #[test]
    fn the_claim_expires_cancels_waits_or_dials() {
        let r = rules(2);
        let to = number("+442071234567");
        let now = utc("2026-01-14T12:00:00Z");
        let timing = Timing::of(&to);
        let due = Candidate {
            timing,
            suppressed: None,
            recent_dials: &[],
        };
        assert_eq!(r.admit(&due, now), Verdict::Dial);

        let late = Candidate {
            timing: Timing {
                not_after: Some(now),
                ..timing
            },
            suppressed: Some("asked us not to"),
            ..due
        };
        assert!(
            matches!(r.admit(&late, now), Verdict::Expire(e) if e.starts_with("deadline passed"))
        );
        let suppressed = Candidate {
            suppressed: Some("asked us not to"),
            ..due
        };
        assert_eq!(
            r.admit(&suppressed, now),
            Verdict::Cancel("suppressed: asked us not to".into())
        );

        let night = utc("2026-01-14T22:00:00Z");
        assert_eq!(
            r.admit(&due, night),
            Verdict::Wait {
                until: utc("2026-01-15T08:00:00Z"),
                why: Wait::Window
            }
        );

        // Two attempts in the last day: the next waits until the older is a day old.
        let dials = [utc("2026-01-14T09:00:00Z"), utc("2026-01-14T11:00:00Z")];
        let busy = Candidate {
            recent_dials: &dials,
            ..due
        };
        assert_eq!(
            r.admit(&busy, now),
            Verdict::Wait {
                until: utc("2026-01-15T09:00:00Z"),
                why: Wait::DailyLimit
            }
        );
        // One is not the limit.
        let once = Candidate {
            recent_dials: &dials[1..],
            ..due
        };
        assert_eq!(r.admit(&once, now), Verdict::Dial);
        // Freed at night: it waits for the window after that.
        let evening = [utc("2026-01-13T22:30:00Z"), utc("2026-01-14T11:00:00Z")];
        let busy = Candidate {
            recent_dials: &evening,
            ..due
        };
        assert_eq!(
            r.admit(&busy, utc("2026-01-14T12:00:00Z")),
            Verdict::Wait {
                until: utc("2026-01-15T08:00:00Z"),
                why: Wait::DailyLimit
            }
        );
    }

    #[test]
    fn the_window_is_checked_against_the_rules_in_force() {
        let to = number("+442071234567");
        let timing = Timing::of(&to);
        let due = Candidate {
            timing,
            suppressed: None,
            recent_dials: &[],
        };
        let at = utc("2026-01-14T19:00:00Z");
        assert_eq!(rules(0).admit(&due, at), Verdict::Dial);
        let narrower = Rules {
            window: CallingWindow::new(Some(Hours::parse("09:00-17:00").unwrap()), Days::ALL),
            ..rules(0)
        };
        assert_eq!(
            narrower.admit(&due, at),
            Verdict::Wait {
                until: utc("2026-01-15T09:00:00Z"),
                why: Wait::Window
            }
        );
        assert_eq!(Rules::OFF.admit(&due, at), Verdict::Dial);
    }
}
