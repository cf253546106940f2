//! The run's result file: its first (incomplete) version, rewritten atomically after every
//! job and at the end, and how the facts so far fared against the expectations.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

use pinstorm_analysis::expect::Expectations;
use pinstorm_analysis::schema::{Environment, ExpectationsRecord, RunResult, ScenarioRecord};
use pinstorm_analysis::store;
use pinstorm_analysis::verdict::{self, Verdict};
use pinstorm_workloads::scenario::Scenario;

use super::RunOptions;

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// `20261122T043000.123Z-1a2b`: sorts by start time (to the millisecond), unique enough for
/// one host.
pub fn new_run_id() -> String {
    let now = SystemTime::now();
    let t = humantime::format_rfc3339_millis(now)
        .to_string()
        .replace(['-', ':'], "");
    let nanos = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let salt = (u64::from(nanos) ^ (u64::from(std::process::id()) << 16)) & 0xffff;
    format!("{t}-{salt:04x}")
}

/// Writes one run's `result.json` under `RESULTS/KERNEL/RUN_ID/`, each time whole and
/// atomically, so a reader never sees half a file and an interrupted run keeps the last.
pub struct ResultWriter {
    dir: PathBuf,
    path: PathBuf,
    expectations_origin: String,
}

impl ResultWriter {
    /// Write the first version of `result` (incomplete, nothing measured yet).
    pub fn create(
        results_root: &Path,
        result: &RunResult,
        expectations: &Expectations,
    ) -> Result<ResultWriter> {
        let dir = store::result_dir(
            results_root,
            &result.environment.kernel_release,
            &result.run_id,
        );
        let path = store::write_result(&dir, result).context("writing the initial result")?;
        Ok(ResultWriter {
            dir,
            path,
            expectations_origin: expectations.origin.clone(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Judge the facts so far ([`summarize`]) and rewrite the file.
    pub fn write(&self, result: &mut RunResult) -> Result<()> {
        summarize(&self.expectations_origin, result);
        store::write_result(&self.dir, result)?;
        Ok(())
    }
}

/// The result of a run that has just started: what is run, where, by whom; nothing
/// measured.
pub fn started(opts: &RunOptions, run_id: &str, env: &Environment) -> RunResult {
    RunResult {
        label: opts.label.clone(),
        complete: false,
        command: opts.command.clone(),
        notes: unjudged_kinds(&opts.scenario, &opts.expectations),
        ..RunResult::new(
            run_id,
            now_rfc3339(),
            ScenarioRecord {
                name: opts.scenario.name.clone(),
                origin: opts.origin.clone(),
                seed: opts.scenario.seed,
                text: toml::to_string(&opts.scenario).unwrap_or_default(),
            },
            env.clone(),
        )
    }
}

/// Notes for the kinds of facts the scenario measures that the expectations have no rules
/// for (a `--expectations` set without `[[fact]]` rules, say): those facts are reported as
/// `no-expectation` and never change the exit status, which should not go unnoticed.
fn unjudged_kinds(s: &Scenario, expectations: &Expectations) -> Vec<String> {
    let (pins, facts, oracles) = expectations.counts();
    let mut out = Vec::new();
    let mut say = |what: &str, kind: &str| {
        out.push(format!(
            "the expectations ({}) have no {kind} rules: {what} are not judged (no-expectation)",
            expectations.origin
        ))
    };
    if pins == 0 && (s.probe.is_some() || s.storm.is_some()) {
        say("probe cells and storm registrations", "[[expect]]");
    }
    if facts == 0 && s.lease.as_ref().is_some_and(|l| !l.lifecycle.is_empty()) {
        say("lease lifecycle facts", "[[fact]]");
    }
    if oracles == 0 && s.storm.is_some() {
        say("storm oracle counts", "[[oracle]]");
    }
    out
}

/// How the run's facts fared against the expectations so far (from the one judgement).
pub fn summarize(expectations_origin: &str, result: &mut RunResult) {
    let j = verdict::judge(result);
    result.expectations = Some(ExpectationsRecord {
        origin: expectations_origin.into(),
        checked: j.count(Verdict::AsExpected)
            + j.count(Verdict::Differs)
            + j.count(Verdict::NoExpectation),
        differing: j.count(Verdict::Differs),
        without_expectation: j.count(Verdict::NoExpectation),
    });
}
