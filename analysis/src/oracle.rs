//! The oracles: every correctness check pinstorm counts, in one list. The summary, the
//! exporters, the metrics, `compare`, the gates and the CLI help enumerate oracles through
//! [`OracleKind::ALL`], so an oracle added here appears everywhere at once.
//!
//! The names are the keys of `storms[].oracle` in the result schema (and `lifecycle`, the
//! pins that outlived their lease in the lease lifecycle scenarios).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What every storm oracle's finding type says, whatever else it records.
pub trait Finding {
    /// Violations counted.
    fn count(&self) -> u64;
    /// Why the oracle could not judge, if it could not.
    fn notrun(&self) -> Option<&str>;
    /// The finding of a result written before this oracle existed: not judged, and says so.
    fn absent() -> Self;
    /// The findings as files and offsets, for the oracles that record them so.
    fn located(&self) -> Option<&OracleFinding> {
        None
    }
    fn located_mut(&mut self) -> Option<&mut OracleFinding> {
        None
    }
}

const ABSENT: &str = "not in this result (written before pinstorm had this oracle)";

/// The finding a result file lacks (serde's default for every field of [`Oracle`]).
fn absent<F: Finding>() -> F {
    F::absent()
}

impl Finding for OracleFinding {
    fn absent() -> Self {
        OracleFinding {
            notrun: Some(ABSENT.into()),
            ..Default::default()
        }
    }
    fn count(&self) -> u64 {
        self.count
    }
    fn notrun(&self) -> Option<&str> {
        self.notrun.as_deref()
    }
    fn located(&self) -> Option<&OracleFinding> {
        Some(self)
    }
    fn located_mut(&mut self) -> Option<&mut OracleFinding> {
        Some(self)
    }
}

impl Finding for LeakedPins {
    fn absent() -> Self {
        LeakedPins {
            notrun: Some(ABSENT.into()),
            ..Default::default()
        }
    }
    fn count(&self) -> u64 {
        self.count
    }
    fn notrun(&self) -> Option<&str> {
        self.notrun.as_deref()
    }
}

impl Finding for Blocked {
    fn absent() -> Self {
        Blocked::default()
    }
    fn count(&self) -> u64 {
        self.count
    }
    fn notrun(&self) -> Option<&str> {
        None
    }
}

impl Finding for KernelWarnings {
    fn absent() -> Self {
        KernelWarnings {
            notrun: Some(ABSENT.into()),
            ..Default::default()
        }
    }
    fn count(&self) -> u64 {
        self.count
    }
    fn notrun(&self) -> Option<&str> {
        self.notrun.as_deref()
    }
}

/// The one list. A storm oracle is one row: its variant, its key in `storms[].oracle` (the
/// field of [`Oracle`] and the name in gates and expectation files), the type of its finding,
/// its table column, its unit, whether a count is a `violation` (a broken promise of the
/// kernel: summed, charted, gated) or a `difference` (from the expectations only), and what
/// one count means. The other oracles are judged outside storms.
macro_rules! oracles {
    (
        storm {
            $( $(#[$doc:meta])* $var:ident => $field:ident: $ty:ty,
                $col:literal, $unit:literal, $class:ident, $desc:literal; )*
        }
        other {
            $( $ovar:ident => $oname:literal,
                $ocol:literal, $ounit:literal, $oclass:ident, $odesc:literal; )*
        }
    ) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum OracleKind {
            $( $var, )*
            $( $ovar, )*
        }

        /// The oracles of a storm, keyed by name (`storms[].oracle`). Every one has a
        /// `count`; `notrun` says why one could not judge.
        #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
        pub struct Oracle {
            $( $(#[$doc])* #[serde(default = "absent")] pub $field: $ty, )*
        }

        impl OracleKind {
            /// Every oracle, in the order tables show them.
            pub const ALL: &'static [OracleKind] = &[ $( OracleKind::$var, )* $( OracleKind::$ovar, )* ];

            /// The oracles of a storm (`storms[].oracle`).
            pub const STORM: &'static [OracleKind] = &[ $( OracleKind::$var, )* ];

            /// The name in results, gates and expectation files.
            pub const fn name(self) -> &'static str {
                match self {
                    $( OracleKind::$var => stringify!($field), )*
                    $( OracleKind::$ovar => $oname, )*
                }
            }

            /// The column header of the storm table.
            pub const fn column(self) -> &'static str {
                match self {
                    $( OracleKind::$var => $col, )*
                    $( OracleKind::$ovar => $ocol, )*
                }
            }

            /// What one count is.
            pub const fn unit(self) -> &'static str {
                match self {
                    $( OracleKind::$var => $unit, )*
                    $( OracleKind::$ovar => $ounit, )*
                }
            }

            pub const fn description(self) -> &'static str {
                match self {
                    $( OracleKind::$var => $desc, )*
                    $( OracleKind::$ovar => $odesc, )*
                }
            }

            /// Whether a count is a violation (summed by `violations`, drawn in the
            /// violations chart, gated) rather than a difference from the expectations.
            pub const fn is_violation(self) -> bool {
                match self {
                    $( OracleKind::$var => oracles!(@class $class), )*
                    $( OracleKind::$ovar => oracles!(@class $oclass), )*
                }
            }

            /// The count of a storm oracle (0 for the others, which storms do not have).
            pub fn count(self, o: &Oracle) -> u64 {
                match self {
                    $( OracleKind::$var => Finding::count(&o.$field), )*
                    $( OracleKind::$ovar => 0, )*
                }
            }

            /// Why a storm oracle could not judge, if it could not.
            pub fn notrun(self, o: &Oracle) -> Option<&str> {
                match self {
                    $( OracleKind::$var => Finding::notrun(&o.$field), )*
                    $( OracleKind::$ovar => Some(concat!($oname, " is not judged in storms")), )*
                }
            }

            /// The findings (with examples) of the oracles that record them as files and
            /// offsets.
            pub fn finding(self, o: &Oracle) -> Option<&OracleFinding> {
                match self {
                    $( OracleKind::$var => Finding::located(&o.$field), )*
                    $( OracleKind::$ovar => None, )*
                }
            }
        }

        impl Oracle {
            /// Where a storm records this oracle's located findings, if it records them so.
            pub fn finding_mut(&mut self, k: OracleKind) -> Option<&mut OracleFinding> {
                match k {
                    $( OracleKind::$var => Finding::located_mut(&mut self.$field), )*
                    $( OracleKind::$ovar => None, )*
                }
            }
        }
    };
    (@class violation) => { true };
    (@class difference) => { false };
}

oracles! {
    storm {
        LostWrite => lost_write: OracleFinding,
            "LOST", "device writes", violation,
            "a device write through a held pin is not in the file afterwards";
        MisplacedWrite => misplaced_write: OracleFinding,
            "MISPL", "device writes", violation,
            "a device write (or a chunk of it) landed at another offset than it was sent to, or twice";
        TornWrite => torn_write: OracleFinding,
            "TORN", "device writes", violation,
            "only some bytes of a device write arrived where it was sent";
        Spill => spill: OracleFinding,
            "SPILL", "device writes", violation,
            "a device write arrived and changed bytes outside the range it was sent to";
        StaleExposure => stale_exposure: OracleFinding,
            "STALE", "pages", violation,
            "a page of the file holds this file's canary from before the operation that invalidated that page";
        CrossFile => cross_file: OracleFinding,
            "CROSS", "pages", violation,
            "a page of the file holds another file's canary";
        LeakedPins => leaked_pins: LeakedPins,
            "leaked", "pages", violation,
            "pages still pinned (FOLL_PIN) after every pin was released and the settle bound passed";
        Blocked => blocked: Blocked,
            "blocked", "operations", violation,
            "a pinner or layout operation blocked beyond the threshold";
        Diverged => diverged: OracleFinding,
            "DIVERG", "checks", violation,
            "the pin and the process's mapping show different pages: the device's write is not what the process sees, or the process's write is not what the device reads";
        Moved => moved: OracleFinding,
            "MOVED", "pages", violation,
            "a pinned page's mapping moved to another physical frame while the pin was held (/proc/self/pagemap)";
        KernelWarnings => kernel_warnings: KernelWarnings,
            "kwarn", "kernel log lines", violation,
            "WARNING, BUG, oops, hung task or lockdep lines in the kernel log during the storm";
        /// Registrations refused although the expectations allow them, or allowed although
        /// they say refused (only registrations that did not race a layout operation). A
        /// difference from the expectations, not a broken promise of the kernel.
        UnexpectedOutcomes => unexpected_outcomes: OracleFinding,
            "unexpected", "registrations", difference,
            "registrations (not racing a layout operation) that the expectations did not expect";
    }
    other {
        Lifecycle => "lifecycle",
            "outlived", "scenarios", violation,
            "lease lifecycle scenarios in which a pin outlived its lease and the device's write was lost";
    }
}

const N_VIOLATIONS: usize = {
    let mut n = 0;
    let mut i = 0;
    while i < OracleKind::ALL.len() {
        if OracleKind::ALL[i].is_violation() {
            n += 1;
        }
        i += 1;
    }
    n
};

impl OracleKind {
    /// The oracles whose counts are violations, in table order.
    pub const VIOLATIONS: [OracleKind; N_VIOLATIONS] = {
        let mut out = [OracleKind::ALL[0]; N_VIOLATIONS];
        let (mut i, mut j) = (0, 0);
        while i < OracleKind::ALL.len() {
            if OracleKind::ALL[i].is_violation() {
                out[j] = OracleKind::ALL[i];
                j += 1;
            }
            i += 1;
        }
        out
    };

    pub fn parse(name: &str) -> Option<OracleKind> {
        OracleKind::ALL.iter().copied().find(|k| k.name() == name)
    }

    /// The names, comma-separated (for help texts and error messages).
    pub fn names() -> String {
        OracleKind::ALL
            .iter()
            .map(|k| k.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::fmt::Display for OracleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

// The findings each storm oracle records (the schema re-exports them: `storms[].oracle`).

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OracleFinding {
    pub count: u64,
    pub notrun: Option<String>,
    pub note: Option<String>,
    pub examples: Vec<Violation>,
    /// Command lines that reproduce the first example: the storm cell with its seed, then
    /// that one write alone (`--write-at`), with no layout operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reproduce: Vec<String>,
    /// The count split by the operations that ran on each page between the pin and the
    /// check (`+`-joined names when several did; `none` when none did), for the oracles
    /// whose expectations depend on the operation (diverged, moved).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub by_op: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Violation {
    /// The file (path, or `memfd:N`), and the byte range.
    pub file: String,
    pub offset: u64,
    pub len: u64,
    pub what: String,
    /// Milliseconds since the storm started.
    pub at_ms: f64,
    /// What led there: the pin, the layout operations on the file since, the device write.
    pub history: Vec<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LeakedPins {
    /// Pages still pinned (FOLL_PIN, system-wide) after every pin handle was released, the
    /// pinned files were unmapped and closed, and the settle bound passed.
    pub count: u64,
    /// How long the counters took to come back after the handles were released (at most
    /// the bound).
    pub settle_ms: u64,
    /// Pages that stayed pinned after every handle was released, past the bound, and were
    /// released only when the files were torn down (reported, not counted as leaked).
    #[serde(default)]
    pub held_until_teardown: u64,
    pub notrun: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Blocked {
    pub count: u64,
    pub threshold_ms: u64,
    pub examples: Vec<BlockedOp>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BlockedOp {
    pub thread: String,
    pub op: String,
    pub tid: i32,
    /// When it started, ms since the storm started.
    pub at_ms: f64,
    /// How long it took in the end (after pins were released); null if it never returned.
    pub blocked_ms: Option<f64>,
    pub wchan: Option<String>,
    pub stack: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct KernelWarnings {
    pub count: u64,
    pub lines: Vec<String>,
    pub notrun: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_serialize_as_the_schema_keys() {
        for &k in OracleKind::ALL {
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

    #[test]
    fn violations_are_the_oracles_marked_so() {
        assert!(!OracleKind::VIOLATIONS.contains(&OracleKind::UnexpectedOutcomes));
        assert!(OracleKind::VIOLATIONS.contains(&OracleKind::Lifecycle));
        assert_eq!(
            OracleKind::VIOLATIONS.len(),
            OracleKind::ALL.iter().filter(|k| k.is_violation()).count()
        );
    }

    #[test]
    fn an_oracle_a_result_lacks_loads_as_not_judged_not_as_zero() {
        // A result written before `cross_file` existed (its key is missing).
        let mut v = serde_json::to_value(Oracle::default()).unwrap();
        v.as_object_mut().unwrap().remove("cross_file");
        let o: Oracle = serde_json::from_value(v).unwrap();
        assert_eq!(OracleKind::CrossFile.count(&o), 0);
        assert!(OracleKind::CrossFile
            .notrun(&o)
            .is_some_and(|r| r.contains("not in this result")));
        assert_eq!(OracleKind::LostWrite.notrun(&o), None);
    }

    #[test]
    fn every_storm_oracle_with_located_findings_is_writable_by_storms() {
        let mut o = Oracle::default();
        for &k in OracleKind::STORM {
            assert_eq!(k.finding(&o).is_some(), o.finding_mut(k).is_some(), "{k}");
        }
        o.finding_mut(OracleKind::LostWrite).unwrap().count = 3;
        assert_eq!(OracleKind::LostWrite.count(&o), 3);
    }
}
