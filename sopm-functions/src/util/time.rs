//! Dates: `util.format_date`, `util.parse_date`, `util.date_diff`. Everything is UTC;
//! years are kept to 0..=9999, the range RFC 3339 can write.

use std::fmt::Write;

use chrono::format::StrftimeItems;
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, NaiveTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sopm_core::{Error, Result};

use super::unexpected;
use crate::schema::{float, Args};

/// 0000-01-01T00:00:00Z, the earliest timestamp `util.format_date` takes.
pub(super) const MIN_UNIX: i64 = -62_167_219_200;
/// 9999-12-31T23:59:59Z, the latest.
pub(super) const MAX_UNIX: i64 = 253_402_300_799;

pub(super) fn format_date(args: &Args<'_>) -> Result<Value> {
    let timestamp = args.i64("timestamp")?;
    let when = DateTime::from_timestamp(timestamp, 0)
        .ok_or_else(|| Error::invalid(format!("field 'timestamp': {timestamp} is out of range")))?;
    let items = strftime_items(args.str("format")?)?;
    // Write into a String rather than `to_string()`, which panics when a Display
    // implementation fails; the items are checked above, so this is belt and braces.
    let mut out = String::new();
    write!(out, "{}", when.format_with_items(items.iter()))
        .map_err(|_| Error::invalid("field 'format': cannot format a date with this format"))?;
    Ok(Value::String(out))
}

/// The items of a strftime format, or `invalid_input` for an unknown or incomplete
/// specifier (chrono would otherwise fail only while formatting).
fn strftime_items(format: &str) -> Result<Vec<chrono::format::Item<'_>>> {
    StrftimeItems::new(format).parse().map_err(|_| {
        Error::invalid(
            "field 'format': not a valid strftime format (unknown or incomplete % specifier)",
        )
    })
}

pub(super) fn parse_date(args: &Args<'_>) -> Result<Value> {
    let text = args.str("text")?;
    let when = match args.opt_str("format")? {
        None => rfc3339("text", text)?,
        Some(format) => parse_with_format(text, format)?,
    };
    if !(0..=9999).contains(&when.year()) {
        return Err(Error::invalid(format!(
            "field 'text': the year must be between 0 and 9999, got {}",
            when.year()
        )));
    }
    Ok(json!({
        "unix": when.timestamp(),
        "rfc3339": when.to_rfc3339_opts(SecondsFormat::AutoSi, true),
    }))
}

/// An RFC 3339 date-time in UTC; `field` names the input in the error.
pub(super) fn rfc3339(field: &str, text: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|d| d.to_utc())
        .map_err(|e| {
            Error::invalid(format!(
                "field '{field}': expected an RFC 3339 date-time such as 2024-01-01T00:00:00Z ({e})"
            ))
        })
}

/// Parses `text` with a strftime format: a date-time with an offset if the format has
/// one, else a date-time taken as UTC, else a bare date at midnight UTC.
fn parse_with_format(text: &str, format: &str) -> Result<DateTime<Utc>> {
    strftime_items(format)?;
    if let Ok(d) = DateTime::parse_from_str(text, format) {
        return Ok(d.to_utc());
    }
    match NaiveDateTime::parse_from_str(text, format) {
        Ok(d) => Ok(d.and_utc()),
        Err(e) => NaiveDate::parse_from_str(text, format)
            .map(|d| d.and_time(NaiveTime::MIN).and_utc())
            .map_err(|_| Error::invalid(format!("field 'text': does not match the format ({e})"))),
    }
}

pub(super) fn date_diff(args: &Args<'_>) -> Result<Value> {
    let from = rfc3339("from", args.str("from")?)?;
    let to = rfc3339("to", args.str("to")?)?;
    let unit_seconds = match args.str("unit")? {
        "seconds" => 1.0,
        "minutes" => 60.0,
        "hours" => 3_600.0,
        "days" => 86_400.0,
        "weeks" => 604_800.0,
        other => return Err(unexpected("unit", other)),
    };
    float((to - from).as_seconds_f64() / unit_seconds)
}

#[cfg(test)]
mod tests {
    use super::{MAX_UNIX, MIN_UNIX};
    use crate::testing::{call, code};
    use serde_json::json;

    async fn format(timestamp: i64, format: &str) -> String {
        let out = call(
            "util.format_date",
            json!({"timestamp": timestamp, "format": format}),
        )
        .await
        .unwrap();
        out.as_str().unwrap().to_string()
    }

    #[tokio::test]
    async fn format_date_formats_in_utc() {
        assert_eq!(format(0, "%Y-%m-%dT%H:%M:%S").await, "1970-01-01T00:00:00");
        assert_eq!(format(-1, "%Y-%m-%d %H:%M:%S").await, "1969-12-31 23:59:59");
        assert_eq!(
            format(1_709_210_096, "%A %d %B %Y, %j").await,
            "Thursday 29 February 2024, 060"
        );
        assert_eq!(format(0, "%s %z %Z %%").await, "0 +0000 UTC %");
        assert_eq!(format(0, "").await, "");
        assert_eq!(format(0, "año %Y ✓").await, "año 1970 ✓");
        assert_eq!(format(MIN_UNIX, "%+").await, "0000-01-01T00:00:00+00:00");
        assert_eq!(
            format(MAX_UNIX, "%Y-%m-%d %H:%M:%S").await,
            "9999-12-31 23:59:59"
        );
    }

    #[tokio::test]
    async fn format_date_rejects_bad_input() {
        for bad in [
            json!({"timestamp": 0, "format": "%Q"}),
            json!({"timestamp": 0, "format": "%"}),
            json!({"timestamp": 0, "format": "%Y-%"}),
            json!({"timestamp": MAX_UNIX + 1, "format": "%Y"}),
            json!({"timestamp": MIN_UNIX - 1, "format": "%Y"}),
            json!({"timestamp": 1.5, "format": "%Y"}),
            json!({"timestamp": 0, "format": "x".repeat(257)}),
            json!({"timestamp": 0}),
        ] {
            assert_eq!(code("util.format_date", bad).await, "invalid_input");
        }
    }

    #[tokio::test]
    async fn parse_date_rfc3339_and_formats() {
        let parse = |input| async move { call("util.parse_date", input).await.unwrap() };
        assert_eq!(
            parse(json!({"text": "1970-01-01T00:00:00Z"})).await,
            json!({"unix": 0, "rfc3339": "1970-01-01T00:00:00Z"})
        );
        assert_eq!(
            parse(json!({"text": "1969-12-31T23:59:59.500-00:00"})).await,
            json!({"unix": -1, "rfc3339": "1969-12-31T23:59:59.500Z"})
        );
        assert_eq!(
            parse(json!({"text": "2024-02-29 13:45:00 +0100", "format": "%Y-%m-%d %H:%M:%S %z"}))
                .await,
            json!({"unix": 1_709_210_700, "rfc3339": "2024-02-29T12:45:00Z"})
        );
        // No offset in the format: UTC.
        assert_eq!(
            parse(json!({"text": "29/02/2024 12:45", "format": "%d/%m/%Y %H:%M"})).await,
            json!({"unix": 1_709_210_700, "rfc3339": "2024-02-29T12:45:00Z"})
        );
        // A bare date: midnight UTC.
        assert_eq!(
            parse(json!({"text": "2024-01-01", "format": "%Y-%m-%d", })).await,
            json!({"unix": 1_704_067_200, "rfc3339": "2024-01-01T00:00:00Z"})
        );
        assert_eq!(
            parse(json!({"text": "2024-01-01T00:00:00Z", "format": null})).await["unix"],
            json!(1_704_067_200)
        );
    }

    #[tokio::test]
    async fn parse_date_rejects_bad_input() {
        for bad in [
            json!({"text": ""}),
            json!({"text": "2024-01-01"}),
            json!({"text": "2024-02-30T00:00:00Z"}),
            json!({"text": "2024-01-01T25:00:00Z"}),
            json!({"text": "yesterday"}),
            json!({"text": "2024-01-01", "format": "%Q"}),
            json!({"text": "2024-01-01", "format": "%d/%m/%Y"}),
            json!({"text": "12:00", "format": "%H:%M"}),
            json!({"text": "10000-01-01", "format": "%Y-%m-%d"}),
            json!({"text": "x".repeat(257)}),
        ] {
            assert_eq!(
                code("util.parse_date", bad.clone()).await,
                "invalid_input",
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn date_diff_in_each_unit() {
        let diff = |from: &str, to: &str, unit: &str| {
            let input = json!({"from": from, "to": to, "unit": unit});
            async move { call("util.date_diff", input).await.unwrap() }
        };
        let (a, b) = ("2024-01-01T00:00:00Z", "2024-01-15T12:00:00Z");
        assert_eq!(diff(a, b, "seconds").await, json!(1_252_800.0));
        assert_eq!(diff(a, b, "minutes").await, json!(20_880.0));
        assert_eq!(diff(a, b, "hours").await, json!(348.0));
        assert_eq!(diff(a, b, "days").await, json!(14.5));
        assert_eq!(diff(a, b, "weeks").await, json!(2.0714285714285716));
        assert_eq!(diff(b, a, "days").await, json!(-14.5));
        assert_eq!(diff(a, a, "weeks").await, json!(0.0));
        // Offsets are honoured; sub-second parts are kept.
        assert_eq!(
            diff(
                "2024-01-01T02:00:00+02:00",
                "2024-01-01T00:00:00.25Z",
                "seconds"
            )
            .await,
            json!(0.25)
        );
        assert_eq!(
            diff("0000-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "seconds").await,
            json!((MAX_UNIX - MIN_UNIX) as f64)
        );
        for bad in [
            json!({"from": "2024-01-01", "to": b, "unit": "days"}),
            json!({"from": a, "to": b, "unit": "months"}),
            json!({"from": a, "unit": "days"}),
        ] {
            assert_eq!(code("util.date_diff", bad).await, "invalid_input");
        }
    }
}
