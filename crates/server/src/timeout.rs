//! The `timeout` field: RFC 3339 instants in, RFC 3339 whole seconds out.

use std::str::FromStr;

use jiff::Timestamp;

use crate::storage::DeadlineMs;

/// Parses a client's deadline. Any RFC 3339 instant is accepted, with any offset and with or
/// without fractional seconds. Sub-millisecond fractions round *up*, so a key is never
/// treated as expired before the instant the client named.
pub fn parse_deadline(text: &str) -> Result<DeadlineMs, String> {
    let ts = Timestamp::from_str(text).map_err(|e| {
        format!(
            "invalid timeout {text:?}: expected an RFC 3339 timestamp such as 2026-01-01T00:00:10+00:00 ({e})"
        )
    })?;
    let nanos = ts.as_nanosecond();
    if nanos <= 0 {
        return Ok(0);
    }
    // Positive here, so this is a ceiling division.
    let ms = (nanos + 999_999) / 1_000_000;
    Ok(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Formats a deadline for `kv.TTL`: UTC, whole seconds rounded up (never earlier than the
/// real deadline), no fraction, since the PHP client's `DATE_RFC3339` parser rejects one.
pub fn format_deadline(deadline: DeadlineMs) -> String {
    let seconds = deadline.div_ceil(1000);
    match i64::try_from(seconds)
        .ok()
        .and_then(|s| Timestamp::from_second(s).ok())
    {
        Some(ts) => ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        // Only reachable for deadlines past year 9999, which parse_deadline cannot produce.
        None => "9999-12-31T23:59:59Z".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_any_offset_and_fractions() {
        let base = parse_deadline("2026-01-01T00:00:10Z").unwrap();
        assert_eq!(base, 1_767_225_610_000);
        assert_eq!(parse_deadline("2026-01-01T00:00:10+00:00").unwrap(), base);
        assert_eq!(parse_deadline("2026-01-01T02:00:10+02:00").unwrap(), base);
        assert_eq!(parse_deadline("2025-12-31T19:00:10-05:00").unwrap(), base);
        assert_eq!(
            parse_deadline("2026-01-01T00:00:10.250Z").unwrap(),
            base + 250
        );
        assert_eq!(
            parse_deadline("2026-01-01T00:00:10.2501Z").unwrap(),
            base + 251,
            "rounds up"
        );
        assert_eq!(parse_deadline("1960-01-01T00:00:00Z").unwrap(), 0);
    }

    #[test]
    fn rejects_garbage_and_quotes_it() {
        let e = parse_deadline("tomorrow").unwrap_err();
        assert!(e.starts_with("invalid timeout \"tomorrow\""), "{e}");
        assert!(parse_deadline("2026-01-01").is_err());
        assert!(
            parse_deadline("2026-01-01T00:00:10").is_err(),
            "an offset is required"
        );
    }

    #[test]
    fn formats_whole_seconds_rounded_up() {
        assert_eq!(format_deadline(1_767_225_610_000), "2026-01-01T00:00:10Z");
        assert_eq!(format_deadline(1_767_225_610_001), "2026-01-01T00:00:11Z");
        assert_eq!(format_deadline(1_767_225_609_999), "2026-01-01T00:00:10Z");
    }
}
