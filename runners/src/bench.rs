//! The pin-latency benchmark: register + unregister cycles per pin path x backing x size,
//! each half and the whole cycle recorded in its own HdrHistogram.
//!
//! Next to every cell, the same syscalls are made in a tight loop (the pin path's
//! `TightLoop`), interleaved in blocks with the measured cycles so both see the same machine
//! state; the row carries both medians, which shows the harness's own overhead.

use std::sync::Barrier;
use std::time::{Duration, Instant};

use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::schema::{BenchRow, RunResult};
use pinstorm_workloads::backing::{Backing, BackingKind, RegionError, RegionSpec};
use pinstorm_workloads::pin::{Availability, PinError, PinKind, PinPath};
use pinstorm_workloads::scenario::BenchJob;
use pinstorm_workloads::units::Size;

use crate::job::{with_memlock_hint, Job, JobContext, Progress};
use crate::signals;

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

/// Cycles per block before switching between the measured path and the tight loop.
const BLOCK: u64 = 32;

#[derive(Default)]
struct Hists {
    register: Latency,
    unregister: Latency,
    cycle: Latency,
    /// One 4 KiB device write right after the registration (`device_write = true`).
    device_write: Latency,
}

impl Hists {
    fn record(&mut self, reg: Duration, unreg: Duration) {
        let r = reg.as_nanos() as u64;
        let u = unreg.as_nanos() as u64;
        self.register.record(r);
        self.unregister.record(u);
        self.cycle.record(r + u);
    }

    fn merge(&mut self, o: &Hists) {
        self.register.merge(&o.register);
        self.unregister.merge(&o.unregister);
        self.cycle.merge(&o.cycle);
        self.device_write.merge(&o.device_write);
    }
}

/// Why a cell stopped: a kernel errno is a measured outcome; the rest is notrun.
enum CellStop {
    Errno(String, String),
    NotRun(String),
    Tool(anyhow::Error),
}

struct ThreadResult {
    ours: Hists,
    base: Hists,
    stop: Option<CellStop>,
    /// The pinner's note (e.g. an ODP prefetch that was skipped), for the rows' reason.
    note: Option<String>,
}

fn worker(
    path: &dyn PinPath,
    backing: &dyn Backing,
    spec: RegionSpec,
    job: &BenchJob,
    deadline_after: Duration,
    start: &Barrier,
) -> ThreadResult {
    let mut res = ThreadResult {
        ours: Hists::default(),
        base: Hists::default(),
        stop: None,
        note: None,
    };
    let prepared = (|| {
        let region = backing.region(&spec).map_err(|e| match e {
            RegionError::Kernel { op, errno } => {
                CellStop::NotRun(format!("making the region failed: {op}: {errno}"))
            }
            RegionError::Tool(e) => CellStop::Tool(e),
        })?;
        let pinner = path.pinner().map_err(pin_stop)?;
        let tight = if job.baseline {
            path.tight_loop()
        } else {
            None
        };
        Ok((region, pinner, tight))
    })();
    // Everyone meets at the barrier, even a thread that failed, so nobody waits forever.
    start.wait();
    let (region, mut pinner, mut tight) = match prepared {
        Ok(p) => p,
        Err(s) => {
            res.stop = Some(s);
            return res;
        }
    };
    let target = region.pin_target();
    let page = vec![0x5au8; 4096.min(target.len)];
    let mut cycle = |rec: Option<&mut Hists>| -> Result<(), CellStop> {
        let t0 = Instant::now();
        pinner.register(target).map_err(pin_stop)?;
        let t1 = Instant::now();
        // Outside the register/unregister timings: the device's first write through the
        // fresh registration (an ODP page fault unless prefetched).
        let wrote = if job.device_write {
            let w0 = Instant::now();
            let r = pinner.device_write(0, &page);
            let took = w0.elapsed();
            if let Err(e) = r {
                let _ = pinner.unregister();
                return Err(pin_stop(e));
            }
            Some(took)
        } else {
            None
        };
        let t2 = Instant::now();
        pinner.unregister().map_err(pin_stop)?;
        let t3 = Instant::now();
        if let Some(h) = rec {
            h.record(t1 - t0, t3 - t2);
            if let Some(w) = wrote {
                h.device_write.record(w.as_nanos() as u64);
            }
        }
        Ok(())
    };
    let run = (|| -> Result<(), CellStop> {
        for _ in 0..job.warmup {
            cycle(None)?;
            if let Some(t) = tight.as_mut() {
                t.cycle(target).map_err(pin_stop)?;
            }
        }
        let deadline = Instant::now() + deadline_after;
        let want = job.iterations.get();
        let mut done = 0;
        let mut block = 0u64;
        while done < want && Instant::now() < deadline && signals::pending().is_none() {
            let n = BLOCK.min(want - done);
            // Alternate which side goes first, so neither always inherits the other's caches.
            for side in [block % 2, (block + 1) % 2] {
                if side == 0 {
                    for _ in 0..n {
                        cycle(Some(&mut res.ours))?;
                    }
                } else if let Some(t) = tight.as_mut() {
                    for _ in 0..n {
                        let (r, u) = t.cycle(target).map_err(pin_stop)?;
                        res.base.record(r, u);
                    }
                }
            }
            done += n;
            block += 1;
        }
        Ok(())
    })();
    if let Err(s) = run {
        res.stop = Some(s);
    }
    res.note = pinner.note();
    res
}

fn pin_stop(e: PinError) -> CellStop {
    match e {
        PinError::Kernel { op, errno } => CellStop::Errno(errno.name(), format!("{op}: {errno}")),
        PinError::Device { op, status } => {
            CellStop::Errno(status.clone(), format!("{op}: {status}"))
        }
        PinError::NotRun(r) => CellStop::NotRun(r),
        PinError::Tool(e) => CellStop::Tool(e),
    }
}

#[allow(clippy::too_many_arguments)]
fn empty_row(
    pin: PinKind,
    backing: &str,
    fs: &str,
    spec: &RegionSpec,
    requested: Size,
    threads: usize,
    outcome: String,
    reason: String,
) -> BenchRow {
    BenchRow {
        pin: pin.name().into(),
        backing: backing.into(),
        fs: fs.into(),
        map: spec.map.name().into(),
        access: spec.access.name().into(),
        size: requested.bytes(),
        op: "cycle".into(),
        threads,
        outcome,
        reason: Some(reason),
        stats: None,
        ops_per_sec: None,
        ns_per_4k_page: None,
        baseline_p50_ns: None,
        overhead_pct: None,
        histogram: None,
        baseline_histogram: None,
    }
}

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
        for &kind in &job.backings {
            for &size in &job.sizes {
                signals::check()?;
                let spec = RegionSpec {
                    size,
                    map: job.map,
                    access: job.access,
                };
                progress.step(&format!("bench {pin} {kind} {size}"));
                let backing = match ctx.backings.get(kind) {
                    Ok(b) => b,
                    Err(r) => {
                        out.push(empty_row(
                            pin,
                            kind.name(),
                            "",
                            &spec,
                            size,
                            threads,
                            "notrun".into(),
                            r.to_string(),
                        ));
                        continue;
                    }
                };
                let fs = backing.info().fs.clone();
                if let Availability::NotRun(r) = &avail {
                    out.push(empty_row(
                        pin,
                        kind.name(),
                        &fs,
                        &spec,
                        size,
                        threads,
                        "notrun".into(),
                        r.clone(),
                    ));
                    continue;
                }
                let barrier = Barrier::new(threads);
                let results: Vec<ThreadResult> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..threads)
                        .map(|_| {
                            s.spawn(|| worker(&*path, backing, spec, job, job.max_time.0, &barrier))
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("bench worker panicked"))
                        .collect()
                });
                let mut ours = Hists::default();
                let mut base = Hists::default();
                let mut stop = None;
                let mut note = None;
                for r in results {
                    note = note.or(r.note);
                    ours.merge(&r.ours);
                    base.merge(&r.base);
                    if stop.is_none() {
                        stop = r.stop;
                    }
                }
                match stop {
                    Some(CellStop::Tool(e)) => {
                        return Err(e.context(format!("bench {pin} {kind} {size}")))
                    }
                    Some(CellStop::NotRun(r)) => {
                        out.push(empty_row(
                            pin,
                            kind.name(),
                            &fs,
                            &spec,
                            size,
                            threads,
                            "notrun".into(),
                            r,
                        ));
                        continue;
                    }
                    Some(CellStop::Errno(name, reason)) if ours.cycle.count() == 0 => {
                        let reason = with_memlock_hint(reason, &name, ctx.memlock_hint.as_deref());
                        out.push(empty_row(
                            pin,
                            kind.name(),
                            &fs,
                            &spec,
                            size,
                            threads,
                            name,
                            reason,
                        ));
                        continue;
                    }
                    _ => {}
                }
                let pages = (size.round_up(4096).bytes() / 4096).max(1) as f64;
                let no_baseline = Latency::default();
                for (op, h, b) in [
                    ("register", &ours.register, &base.register),
                    ("unregister", &ours.unregister, &base.unregister),
                    ("cycle", &ours.cycle, &base.cycle),
                    ("device-write", &ours.device_write, &no_baseline),
                ] {
                    if op == "device-write" && h.count() == 0 {
                        continue;
                    }
                    let st = h.stats();
                    let bst = (b.count() > 0).then(|| b.stats());
                    out.push(BenchRow {
                        pin: pin.name().into(),
                        backing: kind.name().into(),
                        fs: fs.clone(),
                        map: spec.map.name().into(),
                        access: spec.access.name().into(),
                        size: size.bytes(),
                        op: op.into(),
                        threads,
                        outcome: "ok".into(),
                        reason: note.clone(),
                        ops_per_sec: (st.mean_ns > 0.0).then(|| threads as f64 * 1e9 / st.mean_ns),
                        ns_per_4k_page: (op == "cycle").then(|| st.p50_ns as f64 / pages),
                        baseline_p50_ns: bst.as_ref().map(|b| b.p50_ns),
                        overhead_pct: bst
                            .as_ref()
                            .map(|b| (st.p50_ns as f64 / b.p50_ns.max(1) as f64 - 1.0) * 100.0),
                        histogram: Some(h.encode()),
                        baseline_histogram: (b.count() > 0).then(|| b.encode()),
                        stats: Some(st),
                    });
                }
            }
        }
    }
    Ok(())
}
