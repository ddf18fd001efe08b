//! Time: the wall clock (or a fixed one for golden tests) and Europe/London local time.
//!
//! UK civil time is GMT, or BST (UTC+1) from 01:00 UTC on the last Sunday of March to 01:00 UTC
//! on the last Sunday of October (the rule in force since 1998); that rule is all we need, so no
//! time-zone database is pulled in.

use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset, Weekday};

/// Where "now" comes from.
#[derive(Debug, Clone, Copy)]
pub enum Clock {
    System,
    /// Always the same instant: golden flow files are compared byte for byte.
    Fixed(OffsetDateTime),
}

impl Clock {
    pub fn now(&self) -> OffsetDateTime {
        match self {
            Clock::System => OffsetDateTime::now_utc(),
            Clock::Fixed(t) => *t,
        }
    }
}

fn last_sunday(year: i32, month: Month) -> Option<Date> {
    let mut d = Date::from_calendar_date(year, month, time::util::days_in_month(month, year)).ok()?;
    while d.weekday() != Weekday::Sunday {
        d = d.previous_day()?;
    }
    Some(d)
}

/// The Europe/London offset in force at `t`.
pub(crate) fn london_offset(t: OffsetDateTime) -> UtcOffset {
    let utc = t.to_offset(UtcOffset::UTC);
    let year = utc.year();
    let one = Time::from_hms(1, 0, 0).unwrap_or(Time::MIDNIGHT);
    let (Some(start), Some(end)) = (last_sunday(year, Month::March), last_sunday(year, Month::October)) else {
        return UtcOffset::UTC;
    };
    let start = PrimitiveDateTime::new(start, one).assume_utc();
    let end = PrimitiveDateTime::new(end, one).assume_utc();
    if utc >= start && utc < end {
        UtcOffset::from_hms(1, 0, 0).unwrap_or(UtcOffset::UTC)
    } else {
        UtcOffset::UTC
    }
}

/// `t` as Europe/London local time.
pub(crate) fn london(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(london_offset(t))
}

/// Parses an RFC 3339 date-time (with offset).
pub fn parse_rfc3339(s: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()
}

/// Parses a `YYYY-MM-DD` date.
pub(crate) fn parse_date(s: &str) -> Option<Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(s, &fmt).ok()
}

/// `YYYY-MM-DD`.
pub(crate) fn iso_date(d: Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// DTC DATE: `ccyymmdd`.
pub(crate) fn dtc_date(d: Date) -> String {
    format!("{:04}{:02}{:02}", d.year(), u8::from(d.month()), d.day())
}

/// DTC DATETIME: `ccyymmddhhmmss`, in the time given.
pub(crate) fn dtc_datetime(t: OffsetDateTime) -> String {
    format!("{}{:02}{:02}{:02}", dtc_date(t.date()), t.hour(), t.minute(), t.second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bst_boundaries_follow_the_last_sundays() {
        // 2025: BST from 30 March 01:00 UTC to 26 October 01:00 UTC.
        let before = parse_rfc3339("2025-03-30T00:59:59Z").unwrap();
        let after = parse_rfc3339("2025-03-30T01:00:00Z").unwrap();
        assert_eq!(london_offset(before), UtcOffset::UTC);
        assert_eq!(london_offset(after).whole_hours(), 1);
        let end = parse_rfc3339("2025-10-26T01:00:00Z").unwrap();
        assert_eq!(london_offset(end), UtcOffset::UTC);
        let late = parse_rfc3339("2025-06-30T23:30:00Z").unwrap();
        assert_eq!(iso_date(london(late).date()), "2025-07-01");
        let winter = parse_rfc3339("2025-01-08T23:30:00Z").unwrap();
        assert_eq!(iso_date(london(winter).date()), "2025-01-08");
    }
}
