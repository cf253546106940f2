//! The pin-latency benchmark: register + unregister cycles per pin path x backing x size,
//! each half and the whole cycle recorded in its own HdrHistogram.
//!
//! Next to every cell, the same calls are made raw in a tight loop (the pin path's
//! baseline, `pin::baseline`, which shares no code with the pinner), interleaved in blocks
//! with the measured cycles so both see the same machine state; the row carries both
//! medians, which shows the harness's own overhead. Failed calls are counted per operation
//! and make the row's outcome the errno; rows with too few samples are `notrun`
//! ([`rows::MIN_SAMPLES`]); throughput is measured over wall time (`worker`).

mod rows;
mod worker;

use std::sync::Barrier;

use pinstorm_analysis::schema::{BenchRow, RunResult};
use pinstorm_workloads::backing::{BackingKind, RegionSpec};
use pinstorm_workloads::pin::Availability;
use pinstorm_workloads::scenario::BenchJob;

use crate::job::{Job, JobContext, Progress};
use crate::signals;
use rows::CellKey;
use worker::{CellStop, Ended, Side, ThreadResult};

pub use rows::MIN_SAMPLES;

impl Job for BenchJob {
    fn name(&self) -> &'static str {
        "bench"
    }

    fn backings(&self) -> &[BackingKind] {
        &self.backings
    }

    /// One region of the largest size per thread.
    fn hugepages(&self, hp_size: u64) -> u64 {
        let max = self.sizes.iter().map(|s| s.bytes()).max().unwrap_or(0);
        max.div_ceil(hp_size) * self.threads.get() as u64
    }

    fn cells(&self) -> u64 {
        (self.backings.len() * self.pins.len() * self.sizes.len()) as u64
    }

    fn run(
        &self,
        ctx: &JobContext,
        progress: &Progress,
        result: &mut RunResult,
    ) -> anyhow::Result<()> {
        run(self, ctx, progress, &mut result.bench)
    }
}

/// The name of a bench worker thread (at most 15 bytes: the kernel's `comm`).
pub const WORKER_THREAD: &str = "pinstorm-bench";

fn run(
    job: &BenchJob,
    ctx: &JobContext,
    progress: &Progress,
    out: &mut Vec<BenchRow>,
) -> anyhow::Result<()> {
    let threads = job.threads.get();
    for &pin in &job.pins {
        let path = pin.path(ctx.pins);
        let avail = path.availability();
        let device = path.device();
        for &kind in &job.backings {
            for &size in &job.sizes {
                signals::check()?;
                let spec = RegionSpec {
                    size,
                    map: job.map,
                    access: job.access,
                };
                progress.step(&format!("bench {pin} {kind} {size}"));
                let mut key = CellKey {
                    pin: pin.name(),
                    backing: kind.name(),
                    fs: "",
                    map: spec.map.name(),
                    access: spec.access.name(),
                    size: size.bytes(),
                    threads,
                    dax: None,
                    device: device.as_deref(),
                };
                let backing = match ctx.backings.get(kind) {
                    Ok(b) => b,
                    Err(r) => {
                        out.push(notrun(&key, r.to_string()));
                        continue;
                    }
                };
                let fs = backing.info().fs.clone();
                key.fs = &fs;
                if let Availability::NotRun(r) = &avail {
                    out.push(notrun(&key, r.clone()));
                    continue;
                }
                let barrier = Barrier::new(threads);
                let results: Vec<ThreadResult> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|_| {
                            // The name tells a watcher (`/proc/PID/task/*/comm`) the cell began.
                            std::thread::Builder::new()
                                .name(WORKER_THREAD.into())
                                .spawn_scoped(s, || {
                                    worker::worker(&*path, backing, spec, job, &barrier)
                                })
                                .expect("spawning a bench worker")
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("bench worker panicked"))
                        .collect()
                });
                let mut ours = Side::default();
                let mut base = Side::default();
                let mut stop = None;
                let mut ended = None;
                let mut note = None;
                for r in results {
                    note = note.or(r.note);
                    key.dax = key.dax.or(r.dax);
                    ours.merge(&r.ours);
                    base.merge(&r.base);
                    stop = stop.or(r.stop);
                    // The reason a thread ended early (a signal, the deadline) names the
                    // cell's; a thread that ran all its iterations says least.
                    ended = match (ended, r.ended) {
                        (None, e) | (Some(Ended::Iterations(_)), e) => Some(e),
                        (Some(e), _) => Some(e),
                    };
                }
                match stop {
                    Some(CellStop::Tool(e)) => {
                        return Err(e.context(format!("bench {pin} {kind} {size}")))
                    }
                    Some(CellStop::NotRun(r)) => out.push(notrun(&key, r)),
                    None => out.extend(rows::cell_rows(
                        &rows::RowContext::of(ctx),
                        &key,
                        &ours,
                        &base,
                        &ended.unwrap_or(Ended::NotStarted),
                        note,
                        &job.device_writes(),
                    )),
                }
            }
        }
    }
    Ok(())
}

/// The one row of a cell that could not run.
fn notrun(key: &CellKey, reason: String) -> BenchRow {
    let mut row = key.row("cycle", "notrun".into(), Some(reason));
    row.verdict = Some(pinstorm_analysis::verdict::Verdict::NotRun);
    row
}

#[cfg(test)]
mod tests;
