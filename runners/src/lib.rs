//! pinstorm runners: running scenarios on this host.
//!
//! - [`run`]: the run itself, from the checked paths to the final result file, on a host or
//!   inside a lab guest;
//! - [`backings`]: the backings of a run, set up beside its jobs;
//! - [`job`]: the [`job::Job`] trait every job of a scenario implements, and what jobs are
//!   given (backings, progress, context);
//! - [`probe`], [`bench`], [`storm`], [`lease`]: the jobs of a scenario;
//! - [`watchdog`], [`kmsg`]: blocked syscalls and kernel warnings during storms;
//! - [`environment`]: what machine and kernel a run is on;
//! - [`disturbance`]: how disturbed the machine is while a run and each job measure;
//! - [`signals`]: SIGINT/SIGTERM become an orderly, cleaned-up stop;
//! - [`shard`]: the kernels x scenarios matrix of a nightly, cut into shards for CI engines;
//! - [`cleanup`]: undoing what killed runs left.
//!
//! The lab (the same scenarios in QEMU guests booted from real kernels) is a crate of its
//! own, `pinstorm-lab` in `runners/lab/`, built on these.

// No unsafe code here: the system edges are in pinstorm-workloads' `sys` modules.
#![deny(unsafe_code)]

pub mod backings;
pub mod bench;
pub mod cleanup;
pub mod disturbance;
pub mod environment;
pub mod job;
pub mod kmsg;
pub mod lease;
mod lease_job;
pub mod migration;
pub mod probe;
pub mod run;
pub mod shard;
pub mod signals;
pub mod storm;
pub mod watchdog;
