//! pinstorm analysis: what results mean.
//!
//! - [`schema`]: the result file (`result.json`) and its version;
//! - [`disturbance`]: how disturbed the machine was while a run measured, and the judgement;
//! - [`hist`]: latency histograms, their summary statistics and lossless storage;
//! - [`stats`]: medians and bootstrap confidence intervals for comparisons;
//! - [`kernel`]: kernel releases and version ranges;
//! - [`expect`]: expectation files (pin outcomes, lease lifecycle facts, oracle counts);
//! - [`verdict`]: the one judgement of a run: every fact's verdict and the exit status;
//! - [`check`]: `--check` expressions on those facts, and the exit status `git bisect run`
//!   reads from them;
//! - [`oracle`]: the list of oracles, with names, descriptions and units;
//! - [`store`]: where results go and how they are written (atomically);
//! - [`summary`]: the human summary printed after a run;
//! - [`catalog`]: loading many results at once (in parallel) and selecting runs;
//! - [`facts`]: what comparisons, charts and reports read of a run, kept in place of the
//!   whole result;
//! - [`metrics`]: what a run measured (latencies, violations, capability cells, notruns);
//! - [`compare`] and [`gate`]: two sets of runs side by side, and regression gates;
//! - [`render`]: comparisons as text and Markdown;
//! - [`plot`]: SVG and PNG charts per kernel version; [`report`]: one HTML file;
//! - [`export`]: CSV, KTAP, JUnit XML and KCIDB JSON.
//!
//! Nothing here runs anything against the kernel.

// Analysis reads files; it has no business with raw memory or system calls.
#![deny(unsafe_code)]

pub mod catalog;
pub mod check;
pub mod compare;
pub mod disturbance;
pub mod expect;
pub mod export;
pub mod facts;
pub mod gate;
pub mod gated;
pub mod hist;
pub mod human;
pub mod kernel;
pub mod metrics;
pub mod oracle;
pub mod plot;
pub mod render;
pub mod report;
pub mod schema;
pub mod stats;
pub mod store;
pub mod summary;
pub mod verdict;
