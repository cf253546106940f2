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
//!
//! A gate that matched nothing (no latency metric of its quantile and filter measured on
//! both sides, an oracle no run measured, no fact judged against an expectation, no
//! capability cell on both sides) judged nothing: it fails unless empty gates are allowed
//! (`--allow-empty-gates`), so that a renamed backing or a missing job cannot silence it.
//!
//! A latency metric measured while the machine of either side was disturbed (another
//! process's CPU time, steal: [`crate::disturbance`]) is not judged by a latency gate
//! unless `--judge-disturbed`: a gate that crossed nothing else but left such metrics out is
//! inconclusive, which is an exit status of its own ([`GateStatus`]), never a pass. Count
//! gates judge facts and are judged whatever the load.

use anyhow::{bail, Result};

use crate::compare::{stat_quantile, Comparison, CountChange};
use crate::oracle::OracleKind;

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

pub use crate::gated::{GateResult, GateStatus, EXIT_FAILED, EXIT_INCONCLUSIVE};

/// How gates are judged (the command line's `--allow-empty-gates`, `--judge-disturbed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GateOptions {
    /// A gate that matched nothing passes instead of failing.
    pub allow_empty: bool,
    /// Latency metrics measured on a disturbed machine are judged like the others.
    pub judge_disturbed: bool,
}

impl GateResult {
    /// Whether the gate matched nothing at all.
    pub fn is_empty(&self) -> bool {
        self.missing.is_some()
    }
}

/// Count metrics other than the oracles.
const COUNTS: [&str; 5] = ["violations", "differs", "outcomes", "refused", "allowed"];

/// The grammar of a gate, with every metric it knows (the oracles from [`OracleKind`]).
pub fn help() -> String {
    let oracles: Vec<&str> = OracleKind::VIOLATIONS.iter().map(|k| k.name()).collect();
    format!(
        "METRIC[FILTER] OP VALUE, e.g. 'p99>+10%', 'p50[tmpfs]>+20%', 'violations>0', \
'lost_write>+10', 'refused>0' (metrics: p50, p90, p99, p999, violations, {}, differs, \
outcomes, refused, allowed; OP: > >= < <=)",
        oracles.join(", ")
    )
}

/// Which oracle a count gate names.
fn oracle_of(metric: &str) -> Option<OracleKind> {
    OracleKind::VIOLATIONS
        .into_iter()
        .find(|k| k.name() == metric)
}

impl Gate {
    pub fn parse(expr: &str) -> Result<Gate> {
        let s: String = expr.chars().filter(|c| !c.is_whitespace()).collect();
        let Some(pos) = s.find(['>', '<']) else {
            bail!(
                "--fail-on {expr:?}: no comparison (> >= < <=); expected {}",
                help()
            );
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
        let known = latency || COUNTS.contains(&metric.as_str()) || oracle_of(&metric).is_some();
        if !known {
            bail!(
                "--fail-on {expr:?}: unknown metric {metric:?}; expected {}",
                help()
            );
        }
        if filter.is_some() && !latency {
            bail!("--fail-on {expr:?}: only latency metrics (p50, p99, ...) take a [FILTER]");
        }
        let number = |t: &str| -> Result<f64> {
            t.parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--fail-on {expr:?}: {rhs:?} is not a number; expected {}",
                        help()
                    )
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

    /// Whether the value compares the candidate alone (`N`) or a change against the base.
    fn needs_base(&self) -> bool {
        !matches!(self.value, Value::Absolute(_))
    }

    /// What is missing when a count gate measured nothing, or None when it measured.
    fn count_missing(&self, c: &CountChange, what: &str) -> Option<String> {
        if c.cand_runs_measured == 0 {
            Some(format!("no run of the candidate {what}"))
        } else if self.needs_base() && c.base_runs_measured == 0 {
            Some(format!(
                "no run of the base {what}, so there is no change to judge"
            ))
        } else {
            None
        }
    }

    /// Judge the gate on `cmp`; latency metrics measured on a disturbed machine only when
    /// `judge_disturbed`.
    pub fn judge(&self, cmp: &Comparison, judge_disturbed: bool) -> GateResult {
        let mut by = Vec::new();
        let mut matched = 0;
        let mut judged = 0;
        let mut missing = None;
        let mut disturbed = 0;
        let mut disturbed_by = std::collections::BTreeSet::new();
        if stat_quantile(&self.metric).is_some() {
            let Value::Percent(v) = self.value else {
                unreachable!("checked in parse")
            };
            let f = self.filter.as_deref();
            let mut crossing: Vec<(f64, String)> = Vec::new();
            for l in cmp.latency.iter().filter(|l| l.stat == self.metric) {
                if f.is_some_and(|f| !l.key.contains(f) && !l.kind.contains(f)) {
                    continue;
                }
                matched += 1;
                if l.method.contains("not judged") {
                    continue;
                }
                if !l.disturbed.is_empty() {
                    disturbed += 1;
                    disturbed_by.extend(l.disturbed.iter().cloned());
                    if !judge_disturbed {
                        continue;
                    }
                }
                judged += 1;
                if l.significant && self.op.holds(l.change_pct, v) {
                    // The worst is the one furthest beyond the threshold in the gate's direction.
                    let badness = match self.op {
                        Op::Gt | Op::Ge => l.change_pct,
                        Op::Lt | Op::Le => -l.change_pct,
                    };
                    crossing.push((
                        badness,
                        format!(
                            "{} {} {}: {:+.1}% [{:+.1}%, {:+.1}%]",
                            l.kind, l.key, l.stat, l.change_pct, l.ci_low_pct, l.ci_high_pct
                        ),
                    ));
                }
            }
            crossing.sort_by(|a, b| b.0.total_cmp(&a.0));
            by.extend(crossing.into_iter().map(|c| c.1));
            if matched == 0 {
                let filter = f.map(|f| format!(" matching [{f}]")).unwrap_or_default();
                missing = Some(if !cmp.options.stats.contains(&self.metric) {
                    format!(
                        "{} was not compared (compare --stats {}; add {} to it)",
                        self.metric,
                        cmp.options.stats.join(","),
                        self.metric
                    )
                } else {
                    let only =
                        |v: &[String]| v.iter().filter(|m| f.is_none_or(|f| m.contains(f))).count();
                    format!(
                        "no {} latency metric{filter} was measured on both sides ({} measured in the base only, {} in the candidate only)",
                        self.metric,
                        only(&cmp.only_in_base),
                        only(&cmp.only_in_cand)
                    )
                });
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
                base_runs_measured: cmp
                    .violations
                    .iter()
                    .map(|v| v.base_runs_measured)
                    .max()
                    .unwrap_or(0),
                cand_runs_measured: cmp
                    .violations
                    .iter()
                    .map(|v| v.cand_runs_measured)
                    .max()
                    .unwrap_or(0),
            };
            missing = self.count_missing(
                &total,
                "measured any oracle (no storm or lease lifecycle scenario ran)",
            );
            matched = total.cand_runs_measured;
            by.extend(self.judge_count(&total));
        } else if self.metric == "differs" {
            missing = self.count_missing(
                &cmp.differs,
                "had a fact with an expectation to judge it by",
            );
            matched = cmp.differs.cand_runs_measured;
            by.extend(self.judge_count(&cmp.differs));
        } else if let Some(c) = cmp.violations.iter().find(|v| v.what == self.metric) {
            let why = if self.metric == OracleKind::Lifecycle.name() {
                "no lease lifecycle scenario ran"
            } else {
                "no storm ran, or the oracle was notrun in every storm"
            };
            missing = self.count_missing(c, &format!("measured {} ({why})", self.metric));
            matched = c.cand_runs_measured;
            by.extend(self.judge_count(c));
        } else if oracle_of(&self.metric).is_some() {
            missing = Some(format!("the comparison has no {} count", self.metric));
        } else {
            let Value::Absolute(v) = self.value else {
                unreachable!("checked in parse")
            };
            matched = cmp.cells_compared;
            if matched == 0 {
                missing = Some("no capability cell (probe) was measured on both sides".to_string());
            }
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
        if missing.is_some() {
            // Nothing was measured, so nothing can have crossed it.
            by.clear();
            matched = 0;
        }
        if stat_quantile(&self.metric).is_none() {
            judged = matched;
        }
        GateResult {
            expr: self.expr.clone(),
            crossed: !by.is_empty(),
            failed: !by.is_empty(),
            inconclusive: by.is_empty() && disturbed > 0 && !judge_disturbed,
            by,
            matched,
            judged,
            missing,
            disturbed,
            disturbed_by: disturbed_by.into_iter().collect(),
            disturbed_judged: disturbed > 0 && judge_disturbed,
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

/// Judge every gate, record the results and what they amount to in the comparison, and
/// return that: a gate fails when it was crossed, or matched nothing and empty gates are not
/// allowed; it is inconclusive when it left disturbed metrics unjudged and crossed nothing.
pub fn apply(cmp: &mut Comparison, gates: &[Gate], o: &GateOptions) -> GateStatus {
    cmp.gates = gates
        .iter()
        .map(|g| {
            let mut r = g.judge(cmp, o.judge_disturbed);
            r.failed = r.crossed || (r.is_empty() && !o.allow_empty);
            r
        })
        .collect();
    cmp.gate_status = GateStatus::of(&cmp.gates);
    cmp.gate_status
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
mod tests;
