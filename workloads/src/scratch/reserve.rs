//! Sysctl changes a run makes, journaled before they are made and restored on drop (normal
//! exit, error, signal-driven unwinding, panic); after SIGKILL the journal lets the next run
//! restore them.

use anyhow::{bail, Result};

use super::{JournalEntry, RunScratch};
use crate::sysctl::{hugepage_counts, read, write, Sysctl};

pub struct SysctlGuard {
    sysctl: Sysctl,
    original: String,
}

impl SysctlGuard {
    pub fn set(scratch: &RunScratch, sysctl: Sysctl, value: &str) -> Result<SysctlGuard> {
        let original = read(sysctl.name())?;
        if !sysctl.valid_value(&original) {
            bail!("{sysctl} holds {original:?}, which pinstorm could not restore; not changing it");
        }
        scratch.record(&JournalEntry::Sysctl {
            sysctl,
            original: original.clone(),
        })?;
        write(sysctl, value)?;
        Ok(SysctlGuard { sysctl, original })
    }

    pub fn original(&self) -> &str {
        &self.original
    }
}

impl Drop for SysctlGuard {
    fn drop(&mut self) {
        if let Err(e) = write(self.sysctl, &self.original) {
            eprintln!(
                "pinstorm: failed to restore {} to {}: {e:#}",
                self.sysctl, self.original
            );
        }
    }
}

/// Huge pages reserved for a run: raises `vm/nr_hugepages` so that at least `pages` are
/// free, and puts the old value back on drop.
pub struct HugePageReservation {
    pub requested: u64,
    /// Free huge pages after the reservation (the kernel may give fewer than asked).
    pub free: u64,
    pub page_size: u64,
    _guard: Option<SysctlGuard>,
}

impl HugePageReservation {
    /// The `vm/nr_hugepages` value that will be written back on drop, if it was changed.
    pub fn restores_to(&self) -> Option<&str> {
        self._guard.as_ref().map(|g| g.original())
    }

    pub fn reserve(scratch: &RunScratch, pages: u64) -> Result<HugePageReservation> {
        let (total, free, page_size) = hugepage_counts();
        let guard = if free < pages {
            let want = total + (pages - free);
            Some(SysctlGuard::set(
                scratch,
                Sysctl::NrHugepages,
                &want.to_string(),
            )?)
        } else {
            None
        };
        let (_, free, _) = hugepage_counts();
        Ok(HugePageReservation {
            requested: pages,
            free,
            page_size,
            _guard: guard,
        })
    }
}
