//! Sizes and durations as people write them in scenario files and on the command line
//! (`4K`, `64KiB`, `2M`, `1G`; `500ms`, `5s`), parsed strictly.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The largest size pinstorm accepts anywhere (regions, files, pins): 1 TiB. Far beyond what
/// a pin benchmark maps, and small enough that rounding up to any page size cannot overflow.
pub const MAX_SIZE: u64 = 1 << 40;

/// The longest duration pinstorm accepts anywhere: 168h (7 days). Longer than any run is
/// meant to take, and small enough that a deadline `Instant::now() + span` (even a few
/// times over) cannot overflow.
pub const MAX_SPAN: Duration = Duration::from_secs(7 * 24 * 3600);

/// A byte count. Suffixes are binary (K = 1024), as in fio and the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "SizeRepr", into = "u64")]
pub struct Size(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeRepr {
    Bytes(u64),
    Text(String),
}

impl TryFrom<SizeRepr> for Size {
    type Error = String;
    fn try_from(r: SizeRepr) -> Result<Self, String> {
        match r {
            SizeRepr::Bytes(0) => Err("a size must be greater than zero".into()),
            SizeRepr::Bytes(b) if b > MAX_SIZE => Err(format!(
                "size {b} is too large: sizes are between 1 byte and 1T ({MAX_SIZE} bytes)"
            )),
            SizeRepr::Bytes(b) => Ok(Size(b)),
            SizeRepr::Text(s) => s.parse(),
        }
    }
}

impl From<Size> for u64 {
    fn from(s: Size) -> u64 {
        s.0
    }
}

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, suffix) = t.split_at(split);
        if num.is_empty() {
            return Err(format!("invalid size {s:?}: expected a number with an optional K, M or G suffix, e.g. 4K or 2M"));
        }
        let too_large =
            || format!("invalid size {s:?}: too large; sizes are between 1 byte and 1T");
        let n: u64 = num.parse().map_err(|_| too_large())?;
        let mult: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" | "kib" => 1 << 10,
            "m" | "mb" | "mib" => 1 << 20,
            "g" | "gb" | "gib" => 1 << 30,
            "t" | "tb" | "tib" => 1 << 40,
            other => {
                return Err(format!(
                    "invalid size {s:?}: unknown suffix {other:?} (use K, M, G or T; they are binary, K = 1024)"
                ))
            }
        };
        let bytes = n
            .checked_mul(mult)
            .filter(|b| *b <= MAX_SIZE)
            .ok_or_else(too_large)?;
        if bytes == 0 {
            return Err(format!("invalid size {s:?}: must be greater than zero"));
        }
        Ok(Size(bytes))
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
            if b >= 1 << shift && b % (1 << shift) == 0 {
                return write!(f, "{}{unit}", b >> shift);
            }
        }
        write!(f, "{b}")
    }
}

impl Size {
    pub fn bytes(self) -> u64 {
        self.0
    }

    pub fn as_usize(self) -> usize {
        usize::try_from(self.0).expect("size fits in usize")
    }

    /// Round up to a multiple of `align` (a page size). Parsed sizes are at most
    /// [`MAX_SIZE`], so this cannot overflow for them; a size made in code near `u64::MAX`
    /// stays at the largest multiple that fits rather than wrapping to a tiny one. An
    /// `align` of 0 leaves the size as it is.
    pub fn round_up(self, align: u64) -> Size {
        if align == 0 {
            return self;
        }
        match self.0.checked_next_multiple_of(align) {
            Some(v) => Size(v),
            None => Size(u64::MAX - u64::MAX % align),
        }
    }
}

/// A duration written as `250ms`, `5s`, `2m`, `1h` (or a bare number of seconds).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Span(pub Duration);

impl TryFrom<String> for Span {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Span> for String {
    fn from(s: Span) -> String {
        s.to_string()
    }
}

impl FromStr for Span {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: f64 = num.parse().map_err(|_| {
            format!("invalid duration {s:?}: expected a number with a unit, e.g. 500ms, 5s or 2m")
        })?;
        let secs = match unit.trim() {
            "ns" => n / 1e9,
            "us" => n / 1e6,
            "ms" => n / 1e3,
            "" | "s" => n,
            "m" | "min" => n * 60.0,
            "h" => n * 3600.0,
            other => {
                return Err(format!(
                    "invalid duration {s:?}: unknown unit {other:?} (use ns, us, ms, s, m or h)"
                ))
            }
        };
        // Compared before converting: Duration::from_secs_f64 panics on values it cannot
        // hold (1e20 s), and deadlines far in the future overflow Instant.
        if !(secs >= 0.0 && secs <= MAX_SPAN.as_secs_f64()) {
            return Err(format!(
                "invalid duration {s:?}: durations are between 0s and 168h (7 days)"
            ));
        }
        Ok(Span(Duration::from_secs_f64(secs)))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0.as_nanos();
        if ns == 0 {
            return f.write_str("0s");
        }
        for (div, unit) in [
            (3_600_000_000_000u128, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
        ] {
            if ns % div == 0 {
                return write!(f, "{}{unit}", ns / div);
            }
        }
        write!(f, "{ns}ns")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes() {
        assert_eq!("4K".parse::<Size>().unwrap(), Size(4096));
        assert_eq!("64KiB".parse::<Size>().unwrap(), Size(65536));
        assert_eq!("2m".parse::<Size>().unwrap(), Size(2 << 20));
        assert_eq!("1G".parse::<Size>().unwrap(), Size(1 << 30));
        assert_eq!("512".parse::<Size>().unwrap(), Size(512));
    }

    #[test]
    fn bad_sizes_are_refused_with_a_reason() {
        assert!("0"
            .parse::<Size>()
            .unwrap_err()
            .contains("greater than zero"));
        assert!("2Q".parse::<Size>().unwrap_err().contains("unknown suffix"));
        assert!("M"
            .parse::<Size>()
            .unwrap_err()
            .contains("expected a number"));
        assert!("-4K".parse::<Size>().is_err());
    }

    #[test]
    fn sizes_print_in_the_largest_exact_unit() {
        assert_eq!(Size(2 << 20).to_string(), "2M");
        assert_eq!(Size(4096).to_string(), "4K");
        assert_eq!(Size(4097).to_string(), "4097");
    }

    #[test]
    fn spans_parse_and_print() {
        assert_eq!(
            "500ms".parse::<Span>().unwrap().0,
            Duration::from_millis(500)
        );
        assert_eq!("5s".parse::<Span>().unwrap().0, Duration::from_secs(5));
        assert_eq!("2m".parse::<Span>().unwrap().0, Duration::from_secs(120));
        assert_eq!(Span(Duration::from_millis(1500)).to_string(), "1500ms");
        assert!("5 parsecs".parse::<Span>().is_err());
    }

    #[test]
    fn spans_beyond_a_week_are_refused_with_the_range_instead_of_panicking() {
        assert_eq!("168h".parse::<Span>().unwrap().0, MAX_SPAN);
        for s in [
            "20000000000000000000s",
            "169h",
            "604801s",
            "1000000000000000000000000000000000000000h",
        ] {
            let e = s.parse::<Span>().unwrap_err();
            assert!(e.contains("between 0s and 168h"), "{s}: {e}");
        }
        assert!("NaN".parse::<Span>().is_err());
        assert!("inf".parse::<Span>().is_err());
        assert!("-1s".parse::<Span>().is_err());
    }

    #[test]
    fn sizes_beyond_a_tebibyte_are_refused_with_the_range() {
        assert_eq!("1T".parse::<Size>().unwrap(), Size(MAX_SIZE));
        for s in [
            "2T",
            "18446744073709551616",
            "17179869184G",
            "1099511627777",
        ] {
            let e = s.parse::<Size>().unwrap_err();
            assert!(e.contains("between 1 byte and 1T"), "{s}: {e}");
        }
        let e =
            toml::from_str::<std::collections::BTreeMap<String, Size>>("s = 18446744073709551615");
        assert!(e.is_err());
    }

    #[test]
    fn rounding_up_never_wraps() {
        assert_eq!(Size(1).round_up(4096), Size(4096));
        assert_eq!(Size(4096).round_up(4096), Size(4096));
        assert_eq!(Size(MAX_SIZE).round_up(1 << 30), Size(MAX_SIZE));
        let near_max = Size(u64::MAX - 5).round_up(1 << 21);
        assert_eq!(near_max.0 % (1 << 21), 0);
        assert!(near_max.0 > u64::MAX - (1 << 21));
        assert_eq!(Size(12345).round_up(0), Size(12345));
    }
}
