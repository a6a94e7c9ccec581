//! Units as types. A FLOP count, a FLOP/s rate, a duration in seconds and
//! accelerator-seconds are all `f64` underneath, and confusing them is the
//! classic bug of compute accounting (TFLOP/s × hours ≠ FLOP). Each gets its
//! own newtype, and only the physically meaningful products exist:
//! `FlopPerSecond × Seconds = Flop`, `count × Seconds = AcceleratorSeconds`.

use std::fmt;
use std::fmt::Write as _;
use std::iter::Sum;
use std::ops::{Add, AddAssign, Mul, Sub};

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};

/// Formats a magnitude the way compute is quoted: `3.2e24`, `1e25`,
/// `6.15e23`. Three significant figures at most, trailing zeros dropped.
pub fn sci(value: f64) -> String {
    let mut out = String::with_capacity(12);
    // Writing into a String cannot fail.
    let _ = write_sci(&mut out, value);
    out
}

/// [`sci`] written straight into `out` (no allocation).
pub fn write_sci(out: &mut impl fmt::Write, value: f64) -> fmt::Result {
    if value == 0.0 {
        return out.write_str("0");
    }
    if !value.is_finite() {
        return write!(out, "{value}");
    }
    let mut buf = StackBuf::default();
    write!(buf, "{value:.2e}")?;
    let s = buf.as_str();
    let (mantissa, exp) = s.split_once('e').unwrap_or((s, "0"));
    let mantissa = if mantissa.contains('.') {
        mantissa.trim_end_matches('0').trim_end_matches('.')
    } else {
        mantissa
    };
    out.write_str(mantissa)?;
    out.write_char('e')?;
    out.write_str(exp)
}

/// A small formatting buffer on the stack (`{:.2e}` of an f64 is at most
/// 11 bytes; more is refused, never truncated silently).
#[derive(Default)]
struct StackBuf {
    bytes: [u8; 32],
    len: usize,
}

impl StackBuf {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len]).unwrap_or("")
    }
}

impl fmt::Write for StackBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        let dst = self.bytes.get_mut(self.len..end).ok_or(fmt::Error)?;
        dst.copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Accepts a JSON/YAML number or a string such as `"1e25"` (YAML 1.1 readers
/// turn `1e25` into a string), so policies copied from documents just work.
fn de_number<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrStr {
        Num(f64),
        Str(String),
    }
    match NumOrStr::deserialize(d)? {
        NumOrStr::Num(v) => Ok(v),
        NumOrStr::Str(s) => s.trim().parse::<f64>().map_err(|_| {
            serde::de::Error::custom(format!("{what} must be a number such as 1e25, got {s:?}"))
        }),
    }
}

macro_rules! unit {
    ($(#[$m:meta])* $name:ident, $unit:literal) => {
        $(#[$m])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, PartialOrd, Serialize, JsonSchema)]
        #[serde(transparent)]
        pub struct $name(pub f64);

        impl $name {
            pub const ZERO: $name = $name(0.0);
            pub fn get(self) -> f64 {
                self.0
            }
            pub fn max(self, other: $name) -> $name {
                if other.0 > self.0 { other } else { self }
            }
            pub fn min(self, other: $name) -> $name {
                if other.0 < self.0 { other } else { self }
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                de_number(d, $unit).map($name)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write_sci(f, self.0)?;
                write!(f, " {}", $unit)
            }
        }

        impl Add for $name {
            type Output = $name;
            fn add(self, o: $name) -> $name {
                $name(self.0 + o.0)
            }
        }
        impl Sub for $name {
            type Output = $name;
            fn sub(self, o: $name) -> $name {
                $name(self.0 - o.0)
            }
        }
        impl AddAssign for $name {
            fn add_assign(&mut self, o: $name) {
                self.0 += o.0;
            }
        }
        impl Mul<f64> for $name {
            type Output = $name;
            fn mul(self, k: f64) -> $name {
                $name(self.0 * k)
            }
        }
        impl Sum for $name {
            fn sum<I: Iterator<Item = $name>>(iter: I) -> $name {
                $name(iter.map(|v| v.0).sum())
            }
        }
    };
}

unit!(
    /// A count of floating-point operations (1 FMA = 2 FLOP).
    Flop,
    "FLOP"
);
unit!(
    /// A rate of floating-point operations per second.
    FlopPerSecond,
    "FLOP/s"
);
unit!(
    /// A duration in seconds, for compute arithmetic.
    Seconds,
    "s"
);
unit!(
    /// Accelerator count × wall-clock seconds (GPU-seconds).
    AcceleratorSeconds,
    "accelerator-seconds"
);

impl Mul<Seconds> for FlopPerSecond {
    type Output = Flop;
    fn mul(self, s: Seconds) -> Flop {
        Flop(self.0 * s.0)
    }
}

impl Seconds {
    pub fn from_duration(d: std::time::Duration) -> Seconds {
        Seconds(d.as_secs_f64())
    }
}

impl AcceleratorSeconds {
    pub fn of(count: u32, s: Seconds) -> AcceleratorSeconds {
        AcceleratorSeconds(f64::from(count) * s.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sci_formats_like_papers() {
        assert_eq!(sci(3.2e24), "3.2e24");
        assert_eq!(sci(1e25), "1e25");
        assert_eq!(sci(6.15e23), "6.15e23");
        assert_eq!(sci(0.0), "0");
        assert_eq!(format!("{}", Flop(3.8e25)), "3.8e25 FLOP");
        assert_eq!(sci(-1.2345e-7), "-1.23e-7");
        assert_eq!(sci(f64::MAX), "1.8e308");
        assert_eq!(sci(f64::INFINITY), "inf");
    }

    #[test]
    fn rate_times_time_is_flop() {
        let f = FlopPerSecond(989e12) * Seconds(3600.0);
        assert!((f.0 - 3.5604e18).abs() < 1e12);
    }

    #[test]
    fn flop_reads_numbers_and_strings() {
        let a: Flop = serde_json::from_str("1e25").unwrap();
        let b: Flop = serde_json::from_str("\"1e25\"").unwrap();
        assert_eq!(a, b);
        let err = serde_json::from_str::<Flop>("\"ten\"").unwrap_err();
        assert!(err.to_string().contains("FLOP must be a number"));
    }
}
