//! What machine and kernel a run happened on, read from uname, /proc and /sys at the start
//! of the run. Read-only.

use std::collections::BTreeMap;

use pinstorm_analysis::schema::Environment;
use pinstorm_workloads::pin::{rdma, PinSettings};

/// Sysctls that change what pinning, leases and huge pages do.
pub const SYSCTLS: &[&str] = &[
    "fs/lease-break-time",
    "fs/leases-enable",
    "vm/nr_hugepages",
    "vm/nr_overcommit_hugepages",
    "vm/overcommit_memory",
    "vm/max_map_count",
    "kernel/io_uring_disabled",
    "kernel/io_uring_group",
    "kernel/perf_event_paranoid",
];

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Effective capability `CAP_IPC_LOCK` (bit 14): not charged against RLIMIT_MEMLOCK.
fn has_cap_ipc_lock() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << 14) != 0)
}

/// The machine as a run with these pin settings sees it.
pub fn capture(pins: &PinSettings) -> Environment {
    let u = rustix::system::uname();
    let s = |c: &std::ffi::CStr| c.to_string_lossy().into_owned();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let memlock = rustix::process::getrlimit(rustix::process::Resource::Memlock);
    let (total, free, hp_size) = pinstorm_workloads::sysctl::hugepage_counts();
    let sysctls: BTreeMap<String, String> = SYSCTLS
        .iter()
        .filter_map(|n| {
            pinstorm_workloads::sysctl::read(n)
                .ok()
                .map(|v| (n.to_string(), v))
        })
        .collect();
    let virt = read_trim("/sys/class/dmi/id/sys_vendor")
        .filter(|v| v.contains("QEMU") || v.contains("KVM"))
        .or_else(|| {
            cpuinfo
                .contains(" hypervisor")
                .then(|| "hypervisor".to_string())
        });
    Environment {
        kernel_release: s(u.release()),
        kernel_version: s(u.version()),
        machine: s(u.machine()),
        hostname: s(u.nodename()),
        cmdline: read_trim("/proc/cmdline").unwrap_or_default(),
        cpu_model,
        cpus: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        mem_total_bytes: pinstorm_workloads::sysctl::meminfo_kb("MemTotal:").unwrap_or(0) * 1024,
        memlock_soft_bytes: memlock.current,
        memlock_hard_bytes: memlock.maximum,
        cap_ipc_lock: has_cap_ipc_lock(),
        euid: rustix::process::geteuid().as_raw(),
        io_uring_disabled: read_trim("/proc/sys/kernel/io_uring_disabled"),
        hugepages_total: total,
        hugepages_free: free,
        hugepage_size_bytes: hp_size,
        thp_enabled: read_trim("/sys/kernel/mm/transparent_hugepage/enabled"),
        sysctls,
        boot_id: read_trim("/proc/sys/kernel/random/boot_id"),
        virtualized: virt,
        // The RDMA device is a fact of the machine (schema: `environment.rdma`), as the
        // run's settings select it.
        rdma: Some(rdma::selected(&pins.rdma).unwrap_or_else(|why| format!("none: {why}"))),
    }
}
