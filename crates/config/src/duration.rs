//! Go-style durations (`"90s"`, `"1h30m"`, `"1.5h"`, `"300ms"`) as gitlab-runner's
//! `config.toml` writes them.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// Why a string is not a Go duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The string does not follow Go's `time.ParseDuration` grammar.
    #[error("{0:?} is not a duration (examples: \"90s\", \"5m\", \"1h30m\", \"1.5h\", \"300ms\")")]
    Syntax(String),
    /// Negative durations mean nothing in this configuration.
    #[error("{0:?} is negative; durations here must be zero or more")]
    Negative(String),
    /// Larger than Go's int64 nanoseconds.
    #[error("{0:?} is too long (Go durations end at about 292 years)")]
    TooLarge(String),
}

/// A non-negative duration read from a Go duration string, or from an integer meaning
/// nanoseconds (which is how gitlab-runner's TOML decoder reads a bare number).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GoDuration {
    duration: Duration,
    from_integer: bool,
}

impl GoDuration {
    /// A duration from a `std` duration.
    pub const fn new(duration: Duration) -> Self {
        GoDuration {
            duration,
            from_integer: false,
        }
    }

    /// A duration of whole seconds.
    pub const fn from_secs(secs: u64) -> Self {
        GoDuration::new(Duration::from_secs(secs))
    }

    /// The duration.
    pub fn get(&self) -> Duration {
        self.duration
    }

    /// Whether the file gave a bare integer (nanoseconds), a common slip for seconds.
    pub fn was_integer(&self) -> bool {
        self.from_integer
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let nanos = parse_go_duration(input)?;
        if nanos < 0 {
            return Err(DurationError::Negative(input.to_owned()));
        }
        Ok(GoDuration::new(Duration::from_nanos(nanos as u64)))
    }
}

/// Parses Go's `time.ParseDuration` grammar into signed nanoseconds.
fn parse_go_duration(input: &str) -> Result<i128, DurationError> {
    let syntax = || DurationError::Syntax(input.to_owned());
    let (negative, mut rest) = match input.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, input.strip_prefix('+').unwrap_or(input)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..number_len];
        if number.is_empty() || number == "." || number.matches('.').count() > 1 {
            return Err(syntax());
        }
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(syntax()),
        };
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let whole: i128 = if whole.is_empty() {
            0
        } else {
            whole
                .parse()
                .map_err(|_| DurationError::TooLarge(input.to_owned()))?
        };
        let mut part = whole
            .checked_mul(scale)
            .ok_or_else(|| DurationError::TooLarge(input.to_owned()))?;
        // Fractions truncate to whole nanoseconds, as Go does.
        let mut frac_scale = scale;
        for digit in fraction.bytes().take(30) {
            frac_scale /= 10;
            part += i128::from(digit - b'0') * frac_scale;
        }
        total = total
            .checked_add(part)
            .ok_or_else(|| DurationError::TooLarge(input.to_owned()))?;
        if total > i128::from(i64::MAX) {
            return Err(DurationError::TooLarge(input.to_owned()));
        }
    }
    Ok(if negative { -total } else { total })
}

impl fmt::Display for GoDuration {
    /// Formats like Go's `Duration.String`: `1h30m0s`, `1.5s`, `300ms`, `0s`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nanos = self.duration.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        if nanos < 1_000_000_000 {
            let (value, unit) = if nanos < 1_000 {
                return write!(f, "{nanos}ns");
            } else if nanos < 1_000_000 {
                (nanos as f64 / 1e3, "µs")
            } else {
                (nanos as f64 / 1e6, "ms")
            };
            return write!(f, "{value}{unit}");
        }
        let hours = nanos / 3_600_000_000_000;
        let minutes = (nanos / 60_000_000_000) % 60;
        let secs_nanos = nanos % 60_000_000_000;
        let secs = secs_nanos / 1_000_000_000;
        let frac = secs_nanos % 1_000_000_000;
        let seconds = if frac == 0 {
            format!("{secs}s")
        } else {
            let digits = format!("{frac:09}");
            format!("{secs}.{}s", digits.trim_end_matches('0'))
        };
        if hours > 0 {
            write!(f, "{hours}h{minutes}m{seconds}")
        } else if minutes > 0 {
            write!(f, "{minutes}m{seconds}")
        } else {
            f.write_str(&seconds)
        }
    }
}

impl fmt::Debug for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GoDuration({self})")
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = GoDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Go duration string such as \"5m\" or \"1h30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<GoDuration, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<GoDuration, E> {
                if v < 0 {
                    return Err(E::custom(format!(
                        "{v} is negative; durations here must be zero or more"
                    )));
                }
                Ok(GoDuration {
                    duration: Duration::from_nanos(v as u64),
                    from_integer: true,
                })
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<GoDuration, E> {
                Ok(GoDuration {
                    duration: Duration::from_nanos(v),
                    from_integer: true,
                })
            }
        }
        deserializer.deserialize_any(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Duration {
        s.parse::<GoDuration>()
            .unwrap_or_else(|e| panic!("{s}: {e}"))
            .get()
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(d("0"), Duration::ZERO);
        assert_eq!(d("0s"), Duration::ZERO);
        assert_eq!(d("90s"), Duration::from_secs(90));
        assert_eq!(d("5m"), Duration::from_secs(300));
        assert_eq!(d("1h30m"), Duration::from_secs(5400));
        assert_eq!(d("1.5h"), Duration::from_secs(5400));
        assert_eq!(d("300ms"), Duration::from_millis(300));
        assert_eq!(d("2us"), Duration::from_micros(2));
        assert_eq!(d("2µs"), Duration::from_micros(2));
        assert_eq!(d("2μs"), Duration::from_micros(2));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("+1m1s"), Duration::from_secs(61));
        assert_eq!(d(".5s"), Duration::from_millis(500));
        assert_eq!(d("1h0m0s"), Duration::from_secs(3600));
    }

    #[test]
    fn rejects_bad_durations() {
        for bad in ["", "5", "1d", "h", "1.2.3s", "5 m", "m5", "-", "1e3s", "."] {
            assert!(
                matches!(bad.parse::<GoDuration>(), Err(DurationError::Syntax(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(
            "-5m".parse::<GoDuration>(),
            Err(DurationError::Negative(_))
        ));
        assert!(matches!(
            "3000000h".parse::<GoDuration>(),
            Err(DurationError::TooLarge(_))
        ));
    }

    #[test]
    fn displays_like_go() {
        let show = |s: &str| s.parse::<GoDuration>().unwrap().to_string();
        assert_eq!(show("0"), "0s");
        assert_eq!(show("90s"), "1m30s");
        assert_eq!(show("1h"), "1h0m0s");
        assert_eq!(show("1.5s"), "1.5s");
        assert_eq!(show("300ms"), "300ms");
        assert_eq!(show("15m"), "15m0s");
    }
}
