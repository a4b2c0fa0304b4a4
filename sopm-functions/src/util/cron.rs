//! `util.cron_next`: a five-field cron parser and a forward search, in UTC.
//!
//! Fields are minute (0-59), hour (0-23), day of month (1-31), month (1-12 or
//! JAN-DEC) and day of week (0-7 or SUN-SAT, 0 and 7 both Sunday). Each field is a
//! comma-separated list of `*`, `n`, `a-b`, each optionally followed by `/step`
//! (`n/step` runs from n to the field's end). As in Vixie cron, when both day fields
//! are restricted (neither starts with `*`) a day matches if either matches;
//! otherwise both must.

use chrono::{
    DateTime, Datelike, Months, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, TimeDelta,
    Timelike, Utc,
};
use serde_json::Value;
use sopm_core::{Error, Result};

use super::time::rfc3339;
use crate::schema::Args;

/// Largest expression, in bytes.
pub(super) const MAX_EXPRESSION_BYTES: usize = 1024;

/// A search gives up when nothing matches within this many months of its start.
const SEARCH_MONTHS: u32 = 60;

const MONTH_NAMES: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAY_NAMES: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

pub(super) fn cron_next(args: &Args<'_>) -> Result<Value> {
    let schedule = Schedule::parse(args.str("expression")?)?;
    let from = match args.opt_str("from")? {
        Some(text) => rfc3339("from", text)?,
        None => Utc::now(),
    };
    let count = args.opt_i64("count")?.unwrap_or(1);
    // Fire times are whole minutes strictly after `from`, and stay within RFC 3339's
    // four-digit years.
    let last = NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|d| d.and_hms_opt(23, 59, 0))
        .ok_or_else(|| Error::Internal("cron_next: no last date".into()))?;
    let mut out = Vec::new();
    let mut start = next_minute(from.naive_utc());
    for _ in 0..count {
        let found = start.and_then(|s| {
            let limit = s
                .checked_add_months(Months::new(SEARCH_MONTHS))
                .map_or(last, |l| l.min(last));
            schedule.first_match(s, limit)
        });
        let Some(fire) = found else {
            return Err(Error::invalid(format!(
                "field 'expression': no matching time within 5 years after {}",
                out.last()
                    .and_then(Value::as_str)
                    .unwrap_or(&from.to_rfc3339_opts(SecondsFormat::Secs, true))
            )));
        };
        out.push(Value::String(
            DateTime::<Utc>::from_naive_utc_and_offset(fire, Utc)
                .to_rfc3339_opts(SecondsFormat::Secs, true),
        ));
        start = next_minute(fire);
    }
    Ok(Value::Array(out))
}

/// The first whole minute strictly after `t`.
fn next_minute(t: NaiveDateTime) -> Option<NaiveDateTime> {
    let minute = NaiveTime::from_hms_opt(t.hour(), t.minute(), 0)?;
    t.date()
        .and_time(minute)
        .checked_add_signed(TimeDelta::minutes(1))
}

/// A parsed expression: one bit per allowed value of each field.
#[derive(Debug, PartialEq)]
struct Schedule {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    /// Bit 0 is Sunday.
    weekdays: u64,
    /// Both day fields are restricted, so a day matches when either matches.
    either_day: bool,
}

impl Schedule {
    fn parse(expression: &str) -> Result<Schedule> {
        let fields: Vec<&str> = expression.split_whitespace().take(6).collect();
        let [minute, hour, day, month, weekday] = fields[..] else {
            return Err(Error::invalid(format!(
                "field 'expression': expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                if fields.len() > 5 { "more".to_string() } else { fields.len().to_string() }
            )));
        };
        let weekdays = parse_field(weekday, "day-of-week", 0, 7, &WEEKDAY_NAMES)?;
        Ok(Schedule {
            minutes: parse_field(minute, "minute", 0, 59, &[])?,
            hours: parse_field(hour, "hour", 0, 23, &[])?,
            days: parse_field(day, "day-of-month", 1, 31, &[])?,
            months: parse_field(month, "month", 1, 12, &MONTH_NAMES)?,
            // 7 is Sunday as well as 0.
            weekdays: (weekdays | weekdays >> 7) & 0x7f,
            either_day: !day.starts_with('*') && !weekday.starts_with('*'),
        })
    }

    fn day_matches(&self, date: NaiveDate) -> bool {
        let day = has(self.days, date.day());
        let weekday = has(self.weekdays, date.weekday().num_days_from_sunday());
        if self.either_day {
            day || weekday
        } else {
            day && weekday
        }
    }

    /// The first matching minute in `t..=limit` (`t` a whole minute). It skips a whole
    /// month, day or hour as soon as that cannot match, so five years take at most a
    /// few thousand steps.
    fn first_match(&self, mut t: NaiveDateTime, limit: NaiveDateTime) -> Option<NaiveDateTime> {
        while t <= limit {
            let date = t.date();
            t = if !has(self.months, date.month()) {
                date.with_day(1)?
                    .checked_add_months(Months::new(1))?
                    .and_time(NaiveTime::MIN)
            } else if !self.day_matches(date) {
                date.succ_opt()?.and_time(NaiveTime::MIN)
            } else if !has(self.hours, t.hour()) {
                date.and_hms_opt(t.hour(), 0, 0)?
                    .checked_add_signed(TimeDelta::hours(1))?
            } else if !has(self.minutes, t.minute()) {
                t.checked_add_signed(TimeDelta::minutes(1))?
            } else {
                return Some(t);
            };
        }
        None
    }
}

/// Whether bit `v` of `mask` is set (`v` is at most 59).
fn has(mask: u64, v: u32) -> bool {
    mask.checked_shr(v).is_some_and(|m| m & 1 == 1)
}

/// One field as a bit mask of the allowed values in `lo..=hi`. `names` (if any) name
/// the values from `lo` up.
fn parse_field(field: &str, what: &str, lo: u32, hi: u32, names: &[&str]) -> Result<u64> {
    let bad = |why: String| {
        Error::invalid(format!(
            "field 'expression': {what} field '{}': {why}",
            sopm_core::types::truncate_for_message(field)
        ))
    };
    let value = |text: &str| -> Result<u32> {
        let v = number(text)
            .or_else(|| {
                let lower = text.to_ascii_lowercase();
                names
                    .iter()
                    .position(|n| *n == lower)
                    .and_then(|i| u32::try_from(i).ok())
                    .map(|i| i + lo)
            })
            .ok_or_else(|| bad(format!("'{text}' is not a number")))?;
        if (lo..=hi).contains(&v) {
            Ok(v)
        } else {
            Err(bad(format!("{v} is outside {lo}-{hi}")))
        }
    };
    let mut mask = 0u64;
    for item in field.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (
                range,
                number(step)
                    .filter(|&s| s >= 1)
                    .ok_or_else(|| bad(format!("step '{step}' is not a positive integer")))?,
            ),
            None => (item, 1),
        };
        let (start, end) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (value(a)?, value(b)?)
        } else {
            let v = value(range)?;
            (v, if item.contains('/') { hi } else { v })
        };
        if start > end {
            return Err(bad(format!("range {start}-{end} runs backwards")));
        }
        for v in (start..=end).step_by(usize::try_from(step).unwrap_or(usize::MAX)) {
            mask |= 1 << v;
        }
    }
    Ok(mask)
}

/// A plain decimal number (no sign, no spaces).
fn number(text: &str) -> Option<u32> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::Schedule;
    use crate::testing::{call, code};
    use serde_json::{json, Value};

    async fn next(expression: &str, from: &str, count: i64) -> Value {
        call(
            "util.cron_next",
            json!({"expression": expression, "from": from, "count": count}),
        )
        .await
        .unwrap()
    }

    #[test]
    fn parses_fields() {
        let s = Schedule::parse("0,30 */6 1-10/3 JAN,jul-Aug 1-5").unwrap();
        assert_eq!(s.minutes, 1 | 1 << 30);
        assert_eq!(s.hours, 1 | 1 << 6 | 1 << 12 | 1 << 18);
        assert_eq!(s.days, 1 << 1 | 1 << 4 | 1 << 7 | 1 << 10);
        assert_eq!(s.months, 1 << 1 | 1 << 7 | 1 << 8);
        assert_eq!(s.weekdays, 0b0111110);
        assert!(s.either_day);
        // 7 and 0 are both Sunday; "n/step" runs to the end of the field.
        let s = Schedule::parse("5/20 * * * 7").unwrap();
        assert_eq!(s.minutes, 1 << 5 | 1 << 25 | 1 << 45);
        assert_eq!(s.weekdays, 1);
        assert!(!s.either_day);
        assert_eq!(Schedule::parse("* * * * 5-7").unwrap().weekdays, 0b1100001);
        assert_eq!(
            Schedule::parse("  *\t* *  * SUN-SAT ").unwrap().weekdays,
            0x7f
        );
    }

    #[tokio::test]
    async fn next_fire_times() {
        assert_eq!(
            next("* * * * *", "2024-01-01T00:00:00Z", 2).await,
            json!(["2024-01-01T00:01:00Z", "2024-01-01T00:02:00Z"])
        );
        // Seconds are dropped; the result is strictly after `from`, in UTC.
        assert_eq!(
            next("30 12 * * *", "2024-01-01T14:29:59.9+02:00", 2).await,
            json!(["2024-01-01T12:30:00Z", "2024-01-02T12:30:00Z"])
        );
        // Across a year end and into a leap day.
        assert_eq!(
            next("0 0 29 2 *", "2023-12-31T23:59:00Z", 1).await,
            json!(["2024-02-29T00:00:00Z"])
        );
        assert_eq!(
            next("0 0 29 2 *", "2024-02-29T00:00:00Z", 1).await,
            json!(["2028-02-29T00:00:00Z"])
        );
        assert_eq!(
            next("15 10 * * 0", "2024-01-01T00:00:00Z", 1).await,
            json!(["2024-01-07T10:15:00Z"])
        );
        assert_eq!(
            next("0 9 1 jan,JUL *", "2024-01-01T09:00:00Z", 2).await,
            json!(["2024-07-01T09:00:00Z", "2025-01-01T09:00:00Z"])
        );
    }

    #[tokio::test]
    async fn day_fields_use_or_when_both_are_restricted() {
        // The 13th or any Friday (2024-01-05 and 12 are Fridays, the 13th a Saturday).
        assert_eq!(
            next("0 12 13 * FRI", "2024-01-01T00:00:00Z", 3).await,
            json!([
                "2024-01-05T12:00:00Z",
                "2024-01-12T12:00:00Z",
                "2024-01-13T12:00:00Z"
            ])
        );
        // When a day field starts with '*', both must match: here every day that is
        // a Friday.
        assert_eq!(
            next("0 0 */1 * 5", "2024-01-01T00:00:00Z", 1).await,
            json!(["2024-01-05T00:00:00Z"])
        );
        assert_eq!(
            next("0 0 13 * *", "2024-01-01T00:00:00Z", 1).await,
            json!(["2024-01-13T00:00:00Z"])
        );
    }

    #[tokio::test]
    async fn defaults_to_one_time_after_now() {
        let out = call("util.cron_next", json!({"expression": "* * * * *"}))
            .await
            .unwrap();
        let times = out.as_array().unwrap();
        assert_eq!(times.len(), 1);
        let t = chrono::DateTime::parse_from_rfc3339(times[0].as_str().unwrap()).unwrap();
        let now = chrono::Utc::now();
        assert!(
            t > now - chrono::TimeDelta::seconds(5) && t <= now + chrono::TimeDelta::minutes(1)
        );
        assert_eq!(t.timestamp() % 60, 0);
    }

    #[tokio::test]
    async fn largest_count_and_sparse_schedules() {
        let out = next("59 23 31 12 *", "2024-01-01T00:00:00Z", 100).await;
        let times = out.as_array().unwrap();
        assert_eq!(times.len(), 100);
        assert_eq!(times[0], json!("2024-12-31T23:59:00Z"));
        assert_eq!(times[99], json!("2123-12-31T23:59:00Z"));
        let monthly = next("0 0 13 * *", "2024-01-01T00:00:00Z", 100).await;
        assert_eq!(monthly[99], json!("2032-04-13T00:00:00Z"));
        let fridays = next("0 0 */1 * FRI", "2024-01-01T00:00:00Z", 100).await;
        assert_eq!(fridays[99], json!("2025-11-28T00:00:00Z"));
    }

    #[tokio::test]
    async fn gives_up_after_five_years() {
        for never in ["0 0 30 2 *", "0 0 31 4,6,9,11 *"] {
            assert_eq!(
                code(
                    "util.cron_next",
                    json!({"expression": never, "from": "2024-01-01T00:00:00Z"})
                )
                .await,
                "invalid_input"
            );
        }
        // 2100 is not a leap year: 2096-02-29 is followed by 2104-02-29, 8 years on.
        assert_eq!(
            code(
                "util.cron_next",
                json!({"expression": "0 0 29 2 *", "from": "2096-01-01T00:00:00Z", "count": 2})
            )
            .await,
            "invalid_input"
        );
        // Nothing after the end of year 9999.
        assert_eq!(
            next("59 23 31 12 *", "9999-12-31T00:00:00Z", 1).await,
            json!(["9999-12-31T23:59:00Z"])
        );
        assert_eq!(
            code(
                "util.cron_next",
                json!({"expression": "* * * * *", "from": "9999-12-31T23:59:00Z"})
            )
            .await,
            "invalid_input"
        );
    }

    #[tokio::test]
    async fn rejects_bad_expressions() {
        for bad in [
            "",
            "* * * *",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * 32 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "*/-1 * * * *",
            "5-1 * * * *",
            "1,,2 * * * *",
            "a * * * *",
            "* * * FOO *",
            "* * * * MONDAY",
            "+5 * * * *",
            "99999999999 * * * *",
            "* * * * FRI-SUN",
        ] {
            assert_eq!(
                code("util.cron_next", json!({ "expression": bad })).await,
                "invalid_input",
                "{bad:?}"
            );
        }
        for bad in [
            json!({"expression": "* * * * *", "from": "2024-01-01"}),
            json!({"expression": "* * * * *", "count": 0}),
            json!({"expression": "* * * * *", "count": 101}),
            json!({"expression": "* ".repeat(600)}),
        ] {
            assert_eq!(code("util.cron_next", bad).await, "invalid_input");
        }
    }
}
