//! Schedule windows: when a job may act.
//!
//! Some actions must wait for business hours (a power cycle during a
//! shop's opening hours is visible; one at night is not), so a job can carry
//! a window of days and hours in a time zone. Outside it the job's state
//! still advances (the episode starts, `for` runs), but the action waits for
//! the window to open; see [`Schedule::allows`].
//!
//! Rules of the window, as documented for users:
//! - `days` lists days (`"mon"` … `"sun"`) and ranges (`"mon-fri"`, and
//!   `"fri-mon"` wraps over the weekend); absent = every day.
//! - `hours` is `"HH:MM-HH:MM"`, start included, end excluded, `24:00`
//!   allowed as an end; absent = the whole day. A window whose end is before
//!   its start crosses midnight and belongs to the day it starts on
//!   (`days = ["fri"], hours = "22:00-06:00"` is Friday 22:00 to Saturday
//!   06:00).
//! - `time_zone` is an IANA name read from the system's tzdb
//!   (`/usr/share/zoneinfo`); absent = the system's zone. Clock changes are
//!   the zone's: a window opening in a skipped hour opens when it ends.

use std::fmt;

#[cfg(test)]
use jiff::civil::{Date, Time};
use jiff::tz::TimeZone;
use jiff::Timestamp;

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const MINUTES_PER_DAY: u16 = 24 * 60;

/// Why a schedule cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ScheduleError {
    /// Not a day name or range.
    #[error(
        "unknown day {0:?}; use mon, tue, wed, thu, fri, sat, sun or a range like \"mon-fri\""
    )]
    UnknownDay(String),
    /// `days = []`.
    #[error("days is empty; list at least one day, or leave days out to mean every day")]
    NoDays,
    /// Not `HH:MM-HH:MM`.
    #[error("hours {0:?} is not a window like \"08:00-20:00\"")]
    BadHours(String),
    /// A time outside 00:00..=24:00 (24:00 only as an end).
    #[error("hours {hours:?}: {time} is not a time of day (00:00 to 23:59, or 24:00 as the end)")]
    BadTime {
        /// The window as written.
        hours: String,
        /// The offending time.
        time: String,
    },
    /// Start equals end.
    #[error(
        "hours {0:?} is an empty window; use \"00:00-24:00\" for the whole day, or leave hours out"
    )]
    EmptyHours(String),
    /// No such zone in the tzdb.
    #[error("unknown time zone {name:?} ({reason}); use an IANA name like \"Europe/Moscow\" (see /usr/share/zoneinfo)")]
    UnknownTimeZone {
        /// The name as written.
        name: String,
        /// jiff's explanation.
        reason: String,
    },
}

/// A daily window, in minutes since local midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HourWindow {
    /// First minute inside the window.
    pub(crate) start: u16,
    /// First minute after it (1..=1440); before `start` when it crosses midnight.
    pub(crate) end: u16,
}

impl HourWindow {
    /// Reads `"08:00-20:00"`.
    pub(crate) fn parse(text: &str) -> Result<HourWindow, ScheduleError> {
        let bad = || ScheduleError::BadHours(text.to_string());
        let (start, end) = text.split_once('-').ok_or_else(bad)?;
        let minute = |part: &str, is_end: bool| -> Result<u16, ScheduleError> {
            let part = part.trim();
            let (h, m) = part.split_once(':').ok_or_else(bad)?;
            if h.is_empty() || h.len() > 2 || m.len() != 2 {
                return Err(bad());
            }
            let h: u16 = h.parse().map_err(|_| bad())?;
            let m: u16 = m.parse().map_err(|_| bad())?;
            let total = h * 60 + m;
            if m > 59 || total > MINUTES_PER_DAY || (total == MINUTES_PER_DAY && !is_end) {
                return Err(ScheduleError::BadTime {
                    hours: text.to_string(),
                    time: part.to_string(),
                });
            }
            Ok(total)
        };
        let start = minute(start, false)?;
        let end = minute(end, true)?;
        if start == end {
            return Err(ScheduleError::EmptyHours(text.to_string()));
        }
        Ok(HourWindow { start, end })
    }

    fn crosses_midnight(self) -> bool {
        self.end < self.start
    }
}

impl fmt::Display for HourWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02}:{:02}-{:02}:{:02}",
            self.start / 60,
            self.start % 60,
            self.end / 60,
            self.end % 60
        )
    }
}

/// Reads a `days` list into a set indexed from Monday.
pub(crate) fn parse_days<'a>(
    items: impl IntoIterator<Item = &'a str>,
) -> Result<[bool; 7], ScheduleError> {
    let mut days = [false; 7];
    let mut any = false;
    for item in items {
        any = true;
        let index = |name: &str| {
            let name = name.trim().to_ascii_lowercase();
            DAY_NAMES.iter().position(|d| *d == name)
        };
        let unknown = || ScheduleError::UnknownDay(item.to_string());
        match item.split_once('-') {
            None => days[index(item).ok_or_else(unknown)?] = true,
            Some((first, last)) => {
                let first = index(first).ok_or_else(unknown)?;
                let last = index(last).ok_or_else(unknown)?;
                let mut day = first;
                loop {
                    days[day] = true;
                    if day == last {
                        break;
                    }
                    day = (day + 1) % 7;
                }
            }
        }
    }
    if any {
        Ok(days)
    } else {
        Err(ScheduleError::NoDays)
    }
}

/// Looks a time zone up in the system tzdb.
pub(crate) fn time_zone(name: &str) -> Result<TimeZone, ScheduleError> {
    TimeZone::get(name).map_err(|err| ScheduleError::UnknownTimeZone {
        name: name.to_string(),
        reason: err.to_string(),
    })
}

/// When a job may act.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Schedule {
    /// Allowed days, Monday first.
    pub(crate) days: [bool; 7],
    /// The daily window; `None` = the whole day.
    pub(crate) hours: Option<HourWindow>,
    /// The zone the days and hours are in.
    pub(crate) time_zone: TimeZone,
}

impl Schedule {
    /// Whether an action may run at `at`.
    pub(crate) fn allows(&self, at: Timestamp) -> bool {
        let local = at.to_zoned(self.time_zone.clone());
        let day = local.weekday().to_monday_zero_offset() as usize;
        let minute = local.hour() as u16 * 60 + local.minute() as u16;
        match self.hours {
            None => self.days[day],
            Some(w) if !w.crosses_midnight() => {
                self.days[day] && (w.start..w.end).contains(&minute)
            }
            Some(w) => {
                (self.days[day] && minute >= w.start)
                    || (self.days[(day + 6) % 7] && minute < w.end)
            }
        }
    }

    /// The first instant at or after `at` when the window is open, looking
    /// up to eight days ahead (`None` only if the days list is empty, which
    /// validation refuses).
    #[cfg(test)]
    pub(crate) fn next_opening(&self, at: Timestamp) -> Option<Timestamp> {
        if self.allows(at) {
            return Some(at);
        }
        let start = self.hours.map_or(0, |w| w.start);
        let time = Time::new((start / 60) as i8, (start % 60) as i8, 0, 0).ok()?;
        let mut date: Date = at.to_zoned(self.time_zone.clone()).date();
        for _ in 0..=8 {
            if self.days[date.weekday().to_monday_zero_offset() as usize] {
                if let Ok(opening) = date.to_datetime(time).to_zoned(self.time_zone.clone()) {
                    let opening = opening.timestamp();
                    if opening > at {
                        return Some(opening);
                    }
                }
            }
            date = date.tomorrow().ok()?;
        }
        None
    }
}

impl fmt::Display for Schedule {
    /// `mon-fri 08:00-20:00 Europe/Moscow`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.days.iter().all(|d| *d) {
            f.write_str("every day")?;
        } else {
            let mut runs = Vec::new();
            let mut i = 0;
            while i < 7 {
                if !self.days[i] {
                    i += 1;
                    continue;
                }
                let first = i;
                while i + 1 < 7 && self.days[i + 1] {
                    i += 1;
                }
                runs.push(match i - first {
                    0 => DAY_NAMES[first].to_string(),
                    1 => format!("{}, {}", DAY_NAMES[first], DAY_NAMES[i]),
                    _ => format!("{}-{}", DAY_NAMES[first], DAY_NAMES[i]),
                });
                i += 1;
            }
            f.write_str(&runs.join(", "))?;
        }
        if let Some(hours) = self.hours {
            write!(f, " {hours}")?;
        }
        write!(f, " {}", self.time_zone.iana_name().unwrap_or("(system time zone)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn schedule(days: &[&str], hours: Option<&str>) -> Schedule {
        Schedule {
            days: parse_days(days.iter().copied()).unwrap(),
            hours: hours.map(|h| HourWindow::parse(h).unwrap()),
            time_zone: time_zone("Europe/Moscow").unwrap(),
        }
    }

    #[test]
    fn business_hours_in_a_zone() {
        let s = schedule(&["mon-fri"], Some("08:00-20:00"));
        // 2025-06-02 is a Monday; Moscow is UTC+3.
        assert!(!s.allows(at("2025-06-02T04:59:59Z")));
        assert!(s.allows(at("2025-06-02T05:00:00Z")));
        assert!(s.allows(at("2025-06-02T16:59:59Z")));
        assert!(!s.allows(at("2025-06-02T17:00:00Z")));
        assert!(!s.allows(at("2025-06-07T10:00:00Z")));
        assert_eq!(s.next_opening(at("2025-06-06T18:00:00Z")), Some(at("2025-06-09T05:00:00Z")));
        assert_eq!(s.to_string(), "mon-fri 08:00-20:00 Europe/Moscow");
    }

    #[test]
    fn windows_crossing_midnight_belong_to_their_first_day() {
        let s = schedule(&["fri"], Some("22:00-06:00"));
        assert!(s.allows(at("2025-06-06T19:00:00Z"))); // Fri 22:00 MSK
        assert!(s.allows(at("2025-06-07T02:59:00Z"))); // Sat 05:59 MSK
        assert!(!s.allows(at("2025-06-07T03:00:00Z"))); // Sat 06:00 MSK
        assert!(!s.allows(at("2025-06-05T23:00:00Z"))); // Fri 02:00 MSK: Thursday's night
        assert_eq!(s.next_opening(at("2025-06-07T03:00:00Z")), Some(at("2025-06-13T19:00:00Z")));
    }

    #[test]
    fn day_lists_and_ranges() {
        let days = parse_days(["fri-mon", "Wed"]).unwrap();
        assert_eq!(days, [true, false, true, false, true, true, true]);
        let s = Schedule { days, hours: None, time_zone: TimeZone::UTC };
        assert_eq!(s.to_string(), "mon, wed, fri-sun UTC");
        assert_eq!(
            parse_days(["monday"]).unwrap_err().to_string(),
            "unknown day \"monday\"; use mon, tue, wed, thu, fri, sat, sun or a range like \"mon-fri\""
        );
        assert_eq!(parse_days([]).unwrap_err(), ScheduleError::NoDays);
    }

    #[test]
    fn hour_windows() {
        assert_eq!(HourWindow::parse("8:00-24:00").unwrap(), HourWindow { start: 480, end: 1440 });
        assert_eq!(HourWindow::parse("8-20").unwrap_err(), ScheduleError::BadHours("8-20".into()));
        assert_eq!(
            HourWindow::parse("08:00-25:00").unwrap_err().to_string(),
            "hours \"08:00-25:00\": 25:00 is not a time of day (00:00 to 23:59, or 24:00 as the end)"
        );
        assert!(matches!(HourWindow::parse("24:00-08:00"), Err(ScheduleError::BadTime { .. })));
        assert!(matches!(HourWindow::parse("08:00-08:00"), Err(ScheduleError::EmptyHours(_))));
        assert!(matches!(HourWindow::parse("08:60-09:00"), Err(ScheduleError::BadTime { .. })));
    }

    #[test]
    fn unknown_time_zones_are_named() {
        let err = time_zone("Europe/Moskow").unwrap_err().to_string();
        assert!(err.starts_with("unknown time zone \"Europe/Moskow\" ("), "{err}");
    }
}
