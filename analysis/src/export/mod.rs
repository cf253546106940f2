//! Exporters, one module per format: [`csv`] (every latency metric, violation count and
//! capability cell of every run, one row each), [`ktap`] (what kernel CI systems read),
//! [`junit`] (generic CI) and [`kcidb`] (the kernel community's shared results database).
//! KTAP and JUnit share one list of test cases per run, built here; KCIDB keeps the five
//! statuses the judgement has apart, so it reads the judgement itself.

pub mod csv;
pub mod junit;
pub mod kcidb;
pub mod ktap;

use crate::schema::RunResult;
use crate::verdict::{self, FactClass, Verdict};

/// How a test case ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Status {
    Pass,
    /// With what went wrong.
    Fail(String),
    /// With why it did not run.
    Skip(String),
}

/// One test case: a probe cell, a storm's registrations or oracle count, a lease lifecycle
/// fact, the run's completion.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// `probe`, `storm`, `lifecycle`, `run`.
    pub class: &'static str,
    pub name: String,
    pub status: Status,
    /// Said about a passing case (e.g. "no expectation for this kernel").
    pub note: Option<String>,
}

/// The test cases of a run: every fact [`verdict::judge`] judged, one case each, and the
/// run itself. A case fails exactly when its fact differs from the expectations (or the run
/// stopped), so a run's KTAP has a `not ok` line exactly when `pinstorm run` exited non-zero.
/// Facts without an expectation pass with a note saying so; facts that did not run are
/// skipped with the reason.
pub fn cases(r: &RunResult) -> Vec<Case> {
    let judgement = verdict::judge(r);
    judgement
        .facts
        .into_iter()
        .map(|f| {
            let why = f.why.clone().unwrap_or_else(|| "no reason recorded".into());
            let status = match f.verdict {
                Verdict::Differs => Status::Fail(format!(
                    "measured {}, expected {}{}{}",
                    f.measured,
                    f.expected.as_deref().unwrap_or("?"),
                    f.why
                        .as_deref()
                        .map(|b| format!(" ({b})"))
                        .unwrap_or_default(),
                    f.note
                        .as_deref()
                        .map(|n| format!("; {n}"))
                        .unwrap_or_default()
                )),
                Verdict::Error => Status::Fail(why),
                Verdict::NotRun => Status::Skip(why),
                Verdict::AsExpected | Verdict::NoExpectation => Status::Pass,
            };
            let note = match f.verdict {
                Verdict::AsExpected if f.class == FactClass::Run => None,
                Verdict::AsExpected => Some(format!("measured {}", f.measured)),
                Verdict::NoExpectation => Some(format!(
                    "measured {}, no expectation for this kernel",
                    f.measured
                )),
                _ => None,
            }
            .map(|n| match &f.note {
                Some(more) => format!("{n}; {more}"),
                None => n,
            });
            Case {
                class: f.class.name(),
                name: f.name,
                status,
                note,
            }
        })
        .collect()
}
