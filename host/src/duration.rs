//! Durations as users write them: the original's plain integers (in the setting's own unit) or human forms
//! such as `200ms`, `1.5s`, `3m`, `2h`, `1d`.

use std::time::Duration;

use thiserror::Error;

/// A duration could not be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error(
    "invalid duration {text:?}: use a number of {unit}, or a number with a unit (us, ms, s, m, h, d), e.g. \"200ms\""
)]
pub struct InvalidDuration {
    text: String,
    unit: &'static str,
}

/// The unit a bare number is read in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BareUnit {
    /// `execute_usleep`.
    Micros,
    /// Everything else.
    Seconds,
}

/// Parses `text`; a bare number is taken in `bare` units. Negative values are refused here: settings where a
/// negative number means something (`check_interval`) handle it before calling this.
pub fn parse(text: &str, bare: BareUnit) -> Result<Duration, InvalidDuration> {
    let unit_name = match bare {
        BareUnit::Micros => "microseconds",
        BareUnit::Seconds => "seconds",
    };
    let fail = || InvalidDuration { text: text.to_owned(), unit: unit_name };
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: f64 = number.parse().map_err(|_| fail())?;
    let seconds_per_unit = match (unit.trim(), bare) {
        ("", BareUnit::Micros) | ("us" | "µs", _) => 1e-6,
        ("", BareUnit::Seconds) | ("s" | "sec", _) => 1.0,
        ("ms", _) => 1e-3,
        ("m" | "min", _) => 60.0,
        ("h", _) => 3600.0,
        ("d", _) => 86400.0,
        _ => return Err(fail()),
    };
    let seconds = value * seconds_per_unit;
    if !seconds.is_finite() || !(0.0..=1e12).contains(&seconds) {
        return Err(fail());
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_bare_numbers_in_the_settings_unit_and_human_forms() {
        assert_eq!(parse("200000", BareUnit::Micros).unwrap(), Duration::from_millis(200));
        assert_eq!(parse("300", BareUnit::Seconds).unwrap(), Duration::from_secs(300));
        assert_eq!(parse("200ms", BareUnit::Seconds).unwrap(), Duration::from_millis(200));
        assert_eq!(parse("1.5s", BareUnit::Micros).unwrap(), Duration::from_millis(1500));
        assert_eq!(parse("3h", BareUnit::Seconds).unwrap(), Duration::from_secs(3 * 3600));
    }

    #[test]
    fn refuses_garbage() {
        for text in ["", "abc", "5 parsecs", "-1", "1e400", "ms"] {
            assert!(parse(text, BareUnit::Seconds).is_err(), "{text}");
        }
    }
}
