//! Kubernetes resource quantities (`500m`, `2`, `8Gi`, `1e3`, `100M`) with exact arithmetic.
//!
//! A quantity is held as a whole number of nano-units (10⁻⁹), which represents every
//! suffix Kubernetes accepts exactly: `1Ei` is 2⁶⁰ units, far inside `i128`. Like the
//! Kubernetes API server, anything finer than `1n` is rounded up.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

const NANOS_PER_UNIT: i128 = 1_000_000_000;

/// Why a string is not a Kubernetes quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// Nothing was given.
    #[error("is empty")]
    Empty,
    /// The string does not follow the quantity grammar.
    #[error(
        "{0:?} is not a Kubernetes quantity (examples: \"500m\", \"2\", \"1.5\", \"512Mi\", \"8Gi\", \"1e3\")"
    )]
    Syntax(String),
    /// The value does not fit.
    #[error("{0:?} is too large for a Kubernetes quantity")]
    TooLarge(String),
}

/// A Kubernetes quantity: compared and added by value, displayed as written.
#[derive(Clone)]
pub struct Quantity {
    nanos: i128,
    text: String,
}

impl Quantity {
    /// The quantity with exactly `nanos` nano-units, displayed in a canonical form.
    pub fn from_nanos(nanos: i128) -> Self {
        Quantity {
            nanos,
            text: canonical_text(nanos),
        }
    }

    /// Zero.
    pub fn zero() -> Self {
        Quantity::from_nanos(0)
    }

    /// The value in nano-units (`1` is 10⁹, `1m` is 10⁶).
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// The value in milli-units, rounded up (CPU millicores).
    pub fn millis_ceil(&self) -> i128 {
        div_ceil(self.nanos, 1_000_000)
    }

    /// The value in whole units, rounded up (bytes for memory and storage).
    pub fn units_ceil(&self) -> i128 {
        div_ceil(self.nanos, NANOS_PER_UNIT)
    }

    /// The value as a float (CPU cores, bytes); for display and cost estimates only.
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / NANOS_PER_UNIT as f64
    }

    /// Whether the value is zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The text as it was written (or the canonical form for computed values).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The sum, or `None` on overflow.
    pub fn checked_add(&self, other: &Quantity) -> Option<Quantity> {
        self.nanos
            .checked_add(other.nanos)
            .map(Quantity::from_nanos)
    }

    /// The difference, or `None` on overflow.
    pub fn checked_sub(&self, other: &Quantity) -> Option<Quantity> {
        self.nanos
            .checked_sub(other.nanos)
            .map(Quantity::from_nanos)
    }

    /// The larger of two quantities.
    pub fn max(self, other: Quantity) -> Quantity {
        if other > self { other } else { self }
    }
}

fn div_ceil(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && (a > 0) == (b > 0) {
        q + 1
    } else {
        q
    }
}

/// A readable canonical form: binary suffixes for whole multiples of 1024, else plain
/// integers, else `m`, `u` or `n`.
fn canonical_text(nanos: i128) -> String {
    if nanos % NANOS_PER_UNIT == 0 {
        let units = nanos / NANOS_PER_UNIT;
        if units != 0 {
            for (suffix, factor) in [
                ("Ei", 1i128 << 60),
                ("Pi", 1 << 50),
                ("Ti", 1 << 40),
                ("Gi", 1 << 30),
                ("Mi", 1 << 20),
                ("Ki", 1 << 10),
            ] {
                if units % factor == 0 {
                    return format!("{}{suffix}", units / factor);
                }
            }
        }
        units.to_string()
    } else if nanos % 1_000_000 == 0 {
        format!("{}m", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!("{}u", nanos / 1_000)
    } else {
        format!("{nanos}n")
    }
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let nanos = parse_nanos(input)?;
        Ok(Quantity {
            nanos,
            text: input.to_owned(),
        })
    }
}

fn parse_nanos(input: &str) -> Result<i128, QuantityError> {
    if input.is_empty() {
        return Err(QuantityError::Empty);
    }
    let syntax = || QuantityError::Syntax(input.to_owned());
    let too_large = || QuantityError::TooLarge(input.to_owned());
    let bytes = input.as_bytes();
    let mut pos = 0;
    let negative = match bytes[0] {
        b'-' => {
            pos = 1;
            true
        }
        b'+' => {
            pos = 1;
            false
        }
        _ => false,
    };
    // Mantissa: digits, optional '.', digits; at least one digit overall.
    let mut mantissa: i128 = 0;
    let mut digits = 0usize;
    let mut fraction_digits: i32 = 0;
    let mut seen_dot = false;
    while pos < bytes.len() {
        match bytes[pos] {
            b'0'..=b'9' => {
                let d = i128::from(bytes[pos] - b'0');
                // Leading digits beyond i128 precision cannot be exact; refuse them.
                mantissa = mantissa
                    .checked_mul(10)
                    .and_then(|m| m.checked_add(d))
                    .ok_or_else(too_large)?;
                digits += 1;
                if seen_dot {
                    fraction_digits += 1;
                }
            }
            b'.' if !seen_dot => seen_dot = true,
            _ => break,
        }
        pos += 1;
    }
    if digits == 0 {
        return Err(syntax());
    }
    let suffix = &input[pos..];
    // Scale as value = mantissa * 10^dec_exp * 2^bin_exp.
    let (dec_exp, bin_exp): (i32, u32) = match suffix {
        "" => (0, 0),
        "n" => (-9, 0),
        "u" => (-6, 0),
        "m" => (-3, 0),
        "k" => (3, 0),
        "M" => (6, 0),
        "G" => (9, 0),
        "T" => (12, 0),
        "P" => (15, 0),
        "E" => (18, 0),
        "Ki" => (0, 10),
        "Mi" => (0, 20),
        "Gi" => (0, 30),
        "Ti" => (0, 40),
        "Pi" => (0, 50),
        "Ei" => (0, 60),
        s if s.starts_with(['e', 'E']) => {
            let exp = &s[1..];
            let body = exp.strip_prefix(['+', '-']).unwrap_or(exp);
            if body.is_empty() || !body.bytes().all(|b| b.is_ascii_digit()) || body.len() > 4 {
                return Err(syntax());
            }
            (exp.parse::<i32>().map_err(|_| syntax())?, 0)
        }
        _ => return Err(syntax()),
    };
    let mut value = mantissa
        .checked_mul(1i128 << bin_exp)
        .ok_or_else(too_large)?;
    let exp10 = 9 + dec_exp - fraction_digits;
    if exp10 >= 0 {
        let factor = 10i128.checked_pow(exp10 as u32).ok_or_else(too_large)?;
        value = value.checked_mul(factor).ok_or_else(too_large)?;
    } else {
        // Finer than a nano-unit: round up, as the API server does.
        let divisor = 10i128.checked_pow((-exp10) as u32);
        value = match divisor {
            Some(d) => div_ceil(value, d),
            None => i128::from(value != 0),
        };
    }
    // Kubernetes stores quantities as int64 with a scale; keep the same ceiling so
    // nothing we accept is refused by the API server.
    if value > i128::from(i64::MAX) * NANOS_PER_UNIT {
        return Err(too_large());
    }
    Ok(if negative { -value } else { value })
}

impl PartialEq for Quantity {
    fn eq(&self, other: &Self) -> bool {
        self.nanos == other.nanos
    }
}

impl Eq for Quantity {}

impl Hash for Quantity {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.nanos.hash(state);
    }
}

impl PartialOrd for Quantity {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Quantity {
    fn cmp(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Quantity({})", self.text)
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct QuantityVisitor;
        impl Visitor<'_> for QuantityVisitor {
            type Value = Quantity;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a Kubernetes quantity as a string, e.g. \"500m\" or \"8Gi\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Quantity, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Quantity, E> {
                Err(E::custom(format!(
                    "write quantities as strings, as gitlab-runner requires: \"{v}\" instead of {v}"
                )))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Quantity, E> {
                self.visit_i64(v as i64)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Quantity, E> {
                Err(E::custom(format!(
                    "write quantities as strings, as gitlab-runner requires: \"{v}\" instead of {v}"
                )))
            }
        }
        deserializer.deserialize_any(QuantityVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_suffix_exactly() {
        let cases: &[(&str, i128)] = &[
            ("0", 0),
            ("1", 1_000_000_000),
            ("500m", 500_000_000),
            ("0.5", 500_000_000),
            (".5", 500_000_000),
            ("5.", 5_000_000_000),
            ("+2", 2_000_000_000),
            ("-1", -1_000_000_000),
            ("1n", 1),
            ("1u", 1_000),
            ("1k", 1_000_000_000_000),
            ("100M", 100_000_000 * NANOS_PER_UNIT),
            ("100Mi", 100 * (1 << 20) * NANOS_PER_UNIT),
            ("1Ki", 1024 * NANOS_PER_UNIT),
            ("1Gi", (1 << 30) * NANOS_PER_UNIT),
            ("1.5Gi", 3 * (1 << 29) * NANOS_PER_UNIT),
            ("1Ti", (1 << 40) * NANOS_PER_UNIT),
            ("1Pi", (1 << 50) * NANOS_PER_UNIT),
            ("1Ei", (1 << 60) * NANOS_PER_UNIT),
            ("1G", 1_000_000_000 * NANOS_PER_UNIT),
            ("1T", 1_000_000_000_000 * NANOS_PER_UNIT),
            ("1P", 1_000_000_000_000_000 * NANOS_PER_UNIT),
            ("1E", 1_000_000_000_000_000_000 * NANOS_PER_UNIT),
            ("1e3", 1_000 * NANOS_PER_UNIT),
            ("1E3", 1_000 * NANOS_PER_UNIT),
            ("1e-3", 1_000_000),
            ("12e+2", 1_200 * NANOS_PER_UNIT),
            ("0.1n", 1), // rounded up
            ("1e-12", 1),
        ];
        for (text, nanos) in cases {
            assert_eq!(q(text).nanos(), *nanos, "{text}");
            assert_eq!(q(text).to_string(), *text);
        }
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "", "2 cores", "1.2.3", "Gi", "1gi", "1 Gi", "m", "1e", "1e+", "1KiB", "--1", ".",
            "1mi", "0x10", "1e99999",
        ] {
            assert!(
                bad.parse::<Quantity>().is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert!(matches!(
            "1e30".parse::<Quantity>(),
            Err(QuantityError::TooLarge(_))
        ));
        assert!(matches!(
            "99999999999999999999999999999999999999999".parse::<Quantity>(),
            Err(QuantityError::TooLarge(_))
        ));
    }

    #[test]
    fn orders_by_value_not_text() {
        assert!(q("500m") < q("1"));
        assert!(q("1Gi") > q("512Mi"));
        assert!(q("100M") < q("100Mi"));
        assert!(q("1e3") == q("1k"));
        assert!(q("1000m") == q("1"));
        assert!(q("0.5") == q("500m"));
        assert!(q("1024Mi") == q("1Gi"));
        assert!(q("-1") < q("0"));
    }

    #[test]
    fn adds_and_subtracts_exactly() {
        let sum = q("1").checked_add(&q("250m")).unwrap();
        assert_eq!(sum, q("1.25"));
        assert_eq!(sum.to_string(), "1250m");
        let mem = q("8Gi").checked_add(&q("256Mi")).unwrap();
        assert_eq!(mem.to_string(), "8448Mi");
        assert_eq!(
            q("1Gi").checked_sub(&q("512Mi")).unwrap().to_string(),
            "512Mi"
        );
        assert_eq!(
            q("1").checked_add(&q("1n")).unwrap().to_string(),
            "1000000001n"
        );
        assert_eq!(q("1500").max(q("1.5k")).to_string(), "1500");
        assert_eq!(q("1.5").millis_ceil(), 1500);
        assert_eq!(q("1.5Ki").units_ceil(), 1536);
        assert_eq!(q("1m").units_ceil(), 1);
        assert_eq!(Quantity::zero().to_string(), "0");
        assert_eq!(Quantity::from_nanos(1_000).to_string(), "1u");
        assert_eq!(
            Quantity::from_nanos(1_000 * NANOS_PER_UNIT).to_string(),
            "1000"
        );
    }
}
