//! pinstorm workloads: what is run against the kernel.
//!
//! - [`pin`]: pin paths (io_uring fixed buffers, ...) behind the `PinPath` / `Pinner` traits;
//! - [`backing`]: the memory pinned (anonymous, memfd, tmpfs, hugetlbfs, loop-mounted
//!   ext4/xfs/btrfs, a user scratch directory) behind the `Backing` trait;
//! - [`scratch`], [`sysctl`], [`mounts`]: ownership of everything the tool creates or
//!   changes, and the journal that lets a later run undo a killed one;
//! - [`layout`]: layout operations (truncate, punch, reflink, ...) behind `LayoutOp`;
//! - [`lease`]: file leases and the lease-holder process;
//! - [`canary`]: what the device writes, so oracles can tell where data came from;
//! - [`scenario`]: scenario files;
//! - [`sys`]: the small unsafe edge (mappings, statx).
//!
//! Nothing here decides whether an outcome was expected or good: that is `analysis`.

// Unsafe code lives only in the `sys` edges (this crate's sys.rs, pin/io_uring/sys.rs,
// pin/baseline/sys.rs, lease/sys.rs, layout/sys.rs) and the verbs FFI (pin/rdma/verbs.rs); everything else
// is denied it.
#![deny(unsafe_code)]

pub mod backing;
pub mod canary;
pub mod layout;
pub mod lease;
pub mod memblock;
pub mod mounts;
pub mod pin;
pub mod scenario;
pub mod scratch;
pub mod shape;
#[allow(unsafe_code)]
pub mod sys;
pub mod sysctl;
pub mod units;

/// Whether this process may do what root may (mount, losetup, sysctls).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// `/proc/vmstat` `nr_foll_pin_acquired - nr_foll_pin_released`: pages pinned with FOLL_PIN
/// system-wide right now (5.6+). `None` where the counters do not exist.
///
/// The counters are summed from per-CPU deltas that the kernel folds in lazily, so the
/// difference can be off by a few pages, even negative, for a moment. As root the deltas are
/// folded first (`vm/stat_refresh`); a negative difference is reported as 0.
pub fn pinned_pages_outstanding() -> Option<i64> {
    let (acquired, released) = foll_pin_counters()?;
    Some((acquired as i64 - released as i64).max(0))
}

/// `/proc/vmstat` `nr_foll_pin_acquired` and `nr_foll_pin_released` as they are now, folded
/// first as root (see [`pinned_pages_outstanding`]). Both only ever grow: any FOLL_PIN pin
/// taken or released anywhere on the machine between two readings changes them.
pub fn foll_pin_counters() -> Option<(u64, u64)> {
    if is_root() {
        // Any write folds every CPU's pending deltas into the totals (Documentation/admin-guide/sysctl/vm.rst).
        let _ = std::fs::write("/proc/sys/vm/stat_refresh", "1");
    }
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    let get = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k)?.trim().parse::<u64>().ok())
    };
    Some((get("nr_foll_pin_acquired ")?, get("nr_foll_pin_released ")?))
}
