//! Parsing `--check` expressions: the three forms, their comparisons, sizes and durations.
//! What a check means is in the parent module; this only turns text into a [`Check`] or an
//! error that names the expression and what is wrong with it.

use anyhow::{bail, Result};

use super::{Check, Kind};
use crate::expect::rule_oracles;
use crate::oracle::OracleKind;

/// A comparison of a number with a bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    /// The operators in the order they must be tried (two-character ones first).
    const ALL: [(&'static str, Cmp); 6] = [
        ("<=", Cmp::Le),
        (">=", Cmp::Ge),
        ("!=", Cmp::Ne),
        ("<", Cmp::Lt),
        (">", Cmp::Gt),
        ("=", Cmp::Eq),
    ];

    pub(super) fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }

    fn as_str(self) -> &'static str {
        Cmp::ALL
            .iter()
            .find(|(_, c)| *c == self)
            .map(|(s, _)| *s)
            .expect("every operator is listed")
    }
}

/// Split `lhs OP rhs` at the first operator.
fn split_op(s: &str) -> Option<(&str, Cmp, &str)> {
    let at = s.find(['<', '>', '!', '='])?;
    let rest = &s[at..];
    let (op, cmp) = Cmp::ALL.iter().find(|(op, _)| rest.starts_with(op))?;
    Some((s[..at].trim(), *cmp, rest[op.len()..].trim()))
}

/// The quantiles a latency check can name.
pub const QUANTILES: &str = "min, p50, p90, p99, p999, max, mean";

const FORMS: &str = "PIN:BACKING:MAP:ACCESS=OUTCOME (io_uring:xfs:shared:rw=EFAULT), \
ORACLE@PIN:BACKING[:MAP]=N (lost_write@io_uring:xfs-dax=0) or \
QUANTILE(PIN:BACKING[:MAP:ACCESS]:SIZE:OP)<DURATION (p50(io_uring:devdax:2M:register)<50us)";

fn name_ok(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn map_ok(m: &str) -> Result<()> {
    match m {
        "shared" | "private" => Ok(()),
        _ => bail!("map {m:?} is not shared or private"),
    }
}

fn access_ok(a: &str) -> Result<()> {
    match a {
        "rw" | "ro" => Ok(()),
        _ => bail!("access {a:?} is not rw or ro"),
    }
}

/// `4K`, `2M`, `1G`, `2MiB` or a byte count.
pub(super) fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim_end_matches("iB").trim_end_matches('B');
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    match num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
    {
        Some(n) if n > 0 => Ok(n),
        _ => bail!("size {s:?} is not a size such as 4K, 2M or 1G"),
    }
}

/// `850ns`, `50us` (or `50µs`), `1.5ms`, `2s`, in nanoseconds.
pub(super) fn parse_duration(s: &str) -> Result<f64> {
    let units = [
        ("ns", 1.0),
        ("us", 1e3),
        ("µs", 1e3),
        ("ms", 1e6),
        ("s", 1e9),
    ];
    for (u, scale) in units {
        if let Some(n) = s.strip_suffix(u) {
            if let Ok(v) = n.trim().parse::<f64>() {
                if v.is_finite() && v >= 0.0 {
                    return Ok(v * scale);
                }
            }
            break;
        }
    }
    bail!("{s:?} is not a duration with a unit: ns, us, ms or s (e.g. 50us)")
}

impl Check {
    /// Parse one expression; the error names the expression and what is wrong with it.
    pub fn parse(text: &str) -> Result<Check> {
        let kind = Check::parse_kind(text.trim())
            .map_err(|e| anyhow::anyhow!("--check {text:?}: {e:#}; the forms are {FORMS}"))?;
        Ok(Check {
            text: text.trim().to_string(),
            kind,
        })
    }

    fn parse_kind(s: &str) -> Result<Kind> {
        if let Some(open) = s.find('(') {
            return Check::parse_latency(s, open);
        }
        let Some((lhs, cmp, rhs)) = split_op(s) else {
            bail!("no comparison (=, !=, <, <=, >, >=)");
        };
        if let Some((oracle, cell)) = lhs.split_once('@') {
            return Check::parse_oracle(oracle, cell, cmp, rhs);
        }
        let parts: Vec<&str> = lhs.split(':').collect();
        let [pin, backing, map, access] = parts[..] else {
            bail!(
                "a probe cell is PIN:BACKING:MAP:ACCESS (4 fields), {lhs:?} has {}",
                parts.len()
            );
        };
        for p in [pin, backing] {
            if !name_ok(p) {
                bail!("{p:?} is not a pin path or backing name");
            }
        }
        map_ok(map)?;
        access_ok(access)?;
        let negated = match cmp {
            Cmp::Eq => false,
            Cmp::Ne => true,
            _ => bail!(
                "a probe outcome is compared with = or !=, not {}",
                cmp.as_str()
            ),
        };
        let mut outcomes = Vec::new();
        for o in rhs.split('|').map(str::trim) {
            let norm = if o.eq_ignore_ascii_case("ok") {
                "ok".to_string()
            } else {
                o.to_ascii_uppercase()
            };
            if norm == "NOTRUN" {
                bail!("notrun is not an outcome: a cell that did not run makes the check exit 125 (skip)");
            }
            let errno = norm.len() > 1
                && norm.starts_with('E')
                && norm
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit());
            if norm != "ok" && !errno {
                bail!("outcome {o:?} is not ok or an errno name such as EFAULT");
            }
            outcomes.push(norm);
        }
        Ok(Kind::Outcome {
            cell: [pin, backing, map, access].map(str::to_string),
            negated,
            outcomes,
        })
    }

    fn parse_oracle(oracle: &str, cell: &str, cmp: Cmp, rhs: &str) -> Result<Kind> {
        let names = || {
            rule_oracles()
                .map(|k| k.name())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some(k) = OracleKind::parse(oracle.trim()).filter(|k| rule_oracles().any(|r| r == *k))
        else {
            bail!(
                "{oracle:?} is not a storm oracle with a count (one of {})",
                names()
            );
        };
        let parts: Vec<&str> = cell.split(':').collect();
        let (pin, backing, map) = match parts[..] {
            [p, b] => (p, b, None),
            [p, b, m] => {
                map_ok(m)?;
                (p, b, Some(m.to_string()))
            }
            _ => bail!("a storm cell is PIN:BACKING or PIN:BACKING:MAP, got {cell:?}"),
        };
        for p in [pin, backing] {
            if !name_ok(p) {
                bail!("{p:?} is not a pin path or backing name");
            }
        }
        let Ok(bound) = rhs.parse::<u64>() else {
            bail!("an oracle count is compared with a whole number, got {rhs:?}");
        };
        Ok(Kind::Oracle {
            oracle: k,
            pin: pin.into(),
            backing: backing.into(),
            map,
            cmp,
            bound,
        })
    }

    fn parse_latency(s: &str, open: usize) -> Result<Kind> {
        let quantile = s[..open].trim();
        if !QUANTILES.split(", ").any(|q| q == quantile) {
            bail!("{quantile:?} is not a quantile ({QUANTILES})");
        }
        let Some(close) = s.find(')') else {
            bail!("no ')' after the cell");
        };
        let cell = &s[open + 1..close];
        let Some(("", cmp, rhs)) = split_op(&s[close + 1..]) else {
            bail!("a latency is compared with <, <=, > or >= and a duration after ')'");
        };
        if matches!(cmp, Cmp::Eq | Cmp::Ne) {
            bail!(
                "a latency is compared with <, <=, > or >=, not {}",
                cmp.as_str()
            );
        }
        let bound_ns = parse_duration(rhs)?;
        let parts: Vec<&str> = cell.split(':').collect();
        let (pin, backing, map, access, size, op) = match parts[..] {
            [p, b, s, o] => (p, b, None, None, s, o),
            [p, b, m, a, s, o] => {
                map_ok(m)?;
                access_ok(a)?;
                (p, b, Some(m.to_string()), Some(a.to_string()), s, o)
            }
            _ => bail!(
                "a benchmark cell is PIN:BACKING:SIZE:OP or PIN:BACKING:MAP:ACCESS:SIZE:OP, got {cell:?}"
            ),
        };
        for p in [pin, backing, op] {
            if !name_ok(p) {
                bail!("{p:?} is not a pin path, backing or benchmark operation name");
            }
        }
        Ok(Kind::Latency {
            quantile: quantile.into(),
            pin: pin.into(),
            backing: backing.into(),
            map,
            access,
            size: parse_size(size)?,
            op: op.into(),
            cmp,
            bound_ns,
        })
    }
}
