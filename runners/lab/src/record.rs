//! The result the host files for a kernel: the guest's own (with the lab record added), or a
//! placeholder saying why there is none; and its one-line summary for the matrix table.

use pinstorm_analysis::schema::{Environment, LabFact, LabRecord, RunResult, ScenarioRecord};
use pinstorm_runners::run::now_rfc3339;

use crate::options::LabOptions;
use crate::status::KernelStatus;

/// The scenario as every guest runs it: its text, and the seed it runs with.
pub(crate) fn scenario_record(opts: &LabOptions, seed: u64) -> ScenarioRecord {
    ScenarioRecord {
        name: opts.scenario_name.clone(),
        origin: opts.origin.clone(),
        seed,
        text: opts.plan.scenario_text.clone(),
    }
}

/// A result for a guest that produced none (panic, timeout, error), so the matrix has a
/// record of the kernel with the reason.
pub(crate) fn placeholder_result(
    scenario: ScenarioRecord,
    label: Option<String>,
    release: &str,
    run_id: &str,
    reason: &str,
) -> RunResult {
    RunResult {
        label,
        finished: Some(now_rfc3339()),
        complete: false,
        error: Some(
            reason
                .lines()
                .next()
                .unwrap_or("the guest returned no result")
                .to_string(),
        ),
        command: std::env::args().collect(),
        notes: vec![format!("no result came back from the guest: {reason}")],
        ..RunResult::new(
            run_id,
            now_rfc3339(),
            scenario,
            Environment {
                kernel_release: release.into(),
                virtualized: Some("qemu".into()),
                ..Environment::default()
            },
        )
    }
}

/// Make `result` the one the host files: with the lab record and the run's label, and with
/// a run id and kernel release that are plain names. The guest names both, and they become
/// directory names on the host, so anything else is replaced by the host's own.
pub(crate) fn file_as(
    result: &mut RunResult,
    lab: LabRecord,
    label: Option<&String>,
    host_run_id: &str,
    release: &str,
) {
    if result.label.is_none() {
        result.label = label.cloned();
    }
    result.lab = Some(lab);
    let plain =
        |s: &str| !s.is_empty() && s != "." && s != ".." && !s.contains('/') && !s.contains('\0');
    if !plain(&result.run_id) {
        result.run_id = host_run_id.into();
    }
    if !plain(&result.environment.kernel_release) {
        result.environment.kernel_release = release.into();
    }
}

fn fact_ok(facts: &[LabFact], name: &str) -> Option<bool> {
    facts
        .iter()
        .find(|f| f.name == name)
        .map(|f| f.outcome == "ok")
}

/// One line for the matrix table: DAX verified, rxe, probe verdicts, violations.
pub fn summarize(r: &RunResult) -> String {
    let mut parts = Vec::new();
    let backing_ok = |name: &str| {
        r.backings
            .iter()
            .find(|b| b.backing == name)
            .map(|b| b.outcome == "ok")
    };
    let dax: Vec<String> = ["xfs-dax", "ext4-dax", "devdax"]
        .iter()
        .filter_map(|n| {
            backing_ok(n).map(|ok| format!("{n} {}", if ok { "DAX" } else { "notrun" }))
        })
        .collect();
    if !dax.is_empty() {
        parts.push(dax.join(", "));
    }
    if let Some(lab) = &r.lab {
        if let Some(ok) = fact_ok(&lab.guest, "rxe") {
            parts.push(format!("rxe {}", if ok { "active" } else { "notrun" }));
        }
        let bad: Vec<_> = lab
            .console_events
            .iter()
            .filter(|e| e.kind != "hung-task" || lab.status != KernelStatus::Ok.as_str())
            .map(|e| e.kind.as_str())
            .collect();
        if !bad.is_empty() {
            parts.push(format!("console: {}", bad.join(",")));
        }
    }
    if !r.probe.is_empty() {
        use pinstorm_analysis::verdict::Verdict;
        let count = |v: Verdict| r.probe.iter().filter(|p| p.verdict == v).count();
        parts.push(format!(
            "probe {} as expected, {} differ, {} notrun",
            count(Verdict::AsExpected),
            count(Verdict::Differs),
            r.probe.iter().filter(|p| p.outcome == "notrun").count()
        ));
    }
    if let Some(lab) = r.lab.as_ref().filter(|l| !l.kselftests.is_empty()) {
        let k: Vec<String> = lab.kselftests.iter().map(|k| k.brief()).collect();
        parts.push(format!("kselftests: {}", k.join(", ")));
    }
    let lost: u64 = r.storms.iter().map(|s| s.oracle.lost_write.count).sum();
    if !r.storms.is_empty() {
        parts.push(format!("storms: {lost} lost writes"));
    }
    if let Some(e) = &r.error {
        parts.push(format!("error: {e}"));
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::options::LabPlan;
    use crate::{guest::PmemMode, kernels::KernelSpec};

    fn opts(seed: Option<u64>) -> LabOptions {
        let (_, text, origin) = pinstorm_workloads::scenario::Scenario::resolve("quick").unwrap();
        LabOptions {
            plan: LabPlan {
                kernels: vec![KernelSpec::Deb("6.1".into())],
                scenario_text: text,
                seed,
                label: Some("gup-v3".into()),
                expectations: None,
                accel: "tcg".into(),
                pmem: PmemMode::None,
                devdax: false,
                rxe: false,
                memory_mib: 2048,
                cpus: 2,
                inject: None,
                guest_exec: None,
                build: false,
                pmem_scratch_dev: false,
                kmem_node: false,
                movablecore: None,
                kselftests: Vec::new(),
                kselftest_source: None,
            },
            origin,
            scenario_name: "quick".into(),
            results_root: "/r".into(),
            cache: "/c".into(),
            vng: None,
            timeout: std::time::Duration::from_secs(600),
            jobs: 1,
            refresh: false,
            fresh: false,
            mirror: String::new(),
            security_mirror: String::new(),
            guest_exe: None,
            verbose: false,
        }
    }

    #[test]
    fn a_guest_that_returned_nothing_is_filed_with_the_scenarios_seed() {
        for (flag, seed) in [(None, 1), (Some(9), 9)] {
            let o = opts(flag);
            let s = scenario_record(&o, o.seed().unwrap());
            let r = placeholder_result(
                s,
                o.plan.label.clone(),
                "6.1.0-56-amd64",
                "r1",
                "the guest kernel panicked (console line 7):\n...",
            );
            assert_eq!(r.scenario.seed, seed, "--seed {flag:?}");
            assert_eq!(r.scenario.name, "quick");
            assert_eq!(
                r.error.as_deref(),
                Some("the guest kernel panicked (console line 7):")
            );
            assert!(!r.complete);
            assert_eq!(r.environment.kernel_release, "6.1.0-56-amd64");
        }
    }

    #[test]
    fn a_guests_run_id_and_release_are_filed_only_as_plain_names() {
        let o = opts(None);
        let scenario = scenario_record(&o, 1);
        let lab = |status: &str| LabRecord {
            kernel_spec: "deb:6.1".into(),
            kernel_source: Vec::new(),
            status: status.into(),
            reason: None,
            accel: "tcg".into(),
            accel_reason: String::new(),
            vng_command: Vec::new(),
            qemu_command: None,
            console_log: "console.log".into(),
            console_events: Vec::new(),
            wall_seconds: 1.0,
            guest: Vec::new(),
            host_disturbance: None,
            timings: None,
            kselftests: Vec::new(),
            boot_retry: None,
        };
        for (run_id, release, filed_id, filed_release) in [
            ("../../etc", "..", "host-run", "6.1.0-56-amd64"),
            ("", "a/b", "host-run", "6.1.0-56-amd64"),
            ("guest-run", "6.1.0-99-amd64", "guest-run", "6.1.0-99-amd64"),
        ] {
            let mut r = placeholder_result(scenario.clone(), None, release, run_id, "");
            file_as(
                &mut r,
                lab("ok"),
                o.plan.label.as_ref(),
                "host-run",
                "6.1.0-56-amd64",
            );
            assert_eq!(r.run_id, filed_id);
            assert_eq!(r.environment.kernel_release, filed_release);
            assert_eq!(r.label.as_deref(), Some("gup-v3"));
            assert_eq!(r.lab.as_ref().unwrap().status, "ok");
        }
    }
}
