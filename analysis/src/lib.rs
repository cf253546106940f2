//! pinstorm analysis: what results mean.
//!
//! - [`schema`]: the result file (`result.json`) and its version;
//! - [`hist`]: latency histograms, their summary statistics and lossless storage;
//! - [`stats`]: medians and bootstrap confidence intervals for comparisons;
//! - [`kernel`]: kernel releases and version ranges;
//! - [`expect`]: expectation files and the verdict for each probe cell;
//! - [`store`]: where results go and how they are written (atomically);
//! - [`summary`]: the human summary printed after a run.
//!
//! Nothing here runs anything against the kernel.

pub mod expect;
pub mod hist;
pub mod kernel;
pub mod schema;
pub mod stats;
pub mod store;
pub mod summary;
