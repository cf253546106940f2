//! The verdict of a run, decided in one place. [`judge`] reads a result and returns every
//! measured fact with its verdict against the expectations, and the run's status; the exit
//! status of `pinstorm run`, the summary, the KTAP and JUnit exporters, the `differs` count
//! of `compare` and its gates, and the lab's per-kernel status all read it, so they cannot
//! disagree.
//!
//! The facts of a run:
//!
//! - each probe cell's outcome (judged by `[[expect]]` rules when the probe ran);
//! - each bench cell's outcome, on its `cycle` row (the same `[[expect]]` rules, judged when
//!   the benchmark ran: a cell whose calls failed even once has the errno as its outcome);
//! - each storm's registrations (`[[expect]]`) and each oracle's count (`[[oracle]]`),
//!   judged when the storm ran ([`judge_storm`]) and stored in `storm_verdicts`;
//! - each lease lifecycle fact (`[[fact]]`), judged when the scenario ran;
//! - whether the run completed.
//!
//! Status, and the exit status it gives: a signal stopped the run (128 + N) > the run
//! stopped on an error or did not complete (1) > a fact differs (3) > every judged fact as
//! expected (0). Facts with no expectation or that did not run never change the status.

use crate::expect::{rule_oracles, Cell, Expectations};
use crate::kernel::KernelRelease;
use crate::oracle::OracleKind;
use crate::schema::{FactVerdict, RunResult, StormResult};

pub use crate::schema::Verdict;

/// What kind of fact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FactClass {
    Probe,
    Bench,
    Storm,
    Lifecycle,
    Migration,
    Run,
}

impl FactClass {
    pub const fn name(self) -> &'static str {
        match self {
            FactClass::Probe => "probe",
            FactClass::Bench => "bench",
            FactClass::Storm => "storm",
            FactClass::Lifecycle => "lifecycle",
            FactClass::Migration => "migration",
            FactClass::Run => "run",
        }
    }
}

/// One fact of a run and its verdict.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub class: FactClass,
    /// `probe io_uring tmpfs shared rw (tmpfs)`, `bench io_uring anon private rw 2M (anon)`,
    /// `storm io_uring tmpfs shared lost_write`,
    /// `lifecycle dup-close tmpfs lease_ended`, `run completed`.
    pub name: String,
    /// Where the fact is, field by field without the filesystem, for tools that address
    /// facts (`--check`, KCIDB test paths): `[io_uring, tmpfs, shared, rw]` for a probe cell
    /// (`[.., rw, device_io]` for its device I/O), `[io_uring, anon, private, rw, 2M]` for a
    /// bench cell, `[io_uring, tmpfs, shared]` for a storm (`[.., shared, control]` for its
    /// control cell)
    /// that did not run and `[io_uring, tmpfs, shared, lost_write]` for one of its facts,
    /// `[dup-close, tmpfs, lease_ended]` for a lifecycle fact, `[]` for the run.
    pub path: Vec<String>,
    pub verdict: Verdict,
    pub measured: String,
    pub expected: Option<String>,
    /// The rule's reason; for `notrun`, why it did not run; for `error`, what went wrong.
    pub why: Option<String>,
    /// More about the measurement: the device I/O of a cell, the violations behind a count.
    pub note: Option<String>,
}

/// The run as a whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// The run completed and every judged fact is as expected.
    AsExpected,
    /// The run completed and at least one fact differs from the expectations.
    Differs,
    /// The run stopped on an error, or did not complete.
    Error(String),
    /// A signal stopped the run (its name, e.g. `SIGINT`).
    Interrupted(String),
}

/// The number of a signal pinstorm handles, by the name a result records.
pub fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "SIGHUP" => 1,
        "SIGINT" => 2,
        "SIGQUIT" => 3,
        "SIGTERM" => 15,
        _ => return None,
    })
}

impl Status {
    /// 0 as expected, 3 differs, 1 error, 128 + N stopped by signal N (1 when the signal is
    /// not one pinstorm handles).
    pub fn exit_code(&self) -> i32 {
        match self {
            Status::AsExpected => 0,
            Status::Differs => 3,
            Status::Error(_) => 1,
            Status::Interrupted(sig) => signal_number(sig).map_or(1, |n| 128 + n),
        }
    }
}

/// Every fact of a run with its verdict, and the run's status.
#[derive(Clone, Debug, PartialEq)]
pub struct Judgement {
    pub facts: Vec<Judged>,
    pub status: Status,
}

impl Judgement {
    pub fn exit_code(&self) -> i32 {
        self.status.exit_code()
    }

    /// How many facts (not counting the run itself) have this verdict.
    pub fn count(&self, v: Verdict) -> usize {
        self.measured().filter(|f| f.verdict == v).count()
    }

    /// The facts of the run's measurements (every fact but the run's completion).
    pub fn measured(&self) -> impl Iterator<Item = &Judged> {
        self.facts.iter().filter(|f| f.class != FactClass::Run)
    }

    pub fn differing(&self) -> impl Iterator<Item = &Judged> {
        self.facts.iter().filter(|f| f.verdict == Verdict::Differs)
    }

    /// One line: how many facts were judged and how they fared, and the exit status.
    pub fn line(&self) -> String {
        let judged = self.count(Verdict::AsExpected) + self.count(Verdict::Differs);
        let mut s = match &self.status {
            Status::AsExpected => format!("all {judged} judged facts as expected"),
            Status::Differs => format!(
                "{} of {judged} judged facts DIFFER from the expectations",
                self.count(Verdict::Differs)
            ),
            Status::Error(e) => format!("ERROR: {e}"),
            Status::Interrupted(sig) => format!("INTERRUPTED by {sig}"),
        };
        s.push_str(&format!(
            " ({} without expectation, {} notrun); exit status {}",
            self.count(Verdict::NoExpectation),
            self.count(Verdict::NotRun),
            self.exit_code()
        ));
        s
    }
}

fn why_notrun(r: &Option<String>) -> Option<String> {
    Some(r.clone().unwrap_or_else(|| "no reason recorded".into()))
}

/// The first example of an oracle's findings in a storm, for the note of its fact.
fn oracle_note(s: &StormResult, k: OracleKind) -> Option<String> {
    let o = &s.oracle;
    if let Some(f) = k.finding(o) {
        return f
            .examples
            .first()
            .map(|v| format!("e.g. {} offset {}+{}: {}", v.file, v.offset, v.len, v.what));
    }
    match k {
        OracleKind::Blocked => o.blocked.examples.first().map(|b| {
            format!(
                "e.g. {} in {} for {}",
                b.op,
                b.thread,
                b.blocked_ms
                    .map(|m| format!("{m:.1} ms"))
                    .unwrap_or_else(|| "ever".into())
            )
        }),
        OracleKind::KernelWarnings => o.kernel_warnings.lines.first().cloned(),
        _ => None,
    }
}

/// The name of the storm fact for a storm's registrations.
pub const REGISTRATIONS: &str = "registrations";

/// Judge a storm that ran against the expectations: its registrations (`[[expect]]`, as
/// the storm counted them in `unexpected_outcomes`) and each oracle's count (`[[oracle]]`).
/// Called when the storm has run; the rows go to `storm_verdicts`.
pub fn judge_storm(
    exp: &Expectations,
    s: &StormResult,
    kernel: &KernelRelease,
    rdma_device: Option<&str>,
) -> Vec<FactVerdict> {
    if s.outcome != "ok" {
        return Vec::new();
    }
    let cell = Cell {
        pin: &s.pin,
        backing: &s.backing,
        fs: &s.fs,
        map: &s.map,
        access: "rw",
        dax: s.dax,
        rdma_device,
    };
    let mut out = Vec::new();
    let u = &s.oracle.unexpected_outcomes;
    let t = &s.totals;
    let mut outcomes: Vec<String> = Vec::new();
    if t.registrations > 0 {
        outcomes.push(format!("ok x{}", t.registrations));
    }
    outcomes.extend(t.register_errors.iter().map(|(e, n)| format!("{e} x{n}")));
    let measured = match u.count {
        0 => outcomes.join(", "),
        n => format!(
            "{}; {n} not racing a layout operation gave another outcome than expected",
            outcomes.join(", ")
        ),
    };
    out.push(match (&u.notrun, exp.lookup(&cell, kernel)) {
        (Some(why), _) => FactVerdict {
            fact: REGISTRATIONS.into(),
            measured,
            expected: None,
            verdict: Verdict::NotRun,
            why: Some(why.clone()),
        },
        (None, None) => FactVerdict {
            fact: REGISTRATIONS.into(),
            measured,
            expected: None,
            verdict: Verdict::NoExpectation,
            why: None,
        },
        (None, Some(r)) => FactVerdict {
            fact: REGISTRATIONS.into(),
            measured,
            expected: Some(r.outcome.clone()),
            verdict: if u.count > 0 {
                Verdict::Differs
            } else {
                Verdict::AsExpected
            },
            why: Some(r.why.clone()),
        },
    });
    for k in rule_oracles() {
        let count = k.count(&s.oracle);
        let by_op = k
            .finding(&s.oracle)
            .map(|f| &f.by_op)
            .filter(|b| !b.is_empty());
        if let (None, Some(by_op)) = (k.notrun(&s.oracle), by_op) {
            out.push(judge_by_op(exp, k, &cell, kernel, count, by_op));
            continue;
        }
        let fv = match (k.notrun(&s.oracle), exp.lookup_oracle(k, &cell, kernel)) {
            (Some(why), _) => FactVerdict {
                fact: k.name().into(),
                measured: count.to_string(),
                expected: None,
                verdict: Verdict::NotRun,
                why: Some(why.to_string()),
            },
            (None, None) => FactVerdict {
                fact: k.name().into(),
                measured: count.to_string(),
                expected: None,
                verdict: Verdict::NoExpectation,
                why: None,
            },
            (None, Some(r)) => FactVerdict {
                fact: k.name().into(),
                measured: count.to_string(),
                expected: Some(r.expected()),
                verdict: if r.max.is_none_or(|m| count <= m) {
                    Verdict::AsExpected
                } else {
                    Verdict::Differs
                },
                why: Some(r.why.clone()),
            },
        };
        out.push(fv);
    }
    out
}

/// An oracle count split by the operations it is attributed to: each part is judged by its
/// own rule (`op`), and the fact differs when any part does. `measured` stays the count
/// (`--check` compares it); the parts and their rules are in `expected` and `why`.
fn judge_by_op(
    exp: &Expectations,
    k: OracleKind,
    cell: &Cell,
    kernel: &KernelRelease,
    count: u64,
    by_op: &std::collections::BTreeMap<String, u64>,
) -> FactVerdict {
    let mut verdict = Verdict::AsExpected;
    let (mut expected, mut why) = (Vec::new(), Vec::new());
    for (op, &n) in by_op {
        match exp.lookup_oracle_op(k, cell, kernel, op) {
            None => {
                if verdict == Verdict::AsExpected {
                    verdict = Verdict::NoExpectation;
                }
                expected.push(format!("{op}: no expectation"));
                why.push(format!("{op} {n}: no rule"));
            }
            Some(r) => {
                let over = r.max.is_some_and(|m| n > m);
                if over {
                    verdict = Verdict::Differs;
                }
                expected.push(format!("{op}: {}", r.expected()));
                why.push(format!(
                    "{op} {n}{}: {}",
                    if over { " (differs)" } else { "" },
                    r.why
                ));
            }
        }
    }
    FactVerdict {
        fact: k.name().into(),
        measured: count.to_string(),
        expected: Some(expected.join("; ")),
        verdict,
        why: Some(why.join("; ")),
    }
}

/// Storm facts of a result written before storms were judged (no `storm_verdicts`):
/// registrations the storm counted as unexpected differ; nothing else was judged.
fn unjudged_storm(s: &StormResult) -> Vec<FactVerdict> {
    let u = &s.oracle.unexpected_outcomes;
    let mut out = vec![FactVerdict {
        fact: REGISTRATIONS.into(),
        measured: format!("{} unexpected", u.count),
        expected: None,
        verdict: match (&u.notrun, u.count) {
            (Some(_), _) => Verdict::NotRun,
            (None, 0) => Verdict::NoExpectation,
            (None, _) => Verdict::Differs,
        },
        why: u.notrun.clone().or_else(|| {
            (u.count > 0)
                .then(|| "the storm counted registrations the expectations did not expect".into())
        }),
    }];
    for k in rule_oracles() {
        out.push(FactVerdict {
            fact: k.name().into(),
            measured: k.count(&s.oracle).to_string(),
            expected: None,
            verdict: if k.notrun(&s.oracle).is_some() {
                Verdict::NotRun
            } else {
                Verdict::NoExpectation
            },
            why: k.notrun(&s.oracle).map(str::to_string),
        });
    }
    out
}

/// The device I/O check of a probe cell that pinned: the device's write through the pin must
/// land in the mapping and its read must return what the CPU sees. No kernel or device is
/// expected to move data wrongly, so a mismatch or short write differs on every kernel (an
/// rxe ODP path that corrupted multi-packet writes was `ok` here before), and so does a
/// transfer that never completed (`blocked(...)`: a blocked operation). An errno from the
/// device is measured but not judged: whether a device may refuse I/O there is a property
/// of the device, not data corruption.
fn device_io_fact(p: &crate::schema::ProbeRow) -> Option<Judged> {
    let d = p.device_io.as_deref()?;
    let verdict = if d.starts_with("ok") {
        Verdict::AsExpected
    } else if d.starts_with("mismatch") || d.starts_with("short-write") || d.starts_with("blocked")
    {
        Verdict::Differs
    } else if d.starts_with("notrun") {
        return None;
    } else {
        Verdict::NoExpectation
    };
    Some(Judged {
        class: FactClass::Probe,
        name: format!(
            "probe {} {} {} {} ({}) device_io",
            p.pin, p.backing, p.map, p.access, p.fs
        ),
        path: probe_path(p, Some("device_io")),
        verdict,
        measured: d.to_string(),
        expected: (verdict != Verdict::NoExpectation).then(|| "ok".to_string()),
        why: Some(
            "a device write through a pin lands in the mapping and a device read returns what the CPU sees".into(),
        ),
        note: None,
    })
}

/// A bench cell's fact, from its `cycle` row (the other rows are that cell's parts). The
/// verdict is the one the benchmark judged with the expectations; a row written before bench
/// cells were judged has none and is `no-expectation`.
fn bench_fact(b: &crate::schema::BenchRow) -> Option<Judged> {
    if b.op != "cycle" {
        return None;
    }
    let verdict = if b.outcome == "notrun" {
        Verdict::NotRun
    } else {
        b.verdict.unwrap_or(Verdict::NoExpectation)
    };
    let counts = |m: &std::collections::BTreeMap<String, u64>| {
        m.iter()
            .map(|(k, n)| format!("{k} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let note = match (b.errors.is_empty(), b.baseline_errors.is_empty()) {
        (true, true) => None,
        (false, true) => Some(format!("failed calls: {}", counts(&b.errors))),
        (true, false) => Some(format!("tight loop failed: {}", counts(&b.baseline_errors))),
        (false, false) => Some(format!(
            "failed calls: {}; tight loop failed: {}",
            counts(&b.errors),
            counts(&b.baseline_errors)
        )),
    };
    Some(Judged {
        class: FactClass::Bench,
        path: vec![
            b.pin.clone(),
            b.backing.clone(),
            b.map.clone(),
            b.access.clone(),
            crate::human::human_size(b.size),
        ],
        name: format!(
            "bench {} {} {} {} {} ({})",
            b.pin,
            b.backing,
            b.map,
            b.access,
            crate::human::human_size(b.size),
            b.fs
        ),
        verdict,
        measured: b.outcome.clone(),
        expected: b.expected.clone(),
        why: if verdict == Verdict::NotRun {
            why_notrun(&b.reason)
        } else {
            b.expected_because.clone()
        },
        note,
    })
}

fn probe_path(p: &crate::schema::ProbeRow, leaf: Option<&str>) -> Vec<String> {
    [&p.pin, &p.backing, &p.map, &p.access]
        .into_iter()
        .cloned()
        .chain(leaf.map(str::to_string))
        .collect()
}

/// A control cell's path has `control` after the map, so it never collides with the storm's.
fn storm_path(s: &StormResult, fact: Option<&str>) -> Vec<String> {
    [&s.pin, &s.backing, &s.map]
        .into_iter()
        .cloned()
        .chain(s.control.then(|| "control".to_string()))
        .chain(fact.map(str::to_string))
        .collect()
}

/// The verdict of a run: every fact, and the status that decides the exit status.
pub fn judge(r: &RunResult) -> Judgement {
    let mut facts = Vec::new();
    for p in &r.probe {
        let verdict = if p.outcome == "notrun" {
            Verdict::NotRun
        } else {
            p.verdict
        };
        facts.push(Judged {
            class: FactClass::Probe,
            name: format!(
                "probe {} {} {} {} ({})",
                p.pin, p.backing, p.map, p.access, p.fs
            ),
            path: probe_path(p, None),
            verdict,
            measured: p.outcome.clone(),
            expected: p.expected.clone(),
            why: if verdict == Verdict::NotRun {
                why_notrun(&p.reason)
            } else {
                p.expected_because.clone()
            },
            note: p.device_io.as_ref().map(|d| format!("device io {d}")),
        });
        if let Some(fact) = device_io_fact(p) {
            facts.push(fact);
        }
    }
    facts.extend(r.bench.iter().filter_map(bench_fact));
    for s in &r.storms {
        let cell = format!("storm {}", s.cell());
        if s.outcome != "ok" {
            facts.push(Judged {
                class: FactClass::Storm,
                name: cell,
                path: storm_path(s, None),
                verdict: Verdict::NotRun,
                measured: s.outcome.clone(),
                expected: None,
                why: why_notrun(&s.reason),
                note: None,
            });
            continue;
        }
        let stored: Vec<FactVerdict> = r
            .storm_verdicts
            .iter()
            .filter(|v| {
                v.pin == s.pin && v.backing == s.backing && v.map == s.map && v.control == s.control
            })
            .map(|v| v.fact.clone())
            .collect();
        let rows = if stored.is_empty() {
            unjudged_storm(s)
        } else {
            stored
        };
        for f in rows {
            let kind = if f.fact == REGISTRATIONS {
                Some(OracleKind::UnexpectedOutcomes)
            } else {
                OracleKind::parse(&f.fact)
            };
            facts.push(Judged {
                class: FactClass::Storm,
                name: format!("{cell} {}", f.fact),
                path: storm_path(s, Some(&f.fact)),
                verdict: f.verdict,
                measured: f.measured,
                expected: f.expected,
                why: f.why,
                note: kind.and_then(|k| oracle_note(s, k)),
            });
        }
    }
    for c in r.leases.iter().flat_map(|l| &l.lifecycle) {
        let cell = format!("lifecycle {} {}", c.scenario, c.backing);
        if c.outcome != "ok" {
            facts.push(Judged {
                class: FactClass::Lifecycle,
                name: cell,
                path: vec![c.scenario.clone(), c.backing.clone()],
                verdict: Verdict::NotRun,
                measured: c.outcome.clone(),
                expected: None,
                why: why_notrun(&c.reason),
                note: None,
            });
            continue;
        }
        // A pin that outlived its lease is what the fact `device_write_after_break = lost`
        // says; the expectations judge that fact, and the violation explains it.
        let outlived = (!c.violations.is_empty()).then(|| {
            c.violations
                .iter()
                .map(|v| v.what.clone())
                .collect::<Vec<_>>()
                .join("; ")
        });
        let mut explained = false;
        for f in &c.verdicts {
            let note = if f.fact == "device_write_after_break" {
                explained = true;
                outlived.clone()
            } else {
                None
            };
            facts.push(Judged {
                class: FactClass::Lifecycle,
                name: format!("{cell} {}", f.fact),
                path: vec![c.scenario.clone(), c.backing.clone(), f.fact.clone()],
                verdict: f.verdict,
                measured: f.measured.clone(),
                expected: f.expected.clone(),
                why: f.why.clone(),
                note,
            });
        }
        if let (Some(what), false) = (&outlived, explained) {
            facts.push(Judged {
                class: FactClass::Lifecycle,
                name: format!("{cell} violations"),
                path: vec![c.scenario.clone(), c.backing.clone(), "violations".into()],
                verdict: Verdict::NoExpectation,
                measured: c.violations.len().to_string(),
                expected: None,
                why: None,
                note: Some(what.clone()),
            });
        }
    }
    for m in &r.migration {
        let cell = format!("migration {} {}", m.pin, m.backing);
        if m.outcome != "ok" {
            facts.push(Judged {
                class: FactClass::Migration,
                name: cell,
                path: vec![m.pin.clone(), m.backing.clone()],
                verdict: Verdict::NotRun,
                measured: m.outcome.clone(),
                expected: None,
                why: why_notrun(&m.reason),
                note: None,
            });
            continue;
        }
        for f in &m.verdicts {
            facts.push(Judged {
                class: FactClass::Migration,
                name: format!("{cell} {}", f.fact),
                path: vec![m.pin.clone(), m.backing.clone(), f.fact.clone()],
                verdict: f.verdict,
                measured: f.measured.clone(),
                expected: f.expected.clone(),
                why: f.why.clone(),
                note: None,
            });
        }
    }
    let status = match (&r.interrupted, &r.error, r.complete) {
        (Some(sig), _, _) => Status::Interrupted(sig.clone()),
        (None, Some(e), _) => Status::Error(e.clone()),
        (None, None, false) => Status::Error("the run did not complete".into()),
        (None, None, true) if facts.iter().any(|f| f.verdict == Verdict::Differs) => {
            Status::Differs
        }
        (None, None, true) => Status::AsExpected,
    };
    facts.push(Judged {
        class: FactClass::Run,
        name: "run completed".into(),
        path: Vec::new(),
        verdict: match status {
            Status::AsExpected | Status::Differs => Verdict::AsExpected,
            _ => Verdict::Error,
        },
        measured: if r.complete {
            "complete".into()
        } else {
            "incomplete".into()
        },
        expected: Some("complete".into()),
        why: match &status {
            Status::Interrupted(sig) => Some(format!("interrupted by {sig}")),
            Status::Error(e) => Some(format!("stopped on an error: {e}")),
            _ => None,
        },
        note: None,
    });
    Judgement { facts, status }
}

#[cfg(test)]
mod tests;
