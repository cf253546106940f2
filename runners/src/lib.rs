//! pinstorm runners: running scenarios on this host.
//!
//! - [`host`]: the run itself, from checking paths to the final result file;
//! - [`probe`], [`bench`]: the jobs of a scenario;
//! - [`environment`]: what machine and kernel a run is on;
//! - [`signals`]: SIGINT/SIGTERM become an orderly, cleaned-up stop;
//! - [`cleanup`]: undoing what killed runs left.
//!
//! QEMU guests (the lab) and matrices come with their own issues.

pub mod bench;
pub mod cleanup;
pub mod environment;
pub mod host;
pub mod probe;
pub mod signals;
