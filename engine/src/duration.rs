//! Durations as people write them in manifests: Go's `time.ParseDuration`
//! syntax (`72h30m`, `1.5h`, `90s`, `500ms`) extended with `d` (24 h) and
//! `w` (7 d) for budget windows such as `30d`. Kubernetes users know the Go
//! syntax from every other controller; the extension is what budgets need.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::units::Seconds;

/// The accepted syntax, quoted in every parse error.
pub const DURATION_SYNTAX: &str = "a sequence of numbers with units, e.g. 72h30m, 1.5h, 90s, 30d (units: ms, s, m, h, d = 24h, w = 7d)";

/// A positive or zero duration written in Go syntax.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected {DURATION_SYNTAX}")]
pub struct DurationError {
    pub input: String,
}

impl GoDuration {
    pub fn from_secs(s: u64) -> Self {
        GoDuration(Duration::from_secs(s))
    }
    pub fn as_secs_f64(self) -> f64 {
        self.0.as_secs_f64()
    }
    pub fn seconds(self) -> Seconds {
        Seconds(self.0.as_secs_f64())
    }
    pub fn as_millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }
    pub fn is_zero(self) -> bool {
        self.0.is_zero()
    }
}

impl FromStr for GoDuration {
    type Err = DurationError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = || DurationError {
            input: input.to_string(),
        };
        let s = input.trim();
        if s.is_empty() {
            return Err(err());
        }
        if s == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        let mut total = 0f64; // seconds
        let mut rest = s;
        while !rest.is_empty() {
            let num_len = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(err)?;
            if num_len == 0 {
                return Err(err());
            }
            let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
            rest = &rest[num_len..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(rest.len());
            let factor = match &rest[..unit_len] {
                "ms" => 0.001,
                "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86_400.0,
                "w" => 604_800.0,
                _ => return Err(err()),
            };
            rest = &rest[unit_len..];
            total += value * factor;
        }
        if !total.is_finite() || total > 1e15 {
            return Err(err());
        }
        Ok(GoDuration(Duration::from_secs_f64(total)))
    }
}

impl fmt::Display for GoDuration {
    /// Canonical form: largest units first, no zero parts (`72h30m`, `30d`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return write!(f, "0s");
        }
        for (unit, size) in [
            ("d", 86_400_000u128),
            ("h", 3_600_000),
            ("m", 60_000),
            ("s", 1_000),
            ("ms", 1),
        ] {
            if ms >= size {
                write!(f, "{}{}", ms / size, unit)?;
                ms %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(\\.[0-9]+)?(ms|s|m|h|d|w))+$|^0$",
            "description": "A duration in Go syntax, e.g. 72h30m, 90s; d (24h) and w (7d) are also accepted."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_syntax_and_days() {
        assert_eq!(
            "72h30m".parse::<GoDuration>().unwrap().0.as_secs(),
            72 * 3600 + 1800
        );
        assert_eq!("1.5h".parse::<GoDuration>().unwrap().0.as_secs(), 5400);
        assert_eq!("30d".parse::<GoDuration>().unwrap().0.as_secs(), 30 * 86400);
        assert_eq!("500ms".parse::<GoDuration>().unwrap().0.as_millis(), 500);
        assert_eq!("0".parse::<GoDuration>().unwrap().0.as_secs(), 0);
    }

    #[test]
    fn rejects_with_syntax_in_message() {
        for bad in ["", "72", "h", "3 days", "1y", "-5m", "1e3h"] {
            let e = bad.parse::<GoDuration>().unwrap_err();
            assert!(e.to_string().contains("72h30m"), "{bad}: {e}");
        }
    }

    #[test]
    fn displays_canonically() {
        let d: GoDuration = "90m".parse().unwrap();
        assert_eq!(d.to_string(), "1h30m");
        let d: GoDuration = "720h".parse().unwrap();
        assert_eq!(d.to_string(), "30d");
    }
}
