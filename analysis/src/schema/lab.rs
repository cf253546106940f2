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
