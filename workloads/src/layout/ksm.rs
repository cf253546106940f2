//! `ksm`: mark a random range of the pinned mapping `MADV_MERGEABLE`, wait for ksmd to finish
//! a full scan (at most half a second, below the storms' default block threshold: the wait
//! is ours, not a blocked kernel), then `MADV_UNMERGEABLE`. The backings fill their memory with
//! one byte, so the range is full of identical pages. KSM must not merge a pinned page
//! (write_protect_page skips a page whose references exceed its mappings): a merged pinned
//! page would leave the device writing a page the process no longer maps.
//!
//! ksmd is machine-wide; pinstorm never starts it (`/sys/kernel/mm/ksm/run`), so the
//! operation runs only where it already runs.

use std::time::{Duration, Instant};

use rand::RngCore;

use super::sys::{madvise, Advice};
use super::{err, pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget};
use crate::backing::MapKind;

pub struct Ksm;

const KSM: &str = "/sys/kernel/mm/ksm";
/// The longest the operation waits for a full ksmd scan.
const SCANS_WITHIN: Duration = Duration::from_millis(500);

fn read(name: &str) -> Option<String> {
    std::fs::read_to_string(format!("{KSM}/{name}"))
        .ok()
        .map(|s| s.trim().to_string())
}

impl LayoutOp for Ksm {
    fn kind(&self) -> LayoutKind {
        LayoutKind::Ksm
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn unavailable(&self, t: &LayoutTarget) -> Option<String> {
        if t.map != MapKind::Private || t.hugetlb {
            return Some(
                "KSM merges private anonymous pages only (not shared, not hugetlb)".into(),
            );
        }
        match read("run") {
            None => Some(format!("no {KSM}/run (a kernel without CONFIG_KSM)")),
            Some(r) if r != "1" => Some(format!(
                "ksmd is not running ({KSM}/run is {r}); pinstorm does not start it, as that changes how the whole machine scans memory"
            )),
            Some(_) => None,
        }
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
        let scans = || read("full_scans").and_then(|s| s.parse::<u64>().ok());
        let start = scans();
        madvise(t.mapping, off as usize, len as usize, Advice::Mergeable)
            .map_err(|e| err("madvise(MADV_MERGEABLE)", e))?;
        let until = Instant::now() + SCANS_WITHIN;
        let mut scanned = false;
        while Instant::now() < until {
            if let (Some(a), Some(b)) = (start, scans()) {
                if b > a {
                    scanned = true;
                    break;
                }
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let effect = Effect::Remapped {
            offset: off,
            len,
            contents: false,
        };
        madvise(t.mapping, off as usize, len as usize, Advice::Unmergeable).map_err(|e| {
            LayoutError {
                op: "madvise(MADV_UNMERGEABLE)",
                errno: e,
                partial: Some(effect),
                cause: None,
            }
        })?;
        Ok(Applied {
            effect,
            desc: format!(
                "ksm {off}+{len}: {}",
                if scanned {
                    "ksmd finished a full scan"
                } else {
                    "ksmd did not finish a full scan within 500 ms"
                }
            ),
        })
    }
}
