//! The `lab` part of the result schema: how a lab guest ran (docs/result-schema.md).

use serde::{Deserialize, Serialize};

use super::Disturbance;

/// How a lab guest ran (added by the host after the guest returned).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabRecord {
    /// The `--kernels` entry (`deb:6.12`, `path:...`, `tree:...`).
    pub kernel_spec: String,
    /// Where the kernel came from (Debian package=version, or the user's paths).
    pub kernel_source: Vec<String>,
    /// `ok`, `panic`, `timeout`, `guest-error`, `interrupted`.
    pub status: String,
    /// What went wrong, with the console lines that show it.
    pub reason: Option<String>,
    /// `kvm` or `tcg`, and why.
    pub accel: String,
    pub accel_reason: String,
    pub vng_command: Vec<String>,
    /// The QEMU command line virtme-ng ran (from `vng --dry-run` with the same arguments).
    pub qemu_command: Option<String>,
    /// The guest console, next to result.json.
    pub console_log: String,
    /// Kernel messages that matter (oops, BUG, WARNING, hung task, panic), from the console.
    pub console_events: Vec<ConsoleEvent>,
    /// Seconds from starting QEMU to the guest's result being back.
    pub wall_seconds: f64,
    /// What the guest set up: pmem namespaces, DAX filesystems, device-dax, soft-RoCE.
    pub guest: Vec<LabFact>,
    /// The host while the guest ran (QEMU and the lab are this host's own processes); the
    /// guest's own view, steal included, is the result's `disturbance`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_disturbance: Option<Disturbance>,
    /// Where this kernel's time went, phase by phase; null in results from before it was
    /// recorded.
    #[serde(default)]
    pub timings: Option<LabTimings>,
    /// The kernel's own selftests run in the same guest after the scenario
    /// (`pinstorm lab --kselftests`), built on the host from Debian's `linux-source` of the
    /// kernel; empty when none were asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kselftests: Vec<KselftestRecord>,
    /// Why this is the kernel's second boot: the first died before the lab's agent started
    /// (a panic or oops while the kernel booted; its console is `console-boot1.log` beside
    /// this result). Under TCG a stock 6.12 or 7.2 kernel now and then oopses on an int3 of
    /// its own live text patching while it boots (docs/findings.md). A kernel that fails
    /// that way twice is reported as it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_retry: Option<String>,
}

/// One kernel selftest (`cow`, `gup_longterm`, `migration`) as it ran in a lab guest.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct KselftestRecord {
    pub name: String,
    /// `ok` (every case passed or was skipped), `fail` (a case failed, or the program did
    /// not end cleanly: exit status, timeout, no plan), `notrun` (no source, no build, not
    /// run) with the reason.
    pub outcome: String,
    pub reason: Option<String>,
    /// The source the test was built from: `linux-source-6.12=6.12.118-1`.
    pub source: Option<String>,
    /// The booted kernel's Debian version (`6.1.192-3`); none for a kernel not from Debian.
    pub kernel_version: Option<String>,
    /// Whether `source` is the booted kernel's own version; when not, `source_note` says
    /// what differs.
    pub source_matches: bool,
    pub source_note: Option<String>,
    /// Whether it was built with liburing (its io_uring cases exist only then).
    pub liburing: bool,
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    pub seconds: Option<f64>,
    /// Its output, next to result.json.
    pub log: Option<String>,
    /// The filesystem types (statfs) of the guest's `/tmp` and of the test's working
    /// directory, where gup_longterm makes its `tmpfile` and `local tmpfile`.
    pub tmp_fs: Option<String>,
    pub cwd_fs: Option<String>,
    /// The KTAP plan (`1..N`) and each case's result.
    pub planned: Option<u32>,
    pub cases: Vec<KselftestCase>,
}

/// One test case of a selftest's KTAP output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KselftestCase {
    pub number: u32,
    /// `ok`, `fail` or `skip` (`ok N # SKIP why`); `xfail` for `# XFAIL`.
    pub result: String,
    /// What the case tests: the `# [RUN] ...` line before it (cow, gup_longterm), else the
    /// result line's own text.
    pub description: String,
    /// The result line's text after the number (`Should have worked`, the skip reason).
    pub message: String,
}

/// Seconds per phase of one kernel's lab run. The top-level phases (prepare, boot, set-up,
/// run, end) follow one another and sum to at most `total_s`; `setup` and `jobs` break two
/// of them down. Host phases are timed on the host; set-up and run by the guest's own clock
/// (under TCG and KVM alike it follows the host's); boot is the host seeing the guest's
/// first step, polled every 200 ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LabTimings {
    /// Fetching or finding the kernel, and choosing KVM or TCG (host).
    pub prepare_s: f64,
    /// QEMU start to the guest agent's first step (firmware, kernel, virtme-ng's init);
    /// null when the guest never got there.
    pub boot_s: Option<f64>,
    /// The guest agent's start to the scenario's start: the set-up of pmem, DAX
    /// filesystems, device-dax and soft-RoCE when the scenario waits for it, next to
    /// nothing when it runs beside the scenario (`beside`).
    pub setup_s: Option<f64>,
    /// Each set-up step, in order: `modules`, `pmem`, `devdax`, `mkfs-xfs`, `mkfs-ext4`, `rxe`,
    /// `fs-modules`; a step the scenario does not need is not run.
    pub setup: Vec<LabPhase>,
    /// The scenario in the guest, from its start to its result.
    pub run_s: Option<f64>,
    /// The guest's set-up steps that ran beside the scenario rather than before it (the
    /// modules, pmem and DAX filesystems while the probe's in-memory cells run), in order;
    /// empty when the scenario waited for them (they are then in `setup`).
    #[serde(default)]
    pub beside: Vec<LabPhase>,
    /// Each job of the run, in order (from the result's per-job `disturbance` intervals).
    pub jobs: Vec<LabPhase>,
    /// The scenario's end to QEMU gone (report, power-off, QEMU exit).
    pub end_s: Option<f64>,
    /// QEMU start to the scenario's start (boot + set-up).
    pub to_scenario_s: Option<f64>,
    /// QEMU start to the first job's result: boot, set-up, and the first job's end in the
    /// run (the run's own set-up of its backings and the first job).
    #[serde(default)]
    pub first_result_s: Option<f64>,
    /// Prepare plus QEMU start to QEMU gone.
    pub total_s: f64,
}

impl LabTimings {
    /// One readable line: `prepare 0.1s, boot 12.3s, set-up 6.1s (pmem 2.0, ...), run 20.0s
    /// (probe 3.0, ...), end 1.2s; scenario at 18.4s, total 40.1s`; set-up steps that ran
    /// beside the scenario follow its jobs (`run 20.0s (probe 3.0, ...; beside it: pmem
    /// 2.0, ...)`).
    pub fn describe(&self) -> String {
        let t = self;
        fn each(p: &[LabPhase]) -> String {
            p.iter()
                .map(|x| format!("{} {:.1}", x.name, x.seconds))
                .collect::<Vec<_>>()
                .join(", ")
        }
        fn parts(p: &[LabPhase]) -> String {
            if p.is_empty() {
                return String::new();
            }
            format!(" ({})", each(p))
        }
        let run_parts = match (t.jobs.is_empty(), t.beside.is_empty()) {
            (_, true) => parts(&t.jobs),
            (true, false) => format!(" (beside it: {})", each(&t.beside)),
            (false, false) => format!(" ({}; beside it: {})", each(&t.jobs), each(&t.beside)),
        };
        let opt = |v: Option<f64>| v.map_or("-".to_string(), |s| format!("{s:.1}s"));
        format!(
            "prepare {:.1}s, boot {}, set-up {}{}, run {}{}, end {}; scenario at {}, first result at {}, total {:.1}s",
            t.prepare_s,
            opt(t.boot_s),
            opt(t.setup_s),
            parts(&t.setup),
            opt(t.run_s),
            run_parts,
            opt(t.end_s),
            opt(t.to_scenario_s),
            opt(t.first_result_s),
            t.total_s
        )
    }
}

/// One timed phase.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LabPhase {
    pub name: String,
    pub seconds: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConsoleEvent {
    /// `panic`, `oops`, `bug`, `lockup`, `warning`, `hung-task`, `lockdep`, `rcu-stall`.
    pub kind: String,
    /// Line number in the console log (1-based).
    pub line: usize,
    pub text: String,
}

impl ConsoleEvent {
    /// Whether this event is a kernel warning a finished guest is flagged for (the lab's
    /// `kernel-warning` status, a failing KCIDB boot test): a WARNING, hung task, RCU stall
    /// or lockdep report. Panics, oopses, BUGs and lockups are worse and judged as such.
    pub fn is_warning(&self) -> bool {
        matches!(
            self.kind.as_str(),
            "warning" | "hung-task" | "rcu-stall" | "lockdep"
        )
    }
}

/// One thing the guest set up, or why it could not.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabFact {
    /// e.g. `pmem`, `fsdax-xfs`, `fsdax-ext4`, `devdax`, `rxe`, `control-xfs`.
    pub name: String,
    /// `ok` or `notrun`.
    pub outcome: String,
    /// Device, mount point, sysfs evidence.
    pub detail: String,
}

impl KselftestRecord {
    /// Cases with this result (`ok`, `fail`, `skip`, `xfail`).
    pub fn count(&self, result: &str) -> usize {
        self.cases.iter().filter(|c| c.result == result).count()
    }

    /// A few words for a table: `gup_longterm fail (7 ok, 1 fail, 42 skip)`, `cow notrun`.
    pub fn brief(&self) -> String {
        if self.cases.is_empty() {
            return format!("{} {}", self.name, self.outcome);
        }
        format!(
            "{} {} ({} ok, {} fail, {} skip)",
            self.name,
            self.outcome,
            self.count("ok"),
            self.count("fail"),
            self.count("skip")
        )
    }

    /// One line: `gup_longterm fail: 10 ok, 2 fail, 20 skip of 32 (linux-source-6.12=6.12.118-1,
    /// not the kernel's 6.1.192-3)`, or `cow notrun: why`.
    pub fn describe(&self) -> String {
        let mut s = format!("{} {}", self.name, self.outcome);
        if self.outcome == "notrun" || (self.cases.is_empty() && self.reason.is_some()) {
            s.push_str(&format!(": {}", self.reason.as_deref().unwrap_or("")));
        } else {
            s.push_str(&format!(
                ": {} ok, {} fail, {} skip",
                self.count("ok"),
                self.count("fail"),
                self.count("skip")
            ));
            if let Some(n) = self.planned {
                s.push_str(&format!(" of {n}"));
            }
            if let Some(r) = &self.reason {
                s.push_str(&format!("; {r}"));
            }
        }
        if let Some(src) = &self.source {
            let whose = match (&self.kernel_version, self.source_matches) {
                (Some(v), true) => format!("the kernel's own {v}"),
                (Some(v), false) => format!("not the kernel's {v}"),
                (None, _) => "the kernel is not a Debian package".into(),
            };
            s.push_str(&format!(" ({src}, {whose})"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selftest_says_its_counts_and_whose_source_it_was_built_from() {
        let case = |result: &str| KselftestCase {
            result: result.into(),
            ..KselftestCase::default()
        };
        let k = KselftestRecord {
            name: "gup_longterm".into(),
            outcome: "fail".into(),
            source: Some("linux-source-6.12=6.12.118-1".into()),
            kernel_version: Some("6.1.192-3".into()),
            planned: Some(3),
            cases: vec![case("ok"), case("fail"), case("skip")],
            ..KselftestRecord::default()
        };
        assert_eq!(k.brief(), "gup_longterm fail (1 ok, 1 fail, 1 skip)");
        assert_eq!(
            k.describe(),
            "gup_longterm fail: 1 ok, 1 fail, 1 skip of 3 (linux-source-6.12=6.12.118-1, not the kernel's 6.1.192-3)"
        );
        let n = KselftestRecord {
            name: "cow".into(),
            outcome: "notrun".into(),
            reason: Some("no cow.c".into()),
            ..KselftestRecord::default()
        };
        assert_eq!(n.brief(), "cow notrun");
        assert_eq!(n.describe(), "cow notrun: no cow.c");
    }
}
