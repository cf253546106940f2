//! Exporters, one module per format: [`csv`] (every latency metric, violation count and
//! capability cell of every run, one row each), [`ktap`] (what kernel CI systems read) and
//! [`junit`] (generic CI). KTAP and JUnit share one list of test cases per run, built here.

pub mod csv;
pub mod junit;
pub mod ktap;

use crate::schema::RunResult;

/// How a test case ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Pass,
    /// With what went wrong.
    Fail(String),
    /// With why it did not run.
    Skip(String),
}

/// One test case: a probe cell, an oracle of a storm, a lease lifecycle fact.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// `probe`, `storm`, `lifecycle`, `run`.
    pub class: &'static str,
    pub name: String,
    pub status: Status,
    /// Said about a passing case (e.g. "no expectation for this kernel").
    pub note: Option<String>,
}

/// The test cases of a run: each probe cell (fails when it differs from the expectations),
/// each oracle of each storm (fails on any violation), each lease lifecycle fact, and the
/// run itself (fails when it did not complete).
pub fn cases(r: &RunResult) -> Vec<Case> {
    let mut v = Vec::new();
    let reason = |x: &Option<String>| x.clone().unwrap_or_else(|| "no reason recorded".into());
    for p in &r.probe {
        let name = format!(
            "probe {} {} {} {} ({})",
            p.pin, p.backing, p.map, p.access, p.fs
        );
        let (status, note) = match p.verdict.as_str() {
            _ if p.outcome == "notrun" => (Status::Skip(reason(&p.reason)), None),
            "differs" => (
                Status::Fail(format!(
                    "outcome {}, expected {}{}",
                    p.outcome,
                    p.expected.as_deref().unwrap_or("?"),
                    p.expected_because
                        .as_deref()
                        .map(|b| format!(" ({b})"))
                        .unwrap_or_default()
                )),
                None,
            ),
            "no-expectation" => (
                Status::Pass,
                Some(format!(
                    "outcome {}, no expectation for this kernel",
                    p.outcome
                )),
            ),
            _ => (Status::Pass, Some(format!("outcome {}", p.outcome))),
        };
        v.push(Case {
            class: "probe",
            name,
            status,
            note,
        });
    }
    for s in &r.storms {
        let cell = format!("storm {} {} {}", s.pin, s.backing, s.map);
        if s.outcome == "notrun" {
            v.push(Case {
                class: "storm",
                name: cell,
                status: Status::Skip(reason(&s.reason)),
                note: None,
            });
            continue;
        }
        let o = &s.oracle;
        let findings = [
            ("lost_write", o.lost_write.count, &o.lost_write.notrun),
            (
                "stale_exposure",
                o.stale_exposure.count,
                &o.stale_exposure.notrun,
            ),
            ("cross_file", o.cross_file.count, &o.cross_file.notrun),
            ("leaked_pins", o.leaked_pins.count, &o.leaked_pins.notrun),
            ("blocked", o.blocked.count, &None),
            (
                "kernel_warnings",
                o.kernel_warnings.count,
                &o.kernel_warnings.notrun,
            ),
            (
                "unexpected_outcomes",
                o.unexpected_outcomes.count,
                &o.unexpected_outcomes.notrun,
            ),
        ];
        for (name, count, notrun) in findings {
            let status = match notrun {
                Some(why) => Status::Skip(why.clone()),
                None if count > 0 => Status::Fail(format!("{count} {name} violation(s)")),
                None => Status::Pass,
            };
            v.push(Case {
                class: "storm",
                name: format!("{cell} {name}"),
                status,
                note: None,
            });
        }
    }
    for c in r.leases.iter().flat_map(|l| &l.lifecycle) {
        let cell = format!("lifecycle {} {}", c.scenario, c.backing);
        if c.outcome == "notrun" {
            v.push(Case {
                class: "lifecycle",
                name: cell,
                status: Status::Skip(reason(&c.reason)),
                note: None,
            });
            continue;
        }
        for f in &c.verdicts {
            let status = if f.verdict == "differs" {
                Status::Fail(format!(
                    "{} measured {}, expected {}",
                    f.fact,
                    f.measured,
                    f.expected.as_deref().unwrap_or("?")
                ))
            } else {
                Status::Pass
            };
            v.push(Case {
                class: "lifecycle",
                name: format!("{cell} {}", f.fact),
                status,
                note: Some(format!("measured {}", f.measured)),
            });
        }
        if !c.violations.is_empty() {
            v.push(Case {
                class: "lifecycle",
                name: format!("{cell} violations"),
                status: Status::Fail(format!("{} violation(s)", c.violations.len())),
                note: None,
            });
        }
    }
    let status = if r.complete {
        Status::Pass
    } else {
        Status::Fail(match (&r.interrupted, &r.error) {
            (Some(sig), _) => format!("interrupted by {sig}"),
            (_, Some(e)) => format!("stopped on an error: {e}"),
            _ => "did not complete".into(),
        })
    };
    v.push(Case {
        class: "run",
        name: "run completed".into(),
        status,
        note: None,
    });
    v
}
