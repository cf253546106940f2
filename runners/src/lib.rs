//! pinstorm runners: running scenarios on this host.
//!
//! - [`run`]: the run itself, from the checked paths to the final result file, on a host or
//!   inside a lab guest;
//! - [`job`]: the [`job::Job`] trait every job of a scenario implements, and what jobs are
//!   given (backings, progress, context);
//! - [`probe`], [`bench`], [`storm`], [`lease`]: the jobs of a scenario;
//! - [`watchdog`], [`kmsg`]: blocked syscalls and kernel warnings during storms;
//! - [`environment`]: what machine and kernel a run is on;
//! - [`signals`]: SIGINT/SIGTERM become an orderly, cleaned-up stop;
//! - [`cleanup`]: undoing what killed runs left.
//!
//! - [`lab`]: the same scenarios in QEMU guests booted from real kernels (virtme-ng), with
//!   emulated NVDIMM (FS-DAX, device-dax) and soft-RoCE, kernel by kernel.

pub mod bench;
pub mod cleanup;
pub mod environment;
pub mod job;
pub mod kmsg;
pub mod lab;
pub mod lease;
mod lease_job;
pub mod probe;
pub mod run;
pub mod signals;
pub mod storm;
pub mod watchdog;

/// `crate::host::{BackingSet, Progress}` for runners/src/lease.rs until it imports them from
/// [`job`]; remove with that import.
#[doc(hidden)]
pub(crate) mod host {
    pub use crate::job::{BackingSet, Progress};
}
