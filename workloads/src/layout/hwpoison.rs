//! `hwpoison`: `madvise(MADV_HWPOISON)` of one random page of the pinned mapping, then
//! `MADV_DONTNEED` of it. The kernel handles the page as if the hardware reported it
//! corrupt (mm/memory-failure.c): it marks it poisoned, unmaps it from the process (an
//! access would SIGBUS) and tries to recover; a page with references beyond its mappings
//! (the pin) cannot be recovered, and the call says so (EBUSY since memory_failure() returns
//! the recovery result). The pin keeps the poisoned page; the process gets a fresh zero page
//! at that address after the DONTNEED. `/proc/meminfo` `HardwareCorrupted` grows by the page
//! for good: the operation runs only in lab guests, which are thrown away.
//!
//! Only private anonymous memory: a poisoned shmem or file page stays in its file (reads of
//! it fail with EIO), which the storm's end scan would then read.

use rand::RngCore;

use super::sys::{hwpoison, madvise, Advice, SIGNALLED};
use super::{Applied, Effect, LayoutError, LayoutKind, LayoutOp, LayoutTarget, Requirement};
use crate::sys::Errno;

pub struct Hwpoison;

/// `HardwareCorrupted` of /proc/meminfo, in kB.
pub(crate) fn hardware_corrupted_kb() -> Option<u64> {
    crate::sysctl::meminfo_kb("HardwareCorrupted:")
}

impl LayoutOp for Hwpoison {
    fn kind(&self) -> LayoutKind {
        LayoutKind::Hwpoison
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

    fn poisons(&self) -> bool {
        true
    }

    fn unavailable(&self, t: &LayoutTarget) -> Option<String> {
        (!t.private_anon() || t.hugetlb).then(|| {
            "hwpoison runs on private anonymous memory only (not hugetlb): a poisoned shmem or file page stays in its file, which reads back EIO"
                .into()
        })
    }

    fn apply(&self, t: &LayoutTarget, rng: &mut dyn RngCore) -> Result<Applied, LayoutError> {
        let pages = (t.size / t.align).max(1);
        let off = (rng.next_u64() % pages) * t.align;
        let len = t.align;
        let before = hardware_corrupted_kb();
        let poisoned = hwpoison(t.mapping, off as usize, len as usize);
        let after = hardware_corrupted_kb();
        let effect = Effect::Remapped {
            offset: off,
            len,
            contents: true,
        };
        // Whatever memory_failure() did, the process's mapping of the page may now be a
        // poison entry: drop it, so the next access faults in a fresh page.
        let dropped = madvise(t.mapping, off as usize, len as usize, Advice::DontNeed);
        let corrupted = match (before, after) {
            (Some(b), Some(a)) => format!("HardwareCorrupted {b} -> {a} kB"),
            _ => "no HardwareCorrupted in /proc/meminfo".into(),
        };
        const SIGBUS: &str = "and the kernel sent the caller SIGBUS (BUS_MCEERR)";
        match (poisoned, dropped) {
            (Err(errno), _) => Err(LayoutError {
                op: "madvise(MADV_HWPOISON)",
                errno: Errno(errno.0 & !SIGNALLED),
                partial: Some(effect),
                cause: (errno.0 & SIGNALLED != 0).then(|| SIGBUS.to_string()),
            }),
            (Ok(true), _) => Err(LayoutError {
                op: "madvise(MADV_HWPOISON)",
                errno: Errno(0),
                partial: Some(effect),
                cause: Some(format!("returned 0, {SIGBUS}")),
            }),
            (Ok(false), Err(errno)) => Err(LayoutError {
                op: "madvise(MADV_DONTNEED) after MADV_HWPOISON",
                errno,
                partial: Some(effect),
                cause: None,
            }),
            (Ok(false), Ok(())) => Ok(Applied {
                effect,
                desc: format!("hwpoison {off}+{len}: {corrupted}"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn hardware_corrupted_reads_where_the_kernel_has_memory_failure() {
        if std::path::Path::new("/proc/sys/vm/memory_failure_recovery").exists() {
            assert!(super::hardware_corrupted_kb().is_some());
        }
    }
}
