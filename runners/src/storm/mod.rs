//! Layout storms against held pins.
//!
//! For each pin path x backing x map cell: `pinners` threads each own one file of the
//! backing, mapped as asked, and loop: register a pin on the whole mapping, hold it, let the
//! device write a canary page through it, check where that write went, let the device read
//! it back, unregister. `disruptors` threads meanwhile change the layout of those files
//! (truncate, punch, reflink, ...) at the configured rate, each from its own seeded RNG so a
//! seed replays the same operation sequence.
//!
//! How a write is judged (the lost-write oracle, in [`oracle`]): every file counts the layout
//! operations in flight on it and a generation that changes whenever one starts or ends. A
//! pin is *clean* when no operation ran at any moment of the registration. After the device
//! write the file is read back with `pread`; if it does not hold the canary although the pin
//! was clean and no operation ran between the write and the read, the write was lost: the
//! pinned range was part of the file when the pin was taken, and the data is not in the file.
//! If an operation overlapped, the write is counted as ambiguous and not judged. A private
//! mapping never carries device writes to the file by design: there the device's own
//! read-back through the pin must return what it wrote.
//!
//! Stale exposure and cross-file corruption come from the canaries' contents: a page holding
//! this file's canary from before the last operation that invalidated that page is stale; a
//! page holding another file's canary is cross-file. Both are checked at every lost write and
//! over every file (and its clone and donor) at the end.
//!
//! The folder: [`state`] (what a cell's threads share), [`pinner`] and [`disruptor`] (the
//! threads), [`cell`] (one cell from setup to result), [`scan`] (the end scan), [`report`]
//! (summing the threads into the result), and [`oracle`], one module per oracle.

use std::collections::BTreeMap;

use anyhow::Result;

use pinstorm_analysis::schema::{RunResult, StormResult, StormVerdict};
use pinstorm_analysis::verdict;
use pinstorm_workloads::backing::BackingKind;
use pinstorm_workloads::pin::PinKind;
use pinstorm_workloads::scenario::StormJob;

use crate::job::{Job, JobContext, Progress};
use crate::signals;

mod cell;
mod disruptor;
pub(crate) mod frames;
mod oracle;
mod pinner;
mod report;
mod scan;
mod shaped;
mod state;
mod views;

impl Job for StormJob {
    fn name(&self) -> &'static str {
        "storm"
    }

    fn backings(&self) -> &[BackingKind] {
        &self.backings
    }

    /// One file per pinner.
    fn hugepages(&self, hp_size: u64) -> u64 {
        self.file_size.bytes().div_ceil(hp_size) * self.pinners.get() as u64
    }

    fn cells(&self) -> u64 {
        let per_backing = |k: &BackingKind| if has_control(self, *k) { 2 } else { 1 };
        (self.backings.iter().map(per_backing).sum::<usize>() * self.pins.len() * self.maps.len())
            as u64
    }

    /// Every cell, then the verdicts on what ran (also when a cell failed).
    fn run(&self, ctx: &JobContext, progress: &Progress, result: &mut RunResult) -> Result<()> {
        let r = run_cells(self, ctx, progress, &mut result.storms);
        result.storm_verdicts = judge(ctx, &result.storms);
        r
    }
}

fn run_cells(
    job: &StormJob,
    ctx: &JobContext,
    progress: &Progress,
    out: &mut Vec<StormResult>,
) -> Result<()> {
    for &pin in &job.pins {
        for &kind in &job.backings {
            for &map in &job.maps {
                signals::check()?;
                progress.step(&format!("storm {pin} {kind} {}", map.name()));
                out.push(cell::run(job, ctx, pin, kind, map, false)?);
                if has_control(job, kind) {
                    signals::check()?;
                    progress.step(&format!("storm {pin} {kind} {} (control)", map.name()));
                    out.push(cell::run(job, ctx, pin, kind, map, true)?);
                }
            }
        }
    }
    Ok(())
}

/// Whether a control cell runs beside the storm cells of `kind`: only where the storm has
/// operations that apply (anonymous memory has no file: with layout operations only, its
/// storm cell is its own control).
fn has_control(job: &StormJob, kind: BackingKind) -> bool {
    job.control && job.disruptors > 0 && (kind.has_file() || cell::any_op_without_file(job))
}

/// Judge every storm that ran against the expectations (its registrations and oracle
/// counts), for `storm_verdicts`; with the device each pin path drove, as the storm matched
/// its `[[expect]]` rule.
fn judge(ctx: &JobContext, storms: &[StormResult]) -> Vec<StormVerdict> {
    let mut devices: BTreeMap<&str, Option<String>> = BTreeMap::new();
    storms
        .iter()
        .flat_map(|s| {
            let dev = devices
                .entry(&s.pin)
                .or_insert_with(|| {
                    PinKind::parse(&s.pin)
                        .ok()
                        .and_then(|p| p.path(ctx.pins).device())
                })
                .clone();
            verdict::judge_storm(ctx.expectations, s, ctx.kernel, dev.as_deref())
                .into_iter()
                .map(|fact| StormVerdict {
                    pin: s.pin.clone(),
                    backing: s.backing.clone(),
                    map: s.map.clone(),
                    control: s.control,
                    fact,
                })
        })
        .collect()
}
