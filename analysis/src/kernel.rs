//! Kernel releases (`6.18.44-fc-v657`) and version ranges (`>=6.5, <7.0`) as used in
//! expectation files.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The numeric part of a kernel release; the rest (`-amd64`, `-rc3`, a local version) is
/// kept for display but does not take part in ordering.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelRelease {
    pub release: String,
    pub version: (u32, u32, u32),
}

impl KernelRelease {
    pub fn parse(release: &str) -> Option<KernelRelease> {
        let numeric: String = release
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut it = numeric
            .split('.')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<u32>());
        let major = it.next()?.ok()?;
        let minor = it.next().and_then(|r| r.ok()).unwrap_or(0);
        let patch = it.next().and_then(|r| r.ok()).unwrap_or(0);
        Some(KernelRelease {
            release: release.to_string(),
            version: (major, minor, patch),
        })
    }
}

impl fmt::Display for KernelRelease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.release)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Ge,
    Gt,
    Le,
    Lt,
    Eq,
}

/// A conjunction of comparisons, e.g. `>=6.5, <7.0`. Versions compare as (major, minor,
/// patch); `6.5` means `6.5.0`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KernelRange {
    text: String,
    terms: Vec<(Op, (u32, u32, u32))>,
}

impl TryFrom<String> for KernelRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<KernelRange> for String {
    fn from(r: KernelRange) -> String {
        r.text
    }
}

impl FromStr for KernelRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut terms = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (op, rest) = [(">=", Op::Ge), ("<=", Op::Le), (">", Op::Gt), ("<", Op::Lt), ("=", Op::Eq)]
                .iter()
                .find_map(|(p, op)| part.strip_prefix(p).map(|r| (*op, r)))
                .ok_or_else(|| format!("kernel range {s:?}: each term needs >=, >, <=, < or = before a version, e.g. \">=6.5, <7.0\""))?;
            let v = KernelRelease::parse(rest.trim())
                .ok_or_else(|| format!("kernel range {s:?}: {rest:?} is not a version"))?;
            terms.push((op, v.version));
        }
        if terms.is_empty() {
            return Err(format!("kernel range {s:?} is empty"));
        }
        Ok(KernelRange {
            text: s.to_string(),
            terms,
        })
    }
}

impl KernelRange {
    pub fn contains(&self, k: &KernelRelease) -> bool {
        self.terms.iter().all(|(op, v)| match op {
            Op::Ge => k.version >= *v,
            Op::Gt => k.version > *v,
            Op::Le => k.version <= *v,
            Op::Lt => k.version < *v,
            Op::Eq => k.version == *v,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse_with_local_versions() {
        assert_eq!(
            KernelRelease::parse("6.18.44-fc-v657").unwrap().version,
            (6, 18, 44)
        );
        assert_eq!(
            KernelRelease::parse("6.12.0-rc3").unwrap().version,
            (6, 12, 0)
        );
        assert_eq!(KernelRelease::parse("7.2").unwrap().version, (7, 2, 0));
        assert!(KernelRelease::parse("linux").is_none());
    }

    #[test]
    fn ranges_are_conjunctions() {
        let r: KernelRange = ">=6.5, <7.0".parse().unwrap();
        assert!(r.contains(&KernelRelease::parse("6.5.0").unwrap()));
        assert!(r.contains(&KernelRelease::parse("6.18.44-fc").unwrap()));
        assert!(!r.contains(&KernelRelease::parse("6.1.0-amd64").unwrap()));
        assert!(!r.contains(&KernelRelease::parse("7.2.1").unwrap()));
        assert!("6.5".parse::<KernelRange>().is_err());
        assert!("".parse::<KernelRange>().is_err());
    }
}
