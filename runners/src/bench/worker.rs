//! One benchmark thread: its region, pinner and baseline, the warm-up, and the measured
//! blocks that alternate between pinstorm's cycle and the baseline's.
//!
//! A kernel errno or a device status in any call is a measured outcome: it is counted under
//! its operation and the loop goes on (a pinner or baseline whose release failed is replaced,
//! since it may still hold its registration). Only a missing capability (`NotRun`) or a tool
//! failure stops the thread.

use std::collections::BTreeMap;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use pinstorm_analysis::hist::Latency;
use pinstorm_workloads::backing::{Backing, RegionError, RegionSpec};
use pinstorm_workloads::pin::{CycleTimes, PinError, PinPath, PinTarget, Pinner, TightLoop};
use pinstorm_workloads::scenario::BenchJob;

use crate::signals;

/// Cycles per block before switching between the measured path and the tight loop.
const BLOCK: u64 = 32;

/// The operations a bench row can be about, besides the whole cycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Op {
    Register,
    Unregister,
    /// The first write of `write_sizes[i]` through a fresh registration.
    DeviceWrite(usize),
    /// The same write again.
    DeviceRewrite(usize),
}

/// Where each of the job's device writes goes in a region of `region_len` bytes: one after
/// the other, each at a page boundary of its own so its first write touches pages no other
/// write did; `None` for a write that does not fit.
pub(super) fn plan_writes(sizes: &[u64], region_len: u64) -> Vec<Option<u64>> {
    let mut next = 0u64;
    sizes
        .iter()
        .map(|&len| {
            let end = next.checked_add(len)?;
            if end > region_len {
                return None;
            }
            let at = next;
            next = end.div_ceil(4096) * 4096;
            Some(at)
        })
        .collect()
}

/// The timings of one write length: its first write after each registration and the
/// write again.
#[derive(Default)]
pub(super) struct WriteTimes {
    pub first: Latency,
    pub again: Latency,
    /// Successful calls per second of the side's wall time.
    pub first_rate: f64,
    pub again_rate: f64,
}

/// Failed calls by errno name (or device status).
pub(super) type ErrnoCounts = BTreeMap<String, u64>;

/// What one side (pinstorm's path, or the baseline) measured in one thread, or in all of
/// them once merged.
#[derive(Default)]
pub(super) struct Side {
    pub register: Latency,
    pub unregister: Latency,
    /// Register + unregister of the cycles in which both succeeded.
    pub cycle: Latency,
    /// The device writes after each registration, per length (`write_sizes`).
    pub writes: Vec<WriteTimes>,
    /// Failed calls per operation, warm-up included (a refusal is a refusal).
    pub errors: BTreeMap<Op, ErrnoCounts>,
    /// The first failure's words (`IORING_REGISTER_BUFFERS: EFAULT (Bad address)`).
    pub first_error: Option<(String, String)>,
    /// Wall time this thread spent in its measured blocks of this side, from before a
    /// block's first call to after its last (the other side's blocks excluded).
    pub wall: Duration,
    /// Successful calls per second of `wall`, per row op; summed over threads on merge.
    pub rates: Rates,
}

/// Operations per second, per row op.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(super) struct Rates {
    pub register: f64,
    pub unregister: f64,
    pub cycle: f64,
}

impl Side {
    pub fn failed(&mut self, op: Op, e: PinError) -> Result<(), CellStop> {
        let name = match &e {
            PinError::Kernel { errno, .. } => errno.name(),
            PinError::Device { status, .. } => status.clone(),
            PinError::NotRun(r) => return Err(CellStop::NotRun(r.clone())),
            PinError::Tool(_) => return Err(CellStop::Tool(anyhow::anyhow!("{e}"))),
        };
        if self.first_error.is_none() {
            self.first_error = Some((name.clone(), e.to_string()));
        }
        *self.errors.entry(op).or_default().entry(name).or_default() += 1;
        Ok(())
    }

    /// The rates of this thread's measured blocks: what it completed over the time it took.
    pub fn close(&mut self) {
        let secs = self.wall.as_secs_f64();
        if secs > 0.0 {
            let per_sec = |h: &Latency| h.count() as f64 / secs;
            self.rates = Rates {
                register: per_sec(&self.register),
                unregister: per_sec(&self.unregister),
                cycle: per_sec(&self.cycle),
            };
            for w in &mut self.writes {
                w.first_rate = per_sec(&w.first);
                w.again_rate = per_sec(&w.again);
            }
        }
    }

    pub fn merge(&mut self, o: &Side) {
        self.register.merge(&o.register);
        self.unregister.merge(&o.unregister);
        self.cycle.merge(&o.cycle);
        for (i, w) in o.writes.iter().enumerate() {
            let mine = self.write(i);
            mine.first.merge(&w.first);
            mine.again.merge(&w.again);
            // The threads ran at the same time, so their rates add up.
            mine.first_rate += w.first_rate;
            mine.again_rate += w.again_rate;
        }
        for (op, counts) in &o.errors {
            let mine = self.errors.entry(*op).or_default();
            for (name, n) in counts {
                *mine.entry(name.clone()).or_default() += n;
            }
        }
        if self.first_error.is_none() {
            self.first_error.clone_from(&o.first_error);
        }
        self.wall = self.wall.max(o.wall);
        // The threads ran at the same time, so their rates add up.
        self.rates.register += o.rates.register;
        self.rates.unregister += o.rates.unregister;
        self.rates.cycle += o.rates.cycle;
    }

    /// The timings of write length `i`, made on first use.
    pub fn write(&mut self, i: usize) -> &mut WriteTimes {
        if self.writes.len() <= i {
            self.writes.resize_with(i + 1, WriteTimes::default);
        }
        &mut self.writes[i]
    }

    /// Every failed call of the cycle, by errno: what the `cycle` row counts.
    pub fn all_errors(&self) -> ErrnoCounts {
        let mut all = ErrnoCounts::new();
        for counts in self.errors.values() {
            for (name, n) in counts {
                *all.entry(name.clone()).or_default() += n;
            }
        }
        all
    }

    pub fn record(&mut self, reg: Duration, unreg: Duration) {
        let r = reg.as_nanos() as u64;
        let u = unreg.as_nanos() as u64;
        self.register.record(r);
        self.unregister.record(u);
        self.cycle.record(r + u);
    }
}

/// Why a thread stopped early: the rest is notrun or a tool failure.
pub(super) enum CellStop {
    NotRun(String),
    Tool(anyhow::Error),
}

/// Why the measured loop ended, for a row that got too few samples.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Ended {
    /// Every asked-for cycle ran.
    Iterations(u64),
    /// `max_time` ran out.
    Deadline(Duration),
    /// A signal arrived; `true` while still warming up.
    Signal(&'static str, bool),
    /// The thread never got to measure (it stopped with a reason of its own).
    NotStarted,
}

impl Ended {
    /// In the words of a notrun reason: `SIGINT during warm-up`, `max-time 0s ran out`.
    pub fn why(&self) -> String {
        match self {
            Ended::Iterations(n) => format!("{n} iterations asked for"),
            Ended::Deadline(d) => format!("max-time {} ran out", humantime::format_duration(*d)),
            Ended::Signal(sig, true) => format!("{sig} during warm-up"),
            Ended::Signal(sig, false) => sig.to_string(),
            Ended::NotStarted => "the thread did not start".into(),
        }
    }
}

pub(super) struct ThreadResult {
    pub ours: Side,
    pub base: Side,
    pub stop: Option<CellStop>,
    pub ended: Ended,
    /// The pinner's note (e.g. an ODP prefetch that was skipped), for the rows' reason.
    pub note: Option<String>,
    /// `STATX_ATTR_DAX` of the thread's region.
    pub dax: Option<bool>,
}

/// The measured thread's pinstorm side: pinner, target and what it writes.
struct Ours<'a> {
    path: &'a dyn PinPath,
    pinner: Box<dyn Pinner>,
    target: PinTarget,
    /// The device writes after each registration: (index in `write_sizes`, offset, data);
    /// the lengths that do not fit the region are left out.
    writes: Vec<(usize, usize, Vec<u8>)>,
}

impl Ours<'_> {
    /// One register (+ device write) + unregister through pinstorm's pinner; timings go to
    /// `side` when `record`.
    fn cycle(&mut self, side: &mut Side, record: bool) -> Result<(), CellStop> {
        let t0 = Instant::now();
        let r = self.pinner.register(self.target);
        let t1 = Instant::now();
        if let Err(e) = r {
            return side.failed(Op::Register, e);
        }
        // Outside the register/unregister timings: the device's first write of each length
        // through the fresh registration (an ODP page fault unless prefetched), then the same
        // write again into pages the device has touched.
        for (i, off, data) in &self.writes {
            for again in [false, true] {
                let w0 = Instant::now();
                let r = self.pinner.device_write(*off, data);
                let took = w0.elapsed().as_nanos() as u64;
                let (op, times) = match again {
                    false => (Op::DeviceWrite(*i), &mut side.write(*i).first),
                    true => (Op::DeviceRewrite(*i), &mut side.write(*i).again),
                };
                match r {
                    Ok(_) if record => times.record(took),
                    Ok(_) => {}
                    Err(e) => side.failed(op, e)?,
                }
            }
        }
        let t2 = Instant::now();
        let r = self.pinner.unregister();
        let t3 = Instant::now();
        match r {
            Ok(()) if record => side.record(t1 - t0, t3 - t2),
            Ok(()) => {}
            Err(e) => {
                side.failed(Op::Unregister, e)?;
                // It may still hold the registration; a fresh one starts clean.
                self.pinner = self.path.pinner().map_err(stop)?;
            }
        }
        Ok(())
    }
}

/// One baseline cycle, counted and (when `record`) timed into `side`.
fn base_cycle(
    path: &dyn PinPath,
    tight: &mut Box<dyn TightLoop>,
    target: PinTarget,
    side: &mut Side,
    record: bool,
) -> Result<(), CellStop> {
    let CycleTimes {
        register,
        unregister,
    } = tight.cycle(target);
    let reg = match register {
        Ok(d) => d,
        Err(e) => return side.failed(Op::Register, e),
    };
    match unregister {
        Some(Ok(unreg)) if record => side.record(reg, unreg),
        Some(Ok(_)) => {}
        Some(Err(e)) => {
            side.failed(Op::Unregister, e)?;
            match path.tight_loop() {
                Some(t) => *tight = t,
                None => {
                    return Err(CellStop::NotRun(
                        "the baseline could not be made again".into(),
                    ))
                }
            }
        }
        None => {
            return Err(CellStop::Tool(anyhow::anyhow!(
                "baseline: a registration that succeeded was not released"
            )))
        }
    }
    Ok(())
}

fn stop(e: PinError) -> CellStop {
    match e {
        PinError::Tool(e) => CellStop::Tool(e),
        other => CellStop::NotRun(other.to_string()),
    }
}

pub(super) fn worker(
    path: &dyn PinPath,
    backing: &dyn Backing,
    spec: RegionSpec,
    job: &BenchJob,
    start: &Barrier,
) -> ThreadResult {
    let mut res = ThreadResult {
        ours: Side::default(),
        base: Side::default(),
        stop: None,
        ended: Ended::NotStarted,
        note: None,
        dax: None,
    };
    let prepared = (|| {
        let region = backing.region(&spec).map_err(|e| match e {
            RegionError::Kernel { op, errno } => {
                CellStop::NotRun(format!("making the region failed: {op}: {errno}"))
            }
            RegionError::Tool(e) => CellStop::Tool(e),
        })?;
        let pinner = path.pinner().map_err(stop)?;
        let tight = if job.baseline {
            path.tight_loop()
        } else {
            None
        };
        Ok((region, pinner, tight))
    })();
    // Everyone meets at the barrier, even a thread that failed, so nobody waits forever.
    start.wait();
    let (region, pinner, mut tight) = match prepared {
        Ok(p) => p,
        Err(s) => {
            res.stop = Some(s);
            return res;
        }
    };
    res.dax = region.dax;
    let target = region.pin_target();
    let mut ours = Ours {
        path,
        pinner,
        target,
        writes: {
            let sizes: Vec<u64> = job.device_writes().iter().map(|s| s.bytes()).collect();
            plan_writes(&sizes, target.len as u64)
                .into_iter()
                .zip(&sizes)
                .enumerate()
                .filter_map(|(i, (at, &len))| Some((i, at? as usize, vec![0x5au8; len as usize])))
                .collect()
        },
    };
    let run = (|| -> Result<Ended, CellStop> {
        for _ in 0..job.warmup {
            if let Some(sig) = signals::pending() {
                return Ok(Ended::Signal(signals::signal_name(sig), true));
            }
            ours.cycle(&mut res.ours, false)?;
            if let Some(t) = tight.as_mut() {
                base_cycle(path, t, target, &mut res.base, false)?;
            }
        }
        let deadline = Instant::now() + job.max_time.0;
        let want = job.iterations.get();
        let mut done = 0;
        let mut block = 0u64;
        loop {
            if let Some(sig) = signals::pending() {
                return Ok(Ended::Signal(signals::signal_name(sig), false));
            }
            if done >= want {
                return Ok(Ended::Iterations(want));
            }
            if Instant::now() >= deadline {
                return Ok(Ended::Deadline(job.max_time.0));
            }
            let n = BLOCK.min(want - done);
            // Alternate which side goes first, so neither always inherits the other's caches.
            for side in [block % 2, (block + 1) % 2] {
                if side == 0 {
                    let b0 = Instant::now();
                    for _ in 0..n {
                        ours.cycle(&mut res.ours, true)?;
                    }
                    res.ours.wall += b0.elapsed();
                } else if let Some(t) = tight.as_mut() {
                    let b0 = Instant::now();
                    for _ in 0..n {
                        base_cycle(path, t, target, &mut res.base, true)?;
                    }
                    res.base.wall += b0.elapsed();
                }
            }
            done += n;
            block += 1;
        }
    })();
    match run {
        Ok(ended) => res.ended = ended,
        Err(s) => res.stop = Some(s),
    }
    res.ours.close();
    res.base.close();
    res.note = ours.pinner.note();
    res
}
