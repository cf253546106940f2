//! Reading sysctls (`/proc/sys/...`), and writing the few pinstorm changes: [`Sysctl`] is the
//! allow-list, shared with the journal. Changes go through
//! [`crate::scratch::SysctlGuard`], which journals the original value first and restores it.

use std::fmt;

use anyhow::{bail, Context, Result};

/// The sysctls pinstorm changes (and so may restore): the only ones a journal may name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sysctl {
    /// Huge pages reserved for hugetlb backings.
    NrHugepages,
    /// How long a lease breaker waits; shortened for holders that never answer.
    LeaseBreakTime,
}

impl Sysctl {
    pub const ALL: &'static [Sysctl] = &[Sysctl::NrHugepages, Sysctl::LeaseBreakTime];

    /// The name below `/proc/sys`.
    pub fn name(self) -> &'static str {
        match self {
            Sysctl::NrHugepages => "vm/nr_hugepages",
            Sysctl::LeaseBreakTime => "fs/lease-break-time",
        }
    }

    pub fn from_name(name: &str) -> Option<Sysctl> {
        Sysctl::ALL.iter().copied().find(|s| s.name() == name)
    }

    /// Whether `value` is one this sysctl can hold (both are plain non-negative integers).
    pub fn valid_value(self, value: &str) -> bool {
        !value.is_empty()
            && value.len() <= 20
            && value.bytes().all(|b| b.is_ascii_digit())
            && value.parse::<u64>().is_ok()
    }
}

impl fmt::Display for Sysctl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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

/// The number after `key` (with its colon, `MemTotal:`) in /proc/meminfo's text.
fn meminfo_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
}

/// One field of /proc/meminfo (`MemAvailable:`, `HardwareCorrupted:`), in its unit (kB for
/// sizes); None when the file or the field is missing.
pub fn meminfo_kb(key: &str) -> Option<u64> {
    meminfo_field(&std::fs::read_to_string("/proc/meminfo").ok()?, key)
}

/// `HugePages_Total`, `HugePages_Free` and `Hugepagesize` (bytes) from /proc/meminfo.
pub fn hugepage_counts() -> (u64, u64, u64) {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let get = |key: &str| meminfo_field(&text, key).unwrap_or(0);
    (
        get("HugePages_Total:"),
        get("HugePages_Free:"),
        get("Hugepagesize:") * 1024,
    )
}
