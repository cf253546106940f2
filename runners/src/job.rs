//! The jobs of a scenario (probe, bench, leases, storm) as one trait, and what every job is
//! given: the backings set up for the run, the progress bar, the run's context.
//!
//! A job says which backings it pins, how many huge pages it holds at once and how many
//! cells it has; the run ([`crate::run`]) sets up the backings (beside the jobs,
//! [`crate::backings`]) and huge pages once for all jobs, totals the progress, runs each
//! job and writes the result after each. Nothing here
//! imports a job or the run, so every job can import this module without a cycle.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::Mutex;

use anyhow::Result;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use pinstorm_analysis::expect::Expectations;
use pinstorm_analysis::kernel::KernelRelease;
use pinstorm_analysis::schema::RunResult;
use pinstorm_workloads::backing::BackingKind;
use pinstorm_workloads::pin::PinSettings;
use pinstorm_workloads::scratch::RunScratch;

pub use crate::backings::BackingSet;
use crate::kmsg::Kmsg;

/// One job of a scenario.
pub trait Job {
    /// The job's name in phase messages.
    fn name(&self) -> &'static str;
    /// The backings it pins; the run sets each up once for all jobs.
    fn backings(&self) -> &[BackingKind];
    /// Huge pages of `hp_size` bytes it holds at once when one of its backings uses hugetlb.
    fn hugepages(&self, hp_size: u64) -> u64;
    /// Its cells: the progress bar's steps.
    fn cells(&self) -> u64;
    /// Whether it measures time (latencies, rates): such a job starts only once every
    /// backing of the run is set up, so no mkfs or module load runs beside what it times.
    /// A job of facts only (the probe) starts at once and waits per backing.
    fn measures_time(&self) -> bool {
        true
    }
    /// Run it, recording into its part of `result` as it goes, so an interrupted job keeps
    /// what it measured.
    fn run(&self, ctx: &JobContext, progress: &Progress, result: &mut RunResult) -> Result<()>;
}

/// What every job of a run is given.
pub struct JobContext<'a> {
    pub backings: &'a BackingSet,
    pub expectations: &'a Expectations,
    pub kernel: &'a KernelRelease,
    pub seed: u64,
    /// Written into every canary, so data from another run is recognised as such.
    pub run_tag: u32,
    /// What the pin paths are told (the scenario's `[rdma]`, ...).
    pub pins: &'a PinSettings,
    /// Why a pin may be refused with ENOMEM here (RLIMIT_MEMLOCK), if it may.
    pub memlock_hint: Option<String>,
    /// The kernel log, opened before any job so only messages from this run are read.
    pub kmsg: &'a Mutex<Kmsg>,
    /// The run's directory, for what a job changes on the machine (journaled).
    pub scratch: &'a RunScratch,
    pub is_root: bool,
    /// The pinstorm binary that runs lease holders (`__lease-holder`); default: this one.
    pub holder_exe: Option<&'a Path>,
    /// How `pinstorm run` names this scenario (a preset name or a file), for reproducers.
    pub scenario: &'a str,
    /// How a reproducer's command line starts, up to the scenario (`pinstorm run` when
    /// empty; `RunOptions::reproduce_as`).
    pub reproduce_as: &'a [String],
    /// What a lab guest made for the memory operations; `None` outside a lab guest
    /// (`RunOptions::lab`).
    pub lab: Option<&'a pinstorm_workloads::layout::LabMachine>,
}

/// The tag written into every canary of a run: a hash of the run id.
pub fn run_tag(run_id: &str) -> u32 {
    run_id.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// A refusal's reason, with the memlock explanation when the kernel said ENOMEM.
pub fn with_memlock_hint(mut reason: String, errno: &str, hint: Option<&str>) -> String {
    if let (true, Some(h)) = (errno == "ENOMEM", hint) {
        reason.push_str(&format!(" ({h})"));
    }
    reason
}

/// A progress bar on stderr when it is a terminal; otherwise nothing at all.
pub struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    pub fn new(enabled: bool, total: u64) -> Progress {
        if !enabled || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        Progress { bar: Some(bar) }
    }

    pub fn step(&self, msg: &str) {
        if let Some(b) = &self.bar {
            b.inc(1);
            b.set_message(msg.to_string());
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_tags_differ_between_runs_and_repeat_for_one() {
        let a = run_tag("20261122T043000.123Z-1a2b");
        assert_eq!(a, run_tag("20261122T043000.123Z-1a2b"));
        assert_ne!(a, run_tag("20261122T043000.123Z-1a2c"));
    }

    #[test]
    fn only_enomem_gets_the_memlock_hint() {
        let hint = Some("ulimit -l");
        assert_eq!(
            with_memlock_hint("register: ENOMEM".into(), "ENOMEM", hint),
            "register: ENOMEM (ulimit -l)"
        );
        assert_eq!(
            with_memlock_hint("register: EFAULT".into(), "EFAULT", hint),
            "register: EFAULT"
        );
        assert_eq!(
            with_memlock_hint("register: ENOMEM".into(), "ENOMEM", None),
            "register: ENOMEM"
        );
    }
}
