//! Reading and temporarily changing sysctls (`/proc/sys/...`), always restored.
//!
//! A [`SysctlGuard`] journals the original value before it writes the new one and restores it
//! on drop (normal exit, error, signal-driven unwinding, panic). After SIGKILL the journal
//! lets the next run restore it.

use anyhow::{bail, Context, Result};

pub use crate::scratch::Sysctl;
use crate::scratch::{JournalEntry, RunScratch};

fn path(name: &str) -> Result<String> {
    let name = name.trim_start_matches('/');
    if name.is_empty()
        || name
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("{name:?} is not a sysctl name");
    }
    Ok(format!("/proc/sys/{name}"))
}

/// Read a sysctl (any: reading changes nothing).
pub fn read(name: &str) -> Result<String> {
    let p = path(name)?;
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {p}"))?
        .trim()
        .to_string())
}

/// Write one of the sysctls pinstorm changes: only those of [`Sysctl`]'s allow-list, only
/// integer values.
pub fn write(sysctl: Sysctl, value: &str) -> Result<()> {
    if !sysctl.valid_value(value) {
        bail!("{value:?} is not a value for {sysctl}");
    }
    let p = path(sysctl.name())?;
    std::fs::write(&p, value).with_context(|| format!("writing {value:?} to {p}"))
}

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

/// `HugePages_Total`, `HugePages_Free` and `Hugepagesize` (bytes) from /proc/meminfo.
pub fn hugepage_counts() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (
        get("HugePages_Total:"),
        get("HugePages_Free:"),
        get("Hugepagesize:") * 1024,
    )
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
