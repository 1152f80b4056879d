//! Human spellings of sizes and durations (`64MiB`, `2s`, `1500ms`), parsed and printed.
//!
//! Used wherever a user types a limit: the CLI today, the HTTP API later. Parsing never panics;
//! every error names the value and says what is accepted.

use std::time::Duration;

/// A size or duration that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(String);

/// Parses a byte size: a plain number of bytes or a number with a unit
/// (`B`, `KB`, `MB`, `GB`, `KiB`, `MiB`, `GiB`; case-insensitive).
pub fn parse_bytes(text: &str) -> Result<u64, ParseError> {
    let bad = || {
        ParseError(format!(
            "invalid size `{text}`: use a number of bytes or a number with a unit, e.g. 64MiB, 512KiB, 1GB"
        ))
    };
    let (number, unit) = split_number(text.trim()).ok_or_else(bad)?;
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "ki" | "kib" => 1 << 10,
        "mi" | "mib" => 1 << 20,
        "gi" | "gib" => 1 << 30,
        _ => return Err(bad()),
    };
    let bytes = number * multiplier as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Parses a duration: a number with a unit (`ms`, `s`, `m`, `h`); a bare number means seconds,
/// as in Celery's `time_limit`.
pub fn parse_duration(text: &str) -> Result<Duration, ParseError> {
    let bad = || {
        ParseError(format!(
            "invalid duration `{text}`: use a number with a unit, e.g. 500ms, 2s, 1.5m, 1h"
        ))
    };
    let (number, unit) = split_number(text.trim()).ok_or_else(bad)?;
    let seconds = match unit.to_ascii_lowercase().as_str() {
        "ms" => number / 1000.0,
        "" | "s" => number,
        "m" | "min" => number * 60.0,
        "h" => number * 3600.0,
        _ => return Err(bad()),
    };
    let duration = Duration::try_from_secs_f64(seconds).map_err(|_| bad())?;
    if duration > wtq_client::message::MAX_DURATION {
        return Err(ParseError(format!(
            "duration `{text}` is too long: at most 10 years (87600h)"
        )));
    }
    Ok(duration)
}

/// Parses a count such as a fuel budget: digits, optionally with `_` separators or a
/// scientific suffix (`1e9`).
pub fn parse_count(text: &str) -> Result<u64, ParseError> {
    let bad = || {
        ParseError(format!(
            "invalid number `{text}`: use digits, e.g. 1000000 or 1e9"
        ))
    };
    let cleaned = text.trim().replace('_', "");
    if let Ok(n) = cleaned.parse::<u64>() {
        return Ok(n);
    }
    let float: f64 = cleaned.parse().map_err(|_| bad())?;
    if float.fract() != 0.0 || !(0.0..=u64::MAX as f64).contains(&float) {
        return Err(bad());
    }
    Ok(float as u64)
}

/// Prints a byte size with a binary unit, e.g. `64MiB` or `1.5KiB`.
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 3] = [("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)];
    for (unit, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            return if value.fract() == 0.0 {
                format!("{value}{unit}")
            } else {
                format!("{value:.1}{unit}")
            };
        }
    }
    format!("{bytes}B")
}

/// Prints a duration compactly, e.g. `1.5s`, `250ms`, `42µs`.
pub fn format_duration(duration: Duration) -> String {
    let micros = duration.as_secs_f64() * 1e6;
    if micros >= 1e6 {
        format!("{:.3}s", micros / 1e6)
    } else if micros >= 1e3 {
        format!("{:.2}ms", micros / 1e3)
    } else {
        format!("{micros:.1}µs")
    }
}

/// Parses an RFC 3339 timestamp (`2026-11-21T21:00:00Z`, `…T21:00:00.5+01:00`) into Unix
/// milliseconds.
pub fn parse_rfc3339(text: &str) -> Result<u64, ParseError> {
    let bad = || {
        ParseError(format!(
            "invalid time `{text}`: use RFC 3339, e.g. 2026-11-21T21:00:00Z or 2026-11-21T22:00:00+01:00"
        ))
    };
    let text = text.trim();
    let b = text.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| -> Result<i64, ParseError> {
        text.get(range)
            .filter(|s| s.bytes().all(|c| c.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err(bad());
    }
    let mut rest = &text[19..];
    let mut millis = 0i64;
    if let Some(fraction) = rest.strip_prefix('.') {
        let digits = fraction.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad());
        }
        let padded = format!("{:0<3}", &fraction[..digits.min(3)]);
        millis = padded.parse().map_err(|_| bad())?;
        rest = &fraction[digits..];
    }
    let offset_minutes = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && matches!(&rest[..1], "+" | "-") && &rest[3..4] == ":" => {
            let hours: i64 = rest[1..3].parse().map_err(|_| bad())?;
            let minutes: i64 = rest[4..6].parse().map_err(|_| bad())?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (hours * 60 + minutes)
        }
        _ => return Err(bad()),
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    u64::try_from(seconds * 1000 + millis).map_err(|_| bad())
}

/// Prints Unix milliseconds as RFC 3339 in UTC, to the second: `2026-11-21T21:00:00Z`.
pub fn format_rfc3339(unix_ms: u64) -> String {
    let seconds = (unix_ms / 1000) as i64;
    let (days, time) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

// Howard Hinnant's algorithms for the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    };
    let year = year_of_era + era * 400 + if month <= 2 { 1 } else { 0 };
    (year, month, day)
}

fn split_number(text: &str) -> Option<(f64, &str)> {
    let end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(end);
    let number: f64 = number.replace('_', "").parse().ok()?;
    Some((number, unit.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let check = |input: &str, expected: Option<u64>| {
            assert_eq!(parse_bytes(input).ok(), expected, "{input}");
        };
        check("64MiB", Some(64 << 20));
        check("64mib", Some(64 << 20));
        check("1.5KiB", Some(1536));
        check("1GB", Some(1_000_000_000));
        check("4096", Some(4096));
        check(" 2 MiB ", Some(2 << 20));
        check("lots", None);
        check("", None);
        check("-1MiB", None);
        check("12XB", None);
    }

    #[test]
    fn durations() {
        let check = |input: &str, expected: Option<Duration>| {
            assert_eq!(parse_duration(input).ok(), expected, "{input}");
        };
        check("2s", Some(Duration::from_secs(2)));
        check("500ms", Some(Duration::from_millis(500)));
        check("1.5m", Some(Duration::from_secs(90)));
        check("1h", Some(Duration::from_secs(3600)));
        check("3", Some(Duration::from_secs(3)));
        check("soon", None);
        check("4000000000000000h", None);
        check("2 weeks", None);
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("1000000").ok(), Some(1_000_000));
        assert_eq!(parse_count("1_000").ok(), Some(1000));
        assert_eq!(parse_count("1e9").ok(), Some(1_000_000_000));
        assert!(parse_count("1.5").is_err());
        assert!(parse_count("many").is_err());
        assert!(parse_count("-3").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(64 << 20), "64MiB");
        assert_eq!(format_bytes(1536), "1.5KiB");
        assert_eq!(format_bytes(12), "12B");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.500s");
        assert_eq!(format_duration(Duration::from_micros(42)), "42.0µs");
    }

    #[test]
    fn timestamps() {
        let check = |text: &str, expected: Option<u64>| {
            assert_eq!(parse_rfc3339(text).ok(), expected, "{text}");
        };
        check("1970-01-01T00:00:00Z", Some(0));
        check("2026-11-21T21:00:00Z", Some(1_795_294_800_000));
        check("2026-11-21T22:00:00+01:00", Some(1_795_294_800_000));
        check("2026-11-21T21:00:00.25Z", Some(1_795_294_800_250));
        check("2024-02-29T12:00:00Z", Some(1_709_208_000_000));
        check("2026-13-01T00:00:00Z", None);
        check("tomorrow", None);
        check("2026-11-21 21:00", None);
        assert_eq!(format_rfc3339(1_795_294_800_250), "2026-11-21T21:00:00Z");
        assert_eq!(format_rfc3339(1_709_208_000_000), "2024-02-29T12:00:00Z");
    }

    #[test]
    fn error_names_the_value() {
        let message = parse_bytes("lots").unwrap_err().to_string();
        assert!(
            message.contains("`lots`") && message.contains("64MiB"),
            "{message}"
        );
    }
}
