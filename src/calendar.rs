//! The calendar: Indonesia's western time zone (WIB, UTC+7) in which
//! agreements, budget periods and the monitoring report count days; days
//! as Arrow `Date32` values; the legal age on a date; the six-month budget
//! period; and the clock, injected so that tests can replay a half-year.

use chrono::{DateTime, Datelike, NaiveDate, Utc};

/// WIB is UTC+7, all year (no daylight saving).
pub const WIB_OFFSET_SECONDS: i32 = 7 * 3600;

/// Days from 0001-01-01 (CE day 1) to 1970-01-01.
const EPOCH_CE: i32 = 719_163;

/// The date of a `Date32` value (days since 1970-01-01).
///
/// # Panics
/// Outside chrono's range (about ±262,000 years): callers pass dates of
/// the register or of the snapshot's domain.
pub fn days_to_date(days: i32) -> NaiveDate {
    NaiveDate::from_num_days_from_ce_opt(days + EPOCH_CE).expect("date in range")
}

/// The `Date32` value (days since 1970-01-01) of a date.
pub fn date_to_days(d: NaiveDate) -> i32 {
    d.num_days_from_ce() - EPOCH_CE
}

/// Age in whole years on `on` of someone born on `birth` (both `Date32`
/// days): the birthday counts from its own day on (someone born on
/// 29 February is a year older on 1 March of a common year).
pub fn age_on(birth: i32, on: i32) -> i32 {
    let (b, o) = (days_to_date(birth), days_to_date(on));
    let mut age = o.year() - b.year();
    if (o.month(), o.day()) < (b.month(), b.day()) {
        age -= 1;
    }
    age
}

/// The budget period a date falls in: January–June is `YEAR-S1`,
/// July–December `YEAR-S2`.
pub fn period_of(date: NaiveDate) -> String {
    let half = if date.month() <= 6 { 1 } else { 2 };
    format!("{}-S{half}", date.year())
}

/// Whether `period` has the form `YYYY-S1` or `YYYY-S2`.
pub fn is_valid_period(period: &str) -> bool {
    let b = period.as_bytes();
    b.len() == 7
        && b[..4].iter().all(u8::is_ascii_digit)
        && &b[4..6] == b"-S"
        && (b[6] == b'1' || b[6] == b'2')
}

/// The service's notion of now. Tests inject a fixed clock to replay a
/// half-year of traffic; production uses [`SystemClock`].
pub trait Clock: Send + Sync {
    /// The current instant.
    fn now(&self) -> DateTime<Utc>;

    /// Today's date in WIB (UTC+7), the calendar of the agreements.
    fn today(&self) -> NaiveDate {
        (self.now() + chrono::Duration::seconds(i64::from(WIB_OFFSET_SECONDS))).date_naive()
    }
}

/// The operating system's clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A settable clock for tests and replays.
pub struct ManualClock(std::sync::Mutex<DateTime<Utc>>);

impl ManualClock {
    /// A clock standing at `t`.
    pub fn new(t: DateTime<Utc>) -> ManualClock {
        ManualClock(std::sync::Mutex::new(t))
    }
    /// Moves the clock to `t`.
    pub fn set(&self, t: DateTime<Utc>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = t;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_and_periods() {
        let d = |s: &str| date_to_days(NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap());
        assert_eq!(age_on(d("2000-07-01"), d("2026-06-30")), 25);
        assert_eq!(age_on(d("2000-07-01"), d("2026-07-01")), 26);
        assert_eq!(age_on(d("2004-02-29"), d("2026-02-28")), 21);
        assert_eq!(age_on(d("2004-02-29"), d("2026-03-01")), 22);
        assert_eq!(days_to_date(d("1999-12-31")).to_string(), "1999-12-31");
        assert_eq!(
            period_of(NaiveDate::from_ymd_opt(2026, 6, 30).unwrap()),
            "2026-S1"
        );
        assert_eq!(
            period_of(NaiveDate::from_ymd_opt(2026, 7, 1).unwrap()),
            "2026-S2"
        );
        assert!(is_valid_period("2026-S2") && !is_valid_period("2026-S3"));
    }
}
