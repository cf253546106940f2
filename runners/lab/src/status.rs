//! What became of a kernel: its status, judged in one place from the guest's console, how
//! the guest ended and what it returned, and what each status means for the exit code and
//! for resuming a matrix.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use pinstorm_analysis::schema::{ConsoleEvent, LabTimings, RunResult};
use pinstorm_runners::signals;

use crate::console;
use crate::guest::GuestReport;
use crate::vm::GuestEnd;

/// One kernel's status in the matrix; serialized as the kebab-case names the matrix state,
/// `--format json` and the result's `lab.status` use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KernelStatus {
    /// The guest ran the scenario and returned its result.
    Ok,
    /// It did, and a fact of its result differs from the expectations (a probe cell, a
    /// storm's registrations or oracle count, a lease lifecycle fact; as `pinstorm run`
    /// would exit 3).
    Differs,
    /// It did, and the console shows a WARNING, hung task, RCU stall or lockdep report.
    KernelWarning,
    /// The console shows an Oops, a BUG or a lockup.
    Oops,
    Panic,
    /// Killed by the watchdog after `--timeout`.
    Timeout,
    /// The guest returned no result, or the scenario stopped on an error.
    GuestError,
    /// The kernel could not be fetched or the guest not started: no result file.
    SetupError,
    Interrupted,
}

impl KernelStatus {
    pub const ALL: [KernelStatus; 9] = [
        KernelStatus::Ok,
        KernelStatus::Differs,
        KernelStatus::KernelWarning,
        KernelStatus::Oops,
        KernelStatus::Panic,
        KernelStatus::Timeout,
        KernelStatus::GuestError,
        KernelStatus::SetupError,
        KernelStatus::Interrupted,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            KernelStatus::Ok => "ok",
            KernelStatus::Differs => "differs",
            KernelStatus::KernelWarning => "kernel-warning",
            KernelStatus::Oops => "oops",
            KernelStatus::Panic => "panic",
            KernelStatus::Timeout => "timeout",
            KernelStatus::GuestError => "guest-error",
            KernelStatus::SetupError => "setup-error",
            KernelStatus::Interrupted => "interrupted",
        }
    }

    /// Whether the kernel was measured: its result stands, so a resumed matrix does not
    /// boot it again (and its status counts in the exit code again). A timeout, an error
    /// or an interruption runs again.
    pub fn measured(self) -> bool {
        matches!(
            self,
            KernelStatus::Ok
                | KernelStatus::Differs
                | KernelStatus::Panic
                | KernelStatus::Oops
                | KernelStatus::KernelWarning
        )
    }

    /// The lab's exit code if this were the only kernel: 0 `ok`; 3 a finding that is not a
    /// failure of the kernel (`differs`, `kernel-warning`); 1 anything worse.
    pub fn exit_code(self) -> i32 {
        match self {
            KernelStatus::Ok => 0,
            KernelStatus::Differs | KernelStatus::KernelWarning => 3,
            _ => 1,
        }
    }
}

impl fmt::Display for KernelStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One kernel's line of the matrix.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct KernelOutcome {
    pub spec: String,
    pub release: Option<String>,
    pub status: KernelStatus,
    pub result: Option<PathBuf>,
    pub summary: String,
    pub wall_seconds: f64,
    /// Where the kernel's time went (also in its result's `lab.timings`).
    #[serde(default)]
    pub timings: Option<LabTimings>,
}

/// The exit code of a matrix: 128+N when stopped by signal N; else the worst of its kernels
/// (1 over 3 over 0).
pub fn exit_code(
    statuses: impl IntoIterator<Item = KernelStatus>,
    interrupted: Option<i32>,
) -> i32 {
    if let Some(s) = interrupted {
        return 128 + s;
    }
    let rank = |code: i32| match code {
        0 => 0,
        3 => 1,
        _ => 2,
    };
    statuses
        .into_iter()
        .map(KernelStatus::exit_code)
        .max_by_key(|&c| rank(c))
        .unwrap_or(0)
}

/// What the host has of a guest once it ended.
pub struct Evidence<'a> {
    /// The console log, with the guest's stdout after it.
    pub console: &'a str,
    pub events: &'a [ConsoleEvent],
    pub end: &'a GuestEnd,
    /// `guest.json`: what the guest set up, and its error if the run failed.
    pub report: Option<&'a GuestReport>,
    /// The result the guest wrote, if it wrote one.
    pub result: Option<&'a RunResult>,
    pub timeout: Duration,
}

/// The verdict on one guest.
pub struct Judgement {
    /// How the guest itself went (`ok`, `panic`, `timeout`, `interrupted`, `oops`,
    /// `guest-error`): the result's `lab.status`.
    pub guest: KernelStatus,
    /// The kernel's line in the matrix: a guest that went `ok` is `differs` or
    /// `kernel-warning` when its result or console says so.
    pub kernel: KernelStatus,
    /// What went wrong, with the console lines that show it.
    pub reason: Option<String>,
}

/// Judge a guest. A panic outranks everything (a panicking guest also times out or ends
/// early); then the watchdog, a signal to pinstorm, an oops, and the guest's own errors.
pub fn judge(e: &Evidence) -> Judgement {
    let (guest, reason) = guest_status(e);
    // The same judgement as the run's exit status and its KTAP/JUnit export.
    let differs = e.result.is_some_and(|r| {
        pinstorm_analysis::verdict::judge(r).status == pinstorm_analysis::verdict::Status::Differs
    });
    let warned = events_warn(e.events);
    let kernel = match guest {
        KernelStatus::Ok if differs => KernelStatus::Differs,
        KernelStatus::Ok if warned => KernelStatus::KernelWarning,
        s => s,
    };
    Judgement {
        guest,
        kernel,
        reason,
    }
}

fn guest_status(e: &Evidence) -> (KernelStatus, Option<String>) {
    let text = e.console;
    if let Some(ev) = console::panicked(e.events) {
        return (
            KernelStatus::Panic,
            Some(format!(
                "the guest kernel panicked (console line {}):\n{}",
                ev.line,
                console::excerpt(text, ev.line, 25, 3)
            )),
        );
    }
    if let Some(last) = &e.end.stalled {
        return (
            KernelStatus::Timeout,
            Some(format!(
                "the boot stopped before the lab's agent started: the console was silent after {last:?}; the guest was killed; console tail:\n{}",
                console::tail(text, 30)
            )),
        );
    }
    if e.end.timed_out {
        let hung = e.events.iter().find(|ev| ev.kind == "hung-task");
        return (
            KernelStatus::Timeout,
            Some(format!(
                "{} after {}s; the guest was killed{}; console tail:\n{}",
                if e.result.is_some() {
                    "the guest wrote its result but did not exit"
                } else {
                    "no result"
                },
                e.timeout.as_secs(),
                hung.map(|h| format!(" (hung task reported: {})", h.text))
                    .unwrap_or_default(),
                console::tail(text, 30)
            )),
        );
    }
    if let Some(sig) = e.end.interrupted {
        return (
            KernelStatus::Interrupted,
            Some(format!("stopped by {}", signals::signal_name(sig))),
        );
    }
    if let Some(ev) = e
        .events
        .iter()
        .find(|ev| matches!(ev.kind.as_str(), "oops" | "bug" | "lockup"))
    {
        return (
            KernelStatus::Oops,
            Some(format!(
                "the guest kernel reported {} (console line {}):\n{}",
                ev.kind,
                ev.line,
                console::excerpt(text, ev.line, 5, 25)
            )),
        );
    }
    match e.result {
        Some(r) => match &r.error {
            Some(err) => (
                KernelStatus::GuestError,
                Some(format!(
                    "the scenario stopped on an error in the guest: {err}"
                )),
            ),
            None => (KernelStatus::Ok, None),
        },
        None => (
            KernelStatus::GuestError,
            Some(format!(
                "the guest returned no result (vng exit {:?}{}); console tail:\n{}",
                e.end.exit,
                e.report
                    .and_then(|r| r.error.as_ref())
                    .map(|err| format!(", guest error: {err}"))
                    .unwrap_or_default(),
                console::tail(text, 30)
            )),
        ),
    }
}

/// Whether the console shows kernel warnings worth failing a CI run on (exit 3).
fn events_warn(events: &[ConsoleEvent]) -> bool {
    events.iter().any(ConsoleEvent::is_warning)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pinstorm_analysis::schema::{Environment, ProbeRow, ScenarioRecord};

    #[test]
    fn statuses_serialize_to_the_names_results_and_matrix_states_use() {
        let names: Vec<String> = KernelStatus::ALL
            .iter()
            .map(|s| {
                serde_json::to_value(s)
                    .unwrap()
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            names,
            [
                "ok",
                "differs",
                "kernel-warning",
                "oops",
                "panic",
                "timeout",
                "guest-error",
                "setup-error",
                "interrupted"
            ]
        );
        for s in KernelStatus::ALL {
            assert_eq!(s.to_string(), s.as_str());
            let back: KernelStatus =
                serde_json::from_value(serde_json::Value::from(s.as_str())).unwrap();
            assert_eq!(back, s);
        }
        assert_eq!(format!("{:<6}|", KernelStatus::Ok), "ok    |");
    }

    #[test]
    fn resumed_failures_still_fail_the_exit_code() {
        use KernelStatus::*;
        assert_eq!(exit_code([Ok], None), 0);
        assert_eq!(exit_code([], None), 0);
        assert_eq!(exit_code([Ok, KernelWarning], None), 3);
        assert_eq!(exit_code([Differs, Panic], None), 1);
        assert_eq!(exit_code([Panic, Differs], None), 1);
        assert_eq!(exit_code([Oops], None), 1);
        assert_eq!(exit_code([SetupError, Ok], None), 1);
        assert_eq!(exit_code([Ok], Some(2)), 130);
        let measured: Vec<_> = KernelStatus::ALL
            .into_iter()
            .filter(|s| s.measured())
            .collect();
        assert_eq!(measured, [Ok, Differs, KernelWarning, Oops, Panic]);
    }

    fn end() -> GuestEnd {
        GuestEnd {
            exit: Some(0),
            timed_out: false,
            interrupted: None,
            panicked: false,
            wall: Duration::from_secs(30),
            first_step: Some(Duration::from_secs(10)),
            stalled: None,
        }
    }

    fn result(error: Option<&str>, verdict: pinstorm_analysis::verdict::Verdict) -> RunResult {
        let mut r = RunResult {
            complete: error.is_none(),
            error: error.map(str::to_string),
            ..RunResult::new(
                "r1",
                String::new(),
                ScenarioRecord {
                    name: "t".into(),
                    origin: "test".into(),
                    seed: 1,
                    text: String::new(),
                },
                Environment::default(),
            )
        };
        r.probe.push(ProbeRow {
            pin: "io_uring".into(),
            backing: "anon".into(),
            fs: "-".into(),
            map: "shared".into(),
            access: "rw".into(),
            size: 4096,
            outcome: "ok".into(),
            reason: None,
            dax: None,
            device_io: Some("ok".into()),
            expected: Some("ok".into()),
            verdict,
            expected_because: None,
        });
        r
    }

    fn judged(console: &str, end: &GuestEnd, result: Option<&RunResult>) -> Judgement {
        let events = console::events(console);
        judge(&Evidence {
            console,
            events: &events,
            end,
            report: None,
            result,
            timeout: Duration::from_secs(600),
        })
    }

    const PANIC: &str = "[ 1.0] Kernel panic - not syncing: sysrq triggered crash\n";
    const OOPS: &str = "[ 1.0] BUG: kernel NULL pointer dereference, address: 0000000000000008\n";
    const WARN: &str = "[ 1.0] WARNING: CPU: 1 PID: 77 at mm/gup.c:123 foo+0x1/0x2\n";

    #[test]
    fn a_guest_is_judged_from_its_console_its_end_and_its_result() {
        use KernelStatus::*;
        let ok = result(None, pinstorm_analysis::verdict::Verdict::AsExpected);
        let j = judged("", &end(), Some(&ok));
        assert_eq!((j.guest, j.kernel), (Ok, Ok));
        assert!(j.reason.is_none());

        let j = judged(PANIC, &end(), None);
        assert_eq!((j.guest, j.kernel), (Panic, Panic));
        assert!(j.reason.unwrap().contains("Kernel panic"));

        let timed_out = GuestEnd {
            timed_out: true,
            ..end()
        };
        let j = judged(PANIC, &timed_out, None);
        assert_eq!(j.guest, Panic, "a panic outranks the watchdog");
        let j = judged("", &timed_out, Some(&ok));
        assert_eq!(j.guest, Timeout);
        assert!(j
            .reason
            .unwrap()
            .contains("wrote its result but did not exit"));

        // A boot that stopped before the agent: killed then, and said so.
        let stalled = GuestEnd {
            first_step: None,
            exit: None,
            stalled: Some("[    2.319620] sched_clock: Marking stable".into()),
            ..end()
        };
        let j = judged(
            "[    2.319620] sched_clock: Marking stable\n",
            &stalled,
            None,
        );
        assert_eq!(j.guest, Timeout);
        let why = j.reason.unwrap();
        assert!(
            why.starts_with("the boot stopped before the lab's agent started: the console was silent after \"[    2.319620] sched_clock: Marking stable\""),
            "{why}"
        );

        let stopped = GuestEnd {
            interrupted: Some(15),
            ..end()
        };
        assert_eq!(judged(OOPS, &stopped, Some(&ok)).guest, Interrupted);
        assert_eq!(judged(OOPS, &end(), Some(&ok)).guest, Oops);

        let failed = result(
            Some("no space left"),
            pinstorm_analysis::verdict::Verdict::AsExpected,
        );
        let j = judged("", &end(), Some(&failed));
        assert_eq!(j.guest, GuestError);
        assert!(j.reason.unwrap().contains("no space left"));
        let j = judged("", &end(), None);
        assert_eq!(j.guest, GuestError);
        assert!(j.reason.unwrap().contains("returned no result"));
    }

    #[test]
    fn a_guest_that_went_ok_differs_or_warns_in_the_matrix_only() {
        use KernelStatus::*;
        let differs = result(None, pinstorm_analysis::verdict::Verdict::Differs);
        let j = judged(WARN, &end(), Some(&differs));
        assert_eq!((j.guest, j.kernel), (Ok, Differs));
        let ok = result(None, pinstorm_analysis::verdict::Verdict::AsExpected);
        let j = judged(WARN, &end(), Some(&ok));
        assert_eq!((j.guest, j.kernel), (Ok, KernelWarning));
        let j = judged(&format!("{WARN}{PANIC}"), &end(), Some(&differs));
        assert_eq!((j.guest, j.kernel), (Panic, Panic));
    }
}
