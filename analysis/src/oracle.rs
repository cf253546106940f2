//! The oracles: every correctness check pinstorm counts, in one list. The summary, the
//! exporters, the metrics, `compare`, the gates and the CLI help enumerate oracles through
//! [`OracleKind::ALL`], so an oracle added here appears everywhere at once.
//!
//! The names are the keys of `storms[].oracle` in the result schema (and `lifecycle`, the
//! pins that outlived their lease in the lease lifecycle scenarios).

use serde::{Deserialize, Serialize};

use crate::schema::{Oracle, OracleFinding, RunResult};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OracleKind {
    LostWrite,
    StaleExposure,
    CrossFile,
    LeakedPins,
    Blocked,
    KernelWarnings,
    UnexpectedOutcomes,
    Lifecycle,
}

impl OracleKind {
    /// Every oracle, in the order tables show them.
    pub const ALL: [OracleKind; 8] = [
        OracleKind::LostWrite,
        OracleKind::StaleExposure,
        OracleKind::CrossFile,
        OracleKind::LeakedPins,
        OracleKind::Blocked,
        OracleKind::KernelWarnings,
        OracleKind::UnexpectedOutcomes,
        OracleKind::Lifecycle,
    ];

    /// The oracles of a storm (`storms[].oracle`).
    pub const STORM: [OracleKind; 7] = [
        OracleKind::LostWrite,
        OracleKind::StaleExposure,
        OracleKind::CrossFile,
        OracleKind::LeakedPins,
        OracleKind::Blocked,
        OracleKind::KernelWarnings,
        OracleKind::UnexpectedOutcomes,
    ];

    /// The oracles whose counts are violations (summed by `violations`, drawn in the
    /// violations chart). `unexpected_outcomes` is not one: a registration the expectations
    /// did not expect is a difference from the expectations (`differs`), not a broken
    /// promise of the kernel.
    pub const VIOLATIONS: [OracleKind; 7] = [
        OracleKind::LostWrite,
        OracleKind::StaleExposure,
        OracleKind::CrossFile,
        OracleKind::LeakedPins,
        OracleKind::Blocked,
        OracleKind::KernelWarnings,
        OracleKind::Lifecycle,
    ];

    /// The name in results, gates and expectation files.
    pub const fn name(self) -> &'static str {
        match self {
            OracleKind::LostWrite => "lost_write",
            OracleKind::StaleExposure => "stale_exposure",
            OracleKind::CrossFile => "cross_file",
            OracleKind::LeakedPins => "leaked_pins",
            OracleKind::Blocked => "blocked",
            OracleKind::KernelWarnings => "kernel_warnings",
            OracleKind::UnexpectedOutcomes => "unexpected_outcomes",
            OracleKind::Lifecycle => "lifecycle",
        }
    }

    /// The column header of the storm table.
    pub const fn column(self) -> &'static str {
        match self {
            OracleKind::LostWrite => "LOST",
            OracleKind::StaleExposure => "STALE",
            OracleKind::CrossFile => "CROSS",
            OracleKind::LeakedPins => "leaked",
            OracleKind::Blocked => "blocked",
            OracleKind::KernelWarnings => "kwarn",
            OracleKind::UnexpectedOutcomes => "unexpected",
            OracleKind::Lifecycle => "outlived",
        }
    }

    /// What one count is.
    pub const fn unit(self) -> &'static str {
        match self {
            OracleKind::LostWrite => "device writes",
            OracleKind::StaleExposure => "pages",
            OracleKind::CrossFile => "pages",
            OracleKind::LeakedPins => "pages",
            OracleKind::Blocked => "operations",
            OracleKind::KernelWarnings => "kernel log lines",
            OracleKind::UnexpectedOutcomes => "registrations",
            OracleKind::Lifecycle => "scenarios",
        }
    }

    pub const fn description(self) -> &'static str {
        match self {
            OracleKind::LostWrite => {
                "a device write through a held pin is not in the file afterwards"
            }
            OracleKind::StaleExposure => {
                "a page of the file holds this file's canary from before the operation that invalidated that page"
            }
            OracleKind::CrossFile => "a page of the file holds another file's canary",
            OracleKind::LeakedPins => {
                "pages still pinned (FOLL_PIN) after every pin was released and the settle bound passed"
            }
            OracleKind::Blocked => "a pinner or layout operation blocked beyond the threshold",
            OracleKind::KernelWarnings => {
                "WARNING, BUG, oops, hung task or lockdep lines in the kernel log during the storm"
            }
            OracleKind::UnexpectedOutcomes => {
                "registrations (not racing a layout operation) that the expectations did not expect"
            }
            OracleKind::Lifecycle => {
                "lease lifecycle scenarios in which a pin outlived its lease and the device's write was lost"
            }
        }
    }

    pub fn parse(name: &str) -> Option<OracleKind> {
        OracleKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The names, comma-separated (for help texts and error messages).
    pub fn names() -> String {
        OracleKind::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The count of a storm oracle (0 for `lifecycle`, which storms do not have).
    pub fn count(self, o: &Oracle) -> u64 {
        match self {
            OracleKind::LostWrite => o.lost_write.count,
            OracleKind::StaleExposure => o.stale_exposure.count,
            OracleKind::CrossFile => o.cross_file.count,
            OracleKind::LeakedPins => o.leaked_pins.count,
            OracleKind::Blocked => o.blocked.count,
            OracleKind::KernelWarnings => o.kernel_warnings.count,
            OracleKind::UnexpectedOutcomes => o.unexpected_outcomes.count,
            OracleKind::Lifecycle => 0,
        }
    }

    /// The findings (with examples) of the oracles that record them as files and offsets.
    pub fn finding(self, o: &Oracle) -> Option<&OracleFinding> {
        match self {
            OracleKind::LostWrite => Some(&o.lost_write),
            OracleKind::StaleExposure => Some(&o.stale_exposure),
            OracleKind::CrossFile => Some(&o.cross_file),
            OracleKind::UnexpectedOutcomes => Some(&o.unexpected_outcomes),
            _ => None,
        }
    }

    /// Why a storm oracle could not judge, if it could not.
    pub fn notrun(self, o: &Oracle) -> Option<&str> {
        match self {
            OracleKind::LostWrite => o.lost_write.notrun.as_deref(),
            OracleKind::StaleExposure => o.stale_exposure.notrun.as_deref(),
            OracleKind::CrossFile => o.cross_file.notrun.as_deref(),
            OracleKind::LeakedPins => o.leaked_pins.notrun.as_deref(),
            OracleKind::Blocked => None,
            OracleKind::KernelWarnings => o.kernel_warnings.notrun.as_deref(),
            OracleKind::UnexpectedOutcomes => o.unexpected_outcomes.notrun.as_deref(),
            OracleKind::Lifecycle => Some("lease lifecycle scenarios are not storms"),
        }
    }

    /// This oracle's count in a whole run: summed over its storms, or, for `lifecycle`, the
    /// lifecycle scenarios' violations.
    pub fn run_count(self, r: &RunResult) -> u64 {
        match self {
            OracleKind::Lifecycle => r
                .leases
                .iter()
                .flat_map(|l| &l.lifecycle)
                .map(|c| c.violations.len() as u64)
                .fold(0u64, u64::saturating_add),
            // Counts come from files: saturate rather than overflow on edited ones.
            k => r
                .storms
                .iter()
                .map(|s| k.count(&s.oracle))
                .fold(0u64, u64::saturating_add),
        }
    }

    /// Whether this oracle judged anything in a run: a storm (or lifecycle scenario) that
    /// ran, where the oracle was not notrun.
    pub fn ran_in(self, r: &RunResult) -> bool {
        match self {
            OracleKind::Lifecycle => r
                .leases
                .iter()
                .flat_map(|l| &l.lifecycle)
                .any(|c| c.outcome == "ok"),
            k => r
                .storms
                .iter()
                .any(|s| s.outcome == "ok" && k.notrun(&s.oracle).is_none()),
        }
    }
}

impl std::fmt::Display for OracleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_serialize_as_the_schema_keys() {
        for k in OracleKind::ALL {
            assert_eq!(OracleKind::parse(k.name()), Some(k));
            assert_eq!(
                serde_json::to_value(k).unwrap(),
                serde_json::Value::String(k.name().into())
            );
        }
        // The storm oracles are exactly the keys of `storms[].oracle`.
        let keys: Vec<String> = serde_json::to_value(Oracle::default())
            .unwrap()
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut storm: Vec<String> = OracleKind::STORM.iter().map(|k| k.name().into()).collect();
        storm.sort();
        let mut keys = keys;
        keys.sort();
        assert_eq!(storm, keys);
    }
}
