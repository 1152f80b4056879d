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
    Duration::try_from_secs_f64(seconds).map_err(|_| bad())
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
    fn error_names_the_value() {
        let message = parse_bytes("lots").unwrap_err().to_string();
        assert!(
            message.contains("`lots`") && message.contains("64MiB"),
            "{message}"
        );
    }
}
