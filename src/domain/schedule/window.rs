//! The calling window: the hours of the callee's local day, and the days of their week, in
//! which a call may be dialed. Local time comes from the IANA time zone database (chrono-tz),
//! so daylight saving and the other changes of a zone's offset are the database's, never
//! an offset of our own.

use std::fmt;

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

const MINUTES_PER_DAY: u16 = 24 * 60;
/// How far ahead an opening is looked for: a week and a day covers every day of the week in
/// every zone, whatever its offset.
const SEARCH_DAYS: i64 = 9;

/// Days of the week, Monday first (bit 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Days(u8);

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

impl Days {
    pub const ALL: Days = Days(0x7f);

    /// `mon-sun`, `mon-fri`, `mon,wed,fri`, `fri-mon` (a range may wrap past Sunday), or a
    /// mix (`mon-wed,sat`). Names are the first three letters, in any case.
    pub fn parse(text: &str) -> Result<Self, String> {
        let day = |name: &str| {
            DAY_NAMES
                .iter()
                .position(|d| d.eq_ignore_ascii_case(name.trim()))
                .ok_or_else(|| {
                    format!(
                        "`{}` is not a day (mon, tue, wed, thu, fri, sat, sun)",
                        name.trim()
                    )
                })
        };
        let mut bits = 0u8;
        for part in text.split(',') {
            match part.split_once('-') {
                Some((from, to)) => {
                    let (from, to) = (day(from)?, day(to)?);
                    let mut d = from;
                    loop {
                        bits |= 1 << d;
                        if d == to {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => bits |= 1 << day(part)?,
            }
        }
        Ok(Days(bits))
    }

    /// Whether the day `days_from_monday` (0 to 6) is one of them.
    pub fn has(self, days_from_monday: u32) -> bool {
        self.0 & (1 << (days_from_monday % 7)) != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        (0..7)
            .filter(|&d| self.has(d))
            .map(|d| DAY_NAMES[d as usize])
            .collect()
    }

    /// Whether another set holds only days of this one.
    pub fn contains(self, other: Days) -> bool {
        other.0 & !self.0 == 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Display for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

/// Hours of a day, `start` included and `end` excluded, in minutes after midnight. `end`
/// before `start` is an overnight window (`22:00-06:00`), which belongs to the day it
/// opens on: Friday's runs into Saturday morning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hours {
    start: u16,
    end: u16,
}

impl Hours {
    /// `HH:MM-HH:MM`, 24-hour clock; `24:00` may end a window.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (start, end) = text
            .split_once('-')
            .ok_or_else(|| format!("`{text}` must be two times, HH:MM-HH:MM (e.g. 08:00-21:00)"))?;
        Self::new(
            parse_time(start.trim(), false)?,
            parse_time(end.trim(), true)?,
        )
    }

    fn new(start: u16, end: u16) -> Result<Self, String> {
        if start == end {
            return Err(
                "must not start and end at the same time (00:00-24:00 is the whole day)".into(),
            );
        }
        Ok(Self { start, end })
    }

    fn overnight(self) -> bool {
        self.end < self.start
    }

    /// Whether this window lies within `outer` on every day (a campaign's narrowing).
    pub fn within(self, outer: Hours) -> bool {
        let spans = |h: Hours| -> Vec<(u16, u16)> {
            if h.overnight() {
                vec![(h.start, MINUTES_PER_DAY), (0, h.end)]
            } else {
                vec![(h.start, h.end)]
            }
        };
        let outer = spans(outer);
        spans(self)
            .iter()
            .all(|&(s, e)| outer.iter().any(|&(os, oe)| os <= s && e <= oe))
    }
}

fn parse_time(text: &str, may_be_24: bool) -> Result<u16, String> {
    let bad = || format!("`{text}` is not a time of day (HH:MM, 24-hour clock)");
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    match (h, m) {
        (24, 0) if may_be_24 => Ok(MINUTES_PER_DAY),
        (0..=23, 0..=59) => Ok(h * 60 + m),
        _ => Err(bad()),
    }
}

impl fmt::Display for Hours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        write!(f, "{}-{}", t(self.start), t(self.end))
    }
}

/// When calls may be dialed in the callee's local time: `None` hours is `off`, any time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CallingWindow {
    pub hours: Option<Hours>,
    pub days: Days,
}

impl CallingWindow {
    pub const OFF: CallingWindow = CallingWindow {
        hours: None,
        days: Days::ALL,
    };

    pub fn new(hours: Option<Hours>, days: Days) -> Self {
        Self { hours, days }
    }

    pub fn is_off(&self) -> bool {
        self.hours.is_none()
    }

    /// Whether `at` falls inside the window in zone `tz`.
    pub fn is_open_in(&self, tz: Tz, at: DateTime<Utc>) -> bool {
        let Some(hours) = self.hours else {
            return true;
        };
        let local = at.with_timezone(&tz);
        let minute = (local.hour() * 60 + local.minute()) as u16;
        let today = local.weekday().num_days_from_monday();
        if hours.overnight() {
            (minute >= hours.start && self.days.has(today))
                || (minute < hours.end && self.days.has(today + 6))
        } else {
            self.days.has(today) && hours.start <= minute && minute < hours.end
        }
    }

    /// Whether `at` falls inside the window in every one of `zones`.
    pub fn is_open(&self, zones: &[Tz], at: DateTime<Utc>) -> bool {
        zones.iter().all(|&tz| self.is_open_in(tz, at))
    }

    /// The first instant from `at` on when the window is open in every one of `zones`: `at`
    /// itself when it is open now, else the opening of one of the zones' windows (where
    /// windows overlap, their common part opens when the last of them does). `None` when
    /// the zones' windows have no instant in common within the next week.
    pub fn next_opening(&self, zones: &[Tz], at: DateTime<Utc>) -> Option<DateTime<Utc>> {
        next_common_opening(std::slice::from_ref(self), zones, at)
    }
}

/// The first instant from `at` on when every one of `windows` is open in every one of
/// `zones` (a campaign's window inside `CALLING_WINDOW`): `at` itself when all are open
/// now, else the opening of one of them in one of the zones, since a common part of
/// windows opens when the last of them does. `None` when they have no instant in common
/// within the next week.
pub fn next_common_opening(
    windows: &[CallingWindow],
    zones: &[Tz],
    at: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    let open = |t: DateTime<Utc>| windows.iter().all(|w| w.is_open(zones, t));
    if open(at) {
        return Some(at);
    }
    let mut openings = Vec::new();
    for window in windows {
        let Some(hours) = window.hours else {
            continue;
        };
        if window.days.is_empty() {
            return None;
        }
        for &tz in zones {
            // Checked: an instant at the calendar's end has no day after it.
            let Some(first) = at
                .with_timezone(&tz)
                .date_naive()
                .checked_sub_signed(Duration::days(1))
            else {
                continue;
            };
            openings.extend((0..SEARCH_DAYS).filter_map(|k| {
                let date = first.checked_add_signed(Duration::days(k))?;
                window
                    .days
                    .has(date.weekday().num_days_from_monday())
                    .then(|| local_instant(tz, date, hours.start))
                    .flatten()
            }));
        }
    }
    openings.retain(|&opening| opening > at);
    openings.sort_unstable();
    openings.into_iter().find(|&t| open(t))
}

impl fmt::Display for CallingWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.hours {
            None => f.write_str("off"),
            Some(hours) => write!(f, "{hours} on {}", self.days),
        }
    }
}

/// The instant a local wall-clock time happens in `tz` on `date`. Where the clocks are
/// turned back and it happens twice, the first; where they jump over it (the spring gap),
/// the first minute after the gap, which is when the window opens that day.
fn local_instant(tz: Tz, date: NaiveDate, minute: u16) -> Option<DateTime<Utc>> {
    let midnight = date.and_hms_opt(0, 0, 0)?;
    let wanted: NaiveDateTime =
        midnight.checked_add_signed(Duration::minutes(i64::from(minute)))?;
    (0..=240)
        .find_map(|skip| {
            tz.from_local_datetime(&wanted.checked_add_signed(Duration::minutes(skip))?)
                .earliest()
        })
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::{America::New_York, Asia::Tokyo, Australia::Lord_Howe, Europe::London};

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .with_timezone(&Utc)
    }

    fn window(hours: &str, days: &str) -> CallingWindow {
        CallingWindow::new(
            Some(Hours::parse(hours).unwrap()),
            Days::parse(days).unwrap(),
        )
    }

    #[test]
    fn parses_hours_and_days() {
        assert_eq!(
            Hours::parse("08:00-21:00").unwrap().to_string(),
            "08:00-21:00"
        );
        assert_eq!(
            Hours::parse("22:00-06:00").unwrap().to_string(),
            "22:00-06:00"
        );
        assert_eq!(
            Hours::parse("00:00-24:00").unwrap().to_string(),
            "00:00-24:00"
        );
        for bad in [
            "8-21",
            "08:00",
            "25:00-26:00",
            "08:60-09:00",
            "09:00-09:00",
            "24:00-08:00",
            "ab:cd-08:00",
        ] {
            assert!(Hours::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Days::parse("mon-sun").unwrap(), Days::ALL);
        assert_eq!(
            Days::parse("mon-fri").unwrap().to_string(),
            "mon,tue,wed,thu,fri"
        );
        assert_eq!(
            Days::parse("Mon,wed,FRI").unwrap().to_string(),
            "mon,wed,fri"
        );
        assert_eq!(
            Days::parse("fri-mon").unwrap().to_string(),
            "mon,fri,sat,sun"
        );
        assert!(Days::parse("monday").is_err());
        assert!(Days::parse("").is_err());
    }

    #[test]
    fn the_window_is_the_callees_local_time() {
        let w = window("08:00-21:00", "mon-sun");
        // 12:30 UTC in January: 07:30 in New York (closed), 12:30 in London (open).
        let at = utc("2026-01-14T12:30:00Z");
        assert!(!w.is_open_in(New_York, at));
        assert!(w.is_open_in(London, at));
        assert_eq!(
            w.next_opening(&[New_York], at),
            Some(utc("2026-01-14T13:00:00Z"))
        );
        assert_eq!(w.next_opening(&[London], at), Some(at));
        // The end is excluded: 21:00 local is closed, 20:59 open.
        assert!(w.is_open_in(London, utc("2026-01-14T20:59:00Z")));
        assert!(!w.is_open_in(London, utc("2026-01-14T21:00:00Z")));
        assert_eq!(
            w.next_opening(&[London], utc("2026-01-14T21:00:00Z")),
            Some(utc("2026-01-15T08:00:00Z"))
        );
    }

    #[test]
    fn several_zones_must_all_be_open() {
        let w = window("08:00-21:00", "mon-sun");
        // London and New York overlap from 13:00 to 21:00 UTC in winter.
        let zones = [London, New_York];
        assert_eq!(
            w.next_opening(&zones, utc("2026-01-14T09:00:00Z")),
            Some(utc("2026-01-14T13:00:00Z"))
        );
        assert_eq!(
            w.next_opening(&zones, utc("2026-01-14T21:00:00Z")),
            Some(utc("2026-01-15T13:00:00Z"))
        );
        // Tokyo and New York never share two hours of 08:00-10:00.
        let narrow = window("08:00-10:00", "mon-sun");
        assert_eq!(
            narrow.next_opening(&[Tokyo, New_York], utc("2026-01-14T09:00:00Z")),
            None
        );
    }

    #[test]
    fn daylight_saving_moves_the_window_in_utc() {
        let w = window("08:00-21:00", "mon-sun");
        // New York: EST (UTC-5) until 2026-03-08 02:00, EDT (UTC-4) after.
        assert_eq!(
            w.next_opening(&[New_York], utc("2026-03-08T02:00:00Z")),
            Some(utc("2026-03-08T12:00:00Z"))
        );
        assert_eq!(
            w.next_opening(&[New_York], utc("2026-03-07T02:00:00Z")),
            Some(utc("2026-03-07T13:00:00Z"))
        );
        // And back: EDT until 2026-11-01 02:00, EST after.
        assert_eq!(
            w.next_opening(&[New_York], utc("2026-10-31T02:00:00Z")),
            Some(utc("2026-10-31T12:00:00Z"))
        );
        assert_eq!(
            w.next_opening(&[New_York], utc("2026-11-01T02:00:00Z")),
            Some(utc("2026-11-01T13:00:00Z"))
        );
        // 20:30 EDT on the last evening of summer time is open, 21:30 is not.
        assert!(w.is_open_in(New_York, utc("2026-11-01T00:30:00Z")));
        assert!(!w.is_open_in(New_York, utc("2026-11-01T01:30:00Z")));
    }

    #[test]
    fn a_window_opening_in_the_spring_gap_opens_when_the_gap_ends() {
        // 02:30 does not exist in New York on 2026-03-08: the clocks go from 02:00 to 03:00.
        let w = window("02:30-05:00", "mon-sun");
        assert_eq!(
            w.next_opening(&[New_York], utc("2026-03-08T06:00:00Z")),
            Some(utc("2026-03-08T07:00:00Z")) // 03:00 EDT
        );
        // 01:30 happens twice on 2026-11-01; the window opens at the first.
        let w = window("01:30-05:00", "mon-sun");
        assert_eq!(
            w.next_opening(&[New_York], utc("2026-11-01T04:00:00Z")),
            Some(utc("2026-11-01T05:30:00Z")) // 01:30 EDT
        );
        // Lord Howe shifts by half an hour.
        let w = window("02:15-05:00", "mon-sun");
        let opening = w
            .next_opening(&[Lord_Howe], utc("2026-10-03T12:00:00Z"))
            .unwrap();
        assert_eq!(opening, utc("2026-10-03T15:30:00Z")); // 02:30 +11:00, the gap's end
    }

    #[test]
    fn days_of_the_week_are_the_callees() {
        let w = window("09:00-17:00", "mon-fri");
        // Friday 2026-01-16 18:00 in London: next opening is Monday 09:00.
        assert_eq!(
            w.next_opening(&[London], utc("2026-01-16T18:00:00Z")),
            Some(utc("2026-01-19T09:00:00Z"))
        );
        // Saturday 10:00 in Tokyo is Friday 20:00 in New York, both closed; Tokyo's
        // Monday 09:00 is Sunday evening in New York.
        assert!(!w.is_open_in(Tokyo, utc("2026-01-17T01:00:00Z")));
        assert_eq!(
            w.next_opening(&[Tokyo], utc("2026-01-17T01:00:00Z")),
            Some(utc("2026-01-19T00:00:00Z"))
        );
    }

    #[test]
    fn an_overnight_window_belongs_to_the_day_it_opens() {
        let w = window("22:00-06:00", "fri");
        // Friday 23:00 and Saturday 05:00 London are open; Saturday 23:00 and Friday 05:00
        // are not (Friday 05:00 is Thursday night's window).
        assert!(w.is_open_in(London, utc("2026-01-16T23:00:00Z")));
        assert!(w.is_open_in(London, utc("2026-01-17T05:00:00Z")));
        assert!(!w.is_open_in(London, utc("2026-01-17T23:00:00Z")));
        assert!(!w.is_open_in(London, utc("2026-01-16T05:00:00Z")));
        assert_eq!(
            w.next_opening(&[London], utc("2026-01-17T06:00:00Z")),
            Some(utc("2026-01-23T22:00:00Z"))
        );
    }

    #[test]
    fn the_end_of_the_calendar_is_no_panic() {
        let w = window("08:00-21:00", "mon-sun");
        let end = DateTime::<Utc>::MAX_UTC;
        assert!(w.next_opening(&[New_York, Tokyo], end).is_none() || w.is_open(&[New_York], end));
        let start = DateTime::<Utc>::MIN_UTC;
        let _ = w.next_opening(&[Lord_Howe], start);
    }

    #[test]
    fn off_is_always_open() {
        let at = utc("2026-01-14T03:00:00Z");
        assert!(CallingWindow::OFF.is_open(&[New_York, Tokyo], at));
        assert_eq!(CallingWindow::OFF.next_opening(&[New_York], at), Some(at));
    }

    #[test]
    fn narrowing() {
        let global = Hours::parse("08:00-21:00").unwrap();
        assert!(Hours::parse("09:00-18:00").unwrap().within(global));
        assert!(!Hours::parse("07:00-18:00").unwrap().within(global));
        assert!(!Hours::parse("20:00-09:00").unwrap().within(global));
        let night = Hours::parse("20:00-07:00").unwrap();
        assert!(Hours::parse("22:00-06:00").unwrap().within(night));
        assert!(Hours::parse("05:00-06:00").unwrap().within(night));
        assert!(Days::ALL.contains(Days::parse("mon-fri").unwrap()));
        assert!(!Days::parse("mon-fri").unwrap().contains(Days::ALL));
    }
}
