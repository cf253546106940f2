//! Layout storms against held pins.
//!
//! For each pin path x backing x map cell: `pinners` threads each own one file of the
//! backing, mapped as asked, and loop: register a pin on the whole mapping, hold it, let the
//! device write a canary page through it, check where that write went, let the device read
//! it back, unregister. `disruptors` threads meanwhile change the layout of those files
//! (truncate, punch, reflink, ...) at the configured rate, each from its own seeded RNG so a
//! seed replays the same operation sequence.
//!
//! How a write is judged (the lost-write oracle): every file carries a sequence number that
//! is odd while a layout operation on it is in flight. A pin is *clean* when the number was
//! the same even value before and after the registration. After the device write the file is
//! read back with `pread`; if it does not hold the canary although the pin was clean and no
//! operation was in flight between the write and the read, the write was lost: the pinned
//! range was part of the file when the pin was taken, and the data is not in the file. If an
//! operation overlapped, the write is counted as ambiguous and not judged. A private mapping
//! never carries device writes to the file by design, so it is not judged against the file.
//!
//! Stale exposure and cross-file corruption come from the canaries' contents: a page holding
//! this file's canary from before the last operation that invalidated that page is stale; a
//! page holding another file's canary is cross-file. Both are checked at every lost write and
//! over every file (and its clone and donor) at the end.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use pinstorm_analysis::expect::{Cell, Expectations};
use pinstorm_analysis::hist::Latency;
use pinstorm_analysis::kernel::KernelRelease;
use pinstorm_analysis::schema::{
    Blocked, KernelWarnings, LayoutOpResult, LeakedPins, Oracle, OracleFinding, StormResult,
    StormTotals, TimelinePoint, Violation,
};
use pinstorm_workloads::backing::{
    Access, BackingKind, MapKind, Region, RegionError, RegionFile, RegionSpec,
};
use pinstorm_workloads::canary::{self, Canary, PageContent};
use pinstorm_workloads::layout::{Effect, LayoutKind, LayoutTarget};
use pinstorm_workloads::pin::{Availability, PinError, PinKind};
use pinstorm_workloads::scenario::StormJob;
use pinstorm_workloads::units::Size;

use crate::host::{BackingSet, Progress};
use crate::kmsg::Kmsg;
use crate::signals;
use crate::watchdog::Watchdog;

/// The device writes and checks one 4 KiB page at a time, whatever the backing's page size.
const PAGE: u64 = 4096;
/// Operations of the sequence head kept per disruptor.
const HEAD: usize = 32;
/// Layout log entries kept per file for violation histories.
const LOG: usize = 256;
/// How long released pins may take to show up as released in /proc/vmstat.
const PIN_SETTLE: Duration = Duration::from_secs(5);

pub struct StormContext<'a> {
    pub backings: &'a BackingSet,
    pub expectations: &'a Expectations,
    pub kernel: &'a KernelRelease,
    pub seed: u64,
    /// Written into every canary, so data from another run is recognised as such.
    pub run_tag: u32,
    pub kmsg: &'a Mutex<Kmsg>,
}

#[derive(Clone, Copy, Default)]
struct PageTrack {
    /// Start event of the last operation that removed this page's data.
    invalidated_at: u64,
    /// Data here may have moved (collapse/insert): no stale check for this page.
    shifted: bool,
}

struct TrackedFile {
    id: u32,
    name: String,
    region: Region,
    /// Odd while a layout operation on this file is in flight.
    seq: AtomicU64,
    pages: Mutex<Vec<PageTrack>>,
    log: Mutex<VecDeque<(u64, String)>>,
    clone: Option<RegionFile>,
    donor: Option<RegionFile>,
    partners_missing: Option<String>,
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
    events: AtomicU64,
    stop: AtomicBool,
    wd: Arc<Watchdog>,
    unsupported: Mutex<BTreeMap<LayoutKind, String>>,
    findings: Mutex<Findings>,
    /// For each device write (by the event taken before it was issued), the event taken
    /// after it completed. A write in flight while a layout operation ran may land after it
    /// (an ODP device faults a fresh page in): only a write that completed before the
    /// operation began can be stale.
    write_done: Mutex<BTreeMap<u64, u64>>,
    run_tag: u32,
    hold: Duration,
    examples: usize,
    shared_map: bool,
    /// What the expectations say a registration of this cell gives.
    expected: Option<(String, String)>,
    size: u64,
    align: u64,
    rate: f64,
}

impl Shared {
    fn event(&self) -> u64 {
        self.events.fetch_add(1, SeqCst) + 1
    }

    fn write_done(&self, started: u64) {
        let done = self.event();
        self.write_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(started, done);
    }

    /// Whether the device write that started at `started` completed before `event`.
    fn write_completed_before(&self, started: u64, event: u64) -> bool {
        self.write_done
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&started)
            .is_some_and(|done| *done < event)
    }

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
        let PageContent::Canary(c) = canary::decode(content) else {
            return;
        };
        let page = (page_off / PAGE) as usize;
        let track = f
            .pages
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(page)
            .copied()
            .unwrap_or_default();
        let mut fd = self.findings();
        let examples = self.examples;
        if c.run_tag != self.run_tag {
            if fd.seen.insert((f.id, page_off, c.event, "stale")) {
                add(
                    &mut fd.stale,
                    examples,
                    Violation {
                        file: f.name.clone(),
                        offset: page_off,
                        len: PAGE,
                        what: format!(
                            "holds a canary of another run (tag {:#x}, file {}, offset {})",
                            c.run_tag, c.file_id, c.offset
                        ),
                        at_ms,
                        history: history.to_vec(),
                    },
                );
            }
        } else if c.file_id != f.id {
            if fd.seen.insert((f.id, page_off, c.event, "cross")) {
                add(
                    &mut fd.cross,
                    examples,
                    Violation {
                        file: f.name.clone(),
                        offset: page_off,
                        len: PAGE,
                        what: format!(
                            "holds data the device wrote for file {} at offset {} (event {})",
                            c.file_id, c.offset, c.event
                        ),
                        at_ms,
                        history: history.to_vec(),
                    },
                );
            }
        } else if c.offset == page_off
            && !track.shifted
            && self.write_completed_before(c.event, track.invalidated_at)
            && fd.seen.insert((f.id, page_off, c.event, "stale"))
        {
            add(&mut fd.stale, examples, Violation {
                file: f.name.clone(),
                offset: page_off,
                len: PAGE,
                what: format!(
                    "still holds the device's write of event {} although an operation at event {} removed that data",
                    c.event, track.invalidated_at
                ),
                at_ms,
                history: history.to_vec(),
            });
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

fn pinner_thread(sh: Arc<Shared>, i: usize, kind: PinKind, seed: u64) -> PinnerOut {
    let mut out = PinnerOut::default();
    let slot = sh.wd.slot(i);
    let f = &sh.files[i];
    let mut pinner = match kind.path().pinner() {
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
    let mut can_write = true;
    while !sh.stop.load(SeqCst) {
        let a = f.seq.load(SeqCst);
        sh.wd.begin(&slot, "register");
        let t0 = Instant::now();
        let r = pinner.register(target);
        let took = t0.elapsed();
        sh.wd.end(&slot);
        // The pin's event comes before the second look at the sequence number (see the
        // disruptor): every operation that did not overlap the registration is ordered.
        let pin_event = sh.event();
        let clean = a == f.seq.load(SeqCst) && a % 2 == 0;
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
            let ev = sh.event();
            let data = Canary {
                run_tag: sh.run_tag,
                file_id: f.id,
                offset: off,
                event: ev,
            }
            .page(PAGE as usize);
            let s0 = f.seq.load(SeqCst);
            sh.wd.begin(&slot, "device-write");
            let w = pinner.device_write(off as usize, &data);
            sh.wd.end(&slot);
            sh.write_done(ev);
            let wrote_ms = sh.wd.elapsed_ms();
            match w {
                Ok(_) => {
                    out.totals.device_writes += 1;
                    out.timeline.at(wrote_ms).device_writes += 1;
                    check_write(
                        &sh,
                        f,
                        &mut out.totals,
                        off,
                        &data,
                        clean,
                        s0,
                        (pin_event, pinned_ms),
                        (ev, wrote_ms),
                    );
                    sh.wd.begin(&slot, "device-read");
                    let back = pinner.device_read(off as usize, PAGE as usize);
                    sh.wd.end(&slot);
                    if matches!(&back, Ok(b) if *b != data) {
                        out.totals.readback_mismatches += 1;
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

/// Where did the device's write go? See the module documentation.
#[allow(clippy::too_many_arguments)]
fn check_write(
    sh: &Shared,
    f: &TrackedFile,
    totals: &mut StormTotals,
    off: u64,
    data: &[u8],
    clean_pin: bool,
    s0: u64,
    (pin_event, pinned_ms): (u64, f64),
    (ev, wrote_ms): (u64, f64),
) {
    let mut content = vec![0u8; PAGE as usize];
    let from_file = match &f.region.file {
        // Anonymous memory is never truncated, so the CPU may read the mapping.
        None => {
            f.region.mapping.read_at(off as usize, &mut content);
            true
        }
        // A private mapping's writes never reach the file by design: nothing to judge here.
        Some(_) if !sh.shared_map => {
            totals.verified += 1;
            return;
        }
        // Never touch a file mapping with the CPU (a truncated page would SIGBUS): pread.
        Some(rf) => rf.file().read_exact_at(&mut content, off).is_ok(),
    };
    let s1 = f.seq.load(SeqCst);
    if from_file && content == data {
        totals.verified += 1;
        return;
    }
    if f.file_backed() && (!clean_pin || s0 != s1 || s0 % 2 == 1 || !from_file) {
        totals.ambiguous += 1;
        return;
    }
    let found = match canary::decode(&content) {
        PageContent::Zero => "zeros".to_string(),
        PageContent::Fill(b) => format!("a fill of {b:#04x} bytes"),
        PageContent::Canary(c) => format!(
            "a canary of file {} offset {} event {}",
            c.file_id, c.offset, c.event
        ),
        PageContent::Torn => "a torn page".into(),
        PageContent::Other => "other data".into(),
    };
    let read_ms = sh.wd.elapsed_ms();
    let mut history = vec![format!(
        "{pinned_ms:.3} ms: pinned the whole file (event {pin_event})"
    )];
    history.extend(f.history(pin_event));
    history.push(format!(
        "{wrote_ms:.3} ms: device wrote the canary of event {ev} at offset {off}"
    ));
    history.push(format!("{read_ms:.3} ms: the file read back {found}"));
    {
        let mut fd = sh.findings();
        add(&mut fd.lost, sh.examples, Violation {
            file: f.name.clone(),
            offset: off,
            len: PAGE,
            what: format!(
                "the device's write through a pin taken while the range was part of the file is not in the file (it holds {found})"
            ),
            at_ms: wrote_ms,
            history: history.clone(),
        });
    }
    sh.classify_foreign(f, off, &content, read_ms, &history);
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
            clone: f.clone.as_ref(),
            donor: f.donor.as_ref(),
            partners_missing: f.partners_missing.as_deref(),
        };
        if let Some(why) = boxed[k].unavailable(&target) {
            sh.unsupported
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(kind)
                .or_insert(why);
            continue;
        }
        // Busy first, then the event: an operation that runs after a clean pin then always
        // has an event number above that pin's.
        f.seq.fetch_add(1, SeqCst);
        let ev = sh.event();
        sh.wd.begin(&slot, kind.name());
        let t0 = Instant::now();
        let r = boxed[k].apply(&target, &mut rng);
        let took = t0.elapsed();
        sh.wd.end(&slot);
        let effect = match &r {
            Ok(a) => Some(a.effect),
            Err(e) => e.partial,
        };
        if let Some(effect) = effect {
            let mut pages = f.pages.lock().unwrap_or_else(|p| p.into_inner());
            let n = pages.len();
            let (from, to, shifted) = match effect {
                Effect::Invalidated { offset, len } => {
                    (offset / PAGE, (offset + len).div_ceil(PAGE), false)
                }
                Effect::Shifted { offset } => (offset / PAGE, n as u64, true),
                Effect::Shared { .. } => (0, 0, false),
            };
            for p in pages
                .iter_mut()
                .take(to.min(n as u64) as usize)
                .skip(from as usize)
            {
                p.invalidated_at = ev;
                p.shifted |= shifted;
            }
        }
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
        // Only now may a pinner judge writes again: the page marks and the log are complete.
        f.seq.fetch_add(1, SeqCst);
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

pub fn run(
    job: &StormJob,
    ctx: &StormContext,
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

/// The clone (for reflink-out and dedupe) and donor (for reflink-in) files next to a pinned
/// file, when the operations need them; or why there are none.
fn make_partners(
    region: &Region,
    fs: &str,
    i: usize,
    size: u64,
    ops: &[LayoutKind],
) -> (Option<RegionFile>, Option<RegionFile>, Option<String>) {
    let needs_clone = ops.iter().any(|k| {
        matches!(
            k,
            LayoutKind::ReflinkOut | LayoutKind::ReflinkRangeOut | LayoutKind::Dedupe
        )
    });
    let needs_donor = ops.contains(&LayoutKind::ReflinkRangeIn);
    if !(needs_clone || needs_donor) {
        return (None, None, None);
    }
    let Some(file) = region.file.as_ref() else {
        return (None, None, None);
    };
    if fs == "hugetlbfs" {
        return (
            None,
            None,
            Some("hugetlbfs has no write(2) to prepare partner files with, and no reflink".into()),
        );
    }
    let mut why = None;
    let mut make = |name: String, fill: Option<u8>| match file.sibling(&name) {
        Ok(Some(f)) => {
            let r = match fill {
                Some(b) => f.file().write_all_at(&vec![b; size as usize], 0),
                None => f.file().set_len(size),
            };
            match r {
                Ok(()) => Some(f),
                Err(e) => {
                    why = Some(format!("preparing the partner file {name}: {e}"));
                    None
                }
            }
        }
        Ok(None) => None,
        Err(e) => {
            why = Some(format!("creating the partner file {name}: {e:#}"));
            None
        }
    };
    let clone = if needs_clone {
        make(format!("clone-{i}"), None)
    } else {
        None
    };
    let donor = if needs_donor {
        make(format!("donor-{i}"), Some(0xd0))
    } else {
        None
    };
    (clone, donor, why)
}

fn run_cell(
    job: &StormJob,
    ctx: &StormContext,
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
    if let Availability::NotRun(r) = pin.path().availability() {
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
        let (clone, donor, partners_missing) = make_partners(&region, &info.fs, i, size, &job.ops);
        let name = match region.file.as_ref().and_then(|f| f.path()) {
            Some(p) => p.display().to_string(),
            None if region.file.is_some() => format!("memfd:{i}"),
            None => format!("anon:{i}"),
        };
        files.push(TrackedFile {
            id: i as u32 + 1,
            name,
            seq: AtomicU64::new(0),
            pages: Mutex::new(vec![
                PageTrack::default();
                (region.mapping.len() as u64 / PAGE) as usize
            ]),
            log: Mutex::new(VecDeque::new()),
            region,
            clone,
            donor,
            partners_missing,
        });
    }
    let dax = files[0].region.dax;
    let file_backed = files[0].file_backed();
    let rdma_device = pin
        .is_rdma()
        .then(pinstorm_workloads::pin::rdma::device_name)
        .flatten();
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
                rdma_device: rdma_device.as_deref(),
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
    let pins_before = pinstorm_workloads::pinned_pages_outstanding();

    let sh = Arc::new(Shared {
        files,
        events: AtomicU64::new(0),
        write_done: Mutex::new(BTreeMap::new()),
        stop: AtomicBool::new(false),
        wd: wd.clone(),
        unsupported: Mutex::new(BTreeMap::new()),
        findings: Mutex::new(Findings::default()),
        run_tag: ctx.run_tag,
        hold: job.hold.0,
        examples: job.examples,
        shared_map: map == MapKind::Shared,
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
                let o = pinner_thread(sh, i, pin, seed);
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

    // The end scan: every page of every file, its clone and its donor.
    if stuck == 0 {
        let at = wd.elapsed_ms();
        for f in &sh.files {
            let scan = |rf: &RegionFile, label: &str, is_clone: bool, is_donor: bool| {
                let Ok(len) = rf.file().metadata().map(|m| m.len()) else {
                    return;
                };
                let mut buf = vec![0u8; len as usize];
                if rf.file().read_exact_at(&mut buf, 0).is_err() {
                    return;
                }
                for (p, page) in buf.chunks(PAGE as usize).enumerate() {
                    let off = p as u64 * PAGE;
                    match canary::decode(page) {
                        PageContent::Canary(c) if is_donor => {
                            let mut fd = sh.findings();
                            add(&mut fd.cross, sh.examples, Violation {
                                file: label.into(),
                                offset: off,
                                len: PAGE,
                                what: format!("the donor file holds data the device wrote for file {} (event {})", c.file_id, c.event),
                                at_ms: at,
                                history: vec![],
                            });
                        }
                        // A clone legitimately holds its source file's data, wherever it moved.
                        PageContent::Canary(c)
                            if is_clone && c.file_id == f.id && c.run_tag == sh.run_tag => {}
                        PageContent::Canary(_) if !is_clone => {
                            sh.classify_foreign(f, off, page, at, &f.history(0))
                        }
                        PageContent::Canary(c) => {
                            let mut fd = sh.findings();
                            add(&mut fd.cross, sh.examples, Violation {
                                file: label.into(),
                                offset: off,
                                len: PAGE,
                                what: format!("a clone of file {} holds data written for file {} (event {})", f.id, c.file_id, c.event),
                                at_ms: at,
                                history: vec![],
                            });
                        }
                        _ => {}
                    }
                }
            };
            if let Some(rf) = f.region.file.as_ref() {
                scan(rf, &f.name, false, false);
            }
            if let Some(c) = &f.clone {
                scan(c, &format!("{} (clone)", f.name), true, false);
            }
            if let Some(d) = &f.donor {
                scan(d, &format!("{} (donor)", f.name), false, true);
            }
        }
    }

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
    match pin {
        // vmsplice never writes; an rdma device whose queue pairs cannot be connected here
        // (iWARP without rdma_cm) does not either.
        _ if pin == PinKind::Vmsplice || write_notrun.is_some() => {
            let why = write_notrun
                .clone()
                .unwrap_or_else(|| "this pin path has no device write".into());
            findings.lost.notrun = Some(why.clone());
            findings.stale.note = Some(format!("only the end scan ran: {why}"));
        }
        _ if map == MapKind::Private => {
            findings.lost.note = Some(
                "private mapping: device writes land in private copy-on-write pages by design and are never expected in the file"
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
    // Leaked pins: every pinner is gone; the kernel may release asynchronously, so wait with
    // a bound; then tear the files down and look again. The counters are system-wide: another
    // process pinning pages meanwhile shows up here too (run on a quiet machine).
    let settle = |before: i64| {
        let t = Instant::now();
        let mut after = before;
        while t.elapsed() < PIN_SETTLE {
            after = pinstorm_workloads::pinned_pages_outstanding().unwrap_or(before);
            if after <= before {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        (
            (after - before).max(0) as u64,
            t.elapsed().as_millis() as u64,
        )
    };
    let mut leaked = LeakedPins::default();
    match pins_before {
        Some(before) if stuck == 0 => {
            let (held, ms) = settle(before);
            leaked.settle_ms = ms;
            // Every thread has returned, so this is the last reference: unmap and close.
            match Arc::try_unwrap(sh) {
                Ok(shared) => drop(shared),
                Err(_) => unreachable!("storm threads all returned"),
            }
            let (left, _) = if held > 0 { settle(before) } else { (0, 0) };
            leaked.count = left;
            leaked.held_until_teardown = held - left.min(held);
            if pin == PinKind::Vmsplice {
                leaked.notrun = Some("vmsplice holds page references, not FOLL_PIN pins: /proc/vmstat cannot see them".into());
            }
        }
        Some(_) => {
            leaked.notrun = Some(format!(
                "{stuck} storm thread(s) never returned; their pins may still be held"
            ));
            // Threads still inside the kernel hold the shared state; never unmap it under them.
            std::mem::forget(sh);
        }
        None => {
            leaked.notrun =
                Some("no nr_foll_pin_* counters in /proc/vmstat (kernel before 5.6)".into());
            if stuck > 0 {
                std::mem::forget(sh);
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use pinstorm_workloads::backing::SetupEnv;
    use pinstorm_workloads::scratch::ScratchRoot;

    /// One memfd-backed tracked file inside a `Shared`, as a storm would have it.
    fn with_shared(test: &str, f: impl FnOnce(&Shared)) {
        let dir =
            std::env::temp_dir().join(format!("pinstorm-storm-unit-{test}-{}", std::process::id()));
        let root = ScratchRoot::open(&dir).unwrap();
        let run = root.new_run("t").unwrap();
        let backing = BackingKind::Memfd
            .setup(&SetupEnv::default(), &run)
            .unwrap();
        let region = backing
            .region(&RegionSpec {
                size: Size(4 * PAGE),
                map: MapKind::Shared,
                access: Access::Rw,
            })
            .unwrap();
        let sh = Shared {
            files: vec![TrackedFile {
                id: 1,
                name: "memfd:0".into(),
                seq: AtomicU64::new(0),
                pages: Mutex::new(vec![PageTrack::default(); 4]),
                log: Mutex::new(VecDeque::new()),
                region,
                clone: None,
                donor: None,
                partners_missing: None,
            }],
            events: AtomicU64::new(0),
            write_done: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
            wd: Watchdog::new(Duration::from_secs(1), &["t".to_string()]),
            unsupported: Mutex::new(BTreeMap::new()),
            findings: Mutex::new(Findings::default()),
            run_tag: 7,
            hold: Duration::ZERO,
            examples: 5,
            shared_map: true,
            expected: None,
            size: 4 * PAGE,
            align: PAGE,
            rate: 0.0,
        };
        f(&sh);
        drop(sh);
        drop(backing);
        drop(run);
        drop(root);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn canary(file_id: u32, offset: u64, event: u64, run_tag: u32) -> Vec<u8> {
        Canary {
            run_tag,
            file_id,
            offset,
            event,
        }
        .page(PAGE as usize)
    }

    #[test]
    fn another_files_canary_is_cross_file_corruption() {
        with_shared("cross", |sh| {
            sh.classify_foreign(&sh.files[0], PAGE, &canary(2, PAGE, 3, 7), 1.0, &[]);
            let f = sh.findings();
            assert_eq!(f.cross.count, 1);
            assert!(
                f.cross.examples[0].what.contains("for file 2"),
                "{:?}",
                f.cross.examples[0]
            );
            assert_eq!(f.stale.count, 0);
        });
    }

    #[test]
    fn own_data_from_before_an_invalidation_is_stale_exposure() {
        with_shared("stale", |sh| {
            sh.files[0].pages.lock().unwrap()[1].invalidated_at = 10;
            {
                let mut done = sh.write_done.lock().unwrap();
                done.insert(5, 6);
                done.insert(8, 12);
                done.insert(11, 13);
            }
            // Written at event 5 (done at 6), removed by the operation at event 10, still
            // there: stale.
            sh.classify_foreign(&sh.files[0], PAGE, &canary(1, PAGE, 5, 7), 1.0, &[]);
            // Issued at 8 but completed at 12, after the operation began: it may have landed
            // after it (an ODP device faults a fresh page in), so it is not stale.
            sh.classify_foreign(&sh.files[0], PAGE, &canary(1, PAGE, 8, 7), 1.0, &[]);
            // Written after the operation: fine.
            sh.classify_foreign(&sh.files[0], PAGE, &canary(1, PAGE, 11, 7), 1.0, &[]);
            // The same finding is counted once.
            sh.classify_foreign(&sh.files[0], PAGE, &canary(1, PAGE, 5, 7), 1.0, &[]);
            assert_eq!(sh.findings().stale.count, 1);
        });
    }

    #[test]
    fn moved_data_and_data_of_other_runs_are_told_apart() {
        with_shared("moved", |sh| {
            {
                let mut pages = sh.files[0].pages.lock().unwrap();
                pages[2].invalidated_at = 10;
                pages[2].shifted = true;
            }
            // After collapse/insert, data may legitimately sit anywhere: not judged.
            sh.classify_foreign(&sh.files[0], 2 * PAGE, &canary(1, 2 * PAGE, 5, 7), 1.0, &[]);
            assert_eq!(sh.findings().stale.count, 0);
            // A canary from another run is data from an earlier life of these blocks.
            sh.classify_foreign(&sh.files[0], 0, &canary(1, 0, 1, 99), 1.0, &[]);
            assert_eq!(sh.findings().stale.count, 1);
            // Zeros and fill are not canaries: nothing to judge.
            sh.classify_foreign(&sh.files[0], 0, &vec![0u8; PAGE as usize], 1.0, &[]);
            let f = sh.findings();
            assert_eq!(f.stale.count + f.cross.count, 1);
        });
    }
}
