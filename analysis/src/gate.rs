//! Regression gates: `--fail-on 'p99>+10%'`, `--fail-on 'violations>0'`, judged on a
//! [`Comparison`]. The command exits non-zero when any gate is crossed and names it.
//!
//! Grammar: `METRIC[FILTER] OP VALUE`
//!
//! - latency metrics `p50`, `p90`, `p99`, `p999` with a relative VALUE (`+10%`, `-5%`):
//!   crossed by a metric whose change is *significant* (see `compare`) and beyond VALUE.
//!   `[FILTER]` keeps metrics whose kind or cell contains the text: `p99[tmpfs]>+10%`.
//! - counts `violations` (all oracles), each oracle (`lost_write`, `stale_exposure`,
//!   `cross_file`, `leaked_pins`, `blocked`, `kernel_warnings`, `lifecycle`) and `differs`
//!   (cells differing from the expectations), per run: VALUE `N` compares the candidate's
//!   count, `+N` its increase over the baseline, `+N%` its relative increase.
//! - `outcomes` (capability cells that behave differently), `refused` (newly refused
//!   pins), `allowed` (newly allowed pins): VALUE `N`.
//!
//! OP is `>`, `>=`, `<` or `<=`.

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};

use crate::compare::{stat_quantile, Comparison, CountChange};
use crate::metrics::VIOLATION_KINDS;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn holds(self, x: f64, v: f64) -> bool {
        match self {
            Op::Gt => x > v,
            Op::Ge => x >= v,
            Op::Lt => x < v,
            Op::Le => x <= v,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Value {
    /// `N`: the candidate's own value.
    Absolute(f64),
    /// `+N` / `-N`: the change.
    Delta(f64),
    /// `+N%` / `-N%`: the relative change.
    Percent(f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Gate {
    pub expr: String,
    metric: String,
    filter: Option<String>,
    op: Op,
    value: Value,
}

/// What a gate found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub expr: String,
    pub crossed: bool,
    /// What crossed it (metrics with their change, or the count).
    pub by: Vec<String>,
}

const COUNTS: [&str; 4] = ["violations", "differs", "outcomes", "refused"];

pub const HELP: &str = "METRIC[FILTER] OP VALUE, e.g. 'p99>+10%', 'p50[tmpfs]>+20%', \
'violations>0', 'lost_write>+10', 'refused>0' (metrics: p50, p90, p99, p999, violations, \
lost_write, stale_exposure, cross_file, leaked_pins, blocked, kernel_warnings, lifecycle, \
differs, outcomes, refused, allowed; OP: > >= < <=)";

impl Gate {
    pub fn parse(expr: &str) -> Result<Gate> {
        let s: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
        let Some(pos) = s.find(['>', '<']) else {
            bail!("--fail-on {expr:?}: no comparison (> >= < <=); expected {HELP}");
        };
        let (lhs, rest) = s.split_at(pos);
        let (op, rhs) = if let Some(r) = rest.strip_prefix(">=") {
            (Op::Ge, r)
        } else if let Some(r) = rest.strip_prefix("<=") {
            (Op::Le, r)
        } else if let Some(r) = rest.strip_prefix('>') {
            (Op::Gt, r)
        } else {
            (Op::Lt, &rest[1..])
        };
        let (metric, filter) = match lhs.split_once('[') {
            Some((m, f)) => match f.strip_suffix(']') {
                Some(f) if !f.is_empty() => (m.to_string(), Some(f.to_string())),
                _ => bail!("--fail-on {expr:?}: a filter is written [TEXT] right after the metric"),
            },
            None => (lhs.to_string(), None),
        };
        let latency = stat_quantile(&metric).is_some();
        let known = latency
            || COUNTS.contains(&metric.as_str())
            || metric == "allowed"
            || VIOLATION_KINDS.contains(&metric.as_str());
        if !known {
            bail!("--fail-on {expr:?}: unknown metric {metric:?}; expected {HELP}");
        }
        if filter.is_some() && !latency {
            bail!("--fail-on {expr:?}: only latency metrics (p50, p99, ...) take a [FILTER]");
        }
        let number = |t: &str| -> Result<f64> {
            t.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    anyhow::anyhow!("--fail-on {expr:?}: {rhs:?} is not a number; expected {HELP}")
                })
        };
        let value = if let Some(p) = rhs.strip_suffix('%') {
            if !(p.starts_with('+') || p.starts_with('-')) {
                bail!(
                    "--fail-on {expr:?}: write a relative change with its sign, e.g. +10% or -5%"
                );
            }
            Value::Percent(number(p)?)
        } else if rhs.starts_with('+') || rhs.starts_with('-') {
            Value::Delta(number(rhs)?)
        } else {
            Value::Absolute(number(rhs)?)
        };
        if latency && !matches!(value, Value::Percent(_)) {
            bail!("--fail-on {expr:?}: latency gates take a relative change, e.g. {metric}>+10%");
        }
        let plain_count = ["outcomes", "refused", "allowed"].contains(&metric.as_str());
        if plain_count && !matches!(value, Value::Absolute(_)) {
            bail!("--fail-on {expr:?}: {metric} counts cells that changed; give a plain number, e.g. {metric}>0");
        }
        Ok(Gate {
            expr: expr.to_string(),
            metric,
            filter,
            op,
            value,
        })
    }

    fn judge_count(&self, c: &CountChange) -> Option<String> {
        let x = match self.value {
            Value::Absolute(_) => c.cand_per_run,
            Value::Delta(_) => c.cand_per_run - c.base_per_run,
            Value::Percent(_) if c.base_per_run == 0.0 && c.cand_per_run == 0.0 => 0.0,
            Value::Percent(_) if c.base_per_run == 0.0 => f64::INFINITY,
            Value::Percent(_) => (c.cand_per_run / c.base_per_run - 1.0) * 100.0,
        };
        let v = match self.value {
            Value::Absolute(v) | Value::Delta(v) | Value::Percent(v) => v,
        };
        self.op.holds(x, v).then(|| {
            format!(
                "{}: {} -> {} per run",
                c.what,
                trim(c.base_per_run),
                trim(c.cand_per_run)
            )
        })
    }

    pub fn judge(&self, cmp: &Comparison) -> GateResult {
        let mut by = Vec::new();
        if stat_quantile(&self.metric).is_some() {
            let Value::Percent(v) = self.value else {
                unreachable!("checked in parse")
            };
            for l in cmp.latency.iter().filter(|l| l.stat == self.metric) {
                let f = self.filter.as_deref();
                if f.is_some_and(|f| !l.key.contains(f) && !l.kind.contains(f)) {
                    continue;
                }
                if l.significant && self.op.holds(l.change_pct, v) {
                    by.push(format!(
                        "{} {} {}: {:+.1}% [{:+.1}%, {:+.1}%]",
                        l.kind, l.key, l.stat, l.change_pct, l.ci_low_pct, l.ci_high_pct
                    ));
                }
            }
        } else if self.metric == "violations" {
            let total = CountChange {
                what: "violations".into(),
                base_total: cmp
                    .violations
                    .iter()
                    .fold(0u64, |t, v| t.saturating_add(v.base_total)),
                cand_total: cmp
                    .violations
                    .iter()
                    .fold(0u64, |t, v| t.saturating_add(v.cand_total)),
                base_per_run: cmp.violations.iter().map(|v| v.base_per_run).sum(),
                cand_per_run: cmp.violations.iter().map(|v| v.cand_per_run).sum(),
            };
            by.extend(self.judge_count(&total));
        } else if self.metric == "differs" {
            by.extend(self.judge_count(&cmp.differs));
        } else if let Some(c) = cmp.violations.iter().find(|v| v.what == self.metric) {
            by.extend(self.judge_count(c));
        } else {
            let Value::Absolute(v) = self.value else {
                unreachable!("checked in parse")
            };
            let cells: Vec<_> = cmp
                .outcomes
                .iter()
                .filter(|c| match self.metric.as_str() {
                    "refused" => c.change == "newly refused",
                    "allowed" => c.change == "newly allowed",
                    _ => c.is_behaviour(),
                })
                .collect();
            if self.op.holds(cells.len() as f64, v) {
                by.extend(
                    cells
                        .iter()
                        .map(|c| format!("{} ({}): {} -> {}", c.cell, c.change, c.base, c.cand)),
                );
                if cells.is_empty() {
                    by.push(format!("{} cells", cells.len()));
                }
            }
        }
        GateResult {
            expr: self.expr.clone(),
            crossed: !by.is_empty(),
            by,
        }
    }
}

fn trim(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.2}")
    }
}

/// Judge every gate and record the results in the comparison; true when one is crossed.
pub fn apply(cmp: &mut Comparison, gates: &[Gate]) -> bool {
    cmp.gates = gates.iter().map(|g| g.judge(cmp)).collect();
    cmp.gates.iter().any(|g| g.crossed)
}

/// Gates from a TOML file: `fail_on = ["p99>+10%", ...]` at the top or under `[compare]`.
pub fn from_toml(text: &str, origin: &str) -> Result<Vec<Gate>> {
    let v: toml::Value = toml::from_str(text).map_err(|e| anyhow::anyhow!("{origin}: {e}"))?;
    let list = v
        .get("compare")
        .and_then(|c| c.get("fail_on"))
        .or_else(|| v.get("fail_on"));
    let Some(list) = list else {
        bail!("{origin}: no fail_on list (write fail_on = [\"p99>+10%\"] under [compare])");
    };
    let Some(items) = list.as_array() else {
        bail!("{origin}: fail_on must be a list of strings");
    };
    items
        .iter()
        .map(|i| match i.as_str() {
            Some(s) => Gate::parse(s).map_err(|e| anyhow::anyhow!("{origin}: fail_on: {e}")),
            None => bail!("{origin}: fail_on: {i} is not a string"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gates_parse_and_bad_ones_say_why() {
        for ok in [
            "p99>+10%",
            "p50[tmpfs] >= +20%",
            "violations>0",
            "lost_write>+5",
            "differs>+50%",
            "refused>0",
            "p50<-10%",
        ] {
            Gate::parse(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, why) in [
            ("p99", "no comparison"),
            ("p98>+10%", "unknown metric"),
            ("p99>10", "relative change"),
            ("p99>10%", "with its sign"),
            ("refused>+1", "plain number"),
            ("violations[x]>0", "FILTER"),
            ("p99>+ten%", "not a number"),
        ] {
            let e = Gate::parse(bad).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn count_gates_compare_the_candidate_or_the_change() {
        let c = CountChange {
            what: "lost_write".into(),
            base_total: 80,
            cand_total: 90,
            base_per_run: 80.0,
            cand_per_run: 90.0,
        };
        assert!(Gate::parse("lost_write>0")
            .unwrap()
            .judge_count(&c)
            .is_some());
        assert!(Gate::parse("lost_write>+5")
            .unwrap()
            .judge_count(&c)
            .is_some());
        assert!(Gate::parse("lost_write>+20")
            .unwrap()
            .judge_count(&c)
            .is_none());
        assert!(Gate::parse("lost_write>+20%")
            .unwrap()
            .judge_count(&c)
            .is_none());
        assert!(Gate::parse("lost_write>+10%")
            .unwrap()
            .judge_count(&c)
            .is_some());
    }

    #[test]
    fn gate_files_name_the_file() {
        let g = from_toml(
            "[compare]\nfail_on = [\"p50>+10%\", \"violations>+0\"]\n",
            "n.toml",
        )
        .unwrap();
        assert_eq!(g.len(), 2);
        let e = from_toml("[compare]\nfail_on = [\"p5>+10%\"]\n", "n.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("n.toml") && e.contains("p5"), "{e}");
    }
}
