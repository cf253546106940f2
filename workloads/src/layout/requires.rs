//! What operations need from the machine: the one list ([`Requirement`]). An operation
//! declares its requirements ([`super::LayoutOp::requires`]); [`super::LayoutOp::cannot_run`]
//! checks them, in order, before anything that depends on the target, so a missing
//! capability is one `notrun` reason per cell and no operation checks for itself.
//!
//! Whether the run is inside a lab guest is not something the machine can tell: a file or an
//! environment variable can be planted on a host. It is [`OpEnv::lab`], which only the lab
//! guest's entry point (`pinstorm __lab-guest`) sets, through `RunOptions`.

use serde::{Deserialize, Serialize};

use crate::scratch::JournalHandle;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Requirement {
    /// Runs only in a lab guest: the operation damages memory (poisons pages, takes memory
    /// offline), which is never done to a machine pinstorm does not own outright.
    LabGuest,
    /// Root (CAP_SYS_ADMIN for MADV_HWPOISON / MADV_SOFT_OFFLINE, writes under /proc/sys
    /// and /sys).
    Root,
    /// CONFIG_MEMORY_FAILURE (`/proc/sys/vm/memory_failure_recovery`).
    MemoryFailure,
    /// Two or more online NUMA nodes.
    TwoNodes,
    /// The lab guest's node of hot-added memory (a device-dax namespace onlined as system
    /// RAM: `pinstorm lab --kmem-node`).
    KmemNode,
}

const MEMORY_FAILURE: &str = "/proc/sys/vm/memory_failure_recovery";
const ONLINE: &str = "/sys/devices/system/node/online";

impl Requirement {
    pub fn name(self) -> &'static str {
        match self {
            Requirement::LabGuest => "lab guest",
            Requirement::Root => "root",
            Requirement::MemoryFailure => "CONFIG_MEMORY_FAILURE",
            Requirement::TwoNodes => "two NUMA nodes",
            Requirement::KmemNode => "kmem node",
        }
    }

    /// Why it is not met here, if it is not.
    pub fn unmet(self, env: &OpEnv) -> Option<String> {
        match self {
            Requirement::LabGuest => env.lab.is_none().then(|| {
                "runs only inside a lab guest (pinstorm lab): it damages memory, which pinstorm never does to a machine it does not own outright"
                    .into()
            }),
            Requirement::Root => (!crate::is_root()).then(|| "needs root".into()),
            Requirement::MemoryFailure => (!std::path::Path::new(MEMORY_FAILURE).exists())
                .then(|| format!("no {MEMORY_FAILURE} (a kernel without CONFIG_MEMORY_FAILURE)")),
            Requirement::TwoNodes => match online_nodes() {
                Err(e) => Some(e),
                Ok(n) if n.len() < 2 => Some(format!(
                    "one NUMA node ({ONLINE}: {}): there is nowhere to migrate to",
                    n.iter()
                        .map(|x| x.to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                )),
                Ok(_) => None,
            },
            Requirement::KmemNode => match &env.lab {
                Some(LabMachine { kmem: Some(_), .. }) => None,
                Some(LabMachine {
                    kmem_missing: Some(why),
                    ..
                }) => Some(format!("no kmem node in this guest: {why}")),
                _ => Some(
                    "no kmem node in this guest (pinstorm lab --kmem-node makes one from a device-dax namespace)"
                        .into(),
                ),
            },
        }
    }
}

/// The node numbers of a sysfs node list (`0`, `0-1`, `0,2-3`).
pub(crate) fn parse_nodes(list: &str) -> Option<Vec<i32>> {
    let mut out = Vec::new();
    for part in list.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<i32>().ok()?, b.parse::<i32>().ok()?);
                if b < a || b - a > 4096 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().ok()?),
        }
    }
    Some(out)
}

pub(crate) fn online_nodes() -> Result<Vec<i32>, String> {
    let text = std::fs::read_to_string(ONLINE).map_err(|e| format!("reading {ONLINE}: {e}"))?;
    parse_nodes(&text).ok_or_else(|| format!("{ONLINE} holds {:?}, not a node list", text.trim()))
}

/// What the operations may use of the run: set up once per run, shared by every storm
/// thread.
#[derive(Clone, Debug, Default)]
pub struct OpEnv {
    /// `Some` only in a lab guest, set by the guest's entry point.
    pub lab: Option<LabMachine>,
    /// The run's journal: an operation that changes machine state (a memory block offline)
    /// records how to undo it first.
    pub journal: Option<JournalHandle>,
}

/// What a lab guest made for the memory operations.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabMachine {
    pub kmem: Option<KmemNode>,
    /// Why there is no kmem node, when one was asked for and could not be made.
    pub kmem_missing: Option<String>,
}

/// A NUMA node of hot-added memory: a device-dax namespace bound to the `kmem` driver.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KmemNode {
    /// The device-dax device (`dax1.0`).
    pub device: String,
    pub node: i32,
    /// Its memory blocks (`/sys/devices/system/memory/memoryN`).
    pub blocks: Vec<u32>,
    /// The zone its blocks were onlined to (`Normal`, `Movable`).
    pub zone: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_lists_parse_as_sysfs_writes_them() {
        assert_eq!(parse_nodes("0\n"), Some(vec![0]));
        assert_eq!(parse_nodes("0-1"), Some(vec![0, 1]));
        assert_eq!(parse_nodes("0,2-3"), Some(vec![0, 2, 3]));
        assert_eq!(parse_nodes("x"), None);
        assert_eq!(parse_nodes("3-1"), None);
    }

    #[test]
    fn a_lab_guest_is_only_what_the_guest_entry_point_says() {
        // Nothing on the machine makes a host a lab guest: only OpEnv::lab does.
        let host = OpEnv::default();
        assert!(Requirement::LabGuest
            .unmet(&host)
            .is_some_and(|r| r.contains("lab guest")));
        assert!(Requirement::KmemNode.unmet(&host).is_some());
        let guest = OpEnv {
            lab: Some(LabMachine::default()),
            journal: None,
        };
        assert_eq!(Requirement::LabGuest.unmet(&guest), None);
        assert!(Requirement::KmemNode
            .unmet(&guest)
            .is_some_and(|r| r.contains("--kmem-node")));
        let missing = OpEnv {
            lab: Some(LabMachine {
                kmem: None,
                kmem_missing: Some("no kmem module".into()),
            }),
            journal: None,
        };
        assert!(Requirement::KmemNode
            .unmet(&missing)
            .is_some_and(|r| r.contains("no kmem module")));
        let with = OpEnv {
            lab: Some(LabMachine {
                kmem: Some(KmemNode {
                    device: "dax1.0".into(),
                    node: 1,
                    blocks: vec![40],
                    zone: "Normal".into(),
                }),
                kmem_missing: None,
            }),
            journal: None,
        };
        assert_eq!(Requirement::KmemNode.unmet(&with), None);
    }
}
