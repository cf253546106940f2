//! `soft-offline`: `madvise(MADV_SOFT_OFFLINE)` of a random aligned range of the pinned
//! mapping. Soft offlining migrates each page's contents to a new page and retires the old
//! one (mm/memory-failure.c soft_offline_page): a page the process maps moves under it. A
//! long-term pinned page cannot migrate (the pin's references), so the call fails (EBUSY /
//! EIO) for it and the page stays where the pin holds it; a page that moved while pinned is
//! the moved oracle's finding. Runs only in lab guests: each page that goes is retired for
//! good (`HardwareCorrupted` grows).

use rand::RngCore;

use super::sys::{madvise, Advice};
use super::{
    pick_range, Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget, Requirement,
};

pub struct SoftOffline;

impl LayoutOp for SoftOffline {
    fn kind(&self) -> LayoutKind {
        LayoutKind::SoftOffline
    }

    fn needs_file(&self) -> bool {
        false
    }

    fn requires(&self) -> &'static [Requirement] {
        &[
            Requirement::LabGuest,
            Requirement::Root,
            Requirement::MemoryFailure,
        ]
    }

    fn unavailable(&self, t: &LayoutTarget) -> Option<String> {
        t.hugetlb.then(|| {
            "soft-offline of hugetlb pages dissolves pool pages; the operation covers 4 KiB pages".into()
        })
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let (off, len) = pick_range(rng, t.size, t.align, 0).expect("size >= align");
        let before = super::hwpoison::hardware_corrupted_kb();
        let r = madvise(t.mapping, off as usize, len as usize, Advice::SoftOffline);
        let after = super::hwpoison::hardware_corrupted_kb();
        let effect = Effect::Remapped {
            offset: off,
            len,
            contents: false,
        };
        match r {
            Err(errno) => Err(LayoutError {
                op: "madvise(MADV_SOFT_OFFLINE)",
                errno,
                // Pages before the one that failed may have moved.
                partial: Some(effect),
                cause: None,
            }),
            Ok(()) => Ok(Applied {
                effect,
                desc: format!(
                    "soft-offline {off}+{len}: {}",
                    match (before, after) {
                        (Some(b), Some(a)) => format!("HardwareCorrupted {b} -> {a} kB"),
                        _ => "no HardwareCorrupted in /proc/meminfo".into(),
                    }
                ),
            }),
        }
    }
}
