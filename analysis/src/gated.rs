//! What the gates of a comparison concluded: each gate's result and their one status, which
//! the comparison carries and the exit status of `pinstorm compare` reads. Apart from
//! `gate.rs` (which parses and applies gates to a comparison) so the comparison can hold them
//! without depending on the gate logic.

use serde::{Deserialize, Serialize};

/// What a gate found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GateResult {
    pub expr: String,
    pub crossed: bool,
    /// What crossed it (metrics with their change, or the count), the worst first.
    pub by: Vec<String>,
    /// How many metrics (or runs, for counts; cells, for outcomes) the gate looked at.
    #[serde(default)]
    pub matched: usize,
    /// Of those, how many it could judge (a tail quantile of a single run per side is
    /// matched but not judged).
    #[serde(default)]
    pub judged: usize,
    /// When it matched nothing: what was missing.
    #[serde(default)]
    pub missing: Option<String>,
    /// Crossed, or matched nothing while empty gates are not allowed: makes compare exit 4.
    #[serde(default)]
    pub failed: bool,
    /// Matched latency metrics measured while a side's machine was disturbed.
    #[serde(default)]
    pub disturbed: usize,
    /// Which runs of which side were disturbed while measuring them, and why.
    #[serde(default)]
    pub disturbed_by: Vec<String>,
    /// Whether those were judged anyway (`--judge-disturbed`).
    #[serde(default)]
    pub disturbed_judged: bool,
    /// Nothing crossed it, but metrics measured on a disturbed machine were left unjudged:
    /// neither a pass nor a failure (compare exits 5 unless another gate failed).
    #[serde(default)]
    pub inconclusive: bool,
}

/// What the gates of a comparison amount to: the one judgement the exit status of
/// `pinstorm compare`, its stderr and its exports read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GateStatus {
    /// No gate failed and none was inconclusive (or there were no gates).
    #[default]
    Passed,
    /// A gate was crossed, or matched nothing while empty gates are not allowed.
    Failed,
    /// No gate failed, but one left metrics measured on a disturbed machine unjudged.
    Inconclusive,
}

/// `pinstorm compare`'s exit status when a gate failed.
pub const EXIT_FAILED: u8 = 4;
/// `pinstorm compare`'s exit status when no gate failed but one was inconclusive.
pub const EXIT_INCONCLUSIVE: u8 = 5;

impl GateStatus {
    /// A failure outranks an inconclusive gate: a crossing on a quiet pair stands.
    pub fn of(gates: &[GateResult]) -> GateStatus {
        if gates.iter().any(|g| g.failed) {
            GateStatus::Failed
        } else if gates.iter().any(|g| g.inconclusive) {
            GateStatus::Inconclusive
        } else {
            GateStatus::Passed
        }
    }

    pub fn exit_code(self) -> u8 {
        match self {
            GateStatus::Passed => 0,
            GateStatus::Failed => EXIT_FAILED,
            GateStatus::Inconclusive => EXIT_INCONCLUSIVE,
        }
    }
}
