//! Durations as users write them in a StreamJob (`500ms`, `10s`, `5m`, `1h30m`): the schema pattern the
//! API server enforces and the parser the operator and the worker use. Pure: no I/O.

use std::str::FromStr;
use std::time::Duration;

/// Pattern for duration fields, enforced by the API server through the CRD schema (no CEL needed).
/// One or more `<number><unit>` groups with units `ms`, `s`, `m`, `h` (Go's `time.ParseDuration` subset).
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A duration string that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text is not a duration at all.
    #[error("invalid duration {input:?}: write it like 500ms, 10s, 5m or 1h30m")]
    Syntax { input: String },
    /// The text is a negative duration.
    #[error("invalid duration {input:?}: durations must not be negative")]
    Negative { input: String },
}

/// Parse a duration written like `500ms`, `10s`, `5m`, `1h30m`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let trimmed = input.trim();
    if trimmed.is_empty() || trimmed.starts_with('+') {
        return Err(DurationError::Syntax {
            input: input.to_string(),
        });
    }
    let parsed = kube::core::Duration::from_str(trimmed).map_err(|_| DurationError::Syntax {
        input: input.to_string(),
    })?;
    if parsed.is_negative() {
        return Err(DurationError::Negative {
            input: input.to_string(),
        });
    }
    Ok(parsed.into())
}

/// Format a duration the way users write them (`1h30m`, `10s`, `250ms`), the inverse of [`parse_duration`]
/// for whole milliseconds.
pub fn format_duration(duration: Duration) -> String {
    let mut ms = duration.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        if ms >= size {
            out.push_str(&format!("{}{}", ms / size, unit));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_common_forms() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
    }

    #[test]
    fn rejects_garbage_and_negative() {
        assert!(matches!(
            parse_duration("ten seconds"),
            Err(DurationError::Syntax { .. })
        ));
        assert!(matches!(
            parse_duration(""),
            Err(DurationError::Syntax { .. })
        ));
        assert!(matches!(
            parse_duration("10"),
            Err(DurationError::Syntax { .. })
        ));
        assert!(matches!(
            parse_duration("-5s"),
            Err(DurationError::Negative { .. })
        ));
    }

    #[test]
    fn format_round_trips() {
        for text in ["250ms", "10s", "5m", "1h30m", "2h0m5s"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)).unwrap(), parsed);
        }
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
    }

    #[test]
    fn pattern_matches_what_the_parser_accepts() {
        let pattern = regex::Regex::new(DURATION_PATTERN).unwrap();
        for ok in ["500ms", "10s", "1h30m", "1.5s"] {
            assert!(pattern.is_match(ok), "{ok} should match the schema pattern");
            assert!(parse_duration(ok).is_ok());
        }
        for bad in ["10", "s", "-1s", "1d", "ten", ""] {
            assert!(
                !pattern.is_match(bad),
                "{bad} should not match the schema pattern"
            );
            assert!(parse_duration(bad).is_err());
        }
    }
}
