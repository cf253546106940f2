//! The lab: run a scenario in QEMU guests booted (with virtme-ng) from real kernels, with an
//! emulated NVDIMM (FS-DAX xfs and ext4, device-dax) and soft-RoCE, and bring each result
//! home tagged with the kernel it ran on.
//!
//! Host side, per kernel (`kernel_run`): fetch/unpack it into the cache ([`kernels`]), or
//! build a kernel tree with the options the guest uses ([`build`], `--build`),
//! decide KVM or TCG ([`vm::probe_accel`]), boot `vng` with the guest agent
//! (`pinstorm __lab-guest`, see [`guest`]) under a watchdog ([`vm::boot`]), read the console
//! for panics and oopses ([`console`]), judge the guest ([`status`]) and store its result
//! (or a result saying why there is none) under `RESULTS/<release>/<run-id>/` with the
//! console log and the QEMU command line. The matrix (`matrix`) goes kernel by kernel and
//! resumes a run of the same [`LabPlan`]; the cache (`cache`) is locked, and what a killed
//! lab left in it is cleaned.
//!
//! Confinement: the guest never gets a writable host root (no `--rw`); on the host the lab
//! writes only under the cache directory and the results directory, both absolute and
//! checked (and, with `--build`, in the kernel tree it is asked to build); virtme-ng runs
//! with HOME and TMPDIR inside the cache.
//!
//! No unsafe code: signals and /proc go through `sys` (rustix), and the lint keeps it so.

#![deny(unsafe_code)]

pub mod apt;
pub mod build;
mod cache;
pub mod console;
mod decompress;
pub mod guest;
pub mod guest_init;
mod initramfs;
mod kernel_run;
pub mod kernels;
mod kmem;
pub mod kselftest;
mod matrix;
mod options;
pub mod pvh;
mod record;
pub mod status;
mod sys;
pub mod template;
pub mod timings;
pub mod vm;

pub use cache::{clean_leftovers, cleanup};
pub use guest::InjectKind;
pub use matrix::{fetch, run, LabOutcome};
pub use options::{check, default_jobs, Inject, LabOptions, LabPlan, DEFAULT_KERNELS};
pub use record::summarize;
pub use status::{KernelOutcome, KernelStatus};
pub use timings::describe as describe_timings;

/// FNV-1a: a stable hash for names in the cache and the matrix's resume key (not for
/// anything an adversary chooses to collide).
pub(crate) fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
