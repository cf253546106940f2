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

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use pinstorm_analysis::expect::Cell;
use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::schema::{
    Blocked, KernelWarnings, LayoutOpResult, LeakedPins, Oracle, OracleFinding, RunResult,
    StormResult, StormTotals, StormVerdict, TimelinePoint, Violation,
};
use pinstorm_analysis::verdict;
use pinstorm_workloads::backing::{
    Access, BackingKind, MapKind, Region, RegionError, RegionFile, RegionSpec,
};
use pinstorm_workloads::canary::{self, Canary, PageContent};
use pinstorm_workloads::layout::{LayoutKind, LayoutTarget, Partner, Partners};
use pinstorm_workloads::pin::{Availability, FollPins, PinError, PinKind, PinPath};
use pinstorm_workloads::scenario::StormJob;
use pinstorm_workloads::units::Size;

use crate::job::{Job, JobContext, Progress};
use crate::signals;
use crate::watchdog::Watchdog;

mod oracle;

use oracle::{
    Events, Evidence, FileState, ForeignKind, IdleWindow, Mapping, PinCounts, Verdict, WriteFacts,
    PAGE,
};
/// Operations of the sequence head kept per disruptor.
const HEAD: usize = 32;
/// Layout log entries kept per file for violation histories.
const LOG: usize = 256;
/// How long released pins may take to show up as released in /proc/vmstat.
const PIN_SETTLE: Duration = Duration::from_secs(5);
/// The window around a cell in which nothing of the storm pins, to see whether anything else
/// on the machine does; and how many windows to try before the cell for a quiet one.
const IDLE: Duration = Duration::from_millis(50);
const IDLE_TRIES: usize = 5;

/// The FOLL_PIN counters at the start and the end of `IDLE`; `None` without the counters.
fn idle_window() -> Option<IdleWindow> {
    let start = pinstorm_workloads::foll_pin_counters()?;
    let t = Instant::now();
    std::thread::sleep(IDLE);
    let end = pinstorm_workloads::foll_pin_counters()?;
    Some(IdleWindow {
        start,
        end,
        ms: t.elapsed().as_millis() as u64,
    })
}

struct TrackedFile {
    /// What the oracles know of this file's layout operations.
    state: FileState,
    name: String,
    region: Region,
    log: Mutex<VecDeque<(u64, String)>>,
    /// The files next to it that the layout operations declared.
    partners: Partners,
}

impl TrackedFile {
    fn file_backed(&self) -> bool {
        self.region.file.is_some()
    }

    fn history(&self, since_event: u64) -> Vec<String> {
        let mut v: Vec<(u64, String)> = self
            .log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(ev, _)| *ev > since_event)
            .cloned()
            .collect();
        v.sort();
        v.into_iter().take(12).map(|(_, t)| t).collect()
    }
}

#[derive(Default)]
struct Findings {
    lost: OracleFinding,
    stale: OracleFinding,
    cross: OracleFinding,
    unexpected: OracleFinding,
    seen: HashSet<(u32, u64, u64, &'static str)>,
}

fn add(f: &mut OracleFinding, examples: usize, v: Violation) {
    f.count += 1;
    if f.examples.len() < examples {
        f.examples.push(v);
    }
}

struct Shared {
    files: Vec<TrackedFile>,
    /// The pin path every pinner pins with.
    path: Box<dyn PinPath>,
    events: Events,
    stop: AtomicBool,
    wd: Arc<Watchdog>,
    unsupported: Mutex<BTreeMap<LayoutKind, String>>,
    findings: Mutex<Findings>,
    run_tag: u32,
    hold: Duration,
    examples: usize,
    mapping: Mapping,
    /// What the expectations say a registration of this cell gives.
    expected: Option<(String, String)>,
    size: u64,
    align: u64,
    rate: f64,
}

impl Shared {
    fn findings(&self) -> std::sync::MutexGuard<'_, Findings> {
        self.findings.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Judge what a page holds instead of what it should: stale or cross-file.
    fn classify_foreign(
        &self,
        f: &TrackedFile,
        page_off: u64,
        content: &[u8],
        at_ms: f64,
        history: &[String],
    ) {
        let Some(found) =
            oracle::classify_foreign(self.run_tag, &f.state, &self.events, page_off, content)
        else {
            return;
        };
        let (key, examples) = match found.kind {
            ForeignKind::Stale => ("stale", self.examples),
            ForeignKind::Cross => ("cross", self.examples),
        };
        let mut fd = self.findings();
        if !fd.seen.insert((f.state.id, page_off, found.event, key)) {
            return;
        }
        let v = Violation {
            file: f.name.clone(),
            offset: page_off,
            len: PAGE,
            what: found.what,
            at_ms,
            history: history.to_vec(),
        };
        match found.kind {
            ForeignKind::Stale => add(&mut fd.stale, examples, v),
            ForeignKind::Cross => add(&mut fd.cross, examples, v),
        }
    }
}

#[derive(Default)]
struct Timeline(Vec<TimelinePoint>);

impl Timeline {
    fn at(&mut self, ms: f64) -> &mut TimelinePoint {
        let s = (ms / 1000.0) as usize;
        while self.0.len() <= s {
            let second = self.0.len() as u64;
            self.0.push(TimelinePoint {
                second,
                ..Default::default()
            });
        }
        &mut self.0[s]
    }

    fn merge(&mut self, o: &Timeline) {
        for p in &o.0 {
            let t = self.at(p.second as f64 * 1000.0);
            t.registrations += p.registrations;
            t.register_errors += p.register_errors;
            t.device_writes += p.device_writes;
            t.layout_ops += p.layout_ops;
            t.layout_errors += p.layout_errors;
        }
    }
}

#[derive(Default)]
struct PinnerOut {
    register: Latency,
    totals: StormTotals,
    timeline: Timeline,
    write_notrun: Option<String>,
    notrun: Option<String>,
    error: Option<anyhow::Error>,
}

#[derive(Default)]
struct OpStats {
    latency: Latency,
    count: u64,
    errors: BTreeMap<String, u64>,
}

#[derive(Default)]
struct DisruptorOut {
    ops: BTreeMap<LayoutKind, OpStats>,
    timeline: Timeline,
    head: Vec<String>,
}

enum ThreadOut {
    Pinner(PinnerOut),
    Disruptor(usize, DisruptorOut),
}

fn pinner_thread(sh: Arc<Shared>, i: usize, seed: u64) -> PinnerOut {
    let mut out = PinnerOut::default();
    let slot = sh.wd.slot(i);
    let f = &sh.files[i];
    let mut pinner = match sh.path.pinner() {
        Ok(p) => p,
        Err(PinError::Tool(e)) => {
            out.error = Some(e);
            return out;
        }
        Err(e) => {
            out.notrun = Some(format!("creating the pinner: {e}"));
            return out;
        }
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let target = f.region.pin_target();
    let pages = target.len as u64 / PAGE;
    // A path without device writes (vmsplice) only registers; the lost-write oracle's
    // notrun says why.
    let mut can_write = sh.path.device_writes().is_supported();
    while !sh.stop.load(SeqCst) {
        let a = f.state.snapshot();
        sh.wd.begin(&slot, "register");
        let t0 = Instant::now();
        let r = pinner.register(target);
        let took = t0.elapsed();
        sh.wd.end(&slot);
        // The pin's event comes before the second look at the file's operations (see
        // `FileState::op_begin`): every operation that did not overlap the registration is
        // ordered.
        let pin_event = sh.events.next();
        let pin = (a, f.state.snapshot());
        let clean = oracle::quiet(pin.0, pin.1);
        let now = sh.wd.elapsed_ms();
        let outcome = match &r {
            Ok(()) => "ok".to_string(),
            Err(e @ (PinError::Kernel { .. } | PinError::Device { .. })) => {
                e.outcome().unwrap_or_default()
            }
            Err(PinError::NotRun(m)) => {
                out.notrun = Some(m.clone());
                break;
            }
            Err(PinError::Tool(e)) => {
                out.error = Some(anyhow::anyhow!("pinner {i}: register: {e:#}"));
                break;
            }
        };
        if let Some((exp, why)) = &sh.expected {
            if clean && *exp != outcome {
                let mut fd = sh.findings();
                add(
                    &mut fd.unexpected,
                    sh.examples,
                    Violation {
                        file: f.name.clone(),
                        offset: 0,
                        len: target.len as u64,
                        what: format!(
                            "registration gave {outcome}, the expectations say {exp} ({why})"
                        ),
                        at_ms: now,
                        history: vec![],
                    },
                );
            }
        }
        if r.is_err() {
            *out.totals.register_errors.entry(outcome).or_default() += 1;
            out.timeline.at(now).register_errors += 1;
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        out.register.record(took.as_nanos() as u64);
        out.totals.registrations += 1;
        out.timeline.at(now).registrations += 1;
        let pinned_ms = now;
        if !sh.hold.is_zero() {
            std::thread::sleep(sh.hold);
        }
        if can_write {
            let off = (rng.next_u64() % pages) * PAGE;
            let ev = sh.events.next();
            let data = Canary {
                run_tag: sh.run_tag,
                file_id: f.state.id,
                offset: off,
                event: ev,
            }
            .page(PAGE as usize);
            let s0 = f.state.snapshot();
            sh.wd.begin(&slot, "device-write");
            let w = pinner.device_write(off as usize, &data);
            sh.wd.end(&slot);
            sh.events.write_done(ev);
            let wrote_ms = sh.wd.elapsed_ms();
            match w {
                Ok(_) => {
                    out.totals.device_writes += 1;
                    out.timeline.at(wrote_ms).device_writes += 1;
                    let mut content = vec![0u8; PAGE as usize];
                    let read = match (&f.region.file, sh.mapping) {
                        // Anonymous memory is never truncated, so the CPU may read the mapping.
                        (None, _) => {
                            f.region.mapping.read_at(off as usize, &mut content);
                            true
                        }
                        // A private mapping's writes never reach the file by design.
                        (Some(_), Mapping::PrivateFile) => false,
                        // Never touch a file mapping with the CPU (a truncated page would
                        // SIGBUS): pread.
                        (Some(rf), _) => rf.file().read_exact_at(&mut content, off).is_ok(),
                    };
                    let s1 = f.state.snapshot();
                    let read_ms = sh.wd.elapsed_ms();
                    sh.wd.begin(&slot, "device-read");
                    let back = pinner.device_read(off as usize, PAGE as usize).ok();
                    sh.wd.end(&slot);
                    let s2 = f.state.snapshot();
                    if matches!(&back, Some(b) if *b != data) {
                        out.totals.readback_mismatches += 1;
                    }
                    let facts = WriteFacts {
                        mapping: sh.mapping,
                        pin,
                        write: (s0, s1),
                        readback_done: s2,
                        data: &data,
                        file: read.then_some(&content[..]),
                        readback: back.as_deref(),
                    };
                    match oracle::judge(&facts) {
                        Verdict::Verified => out.totals.verified += 1,
                        Verdict::Ambiguous => out.totals.ambiguous += 1,
                        Verdict::Lost(evidence) => {
                            let (found, read_ms) = match evidence {
                                Evidence::File => (&content[..], read_ms),
                                Evidence::ReadBack => {
                                    (back.as_deref().unwrap_or_default(), sh.wd.elapsed_ms())
                                }
                            };
                            report_lost(
                                &sh,
                                f,
                                off,
                                (evidence, found, read_ms),
                                (pin_event, pinned_ms),
                                (ev, wrote_ms),
                            )
                        }
                    }
                }
                // A refusal by the kernel or a failed transfer reported by the device (an RDMA
                // completion error, say after an ODP invalidation): counted by name.
                Err(e @ (PinError::Kernel { .. } | PinError::Device { .. })) => {
                    let name = e.outcome().unwrap_or_default();
                    *out.totals.device_write_errors.entry(name).or_default() += 1;
                }
                Err(PinError::NotRun(m)) => {
                    can_write = false;
                    out.write_notrun = Some(m);
                }
                Err(PinError::Tool(e)) => {
                    out.error = Some(anyhow::anyhow!("pinner {i}: device write: {e:#}"));
                }
            }
        }
        sh.wd.begin(&slot, "unregister");
        let u = pinner.unregister();
        sh.wd.end(&slot);
        if let Err(e) = u {
            out.error = Some(anyhow::anyhow!("pinner {i}: unregister: {e}"));
        }
        if out.error.is_some() {
            break;
        }
    }
    drop(pinner);
    out
}

fn describe(content: &[u8]) -> String {
    match canary::decode(content) {
        PageContent::Zero => "zeros".to_string(),
        PageContent::Fill(b) => format!("a fill of {b:#04x} bytes"),
        PageContent::Canary(c) => format!(
            "a canary of file {} offset {} event {}",
            c.file_id, c.offset, c.event
        ),
        PageContent::Torn => "a torn page".into(),
        PageContent::Other => "other data".into(),
    }
}

/// A lost write: what was read instead (by the CPU from the file or memory, or by the
/// device through the pin), with the history that led there.
fn report_lost(
    sh: &Shared,
    f: &TrackedFile,
    off: u64,
    (evidence, content, read_ms): (Evidence, &[u8], f64),
    (pin_event, pinned_ms): (u64, f64),
    (ev, wrote_ms): (u64, f64),
) {
    let found = describe(content);
    let mut history = vec![format!(
        "{pinned_ms:.3} ms: pinned the whole file (event {pin_event})"
    )];
    history.extend(f.history(pin_event));
    history.push(format!(
        "{wrote_ms:.3} ms: device wrote the canary of event {ev} at offset {off}"
    ));
    let (by, what) = match evidence {
        Evidence::File => ("the file", format!(
            "the device's write through a pin taken while the range was part of the file is not in the file (it holds {found})"
        )),
        Evidence::ReadBack => ("the device", format!(
            "the device's write into the private copy it pinned is not there when it reads it back (it read {found})"
        )),
    };
    history.push(format!("{read_ms:.3} ms: {by} read back {found}"));
    {
        let mut fd = sh.findings();
        add(
            &mut fd.lost,
            sh.examples,
            Violation {
                file: f.name.clone(),
                offset: off,
                len: PAGE,
                what,
                at_ms: wrote_ms,
                history: history.clone(),
            },
        );
    }
    if evidence == Evidence::File {
        sh.classify_foreign(f, off, content, read_ms, &history);
    }
}

fn disruptor_thread(
    sh: Arc<Shared>,
    slot_index: usize,
    ops: Vec<LayoutKind>,
    seed: u64,
) -> DisruptorOut {
    let mut out = DisruptorOut::default();
    let slot = sh.wd.slot(slot_index);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let boxed: Vec<_> = ops.iter().map(|k| k.op()).collect();
    let interval = (sh.rate > 0.0).then(|| Duration::from_secs_f64(1.0 / sh.rate));
    while !sh.stop.load(SeqCst) {
        let started = Instant::now();
        let k = (rng.next_u64() % ops.len() as u64) as usize;
        let fi = (rng.next_u64() % sh.files.len() as u64) as usize;
        let kind = ops[k];
        let unsupported = sh
            .unsupported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len();
        if unsupported >= ops.len() {
            std::thread::sleep(Duration::from_millis(10));
            continue;
        }
        if sh
            .unsupported
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&kind)
        {
            continue;
        }
        let f = &sh.files[fi];
        let Some(file) = f.region.file.as_ref() else {
            break;
        };
        let target = LayoutTarget {
            file,
            size: sh.size,
            align: sh.align,
            partners: &f.partners,
        };
        if let Some(why) = boxed[k].cannot_run(&target) {
            sh.unsupported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(kind)
                .or_insert(why);
            continue;
        }
        let op = f.state.op_begin(&sh.events);
        let ev = op.event;
        sh.wd.begin(&slot, kind.name());
        let t0 = Instant::now();
        let r = boxed[k].apply(&target, &mut rng);
        let took = t0.elapsed();
        sh.wd.end(&slot);
        let effect = match &r {
            Ok(a) => Some(a.effect),
            Err(e) => e.partial,
        };
        let now = sh.wd.elapsed_ms();
        let text = match &r {
            Ok(a) => a.desc.clone(),
            Err(e) => format!("{e}"),
        };
        // Operations the filesystem does not have changed nothing: keep them out of histories.
        if !matches!(&r, Err(e) if e.is_unsupported()) {
            let mut log = f.log.lock().unwrap_or_else(|p| p.into_inner());
            if log.len() == LOG {
                log.pop_front();
            }
            log.push_back((
                ev,
                format!(
                    "{:.3} ms: {kind} (event {ev}): {text}",
                    now - took.as_secs_f64() * 1e3
                ),
            ));
        }
        // The log is complete: only now may a pinner judge writes on this file again.
        f.state.op_end(op, effect, &sh.events);
        if out.head.len() < HEAD {
            out.head.push(format!("{kind} file={fi}: {text}"));
        }
        let st = out.ops.entry(kind).or_default();
        st.count += 1;
        match &r {
            Ok(_) => {
                st.latency.record(took.as_nanos() as u64);
                out.timeline.at(now).layout_ops += 1;
            }
            Err(e) if e.is_unsupported() => {
                sh.unsupported
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(kind)
                    .or_insert_with(|| format!("{}: {}", e.op, e.errno.name()));
                st.count -= 1;
            }
            Err(e) => {
                *st.errors.entry(e.errno.name()).or_default() += 1;
                out.timeline.at(now).layout_errors += 1;
            }
        }
        if let Some(iv) = interval {
            if let Some(rest) = iv.checked_sub(started.elapsed()) {
                std::thread::sleep(rest);
            }
        }
    }
    out
}

fn notrun(
    pin: PinKind,
    kind: BackingKind,
    fs: &str,
    map: MapKind,
    job: &StormJob,
    seed: u64,
    reason: String,
) -> StormResult {
    StormResult {
        pin: pin.name().into(),
        backing: kind.name().into(),
        fs: fs.into(),
        map: map.name().into(),
        outcome: "notrun".into(),
        reason: Some(reason),
        dax: None,
        pinners: job.pinners.get(),
        disruptors: job.disruptors,
        file_size: job.file_size.bytes(),
        hold_ns: job.hold.0.as_nanos() as u64,
        duration_ms: 0,
        seed,
        totals: StormTotals::default(),
        register: None,
        register_histogram: None,
        layout_ops: Vec::new(),
        timeline: Vec::new(),
        oracle: Oracle::default(),
        sequence_head: Vec::new(),
    }
}

/// A seed for one thread of one cell, derived from the scenario seed.
fn thread_seed(seed: u64, cell: &str, role: u64, index: u64) -> u64 {
    // FNV-1a over the cell name, mixed with the seed, the role and the index.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in cell.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
    }
    h ^ seed.rotate_left(17) ^ (role << 56) ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

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
        (self.backings.len() * self.pins.len() * self.maps.len()) as u64
    }

    /// Every cell, then the verdicts on what ran (also when a cell failed).
    fn run(
        &self,
        ctx: &JobContext,
        progress: &Progress,
        result: &mut RunResult,
    ) -> anyhow::Result<()> {
        let r = run_cells(self, ctx, progress, &mut result.storms);
        result.storm_verdicts = judge(ctx, &result.storms);
        r
    }
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
                    fact,
                })
        })
        .collect()
}

fn run_cells(
    job: &StormJob,
    ctx: &JobContext,
    progress: &Progress,
    out: &mut Vec<StormResult>,
) -> anyhow::Result<()> {
    for &pin in &job.pins {
        for &kind in &job.backings {
            for &map in &job.maps {
                signals::check()?;
                progress.step(&format!("storm {pin} {kind} {}", map.name()));
                let r = run_cell(job, ctx, pin, kind, map)?;
                out.push(r);
            }
        }
    }
    Ok(())
}

fn run_cell(
    job: &StormJob,
    ctx: &JobContext,
    pin: PinKind,
    kind: BackingKind,
    map: MapKind,
) -> anyhow::Result<StormResult> {
    let cell_name = format!("{pin}/{kind}/{}", map.name());
    let backing = match ctx.backings.get(kind) {
        Ok(b) => b,
        Err(e) => return Ok(notrun(pin, kind, "", map, job, ctx.seed, e.0)),
    };
    let info = backing.info().clone();
    let path = pin.path(ctx.pins);
    if let Availability::NotRun(r) = path.availability() {
        return Ok(notrun(pin, kind, &info.fs, map, job, ctx.seed, r));
    }
    let align = info.page_size.max(PAGE);
    let size = job.file_size.round_up(align).bytes();
    let mut files = Vec::new();
    for i in 0..job.pinners.get() {
        let region = match backing.region(&RegionSpec {
            size: Size(size),
            map,
            access: Access::Rw,
        }) {
            Ok(r) => r,
            Err(RegionError::Kernel { op, errno }) => {
                return Ok(notrun(
                    pin,
                    kind,
                    &info.fs,
                    map,
                    job,
                    ctx.seed,
                    format!("making region {i} failed: {op}: {errno}"),
                ))
            }
            Err(RegionError::Tool(e)) => return Err(e),
        };
        let partners = match &region.file {
            Some(file) => Partners::prepare(file, &info.fs, i, size, &job.ops),
            None => Partners::default(),
        };
        let name = match region.file.as_ref().and_then(|f| f.path()) {
            Some(p) => p.display().to_string(),
            None if region.file.is_some() => format!("memfd:{i}"),
            None => format!("anon:{i}"),
        };
        files.push(TrackedFile {
            state: FileState::new(i as u32 + 1, region.mapping.len() / PAGE as usize),
            name,
            log: Mutex::new(VecDeque::new()),
            region,
            partners,
        });
    }
    let dax = files[0].region.dax;
    let file_backed = files[0].file_backed();
    let device = path.device();
    let expected = ctx
        .expectations
        .lookup(
            &Cell {
                pin: pin.name(),
                backing: kind.name(),
                fs: &info.fs,
                map: map.name(),
                access: Access::Rw.name(),
                dax,
                rdma_device: device.as_deref(),
            },
            ctx.kernel,
        )
        .map(|r| (r.outcome.clone(), r.why.clone()));
    let disruptors = if file_backed { job.disruptors } else { 0 };
    let mut names: Vec<String> = (0..job.pinners.get())
        .map(|i| format!("pinner-{i}"))
        .collect();
    names.extend((0..disruptors).map(|j| format!("disruptor-{j}")));
    let wd = Watchdog::new(job.block_threshold.0, &names);
    let wd_thread = wd.run();
    let _ = ctx.kmsg.lock().unwrap_or_else(|p| p.into_inner()).take();
    // The leaked-pins baseline: an idle window with nothing of this storm pinned, retried a
    // few times if something else on the machine pinned meanwhile.
    let foll_pins = path.foll_pins();
    let no_write = path.device_writes().reason().map(str::to_string);
    let idle_before = match foll_pins {
        FollPins::Counted => {
            let mut w = idle_window();
            for _ in 1..IDLE_TRIES {
                if !w.is_some_and(|w| w.moved()) {
                    break;
                }
                w = idle_window();
            }
            w
        }
        FollPins::NotTaken(_) => None,
    };

    let sh = Arc::new(Shared {
        files,
        path,
        events: Events::default(),
        stop: AtomicBool::new(false),
        wd: wd.clone(),
        unsupported: Mutex::new(BTreeMap::new()),
        findings: Mutex::new(Findings::default()),
        run_tag: ctx.run_tag,
        hold: job.hold.0,
        examples: job.examples,
        mapping: match (file_backed, map) {
            (false, _) => Mapping::Anon,
            (true, MapKind::Shared) => Mapping::SharedFile,
            (true, MapKind::Private) => Mapping::PrivateFile,
        },
        expected,
        size,
        align,
        rate: job.rate,
    });
    let (tx, rx) = mpsc::channel::<ThreadOut>();
    let mut started = 0;
    for i in 0..job.pinners.get() {
        let (sh, tx) = (sh.clone(), tx.clone());
        let seed = thread_seed(ctx.seed, &cell_name, 1, i as u64);
        std::thread::Builder::new()
            .name(format!("pinner-{i}"))
            .spawn(move || {
                let o = pinner_thread(sh, i, seed);
                let _ = tx.send(ThreadOut::Pinner(o));
            })?;
        started += 1;
    }
    for j in 0..disruptors {
        let (sh, tx, ops) = (sh.clone(), tx.clone(), job.ops.clone());
        let seed = thread_seed(ctx.seed, &cell_name, 2, j as u64);
        let slot = job.pinners.get() + j;
        std::thread::Builder::new()
            .name(format!("disruptor-{j}"))
            .spawn(move || {
                let o = disruptor_thread(sh, slot, ops, seed);
                let _ = tx.send(ThreadOut::Disruptor(j, o));
            })?;
        started += 1;
    }
    drop(tx);
    let t_start = Instant::now();
    let end = t_start + job.duration.0;
    while Instant::now() < end && signals::pending().is_none() {
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(20)));
    }
    sh.stop.store(true, SeqCst);
    let ran_for = t_start.elapsed();
    // Collect, with a bound: a thread stuck in the kernel must not hang the run. Stopping
    // made every pinner release its pin, which is what unblocks a waiting layout operation.
    let bound = Duration::from_secs(30).max(job.block_threshold.0 * 4);
    let deadline = Instant::now() + bound;
    let mut pinners_out = Vec::new();
    let mut disruptors_out = BTreeMap::new();
    while pinners_out.len() + disruptors_out.len() < started {
        match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ThreadOut::Pinner(p)) => pinners_out.push(p),
            Ok(ThreadOut::Disruptor(j, d)) => {
                disruptors_out.insert(j, d);
            }
            Err(_) => break,
        }
    }
    let stuck = started - pinners_out.len() - disruptors_out.len();
    wd.stop();
    let _ = wd_thread.join();

    let mut totals = StormTotals::default();
    let mut register = Latency::new();
    let mut timeline = Timeline::default();
    let mut write_notrun = None;
    let mut pin_notrun = None;
    for p in &mut pinners_out {
        if let Some(e) = p.error.take() {
            return Err(e.context(format!("storm {cell_name}")));
        }
        register.merge(&p.register);
        timeline.merge(&p.timeline);
        totals.registrations += p.totals.registrations;
        totals.device_writes += p.totals.device_writes;
        totals.verified += p.totals.verified;
        totals.ambiguous += p.totals.ambiguous;
        totals.readback_mismatches += p.totals.readback_mismatches;
        for (k, v) in &p.totals.register_errors {
            *totals.register_errors.entry(k.clone()).or_default() += v;
        }
        for (k, v) in &p.totals.device_write_errors {
            *totals.device_write_errors.entry(k.clone()).or_default() += v;
        }
        write_notrun = write_notrun.or(p.write_notrun.clone());
        pin_notrun = pin_notrun.or(p.notrun.clone());
    }
    if let Some(r) = pin_notrun {
        return Ok(notrun(pin, kind, &info.fs, map, job, ctx.seed, r));
    }

    // The end scan: every page of every file, its clone and its donor. A file it cannot read
    // is counted and named: its pages were not judged.
    let mut scan_errors: Vec<String> = Vec::new();
    if stuck == 0 {
        let at = wd.elapsed_ms();
        for f in &sh.files {
            let scan = |rf: &RegionFile, label: &str, partner: Option<Partner>| {
                let is_clone = partner.is_some_and(|p| p.holds_copies());
                let is_donor = partner.is_some_and(|p| !p.holds_copies());
                let len = rf
                    .file()
                    .metadata()
                    .map_err(|e| format!("{label}: fstat: {e}"))?
                    .len();
                let mut buf = vec![0u8; len as usize];
                rf.file()
                    .read_exact_at(&mut buf, 0)
                    .map_err(|e| format!("{label}: reading {len} bytes: {e}"))?;
                for (p, page) in buf.chunks(PAGE as usize).enumerate() {
                    let off = p as u64 * PAGE;
                    match canary::decode(page) {
                        PageContent::Canary(c) if is_donor => {
                            let mut fd = sh.findings();
                            add(&mut fd.cross, sh.examples, Violation {
                                file: label.into(),
                                offset: off,
                                len: PAGE,
                                what: format!("the {} file holds data the device wrote for file {} (event {})", partner.map_or("", |p| p.name()), c.file_id, c.event),
                                at_ms: at,
                                history: vec![],
                            });
                        }
                        // A clone legitimately holds its source file's data, wherever it moved.
                        PageContent::Canary(c)
                            if is_clone && c.file_id == f.state.id && c.run_tag == sh.run_tag => {}
                        PageContent::Canary(_) if !is_clone => {
                            sh.classify_foreign(f, off, page, at, &f.history(0))
                        }
                        PageContent::Canary(c) => {
                            let mut fd = sh.findings();
                            add(
                                &mut fd.cross,
                                sh.examples,
                                Violation {
                                    file: label.into(),
                                    offset: off,
                                    len: PAGE,
                                    what: format!(
                                        "a {} of file {} holds data written for file {} (event {})",
                                        partner.map_or("", |p| p.name()),
                                        f.state.id,
                                        c.file_id,
                                        c.event
                                    ),
                                    at_ms: at,
                                    history: vec![],
                                },
                            );
                        }
                        _ => {}
                    }
                }
                Ok::<(), String>(())
            };
            let mut results = Vec::new();
            if let Some(rf) = f.region.file.as_ref() {
                results.push(scan(rf, &f.name, None));
            }
            for (p, rf) in f.partners.files() {
                results.push(scan(rf, &format!("{} ({})", f.name, p.name()), Some(p)));
            }
            scan_errors.extend(results.into_iter().filter_map(Result::err));
        }
    }
    totals.end_scan_errors = scan_errors.len() as u64;

    let mut kmsg_guard = ctx.kmsg.lock().unwrap_or_else(|p| p.into_inner());
    let lines: Vec<String> = kmsg_guard
        .take_events()
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    let kernel_warnings = KernelWarnings {
        count: lines.len() as u64,
        lines,
        notrun: kmsg_guard.notrun.clone(),
    };
    drop(kmsg_guard);

    let mut layout_ops = Vec::new();
    let unsupported = sh
        .unsupported
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    for &k in &job.ops {
        let mut lat = Latency::new();
        let mut count = 0;
        let mut errors: BTreeMap<String, u64> = BTreeMap::new();
        for d in disruptors_out.values() {
            if let Some(s) = d.ops.get(&k) {
                lat.merge(&s.latency);
                count += s.count;
                for (e, n) in &s.errors {
                    *errors.entry(e.clone()).or_default() += n;
                }
            }
        }
        let reason = if !file_backed {
            Some("anonymous memory has no file whose layout could change".to_string())
        } else if disruptors == 0 {
            Some("no disruptors in this scenario (disruptors = 0)".to_string())
        } else {
            unsupported.get(&k).cloned()
        };
        layout_ops.push(LayoutOpResult {
            op: k.name().into(),
            outcome: if reason.is_some() && count == 0 {
                "notrun"
            } else {
                "ok"
            }
            .into(),
            reason,
            count,
            errors,
            stats: (lat.count() > 0).then(|| lat.stats()),
            histogram: (lat.count() > 0).then(|| lat.encode()),
        });
    }
    for d in disruptors_out.values() {
        timeline.merge(&d.timeline);
    }
    let mut findings = std::mem::take(&mut *sh.findings());
    // A path without device writes (vmsplice) never writes; an rdma device whose queue pairs
    // cannot be connected here (iWARP without rdma_cm) does not either.
    match no_write.or(write_notrun) {
        Some(why) => {
            findings.stale.note = Some(format!("only the end scan ran: {why}"));
            findings.lost.notrun = Some(why);
        }
        None if map == MapKind::Private => {
            findings.lost.note = Some(
                "private mapping: device writes land in private copy-on-write pages by design and are never expected in the file; each is checked through the device's read-back instead"
                    .into(),
            );
        }
        _ => {}
    }
    if stuck > 0 {
        findings.stale.notrun = Some(format!(
            "{stuck} storm thread(s) never returned; the end scan was skipped"
        ));
        findings.cross.notrun = findings.stale.notrun.clone();
    }
    if let Some(first) = scan_errors.first() {
        let why = format!(
            "the end scan could not read {} file(s), whose pages were not judged (first: {first})",
            scan_errors.len()
        );
        for f in [&mut findings.stale, &mut findings.cross] {
            f.note = Some(match f.note.take() {
                Some(n) => format!("{n}; {why}"),
                None => why.clone(),
            });
        }
    }
    // Leaked pins: every pinner is gone; the kernel may release asynchronously, so wait with
    // a bound; then tear the files down and look again, and watch an idle window to see
    // whether anything else on the machine is pinning (the counters are system-wide).
    let settle = |base: i64| {
        let t = Instant::now();
        let mut now = base;
        while t.elapsed() < PIN_SETTLE {
            now = pinstorm_workloads::pinned_pages_outstanding().unwrap_or(base);
            if now <= base {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (now, t.elapsed().as_millis() as u64)
    };
    // Every thread has returned, so this is the last reference: unmap and close.
    let teardown = |sh: Arc<Shared>| match Arc::try_unwrap(sh) {
        Ok(shared) => drop(shared),
        Err(_) => unreachable!("storm threads all returned"),
    };
    let leaked = if stuck > 0 {
        // Threads still inside the kernel hold the shared state; never unmap it under them.
        std::mem::forget(sh);
        LeakedPins {
            notrun: Some(format!(
                "{stuck} storm thread(s) never returned; their pins may still be held"
            )),
            ..LeakedPins::default()
        }
    } else {
        match (foll_pins, idle_before) {
            (FollPins::NotTaken(why), _) => {
                teardown(sh);
                LeakedPins {
                    notrun: Some(why.into()),
                    ..LeakedPins::default()
                }
            }
            (FollPins::Counted, Some(before)) => {
                let base = before.outstanding();
                let (released, settle_ms) = settle(base);
                teardown(sh);
                let torn_down = if released > base {
                    settle(base).0
                } else {
                    released
                };
                match idle_window() {
                    Some(after) => oracle::judge_leak(&PinCounts {
                        before,
                        released,
                        settle_ms,
                        torn_down,
                        after,
                        folded: pinstorm_workloads::is_root(),
                    }),
                    None => LeakedPins {
                        notrun: Some("/proc/vmstat could not be read after the storm".into()),
                        ..LeakedPins::default()
                    },
                }
            }
            (FollPins::Counted, None) => {
                teardown(sh);
                LeakedPins {
                    notrun: Some(
                        "no nr_foll_pin_* counters in /proc/vmstat (kernel before 5.6)".into(),
                    ),
                    ..LeakedPins::default()
                }
            }
        }
    };
    let blocked_reports = wd.reports();
    let result = StormResult {
        pin: pin.name().into(),
        backing: kind.name().into(),
        fs: info.fs.clone(),
        map: map.name().into(),
        outcome: "ok".into(),
        reason: None,
        dax,
        pinners: job.pinners.get(),
        disruptors,
        file_size: size,
        hold_ns: job.hold.0.as_nanos() as u64,
        duration_ms: ran_for.as_millis() as u64,
        seed: ctx.seed,
        totals,
        register: (register.count() > 0).then(|| register.stats()),
        register_histogram: (register.count() > 0).then(|| register.encode()),
        layout_ops,
        timeline: timeline.0,
        oracle: Oracle {
            lost_write: findings.lost,
            stale_exposure: findings.stale,
            cross_file: findings.cross,
            leaked_pins: leaked,
            blocked: Blocked {
                count: blocked_reports.len() as u64,
                threshold_ms: job.block_threshold.0.as_millis() as u64,
                examples: blocked_reports
                    .into_iter()
                    .take(job.examples.max(1) * 4)
                    .collect(),
            },
            kernel_warnings,
            unexpected_outcomes: findings.unexpected,
        },
        sequence_head: disruptors_out.into_values().map(|d| d.head).collect(),
    };
    Ok(result)
}
