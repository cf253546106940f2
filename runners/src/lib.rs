//! pinstorm runners: running scenarios on this host.
//!
//! - [`host`]: the run itself, from checking paths to the final result file;
//! - [`probe`], [`bench`], [`storm`], [`lease`]: the jobs of a scenario;
//! - [`watchdog`], [`kmsg`]: blocked syscalls and kernel warnings during storms;
//! - [`environment`]: what machine and kernel a run is on;
//! - [`signals`]: SIGINT/SIGTERM become an orderly, cleaned-up stop;
//! - [`cleanup`]: undoing what killed runs left.
//!
//! The lab (the same scenarios in QEMU guests booted from real kernels) is a crate of its
//! own, `pinstorm-lab` in `runners/lab/`, built on these.

pub mod bench;
pub mod cleanup;
pub mod environment;
pub mod host;
pub mod kmsg;
pub mod lease;
pub mod probe;
pub mod signals;
pub mod storm;
pub mod watchdog;
