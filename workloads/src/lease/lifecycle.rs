//! The lifecycle scenarios of the 2019 debate, described once.
//!
//! [`SCENARIOS`] is the one table both sides read: the runner takes from it how to break the
//! lease, whether the break has to wait out `fs/lease-break-time`, whether to ask for a device
//! write afterwards and whether to kill the holder; the holder takes from it whether it will be
//! asked for that write. What each scenario *does* in the holder's processes is its script in
//! `holder::lifecycle`.

use serde::{Deserialize, Serialize};

use super::{Behaviour, BreakerKind};

/// The lifecycle scenarios of the 2019 debate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lifecycle {
    /// The lease fd is dup'ed and the original closed; then a breaker comes.
    DupClose,
    /// The holder forks; the child pins the shared mapping; the parent keeps the lease.
    ForkChildPins,
    /// The lease fd and the pinning ring go to another process over SCM_RIGHTS; the sender exits.
    ScmRights,
    /// The lease fd is closed while the mapping and the pin remain.
    CloseBeforeUnpin,
    /// The mapping is unmapped while the pin remains registered.
    MunmapBeforeUnregister,
    /// The holder never answers; the lease expires while the pin is held; the device writes.
    HungExpiry,
    /// The holder is killed while a breaker waits.
    KilledWhileWaiting,
}

/// One lifecycle scenario as the runner and the holder both see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Scenario {
    pub lifecycle: Lifecycle,
    /// The name in scenario files, results and `[[fact]]` expectations.
    pub name: &'static str,
    /// How the runner breaks the lease: `truncate(path)` where a pin outlives the lease (so
    /// the device's later write meets a truncated file), else `open(O_RDWR)`.
    pub breaker: BreakerKind,
    /// How the holder answers a break signal.
    pub behaviour: Behaviour,
    /// Nobody can release the lease, so the breaker waits out `fs/lease-break-time` (not run
    /// where that cannot be shortened).
    pub waits_for_expiry: bool,
    /// After the break the runner sends `write`, and the process that still holds the pin
    /// lets the device write through it (`device_write_after_break`).
    pub writes_after_break: bool,
    /// The runner kills the holder while the breaker waits.
    pub kills_holder: bool,
}

/// Every scenario, in [`Lifecycle`] declaration order (`Lifecycle::spec` indexes it).
pub const SCENARIOS: &[Scenario] = &[
    Scenario {
        lifecycle: Lifecycle::DupClose,
        name: "dup-close",
        breaker: BreakerKind::OpenRdwr,
        behaviour: Behaviour::Cooperative,
        waits_for_expiry: false,
        writes_after_break: false,
        kills_holder: false,
    },
    Scenario {
        lifecycle: Lifecycle::ForkChildPins,
        name: "fork-child-pins",
        breaker: BreakerKind::Truncate,
        behaviour: Behaviour::Cooperative,
        waits_for_expiry: false,
        writes_after_break: true,
        kills_holder: false,
    },
    Scenario {
        lifecycle: Lifecycle::ScmRights,
        name: "scm-rights",
        breaker: BreakerKind::Truncate,
        behaviour: Behaviour::Cooperative,
        // The sender, the only process the kernel would signal, is gone.
        waits_for_expiry: true,
        writes_after_break: true,
        kills_holder: false,
    },
    Scenario {
        lifecycle: Lifecycle::CloseBeforeUnpin,
        name: "close-before-unpin",
        breaker: BreakerKind::OpenRdwr,
        behaviour: Behaviour::Cooperative,
        waits_for_expiry: false,
        writes_after_break: false,
        kills_holder: false,
    },
    Scenario {
        lifecycle: Lifecycle::MunmapBeforeUnregister,
        name: "munmap-before-unregister",
        breaker: BreakerKind::Truncate,
        behaviour: Behaviour::Cooperative,
        waits_for_expiry: false,
        writes_after_break: true,
        kills_holder: false,
    },
    Scenario {
        lifecycle: Lifecycle::HungExpiry,
        name: "hung-expiry",
        breaker: BreakerKind::Truncate,
        behaviour: Behaviour::Hung,
        waits_for_expiry: true,
        writes_after_break: true,
        kills_holder: false,
    },
    Scenario {
        lifecycle: Lifecycle::KilledWhileWaiting,
        name: "killed-while-waiting",
        breaker: BreakerKind::OpenRdwr,
        behaviour: Behaviour::Cooperative,
        waits_for_expiry: false,
        writes_after_break: false,
        kills_holder: true,
    },
];

impl Lifecycle {
    pub const ALL: &'static [Lifecycle] = &[
        Lifecycle::DupClose,
        Lifecycle::ForkChildPins,
        Lifecycle::ScmRights,
        Lifecycle::CloseBeforeUnpin,
        Lifecycle::MunmapBeforeUnregister,
        Lifecycle::HungExpiry,
        Lifecycle::KilledWhileWaiting,
    ];

    /// This scenario's row of [`SCENARIOS`].
    pub fn spec(self) -> &'static Scenario {
        &SCENARIOS[self as usize]
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_scenario_has_its_own_row_under_its_scenario_file_name() {
        assert_eq!(SCENARIOS.len(), Lifecycle::ALL.len());
        for (i, &l) in Lifecycle::ALL.iter().enumerate() {
            assert_eq!(l as usize, i, "ALL is in declaration order");
            assert_eq!(l.spec().lifecycle, l, "row {i} describes {l:?}");
            let serialized = serde_json::to_value(l).unwrap();
            assert_eq!(
                serialized,
                l.name(),
                "{l:?}: scenario files and results agree"
            );
            let back: Lifecycle = serde_json::from_value(serialized).unwrap();
            assert_eq!(back, l);
        }
    }

    #[test]
    fn a_scenario_that_writes_after_the_break_truncates_so_the_write_meets_a_shorter_file() {
        for s in SCENARIOS {
            assert_eq!(
                s.writes_after_break,
                s.breaker == BreakerKind::Truncate,
                "{}",
                s.name
            );
        }
    }
}
