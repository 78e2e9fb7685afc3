//! Parsers for one variable's value (numbers, durations, flags), each failing with an
//! error that names the variable.

use std::str::FromStr;
use std::time::Duration;

use super::ConfigError;

pub(super) fn parse<T: FromStr>(name: &'static str, value: Option<String>, default: T) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    match value {
        None => Ok(default),
        Some(v) => v.trim().parse().map_err(|e| ConfigError { var: name, reason: format!("{v:?}: {e}") }),
    }
}

pub(super) fn positive<T: FromStr + PartialOrd + Default>(
    name: &'static str,
    value: Option<String>,
    default: T,
) -> Result<T, ConfigError>
where
    T::Err: std::fmt::Display,
{
    let v = parse(name, value, default)?;
    if v <= T::default() {
        return Err(ConfigError { var: name, reason: "must be greater than zero".into() });
    }
    Ok(v)
}

/// The longest time a setting in seconds or milliseconds may name (ten years): a longer one
/// would overflow the clock arithmetic done with it (a timer's deadline, a token's expiry)
/// and panic whatever uses it, long after start-up.
pub(super) const MAX_SECS: u64 = 10 * 365 * 86_400;

/// The longest retention age (`CHAT_ARCHIVE_AFTER_DAYS`, `CHAT_PURGE_AFTER_DAYS`): about 273
/// years, "never" in practice, while the cutoff date (now minus the age) still exists.
const MAX_DAYS: u64 = 100_000;

/// Refuses `value` (in `unit`) over `max`.
pub(super) fn at_most(name: &'static str, value: u64, max: u64, unit: &str) -> Result<u64, ConfigError> {
    if value > max {
        return Err(ConfigError { var: name, reason: format!("{value} {unit} is more than the most allowed, {max}") });
    }
    Ok(value)
}

/// A number of seconds, greater than zero and at most [`MAX_SECS`].
pub(super) fn secs(name: &'static str, value: Option<String>, default: u64) -> Result<Duration, ConfigError> {
    Ok(Duration::from_secs(at_most(name, positive(name, value, default)?, MAX_SECS, "seconds")?))
}

/// A number of milliseconds (0 allowed), at most [`MAX_SECS`] seconds.
pub(super) fn millis(name: &'static str, value: Option<String>, default: u64) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(at_most(name, parse(name, value, default)?, MAX_SECS * 1000, "milliseconds")?))
}

/// A number of days (0 allowed: at once), at most [`MAX_DAYS`].
pub(super) fn days(name: &'static str, value: Option<String>, default: u64) -> Result<Duration, ConfigError> {
    let days = at_most(name, parse(name, value, default)?, MAX_DAYS, "days")?;
    Ok(Duration::from_secs(days * 86_400))
}

pub(super) fn parse_bool(name: &'static str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::trim) {
        None => Ok(false),
        Some("1" | "true" | "yes" | "on") => Ok(true),
        Some("0" | "false" | "no" | "off") => Ok(false),
        Some(other) => Err(ConfigError { var: name, reason: format!("expected 1/0/true/false, got {other:?}") }),
    }
}

/// Parses `90`, `90s`, `15m`, `24h` or `7d`.
pub(super) fn parse_duration(
    name: &'static str,
    value: Option<String>,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(v) = value else { return Ok(default) };
    let v = v.trim();
    let (digits, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = digits.parse().map_err(|_| ConfigError {
        var: name,
        reason: format!("{v:?} is not a duration like 3600, 90s, 15m, 24h, 7d"),
    })?;
    let unit_secs: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(ConfigError { var: name, reason: format!("unknown unit in {v:?} (s, m, h, d)") }),
    };
    let secs = n.saturating_mul(unit_secs);
    if secs == 0 {
        return Err(ConfigError { var: name, reason: "must be greater than zero".into() });
    }
    Ok(Duration::from_secs(at_most(name, secs, MAX_SECS, "seconds")?))
}
