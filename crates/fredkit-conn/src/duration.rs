//! Human durations in configuration: `500ms`, `5s`, `2m`, or a bare number of milliseconds.

use std::time::Duration;

/// Parses `"250ms"`, `"1.5s"`, `"5s"`, `"2m"`, `"1h"` or `"1000"` (milliseconds).
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration (use e.g. 500ms, 5s, 2m)"))?;
    let millis = match unit.trim() {
        "" | "ms" => value,
        "s" => value * 1_000.0,
        "m" | "min" => value * 60_000.0,
        "h" => value * 3_600_000.0,
        other => {
            return Err(format!(
                "'{text}' has an unknown unit '{other}' (use ms, s, m or h)"
            ))
        }
    };
    if !millis.is_finite() || !(0.0..=1e15).contains(&millis) {
        return Err(format!("'{text}' is out of range"));
    }
    Ok(Duration::from_micros((millis * 1_000.0).round() as u64))
}

/// A duration in a config file: a string like `"5s"` or a number of milliseconds.
#[derive(serde::Deserialize)]
#[serde(untagged)]
pub(crate) enum DurationSpec {
    Millis(u64),
    Text(String),
}

impl DurationSpec {
    pub(crate) fn to_duration(&self, field: &str) -> Result<Duration, String> {
        match self {
            DurationSpec::Millis(ms) => Ok(Duration::from_millis(*ms)),
            DurationSpec::Text(t) => parse_duration(t).map_err(|e| format!("{field}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    #[rstest]
    #[case("500ms", 500)]
    #[case("5s", 5_000)]
    #[case("1.5s", 1_500)]
    #[case("2m", 120_000)]
    #[case("1h", 3_600_000)]
    #[case("750", 750)]
    #[case(" 3s ", 3_000)]
    fn durations_parse(#[case] text: &str, #[case] ms: u64) {
        assert_eq!(parse_duration(text), Ok(Duration::from_millis(ms)));
    }

    #[rstest]
    #[case("")]
    #[case("s")]
    #[case("5 parsecs")]
    #[case("-1s")]
    #[case("1e400s")]
    fn bad_durations_are_errors_not_panics(#[case] text: &str) {
        assert!(parse_duration(text).is_err());
    }
}
