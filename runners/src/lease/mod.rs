//! Leases on the host: lease-break storms, lease-check overhead, the lifecycle scenarios and
//! the layout-lease probe.
//!
//! Holders run in processes of their own (`pinstorm __lease-holder`, see
//! `pinstorm_workloads::lease`); this module is the other side: it creates the files, starts
//! holders ([`holder`]), breaks their leases from this process, times everything on
//! CLOCK_MONOTONIC, and kills every holder-side process at the end. One module per kind of
//! cell: [`breaks`], [`overhead`], [`lifecycle`], [`layout_probe`].

// The syscalls with unsafe edges live in `pinstorm_workloads::lease`.
#![deny(unsafe_code)]

use std::path::Path;

use pinstorm_analysis::expect::FactExpectations;
use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::kernel::KernelRelease;
use pinstorm_analysis::schema::{LeaseResults, Measured};
use pinstorm_analysis::stats;
use pinstorm_workloads::backing::Backing;
use pinstorm_workloads::lease::{Behaviour, HolderConfig, LeaseKind};
use pinstorm_workloads::pin::{PinKind, PinSettings};
use pinstorm_workloads::scenario::LeaseJob;
use pinstorm_workloads::scratch::{ScratchFile, ScratchPath};
use pinstorm_workloads::sys::{rt_signal, Errno};

use crate::job::{BackingSet, Progress};
use crate::signals;

mod breaks;
mod holder;

pub(crate) use breaks::cells as break_cells;
mod layout_probe;
mod lifecycle;
mod overhead;

pub struct LeaseContext<'a> {
    pub backings: &'a BackingSet,
    pub facts: &'a FactExpectations,
    pub kernel: &'a KernelRelease,
    pub seed: u64,
    pub run_tag: u32,
    /// The pinstorm binary that runs holders (`__lease-holder`).
    pub holder_exe: &'a Path,
    /// The lease-break-time in force for this run, seconds.
    pub lease_break_time_s: u64,
    /// Why waiting a lease out is not run here (non-root with a long lease-break-time).
    pub expiry_notrun: Option<String>,
    /// The run's pin settings, handed to every holder (and the layout-lease checks) with
    /// the pin path.
    pub pins: &'a PinSettings,
}

/// The pin path of lease holders and of the layout-lease checks. A `[lease]` job does not
/// choose one: io_uring fixed buffers, a long-term pin as an RDMA user's, and the one path
/// whose pin lives in a descriptor that fork and SCM_RIGHTS can hand over.
const HOLDER_PIN: PinKind = PinKind::IoUring;

pub fn run(
    job: &LeaseJob,
    ctx: &LeaseContext,
    progress: &Progress,
    out: &mut LeaseResults,
) -> anyhow::Result<()> {
    if job.layout_probe {
        if let Some(kind) = job.backings.first() {
            if let Ok(b) = ctx.backings.get(*kind) {
                out.layout_lease = Some(layout_probe::run(job, b, ctx.pins));
            }
        }
    }
    for &kind in &job.backings {
        let backing = ctx.backings.get(kind);
        for cell in breaks::cells(job) {
            signals::check()?;
            progress.step(&format!(
                "lease {kind} {} {} {}{}",
                cell.lease.name(),
                cell.behaviour.name(),
                cell.breaker.name(),
                if cell.pinned { " pinned" } else { "" }
            ));
            let r = match &backing {
                Ok(b) => breaks::run(job, ctx, *b, cell)?,
                Err(e) => cell.notrun(kind, "", job, e.0.clone()),
            };
            out.breaks.push(r);
        }
        if job.overhead_cycles > 0 {
            signals::check()?;
            progress.step(&format!("lease-check overhead {kind}"));
            out.overhead.push(match &backing {
                Ok(b) => overhead::run(job, ctx, *b)?,
                Err(e) => overhead::notrun(kind.name(), "", e.0.clone()),
            });
        }
        for &l in &job.lifecycle {
            signals::check()?;
            progress.step(&format!("lease lifecycle {} {kind}", l.name()));
            out.lifecycle.push(match &backing {
                Ok(b) => lifecycle::run(job, ctx, *b, l)?,
                Err(e) => lifecycle::notrun(l, kind, "", e.0.clone()),
            });
        }
    }
    Ok(())
}

/// What every holder of this job is told; cells change what is theirs.
fn holder_config(
    job: &LeaseJob,
    ctx: &LeaseContext,
    path: &Path,
    lk: LeaseKind,
    bh: Behaviour,
) -> HolderConfig {
    HolderConfig {
        path: path.to_path_buf(),
        lease: lk,
        behaviour: bh,
        delay_ms: job.delay.0.as_millis() as u64,
        rounds: job.rounds,
        pin: HOLDER_PIN,
        pins: ctx.pins.clone(),
        pin_len: None,
        lifecycle: None,
        overhead_cycles: None,
        extra_flags: 0,
        signal: rt_signal(job.signal),
        wait_ms: (ctx.lease_break_time_s * 1000 + 2000).max(3000),
        run_tag: ctx.run_tag,
    }
}

/// A file of `size` bytes that pinstorm created in the backing's directory, closed again:
/// a write lease cannot be taken on a file somebody else holds open.
fn lease_file(b: &dyn Backing, name: &str, size: u64) -> Result<ScratchPath, String> {
    let dir = b.dir().ok_or_else(|| {
        format!(
            "{} has no directory: a breaker needs a path to open",
            b.kind()
        )
    })?;
    let f = ScratchFile::create(dir, name).map_err(|e| format!("{e:#}"))?;
    if b.kind().uses_hugetlb() {
        // hugetlbfs has no write(2): allocate the huge pages instead.
        rustix::fs::fallocate(f.file(), rustix::fs::FallocateFlags::empty(), 0, size)
            .map_err(|e| format!("allocating {name}: {}", Errno::from(e)))?;
    } else {
        let fill = vec![0x5au8; size as usize];
        std::os::unix::fs::FileExt::write_all_at(f.file(), &fill, 0)
            .map_err(|e| format!("filling {name}: {e}"))?;
    }
    Ok(f.into_closed())
}

fn measured(l: &Latency) -> Option<Measured> {
    (l.count() > 0).then(|| Measured {
        stats: l.stats(),
        histogram: l.encode(),
        median_ci_low_ns: None,
        median_ci_high_ns: None,
    })
}

/// Samples kept raw as well as in a histogram, for a confidence interval of the median.
#[derive(Default)]
struct Samples {
    hist: Latency,
    raw: Vec<u64>,
}

impl Samples {
    fn record(&mut self, v: u64) {
        self.hist.record(v);
        self.raw.push(v);
    }

    fn measured(&self, seed: u64) -> Option<Measured> {
        let mut m = measured(&self.hist)?;
        let (_, lo, hi) = stats::bootstrap_median_ci(&self.raw, 1000, 0.95, seed);
        m.median_ci_low_ns = Some(lo);
        m.median_ci_high_ns = Some(hi);
        Some(m)
    }
}
