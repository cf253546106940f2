//! The lease job as a [`Job`]: what it needs from the run (backings, huge pages, cells), the
//! lease-break-time it runs with, and the call into [`crate::lease::run`].

use anyhow::{Context, Result};

use pinstorm_analysis::schema::{LeaseBreakTime, RunResult};
use pinstorm_workloads::backing::BackingKind;
use pinstorm_workloads::lease::Behaviour;
use pinstorm_workloads::scenario::LeaseJob;
use pinstorm_workloads::scratch::{RunScratch, SysctlGuard};
use pinstorm_workloads::sysctl::{self, Sysctl};

use crate::job::{Job, JobContext, Progress};
use crate::lease::LeaseContext;

impl Job for LeaseJob {
    fn name(&self) -> &'static str {
        "leases"
    }

    fn backings(&self) -> &[BackingKind] {
        &self.backings
    }

    /// The holder's region and the breaker's.
    fn hugepages(&self, hp_size: u64) -> u64 {
        self.pin_size.bytes().div_ceil(hp_size) * 2
    }

    /// Per backing: every break cell (lease x behaviour x breaker, and the no-pin holders'
    /// cells, when rounds are asked for), the overhead measurement, every lifecycle scenario.
    fn cells(&self) -> u64 {
        let breaks = crate::lease::break_cells(self).len();
        (self.backings.len()
            * (breaks + usize::from(self.overhead_cycles > 0) + self.lifecycle.len()))
            as u64
    }

    fn run(&self, ctx: &JobContext, progress: &Progress, result: &mut RunResult) -> Result<()> {
        let (lbt, _guard) = lease_break_time(self, ctx.scratch, ctx.is_root, result)?;
        let exe = match ctx.holder_exe {
            Some(p) => p.to_path_buf(),
            None => {
                std::env::current_exe().context("finding the pinstorm binary for lease holders")?
            }
        };
        let lease_ctx = LeaseContext {
            backings: ctx.backings,
            facts: ctx.expectations.facts(),
            kernel: ctx.kernel,
            seed: ctx.seed,
            run_tag: ctx.run_tag,
            holder_exe: &exe,
            lease_break_time_s: lbt,
            expiry_notrun: (lbt > 10).then(|| {
                format!("waiting a lease out takes fs/lease-break-time ({lbt} s here); shortening it needs root")
            }),
            pins: ctx.pins,
        };
        let mut out = result.leases.take().unwrap_or_default();
        let r = crate::lease::run(self, &lease_ctx, progress, &mut out);
        result.leases = Some(out);
        r
        // `_guard` restores fs/lease-break-time here, on every path out.
    }
}

/// Read fs/lease-break-time and, when something in the job waits a lease out and we are root,
/// set it to the job's value for the run (journaled, restored by the returned guard).
fn lease_break_time(
    job: &LeaseJob,
    scratch: &RunScratch,
    is_root: bool,
    result: &mut RunResult,
) -> Result<(u64, Option<SysctlGuard>)> {
    let original: u64 = sysctl::read("fs/lease-break-time")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(45);
    let waits = job.rounds > 0
        && (job.behaviours.contains(&Behaviour::Hung)
            || job.behaviours.contains(&Behaviour::Downgrading))
        || job.lifecycle.iter().any(|l| l.spec().waits_for_expiry);
    let want = job.lease_break_time.0.as_secs().max(1);
    let mut rec = LeaseBreakTime {
        original_s: Some(original),
        used_s: Some(original),
        restored: true,
    };
    let guard = if waits && is_root && want != original {
        let g = SysctlGuard::set(scratch, Sysctl::LeaseBreakTime, &want.to_string())?;
        rec.used_s = Some(want);
        Some(g)
    } else {
        None
    };
    let used = rec.used_s.unwrap_or(original);
    result
        .leases
        .get_or_insert_with(Default::default)
        .lease_break_time = rec;
    Ok((used, guard))
}
