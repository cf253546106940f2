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

use crate::metrics;
use crate::oracle::OracleKind;
use crate::schema::RunResult;
use crate::summary::{human_ns, human_size};
use crate::verdict::{self, FactClass, Verdict};

mod parse;
#[cfg(test)]
use parse::{parse_duration, parse_size};
pub use parse::{Cmp, QUANTILES};

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

impl Check {
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
