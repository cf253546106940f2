//! Checks for `git bisect run`: `--check EXPR` on `pinstorm run|probe|bench pin|lab`, and
//! the exit status `git bisect run` reads from them (0 good, 1 bad, 125 skip, 128 abort).
//!
//! Three kinds of check, each on a fact a run already holds:
//!
//! - a probe cell's outcome, `PIN:BACKING:MAP:ACCESS=OUTCOME` (`io_uring:xfs:shared:rw=EFAULT`,
//!   `=ok|EOPNOTSUPP` for either, `!=EFAULT` for anything else that was measured);
//! - a storm oracle's count, `ORACLE@PIN:BACKING[:MAP]` against a number
//!   (`lost_write@io_uring:xfs-dax=0`, `cross_file@io_uring:xfs<=2`);
//! - a benchmark latency, `QUANTILE(PIN:BACKING[:MAP:ACCESS]:SIZE:OP)` against a duration
//!   (`p50(io_uring:devdax:2M:register)<50us`).
//!
//! Outcomes and oracle counts are read from the run's one judgement ([`verdict::judge`]):
//! the fact's measured value and whether it ran, never re-derived from the raw rows. A
//! latency is the quantile of the row's histogram, as `compare` reads it ([`metrics`]).
//!
//! A check on a fact that was not measured (the cell is `notrun`, no run has it, the
//! kernel did not boot or its guest panicked) can say nothing about the kernel: that is
//! `git bisect run`'s "skip" (125). Precedence over all checks and kernels: any check that
//! fails -> 1; else any that could not be judged -> 125; else 0.
//!
//! This module parses and judges; naming pins and backings the workloads know is the
//! command line's job ([`Check::pin_and_backing`]).

use std::fmt;

use anyhow::{bail, Result};

use crate::expect::rule_oracles;
use crate::metrics;
use crate::oracle::OracleKind;
use crate::schema::RunResult;
use crate::summary::{human_ns, human_size};
use crate::verdict::{self, FactClass, Verdict};

/// `git bisect run`: the commit is good.
pub const EXIT_GOOD: u8 = 0;
/// `git bisect run`: the commit is bad.
pub const EXIT_BAD: u8 = 1;
/// `git bisect run`: the commit cannot be tested; skip it.
pub const EXIT_SKIP: u8 = 125;
/// `git bisect run` aborts the bisection on any status above 127: what pinstorm exits with
/// when `--check` is given and the command line, a check or pinstorm itself is wrong (never
/// 2, which bisect would take for "bad").
pub const EXIT_ABORT: u8 = 128;

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

    fn holds(self, a: f64, b: f64) -> bool {
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

#[derive(Clone, Debug, PartialEq)]
enum Kind {
    /// A probe cell's outcome is (or, negated, is not) one of these.
    Outcome {
        cell: [String; 4],
        negated: bool,
        outcomes: Vec<String>,
    },
    /// A storm oracle's count compared with a bound, on every storm of the cell.
    Oracle {
        oracle: OracleKind,
        pin: String,
        backing: String,
        map: Option<String>,
        cmp: Cmp,
        bound: u64,
    },
    /// A benchmark quantile compared with a duration, on every row of the cell.
    Latency {
        quantile: String,
        pin: String,
        backing: String,
        map: Option<String>,
        access: Option<String>,
        size: u64,
        op: String,
        cmp: Cmp,
        bound_ns: f64,
    },
}

/// One `--check` expression, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// As the user wrote it.
    pub text: String,
    kind: Kind,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

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
fn parse_size(s: &str) -> Result<u64> {
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
fn parse_duration(s: &str) -> Result<f64> {
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

    /// The pin path and backing the check names, for the command line to check against the
    /// ones pinstorm has (a misspelt backing would otherwise skip every commit).
    pub fn pin_and_backing(&self) -> (&str, &str) {
        match &self.kind {
            Kind::Outcome { cell, .. } => (&cell[0], &cell[1]),
            Kind::Oracle { pin, backing, .. } | Kind::Latency { pin, backing, .. } => {
                (pin, backing)
            }
        }
    }

    /// What this check finds in one run.
    fn in_run(&self, r: &RunResult) -> State {
        if let Some(lab) = r.lab.as_ref().filter(|l| l.status != "ok") {
            return State::Unmeasurable(format!(
                "the lab guest ended {}{}",
                lab.status,
                lab.reason
                    .as_deref()
                    .and_then(|r| r.lines().next())
                    .map(|r| format!(": {r}"))
                    .unwrap_or_default()
            ));
        }
        match &self.kind {
            Kind::Outcome {
                cell,
                negated,
                outcomes,
            } => {
                let j = verdict::judge(r);
                let states = j
                    .facts
                    .iter()
                    .filter(|f| f.class == FactClass::Probe && f.path == cell[..])
                    .map(|f| match f.verdict {
                        Verdict::NotRun | Verdict::Error => State::Unmeasurable(format!(
                            "the cell did not run: {}",
                            f.why.as_deref().unwrap_or("no reason recorded")
                        )),
                        _ if outcomes.contains(&f.measured) != *negated => {
                            State::Holds(f.measured.clone())
                        }
                        _ => State::Fails(format!("measured {}", f.measured)),
                    });
                State::all(states)
            }
            Kind::Oracle {
                oracle,
                pin,
                backing,
                map,
                cmp,
                bound,
            } => {
                let j = verdict::judge(r);
                let states = j
                    .facts
                    .iter()
                    .filter(|f| {
                        f.class == FactClass::Storm
                            && f.path.len() == 4
                            && f.path[0] == *pin
                            && f.path[1] == *backing
                            && map.as_ref().is_none_or(|m| f.path[2] == *m)
                            && f.path[3] == oracle.name()
                    })
                    .map(|f| {
                        let cell = format!("{} {}", f.path[2], oracle.name());
                        match (f.verdict, f.measured.parse::<u64>()) {
                            (Verdict::NotRun | Verdict::Error, _) => State::Unmeasurable(format!(
                                "{cell} was not judged: {}",
                                f.why.as_deref().unwrap_or("no reason recorded")
                            )),
                            (_, Err(_)) => State::Unmeasurable(format!(
                                "{cell} holds no count ({:?})",
                                f.measured
                            )),
                            (_, Ok(n)) if cmp.holds(n as f64, *bound as f64) => {
                                State::Holds(format!("{cell} {n}"))
                            }
                            (_, Ok(n)) => State::Fails(format!("{cell} measured {n}")),
                        }
                    });
                // A storm of the cell that did not run at all is one fact without the
                // oracle: it cannot say anything either.
                let notrun = j.facts.iter().filter(|f| {
                    f.class == FactClass::Storm
                        && f.path.len() == 3
                        && f.path[0] == *pin
                        && f.path[1] == *backing
                        && map.as_ref().is_none_or(|m| f.path[2] == *m)
                });
                let notrun = notrun.map(|f| {
                    State::Unmeasurable(format!(
                        "the storm on {} did not run: {}",
                        f.path[2],
                        f.why.as_deref().unwrap_or("no reason recorded")
                    ))
                });
                State::all(states.chain(notrun))
            }
            Kind::Latency {
                quantile,
                pin,
                backing,
                map,
                access,
                size,
                op,
                cmp,
                bound_ns,
            } => {
                let size_s = human_size(*size);
                let matches = |p: &str, b: &str, m: &str, a: &str, s: &str, o: &str| {
                    p == pin
                        && b == backing
                        && map.as_deref().is_none_or(|x| x == m)
                        && access.as_deref().is_none_or(|x| x == a)
                        && s == size_s
                        && o == op
                };
                let measured = metrics::latencies(r)
                    .into_iter()
                    .filter(|l| {
                        l.kind == "pin"
                            && l.path.len() >= 7
                            && matches(
                                &l.path[1], &l.path[2], &l.path[3], &l.path[4], &l.path[5],
                                &l.path[6],
                            )
                    })
                    .map(|l| {
                        let st = l.hist.stats();
                        let v = match quantile.as_str() {
                            "min" => st.min_ns as f64,
                            "p50" => st.p50_ns as f64,
                            "p90" => st.p90_ns as f64,
                            "p99" => st.p99_ns as f64,
                            "p999" => st.p999_ns as f64,
                            "max" => st.max_ns as f64,
                            _ => st.mean_ns,
                        };
                        let what = format!("{} {quantile} {}", l.key, human_ns(v));
                        if cmp.holds(v, *bound_ns) {
                            State::Holds(what)
                        } else {
                            State::Fails(what)
                        }
                    });
                // Rows without a histogram: not run (skip), or stopped by the kernel's
                // refusal (an errno: measured, and no latency can hold the bound).
                let unmeasured = r
                    .bench
                    .iter()
                    .filter(|b| {
                        b.outcome != "ok"
                            && matches(
                                &b.pin,
                                &b.backing,
                                &b.map,
                                &b.access,
                                &human_size(b.size),
                                &b.op,
                            )
                    })
                    .map(|b| {
                        let why = b.reason.as_deref().unwrap_or("no reason recorded");
                        if b.outcome == "notrun" {
                            State::Unmeasurable(format!("the cell did not run: {why}"))
                        } else {
                            State::Fails(format!("the cell stopped on {}: {why}", b.outcome))
                        }
                    });
                State::all(measured.chain(unmeasured))
            }
        }
    }
}

/// What a check found.
#[derive(Clone, Debug, PartialEq)]
pub enum State {
    /// It holds; what was measured.
    Holds(String),
    /// It does not; what was measured.
    Fails(String),
    /// The fact was not measured, and why.
    Unmeasurable(String),
    /// The run has no such fact.
    Absent,
}

impl State {
    /// Several findings of one check, as one: a failure outranks a fact that could not be
    /// measured, which outranks one that holds; nothing found is [`State::Absent`].
    fn all(states: impl Iterator<Item = State>) -> State {
        let mut out = State::Absent;
        for s in states {
            let rank = |s: &State| match s {
                State::Absent => 0,
                State::Holds(_) => 1,
                State::Unmeasurable(_) => 2,
                State::Fails(_) => 3,
            };
            match (&mut out, s) {
                (State::Holds(a), State::Holds(b))
                | (State::Fails(a), State::Fails(b))
                | (State::Unmeasurable(a), State::Unmeasurable(b)) => {
                    a.push_str("; ");
                    a.push_str(&b);
                }
                (o, s) if rank(&s) > rank(o) => *o = s,
                _ => {}
            }
        }
        out
    }

    fn words(&self) -> &'static str {
        match self {
            State::Holds(_) => "holds",
            State::Fails(_) => "FAILS",
            State::Unmeasurable(_) | State::Absent => "cannot be judged",
        }
    }
}

/// What the checks are judged on: a kernel and its runs (one per scenario), or the reason
/// it has none (its kernel could not be fetched or built, or its guest not started).
#[derive(Clone, Debug)]
pub struct Subject<'a> {
    /// The kernel: its release, or the lab's kernel spec.
    pub name: String,
    pub runs: Vec<&'a RunResult>,
    /// Why a run this kernel should have is missing.
    pub missing: Vec<String>,
}

/// One kernel's runs, grouped by kernel release (the host's `pinstorm run` of several
/// scenarios is one subject).
pub fn subjects_by_release<'a>(runs: &[&'a RunResult]) -> Vec<Subject<'a>> {
    let mut out: Vec<Subject> = Vec::new();
    for r in runs {
        let name = &r.environment.kernel_release;
        match out.iter_mut().find(|s| s.name == *name) {
            Some(s) => s.runs.push(r),
            None => out.push(Subject {
                name: name.clone(),
                runs: vec![r],
                missing: Vec::new(),
            }),
        }
    }
    out
}

/// One check on one kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub check: String,
    pub subject: String,
    pub state: State,
}

/// The bisect verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Good,
    Bad,
    Skip,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Good => EXIT_GOOD,
            Outcome::Bad => EXIT_BAD,
            Outcome::Skip => EXIT_SKIP,
        }
    }
}

/// Every check on every kernel.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub findings: Vec<Finding>,
}

/// Judge every check on every subject. A subject missing a run, or whose runs do not have
/// the fact, cannot be judged; with several runs, the fact is judged wherever it is.
pub fn evaluate(checks: &[Check], subjects: &[Subject]) -> Report {
    let mut findings = Vec::new();
    for c in checks {
        for s in subjects {
            let missing = s.missing.iter().cloned().map(State::Unmeasurable);
            let mut state = State::all(s.runs.iter().map(|r| c.in_run(r)).chain(missing));
            if state == State::Absent {
                state = State::Unmeasurable(if s.runs.is_empty() {
                    "no result".into()
                } else {
                    "no result has this cell (does the scenario measure it?)".into()
                });
            }
            findings.push(Finding {
                check: c.text.clone(),
                subject: s.name.clone(),
                state,
            });
        }
    }
    if subjects.is_empty() {
        for c in checks {
            findings.push(Finding {
                check: c.text.clone(),
                subject: "-".into(),
                state: State::Unmeasurable("nothing was measured".into()),
            });
        }
    }
    Report { findings }
}

impl Report {
    /// Any failure -> bad; else anything that could not be judged -> skip; else good.
    pub fn outcome(&self) -> Outcome {
        let any = |f: fn(&State) -> bool| self.findings.iter().any(|x| f(&x.state));
        if any(|s| matches!(s, State::Fails(_))) {
            Outcome::Bad
        } else if any(|s| matches!(s, State::Unmeasurable(_) | State::Absent)) {
            Outcome::Skip
        } else {
            Outcome::Good
        }
    }

    pub fn exit_code(&self) -> u8 {
        self.outcome().exit_code()
    }

    /// One line per check and kernel, and the verdict with its exit status.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let detail = match &f.state {
                State::Holds(m) | State::Fails(m) | State::Unmeasurable(m) => m.as_str(),
                State::Absent => "",
            };
            out.push_str(&format!(
                "check {} on {}: {}: {detail}\n",
                f.check,
                f.subject,
                f.state.words()
            ));
        }
        let count = |f: fn(&State) -> bool| self.findings.iter().filter(|x| f(&x.state)).count();
        out.push_str(&format!(
            "checks: {} hold, {} fail, {} cannot be judged; exit status {} (git bisect: {})\n",
            count(|s| matches!(s, State::Holds(_))),
            count(|s| matches!(s, State::Fails(_))),
            count(|s| matches!(s, State::Unmeasurable(_) | State::Absent)),
            self.exit_code(),
            match self.outcome() {
                Outcome::Good => "good",
                Outcome::Bad => "bad",
                Outcome::Skip => "skip",
            }
        ));
        out
    }
}

#[cfg(test)]
mod tests;
